//! A stand-in for a Qdrant server, kept for the one thing a real server
//! cannot be made to do on demand: fail requests with UNAVAILABLE at a chosen
//! moment, so the remote store's retries and its error messages can be tested.
//! Every other test of the remote path runs against the real server
//! ([`real_qdrant`]: the one `scripts/test.sh` starts from
//! `../shared/tools/qdrant`, or any named by `QDRANT_URL`) and says SKIPPED
//! when there is none.
//!
//! It speaks the parts of Qdrant's gRPC API magpie's remote store uses
//! (collections with named dense and sparse vectors, payload indexes, upsert,
//! delete, scroll, count, and the Query API with prefetches, RRF fusion and
//! filters), in memory, exact (brute force), on a local port. Semantics follow
//! Qdrant's documentation: cosine vectors are normalised on insert; a sparse
//! vector with the IDF modifier scores `Σ q·d·ln(1 + (N − n + 0.5)/(n + 0.5))`;
//! RRF sums `1/(k + rank)` (k = 2, Qdrant's default); a list payload matches
//! when any element does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ::qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use ::qdrant_client::qdrant::points_server::{Points, PointsServer};
use ::qdrant_client::qdrant::*;
use serde_json::Value as Json;
use tonic::{Request, Response, Status};

fn unimplemented(name: &str) -> Status {
    Status::unimplemented(format!("the stand-in does not implement {name}"))
}

#[derive(Clone, Default)]
struct StoredPoint {
    payload: HashMap<String, Value>,
    dense: HashMap<String, Vec<f32>>,
    sparse: HashMap<String, BTreeMap<u32, f32>>,
}

#[derive(Default)]
struct Collection {
    config: Option<CollectionConfig>,
    dense: HashMap<String, (u64, i32)>,
    sparse: HashMap<String, bool>,
    payload_schema: HashMap<String, PayloadSchemaInfo>,
    points: BTreeMap<String, StoredPoint>,
}

/// Counters a test can read.
#[derive(Default, Debug)]
pub struct Stats {
    /// Upsert requests received (including failed ones).
    pub upserts: AtomicUsize,
    /// Requests failed on purpose.
    pub injected: AtomicUsize,
}

#[derive(Default)]
struct State {
    collections: Mutex<HashMap<String, Collection>>,
    fail_next: AtomicUsize,
    stats: Stats,
    api_key: Option<String>,
}

/// A running stand-in server.
#[derive(Clone)]
pub struct StandIn {
    state: Arc<State>,
    addr: SocketAddr,
}

