//! What magpie sends Qdrant (collections, points, queries, filters) and how
//! it reads points back as chunks.

use std::collections::HashMap;

use magpie_core::{Chunk, Clause, Error, Filter as MFilter, Hit, Result};
use qdrant_client::qdrant::{
    point_id::PointIdOptions, points_selector::PointsSelectorOneOf,
    with_payload_selector::SelectorOptions, Condition, CreateCollection,
    CreateFieldIndexCollection, DeletePoints, Distance, FieldType, Filter, Fusion, Modifier,
    PayloadIncludeSelector, PointId, PointStruct, PointsIdsList, PointsSelector, PrefetchQuery,
    Query, QueryPoints, Range, ScoredPoint, ScrollPoints, SparseVectorConfig, SparseVectorParams,
    UpsertPoints, Value, VectorInput, VectorParams, VectorParamsMap, VectorsConfig,
    WithPayloadSelector, WithVectorsSelector, WriteOrdering,
};
use qdrant_client::Payload;
use serde_json::json;

use crate::sparse::SparseVec;
use crate::DENSE;

use super::retry::remote_err;
use super::{RemoteConfig, SPARSE};

impl RemoteConfig {
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

    pub(super) fn ordering(&self) -> Option<WriteOrdering> {
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

    pub(super) fn upsert_request(&self, points: Vec<PointStruct>) -> UpsertPoints {
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

    pub(super) fn delete_request(&self, sel: PointsSelectorOneOf) -> DeletePoints {
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

    pub(super) fn query_base(&self, k: usize, filter: Option<Filter>) -> QueryPoints {
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

pub(super) fn point_id_string(id: &Option<PointId>) -> String {
    match id.as_ref().and_then(|p| p.point_id_options.as_ref()) {
        Some(PointIdOptions::Uuid(u)) => u.clone(),
        Some(PointIdOptions::Num(n)) => n.to_string(),
        None => String::new(),
    }
}

pub(super) fn payload_chunk(
    id: &Option<PointId>,
    payload: &HashMap<String, Value>,
) -> Result<Chunk> {
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

pub(super) fn hits(points: Vec<ScoredPoint>) -> Result<Vec<Hit>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::Bm25Encoder;
    use magpie_core::{chunk_id_for, Span};
    use qdrant_client::qdrant::{condition::ConditionOneOf, query, r#match::MatchValue};

    fn cfg(s: &str) -> RemoteConfig {
        RemoteConfig::parse(s).unwrap()
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
}
