//! magpie-candle: local models on candle. Sentence embeddings with BERT-family
//! models (all-MiniLM-L6-v2 and friends) from safetensors and tokenizer.json,
//! and quantized GGUF LLMs (gemma3, llama, qwen2/qwen3) with magpie's own
//! forward pass and KV cache ([`llm`]).
#![warn(missing_docs)]

pub mod bandwidth;
pub mod bert;
mod candle_bert;
mod card;
pub mod device;
pub mod encoder;
pub mod llm;
pub mod resolve;

pub use bandwidth::{measure_bandwidth, Bandwidth};
pub use bert::{BertEmbedder, BertEmbedderBuilder, HfTokenCounter};
pub use card::{card_languages, Prompts};
pub use device::{
    cpu_features_ok, describe_device, pin_thread_count, select_device, tune_allocator,
    uniform_cpu_kernels, DeviceReport,
};
pub use encoder::gemm::Isa;
pub use llm::{resolve_gguf, LlmError, LlmOptions, LocalLlm};
pub use resolve::{resolve_model_dir, ResolveError};

/// Errors of the candle connector.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    /// candle failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model file is missing or malformed.
    #[error("{0}")]
    Model(String),
    /// The model could not be found.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}
