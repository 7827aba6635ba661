//! Measuring a magpie application on data: retrieval on BEIR datasets
//! ([`beir`]), answers on QA sets ([`qa`]) and retrieval in conversations
//! ([`chat`]). Each command's flags are a `clap::Args` struct, so an
//! application mounts them as its own subcommands; [`Setup`] says how it opens
//! indexes and loads its language model. Reports go to stdout, as a table or
//! as JSON.
//!
//! An application's own `eval` command, scoring its index on a BEIR dataset:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     beir: magpie_eval::beir::BeirArgs,
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let cli = Cli::parse(); // e.g. `myapp data/scifact --modes hybrid --json`
//! let models = magpie::Models::from_env();
//! magpie_eval::beir::run(&cli.beir, None, &models).await
//! # }
//! ```

pub mod beir;
pub mod chat;
pub mod qa;

use std::path::Path;
use std::sync::Arc;

/// How the application opens an index and loads its language model (its
/// flags, its error hints).
pub trait Setup {
    /// Open (or create, as `opts` says) the index in `dir`.
    fn open(&self, dir: &Path, opts: magpie::OpenOptions) -> anyhow::Result<magpie::Index>;
    /// The language model for answers.
    fn generator(&self) -> anyhow::Result<Arc<dyn magpie_core::Generator>>;
}

/// [`magpie::Models`] as they are: no hints beyond the facade's errors.
impl Setup for magpie::Models {
    fn open(&self, dir: &Path, opts: magpie::OpenOptions) -> anyhow::Result<magpie::Index> {
        Ok(magpie::Index::open_with(dir, self, opts)?)
    }

    fn generator(&self) -> anyhow::Result<Arc<dyn magpie_core::Generator>> {
        Ok(self.load_generator()?)
    }
}
