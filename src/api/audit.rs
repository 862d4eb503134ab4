//! `/api/audit`: listing the audit chain with filters and pages, reading
//! one entry, and verifying the chain. All need `audit.read`, and all are
//! themselves audited.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use courier_actors::audit::chain::{self, AuditChainError};
use courier_actors::durable::store::{AuditFilter, StoreError};
use courier_actors::policy::authz::Action;
use courier_protocol::{ChannelId, UserId};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use super::openapi::{AuditEntryBody, AuditPage, CheckpointList, ErrorBody};
use crate::http::App;
use courier_actors::audit::chain::VerifyReport;

/// `GET /api/audit?userId=&action=&channelId=&since=&until=&after=&before=&limit=`:
/// `{entries, nextBefore}`, newest first. `userId` is the actor, `action`
/// an exact action name, `channelId` the channel the entry's details name,
/// `since`/`until` a time range in ms (`since` included, `until` not),
/// `after`/`before` bounds on `seq`. `nextBefore` is the `before` of the
/// next (older) page, `null` on the last one: following it visits every
/// matching entry once.
#[utoipa::path(
    get,
    path = "/api/audit",
    operation_id = "audit.list",
    tag = "audit",
    summary = "Audit entries, newest first, filtered and paged (audit.read); reading is itself audited",
    params(("userId" = Option<String>, Query, description = "Only this actor's entries (a UUID)"), ("action" = Option<String>, Query, description = "Only this action, e.g. auth.login_failed"), ("channelId" = Option<String>, Query, description = "Only entries whose details name this channel (a UUID)"), ("since" = Option<i64>, Query, description = "Only entries at or after this time (ms)"), ("until" = Option<i64>, Query, description = "Only entries before this time (ms)"), ("after" = Option<u64>, Query, description = "Only entries with a greater seq"), ("before" = Option<u64>, Query, description = "Only entries with a smaller seq: the nextBefore of the previous page"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (100)")),
    responses((status = 200, description = "A page of entries", body = AuditPage), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadAudit, "audit.list", json!({}))?;
    let seq = "a non-negative integer (an entry's seq)";
    let ms = "an integer (ms since the Unix epoch)";
    let filter = AuditFilter {
        actor_id: query.parse::<UserId>("userId", "a UUID")?,
        action: query.text("action", 64)?,
        after_seq: query.parse::<u64>("after", seq)?,
        before_seq: query.parse::<u64>("before", seq)?,
        channel_id: query.parse::<ChannelId>("channelId", "a UUID")?,
        since: query.parse::<i64>("since", ms)?,
        until: query.parse::<i64>("until", ms)?,
        limit: query.int_in("limit", 1, 1000, 100)? as u32,
    };
    // One more than asked tells whether an older page follows.
    let mut entries = app
        .store
        .list_audit(AuditFilter {
            limit: filter.limit + 1,
            ..filter.clone()
        })
        .await?;
    let more = entries.len() > filter.limit as usize;
    entries.truncate(filter.limit as usize);
    let next_before = entries.last().filter(|_| more).map(|e| e.seq);
    caller
        .audit(
            &app,
            "audit.read",
            json!({
                "userId": filter.actor_id,
                "action": filter.action,
                // Not `channelId`: a read is no event of that channel.
                "channel": filter.channel_id,
                "since": filter.since,
                "until": filter.until,
                "after": filter.after_seq,
                "before": filter.before_seq,
                "limit": filter.limit,
                "returned": entries.len(),
            }),
        )
        .await?;
    Ok(Json(json!({"entries": entries, "nextBefore": next_before})))
}

/// `GET /api/audit/{id}`: the entry whose `seq` is `id`; 404 when there is
/// none.
#[utoipa::path(
    get,
    path = "/api/audit/{id}",
    operation_id = "audit.get",
    tag = "audit",
    summary = "One audit entry by its seq (audit.read)",
    params(("id" = u64, Path, description = "The entry's seq")),
    responses((status = 200, description = "The entry", body = AuditEntryBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let seq =
        id.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
            ApiError::invalid("id", "must be a positive integer (an entry's seq)")
        })?;
    caller.authorize(&app, Action::ReadAudit, "audit.get", json!({"seq": seq}))?;
    let entry = app
        .store
        .audit_range(seq - 1, 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or_else(|| ApiError::not_found("no such audit entry"))?;
    caller
        .audit(&app, "audit.read", json!({"seq": seq, "returned": 1}))
        .await?;
    Ok(Json(json!({"entry": entry})))
}

/// `GET /api/audit/verify`: `{ok, entries, headHash, firstBadSeq}`, from
/// genesis, with every checkpoint of the store and the checkpoint file.
#[utoipa::path(
    get,
    path = "/api/audit/verify",
    operation_id = "audit.verify",
    tag = "audit",
    summary = "Verify the audit hash chain and its signed checkpoints (audit.read)",
    responses((status = 200, description = "The verification report", body = VerifyReport), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn verify(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadAudit, "audit.verify", json!({}))?;
    let keyring = app.realtime.cipher.keyring();
    let file = app.config.checkpoint_file();
    let report = chain::verify_store(&*app.store, &keyring, Some(&file))
        .await
        .map_err(|e| match e {
            AuditChainError::Store(StoreError::Unavailable(_)) => ApiError::unavailable(),
            e => ApiError::internal(e),
        })?;
    caller.audit(
        &app,
        "audit.verify",
        json!({"ok": report.ok, "entries": report.entries, "firstBadSeq": report.first_bad_seq}),
    ).await?;
    Ok(Json(json!(report)))
}

/// `GET /api/audit/checkpoints?limit=`: `{checkpoints}`, the newest `limit`
/// signed checkpoints (100 by default), ascending by seq; "verify" checks
/// each against the chain.
#[utoipa::path(
    get,
    path = "/api/audit/checkpoints",
    operation_id = "audit.checkpoints",
    tag = "audit",
    summary = "The signed checkpoints of the audit chain (audit.read)",
    params(("limit" = Option<u32>, Query, description = "The newest this many, 1 to 1000 (100)")),
    responses((status = 200, description = "The checkpoints, ascending by seq", body = CheckpointList), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn checkpoints(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadAudit, "audit.checkpoints", json!({}))?;
    let limit = query.int_in("limit", 1, 1000, 100)? as usize;
    let all = app.store.list_checkpoints().await?;
    let newest = &all[all.len().saturating_sub(limit)..];
    caller
        .audit(
            &app,
            "audit.read",
            json!({"op": "audit.checkpoints", "returned": newest.len()}),
        )
        .await?;
    Ok(Json(json!({"checkpoints": newest})))
}
