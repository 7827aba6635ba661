//! Operations: the web page, the API description, liveness and readiness
//! probes, and the Prometheus metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::role_of;
use super::{documents, ApiError, App};
use axum::http::StatusCode;

pub(super) async fn page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
        )],
        Html(include_str!("page.html")),
    )
}

pub(super) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(app): State<Arc<App>>, req: Request) -> Response {
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

pub(super) async fn metrics_text(State(app): State<Arc<App>>) -> Response {
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
