//! The embedded and the remote store answer alike: SciFact's 300 test queries,
//! dense top-10 documents from qdrant-edge against those from a Qdrant
//! collection, same vectors (needs ../shared/data; skipped loudly without it).
//!
//! The remote side is the real Qdrant server `scripts/test.sh` starts (or
//! `QDRANT_URL`; skipped loudly without one). The corpus is the documents the
//! test queries judge plus others up to 1,000; all 5,183 with
//! MAGPIE_SCIFACT_FULL=1 (embedding them takes minutes: `scripts/bench_stores.sh`
//! measures the whole corpus, single node and cluster).
//! Also printed: nDCG@10 of each path, dense, BM25 and hybrid (the embedded
//! hybrid fuses edge and tantivy in magpie; the remote one is fused by the server).

use std::collections::HashSet;
use std::sync::Arc;

use magpie_candle::BertEmbedder;
use magpie_core::metrics::{docs_by_best_chunk, ndcg_at};
use magpie_core::{reciprocal_rank_fusion, Embedder, Filter, KeywordStore, VectorStore};
use magpie_qdrant::{EdgeStore, QdrantStore, RemoteConfig};
use magpie_tantivy::TantivyStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scifact_dense_top10_agrees_between_embedded_and_remote() {
    let Some(dir) = magpie_tests::shared_data("scifact") else {
        return;
    };
    let collection = format!("scifact_parity_{}", std::process::id());
    let Some(target) = qdrant_standin::real_qdrant(&collection) else {
        return;
    };
    let full = std::env::var("MAGPIE_SCIFACT_FULL").is_ok_and(|v| v == "1");

    let rel = magpie_tests::scifact::qrels(&dir);
    let judged: HashSet<&String> = rel.values().flat_map(|m| m.keys()).collect();
    let queries = magpie_tests::scifact::queries(&dir, &rel);
    assert_eq!(queries.len(), 300);
    // The corpus: the judged abstracts and others up to 1,000 (all with MAGPIE_SCIFACT_FULL=1).
    let mut others = 0;
    let chunks = magpie_tests::scifact::chunks(&dir, |id| {
        if full || judged.contains(&id.to_string()) {
            return true;
        }
        others += 1;
        others + judged.len() <= 1000
    });
    eprintln!(
        "SciFact store parity: {} documents, {} queries",
        chunks.len(),
        queries.len()
    );

    let embedder =
        Arc::new(BertEmbedder::load(magpie_tests::minilm_dir().to_string_lossy()).unwrap());
    let dim = embedder.dimension();
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(64) {
        vectors.extend(embedder.embed(batch).await.unwrap());
    }
    let mut qvecs = Vec::new();
    for (_, q) in &queries {
        qvecs.push(embedder.embed_query(q).await.unwrap());
    }

    let tmp = tempfile::tempdir().unwrap();
    let edge = EdgeStore::open(tmp.path().join("vectors"), dim).unwrap();
    let tantivy = TantivyStore::open(tmp.path().join("keywords")).unwrap();
    for (c, v) in chunks.chunks(256).zip(vectors.chunks(256)) {
        edge.upsert(c, v).await.unwrap();
        tantivy.upsert(c).await.unwrap();
    }
    edge.commit().await.unwrap();
    tantivy.commit().await.unwrap();

    let targets = [target];

    let ndcg = |lists: &[Vec<magpie_core::Hit>]| -> f64 {
        lists
            .iter()
            .zip(&queries)
            .map(|(hits, (qid, _))| ndcg_at(&docs_by_best_chunk(hits), &rel[qid], 10))
            .sum::<f64>()
            / queries.len() as f64
    };
    let mut edge_dense = Vec::new();
    let mut emb_bm25 = Vec::new();
    let mut emb_hybrid = Vec::new();
    for (v, (_, q)) in qvecs.iter().zip(&queries) {
        let d = edge.search(v, 100).await.unwrap();
        let b = tantivy.search(q, 100).await.unwrap();
        let mut h = reciprocal_rank_fusion(&[(1.0, d.clone()), (1.0, b.clone())], 60.0);
        h.truncate(10);
        edge_dense.push(d.into_iter().take(10).collect::<Vec<_>>());
        emb_bm25.push(b.into_iter().take(10).collect::<Vec<_>>());
        emb_hybrid.push(h);
    }

    for (name, url) in targets {
        let remote = QdrantStore::connect(RemoteConfig::parse(&url).unwrap(), dim)
            .await
            .unwrap();
        let t = std::time::Instant::now();
        remote.upsert(&chunks, &vectors).await.unwrap();
        eprintln!(
            "{name}: upserted {} points in {:.1}s",
            chunks.len(),
            t.elapsed().as_secs_f64()
        );
        assert_eq!(remote.count().await.unwrap(), chunks.len());
        let mut same = 0;
        let mut remote_dense = Vec::new();
        let mut remote_bm25 = Vec::new();
        let mut remote_hybrid = Vec::new();
        for ((v, (_, q)), e) in qvecs.iter().zip(&queries).zip(&edge_dense) {
            let r = remote.search(v, 10).await.unwrap();
            let set = |h: &[magpie_core::Hit]| {
                h.iter()
                    .map(|x| x.chunk.doc_id.clone())
                    .collect::<HashSet<_>>()
            };
            if set(&r) == set(e) {
                same += 1;
            }
            remote_dense.push(r);
            remote_bm25.push(remote.search_sparse(q, 10, &Filter::none()).await.unwrap());
            remote_hybrid.push(
                remote
                    .search_hybrid(v, q, 10, &Filter::none())
                    .await
                    .unwrap(),
            );
        }
        let share = same as f64 / queries.len() as f64;
        eprintln!(
            "{name}: same dense top-10 documents for {same}/{} queries ({:.1}%)\n\
             nDCG@10            embedded   remote\n\
             dense              {:.4}     {:.4}\n\
             bm25               {:.4}     {:.4}   (tantivy | sparse vectors with IDF)\n\
             hybrid (RRF)       {:.4}     {:.4}   (fused in magpie | fused by the server)",
            queries.len(),
            share * 100.0,
            ndcg(&edge_dense),
            ndcg(&remote_dense),
            ndcg(&emb_bm25),
            ndcg(&remote_bm25),
            ndcg(&emb_hybrid),
            ndcg(&remote_hybrid),
        );
        assert!(
            share >= 0.95,
            "{name}: only {:.1}% of queries have the same dense top-10",
            share * 100.0
        );
        // The server-side BM25 must be a real ranker, not noise.
        assert!(
            ndcg(&remote_bm25) > 0.5,
            "{name}: remote BM25 nDCG@10 {:.4}",
            ndcg(&remote_bm25)
        );
        remote.drop_collection().await.unwrap();
    }
}
