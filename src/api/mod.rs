//! The REST API (PROTOCOL.md section 6).
//!
//! # Layout
//! - [`auth`]: `/api/auth/*`: register, login (lockout), refresh-token
//!   (rotation, reuse detection), logout, change-password.
//! - [`users`]: `/api/users*`: user management, permissions, sessions.
//! - [`channels`]: `/api/channels*`: channels, members, history pages.
//! - [`messages`]: `POST /api/messages`, through the WebSocket send path.
//! - [`audit`]: `/api/audit` and `/api/audit/verify`.
//! - [`openapi`]: the OpenAPI description served at `/api/openapi.json`.
//! - [`error`], [`extract`], [`validate`], [`views`]: error bodies, request
//!   extractors, field rules and answer shapes.
//!
//! # Request path
//! `/api/auth/*` first passes the per-IP limit (`auth_per_15min`), and
//! `/api/auth/register` then one of its own (`register_per_hour`). Routes
//! that need a session then pass [`authenticate`]: the bearer token is
//! checked by the same authenticator as the WebSocket's (signature,
//! algorithm, `exp`/`iss`/`aud`/`sub`, and a live session of an existing
//! user), and, outside `/api/auth/*`, the per-user limit
//! (`rest_per_15min`) applies. The [`Caller`](extract::Caller) it leaves in
//! the request is what handlers authorize with: every decision is
//! `courier_actors::authz::decide`, and every denial is audited
//! (`access.denied`) and answers 403. The limiters live in the [`Gate`]
//! the router's middleware holds, so two servers in one process never share
//! counts.

pub mod audit;
pub mod auth;
pub mod channels;
pub mod error;
pub mod extract;
pub mod messages;
pub mod openapi;
pub mod users;
pub mod validate;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use courier_actors::identity::AuthRejected;
use courier_actors::metric_names;
use courier_protocol::UserId;

use crate::http::App;
use crate::rate_limit::{ip_key, KeyedLimit};
use error::ApiError;
use extract::{BodyLimit, Caller, Client};

/// The window of both REST rate limits.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Bearer tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 4096;

/// What the API's middleware holds: the app and the rate limiters.
pub struct Gate {
    app: Arc<App>,
    /// `rest_per_15min`, per user, outside `/api/auth/*`.
    rest: KeyedLimit<UserId>,
    /// `auth_per_15min`, per client address, on `/api/auth/*`.
    auth: KeyedLimit<String>,
    /// `register_per_hour`, per client address, on `/api/auth/register`
    /// (its 409 tells whether a username is taken).
    register: KeyedLimit<String>,
}

/// Every REST route, with its middleware.
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let body_limit = (app.config.max_text_bytes.saturating_mul(6) + 4096).max(64 * 1024);
    let gate = Arc::new(Gate {
        rest: KeyedLimit::new("rest", app.config.rest_per_15min, WINDOW),
        auth: KeyedLimit::new("auth", app.config.auth_per_15min, WINDOW),
        register: KeyedLimit::new(
            "register",
            app.config.register_per_hour,
            Duration::from_secs(3600),
        ),
        app,
    });

    let auth_session = Router::new()
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/change-password", post(auth::change_password))
        .route_layer(middleware::from_fn_with_state(
            gate.clone(),
            authenticate_uncounted,
        ));
    let auth = Router::new()
        .route(
            "/api/auth/register",
            post(auth::register).route_layer(middleware::from_fn_with_state(
                gate.clone(),
                limit_register_ip,
            )),
        )
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh-token", post(auth::refresh))
        .merge(auth_session)
        .route_layer(middleware::from_fn_with_state(gate.clone(), limit_auth_ip));

    let api = Router::new()
        .route("/api/users", get(users::list).post(users::create))
        .route(
            "/api/users/{id}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/api/users/{id}/permissions", get(users::permissions))
        .route("/api/users/{id}/sessions", get(users::sessions))
        .route(
            "/api/users/{id}/terminate-sessions",
            post(users::terminate_sessions),
        )
        .route("/api/channels", get(channels::list).post(channels::create))
        .route(
            "/api/channels/{id}",
            get(channels::get)
                .put(channels::update)
                .delete(channels::delete),
        )
        .route(
            "/api/channels/{id}/members",
            get(channels::members).post(channels::add_member),
        )
        .route(
            "/api/channels/{id}/members/{userId}",
            axum::routing::put(channels::set_member_role).delete(channels::remove_member),
        )
        .route("/api/channels/{id}/messages", get(channels::messages))
        .route("/api/messages", post(messages::send))
        .route("/api/audit", get(audit::list))
        .route("/api/audit/verify", get(audit::verify))
        .route_layer(middleware::from_fn_with_state(gate, authenticate_counted));

    let document = Bytes::from(openapi::document().to_string());
    Router::new()
        .merge(auth)
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || async move {
                let mut response = document.into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }),
        )
        .route(
            "/api/{*rest}",
            any(|| async { ApiError::not_found("no such endpoint") }),
        )
        .layer(Extension(BodyLimit(body_limit)))
}

/// The per-IP limit of `/api/auth/*`. Leaves the [`Client`] in the request.
async fn limit_auth_ip(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let client = client_of(&gate.app, &req);
    if let Err(wait) = gate.auth.check(&ip_key(&client.ip)) {
        return ApiError::rate_limited(wait).into_response();
    }
    req.extensions_mut().insert(client);
    next.run(req).await
}

/// The per-IP limit of `/api/auth/register`, inside the `/api/auth/*` one.
async fn limit_register_ip(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let client = client_of(&gate.app, &req);
    if let Err(wait) = gate.register.check(&ip_key(&client.ip)) {
        return ApiError::rate_limited(wait).into_response();
    }
    next.run(req).await
}

async fn authenticate_counted(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    authenticate(&gate, true, req, next).await
}

async fn authenticate_uncounted(
    State(gate): State<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Response {
    authenticate(&gate, false, req, next).await
}

/// Checks the bearer token and its session, applies the per-user limit
/// when `counted`, and leaves the [`Caller`] in the request.
async fn authenticate(gate: &Gate, counted: bool, mut req: Request, next: Next) -> Response {
    let token = match bearer(req.headers()) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    let identity = match gate.app.realtime.authenticator.authenticate(token).await {
        Ok(identity) => identity,
        Err(rejected) => {
            metrics::counter!(metric_names::AUTH_FAILURES, "reason" => "token").increment(1);
            return match rejected {
                AuthRejected::Unavailable => ApiError::unavailable(),
                other => ApiError::auth_failed(other.to_string()),
            }
            .into_response();
        }
    };
    if counted {
        if let Err(wait) = gate.rest.check(&identity.user_id) {
            return ApiError::rate_limited(wait).into_response();
        }
    }
    let client = client_of(&gate.app, &req);
    req.extensions_mut().insert(Caller { identity, client });
    next.run(req).await
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(ApiError::unauthenticated)?
        .to_str()
        .map_err(|_| ApiError::auth_failed("invalid or expired token"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(ApiError::unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthenticated());
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::auth_failed("invalid or expired token"));
    }
    Ok(token)
}

fn client_of(app: &App, req: &Request) -> Client {
    if let Some(client) = req.extensions().get::<Client>() {
        return client.clone();
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    Client::from_parts(app, req.headers(), peer)
}
