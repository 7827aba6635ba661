//! An index's state in the Qdrant deployment that holds its vectors, so that
//! several processes can serve and write one index: the document catalog
//! (versioned entries written conditionally), the index settings and the
//! indexing jobs, as points of a companion collection `<collection>__magpie`
//! that has no vectors.
//!
//! Each document is one point, keyed by its id, with a `version` that every
//! write raises by one. A write carries Qdrant's `update_filter` (`version`
//! still what the writer read) and strong ordering, so the shard's leader
//! applies it only if nobody wrote in between; reading the point back (it names
//! its writer) says whether this writer's version is the one kept. A removed
//! document leaves a tombstone with its version.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use magpie_core::{CasOutcome, CatalogEntry, CatalogStore, Error, Result, Versioned};
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, FieldType, Filter,
    GetPointsBuilder, PointId, PointStruct, RetrievedPoint, ScrollPointsBuilder,
    UpsertPointsBuilder, Value, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant};
use serde_json::json;

use crate::remote::{connect_client, retry, RemoteConfig};

/// The suffix of the companion collection's name.
pub const META_SUFFIX: &str = "__magpie";

/// Kinds of record in the companion collection.
const DOC: &str = "doc";
const SETTINGS: &str = "settings";

/// An index's catalog, settings and jobs in a Qdrant collection.
pub struct QdrantCatalog {
    client: Qdrant,
    cfg: RemoteConfig,
    name: String,
    writer: String,
    writes: AtomicU64,
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::stage("qdrant", format!("{what}: {e}"))
}

/// A stable point id for a record: a UUID made of blake3("kind\0key").
fn record_id(kind: &str, key: &str) -> PointId {
    let h = blake3::hash(format!("magpie-meta\0{kind}\0{key}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    PointId::from(uuid::Uuid::from_bytes(b).to_string())
}

fn json_of(payload: &HashMap<String, Value>, key: &str) -> Option<serde_json::Value> {
    payload.get(key).and_then(|v| serde_json::to_value(v).ok())
}

fn versioned(p: &RetrievedPoint) -> Result<(String, Versioned, String)> {
    let key = json_of(&p.payload, "key")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| err("reading the catalog", "a record without a key"))?;
    let version = json_of(&p.payload, "version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let writer = json_of(&p.payload, "writer")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let entry = match json_of(&p.payload, "entry") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<CatalogEntry>(v).map_err(|e| {
            err(
                "reading the catalog",
                format!("the entry of {key:?} is damaged ({e}); a repair rebuilds it"),
            )
        })?),
    };
    Ok((key, Versioned { version, entry }, writer))
}

impl QdrantCatalog {
    /// Connect to the deployment `cfg` names and create the companion
    /// collection if needed (one shard, replicated like the index's).
    pub async fn connect(cfg: &RemoteConfig) -> Result<Self> {
        let client = connect_client(cfg)?;
        let name = format!("{}{META_SUFFIX}", cfg.collection);
        let me = Self {
            client,
            cfg: cfg.clone(),
            writer: format!(
                "{}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
                uuid::Uuid::new_v4().simple()
            ),
            name,
            writes: AtomicU64::new(0),
        };
        me.ensure().await?;
        Ok(me)
    }

    async fn ensure(&self) -> Result<()> {
        let name = self.name.clone();
        let exists = retry(&self.cfg, "checking the catalog collection", || {
            self.client.collection_exists(&name)
        })
        .await?;
        if exists {
            return Ok(());
        }
        let mut req = CreateCollectionBuilder::new(&name).shard_number(1);
        if let Some(r) = self.cfg.replication {
            req = req.replication_factor(r);
        }
        if let Some(w) = self.cfg.write_consistency {
            req = req.write_consistency_factor(w);
        }
        if let Err(e) = self.client.create_collection(req).await {
            // Another process may have created it meanwhile.
            let exists = retry(&self.cfg, "checking the catalog collection", || {
                self.client.collection_exists(&name)
            })
            .await?;
            if !exists {
                return Err(err("creating the catalog collection", e));
            }
        }
        retry(&self.cfg, "indexing the catalog", || {
            self.client.create_field_index(
                CreateFieldIndexCollectionBuilder::new(&name, "kind", FieldType::Keyword)
                    .wait(true),
            )
        })
        .await?;
        tracing::info!(collection = %name, "created the catalog collection");
        Ok(())
    }

    /// The companion collection's name.
    pub fn collection(&self) -> &str {
        &self.name
    }

    async fn get_point(&self, kind: &str, key: &str) -> Result<Option<RetrievedPoint>> {
        let id = record_id(kind, key);
        let got = retry(&self.cfg, "reading the catalog", || {
            self.client
                .get_points(GetPointsBuilder::new(&self.name, vec![id.clone()]).with_payload(true))
        })
        .await?;
        Ok(got.result.into_iter().next())
    }

