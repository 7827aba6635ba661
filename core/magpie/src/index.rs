//! An open index: its settings, embedder and stores, and what a program does
//! with it: add documents, search, ask.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use magpie_candle::BertEmbedder;
use magpie_core::{
    AdaptiveFusion, Answer, AnswerOptions, Catalog, DenseRetriever, Embedder, Generator, Hit,
    HybridRetriever, IndexProgress, IndexReport, IndexingPipeline, KeywordRetriever, KeywordStore,
    NoProgress, QueryPipeline, Retriever, RunOptions, Splitter, VectorStore,
};
use magpie_files::{DirectoryLoader, TokenSplitter};
use magpie_qdrant::{QdrantCatalog, QdrantHybridRetriever, QdrantStore};

use crate::error::{Error, Result};
use crate::layout::{IndexSettings, Layout};
use crate::models::Models;
use crate::store::{KeywordOptions, StoreSpec, Stores};

/// How to search. With the `cli` feature it is a value enum for flags
/// (`--mode hybrid|dense|bm25`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SearchMode {
    /// Dense and BM25 fused by reciprocal rank, weighed per query (the default).
    #[default]
    Hybrid,
    /// Nearest neighbours of the query embedding.
    Dense,
    /// BM25 keyword search.
    Bm25,
}

impl SearchMode {
    /// The mode's name as flags and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Bm25 => "bm25",
        }
    }
}

/// How to open an index.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Create the index when the directory holds none.
    pub create: bool,
    /// Chunk size for a new index (an existing one must match).
    pub chunk_tokens: Option<usize>,
    /// Chunk overlap for a new index (an existing one must match).
    pub overlap_tokens: Option<usize>,
    /// Search only: the keyword store takes no writer lock.
    pub read_only: bool,
    /// Weight of title matches in BM25 (default: the store's).
    pub title_boost: Option<f32>,
    /// Where the vectors live (`embedded` or a Qdrant URL); default: what
    /// the index records, or embedded for a new one.
    pub store: Option<String>,
}

impl OpenOptions {
    /// Open an existing index for searching.
    pub fn search() -> Self {
        Self {
            read_only: true,
            ..Self::default()
        }
    }

    /// Open an index for writing, creating it if needed.
    pub fn index() -> Self {
        Self {
            create: true,
            ..Self::default()
        }
    }

    /// Chunk size and overlap for a new index (`None`: the defaults; an
    /// existing index must match what is given).
    pub fn chunking(mut self, chunk_tokens: Option<usize>, overlap_tokens: Option<usize>) -> Self {
        self.chunk_tokens = chunk_tokens;
        self.overlap_tokens = overlap_tokens;
        self
    }
}

/// An open index directory.
///
/// ```no_run
/// # async fn demo() -> magpie::Result<()> {
/// let index = magpie::Index::open("my-index")?;
/// index.add("docs/").await?;
/// for hit in index.search("how do I upgrade?", 5).await? {
///     println!("{} {}", hit.chunk.source, hit.score);
/// }
/// # Ok(()) }
/// ```
pub struct Index {
    /// The index directory.
    pub dir: PathBuf,
    /// Its settings.
    pub settings: IndexSettings,
    /// The embedding model.
    pub embedder: Arc<BertEmbedder>,
    /// Dense vectors.
    pub vectors: Arc<dyn VectorStore>,
    /// BM25.
    pub keywords: Arc<dyn KeywordStore>,
    /// The Qdrant collection, when the index lives in one.
    pub remote: Option<Arc<QdrantStore>>,
    /// With a Qdrant store: the catalog, settings and jobs every process
    /// serving or writing the collection shares.
    pub shared: Option<Arc<QdrantCatalog>>,
}

