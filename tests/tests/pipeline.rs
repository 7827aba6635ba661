//! End to end on the library API: real embedder, qdrant-edge and tantivy stores,
//! the bundled sample corpus.

use std::path::Path;
use std::sync::Arc;

use magpie_candle::BertEmbedder;
use magpie_core::{
    Catalog, DenseRetriever, Embedder, HybridRetriever, IndexingPipeline, KeywordRetriever,
    KeywordStore, NoProgress, QueryPipeline, Retriever, RunOptions, VectorStore,
};
use magpie_files::{DirectoryLoader, TokenSplitter};
use magpie_qdrant::EdgeStore;
use magpie_tantivy::TantivyStore;

struct Setup {
    pipeline: IndexingPipeline,
    hybrid: QueryPipeline,
    dense: DenseRetriever,
    bm25: KeywordRetriever,
}

fn setup(index: &Path, embedder: Arc<BertEmbedder>) -> Setup {
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EdgeStore::open(index.join("vectors"), embedder.dimension()).unwrap());
    let keywords: Arc<dyn KeywordStore> =
        Arc::new(TantivyStore::open(index.join("keywords")).unwrap());
    let splitter = Arc::new(TokenSplitter::new(embedder.token_counter()).chunk_tokens(120));
    let pipeline = IndexingPipeline::new(
        splitter,
        embedder.clone(),
        vectors.clone(),
        keywords.clone(),
        Catalog::open(index.join("catalog.json")).unwrap(),
    );
    let dense = DenseRetriever::new(embedder.clone(), vectors.clone());
    let bm25 = KeywordRetriever::new(keywords.clone());
    let hybrid = QueryPipeline::new(Arc::new(HybridRetriever::new(vec![
        Arc::new(DenseRetriever::new(embedder, vectors)) as Arc<dyn Retriever>,
        Arc::new(KeywordRetriever::new(keywords)),
    ])))
    .top_k(3);
    Setup {
        pipeline,
        hybrid,
        dense,
        bm25,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn index_search_update_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    copy_dir(&magpie_tests::sample_corpus(), &corpus);
    let index = tmp.path().join("index");
    let embedder =
        Arc::new(BertEmbedder::load(magpie_tests::minilm_dir().to_string_lossy()).unwrap());
    let mut s = setup(&index, embedder.clone());
    let loader = DirectoryLoader::new(&corpus);

    let first = s
        .pipeline
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(first.indexed, 7, "{first:?}");
    assert!(first.chunks >= first.indexed);
    assert!(first.skipped.is_empty(), "{:?}", first.skipped);
    assert!(s.pipeline.check().await.unwrap().is_consistent());

    // Hybrid search finds the right passages, with citations.
    let r = s.hybrid.search("what does error E42 mean?").await.unwrap();
    let top = &r.hits[0].chunk;
    assert!(
        top.source.ends_with("faq.txt") || top.source.ends_with("configuration.md"),
        "{top:?}"
    );
    assert!(top.text.contains("E42"));
    let r = s
        .hybrid
        .search("can magpies recognise themselves in a mirror")
        .await
        .unwrap();
    let top = &r.hits[0].chunk;
    assert!(
        top.source.ends_with("species-notes.html"),
        "{:?}",
        top.source
    );
    assert_eq!(top.heading_path, ["The Eurasian magpie", "Behaviour"]);
    assert_eq!(
        top.title.as_deref(),
        Some("Species notes: the Eurasian magpie")
    );
    // Chinese: BM25 with jieba segmentation
    let hits = s.bm25.retrieve("喜鹊的巢", 3).await.unwrap();
    assert!(
        hits[0].chunk.source.ends_with("magpie-zh.md"),
        "{:?}",
        hits[0].chunk.source
    );
    // Dense search understands paraphrase without shared keywords.
    let hits = s
        .dense
        .retrieve("putting the program on a computer running Ubuntu", 3)
        .await
        .unwrap();
    assert!(
        hits.iter().any(|h| h.chunk.source.ends_with("install.md")),
        "{hits:?}"
    );
    // Spans point into the file.
    let faq_text = std::fs::read_to_string(corpus.join("faq.txt")).unwrap();
    for h in s.bm25.retrieve("sync", 10).await.unwrap() {
        if h.chunk.source.ends_with("faq.txt") {
            assert_eq!(
                &faq_text[h.chunk.span.byte_start..h.chunk.span.byte_end],
                h.chunk.text
            );
        }
    }

    // Unchanged corpus: nothing embedded.
    let again = s
        .pipeline
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((again.indexed, again.unchanged, again.chunks), (0, 7, 0));

    // A changed file replaces its chunks.
    std::fs::write(
        corpus.join("faq.txt"),
        "What does error E77 mean?\nThe battery is too low to record a sighting.\n",
    )
    .unwrap();
    let changed = s
        .pipeline
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((changed.indexed, changed.unchanged), (1, 6));
    let hits = s.bm25.retrieve("E42 observer code", 10).await.unwrap();
    assert!(
        hits.iter().all(|h| !h.chunk.source.ends_with("faq.txt")),
        "old chunks remain"
    );
    let hits = s.bm25.retrieve("battery E77", 3).await.unwrap();
    assert!(hits[0].chunk.source.ends_with("faq.txt"));

    // A file that can no longer be read keeps its last good version, even with --sync.
    std::fs::write(corpus.join("guide/install.md"), b"\0\0binary now\0").unwrap();
    let bad = s
        .pipeline
        .run(&loader, &RunOptions { sync: true }, &NoProgress)
        .await
        .unwrap();
    assert_eq!(bad.removed, 0);
    assert!(bad
        .skipped
        .iter()
        .any(|k| k.uri.ends_with("install.md") && k.reason.contains("binary")));
    let hits = s
        .bm25
        .retrieve("unpack archive opt fieldnotes", 3)
        .await
        .unwrap();
    assert!(
        hits[0].chunk.source.ends_with("install.md"),
        "last good version kept"
    );

    // Deleted file: kept without --sync, removed with it.
    std::fs::remove_file(corpus.join("grid.rs")).unwrap();
    let kept = s
        .pipeline
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(kept.removed, 0);
    assert_eq!(s.pipeline.catalog().len(), 7);
    let synced = s
        .pipeline
        .run(&loader, &RunOptions { sync: true }, &NoProgress)
        .await
        .unwrap();
    assert_eq!(synced.removed, 1);
    assert_eq!(s.pipeline.catalog().len(), 6);
    let c = s.pipeline.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.vector_chunks, s.pipeline.catalog().chunk_count());

    // Reopening the index from disk gives the same state.
    drop(s);
    let s = setup(&index, embedder);
    let c = s.pipeline.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.documents, 6);
}