    async fn upsert(
        &self,
        kind: &str,
        key: &str,
        fields: serde_json::Value,
        only_if: Option<Filter>,
    ) -> Result<()> {
        let mut payload = json!({ "kind": kind, "key": key });
        if let (Some(p), serde_json::Value::Object(f)) = (payload.as_object_mut(), fields) {
            p.extend(f);
        }
        let payload = Payload::try_from(payload).map_err(|e| err("writing the catalog", e))?;
        let point = PointStruct::new(
            record_id(kind, key),
            HashMap::<String, qdrant_client::qdrant::Vector>::new(),
            payload,
        );
        retry(&self.cfg, "writing the catalog", || {
            let mut req = UpsertPointsBuilder::new(&self.name, vec![point.clone()])
                .wait(true)
                .ordering(WriteOrdering {
                    r#type: WriteOrderingType::Strong as i32,
                });
            if let Some(f) = &only_if {
                req = req.update_filter(f.clone());
            }
            self.client.upsert_points(req)
        })
        .await?;
        Ok(())
    }

    /// The index settings recorded here (the JSON an application stored).
    pub async fn settings(&self) -> Result<Option<serde_json::Value>> {
        Ok(self
            .get_point(SETTINGS, "index")
            .await?
            .and_then(|p| json_of(&p.payload, "value")))
    }

    /// Record `value` as the index settings unless some are recorded already;
    /// returns the settings recorded now (`value`, or the earlier ones).
    pub async fn init_settings(&self, value: &serde_json::Value) -> Result<serde_json::Value> {
        let first = Filter::must([Condition::matches("version", 0i64)]);
        self.upsert(
            SETTINGS,
            "index",
            json!({ "version": 1, "value": value }),
            Some(first),
        )
        .await?;
        self.settings()
            .await?
            .ok_or_else(|| err("recording the settings", "they did not stay"))
    }

    /// Store a record of `kind` (a job, say) under `key`, replacing it.
    pub async fn put_record(&self, kind: &str, key: &str, value: &serde_json::Value) -> Result<()> {
        self.upsert(kind, key, json!({ "value": value }), None)
            .await
    }

    /// A record of `kind` under `key`.
    pub async fn record(&self, kind: &str, key: &str) -> Result<Option<serde_json::Value>> {
        Ok(self
            .get_point(kind, key)
            .await?
            .and_then(|p| json_of(&p.payload, "value")))
    }

    /// All records of `kind`, by key.
    pub async fn records(&self, kind: &str) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut out = BTreeMap::new();
        for p in self.scroll(kind).await? {
            let key = json_of(&p.payload, "key").and_then(|v| v.as_str().map(str::to_string));
            if let (Some(k), Some(v)) = (key, json_of(&p.payload, "value")) {
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    async fn scroll(&self, kind: &str) -> Result<Vec<RetrievedPoint>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let page = retry(&self.cfg, "reading the catalog", || {
                let mut req = ScrollPointsBuilder::new(&self.name)
                    .filter(Filter::must([Condition::matches("kind", kind.to_string())]))
                    .limit(1000)
                    .with_payload(true)
                    .with_vectors(false);
                if let Some(o) = &offset {
                    req = req.offset(o.clone());
                }
                self.client.scroll(req)
            })
            .await?;
            out.extend(page.result);
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Delete the companion collection (with the index's collection, when a
    /// store is dropped).
    pub async fn drop_collection(&self) -> Result<()> {
        retry(&self.cfg, "dropping the catalog collection", || {
            self.client.delete_collection(&self.name)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl CatalogStore for QdrantCatalog {
    async fn load(&self) -> Result<BTreeMap<String, Versioned>> {
        let mut out = BTreeMap::new();
        for p in self.scroll(DOC).await? {
            let (key, v, _) = versioned(&p)?;
            if v.entry.is_some() {
                out.insert(key, v);
            }
        }
        Ok(out)
    }

    async fn get(&self, doc_id: &str) -> Result<Option<Versioned>> {
        match self.get_point(DOC, doc_id).await? {
            Some(p) => Ok(Some(versioned(&p)?.1)),
            None => Ok(None),
        }
    }

    async fn compare_and_set(
        &self,
        doc_id: &str,
        expected: u64,
        entry: Option<&CatalogEntry>,
    ) -> Result<CasOutcome> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{n}", self.writer);
        let next = expected + 1;
        let fields = json!({ "version": next, "writer": token, "entry": entry });
        // A point still at `expected` is replaced; one another writer moved on
        // is left alone; a missing one is created (expected 0 matches no point).
        let only_if = Filter::must([Condition::matches("version", expected as i64)]);
        self.upsert(DOC, doc_id, fields, Some(only_if)).await?;
        let now = self.get_point(DOC, doc_id).await?;
        match now {
            Some(p) => {
                let (_, v, writer) = versioned(&p)?;
                if writer == token && v.version == next {
                    Ok(CasOutcome::Written(next))
                } else {
                    Ok(CasOutcome::Conflict(Some(v)))
                }
            }
            None => Ok(CasOutcome::Conflict(None)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "the Qdrant collection {} ({})",
            self.name,
            self.cfg.display_url()
        )
    }
}
