//! The API's errors: one JSON shape for every failure, and JSON bodies whose
//! rejections use it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

/// A JSON error: `{"error": {"message", "type", "code"}}` (the OpenAI shape).
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) kind: &'static str,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// 429 with `Retry-After: retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.retry_after = Some(retry_after);
        e
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// A 500; the log gets the whole message, the client one without the
    /// server's file paths.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            redact_paths(&e.to_string()),
        )
    }
}

/// `text` with absolute file paths replaced by `<path>`.
pub fn redact_paths(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let bare = w.trim_start_matches(['"', '\'', '(', '[', '`']);
            let is_path = (bare.starts_with('/') && bare[1..].contains('/'))
                || (bare.as_bytes().get(1) == Some(&b':')
                    && bare.get(2..).is_some_and(|r| r.starts_with('\\')));
            if is_path {
                format!("{}<path>", &w[..w.len() - bare.len()])
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl From<magpie_core::Error> for ApiError {
    fn from(e: magpie_core::Error) -> Self {
        match e {
            magpie_core::Error::InvalidInput(m) => Self::bad_request(m),
            e => Self::internal(magpie_core::error_chain(&e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let body = json!({"error": {"message": self.message, "type": self.kind, "code": code}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// `Json` whose rejections (malformed JSON, wrong types, wrong content type,
/// too large) are JSON errors with the right status.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

pub(super) fn json_rejection(r: JsonRejection) -> ApiError {
    let kind = match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_request_error",
    };
    ApiError::new(r.status(), kind, r.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_redacted_and_other_words_kept() {
        assert_eq!(
            redact_paths("cannot open \"/srv/idx/catalog.json\": denied (C:\\data\\x)"),
            "cannot open \"<path> denied (<path>"
        );
        assert_eq!(
            redact_paths("a/b and / alone, 喜鹊/x"),
            "a/b and / alone, 喜鹊/x"
        );
    }
}
