//! Store benchmark over BEIR SciFact (all 5,183 abstracts, one chunk each,
//! embedded once with all-MiniLM-L6-v2; the vectors are cached under
//! target/bench-stores): upsert throughput (points/s), dense and hybrid search
//! latency (p50/p99 over the 300 test queries), nDCG@10, and how many dense
//! top-10 lists agree with the embedded store's, for the embedded store and
//! each Qdrant deployment named on the command line. Repeated and interleaved.
//!
//!   cargo run --release -p magpie-tests --bin bench_stores -- [--repeats N] NAME=qdrant+grpc://HOST:PORT ...
//!
//! `scripts/bench_stores.sh` starts a real single node and a three-node
//! cluster and runs it against both.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use magpie_candle::BertEmbedder;
use magpie_core::metrics::{docs_by_best_chunk, ndcg_at};
use magpie_core::{
    reciprocal_rank_fusion, Chunk, Embedder, Filter, Hit, KeywordStore, VectorStore,
};
use magpie_qdrant::{EdgeStore, QdrantStore, RemoteConfig};
use magpie_tantivy::TantivyStore;

use magpie_tests::scifact::Qrels;

/// The corpus vectors, embedded once and cached as raw little-endian f32.
async fn corpus_vectors(embedder: &BertEmbedder, chunks: &[Chunk], cache: &Path) -> Vec<Vec<f32>> {
    let dim = embedder.dimension();
    if let Ok(bytes) = std::fs::read(cache) {
        if bytes.len() == chunks.len() * dim * 4 {
            let floats: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            eprintln!("corpus vectors from {}", cache.display());
            return floats.chunks(dim).map(<[f32]>::to_vec).collect();
        }
    }
    let t = Instant::now();
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    let mut out = Vec::with_capacity(texts.len());
    for (i, batch) in texts.chunks(64).enumerate() {
        out.extend(embedder.embed(batch).await.expect("embedding"));
        if i % 10 == 0 {
            eprint!("\rembedding the corpus: {}/{}", out.len(), texts.len());
        }
    }
    eprintln!(
        "\rembedded {} abstracts in {:.0}s",
        out.len(),
        t.elapsed().as_secs_f64()
    );
    let bytes: Vec<u8> = out.iter().flatten().flat_map(|f| f.to_le_bytes()).collect();
    if let Some(d) = cache.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(cache, bytes);
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Default)]
struct Run {
    upsert_pps: Vec<f64>,
    dense_ms: Vec<f64>,
    hybrid_ms: Vec<f64>,
    dense_ndcg: f64,
    hybrid_ndcg: f64,
    agree: usize,
}

fn ndcg(lists: &[Vec<Hit>], queries: &[(String, String)], rel: &Qrels) -> f64 {
    lists
        .iter()
        .zip(queries)
        .map(|(h, (q, _))| ndcg_at(&docs_by_best_chunk(h), &rel[q], 10))
        .sum::<f64>()
        / queries.len() as f64
}

