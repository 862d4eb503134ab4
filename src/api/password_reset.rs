//! Password reset by link (issue 37; `docs/identity.md`, "Password
//! reset"): `POST /api/auth/password-reset/request` (self-service),
//! `POST /api/auth/password-reset/confirm` and, for administrators,
//! `POST /api/users/{id}/password-reset`. The token, its storage and its
//! delivery are [`crate::auth::reset`]'s; this module decides who may ask
//! and answers.
//!
//! A self-service request is answered 202 at once, with the same body for
//! every account, known or not, before anything is looked up: neither the
//! answer nor its timing tells whether the account exists. The work (the
//! lookup, the token, the webhook, the audit entry) runs after, in a task
//! of its own; a webhook that fails is logged and counted there, and the
//! request was still answered 202. The per-address limit of `/api/auth/*`
//! applies, and an account is sent at most
//! [`SELF_SERVICE_PER_WINDOW`](crate::auth::reset::SELF_SERVICE_PER_WINDOW)
//! links per 15 minutes. An administrator's request waits for the webhook
//! and answers 503 `unavailable` when it did not take the link.
//!
//! A confirmation sets the password (the policy applies), spends the token,
//! ends every session of the account (its sockets close with 4003), clears
//! `mustChangePassword` and the account's failed-login lockouts. Every step
//! is audited (`user.password_reset.requested`,
//! `user.password_reset.completed`), never with the token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_actors::durable::store::{ResetKind, User, UserPatch};
use courier_actors::policy::authz::UserAct;
use courier_protocol::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, Client, JsonBody};
use super::openapi::ErrorBody;
use super::{users, validate};
use crate::auth::reset::{self, ResetError, TokenRefused};
use crate::http::App;

/// The one answer to every self-service request.
const REQUEST_ACCEPTED: &str =
    "if the account exists and may reset its password, a reset link is on its way";

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResetRequestBody {
    /// The account's username; or give `email`, not both.
    #[serde(default)]
    username: Option<String>,
    /// The account's email (one account must have it).
    #[serde(default)]
    email: Option<String>,
}

/// The answer to a self-service request, whatever the account.
#[derive(Serialize, ToSchema)]
pub(super) struct ResetRequested {
    message: String,
}

/// Who a self-service request names.
enum Named {
    Username(String),
    Email(String),
}

/// `POST /api/auth/password-reset/request`: 202, always the same.
#[utoipa::path(
    post,
    path = "/api/auth/password-reset/request",
    operation_id = "auth.password_reset_request",
    tag = "auth",
    summary = "Ask for a password reset link (sent through the reset webhook); the same 202 for every account",
    request_body = ResetRequestBody,
    responses((status = 202, description = "Accepted: a link is sent if the account exists and may reset its password", body = ResetRequested), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Self-service reset is off (no reset webhook configured)", body = ErrorBody)),
    security(())
)]
pub(super) async fn request(
    State(app): State<Arc<App>>,
    client: Client,
    JsonBody(body): JsonBody<ResetRequestBody>,
) -> ApiResult<Response> {
    if app.config.password_reset_webhook_url.is_empty() {
        return Err(ApiError::forbidden("self-service password reset is off"));
    }
    let named = match (body.username, body.email) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "username",
                "give a username or an email, not both",
            ))
        }
        (None, None) => return Err(ApiError::invalid("username", "is required (or give email)")),
        (Some(username), None) => {
            validate::presented("username", &username)?;
            if username.chars().count() > 64 {
                return Err(ApiError::invalid(
                    "username",
                    "must be at most 64 characters",
                ));
            }
            Named::Username(username)
        }
        (None, Some(email)) => match validate::email("email", Some(&email))? {
            Some(email) => Named::Email(email),
            None => return Err(ApiError::invalid("email", "is required (or give username)")),
        },
    };
    tokio::spawn(async move {
        if let Err(e) = self_service(&app, &client, named).await {
            tracing::error!(error = ?e, "a self-service password reset request failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetRequested {
            message: REQUEST_ACCEPTED.into(),
        }),
    )
        .into_response())
}