impl StandIn {
    /// Start on a free local port (`api_key`: demand this key from clients).
    pub async fn start(api_key: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a local port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            api_key,
            ..Default::default()
        });
        let svc = Svc(state.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    CollectionsServer::new(svc.clone())
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
                .add_service(
                    PointsServer::new(svc)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20),
                )
                .serve_with_incoming(incoming)
                .await
                .expect("stand-in server");
        });
        Self { state, addr }
    }

    /// Start it on a runtime of its own thread (for synchronous tests).
    pub fn start_in_background(api_key: Option<String>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tx.send(StandIn::start(api_key).await).expect("send");
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("stand-in started")
    }

    /// A magpie store URL for `collection` on this server.
    pub fn store_url(&self, collection: &str) -> String {
        format!("qdrant+grpc://{}/{collection}", self.addr)
    }

    /// Fail the next `n` upsert or query requests with UNAVAILABLE.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// Points in `collection` (None when it does not exist).
    pub fn point_count(&self, collection: &str) -> Option<usize> {
        let cs = self.state.collections.lock().expect("lock");
        cs.get(collection).map(|c| c.points.len())
    }

    /// The payload fields `collection` has indexes on, with their types.
    pub fn payload_indexes(&self, collection: &str) -> Vec<(String, PayloadSchemaType)> {
        let cs = self.state.collections.lock().expect("lock");
        let mut v: Vec<_> = cs
            .get(collection)
            .map(|c| {
                c.payload_schema
                    .iter()
                    .map(|(k, i)| {
                        (
                            k.clone(),
                            PayloadSchemaType::try_from(i.data_type)
                                .unwrap_or(PayloadSchemaType::UnknownType),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The creation parameters of `collection`.
    pub fn collection_params(&self, collection: &str) -> Option<CollectionParams> {
        let cs = self.state.collections.lock().expect("lock");
        cs.get(collection)
            .and_then(|c| c.config.as_ref())
            .and_then(|c| c.params.clone())
    }
}

/// The real Qdrant server named by `QDRANT_URL` (`http://HOST:6334`, the gRPC
/// port), as a label naming its version and a magpie store URL for
/// `collection`; without one, a loud notice that the test is SKIPPED against a
/// real server. A `QDRANT_URL` that does not answer is a test failure.
pub fn real_qdrant(collection: &str) -> Option<(String, String)> {
    let url = match std::env::var("QDRANT_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let msg = "\n*** SKIPPED against a real Qdrant server: QDRANT_URL is not set. \
                       scripts/test.sh starts one from ../shared/tools/qdrant when that \
                       folder is there; or set QDRANT_URL=http://HOST:6334 (the gRPC port). ***\n";
            println!("{msg}");
            eprintln!("{msg}");
            return None;
        }
    };
    let version = server_version(&url)
        .unwrap_or_else(|e| panic!("QDRANT_URL={url} is set but the server does not answer: {e}"));
    let host_port = url
        .split("://")
        .last()
        .unwrap_or(&url)
        .trim_end_matches('/');
    let scheme = if url.starts_with("https://") {
        "qdrant+grpcs"
    } else {
        "qdrant+grpc"
    };
    let label = format!("real Qdrant {version} at {url}");
    eprintln!("--- {label}");
    Some((label, format!("{scheme}://{host_port}/{collection}")))
}

/// The version a Qdrant server at `url` (gRPC) reports.
pub fn server_version(url: &str) -> Result<String, String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = ::qdrant_client::Qdrant::from_url(&url)
                .timeout(std::time::Duration::from_secs(10))
                .skip_compatibility_check()
                .build()
                .map_err(|e| e.to_string())?;
            client
                .health_check()
                .await
                .map(|r| r.version)
                .map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "the health check panicked".to_string())?
}

#[derive(Clone)]
struct Svc(Arc<State>);

fn pid(id: &Option<PointId>) -> Result<String, Status> {
    match id.as_ref().and_then(|p| p.point_id_options.as_ref()) {
        Some(point_id::PointIdOptions::Uuid(u)) => Ok(u.to_lowercase()),
        Some(point_id::PointIdOptions::Num(n)) => Ok(n.to_string()),
        None => Err(Status::invalid_argument("point without an id")),
    }
}

fn to_pid(s: &str) -> PointId {
    match s.parse::<u64>() {
        Ok(n) => PointId::from(n),
        Err(_) => PointId::from(s),
    }
}

fn json_of(v: &Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

fn lookup<'a>(payload: &'a Json, key: &str) -> Vec<&'a Json> {
    let mut cur = vec![payload];
    for part in key.split('.') {
        let mut next = Vec::new();
        for v in cur {
            match v {
                Json::Object(m) => {
                    if let Some(x) = m.get(part) {
                        next.push(x);
                    }
                }
                Json::Array(items) => {
                    for i in items {
                        if let Some(x) = i.get(part) {
                            next.push(x);
                        }
                    }
                }
                _ => {}
            }
        }
        cur = next;
    }
    // A list value matches when any element does.
    cur.into_iter()
        .flat_map(|v| match v {
            Json::Array(items) => items.iter().collect::<Vec<_>>(),
            v => vec![v],
        })
        .collect()
}

fn field_matches(payload: &Json, fc: &FieldCondition) -> bool {
    let vals = lookup(payload, &fc.key);
    if let Some(m) = fc.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
        use r#match::MatchValue as M;
        let ok = vals.iter().any(|v| match m {
            M::Keyword(k) => v.as_str() == Some(k.as_str()),
            M::Keywords(ks) => v
                .as_str()
                .is_some_and(|s| ks.strings.iter().any(|k| k == s)),
            M::Integer(i) => v.as_i64() == Some(*i),
            M::Integers(is) => v.as_i64().is_some_and(|x| is.integers.contains(&x)),
            M::Boolean(b) => v.as_bool() == Some(*b),
            _ => false,
        });
        if !ok {
            return false;
        }
    }
    if let Some(r) = &fc.range {
        let ok = vals.iter().any(|v| {
            v.as_f64().is_some_and(|x| {
                r.gt.is_none_or(|b| x > b)
                    && r.gte.is_none_or(|b| x >= b)
                    && r.lt.is_none_or(|b| x < b)
                    && r.lte.is_none_or(|b| x <= b)
            })
        });
        if !ok {
            return false;
        }
    }
    true
}

