//! The REST API (PROTOCOL.md section 6).
//!
//! # Layout
//! - [`auth`]: `/api/auth/*`: register, login (lockout), refresh-token
//!   (rotation, reuse detection), logout, change-password.
//! - [`users`]: `/api/users*`: user management, permissions, sessions.
//! - [`second_factor`]: `/api/auth/totp*` (enrol, confirm, disable one's
//!   TOTP second factor) and `DELETE /api/users/{id}/totp` (an admin's reset).
//! - [`channels`]: `/api/channels*`: channels, members, history pages.
//! - [`messages`]: `/api/messages*`: send, read, edit and delete, through
//!   the WebSocket paths.
//! - [`search`]: `GET /api/messages/search`, search over encrypted messages
//!   through the blind index (issue 38, docs/search.md).
//! - [`moderation`]: `/api/moderation/flags`: the queue of flagged messages
//!   (flags are set under `/api/messages/{id}/flag`).
//! - [`audit`]: `/api/audit*`: filtered pages, one entry, verification,
//!   signed checkpoints.
//! - [`settings`]: `/api/settings*`: the effective configuration (secrets
//!   redacted) and the rate limits an admin changes at run time.
//! - [`holds`]: `/api/holds*`: legal holds, placed and released.
//! - [`notifications`]: `/api/me/notification-preferences` and
//!   `/api/announcements`: notification preferences, admins' announcements.
//! - [`break_glass`]: `/api/break-glass*`, `POST /api/channels/{id}/break-glass`,
//!   `PUT /api/users/{id}/break-glass`: emergency access and its review.
//! - [`patients`]: `/api/patients/{ref}/channels` and `/messages`, the
//!   patient link, and the parsing, sealing and showing of `patientRef`.
//! - [`disclosures`]: `/api/patients/{ref}/disclosures`, the accounting of
//!   disclosures of a patient, and the audit details of REST reads.
//! - [`openapi`]: the OpenAPI description served at `/api/openapi.json`,
//!   derived from the handlers' `#[utoipa::path]` and types.
//! - [`error`], [`extract`], [`validate`], [`views`]: error bodies, request
//!   extractors, field rules and answer shapes.
//!
//! # Request path
//! `/api/auth/*` first passes the per-IP limit (`auth_per_15min`), and
//! `/api/auth/register` then one of its own (`register_per_hour`). Routes
//! that need a session then pass [`authenticate`]: the bearer token is
//! checked by the same authenticator as the WebSocket's (signature,
//! algorithm, `exp`/`iss`/`aud`/`sub`, and a live session of an existing,
//! enabled user), and, outside `/api/auth/*`, the per-user limit
//! (`rest_per_15min`) applies, and an account with a temporary password
//! is refused (403) until it changes it, and so is an account whose role
//! must have a second factor (`totp_required_roles`) until it enrols one
//! (the `/api/auth/totp*` routes take it). A request without `Authorization`
//! may instead carry the admin console's cookie ([`crate::admin::session`]):
//! the same checks follow, and a state-changing method also needs the
//! session's CSRF token. The [`Caller`](extract::Caller) it leaves in
//! the request is what handlers authorize with: every decision is
//! `courier_actors::policy::authz::decide`, and every denial is audited
//! (`access.denied`) and answers 403. The limiters live in the app's
//! [`RateLimits`](crate::runtime_settings::RateLimits) (one per server, so
//! two servers in one process never share counts), where an admin may
//! change them at run time.

pub mod audit;
pub mod auth;
pub mod break_glass;
pub mod channels;
pub mod disclosures;
pub mod error;
pub mod extract;
pub mod files;
pub mod holds;
pub mod messages;
pub mod moderation;
pub mod notifications;
pub mod openapi;
pub mod password_reset;
pub mod patients;
pub mod search;
pub mod second_factor;
pub mod settings;
pub mod users;
pub mod validate;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use courier_actors::policy::identity::AuthRejected;
use courier_actors::telemetry::names;
use courier_protocol::ErrorCode;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::http::App;
use crate::rate_limit::ip_key;
use error::ApiError;
use extract::{BodyLimit, Caller, Client};

