//! The index as the `search` capability sees it: any magpie retriever.

use std::sync::Arc;

use async_trait::async_trait;
use magpie_core::{QueryPipeline, Retriever};

use crate::{SearchBackend, SearchHit};

/// A [`SearchBackend`] over a magpie [`Retriever`] (hybrid search of an
/// index, say): passages with their source and line range.
pub struct RetrieverSearch {
    retriever: Arc<dyn Retriever>,
}

impl RetrieverSearch {
    /// Plugins search with `retriever`.
    pub fn new(retriever: Arc<dyn Retriever>) -> Self {
        Self { retriever }
    }
}

#[async_trait]
impl SearchBackend for RetrieverSearch {
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchHit>, String> {
        let result = QueryPipeline::new(self.retriever.clone())
            .top_k(k)
            .search(query)
            .await
            .map_err(|e| e.to_string())?;
        Ok(result
            .hits
            .into_iter()
            .map(|h| SearchHit {
                source: format!("{}{}", h.chunk.source, h.chunk.span.cite_suffix()),
                doc_id: h.chunk.doc_id.clone(),
                text: h.chunk.text.clone(),
                score: h.score,
            })
            .collect())
    }
}
