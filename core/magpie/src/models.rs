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
    /// LoRA adapters loaded on the local language model, by name.
    pub loras: Vec<LoraSpec>,
    /// What the local model's KV cache holds keys and values in (default
    /// f16, as llama.cpp; `MAGPIE_KV_CACHE`).
    pub kv_cache: Option<magpie_candle::llm::KvCacheType>,
}

/// A LoRA adapter to load: `NAME=PATH[:SCALE]` on docqa's command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The name requests use for it (no `+`, `,` or `=`).
    pub name: String,
    /// Its GGUF file (as llama.cpp's `convert_lora_to_gguf.py` writes it).
    pub path: PathBuf,
    /// The scale a one-shot command (`ask`, `generate`) applies it at.
    pub scale: f32,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;

    /// `NAME=PATH` or `NAME=PATH:SCALE`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = "expected NAME=PATH[:SCALE], e.g. law=adapters/law.gguf:0.8";
        let (name, rest) = s.split_once('=').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let name = name.trim();
        magpie_core::check_adapter_name(name).map_err(|e| format!("{s:?}: {e} ({usage})"))?;
        // a trailing :SCALE when it parses as a number; else all of it is the path
        let (path, scale) = match rest.rsplit_once(':') {
            Some((p, sc)) if !p.is_empty() => match sc.trim().parse::<f32>() {
                Ok(v) if v.is_finite() => (p, v),
                Ok(_) => return Err(format!("{s:?}: the scale must be a finite number")),
                Err(_) => (rest, 1.0),
            },
            _ => (rest, 1.0),
        };
        if path.is_empty() {
            return Err(format!("{s:?}: no adapter file ({usage})"));
        }
        Ok(Self {
            name: name.to_string(),
            path: PathBuf::from(path),
            scale,
        })
    }
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
            loras: Vec::new(),
            kv_cache: None,
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

    /// The adapters of [`Self::loras`] at their scales, as one-shot commands
    /// apply them to every call.
    pub fn lora_choices(&self) -> Vec<magpie_core::AdapterChoice> {
        self.loras
            .iter()
            .map(|l| magpie_core::AdapterChoice {
                name: l.name.clone(),
                scale: l.scale,
            })
            .collect()
    }

    /// Load the local language model, and the adapters of [`Self::loras`] on it.
    pub fn load_llm(&self) -> Result<LocalLlm> {
        let path = self.llm_path()?;
        let t = std::time::Instant::now();
        let llm = LocalLlm::load(
            &path,
            LlmOptions {
                context_window: self.context,
                kv_cache: self.kv_cache,
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
        for l in &self.loras {
            llm.load_adapter(&l.name, &l.path).map_err(|e| {
                magpie_core::Error::stage(
                    "LoRA adapter",
                    format!(
                        "--lora {}={}: {}",
                        l.name,
                        l.path.display(),
                        magpie_core::error_chain(&e)
                    ),
                )
            })?;
        }
        Ok(llm)
    }

    /// The language model as a generator: the server when [`Self::llm`] is a
    /// URL, else the local model.
    pub fn load_generator(&self) -> Result<Arc<dyn Generator>> {
        if let Some(url) = self.llm.as_deref().filter(|_| self.llm_is_remote()) {
            if let Some(l) = self.loras.first() {
                return Err(magpie_core::Error::InvalidInput(format!(
                    "LoRA adapter {:?}: adapters load on a local model, not on the server at {url}; load it there, or drop --lora",
                    l.name
                ))
                .into());
            }
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

    /// [`Self::load_generator`], with every adapter of [`Self::loras`] applied
    /// at its scale to each call that names none: what a one-shot command
    /// (`docqa ask --lora …`) wants. A server keeps [`Self::load_generator`]
    /// and lets each request pick.
    pub fn load_generator_with_loras(&self) -> Result<Arc<dyn Generator>> {
        let g = self.load_generator()?;
        if self.loras.is_empty() {
            return Ok(g);
        }
        Ok(Arc::new(magpie_core::WithAdapters {
            inner: g,
            adapters: self.lora_choices(),
        }))
    }
}

/// True when `dir` holds the default embedding model.
pub fn default_embedder_installed(dir: &Path) -> bool {
    dir.join(DEFAULT_EMBEDDER_DIR)
        .join("model.safetensors")
        .exists()
}

#[cfg(test)]
mod tests {
    use super::LoraSpec;

    #[test]
    fn lora_specs_parse() {
        let l: LoraSpec = "law=adapters/law.gguf".parse().unwrap();
        assert_eq!((l.name.as_str(), l.scale), ("law", 1.0));
        assert_eq!(l.path, std::path::PathBuf::from("adapters/law.gguf"));
        let l: LoraSpec = "med=a:b/med.gguf:0.25".parse().unwrap();
        assert_eq!(l.path, std::path::PathBuf::from("a:b/med.gguf"));
        assert_eq!(l.scale, 0.25);
        // a colon that is not a scale stays in the path
        let l: LoraSpec = "x=dir:v2/x.gguf".parse().unwrap();
        assert_eq!((l.path.to_str().unwrap(), l.scale), ("dir:v2/x.gguf", 1.0));
        for bad in [
            "law",
            "=a.gguf",
            "a+b=x.gguf",
            "a,b=x.gguf",
            "a=",
            "a=x.gguf:inf",
        ] {
            let e = bad.parse::<LoraSpec>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
