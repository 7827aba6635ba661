//! magpie-candle: local models on candle. Sentence embeddings with BERT-family
//! models (all-MiniLM-L6-v2 and friends) from safetensors and tokenizer.json.
#![warn(missing_docs)]

pub mod bert;
pub mod device;
pub mod resolve;

pub use bert::{BertEmbedder, BertEmbedderBuilder, HfTokenCounter};
pub use device::{cpu_features_ok, select_device, tune_allocator};
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
