//! magpie-tantivy: a BM25 keyword store for chunks on tantivy, with snippets,
//! English stemming and stop words, and Chinese segmentation (jieba).
#![warn(missing_docs)]

pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use magpie_core::{Chunk, Error, Hit, KeywordStore, Result, StoredChunk};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Errors of the keyword store.
#[derive(Debug, thiserror::Error)]
pub enum TantivyStoreError {
    /// tantivy failed.
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The directory could not be opened.
    #[error("opening {path}: {msg}")]
    Open {
        /// The index directory.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A stored document lacks a field (index written by another version).
    #[error("stored chunk is missing field {0}; re-create the index")]
    MissingField(&'static str),
}

/// Default weight of title (and heading) matches relative to body matches. Chunks
/// repeat their document's title, so full weight over-counts it: on BEIR SciFact
/// 0.3–0.5 scores best (nDCG@10 0.671 / 0.670 against 0.656 at 1.0; BENCHMARKS.md).
pub const DEFAULT_TITLE_BOOST: f32 = 0.5;

/// Hits that get a highlighted snippet; deeper candidates (fusion input) do not need one.
const SNIPPET_HITS: usize = 20;

fn err(e: impl Into<TantivyStoreError>) -> Error {
    Error::stage("keyword store", e.into())
}

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    doc_hash: Field,
    title: Field,
    text: Field,
    chunk: Field,
}

fn schema() -> (Schema, Fields) {
    schema_with(tokenizer::ANALYZER)
}

/// The schema with text fields analyzed by `analyzer`.
fn schema_with(analyzer: &str) -> (Schema, Fields) {
    let mut sb = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(analyzer)
        .set_index_option(IndexRecordOption::WithFreqsAndPositions);
    let text_opts = TextOptions::default()
        .set_indexing_options(indexing.clone())
        .set_stored();
    let title_opts = TextOptions::default().set_indexing_options(indexing);
    let fields = Fields {
        chunk_id: sb.add_text_field("chunk_id", STRING | STORED),
        doc_id: sb.add_text_field("doc_id", STRING | STORED),
        doc_hash: sb.add_text_field("doc_hash", STRING | STORED),
        title: sb.add_text_field("title", title_opts),
        text: sb.add_text_field("text", text_opts),
        chunk: sb.add_text_field("chunk", STORED),
    };
    (sb.build(), fields)
}

/// BM25 over chunk text and titles, persisted in one directory.
#[derive(Clone)]
pub struct TantivyStore {
    reader: IndexReader,
    writer: Option<Arc<Mutex<IndexWriter>>>,
    fields: Fields,
    title_boost: f32,
    path: Option<PathBuf>,
}

/// A keyword index that cannot be opened: its files are damaged or missing.
fn unreadable(dir: &Path, e: tantivy::TantivyError) -> Error {
    Error::Index(format!(
        "the keyword index in {} cannot be read ({e}): it is damaged; a repair rebuilds it \
         from the chunks in the vector store",
        dir.display()
    ))
}

/// Opening errors other than a held lock are damage.
fn reword_open_error(dir: &Path, e: Error) -> Error {
    match e {
        Error::Stage { source, .. } => match source.downcast::<TantivyStoreError>() {
            Ok(t) => match *t {
                TantivyStoreError::Tantivy(te) => unreadable(dir, te),
                other => err(other),
            },
            Err(source) => Error::Stage {
                stage: "keyword store",
                source,
            },
        },
        other => other,
    }
}

/// A panic inside tantivy (a damaged segment file) as an error that says how
/// to repair the keyword store.
fn damaged<T>(r: Result<Result<T>>) -> Result<T> {
    match r {
        Ok(inner) => inner,
        Err(e) => Err(Error::Index(format!(
            "{e}: the keyword index is damaged; a repair rebuilds it from the stored chunks"
        ))),
    }
}

/// `frag` with `«»` around the highlighted ranges. The Chinese tokenizer emits
/// overlapping words ("铁路" inside "铁路网"), so ranges may overlap or nest:
/// they are merged; ranges outside the fragment or off character boundaries
/// are ignored.
fn mark_highlights(frag: &str, ranges: &[std::ops::Range<usize>]) -> String {
    let mut rs: Vec<std::ops::Range<usize>> = ranges
        .iter()
        .filter(|r| {
            r.start < r.end
                && r.end <= frag.len()
                && frag.is_char_boundary(r.start)
                && frag.is_char_boundary(r.end)
        })
        .cloned()
        .collect();
    rs.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
    for r in rs {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut s = String::with_capacity(frag.len() + 4 * merged.len());
    let mut last = 0;
    for r in merged {
        s.push_str(&frag[last..r.start]);
        s.push('«');
        s.push_str(&frag[r.start..r.end]);
        s.push('»');
        last = r.end;
    }
    s.push_str(&frag[last..]);
    s
}

impl TantivyStore {
    /// Open the index in `dir`, creating it if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // Segment files without the meta file that lists them: a damaged index,
        // which open_or_create would silently replace with an empty one.
        if !dir.join("meta.json").exists() {
            let has_segments = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                .filter_map(|e| e.ok())
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
            if has_segments {
                return Err(unreadable(
                    dir,
                    tantivy::TantivyError::SystemError("meta.json is missing".into()),
                ));
            }
        }
        let mmap = MmapDirectory::open(dir).map_err(|e| {
            err(TantivyStoreError::Open {
                path: dir.into(),
                msg: e.to_string(),
            })
        })?;
        let (schema, fields) = schema();
        let index = if dir.join("meta.json").exists() {
            let index = Index::open(mmap).map_err(|e| unreadable(dir, e))?;
            // Either analyzer's schema: indexes written before the v2
            // analyzer keep working (see `from_index`).
            let held = index.schema();
            if held != schema && held != schema_with(tokenizer::ANALYZER_V1).0 {
                return Err(unreadable(
                    dir,
                    tantivy::TantivyError::SchemaError(
                        "An index exists but the schema does not match.".into(),
                    ),
                ));
            }
            index
        } else {
            Index::create(mmap, schema, tantivy::IndexSettings::default())
                .map_err(|e| unreadable(dir, e))?
        };
        Self::from_index(index, fields, Some(dir.to_path_buf()), true)
            .map_err(|e| reword_open_error(dir, e))
    }

    /// Open an existing index in `dir` for searching only (no writer lock is taken,
    /// so it works while another process indexes).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mmap = MmapDirectory::open(dir).map_err(|e| {
            err(TantivyStoreError::Open {
                path: dir.into(),
                msg: e.to_string(),
            })
        })?;
        let index = Index::open(mmap).map_err(|e| unreadable(dir, e))?;
        let (_, fields) = schema();
        Self::from_index(index, fields, Some(dir.to_path_buf()), false)
            .map_err(|e| reword_open_error(dir, e))
    }

    /// A store kept in memory (tests, throwaway indexes).
    pub fn in_memory() -> Result<Self> {
        let (schema, fields) = schema();
        Self::from_index(Index::create_in_ram(schema), fields, None, true)
    }

    fn from_index(
        index: Index,
        fields: Fields,
        path: Option<PathBuf>,
        write: bool,
    ) -> Result<Self> {
        index
            .tokenizers()
            .register(tokenizer::ANALYZER, tokenizer::analyzer());
        // Indexes written before Japanese and Korean became bigrams name the
        // first analyzer; Latin and Chinese text analyze as they did.
        index
            .tokenizers()
            .register(tokenizer::ANALYZER_V1, tokenizer::analyzer());
        if let Some(dir) = &path {
            if tokenizer::analyzer_of(&index.schema(), fields.text) == Some(tokenizer::ANALYZER_V1)
            {
                tracing::info!(
                    "the keyword index in {} was built before Japanese and Korean text was cut into \
                     bigrams: such text matches better once it is rebuilt (remove that directory \
                     and run `repair`)",
                    dir.display()
                );
            }
        }
        let writer = if write {
            let w: IndexWriter = index
                .writer_with_num_threads(1, 64 * 1024 * 1024)
                .map_err(|e| match &e {
                    tantivy::TantivyError::LockFailure(..) => Error::Index(format!(
                        "the keyword index is in use by another process ({e}); wait for it to finish"
                    )),
                    _ => err(e),
                })?;
            Some(Arc::new(Mutex::new(w)))
        } else {
            None
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(Self {
            reader,
            writer,
            fields,
            title_boost: DEFAULT_TITLE_BOOST,
            path,
        })
    }

    /// Weight of title matches relative to body matches (default [`DEFAULT_TITLE_BOOST`]).
    pub fn with_title_boost(mut self, boost: f32) -> Self {
        self.title_boost = boost;
        self
    }

    /// Where the index lives, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The BM25 query: one clause per distinct term (body, and title at
    /// `title_boost`), a repeated term weighted by its count. More than
    /// [`magpie_core::retrieve::MAX_QUERY_TERMS`] distinct terms is an error, so one
    /// request's work stays bounded.
    fn build_query(&self, query: &str) -> Result<Option<Box<dyn Query>>> {
        let mut analyzer = tokenizer::analyzer();
        let terms = tokenizer::terms(&mut analyzer, query);
        if terms.is_empty() {
            return Ok(None);
        }
        let mut counted: Vec<(String, usize)> = Vec::new();
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for t in terms {
            match seen.get(&t) {
                Some(&i) => counted[i].1 += 1,
                None => {
                    if counted.len() == magpie_core::retrieve::MAX_QUERY_TERMS {
                        return Err(Error::InvalidInput(format!(
                            "the query has more than {} distinct terms: ask a shorter question",
                            magpie_core::retrieve::MAX_QUERY_TERMS
                        )));
                    }
                    seen.insert(t.clone(), counted.len());
                    counted.push((t, 1));
                }
            }
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (t, n) in &counted {
            let body: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(self.fields.text, t),
                IndexRecordOption::WithFreqs,
            ));
            clauses.push((
                Occur::Should,
                if *n == 1 {
                    body
                } else {
                    Box::new(BoostQuery::new(body, *n as f32))
                },
            ));
            let tq: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(self.fields.title, t),
                IndexRecordOption::WithFreqs,
            ));
            clauses.push((
                Occur::Should,
                Box::new(BoostQuery::new(tq, self.title_boost * *n as f32)),
            ));
        }
        Ok(Some(Box::new(BooleanQuery::new(clauses))))
    }

    fn search_blocking(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let Some(q) = self.build_query(query)? else {
            return Ok(Vec::new());
        };
        let searcher = self.reader.searcher();
        let top = searcher.search(&*q, &TopDocs::with_limit(k)).map_err(err)?;
        let mut gen = SnippetGenerator::create(&searcher, &*q, self.fields.text).map_err(err)?;
        gen.set_max_num_chars(240);
        let mut hits = Vec::with_capacity(top.len());
        for (rank, (score, addr)) in top.into_iter().enumerate() {
            let doc: TantivyDocument = searcher.doc(addr).map_err(err)?;
            let chunk = self.chunk_from(&doc)?;
            if rank >= SNIPPET_HITS {
                hits.push(Hit {
                    chunk,
                    score,
                    snippet: None,
                });
                continue;
            }
            // tantivy 0.25's fragment selection subtracts offsets that can
            // underflow when our tokenizer's overlapping words straddle a
            // fragment start (a panic in builds with overflow checks): such a
            // hit goes without a snippet rather than failing the search
            let snippet = magpie_core::guard::catch("keyword store", || {
                let sn = gen.snippet_from_doc(&doc);
                mark_highlights(sn.fragment(), sn.highlighted())
            });
            let s = match snippet {
                Ok(s) => s,
                Err(_) => {
                    tracing::debug!("no snippet for this hit: tantivy's snippet generator failed");
                    String::new()
                }
            };
            hits.push(Hit {
                chunk,
                score,
                snippet: (!s.is_empty()).then_some(s),
            });
        }
        Ok(hits)
    }

    fn chunk_from(&self, doc: &TantivyDocument) -> Result<Chunk> {
        let raw = doc
            .get_first(self.fields.chunk)
            .and_then(|v| v.as_str())
            .ok_or_else(|| err(TantivyStoreError::MissingField("chunk")))?;
        let mut chunk: Chunk = serde_json::from_str(raw).map_err(|e| {
            Error::stage(
                "keyword store",
                format!("stored chunk is not valid JSON: {e}"),
            )
        })?;
        chunk.text = doc
            .get_first(self.fields.text)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        Ok(chunk)
    }

    fn with_writer<T>(&self, f: impl FnOnce(&mut IndexWriter) -> Result<T>) -> Result<T> {
        let mut w = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::stage("keyword store", "opened read-only"))?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        damaged(magpie_core::guard::catch("keyword store", || f(&mut w)))
    }

    fn delete_terms(&self, field: Field, values: &[String]) -> Result<()> {
        self.with_writer(|w| {
            for v in values {
                w.delete_term(Term::from_field_text(field, v));
            }
            Ok(())
        })
    }

    /// Number of chunks visible to searches.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when no chunk is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl KeywordStore for TantivyStore {
    async fn upsert(&self, chunks: &[Chunk]) -> Result<()> {
        let f = self.fields;
        self.with_writer(|w| {
            for c in chunks {
                w.delete_term(Term::from_field_text(f.chunk_id, &c.id));
                let mut meta = c.clone();
                meta.text = String::new();
                let json =
                    serde_json::to_string(&meta).map_err(|e| Error::stage("keyword store", e))?;
                let mut doc = TantivyDocument::default();
                doc.add_text(f.chunk_id, &c.id);
                doc.add_text(f.doc_id, &c.doc_id);
                doc.add_text(f.doc_hash, &c.doc_hash);
                let mut title = c.title.clone().unwrap_or_default();
                for h in &c.heading_path {
                    if Some(h) != c.title.as_ref() {
                        title.push('\n');
                        title.push_str(h);
                    }
                }
                doc.add_text(f.title, &title);
                doc.add_text(f.text, &c.text);
                doc.add_text(f.chunk, &json);
                w.add_document(doc).map_err(err)?;
            }
            Ok(())
        })
    }

    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        self.delete_terms(self.fields.doc_id, doc_ids)
    }

    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        self.delete_terms(self.fields.chunk_id, chunk_ids)
    }

    async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        // On the blocking pool: a search must not hold an async worker, or a
        // request's deadline could not fire while it runs.
        let me = self.clone();
        let query = query.to_string();
        tokio::task::spawn_blocking(move || {
            damaged(magpie_core::guard::catch("keyword store", || {
                me.search_blocking(&query, k)
            }))
        })
        .await
        .map_err(|e| Error::stage("keyword store", e))?
    }

    async fn commit(&self) -> Result<()> {
        let Some(writer) = self.writer.clone() else {
            return self.reader.reload().map_err(err);
        };
        tokio::task::spawn_blocking(move || {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            damaged(magpie_core::guard::catch("keyword store", || {
                w.commit().map(|_| ()).map_err(err)
            }))
        })
        .await
        .map_err(|e| Error::stage("keyword store", e))??;
        self.reader.reload().map_err(err)
    }

    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        damaged(magpie_core::guard::catch("keyword store", || {
            self.list_blocking()
        }))
    }

    /// Every file against its checksum (tantivy's footers), then every stored
    /// chunk read back.
    async fn verify(&self) -> Result<magpie_core::StoreHealth> {
        let mut health = magpie_core::StoreHealth::default();
        let searcher = self.reader.searcher();
        match magpie_core::guard::catch("keyword store", || searcher.index().validate_checksum()) {
            Ok(Ok(bad)) => {
                let mut bad: Vec<String> = bad.iter().map(|p| p.display().to_string()).collect();
                bad.sort();
                for f in bad {
                    health
                        .problems
                        .push(format!("keyword index file {f} fails its checksum"));
                }
            }
            Ok(Err(e)) => health
                .problems
                .push(format!("keyword index unreadable: {e}")),
            Err(e) => health.problems.push(e.to_string()),
        }
        match magpie_core::guard::catch("keyword store", || self.all_chunks()) {
            Ok(Ok(chunks)) => health.chunks_read = chunks.len(),
            Ok(Err(e)) => health.problems.push(magpie_core::error_chain(&e)),
            Err(e) => health.problems.push(e.to_string()),
        }
        Ok(health)
    }

    /// BM25's inverse document frequency over chunk text:
    /// ln(1 + (N − df + ½) / (df + ½)).
    fn weighted_terms(&self, text: &str) -> Option<Vec<(String, f32)>> {
        let searcher = self.reader.searcher();
        let n = searcher.num_docs() as f32;
        let mut analyzer = tokenizer::analyzer();
        let terms = tokenizer::terms(&mut analyzer, text);
        let mut idf: std::collections::HashMap<String, f32> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(terms.len());
        for t in terms {
            let w = match idf.get(&t) {
                Some(&w) => w,
                None => {
                    let df = searcher
                        .doc_freq(&Term::from_field_text(self.fields.text, &t))
                        .unwrap_or(0) as f32;
                    let w = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    idf.insert(t.clone(), w);
                    w
                }
            };
            out.push((t, w));
        }
        Some(out)
    }
}

