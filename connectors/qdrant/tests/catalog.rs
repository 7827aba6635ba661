//! The shared catalog in a real Qdrant server: conditional writes settle two
//! writers of one document to one version, tombstones keep versions, settings
//! are recorded once, records (jobs) round-trip. Skipped loudly without a
//! real server.

use std::sync::Arc;

use magpie_core::{CasOutcome, Catalog, CatalogEntry, CatalogStore};
use magpie_qdrant::{QdrantCatalog, RemoteConfig};

fn entry(hash: &str, chunks: usize) -> CatalogEntry {
    CatalogEntry {
        uri: "a.md".into(),
        hash: hash.into(),
        chunks,
        origin: "docs".into(),
        mime: "text/markdown".into(),
        title: None,
    }
}

async fn two_writers(collection: &str) -> Option<(Arc<QdrantCatalog>, Arc<QdrantCatalog>)> {
    let (_, url) = qdrant_standin::real_qdrant(collection)?;
    let cfg = RemoteConfig::parse(&url).unwrap();
    let a = Arc::new(QdrantCatalog::connect(&cfg).await.unwrap());
    let b = Arc::new(QdrantCatalog::connect(&cfg).await.unwrap());
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_let_one_writer_win() {
    let Some((a, b)) = two_writers(&format!("cat_cas_{}", std::process::id())).await else {
        return;
    };
    // Both saw the document absent and write at once: exactly one lands.
    for round in 0..20 {
        let doc = format!("doc{round}");
        let (ea, eb) = (entry("ha", 2), entry("hb", 3));
        let (ra, rb) = tokio::join!(
            a.compare_and_set(&doc, 0, Some(&ea)),
            b.compare_and_set(&doc, 0, Some(&eb))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let won: Vec<bool> = [&ra, &rb]
            .iter()
            .map(|o| matches!(o, CasOutcome::Written(1)))
            .collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        let stored = a.get(&doc).await.unwrap().unwrap();
        assert_eq!(stored.version, 1);
        let loser = if won[0] { &rb } else { &ra };
        assert_eq!(loser, &CasOutcome::Conflict(Some(stored)));
    }
    // A stale version is refused; the current one moves on; a removal keeps a tombstone.
    assert!(matches!(
        a.compare_and_set("doc0", 0, Some(&entry("x", 1)))
            .await
            .unwrap(),
        CasOutcome::Conflict(_)
    ));
    assert_eq!(
        a.compare_and_set("doc0", 1, None).await.unwrap(),
        CasOutcome::Written(2)
    );
    assert!(!a.load().await.unwrap().contains_key("doc0"));
    assert_eq!(a.get("doc0").await.unwrap().unwrap().version, 2);
    assert_eq!(a.load().await.unwrap().len(), 19);

    // Settings are recorded once: the second process gets the first's.
    let first = serde_json::json!({"embedding_model": "m1", "dimension": 4});
    let second = serde_json::json!({"embedding_model": "m2", "dimension": 8});
    assert_eq!(a.init_settings(&first).await.unwrap(), first);
    assert_eq!(b.init_settings(&second).await.unwrap(), first);
    assert_eq!(b.settings().await.unwrap(), Some(first));

    // Records (jobs) round-trip.
    let job = serde_json::json!({"status": "done", "chunks": 3});
    a.put_record("job", "j1", &job).await.unwrap();
    assert_eq!(b.record("job", "j1").await.unwrap(), Some(job.clone()));
    assert_eq!(b.records("job").await.unwrap().len(), 1);
    a.drop_collection().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shared_catalogs_converge_on_one_version() {
    let Some((a, b)) = two_writers(&format!("cat_conv_{}", std::process::id())).await else {
        return;
    };
    let mut ca = Catalog::shared(a.clone()).await.unwrap();
    let mut cb = Catalog::shared(b.clone()).await.unwrap();
    ca.insert("d".into(), entry("v1", 2));
    assert!(ca.persist().await.unwrap()[0].won);
    cb.refresh().await.unwrap();
    assert_eq!(cb.get("d"), Some(&entry("v1", 2)));
    // Both change it from v1 at once.
    ca.insert("d".into(), entry("va", 4));
    cb.insert("d".into(), entry("vb", 5));
    let (sa, sb) = tokio::join!(ca.persist(), cb.persist());
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.len(), 1);
    assert_eq!(sb.len(), 1);
    assert!(sa[0].won ^ sb[0].won, "{sa:?} {sb:?}");
    let (winner, loser) = if sa[0].won {
        (&sa[0], &sb[0])
    } else {
        (&sb[0], &sa[0])
    };
    assert_eq!(loser.kept, winner.ours);
    // The loser's chunks and v1's go; the winner's stay.
    let gone = loser.unreferenced_chunks();
    assert_eq!(gone.len(), 2 + loser.ours.as_ref().unwrap().chunks);
    assert_eq!(winner.unreferenced_chunks().len(), 2);
    // Both catalogs now hold the winner's version.
    assert_eq!(ca.get("d"), cb.get("d"));
    a.drop_collection().await.unwrap();
}
