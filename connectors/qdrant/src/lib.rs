//! magpie-qdrant: the vector store. Embedded on qdrant-edge (no server, data under
//! the index directory); the remote Qdrant cluster store shares its payload layout.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use magpie_core::{Chunk, Error, Hit, Result, StoredChunk, VectorStore};
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FieldCondition,
    FieldIndexOperations, Filter, Match, NamedQuery, Payload, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum,
    ScrollRequest, SearchRequest, UpdateOperation, ValueVariants, Vector, Vectors,
    WithPayloadInterface, WithVector,
};
use serde_json::json;

pub mod catalog;
pub mod remote;

pub mod sparse;

pub use catalog::QdrantCatalog;
pub use remote::{QdrantHybridRetriever, QdrantKeywords, QdrantStore, RemoteConfig};

/// Name of the dense vector in every point.
pub const DENSE: &str = "dense";

/// Errors of the vector store.
#[derive(Debug, thiserror::Error)]
pub enum QdrantStoreError {
    /// qdrant-edge reported an error.
    #[error("qdrant-edge: {0}")]
    Edge(String),
    /// The stored collection was made for another vector size.
    #[error("the vector index holds {stored}-dimensional vectors but the embedder makes {wanted}; index into a new directory or re-create it")]
    Dimension {
        /// Size on disk.
        stored: usize,
        /// Size requested.
        wanted: usize,
    },
    /// A vector has the wrong length.
    #[error("vector {index} has {got} dimensions, expected {expected}")]
    BadVector {
        /// Position in the batch.
        index: usize,
        /// Its length.
        got: usize,
        /// The store's dimension.
        expected: usize,
    },
    /// A stored point's payload is not a magpie chunk.
    #[error("point {0} has no valid chunk payload")]
    Payload(String),
}

fn err(e: impl Into<QdrantStoreError>) -> Error {
    Error::stage("vector store", e.into())
}

fn edge(e: impl std::fmt::Display) -> Error {
    err(QdrantStoreError::Edge(e.to_string()))
}

/// Embedded vector store on a qdrant-edge shard (cosine distance, HNSW).
pub struct EdgeStore {
    shard: Arc<Mutex<Option<EdgeShard>>>,
    dim: usize,
    path: PathBuf,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .finish()
    }
}

fn point_id(chunk_id: &str) -> Result<PointId> {
    Uuid::parse_str(chunk_id)
        .map(PointId::Uuid)
        .map_err(|e| Error::InvalidInput(format!("chunk id {chunk_id:?} is not a UUID: {e}")))
}

fn doc_filter(doc_ids: &[String]) -> Filter {
    Filter {
        should: Some(
            doc_ids
                .iter()
                .map(|d| {
                    Condition::Field(FieldCondition::new_match(
                        "doc_id".try_into().expect("static path"),
                        Match::new_value(ValueVariants::String(d.clone())),
                    ))
                })
                .collect(),
        ),
        min_should: None,
        must: None,
        must_not: None,
    }
}

fn json_path(key: &str) -> Result<qdrant_edge::JsonPath> {
    key.try_into()
        .map_err(|_| Error::InvalidInput(format!("{key:?} is not a valid payload path")))
}

/// The edge store's form of a magpie filter (see [`magpie_core::Filter`]).
fn edge_filter(filter: &magpie_core::Filter) -> Result<Filter> {
    use magpie_core::Clause;
    use qdrant_edge::external::ordered_float::OrderedFloat;
    filter.validate()?;
    let mut must = Vec::with_capacity(filter.clauses.len());
    for clause in &filter.clauses {
        match clause {
            Clause::Eq { field, values } => {
                let key = json_path(&field.payload_key())?;
                let mut should = Vec::new();
                for v in values {
                    for variant in value_variants(v) {
                        should.push(Condition::Field(FieldCondition::new_match(
                            key.clone(),
                            Match::new_value(variant),
                        )));
                    }
                }
                must.push(Condition::Filter(Filter {
                    should: Some(should),
                    min_should: None,
                    must: None,
                    must_not: None,
                }));
            }
            Clause::Range { field, bounds: b } => {
                let key = json_path(&field.payload_key())?;
                must.push(Condition::Field(FieldCondition::new_range(
                    key,
                    qdrant_edge::Range {
                        lt: b.lt.map(OrderedFloat),
                        gt: b.gt.map(OrderedFloat),
                        gte: b.gte.map(OrderedFloat),
                        lte: b.lte.map(OrderedFloat),
                    },
                )));
            }
        }
    }
    Ok(Filter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    })
}

