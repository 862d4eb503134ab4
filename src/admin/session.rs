//! Console sessions: sign-in, the cookie, the CSRF token, expiry, sign-out.
//!
//! # What it owns
//! Nothing in memory. A console session is a row of `sessions` with
//! `kind = 'console'` (so listing and ending a user's sessions, a role or
//! password change, disabling the account all end it too), holding the
//! SHA-256 of the cookie's secret, never the secret. The cookie is
//! `<session id>.<secret>`: `courier_admin`, or `__Host-courier_admin` when
//! this server terminates TLS (then `Secure` too); always `HttpOnly`,
//! `SameSite=Strict`, `Path=/`.
//!
//! The CSRF token is derived from the secret (a SHA-256 under a label of
//! its own), so it needs no storage and no one without the cookie can
//! compute it; the page reads it from the session answer and sends it as
//! `X-CSRF-Token` on every request that changes state. A state-changing
//! request that carries the cookie but not the token is refused 403 and
//! audited (`access.denied`, `op: "csrf"`), whatever its route.
//!
//! # Expiry
//! A session ends `admin_idle_minutes` after its last request (the row's
//! `last_seen_at`, touched at most every few seconds) and
//! `admin_session_hours` after sign-in, whichever comes first; an idle one
//! is revoked when next presented. Both answer 401 `auth_failed`.
//!
//! # What it takes
//! Sign-in takes what REST login takes ([`crate::api::auth::check_credentials`]:
//! the same lockout, the same 401, the same audit of failures) under the
//! same per-address limit (`auth_per_15min`), and then asks
//! `authz` whether the account may use the console at all (`UseConsole`:
//! administrators and moderators).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use courier_actors::durable::store::{Session, SessionKind, User};
use courier_actors::policy::authz::{self, Action, Principal};
use courier_actors::policy::identity::Identity;
use courier_protocol::SessionId;
use rand::RngExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{parse_json, Caller, Client};
use crate::api::views;
use crate::http::App;
use crate::rate_limit::ip_key;

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "courier_admin";
/// The cookie's name when this server terminates TLS: the `__Host-` prefix
/// makes browsers refuse it unless `Secure`, host-only and `Path=/`.
pub const COOKIE_TLS: &str = "__Host-courier_admin";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `last_seen_at` is written at most this often (ms).
const TOUCH_EVERY_MS: i64 = 5_000;

/// A session the cookie names, checked.
pub struct Checked {
    pub caller: Caller,
    pub session: Session,
    pub csrf: String,
}

/// The cookie as presented.
struct Presented {
    id: SessionId,
    secret: String,
}

/// The cookie's name on this server.
fn cookie_name(app: &App) -> &'static str {
    if app.config.tls_cert.is_some() {
        COOKIE_TLS
    } else {
        COOKIE
    }
}

/// The console cookie of a request, when it has one.
fn presented(app: &App, headers: &HeaderMap) -> Option<Presented> {
    let name = cookie_name(app);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, value)| {
            let (id, secret) = value.split_once('.')?;
            Some(Presented {
                id: id.parse().ok()?,
                secret: secret.to_owned(),
            })
        })
}

/// What the session row keeps of the secret.
fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("courier-console\0{secret}")))
}

/// The CSRF token of a session.
fn csrf_of(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("courier-csrf\0{secret}")))
}

/// Equality that takes as long whatever the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a method changes state (and so needs the CSRF token).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks the console cookie of a request: `Ok(None)` when there is none;
/// the session and its caller when it is valid (and, for a state-changing
/// `method`, the CSRF token matches); 401 when it is not valid, expired or
/// idle too long; 403 when the token is missing or wrong.
pub async fn check(
    app: &App,
    headers: &HeaderMap,
    method: &Method,
    client: Client,
) -> ApiResult<Option<Checked>> {
    let Some(cookie) = presented(app, headers) else {
        return Ok(None);
    };
    let invalid = || ApiError::auth_failed("the console session is no longer valid; sign in again");
    let Some((session, user)) = app.store.get_session_user(cookie.id).await? else {
        return Err(invalid());
    };
    if session.kind != SessionKind::Console
        || !session.valid
        || !same(&session.token_hash, &secret_hash(&cookie.secret))
        || user.disabled_at.is_some()
    {
        return Err(invalid());
    }
    let now = courier_actors::now_ms();
    let last_seen = session.last_seen_at.unwrap_or(session.created_at);
    let idle_ms = i64::try_from(app.config.admin_idle_minutes * 60_000).unwrap_or(i64::MAX);
    if session.expires_at <= now || now.saturating_sub(last_seen) > idle_ms {
        app.store.revoke_session(session.id).await?;
        return Err(ApiError::auth_failed(
            "the console session expired; sign in again",
        ));
    }
    let csrf = csrf_of(&cookie.secret);
    let must_enrol_second_factor = crate::auth::totp::enrolment_required(
        &*app.store,
        &app.config.totp_required_roles(),
        &user,
    )
    .await?;
    let caller = Caller {
        identity: Identity {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            session_id: session.id,
            expires_at: session.expires_at,
            must_change_password: user.must_change_password
                || crate::auth::reset::password_expired(
                    app.config.password_max_age_days,
                    &user,
                    now,
                ),
            must_enrol_second_factor,
        },
        client,
    };
    if changes_state(method) {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(sent, &csrf) {
            app.realtime.audit.record(caller.client.event(
                Some(user.id),
                "access.denied",
                json!({"op": "csrf", "method": method.as_str()}),
            ));
            return Err(ApiError::forbidden("missing or wrong CSRF token"));
        }
    }
    if now - last_seen >= TOUCH_EVERY_MS {
        app.store.touch_session(session.id, now).await?;
    }
    Ok(Some(Checked {
        caller,
        session,
        csrf,
    }))
}

