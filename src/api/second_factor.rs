//! The TOTP second factor over REST (issue 37, `docs/identity.md` "Second
//! factor (TOTP)"): enrolment, confirmation and disabling of one's own,
//! an admin's reset of someone's, and the check a login makes.
//!
//! # What it owns
//! The answers and the audit entries; the rules are
//! [`crate::auth::totp`]'s, the state the store's (`TotpStore`). No entry,
//! log line or error carries a secret or a code.
//!
//! # What it takes
//! A session for the `/api/auth/totp*` routes (bearer or the console's
//! cookie; they are among the few routes a session restricted to enrolment
//! may use), the current password for enrolling and disabling (a wrong one
//! counts towards the lockout, as change-password's does), `users.manage`
//! and a higher role than the target's for the admin reset.
//!
//! # Failure
//! Nothing is half done: a pending enrolment becomes active and gets its
//! recovery codes in one transaction; an audit entry that cannot be
//! committed answers 503 after the change it records, as everywhere.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use courier_actors::durable::store::User;
use courier_actors::policy::authz::UserAct;
use courier_actors::telemetry::names;
use courier_protocol::{ErrorCode, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::auth::{audit_lockout, reauthenticate};
use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, Client, JsonBody};
use super::openapi::ErrorBody;
use super::users::target;
use super::validate;
use crate::auth::totp::{self, Presented, Verdict};
use crate::http::App;
use crate::rate_limit::ip_key;

/// Codes longer than this are not codes.
const MAX_CODE: usize = 64;

/// The second factor a body names: `totpCode` or `recoveryCode`, not both.
pub(crate) fn presented<'a>(
    code: Option<&'a str>,
    recovery: Option<&'a str>,
) -> ApiResult<Presented<'a>> {
    for (field, value) in [("totpCode", code), ("recoveryCode", recovery)] {
        if value.is_some_and(|v| v.chars().count() > MAX_CODE) {
            return Err(ApiError::invalid(field, "is not a code"));
        }
    }
    match (code, recovery) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "recoveryCode",
            "give totpCode or recoveryCode, not both",
        )),
        (Some(code), None) => Ok(Presented::Code(code)),
        (None, Some(recovery)) => Ok(Presented::RecoveryCode(recovery)),
        (None, None) => Ok(Presented::Nothing),
    }
}

/// The second-factor step of a login whose password was right
/// ([`super::auth::check_credentials`]): passes an account without one, or
/// one whose factor `second` passes. Otherwise 401
/// `second_factor_required` (nothing presented; audited as
/// `auth.login_failed`, not counted towards the lockout) or
/// `second_factor_failed` (audited as `auth.second_factor.failed`, counted
/// under `account` like a wrong password). A recovery code used is audited
/// (`auth.recovery_code.used`).
pub(super) async fn check(
    app: &App,
    client: &Client,
    user: &User,
    account: &str,
    second: Presented<'_>,
    now: i64,
) -> ApiResult<()> {
    let verdict = totp::verify(&*app.store, &app.realtime.cipher, user.id, second, now).await?;
    let counted = |result: &'static str| {
        metrics::counter!(names::AUTH_SECOND_FACTOR, "result" => result).increment(1);
    };
    match verdict {
        Verdict::NotEnrolled => Ok(()),
        Verdict::Accepted => {
            counted("accepted");
            Ok(())
        }
        Verdict::RecoveryUsed { left } => {
            counted("recovery_used");
            app.realtime
                .audit
                .append(client.event(
                    Some(user.id),
                    "auth.recovery_code.used",
                    json!({"userId": user.id, "left": left}),
                ))
                .await?;
            Ok(())
        }
        Verdict::Missing => {
            counted("required");
            app.realtime
                .audit
                .append(client.event(
                    Some(user.id),
                    "auth.login_failed",
                    json!({"username": user.username, "reason": "second_factor_required"}),
                ))
                .await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::SecondFactorRequired,
                "this account has a second factor: send totpCode (or a recoveryCode)",
            ))
        }
        Verdict::Failed | Verdict::Replayed => {
            let reason = if verdict == Verdict::Replayed {
                "replayed"
            } else {
                "failed"
            };
            counted(reason);
            let failure = app.login_guard.failed(account, &ip_key(&client.ip), now);
            app.realtime
                .audit
                .append(client.event(
                    Some(user.id),
                    "auth.second_factor.failed",
                    json!({
                        "userId": user.id,
                        "username": user.username,
                        "op": "login",
                        "kind": second.kind(),
                        "reason": reason,
                        "failures": failure.address_failures,
                        "accountFailures": failure.account_failures,
                    }),
                ))
                .await?;
            audit_lockout(app, client, Some(user.id), &user.username, &failure).await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::SecondFactorFailed,
                "the second-factor code is wrong, expired or already used",
            ))
        }
    }
}