/// The typed values a filter value matches: its text, and its integer or
/// boolean reading when it has one (the rule of [`magpie_core::Clause::Eq`]).
fn value_variants(v: &str) -> Vec<ValueVariants> {
    let (int, boolean) = magpie_core::filter::readings(v);
    let mut out = vec![ValueVariants::String(v.to_string())];
    out.extend(int.map(ValueVariants::Integer));
    out.extend(boolean.map(ValueVariants::Bool));
    out
}

/// One vector per chunk, each of the store's length.
fn check_batch(chunks: &[Chunk], vectors: &[Vec<f32>], dim: usize) -> Result<()> {
    if chunks.len() != vectors.len() {
        return Err(Error::InvalidInput(format!(
            "{} chunks but {} vectors",
            chunks.len(),
            vectors.len()
        )));
    }
    match vectors.iter().position(|v| v.len() != dim) {
        Some(index) => Err(err(QdrantStoreError::BadVector {
            index,
            got: vectors[index].len(),
            expected: dim,
        })),
        None => Ok(()),
    }
}

fn chunk_from_payload(id: &PointId, payload: Option<&Payload>) -> Result<Chunk> {
    let v = payload
        .and_then(|p| p.0.get("chunk"))
        .ok_or_else(|| err(QdrantStoreError::Payload(id.to_string())))?;
    serde_json::from_value(v.clone()).map_err(|_| err(QdrantStoreError::Payload(id.to_string())))
}

/// The error for a vector store whose files are damaged.
fn damaged_store(dir: &Path, why: &str) -> Error {
    Error::Index(format!(
        "the vector store in {} is damaged ({why}); a repair rebuilds it from the keyword \
         index",
        dir.display()
    ))
}

/// Check what qdrant-edge would trust blindly before it opens the store: the
/// id tracker's mapping log, whose internal ids size an allocation (a damaged
/// one asks for tens of GiB and aborts the process).
fn check_segment_files(dir: &Path) -> Result<()> {
    let Ok(segments) = std::fs::read_dir(dir.join("segments")) else {
        return Ok(());
    };
    for seg in segments.filter_map(|e| e.ok()) {
        let path = seg.path().join("mutable_id_tracker.mappings");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if let Err(why) = check_mappings(&bytes) {
            return Err(damaged_store(dir, &format!("{}: {why}", path.display())));
        }
    }
    Ok(())
}

/// Entries of a mapping log: a type byte (1 insert numeric id, 2 insert UUID,
/// 3 delete numeric, 4 delete UUID), the external id (8 or 16 bytes), and for
/// inserts the internal id (u32, little-endian). Internal ids are handed out
/// one per insert, so none can exceed the number of inserts logged. A torn
/// last entry (a crash while appending) is fine: qdrant-edge drops it.
fn check_mappings(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut inserts = 0u64;
    let mut max_internal = 0u64;
    let mut at = 0usize;
    while at < bytes.len() {
        let (id_len, insert) = match bytes[at] {
            1 => (8, true),
            2 => (16, true),
            3 => (8, false),
            4 => (16, false),
            b => return Err(format!("an entry of unknown type {b:#04x} at byte {at}")),
        };
        let len = 1 + id_len + if insert { 4 } else { 0 };
        let Some(entry) = bytes.get(at..at + len) else {
            break;
        };
        if insert {
            inserts += 1;
            let internal = u32::from_le_bytes(entry[1 + id_len..].try_into().expect("4 bytes"));
            max_internal = max_internal.max(u64::from(internal));
        }
        at += len;
    }
    if inserts > 0 && max_internal >= inserts.saturating_mul(2) + 1024 {
        return Err(format!(
            "internal id {max_internal} after only {inserts} inserts"
        ));
    }
    Ok(())
}

