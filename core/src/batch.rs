//! Dynamic batching of query embeddings for servers: concurrent callers'
//! queries are embedded together, so a model whose cost per call is high
//! (weights repacked on every matrix product, thread start-up) is paid once
//! per batch instead of once per query.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{Embedder, Error, Result};

type Job = (String, oneshot::Sender<Result<Vec<f32>>>);

/// Wraps an embedder: [`Embedder::embed_query`] calls that arrive while a batch
/// is being embedded wait and go together in the next one (no timer: a lone
/// query is embedded at once). Passages pass straight through.
pub struct BatchingEmbedder {
    inner: Arc<dyn Embedder>,
    tx: mpsc::UnboundedSender<Job>,
}

impl BatchingEmbedder {
    /// Start the batching task (needs a tokio runtime); at most `max_batch`
    /// queries go in one call.
    pub fn new(inner: Arc<dyn Embedder>, max_batch: usize) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let model = inner.clone();
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                // Callers that gave up are not embedded for.
                jobs.retain(|(_, reply)| !reply.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let texts: Vec<String> = jobs.iter().map(|(q, _)| q.clone()).collect();
                tracing::trace!(batch = texts.len(), "embedding queries");
                match model.embed_queries(&texts).await {
                    Ok(vectors) if vectors.len() == jobs.len() => {
                        for ((_, reply), v) in jobs.into_iter().zip(vectors) {
                            let _ = reply.send(Ok(v));
                        }
                    }
                    Ok(vectors) => {
                        let msg = format!(
                            "the model returned {} vectors for {} queries",
                            vectors.len(),
                            jobs.len()
                        );
                        for (_, reply) in jobs {
                            let _ = reply.send(Err(Error::stage("embedder", msg.clone())));
                        }
                    }
                    Err(e) => {
                        let msg = crate::error_chain(&e);
                        for (_, reply) in jobs {
                            let _ = reply.send(Err(Error::stage("embedder", msg.clone())));
                        }
                    }
                }
            }
        });
        Self { inner, tx }
    }
}

#[async_trait]
impl Embedder for BatchingEmbedder {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn languages(&self) -> crate::lang::LanguageSupport {
        self.inner.languages()
    }

    fn token_coverage(&self, text: &str) -> Option<f32> {
        self.inner.token_coverage(text)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.inner.embed(texts).await
    }

    async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((query.to_string(), reply))
            .map_err(|_| Error::stage("embedder", "the batching task has stopped"))?;
        rx.await
            .map_err(|_| Error::stage("embedder", "the batching task dropped the query"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Slow on purpose, records its batch sizes; a query's vector encodes its text.
    struct Counting {
        batches: Mutex<Vec<usize>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Embedder for Counting {
        fn model_id(&self) -> &str {
            "counting"
        }
        fn dimension(&self) -> usize {
            1
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.batches.lock().unwrap().push(texts.len());
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            if texts.iter().any(|t| t == "fail") {
                return Err(Error::stage("model", "boom"));
            }
            Ok(texts.iter().map(|t| vec![t.len() as f32]).collect())
        }
        async fn embed_queries(&self, q: &[String]) -> Result<Vec<Vec<f32>>> {
            self.embed(q).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_queries_share_batches_and_get_their_own_vectors() {
        let inner = Arc::new(Counting {
            batches: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        });
        let b = Arc::new(BatchingEmbedder::new(inner.clone(), 8));
        let tasks: Vec<_> = (1..=20)
            .map(|n| {
                let b = b.clone();
                tokio::spawn(async move { (n, b.embed_query(&"x".repeat(n)).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (n, v) = t.await.unwrap();
            assert_eq!(v, vec![n as f32]);
        }
        let batches = inner.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 20);
        assert!(batches.iter().all(|&n| n <= 8), "{batches:?}");
        assert!(batches.len() < 20, "no batching happened: {batches:?}");
        // An error reaches every query of its batch, and the next batch works.
        let e = b.embed_query("fail").await.unwrap_err().to_string();
        assert!(e.contains("boom"), "{e}");
        assert_eq!(b.embed_query("ok").await.unwrap(), vec![2.0]);
    }
}
