//! Two processes' worth of writers on one Qdrant collection (the real server;
//! skipped loudly without one): the second opens the index from the shared
//! settings alone, skips what the first indexed, and two writers of one
//! document at once settle on one version with no stray chunks.

use std::path::PathBuf;

use magpie::core::testing::MemoryLoader;
use magpie::core::{NoProgress, RunOptions};
use magpie::{Index, Models, OpenOptions};

fn models() -> Models {
    let dir = std::env::var_os("MAGPIE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    assert!(
        magpie::models::default_embedder_installed(&dir),
        "models missing in {}: run scripts/test.sh, which fetches them",
        dir.display()
    );
    Models::in_dir(dir)
}

async fn add(index: &Index, docs: &MemoryLoader) -> magpie::IndexReport {
    let mut pipeline = index.pipeline().await.unwrap();
    pipeline
        .run(docs, &RunOptions::default(), &NoProgress)
        .await
        .unwrap()
}

const A: &str = "Grey herons nest in colonies called heronries, high in the trees near water.";
const B: &str = "Kingfishers dive for small fish from a low perch over slow rivers.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_two_places_share_one_index() {
    let collection = format!("facade_shared_{}", std::process::id());
    let Some((_, url)) = qdrant_standin::real_qdrant(&collection) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let models = models();
    let opts = OpenOptions {
        store: Some(url.clone()),
        ..OpenOptions::index()
    };
    let a = Index::open_with(&tmp.path().join("a"), &models, opts.clone()).unwrap();
    let docs = MemoryLoader::new([
        ("one.md", A),
        ("two.md", B),
        ("three.md", "Magpies collect shiny things."),
    ]);
    let first = add(&a, &docs).await;
    assert_eq!(first.indexed, 3);

    // A second place with no settings of its own: searching needs no create.
    let b = Index::open_with(
        &tmp.path().join("b"),
        &models,
        OpenOptions {
            store: Some(url.clone()),
            ..OpenOptions::search()
        },
    )
    .unwrap();
    assert_eq!(b.settings.dimension, a.settings.dimension);
    assert_eq!(b.settings.chunk_tokens, a.settings.chunk_tokens);
    assert_eq!(b.catalog().await.unwrap().len(), 3);
    let hits = b.search("where do herons nest?", 1).await.unwrap();
    assert_eq!(hits[0].chunk.source, "one.md");
    let again = add(&b, &docs).await;
    assert_eq!((again.indexed, again.unchanged), (0, 3), "{again:?}");

    // Both change one document at the same moment, each its own way: one
    // version is kept everywhere, and only its chunks are stored.
    let mut conflicts = 0;
    for round in 0..3 {
        let la = MemoryLoader::new([("one.md", format!("{A} Round {round}, written by A."))]);
        let lb = MemoryLoader::new([("one.md", format!("{B} Round {round}, written by B."))]);
        let (mut pa, mut pb) = (a.pipeline().await.unwrap(), b.pipeline().await.unwrap());
        let opts = RunOptions::default();
        let (ra, rb) = tokio::join!(
            pa.run(&la, &opts, &NoProgress),
            pb.run(&lb, &opts, &NoProgress)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        conflicts += ra.superseded + rb.superseded;
        assert!(ra.superseded + rb.superseded <= 1, "{ra:?} {rb:?}");
        let check = a.pipeline().await.unwrap().check().await.unwrap();
        assert!(check.is_consistent(), "round {round}: {check:?}");
        assert_eq!(check.documents, 3, "{check:?}");
        let id = magpie::core::doc_id_for("one.md");
        let kept = a.catalog().await.unwrap().get(&id).cloned();
        assert!(kept.is_some());
        assert_eq!(kept, b.catalog().await.unwrap().get(&id).cloned());
        // The kept version is the one search finds, whole.
        let text = a
            .search(&format!("herons kingfishers round {round} written by"), 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|h| h.chunk.doc_id == id)
            .map(|h| h.chunk.text)
            .collect::<Vec<_>>();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(text[0].contains(&format!("Round {round}")), "{text:?}");
    }
    assert!(conflicts >= 1, "the two writers never overlapped");
    a.remote.as_ref().unwrap().drop_collection().await.unwrap();
    a.shared.as_ref().unwrap().drop_collection().await.unwrap();
}
