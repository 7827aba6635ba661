//! Test doubles for code built on magpie (feature `testing`): stores kept in
//! memory that can be made to crash at a chosen commit, a deterministic
//! hashing embedder, a word splitter, a loader over strings and a scripted
//! generator. They run in microseconds, so the pipelines around them can be
//! tested without models or files.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use magpie_core::testing::{HashingEmbedder, MemoryLoader, MemoryStore, WordSplitter};
//! use magpie_core::{Catalog, IndexingPipeline, NoProgress, RunOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
//! let mut pipeline = IndexingPipeline::new(
//!     Arc::new(WordSplitter::new(50)),
//!     Arc::new(HashingEmbedder::new(64)),
//!     Arc::new(vectors.clone()),
//!     Arc::new(keywords.clone()),
//!     Catalog::open(dir.path().join("catalog.json")).unwrap(),
//! );
//! let docs = MemoryLoader::new([("a.txt", "magpies collect shiny things")]);
//! let report = pipeline.run(&docs, &RunOptions::default(), &NoProgress).await.unwrap();
//! assert_eq!(report.indexed, 1);
//! assert_eq!((vectors.len(), keywords.len()), (1, 1));
//! # });
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::generate::{
    FinishReason, GenerationEvent, GenerationOptions, GenerationStream, GenerationSummary,
    Generator, Prompt, Usage,
};
use crate::traits::{
    Embedder, KeywordStore, Listing, Loader, Skipped, SourceRef, Splitter, StoredChunk, VectorStore,
};
use crate::types::{chunk_id_for, Chunk, Document, Hit, Span};

#[derive(Default)]
struct MemState {
    /// What searches and listings see (every write so far).
    live: BTreeMap<String, (Chunk, Vec<f32>)>,
    /// What survives a crash (the state at the last commit).
    durable: BTreeMap<String, (Chunk, Vec<f32>)>,
    commits: usize,
    /// Crash instead of making this commit (1-based) durable.
    crash_at: Option<usize>,
    crashed: bool,
}

/// A vector store and a keyword store in one, in memory. Writes are seen at
/// once and become durable at `commit`; [`MemoryStore::crash_at_commit`]
/// makes a chosen commit fail as if the process died there, and
/// [`MemoryStore::restarted`] gives what a new process would find.
/// Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<MemState>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the `n`-th commit (1-based) fail, and every call after it.
    pub fn crash_at_commit(&self, n: usize) {
        self.lock().crash_at = Some(n);
    }

    /// Commits made so far.
    pub fn commits(&self) -> usize {
        self.lock().commits
    }

    /// A new store holding what was durable here (the last commit's state),
    /// as a process restarted after a crash finds it.
    pub fn restarted(&self) -> MemoryStore {
        let s = self.lock();
        let state = MemState {
            live: s.durable.clone(),
            durable: s.durable.clone(),
            ..Default::default()
        };
        MemoryStore {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Number of chunks held (live).
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// True when no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alive(&self) -> Result<std::sync::MutexGuard<'_, MemState>> {
        let s = self.lock();
        if s.crashed {
            return Err(Error::stage("memory store", "the store crashed (test)"));
        }
        Ok(s)
    }

    fn put(&self, chunks: &[Chunk], vectors: Option<&[Vec<f32>]>) -> Result<()> {
        let mut s = self.alive()?;
        for (i, c) in chunks.iter().enumerate() {
            let v = vectors.map(|v| v[i].clone()).unwrap_or_default();
            s.live.insert(c.id.clone(), (c.clone(), v));
        }
        Ok(())
    }

    fn delete_where(&self, f: impl Fn(&Chunk) -> bool) -> Result<()> {
        self.alive()?.live.retain(|_, (c, _)| !f(c));
        Ok(())
    }

    fn do_commit(&self) -> Result<()> {
        let mut s = self.alive()?;
        let n = s.commits + 1;
        if s.crash_at == Some(n) {
            s.crashed = true;
            return Err(Error::stage("memory store", "crashed at commit (test)"));
        }
        s.commits = n;
        s.durable = s.live.clone();
        Ok(())
    }

    fn listed(&self) -> Result<Vec<StoredChunk>> {
        Ok(self
            .alive()?
            .live
            .values()
            .map(|(c, _)| StoredChunk {
                chunk_id: c.id.clone(),
                doc_id: c.doc_id.clone(),
                doc_hash: c.doc_hash.clone(),
            })
            .collect())
    }

    fn ranked(&self, k: usize, score: impl Fn(&Chunk, &[f32]) -> f32) -> Result<Vec<Hit>> {
        let s = self.alive()?;
        let mut hits: Vec<Hit> = s
            .live
            .values()
            .map(|(c, v)| Hit {
                score: score(c, v),
                chunk: c.clone(),
                snippet: None,
            })
            .filter(|h| h.score > 0.0)
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.chunk.id.cmp(&b.chunk.id))
        });
        hits.truncate(k);
        Ok(hits)
    }
}

