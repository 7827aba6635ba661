//! The remote store: a Qdrant server or cluster over gRPC (qdrant-client).
//!
//! One collection holds, per chunk, a named dense vector (`dense`, the
//! embedder's size, cosine), a named sparse vector (`bm25`, with Qdrant's IDF
//! modifier, see [`crate::sparse`]) and the same payload as the embedded store
//! (`doc_id`, `doc_hash`, `source`, `chunk`). Point ids are the chunk ids (UUIDs
//! derived from document, version and position), so writing the same chunk
//! again replaces it. Hybrid queries are one Query API request: a dense and a
//! sparse prefetch fused by RRF on the server.

mod config;
mod requests;
mod retry;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use magpie_core::{
    AdaptiveFusion, Chunk, Embedder, Error, Filter as MFilter, Hit, KeywordStore, Result,
    Retriever, StoredChunk, VectorStore,
};
use qdrant_client::qdrant::{vector_output, FieldType, PointId};
use qdrant_client::{Qdrant, QdrantError};

use crate::sparse::Bm25Encoder;
use crate::DENSE;

pub use config::RemoteConfig;
pub use requests::{chunk_point, remote_filter};
use requests::{hits, payload_chunk, point_id_string};
pub use retry::is_transient;
pub(crate) use retry::retry;
use retry::{explain, remote_err};

/// Name of the sparse (BM25) vector in every remote point.
pub const SPARSE: &str = "bm25";

/// Environment variable the API key is read from.
pub const API_KEY_ENV: &str = "QDRANT_API_KEY";

/// A client for the deployment `cfg` names (connects lazily).
pub(crate) fn connect_client(cfg: &RemoteConfig) -> Result<Qdrant> {
    Qdrant::from_url(&cfg.endpoint)
        .api_key(cfg.api_key.clone())
        .timeout(cfg.timeout)
        .connect_timeout(Duration::from_secs(10))
        .skip_compatibility_check()
        .build()
        .map_err(|e| explain("connecting", &cfg.endpoint, e))
}

/// A vector store in a Qdrant collection (server or cluster).
pub struct QdrantStore {
    client: Qdrant,
    cfg: RemoteConfig,
    dim: usize,
    bm25: Bm25Encoder,
    indexed: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("url", &self.cfg.display_url())
            .field("dim", &self.dim)
            .finish()
    }
}

/// Most metadata fields the store indexes on its own.
const MAX_META_INDEXES: usize = 32;

impl QdrantStore {
    /// Connect, and create the collection for `dim`-dimensional vectors if it
    /// does not exist (an existing one must have the same size and a `bm25`
    /// sparse vector).
    pub async fn connect(cfg: RemoteConfig, dim: usize) -> Result<Self> {
        let client = connect_client(&cfg)?;
        let store = Self {
            client,
            bm25: Bm25Encoder::new(cfg.bm25),
            cfg,
            dim,
            indexed: Mutex::new(HashSet::new()),
        };
        store.ensure_collection().await?;
        Ok(store)
    }

    /// The configuration.
    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// Vector length.
    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Send a request, again after a backoff while it fails transiently.
    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, QdrantError>>,
    {
        retry(&self.cfg, what, f).await
    }

