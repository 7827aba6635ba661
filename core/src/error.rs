//! The error type shared by magpie's traits and pipelines.

/// A boxed error from a connector, kept as the source of a [`enum@Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout magpie.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a magpie pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something unusable (an empty query, a zero `k`, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A pipeline stage (loader, embedder, store, ...) failed.
    #[error("{stage}: {source}")]
    Stage {
        /// Which stage: "embedder", "vector store", "keyword store", "loader", ...
        stage: &'static str,
        /// The connector's own error.
        #[source]
        source: BoxError,
    },
    /// Reading or writing a file of the index failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The index on disk was made with other settings or is damaged.
    #[error("index: {0}")]
    Index(String),
    /// The disk holding the index is full (or too full to go on safely).
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A store did not answer, even after retries (a server down, a cluster
    /// that lost too many nodes): the run stops rather than skip documents.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Wrap a connector error as a failure of `stage`.
    pub fn stage(stage: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Stage {
            stage,
            source: source.into(),
        }
    }

    /// Wrap an I/O error with what was being done.
    /// A full disk becomes [`Error::DiskFull`] with advice.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if crate::guard::is_disk_full(&source) {
            return Error::DiskFull(format!(
                "{}: {source}; free some space and run again (what was committed before is intact)",
                context.into()
            ));
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// An error with its chain of causes, `outer: cause: root`, each said once
/// (HTTP clients put the reason, such as a refused redirect, in a cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}
