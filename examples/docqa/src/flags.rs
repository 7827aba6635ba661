//! The flags every command shares (models, store) and the hints docqa adds
//! to the facade's errors: the command or flag that fixes them. What an index
//! is (its layout, settings and stores) lives in the `magpie` crate.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use magpie::Models;

pub use magpie::{Index, IndexSettings, OpenOptions, StoreSpec};

/// Retrieval mode for `search`, `ask` and `eval` (`--mode`).
pub use magpie::SearchMode as Mode;

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
    /// channel and activations per row in 8 bits, on AMX, AVX-512 VNNI or AVX2;
    /// f32 on AVX-512 CPUs without VNNI; 1.3–2× as fast, SciFact nDCG@10
    /// within 0.004 of f32, see BENCHMARKS.md) or `f32` (vectors as
    /// sentence-transformers gives them).
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
    /// What the local language model's KV cache holds keys and values in:
    /// `f16` (the default, as llama.cpp: half the memory of f32, and half the
    /// bytes a long context's attention reads), `f32`, or `q8_0` (CPU only:
    /// about half of f16 again, for long contexts in little memory).
    #[arg(
        long,
        global = true,
        env = "MAGPIE_KV_CACHE",
        value_name = "f16|f32|q8_0"
    )]
    pub kv_cache: Option<magpie_candle::llm::KvCacheType>,
    /// A LoRA adapter for the local language model, NAME=PATH[:SCALE]
    /// (a GGUF adapter as llama.cpp's convert_lora_to_gguf.py writes it;
    /// repeatable). `ask`, `chat` and `generate` apply every one given, at its
    /// scale (default 1). `serve` loads them on one base and each request
    /// picks its own: "adapters": ["NAME"] or [{"name": "NAME", "scale": 0.5}]
    /// in /v1/query, or the OpenAI model "BASE+NAME". `model info --lora`
    /// shows an adapter's rank, targets and size.
    #[arg(long = "lora", global = true, value_name = "NAME=PATH[:SCALE]")]
    pub loras: Vec<magpie::models::LoraSpec>,
    /// Where the index keeps its vectors: `embedded` (qdrant-edge and tantivy
    /// under --index, the default) or a Qdrant server or cluster,
    /// `qdrant+grpc://HOST:6334/COLLECTION[?shards=N&replication=N&write_consistency=N&ordering=weak|medium|strong]`
    /// (`qdrant+grpcs://` for TLS; API key in QDRANT_API_KEY). Chosen when the
    /// index is created and recorded in it; `docqa store copy` moves it.
    #[arg(long, global = true, env = "MAGPIE_STORE")]
    pub store: Option<String>,
}

impl ModelArgs {
    /// The facade's model choice from the flags.
    pub fn models(&self) -> Models {
        Models {
            dir: self.models_dir.clone(),
            embedder: self.embed_model.clone(),
            int8: self.embed_precision == "int8",
            llm: self.llm.clone(),
            llm_model: self.llm_model.clone(),
            llm_api_key: std::env::var("MAGPIE_LLM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            context: self.ctx,
            loras: self.loras.clone(),
            kv_cache: self.kv_cache,
        }
    }

    /// The embedding model's path or hub id.
    pub fn embed_spec(&self) -> String {
        self.embed_model.clone().unwrap_or_else(|| {
            self.models_dir
                .join(magpie::models::DEFAULT_EMBEDDER_DIR)
                .to_string_lossy()
                .into_owned()
        })
    }

    /// The language model as a generator: a remote server when `--llm` is an
    /// http(s) URL (API key from MAGPIE_LLM_API_KEY), else the local model.
    pub fn load_generator(&self) -> Result<std::sync::Arc<dyn magpie_core::Generator>> {
        self.models().load_generator().map_err(hint)
    }

    /// [`Self::load_generator`] with every `--lora` adapter applied to each
    /// call (the one-shot commands: ask, chat, eval).
    pub fn load_generator_with_loras(&self) -> Result<std::sync::Arc<dyn magpie_core::Generator>> {
        self.models().load_generator_with_loras().map_err(hint)
    }

    /// Load the local language model (`--llm`, else the default GGUF).
    pub fn load_llm(&self) -> Result<magpie_candle::LocalLlm> {
        let models = self.models();
        if models.llm_is_remote() {
            anyhow::bail!("this command needs a local model file; a server URL works with ask, serve and eval qa");
        }
        models.load_llm().map_err(hint)
    }

    /// Load the embedding model: `--embed-model` if given, else the hub model an
    /// existing index was built with (when it is in the local hub cache), else the default.
    pub fn load_embedder(&self, recorded: Option<&str>) -> Result<magpie_candle::BertEmbedder> {
        self.models()
            .load_embedder(recorded)
            .map_err(|e| hint(e).context("loading the embedding model"))
    }
}

/// Open the index in `dir` with the flags' models; errors say which command
/// or flag fixes them.
pub fn open(dir: &Path, models: &ModelArgs, opts: OpenOptions) -> Result<Index> {
    let opts = OpenOptions {
        store: opts.store.or_else(|| models.store.clone()),
        ..opts
    };
    Index::open_with(dir, &models.models(), opts).map_err(hint)
}

/// The settings of the index in `dir`, if there is one.
pub fn read_settings(dir: &Path) -> Result<Option<IndexSettings>> {
    IndexSettings::read(dir).map_err(hint)
}

/// The facade's error, with what to run or pass to fix it.
pub fn hint(e: magpie::Error) -> anyhow::Error {
    use magpie::Error as E;
    match e {
        E::NoIndex { dir } => anyhow!(
            "no index at {}: run `docqa index <path>` first (or pass --index <dir>)",
            dir.display()
        ),
        e @ E::ModelMismatch { .. } => {
            anyhow!("{e}; pass --embed-model for that model, or use another --index")
        }
        E::SettingMismatch { dir, setting, have } => {
            let flag = if setting == "chunk_tokens" {
                "--chunk-tokens"
            } else {
                "--overlap"
            };
            anyhow!(
                "the index at {} uses {flag} {have}; to change it, index into a new --index directory",
                dir.display()
            )
        }
        E::StoreMismatch {
            dir,
            recorded,
            asked,
        } => anyhow!(
            "the index at {} keeps its vectors in {recorded}, not {asked}; to move it there, run \
             `docqa --index {} store copy --to {asked}`",
            dir.display(),
            dir.display()
        ),
        e @ E::Damaged { .. } => anyhow!(
            "{e}: `docqa repair` writes it again (with --embed-model, --chunk-tokens and \
             --overlap if the index was not made with the defaults)"
        ),
        E::ModelMissing {
            what: "language model",
            dir,
        } => anyhow!(
            "the default language model is not installed in {}: run `docqa models fetch llm` \
             (or pass --llm <file.gguf|hub-id>)",
            dir.display()
        ),
        E::ModelMissing { what, dir } => anyhow!(
            "the default {what} is not installed in {}: run `docqa models fetch` first \
             (or pass --embed-model <dir|hub-id>)",
            dir.display()
        ),
        other => anyhow::Error::from(other),
    }
}

/// The eval commands open indexes and load the model as every command does.
impl magpie_eval::Setup for ModelArgs {
    fn open(&self, dir: &Path, opts: OpenOptions) -> Result<Index> {
        open(dir, self, opts)
    }

    fn generator(&self) -> Result<std::sync::Arc<dyn magpie_core::Generator>> {
        self.load_generator_with_loras()
    }
}
