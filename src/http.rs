//! The HTTP side: the router, the shared [`App`] handles, and the liveness,
//! readiness and metrics endpoints. REST handlers live in [`crate::api`].
//!
//! Every answer carries `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`, and `Strict-Transport-Security` when
//! this server terminates TLS; every `/api` answer also carries
//! `Cache-Control: no-store` (they carry tokens and messages). The headers
//! are set once, by layers on the router, and so is CORS for the origins of
//! `COURIER_CORS_ORIGINS` (none by default).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use courier_actors::durable::store::DynStore;
use courier_actors::realtime::Realtime;
use courier_protocol::ErrorCode;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::lockout::LoginGuard;
use crate::auth::passwords::Passwords;
use crate::auth::tokens::Tokens;
use crate::config::Config;

/// What every handler may use. Read-only handles; state lives in actors and
/// the store.
pub struct App {
    pub config: Arc<Config>,
    pub store: DynStore,
    /// Attachments and the vault: the object store, uploads, downloads.
    pub files: Arc<courier_actors::files::Files>,
    pub realtime: Arc<Realtime>,
    pub tokens: Arc<Tokens>,
    pub passwords: Passwords,
    /// The per-address WebSocket caps.
    pub admission: Arc<crate::admission::Admission>,
    /// The network allow-lists and trusted proxies ([`crate::network`]).
    pub network: Arc<crate::network::Network>,
    /// When the server started (`/health`'s uptime).
    pub started_at: Instant,
    /// Failed-login counts per account and address, and per account.
    pub login_guard: LoginGuard,
    /// The REST limiters and the figures of every rate limit, changed at
    /// run time through `/api/settings/rate-limits`.
    pub rate_limits: crate::runtime_settings::RateLimits,
}

impl App {
    /// The client's address, the one every rate limit, the login lockout,
    /// the per-address WebSocket caps, the network allow-lists and the
    /// audit take: the socket's peer, or, when that peer is one of
    /// `trusted_proxies`, the first `X-Forwarded-For` hop from the right
    /// that is not a trusted proxy ([`crate::network::Network::client_addr`]).
    pub fn client_addr(&self, headers: &HeaderMap, addr: SocketAddr) -> IpAddr {
        self.network.client_addr(addr.ip(), headers)
    }

    /// [`App::client_addr`] as text, as sessions, limiters and the audit
    /// keep it.
    pub fn client_ip(&self, headers: &HeaderMap, addr: SocketAddr) -> String {
        self.client_addr(headers, addr).to_string()
    }
}

/// `Strict-Transport-Security` of a server with TLS: two years, this host
/// and its subdomains.
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// The whole HTTP surface.
pub fn router(app: Arc<App>) -> Router {
    let tls = app.config.tls_cert.is_some();
    // Only when origins are listed: the layer answers every OPTIONS itself.
    let cors = (!app.config.cors_origins.is_empty()).then(|| cors(&app.config.cors_origins));
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ws", get(crate::ws::upgrade))
        .merge(crate::web::routes(&app.config))
        .merge(crate::admin::routes())
        .merge(crate::api::routes(app.clone()))
        .fallback(crate::api::no_such_endpoint)
        .layer(axum::middleware::map_response(
            crate::api::method_not_allowed_as_json,
        ))
        // Before every handler and the WebSocket upgrade: the client's
        // address, and the network allow-lists.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::network::guard,
        ))
        // Outside the guard: every answer is counted, refusals included.
        .layer(axum::middleware::map_response(count_response))
        .with_state(app)
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        ));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    if tls {
        router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static(HSTS),
        ))
    } else {
        router
    }
}

/// Counts every answer by its status class (`courier_http_responses_total`).
async fn count_response(response: Response<Body>) -> Response<Body> {
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(courier_actors::telemetry::names::HTTP_RESPONSES, "class" => class)
        .increment(1);
    response
}

/// CORS for the origins of `COURIER_CORS_ORIGINS`: their pages may call the
/// REST API with a bearer token (no cookies are involved, so no credentials
/// mode). No origin listed: no layer, no CORS headers at all, and a browser
/// on another origin is refused by its own same-origin policy.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<header::HeaderValue> = origins
        .iter()
        .filter_map(|origin| header::HeaderValue::from_str(origin).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// A JSON error body `{"error": {"code", "message"}}`.
pub fn json_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Liveness: always 200 while the process serves, with what runs (and, in
/// a cluster, this node's part in it).
async fn health(State(app): State<Arc<App>>) -> Response<Body> {
    let mut body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started_at.elapsed().as_secs(),
        "store": app.store.backend(),
    });
    if let Some(cluster) = &app.realtime.cluster {
        body["cluster"] = serde_json::json!({
            "nodeId": cluster.node_id(),
            "nats": if cluster.nats_connected() { "connected" } else { "disconnected" },
            "leaseHeld": cluster.lease_held(),
            "channelsOwned": cluster.channels_owned(),
        });
    }
    json(StatusCode::OK, body)
}

/// Readiness: 503 naming what is not ready (`database`, `actors`, and in a
/// cluster `cluster` while NATS is unreachable or the node lease not held).
async fn ready(State(app): State<Arc<App>>) -> Response<Body> {
    // The persistence actor's view (a ping every 250 ms, and whether its
    // batches commit): when this says 503, sends are refused `unavailable`.
    let store_ok = app.realtime.persistence.store_reachable();
    let actors_ok = app.realtime.healthy();
    let cluster_ok = app
        .realtime
        .cluster
        .as_ref()
        .is_none_or(|c| c.nats_connected() && c.lease_held());
    let failing: Vec<&str> = [
        (store_ok, "database"),
        (actors_ok, "actors"),
        (cluster_ok, "cluster"),
    ]
    .into_iter()
    .filter_map(|(ok, name)| (!ok).then_some(name))
    .collect();
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "ready": failing.is_empty(),
            "failing": failing,
            "store": store_ok,
            "actors": actors_ok,
        }),
    )
}

/// `/metrics`: the store's figures sampled now, then everything recorded.
async fn metrics(State(app): State<Arc<App>>) -> Response<Body> {
    crate::telemetry::record_store(
        app.store.pool_stats(),
        app.realtime.persistence.store_reachable(),
    );
    let mut response = Response::new(Body::from(crate::telemetry::render_metrics()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
