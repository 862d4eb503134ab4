//! `/api/auth/*`: registration, login with lockout, refresh-token rotation
//! with reuse detection, logout and password change.
//!
//! Every answer to a failed login is the same 401 (unknown user, wrong
//! password, an address locked out of the account), and each costs one
//! argon2 hash, so neither the answer nor its timing tells whether an
//! account exists or is locked. Lockout is per account *and* client address,
//! with a slower back-off per account across addresses that never shuts
//! out an address the account knows ([`crate::auth::lockout`]): failures
//! from elsewhere cannot lock the owner out. The audit log tells operators
//! which it was (`auth.login_failed` with a `reason`, and `auth.lockout`
//! with its `scope` when a failure locks an address or starts a back-off).
//! Registration has a per-address limit of its own (`register_per_hour`),
//! since its 409 tells whether a username is taken.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_actors::durable::store::{
    NewUser, RefreshOutcome, Role, Session, SessionKind, User, UserPatch,
};
use courier_actors::telemetry::names;
use courier_protocol::{SessionId, UserId};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{parse_json, Caller, Client, JsonBody, RawBody};
use super::openapi::{ErrorBody, LoginAnswer, Tokens, UserBody};
use super::{second_factor, validate, views};
use crate::auth::lockout::{Admission, Failure};
use crate::auth::tokens::{hash_refresh_token, new_refresh_token};
use crate::http::App;
use crate::rate_limit::ip_key;

/// The one answer to every failed login.
const LOGIN_FAILED: &str = "invalid username or password, or the account is temporarily locked";

/// Refresh tokens longer than this are not ours.
const MAX_REFRESH_TOKEN: usize = 256;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
}

/// `POST /api/auth/register`: 201 `{user}`; 403 when registration is off.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    operation_id = "auth.register",
    tag = "auth",
    summary = "Create an account (when registration is open)",
    request_body = RegisterBody,
    responses((status = 201, description = "Created", body = UserBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(())
)]
pub(super) async fn register(
    State(app): State<Arc<App>>,
    client: Client,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    if !app.config.registration_open() {
        return Err(ApiError::forbidden("registration is closed"));
    }
    let body: RegisterBody = parse_json(&body)?;
    validate::username("username", &body.username)?;
    validate::password(&app.config, "password", &body.password, &body.username)?;
    let email = validate::email("email", body.email.as_deref())?;
    if app
        .store
        .get_user_by_username(&body.username)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict("username: already taken"));
    }
    let hash = app.passwords.hash(body.password).await?;
    let user = app
        .store
        .create_user(NewUser {
            id: UserId::new(),
            username: body.username,
            email,
            password_hash: hash,
            role: Role::User,
            created_at: courier_actors::now_ms(),
        })
        .await
        .map_err(|e| match e {
            courier_actors::durable::store::StoreError::Conflict(_) => {
                ApiError::conflict("username: already taken")
            }
            e => e.into(),
        })?;
    app.realtime
        .audit
        .append(client.event(
            Some(user.id),
            "auth.register",
            json!({"userId": user.id, "username": user.username}),
        ))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": views::user(&user)})),
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LoginBody {
    username: String,
    password: String,
    /// The authenticator app's current code, when the account has a
    /// second factor.
    #[serde(default)]
    totp_code: Option<String>,
    /// One of the account's one-time recovery codes, instead of `totpCode`.
    #[serde(default)]
    recovery_code: Option<String>,
}

