//! OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions` (answers
//! from the index, streaming or not) and `/v1/embeddings`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use magpie_core::{Embedder, FinishReason, TokenCounter};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, App, QueryRequest};

/// `GET /v1/models`: the language model and the embedding model.
/// Each LoRA adapter loaded is listed too, as `BASE+NAME`.
pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let t = super::unix_now();
    let model =
        |id: String| json!({"id": id, "object": "model", "created": t, "owned_by": "docqa"});
    let base = app.llm.model_id().to_string();
    let mut data = vec![model(base.clone())];
    for a in app.llm.adapters() {
        data.push(model(format!("{base}+{a}")));
    }
    data.push(model(app.engine.embedder.model_id().to_string()));
    Json(json!({"object": "list", "data": data}))
}

#[derive(Debug, Deserialize)]
pub struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The request; fields of the OpenAI API that do not apply are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessageIn>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Value>,
    n: Option<usize>,
}

/// The text of a message's content: a string or an array of text parts.
fn content_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push(t.clone()),
                    (Some(kind), _) => {
                        return Err(ApiError::bad_request(format!(
                            "content parts of type {kind:?} are not supported; send text"
                        )))
                    }
                    _ => return Err(ApiError::bad_request("a content part has no type")),
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(ApiError::bad_request(
            "message content must be a string or an array of text parts",
        )),
    }
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// `POST /v1/chat/completions`: the last user message is the question, asked
/// in the conversation the messages before it hold (retrieval reads the recent
/// user turns too, the prompt carries the recent turns); the answer comes from
/// the index, its passages in the extra field `sources`.
pub async fn chat(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n = 1 is supported"));
    }
    for m in &req.messages {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool"
        ) {
            return Err(ApiError::bad_request(format!(
                "unknown message role {:?}",
                m.role
            )));
        }
    }
    // The last user message is the question; the user and assistant messages
    // before it are the conversation (retrieval and the prompt read them).
    let Some(last) = req.messages.iter().rposition(|m| m.role == "user") else {
        return Err(ApiError::bad_request("the messages have no user message"));
    };
    let question = content_text(&req.messages[last].content)?;
    let mut history = Vec::new();
    for m in &req.messages[..last] {
        let role = match m.role.as_str() {
            "user" => magpie_core::Role::User,
            "assistant" => magpie_core::Role::Assistant,
            _ => continue,
        };
        history.push(magpie_core::ChatMessage::new(
            role,
            content_text(&m.content)?,
        ));
    }
    let stop = match &req.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request("stop must be a string or strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad_request("stop must be a string or strings")),
    };
    // "BASE+NAME[:SCALE]+…" picks LoRA adapters (a model without '+' is the base)
    let adapters = match &req.model {
        Some(m) => magpie_core::AdapterChoice::from_model_name(m)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .1
            .into_iter()
            .map(|c| super::answers::AdapterField::Scaled {
                name: c.name,
                scale: c.scale,
            })
            .collect(),
        None => Vec::new(),
    };
    let q = QueryRequest {
        question: question.clone(),
        adapters,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        ..Default::default()
    };
    let ticket = app.admit(&question)?;
    let prepared = app.prepare(&question, &q, stop, history).await?;
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| app.llm.model_id().to_string());
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let t = super::unix_now();
    let turn = app.llm_turn(ticket).await?;
    if !req.stream {
        let answer = app.generate(prepared, &turn, false, |_| true).await?;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": t,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": finish_reason(answer.finish_reason),
            }],
            "usage": {
                "prompt_tokens": answer.usage.prompt_tokens,
                "completion_tokens": answer.usage.completion_tokens,
                "total_tokens": answer.usage.total_tokens,
            },
            "sources": answer.sources,
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            Event::default().data(
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": t, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                })
                .to_string(),
            )
        };
        let _ = tx.send(chunk(json!({"role": "assistant", "content": ""}), None));
        let r = app
            .generate(prepared, &turn, false, |text| {
                tx.send(chunk(json!({"content": text}), None)).is_ok()
            })
            .await;
        match r {
            Ok(answer) => {
                let _ = tx.send(chunk(json!({}), Some(finish_reason(answer.finish_reason))));
                if include_usage {
                    let _ = tx.send(
                        Event::default().data(
                            json!({
                                "id": id, "object": "chat.completion.chunk", "created": t,
                                "model": model, "choices": [],
                                "usage": {
                                    "prompt_tokens": answer.usage.prompt_tokens,
                                    "completion_tokens": answer.usage.completion_tokens,
                                    "total_tokens": answer.usage.total_tokens,
                                },
                            })
                            .to_string(),
                        ),
                    );
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Event::default().data(
                        json!({"error": {"message": e.message, "type": e.kind}}).to_string(),
                    ));
            }
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    });
    Ok(super::answers::sse(rx).into_response())
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// Most texts in one embeddings request.
const MAX_INPUTS: usize = 512;
/// Longest text accepted, in bytes (the model reads its first 256 tokens anyway).
const MAX_INPUT_BYTES: usize = 64 * 1024;

/// `POST /v1/embeddings` with the index's embedding model.
pub async fn embeddings(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let texts: Vec<String> =
        match &req.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
            Value::Array(_) => return Err(ApiError::bad_request(
                "input must be a string or an array of strings (token arrays are not supported)",
            )),
            _ => {
                return Err(ApiError::bad_request(
                    "input must be a string or an array of strings",
                ))
            }
        };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!(
            "send between 1 and {MAX_INPUTS} inputs"
        )));
    }
    if texts.iter().any(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request("an input is empty"));
    }
    if texts.iter().any(|t| t.len() > MAX_INPUT_BYTES) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an input is longer than {MAX_INPUT_BYTES} bytes"),
        ));
    }
    let embedder = &app.engine.embedder;
    if let Some(d) = req.dimensions {
        if d != embedder.dimension() {
            return Err(ApiError::bad_request(format!(
                "{} makes {}-dimensional embeddings; dimensions = {d} is not available",
                embedder.model_id(),
                embedder.dimension()
            )));
        }
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "unknown encoding_format {f:?}: use float or base64"
            )))
        }
    };
    // A bounded number of embedding requests at a time; beyond it, 429.
    let _permit = app
        .limits
        .embeddings
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::too_many(
                format!(
                    "{} embedding requests are running; retry in a second",
                    super::limits::EMBEDDING_REQUESTS
                ),
                1,
            )
        })?;
    let counter = embedder.token_counter();
    let tokens: usize = texts.iter().map(|t| counter.count(t)).sum();
    // In slices, each awaited: when the deadline drops this future, at most
    // the slice in progress finishes and nothing more starts.
    let mut vectors = Vec::with_capacity(texts.len());
    for part in texts.chunks(super::limits::EMBED_SLICE) {
        vectors.extend(embedder.embed(part).await?);
    }
    app.metrics
        .embedded_texts
        .fetch_add(texts.len() as u64, Ordering::Relaxed);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| embedder.model_id().to_string()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}
