//! An index, its embedder and a language model behind an HTTP API
//! (documents, search, answers with citations, conversations,
//! OpenAI-compatible endpoints, metrics) and a web page: the server `docqa
//! serve` runs, for any application that opens a [`magpie::Index`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let dir = std::path::Path::new(".magpie");
//! let index = magpie::Index::open(dir)?;
//! let llm = magpie::Models::from_env().load_generator()?;
//! let config = magpie_server::ServeConfig::resolve(None, Default::default())?;
//! magpie_server::serve(dir, index, llm, None, config).await
//! # }
//! ```
//!
//! Documents sent to the server are written to `<index>/uploads/<job>/` before
//! the request is acknowledged and indexed by one background worker; what was
//! acknowledged but not yet indexed when the server stopped is indexed at the
//! next start.

mod answers;
mod auth;
mod config;
mod conversations;
mod documents;
mod errors;
mod indexer;
mod limits;
mod metrics;
mod net;
mod openai;
mod ops;
mod origin;
mod plugin_api;
mod search;

use answers::QueryRequest;
use auth::authorize;
pub use auth::Caller;
pub use errors::{ApiError, ApiJson};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use magpie_core::{Generator, IndexingPipeline};
use tokio::sync::Semaphore;

pub use config::{AnswerConfig, FileConfig, KeyEntry, Role, ServeConfig, Unauthenticated};
use indexer::Job;
use magpie::{Index as Engine, SearchMode as Mode};

/// The server's shared state.
pub struct App {
    cfg: ServeConfig,
    engine: Engine,
    llm: Arc<dyn Generator>,
    plugins: Option<Arc<magpie_plugin_host::PluginHost>>,
    /// Query embeddings of concurrent requests, computed in shared batches.
    queries: Arc<dyn magpie_core::Embedder>,
    pipeline: tokio::sync::Mutex<IndexingPipeline>,
    jobs: Mutex<HashMap<String, documents::JobInfo>>,
    /// Serialises changes to the stored conversations.
    conversations: tokio::sync::Mutex<()>,
    /// With a Qdrant store: where job changes go to be recorded there.
    job_sink: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<documents::JobInfo>>,
    job_tx: tokio::sync::mpsc::Sender<Job>,
    llm_slot: Arc<Semaphore>,
    in_llm: AtomicUsize,
    /// Exponential average of an answer's wall time, ms.
    avg_answer_ms: AtomicU64,
    metrics: metrics::Metrics,
    /// Documents and chunks in the index, updated after every write (probes
    /// and scrapes must not read the whole catalog).
    counts: Mutex<(usize, usize)>,
    uploads: PathBuf,
    stopping: AtomicBool,
    /// Indexing works: the worker runs or is being restarted (false once the
    /// supervisor gave up after repeated crashes, or indexing stopped).
    indexing_up: AtomicBool,
    /// Times the supervisor restarted the indexing worker.
    indexer_restarts: AtomicU64,
    /// The job the worker is on, so a crash can be charged to it.
    current_job: Mutex<Option<String>>,
    /// Concurrency and rate bounds on requests' work.
    limits: limits::Limits,
    /// Which hosts and web origins the server answers.
    origins: origin::OriginPolicy,
    /// Open and refused connections.
    net: Arc<net::NetStats>,
}

/// Seconds since the Unix epoch (job and completion timestamps).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the server finds its plugins: the directory with one subdirectory
/// per plugin, and the operator's grants.
pub struct PluginSetup {
    pub dir: PathBuf,
    pub operator: magpie_plugin_host::OperatorConfig,
}

