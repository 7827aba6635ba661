//! The remote store: a Qdrant server or cluster over gRPC (qdrant-client).
//!
//! One collection holds, per chunk, a named dense vector (`dense`, the
//! embedder's size, cosine), a named sparse vector (`bm25`, with Qdrant's IDF
//! modifier, see [`crate::sparse`]) and the same payload as the embedded store
//! (`doc_id`, `doc_hash`, `source`, `chunk`). Point ids are the chunk ids (UUIDs
//! derived from document, version and position), so writing the same chunk
//! again replaces it. Hybrid queries are one Query API request: a dense and a
//! sparse prefetch fused by RRF on the server.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use magpie_core::{
    AdaptiveFusion, Chunk, Clause, Embedder, Error, Filter as MFilter, Hit, KeywordStore, Result,
    Retriever, StoredChunk, VectorStore,
};
use qdrant_client::qdrant::{
    point_id::PointIdOptions, points_selector::PointsSelectorOneOf, vector_output,
    with_payload_selector::SelectorOptions, Condition, CreateCollection,
    CreateFieldIndexCollection, DeletePoints, Distance, FieldType, Filter, Fusion, Modifier,
    PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, PointsSelector, PrefetchQuery,
    Query, QueryPoints, Range, ScoredPoint, ScrollPoints, SparseVectorConfig, SparseVectorParams,
    UpsertPoints, Value, VectorInput, VectorParams, VectorParamsMap, VectorsConfig,
    WithPayloadSelector, WithVectorsSelector, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::json;

use crate::sparse::{Bm25Encoder, Bm25Params, SparseVec};
use crate::DENSE;

/// Name of the sparse (BM25) vector in every remote point.
pub const SPARSE: &str = "bm25";

/// Environment variable the API key is read from.
pub const API_KEY_ENV: &str = "QDRANT_API_KEY";

fn remote_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::stage("qdrant", format!("{what}: {e}"))
}

/// Where and how to reach a Qdrant deployment, parsed from a store URL:
/// `qdrant+grpc://host:6334/collection?shards=3&replication=2&write_consistency=2`
/// (`qdrant+grpcs://` for TLS).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// `http://host:port` or `https://host:port`, as qdrant-client takes it.
    pub endpoint: String,
    /// Collection name.
    pub collection: String,
    /// API key (from [`API_KEY_ENV`] by default; never printed).
    pub api_key: Option<String>,
    /// Shards of a new collection (server default when unset).
    pub shards: Option<u32>,
    /// Copies of each shard in a new collection.
    pub replication: Option<u32>,
    /// Replicas that must acknowledge a write, for a new collection.
    pub write_consistency: Option<u32>,
    /// Ordering guarantee of each write (weak, medium, strong).
    pub ordering: WriteOrderingType,
    /// Most bytes of points per upsert request.
    pub batch_bytes: usize,
    /// Attempts after the first for a request that failed transiently.
    pub retries: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Candidates each prefetch contributes to a hybrid query.
    pub candidates: u64,
    /// BM25 parameters of the sparse vectors.
    pub bm25: Bm25Params,
}

impl RemoteConfig {
    /// True when `spec` names a remote store (`qdrant+grpc://` or `qdrant+grpcs://`).
    pub fn is_remote(spec: &str) -> bool {
        spec.starts_with("qdrant+grpc://") || spec.starts_with("qdrant+grpcs://")
    }