/// The work of a self-service request, after its answer: find the account,
/// issue and send its link, audit what happened.
async fn self_service(app: &App, client: &Client, named: Named) -> Result<(), ApiError> {
    let kind = ResetKind::SelfService;
    let (users, mut details) = match &named {
        // No username holds a NUL, and PostgreSQL refuses one in a query.
        Named::Username(name) if name.contains('\0') => (vec![], json!({"username": name})),
        Named::Username(name) => (
            app.store
                .get_user_by_username(name)
                .await?
                .into_iter()
                .collect(),
            json!({"username": name}),
        ),
        // The email asked with stays out of the chain (it may be anyone's).
        Named::Email(email) => (
            app.store.users_with_email(email).await?,
            json!({"by": "email"}),
        ),
    };
    let now = courier_actors::now_ms();
    let user = match users.as_slice() {
        [] => {
            reset::count(kind, "no_account");
            details["sent"] = json!(false);
            details["reason"] = json!("no_account");
            return audit_request(app, client, details).await;
        }
        [user] => user.clone(),
        [..] => {
            reset::count(kind, "refused");
            details["sent"] = json!(false);
            details["reason"] = json!("several_accounts");
            return audit_request(app, client, details).await;
        }
    };
    details["userId"] = json!(user.id);
    details["username"] = json!(user.username);
    details["kind"] = json!(kind.as_str());
    if let Some(reason) = refusal(&user, now) {
        reset::count(kind, "refused");
        details["sent"] = json!(false);
        details["reason"] = json!(reason);
        return audit_request(app, client, details).await;
    }
    let since = now.saturating_sub(reset::SELF_SERVICE_WINDOW_MS);
    if app
        .store
        .count_reset_tokens_since(user.id, kind, since)
        .await?
        >= reset::SELF_SERVICE_PER_WINDOW
    {
        reset::count(kind, "throttled");
        details["sent"] = json!(false);
        details["reason"] = json!("throttled");
        return audit_request(app, client, details).await;
    }
    let issued = reset::issue(&app.config, &*app.store, user.id, kind, None).await?;
    let delivered = reset::deliver(&app.config, &user, &issued, kind).await;
    reset::count(
        kind,
        if delivered.is_ok() {
            "sent"
        } else {
            "webhook_failed"
        },
    );
    details["expiresAt"] = json!(issued.expires_at);
    details["sent"] = json!(delivered.is_ok());
    if delivered.is_err() {
        details["reason"] = json!("webhook_failed");
    }
    audit_request(app, client, details).await
}

/// Why `user` gets no link: `disabled`, or `locked` by an administrator.
fn refusal(user: &User, now: i64) -> Option<&'static str> {
    if user.disabled_at.is_some() {
        Some("disabled")
    } else if user.locked_until.is_some_and(|until| until > now) {
        Some("locked")
    } else {
        None
    }
}

