//! The document catalog: which document versions the index holds, saved
//! atomically in a file, or shared by several processes through a
//! [`CatalogStore`] (see [`shared`]).
//!
//! The catalog is the index's source of truth. It is written only after both
//! stores have committed, so after a crash any chunk the catalog does not
//! account for is a leftover to remove, and any document whose chunks are not
//! all present in both stores is re-indexed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::chunk_id_for;

pub mod shared;
pub use shared::{CasOutcome, CatalogStore, Settled, Versioned};

/// One indexed document version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The document's uri.
    pub uri: String,
    /// Content hash of the indexed version.
    pub hash: String,
    /// Number of chunks it was cut into (their ids follow from id, hash and position).
    pub chunks: usize,
    /// The loader origin it came from (for `--sync`).
    pub origin: String,
    /// MIME type.
    #[serde(default)]
    pub mime: String,
    /// Title, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl CatalogEntry {
    /// The ids of this version's chunks.
    pub fn chunk_ids(&self, doc_id: &str) -> impl Iterator<Item = String> + '_ {
        let doc_id = doc_id.to_string();
        (0..self.chunks).map(move |i| chunk_id_for(&doc_id, &self.hash, i))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    /// blake3 of the entries as serialised (absent in catalogs written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    docs: BTreeMap<String, CatalogEntry>,
}

/// The checksum of a catalog's entries: blake3 of their JSON (a BTreeMap of
/// strings and integers serialises the same way every time).
fn checksum(docs: &BTreeMap<String, CatalogEntry>) -> Result<String> {
    let bytes = serde_json::to_vec(docs)
        .map_err(|e| Error::Index(format!("serialising the catalog: {e}")))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// Documents in the index, keyed by document id, persisted as one JSON file,
/// or in a [`CatalogStore`] several processes share.
pub struct Catalog {
    path: PathBuf,
    docs: BTreeMap<String, CatalogEntry>,
    shared: Option<shared::SharedState>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("at", &self.describe())
            .field("documents", &self.docs.len())
            .finish()
    }
}

impl Catalog {
    /// Open the catalog at `path`, or start an empty one if the file does not exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let docs = match std::fs::read(&path) {
            Ok(bytes) => {
                let damaged = |why: String| {
                    Error::Index(format!(
                        "the catalog {} is damaged ({why}); a repair rebuilds it from the stores",
                        path.display()
                    ))
                };
                let file: CatalogFile =
                    serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
                if let Some(want) = &file.blake3 {
                    if *want != checksum(&file.docs)? {
                        return Err(damaged("its checksum does not match its entries".into()));
                    }
                }
                file.docs
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(Self {
            path,
            docs,
            shared: None,
        })
    }

    /// The catalog kept in `store`, shared with other processes: its entries
    /// as they are now.
    pub async fn shared(store: std::sync::Arc<dyn CatalogStore>) -> Result<Self> {
        let (docs, versions) = split(store.load().await?);
        Ok(Self {
            path: PathBuf::from(store.describe()),
            docs,
            shared: Some(shared::SharedState {
                store,
                versions,
                base: BTreeMap::new(),
            }),
        })
    }

    /// True when other processes share this catalog.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Read a shared catalog again (what other writers did since); changes not
    /// yet persisted are kept. A file catalog has no other writer: nothing to do.
    pub async fn refresh(&mut self) -> Result<()> {
        let Some(sh) = &mut self.shared else {
            return Ok(());
        };
        let (mut docs, versions) = split(sh.store.load().await?);
        sh.versions = versions;
        for id in sh.base.keys() {
            match self.docs.get(id) {
                Some(e) => docs.insert(id.clone(), e.clone()),
                None => docs.remove(id),
            };
        }
        self.docs = docs;
        Ok(())
    }

    /// Make the changes durable: the file is replaced; a shared catalog writes
    /// each changed entry conditionally and says how each settled (a document
    /// another writer changed first keeps that writer's version). A file
    /// catalog's changes all settle as written, and are not listed.
    pub async fn persist(&mut self) -> Result<Vec<Settled>> {
        match &mut self.shared {
            None => {
                self.save()?;
                Ok(Vec::new())
            }
            Some(sh) => sh.persist(&mut self.docs).await,
        }
    }

