//! magpie: retrieval-augmented applications on your own documents, in a few
//! lines. Open an index directory, add a folder, search it, ask it:
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> magpie::Result<()> {
//! let index = magpie::Index::open("my-index")?;          // embedded stores, default models
//! index.add("docs/").await?;                              // new and changed files only
//! let llm = magpie::Models::from_env().load_generator()?; // local GGUF or an OpenAI-API URL
//! let answer = index.ask_stream("how do I upgrade?", &*llm, |t| print!("{t}")).await?;
//! for s in &answer.citations {
//!     println!("\n[{}] {}", s.number, s.source);
//! }
//! # Ok(()) }
//! ```
//!
//! The default models (all-MiniLM-L6-v2 for embeddings, Gemma 3 270M for
//! answers) are looked up in `./models` or `MAGPIE_MODELS`; [`Models`] names
//! others by path or Hugging Face hub id. [`Index::open_with`] takes a Qdrant
//! URL for the store, chunk sizes and other options.
//!
//! The building blocks are re-exported: [`core`] (traits, pipelines, fusion,
//! the `testing` doubles behind the feature of that name), and the
//! connectors [`candle`], [`files`], [`openai`], [`qdrant`], [`tantivy`] and [`web`].
#![warn(missing_docs)]

mod error;
pub mod index;
pub mod layout;
pub mod models;
#[cfg(feature = "cli")]
pub mod progress;
pub mod repair;
pub mod session;
pub mod store;
pub mod watch;

pub use error::{Error, Result};
pub use index::{AbstainSetting, Index, OpenOptions, SearchMode};
pub use layout::{IndexSettings, Layout};
pub use models::Models;
pub use session::Session;
pub use store::StoreSpec;
pub use watch::Changes;

pub use magpie_core::{Answer, AnswerOptions, Hit, IndexReport, RunOptions, Source};

pub use magpie_candle as candle;
pub use magpie_core as core;
pub use magpie_files as files;
pub use magpie_openai as openai;
pub use magpie_qdrant as qdrant;
pub use magpie_tantivy as tantivy;
pub use magpie_web as web;

/// Run `f` to completion from synchronous code, inside a runtime or not.
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
