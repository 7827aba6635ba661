//! `docqa status [--verify]` and `docqa repair`: what the index holds, a deep
//! check of every part of it, and rebuilding a damaged part from the others.
//!
//! The embedded vector store (qdrant-edge) trusts its files: a damaged one can
//! make the process that opens it abort (an allocation sized by a corrupt
//! length) rather than return an error. So the deep check of the vectors runs
//! in a child process (`docqa __check-vectors`), and a crash there is reported
//! as "the vector store is unreadable", never as docqa dying.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use magpie_core::{
    error_chain, Catalog, CatalogEntry, Chunk, Embedder, KeywordStore, StoreHealth, VectorStore,
};
use magpie_qdrant::EdgeStore;
use magpie_tantivy::TantivyStore;
use serde_json::json;

use crate::engine::{read_settings, Engine, IndexSettings, ModelArgs, OpenOptions};
use magpie::Layout;

/// `docqa status`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without --verify: the catalog against both stores' chunk lists (fast). With --verify:
also every keyword-index file against its checksum, every stored chunk read back,
and every vector against the fingerprint recorded when it was written.
Exit status: 0 healthy, 3 inconsistent or damaged (then run `docqa repair`).")]
pub struct StatusArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Read and check everything the index holds.
    #[arg(long)]
    pub verify: bool,
}

/// `docqa repair`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
What it does, part by part (the embedded stores):
  keyword index damaged   rebuilt from the chunks the vector store holds (no embedding)
  vector store damaged    damaged vectors re-embedded from the keyword index's chunk texts;
                          an unreadable store is set aside and rebuilt the same way
  catalog damaged         rebuilt from the chunks the stores hold
  magpie.json damaged     written again from --embed-model, --chunk-tokens and --overlap
                          (the defaults when not given)
  both stores lost        the documents they held are listed: index their sources again
A damaged directory is kept beside the new one (vectors.damaged-<time>), never deleted.
Leftovers of an interrupted run are cleaned as `docqa index` does.")]
pub struct RepairArgs {
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Chunk size the index was made with, should magpie.json need writing again (default 200).
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// Chunk overlap the index was made with, should magpie.json need writing again (default 40).
    #[arg(long)]
    pub overlap: Option<usize>,
}

fn vectors_dir(index: &Path) -> PathBuf {
    Layout::new(index).vectors()
}

fn keywords_dir(index: &Path) -> PathBuf {
    Layout::new(index).keywords()
}

fn catalog_path(index: &Path) -> PathBuf {
    Layout::new(index).catalog()
}

/// The hidden `docqa __check-vectors DIR DIM`: open the embedded vector store,
/// read every point back, print the health as JSON.
pub async fn check_vectors_child(dir: &Path, dim: usize) -> Result<()> {
    let store = EdgeStore::open(dir, dim)?;
    let health = store.verify().await?;
    println!("{}", serde_json::to_string(&health)?);
    Ok(())
}

