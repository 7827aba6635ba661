//! `docqa serve`: the index, the embedder and the local LLM behind an HTTP API
//! (documents, search, answers with citations, OpenAI-compatible endpoints,
//! metrics) and a web page.
//!
//! Documents sent to the server are written to `<index>/uploads/<job>/` before
//! the request is acknowledged and indexed by one background worker; what was
//! acknowledged but not yet indexed when the server stopped is indexed at the
//! next start.

mod auth;
pub mod config;
mod conversations;
mod documents;
mod errors;
mod indexer;
mod limits;
mod metrics;
mod net;
mod openai;
mod origin;
mod plugin_api;
mod search;

pub use auth::Caller;
use auth::{authorize, role_of};
pub use errors::{ApiError, ApiJson};
use search::{check_k, parse_filter, parse_mode, FilterSpec};

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
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use magpie_core::{
    Answer, AnswerOptions, ConversationRetriever, GenerationOptions, GenerationSummary, Generator,
    HistoryMode, IndexingPipeline, PreparedAnswer, QueryPipeline,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{Engine, Mode, ModelArgs, OpenOptions};
use config::{Role, ServeArgs, ServeConfig};
use indexer::Job;

/// The server's shared state.
pub struct App {
    cfg: ServeConfig,
    engine: Engine,
    llm: Arc<dyn Generator>,
    plugins: Option<Arc<magpie_plugins::PluginHost>>,
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
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run `docqa serve` until Ctrl-C or SIGTERM.
/// `index` is the --index given on the command line or in the environment
/// (`None`: the config file's, else the default).
pub async fn serve(
    index: Option<&Path>,
    models: &ModelArgs,
    plugin_args: &crate::plugins::PluginArgs,
    args: &ServeArgs,
) -> Result<()> {
    let cfg = ServeConfig::resolve(args)?;
    let index = match (index, &cfg.index_from_file) {
        (Some(i), _) => i.to_path_buf(),
        (None, Some(f)) => f.clone(),
        (None, None) => PathBuf::from(".magpie"),
    };
    let engine = crate::engine::open(&index, models, OpenOptions::index())?;
    let llm = models.load_generator()?;
    let pipeline = engine.pipeline().await?;
    let counts = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
    let uploads = index.join("uploads");
    std::fs::create_dir_all(&uploads).with_context(|| format!("creating {}", uploads.display()))?;
    let (job_tx, job_rx) = tokio::sync::mpsc::channel(4096);
    let queries = Arc::new(magpie_core::BatchingEmbedder::new(
        engine.embedder.clone(),
        32,
    ));
    // Plugins, when the plugin directory exists: tools for answers and /v1/plugins.
    let plugins = if plugin_args.dir.is_dir() {
        let search = Arc::new(magpie_plugins::RetrieverSearch::new(
            engine.retriever_with(magpie::SearchMode::Hybrid, queries.clone()),
        ));
        let host = crate::plugins::open_host(plugin_args, Some(search)).await?;
        tracing::info!(plugins = host.plugins().count(), "plugins loaded");
        Some(Arc::new(host))
    } else {
        tracing::info!(
            dir = %plugin_args.dir.display(),
            "no plugin directory: answers run without tools"
        );
        None
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
        watch_task = Some(documents::watch(app.clone(), dir, &index)?);
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
        .route("/", get(page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
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
        .route("/v1/query", post(query))
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

async fn page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
        )],
        Html(include_str!("page.html")),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>, req: Request) -> Response {
    if app.stopping.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .into_response();
    }
    if !app.indexing_up.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "indexing_down",
            "the indexing worker is down after repeated crashes; see the server's log",
        )
        .into_response();
    }
    // Details only for a caller with a valid key: the probe itself is open.
    if app.cfg.keys.is_empty() || role_of(&app, &req).is_none() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let docs = app.counts.lock().unwrap().0;
    Json(json!({"status": "ready", "documents": docs, "model": app.llm.model_id()})).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let (docs, chunks) = *app.counts.lock().unwrap();
    let (queued, running) = documents::job_counts(&app);
    let waiting = app.in_llm.load(Ordering::SeqCst);
    let text = app.metrics.render(&[
        (
            "docqa_llm_queue_depth",
            "Requests using or waiting for the model.",
            waiting as f64,
        ),
        (
            "docqa_index_documents",
            "Documents in the index.",
            docs as f64,
        ),
        ("docqa_index_chunks", "Chunks in the index.", chunks as f64),
        (
            "docqa_indexing_jobs_queued",
            "Indexing jobs waiting.",
            queued as f64,
        ),
        (
            "docqa_indexing_jobs_running",
            "Indexing jobs running.",
            running as f64,
        ),
        (
            "docqa_indexing_up",
            "1 while indexing works (0 after repeated crashes).",
            f64::from(u8::from(app.indexing_up.load(Ordering::SeqCst))),
        ),
        (
            "docqa_connections_open",
            "HTTP connections open now.",
            app.net.open.load(Ordering::Relaxed) as f64,
        ),
        (
            "docqa_connections_refused",
            "Connections turned away because the server had too many open.",
            app.net.refused.load(Ordering::Relaxed) as f64,
        ),
        (
            "docqa_indexer_restarts",
            "Times the indexing worker crashed and was restarted.",
            app.indexer_restarts.load(Ordering::SeqCst) as f64,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---- answers ----

/// Answer settings a request may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    question: String,
    k: Option<usize>,
    mode: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    /// Let the model call the plugins' tools while it answers.
    #[serde(default)]
    tools: bool,
    /// Only answer from passages that pass this filter.
    filter: Option<FilterSpec>,
    /// The conversation before the question (`user` and `assistant`
    /// messages, oldest first): retrieval and the prompt read its recent turns.
    #[serde(default)]
    history: Vec<conversations::HistoryMessage>,
}

/// Most tokens one answer may ask for.
const MAX_ANSWER_TOKENS: usize = 2048;

impl App {
    /// Retrieval with the batching query embedder.
    fn retriever(&self, mode: Mode) -> Arc<dyn magpie_core::Retriever> {
        self.engine
            .retriever_with(mode.into(), self.queries.clone())
    }

    /// A place among the searches running at once (waits for one).
    async fn search_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.limits.searches.acquire().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping",
            )
        })
    }

    /// Retrieve and pack the passages for `question`.
    /// Retrieve and build the prompt for `question`; `history` is the
    /// conversation before it (empty for a single question): retrieval reads
    /// its recent user turns, the prompt carries its recent turns.
    pub async fn prepare(
        &self,
        question: &str,
        req: &QueryRequest,
        stop: Vec<String>,
        history: Vec<magpie_core::ChatMessage>,
    ) -> Result<PreparedAnswer, ApiError> {
        let mode = parse_mode(req.mode.as_deref())?;
        let k = check_k(req.k, self.cfg.answer.k)?;
        let max_tokens = req.max_tokens.unwrap_or(self.cfg.answer.max_tokens);
        if max_tokens == 0 || max_tokens > MAX_ANSWER_TOKENS {
            return Err(ApiError::bad_request(format!(
                "max_tokens must be between 1 and {MAX_ANSWER_TOKENS}"
            )));
        }
        let generation = GenerationOptions {
            max_tokens,
            temperature: req.temperature.unwrap_or(self.cfg.answer.temperature),
            top_p: req.top_p.unwrap_or(1.0),
            seed: req.seed,
            stop,
            ..GenerationOptions::default()
        };
        generation.validate()?;
        let opts = AnswerOptions {
            k,
            max_context_tokens: self.cfg.answer.context_tokens,
            few_shot: true,
            generation,
            history,
        };
        let filter = parse_filter(req.filter.as_ref())?;
        let _slot = self.search_slot().await?;
        let retriever = Arc::new(ConversationRetriever::after(
            self.retriever(mode),
            &opts.history,
            HistoryMode::default(),
        ));
        let pipeline = QueryPipeline::new(retriever).top_k(k).filter(filter);
        Ok(pipeline
            .prepare_answer(question, self.llm.as_ref(), &opts)
            .await?)
    }

    /// A place in the model's queue, or 429 when it is full. Taken before any
    /// retrieval, so turned-away requests cost next to nothing.
    pub fn admit(self: &Arc<Self>, question: &str) -> Result<Ticket, ApiError> {
        if question.trim().is_empty() {
            return Err(ApiError::bad_request("the question is empty"));
        }
        let capacity = self.cfg.llm_queue + 1;
        let n = self.in_llm.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = Ticket(self.clone());
        if n > capacity {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let avg = self.avg_answer_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            let wait = (avg * capacity as f64).ceil().max(1.0) as u64;
            return Err(ApiError::too_many(
                format!("the model is busy ({capacity} answering or waiting); retry in {wait} s"),
                wait,
            ));
        }
        Ok(ticket)
    }

    /// Wait for the model (the ticket holds the place in the queue meanwhile).
    pub async fn llm_turn(&self, ticket: Ticket) -> Result<LlmTurn, ApiError> {
        let permit = self.llm_slot.clone().acquire_owned().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping",
            )
        })?;
        Ok(LlmTurn {
            _permit: permit,
            _ticket: ticket,
            started: Instant::now(),
        })
    }

    fn record_answer(&self, turn: &LlmTurn, summary: &GenerationSummary) {
        let ms = turn.started.elapsed().as_millis() as u64;
        let old = self.avg_answer_ms.load(Ordering::Relaxed);
        self.avg_answer_ms
            .store((old * 3 + ms) / 4, Ordering::Relaxed);
        self.metrics.answers.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .prompt_tokens
            .fetch_add(summary.usage.prompt_tokens as u64, Ordering::Relaxed);
        self.metrics
            .generated_tokens
            .fetch_add(summary.usage.completion_tokens as u64, Ordering::Relaxed);
    }

    /// Generate the answer; `on_delta` gets the text as it streams (false stops).
    pub async fn generate(
        self: &Arc<Self>,
        prepared: PreparedAnswer,
        turn: &LlmTurn,
        tools: bool,
        mut on_delta: impl FnMut(&str) -> bool + Send,
    ) -> Result<Answer, ApiError> {
        let mut prepared = prepared;
        let cancel = magpie_core::CancelToken::new();
        prepared.options.cancel = Some(cancel.clone());
        let gone = std::sync::atomic::AtomicBool::new(false);
        let mut started = false;
        // The first piece usually starts with the space after "Answer:".
        let mut show = |t: &str| {
            let shown = if started { t } else { t.trim_start() };
            started |= !shown.is_empty();
            if !shown.is_empty() && !gone.load(Ordering::Relaxed) && !on_delta(shown) {
                // The client went away: the model stops at its next token.
                gone.store(true, Ordering::Relaxed);
                cancel.cancel();
            }
        };
        let answer = if tools {
            let host = self.plugins.as_ref().ok_or_else(|| {
                ApiError::bad_request(
                    "this server has no plugins loaded: start it with --plugins DIR to answer with tools",
                )
            })?;
            let format = magpie_core::MossFormat;
            let tool_loop = magpie_core::ToolLoop {
                generator: self.llm.as_ref(),
                toolbox: host.as_ref(),
                format: &format,
                max_calls: 4,
            };
            prepared.run_with_tools(&tool_loop, &mut show).await?
        } else {
            prepared.run(self.llm.as_ref(), &mut show).await?
        };
        if gone.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "client_closed",
                "the client disconnected",
            ));
        }
        self.record_answer(
            turn,
            &GenerationSummary {
                finish_reason: answer.finish_reason,
                usage: answer.usage,
                timings: answer.timings,
            },
        );
        Ok(answer)
    }
}

