//! Per-document isolation in the indexing pipeline, with scripted stand-ins for
//! the loader, splitter, embedder and stores (the test is about the pipeline
//! around them): a document that makes any stage panic or fail is skipped with
//! its reason and the rest are indexed; failures that are not the documents'
//! (a full disk, an embedder that fails everything) stop the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use magpie_core::testing::MemoryLoader;
use magpie_core::{
    chunk_id_for, Catalog, Chunk, Document, Embedder, Error, Hit, IndexingPipeline, KeywordStore,
    Listing, Loader, NoProgress, Result, RunOptions, Skipped, SourceRef, Span, Splitter,
    StoredChunk, VectorStore,
};

/// Documents from memory; a uri containing PANIC_LOAD panics while loading.
struct MemLoader {
    inner: MemoryLoader,
    held: Mutex<Option<HashMap<String, String>>>,
}

impl MemLoader {
    fn new(docs: &[(&str, &str)]) -> Self {
        Self {
            inner: MemoryLoader::new(docs.iter().copied()),
            held: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Loader for MemLoader {
    fn origin(&self) -> String {
        "mem".into()
    }
    fn indexed(&self, held: &HashMap<String, String>) {
        *self.held.lock().unwrap() = Some(held.clone());
    }
    async fn list(&self) -> Result<Listing> {
        self.inner.list().await
    }
    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        assert!(
            !source.uri.contains("PANIC_LOAD"),
            "loader bug on {}",
            source.uri
        );
        self.inner.load(source).await
    }
}

/// One chunk per document; text containing PANIC_SPLIT panics.
struct OneChunk;
impl Splitter for OneChunk {
    fn split(&self, doc: &Document) -> Vec<Chunk> {
        if doc.text.contains("PANIC_SPLIT") {
            let s = "é";
            let _ = &s[1..]; // the kind of bug the NBSP text hit
        }
        vec![Chunk {
            id: chunk_id_for(&doc.id, &doc.content_hash, 0),
            doc_id: doc.id.clone(),
            doc_hash: doc.content_hash.clone(),
            source: doc.uri.clone(),
            index: 0,
            text: doc.text.clone(),
            span: Span {
                byte_start: 0,
                byte_end: doc.text.len(),
                line_start: 1,
                line_end: 1,
                page_start: None,
                page_end: None,
            },
            heading_path: vec![],
            title: None,
            metadata: doc.metadata.clone(),
        }]
    }
}

/// BAD_EMBED fails, PANIC_EMBED panics, ALL_BAD fails whatever the text.
struct Scripted {
    fail_all: bool,
}

#[async_trait]
impl Embedder for Scripted {
    fn model_id(&self) -> &str {
        "scripted"
    }
    fn dimension(&self) -> usize {
        2
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if self.fail_all {
            return Err(Error::stage("embedder", "the model server is gone"));
        }
        if texts.iter().any(|t| t.contains("PANIC_EMBED")) {
            panic!("index out of bounds in the tokenizer");
        }
        if texts.iter().any(|t| t.contains("BAD_EMBED")) {
            return Err(Error::stage("embedder", "cannot tokenize"));
        }
        Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
    }
}

/// Both stores in one map; BAD_STORE fails the upsert, DISK_FULL fails it with ENOSPC.
#[derive(Default)]
struct MemStore {
    chunks: Mutex<HashMap<String, StoredChunk>>,
}

impl MemStore {
    fn put(&self, chunks: &[Chunk]) -> Result<()> {
        if chunks.iter().any(|c| c.text.contains("DISK_FULL")) {
            return Err(Error::stage(
                "vector store",
                std::io::Error::from_raw_os_error(28),
            ));
        }
        let mut m = self.chunks.lock().unwrap();
        // A partial write before the failure, as a real store may leave.
        for c in chunks {
            m.insert(
                c.id.clone(),
                StoredChunk {
                    chunk_id: c.id.clone(),
                    doc_id: c.doc_id.clone(),
                    doc_hash: c.doc_hash.clone(),
                },
            );
        }
        if chunks.iter().any(|c| c.text.contains("BAD_STORE")) {
            return Err(Error::stage("vector store", "payload rejected"));
        }
        Ok(())
    }
    fn del_docs(&self, ids: &[String]) {
        self.chunks
            .lock()
            .unwrap()
            .retain(|_, c| !ids.contains(&c.doc_id));
    }
    fn del_chunks(&self, ids: &[String]) {
        self.chunks.lock().unwrap().retain(|k, _| !ids.contains(k));
    }
    fn all(&self) -> Vec<StoredChunk> {
        self.chunks.lock().unwrap().values().cloned().collect()
    }
}

#[async_trait]
impl VectorStore for MemStore {
    async fn upsert(&self, chunks: &[Chunk], _vectors: &[Vec<f32>]) -> Result<()> {
        self.put(chunks)
    }
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        self.del_docs(doc_ids);
        Ok(())
    }
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        self.del_chunks(chunk_ids);
        Ok(())
    }
    async fn search(&self, _vector: &[f32], _k: usize) -> Result<Vec<Hit>> {
        Ok(vec![])
    }
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        Ok(self.all())
    }
}

