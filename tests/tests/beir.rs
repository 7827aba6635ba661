//! BM25 retrieval quality on BEIR SciFact (needs ../shared/data; skipped loudly without it).
//! The dense and hybrid figures come from `docqa eval beir` (BENCHMARKS.md): embedding
//! the 5,183 abstracts takes minutes, too long for the test suite.

use std::collections::HashMap;
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

    let qrels = std::fs::read_to_string(dir.join("qrels/test.tsv")).unwrap();
    let mut rel: HashMap<String, HashMap<String, i32>> = HashMap::new();
    for line in qrels.lines().skip(1) {
        let c: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if c.len() == 3 {
            let grade = c[2].trim().parse::<i32>().unwrap();
            rel.entry(c[0].into())
                .or_default()
                .insert(c[1].into(), grade);
        }
    }
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