    async fn ensure_collection(&self) -> Result<()> {
        let name = self.cfg.collection.clone();
        let exists = self
            .retry("checking the collection", || {
                self.client.collection_exists(&name)
            })
            .await?;
        if !exists {
            let req = self.cfg.create_collection_request(self.dim);
            let created = self
                .client
                .create_collection(req)
                .await
                .map_err(|e| explain("creating the collection", &self.cfg.endpoint, e));
            if let Err(e) = created {
                // Another writer may have created it meanwhile.
                if !self
                    .retry("checking the collection", || {
                        self.client.collection_exists(&name)
                    })
                    .await?
                {
                    return Err(e);
                }
            }
            tracing::info!(collection = %name, dim = self.dim, "created the Qdrant collection");
        }
        let info = self
            .retry("reading the collection", || {
                self.client.collection_info(&name)
            })
            .await?
            .result
            .ok_or_else(|| remote_err("reading the collection", "no collection info"))?;
        let params = info.config.and_then(|c| c.params);
        let dense = params
            .as_ref()
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| match &v.config {
                Some(qdrant_client::qdrant::vectors_config::Config::ParamsMap(m)) => {
                    m.map.get(DENSE).map(|p| p.size as usize)
                }
                _ => None,
            });
        match dense {
            Some(s) if s != self.dim => {
                return Err(Error::Index(format!(
                    "the collection {} holds {s}-dimensional vectors but the embedder makes {}; \
                     use another collection (…/COLLECTION in the store URL)",
                    self.cfg.display_url(),
                    self.dim
                )))
            }
            None => {
                return Err(Error::Index(format!(
                    "the collection {} has no '{DENSE}' vector: it was not made by magpie; \
                     use another collection name",
                    self.cfg.display_url()
                )))
            }
            _ => {}
        }
        let has_sparse = params
            .as_ref()
            .and_then(|p| p.sparse_vectors_config.as_ref())
            .is_some_and(|s| s.map.contains_key(SPARSE));
        if !has_sparse {
            return Err(Error::Index(format!(
                "the collection {} has no '{SPARSE}' sparse vector: it was not made by magpie; \
                 use another collection name",
                self.cfg.display_url()
            )));
        }
        let have: HashSet<String> = info.payload_schema.keys().cloned().collect();
        for key in ["doc_id", "source"] {
            if !have.contains(key) {
                self.create_index(key, FieldType::Keyword).await?;
            }
        }
        let mut indexed = self.indexed.lock().expect("not poisoned");
        indexed.extend(have);
        indexed.insert("doc_id".into());
        indexed.insert("source".into());
        Ok(())
    }

    async fn create_index(&self, key: &str, ty: FieldType) -> Result<()> {
        let req = self.cfg.field_index_request(key, ty);
        self.retry("creating a payload index", || {
            self.client.create_field_index(req.clone())
        })
        .await?;
        tracing::debug!(key, ?ty, "payload index created");
        Ok(())
    }

    /// Index metadata fields seen for the first time (type from the value).
    async fn index_metadata(&self, chunks: &[Chunk]) -> Result<()> {
        let mut new = Vec::new();
        {
            let indexed = self.indexed.lock().expect("not poisoned");
            let meta_count = indexed
                .iter()
                .filter(|k| k.starts_with("chunk.metadata."))
                .count();
            for c in chunks {
                for (name, v) in &c.metadata {
                    let key = format!("chunk.metadata.{name}");
                    if indexed.contains(&key)
                        || new.iter().any(|(k, _)| *k == key)
                        || meta_count + new.len() >= MAX_META_INDEXES
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        continue;
                    }
                    let scalar = match v {
                        serde_json::Value::Array(a) => a.first().cloned().unwrap_or_default(),
                        v => v.clone(),
                    };
                    let ty = match scalar {
                        serde_json::Value::String(_) => FieldType::Keyword,
                        serde_json::Value::Bool(_) => FieldType::Bool,
                        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                            FieldType::Integer
                        }
                        serde_json::Value::Number(_) => FieldType::Float,
                        _ => continue,
                    };
                    new.push((key, ty));
                }
            }
        }
        for (key, ty) in new {
            self.create_index(&key, ty).await?;
            self.indexed.lock().expect("not poisoned").insert(key);
        }
        Ok(())
    }

    /// BM25 over the sparse vectors, on the server.
    pub async fn search_sparse(&self, query: &str, k: usize, filter: &MFilter) -> Result<Vec<Hit>> {
        let terms = self.bm25.query(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let req = self.cfg.sparse_query(&terms, k, filter)?;
        let res = self
            .retry("searching", || self.client.query(req.clone()))
            .await?;
        hits(res.result)
    }

    /// Dense and BM25 fused by RRF on the server, one request.
    pub async fn search_hybrid(
        &self,
        vector: &[f32],
        query: &str,
        k: usize,
        filter: &MFilter,
    ) -> Result<Vec<Hit>> {
        self.check_dim(vector)?;
        let terms = self.bm25.query(query);
        let req = self.cfg.hybrid_query(vector, &terms, k, filter)?;
        let res = self
            .retry("searching", || self.client.query(req.clone()))
            .await?;
        hits(res.result)
    }

    fn check_dim(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(Error::InvalidInput(format!(
                "vector has {} dimensions, expected {}",
                v.len(),
                self.dim
            )));
        }
        Ok(())
    }

    /// Number of points in the collection.
    pub async fn count(&self) -> Result<usize> {
        let req = qdrant_client::qdrant::CountPoints {
            collection_name: self.cfg.collection.clone(),
            exact: Some(true),
            ..Default::default()
        };
        let res = self
            .retry("counting", || self.client.count(req.clone()))
            .await?;
        Ok(res.result.map(|r| r.count as usize).unwrap_or(0))
    }

    /// Every chunk with its dense vector, a page at a time (for `store copy`).
    pub async fn scroll_page(
        &self,
        offset: Option<String>,
    ) -> Result<(Vec<(Chunk, Vec<f32>)>, Option<String>)> {
        let req = self
            .cfg
            .scroll_request(offset.map(|o| PointId::from(o.as_str())), true);
        let res = self
            .retry("reading points", || self.client.scroll(req.clone()))
            .await?;
        let mut out = Vec::with_capacity(res.result.len());
        for p in res.result {
            let chunk = payload_chunk(&p.id, &p.payload)?;
            let v = p
                .vectors
                .as_ref()
                .and_then(|v| v.get_vector_by_name(DENSE))
                .and_then(|v| match v {
                    vector_output::Vector::Dense(d) => Some(d.data),
                    _ => None,
                })
                .ok_or_else(|| {
                    remote_err(
                        "reading points",
                        format!("point {} has no dense vector", point_id_string(&p.id)),
                    )
                })?;
            out.push((chunk, v));
        }
        let next = res
            .next_page_offset
            .as_ref()
            .map(|_| point_id_string(&res.next_page_offset));
        Ok((out, next))
    }

    /// Remove the collection and everything in it.
    pub async fn drop_collection(&self) -> Result<()> {
        let name = self.cfg.collection.clone();
        self.retry("deleting the collection", || {
            self.client.delete_collection(name.clone())
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantStore {
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        crate::check_batch(chunks, vectors, self.dim)?;
        let mut points = Vec::with_capacity(chunks.len());
        for (c, v) in chunks.iter().zip(vectors) {
            points.push(chunk_point(c, v, &self.bm25.document(&c.text))?);
        }
        self.index_metadata(chunks).await?;
        for req in self.cfg.upsert_requests(points) {
            self.retry("writing points", || self.client.upsert_points(req.clone()))
                .await?;
        }
        Ok(())
    }

    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        for ids in doc_ids.chunks(256) {
            let req = self.cfg.delete_docs_request(ids);
            self.retry("deleting points", || self.client.delete_points(req.clone()))
                .await?;
        }
        Ok(())
    }

    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        for ids in chunk_ids.chunks(1024) {
            let req = self.cfg.delete_chunks_request(ids);
            self.retry("deleting points", || self.client.delete_points(req.clone()))
                .await?;
        }
        Ok(())
    }

    async fn search(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.search_filtered(vector, k, &MFilter::none()).await
    }

    async fn search_filtered(
        &self,
        vector: &[f32],
        k: usize,
        filter: &MFilter,
    ) -> Result<Vec<Hit>> {
        self.check_dim(vector)?;
        let req = self.cfg.dense_query(vector, k, filter)?;
        let res = self
            .retry("searching", || self.client.query(req.clone()))
            .await?;
        hits(res.result)
    }

    async fn commit(&self) -> Result<()> {
        // Every write waited for the server's acknowledgement.
        Ok(())
    }

    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let req = self.cfg.scroll_request(offset.clone(), false);
            let res = self
                .retry("listing points", || self.client.scroll(req.clone()))
                .await?;
            for p in &res.result {
                let get = |k: &str| {
                    p.payload
                        .get(k)
                        .and_then(|v| v.as_str().map(|s| s.to_string()))
                        .ok_or_else(|| {
                            remote_err(
                                "listing points",
                                format!("point {} has no {k}", point_id_string(&p.id)),
                            )
                        })
                };
                out.push(StoredChunk {
                    chunk_id: point_id_string(&p.id),
                    doc_id: get("doc_id")?,
                    doc_hash: get("doc_hash")?,
                });
            }
            match res.next_page_offset {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The keyword side of a remote index: BM25 through the collection's sparse
/// vectors. Writes happen in [`QdrantStore`]'s upsert (one point carries both
/// vectors), so this type's writes are no-ops and its reads ask the server.
pub struct QdrantKeywords(pub std::sync::Arc<QdrantStore>);

#[async_trait]
impl KeywordStore for QdrantKeywords {
    async fn upsert(&self, _chunks: &[Chunk]) -> Result<()> {
        Ok(())
    }
    async fn delete_docs(&self, _doc_ids: &[String]) -> Result<()> {
        Ok(())
    }
    async fn delete_chunks(&self, _chunk_ids: &[String]) -> Result<()> {
        Ok(())
    }
    async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        self.0.search_sparse(query, k, &MFilter::none()).await
    }
    async fn search_filtered(&self, query: &str, k: usize, filter: &MFilter) -> Result<Vec<Hit>> {
        self.0.search_sparse(query, k, filter).await
    }
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        self.0.list_chunks().await
    }
}