fn condition_holds(payload: &Json, c: &Condition) -> Result<bool, Status> {
    match &c.condition_one_of {
        Some(condition::ConditionOneOf::Field(fc)) => Ok(field_matches(payload, fc)),
        Some(condition::ConditionOneOf::Filter(f)) => filter_holds(payload, f),
        _ => Err(Status::invalid_argument(
            "the stand-in supports field and nested filter conditions",
        )),
    }
}

fn filter_holds(payload: &Json, f: &Filter) -> Result<bool, Status> {
    for c in &f.must {
        if !condition_holds(payload, c)? {
            return Ok(false);
        }
    }
    for c in &f.must_not {
        if condition_holds(payload, c)? {
            return Ok(false);
        }
    }
    if !f.should.is_empty() {
        let mut any = false;
        for c in &f.should {
            any |= condition_holds(payload, c)?;
        }
        if !any {
            return Ok(false);
        }
    }
    Ok(true)
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[allow(deprecated)]
fn vector_of(v: &Vector) -> Result<Result<Vec<f32>, BTreeMap<u32, f32>>, Status> {
    match &v.vector {
        Some(vector::Vector::Dense(d)) => Ok(Ok(d.data.clone())),
        Some(vector::Vector::Sparse(s)) => Ok(Err(s
            .indices
            .iter()
            .copied()
            .zip(s.values.iter().copied())
            .collect())),
        Some(_) => Err(Status::invalid_argument("unsupported vector kind")),
        None => match &v.indices {
            Some(ix) => Ok(Err(ix
                .data
                .iter()
                .copied()
                .zip(v.data.iter().copied())
                .collect())),
            None => Ok(Ok(v.data.clone())),
        },
    }
}

fn payload_out(p: &StoredPoint, sel: &Option<WithPayloadSelector>) -> HashMap<String, Value> {
    use with_payload_selector::SelectorOptions as S;
    match sel.as_ref().and_then(|s| s.selector_options.as_ref()) {
        Some(S::Enable(true)) => p.payload.clone(),
        Some(S::Include(inc)) => p
            .payload
            .iter()
            .filter(|(k, _)| inc.fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        Some(S::Exclude(exc)) => p
            .payload
            .iter()
            .filter(|(k, _)| !exc.fields.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => HashMap::new(),
    }
}

fn vectors_out(p: &StoredPoint, sel: &Option<WithVectorsSelector>) -> Option<VectorsOutput> {
    use with_vectors_selector::SelectorOptions as S;
    let names: Vec<String> = match sel.as_ref().and_then(|s| s.selector_options.as_ref()) {
        Some(S::Enable(true)) => p.dense.keys().cloned().collect(),
        Some(S::Include(v)) => v.names.clone(),
        _ => return None,
    };
    if names.is_empty() {
        return None;
    }
    let mut out = HashMap::new();
    for n in names {
        if let Some(d) = p.dense.get(&n) {
            out.insert(
                n,
                VectorOutput {
                    vector: Some(vector_output::Vector::Dense(DenseVector {
                        data: d.clone(),
                    })),
                    ..Default::default()
                },
            );
        }
    }
    Some(VectorsOutput {
        vectors_options: Some(vectors_output::VectorsOptions::Vectors(
            NamedVectorsOutput { vectors: out },
        )),
    })
}

fn done() -> PointsOperationResponse {
    PointsOperationResponse {
        result: Some(UpdateResult {
            operation_id: Some(0),
            status: UpdateStatus::Completed as i32,
        }),
        ..Default::default()
    }
}

impl Svc {
    fn check_key<T>(&self, r: &Request<T>) -> Result<(), Status> {
        if let Some(key) = &self.0.api_key {
            let got = r.metadata().get("api-key").and_then(|v| v.to_str().ok());
            if got != Some(key.as_str()) {
                return Err(Status::unauthenticated(
                    "Must provide an API key or an Authorization bearer token",
                ));
            }
        }
        Ok(())
    }

    fn fault(&self) -> Result<(), Status> {
        let f = &self.0.fail_next;
        if f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.0.stats.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unavailable("injected fault: service unavailable"));
        }
        Ok(())
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Collection) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut cs = self.0.collections.lock().expect("lock");
        let c = cs
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("Collection `{name}` doesn't exist!")))?;
        f(c)
    }

    fn collections_get(
        &self,
        r: GetCollectionInfoRequest,
    ) -> Result<Response<GetCollectionInfoResponse>, Status> {
        self.with(&r.collection_name, |c| {
            Ok(Response::new(GetCollectionInfoResponse {
                result: Some(CollectionInfo {
                    status: CollectionStatus::Green as i32,
                    config: c.config.clone(),
                    payload_schema: c.payload_schema.clone(),
                    points_count: Some(c.points.len() as u64),
                    ..Default::default()
                }),
                time: 0.0,
            }))
        })
    }

    fn collections_list(
        &self,
        _: ListCollectionsRequest,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        let cs = self.0.collections.lock().expect("lock");
        Ok(Response::new(ListCollectionsResponse {
            collections: cs
                .keys()
                .map(|n| CollectionDescription { name: n.clone() })
                .collect(),
            time: 0.0,
        }))
    }

    fn collections_create(
        &self,
        r: CreateCollection,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        let mut cs = self.0.collections.lock().expect("lock");
        if cs.contains_key(&r.collection_name) {
            return Err(Status::already_exists(format!(
                "Collection `{}` already exists!",
                r.collection_name
            )));
        }
        let mut c = Collection::default();
        match r.vectors_config.as_ref().and_then(|v| v.config.as_ref()) {
            Some(vectors_config::Config::ParamsMap(m)) => {
                for (n, p) in &m.map {
                    if p.distance != Distance::Cosine as i32 {
                        return Err(Status::invalid_argument(
                            "the stand-in supports cosine only",
                        ));
                    }
                    c.dense.insert(n.clone(), (p.size, p.distance));
                }
            }
            _ => return Err(Status::invalid_argument("the stand-in wants named vectors")),
        }
        if let Some(s) = &r.sparse_vectors_config {
            for (n, p) in &s.map {
                c.sparse
                    .insert(n.clone(), p.modifier == Some(Modifier::Idf as i32));
            }
        }
        c.config = Some(CollectionConfig {
            params: Some(CollectionParams {
                shard_number: r.shard_number.unwrap_or(1),
                vectors_config: r.vectors_config.clone(),
                replication_factor: r.replication_factor,
                write_consistency_factor: r.write_consistency_factor,
                sparse_vectors_config: r.sparse_vectors_config.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        cs.insert(r.collection_name.clone(), c);
        Ok(Response::new(CollectionOperationResponse {
            result: true,
            time: 0.0,
        }))
    }

    fn collections_delete(
        &self,
        r: DeleteCollection,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        let mut cs = self.0.collections.lock().expect("lock");
        let existed = cs.remove(&r.collection_name).is_some();
        Ok(Response::new(CollectionOperationResponse {
            result: existed,
            time: 0.0,
        }))
    }

    fn collections_collection_exists(
        &self,
        r: CollectionExistsRequest,
    ) -> Result<Response<CollectionExistsResponse>, Status> {
        let cs = self.0.collections.lock().expect("lock");
        Ok(Response::new(CollectionExistsResponse {
            result: Some(CollectionExists {
                exists: cs.contains_key(&r.collection_name),
            }),
            time: 0.0,
        }))
    }

    fn points_create_field_index(
        &self,
        r: CreateFieldIndexCollection,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        let ty = match FieldType::try_from(r.field_type.unwrap_or(0)) {
            Ok(FieldType::Keyword) => PayloadSchemaType::Keyword,
            Ok(FieldType::Integer) => PayloadSchemaType::Integer,
            Ok(FieldType::Float) => PayloadSchemaType::Float,
            Ok(FieldType::Bool) => PayloadSchemaType::Bool,
            _ => return Err(Status::invalid_argument("unsupported field type")),
        };
        self.with(&r.collection_name, |c| {
            c.payload_schema.insert(
                r.field_name.clone(),
                PayloadSchemaInfo {
                    data_type: ty as i32,
                    ..Default::default()
                },
            );
            Ok(Response::new(done()))
        })
    }

    fn points_upsert(&self, r: UpsertPoints) -> Result<Response<PointsOperationResponse>, Status> {
        self.0.stats.upserts.fetch_add(1, Ordering::SeqCst);
        self.fault()?;
        self.with(&r.collection_name, |c| {
            let mut staged = Vec::with_capacity(r.points.len());
            for p in &r.points {
                let id = pid(&p.id)?;
                let mut sp = StoredPoint { payload: p.payload.clone(), ..Default::default() };
                match p.vectors.as_ref().and_then(|v| v.vectors_options.as_ref()) {
                    Some(vectors::VectorsOptions::Vectors(named)) => {
                        for (n, v) in &named.vectors {
                            match vector_of(v)? {
                                Ok(mut d) => {
                                    let (size, _) = c.dense.get(n).ok_or_else(|| {
                                        Status::invalid_argument(format!("Wrong input: Not existing vector name error: {n}"))
                                    })?;
                                    if d.len() as u64 != *size {
                                        return Err(Status::invalid_argument(format!(
                                            "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                                            d.len()
                                        )));
                                    }
                                    normalise(&mut d);
                                    sp.dense.insert(n.clone(), d);
                                }
                                Err(s) => {
                                    if !c.sparse.contains_key(n) {
                                        return Err(Status::invalid_argument(format!("Wrong input: Not existing vector name error: {n}")));
                                    }
                                    sp.sparse.insert(n.clone(), s);
                                }
                            }
                        }
                    }
                    _ => return Err(Status::invalid_argument("the stand-in wants named vectors")),
                }
                staged.push((id, sp));
            }
            // All or nothing, like one Qdrant operation.
            for (id, sp) in staged {
                c.points.insert(id, sp);
            }
            Ok(Response::new(done()))
        })
    }

    fn points_delete(&self, r: DeletePoints) -> Result<Response<PointsOperationResponse>, Status> {
        self.with(&r.collection_name, |c| {
            match r.points.and_then(|p| p.points_selector_one_of) {
                Some(points_selector::PointsSelectorOneOf::Points(ids)) => {
                    for id in &ids.ids {
                        c.points.remove(&pid(&Some(id.clone()))?);
                    }
                }
                Some(points_selector::PointsSelectorOneOf::Filter(f)) => {
                    let mut gone = Vec::new();
                    for (id, p) in &c.points {
                        if filter_holds(&payload_json(p), &f)? {
                            gone.push(id.clone());
                        }
                    }
                    for id in gone {
                        c.points.remove(&id);
                    }
                }
                None => return Err(Status::invalid_argument("no points selector")),
            }
            Ok(Response::new(done()))
        })
    }

    fn points_scroll(&self, r: ScrollPoints) -> Result<Response<ScrollResponse>, Status> {
        self.with(&r.collection_name, |c| {
            let limit = r.limit.unwrap_or(10) as usize;
            let from = match &r.offset {
                Some(o) => Some(pid(&Some(o.clone()))?),
                None => None,
            };
            let mut out = Vec::new();
            let mut next = None;
            for (id, p) in c.points.range(from.unwrap_or_default()..) {
                if let Some(f) = &r.filter {
                    if !filter_holds(&payload_json(p), f)? {
                        continue;
                    }
                }
                if out.len() == limit {
                    next = Some(to_pid(id));
                    break;
                }
                out.push(RetrievedPoint {
                    id: Some(to_pid(id)),
                    payload: payload_out(p, &r.with_payload),
                    vectors: vectors_out(p, &r.with_vectors),
                    ..Default::default()
                });
            }
            Ok(Response::new(ScrollResponse {
                next_page_offset: next,
                result: out,
                ..Default::default()
            }))
        })
    }

    fn points_count(&self, r: CountPoints) -> Result<Response<CountResponse>, Status> {
        self.with(&r.collection_name, |c| {
            let mut n = 0;
            for p in c.points.values() {
                if r.filter
                    .as_ref()
                    .map(|f| filter_holds(&payload_json(p), f))
                    .transpose()?
                    .unwrap_or(true)
                {
                    n += 1;
                }
            }
            Ok(Response::new(CountResponse {
                result: Some(CountResult { count: n }),
                ..Default::default()
            }))
        })
    }

    fn points_query(&self, r: QueryPoints) -> Result<Response<QueryResponse>, Status> {
        self.fault()?;
        self.with(&r.collection_name, |c| {
            let ranked = run_query(
                c,
                &r.prefetch,
                r.query.as_ref(),
                r.using.as_deref(),
                r.filter.as_ref(),
                r.limit.unwrap_or(10) as usize,
            )?;
            let result = ranked
                .into_iter()
                .map(|(id, score)| {
                    let p = &c.points[&id];
                    ScoredPoint {
                        id: Some(to_pid(&id)),
                        payload: payload_out(p, &r.with_payload),
                        score,
                        vectors: vectors_out(p, &r.with_vectors),
                        ..Default::default()
                    }
                })
                .collect();
            Ok(Response::new(QueryResponse {
                result,
                ..Default::default()
            }))
        })
    }
}

fn payload_json(p: &StoredPoint) -> Json {
    Json::Object(
        p.payload
            .iter()
            .map(|(k, v)| (k.clone(), json_of(v)))
            .collect(),
    )
}

fn run_query(
    c: &Collection,
    prefetch: &[PrefetchQuery],
    query: Option<&Query>,
    using: Option<&str>,
    filter: Option<&Filter>,
    limit: usize,
) -> Result<Vec<(String, f32)>, Status> {
    let lists: Vec<Vec<(String, f32)>> = prefetch
        .iter()
        .map(|p| {
            run_query(
                c,
                &p.prefetch,
                p.query.as_ref(),
                p.using.as_deref(),
                p.filter.as_ref().or(filter),
                p.limit.unwrap_or(10) as usize,
            )
        })
        .collect::<Result<_, _>>()?;
    let accepted = |id: &str| -> Result<bool, Status> {
        match filter {
            Some(f) => filter_holds(&payload_json(&c.points[id]), f),
            None => Ok(true),
        }
    };
    let mut scored: Vec<(String, f32)> = match query.and_then(|q| q.variant.as_ref()) {
        Some(query::Variant::Fusion(f)) if *f == Fusion::Rrf as i32 => {
            let mut acc: HashMap<String, f32> = HashMap::new();
            for l in &lists {
                for (rank, (id, _)) in l.iter().enumerate() {
                    *acc.entry(id.clone()).or_default() += 1.0 / (2.0 + rank as f32 + 1.0);
                }
            }
            let mut v = Vec::new();
            for (id, s) in acc {
                if accepted(&id)? {
                    v.push((id, s));
                }
            }
            v
        }
        Some(query::Variant::Nearest(input)) => {
            let name = using.unwrap_or("");
            let candidates: Vec<&String> = if prefetch.is_empty() {
                c.points.keys().collect()
            } else {
                let mut seen: Vec<&String> = lists.iter().flatten().map(|(id, _)| id).collect();
                seen.sort();
                seen.dedup();
                seen
            };
            match input.variant.as_ref() {
                Some(vector_input::Variant::Dense(d)) => {
                    let mut q = d.data.clone();
                    let (size, _) = c.dense.get(name).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "Wrong input: Not existing vector name error: {name}"
                        ))
                    })?;
                    if q.len() as u64 != *size {
                        return Err(Status::invalid_argument(format!(
                            "Wrong input: Vector dimension error: expected dim: {size}, got {}",
                            q.len()
                        )));
                    }
                    normalise(&mut q);
                    let mut v = Vec::new();
                    for id in candidates {
                        if let Some(d) = c.points[id].dense.get(name) {
                            if accepted(id)? {
                                v.push((id.clone(), d.iter().zip(&q).map(|(a, b)| a * b).sum()));
                            }
                        }
                    }
                    v
                }
                Some(vector_input::Variant::Sparse(s)) => {
                    let idf = *c.sparse.get(name).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "Wrong input: Not existing vector name error: {name}"
                        ))
                    })?;
                    let n_total = c
                        .points
                        .values()
                        .filter(|p| p.sparse.contains_key(name))
                        .count() as f32;
                    let mut df: HashMap<u32, f32> = HashMap::new();
                    for p in c.points.values() {
                        if let Some(d) = p.sparse.get(name) {
                            for i in &s.indices {
                                if d.contains_key(i) {
                                    *df.entry(*i).or_default() += 1.0;
                                }
                            }
                        }
                    }
                    let mut v = Vec::new();
                    for id in candidates {
                        let Some(doc) = c.points[id].sparse.get(name) else {
                            continue;
                        };
                        let mut score = 0.0;
                        let mut hit = false;
                        for (i, qv) in s.indices.iter().zip(&s.values) {
                            if let Some(dv) = doc.get(i) {
                                hit = true;
                                let w = if idf {
                                    let n = df.get(i).copied().unwrap_or(0.0);
                                    (1.0 + (n_total - n + 0.5) / (n + 0.5)).ln()
                                } else {
                                    1.0
                                };
                                score += qv * dv * w;
                            }
                        }
                        if hit && accepted(id)? {
                            v.push((id.clone(), score));
                        }
                    }
                    v
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "the stand-in supports dense and sparse nearest queries",
                    ))
                }
            }
        }
        _ => {
            return Err(Status::invalid_argument(
                "the stand-in supports nearest and RRF queries",
            ))
        }
    };
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scored.truncate(limit);
    Ok(scored)
}