impl EdgeStore {
    /// Open the store in `dir`, creating it for `dim`-dimensional vectors if it does not exist.
    pub fn open(dir: impl AsRef<Path>, dim: usize) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let config = EdgeConfig::builder()
            .vector(
                DENSE,
                EdgeVectorParams::builder(dim, Distance::Cosine).build(),
            )
            .build();
        let existing = dir.join("edge_config.json").exists() || dir.join("segments").exists();
        let shard = if existing {
            check_segment_files(dir)?;
            let loaded = magpie_core::guard::catch("vector store", || EdgeShard::load(dir, None))
                .map_err(|e| damaged_store(dir, &e.to_string()))?;
            let shard = loaded.map_err(|e| {
                let msg = e.to_string();
                if msg.contains("WouldBlock") {
                    // The write-ahead log is locked: another process has the index open.
                    Error::Index(format!(
                        "the vector index in {} is in use by another process (a server or an \
                         indexing run?); stop it, or use its HTTP API",
                        dir.display()
                    ))
                } else {
                    damaged_store(dir, &msg)
                }
            })?;
            let stored = shard.config().vectors.get(DENSE).map(|p| p.size);
            match stored {
                Some(s) if s != dim => {
                    return Err(err(QdrantStoreError::Dimension {
                        stored: s,
                        wanted: dim,
                    }))
                }
                None => {
                    return Err(Error::Index(format!(
                        "{} holds no '{DENSE}' vectors: not a magpie index",
                        dir.display()
                    )))
                }
                _ => {}
            }
            shard
        } else {
            let shard = EdgeShard::new(dir, config).map_err(edge)?;
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: "doc_id".try_into().expect("static path"),
                        field_schema: Some(PayloadFieldSchema::FieldType(
                            PayloadSchemaType::Keyword,
                        )),
                    }),
                ))
                .map_err(edge)?;
            shard.flush();
            shard
        };
        Ok(Self {
            shard: Arc::new(Mutex::new(Some(shard))),
            dim,
            path: dir.to_path_buf(),
        })
    }

    /// Vector length.
    pub fn dimension(&self) -> usize {
        self.dim
    }

    async fn with_shard<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shard = self.shard.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside the store (a damaged segment) is this request's
            // error: caught while the lock is held, so the lock never poisons.
            let guard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let s = guard
                .as_ref()
                .ok_or_else(|| Error::stage("vector store", "store is closed"))?;
            magpie_core::guard::catch("vector store", || f(s)).map_err(|e| {
                Error::Index(format!(
                    "{e}: the vector store is damaged; a repair rebuilds it from the keyword index"
                ))
            })?
        })
        .await
        .map_err(|e| Error::stage("vector store", e))?
    }

    /// Number of stored points.
    pub async fn count(&self) -> Result<usize> {
        self.with_shard(|s| {
            s.count(qdrant_edge::CountRequest {
                filter: None,
                exact: true,
            })
            .map_err(edge)
        })
        .await
    }
}

/// A page of 256 points with payload and vectors, from `offset`.
fn whole_points(offset: Option<PointId>) -> ScrollRequest {
    ScrollRequest {
        offset,
        limit: Some(256),
        filter: None,
        with_payload: Some(WithPayloadInterface::Bool(true)),
        with_vector: WithVector::Bool(true),
        order_by: None,
    }
}

/// A point's dense vector, if it has one.
fn dense_of(v: Option<qdrant_edge::VectorStructInternal>) -> Option<Vec<f32>> {
    match v? {
        qdrant_edge::VectorStructInternal::Named(mut m) => match m.remove(DENSE)? {
            qdrant_edge::VectorInternal::Dense(d) => Some(d),
            _ => None,
        },
        qdrant_edge::VectorStructInternal::Single(d) => Some(d),
        _ => None,
    }
}

impl EdgeStore {
    /// Every chunk with its dense vector, a page at a time (for moving an
    /// index to another store without embedding again). `offset` is the id
    /// the previous page returned as next.
    pub async fn scroll_page(
        &self,
        offset: Option<String>,
    ) -> Result<(Vec<(Chunk, Vec<f32>)>, Option<String>)> {
        let offset = offset.map(|o| point_id(&o)).transpose()?;
        self.with_shard(move |s| {
            let (records, next) = s.scroll(whole_points(offset)).map_err(edge)?;
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                let chunk = chunk_from_payload(&r.id, r.payload.as_ref())?;
                let v = dense_of(r.vector)
                    .ok_or_else(|| err(QdrantStoreError::Payload(r.id.to_string())))?;
                out.push((chunk, v));
            }
            Ok((out, next.map(|n| n.to_string())))
        })
        .await
    }
}

