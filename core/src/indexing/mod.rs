//! The indexing pipeline: load → split → embed → upsert into both stores → commit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::catalog::{Catalog, CatalogEntry};
use crate::error::{error_chain, Error, Result};
use crate::guard::{catch_async, ensure_free_space};
use crate::traits::{Embedder, KeywordStore, Loader, Skipped, Splitter, StoredChunk, VectorStore};
use crate::types::Chunk;

/// What happened to one source during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocStatus {
    /// New or changed, and indexed with this many chunks.
    Indexed(usize),
    /// Same content hash as the indexed version: nothing to do.
    Unchanged,
    /// Not indexed, with the reason.
    Skipped(String),
}

/// Receives progress events; the default methods do nothing.
pub trait IndexProgress: Send + Sync {
    /// The run found `total` sources.
    fn start(&self, _total: usize) {}
    /// One source was handled.
    fn source_done(&self, _uri: &str, _status: &DocStatus) {}
    /// `n` more chunks were embedded.
    fn embedded(&self, _n: usize) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl IndexProgress for NoProgress {}

/// Errors that stop a run at once rather than skipping a document.
fn is_fatal(e: &Error) -> bool {
    matches!(
        e,
        Error::DiskFull(_) | Error::Cancelled | Error::Io { .. } | Error::Unavailable(_)
    ) || crate::guard::mentions_disk_full(e)
}

/// Options for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Remove documents of the loader's origin whose sources are gone.
    pub sync: bool,
}

/// What a consistency check of the stores against the catalog found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// Documents in the catalog.
    pub documents: usize,
    /// Chunks the catalog accounts for.
    pub chunks: usize,
    /// Chunks in the vector store.
    pub vector_chunks: usize,
    /// Chunks in the keyword store.
    pub keyword_chunks: usize,
    /// Chunk ids stored more than once in one store.
    pub duplicates: usize,
    /// Stored chunks the catalog does not account for (leftovers of an interrupted run).
    pub orphans: usize,
    /// Catalog documents missing at least one chunk in one store.
    pub incomplete_docs: Vec<String>,
}

impl Consistency {
    /// True when both stores hold exactly the catalog's chunks, once each.
    pub fn is_consistent(&self) -> bool {
        self.duplicates == 0
            && self.orphans == 0
            && self.incomplete_docs.is_empty()
            && self.vector_chunks == self.chunks
            && self.keyword_chunks == self.chunks
    }
}

/// Summary of an indexing run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexReport {
    /// Sources the loader listed.
    pub sources: usize,
    /// Documents indexed (new or changed).
    pub indexed: usize,
    /// Documents whose content was unchanged.
    pub unchanged: usize,
    /// Chunks embedded and stored.
    pub chunks: usize,
    /// Documents removed by `--sync`.
    pub removed: usize,
    /// Leftover chunks from an interrupted run that were cleaned up first.
    pub repaired_chunks: usize,
    /// Documents dropped by the repair because a store was missing some of their chunks.
    pub repaired_docs: usize,
    /// Documents another process wrote at the same time (a shared catalog):
    /// its version was kept and this run's chunks of them removed.
    #[serde(default)]
    pub superseded: usize,
    /// Sources not indexed, with reasons.
    pub skipped: Vec<Skipped>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time spent embedding.
    pub embed_time: Duration,
}

impl IndexReport {
    /// The share of the run's wall time the embedder was working (the
    /// pipeline overlaps loading, splitting and writing with it, so near 1.0
    /// means the encoder never waited).
    pub fn encoder_busy(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            (self.embed_time.as_secs_f64() / s).min(1.0)
        } else {
            0.0
        }
    }

    /// Chunks stored per second of wall time.
    pub fn chunks_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.chunks as f64 / s
        } else {
            0.0
        }
    }
}

/// Indexes documents into a vector store and a keyword store, idempotently and crash-safely.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use magpie_core::*;
/// # async fn demo(loader: &dyn Loader, splitter: Arc<dyn Splitter>, embedder: Arc<dyn Embedder>,
/// #   vectors: Arc<dyn VectorStore>, keywords: Arc<dyn KeywordStore>) -> Result<()> {
/// let catalog = Catalog::open("index/catalog.json")?;
/// let mut pipeline = IndexingPipeline::new(splitter, embedder, vectors, keywords, catalog);
/// let report = pipeline.run(loader, &RunOptions::default(), &NoProgress).await?;
/// println!("{} documents, {} chunks", report.indexed, report.chunks);
/// # Ok(()) }
/// ```
pub struct IndexingPipeline {
    splitter: Arc<dyn Splitter>,
    embedder: Arc<dyn Embedder>,
    vectors: Arc<dyn VectorStore>,
    keywords: Arc<dyn KeywordStore>,
    catalog: Catalog,
    batch_chunks: usize,
    commit_chunks: usize,
    concurrency: usize,
    storage_dir: Option<PathBuf>,
    failing_streak: usize,
    /// The stores matched the catalog when the last run ended: the next run
    /// need not scan them again (this pipeline is their only writer).
    in_step: bool,
}

