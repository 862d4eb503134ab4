//! `/api/messages`: server-side publishing through the same path as a
//! WebSocket `send_message` (`Realtime::publish`): the same checks, the
//! sender's send rate, PHI flagging, the channel actor's ordering,
//! encryption, durable commit, audit and fan-out; reading one message with
//! the rule of history pages (`Realtime::read_message`); editing and
//! deleting it through the path of `edit_message` and `delete_message`
//! (`Realtime::change_message`): the same authorization, the channel
//! actor's commit and audit, and `message_updated` / `message_deleted` to
//! the joined connections; deleting with a moderator's `reason`, kept in
//! the `message.delete` audit entry; flagging and unflagging through the
//! path of `flag_message` / `unflag_message` (`Realtime::flag_message`).
//! Every answer that changes something waits for the commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use courier_actors::realtime::channel::{Accepted, ChannelError, Reply, Sender};
use courier_actors::realtime::{Change, Publish, PublishError};
use courier_protocol::{ChannelId, MessageId};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::disclosures;
use super::error::{ApiError, ApiResult};
use super::extract::{parse_json, path_id, Caller, JsonBody, RawBody};
use super::openapi::{ErrorBody, MessageBody};
use crate::http::App;
use courier_protocol::frames::MessageView;

/// How long a send may wait for its commit before the answer is 503 (the
/// message may still be committed; a retry with the same `clientMsgId` is
/// safe).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SendBody {
    channel_id: ChannelId,
    text: String,
    #[serde(default)]
    client_msg_id: Option<String>,
    #[serde(default, rename = "containsPHI")]
    contains_phi: Option<bool>,
    #[serde(default)]
    reply_to: Option<MessageId>,
    #[serde(default)]
    ttl_seconds: Option<u32>,
    /// Files uploaded to the channel (`POST /api/channels/{id}/attachments`);
    /// with any, `text` may be empty.
    #[serde(default)]
    attachments: Vec<courier_protocol::FileId>,
    /// The patient the message concerns (docs/protocol.md, "Patient link").
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "Patient/123")]
    patient_ref: Option<String>,
}

/// `POST /api/messages`: 201 with the message; 200 with the original for a
/// resend of a `clientMsgId` (nothing new is delivered).
#[utoipa::path(
    post,
    path = "/api/messages",
    operation_id = "messages.send",
    tag = "messages",
    summary = "Publish a message through the WebSocket send path; answered after the durable commit",
    request_body = SendBody,
    responses((status = 201, description = "Sent (200 with the original for a repeated clientMsgId)", body = MessageView), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn send(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let received = Instant::now();
    if body.text.trim().is_empty() && body.attachments.is_empty() {
        return Err(ApiError::invalid(
            "text",
            "must not be empty without attachments",
        ));
    }
    if body
        .client_msg_id
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 64 || c.contains('\0'))
    {
        return Err(ApiError::invalid(
            "clientMsgId",
            "must be 1 to 64 bytes, without U+0000",
        ));
    }
    if body.ttl_seconds == Some(0) {
        return Err(ApiError::invalid("ttlSeconds", "must be positive"));
    }
    let patient_ref = body
        .patient_ref
        .as_deref()
        .map(|r| super::patients::parse_ref("patientRef", r))
        .transpose()?;
    let channel_id = body.channel_id;
    let publish = Publish {
        sender: Sender {
            user_id: caller.identity.user_id,
            username: caller.identity.username.clone(),
            role: caller.identity.role,
            member: None,
            ip: Some(caller.client.ip.clone()),
        },
        channel_id,
        text: body.text,
        client_msg_id: body.client_msg_id,
        contains_phi: body.contains_phi.unwrap_or(false),
        reply_to: body.reply_to,
        ttl_seconds: body.ttl_seconds.map(u64::from),
        attachments: body.attachments,
        patient_ref,
        received,
        actor: None,
    };
    let (tx, rx) = oneshot::channel();
    app.realtime
        .publish(publish, Reply::Oneshot(tx))
        .await
        .map_err(|e| match e {
            PublishError::TooLarge => ApiError::too_large("text: is over the size limit"),
            PublishError::Invalid(why) => ApiError::bad_request(why),
            PublishError::RateLimited(wait) => ApiError::rate_limited(wait),
            PublishError::Access(e) => {
                caller.access_error(&app, "messages.send", json!({"channelId": channel_id}), e)
            }
        })?;
    match committed(rx).await? {
        Accepted::Sent {
            message,
            duplicate: false,
        } => Ok((StatusCode::CREATED, Json(json!(message)))),
        Accepted::Sent {
            message,
            duplicate: true,
        } => {
            // The channel actor knows only the original's id and seq: read
            // the stored original so the answer carries its real content.
            let row = app
                .store
                .get_message(message.id)
                .await
                .map_err(|_| ApiError::unavailable())?
                .ok_or_else(|| ApiError::internal("the original message is gone"))?;
            let original = courier_actors::durable::history::open_row(&app.realtime.cipher, row)
                .map_err(|_| ApiError::internal("the original message cannot be read"))?;
            Ok((StatusCode::OK, Json(json!(original))))
        }
        Accepted::Done => Err(ApiError::internal("a send was answered without a message")),
    }
}