/// Bearer tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 4096;

/// What the API's middleware holds: the app, whose
/// [`RateLimits`](crate::runtime_settings::RateLimits) are the limiters.
pub struct Gate {
    app: Arc<App>,
}

/// Every REST route, with its middleware, and the OpenAPI document derived
/// from the same registrations (served at `/api/openapi.json`).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let (router, document) = documented_routes(app);
    let document = Bytes::from(document.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialize");
        String::from("{}")
    }));
    router.layer(Extension(OpenApiJson(document)))
}

/// The router and its document, from one list of handlers: a route cannot
/// be served undocumented, nor documented unserved.
fn documented_routes(app: Arc<App>) -> (Router<Arc<App>>, utoipa::openapi::OpenApi) {
    let body_limit = (app.config.max_text_bytes.saturating_mul(6) + 4096).max(64 * 1024);
    let gate = Arc::new(Gate { app });

    let auth_session = OpenApiRouter::new()
        .routes(routes!(auth::logout))
        .routes(routes!(auth::change_password))
        .routes(routes!(second_factor::enroll))
        .routes(routes!(second_factor::confirm))
        .routes(routes!(second_factor::disable))
        .route_layer(middleware::from_fn_with_state(
            gate.clone(),
            authenticate_uncounted,
        ));
    let auth = OpenApiRouter::new()
        .routes(
            routes!(auth::register).layer(middleware::from_fn_with_state(
                gate.clone(),
                limit_register_ip,
            )),
        )
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(password_reset::request))
        .routes(routes!(password_reset::confirm))
        .merge(auth_session)
        .route_layer(middleware::from_fn_with_state(gate.clone(), limit_auth_ip));

    let api = OpenApiRouter::new()
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::permissions))
        .routes(routes!(users::sessions))
        .routes(routes!(users::terminate_sessions))
        .routes(routes!(users::lock))
        .routes(routes!(users::unlock))
        .routes(routes!(users::disable))
        .routes(routes!(users::enable))
        .routes(routes!(users::reset_password))
        .routes(routes!(second_factor::reset))
        .routes(routes!(password_reset::admin_reset))
        .routes(routes!(users::security_events))
        .routes(routes!(settings::get, settings::update_rate_limits))
        .routes(routes!(holds::place, holds::list))
        .routes(routes!(holds::get))
        .routes(routes!(holds::release))
        .routes(routes!(notifications::get_prefs, notifications::put_prefs))
        .routes(routes!(notifications::create, notifications::list))
        .routes(routes!(break_glass::open))
        .routes(routes!(break_glass::list))
        .routes(routes!(break_glass::end))
        .routes(routes!(break_glass::review))
        .routes(routes!(break_glass::set_right))
        .routes(routes!(audit::checkpoints))
        .routes(routes!(disclosures::report))
        .routes(routes!(patients::channels))
        .routes(routes!(patients::messages))
        .routes(routes!(channels::list, channels::create))
        .routes(routes!(
            channels::get,
            channels::update,
            channels::patch,
            channels::delete
        ))
        .routes(routes!(channels::archive))
        .routes(routes!(channels::unarchive))
        .routes(routes!(channels::members, channels::add_member))
        .routes(routes!(channels::set_member_role, channels::remove_member))
        .routes(routes!(channels::messages))
        .routes(routes!(channels::receipts))
        .routes(routes!(messages::send))
        // Uploads stream up to files_max_bytes, counted by the files
        // subsystem: no body limit of axum's (multipart's is 2 MiB).
        .routes(routes!(files::attach).layer(axum::extract::DefaultBodyLimit::disable()))
        .routes(
            routes!(files::list, files::upload_to_vault)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .routes(routes!(files::get, files::delete))
        .routes(routes!(files::content))
        .routes(routes!(files::link))
        .routes(routes!(files::shares, files::share))
        .routes(routes!(files::unshare))
        .routes(routes!(search::search))
        .routes(routes!(messages::get, messages::edit, messages::delete))
        .routes(routes!(messages::flag, messages::unflag))
        .routes(routes!(moderation::flags))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(audit::get))
        .route_layer(middleware::from_fn_with_state(gate, authenticate_counted));

    // A signed link is its own credential.
    let links = OpenApiRouter::new().routes(routes!(files::link_content));

    let (router, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(auth)
        .merge(api)
        .merge(links)
        .routes(routes!(openapi_json))
        .split_for_parts();
    let mut document = document;
    openapi::Shared.modify(&mut document);
    let router = router
        .route("/api/{*rest}", any(no_such_endpoint))
        .layer(Extension(BodyLimit(body_limit)))
        // Answers carry tokens, messages and user data: never cached.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    (router, document)
}