#[async_trait]
impl VectorStore for MemoryStore {
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        if chunks.len() != vectors.len() {
            return Err(Error::InvalidInput(format!(
                "{} chunks but {} vectors",
                chunks.len(),
                vectors.len()
            )));
        }
        self.put(chunks, Some(vectors))
    }
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        self.delete_where(|c| doc_ids.contains(&c.doc_id))
    }
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        self.delete_where(|c| chunk_ids.contains(&c.id))
    }
    /// Cosine similarity (vectors are compared as given), best first.
    async fn search(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.ranked(k, |_, v| {
            // Chunks written only as keywords have no vector: they never match.
            if v.len() != vector.len() {
                return 0.0;
            }
            let dot: f32 = v.iter().zip(vector).map(|(a, b)| a * b).sum();
            // Shifted so that orthogonal vectors still rank (above 0).
            dot + 1.0
        })
    }
    async fn commit(&self) -> Result<()> {
        self.do_commit()
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        self.listed()
    }
}

#[async_trait]
impl KeywordStore for MemoryStore {
    async fn upsert(&self, chunks: &[Chunk]) -> Result<()> {
        // The vector side may have written these chunks with vectors: keep them.
        let mut s = self.alive()?;
        for c in chunks {
            let v = s
                .live
                .get(&c.id)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            s.live.insert(c.id.clone(), (c.clone(), v));
        }
        Ok(())
    }
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        self.delete_where(|c| doc_ids.contains(&c.doc_id))
    }
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        self.delete_where(|c| chunk_ids.contains(&c.id))
    }
    /// How many of the query's words (lower-cased) the chunk holds.
    async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let terms = words(query);
        self.ranked(k, |c, _| {
            let text = words(&c.text);
            terms.iter().filter(|t| text.contains(t)).count() as f32
        })
    }
    async fn commit(&self) -> Result<()> {
        self.do_commit()
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        self.listed()
    }
    /// Lower-cased words (no stemming, no stop words), each with BM25's
    /// inverse document frequency over the live chunks.
    fn weighted_terms(&self, text: &str) -> Option<Vec<(String, f32)>> {
        let s = self.lock();
        let docs: Vec<std::collections::HashSet<String>> = s
            .live
            .values()
            .map(|(c, _)| words(&c.text).into_iter().collect())
            .collect();
        let n = docs.len() as f32;
        Some(
            words(text)
                .into_iter()
                .map(|w| {
                    let df = docs.iter().filter(|d| d.contains(&w)).count() as f32;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    (w, idf)
                })
                .collect(),
        )
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A deterministic embedder: each lower-cased word adds 1 at a position
/// picked by its hash, and the vector is L2-normalised. Texts sharing words
/// are close; nothing is learned.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dim: usize,
    id: String,
}

impl HashingEmbedder {
    /// Vectors of `dim` numbers (at least 1).
    pub fn new(dim: usize) -> Self {
        let dim = dim.max(1);
        Self {
            dim,
            id: format!("hashing-{dim}"),
        }
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for w in words(text) {
            let h = blake3::hash(w.as_bytes());
            let i = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
            v[(i % self.dim as u64) as usize] += 1.0;
        }
        crate::abstain::normalize(&mut v);
        v
    }
}

#[async_trait]
impl Embedder for HashingEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }
    fn dimension(&self) -> usize {
        self.dim
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

/// Cuts a document into chunks of at most `n` whitespace-separated words,
/// with exact byte spans.
#[derive(Debug, Clone)]
pub struct WordSplitter {
    words: usize,
}

impl WordSplitter {
    /// Chunks of at most `words` words (at least 1).
    pub fn new(words: usize) -> Self {
        Self {
            words: words.max(1),
        }
    }
}

impl Splitter for WordSplitter {
    fn split(&self, doc: &Document) -> Vec<Chunk> {
        let text = &doc.text;
        let mut bounds: Vec<(usize, usize)> = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    bounds.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            bounds.push((s, text.len()));
        }
        bounds
            .chunks(self.words)
            .enumerate()
            .map(|(index, w)| {
                let (from, to) = (w[0].0, w[w.len() - 1].1);
                let line = |at: usize| text[..at].matches('\n').count() + 1;
                Chunk {
                    id: chunk_id_for(&doc.id, &doc.content_hash, index),
                    doc_id: doc.id.clone(),
                    doc_hash: doc.content_hash.clone(),
                    source: doc.uri.clone(),
                    index,
                    text: text[from..to].to_string(),
                    span: Span {
                        byte_start: from,
                        byte_end: to,
                        line_start: line(from),
                        line_end: line(to),
                        page_start: None,
                        page_end: None,
                    },
                    heading_path: vec![],
                    title: None,
                    metadata: doc.metadata.clone(),
                }
            })
            .collect()
    }
}

