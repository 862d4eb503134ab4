//! Break-glass emergency access (`courier_actors::compliance::break_glass`,
//! docs/break-glass.md):
//!
//! - `POST /api/channels/{id}/break-glass {reason}`: a clinician with the
//!   right (a per-user right an admin sets, or a role with
//!   `channels.break_glass`) who is not a member opens a private channel
//!   for `break_glass_ttl_secs`. Audited `break_glass.granted`.
//! - `DELETE /api/break-glass/{id}`: the grantee (`ended_by_user`) or a
//!   reviewer (`revoked`) ends it early. Audited `break_glass.ended`.
//! - `GET /api/break-glass?status=unreviewed|all`: the review queue, with
//!   the reasons opened (`break_glass.review`; audited
//!   `break_glass.queue_read`).
//! - `POST /api/break-glass/{id}/review {note}`: takes a grant out of the
//!   queue (`break_glass.review`; audited `break_glass.reviewed`).
//! - `PUT /api/users/{id}/break-glass {allowed}`: gives or takes the
//!   per-user right (`users.manage` over that user; audited
//!   `user.break_glass_right`).
//!
//! Audit details carry ids and times only, never the reason or the note.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use courier_actors::compliance::break_glass::{
    BreakGlassError, EndReason, GrantId, Origin, PERM_REVIEW, REASON_MAX_BYTES, REASON_MIN_CHARS,
};
use courier_actors::durable::store::BreakGlassGrant;
use courier_actors::policy::authz::{Action, Denied, UserAct};
use courier_actors::realtime::AccessError;
use courier_protocol::{ChannelId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, JsonBody, QueryParams};
use super::openapi::ErrorBody;
use crate::http::App;

/// The longest review note, in bytes.
const NOTE_MAX_BYTES: usize = 2_000;

/// The body of `POST /api/channels/{id}/break-glass`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenBody {
    /// Why: at least 10 characters (after trimming), at most 500 bytes.
    /// Stored sealed under the channel's key; shown only in the review
    /// queue.
    pub reason: String,
}

/// The body of `POST /api/break-glass/{id}/review`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    /// The reviewer's finding: 1 to 2000 bytes.
    pub note: String,
}

/// The body of `PUT /api/users/{id}/break-glass`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RightBody {
    /// Whether the user may break the glass.
    pub allowed: bool,
}

/// A grant as shown. `reason` only in the review queue.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    #[schema(format = Uuid)]
    id: String,
    #[schema(format = Uuid)]
    channel_id: String,
    #[schema(format = Uuid)]
    user_id: String,
    reason: Option<String>,
    granted_at: i64,
    expires_at: i64,
    /// Not ended and not past `expiresAt`.
    active: bool,
    ended_at: Option<i64>,
    #[schema(format = Uuid)]
    ended_by: Option<String>,
    /// `expired`, `ended_by_user` or `revoked`.
    end_reason: Option<String>,
    #[schema(format = Uuid)]
    reviewed_by: Option<String>,
    reviewed_at: Option<i64>,
    review_note: Option<String>,
}

/// `{grant}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantBody {
    grant: GrantView,
}

/// `{grants}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantList {
    grants: Vec<GrantView>,
}

/// `{userId, allowed}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RightView {
    #[schema(format = Uuid)]
    user_id: String,
    allowed: bool,
}

fn view(g: &BreakGlassGrant, reason: Option<String>) -> Value {
    json!({
        "id": g.id,
        "channelId": g.channel_id,
        "userId": g.user_id,
        "reason": reason,
        "grantedAt": g.granted_at,
        "expiresAt": g.expires_at,
        "active": g.ended_at.is_none() && g.expires_at > courier_actors::now_ms(),
        "endedAt": g.ended_at,
        "endedBy": g.ended_by,
        "endReason": g.end_reason,
        "reviewedBy": g.reviewed_by,
        "reviewedAt": g.reviewed_at,
        "reviewNote": g.review_note,
    })
}

/// The one mapping of break-glass errors to answers.
fn api_error(e: BreakGlassError) -> ApiError {
    match e {
        BreakGlassError::NotAllowed => ApiError::forbidden("not allowed to break the glass"),
        BreakGlassError::Conflict(why) => ApiError::conflict(why),
        BreakGlassError::Unavailable => ApiError::unavailable(),
        BreakGlassError::Internal => ApiError::internal("break-glass"),
    }
}

