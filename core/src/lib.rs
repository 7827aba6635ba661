//! magpie-core: the types, traits and pipelines of magpie, a framework for
//! retrieval-augmented applications. Connectors (candle, qdrant, tantivy, files)
//! implement the traits; this crate has no heavy dependency.
//!
//! Indexing: [`Loader`] → [`Splitter`] → [`Embedder`] → [`VectorStore`] +
//! [`KeywordStore`], driven by [`IndexingPipeline`]. Query: [`Retriever`]s
//! (dense, BM25, [`HybridRetriever`] with reciprocal-rank fusion) → optional
//! [`Reranker`] → [`QueryPipeline`].
//!
//! The whole loop on the in-memory test doubles of the `testing` feature (no
//! model, no files but the catalog):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use magpie_core::testing::{HashingEmbedder, MemoryLoader, MemoryStore, ScriptedGenerator, WordSplitter};
//! use magpie_core::{AnswerOptions, Catalog, DenseRetriever, HybridRetriever, IndexingPipeline};
//! use magpie_core::{KeywordRetriever, NoProgress, QueryPipeline, RunOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let (vectors, keywords) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
//! let embedder = Arc::new(HashingEmbedder::new(32));
//! let catalog = Catalog::open(dir.path().join("catalog.json"))?;
//! let splitter = Arc::new(WordSplitter::new(50));
//! let mut pipeline =
//!     IndexingPipeline::new(splitter, embedder.clone(), vectors.clone(), keywords.clone(), catalog);
//! let docs = MemoryLoader::new([
//!     ("birds.txt", "magpies collect shiny objects"),
//!     ("cats.txt", "cats sleep most of the day"),
//! ]);
//! let report = pipeline.run(&docs, &RunOptions::default(), &NoProgress).await?;
//! assert_eq!(report.indexed, 2);
//!
//! let hybrid = HybridRetriever::new(vec![
//!     Arc::new(DenseRetriever::new(embedder, vectors)),
//!     Arc::new(KeywordRetriever::new(keywords)),
//! ]);
//! let llm = ScriptedGenerator::new(["They collect shiny objects [1]."]);
//! let answer = QueryPipeline::new(Arc::new(hybrid))
//!     .top_k(2)
//!     .answer("what do magpies collect?", &llm, &AnswerOptions::default())
//!     .await?;
//! assert_eq!(answer.citations[0].source, "birds.txt");
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod abstain;
pub mod adapters;
pub mod answer;
pub mod batch;
pub mod catalog;
pub mod condense;
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

pub use abstain::{
    sentences, term_coverage, unresolved_reference, AbstentionPolicy, Answerability,
    AnswerabilityParts, AnswerabilityScorer, Decision, SentenceMatch,
};
pub use adapters::{check_adapter_name, check_choices, AdapterChoice, WithAdapters};
pub use answer::{
    build_prompt, build_prompt_in_conversation, cited_numbers, pack_sources, Answer, AnswerOptions,
    PreparedAnswer, Source,
};
pub use batch::BatchingEmbedder;
pub use catalog::{
    atomic_write, CasOutcome, Catalog, CatalogEntry, CatalogStore, Settled, Versioned,
};
pub use condense::condense;
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