/// The caller of a console request: the cookie's, or 401.
pub async fn require(
    app: &App,
    headers: &HeaderMap,
    method: &Method,
    client: Client,
) -> ApiResult<Checked> {
    check(app, headers, method, client)
        .await?
        .ok_or_else(|| ApiError::auth_failed("not signed in to the console"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SignIn {
    username: String,
    password: String,
    /// The second factor, as REST login takes it.
    #[serde(default)]
    totp_code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

/// `POST /admin/session` `{username, password}`: 200 with the session's
/// answer (see [`answer`]) and its cookie.
pub(super) async fn sign_in(
    State(app): State<Arc<App>>,
    client: Client,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match open(&app, client, &headers, &body).await {
        Ok(response) => response,
        Err(e) => super::with_csp(e.into_response()),
    }
}

async fn open(app: &App, client: Client, headers: &HeaderMap, body: &[u8]) -> ApiResult<Response> {
    if let Err(wait) = app.rate_limits.auth.check(&ip_key(&client.ip)) {
        return Err(ApiError::rate_limited(wait));
    }
    let SignIn {
        username,
        password,
        totp_code,
        recovery_code,
    } = parse_json(body)?;
    let second =
        crate::api::second_factor::presented(totp_code.as_deref(), recovery_code.as_deref())?;
    let user =
        crate::api::auth::check_credentials(app, &client, headers, &username, password, second)
            .await?;
    let principal = Principal {
        user_id: user.id,
        role: user.role,
        permissions: &app.realtime.permissions,
    };
    if let Err(denied) = authz::decide(principal, Action::UseConsole) {
        app.realtime.audit.record(client.event(
            Some(user.id),
            "access.denied",
            json!({"op": "admin.sign_in"}),
        ));
        return Err(ApiError::forbidden(denied.0));
    }
    let now = courier_actors::now_ms();
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 32]>());
    let lifetime = i64::try_from(app.config.admin_session_hours * 3_600_000).unwrap_or(i64::MAX);
    let session = Session {
        id: SessionId::new(),
        user_id: user.id,
        token_hash: secret_hash(&secret),
        created_at: now,
        expires_at: now.saturating_add(lifetime),
        ip: Some(client.ip.clone()),
        user_agent: client.user_agent.clone(),
        valid: true,
        kind: SessionKind::Console,
        last_seen_at: Some(now),
    };
    app.store.create_session(session.clone()).await?;
    let audited = app
        .realtime
        .audit
        .append(client.event(
            Some(user.id),
            "admin.sign_in",
            json!({"sessionId": session.id}),
        ))
        .await;
    if let Err(e) = audited {
        // No session that the chain does not know was opened.
        app.store.revoke_session(session.id).await?;
        return Err(e.into());
    }
    let cookie = format!(
        "{}={}.{secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cookie_name(app),
        session.id,
        lifetime / 1000,
        if app.config.tls_cert.is_some() {
            "; Secure"
        } else {
            ""
        },
    );
    let mut response = Json(answer(app, &user, &session, &csrf_of(&secret)).await?).into_response();
    set_cookie(&mut response, &cookie);
    Ok(super::with_csp(response))
}

/// `GET /admin/session`: the signed-in session's answer, or 401.
pub(super) async fn current(
    State(app): State<Arc<App>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let checked = require(&app, &headers, &Method::GET, client).await?;
        let user = app
            .store
            .get_user(checked.caller.identity.user_id)
            .await?
            .ok_or_else(|| ApiError::auth_failed("not signed in to the console"))?;
        Ok::<_, ApiError>(Json(
            answer(&app, &user, &checked.session, &checked.csrf).await?,
        ))
    }
    .await;
    super::with_csp(result.into_response())
}

/// `DELETE /admin/session` (with the CSRF token): 204; the session ends and
/// the cookie is cleared.
pub(super) async fn sign_out(
    State(app): State<Arc<App>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let checked = require(&app, &headers, &Method::DELETE, client).await?;
        app.store.revoke_session(checked.session.id).await?;
        checked
            .caller
            .audit(
                &app,
                "admin.sign_out",
                json!({"sessionId": checked.session.id}),
            )
            .await?;
        let mut response = StatusCode::NO_CONTENT.into_response();
        set_cookie(
            &mut response,
            &format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
                cookie_name(&app),
                if app.config.tls_cert.is_some() {
                    "; Secure"
                } else {
                    ""
                }
            ),
        );
        Ok::<_, ApiError>(response)
    }
    .await;
    super::with_csp(result.into_response())
}

/// What the page learns of its session: who, what they may do, the CSRF
/// token and the timeouts, and whether the account must enrol a second
/// factor before anything else.
async fn answer(app: &App, user: &User, session: &Session, csrf: &str) -> ApiResult<Value> {
    let enrol =
        crate::auth::totp::enrolment_required(&*app.store, &app.config.totp_required_roles(), user)
            .await?;
    let enrolled = crate::auth::totp::active_secret(&*app.store, user.id)
        .await?
        .is_some();
    Ok(json!({
        "user": views::user(user),
        "permissions": app.realtime.permissions.of(user.role),
        "csrf": csrf,
        "idleTimeoutSecs": app.config.admin_idle_minutes * 60,
        "expiresAt": session.expires_at,
        "mustChangePassword": user.must_change_password,
        "secondFactorEnrolmentRequired": enrol,
        "secondFactorEnrolled": enrolled,
    }))
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_not_the_stored_hash() {
        assert_ne!(csrf_of("s"), secret_hash("s"));
        assert_eq!(csrf_of("s"), csrf_of("s"));
        assert_ne!(csrf_of("s"), csrf_of("t"));
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }
}
