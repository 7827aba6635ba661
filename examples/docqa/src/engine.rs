//! Opening an index directory: its settings, the embedder, both stores and the catalog.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use magpie_candle::BertEmbedder;
use magpie_core::{
    AdaptiveFusion, Catalog, DenseRetriever, Embedder, HybridRetriever, IndexingPipeline,
    KeywordRetriever, KeywordStore, Retriever, Splitter, VectorStore,
};
use magpie_files::TokenSplitter;
use magpie_qdrant::{EdgeStore, QdrantHybridRetriever, QdrantKeywords, QdrantStore, RemoteConfig};
use magpie_tantivy::TantivyStore;
use serde::{Deserialize, Serialize};

/// Settings fixed when an index is created, stored as `magpie.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSettings {
    pub format: u32,
    pub embedding_model: String,
    pub dimension: usize,
    pub chunk_tokens: usize,
    pub overlap_tokens: usize,
    /// Where the vectors live: absent for the embedded stores under the index
    /// directory, else a Qdrant URL (`qdrant+grpc://host:6334/collection`, no key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// Which store an index uses: the embedded pair, or a Qdrant collection.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// qdrant-edge and tantivy under the index directory.
    Embedded,
    /// A Qdrant server or cluster.
    Remote(RemoteConfig),
}

impl StoreSpec {
    /// Parse `embedded` or a `qdrant+grpc(s)://` URL.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "embedded" {
            return Ok(StoreSpec::Embedded);
        }
        if RemoteConfig::is_remote(s) {
            return Ok(StoreSpec::Remote(RemoteConfig::parse(s)?));
        }
        bail!(
            "store {s:?} is not known: use `embedded` (the default, under --index) or \
             qdrant+grpc://HOST:6334/COLLECTION (qdrant+grpcs:// for TLS)"
        )
    }

    /// As recorded in `magpie.json` (`None` for embedded).
    pub fn recorded(&self) -> Option<String> {
        match self {
            StoreSpec::Embedded => None,
            StoreSpec::Remote(c) => Some(c.display_url()),
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        self.recorded().unwrap_or_else(|| "embedded".into())
    }
}

/// Run `f` to completion from synchronous code inside the runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f),
    }
}

/// Retrieval mode for `search` and `eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Dense and BM25 fused by reciprocal rank.
    Hybrid,
    /// Nearest neighbours of the query embedding.
    Dense,
    /// BM25 keyword search.
    Bm25,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::Dense => "dense",
            Mode::Bm25 => "bm25",
        }
    }
}

/// Where models live and which embedding model to use.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Directory of downloaded models (filled by `docqa models fetch`).
    #[arg(long, global = true, env = "MAGPIE_MODELS", default_value = "models")]
    pub models_dir: PathBuf,
    /// Embedding model: a directory (config.json, tokenizer.json, model.safetensors)
    /// or a Hugging Face hub id present in the local hub cache.
    /// Default: all-MiniLM-L6-v2 from the models directory.
    #[arg(long, global = true, env = "MAGPIE_EMBED_MODEL")]
    pub embed_model: Option<String>,
    /// Precision of the embedding model's linear layers: `int8` (weights per
    /// channel and activations per row in 8 bits, on CPUs with AVX-512 VNNI or
    /// AMX, f32 elsewhere; about twice as fast, SciFact nDCG@10 within 0.004 of
    /// f32, see BENCHMARKS.md) or `f32` (vectors as sentence-transformers gives
    /// them).
    #[arg(long, global = true, env = "MAGPIE_EMBED_PRECISION", default_value = "int8", value_parser = ["f32", "int8"])]
    pub embed_precision: String,
    /// Language model: a .gguf file, a directory holding one, a Hugging Face
    /// hub id in the local hub cache (`org/repo` or `org/repo:q4_k_m`), or the
    /// base URL of a server with the OpenAI API (`http://host:8080/v1`: llama.cpp's
    /// server, vLLM, Ollama, another docqa) for `ask`, `serve` and `eval qa`.
    /// Default: Gemma 3 270M from the models directory.
    #[arg(long, global = true, env = "MAGPIE_LLM")]
    pub llm: Option<String>,
    /// With a server URL as --llm: the model name to ask for.
    #[arg(
        long,
        global = true,
        env = "MAGPIE_LLM_MODEL",
        default_value = "default"
    )]
    pub llm_model: String,
    /// Context window of the language model in tokens (default: the model's, at most 4096).
    #[arg(long, global = true, env = "MAGPIE_CTX")]
    pub ctx: Option<usize>,
    /// Where the index keeps its vectors: `embedded` (qdrant-edge and tantivy
    /// under --index, the default) or a Qdrant server or cluster,
    /// `qdrant+grpc://HOST:6334/COLLECTION[?shards=N&replication=N&write_consistency=N&ordering=weak|medium|strong]`
    /// (`qdrant+grpcs://` for TLS; API key in QDRANT_API_KEY). Chosen when the
    /// index is created and recorded in it; `docqa store copy` moves it.
    #[arg(long, global = true, env = "MAGPIE_STORE")]
    pub store: Option<String>,
}