/// The reason, trimmed, once it passes the rules.
fn checked_reason(reason: &str) -> ApiResult<&str> {
    if reason.len() > REASON_MAX_BYTES {
        return Err(ApiError::too_large(format!(
            "reason: at most {REASON_MAX_BYTES} bytes"
        )));
    }
    let reason = reason.trim();
    if reason.chars().count() < REASON_MIN_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("an emergency access needs a reason of at least {REASON_MIN_CHARS} characters"),
        ));
    }
    Ok(reason)
}

/// Refuses (auditing `access.denied`) a caller without `break_glass.review`.
fn require_review(app: &App, caller: &Caller, op: &str, details: Value) -> ApiResult<()> {
    if app
        .realtime
        .permissions
        .has(caller.identity.role, PERM_REVIEW)
    {
        Ok(())
    } else {
        Err(caller.access_error(
            app,
            op,
            details,
            AccessError::Denied(Denied("not allowed to review break-glass access")),
        ))
    }
}

fn origin(caller: &Caller) -> Origin {
    Origin {
        actor: Some(caller.identity.user_id),
        ip: Some(caller.client.ip.clone()),
        user_agent: caller.client.user_agent.clone(),
    }
}

/// `POST /api/channels/{id}/break-glass`: `{grant}` (201).
#[utoipa::path(
    post,
    path = "/api/channels/{id}/break-glass",
    operation_id = "break_glass.open",
    tag = "break-glass",
    summary = "Emergency access to a private channel by a non-member with the break-glass right, for break_glass_ttl_secs (audited as break_glass.granted; members and admins get system_event break_glass)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body(content = OpenBody, description = "Why"),
    responses((status = 201, description = "The grant: the caller is a member until expiresAt", body = GrantBody), (status = 400, description = "No reason, or one under 10 characters (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed to break the glass (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such channel", body = ErrorBody), (status = 409, description = "Already a member, or not a private channel", body = ErrorBody), (status = 413, description = "A reason over 500 bytes", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn open(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OpenBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id: ChannelId = path_id("id", &id)?;
    let access = &app.realtime.break_glass_access;
    let allowed = access
        .may_break_glass(caller.identity.user_id, caller.identity.role)
        .await?;
    if !allowed {
        return Err(caller.access_error(
            &app,
            "break_glass.open",
            json!({"channelId": id}),
            AccessError::Denied(Denied("not allowed to break the glass")),
        ));
    }
    let reason = checked_reason(&body.reason)?;
    let channel = app
        .store
        .get_channel(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such channel"))?;
    let grant = access
        .open(
            caller.identity.user_id,
            caller.identity.role,
            &channel,
            reason,
            Duration::from_secs(app.config.break_glass_ttl_secs),
            &origin(&caller),
        )
        .await
        .map_err(api_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"grant": view(&grant, None)})),
    ))
}

