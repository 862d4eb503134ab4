//! The WebSocket edge: `GET /ws`.
//!
//! Checks the upgrade request (Origin allow-list, no token in the URL), takes
//! a place among the client address's connections (429 when the address is at
//! a cap, see [`crate::admission`]), answers 101, and in a spawned task hands the upgraded connection to a new
//! connection actor (a plain TCP socket split into lock-free halves; a TLS
//! stream split by tokio): tungstenite reads it with a small read buffer
//! (its default would allocate 128 KiB per connection), and the
//! connection's own writer writes finished frames to it. Nothing here
//! waits on the client: authentication runs in the actor, under its deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use courier_actors::realtime::connection::Peer;
use courier_actors::realtime::outbound::SocketWrite;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::api::error::ApiError;
use crate::http::{json_error, App};
use courier_protocol::ErrorCode;

/// Read buffer per connection, held for the connection's life: a chat
/// message's frame or an `authenticate` with its token fits in one read. A
/// larger frame gets a buffer of its own size, filled 1 KiB per read.
const READ_BUFFER: usize = 1024;
/// The `Retry-After` of an upgrade refused by a per-address cap: a place
/// frees when one of the address's connections authenticates or closes.
const CAPPED_RETRY_AFTER: Duration = Duration::from_secs(1);
/// tungstenite writes only control replies (pong, close) here, and
/// writes them through at once.
const WRITE_BUFFER: usize = 0;

/// The tungstenite settings of every connection.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// `GET /ws`.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response<Body> {
    let headers = req.headers();
    if !is_websocket_upgrade(headers) {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame,
            "expected a WebSocket upgrade",
        );
    }
    if req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame,
            "tokens are not accepted in the URL; send an authenticate frame",
        );
    }
    if !origin_allowed(headers, &app.config.allowed_origins) {
        return json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame,
            "missing Sec-WebSocket-Key",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let ip = app.client_ip(headers, addr);
    let slot = match app.admission.admit(&ip) {
        Ok(slot) => slot,
        Err(refused) => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                refused.to_string(),
            );
            error.retry_after = Some(CAPPED_RETRY_AFTER);
            return error.into_response();
        }
    };
    let peer = Peer {
        ip: Some(ip),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        slot: Some(Arc::new(slot)),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let realtime = app.realtime.clone();
    let config = ws_config(app.config.max_frame_bytes);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let started = match upgraded.downcast::<TokioIo<TcpStream>>() {
            // Plain TCP: halves that share the socket without a lock. What
            // hyper read past the request (a client that did not wait for
            // the 101) is read first, from a copy: `read_buf` is a view of
            // hyper's 8 KiB read buffer, which it would keep alive for the
            // connection's lifetime (8 KiB of every idle connection).
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let early = Bytes::copy_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                let read = std::io::Cursor::new(early).chain(read);
                realtime
                    .spawn_connection(read, SocketWrite::Tcp(write), config, peer)
                    .await
            }
            // TLS: the stream's own halves, behind tokio's split lock.
            Err(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let write = SocketWrite::Stream(Box::pin(write));
                realtime.spawn_connection(read, write, config, peer).await
            }
        };
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start connection actor");
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has(headers, header::UPGRADE, "websocket")
        && header_has(headers, header::CONNECTION, "upgrade")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13")
}

/// An absent Origin (non-browser clients) passes; a present one must match
/// the request's Host or be listed in `allowed`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    let origin_host = origin_host.trim_end_matches('/');
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(origin_host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).expect("origin"));
        }
        h
    }

    #[test]
    fn origins() {
        assert!(origin_allowed(&headers(None, "chat.example"), &[]));
        assert!(origin_allowed(
            &headers(Some("https://chat.example"), "chat.example"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat.example"),
            &[]
        ));
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "chat.example"),
            &allowed
        ));
    }
}