/// Serve `engine` (the index opened from `index`) and `llm` until Ctrl-C or
/// SIGTERM. With `plugins`, answers may call their tools and plugins granted
/// `search` search this index.
pub async fn serve(
    index: &Path,
    engine: Engine,
    llm: Arc<dyn Generator>,
    plugins: Option<PluginSetup>,
    cfg: ServeConfig,
) -> Result<()> {
    let pipeline = engine.pipeline().await?;
    let counts = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
    let uploads = index.join("uploads");
    std::fs::create_dir_all(&uploads).with_context(|| format!("creating {}", uploads.display()))?;
    let (job_tx, job_rx) = tokio::sync::mpsc::channel(4096);
    let queries = Arc::new(magpie_core::BatchingEmbedder::new(
        engine.embedder.clone(),
        32,
    ));
    // Plugins: tools for answers and /v1/plugins.
    let plugins = match plugins {
        Some(setup) => {
            let search = Arc::new(magpie_plugin_host::RetrieverSearch::new(
                engine.retriever_with(magpie::SearchMode::Hybrid, queries.clone()),
            ));
            let host =
                magpie_plugin_host::PluginHost::open(&setup.dir, &setup.operator, Some(search))
                    .await?;
            tracing::info!(plugins = host.plugins().count(), "plugins loaded");
            Some(Arc::new(host))
        }
        None => {
            tracing::info!("no plugins: answers run without tools");
            None
        }
    };
    let fd_limit = net::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("cannot listen on {}: is another server using it?", cfg.bind))?;
    let addr: SocketAddr = listener.local_addr()?;
    let app = Arc::new(App {
        plugins,
        queries,
        engine,
        llm,
        pipeline: tokio::sync::Mutex::new(pipeline),
        jobs: Mutex::new(HashMap::new()),
        job_sink: std::sync::OnceLock::new(),
        conversations: tokio::sync::Mutex::new(()),
        job_tx,
        llm_slot: Arc::new(Semaphore::new(1)),
        in_llm: AtomicUsize::new(0),
        avg_answer_ms: AtomicU64::new(5000),
        metrics: metrics::Metrics::default(),
        counts: Mutex::new(counts),
        uploads,
        stopping: AtomicBool::new(false),
        indexing_up: AtomicBool::new(true),
        indexer_restarts: AtomicU64::new(0),
        current_job: Mutex::new(None),
        limits: limits::Limits::new(cfg.rate_limit),
        origins: origin::OriginPolicy {
            bind: Some(addr),
            allowed_hosts: cfg.allowed_hosts.clone(),
            cors_origins: cfg.cors_origins.clone(),
        },
        net: Arc::new(net::NetStats::default()),
        cfg: cfg.clone(),
    });
    indexer::load_failed(&app);
    let worker = indexer::spawn(app.clone(), job_rx)?;
    // Acknowledged documents that a previous run did not finish indexing.
    if let Some(sink) = documents::publish_jobs(&app) {
        let _ = app.job_sink.set(sink);
    }
    let resumed = indexer::resume_uploads(&app)?;
    if resumed > 0 {
        tracing::info!(
            documents = resumed,
            "indexing uploads left over from the last run"
        );
    }
    let mut watch_task = None;
    if let Some(dir) = cfg.watch.clone() {
        watch_task = Some(documents::watch(app.clone(), dir, index)?);
    }

    // Signal handlers first: a SIGTERM sent the moment the line below is read
    // must stop the server gracefully, not kill it.
    let signals = Signals::install()?;
    // Tests and scripts read this line for the port.
    println!("docqa listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let cap = net::connection_cap(cfg.max_connections, fd_limit);
    tracing::info!(%addr, keys = cfg.keys.len(), max_connections = cap, "serving");

    let router = router(app.clone());
    let shutdown = {
        let app = app.clone();
        async move {
            signals.wait().await;
            app.stopping.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: finishing requests in flight");
        }
    };
    let net_cfg = net::NetConfig {
        header_timeout: cfg.header_timeout,
    };
    net::serve(listener, router, net_cfg, cap, app.net.clone(), shutdown).await;
    if let Some(t) = watch_task {
        t.abort();
    }
    // The worker finishes the document it is on; queued ones stay in uploads/
    // and are indexed at the next start.
    app.stopping.store(true, Ordering::SeqCst);
    let grace = cfg.shutdown_grace;
    drop(app);
    match tokio::time::timeout(grace, worker).await {
        Ok(_) => tracing::info!("indexing worker stopped"),
        Err(_) => tracing::warn!(
            "indexing did not finish within {grace:?}; it resumes from the catalog at the next start"
        ),
    }
    eprintln!("docqa stopped.");
    Ok(())
}

/// SIGTERM and SIGINT, registered when made.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// All routes, with auth, limits, timeouts and metrics.
pub fn router(app: Arc<App>) -> Router {
    use axum::extract::DefaultBodyLimit;
    let upload_limit = DefaultBodyLimit::max(app.cfg.max_upload);
    Router::new()
        .route("/", get(ops::page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics_text))
        .route("/openapi.json", get(ops::openapi))
        .route(
            "/v1/documents",
            get(documents::list)
                .post(documents::add)
                .layer(upload_limit),
        )
        .route(
            "/v1/documents/{id}",
            get(documents::get_one).delete(documents::delete),
        )
        .route("/v1/jobs", get(documents::jobs))
        .route("/v1/jobs/{id}", get(documents::job))
        .route(
            "/v1/search",
            get(search::search_get).post(search::search_post),
        )
        .route("/v1/query", post(answers::query))
        .route(
            "/v1/conversations",
            get(conversations::list).post(conversations::create),
        )
        .route(
            "/v1/conversations/{id}",
            get(conversations::get_one).delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/messages",
            post(conversations::message),
        )
        .route("/v1/plugins", get(plugin_api::plugins_list))
        .route("/v1/plugins/{plugin}/{tool}", post(plugin_api::plugin_call))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/embeddings", post(openai::embeddings))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}: see /openapi.json for the API",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}: see /openapi.json",
            uri.path()
        ),
    )
}

/// Auth, the per-request timeout and metrics, around every route.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = match admit(&app, &req) {
        Ok(Admission::Preflight(r)) => r,
        Ok(Admission::Run(role)) => with_deadline(&app, role, req, next).await,
        Err(e) => {
            // A refused request's small body is read first, so its client
            // gets this answer rather than a reset connection mid-send.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                axum::body::to_bytes(req.into_body(), 64 * 1024),
            )
            .await;
            e.into_response()
        }
    };
    app.origins.decorate(origin.as_ref(), &mut response);
    app.metrics.request(
        &method,
        &route,
        response.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    response
}

/// What the guard decided before running a request.
enum Admission {
    /// An answered CORS preflight.
    Preflight(Response),
    /// Run it, with the caller's role.
    Run(Option<Role>),
}

/// Host and Origin, the rate limit, then the key.
fn admit(app: &App, req: &Request) -> Result<Admission, ApiError> {
    if let Some(preflight) = app.origins.check(req.method(), req.headers())? {
        return Ok(Admission::Preflight(preflight));
    }
    app.limits.check_rate(req)?;
    Ok(Admission::Run(authorize(app, req)?))
}

/// Run the request under its deadline.
async fn with_deadline(app: &App, role: Option<Role>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Caller(role));
    match tokio::time::timeout(app.cfg.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than {} s; ask for less (smaller k or max_tokens) \
                 or raise request_timeout_secs",
                app.cfg.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}