impl TantivyStore {
    /// Every stored chunk with its text (to rebuild another store from).
    pub fn all_chunks(&self) -> Result<Vec<Chunk>> {
        let searcher = self.reader.searcher();
        let addrs = searcher
            .search(&tantivy::query::AllQuery, &DocSetCollector)
            .map_err(err)?;
        let mut out = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let doc: TantivyDocument = searcher.doc(addr).map_err(err)?;
            out.push(self.chunk_from(&doc)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn list_blocking(&self) -> Result<Vec<StoredChunk>> {
        let searcher = self.reader.searcher();
        let addrs = searcher
            .search(&tantivy::query::AllQuery, &DocSetCollector)
            .map_err(err)?;
        let mut out = Vec::with_capacity(addrs.len());
        let get = |doc: &TantivyDocument, field: Field, name: &'static str| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| err(TantivyStoreError::MissingField(name)))
        };
        for addr in addrs {
            let doc: TantivyDocument = searcher.doc(addr).map_err(err)?;
            out.push(StoredChunk {
                chunk_id: get(&doc, self.fields.chunk_id, "chunk_id")?,
                doc_id: get(&doc, self.fields.doc_id, "doc_id")?,
                doc_hash: get(&doc, self.fields.doc_hash, "doc_hash")?,
            });
        }
        out.sort();
        Ok(out)
    }
}

impl std::fmt::Debug for TantivyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyStore")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{Document, Splitter};

