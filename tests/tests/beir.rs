//! Retrieval quality on BEIR SciFact (needs ../shared/data; skipped loudly
//! without it): BM25 over the whole corpus, and the int8 embedder against f32
//! on a subset. The full dense and hybrid figures come from `docqa eval beir`
//! (BENCHMARKS.md): embedding all 5,183 abstracts twice is too long here.

use std::sync::Arc;

use magpie_core::metrics::{docs_by_best_chunk, ndcg_at};
use magpie_core::{KeywordStore, Loader, Splitter};
use magpie_files::{JsonlLoader, TokenSplitter, WordCounter};
use magpie_tantivy::TantivyStore;

#[tokio::test]
async fn scifact_bm25_ndcg_at_least_066() {
    let Some(dir) = magpie_tests::shared_data("scifact") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let keywords = TantivyStore::open(tmp.path()).unwrap();
    let loader = JsonlLoader::beir(dir.join("corpus.jsonl"));
    let splitter = TokenSplitter::new(Arc::new(WordCounter)).chunk_tokens(100_000);
    let listing = loader.list().await.unwrap();
    assert_eq!(listing.sources.len(), 5183);
    for s in &listing.sources {
        let doc = loader.load(s).await.unwrap();
        keywords.upsert(&splitter.split(&doc)).await.unwrap();
    }
    keywords.commit().await.unwrap();

    let rel = magpie_tests::scifact::qrels(&dir);
    let mut total = 0.0;
    let mut n = 0;
    for line in std::fs::read_to_string(dir.join("queries.jsonl"))
        .unwrap()
        .lines()
    {
        let q: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(r) = rel.get(q["_id"].as_str().unwrap()) else {
            continue;
        };
        let hits = keywords
            .search(q["text"].as_str().unwrap(), 10)
            .await
            .unwrap();
        total += ndcg_at(&docs_by_best_chunk(&hits), r, 10);
        n += 1;
    }
    assert_eq!(n, 300);
    let ndcg = total / n as f64;
    println!("SciFact BM25 nDCG@10 = {ndcg:.4}");
    assert!(ndcg >= 0.66, "SciFact BM25 nDCG@10 {ndcg:.4} is below 0.66");
}

/// Dense nDCG@10 over `docs` (id, text) for the queries, by exhaustive cosine.
async fn dense_ndcg(
    emb: &magpie_candle::BertEmbedder,
    docs: &[(String, String)],
    queries: &[(String, String)],
    rel: &magpie_tests::scifact::Qrels,
) -> f64 {
    use magpie_core::Embedder;
    let texts: Vec<String> = docs.iter().map(|d| d.1.clone()).collect();
    let dv = emb.embed(&texts).await.unwrap();
    let qtexts: Vec<String> = queries.iter().map(|q| q.1.clone()).collect();
    let qv = emb.embed(&qtexts).await.unwrap();
    let mut total = 0.0;
    for ((qid, _), q) in queries.iter().zip(&qv) {
        let mut scored: Vec<(f32, &str)> = dv
            .iter()
            .zip(docs)
            .map(|(d, (id, _))| (d.iter().zip(q).map(|(a, b)| a * b).sum(), id.as_str()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let ranked: Vec<String> = scored.iter().take(10).map(|s| s.1.to_string()).collect();
        total += ndcg_at(&ranked, &rel[qid], 10);
    }
    total / queries.len() as f64
}

/// The int8 mode (the default where the CPU has VNNI or AMX, with bf16
/// attention on AMX) keeps f32's retrieval quality: dense nDCG@10 on a
/// SciFact subset (every abstract a test query needs, plus distractors up to
/// 1,000) within 0.01 of the f32 mode's. The full-corpus figures are in
/// BENCHMARKS.md (int8 loses 0.0004 there).
#[tokio::test]
async fn scifact_int8_embedder_keeps_f32_quality() {
    let Some(dir) = magpie_tests::shared_data("scifact") else {
        return;
    };
    let rel = magpie_tests::scifact::qrels(&dir);
    let needed: std::collections::HashSet<String> =
        rel.values().flat_map(|r| r.keys().cloned()).collect();
    let mut distractors = 1000 - needed.len();
    let docs: Vec<(String, String)> = magpie_tests::scifact::chunks(&dir, |id| {
        if needed.contains(id) {
            return true;
        }
        let keep = distractors > 0;
        distractors = distractors.saturating_sub(1);
        keep
    })
    .into_iter()
    .map(|c| (c.doc_id, c.text))
    .collect();
    let queries = magpie_tests::scifact::queries(&dir, &rel);
    assert_eq!(queries.len(), 300);
    let build = |int8: bool| {
        magpie_candle::BertEmbedder::builder(magpie_tests::minilm_dir().to_string_lossy())
            .int8(int8)
            .build()
            .unwrap()
    };
    let (f32_emb, int8_emb) = (build(false), build(true));
    let exact = dense_ndcg(&f32_emb, &docs, &queries, &rel).await;
    let quantized = dense_ndcg(&int8_emb, &docs, &queries, &rel).await;
    println!(
        "SciFact subset ({} abstracts) dense nDCG@10: f32 {exact:.4}, {} {quantized:.4}",
        docs.len(),
        int8_emb.backend()
    );
    // a broken quantized path loses far more; the subset is easier than the corpus
    assert!(exact > 0.6, "f32 dense nDCG@10 {exact:.4} on the subset");
    assert!(
        quantized >= exact - 0.01,
        "int8 dense nDCG@10 {quantized:.4} against f32 {exact:.4}"
    );
}
