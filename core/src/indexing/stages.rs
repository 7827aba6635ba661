//! The stages of an indexing run before the writer: loading, checking and
//! splitting sources ahead of the encoder, and embedding them in batches.
//! They run beside the writer on bounded queues (see `IndexingPipeline::run`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::warn;

use super::{is_fatal, IndexProgress};
use crate::error::{error_chain, Error, Result};
use crate::guard::{catch, catch_async};
use crate::traits::{Embedder, Loader, Skipped, Splitter};
use crate::types::{Chunk, Document};

/// A document split and waiting for its vectors.
pub(super) struct Pending {
    pub(super) doc: Document,
    pub(super) origin: String,
    pub(super) chunks: Vec<Chunk>,
}

/// Documents loaded and split ahead of the encoder.
pub(super) const PREPARE_AHEAD: usize = 64;

/// From the preparing stage to the embedding stage.
pub(super) enum Prepared {
    Doc(Pending),
    Skip(Skipped),
    Unchanged(String),
}

/// A document with its chunks' vectors, or why they could not be made.
pub(super) type EmbeddedDoc = (Pending, std::result::Result<Vec<Vec<f32>>, Error>);

/// From the embedding stage to the writing stage.
pub(super) enum Embedded {
    /// A batch: each document with its vectors, or why it could not be embedded.
    Batch {
        docs: Vec<EmbeddedDoc>,
        embed_time: Duration,
    },
    Skip(Skipped),
    Unchanged(String),
    /// The embedder failed in a way no document explains (the run stops).
    Fatal(Error),
}

/// Load, check and split every source, in listing order, ahead of the
/// encoder. Returns the document ids seen (for `--sync`). Stops early when the
/// later stages have stopped.
pub(super) async fn prepare_stage(
    loader: &dyn Loader,
    sources: &[crate::traits::SourceRef],
    splitter: Arc<dyn Splitter>,
    held_hashes: &HashMap<String, String>,
    origin: String,
    concurrency: usize,
    to_embed: tokio::sync::mpsc::Sender<Prepared>,
) -> HashSet<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut loads = futures::stream::iter(sources.iter())
        .map(|src| async move {
            catch_async("loader", loader.load(src))
                .await
                .unwrap_or_else(|e| {
                    Err(Skipped {
                        uri: src.uri.clone(),
                        reason: e.to_string(),
                    })
                })
        })
        .buffered(concurrency);
    while let Some(result) = loads.next().await {
        let item = match result {
            Err(skip) => Prepared::Skip(skip),
            Ok(doc) if !seen.insert(doc.id.clone()) => Prepared::Skip(Skipped {
                uri: doc.uri.clone(),
                reason: "another source in this run has the same document id".into(),
            }),
            Ok(doc) if held_hashes.get(&doc.id) == Some(&doc.content_hash) => {
                Prepared::Unchanged(doc.uri)
            }
            Ok(doc) => split_doc(&splitter, doc, &origin).await,
        };
        if to_embed.send(item).await.is_err() {
            break;
        }
    }
    seen
}

/// Split on a blocking thread (tokenizer-heavy work stays off the async
/// workers), guarded like every stage.
async fn split_doc(splitter: &Arc<dyn Splitter>, doc: Document, origin: &str) -> Prepared {
    let splitter = splitter.clone();
    let uri = doc.uri.clone();
    let split = tokio::task::spawn_blocking(move || {
        let chunks = catch("splitter", || splitter.split(&doc));
        (doc, chunks)
    })
    .await;
    match split {
        Err(e) => Prepared::Skip(Skipped {
            uri,
            reason: format!("splitter: {e}"),
        }),
        Ok((doc, Err(e))) => {
            let skip = Skipped {
                uri: doc.uri.clone(),
                reason: e.to_string(),
            };
            warn!(uri = %skip.uri, reason = %skip.reason, "document not indexed");
            Prepared::Skip(skip)
        }
        Ok((doc, Ok(chunks))) if chunks.is_empty() => Prepared::Skip(Skipped {
            uri: doc.uri.clone(),
            reason: "no text to index after extraction".into(),
        }),
        Ok((doc, Ok(chunks))) => Prepared::Doc(Pending {
            doc,
            origin: origin.to_string(),
            chunks,
        }),
    }
}

