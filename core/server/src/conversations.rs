//! `/v1/conversations`: conversations the server keeps, each owned by the API
//! key that made it (one owner for all on a server without keys), in
//! `<index>/conversations/`. A message to a conversation is answered with its
//! recent turns (retrieval and prompt), then both are added. Bounded: at most
//! 100 conversations per key (the oldest goes) and 40 messages each.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_core::{ChatMessage, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, ApiJson, App, QueryRequest};

/// Conversations one key may keep.
const MAX_PER_OWNER: usize = 100;
/// Messages a conversation keeps (the oldest go).
const MAX_MESSAGES: usize = 40;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Conversation {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    owner: String,
    created: u64,
    updated: u64,
    messages: Vec<ChatMessage>,
}

/// Who owns what a request makes: a digest of its key (never the key).
fn owner(headers: &HeaderMap) -> String {
    let key = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' ').map(|(_, k)| k.trim()))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    blake3::hash(format!("docqa-conversation-owner\0{key}").as_bytes()).to_hex()[..16].to_string()
}

fn dir(app: &App) -> PathBuf {
    app.engine
        .layout()
        .dir()
        .join(magpie::layout::CONVERSATIONS_DIR)
}

fn path(app: &App, id: &str) -> Result<PathBuf, ApiError> {
    if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    Ok(dir(app).join(format!("{id}.json")))
}

fn read(app: &App, id: &str, owner: &str) -> Result<Conversation, ApiError> {
    let p = path(app, id)?;
    let c: Conversation = match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(ApiError::internal)?,
        Err(_) => return Err(ApiError::not_found(format!("no conversation {id}"))),
    };
    if c.owner != owner {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    Ok(c)
}

fn write(app: &App, c: &Conversation) -> Result<(), ApiError> {
    std::fs::create_dir_all(dir(app)).map_err(ApiError::internal)?;
    let bytes = serde_json::to_vec(c).map_err(ApiError::internal)?;
    magpie_core::atomic_write(&path(app, &c.id)?, &bytes).map_err(ApiError::internal)
}

/// The owner's conversations, newest first.
fn owned(app: &App, owner: &str) -> Vec<Conversation> {
    let mut out: Vec<Conversation> = std::fs::read_dir(dir(app))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Conversation>(&b).ok())
        .filter(|c| c.owner == owner)
        .collect();
    out.sort_by(|a, b| b.updated.cmp(&a.updated).then(b.created.cmp(&a.created)));
    out
}

fn summary(c: &Conversation) -> Value {
    json!({
        "id": c.id,
        "created": c.created,
        "updated": c.updated,
        "messages": c.messages.len(),
        "title": c.messages.first().map(|m| m.content.chars().take(80).collect::<String>()),
    })
}

/// `POST /v1/conversations`: a new, empty conversation.
pub async fn create(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let owner = owner(&headers);
    let _guard = app.conversations.lock().await;
    let mine = owned(&app, &owner);
    for old in mine.iter().skip(MAX_PER_OWNER - 1) {
        let _ = std::fs::remove_file(path(&app, &old.id)?);
    }
    let now = super::unix_now();
    let c = Conversation {
        id: uuid::Uuid::new_v4().simple().to_string(),
        owner,
        created: now,
        updated: now,
        messages: Vec::new(),
    };
    write(&app, &c)?;
    Ok((StatusCode::CREATED, Json(summary(&c))).into_response())
}

/// `GET /v1/conversations`: the caller's, newest first.
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Json<Value> {
    let all: Vec<Value> = owned(&app, &owner(&headers)).iter().map(summary).collect();
    Json(json!({"conversations": all}))
}

/// `GET /v1/conversations/{id}`: its messages.
pub async fn get_one(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let c = read(&app, &id, &owner(&headers))?;
    let mut v = summary(&c);
    v["messages"] = serde_json::to_value(&c.messages).map_err(ApiError::internal)?;
    Ok(Json(v))
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let _guard = app.conversations.lock().await;
    read(&app, &id, &owner(&headers))?;
    std::fs::remove_file(path(&app, &id)?).map_err(ApiError::internal)?;
    Ok(Json(json!({"deleted": id})))
}

/// `POST /v1/conversations/{id}/messages`: ask in the conversation (the body
/// of `/v1/query`, without streaming or tools); the answer, and both turns
/// added.
pub async fn message(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    ApiJson(req): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    let owner = owner(&headers);
    if req.stream || req.tools || !req.history.is_empty() {
        return Err(ApiError::bad_request(
            "a conversation's messages are answered whole, without tools, with the history it \
             keeps: use /v1/query for streaming, tools or a history of your own",
        ));
    }
    let history = read(&app, &id, &owner)?.messages;
    let ticket = app.admit(&req.question)?;
    let prepared = app
        .prepare(&req.question, &req, Vec::new(), history)
        .await?;
    let turn = app.llm_turn(ticket).await?;
    let answer = app.generate(prepared, &turn, false, |_| true).await?;
    drop(turn);
    // Added to what is stored now (another message may have landed meanwhile).
    let _guard = app.conversations.lock().await;
    let mut c = read(&app, &id, &owner)?;
    c.messages
        .push(ChatMessage::new(Role::User, req.question.trim()));
    c.messages
        .push(ChatMessage::new(Role::Assistant, answer.text.trim()));
    let extra = c.messages.len().saturating_sub(MAX_MESSAGES);
    c.messages.drain(..extra);
    c.updated = super::unix_now();
    write(&app, &c)?;
    Ok(Json(answer).into_response())
}

/// One earlier message of a conversation, in a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryMessage {
    role: String,
    content: String,
}

/// Most earlier messages a request may carry.
const MAX_HISTORY: usize = 40;

/// A request's history as chat messages, checked.
pub fn history_of(req: &QueryRequest) -> Result<Vec<magpie_core::ChatMessage>, ApiError> {
    if req.history.len() > MAX_HISTORY {
        return Err(ApiError::bad_request(format!(
            "history holds {} messages; send at most the last {MAX_HISTORY}",
            req.history.len()
        )));
    }
    req.history
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "user" => magpie_core::Role::User,
                "assistant" => magpie_core::Role::Assistant,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "history role {other:?}: use user or assistant"
                    )))
                }
            };
            Ok(magpie_core::ChatMessage::new(role, m.content.as_str()))
        })
        .collect()
}