#[tonic::async_trait]
impl Collections for Svc {
    async fn get(
        &self,
        r: Request<GetCollectionInfoRequest>,
    ) -> Result<Response<GetCollectionInfoResponse>, Status> {
        self.check_key(&r)?;
        self.collections_get(r.into_inner())
    }
    async fn list(
        &self,
        r: Request<ListCollectionsRequest>,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        self.check_key(&r)?;
        self.collections_list(r.into_inner())
    }
    async fn create(
        &self,
        r: Request<CreateCollection>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        self.check_key(&r)?;
        self.collections_create(r.into_inner())
    }
    async fn update(
        &self,
        _: Request<UpdateCollection>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        Err(unimplemented("update"))
    }
    async fn delete(
        &self,
        r: Request<DeleteCollection>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        self.check_key(&r)?;
        self.collections_delete(r.into_inner())
    }
    async fn update_aliases(
        &self,
        _: Request<ChangeAliases>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        Err(unimplemented("update_aliases"))
    }
    async fn list_collection_aliases(
        &self,
        _: Request<ListCollectionAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        Err(unimplemented("list_collection_aliases"))
    }
    async fn list_aliases(
        &self,
        _: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        Err(unimplemented("list_aliases"))
    }
    async fn collection_cluster_info(
        &self,
        _: Request<CollectionClusterInfoRequest>,
    ) -> Result<Response<CollectionClusterInfoResponse>, Status> {
        Err(unimplemented("collection_cluster_info"))
    }
    async fn collection_exists(
        &self,
        r: Request<CollectionExistsRequest>,
    ) -> Result<Response<CollectionExistsResponse>, Status> {
        self.check_key(&r)?;
        self.collections_collection_exists(r.into_inner())
    }
    async fn update_collection_cluster_setup(
        &self,
        _: Request<UpdateCollectionClusterSetupRequest>,
    ) -> Result<Response<UpdateCollectionClusterSetupResponse>, Status> {
        Err(unimplemented("update_collection_cluster_setup"))
    }
    async fn create_shard_key(
        &self,
        _: Request<CreateShardKeyRequest>,
    ) -> Result<Response<CreateShardKeyResponse>, Status> {
        Err(unimplemented("create_shard_key"))
    }
    async fn delete_shard_key(
        &self,
        _: Request<DeleteShardKeyRequest>,
    ) -> Result<Response<DeleteShardKeyResponse>, Status> {
        Err(unimplemented("delete_shard_key"))
    }
    async fn list_shard_keys(
        &self,
        _: Request<ListShardKeysRequest>,
    ) -> Result<Response<ListShardKeysResponse>, Status> {
        Err(unimplemented("list_shard_keys"))
    }
}

