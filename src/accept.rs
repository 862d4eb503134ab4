//! The accept loop: every HTTP connection is served by hyper's HTTP/1
//! server with a deadline on its request headers.
//!
//! `axum::serve` gives hyper no timer, so a client that sends its request
//! (the WebSocket upgrade included) a byte at a time, or connects and sends
//! nothing, would hold a socket and a task for ever (slowloris). Here each
//! connection gets hyper's `header_read_timeout`: the headers must arrive
//! within it, and an idle keep-alive connection is closed after it. Upgrades
//! (`/ws`) leave hyper once answered, so the deadline does not touch open
//! WebSockets; their own authentication deadline starts then.
//!
//! On shutdown the loop stops accepting, asks every HTTP connection to
//! finish its request in flight and close, and waits for them (at most
//! [`DRAIN`]).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How long shutdown waits for HTTP requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: Listener<Addr = SocketAddr>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            (io, peer) = listener.accept() => {
                let router = router.clone();
                connections.spawn(connection(io, peer, router, header_timeout, stop_rx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "HTTP requests still running after the drain; dropped"
        );
        connections.shutdown().await;
    }
}

/// One HTTP/1 connection, until it closes or shutdown asks it to.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
