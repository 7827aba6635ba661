//! Repairing an index with embedded stores: each part rebuilt from the
//! others. The keyword index is refilled from the chunks the vector store
//! holds, the vector store re-embedded from the keyword index's chunk texts,
//! and the catalog rebuilt from the stored chunks. A damaged directory is set
//! aside beside the new one, never deleted.
//!
//! The embedded vector store (qdrant-edge) trusts its files: a damaged one can
//! abort the process that opens it. So its deep check is the caller's, best in
//! a child process; [`repair_stores`] takes the result.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use magpie_core::{
    error_chain, Catalog, CatalogEntry, Chunk, Embedder, KeywordStore, StoreHealth, VectorStore,
};
use magpie_qdrant::EdgeStore;
use magpie_tantivy::TantivyStore;

use crate::{Error, Layout, Result};

/// What [`repair_stores`] did.
#[derive(Debug, Default)]
pub struct Repaired {
    /// Each step, in words.
    pub actions: Vec<String>,
    /// Documents that must be indexed again (both stores were lost).
    pub lost: Vec<String>,
}

/// The embedded keyword index of the index at `dir`, opened read-only and
/// checked in this process (tantivy reports damage as errors or panics, both
/// caught).
pub fn check_keywords(dir: &Path) -> StoreHealth {
    let dir = Layout::new(dir).keywords();
    if !dir.exists() {
        return StoreHealth::unreadable(format!("{} is missing", dir.display()));
    }
    let opened = magpie_core::guard::catch("keyword store", || TantivyStore::open_read_only(&dir));
    let store = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return StoreHealth::unreadable(error_chain(&e)),
        Err(e) => return StoreHealth::unreadable(e.to_string()),
    };
    crate::block_on(store.verify()).unwrap_or_else(|e| StoreHealth::unreadable(error_chain(&e)))
}