#[async_trait]
impl KeywordStore for MemStore {
    async fn upsert(&self, chunks: &[Chunk]) -> Result<()> {
        self.put(chunks)
    }
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        self.del_docs(doc_ids);
        Ok(())
    }
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        self.del_chunks(chunk_ids);
        Ok(())
    }
    async fn search(&self, _query: &str, _k: usize) -> Result<Vec<Hit>> {
        Ok(vec![])
    }
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        Ok(self.all())
    }
}

fn pipeline(dir: &std::path::Path, fail_all: bool) -> IndexingPipeline {
    let catalog = Catalog::open(dir.join("catalog.json")).unwrap();
    IndexingPipeline::new(
        Arc::new(OneChunk),
        Arc::new(Scripted { fail_all }),
        Arc::new(MemStore::default()),
        Arc::new(MemStore::default()),
        catalog,
    )
    .batch_chunks(4)
}

#[tokio::test]
async fn a_document_that_breaks_a_stage_is_skipped_and_the_rest_are_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut docs: Vec<(String, String)> = (0..10)
        .map(|i| (format!("good-{i}.txt"), format!("good text {i}")))
        .collect();
    for (uri, text) in [
        ("x-PANIC_LOAD.txt", "fine"),
        ("split.txt", "PANIC_SPLIT here"),
        ("embed.txt", "BAD_EMBED here"),
        ("embed-panic.txt", "PANIC_EMBED here"),
        ("store.txt", "BAD_STORE here"),
    ] {
        docs.insert(3, (uri.to_string(), text.to_string()));
    }
    let refs: Vec<(&str, &str)> = docs.iter().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    let loader = MemLoader::new(&refs);
    let mut p = pipeline(tmp.path(), false);
    let report = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .expect("the run goes on past bad documents");
    assert_eq!(report.indexed, 10, "{:?}", report.skipped);
    let reason = |uri: &str| {
        report
            .skipped
            .iter()
            .find(|s| s.uri == uri)
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{uri} not reported: {:?}", report.skipped))
    };
    assert!(reason("x-PANIC_LOAD.txt").contains("loader: crashed"));
    assert!(reason("split.txt").contains("splitter: crashed"));
    assert!(reason("split.txt").contains("char boundary"));
    assert!(reason("embed.txt").contains("cannot tokenize"));
    assert!(reason("embed-panic.txt").contains("embedder: crashed"));
    assert!(reason("store.txt").contains("payload rejected"));
    assert_eq!(report.skipped.len(), 5);
    // What failed left nothing behind: the stores hold the catalog's chunks exactly.
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.chunks, 10);
    // The loader was told what the index held of its origin (nothing, the first time).
    assert_eq!(
        loader.held.lock().unwrap().as_ref().map(|h| h.len()),
        Some(0)
    );

    // A second run: the good ones are unchanged, the bad ones tried again and
    // reported again; the loader now hears of the ten indexed documents.
    let report = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((report.unchanged, report.skipped.len()), (10, 5));
    assert_eq!(loader.held.lock().unwrap().as_ref().unwrap().len(), 10);
}

