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

fn chunk_from_payload(id: &PointId, payload: Option<&Payload>) -> Result<Chunk> {
    let v = payload
        .and_then(|p| p.0.get("chunk"))
        .ok_or_else(|| err(QdrantStoreError::Payload(id.to_string())))?;
    serde_json::from_value(v.clone()).map_err(|_| err(QdrantStoreError::Payload(id.to_string())))
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
            let shard = EdgeShard::load(dir, None).map_err(|e| {
                let msg = e.to_string();
                if msg.contains("WouldBlock") {
                    // The write-ahead log is locked: another process has the index open.
                    Error::Index(format!(
                        "the vector index in {} is in use by another process (a running \
                         `docqa serve` or `docqa index`?); stop it, or use its HTTP API",
                        dir.display()
                    ))
                } else {
                    Error::Index(format!(
                        "the vector index in {} cannot be opened ({msg}); remove the index \
                         directory and index again",
                        dir.display()
                    ))
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
            let guard = shard
                .lock()
                .map_err(|_| Error::stage("vector store", "lock poisoned by an earlier panic"))?;
            let s = guard
                .as_ref()
                .ok_or_else(|| Error::stage("vector store", "store is closed"))?;
            f(s)
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

impl Drop for EdgeStore {
    fn drop(&mut self) {
        if let Ok(mut g) = self.shard.lock() {
            // EdgeShard flushes on drop.
            g.take();
        }
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
        if chunks.len() != vectors.len() {
            return Err(Error::InvalidInput(format!(
                "{} chunks but {} vectors",
                chunks.len(),
                vectors.len()
            )));
        }
        let mut points = Vec::with_capacity(chunks.len());
        for (i, (c, v)) in chunks.iter().zip(vectors).enumerate() {
            if v.len() != self.dim {
                return Err(err(QdrantStoreError::BadVector {
                    index: i,
                    got: v.len(),
                    expected: self.dim,
                }));
            }
            let payload = json!({
                "doc_id": c.doc_id,
                "doc_hash": c.doc_hash,
                "source": c.source,
                "chunk": c,
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
                    filter: None,
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
