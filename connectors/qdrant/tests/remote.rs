//! The remote store end to end against a real Qdrant server (the one
//! `scripts/test.sh` starts, or `QDRANT_URL`): create, upsert, dense / BM25 /
//! hybrid queries, filters, idempotent re-runs, deletes. What a real server
//! cannot be made to do on demand (fail with UNAVAILABLE now, demand a key)
//! runs against the in-memory stand-in.

use std::sync::atomic::Ordering;

use magpie_core::{chunk_id_for, Chunk, Filter, Span, VectorStore};
use magpie_qdrant::{EdgeStore, QdrantStore, RemoteConfig};
use qdrant_standin::StandIn;

/// The real server's label and a store URL for `collection` (None: SKIPPED, said loudly).
fn server(collection: &str) -> Option<(String, String)> {
    qdrant_standin::real_qdrant(collection)
}

fn chunk(doc: &str, i: usize, text: &str, meta: serde_json::Value) -> Chunk {
    Chunk {
        id: chunk_id_for(doc, "h1", i),
        doc_id: doc.into(),
        doc_hash: "h1".into(),
        source: format!("{doc}.md"),
        index: i,
        text: text.into(),
        span: Span {
            byte_start: 0,
            byte_end: text.len(),
            line_start: 1,
            line_end: 1,
            ..Default::default()
        },
        heading_path: vec![],
        title: None,
        metadata: serde_json::from_value(meta).unwrap(),
    }
}

/// A small corpus with 4-dimensional vectors that put the answers where the test expects.
fn corpus() -> (Vec<Chunk>, Vec<Vec<f32>>) {
    let rows = [
        (
            "birds",
            0,
            "Magpies are clever birds that collect shiny things",
            serde_json::json!({"year": 2020, "lang": "en", "tags": ["bird", "corvid"]}),
            [1.0, 0.0, 0.0, 0.0],
        ),
        (
            "birds",
            1,
            "Crows and ravens are corvids too",
            serde_json::json!({"year": 2020, "lang": "en", "tags": ["corvid"]}),
            [0.9, 0.1, 0.0, 0.0],
        ),
        (
            "rust",
            0,
            "Rust has ownership and borrowing",
            serde_json::json!({"year": 2015, "lang": "en"}),
            [0.0, 1.0, 0.0, 0.0],
        ),
        (
            "rust",
            1,
            "Cargo builds Rust crates",
            serde_json::json!({"year": 2015, "lang": "en"}),
            [0.0, 0.9, 0.1, 0.0],
        ),
        (
            "pies",
            0,
            "Une tarte aux pommes et des oiseaux",
            serde_json::json!({"year": 2023, "lang": "fr", "score": 0.75}),
            [0.5, 0.0, 0.5, 0.0],
        ),
        (
            "pies",
            1,
            "Apple pie with shiny crust",
            serde_json::json!({"year": 2023, "lang": "fr", "score": 0.25}),
            [0.0, 0.0, 1.0, 0.0],
        ),
    ];
    rows.into_iter()
        .map(|(d, i, t, m, v)| (chunk(d, i, t, m), v.to_vec()))
        .unzip()
}

fn docs_of(hits: &[magpie_core::Hit]) -> Vec<String> {
    hits.iter()
        .map(|h| format!("{}#{}", h.chunk.doc_id, h.chunk.index))
        .collect()
}