/// Gather prepared documents into batches of about `batch_chunks` chunks and
/// embed each; a batch that fails is embedded again one document at a time, so
/// a document that breaks the embedder is skipped and the others go on.
pub(super) async fn embed_stage(
    embedder: Arc<dyn Embedder>,
    mut from_prepare: tokio::sync::mpsc::Receiver<Prepared>,
    to_write: tokio::sync::mpsc::Sender<Embedded>,
    batch_chunks: usize,
    progress: &dyn IndexProgress,
) {
    let mut batch: Vec<Pending> = Vec::new();
    let mut chunks = 0usize;
    loop {
        let next = from_prepare.recv().await;
        let flush = match &next {
            None => !batch.is_empty(),
            Some(_) => chunks >= batch_chunks,
        };
        if flush {
            let item = embed_batch(&embedder, std::mem::take(&mut batch), progress).await;
            chunks = 0;
            let fatal = matches!(item, Embedded::Fatal(_));
            if to_write.send(item).await.is_err() || fatal {
                return;
            }
        }
        let item = match next {
            None => return,
            Some(Prepared::Doc(p)) => {
                chunks += p.chunks.len();
                batch.push(p);
                continue;
            }
            Some(Prepared::Skip(s)) => Embedded::Skip(s),
            Some(Prepared::Unchanged(u)) => Embedded::Unchanged(u),
        };
        if to_write.send(item).await.is_err() {
            return;
        }
    }
}

async fn embed_batch(
    embedder: &Arc<dyn Embedder>,
    batch: Vec<Pending>,
    progress: &dyn IndexProgress,
) -> Embedded {
    let t = Instant::now();
    let all: Vec<&Pending> = batch.iter().collect();
    let results: Vec<std::result::Result<Vec<Vec<f32>>, Error>> =
        match embed_docs(embedder, &all, progress).await {
            Ok(mut vectors) => {
                let mut out = Vec::with_capacity(batch.len());
                for p in &batch {
                    let rest = vectors.split_off(p.chunks.len());
                    out.push(Ok(std::mem::replace(&mut vectors, rest)));
                }
                out
            }
            Err(e) if is_fatal(&e) => return Embedded::Fatal(e),
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(e) => {
                warn!(
                    "embedding a batch of {} documents failed ({}); embedding them one at a time",
                    batch.len(),
                    error_chain(&e)
                );
                let mut out = Vec::with_capacity(batch.len());
                for p in &batch {
                    match embed_docs(embedder, &[p], progress).await {
                        Err(e) if is_fatal(&e) => return Embedded::Fatal(e),
                        r => out.push(r),
                    }
                }
                out
            }
        };
    Embedded::Batch {
        docs: batch.into_iter().zip(results).collect(),
        embed_time: t.elapsed(),
    }
}

/// The vectors of every chunk of `docs`, in order.
async fn embed_docs(
    embedder: &Arc<dyn Embedder>,
    docs: &[&Pending],
    progress: &dyn IndexProgress,
) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|p| p.chunks.iter().map(|c| c.embedding_text()))
        .collect();
    let mut vectors = Vec::with_capacity(texts.len());
    for part in texts.chunks(EMBED_CALL_TEXTS) {
        let got = catch_async("embedder", embedder.embed(part)).await??;
        if got.len() != part.len() {
            return Err(Error::stage(
                "embedder",
                format!("returned {} vectors for {} texts", got.len(), part.len()),
            ));
        }
        vectors.extend(got);
        progress.embedded(part.len());
    }
    Ok(vectors)
}

/// Texts per embedder call (the embedder batches them by tokens itself).
const EMBED_CALL_TEXTS: usize = 128;
