//! Retrievers over the stores, reciprocal-rank fusion, and the query pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::fusion::{AdaptiveFusion, FusionWeights};
use crate::traits::{Embedder, KeywordStore, Reranker, Retriever, VectorStore};
use crate::types::Hit;

/// Longest query or question, bytes: beyond it the work a search does is
/// no longer worth bounding case by case.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

/// Most distinct terms a keyword query may have (stores refuse more).
pub const MAX_QUERY_TERMS: usize = 256;

fn check_query(query: &str, k: usize) -> Result<()> {
    if query.trim().is_empty() {
        return Err(Error::InvalidInput(
            "the query is empty: type a question or some keywords".into(),
        ));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(Error::InvalidInput(format!(
            "the query is {} bytes; at most {MAX_QUERY_BYTES} are allowed: ask a shorter question",
            query.len()
        )));
    }
    if k == 0 {
        return Err(Error::InvalidInput("k must be at least 1".into()));
    }
    Ok(())
}

/// Nearest-neighbour search: embeds the query, asks the vector store.
pub struct DenseRetriever {
    embedder: Arc<dyn Embedder>,
    store: Arc<dyn VectorStore>,
}

impl DenseRetriever {
    /// A dense retriever over `store`, embedding queries with `embedder`.
    pub fn new(embedder: Arc<dyn Embedder>, store: Arc<dyn VectorStore>) -> Self {
        Self { embedder, store }
    }

    /// Search with a query vector that is already embedded.
    pub async fn retrieve_vector(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.store.search(vector, k).await
    }
}

#[async_trait]
impl Retriever for DenseRetriever {
    fn name(&self) -> &str {
        "dense"
    }

    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        check_query(query, k)?;
        let v = self.embedder.embed_query(query).await?;
        self.store.search(&v, k).await
    }

    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        check_query(query, k)?;
        let v = self.embedder.embed_query(query).await?;
        self.store.search_filtered(&v, k, filter).await
    }
}

/// BM25 search over the keyword store.
pub struct KeywordRetriever {
    store: Arc<dyn KeywordStore>,
}

impl KeywordRetriever {
    /// A BM25 retriever over `store`.
    pub fn new(store: Arc<dyn KeywordStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Retriever for KeywordRetriever {
    fn name(&self) -> &str {
        "bm25"
    }

    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        check_query(query, k)?;
        self.store.search(query, k).await
    }

    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        check_query(query, k)?;
        self.store.search_filtered(query, k, filter).await
    }
}