#[tokio::test]
async fn remote_store_end_to_end() {
    let collection = format!("magpie_test_{}", std::process::id());
    if let Some((name, url)) = server(&collection) {
        let mut cfg =
            RemoteConfig::parse(&format!("{url}?shards=2&replication=1&write_consistency=1"))
                .unwrap();
        cfg.batch_bytes = 900; // several upsert requests for six points
        let store = QdrantStore::connect(cfg.clone(), 4).await.unwrap();
        let (chunks, vectors) = corpus();
        store.upsert(&chunks, &vectors).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 6, "{name}");
        // Idempotent: the same chunks again replace, never duplicate.
        store.upsert(&chunks, &vectors).await.unwrap();
        assert_eq!(
            store.count().await.unwrap(),
            6,
            "{name}: re-run duplicated points"
        );

        // Dense.
        let hits = store.search(&[1.0, 0.05, 0.0, 0.0], 3).await.unwrap();
        assert_eq!(docs_of(&hits)[..2], ["birds#0", "birds#1"], "{name}");
        assert_eq!(
            hits[0].chunk, chunks[0],
            "{name}: the payload round-trips the chunk"
        );
        // BM25 on the server: the sparse vectors with IDF.
        let kw = store
            .search_sparse("shiny magpies", 3, &Filter::none())
            .await
            .unwrap();
        assert_eq!(docs_of(&kw)[0], "birds#0", "{name}: {:?}", docs_of(&kw));
        assert!(
            docs_of(&kw).contains(&"pies#1".to_string()),
            "{name}: 'shiny' matches the pie too"
        );
        assert!(store
            .search_sparse("the and of", 3, &Filter::none())
            .await
            .unwrap()
            .is_empty());
        // Hybrid: one request, fused by the server.
        let hy = store
            .search_hybrid(&[0.0, 0.0, 1.0, 0.0], "shiny magpies", 4, &Filter::none())
            .await
            .unwrap();
        let hd = docs_of(&hy);
        assert!(
            hd.contains(&"pies#1".to_string()) && hd.contains(&"birds#0".to_string()),
            "{name}: {hd:?}"
        );

        // Filters, the same syntax as the embedded store.
        let check = |clauses: &[&str], hits: &[magpie_core::Hit], want: &[&str]| {
            let f = Filter::parse_all(clauses.iter().copied()).unwrap();
            assert!(
                hits.iter().all(|h| f.matches(&h.chunk)),
                "{name} {clauses:?}: {:?}",
                docs_of(hits)
            );
            let mut got = docs_of(hits);
            got.sort();
            assert_eq!(got, want, "{name} {clauses:?}");
        };
        let q = [1.0, 1.0, 1.0, 0.0];
        for (clauses, want) in [
            (vec!["source=rust.md"], vec!["rust#0", "rust#1"]),
            (vec!["doc=pies"], vec!["pies#0", "pies#1"]),
            (vec!["meta.lang=fr"], vec!["pies#0", "pies#1"]),
            (
                vec!["meta.year>=2016", "meta.year<2021"],
                vec!["birds#0", "birds#1"],
            ),
            (
                vec!["meta.year=2015|2023"],
                vec!["pies#0", "pies#1", "rust#0", "rust#1"],
            ),
            (vec!["meta.tags=bird"], vec!["birds#0"]),
            (vec!["meta.score>0.5"], vec!["pies#0"]),
            (vec!["meta.lang=de"], vec![]),
        ] {
            let f = Filter::parse_all(clauses.iter().copied()).unwrap();
            let hits = store.search_filtered(&q, 10, &f).await.unwrap();
            check(&clauses, &hits, &want);
        }
        let f = Filter::parse_all(["meta.lang=fr"]).unwrap();
        let kw = store.search_sparse("shiny", 10, &f).await.unwrap();
        assert_eq!(docs_of(&kw), ["pies#1"], "{name}: filtered BM25");
        let hy = store.search_hybrid(&q, "shiny", 10, &f).await.unwrap();
        check(&["meta.lang=fr"], &hy, &["pies#0", "pies#1"]);

        // Deletes.
        store.delete_docs(&["birds".into()]).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 4, "{name}");
        store.delete_chunks(&[chunks[2].id.clone()]).await.unwrap();
        let left = store.list_chunks().await.unwrap();
        assert_eq!(left.len(), 3, "{name}");
        assert!(left
            .iter()
            .all(|c| c.doc_id != "birds" && c.chunk_id != chunks[2].id));

        // The wrong size for an existing collection is refused with advice.
        let e = QdrantStore::connect(cfg.clone(), 5)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("4-dimensional") && e.contains("another collection"),
            "{e}"
        );
        store.drop_collection().await.unwrap();
    }
}

