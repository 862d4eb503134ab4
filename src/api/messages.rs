//! `POST /api/messages`: server-side publishing through the same path as a
//! WebSocket `send_message` (`Realtime::publish`): the same checks, the
//! sender's send rate, PHI flagging, the channel actor's ordering,
//! encryption, durable commit, audit and fan-out. The answer waits for the
//! commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use courier_actors::realtime::channel::{Accepted, Reply, Sender};
use courier_actors::realtime::{Publish, PublishError};
use courier_protocol::{ChannelId, MessageId};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody};
use crate::http::App;

/// How long a send may wait for its commit before the answer is 503 (the
/// message may still be committed; a retry with the same `clientMsgId` is
/// safe).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
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
}

/// `POST /api/messages`: 201 with the message; 200 with the original for a
/// resend of a `clientMsgId` (nothing new is delivered).
pub(super) async fn send(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let received = Instant::now();
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid("text", "must not be empty"));
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
    let accepted = tokio::time::timeout(COMMIT_TIMEOUT, rx)
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|_| ApiError::unavailable())??;
    match accepted {
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