    /// Parse a store URL; the API key comes from [`API_KEY_ENV`] when set.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::InvalidInput(format!(
                "store {spec:?}: {why}; write qdrant+grpc://HOST[:PORT][/COLLECTION][?shards=N&replication=N&write_consistency=N&ordering=weak|medium|strong] (qdrant+grpcs:// for TLS)"
            ))
        };
        let (tls, rest) = if let Some(r) = spec.strip_prefix("qdrant+grpcs://") {
            (true, r)
        } else if let Some(r) = spec.strip_prefix("qdrant+grpc://") {
            (false, r)
        } else {
            return Err(bad("not a qdrant+grpc:// URL".into()));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad(format!(
                "put the API key in the {API_KEY_ENV} environment variable, not in the URL"
            )));
        }
        if authority.is_empty() {
            return Err(bad("no host".into()));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed '[' in the host".into()))?;
                (format!("[{h}]"), after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(format!("port {p:?} is not a port number")))?,
            None => 6334,
        };
        let host_port = format!("{host}:{port}");
        let collection = path.trim_matches('/');
        let collection = if collection.is_empty() {
            "magpie".to_string()
        } else {
            collection.to_string()
        };
        if !collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || collection.len() > 255
        {
            return Err(bad(format!(
                "collection name {collection:?} may only have letters, digits, '_' and '-'"
            )));
        }
        let mut cfg = RemoteConfig {
            endpoint: format!("{}://{host_port}", if tls { "https" } else { "http" }),
            collection,
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            shards: None,
            replication: None,
            write_consistency: None,
            ordering: WriteOrderingType::Weak,
            batch_bytes: 4 << 20,
            retries: 8,
            timeout: Duration::from_secs(30),
            candidates: 100,
            bm25: Bm25Params::default(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {pair:?} has no value")))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("{k}={v:?}: expected a whole number ≥ 1")))
            };
            match k {
                "shards" => cfg.shards = Some(num(v)?),
                "replication" => cfg.replication = Some(num(v)?),
                "write_consistency" => cfg.write_consistency = Some(num(v)?),
                "retries" => {
                    cfg.retries = v
                        .parse()
                        .map_err(|_| bad(format!("retries={v:?}: expected a number")))?
                }
                "batch_bytes" => cfg.batch_bytes = num(v)? as usize,
                "timeout_s" => cfg.timeout = Duration::from_secs(num(v)? as u64),
                "candidates" => cfg.candidates = num(v)? as u64,
                "ordering" => {
                    cfg.ordering = match v {
                        "weak" => WriteOrderingType::Weak,
                        "medium" => WriteOrderingType::Medium,
                        "strong" => WriteOrderingType::Strong,
                        _ => {
                            return Err(bad(format!("ordering={v:?}: use weak, medium or strong")))
                        }
                    }
                }
                _ => return Err(bad(format!("unknown option {k:?}"))),
            }
        }
        if let (Some(w), Some(r)) = (cfg.write_consistency, cfg.replication) {
            if w > r {
                return Err(bad(format!(
                    "write_consistency {w} is more than the {r} replicas"
                )));
            }
        }
        Ok(cfg)
    }

    /// The URL without secrets, for messages and the index settings.
    pub fn display_url(&self) -> String {
        let (scheme, hp) = self
            .endpoint
            .split_once("://")
            .expect("endpoint has a scheme");
        let s = if scheme == "https" {
            "qdrant+grpcs"
        } else {
            "qdrant+grpc"
        };
        format!("{s}://{hp}/{}", self.collection)
    }

    /// The request that creates the collection for `dim`-dimensional vectors.
    pub fn create_collection_request(&self, dim: usize) -> CreateCollection {
        let mut dense = HashMap::new();
        dense.insert(
            DENSE.to_string(),
            VectorParams {
                size: dim as u64,
                distance: Distance::Cosine as i32,
                ..Default::default()
            },
        );
        let mut sparse = HashMap::new();
        sparse.insert(
            SPARSE.to_string(),
            SparseVectorParams {
                modifier: Some(Modifier::Idf as i32),
                ..Default::default()
            },
        );
        CreateCollection {
            collection_name: self.collection.clone(),
            vectors_config: Some(VectorsConfig {
                config: Some(qdrant_client::qdrant::vectors_config::Config::ParamsMap(
                    VectorParamsMap { map: dense },
                )),
            }),
            sparse_vectors_config: Some(SparseVectorConfig { map: sparse }),
            shard_number: self.shards,
            replication_factor: self.replication,
            write_consistency_factor: self.write_consistency,
            ..Default::default()
        }
    }

    fn ordering(&self) -> Option<WriteOrdering> {
        Some(WriteOrdering {
            r#type: self.ordering as i32,
        })
    }

    /// The request that indexes a payload field.
    pub fn field_index_request(&self, key: &str, ty: FieldType) -> CreateFieldIndexCollection {
        CreateFieldIndexCollection {
            collection_name: self.collection.clone(),
            wait: Some(true),
            field_name: key.to_string(),
            field_type: Some(ty as i32),
            ordering: self.ordering(),
            ..Default::default()
        }
    }

    /// Upsert requests for these points, each under [`Self::batch_bytes`]
    /// (a single point over the limit goes alone).
    pub fn upsert_requests(&self, points: Vec<PointStruct>) -> Vec<UpsertPoints> {
        use prost::Message;
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for p in points {
            let len = p.encoded_len() + 8;
            if !batch.is_empty() && bytes + len > self.batch_bytes {
                out.push(self.upsert_request(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += len;
            batch.push(p);
        }
        if !batch.is_empty() {
            out.push(self.upsert_request(batch));
        }
        out
    }

    fn upsert_request(&self, points: Vec<PointStruct>) -> UpsertPoints {
        UpsertPoints {
            collection_name: self.collection.clone(),
            wait: Some(true),
            points,
            ordering: self.ordering(),
            ..Default::default()
        }
    }

    /// The request that deletes every point of these documents.
    pub fn delete_docs_request(&self, doc_ids: &[String]) -> DeletePoints {
        self.delete_request(PointsSelectorOneOf::Filter(Filter::must([
            Condition::matches("doc_id", doc_ids.to_vec()),
        ])))
    }

    /// The request that deletes these chunks' points.
    pub fn delete_chunks_request(&self, chunk_ids: &[String]) -> DeletePoints {
        self.delete_request(PointsSelectorOneOf::Points(PointsIdsList {
            ids: chunk_ids
                .iter()
                .map(|c| PointId::from(c.as_str()))
                .collect(),
        }))
    }

    fn delete_request(&self, sel: PointsSelectorOneOf) -> DeletePoints {
        DeletePoints {
            collection_name: self.collection.clone(),
            wait: Some(true),
            points: Some(PointsSelector {
                points_selector_one_of: Some(sel),
            }),
            ordering: self.ordering(),
            ..Default::default()
        }
    }

    fn query_base(&self, k: usize, filter: Option<Filter>) -> QueryPoints {
        QueryPoints {
            collection_name: self.collection.clone(),
            limit: Some(k as u64),
            filter,
            with_payload: Some(WithPayloadSelector {
                selector_options: Some(SelectorOptions::Include(PayloadIncludeSelector {
                    fields: vec!["chunk".into()],
                })),
            }),
            ..Default::default()
        }
    }

    /// Nearest neighbours of `vector` among the points `filter` accepts.
    pub fn dense_query(&self, vector: &[f32], k: usize, filter: &MFilter) -> Result<QueryPoints> {
        let mut q = self.query_base(k, remote_filter(filter)?);
        q.query = Some(Query::new_nearest(VectorInput::new_dense(vector.to_vec())));
        q.using = Some(DENSE.into());
        Ok(q)
    }

    /// BM25 through the sparse vector (scores from the server's IDF).
    pub fn sparse_query(
        &self,
        terms: &SparseVec,
        k: usize,
        filter: &MFilter,
    ) -> Result<QueryPoints> {
        let mut q = self.query_base(k, remote_filter(filter)?);
        q.query = Some(Query::new_nearest(VectorInput::new_sparse(
            terms.indices.clone(),
            terms.values.clone(),
        )));
        q.using = Some(SPARSE.into());
        Ok(q)
    }

    /// Dense and sparse prefetches fused by RRF on the server, one request.
    pub fn hybrid_query(
        &self,
        vector: &[f32],
        terms: &SparseVec,
        k: usize,
        filter: &MFilter,
    ) -> Result<QueryPoints> {
        let f = remote_filter(filter)?;
        let n = self.candidates.max(k as u64);
        let mut prefetch = vec![PrefetchQuery {
            query: Some(Query::new_nearest(VectorInput::new_dense(vector.to_vec()))),
            using: Some(DENSE.into()),
            filter: f.clone(),
            limit: Some(n),
            ..Default::default()
        }];
        if !terms.is_empty() {
            prefetch.push(PrefetchQuery {
                query: Some(Query::new_nearest(VectorInput::new_sparse(
                    terms.indices.clone(),
                    terms.values.clone(),
                ))),
                using: Some(SPARSE.into()),
                filter: f.clone(),
                limit: Some(n),
                ..Default::default()
            });
        }
        let mut q = self.query_base(k, f);
        q.prefetch = prefetch;
        q.query = Some(Query::new_fusion(Fusion::Rrf));
        Ok(q)
    }

    /// One page of a scroll through every point (payload, optionally vectors).
    pub fn scroll_request(&self, offset: Option<PointId>, vectors: bool) -> ScrollPoints {
        ScrollPoints {
            collection_name: self.collection.clone(),
            offset,
            limit: Some(256),
            with_payload: Some(WithPayloadSelector {
                selector_options: Some(if vectors {
                    SelectorOptions::Enable(true)
                } else {
                    SelectorOptions::Include(PayloadIncludeSelector {
                        fields: vec!["doc_id".into(), "doc_hash".into()],
                    })
                }),
            }),
            with_vectors: Some(WithVectorsSelector {
                selector_options: Some(if vectors {
                    qdrant_client::qdrant::with_vectors_selector::SelectorOptions::Include(
                        qdrant_client::qdrant::VectorsSelector {
                            names: vec![DENSE.to_string()],
                        },
                    )
                } else {
                    qdrant_client::qdrant::with_vectors_selector::SelectorOptions::Enable(false)
                }),
            }),
            ..Default::default()
        }
    }
}

/// Qdrant's form of a magpie filter: each clause a `must`; an equality is a
/// `should` over the value's text, integer and boolean readings (the rule of
/// [`Clause::Eq`]), a range a numeric range condition.
pub fn remote_filter(filter: &MFilter) -> Result<Option<Filter>> {
    if filter.is_empty() {
        return Ok(None);
    }
    filter.validate()?;
    let mut must = Vec::new();
    for clause in &filter.clauses {
        match clause {
            Clause::Eq { field, values } => {
                let key = field.payload_key();
                let mut should = vec![Condition::matches(key.clone(), values.clone())];
                let (ints, bools): (Vec<_>, Vec<_>) = values
                    .iter()
                    .map(|v| magpie_core::filter::readings(v))
                    .unzip();
                let ints: Vec<i64> = ints.into_iter().flatten().collect();
                if !ints.is_empty() {
                    should.push(Condition::matches(key.clone(), ints));
                }
                for b in bools.into_iter().flatten() {
                    should.push(Condition::matches(key.clone(), b));
                }
                must.push(if should.len() == 1 {
                    should.pop().expect("one")
                } else {
                    Condition::from(Filter::should(should))
                });
            }
            Clause::Range { field, bounds: b } => must.push(Condition::range(
                field.payload_key(),
                Range {
                    gt: b.gt,
                    gte: b.gte,
                    lt: b.lt,
                    lte: b.lte,
                },
            )),
        }
    }
    Ok(Some(Filter::must(must)))
}

/// A chunk as a remote point: both vectors and the shared payload.
pub fn chunk_point(chunk: &Chunk, vector: &[f32], sparse: &SparseVec) -> Result<PointStruct> {
    uuid::Uuid::parse_str(&chunk.id)
        .map_err(|e| Error::InvalidInput(format!("chunk id {:?} is not a UUID: {e}", chunk.id)))?;
    let payload = Payload::try_from(json!({
        "doc_id": chunk.doc_id,
        "doc_hash": chunk.doc_hash,
        "source": chunk.source,
        "chunk": chunk,
    }))
    .map_err(|e| remote_err("building the payload", e))?;
    let mut vectors: HashMap<String, qdrant_client::qdrant::Vector> = HashMap::new();
    vectors.insert(
        DENSE.into(),
        qdrant_client::qdrant::Vector::new_dense(vector.to_vec()),
    );
    if !sparse.is_empty() {
        vectors.insert(
            SPARSE.into(),
            qdrant_client::qdrant::Vector::new_sparse(
                sparse.indices.clone(),
                sparse.values.clone(),
            ),
        );
    }
    Ok(PointStruct::new(chunk.id.as_str(), vectors, payload))
}

fn point_id_string(id: &Option<PointId>) -> String {
    match id.as_ref().and_then(|p| p.point_id_options.as_ref()) {
        Some(PointIdOptions::Uuid(u)) => u.clone(),
        Some(PointIdOptions::Num(n)) => n.to_string(),
        None => String::new(),
    }
}

fn payload_chunk(id: &Option<PointId>, payload: &HashMap<String, Value>) -> Result<Chunk> {
    let v = payload.get("chunk").ok_or_else(|| {
        remote_err(
            "reading a point",
            format!(
                "point {} has no chunk payload: not a magpie collection",
                point_id_string(id)
            ),
        )
    })?;
    let json = serde_json::to_value(v).map_err(|e| remote_err("reading a point", e))?;
    serde_json::from_value(json).map_err(|e| {
        remote_err(
            "reading a point",
            format!(
                "point {} has a damaged chunk payload: {e}",
                point_id_string(id)
            ),
        )
    })
}

fn hits(points: Vec<ScoredPoint>) -> Result<Vec<Hit>> {
    points
        .into_iter()
        .map(|p| {
            Ok(Hit {
                chunk: payload_chunk(&p.id, &p.payload)?,
                score: p.score,
                snippet: None,
            })
        })
        .collect()
}

/// Whether a failed request may succeed if sent again.
pub fn is_transient(e: &QdrantError) -> bool {
    use tonic::Code;
    match e {
        QdrantError::ResourceExhaustedError { .. } => true,
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
            ) || (matches!(status.code(), Code::Unknown | Code::Internal) && {
                // A cluster node relays a peer's outage as an internal error,
                // and a node that has just come back answers from shards it
                // has not loaded yet ("Local shard 0 not found") or replicas
                // still recovering; both pass within seconds.
                let m = status.message().to_lowercase();
                [
                    "transport",
                    "unavailable",
                    "connect error",
                    "connection refused",
                    "local shard",
                    "no active replica",
                    "is not active",
                    "is dead",
                    "not ready",
                ]
                .iter()
                .any(|w| m.contains(w))
            })
        }
        _ => false,
    }
}

