//! Answers: `/v1/query` (whole or streamed as server-sent events), and the
//! steps every answering route shares: a place in the model's queue,
//! retrieval and the prompt, generation with or without tools.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_core::{
    AdapterChoice, Answer, AnswerOptions, ConversationRetriever, GenerationOptions,
    GenerationSummary, PreparedAnswer, QueryPipeline,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::search::{check_k, parse_filter, parse_mode, FilterSpec};
use super::{conversations, ApiError, ApiJson, App, Caller, Mode};

/// Answer settings a request may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub(super) question: String,
    pub(super) k: Option<usize>,
    pub(super) mode: Option<String>,
    pub(super) max_tokens: Option<usize>,
    pub(super) temperature: Option<f32>,
    pub(super) top_p: Option<f32>,
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) stream: bool,
    /// Let the model call the plugins' tools while it answers.
    #[serde(default)]
    pub(super) tools: bool,
    /// Only answer from passages that pass this filter.
    pub(super) filter: Option<FilterSpec>,
    /// The conversation before the question (`user` and `assistant`
    /// messages, oldest first): retrieval and the prompt read its recent turns.
    #[serde(default)]
    pub(super) history: Vec<conversations::HistoryMessage>,
    /// LoRA adapters to answer with, of those the server loaded: names, or
    /// `{"name", "scale"}` objects (none: the base model alone).
    #[serde(default)]
    pub(super) adapters: Vec<AdapterField>,
}

/// One adapter of a request: `"NAME"` (scale 1) or `{"name": "NAME", "scale": 0.5}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "an adapter name, or {\"name\": NAME, \"scale\": NUMBER}"
)]
pub enum AdapterField {
    /// By name, at scale 1.
    Name(String),
    /// By name with a scale.
    Scaled {
        /// The name it was loaded under.
        name: String,
        /// Its scale (default 1).
        #[serde(default = "one")]
        scale: f32,
    },
}

fn one() -> f32 {
    1.0
}

impl AdapterField {
    fn choice(&self) -> AdapterChoice {
        match self {
            AdapterField::Name(n) => AdapterChoice::new(n.clone()),
            AdapterField::Scaled { name, scale } => AdapterChoice {
                name: name.clone(),
                scale: *scale,
            },
        }
    }
}

/// Most tokens one answer may ask for.
const MAX_ANSWER_TOKENS: usize = 2048;

impl App {
    /// Retrieval with the batching query embedder.
    pub(super) fn retriever(&self, mode: Mode) -> Arc<dyn magpie_core::Retriever> {
        self.engine.retriever_with(mode, self.queries.clone())
    }

    /// The adapters a request names, checked against those loaded: an
    /// unknown name or a bad scale is a 400 that lists what is loaded.
    pub(super) fn adapters(&self, asked: &[AdapterChoice]) -> Result<Vec<AdapterChoice>, ApiError> {
        if !asked.is_empty() {
            magpie_core::check_choices(asked, &self.llm.adapters(), |n| {
                format!("start the server with --lora {n}=PATH")
            })?;
        }
        Ok(asked.to_vec())
    }

    /// A place among the searches running at once (waits for one).
    pub(super) async fn search_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
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
        let asked: Vec<AdapterChoice> = req.adapters.iter().map(AdapterField::choice).collect();
        let generation = GenerationOptions {
            max_tokens,
            temperature: req.temperature.unwrap_or(self.cfg.answer.temperature),
            top_p: req.top_p.unwrap_or(1.0),
            seed: req.seed,
            stop,
            adapters: self.adapters(&asked)?,
            ..GenerationOptions::default()
        };
        generation.validate()?;
        let opts = AnswerOptions {
            k,
            max_context_tokens: self.cfg.answer.context_tokens,
            few_shot: true,
            generation,
            history,
            clarify: true,
            abstention: self.engine.abstention(self.cfg.answer.abstain),
        };
        let filter = parse_filter(req.filter.as_ref())?;
        let _slot = self.search_slot().await?;
        let retriever = ConversationRetriever::after(
            self.retriever(mode),
            &opts.history,
            self.cfg.answer.history,
        )
        .condensed_by(self.llm.as_ref(), question)
        .await?;
        let retriever = Arc::new(retriever);
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
                    "this server has no plugins loaded: start it with a plugin directory to answer with tools",
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

pub(super) async fn query(
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