/// `DELETE /api/break-glass/{id}`: 204, the grant ended.
#[utoipa::path(
    delete,
    path = "/api/break-glass/{id}",
    operation_id = "break_glass.end",
    tag = "break-glass",
    summary = "End a break-glass grant early: the grantee (ended_by_user) or a reviewer (revoked); the membership ends (audited as break_glass.ended)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 204, description = "Ended"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Neither the grantee nor a reviewer (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Ended already", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn end(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: GrantId = path_id("id", &id)?;
    let grant = app
        .store
        .get_grant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such grant"))?;
    let reason = if grant.user_id == caller.identity.user_id {
        EndReason::EndedByUser
    } else {
        require_review(&app, &caller, "break_glass.end", json!({"grantId": id}))?;
        EndReason::Revoked
    };
    if grant.ended_at.is_some() {
        return Err(ApiError::conflict("the grant has ended already"));
    }
    app.realtime
        .break_glass_access
        .end(id, reason, &origin(&caller))
        .await
        .map_err(api_error)?
        .ok_or_else(|| ApiError::conflict("the grant has ended already"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/break-glass?status=unreviewed|all`: `{grants}`, newest first,
/// with their reasons.
#[utoipa::path(
    get,
    path = "/api/break-glass",
    operation_id = "break_glass.list",
    tag = "break-glass",
    summary = "The break-glass review queue (unreviewed, the default) or every grant (all), newest first, reasons opened (break_glass.review; audited as break_glass.queue_read)",
    params(("status" = Option<String>, Query, description = "`unreviewed` (the default) or `all`")),
    responses((status = 200, description = "The grants", body = GrantList), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    require_review(&app, &caller, "break_glass.list", json!({}))?;
    let status = query.text("status", 16)?;
    let unreviewed = match status.as_deref() {
        None | Some("unreviewed") => true,
        Some("all") => false,
        Some(_) => return Err(ApiError::invalid("status", "must be unreviewed or all")),
    };
    let grants = app.store.list_grants(unreviewed).await?;
    let access = &app.realtime.break_glass_access;
    let mut views = Vec::with_capacity(grants.len());
    for g in &grants {
        let reason = access.reason(g).map_err(api_error)?;
        views.push(view(g, Some(reason)));
    }
    // The reasons were opened: who read them, and which.
    caller
        .audit(
            &app,
            "break_glass.queue_read",
            json!({
                "status": if unreviewed { "unreviewed" } else { "all" },
                "count": grants.len(),
                "grantIds": grants.iter().map(|g| g.id).collect::<Vec<_>>(),
            }),
        )
        .await?;
    Ok(Json(json!({"grants": views})))
}

/// `POST /api/break-glass/{id}/review`: `{grant}`, reviewed.
#[utoipa::path(
    post,
    path = "/api/break-glass/{id}/review",
    operation_id = "break_glass.review",
    tag = "break-glass",
    summary = "Review a break-glass grant (break_glass.review; audited as break_glass.reviewed): it leaves the queue",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body(content = ReviewBody, description = "The finding"),
    responses((status = 200, description = "The grant, reviewed", body = GrantBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Reviewed already", body = ErrorBody), (status = 413, description = "A note over 2000 bytes", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn review(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReviewBody>,
) -> ApiResult<Json<Value>> {
    let id: GrantId = path_id("id", &id)?;
    require_review(&app, &caller, "break_glass.review", json!({"grantId": id}))?;
    if body.note.len() > NOTE_MAX_BYTES {
        return Err(ApiError::too_large(format!(
            "note: at most {NOTE_MAX_BYTES} bytes"
        )));
    }
    let note = body.note.trim();
    if note.is_empty() {
        return Err(ApiError::invalid("note", "a review needs a note"));
    }
    if app.store.get_grant(id).await?.is_none() {
        return Err(ApiError::not_found("no such grant"));
    }
    let grant = app
        .store
        .review_grant(id, caller.identity.user_id, courier_actors::now_ms(), note)
        .await?
        .ok_or_else(|| ApiError::conflict("the grant was reviewed already"))?;
    caller
        .audit(
            &app,
            "break_glass.reviewed",
            json!({"grantId": id, "channelId": grant.channel_id, "userId": grant.user_id}),
        )
        .await?;
    Ok(Json(json!({"grant": view(&grant, None)})))
}

/// `PUT /api/users/{id}/break-glass`: `{userId, allowed}`.
#[utoipa::path(
    put,
    path = "/api/users/{id}/break-glass",
    operation_id = "break_glass.set_right",
    tag = "break-glass",
    summary = "Give or take a user's right to break the glass (users.manage over that user; audited as user.break_glass_right)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body(content = RightBody, description = "Whether they may"),
    responses((status = 200, description = "The right as it is now", body = RightView), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn set_right(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RightBody>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    let ask = |role| Action::ActOnUser {
        target: id,
        role,
        act: UserAct::Manage,
    };
    let op = "break_glass.set_right";
    caller.authorize(
        &app,
        ask(courier_actors::durable::store::Role::User),
        op,
        json!({"userId": id}),
    )?;
    let user = app
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    caller.authorize(&app, ask(user.role), op, json!({"userId": id}))?;
    let changed = app
        .store
        .set_break_glass_allowed(
            id,
            body.allowed,
            caller.identity.user_id,
            courier_actors::now_ms(),
        )
        .await?;
    if changed {
        caller
            .audit(
                &app,
                "user.break_glass_right",
                json!({"userId": id, "allowed": body.allowed}),
            )
            .await?;
    }
    Ok(Json(json!({"userId": id, "allowed": body.allowed})))
}
