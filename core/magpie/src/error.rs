//! What can go wrong opening an index or a model, in terms a program can act
//! on; applications add their own hints (the command or flag to use).

use std::path::PathBuf;

/// An error of the facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no index and creating one was not asked for.
    #[error("no index at {}", dir.display())]
    NoIndex {
        /// The index directory.
        dir: PathBuf,
    },
    /// The index was built with another embedding model than the one loaded.
    #[error(
        "the index at {} was built with embedding model {recorded:?} ({dimension} dims) but {loaded:?} is loaded",
        dir.display()
    )]
    ModelMismatch {
        /// The index directory.
        dir: PathBuf,
        /// The model the index records.
        recorded: String,
        /// Its vectors' length.
        dimension: usize,
        /// The model loaded now.
        loaded: String,
    },
    /// A setting fixed when the index was made was asked with another value.
    #[error("the index at {} uses {setting} {have}", dir.display())]
    SettingMismatch {
        /// The index directory.
        dir: PathBuf,
        /// `chunk_tokens` or `overlap_tokens`.
        setting: &'static str,
        /// The value the index was made with.
        have: usize,
    },
    /// The index keeps its vectors elsewhere than the store asked for.
    #[error("the index at {} keeps its vectors in {recorded}, not {asked}", dir.display())]
    StoreMismatch {
        /// The index directory.
        dir: PathBuf,
        /// Where the index keeps them.
        recorded: String,
        /// Where they were asked for.
        asked: String,
    },
    /// A store that is neither `embedded` nor a Qdrant URL.
    #[error(
        "store {0:?} is not known: use `embedded` (the default, under the index directory) or \
         qdrant+grpc://HOST:6334/COLLECTION (qdrant+grpcs:// for TLS)"
    )]
    UnknownStore(String),
    /// The index's settings file cannot be read.
    #[error("{} is damaged: {reason}", path.display())]
    Damaged {
        /// The settings file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A default model is not installed in the models directory.
    #[error("the default {what} is not installed in {}", dir.display())]
    ModelMissing {
        /// `embedding model` or `language model`.
        what: &'static str,
        /// The models directory.
        dir: PathBuf,
    },
    /// An error of a pipeline, a store or a model.
    #[error(transparent)]
    Core(#[from] magpie_core::Error),
    /// A file or directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A facade result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