#[tokio::test]
async fn filters_agree_between_the_embedded_and_the_remote_store() {
    let dir = tempfile::tempdir().unwrap();
    let edge = EdgeStore::open(dir.path(), 4).unwrap();
    let collection = format!("magpie_agree_{}", std::process::id());
    if let Some((name, url)) = server(&collection) {
        let remote = QdrantStore::connect(RemoteConfig::parse(&url).unwrap(), 4)
            .await
            .unwrap();
        let (chunks, vectors) = corpus();
        edge.upsert(&chunks, &vectors).await.unwrap();
        remote.upsert(&chunks, &vectors).await.unwrap();
        for clauses in [
            vec![],
            vec!["source=birds.md"],
            vec!["meta.year>2015"],
            vec!["meta.lang=en", "meta.year<=2015"],
            vec!["meta.tags=corvid"],
            vec!["doc=rust|pies", "meta.score<0.5"],
        ] {
            let f = Filter::parse_all(clauses.iter().copied()).unwrap();
            for q in [[1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.9, 0.0]] {
                // Ties (equal scores) may come in either order: compare by score, then name.
                let ranked = |hits: Vec<magpie_core::Hit>| {
                    let mut v: Vec<(i64, String)> = hits
                        .iter()
                        .map(|h| {
                            (
                                (h.score * 1e4).round() as i64,
                                format!("{}#{}", h.chunk.doc_id, h.chunk.index),
                            )
                        })
                        .collect();
                    v.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
                    v
                };
                let a = ranked(edge.search_filtered(&q, 10, &f).await.unwrap());
                let b = ranked(remote.search_filtered(&q, 10, &f).await.unwrap());
                assert_eq!(a, b, "{name} {clauses:?}");
            }
        }
        remote.drop_collection().await.unwrap();
    }
}

/// What a real server does not do on demand: fail the next requests. Upserts
/// split by bytes, transient failures are retried with backoff, and a server
/// that keeps failing is a clear error.
#[tokio::test]
async fn transient_failures_are_retried_on_the_stand_in() {
    let s = StandIn::start(None).await;
    let collection = "retries";
    let mut cfg = RemoteConfig::parse(&format!(
        "{}?shards=2&replication=1&write_consistency=1",
        s.store_url(collection)
    ))
    .unwrap();
    cfg.batch_bytes = 900; // several upsert requests for six points
    let store = QdrantStore::connect(cfg.clone(), 4).await.unwrap();
    let (chunks, vectors) = corpus();
    store.upsert(&chunks, &vectors).await.unwrap();
    assert!(
        s.stats().upserts.load(Ordering::SeqCst) >= 3,
        "batched by bytes"
    );
    let params = s.collection_params(collection).unwrap();
    assert_eq!(params.shard_number, 2);
    assert_eq!(params.write_consistency_factor, Some(1));
    let idx: Vec<String> = s
        .payload_indexes(collection)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in [
        "doc_id",
        "source",
        "chunk.metadata.year",
        "chunk.metadata.lang",
        "chunk.metadata.tags",
        "chunk.metadata.score",
    ] {
        assert!(idx.iter().any(|i| i == k), "{k} indexed: {idx:?}");
    }
    let q = [1.0, 1.0, 1.0, 0.0];
    s.fail_next(2);
    store.upsert(&chunks[..1], &vectors[..1]).await.unwrap();
    assert_eq!(s.stats().injected.load(Ordering::SeqCst), 2);
    let mut impatient = cfg.clone();
    impatient.retries = 1;
    let st2 = QdrantStore::connect(impatient, 4).await.unwrap();
    s.fail_next(5);
    let e = st2.search(&q, 3).await.unwrap_err().to_string();
    assert!(
        e.contains("Unavailable") || e.contains("unavailable"),
        "{e}"
    );
}

#[tokio::test]
async fn a_server_that_wants_a_key_says_so() {
    let s = StandIn::start(Some("s3cret-key-for-tests".into())).await;
    let cfg = RemoteConfig::parse(&s.store_url("k")).unwrap();
    let e = QdrantStore::connect(
        RemoteConfig {
            api_key: None,
            ..cfg.clone()
        },
        4,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("QDRANT_API_KEY"), "{e}");
    let ok = QdrantStore::connect(
        RemoteConfig {
            api_key: Some("s3cret-key-for-tests".into()),
            ..cfg
        },
        4,
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let e = QdrantStore::connect(
        RemoteConfig::parse("qdrant+grpc://127.0.0.1:1/x").unwrap(),
        4,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("127.0.0.1:1"),
        "an unreachable server names the address: {e}"
    );
}
