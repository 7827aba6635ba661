//! `docqa store`: where an index keeps its vectors, and moving it between the
//! embedded stores and a Qdrant cluster without embedding again.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use magpie_core::{Catalog, CatalogEntry, CatalogStore, Chunk, KeywordStore, VectorStore};
use magpie_qdrant::{EdgeStore, QdrantCatalog, QdrantStore};
use magpie_tantivy::TantivyStore;

use crate::flags::{read_settings, StoreSpec};
use magpie::{IndexSettings, Layout};

/// `docqa store copy`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  docqa store copy --to qdrant+grpc://qdrant.internal:6334/docs     embedded → cluster
  docqa store copy --from qdrant+grpc://qdrant.internal:6334/docs --to embedded
  QDRANT_API_KEY=... docqa store copy --to qdrant+grpcs://xyz.cloud.qdrant.io:6334/docs

Chunks move with their vectors and payload (no embedding again); on a cluster the
BM25 sparse vectors are computed from the chunk text as they are written. Point ids
are the chunk ids, so an interrupted copy can be run again. The copy is checked
(same chunks on both sides) before the index switches to the destination; the
source is left as it was.")]
pub struct CopyArgs {
    /// The store to read: `embedded` or a qdrant+grpc:// URL (default: the one the index uses).
    #[arg(long)]
    pub from: Option<String>,
    /// The store to write: `embedded` or a qdrant+grpc:// URL.
    #[arg(long)]
    pub to: String,
    /// Clear the destination first when it already holds chunks (they are lost).
    #[arg(long)]
    pub replace: bool,
    /// Leave the index on its current store after copying (default: switch to the destination).
    #[arg(long)]
    pub keep: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

enum Source {
    Edge(EdgeStore),
    Remote(Box<QdrantStore>),
}

impl Source {
    async fn page(
        &self,
        offset: Option<String>,
    ) -> Result<(Vec<(Chunk, Vec<f32>)>, Option<String>)> {
        Ok(match self {
            Source::Edge(s) => s.scroll_page(offset).await?,
            Source::Remote(s) => s.scroll_page(offset).await?,
        })
    }

    async fn count(&self) -> Result<usize> {
        Ok(match self {
            Source::Edge(s) => s.count().await?,
            Source::Remote(s) => s.count().await?,
        })
    }

    async fn ids(&self) -> Result<Vec<magpie_core::StoredChunk>> {
        Ok(match self {
            Source::Edge(s) => s.list_chunks().await?,
            Source::Remote(s) => s.list_chunks().await?,
        })
    }
}

enum Dest {
    Embedded(EdgeStore, TantivyStore),
    Remote(Box<QdrantStore>),
}

impl Dest {
    async fn open(spec: &StoreSpec, dir: &Path, dim: usize) -> Result<Self> {
        Ok(match spec {
            StoreSpec::Embedded => Dest::Embedded(
                EdgeStore::open(Layout::new(dir).vectors(), dim)?,
                TantivyStore::open(Layout::new(dir).keywords())?,
            ),
            StoreSpec::Remote(cfg) => {
                Dest::Remote(Box::new(QdrantStore::connect(cfg.clone(), dim).await?))
            }
        })
    }

    async fn count(&self) -> Result<usize> {
        Ok(match self {
            Dest::Embedded(v, k) => v.count().await?.max(k.list_chunks().await?.len()),
            Dest::Remote(s) => s.count().await?,
        })
    }

    async fn write(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        match self {
            Dest::Embedded(v, k) => {
                v.upsert(chunks, vectors).await?;
                k.upsert(chunks).await?;
            }
            Dest::Remote(s) => s.upsert(chunks, vectors).await?,
        }
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        if let Dest::Embedded(v, k) = self {
            v.commit().await?;
            k.commit().await?;
        }
        Ok(())
    }