fn explain(what: &str, endpoint: &str, e: QdrantError) -> Error {
    if let QdrantError::ResponseError { status } = &e {
        let hint = match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                format!("; set {API_KEY_ENV} to a key the server accepts")
            }
            tonic::Code::Unavailable => {
                format!("; is Qdrant running at {endpoint} with its gRPC port (6334) reachable?")
            }
            _ => String::new(),
        };
        return remote_err(
            what,
            format!("{}: {}{hint}", status.code(), status.message()),
        );
    }
    remote_err(what, e)
}

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

/// Send a request, again after a backoff while it fails transiently.
pub(crate) async fn retry<T, F, Fut>(cfg: &RemoteConfig, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, QdrantError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < cfg.retries && is_transient(&e) => {
                let wait = match &e {
                    QdrantError::ResourceExhaustedError {
                        retry_after_seconds,
                        ..
                    } => Duration::from_secs((*retry_after_seconds).clamp(1, 30)),
                    _ => backoff(attempt),
                };
                tracing::warn!(what, attempt, ?wait, error = %e, "qdrant request failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) if is_transient(&e) => {
                return Err(Error::Unavailable(format!(
                    "{}: still failing after {} retries ({}); bring the Qdrant node(s) back \
                     and run again (what was committed is intact), or raise `retries=` in \
                     the store URL",
                    cfg.display_url(),
                    cfg.retries,
                    explain(what, &cfg.endpoint, e)
                )))
            }
            Err(e) => return Err(explain(what, &cfg.endpoint, e)),
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(5)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // Up to 25% jitter so retrying clients do not move in step.
    Duration::from_millis(base + nanos % (base / 4 + 1))
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

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{chunk_id_for, Span};
    use qdrant_client::qdrant::{condition::ConditionOneOf, query, r#match::MatchValue};

    fn cfg(s: &str) -> RemoteConfig {
        RemoteConfig::parse(s).unwrap()
    }

    #[test]
    fn store_urls_parse_with_defaults_options_and_tls() {
        let c = cfg("qdrant+grpc://localhost");
        assert_eq!(c.endpoint, "http://localhost:6334");
        assert_eq!(c.collection, "magpie");
        assert_eq!(c.display_url(), "qdrant+grpc://localhost:6334/magpie");
        let c = cfg("qdrant+grpcs://q.example:7000/docs?shards=6&replication=3&write_consistency=2&ordering=strong&batch_bytes=1000");
        assert_eq!(c.endpoint, "https://q.example:7000");
        assert_eq!(c.collection, "docs");
        assert_eq!(
            (c.shards, c.replication, c.write_consistency),
            (Some(6), Some(3), Some(2))
        );
        assert_eq!(c.ordering, WriteOrderingType::Strong);
        assert_eq!(c.batch_bytes, 1000);
        let c = cfg("qdrant+grpc://[::1]:6334/x");
        assert_eq!(c.endpoint, "http://[::1]:6334");
        for (bad, says) in [
            ("http://localhost:6334", "not a qdrant+grpc"),
            ("qdrant+grpc://key@host", "QDRANT_API_KEY"),
            ("qdrant+grpc://host:abc", "not a port"),
            ("qdrant+grpc://host/a b", "collection name"),
            ("qdrant+grpc://host?shards=0", "whole number"),
            ("qdrant+grpc://host?colour=red", "unknown option"),
            (
                "qdrant+grpc://host?replication=1&write_consistency=2",
                "more than",
            ),
            ("qdrant+grpc://host?ordering=fast", "weak, medium or strong"),
        ] {
            let e = RemoteConfig::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_collection_has_named_dense_and_idf_sparse_vectors_and_cluster_factors() {
        let c = cfg("qdrant+grpc://h/c?shards=3&replication=2&write_consistency=2");
        let r = c.create_collection_request(384);
        assert_eq!(r.collection_name, "c");
        let Some(qdrant_client::qdrant::vectors_config::Config::ParamsMap(m)) =
            r.vectors_config.unwrap().config
        else {
            panic!("named vectors expected")
        };
        assert_eq!(m.map[DENSE].size, 384);
        assert_eq!(m.map[DENSE].distance, Distance::Cosine as i32);
        assert_eq!(
            r.sparse_vectors_config.unwrap().map[SPARSE].modifier,
            Some(Modifier::Idf as i32)
        );
        assert_eq!(r.shard_number, Some(3));
        assert_eq!(r.replication_factor, Some(2));
        assert_eq!(r.write_consistency_factor, Some(2));
        let f = c.field_index_request("chunk.metadata.year", FieldType::Integer);
        assert_eq!(f.field_type, Some(FieldType::Integer as i32));
        assert_eq!(f.wait, Some(true));
    }

    fn chunk(doc: &str, i: usize, text: &str) -> Chunk {
        Chunk {
            id: chunk_id_for(doc, "h", i),
            doc_id: doc.into(),
            doc_hash: "h".into(),
            source: format!("{doc}.md"),
            index: i,
            text: text.into(),
            span: Span::default(),
            heading_path: vec![],
            title: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn points_carry_both_vectors_and_the_chunk_and_batches_respect_the_byte_limit() {
        let enc = Bm25Encoder::default();
        let c = chunk("d", 0, "alpha beta beta");
        let p = chunk_point(&c, &[0.5; 8], &enc.document(&c.text)).unwrap();
        assert_eq!(point_id_string(&p.id), c.id, "the point id is the chunk id");
        let back = payload_chunk(&p.id, &p.payload).unwrap();
        assert_eq!(back, c, "the payload round-trips the chunk");
        assert_eq!(p.payload["doc_id"].as_str().map(|s| s.as_str()), Some("d"));
        let Some(qdrant_client::qdrant::vectors::VectorsOptions::Vectors(named)) =
            p.vectors.as_ref().unwrap().vectors_options.clone()
        else {
            panic!("named vectors")
        };
        assert!(named.vectors.contains_key(DENSE) && named.vectors.contains_key(SPARSE));

        let mut c2 = cfg("qdrant+grpc://h");
        let points: Vec<_> = (0..50)
            .map(|i| {
                let c = chunk("d", i, &"word ".repeat(100));
                chunk_point(&c, &[0.1; 384], &enc.document(&c.text)).unwrap()
            })
            .collect();
        use prost::Message;
        let one = points[0].encoded_len();
        c2.batch_bytes = one * 10 + 100;
        let reqs = c2.upsert_requests(points);
        assert!(reqs.len() >= 5, "{} requests", reqs.len());
        assert_eq!(reqs.iter().map(|r| r.points.len()).sum::<usize>(), 50);
        for r in &reqs {
            assert!(r.points.iter().map(|p| p.encoded_len() + 8).sum::<usize>() <= c2.batch_bytes);
            assert_eq!(r.wait, Some(true));
        }
        let bad = chunk_point(
            &Chunk {
                id: "nope".into(),
                ..c.clone()
            },
            &[0.0],
            &SparseVec::default(),
        );
        assert!(bad.unwrap_err().to_string().contains("not a UUID"));
    }

    #[test]
    fn hybrid_is_one_request_with_two_prefetches_fused_by_rrf() {
        let c = cfg("qdrant+grpc://h/c?candidates=40");
        let terms = Bm25Encoder::default().query("alpha beta");
        let f = MFilter::parse_all(["source=a.md"]).unwrap();
        let q = c.hybrid_query(&[0.1, 0.2], &terms, 10, &f).unwrap();
        assert_eq!(q.prefetch.len(), 2);
        assert_eq!(q.prefetch[0].using.as_deref(), Some(DENSE));
        assert_eq!(q.prefetch[1].using.as_deref(), Some(SPARSE));
        assert!(q
            .prefetch
            .iter()
            .all(|p| p.limit == Some(40) && p.filter.is_some()));
        assert_eq!(
            q.query.unwrap().variant,
            Some(query::Variant::Fusion(Fusion::Rrf as i32))
        );
        assert_eq!(q.limit, Some(10));
        let q = c
            .hybrid_query(&[0.1, 0.2], &SparseVec::default(), 50, &MFilter::none())
            .unwrap();
        assert_eq!(
            q.prefetch.len(),
            1,
            "no sparse prefetch for a query of stop words"
        );
        assert_eq!(q.prefetch[0].limit, Some(50), "at least k candidates");
        assert!(q.filter.is_none());
    }

    #[test]
    fn filters_become_must_clauses_with_typed_readings() {
        let f = MFilter::parse_all([
            "doc=d1",
            "meta.year=2020|x",
            "meta.score>=0.5",
            "meta.draft=false",
        ])
        .unwrap();
        let rf = remote_filter(&f).unwrap().unwrap();
        assert_eq!(rf.must.len(), 4);
        let field = |c: &Condition| match c.condition_one_of.as_ref().unwrap() {
            ConditionOneOf::Field(fc) => fc.clone(),
            other => panic!("field condition expected, got {other:?}"),
        };
        let doc = field(&rf.must[0]);
        assert_eq!(doc.key, "doc_id");
        assert!(matches!(
            doc.r#match.unwrap().match_value,
            Some(MatchValue::Keywords(_))
        ));
        let ConditionOneOf::Filter(year) = rf.must[1].condition_one_of.clone().unwrap() else {
            panic!("a should over typed readings")
        };
        assert_eq!(year.should.len(), 2, "keywords and integers");
        assert_eq!(field(&year.should[0]).key, "chunk.metadata.year");
        let score = field(&rf.must[2]);
        assert_eq!(score.range.unwrap().gte, Some(0.5));
        let ConditionOneOf::Filter(draft) = rf.must[3].condition_one_of.clone().unwrap() else {
            panic!()
        };
        assert_eq!(draft.should.len(), 2, "text and boolean");
        assert!(remote_filter(&MFilter::none()).unwrap().is_none());
    }

    #[test]
    fn deletes_are_by_document_filter_or_point_ids() {
        let c = cfg("qdrant+grpc://h/c");
        let d = c.delete_docs_request(&["a".into(), "b".into()]);
        let Some(PointsSelectorOneOf::Filter(f)) = d.points.unwrap().points_selector_one_of else {
            panic!()
        };
        assert_eq!(f.must.len(), 1);
        let id = chunk_id_for("a", "h", 0);
        let d = c.delete_chunks_request(std::slice::from_ref(&id));
        let Some(PointsSelectorOneOf::Points(p)) = d.points.unwrap().points_selector_one_of else {
            panic!()
        };
        assert_eq!(point_id_string(&Some(p.ids[0].clone())), id);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let st = |code| QdrantError::ResponseError {
            status: tonic::Status::new(code, "x"),
        };
        assert!(is_transient(&st(tonic::Code::Unavailable)));
        assert!(is_transient(&st(tonic::Code::DeadlineExceeded)));
        assert!(!is_transient(&st(tonic::Code::InvalidArgument)));
        assert!(!is_transient(&st(tonic::Code::NotFound)));
        assert!(!is_transient(&st(tonic::Code::Unauthenticated)));
        assert!(!is_transient(&st(tonic::Code::Internal)));
        // What a node just back from an outage answered before it had loaded
        // its shards (seen in CI): retried, not the end of an indexing run.
        let recovering = QdrantError::ResponseError {
            status: tonic::Status::new(
                tonic::Code::Internal,
                "Service internal error: 1 of 1 read operations failed:\n  \
                 Service internal error: Local shard 0 not found",
            ),
        };
        assert!(is_transient(&recovering));
        for attempt in 0..12 {
            let b = backoff(attempt);
            let base = (200u64 << attempt.min(5)).min(5_000);
            assert!(
                b >= Duration::from_millis(base) && b <= Duration::from_millis(base + base / 4),
                "attempt {attempt}: {b:?}"
            );
        }
    }
}
