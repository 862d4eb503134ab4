//! `/api/channels`: channel CRUD, membership and history pages.
//!
//! Every read goes through `Realtime::channel_access` (or `read_history`,
//! which uses it), the same check the WebSocket path makes, so a private or
//! direct channel stays closed to non-members here as there. Membership
//! writes go through the persistence actor; removals and deletions are told
//! to the channel's actor, which updates its joined connections. An archive
//! (`Realtime::archive_channel`) is told to it too: it refuses sends from
//! then on. `?all=true` lists every channel, for `channels.manage`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_actors::durable::store::{
    Channel, ChannelKind, ChannelPatch, ChannelRole, Member, PatientSeal, WriteOp,
};
use courier_actors::policy::authz::{self, Action};
use courier_actors::realtime::channel::ChannelMsg;
use courier_actors::realtime::AccessError;
use courier_protocol::{ChannelId, UserId};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{from_access, ApiError, ApiResult};
use super::extract::{path_id, Caller, JsonBody, QueryParams};
use super::openapi::{
    ChannelBody, ChannelList, ErrorBody, MemberBody, MemberList, MessagePage, ReceiptList,
};
use super::{disclosures, patients, validate, views};
use crate::http::App;

/// `GET /api/channels`: `{channels}`, the ones the caller can see: public
/// and broadcast channels and those they are a member of. With
/// `?all=true&search=&limit=&offset=` (`channels.manage`): `{channels,
/// limit, offset, hasMore}`, a page of every channel by name.
#[utoipa::path(
    get,
    path = "/api/channels",
    operation_id = "channels.list",
    tag = "channels",
    summary = "The channels the caller can see; with all=true (channels.manage) a page of every channel",
    params(("all" = Option<bool>, Query, description = "Every channel, paged (channels.manage)"), ("search" = Option<String>, Query, description = "With all=true: part of the name, any case"), ("limit" = Option<u32>, Query, description = "With all=true: page size, 1 to 100 (50)"), ("offset" = Option<u32>, Query, description = "With all=true: channels to skip (0)")),
    responses((status = 200, description = "The channels (a ChannelPage with all=true)", body = ChannelList), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    if query.parse::<bool>("all", "true or false")? == Some(true) {
        return list_all(&app, &caller, &query).await;
    }
    let principal = caller.principal(&app);
    let mut channels = Vec::new();
    for channel in app.store.list_channels_for(caller.identity.user_id).await? {
        let member = app
            .store
            .get_member(channel.id, caller.identity.user_id)
            .await?;
        let visible = authz::decide(
            principal,
            Action::ReadChannel {
                channel: &channel,
                member: member.as_ref(),
            },
        );
        if visible.is_ok() {
            let patient_ref = patients::channel_ref(&app, &channel);
            channels.push(views::channel_full(
                &channel,
                member.as_ref(),
                None,
                patient_ref,
            ));
        }
    }
    Ok(Json(json!({"channels": channels})))
}

/// Every channel, a page at a time, by name (`channels.manage`).
async fn list_all(app: &App, caller: &Caller, query: &QueryParams) -> ApiResult<Json<Value>> {
    let search = query.text("search", 64)?;
    let limit = query.int_in("limit", 1, 100, 50)? as u32;
    let offset = query.int_in("offset", 0, 1_000_000, 0)? as u32;
    caller.authorize(app, Action::ListAllChannels, "channels.list_all", json!({}))?;
    let mut page = app
        .store
        .list_channels_page(search.as_deref(), limit + 1, offset)
        .await?;
    let has_more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let mut channels = Vec::with_capacity(page.len());
    for channel in &page {
        let member = app
            .store
            .get_member(channel.id, caller.identity.user_id)
            .await?;
        channels.push(views::channel(channel, member.as_ref()));
    }
    Ok(Json(json!({
        "channels": channels,
        "limit": limit,
        "offset": offset,
        "hasMore": has_more,
    })))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateChannelBody)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    kind: ChannelKind,
    /// The patient the channel concerns (docs/protocol.md, "Patient link").
    #[serde(default, rename = "patientRef")]
    #[schema(value_type = Option<String>, example = "Patient/123")]
    patient_ref: Option<String>,
}

