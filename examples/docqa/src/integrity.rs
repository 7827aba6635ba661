//! `docqa status [--verify]` and `docqa repair`: what the index holds, a deep
//! check of every part of it, and rebuilding a damaged part from the others.
//!
//! The embedded vector store (qdrant-edge) trusts its files: a damaged one can
//! make the process that opens it abort (an allocation sized by a corrupt
//! length) rather than return an error. So the deep check of the vectors runs
//! in a child process (`docqa __check-vectors`), and a crash there is reported
//! as "the vector store is unreadable", never as docqa dying.

use std::path::Path;

use anyhow::{bail, Context, Result};
use magpie_core::{Catalog, StoreHealth, VectorStore};
use magpie_qdrant::EdgeStore;
use serde_json::json;

use crate::flags::{read_settings, Index, IndexSettings, ModelArgs, OpenOptions};
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
    let dir = Layout::new(index).vectors();
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

/// `docqa status [--verify]`.
pub async fn status(index: &Path, models: &ModelArgs, args: &StatusArgs) -> Result<()> {
    if args.verify {
        return verify(index, models, args.json).await;
    }
    let engine = crate::flags::open(index, models, OpenOptions::search())?;
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
        let engine = crate::flags::open(index, models, OpenOptions::search())?;
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
    let keywords = magpie::repair::check_keywords(index);
    let catalog = Catalog::open(Layout::new(index).catalog());
    let consistency =
        if vectors.problems.is_empty() && keywords.problems.is_empty() && catalog.is_ok() {
            let engine = crate::flags::open(index, models, OpenOptions::search())?;
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
    engine: &Index,
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

/// `docqa repair`.
pub async fn repair(index: &Path, models: &ModelArgs, args: &RepairArgs) -> Result<()> {
    let mut actions: Vec<String> = Vec::new();
    let settings = match read_settings(index) {
        Ok(Some(s)) => s,
        Ok(None)
            if !Layout::new(index).vectors().exists()
                && !Layout::new(index).keywords().exists() =>
        {
            bail!("no index at {}", index.display())
        }
        // The settings file is lost: written again from what the user says.
        Ok(None) | Err(_) => {
            let embedder = models.load_embedder(None)?;
            let s = IndexSettings::new(&embedder, args.chunk_tokens, args.overlap, None);
            s.write(index).map_err(crate::flags::hint)?;
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
    let vectors = probe_vectors(index, settings.dimension);
    let embedder = models.load_embedder(Some(&settings.embedding_model))?;
    // A bar only once there is something to embed, as before the move.
    let bar = std::sync::OnceLock::new();
    let show = |done: usize, total: usize| {
        bar.get_or_init(|| magpie::progress::bar(total as u64, "re-embedding", !args.json))
            .set_position(done as u64);
    };
    let repaired =
        magpie::repair::repair_stores(index, settings.dimension, &vectors, &embedder, &show)
            .await?;
    if let Some(bar) = bar.get() {
        bar.finish_and_clear();
    }
    actions.extend(repaired.actions);
    let lost = repaired.lost;

    // Leftovers of interrupted runs, as `docqa index` cleans them; then a final check.
    let engine = crate::flags::open(index, models, OpenOptions::index())?;
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