/// The vector store's deep check, in a child process.
fn probe_vectors(index: &Path, dim: usize) -> StoreHealth {
    let dir = vectors_dir(index);
    if !dir.exists() {
        return StoreHealth::unreadable(format!("{} is missing", dir.display()));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return StoreHealth::unreadable(format!("cannot run the check: {e}")),
    };
    let out = std::process::Command::new(exe)
        .arg("__check-vectors")
        .arg(&dir)
        .arg(dim.to_string())
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return StoreHealth::unreadable(format!("cannot run the check: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if let Some(h) = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<StoreHealth>(l).ok())
        {
            return h;
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .trim_start_matches("error: ");
    StoreHealth::unreadable(match out.status.code() {
        Some(_) => format!("the vector store cannot be read: {last}"),
        None => format!("the vector store crashed the process reading it ({last})"),
    })
}

/// The keyword index opened read-only and checked in this process (tantivy
/// reports damage as errors or panics, both caught).
fn open_keywords(index: &Path) -> (Option<TantivyStore>, StoreHealth) {
    let dir = keywords_dir(index);
    if !dir.exists() {
        return (
            None,
            StoreHealth::unreadable(format!("{} is missing", dir.display())),
        );
    }
    let opened = magpie_core::guard::catch("keyword store", || TantivyStore::open_read_only(&dir));
    let store = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (None, StoreHealth::unreadable(error_chain(&e))),
        Err(e) => return (None, StoreHealth::unreadable(e.to_string())),
    };
    let health = super::engine::block_on(store.verify())
        .unwrap_or_else(|e| StoreHealth::unreadable(error_chain(&e)));
    (Some(store), health)
}

/// `docqa status [--verify]`.
pub async fn status(index: &Path, models: &ModelArgs, args: &StatusArgs) -> Result<()> {
    if args.verify {
        return verify(index, models, args.json).await;
    }
    let engine = crate::engine::open(index, models, OpenOptions::search())?;
    let c = engine.pipeline().await?.check().await?;
    print_status(&engine, index, &c, args.json)?;
    if !c.is_consistent() {
        std::process::exit(3);
    }
    Ok(())
}

/// `docqa status --verify`: each part checked on its own, so one damaged part
/// does not hide the state of the others.
async fn verify(index: &Path, models: &ModelArgs, as_json: bool) -> Result<()> {
    let settings =
        read_settings(index)?.with_context(|| format!("no index at {}", index.display()))?;
    if settings.store.is_some() {
        // A Qdrant collection: its stores check themselves through the API.
        let engine = crate::engine::open(index, models, OpenOptions::search())?;
        let v = engine.pipeline().await?.verify().await?;
        print_verification(
            index,
            as_json,
            &v.vectors,
            &v.keywords,
            None,
            Some(&v.consistency),
        );
        if !v.is_healthy() {
            std::process::exit(3);
        }
        return Ok(());
    }
    // The vectors out of process, before this process opens them.
    let vectors = probe_vectors(index, settings.dimension);
    let (keyword_store, keywords) = open_keywords(index);
    drop(keyword_store);
    let catalog = Catalog::open(catalog_path(index));
    let consistency =
        if vectors.problems.is_empty() && keywords.problems.is_empty() && catalog.is_ok() {
            let engine = crate::engine::open(index, models, OpenOptions::search())?;
            Some(engine.pipeline().await?.check().await?)
        } else {
            None
        };
    print_verification(
        index,
        as_json,
        &vectors,
        &keywords,
        catalog.as_ref().err(),
        consistency.as_ref(),
    );
    let healthy = vectors.is_healthy()
        && keywords.is_healthy()
        && consistency.is_some_and(|c| c.is_consistent());
    if !healthy {
        std::process::exit(3);
    }
    Ok(())
}

fn print_status(
    engine: &Engine,
    index: &Path,
    c: &magpie_core::Consistency,
    as_json: bool,
) -> Result<()> {
    if as_json {
        let mut v = serde_json::to_value(c)?;
        v["consistent"] = c.is_consistent().into();
        v["settings"] = serde_json::to_value(&engine.settings)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Index {}", index.display());
    println!(
        "  model {} ({} dims), chunks of {} tokens, overlap {}",
        engine.settings.embedding_model,
        engine.settings.dimension,
        engine.settings.chunk_tokens,
        engine.settings.overlap_tokens
    );
    match &engine.settings.store {
        Some(url) => println!("  vectors and BM25 in Qdrant: {url}"),
        None => println!("  embedded stores (qdrant-edge, tantivy) in the index directory"),
    }
    println!("  {} documents, {} chunks", c.documents, c.chunks);
    println!(
        "  vector store {} chunks, keyword store {} chunks",
        c.vector_chunks, c.keyword_chunks
    );
    if c.is_consistent() {
        println!("  consistent (`docqa status --verify` reads and checks everything)");
    } else {
        println!(
            "  INCONSISTENT: {} duplicates, {} leftover chunks, {} incomplete documents; \
             the next `docqa index` (or `docqa repair`) repairs it",
            c.duplicates,
            c.orphans,
            c.incomplete_docs.len()
        );
    }
    Ok(())
}

fn describe(h: &StoreHealth) -> String {
    if h.is_healthy() {
        format!("ok ({} chunks read back)", h.chunks_read)
    } else if !h.problems.is_empty() {
        format!("DAMAGED: {}", h.problems.join("; "))
    } else {
        format!(
            "DAMAGED: {} of {} chunks fail their check",
            h.damaged.len(),
            h.damaged.len() + h.chunks_read
        )
    }
}

fn print_verification(
    index: &Path,
    as_json: bool,
    vectors: &StoreHealth,
    keywords: &StoreHealth,
    catalog_error: Option<&magpie_core::Error>,
    consistency: Option<&magpie_core::Consistency>,
) {
    let healthy = vectors.is_healthy()
        && keywords.is_healthy()
        && catalog_error.is_none()
        && consistency.is_some_and(|c| c.is_consistent());
    if as_json {
        let v = json!({
            "healthy": healthy,
            "vectors": vectors,
            "keywords": keywords,
            "catalog": catalog_error.map(|e| e.to_string()),
            "consistency": consistency,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!("Index {} (verified)", index.display());
    println!("  vector store:  {}", describe(vectors));
    println!("  keyword index: {}", describe(keywords));
    match (catalog_error, consistency) {
        (Some(e), _) => println!("  catalog:       DAMAGED: {e}"),
        (None, Some(c)) if c.is_consistent() => println!(
            "  catalog:       ok ({} documents, {} chunks, both stores agree)",
            c.documents, c.chunks
        ),
        (None, Some(c)) => println!(
            "  catalog:       {} documents; {} leftover chunks, {} incomplete documents",
            c.documents,
            c.orphans,
            c.incomplete_docs.len()
        ),
        (None, None) => println!("  catalog:       not compared (a store is unreadable)"),
    }
    if healthy {
        println!("  healthy");
    } else {
        println!("  run `docqa repair` to rebuild what is damaged");
    }
}

/// Move a damaged store directory aside (kept, never deleted), saying so.
fn set_aside(dir: &Path, what: &str, actions: &mut Vec<String>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let stamp = crate::serve::unix_now();
    let name = format!(
        "{}.damaged-{stamp}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let to = dir.with_file_name(name);
    std::fs::rename(dir, &to)
        .with_context(|| format!("moving {} aside to {}", dir.display(), to.display()))?;
    actions.push(format!("set the damaged {what} aside in {}", to.display()));
    Ok(())
}

/// Catalog entries rebuilt from stored chunks: a document whose chunks are all
/// there (positions 0..n of one version) gets an entry; others are left for
/// the next `docqa index`.
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
                // Unknown after the loss: `--sync` leaves these until re-indexed.
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

async fn embed_into(
    embedder: &dyn Embedder,
    store: &EdgeStore,
    chunks: &[Chunk],
    quiet: bool,
) -> Result<()> {
    let bar = crate::progress::bar(chunks.len() as u64, "re-embedding", !quiet);
    for part in chunks.chunks(64) {
        let texts: Vec<String> = part.iter().map(|c| c.embedding_text()).collect();
        let vectors = embedder.embed(&texts).await?;
        store.upsert(part, &vectors).await?;
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    store.commit().await?;
    Ok(())
}

/// `docqa repair`.
pub async fn repair(index: &Path, models: &ModelArgs, args: &RepairArgs) -> Result<()> {
    let mut actions: Vec<String> = Vec::new();
    let settings = match read_settings(index) {
        Ok(Some(s)) => s,
        Ok(None) if !vectors_dir(index).exists() && !keywords_dir(index).exists() => {
            bail!("no index at {}", index.display())
        }
        // The settings file is lost: written again from what the user says.
        Ok(None) | Err(_) => {
            let embedder = models.load_embedder(None)?;
            let s = IndexSettings::new(&embedder, args.chunk_tokens, args.overlap, None);
            s.write(index).map_err(crate::engine::hint)?;
            actions.push(format!(
                "wrote magpie.json again: model {}, chunks of {} tokens, overlap {} (pass \
                 --embed-model, --chunk-tokens, --overlap if the index was made otherwise)",
                s.embedding_model, s.chunk_tokens, s.overlap_tokens
            ));
            s
        }
    };
    if settings.store.is_some() {
        bail!(
            "the index keeps its vectors in Qdrant ({}); repair works on the embedded stores. \
             For a cluster, restore the collection from a Qdrant snapshot, or `docqa store copy` \
             it back to embedded",
            settings.store.as_deref().unwrap_or_default()
        );
    }
    magpie_core::guard::ensure_free_space(
        index,
        magpie_core::guard::MIN_FREE_TO_OPEN * 2,
        "repairing the index",
    )?;
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let mut lost: Vec<String> = Vec::new();
    let dim = settings.dimension;
    let vectors = probe_vectors(index, dim);
    let (keywords_store, keywords) = open_keywords(index);
    drop(keywords_store);
    let vectors_readable = vectors.problems.is_empty();
    let keywords_readable = keywords.problems.is_empty();
    let embedder: Arc<dyn Embedder> =
        Arc::new(models.load_embedder(Some(&settings.embedding_model))?);

    match (vectors_readable, keywords_readable) {
        (true, true) => {
            if !vectors.damaged.is_empty() {
                // Dropped here, embedded again by the cross-fill below.
                let store = EdgeStore::open(vectors_dir(index), dim)?;
                let ids: Vec<String> = vectors.damaged.iter().map(|c| c.chunk_id.clone()).collect();
                store.delete_chunks(&ids).await?;
                store.commit().await?;
                actions.push(format!("dropped {} damaged vectors", ids.len()));
            }
        }
        // Set aside here, rebuilt empty and filled from the other store below.
        (true, false) => set_aside(&keywords_dir(index), "keyword index", &mut actions)?,
        (false, true) => set_aside(&vectors_dir(index), "vector store", &mut actions)?,
        (false, false) => {
            // Nothing to rebuild from: start both afresh, and say what to index again.
            set_aside(&vectors_dir(index), "vector store", &mut actions)?;
            set_aside(&keywords_dir(index), "keyword index", &mut actions)?;
            if let Ok(cat) = Catalog::open(catalog_path(index)) {
                lost = cat.iter().map(|(_, e)| e.uri.clone()).collect();
            }
            Catalog::from_entries(catalog_path(index), []).save()?;
            actions.push("both stores were unreadable: the index starts empty".into());
        }
    }

    // Cross-fill: what one store holds and the other lacks is copied across
    // (chunk texts into the keyword index, vectors embedded from chunk texts).
    let vstore = EdgeStore::open(vectors_dir(index), dim)?;
    let kstore = TantivyStore::open(keywords_dir(index))?;
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
    let kids: std::collections::HashSet<&str> = kchunks.iter().map(|c| c.id.as_str()).collect();
    let vids: std::collections::HashSet<&str> = vchunks.iter().map(|c| c.id.as_str()).collect();
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
        embed_into(embedder.as_ref(), &vstore, &to_vectors, args.json).await?;
        actions.push(format!(
            "embedded {} chunks from the keyword index into the vector store",
            to_vectors.len()
        ));
    }
    let mut chunks_by_id: BTreeMap<String, Chunk> = BTreeMap::new();
    for c in kchunks.into_iter().chain(vchunks) {
        chunks_by_id.entry(c.id.clone()).or_insert(c);
    }
    drop((vstore, kstore));

    // The catalog: rebuilt from the chunks when it is damaged, or lost while
    // the stores hold chunks.
    let catalog_file = catalog_path(index);
    let chunks: Vec<Chunk> = chunks_by_id.into_values().collect();
    let catalog_state = match Catalog::open(&catalog_file) {
        Err(e) => Some(e.to_string()),
        Ok(_) if !catalog_file.exists() && !chunks.is_empty() => Some("missing".to_string()),
        Ok(_) => None,
    };
    if let Some(e) = catalog_state {
        let entries = catalog_from_chunks(&chunks);
        let n = entries.len();
        Catalog::from_entries(catalog_path(index), entries).save()?;
        actions.push(format!(
            "rebuilt the catalog from the stored chunks ({n} documents; it was: {e})"
        ));
    }

    // Leftovers of interrupted runs, as `docqa index` cleans them; then a final check.
    let engine = crate::engine::open(index, models, OpenOptions::index())?;
    let mut pipeline = engine.pipeline().await?;
    let (chunks, docs) = pipeline.repair().await?;
    if chunks + docs > 0 {
        actions.push(format!(
            "removed {chunks} leftover chunks; {docs} incomplete documents are indexed again \
             by the next `docqa index`"
        ));
    }
    let v = pipeline.verify().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "actions": actions,
                "reindex": lost,
                "healthy": v.is_healthy(),
                "verification": v,
            }))?
        );
    } else {
        if actions.is_empty() {
            say("Nothing to repair: every part of the index is healthy.".into());
        }
        for a in &actions {
            say(format!("- {a}"));
        }
        if !lost.is_empty() {
            say(format!(
                "These {} documents must be indexed again (`docqa index <their folder>`):",
                lost.len()
            ));
            for u in &lost {
                say(format!("  {u}"));
            }
        }
        say(format!(
            "Index {}: {}",
            index.display(),
            if v.is_healthy() {
                "healthy"
            } else {
                "still damaged (see `docqa status --verify`)"
            }
        ));
    }
    if !v.is_healthy() {
        std::process::exit(3);
    }
    Ok(())
}