    fn chunks(uri: &str, text: &str) -> Vec<Chunk> {
        let d = Document::from_text(uri, text);
        struct One;
        impl Splitter for One {
            fn split(&self, d: &Document) -> Vec<Chunk> {
                vec![Chunk {
                    id: magpie_core::chunk_id_for(&d.id, &d.content_hash, 0),
                    doc_id: d.id.clone(),
                    doc_hash: d.content_hash.clone(),
                    source: d.uri.clone(),
                    index: 0,
                    text: d.text.clone(),
                    span: Default::default(),
                    heading_path: vec![],
                    title: None,
                    metadata: Default::default(),
                }]
            }
        }
        One.split(&d)
    }

    /// jieba's search mode emits overlapping words; snippets used to panic on
    /// them (found by `docqa eval qa` on CMRC 2018).
    #[tokio::test]
    async fn overlapping_chinese_highlights_are_merged() {
        let s = TantivyStore::in_memory().unwrap();
        let text = "这条铁路网是北方的干线。铁路沿线设有很多车站，铁路网很长。";
        s.upsert(&chunks("zh", text)).await.unwrap();
        s.commit().await.unwrap();
        let hits = s.search("铁路沿线设有哪些站点？", 5).await.unwrap();
        assert_eq!(hits.len(), 1);
        let snip = hits[0].snippet.as_deref().unwrap();
        assert_eq!(
            snip.matches('«').count(),
            snip.matches('»').count(),
            "{snip}"
        );
        assert!(snip.contains("«铁路"), "{snip}");
        assert!(text.starts_with(&snip.replace(['«', '»'], "")), "{snip}");
        // the helper on its own: nested, overlapping, out-of-range, mid-character
        assert_eq!(
            mark_highlights("铁路网很长", &[0..9, 0..6, 3..12, 20..30, 1..4]),
            "«铁路网很»长"
        );
    }