/// `POST /api/channels`: 201 `{channel}`; the caller becomes its owner.
#[utoipa::path(
    post,
    path = "/api/channels",
    operation_id = "channels.create",
    tag = "channels",
    summary = "Create a channel; the caller becomes its owner",
    request_body = CreateBody,
    responses((status = 201, description = "Created", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    if body.kind == ChannelKind::Direct {
        return Err(ApiError::invalid(
            "kind",
            "direct channels are opened with open_direct, not created",
        ));
    }
    let name = validate::channel_name("name", &body.name)?;
    let description = validate::description("description", body.description.as_deref())?;
    let patient_ref = body
        .patient_ref
        .as_deref()
        .map(|r| patients::parse_ref("patientRef", r))
        .transpose()?;
    caller.authorize(
        &app,
        Action::CreateChannel { kind: body.kind },
        "channels.create",
        json!({"kind": body.kind}),
    )?;
    let now = courier_actors::now_ms();
    let id = ChannelId::new();
    let seal = patient_ref
        .as_ref()
        .map(|r| patients::seal_for_channel(&app, id, r))
        .transpose()?;
    let (sealed, tag) = match seal {
        Some(PatientSeal { sealed, tag }) => (Some(sealed), Some(tag)),
        None => (None, None),
    };
    let channel = Channel {
        id,
        name,
        description,
        kind: body.kind,
        created_by: caller.identity.user_id,
        created_at: now,
        direct_key: None,
        archived_at: None,
        patient_ref: sealed,
        patient_tag: tag,
    };
    let owner = Member {
        channel_id: channel.id,
        user_id: caller.identity.user_id,
        role: ChannelRole::Owner,
        joined_at: now,
        last_read_seq: 0,
        last_delivered_seq: 0,
    };
    app.store
        .create_channel(channel.clone(), owner.clone())
        .await?;
    caller
        .audit(
            &app,
            "channel.create",
            json!({"channelId": channel.id, "kind": channel.kind,
                   "patientLinked": channel.patient_tag.is_some()}),
        )
        .await?;
    let view = views::channel_full(&channel, Some(&owner), None, patient_ref);
    Ok((StatusCode::CREATED, Json(json!({"channel": view}))).into_response())
}

/// `GET /api/channels/{id}`: `{channel}` with `lastSeq`.
#[utoipa::path(
    get,
    path = "/api/channels/{id}",
    operation_id = "channels.get",
    tag = "channels",
    summary = "One channel, with lastSeq",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The channel", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    let (channel, member) = read_access(&app, &caller, id, "channels.get").await?;
    let last_seq = app.store.last_seq(id).await?;
    let patient_ref = patients::channel_ref(&app, &channel);
    let view = views::channel_full(&channel, member.as_ref(), Some(last_seq), patient_ref);
    Ok(Json(json!({"channel": view})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = UpdateChannelBody)]
pub(super) struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    /// Absent: unchanged; `null` or `""`: removed.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    #[serde(default)]
    kind: Option<ChannelKind>,
    /// Absent: unchanged; `null`: the link to a patient is removed.
    #[serde(default, rename = "patientRef", deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "Patient/123")]
    patient_ref: Option<Option<String>>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    de: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

/// `PUT /api/channels/{id}`: `{channel}`. The kind cannot change.
#[utoipa::path(
    put,
    path = "/api/channels/{id}",
    operation_id = "channels.update",
    tag = "channels",
    summary = "Rename or describe a channel (its owner or channels.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = UpdateBody,
    responses((status = 200, description = "The channel, changed", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    let (channel, member) = manage_access(&app, &caller, id, "channels.update").await?;
    if body.kind.is_some_and(|k| k != channel.kind) {
        return Err(ApiError::invalid("kind", "cannot be changed"));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| validate::channel_name("name", n))
        .transpose()?;
    let description = match &body.description {
        Some(d) => Some(validate::description("description", d.as_deref())?),
        None => None,
    };
    let patient_ref = match &body.patient_ref {
        Some(Some(r)) => Some(Some(patients::parse_ref("patientRef", r)?)),
        Some(None) => Some(None),
        None => None,
    };
    let patient = match &patient_ref {
        Some(Some(r)) => Some(Some(patients::seal_for_channel(&app, id, r)?)),
        Some(None) => Some(None),
        None => None,
    };
    let updated = app
        .store
        .update_channel(
            id,
            ChannelPatch {
                name,
                description,
                patient,
                ..ChannelPatch::default()
            },
        )
        .await?;
    let mut details = json!({"channelId": id});
    if let Some(set) = &patient_ref {
        // Whether it was linked or unlinked; never the reference.
        details["patientLinked"] = set.is_some().into();
    }
    caller.audit(&app, "channel.update", details).await?;
    let patient_ref = patients::channel_ref(&app, &updated);
    Ok(Json(json!({
        "channel": views::channel_full(&updated, member.as_ref(), None, patient_ref)
    })))
}

/// `PATCH /api/channels/{id}`: the same edit as `PUT` (absent fields are
/// unchanged; `"patientRef": null` unlinks the patient).
#[utoipa::path(
    patch,
    path = "/api/channels/{id}",
    operation_id = "channels.patch",
    tag = "channels",
    summary = "Edit a channel: name, description, patientRef (its owner or channels.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = UpdateBody,
    responses((status = 200, description = "The channel, changed", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn patch(
    state: State<Arc<App>>,
    caller: Caller,
    id: Path<String>,
    body: JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    update(state, caller, id, body).await
}

/// `DELETE /api/channels/{id}`: 204; joined connections get
/// `system_event` `channel_deleted`.
#[utoipa::path(
    delete,
    path = "/api/channels/{id}",
    operation_id = "channels.delete",
    tag = "channels",
    summary = "Delete a channel; joined connections get system_event channel_deleted",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Messages of the channel are under a legal hold", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: ChannelId = path_id("id", &id)?;
    let (channel, _) = manage_access(&app, &caller, id, "channels.delete").await?;
    // A legal hold on the channel, or on any message in it, keeps it.
    if app.store.channel_held(id).await? {
        return Err(ApiError::conflict(
            "the channel holds messages under a legal hold",
        ));
    }
    app.store.delete_channel(id).await?;
    app.realtime.notify_channel(id, ChannelMsg::Deleted);
    caller
        .audit(
            &app,
            "channel.delete",
            json!({"channelId": id, "kind": channel.kind}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/channels/{id}/archive`: `{channel}`, archived: no new
/// messages, edits or reactions; history stays readable.
#[utoipa::path(
    post,
    path = "/api/channels/{id}/archive",
    operation_id = "channels.archive",
    tag = "channels",
    summary = "Archive a channel (its owner or channels.manage): sends, edits and reactions are refused, history stays",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The channel, archived", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn archive(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_archived(&app, &caller, &id, true).await
}

/// `POST /api/channels/{id}/unarchive`: `{channel}`, open again.
#[utoipa::path(
    post,
    path = "/api/channels/{id}/unarchive",
    operation_id = "channels.unarchive",
    tag = "channels",
    summary = "Unarchive a channel (its owner or channels.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The channel, unarchived", body = ChannelBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn unarchive(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_archived(&app, &caller, &id, false).await
}

async fn set_archived(
    app: &App,
    caller: &Caller,
    id: &str,
    archive: bool,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", id)?;
    let (op, action) = if archive {
        ("channels.archive", "channel.archive")
    } else {
        ("channels.unarchive", "channel.unarchive")
    };
    let (channel, member) = app
        .realtime
        .archive_channel(caller.principal(app), id, archive)
        .await
        .map_err(|e| caller.access_error(app, op, json!({"channelId": id}), e))?;
    caller
        .audit(
            app,
            action,
            json!({"channelId": id, "archivedAt": channel.archived_at}),
        )
        .await?;
    Ok(Json(
        json!({"channel": views::channel(&channel, member.as_ref())}),
    ))
}

/// `GET /api/channels/{id}/members`: `{members}`.
#[utoipa::path(
    get,
    path = "/api/channels/{id}/members",
    operation_id = "channels.members",
    tag = "channels",
    summary = "A channel's members",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The members", body = MemberList), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn members(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    read_access(&app, &caller, id, "channels.members").await?;
    let mut members = Vec::new();
    for member in app.store.list_members(id).await? {
        let username = app
            .store
            .get_user(member.user_id)
            .await?
            .map(|u| u.username);
        members.push(views::member(&member, username.as_deref()));
    }
    Ok(Json(json!({"members": members})))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AddMemberBody {
    user_id: UserId,
    #[serde(default)]
    role: Option<ChannelRole>,
}

/// `POST /api/channels/{id}/members`: 201 `{member}`; 409 when already one.
#[utoipa::path(
    post,
    path = "/api/channels/{id}/members",
    operation_id = "channels.add_member",
    tag = "channels",
    summary = "Add a member (the owner or channels.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = AddMemberBody,
    responses((status = 201, description = "Added", body = MemberBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn add_member(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AddMemberBody>,
) -> ApiResult<Response> {
    let id: ChannelId = path_id("id", &id)?;
    let (channel, _) = manage_access(&app, &caller, id, "channels.member_add").await?;
    fixed_membership(&channel)?;
    let user = app
        .store
        .get_user(body.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("userId: no such user"))?;
    if app.store.get_member(id, user.id).await?.is_some() {
        return Err(ApiError::conflict("userId: already a member"));
    }
    let role = body.role.unwrap_or(ChannelRole::Member);
    let member = Member {
        channel_id: id,
        user_id: user.id,
        role,
        joined_at: courier_actors::now_ms(),
        last_read_seq: 0,
        last_delivered_seq: 0,
    };
    write(&app, WriteOp::UpsertMember(member.clone())).await?;
    caller
        .audit(
            &app,
            "channel.member_add",
            json!({"channelId": id, "userId": user.id, "role": role}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"member": views::member(&member, Some(&user.username))})),
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
pub(super) struct RoleBody {
    role: ChannelRole,
}

/// `PUT /api/channels/{id}/members/{userId}`: `{member}` with its new role.
#[utoipa::path(
    put,
    path = "/api/channels/{id}/members/{userId}",
    operation_id = "channels.set_member_role",
    tag = "channels",
    summary = "Change a member's channel role",
    params(("id" = String, Path, description = "The resource's id (a UUID)"), ("userId" = String, Path, description = "The member's user id (a UUID)")),
    request_body = RoleBody,
    responses((status = 200, description = "The member, changed", body = MemberBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn set_member_role(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    let user_id: UserId = path_id("userId", &user_id)?;
    let (channel, _) = manage_access(&app, &caller, id, "channels.member_role").await?;
    fixed_membership(&channel)?;
    let current = existing_member(&app, id, user_id).await?;
    if current.role == ChannelRole::Owner && body.role != ChannelRole::Owner {
        keeps_an_owner(&app, id, user_id).await?;
    }
    let member = Member {
        role: body.role,
        ..current
    };
    write(&app, WriteOp::UpsertMember(member.clone())).await?;
    app.realtime
        .notify_channel(id, ChannelMsg::MemberChanged(Box::new(member.clone())));
    caller
        .audit(
            &app,
            "channel.member_role",
            json!({"channelId": id, "userId": user_id, "role": body.role}),
        )
        .await?;
    let username = app.store.get_user(user_id).await?.map(|u| u.username);
    Ok(Json(
        json!({"member": views::member(&member, username.as_deref())}),
    ))
}

/// `DELETE /api/channels/{id}/members/{userId}`: 204; the member's joined
/// connections leave and the others get `system_event` `member_removed`.
#[utoipa::path(
    delete,
    path = "/api/channels/{id}/members/{userId}",
    operation_id = "channels.remove_member",
    tag = "channels",
    summary = "Remove a member; their joined connections leave",
    params(("id" = String, Path, description = "The resource's id (a UUID)"), ("userId" = String, Path, description = "The member's user id (a UUID)")),
    responses((status = 204, description = "Removed"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn remove_member(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id: ChannelId = path_id("id", &id)?;
    let user_id: UserId = path_id("userId", &user_id)?;
    let (channel, _) = manage_access(&app, &caller, id, "channels.member_remove").await?;
    fixed_membership(&channel)?;
    let current = existing_member(&app, id, user_id).await?;
    if current.role == ChannelRole::Owner {
        keeps_an_owner(&app, id, user_id).await?;
    }
    write(
        &app,
        WriteOp::RemoveMember {
            channel_id: id,
            user_id,
        },
    )
    .await?;
    app.realtime
        .notify_channel(id, ChannelMsg::MemberRemoved { user_id });
    caller
        .audit(
            &app,
            "channel.member_remove",
            json!({"channelId": id, "userId": user_id}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/channels/{id}/messages?beforeSeq=&limit=`: `{messages,
/// hasMore}`, paged as `fetch_history` pages (ascending `seq`).
#[utoipa::path(
    get,
    path = "/api/channels/{id}/messages",
    operation_id = "channels.messages",
    tag = "channels",
    summary = "A page of history: the newest limit before beforeSeq, ascending",
    params(("id" = String, Path, description = "The resource's id (a UUID)"), ("beforeSeq" = Option<u64>, Query, description = "Only messages with a smaller seq"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (50)")),
    responses((status = 200, description = "The page", body = MessagePage), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn messages(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    let before = query.parse::<u64>("beforeSeq", "a positive integer")?;
    if before == Some(0) {
        return Err(ApiError::invalid("beforeSeq", "must be a positive integer"));
    }
    let limit = query.int_in("limit", 1, 100, 50)? as u32;
    let (messages, has_more) = app
        .realtime
        .read_history(caller.principal(&app), id, before, limit)
        .await
        .map_err(|e| caller.access_error(&app, "channels.messages", json!({"channelId": id}), e))?;
    // The same entry as a WebSocket `fetch_history`: decrypted messages
    // left, by seq (docs/audit.md, "Disclosures").
    let via = disclosures::via(&headers, "history");
    let mut details =
        disclosures::read_details(&app, &caller, id, messages.iter().map(|m| m.seq), via);
    details["count"] = messages.len().into();
    caller.audit(&app, "history.read", details).await?;
    Ok(Json(json!({"messages": messages, "hasMore": has_more})))
}

/// `GET /api/channels/{id}/receipts`: `{receipts: [{userId, deliveredSeq,
/// readSeq}]}`, one per member; members only. `deliveredSeq` is the larger
/// of the stored position and the one the channel's actor holds (a member
/// with a live connection has everything committed), never below `readSeq`.
#[utoipa::path(
    get,
    path = "/api/channels/{id}/receipts",
    operation_id = "channels.receipts",
    tag = "channels",
    summary = "Each member's delivered and read positions (members only)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The positions", body = ReceiptList), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not a member (audited as access.denied when the channel is hidden)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn receipts(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: ChannelId = path_id("id", &id)?;
    let (_, member) = read_access(&app, &caller, id, "channels.receipts").await?;
    if member.is_none() {
        return Err(ApiError::forbidden("not a member of this channel"));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.realtime.notify_channel(id, ChannelMsg::Receipts(tx));
    // No running actor drops `tx` at once; a busy one gets a moment.
    let live = tokio::time::timeout(std::time::Duration::from_secs(2), rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let receipts: Vec<Value> = app
        .store
        .list_members(id)
        .await?
        .into_iter()
        .map(|m| {
            let held = live.get(&m.user_id).copied().unwrap_or(0);
            let delivered = m.last_delivered_seq.max(held).max(m.last_read_seq);
            json!({"userId": m.user_id, "deliveredSeq": delivered, "readSeq": m.last_read_seq})
        })
        .collect();
    Ok(Json(json!({"receipts": receipts})))
}

/// The channel and the caller's membership, when the caller may read it.
async fn read_access(
    app: &App,
    caller: &Caller,
    id: ChannelId,
    op: &str,
) -> ApiResult<(Channel, Option<Member>)> {
    app.realtime
        .channel_access(caller.principal(app), id, |c, m| Action::ReadChannel {
            channel: c,
            member: m,
        })
        .await
        .map_err(|e| caller.access_error(app, op, json!({"channelId": id}), e))
}

/// The channel and the caller's membership, when the caller may manage it.
async fn manage_access(
    app: &App,
    caller: &Caller,
    id: ChannelId,
    op: &str,
) -> ApiResult<(Channel, Option<Member>)> {
    app.realtime
        .channel_access(caller.principal(app), id, |c, m| Action::ManageChannel {
            channel: c,
            member: m,
        })
        .await
        .map_err(|e| caller.access_error(app, op, json!({"channelId": id}), e))
}

/// A direct channel's two members are fixed.
fn fixed_membership(channel: &Channel) -> ApiResult<()> {
    if channel.kind == ChannelKind::Direct {
        return Err(ApiError::conflict(
            "a direct channel's members cannot change",
        ));
    }
    Ok(())
}

async fn existing_member(app: &App, channel: ChannelId, user: UserId) -> ApiResult<Member> {
    app.store
        .get_member(channel, user)
        .await?
        .ok_or_else(|| ApiError::not_found("not a member of this channel"))
}

/// Refuses to leave a channel without an owner.
async fn keeps_an_owner(app: &App, channel: ChannelId, leaving: UserId) -> ApiResult<()> {
    let others = app
        .store
        .list_members(channel)
        .await?
        .iter()
        .any(|m| m.role == ChannelRole::Owner && m.user_id != leaving);
    if others {
        Ok(())
    } else {
        Err(ApiError::conflict("a channel keeps at least one owner"))
    }
}

async fn write(app: &App, op: WriteOp) -> ApiResult<()> {
    app.realtime
        .persistence
        .write(op)
        .await
        .map(|_| ())
        .map_err(|e| from_access(AccessError::from(e)))
}
