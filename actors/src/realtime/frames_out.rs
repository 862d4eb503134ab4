//! Building the server frames the actors send, so that call sites read as
//! what they say (`out::typing(channel, user, true)`), not as struct syntax.

use std::collections::BTreeMap;

use courier_protocol::frames::{
    Ack, AckResult, ChannelKindWire, ChannelView, DeliveryStatus, ErrorFrame, MessageDeleted,
    MessageDeletedPush, MessagePush, MessageStatus, MessageView, Presence, PresenceStatus,
    ReactionUpdated, ReadReceiptPush, Recovered, Ref, SendResult, ServerFrame, SystemEvent, Typing,
};
use courier_protocol::{ChannelId, ErrorCode, MessageId, UserId};

use crate::durable::store::ChannelKind;

/// A plain `ack`.
pub fn ack(reference: Option<Ref>) -> ServerFrame {
    ServerFrame::ack(reference)
}

/// The `ack` of a send.
pub fn ack_sent(
    reference: Option<Ref>,
    message_id: MessageId,
    seq: u64,
    timestamp: i64,
    duplicate: bool,
) -> ServerFrame {
    ServerFrame::Ack(Ack {
        reference,
        result: AckResult::Sent(SendResult {
            message_id,
            seq,
            timestamp,
            duplicate,
        }),
    })
}

/// The `ack` of a join or `open_direct`.
pub fn ack_channel(reference: Option<Ref>, channel: ChannelView) -> ServerFrame {
    ServerFrame::Ack(Ack {
        reference,
        result: AckResult::Channel(channel),
    })
}

/// An `error` (counted in `courier_errors_total{surface="ws"}`).
pub fn error(reference: Option<Ref>, code: ErrorCode, message: &str) -> ServerFrame {
    count_error(code);
    ServerFrame::error(reference, code, message)
}

/// Counts one `error` frame by its code.
fn count_error(code: ErrorCode) {
    metrics::counter!(
        crate::telemetry::names::ERRORS,
        "surface" => "ws",
        "code" => code.as_str()
    )
    .increment(1);
}

/// A `rate_limited` error with the time until a retry can succeed.
pub fn rate_limited(reference: Option<Ref>, retry_after_ms: u64) -> ServerFrame {
    count_error(ErrorCode::RateLimited);
    ServerFrame::Error(ErrorFrame {
        reference,
        code: ErrorCode::RateLimited,
        message: "rate limit exceeded".into(),
        retry_after_ms: Some(retry_after_ms),
    })
}

/// `new_message`.
pub fn new_message(data: MessageView) -> ServerFrame {
    ServerFrame::NewMessage(MessagePush { data })
}

/// `message_updated`.
pub fn message_updated(data: MessageView) -> ServerFrame {
    ServerFrame::MessageUpdated(MessagePush { data })
}

/// `message_deleted`.
pub fn message_deleted(message_id: MessageId, channel_id: ChannelId, seq: u64) -> ServerFrame {
    ServerFrame::MessageDeleted(MessageDeletedPush {
        data: MessageDeleted {
            message_id,
            channel_id,
            seq,
        },
    })
}

/// `typing`.
pub fn typing(channel_id: ChannelId, user_id: UserId, is_typing: bool) -> ServerFrame {
    ServerFrame::Typing(Typing {
        channel_id,
        user_id,
        is_typing,
    })
}

/// `read_receipt` (the push).
pub fn read_receipt(channel_id: ChannelId, user_id: UserId, seq: u64) -> ServerFrame {
    ServerFrame::ReadReceipt(ReadReceiptPush {
        channel_id,
        user_id,
        seq,
    })
}

/// `reaction_updated`.
pub fn reaction_updated(
    channel_id: ChannelId,
    message_id: MessageId,
    reactions: BTreeMap<String, u64>,
) -> ServerFrame {
    ServerFrame::ReactionUpdated(ReactionUpdated {
        channel_id,
        message_id,
        reactions,
    })
}

/// `presence`.
pub fn presence(user_id: UserId, status: PresenceStatus, last_seen: i64) -> ServerFrame {
    ServerFrame::Presence(Presence {
        user_id,
        status,
        last_seen,
    })
}

/// `recovered`: a join's replay is complete up to `last_seq`.
pub fn recovered(channel_id: ChannelId, last_seq: u64) -> ServerFrame {
    ServerFrame::Recovered(Recovered {
        channel_id,
        last_seq,
    })
}

/// `message_status`: `user` got (or read) the channel's messages up to `seq`.
pub fn message_status(
    channel_id: ChannelId,
    user_id: UserId,
    seq: u64,
    status: DeliveryStatus,
) -> ServerFrame {
    ServerFrame::MessageStatus(MessageStatus {
        channel_id,
        user_id,
        seq,
        status,
    })
}

/// `system_event`.
pub fn system_event(event_type: &str, data: serde_json::Value) -> ServerFrame {
    ServerFrame::SystemEvent(SystemEvent {
        event_type: event_type.to_owned(),
        data,
    })
}

/// The wire spelling of a channel kind.
pub fn kind(kind: ChannelKind) -> ChannelKindWire {
    match kind {
        ChannelKind::Public => ChannelKindWire::Public,
        ChannelKind::Private => ChannelKindWire::Private,
        ChannelKind::Direct => ChannelKindWire::Direct,
        ChannelKind::Broadcast => ChannelKindWire::Broadcast,
    }
}
