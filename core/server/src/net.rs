//! The HTTP listener: connections are counted and capped under the
//! file-descriptor limit, request heads must arrive within a deadline (which
//! also closes idle keep-alive connections), and shutdown is graceful.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// File descriptors kept free of connections: the index, the models, uploads
/// and logs need their own.
const FD_HEADROOM: u64 = 256;

/// What the listener needs to know.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A request head (or, on a kept-alive connection, the next one) must
    /// arrive within this.
    pub header_timeout: Duration,
}

/// Connection counters the metrics show.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections turned away because the server was full.
    pub refused: AtomicU64,
}

/// Raise the soft open-files limit to the hard one (connections need
/// descriptors) and return the limit in force.
// `rlim_t` is u64 on Linux but not on every Unix: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write/read the plain struct above.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 1024;
            }
            let before = lim.rlim_cur;
            if lim.rlim_cur < lim.rlim_max {
                let mut raised = lim;
                raised.rlim_cur = lim.rlim_max.min(1 << 20);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    tracing::info!(
                        from = before as u64,
                        to = raised.rlim_cur as u64,
                        "raised the open-files limit for connections"
                    );
                    return raised.rlim_cur as u64;
                }
            }
            lim.rlim_cur as u64
        }
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The connection cap: the configured one, never above the file-descriptor
/// limit less headroom.
pub fn connection_cap(configured: Option<usize>, fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(FD_HEADROOM).max(16) as usize;
    configured.unwrap_or(4096).min(room).max(1)
}

/// Sent, and the connection closed, when the server has no room for it.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 102\r\n\r\n\
{\"error\":{\"message\":\"the server has too many open connections; retry\",\"type\":\"overloaded\",\"code\":503}}";

/// Serve `router` on `listener` until `shutdown` resolves, then wait for
/// requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: NetConfig,
    cap: usize,
    stats: Arc<NetStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was
                    // accepted: wait a little and go on, never stop serving.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(FULL)).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(req.map(axum::body::Body::new)).await
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The client's address, as the listener recorded it.
pub fn peer(req: &axum::extract::Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_free() {
        assert_eq!(connection_cap(None, 1024), 768);
        assert_eq!(connection_cap(Some(100), 1024), 100);
        assert_eq!(connection_cap(None, 1 << 20), 4096);
        assert_eq!(connection_cap(Some(5000), 2000), 1744);
        assert!(connection_cap(None, 10) >= 1);
        let body_len = FULL.len() - FULL.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4;
        assert_eq!(body_len, 102, "content-length of the 503");
    }
}
