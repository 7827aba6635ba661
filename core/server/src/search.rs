//! `GET`/`POST /v1/search`, and the request parts answers share with it:
//! the mode, k and the filter.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use magpie_core::QueryPipeline;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, App};
use magpie::SearchMode as Mode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchRequest {
    #[serde(alias = "q")]
    query: String,
    k: Option<usize>,
    mode: Option<String>,
    filter: Option<FilterSpec>,
}

/// Filter clauses (`source=…`, `doc=…`, `meta.NAME=…`, `meta.NAME>=N`): a list,
/// or one string with clauses separated by `;` (handy in a query string).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FilterSpec {
    /// Clauses in one string, `;`-separated.
    One(String),
    /// One clause per item.
    Many(Vec<String>),
}

pub(super) fn parse_filter(f: Option<&FilterSpec>) -> Result<magpie_core::Filter, ApiError> {
    let clauses: Vec<String> = match f {
        None => vec![],
        Some(FilterSpec::One(s)) => s
            .split(';')
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string)
            .collect(),
        Some(FilterSpec::Many(v)) => v.clone(),
    };
    magpie_core::Filter::parse_all(clauses).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(super) fn parse_mode(m: Option<&str>) -> Result<Mode, ApiError> {
    match m.unwrap_or("hybrid") {
        "hybrid" => Ok(Mode::Hybrid),
        "dense" => Ok(Mode::Dense),
        "bm25" => Ok(Mode::Bm25),
        other => Err(ApiError::bad_request(format!(
            "unknown mode {other:?}: use hybrid, dense or bm25"
        ))),
    }
}

pub(super) fn check_k(k: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match k.unwrap_or(default) {
        0 => Err(ApiError::bad_request("k must be at least 1")),
        k if k > 100 => Err(ApiError::bad_request("k must be at most 100")),
        k => Ok(k),
    }
}

pub(super) async fn search_get(
    State(app): State<Arc<App>>,
    q: Result<Query<SearchRequest>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    search(app, q).await
}

pub(super) async fn search_post(
    State(app): State<Arc<App>>,
    ApiJson(q): ApiJson<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    search(app, q).await
}

async fn search(app: Arc<App>, q: SearchRequest) -> Result<Json<Value>, ApiError> {
    if q.query.trim().is_empty() {
        return Err(ApiError::bad_request("the query is empty"));
    }
    let mode = parse_mode(q.mode.as_deref())?;
    let k = check_k(q.k, 5)?;
    let filter = parse_filter(q.filter.as_ref())?;
    let _slot = app.search_slot().await?;
    let pipeline = QueryPipeline::new(app.retriever(mode))
        .top_k(k)
        .filter(filter);
    let result = pipeline.search(&q.query).await?;
    let hits: Vec<Value> = result
        .hits
        .iter()
        .map(|h| {
            json!({
                "doc_id": h.chunk.doc_id,
                "chunk_id": h.chunk.id,
                "source": h.chunk.source,
                "location": h.chunk.span.location(),
                "heading_path": h.chunk.heading_path,
                "score": h.score,
                "text": h.chunk.text,
                "snippet": h.snippet,
            })
        })
        .collect();
    Ok(Json(json!({
        "query": q.query,
        "mode": mode.name(),
        "took_ms": result.retrieval.as_secs_f64() * 1e3,
        "hits": hits,
    })))
}