/// `POST /api/auth/login`: 200 `{token, refreshToken, expiresIn, user}`.
///
/// The [`LoginGuard`] decides first: an address locked out of this account
/// answers the one 401; an account under back-off answers 429 to an
/// address it does not know once that address's turn is taken (see
/// [`crate::auth::lockout`]).
#[utoipa::path(
    post,
    path = "/api/auth/login",
    operation_id = "auth.login",
    tag = "auth",
    summary = "Log in: open a session",
    request_body = LoginBody,
    responses((status = 200, description = "A new session's tokens", body = LoginAnswer), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 401, description = "Invalid username or password, or the account is temporarily locked (the same answer for each); with the password right and a second factor enrolled, `second_factor_required` (no code) or `second_factor_failed` (a wrong, stale or replayed code, or an unknown or used recovery code)", body = ErrorBody)),
    security(())
)]
pub(super) async fn login(
    State(app): State<Arc<App>>,
    client: Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let second =
        second_factor::presented(body.totp_code.as_deref(), body.recovery_code.as_deref())?;
    let user = check_credentials(
        &app,
        &client,
        &headers,
        &body.username,
        body.password,
        second,
    )
    .await?;
    let (tokens, session_id) = open_session(&app, &user, &client).await?;
    app.realtime
        .audit
        .append(client.event(
            Some(user.id),
            "auth.login",
            json!({"sessionId": session_id}),
        ))
        .await?;
    let mut answer = tokens;
    answer["user"] = views::user(&user);
    answer["secondFactorEnrolmentRequired"] = json!(
        crate::auth::totp::enrolment_required(
            &*app.store,
            &app.config.totp_required_roles(),
            &user
        )
        .await?
    );
    Ok(Json(answer))
}

/// The account `username` and `password` name, once they are right and
/// the account may log in: the one check of REST login and the admin
/// console's sign-in. The [`LoginGuard`] decides first (see [`login`]);
/// then the password, then the account's state: locked by an admin or
/// disabled answers the same 401 as a wrong password (audited with its
/// reason), after the same argon2 work. With a second factor enrolled,
/// `second` must pass it ([`second_factor::check`]: 401
/// `second_factor_required` or `second_factor_failed`, the latter counted
/// towards the lockout). Records `last_login_at`. A
/// password past `password_max_age_days` is marked to be changed
/// (`must_change_password`, audited once as `user.password_expired`): the
/// login succeeds, its session may only change the password.
pub(crate) async fn check_credentials(
    app: &App,
    client: &Client,
    headers: &HeaderMap,
    username: &str,
    password: String,
    second: crate::auth::totp::Presented<'_>,
) -> ApiResult<User> {
    validate::presented("username", username)?;
    validate::presented("password", &password)?;
    let presented_name = username;
    let username: String = username.chars().take(64).collect();
    // The failure is committed to the audit chain before the answer goes out
    // (a 503 instead when it cannot be).
    let failed = async |user: Option<UserId>, reason: &'static str, extra: serde_json::Value| {
        let label = match reason {
            "locked" | "throttled" => reason,
            "locked_by_admin" | "disabled" => "account",
            _ => "password",
        };
        metrics::counter!(names::AUTH_FAILURES, "reason" => label).increment(1);
        let mut details = json!({"username": username, "reason": reason});
        if let (Some(map), Some(more)) = (details.as_object_mut(), extra.as_object()) {
            map.extend(more.clone());
        }
        match app
            .realtime
            .audit
            .append(client.event(user, "auth.login_failed", details))
            .await
        {
            Ok(()) => ApiError::auth_failed(LOGIN_FAILED),
            Err(e) => e.into(),
        }
    };

    // No username holds a NUL (registration allows letters, digits and
    // `._-`), and PostgreSQL refuses one in a query parameter: answer it as
    // the unknown user it is, not with a 500.
    let found = if presented_name.contains('\0') {
        None
    } else {
        app.store.get_user_by_username(presented_name).await?
    };
    let account = account_key(found.as_ref(), &username);
    let now = courier_actors::now_ms();
    match app.login_guard.admit(&account, &ip_key(&client.ip), now) {
        Admission::AddressLocked { until } => {
            app.passwords.burn().await;
            return Err(failed(
                found.as_ref().map(|u| u.id),
                "locked",
                json!({"lockedUntil": until}),
            )
            .await);
        }
        Admission::Backoff if !known_client(app, found.as_ref(), client, headers).await? => {
            if let Err(wait) = app.login_guard.take_backoff_slot(&account, now) {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                // Refused either way: an audit that cannot be committed
                // answers 503 rather than 429.
                let audited = failed(
                    found.as_ref().map(|u| u.id),
                    "throttled",
                    json!({"retryAfterMs": wait_ms}),
                )
                .await;
                if audited.status == StatusCode::SERVICE_UNAVAILABLE {
                    return Err(audited);
                }
                return Err(ApiError::rate_limited(wait));
            }
        }
        Admission::Backoff | Admission::Open => {}
    }
    let Some(user) = found else {
        app.passwords.burn().await;
        let failure = app.login_guard.failed(&account, &ip_key(&client.ip), now);
        let error = failed(
            None,
            "unknown_user",
            json!({"failures": failure.address_failures}),
        )
        .await;
        audit_lockout(app, client, None, &username, &failure).await?;
        return Err(error);
    };
    if !app
        .passwords
        .verify(password, user.password_hash.clone())
        .await?
    {
        let failure = app.login_guard.failed(&account, &ip_key(&client.ip), now);
        let error = failed(
            Some(user.id),
            "bad_password",
            json!({
                "failures": failure.address_failures,
                "accountFailures": failure.account_failures,
            }),
        )
        .await;
        audit_lockout(app, client, Some(user.id), &username, &failure).await?;
        return Err(error);
    }
    if user.disabled_at.is_some() {
        return Err(failed(Some(user.id), "disabled", json!({})).await);
    }
    if user.locked_until.is_some_and(|until| until > now) {
        return Err(failed(Some(user.id), "locked_by_admin", json!({})).await);
    }
    second_factor::check(app, client, &user, &account, second, now).await?;
    app.login_guard.succeeded(&account, &ip_key(&client.ip));
    let expired = !user.must_change_password
        && crate::auth::reset::password_expired(app.config.password_max_age_days, &user, now);
    if expired {
        app.realtime
            .audit
            .append(client.event(
                Some(user.id),
                "user.password_expired",
                json!({
                    "userId": user.id,
                    "passwordChangedAt": user.password_changed_at,
                    "maxAgeDays": app.config.password_max_age_days,
                }),
            ))
            .await?;
    }
    let user = app
        .store
        .update_user(
            user.id,
            UserPatch {
                last_login_at: Some(now),
                must_change_password: expired.then_some(true),
                updated_at: user.updated_at,
                ..UserPatch::default()
            },
        )
        .await?;
    Ok(user)
}