/// Hybrid retrieval done by the server: one Query API request with dense and
/// BM25 prefetches fused by RRF.
///
/// With [`QdrantHybridRetriever::adaptive`], a query in a language the
/// embedding model does not cover fetches both lists and fuses them here with
/// [`AdaptiveFusion`]'s weights; covered queries stay one server request.
pub struct QdrantHybridRetriever {
    embedder: std::sync::Arc<dyn Embedder>,
    store: std::sync::Arc<QdrantStore>,
    adaptive: Option<AdaptiveFusion>,
}

impl QdrantHybridRetriever {
    /// Embed queries with `embedder`, search `store`.
    pub fn new(embedder: std::sync::Arc<dyn Embedder>, store: std::sync::Arc<QdrantStore>) -> Self {
        Self {
            embedder,
            store,
            adaptive: None,
        }
    }

    /// Weigh the dense list per query with `fusion` where the model does not
    /// cover the query's language.
    pub fn adaptive(mut self, fusion: AdaptiveFusion) -> Self {
        self.adaptive = Some(fusion);
        self
    }
}

#[async_trait]
impl Retriever for QdrantHybridRetriever {
    fn name(&self) -> &str {
        "hybrid"
    }

    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        self.retrieve_filtered(query, k, &MFilter::none()).await
    }

    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &MFilter) -> Result<Vec<Hit>> {
        if query.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the query is empty: type a question or some keywords".into(),
            ));
        }
        if k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".into()));
        }
        let v = self.embedder.embed_query(query).await?;
        if let Some(fusion) = &self.adaptive {
            if fusion.query_coverage(query).0 < 1.0 {
                let n = k.max(100);
                let (dense, bm25) = futures::future::try_join(
                    self.store.search_filtered(&v, n, filter),
                    self.store.search_sparse(query, n, filter),
                )
                .await?;
                let w = fusion.weigh(query, &dense, &bm25);
                let mut fused =
                    magpie_core::reciprocal_rank_fusion(&[(w.dense, dense), (w.bm25, bm25)], 60.0);
                fused.truncate(k);
                return Ok(fused);
            }
        }
        self.store.search_hybrid(&v, query, k, filter).await
    }
}