impl EdgeStore {
    /// Read every point back: its payload must be a chunk, its vector finite,
    /// of the store's size, and match the fingerprint recorded when written.
    async fn verify_points(&self) -> Result<magpie_core::StoreHealth> {
        let dim = self.dim;
        self.with_shard(move |s| {
            let mut health = magpie_core::StoreHealth::default();
            let mut offset = None;
            loop {
                let (records, next) = s.scroll(whole_points(offset)).map_err(edge)?;
                for mut r in records {
                    let chunk = match chunk_from_payload(&r.id, r.payload.as_ref()) {
                        Ok(c) => c,
                        Err(_) => {
                            health.problems.push(format!(
                                "point {} has no readable chunk: its document is unknown",
                                r.id
                            ));
                            continue;
                        }
                    };
                    let vector = dense_of(r.vector.take());
                    let recorded: Option<Vec<f32>> = r
                        .payload
                        .as_ref()
                        .and_then(|p| p.0.get("fp"))
                        .and_then(|v| serde_json::from_value(v.clone()).ok());
                    let ok = match (&vector, &recorded) {
                        (Some(v), _) if v.len() != dim => false,
                        (Some(v), Some(fp)) => magpie_core::fingerprint_matches(v, fp),
                        (Some(v), None) => v.iter().all(|x| x.is_finite()),
                        (None, _) => false,
                    };
                    if ok {
                        health.chunks_read += 1;
                    } else {
                        health.damaged.push(StoredChunk {
                            chunk_id: chunk.id,
                            doc_id: chunk.doc_id,
                            doc_hash: chunk.doc_hash,
                        });
                    }
                }
                match next {
                    Some(n) => offset = Some(n),
                    None => break,
                }
            }
            Ok(health)
        })
        .await
    }
}