/// Holds the model for one answer; dropping it lets the next one in.
pub struct LlmTurn {
    _permit: OwnedSemaphorePermit,
    _ticket: Ticket,
    started: Instant,
}

/// Counts a request that is using or waiting for the model.
pub struct Ticket(Arc<App>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_llm.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn query(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    ApiJson(req): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    caller.check_tools(req.tools)?;
    let ticket = app.admit(&req.question)?;
    let history = conversations::history_of(&req)?;
    let prepared = app
        .prepare(&req.question, &req, Vec::new(), history)
        .await?;
    let turn = app.llm_turn(ticket).await?;
    if !req.stream {
        let answer = app.generate(prepared, &turn, req.tools, |_| true).await?;
        return Ok(Json(answer).into_response());
    }
    // Unbounded: an answer is at most MAX_ANSWER_TOKENS events, and a slow
    // reader must not lose tokens; a closed channel means the client left.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let app2 = app.clone();
    tokio::spawn(async move {
        let turn = turn;
        let sources = json!({"sources": prepared.sources});
        let _ = tx.send(Event::default().event("sources").data(sources.to_string()));
        let r = app2
            .generate(prepared, &turn, req.tools, |t| {
                tx.send(
                    Event::default()
                        .event("token")
                        .data(json!({"text": t}).to_string()),
                )
                .is_ok()
            })
            .await;
        let ev = match r {
            Ok(answer) => Event::default()
                .event("answer")
                .data(serde_json::to_string(&answer).unwrap_or_default()),
            Err(e) => Event::default()
                .event("error")
                .data(json!({"error": {"message": e.message, "type": e.kind}}).to_string()),
        };
        let _ = tx.send(ev);
    });
    Ok(sse(rx).into_response())
}

/// Server-sent events from a channel; the stream ends when the sender does.
pub fn sse(
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