/// The channel actor's answer, after the commit.
async fn committed(rx: oneshot::Receiver<Result<Accepted, ChannelError>>) -> ApiResult<Accepted> {
    let accepted = tokio::time::timeout(COMMIT_TIMEOUT, rx)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|_| ApiError::unavailable())??;
    Ok(accepted)
}

/// `GET /api/messages/{id}`: the message, when the caller may read its
/// channel (members; anyone for public and broadcast channels). A deleted
/// or expired message is 404. Audited as `history.read`, like a page.
#[utoipa::path(
    get,
    path = "/api/messages/{id}",
    operation_id = "messages.get",
    tag = "messages",
    summary = "One message, when the caller may read its channel (as history)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The message", body = MessageView), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: MessageId = path_id("id", &id)?;
    let message = app
        .realtime
        .read_message(caller.principal(&app), id)
        .await
        .map_err(|e| caller.access_error(&app, "messages.get", json!({"messageId": id}), e))?;
    let via = disclosures::via(&headers, "message");
    let mut details =
        disclosures::read_details(&app, &caller, message.channel_id, [message.seq], via);
    details["messageId"] = json!(id);
    details["count"] = 1.into();
    caller.audit(&app, "history.read", details).await?;
    Ok(Json(json!(message)))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct EditBody {
    text: String,
}

/// `PUT /api/messages/{id}` `{text}`: the edited message, once committed.
/// Only its sender may edit it; joined connections get `message_updated`.
#[utoipa::path(
    put,
    path = "/api/messages/{id}",
    operation_id = "messages.edit",
    tag = "messages",
    summary = "Edit a message (its sender only), as edit_message: joined members get message_updated",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = EditBody,
    responses((status = 200, description = "The edited message, once committed", body = MessageView), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn edit(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<EditBody>,
) -> ApiResult<Json<Value>> {
    let id: MessageId = path_id("id", &id)?;
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid("text", "must not be empty"));
    }
    if body.text.len() > app.realtime.limits.max_text_bytes {
        return Err(ApiError::too_large("text: is over the size limit"));
    }
    change(&app, &caller, id, Change::Edit(body.text), "messages.edit").await?;
    let edited = app
        .realtime
        .read_message(caller.principal(&app), id)
        .await
        .map_err(super::error::from_access)?;
    Ok(Json(json!(edited)))
}

/// The optional body of `DELETE /api/messages/{id}`.
#[derive(Deserialize, ToSchema)]
pub(super) struct DeleteBody {
    /// Why (a moderator's note, at most 500 bytes), kept in the
    /// `message.delete` audit entry.
    #[serde(default)]
    reason: Option<String>,
}