#[tokio::test]
async fn a_changed_document_that_fails_leaves_the_catalog_with_its_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = pipeline(tmp.path(), false);
    let v1 = MemLoader::new(&[("a.txt", "first version"), ("b.txt", "stays")]);
    p.run(&v1, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let v2 = MemLoader::new(&[("a.txt", "second version BAD_STORE"), ("b.txt", "stays")]);
    let report = p
        .run(&v2, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.skipped.len(), 1);
    // Its old chunks were replaced before the failure, so it left the catalog
    // (the next run indexes it again) and nothing dangles.
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.documents, 1);
}

#[tokio::test]
async fn failures_that_are_not_the_documents_stop_the_run() {
    // Every document fails: the cause is the embedder, and the run says so.
    let tmp = tempfile::tempdir().unwrap();
    let docs: Vec<(String, String)> = (0..20)
        .map(|i| (format!("d{i}.txt"), format!("text {i}")))
        .collect();
    let refs: Vec<(&str, &str)> = docs.iter().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    let e = pipeline(tmp.path(), true)
        .run(&MemLoader::new(&refs), &RunOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    let msg = magpie_core::error_chain(&e);
    assert!(
        msg.contains("in a row") && msg.contains("model server is gone"),
        "{msg}"
    );

    // A full disk stops the run at once, with advice.
    let tmp = tempfile::tempdir().unwrap();
    let e = pipeline(tmp.path(), false)
        .run(
            &MemLoader::new(&[("a.txt", "ok"), ("b.txt", "DISK_FULL"), ("c.txt", "ok")]),
            &RunOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    let msg = magpie_core::error_chain(&e);
    assert!(msg.contains("No space left"), "{msg}");
}

/// Records what the stages do, in order.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Events {
    fn push(&self, e: String) {
        self.0.lock().unwrap().push(e);
    }
    fn position(&self, e: &str) -> usize {
        let v = self.0.lock().unwrap();
        v.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e} in {v:?}"))
    }
}

/// An embedder that takes 80 ms a call and logs it.
struct SlowEmbed(Arc<Events>);

#[async_trait]
impl Embedder for SlowEmbed {
    fn model_id(&self) -> &str {
        "slow"
    }
    fn dimension(&self) -> usize {
        2
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.0.push(format!("embed start {}", texts[0]));
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        self.0.push(format!("embed end {}", texts[0]));
        Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
    }
}

/// A vector store that takes 80 ms an upsert and logs it.
struct SlowStore(MemStore, Arc<Events>);

#[async_trait]
impl VectorStore for SlowStore {
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        self.1.push(format!("write start {}", chunks[0].text));
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        self.1.push(format!("write end {}", chunks[0].text));
        VectorStore::upsert(&self.0, chunks, vectors).await
    }
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        VectorStore::delete_docs(&self.0, doc_ids).await
    }
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        VectorStore::delete_chunks(&self.0, chunk_ids).await
    }
    async fn search(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        VectorStore::search(&self.0, vector, k).await
    }
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        VectorStore::list_chunks(&self.0).await
    }
}

/// Embedding the next batch runs while the previous one is written, and the
/// documents after it are loaded and split meanwhile: the encoder does not
/// wait for the stores or the loader.
#[tokio::test]
async fn stages_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let events = Arc::new(Events::default());
    let docs: Vec<(String, String)> = (0..6)
        .map(|i| (format!("d{i}.txt"), format!("doc{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = docs.iter().map(|(u, t)| (u.as_str(), t.as_str())).collect();
    let mut p = IndexingPipeline::new(
        Arc::new(OneChunk),
        Arc::new(SlowEmbed(events.clone())),
        Arc::new(SlowStore(MemStore::default(), events.clone())),
        Arc::new(MemStore::default()),
        Catalog::open(tmp.path().join("catalog.json")).unwrap(),
    )
    .batch_chunks(1);
    let report = p
        .run(&MemLoader::new(&refs), &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.indexed, 6);
    // doc1 is embedded while doc0 is being written
    let e = &events;
    assert!(
        e.position("embed start doc1") < e.position("write end doc0"),
        "{:?}",
        e.0.lock().unwrap()
    );
    // writes stay in order, one at a time
    for i in 0..5 {
        assert!(
            e.position(&format!("write end doc{i}"))
                < e.position(&format!("write start doc{}", i + 1))
        );
    }
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
}
