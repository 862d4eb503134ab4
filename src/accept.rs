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
//! The body has a deadline of its own, `body_timeout` from the end of the
//! headers: every request's body is wrapped in a [`DeadlineBody`], which
//! fails with [`BodyTimedOut`] when read past it (a client declaring a large
//! `Content-Length` and trickling it a byte at a time). The API answers that
//! 408 and closes the connection; the timeout is counted in
//! `courier_http_body_timeouts_total`. A body that is never read holds
//! nothing: hyper closes the connection after the answer.
//!
//! On shutdown the loop stops accepting, asks every HTTP connection to
//! finish its request in flight and close, and waits for them (at most
//! [`DRAIN`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::serve::Listener;
use axum::Router;
use courier_actors::telemetry::names;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long shutdown waits for HTTP requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// How long a client has to send a request.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// For the request line and headers (`http_header_timeout_ms`).
    pub header: Duration,
    /// For the whole body, from the end of the headers
    /// (`http_body_timeout_ms`).
    pub body: Duration,
    /// For the whole body of a file upload (`files_upload_timeout_secs`).
    pub upload: Duration,
}

impl Deadlines {
    /// The body deadline of a request: uploads (`POST /api/files`,
    /// `POST /api/channels/{id}/attachments`) get the longer one.
    fn body_for(&self, method: &hyper::Method, path: &str) -> Duration {
        let upload = method == hyper::Method::POST
            && (path == "/api/files"
                || (path.starts_with("/api/channels/") && path.ends_with("/attachments")));
        if upload {
            self.upload
        } else {
            self.body
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    deadlines: Deadlines,
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
                connections.spawn(connection(io, peer, router, deadlines, stop_rx.clone()));
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
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let timeout = deadlines.body_for(request.method(), request.uri().path());
        let mut request = request.map(|body| DeadlineBody::new(body, timeout));
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header)
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

/// A request body not received by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// A request body that fails with [`BodyTimedOut`] when read past its
/// deadline. The timer is made only when a read has to wait, so a request
/// without a body, or one whose body came with its headers, costs none.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl<B> DeadlineBody<B> {
    /// `inner`, to be read within `timeout` from now.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + timeout,
            timer: None,
            timed_out: false,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                metrics::counter!(names::HTTP_BODY_TIMEOUTS).increment(1);
                Poll::Ready(Some(Err(BodyTimedOut.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body read failed because its deadline passed.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}