/// Reciprocal-rank fusion: each list adds `weight / (rrf_k + rank)` to a chunk's score
/// (rank is 1-based). Snippets are kept from the first list that has one.
pub fn reciprocal_rank_fusion(lists: &[(f32, Vec<Hit>)], rrf_k: f32) -> Vec<Hit> {
    let mut fused: HashMap<String, (f32, Hit)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (weight, hits) in lists {
        for (rank, hit) in hits.iter().enumerate() {
            let add = weight / (rrf_k + rank as f32 + 1.0);
            match fused.get_mut(&hit.chunk.id) {
                Some((score, existing)) => {
                    *score += add;
                    if existing.snippet.is_none() {
                        existing.snippet = hit.snippet.clone();
                    }
                }
                None => {
                    order.push(hit.chunk.id.clone());
                    fused.insert(hit.chunk.id.clone(), (add, hit.clone()));
                }
            }
        }
    }
    let mut out: Vec<Hit> = order
        .into_iter()
        .filter_map(|id| fused.remove(&id))
        .map(|(score, mut hit)| {
            hit.score = score;
            hit
        })
        .collect();
    // Stable sort keeps first-seen order among ties.
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Runs several retrievers concurrently and fuses their lists with RRF.
///
/// With [`HybridRetriever::adaptive`], a `dense` and a `bm25` retriever are
/// weighed per query by [`AdaptiveFusion`] instead of fixed weights.
pub struct HybridRetriever {
    retrievers: Vec<(f32, Arc<dyn Retriever>)>,
    rrf_k: f32,
    candidates: usize,
    adaptive: Option<AdaptiveFusion>,
}

impl HybridRetriever {
    /// Fuse `retrievers` (each with weight 1) with the usual `rrf_k = 60`.
    pub fn new(retrievers: Vec<Arc<dyn Retriever>>) -> Self {
        Self {
            retrievers: retrievers.into_iter().map(|r| (1.0, r)).collect(),
            rrf_k: 60.0,
            candidates: 100,
            adaptive: None,
        }
    }

    /// Weigh the retrievers named `dense` and `bm25` per query with `fusion`
    /// (others keep their fixed weight).
    pub fn adaptive(mut self, fusion: AdaptiveFusion) -> Self {
        self.adaptive = Some(fusion);
        self
    }

    /// Retrieve, fuse, and say which weights fusion used (`None` without
    /// [`HybridRetriever::adaptive`]).
    pub async fn retrieve_explained(
        &self,
        query: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<(Vec<Hit>, Option<FusionWeights>)> {
        check_query(query, k)?;
        let n = self.candidates.max(k);
        let futures = self.retrievers.iter().map(|(w, r)| async move {
            let span = tracing::debug_span!("retrieve", retriever = r.name());
            let _e = span.enter();
            r.retrieve_filtered(query, n, filter)
                .await
                .map(|hits| (*w, hits))
        });
        let mut lists = futures::future::try_join_all(futures).await?;
        let mut explained = None;
        if let Some(fusion) = &self.adaptive {
            let find = |name: &str| self.retrievers.iter().position(|(_, r)| r.name() == name);
            if let (Some(d), Some(b)) = (find("dense"), find("bm25")) {
                let w = fusion.weigh(query, &lists[d].1, &lists[b].1);
                tracing::debug!(
                    dense = w.dense,
                    bm25 = w.bm25,
                    agreement = w.agreement,
                    "fusion weights"
                );
                lists[d].0 *= w.dense;
                lists[b].0 *= w.bm25;
                explained = Some(w);
            }
        }
        let mut fused = reciprocal_rank_fusion(&lists, self.rrf_k);
        fused.truncate(k);
        Ok((fused, explained))
    }

    /// Set the weight of each retriever's contribution, in order.
    pub fn with_weights(mut self, weights: &[f32]) -> Self {
        for (slot, w) in self.retrievers.iter_mut().zip(weights) {
            slot.0 = *w;
        }
        self
    }

    /// Set the RRF constant (larger flattens the rank curve).
    pub fn with_rrf_k(mut self, rrf_k: f32) -> Self {
        self.rrf_k = rrf_k;
        self
    }

    /// How many candidates each retriever contributes before fusion (at least `k`).
    pub fn with_candidates(mut self, n: usize) -> Self {
        self.candidates = n;
        self
    }
}

#[async_trait]
impl Retriever for HybridRetriever {
    fn name(&self) -> &str {
        "hybrid"
    }

    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        self.retrieve_filtered(query, k, &Filter::none()).await
    }

    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        Ok(self.retrieve_explained(query, k, filter).await?.0)
    }
}

/// What a query returned, and how long each part took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResult {
    /// The query as given.
    pub query: String,
    /// Hits, best first.
    pub hits: Vec<Hit>,
    /// Time spent retrieving (and fusing).
    pub retrieval: Duration,
    /// Time spent reranking, when a reranker ran.
    pub rerank: Option<Duration>,
}

/// Retrieval for a question: a retriever, an optional reranker, a result size.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use magpie_core::{QueryPipeline, Retriever};
/// # async fn demo(retriever: Arc<dyn Retriever>) -> magpie_core::Result<()> {
/// let pipeline = QueryPipeline::new(retriever).top_k(5);
/// let result = pipeline.search("how do I install it?").await?;
/// for hit in &result.hits {
///     println!("{} {:.3} {}", hit.chunk.source, hit.score, hit.chunk.text);
/// }
/// # Ok(()) }
/// ```
pub struct QueryPipeline {
    retriever: Arc<dyn Retriever>,
    reranker: Option<Arc<dyn Reranker>>,
    top_k: usize,
    rerank_candidates: usize,
    filter: Filter,
}

