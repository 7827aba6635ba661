//! Who may call what: API keys, their roles, and the role a request gets.

use axum::extract::Request;
use axum::http::{header, StatusCode};

use super::config::Role;
use super::{ApiError, App};

/// The role a path needs (`None`: open to all).
pub(super) fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/v1/documents")
        || path.starts_with("/v1/jobs")
        || path.starts_with("/v1/plugins")
    {
        Some(Role::Admin)
    } else if path.starts_with("/v1/") || path == "/metrics" {
        Some(Role::Read)
    } else {
        None
    }
}

/// The key a request carries: `Authorization: Bearer <key>` (the scheme in
/// any case) or `X-API-Key`.
pub(super) fn given_key(req: &Request) -> Option<&str> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
    bearer
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The role of a request's valid key (`None`: no key, or not a valid one).
pub(super) fn role_of(app: &App, req: &Request) -> Option<Role> {
    let given = given_key(req)?;
    app.cfg
        .keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), given.as_bytes()))
        .map(|k| k.role)
}

/// What the request may do: the role of its key (a server without keys
/// gives everyone the admin role), or the error when the path needs more.
/// An open path without a valid key gets `None`.
pub(super) fn authorize(app: &App, req: &Request) -> Result<Option<Role>, ApiError> {
    if app.cfg.keys.is_empty() {
        return Ok(Some(Role::Admin));
    }
    let Some(needed) = required_role(req.uri().path()) else {
        return Ok(role_of(app, req));
    };
    let given = given_key(req);
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this server needs an API key: send `Authorization: Bearer <key>`",
        ));
    };
    let role = app
        .cfg
        .keys
        .iter()
        .find(|k| constant_time_eq(k.key.as_bytes(), given.as_bytes()))
        .map(|k| k.role);
    match role {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "the API key is not valid",
        )),
        Some(r) if r < needed => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "this API key has the read role; documents, jobs and plugins need an admin key",
        )),
        Some(r) => Ok(Some(r)),
    }
}

/// The role the guard found for this request, an extension handlers read.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<Role>);

impl Caller {
    /// Plugins run only for admin keys (or everyone on a server without keys).
    pub fn check_tools(self, tools: bool) -> Result<(), ApiError> {
        if tools && self.0 != Some(Role::Admin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "answering with tools runs plugins, which needs an admin key",
            ));
        }
        Ok(())
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