    async fn ids(&self) -> Result<Vec<magpie_core::StoredChunk>> {
        Ok(match self {
            Dest::Embedded(v, k) => {
                let a = v.list_chunks().await?;
                let b = k.list_chunks().await?;
                if a != b {
                    bail!("the embedded vector and keyword stores disagree after the copy");
                }
                a
            }
            Dest::Remote(s) => s.list_chunks().await?,
        })
    }
}

/// Copy the index's chunks and vectors from one store to another.
pub async fn copy(index: &Path, args: &CopyArgs) -> Result<()> {
    let Some(mut settings) = read_settings(index)? else {
        bail!(
            "no index at {}: pass --index <dir> of an index (its magpie.json says which model made the vectors)",
            index.display()
        );
    };
    let from = match &args.from {
        Some(s) => StoreSpec::parse(s)?,
        None => match &settings.store {
            Some(s) => StoreSpec::parse(s)?,
            None => StoreSpec::Embedded,
        },
    };
    let to = StoreSpec::parse(&args.to)?;
    if from.recorded() == to.recorded() {
        bail!("--from and --to are the same store ({})", to.describe());
    }
    let dim = settings.dimension;
    let source = match &from {
        StoreSpec::Embedded => {
            let dir = Layout::new(index).vectors();
            if !dir.exists() {
                bail!(
                    "the index at {} has no embedded store to copy from",
                    index.display()
                );
            }
            Source::Edge(EdgeStore::open(dir, dim)?)
        }
        StoreSpec::Remote(cfg) => Source::Remote(Box::new(
            QdrantStore::connect(cfg.clone(), dim)
                .await
                .with_context(|| format!("opening {}", from.describe()))?,
        )),
    };
    let mut dest = Dest::open(&to, index, dim)
        .await
        .with_context(|| format!("opening {}", to.describe()))?;
    let already = dest.count().await?;
    if already > 0 {
        if !args.replace {
            bail!(
                "{} already holds {already} chunks; pass --replace to clear it first (they are lost), \
                 or copy to another collection",
                to.describe()
            );
        }
        dest = clear(dest, &to, index, dim).await?;
    }
    let total = source.count().await?;
    let pb = magpie::progress::bar(total as u64, "copying chunks", !args.quiet);
    let t = Instant::now();
    let mut offset = None;
    let mut copied = 0usize;
    loop {
        let (page, next) = source.page(offset).await?;
        if !page.is_empty() {
            let (chunks, vectors): (Vec<Chunk>, Vec<Vec<f32>>) = page.into_iter().unzip();
            dest.write(&chunks, &vectors).await?;
            copied += chunks.len();
            pb.inc(chunks.len() as u64);
        }
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    dest.commit().await?;
    pb.finish_and_clear();
    let (a, b) = (source.ids().await?, dest.ids().await?);
    if a != b {
        bail!(
            "the copy is incomplete: {} holds {} chunks, {} holds {}; run the copy again \
             (it is safe to repeat) — the index still uses {}",
            from.describe(),
            a.len(),
            to.describe(),
            b.len(),
            from.describe()
        );
    }
    let docs = copy_catalog(&from, &to, index, &settings).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Copied {copied} chunks and {docs} catalog entries from {} to {} in {secs:.1}s ({:.0} chunks/s); both hold the same chunks.",
        from.describe(),
        to.describe(),
        copied as f64 / secs.max(1e-9)
    );
    if args.keep {
        println!(
            "The index at {} still uses {}.",
            index.display(),
            from.describe()
        );
    } else {
        settings.store = to.recorded();
        settings.write(index).map_err(crate::flags::hint)?;
        println!(
            "The index at {} now uses {}.",
            index.display(),
            to.describe()
        );
        if from == StoreSpec::Embedded {
            let layout = Layout::new(index);
            println!(
                "The embedded stores are kept in {} and {}; remove them when you no longer need them.",
                layout.vectors().display(),
                layout.keywords().display()
            );
        }
    }
    Ok(())
}

async fn clear(dest: Dest, to: &StoreSpec, index: &Path, dim: usize) -> Result<Dest> {
    match dest {
        Dest::Embedded(v, k) => {
            drop((v, k));
            let layout = Layout::new(index);
            for p in [layout.vectors(), layout.keywords()] {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        Dest::Remote(s) => {
            s.drop_collection().await?;
            if let StoreSpec::Remote(cfg) = to {
                QdrantCatalog::connect(cfg).await?.drop_collection().await?;
            }
        }
    }
    Dest::open(to, index, dim).await
}

/// The catalog of a store: the file under the index for the embedded one, the
/// shared one in a Qdrant deployment.
async fn catalog_of(spec: &StoreSpec, index: &Path) -> Result<Catalog> {
    Ok(match spec {
        StoreSpec::Embedded => Catalog::open(Layout::new(index).catalog())?,
        StoreSpec::Remote(cfg) => {
            Catalog::shared(Arc::new(QdrantCatalog::connect(cfg).await?) as Arc<dyn CatalogStore>)
                .await?
        }
    })
}

/// Copy the catalog (and, to Qdrant, the settings) along with the chunks, so
/// the destination is a whole index; returns the entries copied.
async fn copy_catalog(
    from: &StoreSpec,
    to: &StoreSpec,
    index: &Path,
    settings: &IndexSettings,
) -> Result<usize> {
    let source = catalog_of(from, index).await?;
    let entries: Vec<(String, CatalogEntry)> = source
        .iter()
        .map(|(id, e)| (id.clone(), e.clone()))
        .collect();
    match to {
        StoreSpec::Embedded => {
            Catalog::from_entries(Layout::new(index).catalog(), entries.clone()).save()?
        }
        StoreSpec::Remote(cfg) => {
            let shared = Arc::new(QdrantCatalog::connect(cfg).await?);
            let kept = settings
                .publish(&shared)
                .await
                .map_err(crate::flags::hint)?;
            let ours = IndexSettings {
                store: None,
                ..settings.clone()
            };
            if kept != ours {
                bail!(
                    "{} already records other index settings ({} with {} dimensions, chunks of \
                     {} tokens); copy with --replace, or to another collection",
                    to.describe(),
                    kept.embedding_model,
                    kept.dimension,
                    kept.chunk_tokens
                );
            }
            let mut dest = Catalog::shared(shared as Arc<dyn CatalogStore>).await?;
            let stale: Vec<String> = dest
                .iter()
                .filter(|(id, _)| source.get(id).is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                dest.remove(&id);
            }
            for (id, e) in entries.iter().cloned() {
                dest.insert(id, e);
            }
            dest.persist().await?;
        }
    }
    Ok(entries.len())
}