/// The key an account's failures are counted under: its id, or, for a name
/// no account has, the name in lowercase (names match ignoring case).
fn account_key(user: Option<&User>, username: &str) -> String {
    match user {
        Some(user) => user.id.to_string(),
        None => format!("unknown:{}", username.to_lowercase()),
    }
}

/// Whether the account knows this client: it presents a live session of
/// the account (`Authorization: Bearer`), or the account has logged in from
/// its address before (a session of the account, live or not, holds it).
async fn known_client(
    app: &App,
    user: Option<&User>,
    client: &Client,
    headers: &HeaderMap,
) -> ApiResult<bool> {
    let Some(user) = user else {
        return Ok(false);
    };
    if let Ok(token) = super::bearer(headers) {
        let presented = app.realtime.authenticator.authenticate(token).await;
        if presented.is_ok_and(|identity| identity.user_id == user.id) {
            return Ok(true);
        }
    }
    let address = ip_key(&client.ip);
    Ok(app
        .store
        .list_sessions(user.id)
        .await?
        .iter()
        .any(|s| s.ip.as_deref().is_some_and(|ip| ip_key(ip) == address)))
}

/// Audits what a failure locked (`auth.lockout`): the client's address out
/// of the account (`scope: "address"`), or the account into back-off
/// (`scope: "account"`), committed to the chain before the caller answers.
pub(super) async fn audit_lockout(
    app: &App,
    client: &Client,
    user: Option<UserId>,
    username: &str,
    failure: &Failure,
) -> ApiResult<()> {
    if let Some(until) = failure.locked_until {
        app.realtime
            .audit
            .append(client.event(
                user,
                "auth.lockout",
                json!({
                    "userId": user, "username": username, "scope": "address",
                    "failures": failure.address_failures, "lockedUntil": until,
                }),
            ))
            .await?;
    }
    if failure.backoff_began {
        app.realtime
            .audit
            .append(client.event(
                user,
                "auth.lockout",
                json!({
                    "userId": user, "username": username, "scope": "account",
                    "failures": failure.account_failures,
                    "backoffSecs": app.config.lockout_backoff_secs,
                }),
            ))
            .await?;
    }
    Ok(())
}

