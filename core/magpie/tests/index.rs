//! The facade end to end with the real default embedder and the embedded
//! stores: open, add a folder, search, ask with a streamed answer (a scripted
//! model, the test is about the facade around it), and the errors a program
//! can act on.

use std::path::PathBuf;

use magpie::core::testing::ScriptedGenerator;
use magpie::{Error, Index, Models, OpenOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> Models {
    let dir = std::env::var_os("MAGPIE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    assert!(
        magpie::models::default_embedder_installed(&dir),
        "models missing in {}: run scripts/test.sh, which fetches them",
        dir.display()
    );
    Models::in_dir(dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn open_add_search_ask_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    let models = models();

    // Nothing there and nothing to create: a typed error.
    let none = Index::open_with(&dir, &models, OpenOptions::search());
    assert!(
        matches!(none, Err(Error::NoIndex { .. })),
        "{:?}",
        none.err()
    );

    let index = Index::open_with(&dir, &models, OpenOptions::index()).unwrap();
    let report = index
        .add(root().join("examples/docqa/sample"))
        .await
        .unwrap();
    assert!(report.indexed >= 5, "{report:?}");
    assert!(index.layout().settings().exists() && index.layout().catalog().exists());
    assert!(magpie::Layout::is_index(&dir));

    let hits = index.search("how do I install it?", 3).await.unwrap();
    assert!(!hits.is_empty());
    assert!(
        hits.iter().any(
            |h| h.chunk.source.ends_with("install.md") || h.chunk.source.ends_with("README.md")
        ),
        "{hits:?}"
    );
    // Again: nothing changed, nothing embedded.
    assert_eq!(
        index
            .add(root().join("examples/docqa/sample"))
            .await
            .unwrap()
            .chunks,
        0
    );

    let llm = ScriptedGenerator::new(["Install it in /opt [1]."]);
    let mut streamed = String::new();
    let answer = index
        .ask_stream("how do I install it?", &llm, |t| streamed.push_str(t))
        .await
        .unwrap();
    assert_eq!(streamed, "Install it in /opt [1].");
    assert_eq!(answer.text, streamed);
    assert_eq!(answer.citations.len(), 1, "{answer:?}");
    assert_eq!(answer.citations[0].number, 1);
    assert!(answer.sources.len() > 1);
    drop(index);

    // Reopened: the settings it was made with hold.
    let again = Index::open_with(
        &dir,
        &models,
        OpenOptions {
            chunk_tokens: Some(77),
            ..OpenOptions::search()
        },
    );
    match again {
        Err(Error::SettingMismatch { setting, have, .. }) => {
            assert_eq!((setting, have), ("chunk_tokens", 200));
        }
        other => panic!("expected a setting mismatch, got {:?}", other.err()),
    }
    let reopened = Index::open_with(&dir, &models, OpenOptions::search()).unwrap();
    assert_eq!(reopened.settings.embedding_model, "all-MiniLM-L6-v2");
    assert!(!reopened.search("install", 3).await.unwrap().is_empty());

    // A store that is neither embedded nor Qdrant is refused before anything is written.
    let other = tmp.path().join("other");
    let bad = Index::open_with(
        &other,
        &models,
        OpenOptions {
            store: Some("postgres://x".into()),
            ..OpenOptions::index()
        },
    );
    assert!(
        matches!(bad, Err(Error::UnknownStore(_))),
        "{:?}",
        bad.err()
    );
    assert!(!magpie::Layout::new(&other).settings().exists());
}