/// Rebuild the damaged parts of the embedded stores and the catalog of the
/// index at `dir` (vectors of `dim` dimensions) from the healthy ones.
/// `vectors` is the vector store's deep check. Vectors are embedded again
/// with `embedder`; `progress` gets the number of chunks embedded so far
/// after each batch.
pub async fn repair_stores(
    dir: &Path,
    dim: usize,
    vectors: &StoreHealth,
    embedder: &dyn Embedder,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Repaired> {
    let layout = Layout::new(dir);
    let mut done = Repaired::default();
    let keywords = check_keywords(dir);
    match (vectors.problems.is_empty(), keywords.problems.is_empty()) {
        (true, true) => {
            if !vectors.damaged.is_empty() {
                // Dropped here, embedded again by the cross-fill below.
                let store = EdgeStore::open(layout.vectors(), dim)?;
                let ids: Vec<String> = vectors.damaged.iter().map(|c| c.chunk_id.clone()).collect();
                store.delete_chunks(&ids).await?;
                store.commit().await?;
                done.actions
                    .push(format!("dropped {} damaged vectors", ids.len()));
            }
        }
        // Set aside here, rebuilt empty and filled from the other store below.
        (true, false) => set_aside(&layout.keywords(), "keyword index", &mut done.actions)?,
        (false, true) => set_aside(&layout.vectors(), "vector store", &mut done.actions)?,
        (false, false) => {
            // Nothing to rebuild from: both start afresh, and the documents
            // they held are listed.
            set_aside(&layout.vectors(), "vector store", &mut done.actions)?;
            set_aside(&layout.keywords(), "keyword index", &mut done.actions)?;
            if let Ok(cat) = Catalog::open(layout.catalog()) {
                done.lost = cat.iter().map(|(_, e)| e.uri.clone()).collect();
            }
            Catalog::from_entries(layout.catalog(), []).save()?;
            done.actions
                .push("both stores were unreadable: the index starts empty".into());
        }
    }
    let chunks = cross_fill(&layout, dim, embedder, progress, &mut done.actions).await?;
    // The catalog: rebuilt from the chunks when it is damaged, or lost while
    // the stores hold chunks.
    let catalog_file = layout.catalog();
    let catalog_state = match Catalog::open(&catalog_file) {
        Err(e) => Some(e.to_string()),
        Ok(_) if !catalog_file.exists() && !chunks.is_empty() => Some("missing".to_string()),
        Ok(_) => None,
    };
    if let Some(e) = catalog_state {
        let entries = catalog_from_chunks(&chunks);
        let n = entries.len();
        Catalog::from_entries(catalog_file, entries).save()?;
        done.actions.push(format!(
            "rebuilt the catalog from the stored chunks ({n} documents; it was: {e})"
        ));
    }
    Ok(done)
}

/// What one store holds and the other lacks is copied across (chunk texts
/// into the keyword index, vectors embedded from chunk texts); every stored
/// chunk is returned.
async fn cross_fill(
    layout: &Layout,
    dim: usize,
    embedder: &dyn Embedder,
    progress: &(dyn Fn(usize, usize) + Sync),
    actions: &mut Vec<String>,
) -> Result<Vec<Chunk>> {
    let vstore = EdgeStore::open(layout.vectors(), dim)?;
    let kstore = TantivyStore::open(layout.keywords())?;
    let kchunks = kstore.all_chunks()?;
    let mut vchunks = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = vstore.scroll_page(offset).await?;
        vchunks.extend(page.into_iter().map(|(c, _)| c));
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    let kids: HashSet<&str> = kchunks.iter().map(|c| c.id.as_str()).collect();
    let vids: HashSet<&str> = vchunks.iter().map(|c| c.id.as_str()).collect();
    let to_keywords: Vec<Chunk> = vchunks
        .iter()
        .filter(|c| !kids.contains(c.id.as_str()))
        .cloned()
        .collect();
    let to_vectors: Vec<Chunk> = kchunks
        .iter()
        .filter(|c| !vids.contains(c.id.as_str()))
        .cloned()
        .collect();
    if !to_keywords.is_empty() {
        for part in to_keywords.chunks(512) {
            kstore.upsert(part).await?;
        }
        kstore.commit().await?;
        actions.push(format!(
            "copied {} chunks from the vector store into the keyword index",
            to_keywords.len()
        ));
    }
    if !to_vectors.is_empty() {
        for (i, part) in to_vectors.chunks(64).enumerate() {
            let texts: Vec<String> = part.iter().map(|c| c.embedding_text()).collect();
            let vectors = embedder.embed(&texts).await?;
            vstore.upsert(part, &vectors).await?;
            progress(i * 64 + part.len(), to_vectors.len());
        }
        vstore.commit().await?;
        actions.push(format!(
            "embedded {} chunks from the keyword index into the vector store",
            to_vectors.len()
        ));
    }
    let mut by_id: BTreeMap<String, Chunk> = BTreeMap::new();
    for c in kchunks.into_iter().chain(vchunks) {
        by_id.entry(c.id.clone()).or_insert(c);
    }
    Ok(by_id.into_values().collect())
}

/// Move a damaged store directory aside (kept, never deleted), saying so.
fn set_aside(dir: &Path, what: &str, actions: &mut Vec<String>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!(
        "{}.damaged-{stamp}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let to = dir.with_file_name(name);
    std::fs::rename(dir, &to).map_err(|e| {
        Error::io(
            format!("moving {} aside to {}", dir.display(), to.display()),
            e,
        )
    })?;
    actions.push(format!("set the damaged {what} aside in {}", to.display()));
    Ok(())
}

/// Catalog entries rebuilt from stored chunks: a document whose chunks are all
/// there (positions 0..n of one version) gets an entry; others are left for
/// the next indexing run.
fn catalog_from_chunks(chunks: &[Chunk]) -> BTreeMap<String, CatalogEntry> {
    let mut by_doc: BTreeMap<&str, Vec<&Chunk>> = BTreeMap::new();
    for c in chunks {
        by_doc.entry(&c.doc_id).or_default().push(c);
    }
    let mut out = BTreeMap::new();
    for (doc, mut cs) in by_doc {
        cs.sort_by_key(|c| c.index);
        let whole = cs.iter().enumerate().all(|(i, c)| {
            c.index == i
                && c.doc_hash == cs[0].doc_hash
                && c.id == magpie_core::chunk_id_for(doc, &c.doc_hash, i)
        });
        if !whole {
            continue;
        }
        out.insert(
            doc.to_string(),
            CatalogEntry {
                uri: cs[0].source.clone(),
                hash: cs[0].doc_hash.clone(),
                chunks: cs.len(),
                // Unknown after the loss: `sync` leaves these until re-indexed.
                origin: String::new(),
                mime: cs[0]
                    .metadata
                    .get("mime")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string(),
                title: cs[0].title.clone(),
            },
        );
    }
    out
}