/// The serialized document, put in every request by [`routes`].
#[derive(Clone)]
struct OpenApiJson(Bytes);

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "meta.openapi",
    tag = "meta",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "The document", content_type = "application/json")),
    security(())
)]
async fn openapi_json(Extension(OpenApiJson(document)): Extension<OpenApiJson>) -> Response {
    let mut response = document.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to a path no route serves.
pub async fn no_such_endpoint() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Gives the bare 405 of a route asked with a method it does not serve a
/// JSON error body (`not_found`: there is no such endpoint for this
/// method), keeping its `Allow` header.
pub async fn method_not_allowed_as_json(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut json = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::NotFound,
        "this endpoint does not take this method; see Allow",
    )
    .into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
}

/// The per-IP limit of `/api/auth/*`. Leaves the [`Client`] in the request.
async fn limit_auth_ip(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let client = client_of(&gate.app, &req);
    if let Err(wait) = gate.app.rate_limits.auth.check(&ip_key(&client.ip)) {
        return ApiError::rate_limited(wait).into_response();
    }
    req.extensions_mut().insert(client);
    next.run(req).await
}

/// The per-IP limit of `/api/auth/register`, inside the `/api/auth/*` one.
async fn limit_register_ip(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let client = client_of(&gate.app, &req);
    if let Err(wait) = gate.app.rate_limits.register.check(&ip_key(&client.ip)) {
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

/// Checks the bearer token and its session (or, with no `Authorization`
/// header, the admin console's cookie and, for a state-changing method, its
/// CSRF token), applies the per-user limit and the rule of a temporary
/// password when `counted` (every route but `logout` and
/// `change-password`), and leaves the [`Caller`] in the request.
async fn authenticate(gate: &Gate, counted: bool, req: Request, next: Next) -> Response {
    // The parts alone are held across the checks (a body is not `Sync`).
    let (mut parts, body) = req.into_parts();
    let caller = match caller_of(&gate.app, &parts).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if counted {
        if caller.identity.must_change_password {
            return ApiError::forbidden(AuthRejected::PasswordChangeRequired.to_string())
                .into_response();
        }
        if caller.identity.must_enrol_second_factor {
            return ApiError::forbidden(AuthRejected::SecondFactorEnrolmentRequired.to_string())
                .into_response();
        }
        if let Err(wait) = gate.app.rate_limits.rest.check(&caller.identity.user_id) {
            return ApiError::rate_limited(wait).into_response();
        }
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// Who sends a request: the bearer token's session, or the console
/// cookie's.
async fn caller_of(app: &App, parts: &axum::http::request::Parts) -> Result<Caller, ApiError> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = match parts.extensions.get::<Client>() {
        Some(client) => client.clone(),
        None => Client::from_parts(app, &parts.headers, peer),
    };
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        let checked =
            crate::admin::session::check(app, &parts.headers, &parts.method, client).await?;
        return checked
            .map(|checked| checked.caller)
            .ok_or_else(ApiError::unauthenticated);
    }
    let token = bearer(&parts.headers)?;
    match app.realtime.authenticator.authenticate(token).await {
        Ok(identity) => Ok(Caller { identity, client }),
        Err(rejected) => {
            metrics::counter!(names::AUTH_FAILURES, "reason" => "token").increment(1);
            Err(match rejected {
                AuthRejected::Unavailable => ApiError::unavailable(),
                other => ApiError::auth_failed(other.to_string()),
            })
        }
    }
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
