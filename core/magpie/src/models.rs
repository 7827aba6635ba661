//! One resolver for models: a directory, a Hugging Face hub id in the local
//! cache, the installed defaults, or (for generation) the URL of a server
//! with the OpenAI API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use magpie_candle::{BertEmbedder, LlmOptions, LocalLlm};
use magpie_core::Generator;

use crate::error::{Error, Result};

/// The default embedding model's directory under the models directory.
pub const DEFAULT_EMBEDDER_DIR: &str = "all-MiniLM-L6-v2";
/// The default language model's file under the models directory.
pub const DEFAULT_LLM_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Which models to use, and where the installed defaults live.
#[derive(Debug, Clone)]
pub struct Models {
    /// Directory of installed models (the defaults live here).
    pub dir: PathBuf,
    /// Embedding model: a directory or a hub id (default: the installed
    /// all-MiniLM-L6-v2, or the hub model an index records).
    pub embedder: Option<String>,
    /// Linear layers of the embedder in int8 where the CPU has VNNI/AMX.
    pub int8: bool,
    /// Language model: a `.gguf`, a directory holding one, a hub id
    /// (`org/repo[:quant]`) or an `http(s)://` OpenAI-API base URL
    /// (default: the installed Gemma 3 270M).
    pub llm: Option<String>,
    /// With a server URL: the model name to ask for.
    pub llm_model: String,
    /// With a server URL: the API key.
    pub llm_api_key: Option<String>,
    /// Context window in tokens (default: the model's, at most 4096).
    pub context: Option<usize>,
}

impl Default for Models {
    /// The installed defaults in `./models`.
    fn default() -> Self {
        Self::in_dir("models")
    }
}

impl Models {
    /// The installed defaults in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            embedder: None,
            int8: true,
            llm: None,
            llm_model: "default".into(),
            llm_api_key: None,
            context: None,
        }
    }

    /// The defaults, with `MAGPIE_MODELS`, `MAGPIE_EMBED_MODEL`, `MAGPIE_LLM`,
    /// `MAGPIE_LLM_MODEL`, `MAGPIE_LLM_API_KEY` and `MAGPIE_CTX` applied.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut m = Self::in_dir(var("MAGPIE_MODELS").unwrap_or_else(|| "models".into()));
        m.embedder = var("MAGPIE_EMBED_MODEL");
        m.llm = var("MAGPIE_LLM");
        if let Some(name) = var("MAGPIE_LLM_MODEL") {
            m.llm_model = name;
        }
        m.llm_api_key = var("MAGPIE_LLM_API_KEY");
        m.context = var("MAGPIE_CTX").and_then(|v| v.parse().ok());
        m
    }

    /// The embedding model to load: the one asked for, else the hub model an
    /// index records (when it is in the local hub cache), else the default.
    pub fn embedder_spec(&self, recorded: Option<&str>) -> Result<String> {
        if let Some(spec) = &self.embedder {
            return Ok(spec.clone());
        }
        if let Some(id) = recorded.filter(|id| id.contains('/')) {
            if magpie_candle::resolve_model_dir(id).is_ok() {
                return Ok(id.to_string());
            }
        }
        let default = self.dir.join(DEFAULT_EMBEDDER_DIR);
        if !default.exists() {
            return Err(Error::ModelMissing {
                what: "embedding model",
                dir: self.dir.clone(),
            });
        }
        Ok(default.to_string_lossy().into_owned())
    }

    /// Load the embedding model (see [`Self::embedder_spec`]).
    pub fn load_embedder(&self, recorded: Option<&str>) -> Result<BertEmbedder> {
        let spec = self.embedder_spec(recorded)?;
        Ok(BertEmbedder::builder(spec).int8(self.int8).build()?)
    }

    /// True when the language model is a server URL.
    pub fn llm_is_remote(&self) -> bool {
        self.llm
            .as_deref()
            .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
    }

    /// The local language model's file.
    pub fn llm_path(&self) -> Result<PathBuf> {
        match &self.llm {
            Some(spec) => Ok(magpie_candle::resolve_gguf(spec)
                .map_err(|e| magpie_core::Error::stage("language model", e.to_string()))?),
            None => {
                let p = self.dir.join(DEFAULT_LLM_FILE);
                if !p.exists() {
                    return Err(Error::ModelMissing {
                        what: "language model",
                        dir: self.dir.clone(),
                    });
                }
                Ok(p)
            }
        }
    }

    /// Load the local language model.
    pub fn load_llm(&self) -> Result<LocalLlm> {
        let path = self.llm_path()?;
        let t = std::time::Instant::now();
        let llm = LocalLlm::load(
            &path,
            LlmOptions {
                context_window: self.context,
                ..Default::default()
            },
        )
        .map_err(|e| {
            magpie_core::Error::stage(
                "language model",
                format!(
                    "loading {}: {}",
                    path.display(),
                    magpie_core::error_chain(&e)
                ),
            )
        })?;
        tracing::info!(model = %path.display(), secs = t.elapsed().as_secs_f64(), "language model loaded");
        Ok(llm)
    }

    /// The language model as a generator: the server when [`Self::llm`] is a
    /// URL, else the local model.
    pub fn load_generator(&self) -> Result<Arc<dyn Generator>> {
        if let Some(url) = self.llm.as_deref().filter(|_| self.llm_is_remote()) {
            let mut cfg = magpie_openai::OpenAiConfig::new(url, self.llm_model.clone());
            if let Some(k) = &self.llm_api_key {
                cfg = cfg.api_key(k.clone());
            }
            if let Some(ctx) = self.context {
                cfg.context_length = ctx;
            }
            tracing::info!(%url, model = %self.llm_model, "using a remote language model");
            let g = magpie_openai::OpenAiGenerator::new(cfg)
                .map_err(|e| magpie_core::Error::stage("language model", e.to_string()))?;
            return Ok(Arc::new(g));
        }
        Ok(Arc::new(self.load_llm()?))
    }
}

/// True when `dir` holds the default embedding model.
pub fn default_embedder_installed(dir: &Path) -> bool {
    dir.join(DEFAULT_EMBEDDER_DIR)
        .join("model.safetensors")
        .exists()
}