#[tonic::async_trait]
impl Points for Svc {
    async fn upsert(
        &self,
        r: Request<UpsertPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.check_key(&r)?;
        self.points_upsert(r.into_inner())
    }
    async fn delete(
        &self,
        r: Request<DeletePoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.check_key(&r)?;
        self.points_delete(r.into_inner())
    }
    async fn get(&self, _: Request<GetPoints>) -> Result<Response<GetResponse>, Status> {
        Err(unimplemented("get"))
    }
    async fn update_vectors(
        &self,
        _: Request<UpdatePointVectors>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("update_vectors"))
    }
    async fn delete_vectors(
        &self,
        _: Request<DeletePointVectors>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("delete_vectors"))
    }
    async fn set_payload(
        &self,
        _: Request<SetPayloadPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("set_payload"))
    }
    async fn overwrite_payload(
        &self,
        _: Request<SetPayloadPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("overwrite_payload"))
    }
    async fn delete_payload(
        &self,
        _: Request<DeletePayloadPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("delete_payload"))
    }
    async fn clear_payload(
        &self,
        _: Request<ClearPayloadPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("clear_payload"))
    }
    async fn create_field_index(
        &self,
        r: Request<CreateFieldIndexCollection>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        self.check_key(&r)?;
        self.points_create_field_index(r.into_inner())
    }
    async fn delete_field_index(
        &self,
        _: Request<DeleteFieldIndexCollection>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("delete_field_index"))
    }
    async fn create_vector_name(
        &self,
        _: Request<CreateVectorNameRequest>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("create_vector_name"))
    }
    async fn delete_vector_name(
        &self,
        _: Request<DeleteVectorNameRequest>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        Err(unimplemented("delete_vector_name"))
    }
    async fn search(&self, _: Request<SearchPoints>) -> Result<Response<SearchResponse>, Status> {
        Err(unimplemented("search"))
    }
    async fn search_batch(
        &self,
        _: Request<SearchBatchPoints>,
    ) -> Result<Response<SearchBatchResponse>, Status> {
        Err(unimplemented("search_batch"))
    }
    async fn search_groups(
        &self,
        _: Request<SearchPointGroups>,
    ) -> Result<Response<SearchGroupsResponse>, Status> {
        Err(unimplemented("search_groups"))
    }
    async fn scroll(&self, r: Request<ScrollPoints>) -> Result<Response<ScrollResponse>, Status> {
        self.check_key(&r)?;
        self.points_scroll(r.into_inner())
    }
    async fn recommend(
        &self,
        _: Request<RecommendPoints>,
    ) -> Result<Response<RecommendResponse>, Status> {
        Err(unimplemented("recommend"))
    }
    async fn recommend_batch(
        &self,
        _: Request<RecommendBatchPoints>,
    ) -> Result<Response<RecommendBatchResponse>, Status> {
        Err(unimplemented("recommend_batch"))
    }
    async fn recommend_groups(
        &self,
        _: Request<RecommendPointGroups>,
    ) -> Result<Response<RecommendGroupsResponse>, Status> {
        Err(unimplemented("recommend_groups"))
    }
    async fn discover(
        &self,
        _: Request<DiscoverPoints>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        Err(unimplemented("discover"))
    }
    async fn discover_batch(
        &self,
        _: Request<DiscoverBatchPoints>,
    ) -> Result<Response<DiscoverBatchResponse>, Status> {
        Err(unimplemented("discover_batch"))
    }
    async fn count(&self, r: Request<CountPoints>) -> Result<Response<CountResponse>, Status> {
        self.check_key(&r)?;
        self.points_count(r.into_inner())
    }
    async fn update_batch(
        &self,
        _: Request<UpdateBatchPoints>,
    ) -> Result<Response<UpdateBatchResponse>, Status> {
        Err(unimplemented("update_batch"))
    }
    async fn query(&self, r: Request<QueryPoints>) -> Result<Response<QueryResponse>, Status> {
        self.check_key(&r)?;
        self.points_query(r.into_inner())
    }
    async fn query_batch(
        &self,
        _: Request<QueryBatchPoints>,
    ) -> Result<Response<QueryBatchResponse>, Status> {
        Err(unimplemented("query_batch"))
    }
    async fn query_groups(
        &self,
        _: Request<QueryPointGroups>,
    ) -> Result<Response<QueryGroupsResponse>, Status> {
        Err(unimplemented("query_groups"))
    }
    async fn facet(&self, _: Request<FacetCounts>) -> Result<Response<FacetResponse>, Status> {
        Err(unimplemented("facet"))
    }
    async fn search_matrix_pairs(
        &self,
        _: Request<SearchMatrixPoints>,
    ) -> Result<Response<SearchMatrixPairsResponse>, Status> {
        Err(unimplemented("search_matrix_pairs"))
    }
    async fn search_matrix_offsets(
        &self,
        _: Request<SearchMatrixPoints>,
    ) -> Result<Response<SearchMatrixOffsetsResponse>, Status> {
        Err(unimplemented("search_matrix_offsets"))
    }
}
