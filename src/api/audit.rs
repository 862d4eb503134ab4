//! `/api/audit`: listing the audit chain with filters, and verifying it.
//! Both need `audit.read`, and both are themselves audited.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use courier_actors::audit_chain::{self, AuditChainError};
use courier_actors::authz::Action;
use courier_actors::store::{AuditFilter, StoreError};
use courier_protocol::UserId;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use crate::http::App;

/// `GET /api/audit?userId=&action=&after=&limit=`: `{entries}`, newest
/// first; `after` is a `seq`: only entries after it.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadAudit, "audit.list", json!({}))?;
    let filter = AuditFilter {
        actor_id: query.parse::<UserId>("userId", "a UUID")?,
        action: query.text("action", 64)?,
        after_seq: query.parse::<u64>("after", "a non-negative integer (an entry's seq)")?,
        limit: query.int_in("limit", 1, 1000, 100)? as u32,
    };
    let entries = app.store.list_audit(filter.clone()).await?;
    caller
        .audit(
            &app,
            "audit.read",
            json!({
                "userId": filter.actor_id,
                "action": filter.action,
                "after": filter.after_seq,
                "limit": filter.limit,
                "returned": entries.len(),
            }),
        )
        .await?;
    Ok(Json(json!({"entries": entries})))
}

/// `GET /api/audit/verify`: `{ok, entries, headHash, firstBadSeq}`, from
/// genesis, with every checkpoint of the store and the checkpoint file.
pub(super) async fn verify(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadAudit, "audit.verify", json!({}))?;
    let keyring = app.realtime.cipher.keyring();
    let file = app.config.checkpoint_file();
    let report = audit_chain::verify_store(&*app.store, &keyring, Some(&file))
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