/// Documents from strings (uri, text); [`MemoryLoader::set`] and
/// [`MemoryLoader::remove`] change them between runs.
#[derive(Default)]
pub struct MemoryLoader {
    docs: Mutex<BTreeMap<String, String>>,
}

impl MemoryLoader {
    /// A loader over these documents.
    pub fn new<U: Into<String>, T: Into<String>>(docs: impl IntoIterator<Item = (U, T)>) -> Self {
        Self {
            docs: Mutex::new(
                docs.into_iter()
                    .map(|(u, t)| (u.into(), t.into()))
                    .collect(),
            ),
        }
    }

    /// Add or change a document.
    pub fn set(&self, uri: &str, text: &str) {
        self.lock().insert(uri.into(), text.into());
    }

    /// Remove a document.
    pub fn remove(&self, uri: &str) {
        self.lock().remove(uri);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Loader for MemoryLoader {
    fn origin(&self) -> String {
        "memory".into()
    }
    async fn list(&self) -> Result<Listing> {
        Ok(Listing {
            sources: self
                .lock()
                .keys()
                .map(|u| SourceRef {
                    uri: u.clone(),
                    locator: u.clone(),
                    size: None,
                })
                .collect(),
            skipped: vec![],
        })
    }
    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        match self.lock().get(&source.uri) {
            Some(text) => Ok(Document::from_text(&source.uri, text.as_str())),
            None => Err(Skipped {
                uri: source.uri.clone(),
                reason: "removed while indexing".into(),
            }),
        }
    }
}

/// A generator that replies with scripted texts, in order (the last one
/// repeats), streamed a word at a time; it records the prompts it got.
/// Tokens are counted as words.
pub struct ScriptedGenerator {
    replies: Vec<String>,
    calls: Mutex<Vec<Prompt>>,
    context: usize,
}

impl ScriptedGenerator {
    /// Replies, in order.
    pub fn new<S: Into<String>>(replies: impl IntoIterator<Item = S>) -> Self {
        Self {
            replies: replies.into_iter().map(Into::into).collect(),
            calls: Mutex::new(Vec::new()),
            context: 4096,
        }
    }

    /// Claim this context window (in words).
    pub fn context_length(mut self, n: usize) -> Self {
        self.context = n;
        self
    }

    /// The prompts received so far.
    pub fn prompts(&self) -> Vec<Prompt> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Generator for ScriptedGenerator {
    fn model_id(&self) -> &str {
        "scripted"
    }
    fn context_length(&self) -> usize {
        self.context
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(text.split_whitespace().count())
    }
    fn has_chat_template(&self) -> bool {
        false
    }
    async fn generate(
        &self,
        prompt: Prompt,
        options: GenerationOptions,
    ) -> Result<GenerationStream> {
        let prompt_tokens = match &prompt {
            Prompt::Text(t) => self.count_tokens(t)?,
            Prompt::Chat(m) => m.iter().map(|m| m.content.split_whitespace().count()).sum(),
        };
        let n = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(prompt);
            calls.len()
        };
        let reply = self
            .replies
            .get(n - 1)
            .or(self.replies.last())
            .cloned()
            .unwrap_or_default();
        let mut words: Vec<String> = Vec::new();
        for (i, w) in reply.split(' ').enumerate() {
            words.push(if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            });
        }
        let limit = options.max_tokens.max(1);
        let finish = if words.len() > limit {
            words.truncate(limit);
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let completion_tokens = words.len();
        let mut events: Vec<Result<GenerationEvent>> = words
            .into_iter()
            .filter(|w| !w.is_empty())
            .map(|text| Ok(GenerationEvent::Delta { text }))
            .collect();
        events.push(Ok(GenerationEvent::Done(GenerationSummary {
            finish_reason: finish,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
            timings: Default::default(),
        })));
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

/// The stores' chunk ids by document, for comparing states in tests.
pub fn chunks_by_doc(chunks: &[StoredChunk]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for c in chunks {
        out.entry(c.doc_id.clone())
            .or_default()
            .push(c.chunk_id.clone());
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}