impl ModelArgs {
    pub fn embed_spec(&self) -> String {
        self.embed_model.clone().unwrap_or_else(|| {
            self.models_dir
                .join(crate::models::MINILM_DIR)
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The language model as a generator: a remote server when `--llm` is an
    /// http(s) URL (API key from MAGPIE_LLM_API_KEY), else the local model.
    pub fn load_generator(&self) -> Result<std::sync::Arc<dyn magpie_core::Generator>> {
        if let Some(url) = self
            .llm
            .as_deref()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
        {
            let mut cfg = magpie_web::OpenAiConfig::new(url, self.llm_model.clone());
            if let Some(k) = std::env::var("MAGPIE_LLM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
            {
                cfg = cfg.api_key(k);
            }
            if let Some(ctx) = self.ctx {
                cfg.context_length = ctx;
            }
            tracing::info!(%url, model = %self.llm_model, "using a remote language model");
            return Ok(std::sync::Arc::new(magpie_web::OpenAiGenerator::new(cfg)?));
        }
        Ok(std::sync::Arc::new(self.load_llm()?))
    }

    /// Load the local language model (`--llm`, else the default GGUF).
    pub fn load_llm(&self) -> Result<magpie_candle::LocalLlm> {
        if self
            .llm
            .as_deref()
            .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
        {
            bail!("this command needs a local model file; a server URL works with ask, serve and eval qa");
        }
        let path = match &self.llm {
            Some(spec) => magpie_candle::resolve_gguf(spec)?,
            None => {
                let p = self.models_dir.join(crate::models::GEMMA_FILE);
                if !p.exists() {
                    bail!(
                        "the default language model is not installed in {}: run `docqa models fetch llm` \
                         (or pass --llm <file.gguf|hub-id>)",
                        self.models_dir.display()
                    );
                }
                p
            }
        };
        let t = std::time::Instant::now();
        let llm = magpie_candle::LocalLlm::load(
            &path,
            magpie_candle::LlmOptions {
                context_window: self.ctx,
                ..Default::default()
            },
        )
        .with_context(|| format!("loading the language model {}", path.display()))?;
        tracing::info!(model = %path.display(), secs = t.elapsed().as_secs_f64(), "language model loaded");
        Ok(llm)
    }

    /// Load the embedding model: `--embed-model` if given, else the hub model an
    /// existing index was built with (when it is in the local hub cache), else the default.
    pub fn load_embedder(&self, recorded: Option<&str>) -> Result<BertEmbedder> {
        if self.embed_model.is_none() {
            if let Some(id) = recorded.filter(|id| id.contains('/')) {
                if magpie_candle::resolve_model_dir(id).is_ok() {
                    return self
                        .embedder_builder(id)
                        .build()
                        .context("loading the embedding model");
                }
            }
        }
        let spec = self.embed_spec();
        if self.embed_model.is_none() && !Path::new(&spec).exists() {
            bail!(
                "the default embedding model is not installed in {}: run `docqa models fetch` first \
                 (or pass --embed-model <dir|hub-id>)",
                self.models_dir.display()
            );
        }
        self.embedder_builder(&spec)
            .build()
            .context("loading the embedding model")
    }

    fn embedder_builder(&self, spec: &str) -> magpie_candle::BertEmbedderBuilder {
        BertEmbedder::builder(spec).int8(self.embed_precision == "int8")
    }
}

/// An open index: settings, embedder, stores.
pub struct Engine {
    pub dir: PathBuf,
    pub settings: IndexSettings,
    pub embedder: Arc<BertEmbedder>,
    pub vectors: Arc<dyn VectorStore>,
    pub keywords: Arc<dyn KeywordStore>,
    /// The Qdrant collection, when the index lives in one.
    pub remote: Option<Arc<QdrantStore>>,
}

#[derive(Default)]
pub struct OpenOptions {
    pub create: bool,
    pub chunk_tokens: Option<usize>,
    pub overlap_tokens: Option<usize>,
    pub read_only: bool,
    /// Weight of title matches in BM25 (default: the store's).
    pub title_boost: Option<f32>,
    /// The store asked for (`--store`); default: the one the index records.
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
}

impl Engine {
    pub fn open(dir: &Path, models: &ModelArgs, opts: OpenOptions) -> Result<Self> {
        let settings_path = dir.join("magpie.json");
        let existing = read_settings(dir)?;
        if existing.is_none() && !opts.create {
            bail!(
                "no index at {}: run `docqa index <path>` first (or pass --index <dir>)",
                dir.display()
            );
        }
        let embedder =
            Arc::new(models.load_embedder(existing.as_ref().map(|s| s.embedding_model.as_str()))?);
        let settings = match existing {
            Some(s) => {
                if s.embedding_model != embedder.model_id() || s.dimension != embedder.dimension() {
                    bail!(
                        "the index at {} was built with embedding model {:?} ({} dims) but {:?} is loaded; \
                         pass --embed-model for that model, or use another --index",
                        dir.display(),
                        s.embedding_model,
                        s.dimension,
                        embedder.model_id()
                    );
                }
                for (name, asked, have) in [
                    ("--chunk-tokens", opts.chunk_tokens, s.chunk_tokens),
                    ("--overlap", opts.overlap_tokens, s.overlap_tokens),
                ] {
                    if asked.is_some_and(|a| a != have) {
                        bail!(
                            "the index at {} uses {name} {have}; to change it, index into a new --index directory",
                            dir.display()
                        );
                    }
                }
                s
            }
            None => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the index directory {}", dir.display()))?;
                let s = IndexSettings {
                    format: 1,
                    embedding_model: embedder.model_id().to_string(),
                    dimension: embedder.dimension(),
                    chunk_tokens: opts.chunk_tokens.unwrap_or(200),
                    overlap_tokens: opts.overlap_tokens.unwrap_or(40),
                    store: match opts.store.as_deref().or(models.store.as_deref()) {
                        Some(s) => StoreSpec::parse(s)?.recorded(),
                        None => None,
                    },
                };
                s
            }
        };
        let new_index = !settings_path.exists();
        let spec = resolve_store(
            dir,
            &settings,
            opts.store.as_deref().or(models.store.as_deref()),
        )?;
        let (vectors, keywords, remote) = match spec {
            StoreSpec::Embedded => {
                // The embedded stores map their files: opening them on a full
                // disk would crash the process, so refuse with a message first.
                magpie_core::guard::ensure_free_space(
                    dir,
                    magpie_core::guard::MIN_FREE_TO_OPEN,
                    "opening the index",
                )?;
                let vectors = Arc::new(EdgeStore::open(dir.join("vectors"), settings.dimension)?);
                let keywords = if opts.read_only {
                    TantivyStore::open_read_only(dir.join("keywords"))?
                } else {
                    TantivyStore::open(dir.join("keywords"))?
                };
                let keywords = Arc::new(
                    keywords.with_title_boost(
                        opts.title_boost
                            .unwrap_or(magpie_tantivy::DEFAULT_TITLE_BOOST),
                    ),
                );
                (
                    vectors as Arc<dyn VectorStore>,
                    keywords as Arc<dyn KeywordStore>,
                    None,
                )
            }
            StoreSpec::Remote(cfg) => {
                let url = cfg.display_url();
                let store = Arc::new(
                    block_on(QdrantStore::connect(cfg, settings.dimension))
                        .with_context(|| format!("opening the Qdrant store {url}"))?,
                );
                tracing::info!(%url, "vectors in Qdrant");
                (
                    store.clone() as Arc<dyn VectorStore>,
                    Arc::new(QdrantKeywords(store.clone())) as Arc<dyn KeywordStore>,
                    Some(store),
                )
            }
        };
        if new_index {
            // Recorded once the stores opened, so a mistyped store URL leaves no index behind.
            magpie_core::atomic_write(&settings_path, &serde_json::to_vec_pretty(&settings)?)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            settings,
            embedder,
            vectors,
            keywords,
            remote,
        })
    }

    pub fn splitter(&self) -> Arc<dyn Splitter> {
        Arc::new(
            TokenSplitter::new(self.embedder.token_counter())
                .chunk_tokens(self.settings.chunk_tokens)
                .overlap_tokens(self.settings.overlap_tokens),
        )
    }

    pub fn pipeline(&self) -> Result<IndexingPipeline> {
        let catalog = Catalog::open(self.dir.join("catalog.json"))?;
        Ok(IndexingPipeline::new(
            self.splitter(),
            self.embedder.clone() as Arc<dyn Embedder>,
            self.vectors.clone(),
            self.keywords.clone(),
            catalog,
        )
        .storage_dir(&self.dir))
    }

    pub fn bm25(&self) -> KeywordRetriever {
        KeywordRetriever::new(self.keywords.clone())
    }

    pub fn retriever(&self, mode: Mode) -> Arc<dyn Retriever> {
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

    /// A retriever whose queries are embedded by `queries` (the server's batching embedder).
    pub fn retriever_with(&self, mode: Mode, queries: Arc<dyn Embedder>) -> Arc<dyn Retriever> {
        let dense = || DenseRetriever::new(queries.clone(), self.vectors.clone());
        match mode {
            Mode::Dense => Arc::new(dense()),
            Mode::Bm25 => Arc::new(self.bm25()),
            // A cluster fuses dense and BM25 itself, in one request.
            Mode::Hybrid if self.remote.is_some() => Arc::new(
                QdrantHybridRetriever::new(queries.clone(), self.remote.clone().expect("checked"))
                    .adaptive(AdaptiveFusion::for_embedder(queries)),
            ),
            Mode::Hybrid => Arc::new(self.hybrid_with(queries)),
        }
    }
}

/// The settings of the index in `dir`, if there is one.
pub fn read_settings(dir: &Path) -> Result<Option<IndexSettings>> {
    let settings_path = dir.join("magpie.json");
    match std::fs::read(&settings_path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is damaged: `docqa repair` writes it again (with --embed-model, \
                 --chunk-tokens and --overlap if the index was not made with the defaults)",
                settings_path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", settings_path.display())),
    }
}

/// The store an index uses: `--store` when given (it must match what the index
/// records), else the recorded one.
fn resolve_store(dir: &Path, settings: &IndexSettings, asked: Option<&str>) -> Result<StoreSpec> {
    let recorded = match &settings.store {
        Some(url) => StoreSpec::parse(url)?,
        None => StoreSpec::Embedded,
    };
    let Some(asked) = asked else {
        return Ok(recorded);
    };
    let asked = StoreSpec::parse(asked)?;
    if asked.recorded() != recorded.recorded() {
        bail!(
            "the index at {} keeps its vectors in {}, not {}; to move it there, run \
             `docqa --index {} store copy --to {}`",
            dir.display(),
            recorded.describe(),
            asked.describe(),
            dir.display(),
            asked.describe()
        );
    }
    // Same place; the flag's options (ordering, batch size, retries) apply.
    Ok(asked)
}
