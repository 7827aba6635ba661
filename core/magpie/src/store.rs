//! Which stores an index uses: the embedded pair under its directory, or a
//! Qdrant collection, and opening them.

use std::path::Path;
use std::sync::Arc;

use magpie_core::{KeywordStore, VectorStore};
use magpie_qdrant::{EdgeStore, QdrantKeywords, QdrantStore, RemoteConfig};
use magpie_tantivy::TantivyStore;

use crate::error::{Error, Result};
use crate::layout::{IndexSettings, Layout};

/// Which store an index uses: the embedded pair, or a Qdrant collection.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// qdrant-edge and tantivy under the index directory.
    Embedded,
    /// A Qdrant server or cluster.
    Remote(RemoteConfig),
}

impl StoreSpec {
    /// Parse `embedded` or a `qdrant+grpc(s)://` URL.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "embedded" {
            return Ok(StoreSpec::Embedded);
        }
        if RemoteConfig::is_remote(s) {
            return Ok(StoreSpec::Remote(RemoteConfig::parse(s)?));
        }
        Err(Error::UnknownStore(s.to_string()))
    }

    /// As recorded in `magpie.json` (`None` for embedded).
    pub fn recorded(&self) -> Option<String> {
        match self {
            StoreSpec::Embedded => None,
            StoreSpec::Remote(c) => Some(c.display_url()),
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        self.recorded().unwrap_or_else(|| "embedded".into())
    }

    /// The store an index uses: `asked` when given (it must be where the
    /// index records its vectors; its options then apply), else the recorded one.
    pub fn resolve(dir: &Path, settings: &IndexSettings, asked: Option<&str>) -> Result<Self> {
        let recorded = match &settings.store {
            Some(url) => StoreSpec::parse(url)?,
            None => StoreSpec::Embedded,
        };
        let Some(asked) = asked else {
            return Ok(recorded);
        };
        let asked = StoreSpec::parse(asked)?;
        if asked.recorded() != recorded.recorded() {
            return Err(Error::StoreMismatch {
                dir: dir.to_path_buf(),
                recorded: recorded.describe(),
                asked: asked.describe(),
            });
        }
        Ok(asked)
    }
}

/// An index's two stores, and the Qdrant collection when they live there.
pub struct Stores {
    /// Dense vectors.
    pub vectors: Arc<dyn VectorStore>,
    /// BM25.
    pub keywords: Arc<dyn KeywordStore>,
    /// The Qdrant collection, when the index lives in one.
    pub remote: Option<Arc<QdrantStore>>,
}

/// How to open the embedded keyword store.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeywordOptions {
    /// Search only: no writer lock, so it works while another process indexes.
    pub read_only: bool,
    /// Weight of title matches in BM25 (default: the store's).
    pub title_boost: Option<f32>,
}

impl Stores {
    /// Open the stores `spec` names for an index of `dimension`-long vectors.
    pub fn open(
        layout: &Layout,
        spec: StoreSpec,
        dimension: usize,
        keywords: KeywordOptions,
    ) -> Result<Self> {
        match spec {
            StoreSpec::Embedded => {
                // The embedded stores map their files: opening them on a full
                // disk would crash the process, so refuse with a message first.
                magpie_core::guard::ensure_free_space(
                    layout.dir(),
                    magpie_core::guard::MIN_FREE_TO_OPEN,
                    "opening the index",
                )?;
                let vectors = Arc::new(EdgeStore::open(layout.vectors(), dimension)?);
                let kw = if keywords.read_only {
                    TantivyStore::open_read_only(layout.keywords())?
                } else {
                    TantivyStore::open(layout.keywords())?
                };
                let kw = kw.with_title_boost(
                    keywords
                        .title_boost
                        .unwrap_or(magpie_tantivy::DEFAULT_TITLE_BOOST),
                );
                Ok(Self {
                    vectors,
                    keywords: Arc::new(kw),
                    remote: None,
                })
            }
            StoreSpec::Remote(cfg) => {
                let url = cfg.display_url();
                let store = Arc::new(
                    crate::block_on(QdrantStore::connect(cfg, dimension)).map_err(|e| {
                        magpie_core::Error::stage(
                            "vector store",
                            format!(
                                "opening the Qdrant store {url}: {}",
                                magpie_core::error_chain(&e)
                            ),
                        )
                    })?,
                );
                tracing::info!(%url, "vectors in Qdrant");
                Ok(Self {
                    vectors: store.clone(),
                    keywords: Arc::new(QdrantKeywords(store.clone())),
                    remote: Some(store),
                })
            }
        }
    }
}