impl Index {
    /// Open the index in `dir`, creating it if needed, with the installed
    /// default models (see [`Models::from_env`]) and the embedded stores.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir.as_ref(), &Models::from_env(), OpenOptions::index())
    }

    /// Open the index in `dir` with these models and options.
    ///
    /// With a Qdrant store, the settings, the catalog and the jobs live in the
    /// deployment too, so a second process (another machine, another `dir`)
    /// pointed at the same collection opens the same index.
    pub fn open_with(dir: &Path, models: &Models, opts: OpenOptions) -> Result<Self> {
        let layout = Layout::new(dir);
        let local = IndexSettings::read(dir)?;
        let shared = match remote_config(local.as_ref(), opts.store.as_deref())? {
            Some(cfg) => Some(Arc::new(crate::block_on(QdrantCatalog::connect(&cfg))?)),
            None => None,
        };
        let published = match &shared {
            Some(sh) => crate::block_on(IndexSettings::shared(sh))?,
            None => None,
        };
        let existing = match (&local, &published) {
            (Some(l), _) => Some(l.clone()),
            // Another process made this index: adopt its settings.
            (None, Some(p)) => Some(IndexSettings {
                store: StoreSpec::parse(opts.store.as_deref().unwrap_or_default())?.recorded(),
                ..p.clone()
            }),
            (None, None) => None,
        };
        if existing.is_none() && !opts.create {
            return Err(Error::NoIndex {
                dir: dir.to_path_buf(),
            });
        }
        let embedder =
            Arc::new(models.load_embedder(existing.as_ref().map(|s| s.embedding_model.as_str()))?);
        let settings = match existing {
            Some(s) => {
                check_settings(dir, &s, &embedder, &opts)?;
                if let (Some(_), Some(p)) = (&local, &published) {
                    // This directory's record and the shared one name one index.
                    check_same_index(dir, p, &s, &embedder)?;
                }
                s
            }
            None => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::io(format!("creating the index directory {}", dir.display()), e)
                })?;
                let store = match opts.store.as_deref() {
                    Some(s) => StoreSpec::parse(s)?.recorded(),
                    None => None,
                };
                IndexSettings::new(
                    embedder.as_ref(),
                    opts.chunk_tokens,
                    opts.overlap_tokens,
                    store,
                )
            }
        };
        let new_here = !layout.settings().exists();
        let spec = StoreSpec::resolve(dir, &settings, opts.store.as_deref())?;
        let stores = Stores::open(
            &layout,
            spec,
            settings.dimension,
            KeywordOptions {
                read_only: opts.read_only,
                title_boost: opts.title_boost,
            },
        )?;
        if let (Some(sh), None) = (&shared, &published) {
            // The first process records the settings for the others; two
            // creating it at once agree on the first one's.
            let kept = crate::block_on(settings.publish(sh))?;
            check_same_index(dir, &kept, &settings, &embedder)?;
        }
        if new_here {
            // Recorded once the stores opened, so a mistyped store URL leaves no index behind.
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(format!("creating the index directory {}", dir.display()), e)
            })?;
            settings.write(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            settings,
            embedder,
            vectors: stores.vectors,
            keywords: stores.keywords,
            remote: stores.remote,
            shared,
        })
    }

    /// The catalog as it is now: the shared one with a Qdrant store, else the
    /// file in the index directory.
    pub async fn catalog(&self) -> Result<Catalog> {
        Ok(match &self.shared {
            Some(sh) => Catalog::shared(sh.clone() as Arc<dyn magpie_core::CatalogStore>).await?,
            None => Catalog::open(self.layout().catalog())?,
        })
    }

    /// The index's layout on disk.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.dir)
    }

    /// The splitter the index was made with.
    pub fn splitter(&self) -> Arc<dyn Splitter> {
        Arc::new(
            TokenSplitter::new(self.embedder.token_counter())
                .chunk_tokens(self.settings.chunk_tokens)
                .overlap_tokens(self.settings.overlap_tokens),
        )
    }

    /// An indexing pipeline over this index's stores and catalog.
    pub async fn pipeline(&self) -> Result<IndexingPipeline> {
        let catalog = self.catalog().await?;
        Ok(IndexingPipeline::new(
            self.splitter(),
            self.embedder.clone() as Arc<dyn Embedder>,
            self.vectors.clone(),
            self.keywords.clone(),
            catalog,
        )
        .storage_dir(&self.dir))
    }

    /// Index the files under `path` (a folder or one file): new and changed
    /// ones only.
    pub async fn add(&self, path: impl AsRef<Path>) -> Result<IndexReport> {
        self.add_with(path, &RunOptions::default(), &NoProgress)
            .await
    }

    /// [`Self::add`] with options (`sync` drops documents whose files are
    /// gone) and a progress reporter.
    pub async fn add_with(
        &self,
        path: impl AsRef<Path>,
        options: &RunOptions,
        progress: &dyn IndexProgress,
    ) -> Result<IndexReport> {
        let loader = DirectoryLoader::new(path.as_ref());
        Ok(self
            .pipeline()
            .await?
            .run(&loader, options, progress)
            .await?)
    }

    /// BM25 over the keyword store.
    pub fn bm25(&self) -> KeywordRetriever {
        KeywordRetriever::new(self.keywords.clone())
    }

    /// A retriever for `mode`.
    pub fn retriever(&self, mode: SearchMode) -> Arc<dyn Retriever> {
        self.retriever_with(mode, self.embedder.clone())
    }

    /// Dense and BM25 fused here, weighed per query by adaptive fusion.
    pub fn hybrid_with(&self, queries: Arc<dyn Embedder>) -> HybridRetriever {
        HybridRetriever::new(vec![
            Arc::new(DenseRetriever::new(queries.clone(), self.vectors.clone()))
                as Arc<dyn Retriever>,
            Arc::new(self.bm25()) as Arc<dyn Retriever>,
        ])
        .adaptive(AdaptiveFusion::for_embedder(queries))
    }

    /// A retriever whose queries are embedded by `queries` (a batching
    /// embedder, for a server).
    pub fn retriever_with(
        &self,
        mode: SearchMode,
        queries: Arc<dyn Embedder>,
    ) -> Arc<dyn Retriever> {
        match mode {
            SearchMode::Dense => Arc::new(DenseRetriever::new(queries, self.vectors.clone())),
            SearchMode::Bm25 => Arc::new(self.bm25()),
            // A cluster fuses dense and BM25 itself, in one request.
            SearchMode::Hybrid => match &self.remote {
                Some(remote) => Arc::new(
                    QdrantHybridRetriever::new(queries.clone(), remote.clone())
                        .adaptive(AdaptiveFusion::for_embedder(queries)),
                ),
                None => Arc::new(self.hybrid_with(queries)),
            },
        }
    }

    /// Abstention for answers over this index: "the documents do not cover
    /// this question" when the passages found answer it too poorly
    /// ([`magpie_core::Answerability`]: the best sentence's cosine with this
    /// index's embedder, where it was measured, and how much of the
    /// conversation's rare words one passage holds, by the keyword store's
    /// term weights), at the measured threshold or the one given; `None` when
    /// `Off`, or when neither signal can be read (an embedder that was not
    /// measured, over a store that cannot weigh terms).
    pub fn abstention(&self, setting: AbstainSetting) -> Option<magpie_core::AbstentionPolicy> {
        let scorer = magpie_core::Answerability::new(
            self.embedder.clone() as Arc<dyn Embedder>,
            Some(self.keywords.clone()),
        );
        let threshold = match setting {
            AbstainSetting::Off => return None,
            AbstainSetting::Below(t) => t,
            AbstainSetting::Measured if scorer.can_score() => magpie_core::Answerability::THRESHOLD,
            AbstainSetting::Measured => return None,
        };
        Some(magpie_core::AbstentionPolicy::new(
            Arc::new(scorer),
            threshold,
        ))
    }

    /// The `k` best chunks for `query`, by hybrid search.
    pub async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let result = QueryPipeline::new(self.retriever(SearchMode::Hybrid))
            .top_k(k)
            .search(query)
            .await?;
        Ok(result.hits)
    }

    /// Answer `question` from the index with `generator`, the best passages
    /// in its prompt, and citations checked against them.
    pub async fn ask(&self, question: &str, generator: &dyn Generator) -> Result<Answer> {
        self.ask_with(question, generator, &AnswerOptions::default(), |_| {})
            .await
    }

    /// [`Self::ask`], calling `on_text` with each piece of the answer as the
    /// model writes it; the whole answer, with its sources and citations,
    /// comes back at the end.
    pub async fn ask_stream(
        &self,
        question: &str,
        generator: &dyn Generator,
        on_text: impl FnMut(&str) + Send,
    ) -> Result<Answer> {
        self.ask_with(question, generator, &AnswerOptions::default(), on_text)
            .await
    }

    /// [`Self::ask_stream`] with options: passages, context budget, sampling.
    pub async fn ask_with(
        &self,
        question: &str,
        generator: &dyn Generator,
        options: &AnswerOptions,
        on_text: impl FnMut(&str) + Send,
    ) -> Result<Answer> {
        let pipeline = QueryPipeline::new(self.retriever(SearchMode::Hybrid)).top_k(options.k);
        Ok(pipeline
            .answer_streaming(question, generator, options, on_text)
            .await?)
    }
}

