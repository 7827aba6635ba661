//! The plugin routes: the loaded plugins' tools, and calling one directly.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, App};

fn host(app: &App) -> Result<&Arc<magpie_plugin_host::PluginHost>, ApiError> {
    app.plugins.as_ref().ok_or_else(|| {
        ApiError::not_found("this server has no plugins loaded (start it with --plugins DIR)")
    })
}

/// `GET /v1/plugins`: the plugins, their tools (with JSON schemas) and grants.
pub(super) async fn plugins_list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let host = host(&app)?;
    let list: Vec<Value> = host
        .plugins()
        .map(|p| {
            json!({
                "name": p.description.name,
                "version": p.description.version,
                "summary": p.description.summary,
                "tools": p.description.tools,
                "granted": p.grants.list(),
            })
        })
        .collect();
    Ok(Json(json!({"plugins": list})))
}

/// `POST /v1/plugins/{plugin}/{tool}` with the arguments object as the body.
pub(super) async fn plugin_call(
    State(app): State<Arc<App>>,
    axum::extract::Path((plugin, tool)): axum::extract::Path<(String, String)>,
    ApiJson(arguments): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    use magpie_plugin_host::PluginError as E;
    if !arguments.is_object() {
        return Err(ApiError::bad_request(
            "the body must be the tool's arguments as a JSON object",
        ));
    }
    let host = host(&app)?;
    match host.call(&plugin, &tool, &arguments.to_string()).await {
        Ok(out) => Ok(Json(json!({
            "plugin": plugin,
            "tool": tool,
            "result": out.value,
            "call_us": out.call_us,
        }))),
        Err(e) => {
            let msg = e.to_string();
            Err(match e {
                E::NotFound(_) | E::UnknownTool { .. } => ApiError::not_found(msg),
                E::InvalidArguments { .. } => ApiError::bad_request(msg),
                E::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
                _ => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "tool_error", msg),
            })
        }
    }
}