    #[tokio::test]
    async fn bm25_finds_and_highlights() {
        let s = TantivyStore::in_memory().unwrap();
        s.upsert(&chunks("a", "Rust is a systems programming language."))
            .await
            .unwrap();
        s.upsert(&chunks("b", "Python is popular for data science."))
            .await
            .unwrap();
        s.commit().await.unwrap();
        let hits = s.search("programming languages", 5).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chunk.source, "a");
        assert!(
            hits[0]
                .snippet
                .as_deref()
                .unwrap()
                .contains("«programming»"),
            "{:?}",
            hits[0].snippet
        );
        assert!(
            s.search("the of and", 5).await.unwrap().is_empty(),
            "stop words only"
        );
        assert!(
            s.search("\"(unbalanced: AND", 5).await.is_ok(),
            "query syntax is not interpreted"
        );
    }

    /// A repeated word is one clause weighted by its count (same scores as
    /// before), and a query with too many distinct terms is refused quickly.
    #[tokio::test]
    async fn query_terms_are_deduplicated_and_capped() {
        let s = TantivyStore::in_memory().unwrap();
        s.upsert(&chunks("a", "Rust compiles fast programs, rust is safe."))
            .await
            .unwrap();
        s.upsert(&chunks("b", "Programs written fast are not always safe."))
            .await
            .unwrap();
        s.commit().await.unwrap();
        let once = s.search("rust programs", 5).await.unwrap();
        let twice = s.search("rust rust programs", 5).await.unwrap();
        assert_eq!(once[0].chunk.source, "a");
        assert!(twice[0].score > once[0].score, "{twice:?} {once:?}");
        // 10,000 repeats of one word: one clause, answered.
        let repeated = "rust ".repeat(10_000);
        assert_eq!(s.search(&repeated, 5).await.unwrap().len(), 1);
        let many: Vec<String> = (0..300).map(|i| format!("w{i}x")).collect();
        let e = s.search(&many.join(" "), 5).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains("256 distinct terms")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn chinese_query_finds_chinese_passage() {
        let s = TantivyStore::in_memory().unwrap();
        s.upsert(&chunks(
            "zh",
            "北京是中华人民共和国的首都，也是全国的政治中心。",
        ))
        .await
        .unwrap();
        s.upsert(&chunks("zh2", "上海是中国最大的经济中心城市。"))
            .await
            .unwrap();
        s.upsert(&chunks("en", "Paris is the capital of France."))
            .await
            .unwrap();
        s.commit().await.unwrap();
        let hits = s.search("北京是哪个国家的首都？", 3).await.unwrap();
        assert_eq!(hits[0].chunk.source, "zh", "{hits:?}");
    }

    #[tokio::test]
    async fn upsert_replaces_and_delete_removes() {
        let dir = tempfile::tempdir().unwrap();
        let c = chunks("a", "alpha beta");
        {
            let s = TantivyStore::open(dir.path()).unwrap();
            s.upsert(&c).await.unwrap();
            s.upsert(&c).await.unwrap();
            s.commit().await.unwrap();
            assert_eq!(
                s.list_chunks().await.unwrap().len(),
                1,
                "upsert twice is one chunk"
            );
        }
        let s = TantivyStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1, "persisted");
        s.delete_docs(&[c[0].doc_id.clone()]).await.unwrap();
        s.commit().await.unwrap();
        assert!(s.is_empty());
    }
}