/// Documents failing in a row (each alone) before a run gives up: past this the
/// cause is the embedder or a store, not the documents.
const MAX_FAILING_STREAK: usize = 8;

mod stages;

use stages::{embed_stage, prepare_stage, Embedded, EmbeddedDoc, Pending, Prepared, PREPARE_AHEAD};

impl IndexingPipeline {
    /// A pipeline writing into `vectors` and `keywords`, tracking documents in `catalog`.
    pub fn new(
        splitter: Arc<dyn Splitter>,
        embedder: Arc<dyn Embedder>,
        vectors: Arc<dyn VectorStore>,
        keywords: Arc<dyn KeywordStore>,
        catalog: Catalog,
    ) -> Self {
        Self {
            splitter,
            embedder,
            vectors,
            keywords,
            catalog,
            batch_chunks: 256,
            commit_chunks: 2048,
            concurrency: 4,
            storage_dir: None,
            failing_streak: 0,
            in_step: false,
        }
    }

    /// The directory the stores write to: its free space is checked before each
    /// batch, so a full disk stops the run with a message instead of a crash.
    pub fn storage_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage_dir = Some(dir.into());
        self
    }

    /// Chunks embedded and written per batch.
    pub fn batch_chunks(mut self, n: usize) -> Self {
        self.batch_chunks = n.max(1);
        self
    }

    /// Chunks written between commits (a crash loses at most this much work).
    pub fn commit_chunks(mut self, n: usize) -> Self {
        self.commit_chunks = n.max(1);
        self
    }

    /// Sources loaded concurrently.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The catalog of indexed documents.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The vector and keyword stores it writes to.
    pub fn stores(&self) -> (&Arc<dyn VectorStore>, &Arc<dyn KeywordStore>) {
        (&self.vectors, &self.keywords)
    }

    /// Compare both stores with the catalog without changing anything.
    pub async fn check(&self) -> Result<Consistency> {
        let v = self.vectors.list_chunks().await?;
        let k = self.keywords.list_chunks().await?;
        Ok(self.compare(&v, &k).0)
    }

    fn compare(
        &self,
        v: &[StoredChunk],
        k: &[StoredChunk],
    ) -> (Consistency, BTreeSet<String>, BTreeSet<String>) {
        let mut expected: HashMap<String, String> = HashMap::new();
        for (doc_id, e) in self.catalog.iter() {
            for id in e.chunk_ids(doc_id) {
                expected.insert(id, doc_id.clone());
            }
        }
        let mut c = Consistency {
            documents: self.catalog.len(),
            chunks: expected.len(),
            vector_chunks: v.len(),
            keyword_chunks: k.len(),
            ..Default::default()
        };
        let mut orphan_ids = BTreeSet::new();
        let mut incomplete = BTreeSet::new();
        for store in [v, k] {
            let mut seen = HashSet::new();
            for s in store {
                if !seen.insert(s.chunk_id.as_str()) {
                    c.duplicates += 1;
                }
                if !expected.contains_key(&s.chunk_id) {
                    c.orphans += 1;
                    orphan_ids.insert(s.chunk_id.clone());
                }
            }
            for (id, doc) in &expected {
                if !seen.contains(id.as_str()) {
                    incomplete.insert(doc.clone());
                }
            }
        }
        c.incomplete_docs = incomplete.iter().cloned().collect();
        (c, orphan_ids, incomplete)
    }

    /// Bring the stores back in line with the catalog after an interrupted run:
    /// remove chunks it does not account for, drop documents that lost chunks
    /// (they are indexed again by the next run). Returns (chunks removed, docs dropped).
    pub async fn repair(&mut self) -> Result<(usize, usize)> {
        let v = self.vectors.list_chunks().await?;
        let k = self.keywords.list_chunks().await?;
        let (c, orphans, incomplete) = self.compare(&v, &k);
        if c.is_consistent() {
            return Ok((0, 0));
        }
        warn!(
            orphans = c.orphans,
            incomplete = incomplete.len(),
            duplicates = c.duplicates,
            "index was interrupted; repairing"
        );
        let orphans: Vec<String> = orphans.into_iter().collect();
        let incomplete: Vec<String> = incomplete.into_iter().collect();
        if !orphans.is_empty() {
            self.vectors.delete_chunks(&orphans).await?;
            self.keywords.delete_chunks(&orphans).await?;
        }
        if !incomplete.is_empty() {
            self.vectors.delete_docs(&incomplete).await?;
            self.keywords.delete_docs(&incomplete).await?;
            for d in &incomplete {
                self.catalog.remove(d);
            }
        }
        self.commit().await?;
        Ok((orphans.len(), incomplete.len()))
    }

    /// Index everything `loader` lists. Unchanged documents are skipped without
    /// embedding; changed ones have their old chunks replaced.
    pub async fn run(
        &mut self,
        loader: &dyn Loader,
        opts: &RunOptions,
        progress: &dyn IndexProgress,
    ) -> Result<IndexReport> {
        let t0 = Instant::now();
        let mut report = IndexReport::default();
        if self.catalog.is_shared() {
            // Other processes write too: start from what they did, and leave
            // chunks the catalog does not name alone (they may be another
            // writer's, not yet in the catalog); `repair` is explicit here.
            self.catalog.refresh().await?;
        } else if !std::mem::take(&mut self.in_step) {
            let (rc, rd) = self.repair().await?;
            report.repaired_chunks = rc;
            report.repaired_docs = rd;
        }

        let origin = loader.origin();
        let held: HashMap<String, String> = self
            .catalog
            .iter()
            .filter(|(_, e)| e.origin == origin)
            .map(|(_, e)| (e.uri.clone(), e.hash.clone()))
            .collect();
        loader.indexed(&held);
        let listing = loader
            .list()
            .instrument(info_span!("list", %origin))
            .await?;
        report.sources = listing.sources.len();
        progress.start(listing.sources.len() + listing.skipped.len());
        for s in listing.skipped {
            progress.source_done(&s.uri, &DocStatus::Skipped(s.reason.clone()));
            report.skipped.push(s);
        }

        // Sources that still exist, even if they fail to load this time: `--sync`
        // keeps their last good version rather than losing it.
        let listed: HashSet<String> = listing.sources.iter().map(|s| s.uri.clone()).collect();
        self.failing_streak = 0;

        // Three stages on bounded queues, so the encoder never waits: loading and
        // splitting the next documents, embedding a batch, and writing the
        // previous batch to the stores run at the same time. Only the writer
        // touches the stores and the catalog, in order, as before.
        let held_hashes: HashMap<String, String> = self
            .catalog
            .iter()
            .map(|(id, e)| (id.clone(), e.hash.clone()))
            .collect();
        let (to_embed, from_prepare) = tokio::sync::mpsc::channel::<Prepared>(PREPARE_AHEAD);
        let (to_write, from_embed) = tokio::sync::mpsc::channel::<Embedded>(1);
        let prepare = prepare_stage(
            loader,
            &listing.sources,
            self.splitter.clone(),
            &held_hashes,
            origin.clone(),
            self.concurrency,
            to_embed,
        );
        let embed = embed_stage(
            self.embedder.clone(),
            from_prepare,
            to_write,
            self.batch_chunks,
            progress,
        );
        let write = self.write_stage(from_embed, &mut report, progress);
        let (seen, (), written) = tokio::join!(prepare, embed, write);
        written?;

        if opts.sync {
            let gone: Vec<String> = self
                .catalog
                .iter()
                .filter(|(id, e)| {
                    e.origin == origin && !seen.contains(*id) && !listed.contains(&e.uri)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !gone.is_empty() {
                info!(
                    count = gone.len(),
                    "removing documents whose sources are gone"
                );
                // A shared catalog's removals delete their chunks once they settle.
                if !self.catalog.is_shared() {
                    self.vectors.delete_docs(&gone).await?;
                    self.keywords.delete_docs(&gone).await?;
                }
                for id in &gone {
                    self.catalog.remove(id);
                }
                report.removed = gone.len();
            }
        }
        report.superseded += self.settle().await?;
        self.in_step = true;
        report.elapsed = t0.elapsed();
        info!(
            indexed = report.indexed,
            unchanged = report.unchanged,
            chunks = report.chunks,
            skipped = report.skipped.len(),
            secs = report.elapsed.as_secs_f64(),
            "indexing finished"
        );
        Ok(report)
    }

    /// The writing stage: takes embedded batches in order, writes them, commits
    /// every `commit_chunks`. Ends with the first fatal error.
    async fn write_stage(
        &mut self,
        mut from_embed: tokio::sync::mpsc::Receiver<Embedded>,
        report: &mut IndexReport,
        progress: &dyn IndexProgress,
    ) -> Result<()> {
        let mut since_commit = 0usize;
        while let Some(item) = from_embed.recv().await {
            match item {
                Embedded::Skip(skip) => {
                    progress.source_done(&skip.uri, &DocStatus::Skipped(skip.reason.clone()));
                    report.skipped.push(skip);
                }
                Embedded::Unchanged(uri) => {
                    report.unchanged += 1;
                    progress.source_done(&uri, &DocStatus::Unchanged);
                }
                Embedded::Fatal(e) => return Err(e),
                Embedded::Batch { docs, embed_time } => {
                    report.embed_time += embed_time;
                    since_commit += self.write_batch(docs, report, progress).await?;
                    if since_commit >= self.commit_chunks {
                        report.superseded += self.settle().await?;
                        since_commit = 0;
                    }
                }
            }
        }
        Ok(())
    }

    /// Store an embedded batch. A failure is retried one document at a time, so
    /// one bad document is skipped with its reason and the others are stored; a
    /// full disk, or documents failing one after another, stop the run.
    async fn write_batch(
        &mut self,
        batch: Vec<EmbeddedDoc>,
        report: &mut IndexReport,
        progress: &dyn IndexProgress,
    ) -> Result<usize> {
        let span = info_span!("batch", docs = batch.len());
        async {
            if let Some(dir) = &self.storage_dir {
                let chunks: usize = batch.iter().map(|(p, _)| p.chunks.len()).sum();
                let text: usize = batch
                    .iter()
                    .flat_map(|(p, _)| &p.chunks)
                    .map(|c| c.text.len())
                    .sum();
                // Vectors, payloads and postings, with room for segment merges.
                let need =
                    crate::guard::MIN_FREE_TO_OPEN + 4 * (text as u64 + 8192 * chunks as u64);
                ensure_free_space(dir, need, &format!("writing {chunks} chunks"))?;
            }
            let replaced: Vec<String> = batch
                .iter()
                .filter(|(p, _)| self.catalog.get(&p.doc.id).is_some())
                .map(|(p, _)| p.doc.id.clone())
                .collect();
            // A shared catalog's old versions stay searchable until the new
            // ones settle (another writer may win); then their chunks go.
            if !replaced.is_empty() && !self.catalog.is_shared() {
                debug!(count = replaced.len(), "replacing changed documents");
                self.vectors.delete_docs(&replaced).await?;
                self.keywords.delete_docs(&replaced).await?;
            }
            let mut failed: HashMap<usize, Error> = HashMap::new();
            let mut ready: Vec<(usize, &Pending, &[Vec<f32>])> = Vec::new();
            for (i, (p, vectors)) in batch.iter().enumerate() {
                match vectors {
                    Ok(v) => ready.push((i, p, v)),
                    Err(e) => {
                        failed.insert(i, Error::stage("embedder", error_chain(e)));
                    }
                }
            }
            match self.store(&ready).await {
                Ok(()) => {}
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) if ready.len() == 1 => {
                    failed.insert(ready[0].0, e);
                }
                Err(e) => {
                    warn!(
                        "a batch of {} documents failed ({}); storing them one at a time",
                        ready.len(),
                        error_chain(&e)
                    );
                    for one in &ready {
                        if let Err(e) = self.store(std::slice::from_ref(one)).await {
                            if is_fatal(&e) {
                                return Err(e);
                            }
                            failed.insert(one.0, e);
                        }
                    }
                }
            }
            drop(ready);
            let mut stored = 0;
            let mut last_error = None;
            for (i, (p, _)) in batch.into_iter().enumerate() {
                let n = p.chunks.len();
                if let Some(e) = failed.remove(&i) {
                    // Its old version's chunks are gone too: it leaves the catalog,
                    // and the next run tries it again. (A shared catalog's old
                    // version was left in place, and stays.)
                    if !self.catalog.is_shared() {
                        self.catalog.remove(&p.doc.id);
                    }
                    let reason = error_chain(&e);
                    warn!(uri = %p.doc.uri, %reason, "document not indexed");
                    progress.source_done(&p.doc.uri, &DocStatus::Skipped(reason.clone()));
                    report.skipped.push(Skipped {
                        uri: p.doc.uri.clone(),
                        reason,
                    });
                    self.failing_streak += 1;
                    last_error = Some(e);
                    continue;
                }
                self.failing_streak = 0;
                self.catalog.insert(
                    p.doc.id.clone(),
                    CatalogEntry {
                        uri: p.doc.uri.clone(),
                        hash: p.doc.content_hash.clone(),
                        chunks: n,
                        origin: p.origin,
                        mime: p.doc.mime.clone(),
                        title: p.doc.title().map(str::to_string),
                    },
                );
                report.indexed += 1;
                report.chunks += n;
                stored += n;
                progress.source_done(&p.doc.uri, &DocStatus::Indexed(n));
            }
            if self.failing_streak >= MAX_FAILING_STREAK {
                let last = last_error.map(|e| error_chain(&e)).unwrap_or_default();
                return Err(Error::stage(
                    "indexing",
                    format!(
                        "{} documents in a row could not be embedded or stored, so the cause is \
                         not the documents (the last: {last}); fix it and run again",
                        self.failing_streak
                    ),
                ));
            }
            Ok(stored)
        }
        .instrument(span)
        .await
    }

    /// Upsert the chunks of `docs`, with their vectors, into both stores. On
    /// failure, what was written of them is removed again (as far as the
    /// stores allow).
    async fn store(&self, docs: &[(usize, &Pending, &[Vec<f32>])]) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut vectors: Vec<Vec<f32>> = Vec::new();
        for (_, p, v) in docs {
            chunks.extend(p.chunks.iter().cloned());
            vectors.extend(v.iter().cloned());
        }
        let written = async {
            catch_async("vector store", self.vectors.upsert(&chunks, &vectors)).await??;
            catch_async("keyword store", self.keywords.upsert(&chunks)).await?
        }
        .await;
        if written.is_err() {
            if self.catalog.is_shared() {
                // Only this attempt's chunks: the document's stored version stays.
                let ids: Vec<String> = chunks.iter().map(|c| c.id.clone()).collect();
                let _ = catch_async("vector store", self.vectors.delete_chunks(&ids)).await;
                let _ = catch_async("keyword store", self.keywords.delete_chunks(&ids)).await;
            } else {
                let ids: Vec<String> = docs.iter().map(|(_, p, _)| p.doc.id.clone()).collect();
                let _ = catch_async("vector store", self.vectors.delete_docs(&ids)).await;
                let _ = catch_async("keyword store", self.keywords.delete_docs(&ids)).await;
            }
        }
        written
    }

    /// Commit both stores, then the catalog: the order that makes a crash recoverable.
    pub async fn commit(&mut self) -> Result<()> {
        self.settle().await.map(|_| ())
    }

    /// [`Self::commit`], then remove the chunks no version in a shared catalog
    /// names any more (replaced versions, and ours where another writer won).
    /// Returns the documents another writer won.
    async fn settle(&mut self) -> Result<usize> {
        self.vectors.commit().await?;
        self.keywords.commit().await?;
        let settled = self.catalog.persist().await?;
        let lost = settled.iter().filter(|s| !s.won).count();
        let unreferenced: Vec<String> = settled
            .iter()
            .flat_map(|s| s.unreferenced_chunks())
            .collect();
        if !unreferenced.is_empty() {
            debug!(
                chunks = unreferenced.len(),
                lost, "removing chunks of replaced versions"
            );
            self.vectors.delete_chunks(&unreferenced).await?;
            self.keywords.delete_chunks(&unreferenced).await?;
            self.vectors.commit().await?;
            self.keywords.commit().await?;
        }
        Ok(lost)
    }

    /// Remove documents by id from both stores and the catalog.
    pub async fn delete_docs(&mut self, doc_ids: &[String]) -> Result<usize> {
        // Until it finishes, the stores may disagree with the catalog.
        let in_step = std::mem::take(&mut self.in_step);
        self.catalog.refresh().await?;
        let present: Vec<String> = doc_ids
            .iter()
            .filter(|d| self.catalog.get(d).is_some())
            .cloned()
            .collect();
        if !self.catalog.is_shared() {
            self.vectors.delete_docs(&present).await?;
            self.keywords.delete_docs(&present).await?;
        }
        for d in &present {
            self.catalog.remove(d);
        }
        self.commit().await?;
        self.in_step = in_step;
        Ok(present.len())
    }
}