    /// Where it lives, for messages: the file, or the shared store.
    pub fn describe(&self) -> String {
        match &self.shared {
            Some(sh) => sh.store.describe(),
            None => self.path.display().to_string(),
        }
    }

    fn touch(&mut self, doc_id: &str) {
        if let Some(sh) = &mut self.shared {
            if !sh.base.contains_key(doc_id) {
                sh.base
                    .insert(doc_id.to_string(), self.docs.get(doc_id).cloned());
            }
        }
    }

    /// The entry for a document id.
    pub fn get(&self, doc_id: &str) -> Option<&CatalogEntry> {
        self.docs.get(doc_id)
    }

    /// Add or replace a document's entry (in memory until [`Catalog::save`]).
    pub fn insert(&mut self, doc_id: String, entry: CatalogEntry) {
        self.touch(&doc_id);
        self.docs.insert(doc_id, entry);
    }

    /// Remove a document's entry (in memory until [`Catalog::save`]).
    pub fn remove(&mut self, doc_id: &str) -> Option<CatalogEntry> {
        self.touch(doc_id);
        self.docs.remove(doc_id)
    }

    /// All entries, by document id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &CatalogEntry)> {
        self.docs.iter()
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True when no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Total chunks over all documents.
    pub fn chunk_count(&self) -> usize {
        self.docs.values().map(|e| e.chunks).sum()
    }

    /// Write the catalog atomically: a temporary file, fsync, rename, fsync of
    /// the directory. A shared catalog is written with [`Catalog::persist`].
    pub fn save(&self) -> Result<()> {
        if let Some(sh) = &self.shared {
            return Err(Error::Index(format!(
                "the catalog in {} is shared: it is written with persist(), not saved to a file",
                sh.store.describe()
            )));
        }
        let file = CatalogFile {
            version: 1,
            blake3: Some(checksum(&self.docs)?),
            docs: self.docs.clone(),
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|e| Error::Index(format!("serialising the catalog: {e}")))?;
        atomic_write(&self.path, &bytes)
    }

    /// A catalog at `path` holding `entries` (rebuilt by a repair; not saved yet).
    pub fn from_entries(
        path: impl Into<PathBuf>,
        entries: impl IntoIterator<Item = (String, CatalogEntry)>,
    ) -> Self {
        Self {
            path: path.into(),
            docs: entries.into_iter().collect(),
            shared: None,
        }
    }

    /// Where the catalog lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A shared catalog's stored entries as the entries and their versions.
fn split(
    loaded: BTreeMap<String, Versioned>,
) -> (
    BTreeMap<String, CatalogEntry>,
    std::collections::HashMap<String, u64>,
) {
    let mut docs = BTreeMap::new();
    let mut versions = std::collections::HashMap::new();
    for (id, v) in loaded {
        versions.insert(id.clone(), v.version);
        if let Some(e) = v.entry {
            docs.insert(id, e);
        }
    }
    (docs, versions)
}

/// Replace `path` with `bytes` so that a crash leaves either the old or the new file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file")
    ));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(ctx("creating"), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_reopen() {
        let dir = std::env::temp_dir().join(format!("magpie-cat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("catalog.json");
        let mut c = Catalog::open(&p).unwrap();
        assert!(c.is_empty());
        c.insert(
            "d1".into(),
            CatalogEntry {
                uri: "a.txt".into(),
                hash: "h".into(),
                chunks: 3,
                origin: "root".into(),
                mime: "text/plain".into(),
                title: None,
            },
        );
        c.save().unwrap();
        let c2 = Catalog::open(&p).unwrap();
        assert_eq!(c2.len(), 1);
        assert_eq!(c2.chunk_count(), 3);
        assert_eq!(c2.get("d1").unwrap().chunk_ids("d1").count(), 3);
        // A changed digit keeps the JSON valid: the checksum catches it.
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"chunks\":3"), "{text}");
        std::fs::write(&p, text.replace("\"chunks\":3", "\"chunks\":4")).unwrap();
        let err = Catalog::open(&p).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        // A catalog written before checksums still opens.
        std::fs::write(
            &p,
            r#"{"version":1,"docs":{"d1":{"uri":"a","hash":"h","chunks":2,"origin":"o"}}}"#,
        )
        .unwrap();
        assert_eq!(Catalog::open(&p).unwrap().chunk_count(), 2);
        std::fs::write(&p, b"{not json").unwrap();
        let err = Catalog::open(&p).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
