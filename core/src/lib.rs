//! magpie-core: the types, traits and pipelines of magpie, a framework for
//! retrieval-augmented applications. Connectors (candle, qdrant, tantivy, files)
//! implement the traits; this crate has no heavy dependency.
//!
//! Indexing: [`Loader`] → [`Splitter`] → [`Embedder`] → [`VectorStore`] +
//! [`KeywordStore`], driven by [`IndexingPipeline`]. Query: [`Retriever`]s
//! (dense, BM25, [`HybridRetriever`] with reciprocal-rank fusion) → optional
//! [`Reranker`] → [`QueryPipeline`].
#![warn(missing_docs)]

pub mod answer;
pub mod batch;
pub mod catalog;
pub mod conversation;
pub mod error;
pub mod filter;
pub mod fusion;
pub mod generate;
pub mod guard;
pub mod indexing;
pub mod integrity;
pub mod lang;
pub mod metrics;
pub mod retrieve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tools;
pub mod traits;
pub mod types;

pub use answer::{
    build_prompt, build_prompt_in_conversation, cited_numbers, pack_sources, Answer, AnswerOptions,
    PreparedAnswer, Source,
};
pub use batch::BatchingEmbedder;
pub use catalog::{
    atomic_write, CasOutcome, Catalog, CatalogEntry, CatalogStore, Settled, Versioned,
};
pub use conversation::{history_queries, ConversationRetriever, HistoryMode};
pub use error::{error_chain, BoxError, Error, Result};
pub use filter::{Bounds, Clause, Filter, FilterField};
pub use fusion::{AdaptiveFusion, FusionWeights};
pub use generate::{
    argmax, CancelToken, ChatMessage, Completion, FinishReason, GenerationEvent, GenerationOptions,
    GenerationStream, GenerationSummary, Generator, Prompt, Rng, Role, Sampler, StopFilter,
    StopOutput, Timings, Usage,
};
pub use indexing::{
    Consistency, DocStatus, IndexProgress, IndexReport, IndexingPipeline, NoProgress, RunOptions,
};
pub use integrity::{fingerprint_matches, vector_fingerprint, StoreHealth, Verification};
pub use lang::{detect as detect_language, Detected, LanguageSupport};
pub use retrieve::{
    reciprocal_rank_fusion, DenseRetriever, HybridRetriever, KeywordRetriever, QueryPipeline,
    SearchResult,
};
pub use tools::{
    JsonFormat, MossFormat, ToolCall, ToolFormat, ToolLoop, ToolRun, ToolSpec, Toolbox,
};
pub use traits::{
    Embedder, KeywordStore, Listing, Loader, Reranker, Retriever, Skipped, SourceRef, Splitter,
    StoredChunk, TokenCounter, VectorStore,
};
pub use types::{
    chunk_id_for, content_hash, doc_id_for, Chunk, Document, Hit, Metadata, Section, Span,
};