/// Appends `user.password_reset.requested` for a self-service request: no
/// actor (whoever asked is not known), the account in `userId` when found.
async fn audit_request(app: &App, client: &Client, details: Value) -> Result<(), ApiError> {
    app.realtime
        .audit
        .append(client.event(None, "user.password_reset.requested", details))
        .await?;
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResetConfirmBody {
    /// The token of the reset link.
    token: String,
    new_password: String,
}

/// `POST /api/auth/password-reset/confirm`: 204; the password is set.
#[utoipa::path(
    post,
    path = "/api/auth/password-reset/confirm",
    operation_id = "auth.password_reset_confirm",
    tag = "auth",
    summary = "Set a new password with a reset link's token; every session of the account ends",
    request_body = ResetConfirmBody,
    responses((status = 204, description = "The password is set; log in with it"), (status = 400, description = "`invalid_token`: the token is unknown, used, replaced or expired; `invalid_frame`: a field is missing or fails the password policy (`field` names it)", body = ErrorBody), (status = 403, description = "The account is disabled or locked", body = ErrorBody)),
    security(())
)]
pub(super) async fn confirm(
    State(app): State<Arc<App>>,
    client: Client,
    JsonBody(body): JsonBody<ResetConfirmBody>,
) -> ApiResult<StatusCode> {
    validate::presented("newPassword", &body.new_password)?;
    if body.token.is_empty() {
        return Err(ApiError::invalid("token", "is required"));
    }
    let refused = |kind: ResetKind, why: TokenRefused| {
        reset::count(kind, "invalid_token");
        ApiError::from(ResetError::Token(why))
    };
    if body.token.len() > reset::MAX_TOKEN_LEN {
        return Err(refused(ResetKind::SelfService, TokenRefused::Unknown));
    }
    let hash = reset::token_hash(&body.token);
    let row = app.store.get_reset_token(&hash).await?;
    let kind = row.as_ref().map_or(ResetKind::SelfService, |t| t.kind);
    let user = match &row {
        Some(token) => app.store.get_user(token.user_id).await?,
        None => None,
    };
    let now = courier_actors::now_ms();
    let changed_at = |id: UserId| {
        user.as_ref()
            .filter(|u| u.id == id)
            .map(|u| u.password_changed_at)
    };
    let token = reset::usable(row, changed_at, now).map_err(|why| refused(kind, why))?;
    let Some(user) = user else {
        return Err(refused(kind, TokenRefused::Unknown));
    };
    if refusal(&user, now).is_some() {
        reset::count(kind, "refused");
        return Err(ApiError::forbidden(
            "the account is disabled or locked; ask an administrator",
        ));
    }
    validate::password(
        &app.config,
        "newPassword",
        &body.new_password,
        &user.username,
    )?;
    let expired = reset::password_expired(app.config.password_max_age_days, &user, now);
    if (user.must_change_password || expired)
        && app
            .passwords
            .verify(body.new_password.clone(), user.password_hash.clone())
            .await?
    {
        return Err(ApiError::invalid(
            "newPassword",
            "must differ from the temporary or expired password",
        ));
    }
    let password_hash = app.passwords.hash(body.new_password).await?;
    let spent_at = courier_actors::now_ms();
    if app
        .store
        .spend_reset_token(&token.token_hash, spent_at)
        .await?
        .is_none()
    {
        // Another request spent it (or it expired) meanwhile.
        return Err(refused(kind, TokenRefused::Used));
    }
    let user = app
        .store
        .update_user(
            user.id,
            UserPatch {
                password_hash: Some(password_hash),
                must_change_password: Some(false),
                updated_at: courier_actors::now_ms(),
                ..UserPatch::default()
            },
        )
        .await?;
    let revoked = app.store.revoke_user_sessions(user.id).await?;
    app.realtime.revoke_sessions(user.id, None);
    app.login_guard.forget_account(&user.id.to_string());
    reset::count(kind, "completed");
    app.realtime
        .audit
        .append(client.event(
            Some(user.id),
            "user.password_reset.completed",
            json!({
                "userId": user.id,
                "username": user.username,
                "kind": kind.as_str(),
                "sessionsRevoked": revoked.len(),
            }),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An administrator's reset link, sent.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResetLinkSent {
    user_id: UserId,
    /// When the link stops working (ms since the Unix epoch).
    expires_at: i64,
}

/// `POST /api/users/{id}/password-reset`: 202 `{userId, expiresAt}` once
/// the webhook took the link.
#[utoipa::path(
    post,
    path = "/api/users/{id}/password-reset",
    operation_id = "users.password_reset",
    tag = "users",
    summary = "Send a user a password reset link through the reset webhook (users.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 202, description = "The webhook took the link", body = ResetLinkSent), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account, a disabled or locked account, or no reset webhook configured", body = ErrorBody), (status = 503, description = "The webhook did not take the link", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn admin_reset(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id: UserId = path_id("id", &id)?;
    let kind = ResetKind::Admin;
    let target = users::target(&app, &caller, id, UserAct::Manage, "user.password_reset").await?;
    if id == caller.identity.user_id {
        return Err(ApiError::conflict(
            "change your own password with /api/auth/change-password",
        ));
    }
    if app.config.password_reset_webhook_url.is_empty() {
        return Err(ResetError::Off.into());
    }
    let now = courier_actors::now_ms();
    if let Some(reason) = refusal(&target, now) {
        reset::count(kind, "refused");
        return Err(ApiError::conflict(format!(
            "the account is {reason}; a reset link could not be used"
        )));
    }
    let issued = reset::issue(
        &app.config,
        &*app.store,
        id,
        kind,
        Some(caller.identity.user_id),
    )
    .await?;
    let delivered = reset::deliver(&app.config, &target, &issued, kind).await;
    reset::count(
        kind,
        if delivered.is_ok() {
            "sent"
        } else {
            "webhook_failed"
        },
    );
    caller
        .audit(
            &app,
            "user.password_reset.requested",
            json!({
                "userId": id,
                "username": target.username,
                "kind": kind.as_str(),
                "expiresAt": issued.expires_at,
                "sent": delivered.is_ok(),
            }),
        )
        .await?;
    delivered?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ResetLinkSent {
            user_id: id,
            expires_at: issued.expires_at,
        }),
    )
        .into_response())
}
