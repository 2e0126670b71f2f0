//! The listener's accept loop: HTTP/1 over hyper with the limits a daemon
//! on a shared host needs, which `axum::serve` does not set.
//!
//! - **Header read and idle timeout** ([`Limits::header_read`]): a client
//!   must send a whole request head within it, and a kept-alive connection
//!   that sends nothing for as long is closed — idle and slow-loris sockets
//!   do not pile up.
//! - **Request timeout** ([`Limits::request`]): reading the body and
//!   answering, together; a body trickled in byte by byte is cut off (408).
//! - **Connection cap** ([`Limits::connections`]): past it, accepting waits
//!   for a connection to close, so sockets never take the descriptors the
//!   engine, Git and the store need.
//! - **Accept errors** are logged (once per kind until an accept succeeds)
//!   and retried after a short pause; running out of descriptors is
//!   transient, never the end of the listener.
//!
//! Each request carries the peer address as axum's `ConnectInfo`, which
//! [`super::Caller`] reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head, also between kept-alive requests.
    pub header_read: Duration,
    /// Longest time from a request head to the end of its answer.
    pub request: Duration,
    /// Most connections open at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(30),
            connections: 2048,
        }
    }
}

impl Limits {
    /// The default limits with the connection cap kept within the process's
    /// descriptor limit: at most half of it, so the rest of the daemon keeps
    /// descriptors however many sockets are open.
    pub fn for_descriptors(nofile: u64) -> Self {
        let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX);
        let default = Limits::default();
        Limits {
            connections: default.connections.min(half).max(16),
            ..default
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open
/// connections finish their request and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let connections = tokio_util::task::TaskTracker::new();
    let mut last_error: Option<std::io::ErrorKind> = None;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if last_error != Some(e.kind()) {
                    tracing::error!(error = %e, "HTTP listener: cannot accept a connection; retrying");
                    last_error = Some(e.kind());
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        last_error = None;
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, peer, app, limits, stop).await;
        });
    }
    connections.close();
    connections.wait().await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                let answer =
                    tokio::time::timeout(limits.request, app.call(req.map(axum::body::Body::new)));
                Ok::<_, std::convert::Infallible>(match answer.await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response()
                    }
                })
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, peer = %peer, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit, and
/// returns the limit now in force (a daemon's sockets, the engine's
/// connections, Git packs and the store share it; 1,024 is a common soft
/// default that a busy listener alone can exhaust).
#[cfg(unix)]
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> u64 {
    1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_within_half_the_descriptors() {
        assert_eq!(Limits::for_descriptors(1024).connections, 512);
        assert_eq!(Limits::for_descriptors(1 << 20).connections, 2048);
        assert_eq!(Limits::for_descriptors(10).connections, 16);
    }
}
