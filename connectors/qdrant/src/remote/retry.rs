//! Which failures are worth another try, the backoff between tries, and
//! errors that say what to do.

use std::time::Duration;

use magpie_core::{Error, Result};
use qdrant_client::QdrantError;

use super::{RemoteConfig, API_KEY_ENV};

pub(super) fn remote_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::stage("qdrant", format!("{what}: {e}"))
}

/// Whether a failed request may succeed if sent again.
pub fn is_transient(e: &QdrantError) -> bool {
    use tonic::Code;
    match e {
        QdrantError::ResourceExhaustedError { .. } => true,
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
            ) || (matches!(status.code(), Code::Unknown | Code::Internal) && {
                // A cluster node relays a peer's outage as an internal error,
                // and a node that has just come back answers from shards it
                // has not loaded yet ("Local shard 0 not found") or replicas
                // still recovering; both pass within seconds.
                let m = status.message().to_lowercase();
                [
                    "transport",
                    "unavailable",
                    "connect error",
                    "connection refused",
                    "local shard",
                    "no active replica",
                    "is not active",
                    "is dead",
                    "not ready",
                ]
                .iter()
                .any(|w| m.contains(w))
            })
        }
        _ => false,
    }
}

pub(super) fn explain(what: &str, endpoint: &str, e: QdrantError) -> Error {
    if let QdrantError::ResponseError { status } = &e {
        let hint = match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                format!("; set {API_KEY_ENV} to a key the server accepts")
            }
            tonic::Code::Unavailable => {
                format!("; is Qdrant running at {endpoint} with its gRPC port (6334) reachable?")
            }
            _ => String::new(),
        };
        return remote_err(
            what,
            format!("{}: {}{hint}", status.code(), status.message()),
        );
    }
    remote_err(what, e)
}

/// Send a request, again after a backoff while it fails transiently.
pub(crate) async fn retry<T, F, Fut>(cfg: &RemoteConfig, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, QdrantError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < cfg.retries && is_transient(&e) => {
                let wait = match &e {
                    QdrantError::ResourceExhaustedError {
                        retry_after_seconds,
                        ..
                    } => Duration::from_secs((*retry_after_seconds).clamp(1, 30)),
                    _ => backoff(attempt),
                };
                tracing::warn!(what, attempt, ?wait, error = %e, "qdrant request failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) if is_transient(&e) => {
                return Err(Error::Unavailable(format!(
                    "{}: still failing after {} retries ({}); bring the Qdrant node(s) back \
                     and run again (what was committed is intact), or raise `retries=` in \
                     the store URL",
                    cfg.display_url(),
                    cfg.retries,
                    explain(what, &cfg.endpoint, e)
                )))
            }
            Err(e) => return Err(explain(what, &cfg.endpoint, e)),
        }
    }
}

pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(5)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // Up to 25% jitter so retrying clients do not move in step.
    Duration::from_millis(base + nanos % (base / 4 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retried() {
        let st = |code| QdrantError::ResponseError {
            status: tonic::Status::new(code, "x"),
        };
        assert!(is_transient(&st(tonic::Code::Unavailable)));
        assert!(is_transient(&st(tonic::Code::DeadlineExceeded)));
        assert!(!is_transient(&st(tonic::Code::InvalidArgument)));
        assert!(!is_transient(&st(tonic::Code::NotFound)));
        assert!(!is_transient(&st(tonic::Code::Unauthenticated)));
        assert!(!is_transient(&st(tonic::Code::Internal)));
        // What a node just back from an outage answered before it had loaded
        // its shards (seen in CI): retried, not the end of an indexing run.
        let recovering = QdrantError::ResponseError {
            status: tonic::Status::new(
                tonic::Code::Internal,
                "Service internal error: 1 of 1 read operations failed:\n  \
                 Service internal error: Local shard 0 not found",
            ),
        };
        assert!(is_transient(&recovering));
        for attempt in 0..12 {
            let b = backoff(attempt);
            let base = (200u64 << attempt.min(5)).min(5_000);
            assert!(
                b >= Duration::from_millis(base) && b <= Duration::from_millis(base + base / 4),
                "attempt {attempt}: {b:?}"
            );
        }
    }
}