impl Drop for EdgeStore {
    fn drop(&mut self) {
        // EdgeShard flushes on drop.
        let shard = self.shard.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(shard)));
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        check_batch(chunks, vectors, self.dim)?;
        let mut points = Vec::with_capacity(chunks.len());
        for (c, v) in chunks.iter().zip(vectors) {
            let payload = json!({
                "doc_id": c.doc_id,
                "doc_hash": c.doc_hash,
                "source": c.source,
                "chunk": c,
                // Checked by `verify`: a vector damaged on disk is found.
                "fp": magpie_core::vector_fingerprint(v),
            });
            let p = PointStruct::new(
                point_id(&c.id)?,
                Vectors::new_named([(DENSE, Vector::new_dense(v.clone()))]),
                payload,
            );
            points.push(p.into());
        }
        self.with_shard(move |s| {
            s.update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(edge)
        })
        .await
    }

    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let filters: Vec<Filter> = doc_ids.chunks(256).map(doc_filter).collect();
        self.with_shard(move |s| {
            for f in filters {
                s.update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(f),
                ))
                .map_err(edge)?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()> {
        if chunk_ids.is_empty() {
            return Ok(());
        }
        let ids = chunk_ids
            .iter()
            .map(|c| point_id(c))
            .collect::<Result<Vec<_>>>()?;
        self.with_shard(move |s| {
            s.update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
            .map_err(edge)
        })
        .await
    }

    async fn search(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.search_filtered(vector, k, &magpie_core::Filter::none())
            .await
    }

    async fn search_filtered(
        &self,
        vector: &[f32],
        k: usize,
        filter: &magpie_core::Filter,
    ) -> Result<Vec<Hit>> {
        let filter = if filter.is_empty() {
            None
        } else {
            Some(edge_filter(filter)?)
        };
        if vector.len() != self.dim {
            return Err(err(QdrantStoreError::BadVector {
                index: 0,
                got: vector.len(),
                expected: self.dim,
            }));
        }
        let v = vector.to_vec();
        self.with_shard(move |s| {
            let points = s
                .search(SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery {
                        query: Vector::new_dense(v).into(),
                        using: Some(DENSE.into()),
                    }),
                    filter,
                    params: None,
                    limit: k,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: Some(WithVector::Bool(false)),
                    score_threshold: None,
                })
                .map_err(edge)?;
            points
                .iter()
                .map(|p| {
                    Ok(Hit {
                        chunk: chunk_from_payload(&p.id, p.payload.as_ref())?,
                        score: p.score,
                        snippet: None,
                    })
                })
                .collect()
        })
        .await
    }

    async fn commit(&self) -> Result<()> {
        self.with_shard(|s| {
            s.flush();
            Ok(())
        })
        .await
    }

    async fn verify(&self) -> Result<magpie_core::StoreHealth> {
        self.verify_points().await
    }

    async fn list_chunks(&self) -> Result<Vec<StoredChunk>> {
        self.with_shard(|s| {
            let mut out = Vec::new();
            let mut offset = None;
            loop {
                let (records, next) = s
                    .scroll(ScrollRequest {
                        offset,
                        limit: Some(1000),
                        filter: None,
                        with_payload: Some(WithPayloadInterface::Fields(vec![
                            "doc_id".try_into().expect("static path"),
                            "doc_hash".try_into().expect("static path"),
                        ])),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .map_err(edge)?;
                for r in records {
                    let get = |k: &str| {
                        r.payload
                            .as_ref()
                            .and_then(|p| p.0.get(k))
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                            .ok_or_else(|| err(QdrantStoreError::Payload(r.id.to_string())))
                    };
                    out.push(StoredChunk {
                        chunk_id: r.id.to_string(),
                        doc_id: get("doc_id")?,
                        doc_hash: get("doc_hash")?,
                    });
                }
                match next {
                    Some(n) => offset = Some(n),
                    None => break,
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod mapping_tests {
    use super::check_mappings;

    fn insert_uuid(internal: u32) -> Vec<u8> {
        let mut v = vec![2u8];
        v.extend_from_slice(&[0xAB; 16]);
        v.extend_from_slice(&internal.to_le_bytes());
        v
    }

    #[test]
    fn mapping_logs_are_checked_before_qdrant_edge_trusts_them() {
        let mut log: Vec<u8> = (0..10).flat_map(insert_uuid).collect();
        log.push(4);
        log.extend_from_slice(&[0xAB; 16]);
        assert!(check_mappings(&log).is_ok());
        // A torn last entry is a crash while appending, not damage.
        let mut torn = log.clone();
        torn.extend_from_slice(&insert_uuid(10)[..7]);
        assert!(check_mappings(&torn).is_ok());
        // An internal id from a flipped byte would size a huge allocation.
        let mut bad = log.clone();
        bad[17 + 3] = 0xFF;
        assert!(check_mappings(&bad).unwrap_err().contains("internal id"));
        let mut bad = log;
        bad[21] = 9;
        assert!(check_mappings(&bad).unwrap_err().contains("unknown type"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{chunk_id_for, Span};

    fn chunk(doc: &str, i: usize, text: &str) -> Chunk {
        Chunk {
            id: chunk_id_for(doc, "h", i),
            doc_id: doc.into(),
            doc_hash: "h".into(),
            source: format!("{doc}.txt"),
            index: i,
            text: text.into(),
            span: Span {
                byte_start: 0,
                byte_end: text.len(),
                line_start: 1,
                line_end: 1,
                ..Default::default()
            },
            heading_path: vec!["H".into()],
            title: None,
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn upsert_search_delete_persist() {
        let dir = tempfile::tempdir().unwrap();
        let a = chunk("a", 0, "alpha");
        let b = chunk("b", 0, "beta");
        {
            let s = EdgeStore::open(dir.path(), 3).unwrap();
            s.upsert(
                &[a.clone(), b.clone()],
                &[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]],
            )
            .await
            .unwrap();
            s.upsert(std::slice::from_ref(&a), &[vec![1.0, 0.1, 0.0]])
                .await
                .unwrap();
            s.commit().await.unwrap();
            let hits = s.search(&[0.9, 0.1, 0.0], 2).await.unwrap();
            assert_eq!(hits[0].chunk, a, "payload round-trips the whole chunk");
            assert_eq!(hits.len(), 2);
            assert_eq!(
                s.list_chunks().await.unwrap().len(),
                2,
                "upsert replaced, not duplicated"
            );
        }
        let s = EdgeStore::open(dir.path(), 3).unwrap();
        assert_eq!(s.count().await.unwrap(), 2, "persisted across reopen");
        s.delete_docs(&["a".into()]).await.unwrap();
        s.commit().await.unwrap();
        let left = s.list_chunks().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].doc_id, "b");
        drop(s);
        let err = EdgeStore::open(dir.path(), 4).unwrap_err();
        assert!(err.to_string().contains("3-dimensional"), "{err}");
    }

    #[tokio::test]
    async fn wrong_vector_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path(), 3).unwrap();
        let e = s
            .upsert(&[chunk("a", 0, "x")], &[vec![1.0]])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("expected 3"), "{e}");
        assert!(s.search(&[1.0], 1).await.is_err());
    }
}