/// Creates a session for `user` and returns `{token, refreshToken, expiresIn}`.
async fn open_session(
    app: &App,
    user: &User,
    client: &Client,
) -> ApiResult<(serde_json::Value, SessionId)> {
    let refresh = new_refresh_token();
    let now = courier_actors::now_ms();
    let session = Session {
        id: SessionId::new(),
        user_id: user.id,
        token_hash: hash_refresh_token(&refresh),
        created_at: now,
        expires_at: now.saturating_add(secs_ms(app.config.refresh_token_ttl_secs)),
        ip: Some(client.ip.clone()),
        user_agent: client.user_agent.clone(),
        valid: true,
        kind: SessionKind::Api,
        last_seen_at: None,
    };
    let id = session.id;
    app.store.create_session(session).await?;
    Ok((token_answer(app, user.id, id, refresh)?, id))
}

fn token_answer(
    app: &App,
    user: UserId,
    session: SessionId,
    refresh: String,
) -> ApiResult<serde_json::Value> {
    let (token, _exp) = app
        .tokens
        .issue(user, session)
        .map_err(ApiError::internal)?;
    Ok(json!({"token": token, "refreshToken": refresh, "expiresIn": app.tokens.ttl_secs}))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/auth/refresh-token`: rotates the refresh token. An old token
/// of a live session revokes that session and closes its sockets (4003).
#[utoipa::path(
    post,
    path = "/api/auth/refresh-token",
    operation_id = "auth.refresh",
    tag = "auth",
    summary = "Rotate a refresh token; presenting a used one revokes the session",
    request_body = RefreshBody,
    responses((status = 200, description = "New tokens", body = Tokens), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 401, description = "Unknown, expired or reused refresh token (reuse revokes the session and closes its sockets with 4003)", body = ErrorBody)),
    security(())
)]
pub(super) async fn refresh(
    State(app): State<Arc<App>>,
    client: Client,
    JsonBody(body): JsonBody<RefreshBody>,
) -> ApiResult<Json<serde_json::Value>> {
    if body.refresh_token.is_empty() || body.refresh_token.len() > MAX_REFRESH_TOKEN {
        return Err(ApiError::invalid("refreshToken", "is not a refresh token"));
    }
    let next = new_refresh_token();
    let now = courier_actors::now_ms();
    let outcome = app
        .store
        .rotate_refresh(
            &hash_refresh_token(&body.refresh_token),
            &hash_refresh_token(&next),
            now,
            now.saturating_add(secs_ms(app.config.refresh_token_ttl_secs)),
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            app.realtime
                .audit
                .append(client.event(
                    Some(session.user_id),
                    "auth.refresh",
                    json!({"sessionId": session.id}),
                ))
                .await?;
            Ok(Json(token_answer(&app, session.user_id, session.id, next)?))
        }
        RefreshOutcome::Reused {
            session_id,
            user_id,
        } => {
            app.realtime
                .revoke_sessions(user_id, Some(vec![session_id]));
            metrics::counter!(names::AUTH_FAILURES, "reason" => "refresh_reuse").increment(1);
            app.realtime
                .audit
                .append(client.event(
                    Some(user_id),
                    "auth.refresh_reuse",
                    json!({"sessionId": session_id, "revoked": true}),
                ))
                .await?;
            Err(ApiError::auth_failed(
                "this refresh token was already used; the session is revoked",
            ))
        }
        RefreshOutcome::Unknown => {
            metrics::counter!(names::AUTH_FAILURES, "reason" => "refresh").increment(1);
            Err(ApiError::auth_failed("invalid or expired refresh token"))
        }
    }
}

/// `POST /api/auth/logout`: 204; the session's tokens stop working and its
/// sockets close with 4003.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    operation_id = "auth.logout",
    tag = "auth",
    summary = "End this session; its sockets close with 4003",
    responses((status = 204, description = "Logged out")),
    security(("bearer" = []))
)]
pub(super) async fn logout(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<StatusCode> {
    let session = caller.identity.session_id;
    app.store.revoke_session(session).await?;
    app.realtime
        .revoke_sessions(caller.identity.user_id, Some(vec![session]));
    caller
        .audit(&app, "auth.logout", json!({"sessionId": session}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ChangePasswordBody {
    current_password: String,
    new_password: String,
}

/// `POST /api/auth/change-password`: 204; every session of the user is
/// revoked (this one too) and their sockets close with 4003. A wrong current
/// password answers 403 and counts towards the lockout.
#[utoipa::path(
    post,
    path = "/api/auth/change-password",
    operation_id = "auth.change_password",
    tag = "auth",
    summary = "Change the password; every session of the user ends",
    request_body = ChangePasswordBody,
    responses((status = 204, description = "Changed; log in again"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn change_password(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<ChangePasswordBody>,
) -> ApiResult<StatusCode> {
    validate::presented("currentPassword", &body.current_password)?;
    validate::password(
        &app.config,
        "newPassword",
        &body.new_password,
        &caller.identity.username,
    )?;
    let reused = body.new_password == body.current_password;
    let Reauthenticated {
        user,
        account,
        address,
        now,
    } = reauthenticate(
        &app,
        &caller,
        body.current_password,
        "auth.password_change_failed",
        json!({"reason": "bad_password"}),
    )
    .await?;
    let expired =
        crate::auth::reset::password_expired(app.config.password_max_age_days, &user, now);
    if (user.must_change_password || expired) && reused {
        return Err(ApiError::invalid(
            "newPassword",
            "must differ from the temporary or expired password",
        ));
    }
    let hash = app.passwords.hash(body.new_password).await?;
    app.store
        .update_user(
            user.id,
            UserPatch {
                password_hash: Some(hash),
                must_change_password: Some(false),
                updated_at: now,
                ..UserPatch::default()
            },
        )
        .await?;
    app.login_guard.succeeded(&account, &address);
    let revoked = app.store.revoke_user_sessions(user.id).await?;
    app.realtime.revoke_sessions(user.id, None);
    caller
        .audit(
            &app,
            "auth.password_change",
            json!({"userId": user.id, "sessionsRevoked": revoked.len()}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account once their current password is checked, with the
/// lockout's keys and the time of the check.
pub(super) struct Reauthenticated {
    pub user: User,
    /// The lockout's account key.
    pub account: String,
    /// The lockout's address key.
    pub address: String,
    pub now: i64,
}

/// Checks `password`, the caller's current password, under the login
/// lockout: a locked address answers 403 at once (after a hash's worth of
/// work); a wrong password counts towards the lockout, is audited as
/// `failed_action` with `details` and `failures` (and `auth.lockout` when it
/// locks) and answers 403.
pub(super) async fn reauthenticate(
    app: &App,
    caller: &Caller,
    password: String,
    failed_action: &str,
    mut details: serde_json::Value,
) -> ApiResult<Reauthenticated> {
    let user = app
        .store
        .get_user(caller.identity.user_id)
        .await?
        .ok_or_else(|| ApiError::auth_failed("session is no longer valid"))?;
    let now = courier_actors::now_ms();
    let account = user.id.to_string();
    let address = ip_key(&caller.client.ip);
    if let Admission::AddressLocked { .. } = app.login_guard.admit(&account, &address, now) {
        app.passwords.burn().await;
        return Err(ApiError::forbidden("the account is temporarily locked"));
    }
    if app
        .passwords
        .verify(password, user.password_hash.clone())
        .await?
    {
        return Ok(Reauthenticated {
            user,
            account,
            address,
            now,
        });
    }
    let failure = app.login_guard.failed(&account, &address, now);
    details["failures"] = json!(failure.address_failures);
    caller.audit(app, failed_action, details).await?;
    audit_lockout(app, &caller.client, Some(user.id), &user.username, &failure).await?;
    Err(ApiError::forbidden("currentPassword: is incorrect"))
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
