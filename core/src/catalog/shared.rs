//! A catalog several processes share: its entries live in a store every
//! writer reaches (a Qdrant collection, for an index in a cluster), each with a
//! version, and a write lands only if the version it read is still there
//! (optimistic concurrency), so two writers of one document resolve to one
//! version and the other learns which.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::CatalogEntry;
use crate::error::Result;

/// An entry as stored, with its version (1 for the first write; each
/// conditional write adds one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version the store holds.
    pub version: u64,
    /// The entry, or `None` for a removed document (a tombstone keeps its
    /// version, so a removal and a re-add can never be mistaken for no change).
    pub entry: Option<CatalogEntry>,
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// It landed; the entry now has this version.
    Written(u64),
    /// Another writer got there first: what the store holds now.
    Conflict(Option<Versioned>),
}

/// Where a shared catalog's entries live.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Every document's entry and version (tombstones left out).
    async fn load(&self) -> Result<BTreeMap<String, Versioned>>;
    /// One document's entry and version, tombstone included.
    async fn get(&self, doc_id: &str) -> Result<Option<Versioned>>;
    /// Write `entry` (`None`: remove the document) if the stored version is
    /// still `expected` (0: the document was never written).
    async fn compare_and_set(
        &self,
        doc_id: &str,
        expected: u64,
        entry: Option<&CatalogEntry>,
    ) -> Result<CasOutcome>;
    /// Where it lives, for messages.
    fn describe(&self) -> String;
}

/// How one changed document settled when a shared catalog was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The document.
    pub doc_id: String,
    /// The version this writer replaced (as it read it).
    pub replaced: Option<CatalogEntry>,
    /// What this writer wrote.
    pub ours: Option<CatalogEntry>,
    /// What the catalog holds now: `ours`, or another writer's version.
    pub kept: Option<CatalogEntry>,
    /// False when another writer's version won.
    pub won: bool,
}

impl Settled {
    /// Chunks no longer referenced: those of the replaced version and of ours,
    /// less those of the version kept.
    pub fn unreferenced_chunks(&self) -> Vec<String> {
        let kept: std::collections::HashSet<String> = self
            .kept
            .iter()
            .flat_map(|e| e.chunk_ids(&self.doc_id))
            .collect();
        let mut out: Vec<String> = self
            .replaced
            .iter()
            .chain(self.ours.iter())
            .flat_map(|e| e.chunk_ids(&self.doc_id))
            .filter(|id| !kept.contains(id))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A shared catalog's bookkeeping: the versions read, and the entries as they
/// were before this writer changed them.
pub(super) struct SharedState {
    pub store: std::sync::Arc<dyn CatalogStore>,
    pub versions: HashMap<String, u64>,
    pub base: BTreeMap<String, Option<CatalogEntry>>,
}

impl SharedState {
    /// Write the changed entries, each conditionally; returns how each settled
    /// and updates `docs` to what the store holds.
    pub async fn persist(
        &mut self,
        docs: &mut BTreeMap<String, CatalogEntry>,
    ) -> Result<Vec<Settled>> {
        let mut out = Vec::new();
        while let Some((doc_id, replaced)) = self.base.pop_first() {
            let ours = docs.get(&doc_id).cloned();
            if ours == replaced {
                continue;
            }
            let expected = self.versions.get(&doc_id).copied().unwrap_or(0);
            let outcome = match self
                .store
                .compare_and_set(&doc_id, expected, ours.as_ref())
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    // Not written: the entry stays changed, for the next try.
                    self.base.insert(doc_id, replaced);
                    return Err(e);
                }
            };
            let (won, kept) = match outcome {
                CasOutcome::Written(v) => {
                    self.versions.insert(doc_id.clone(), v);
                    (true, ours.clone())
                }
                CasOutcome::Conflict(now) => {
                    tracing::info!(doc = %doc_id, "another writer changed this document first; keeping its version");
                    let now = now.unwrap_or(Versioned {
                        version: 0,
                        entry: None,
                    });
                    self.versions.insert(doc_id.clone(), now.version);
                    match &now.entry {
                        Some(e) => docs.insert(doc_id.clone(), e.clone()),
                        None => docs.remove(&doc_id),
                    };
                    (false, now.entry)
                }
            };
            out.push(Settled {
                doc_id,
                replaced,
                ours,
                kept,
                won,
            });
        }
        Ok(out)
    }
}