#[tokio::test]
async fn empty_query_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let embedder =
        Arc::new(BertEmbedder::load(magpie_tests::minilm_dir().to_string_lossy()).unwrap());
    let s = setup(tmp.path(), embedder);
    let e = s.hybrid.search("  ").await.unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[tokio::test]
async fn pdf_pages_and_docx_headings_survive_both_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(
        corpus.join("manual.pdf"),
        magpie_tests::docs::make_pdf(
            &[
                &["Chapter one covers unpacking the weather station."],
                &[
                    "Calibrating the barometer: hold the reset button for ten seconds",
                    "until the pressure reading blinks twice.",
                ],
                &["Chapter three lists the warranty terms."],
            ],
            Some("Station Manual"),
        ),
    )
    .unwrap();
    std::fs::write(
        corpus.join("notes.docx"),
        magpie_tests::docs::make_docx(&[
            (Some("Heading1"), "Garden birds"),
            (Some("Heading2"), "Feeding"),
            (None, "Robins prefer mealworms on a flat tray near a hedge."),
        ]),
    )
    .unwrap();
    let index = tmp.path().join("index");
    let embedder =
        Arc::new(BertEmbedder::load(magpie_tests::minilm_dir().to_string_lossy()).unwrap());
    let mut s = setup(&index, embedder);
    let report = s
        .pipeline
        .run(
            &DirectoryLoader::new(&corpus),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(report.indexed, 2, "{report:?}");
    let query = "how do I calibrate the barometer pressure reading";
    for hits in [
        s.dense.retrieve(query, 1).await.unwrap(),
        s.bm25.retrieve(query, 1).await.unwrap(),
    ] {
        let c = &hits[0].chunk;
        assert!(c.source.ends_with("manual.pdf"), "{c:?}");
        assert_eq!(c.span.page_start, Some(2), "{c:?}");
        assert_eq!(c.span.cite_suffix(), " p. 2");
        assert_eq!(c.title.as_deref(), Some("Station Manual"));
    }
    let hits = s.bm25.retrieve("robins mealworms", 1).await.unwrap();
    let c = &hits[0].chunk;
    assert!(c.source.ends_with("notes.docx"), "{c:?}");
    assert_eq!(c.heading_path, ["Garden birds", "Feeding"]);
    assert_eq!(c.span.page_start, None);
}