/// The caller's account, once `password` is its current password: the
/// check of enrolling and disabling. An address locked out of the account
/// answers 403 at once; a wrong password counts towards the lockout, is
/// audited (`auth.second_factor.failed` with `reason: "bad_password"`) and
/// answers 403.
async fn with_password(app: &App, caller: &Caller, op: &str, password: String) -> ApiResult<User> {
    validate::presented("currentPassword", &password)?;
    let details = json!({"userId": caller.identity.user_id, "op": op, "reason": "bad_password"});
    let checked =
        reauthenticate(app, caller, password, "auth.second_factor.failed", details).await?;
    Ok(checked.user)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct EnrollBody {
    current_password: String,
}

/// A pending enrolment: what the authenticator app needs, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TotpEnrolment {
    /// `otpauth://totp/<issuer>:<username>?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30`.
    otpauth_uri: String,
    /// The secret in base32, to type into an app by hand.
    secret: String,
    /// The URI as a QR code, `data:image/png;base64,...`.
    qr_code: String,
    issuer: String,
    account_name: String,
    digits: u8,
    period: u64,
    algorithm: &'static str,
}

/// `POST /api/auth/totp/enroll` `{currentPassword}`: a new pending secret
/// (replacing a pending one) and what an app needs to take it; nothing
/// changes at login until `confirm`. 409 when a second factor is enrolled.
#[utoipa::path(
    post,
    path = "/api/auth/totp/enroll",
    operation_id = "auth.totp_enroll",
    tag = "auth",
    summary = "Begin enrolling a TOTP second factor: a new secret, its otpauth URI and QR code (current password required)",
    request_body = EnrollBody,
    responses((status = 200, description = "The pending secret, shown once", body = TotpEnrolment), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Wrong current password, or the account is temporarily locked", body = ErrorBody), (status = 409, description = "A second factor is enrolled already: disable it first", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn enroll(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<EnrollBody>,
) -> ApiResult<Json<TotpEnrolment>> {
    let user = with_password(&app, &caller, "enroll", body.current_password).await?;
    let enrolled = || ApiError::conflict("a second factor is enrolled; disable it first");
    if totp::active_secret(&*app.store, user.id).await?.is_some() {
        return Err(enrolled());
    }
    let secret = totp::new_secret();
    let issuer = app.config.totp_issuer.clone();
    let shown = totp::enrolment(&secret, &issuer, &user.username)?;
    let sealed = app
        .realtime
        .cipher
        .seal_totp_secret(user.id, &secret)
        .map_err(totp::TotpError::from)?;
    let now = courier_actors::now_ms();
    if !app.store.put_pending_totp(user.id, &sealed, now).await? {
        return Err(enrolled());
    }
    caller
        .audit(
            &app,
            "auth.totp.enrolment_started",
            json!({"userId": user.id, "keyVersion": sealed.key_version}),
        )
        .await?;
    Ok(Json(TotpEnrolment {
        otpauth_uri: shown.uri,
        secret: shown.secret_base32,
        qr_code: shown.qr_data_url,
        issuer,
        account_name: user.username,
        digits: totp::DIGITS,
        period: totp::STEP_SECS,
        algorithm: "SHA1",
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfirmBody {
    /// The app's current code for the pending secret.
    code: String,
}

/// The recovery codes of a confirmed enrolment, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecoveryCodes {
    /// Ten one-time codes, each good for one login instead of a TOTP code.
    recovery_codes: Vec<String>,
}

/// `POST /api/auth/totp/confirm` `{code}`: activates the pending secret
/// once `code` is its current code, and answers ten recovery codes (stored
/// hashed, shown this once). 400 for a code that does not match (audited),
/// 409 with nothing pending.
#[utoipa::path(
    post,
    path = "/api/auth/totp/confirm",
    operation_id = "auth.totp_confirm",
    tag = "auth",
    summary = "Confirm the pending TOTP secret with a current code: the second factor is on; ten recovery codes, shown once",
    request_body = ConfirmBody,
    responses((status = 200, description = "Enrolled; the recovery codes", body = RecoveryCodes), (status = 400, description = "`code` does not match the pending secret's current code", body = ErrorBody), (status = 409, description = "No enrolment is pending", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn confirm(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<ConfirmBody>,
) -> ApiResult<Json<RecoveryCodes>> {
    validate::presented("code", &body.code)?;
    let user = caller.identity.user_id;
    let pending =
        || ApiError::conflict("no enrolment is pending: POST /api/auth/totp/enroll first");
    let secret = app
        .store
        .totp_secret(user)
        .await?
        .filter(|s| !s.is_active())
        .ok_or_else(pending)?;
    let opened = app
        .realtime
        .cipher
        .open_totp_secret(user, &secret.sealed)
        .map_err(totp::TotpError::from)?;
    let now = courier_actors::now_ms();
    let now_secs = u64::try_from(now / 1000).unwrap_or(0);
    let Some(step) = totp::matching_step(&opened, &body.code, now_secs) else {
        caller
            .audit(
                &app,
                "auth.second_factor.failed",
                json!({"userId": user, "op": "confirm", "kind": "totp", "reason": "failed"}),
            )
            .await?;
        return Err(ApiError::invalid(
            "code",
            "does not match the authenticator's current code",
        ));
    };
    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| totp::recovery_code_hash(user, c))
        .collect();
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    if !app
        .store
        .confirm_totp(user, secret.sealed.key_version, step, now, &hashes)
        .await?
    {
        return Err(pending());
    }
    caller
        .audit(
            &app,
            "auth.totp.enrolled",
            json!({"userId": user, "recoveryCodes": codes.len()}),
        )
        .await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DisableBody {
    current_password: String,
    /// A current code, or instead
    #[serde(default)]
    totp_code: Option<String>,
    /// one of the recovery codes.
    #[serde(default)]
    recovery_code: Option<String>,
}

/// `DELETE /api/auth/totp` `{currentPassword, totpCode | recoveryCode}`:
/// 204; the account has no second factor (nor recovery codes) any more. A
/// pending enrolment is dropped with the password alone.
#[utoipa::path(
    delete,
    path = "/api/auth/totp",
    operation_id = "auth.totp_disable",
    tag = "auth",
    summary = "Disable one's TOTP second factor (current password and a code or recovery code)",
    request_body = DisableBody,
    responses((status = 204, description = "Disabled"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Wrong current password or code, or the account is temporarily locked", body = ErrorBody), (status = 404, description = "No second factor is enrolled or pending", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn disable(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<DisableBody>,
) -> ApiResult<StatusCode> {
    let second = presented(body.totp_code.as_deref(), body.recovery_code.as_deref())?;
    let user = with_password(&app, &caller, "disable", body.current_password).await?;
    let Some(secret) = app.store.totp_secret(user.id).await? else {
        return Err(ApiError::not_found("no second factor is enrolled"));
    };
    if secret.is_active() {
        let now = courier_actors::now_ms();
        let verdict = totp::verify(&*app.store, &app.realtime.cipher, user.id, second, now).await?;
        match verdict {
            Verdict::Accepted | Verdict::RecoveryUsed { .. } => {}
            Verdict::Missing => {
                return Err(ApiError::invalid(
                    "totpCode",
                    "a current code (or recoveryCode) is required",
                ))
            }
            Verdict::NotEnrolled => {
                return Err(ApiError::not_found("no second factor is enrolled"))
            }
            Verdict::Failed | Verdict::Replayed => {
                let account = user.id.to_string();
                let failure = app
                    .login_guard
                    .failed(&account, &ip_key(&caller.client.ip), now);
                caller
                    .audit(
                        &app,
                        "auth.second_factor.failed",
                        json!({
                            "userId": user.id, "op": "disable", "kind": second.kind(),
                            "reason": if verdict == Verdict::Replayed { "replayed" } else { "failed" },
                            "failures": failure.address_failures,
                        }),
                    )
                    .await?;
                audit_lockout(
                    &app,
                    &caller.client,
                    Some(user.id),
                    &user.username,
                    &failure,
                )
                .await?;
                return Err(ApiError::forbidden(
                    "totpCode: is wrong, expired or already used",
                ));
            }
        }
    }
    app.store.delete_totp(user.id).await?;
    caller
        .audit(
            &app,
            "auth.totp.disabled",
            json!({"userId": user.id, "by": "self", "wasPending": !secret.is_active()}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/users/{id}/totp` (`users.manage`): 204; the account's
/// second factor and recovery codes are gone (a user who lost their
/// device), and, if its role requires one, its sessions may only enrol
/// again. 404 when it had none; 409 for one's own (use `DELETE
/// /api/auth/totp`).
#[utoipa::path(
    delete,
    path = "/api/users/{id}/totp",
    operation_id = "users.reset_totp",
    tag = "users",
    summary = "Remove a user's TOTP second factor and recovery codes (users.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 204, description = "Removed"), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such user, or it has no second factor", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn reset(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: UserId = path_id("id", &id)?;
    let user = target(&app, &caller, id, UserAct::Manage, "user.totp_reset").await?;
    if id == caller.identity.user_id {
        return Err(ApiError::conflict(
            "disable your own second factor with DELETE /api/auth/totp",
        ));
    }
    if !app.store.delete_totp(id).await? {
        return Err(ApiError::not_found("this user has no second factor"));
    }
    caller
        .audit(
            &app,
            "auth.totp.disabled",
            json!({"userId": id, "username": user.username, "by": "admin"}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
