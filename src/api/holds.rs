//! `/api/holds`: legal holds on a channel, a user or a patient reference
//! (`courier_actors::compliance::holds`, docs/retention.md). Every route
//! needs `holds.manage` (super_admin, admin). Placing and releasing are
//! audited, durably, as `hold.placed` / `hold.released` with the hold's id,
//! scope and target: a channel or user id, or a patient by its tag, never
//! the reference in clear (nor the reason, which the hold itself keeps).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use courier_actors::compliance::holds::{self, HoldError, HoldOn};
use courier_actors::durable::store::HoldId;
use courier_actors::policy::authz::Action;
use courier_protocol::{ChannelId, PatientRef, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, JsonBody};
use super::openapi::ErrorBody;
use crate::http::App;

/// The body of `POST /api/holds`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlaceHold {
    /// `channel`, `user` or `patient`.
    pub scope: String,
    /// With `scope: "channel"`.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub channel_id: Option<ChannelId>,
    /// With `scope: "user"`: the messages they sent.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub user_id: Option<UserId>,
    /// With `scope: "patient"`: an EMR / FHIR reference (`Patient/123`);
    /// stored sealed, shown back only as its tag.
    #[schema(value_type = Option<String>)]
    pub patient_ref: Option<PatientRef>,
    /// Why: 1 to 500 bytes.
    pub reason: String,
}

/// The body of `POST /api/holds/{id}/release`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHold {
    /// Why: 1 to 500 bytes.
    pub reason: String,
}

/// A hold as shown: `{id, scope, channelId | userId | patientTag, reason,
/// placedBy, placedAt, active, releasedAt, releasedBy, releaseReason}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    #[schema(format = Uuid)]
    id: String,
    /// `channel`, `user` or `patient`.
    scope: String,
    #[schema(format = Uuid)]
    channel_id: Option<String>,
    #[schema(format = Uuid)]
    user_id: Option<String>,
    /// The patient's tag under the key version active at placement.
    patient_tag: Option<String>,
    reason: String,
    #[schema(format = Uuid)]
    placed_by: String,
    placed_at: i64,
    active: bool,
    released_at: Option<i64>,
    #[schema(format = Uuid)]
    released_by: Option<String>,
    release_reason: Option<String>,
}

/// `{hold}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldBody {
    hold: HoldView,
}

/// `{holds}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldList {
    holds: Vec<HoldView>,
}

/// The one mapping of hold errors to answers.
fn api_error(e: HoldError) -> ApiError {
    match e {
        HoldError::Reason => ApiError::invalid("reason", e),
        HoldError::NoChannel => ApiError::not_found("no such channel"),
        HoldError::NoUser => ApiError::not_found("no such user"),
        HoldError::NotFound => ApiError::not_found("no such hold"),
        HoldError::Released => ApiError::conflict("the hold was released already"),
        HoldError::Crypto(e) => ApiError::internal(e),
        HoldError::Store(e) => e.into(),
    }
}

/// What a `POST /api/holds` body asks to hold.
fn target(body: &PlaceHold) -> Result<HoldOn, ApiError> {
    let given = [
        body.channel_id.is_some(),
        body.user_id.is_some(),
        body.patient_ref.is_some(),
    ];
    let only = |i: usize| given.iter().enumerate().all(|(j, g)| *g == (i == j));
    match body.scope.as_str() {
        "channel" if only(0) => Ok(HoldOn::Channel(body.channel_id.expect("given"))),
        "user" if only(1) => Ok(HoldOn::User(body.user_id.expect("given"))),
        "patient" if only(2) => Ok(HoldOn::Patient(body.patient_ref.clone().expect("given"))),
        "channel" => Err(ApiError::invalid(
            "channelId",
            "a channel hold takes channelId, and only it",
        )),
        "user" => Err(ApiError::invalid(
            "userId",
            "a user hold takes userId, and only it",
        )),
        "patient" => Err(ApiError::invalid(
            "patientRef",
            "a patient hold takes patientRef, and only it",
        )),
        _ => Err(ApiError::invalid(
            "scope",
            "must be channel, user or patient",
        )),
    }
}

/// `POST /api/holds`: `{hold}`, placed (201).
#[utoipa::path(
    post,
    path = "/api/holds",
    operation_id = "holds.place",
    tag = "holds",
    summary = "Place a legal hold on a channel, a user or a patient reference (holds.manage; audited as hold.placed): its messages and their files are kept past TTL, retention and purge until released",
    request_body(content = PlaceHold, description = "What to hold, and why"),
    responses((status = 201, description = "The hold", body = HoldBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such channel or user", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn place(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<PlaceHold>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.authorize(&app, Action::ManageHolds, "holds.place", json!({}))?;
    let on = target(&body)?;
    let hold = holds::place(
        &*app.store,
        &app.realtime.cipher,
        on,
        &body.reason,
        caller.identity.user_id,
        courier_actors::now_ms(),
    )
    .await
    .map_err(api_error)?;
    caller
        .audit(&app, "hold.placed", holds::audit_details(&hold))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hold": holds::view(&hold)})),
    ))
}

/// `GET /api/holds`: `{holds}`, active and released, newest first.
#[utoipa::path(
    get,
    path = "/api/holds",
    operation_id = "holds.list",
    tag = "holds",
    summary = "Every legal hold, active and released, newest first (holds.manage)",
    responses((status = 200, description = "The holds", body = HoldList), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ManageHolds, "holds.list", json!({}))?;
    let all = app.store.list_holds().await?;
    Ok(Json(
        json!({"holds": all.iter().map(holds::view).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/holds/{id}`: `{hold}`.
#[utoipa::path(
    get,
    path = "/api/holds/{id}",
    operation_id = "holds.get",
    tag = "holds",
    summary = "One legal hold (holds.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The hold", body = HoldBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: HoldId = path_id("id", &id)?;
    caller.authorize(
        &app,
        Action::ManageHolds,
        "holds.get",
        json!({"holdId": id}),
    )?;
    let hold = app
        .store
        .get_hold(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such hold"))?;
    Ok(Json(json!({"hold": holds::view(&hold)})))
}

/// `POST /api/holds/{id}/release`: `{hold}`, released.
#[utoipa::path(
    post,
    path = "/api/holds/{id}/release",
    operation_id = "holds.release",
    tag = "holds",
    summary = "Release a legal hold (holds.manage; audited as hold.released): the next retention run treats its messages normally",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body(content = ReleaseHold, description = "Why"),
    responses((status = 200, description = "The hold, released", body = HoldBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Released already", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn release(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReleaseHold>,
) -> ApiResult<Json<Value>> {
    let id: HoldId = path_id("id", &id)?;
    caller.authorize(
        &app,
        Action::ManageHolds,
        "holds.release",
        json!({"holdId": id}),
    )?;
    let hold = holds::release(
        &*app.store,
        id,
        &body.reason,
        caller.identity.user_id,
        courier_actors::now_ms(),
    )
    .await
    .map_err(api_error)?;
    caller
        .audit(&app, "hold.released", holds::audit_details(&hold))
        .await?;
    Ok(Json(json!({"hold": holds::view(&hold)})))
}