/// `DELETE /api/messages/{id}` with an optional body `{reason}`: 204 once
/// the soft delete is committed. The sender, a channel owner or moderator,
/// or an admin (`messages.moderate`, outside direct channels) may delete;
/// joined connections get `message_deleted`.
#[utoipa::path(
    delete,
    path = "/api/messages/{id}",
    operation_id = "messages.delete",
    tag = "messages",
    summary = "Delete a message (soft), as delete_message: joined members get message_deleted; an optional reason goes into the audit entry",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body(content = Option<DeleteBody>, description = "Optional: `{reason}`"),
    responses((status = 204, description = "Deleted, once committed"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> ApiResult<StatusCode> {
    let id: MessageId = path_id("id", &id)?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<DeleteBody>(&body)?
            .reason
            .filter(|r| !r.trim().is_empty())
            .map(|r| reason("reason", &r))
            .transpose()?
    };
    change(
        &app,
        &caller,
        id,
        Change::Delete { reason },
        "messages.delete",
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub(super) struct FlagBody {
    /// Why (1 to 500 bytes).
    reason: String,
}

/// `POST /api/messages/{id}/flag` `{reason}`: `{message}` with its flag, as
/// `flag_message`: the channel's moderators (and `messages.moderate`
/// outside direct channels) may flag; audited `message.flag`; joined
/// connections that may see flags get `message_flagged`.
#[utoipa::path(
    post,
    path = "/api/messages/{id}/flag",
    operation_id = "messages.flag",
    tag = "moderation",
    summary = "Flag a message with a reason (a channel moderator or messages.moderate), as flag_message",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = FlagBody,
    responses((status = 200, description = "The message, with its flag", body = MessageBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn flag(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<FlagBody>,
) -> ApiResult<Json<Value>> {
    let id: MessageId = path_id("id", &id)?;
    let reason = reason("reason", &body.reason)?;
    set_flag(&app, &caller, id, Some(reason), "messages.flag").await
}

/// `DELETE /api/messages/{id}/flag`: `{message}` without its flag, as
/// `unflag_message`; audited `message.unflag`.
#[utoipa::path(
    delete,
    path = "/api/messages/{id}/flag",
    operation_id = "messages.unflag",
    tag = "moderation",
    summary = "Clear a message's flag, as unflag_message",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The message, unflagged", body = MessageBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn unflag(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: MessageId = path_id("id", &id)?;
    set_flag(&app, &caller, id, None, "messages.unflag").await
}

async fn set_flag(
    app: &App,
    caller: &Caller,
    id: MessageId,
    reason: Option<String>,
    op: &str,
) -> ApiResult<Json<Value>> {
    let message = app
        .realtime
        .flag_message(
            caller.principal(app),
            Some(caller.client.ip.clone()),
            id,
            reason,
        )
        .await
        .map_err(|e| caller.access_error(app, op, json!({"messageId": id}), e))?;
    Ok(Json(json!({"message": message})))
}

/// A moderator's reason, checked as `flag_message` checks it.
fn reason(field: &'static str, raw: &str) -> ApiResult<String> {
    use courier_actors::realtime::connection::{flag_reason, RequestError};
    flag_reason(raw).map_err(|e| match e {
        RequestError::TooLarge(_) => ApiError::too_large(format!("{field}: is over 500 bytes")),
        other => ApiError::invalid(field, other.to_string().trim_start_matches("reason ")),
    })
}

/// An edit or delete through the channel actor, waiting for its commit.
async fn change(
    app: &App,
    caller: &Caller,
    id: MessageId,
    change: Change,
    op: &str,
) -> ApiResult<()> {
    let (tx, rx) = oneshot::channel();
    app.realtime
        .change_message(
            caller.principal(app),
            id,
            change,
            |_| None,
            Reply::Oneshot(tx),
        )
        .await
        .map_err(|e| caller.access_error(app, op, json!({"messageId": id}), e))?;
    committed(rx).await.map(|_| ())
}
