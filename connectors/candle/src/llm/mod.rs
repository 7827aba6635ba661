//! Local quantized LLMs from GGUF files: magpie's own forward pass for the
//! gemma3, llama and qwen2/qwen3 layouts on candle ops, a KV cache magpie
//! controls (sliding-window context with RoPE re-rotation), the tokenizer
//! from the file's metadata, chat templates, and a streaming [`magpie_core::Generator`].

mod attn;
pub mod chat;
mod decode;
pub mod flash;
pub mod generator;
pub mod gguf;
pub mod info;
mod kv;
pub mod lora;
pub mod model;
mod ops;
mod pool;
mod prefill;
pub mod quant;
pub mod spm;
pub mod vocab;
mod weights;

use std::path::{Path, PathBuf};

pub use flash::AttentionKernel;
pub use generator::{LlmOptions, LocalLlm};
pub use gguf::{Arch, LlmConfig, ModelFile, SUPPORTED_ARCHITECTURES};
pub use info::{model_info, ModelInfo};
pub use kv::KvCacheType;
pub use lora::{adapter_info, is_adapter, ActiveLoras, AdapterSummary, LoraAdapter};
pub use model::{KvCache, Transformer};
pub use vocab::GgufTokenizer;

/// Errors of the LLM runtime.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The file is missing, truncated or malformed.
    #[error("{0}")]
    BadFile(String),
    /// The architecture or tokenizer is not one magpie runs.
    #[error("{0}")]
    Unsupported(String),
    /// Tokenizer problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template problem.
    #[error("chat template: {0}")]
    Template(String),
    /// A request that cannot be served as asked.
    #[error("{0}")]
    InvalidInput(String),
    /// More tokens than the cache holds.
    #[error("the context window is full: {needed} tokens needed, the window holds {window}")]
    ContextFull {
        /// Tokens the step needed.
        needed: usize,
        /// Window size.
        window: usize,
    },
    /// candle failed while running.
    #[error("model runtime: {0}")]
    Runtime(String),
}

impl From<LlmError> for magpie_core::Error {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::InvalidInput(m) => magpie_core::Error::InvalidInput(m),
            other => magpie_core::Error::stage("llm", other.to_string()),
        }
    }
}

/// Find a GGUF file from a path (file or directory holding one) or a Hugging
/// Face hub id in the local hub cache, optionally `id:PATTERN` to choose among
/// several files (`Qwen/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m`).
pub fn resolve_gguf(spec: &str) -> Result<PathBuf, LlmError> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let (id, pattern) = match spec.rsplit_once(':') {
        Some((a, b)) if !Path::new(spec).exists() && !b.contains('/') => {
            (a, Some(b.to_lowercase()))
        }
        _ => (spec, None),
    };
    let dir = if Path::new(id).is_dir() {
        PathBuf::from(id)
    } else {
        crate::resolve_model_dir(id).map_err(|_| {
            LlmError::BadFile(format!(
                "model {spec:?} not found: give the path of a .gguf file, a directory holding one, or a Hugging Face id in the local hub cache"
            ))
        })?
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| LlmError::BadFile(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
        })
        .filter(|p| {
            pattern.as_ref().is_none_or(|pat| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().to_lowercase().contains(pat.as_str()))
            })
        })
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(LlmError::BadFile(format!(
            "no .gguf file{} in {}",
            pattern
                .map(|p| format!(" matching {p:?}"))
                .unwrap_or_default(),
            dir.display()
        ))),
        _ => Err(LlmError::InvalidInput(format!(
            "{} holds several .gguf files ({}); choose one with {id}:PATTERN or give its path",
            dir.display(),
            files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