/// The Qdrant deployment an index's vectors live in: the store asked for, else
/// the one its settings record; `None` for the embedded stores.
fn remote_config(
    local: Option<&IndexSettings>,
    asked: Option<&str>,
) -> Result<Option<magpie_qdrant::RemoteConfig>> {
    let spec = match (asked, local.and_then(|s| s.store.as_deref())) {
        (Some(a), _) => StoreSpec::parse(a)?,
        (None, Some(recorded)) => StoreSpec::parse(recorded)?,
        (None, None) => StoreSpec::Embedded,
    };
    Ok(match spec {
        StoreSpec::Remote(cfg) => Some(cfg),
        StoreSpec::Embedded => None,
    })
}

/// Two records of an index's settings (this directory's and the shared one)
/// name the same index.
fn check_same_index(
    dir: &Path,
    recorded: &IndexSettings,
    ours: &IndexSettings,
    embedder: &BertEmbedder,
) -> Result<()> {
    let opts = OpenOptions::default().chunking(Some(ours.chunk_tokens), Some(ours.overlap_tokens));
    check_settings(dir, recorded, embedder, &opts)
}

/// `recorded` (an index's settings) fits `embedder` and the chunking `opts` asks for.
fn check_settings(
    dir: &Path,
    recorded: &IndexSettings,
    embedder: &BertEmbedder,
    opts: &OpenOptions,
) -> Result<()> {
    if recorded.embedding_model != embedder.model_id() || recorded.dimension != embedder.dimension()
    {
        return Err(Error::ModelMismatch {
            dir: dir.to_path_buf(),
            recorded: recorded.embedding_model.clone(),
            dimension: recorded.dimension,
            loaded: embedder.model_id().to_string(),
        });
    }
    for (setting, asked, have) in [
        ("chunk_tokens", opts.chunk_tokens, recorded.chunk_tokens),
        (
            "overlap_tokens",
            opts.overlap_tokens,
            recorded.overlap_tokens,
        ),
    ] {
        if asked.is_some_and(|a| a != have) {
            return Err(Error::SettingMismatch {
                dir: dir.to_path_buf(),
                setting,
                have,
            });
        }
    }
    Ok(())
}

/// When answers say the documents do not cover a question. Written as
/// `measured`, `off` or a score (also in configuration files).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AbstainSetting {
    /// At the measured threshold ([`magpie_core::Answerability::THRESHOLD`]).
    #[default]
    Measured,
    /// Always answer.
    Off,
    /// Below this answerability (between 0 and 1; ½ is the measured
    /// threshold, higher abstains more often).
    Below(f32),
}

impl std::str::FromStr for AbstainSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "measured" | "default" => Ok(Self::Measured),
            "off" | "never" => Ok(Self::Off),
            n => match n.parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Ok(Self::Below(t)),
                _ => Err(format!(
                    "`{n}` is not a setting: give `measured` (the measured threshold, 0.5), \
                     `off`, or an answerability between 0 and 1 (higher abstains more often; \
                     `docqa eval chat` prints how each one trades abstentions against false ones)"
                )),
            },
        }
    }
}

impl TryFrom<String> for AbstainSetting {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<AbstainSetting> for String {
    fn from(s: AbstainSetting) -> String {
        match s {
            AbstainSetting::Measured => "measured".into(),
            AbstainSetting::Off => "off".into(),
            AbstainSetting::Below(t) => t.to_string(),
        }
    }
}