impl QueryPipeline {
    /// A pipeline that returns the retriever's 10 best chunks.
    pub fn new(retriever: Arc<dyn Retriever>) -> Self {
        Self {
            retriever,
            reranker: None,
            top_k: 10,
            rerank_candidates: 50,
            filter: Filter::none(),
        }
    }

    /// Only return chunks `filter` accepts (by source, document, metadata).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Rerank retrieved candidates with `reranker` before cutting to `top_k`.
    pub fn reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// How many hits to return.
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// How many candidates the reranker sees.
    pub fn rerank_candidates(mut self, n: usize) -> Self {
        self.rerank_candidates = n;
        self
    }

    /// Retrieve (and rerank) chunks for `query`.
    pub async fn search(&self, query: &str) -> Result<SearchResult> {
        check_query(query, self.top_k)?;
        let fetch = if self.reranker.is_some() {
            self.rerank_candidates.max(self.top_k)
        } else {
            self.top_k
        };
        let t0 = Instant::now();
        let mut hits = self
            .retriever
            .retrieve_filtered(query, fetch, &self.filter)
            .await?;
        let retrieval = t0.elapsed();
        let mut rerank = None;
        if let Some(r) = &self.reranker {
            let t1 = Instant::now();
            hits = r.rerank(query, hits).await?;
            rerank = Some(t1.elapsed());
        }
        hits.truncate(self.top_k);
        Ok(SearchResult {
            query: query.to_string(),
            hits,
            retrieval,
            rerank,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32) -> Hit {
        Hit {
            score,
            ..crate::types::test_hit(id, id)
        }
    }

    #[test]
    fn rrf_rewards_agreement() {
        let a = vec![hit("x", 9.0), hit("y", 8.0), hit("z", 7.0)];
        let b = vec![hit("y", 0.9), hit("w", 0.8), hit("x", 0.1)];
        let fused = reciprocal_rank_fusion(&[(1.0, a), (1.0, b)], 60.0);
        let ids: Vec<_> = fused.iter().map(|h| h.chunk.id.as_str()).collect();
        // y: 1/62 + 1/61, x: 1/61 + 1/63, w: 1/62, z: 1/63
        assert_eq!(ids, ["y", "x", "w", "z"]);
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-6);
    }

    #[test]
    fn rrf_weights_shift_the_order() {
        let a = vec![hit("x", 1.0)];
        let b = vec![hit("y", 1.0)];
        let fused = reciprocal_rank_fusion(&[(1.0, a), (2.0, b)], 60.0);
        assert_eq!(fused[0].chunk.id, "y");
    }

    struct Fixed(&'static str, Vec<Hit>);
    #[async_trait]
    impl Retriever for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        async fn retrieve(&self, _q: &str, k: usize) -> Result<Vec<Hit>> {
            Ok(self.1.iter().take(k).cloned().collect())
        }
    }

    #[tokio::test]
    async fn hybrid_fuses_and_truncates() {
        let a: Arc<dyn Retriever> = Arc::new(Fixed("a", vec![hit("1", 1.0), hit("2", 0.5)]));
        let b: Arc<dyn Retriever> = Arc::new(Fixed("b", vec![hit("2", 1.0), hit("3", 0.5)]));
        let h = HybridRetriever::new(vec![a, b]);
        let out = h.retrieve("q", 2).await.unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].chunk.id, "2");
    }

    #[tokio::test]
    async fn empty_query_is_a_clear_error() {
        let a: Arc<dyn Retriever> = Arc::new(Fixed("a", vec![hit("1", 1.0)]));
        let p = QueryPipeline::new(a);
        let err = p.search("   ").await.unwrap_err();
        assert!(err.to_string().contains("query is empty"), "{err}");
    }
}