fn doc_set(h: &[Hit]) -> HashSet<String> {
    h.iter().map(|x| x.chunk.doc_id.clone()).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut repeats = 3;
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--repeats" {
            repeats = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
        } else if let Some((name, url)) = a.split_once('=') {
            targets.push((name.to_string(), url.to_string()));
        }
    }
    let Some(dir) = magpie_tests::shared_data("scifact") else {
        eprintln!("../shared/data/scifact is missing: nothing to measure");
        std::process::exit(2);
    };
    let rel = magpie_tests::scifact::qrels(&dir);
    let queries = magpie_tests::scifact::queries(&dir, &rel);
    let chunks = magpie_tests::scifact::chunks(&dir, |_| true);
    eprintln!(
        "SciFact: {} abstracts, {} queries",
        chunks.len(),
        queries.len()
    );
    let embedder = BertEmbedder::load(magpie_tests::minilm_dir().to_string_lossy()).expect("model");
    let dim = embedder.dimension();
    let cache = magpie_tests::workspace().join("target/bench-stores/scifact-minilm.f32");
    let vectors = corpus_vectors(&embedder, &chunks, &cache).await;
    let mut qvecs = Vec::new();
    for (_, q) in &queries {
        qvecs.push(embedder.embed_query(q).await.expect("query"));
    }

    let names: Vec<String> = std::iter::once("embedded".to_string())
        .chain(targets.iter().map(|t| t.0.clone()))
        .collect();
    let mut runs: Vec<Run> = names.iter().map(|_| Run::default()).collect();
    let mut reference: Vec<HashSet<String>> = Vec::new();
    for rep in 0..repeats {
        for (ti, name) in names.iter().enumerate() {
            let mut dense_lists = Vec::new();
            let mut hybrid_lists = Vec::new();
            let run = &mut runs[ti];
            if ti == 0 {
                let tmp = tempfile::tempdir().expect("tempdir");
                let edge = EdgeStore::open(tmp.path().join("v"), dim).expect("edge");
                let kw = TantivyStore::open(tmp.path().join("k")).expect("tantivy");
                let t = Instant::now();
                for (c, v) in chunks.chunks(256).zip(vectors.chunks(256)) {
                    edge.upsert(c, v).await.expect("upsert");
                    kw.upsert(c).await.expect("upsert");
                }
                edge.commit().await.expect("commit");
                kw.commit().await.expect("commit");
                run.upsert_pps
                    .push(chunks.len() as f64 / t.elapsed().as_secs_f64());
                for (v, (_, q)) in qvecs.iter().zip(&queries) {
                    let t = Instant::now();
                    let d = edge.search(v, 10).await.expect("search");
                    run.dense_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let (d100, b100) = tokio::join!(edge.search(v, 100), kw.search(q, 100));
                    let mut h = reciprocal_rank_fusion(
                        &[(1.0, d100.expect("dense")), (1.0, b100.expect("bm25"))],
                        60.0,
                    );
                    h.truncate(10);
                    run.hybrid_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    dense_lists.push(d);
                    hybrid_lists.push(h);
                }
                if rep == 0 {
                    reference = dense_lists.iter().map(|h| doc_set(h)).collect();
                }
            } else {
                let url = &targets[ti - 1].1;
                let collection = format!("bench_stores_{}_{rep}", std::process::id());
                let (base, options) = match url.split_once('?') {
                    Some((b, o)) => (b, format!("?{o}")),
                    None => (url.as_str(), String::new()),
                };
                let full = format!("{}/{collection}{options}", base.trim_end_matches('/'));
                let store = QdrantStore::connect(RemoteConfig::parse(&full).expect("url"), dim)
                    .await
                    .expect("connect");
                let t = Instant::now();
                for (c, v) in chunks.chunks(256).zip(vectors.chunks(256)) {
                    store.upsert(c, v).await.expect("upsert");
                }
                run.upsert_pps
                    .push(chunks.len() as f64 / t.elapsed().as_secs_f64());
                assert_eq!(store.count().await.expect("count"), chunks.len());
                for (v, (_, q)) in qvecs.iter().zip(&queries) {
                    let t = Instant::now();
                    let d = store.search(v, 10).await.expect("search");
                    run.dense_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let h = store
                        .search_hybrid(v, q, 10, &Filter::none())
                        .await
                        .expect("hybrid");
                    run.hybrid_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    dense_lists.push(d);
                    hybrid_lists.push(h);
                }
                store.drop_collection().await.expect("drop");
            }
            run.dense_ndcg = ndcg(&dense_lists, &queries, &rel);
            run.hybrid_ndcg = ndcg(&hybrid_lists, &queries, &rel);
            run.agree = dense_lists
                .iter()
                .zip(&reference)
                .filter(|(h, r)| doc_set(h) == **r)
                .count();
            eprintln!(
                "repeat {}: {name}: upsert {:.0} points/s",
                rep + 1,
                run.upsert_pps.last().copied().unwrap_or(0.0)
            );
        }
    }
    println!(
        "| store | upsert points/s (min–max of {repeats}) | dense p50 / p99 ms | hybrid p50 / p99 ms | nDCG@10 dense / hybrid | dense top-10 = embedded |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, run) in names.iter().zip(runs.iter_mut()) {
        let (lo, hi) = run
            .upsert_pps
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        let median = pct(&mut run.upsert_pps.clone(), 0.5);
        println!(
            "| {name} | {median:.0} ({lo:.0}–{hi:.0}) | {:.2} / {:.2} | {:.2} / {:.2} | {:.4} / {:.4} | {}/{} |",
            pct(&mut run.dense_ms, 0.5),
            pct(&mut run.dense_ms, 0.99),
            pct(&mut run.hybrid_ms, 0.5),
            pct(&mut run.hybrid_ms, 0.99),
            run.dense_ndcg,
            run.hybrid_ndcg,
            run.agree,
            queries.len()
        );
    }
}
