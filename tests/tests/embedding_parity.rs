//! The candle embedder matches sentence-transformers on all-MiniLM-L6-v2.
//! Reference vectors: tests/fixtures/minilm_reference.json, written by
//! scripts/make_embedding_fixture.py.

use magpie_candle::{BertEmbedder, Isa};
use magpie_core::Embedder;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[tokio::test]
async fn matches_sentence_transformers() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            magpie_tests::workspace().join("tests/fixtures/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["vectors"].clone()).unwrap();

    // Batch size 4 mixes lengths inside a batch, so padding must not leak into
    // pooling. magpie's own encoder, then candle's generic BERT (the GPU path).
    // Every kernel family this CPU has (AVX-512, AVX2, portable).
    for isa in Isa::available() {
        check(&sentences, &reference, &fixture, false, isa).await;
    }
    check(&sentences, &reference, &fixture, true, Isa::Portable).await;
}

async fn check(
    sentences: &[String],
    reference: &[Vec<f32>],
    fixture: &serde_json::Value,
    generic: bool,
    isa: Isa,
) {
    let emb = BertEmbedder::builder(magpie_tests::minilm_dir().to_string_lossy())
        .batch_size(4)
        .int8(false)
        .generic_bert(generic)
        .kernels(isa)
        .build()
        .unwrap();
    eprintln!("backend {}", emb.backend());
    assert_eq!(emb.backend() == "candle", generic);
    assert_eq!(emb.dimension(), 384);
    assert_eq!(
        emb.max_tokens(),
        fixture["max_seq_length"].as_u64().unwrap() as usize
    );
    let got = emb.embed(sentences).await.unwrap();
    assert_eq!(got.len(), reference.len());
    for (i, (g, r)) in got.iter().zip(reference).enumerate() {
        let c = cosine(g, r);
        assert!(c >= 0.9999, "sentence {i} {:?}: cosine {c}", &sentences[i]);
        eprintln!("sentence {i}: cosine {c:.7}");
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    // One at a time gives the same vectors as batched.
    let single = emb.embed(&sentences[..1]).await.unwrap();
    assert!(cosine(&single[0], &got[0]) > 0.99999);
}

/// The int8 mode (where the CPU has AVX-512 VNNI) stays close to
/// sentence-transformers' f32 vectors; its retrieval quality is measured on
/// SciFact in BENCHMARKS.md.
#[tokio::test]
async fn int8_stays_close() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            magpie_tests::workspace().join("tests/fixtures/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone()).unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["vectors"].clone()).unwrap();
    let emb = BertEmbedder::builder(magpie_tests::minilm_dir().to_string_lossy())
        .batch_size(4)
        .int8(true)
        .build()
        .unwrap();
    eprintln!("backend {}", emb.backend());
    let got = emb.embed(&sentences).await.unwrap();
    let mut worst = 1.0f64;
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        let c = cosine(g, r);
        eprintln!("int8 sentence {i}: cosine {c:.5}");
        worst = worst.min(c);
    }
    assert!(worst > 0.99, "int8 vectors drifted: worst cosine {worst}");
}
