//! An index directory on disk: where each part lives, and the settings fixed
//! when the index was made. Only this module spells those names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The settings file.
pub const SETTINGS_FILE: &str = "magpie.json";
/// The catalog of indexed documents.
pub const CATALOG_FILE: &str = "catalog.json";
/// The embedded vector store (qdrant-edge).
pub const VECTORS_DIR: &str = "vectors";
/// The embedded keyword store (tantivy).
pub const KEYWORDS_DIR: &str = "keywords";
/// Named conversations (`docqa ask --session`).
pub const SESSIONS_DIR: &str = "sessions";
/// Conversations a server keeps (`/v1/conversations`).
pub const CONVERSATIONS_DIR: &str = "conversations";

/// The paths of an index directory's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of the index in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `magpie.json`: the settings.
    pub fn settings(&self) -> PathBuf {
        self.dir.join(SETTINGS_FILE)
    }
    /// `catalog.json`: the documents and their chunks.
    pub fn catalog(&self) -> PathBuf {
        self.dir.join(CATALOG_FILE)
    }
    /// `vectors/`: the embedded vector store.
    pub fn vectors(&self) -> PathBuf {
        self.dir.join(VECTORS_DIR)
    }
    /// `keywords/`: the embedded keyword store.
    pub fn keywords(&self) -> PathBuf {
        self.dir.join(KEYWORDS_DIR)
    }
    /// `sessions/`: named conversations.
    pub fn sessions(&self) -> PathBuf {
        self.dir.join(SESSIONS_DIR)
    }
    /// True when `dir` holds an index (its settings and its catalog).
    pub fn is_index(dir: &Path) -> bool {
        dir.join(SETTINGS_FILE).is_file() && dir.join(CATALOG_FILE).is_file()
    }
}

/// Settings fixed when an index is created, stored as `magpie.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSettings {
    /// Version of this file's layout.
    pub format: u32,
    /// The embedding model's id.
    pub embedding_model: String,
    /// Its vectors' length.
    pub dimension: usize,
    /// Chunk size in the embedder's tokens.
    pub chunk_tokens: usize,
    /// Tokens shared by neighbouring chunks.
    pub overlap_tokens: usize,
    /// Where the vectors live: absent for the embedded stores under the index
    /// directory, else a Qdrant URL (`qdrant+grpc://host:6334/collection`, no key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

impl IndexSettings {
    /// Default chunk size, tokens.
    pub const DEFAULT_CHUNK_TOKENS: usize = 200;
    /// Default overlap, tokens.
    pub const DEFAULT_OVERLAP_TOKENS: usize = 40;

    /// Settings for a new index of `embedder`'s vectors; chunk sizes default
    /// to 200 and 40 tokens, the store to the embedded pair.
    pub fn new(
        embedder: &dyn magpie_core::Embedder,
        chunk_tokens: Option<usize>,
        overlap_tokens: Option<usize>,
        store: Option<String>,
    ) -> Self {
        Self {
            format: 1,
            embedding_model: embedder.model_id().to_string(),
            dimension: embedder.dimension(),
            chunk_tokens: chunk_tokens.unwrap_or(Self::DEFAULT_CHUNK_TOKENS),
            overlap_tokens: overlap_tokens.unwrap_or(Self::DEFAULT_OVERLAP_TOKENS),
            store,
        }
    }

    /// The settings of the index in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = Layout::new(dir).settings();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Damaged {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The settings an index in a Qdrant deployment records there, if any.
    pub async fn shared(catalog: &magpie_qdrant::QdrantCatalog) -> Result<Option<Self>> {
        match catalog.settings().await? {
            Some(v) => Ok(Some(Self::from_shared(catalog, v)?)),
            None => Ok(None),
        }
    }

    /// Record these settings in the deployment unless some are recorded
    /// already (another process made the index first); returns the recorded
    /// ones. The store is not recorded: every process names it itself.
    pub async fn publish(&self, catalog: &magpie_qdrant::QdrantCatalog) -> Result<Self> {
        let mine = serde_json::to_value(Self {
            store: None,
            ..self.clone()
        })
        .map_err(|e| magpie_core::Error::stage("settings", e.to_string()))?;
        let kept = catalog.init_settings(&mine).await?;
        Self::from_shared(catalog, kept)
    }

    fn from_shared(catalog: &magpie_qdrant::QdrantCatalog, v: serde_json::Value) -> Result<Self> {
        serde_json::from_value(v).map_err(|e| Error::Damaged {
            path: PathBuf::from(catalog.collection()),
            reason: format!("the recorded settings: {e}"),
        })
    }

    /// Write them into the index in `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| magpie_core::Error::stage("settings", e.to_string()))?;
        magpie_core::atomic_write(&Layout::new(dir).settings(), &bytes)?;
        Ok(())
    }
}
