//! Measuring a magpie application on data: retrieval on BEIR datasets
//! ([`beir`]), answers on QA sets ([`qa`]) and retrieval in conversations
//! ([`chat`]). Each command's flags are a `clap::Args` struct, so an
//! application mounts them as its own subcommands; [`Setup`] says how it opens
//! indexes and loads its language model. Reports go to stdout, as a table or
//! as JSON.

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
