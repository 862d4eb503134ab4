//! Wire frames: [`ClientFrame`] (requests, PROTOCOL.md section 4) and
//! [`ServerFrame`] (answers and pushes, sections 2, 3 and 5).
//!
//! Field names on the wire are camelCase exactly as PROTOCOL.md spells them
//! (`containsPHI` included). Optional fields are omitted when `None`, and
//! accept `nil`/`null` as absent when decoding.
//!
//! Decoding does not go through `Deserialize` on [`ClientRequest`] or
//! [`ServerFrame`]: [`crate::codec`] reads the `type` once and decodes the
//! matching payload struct straight from the frame, with no intermediate
//! tree. Encoding uses the derived, internally tagged `Serialize`.
//!
//! `Debug` never prints an access token or a message's `text` (which may hold
//! PHI); it prints their length instead.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::compact::{CompactMessage, FrameStyle};
use crate::error::ErrorCode;
use crate::ids::{ChannelId, FileId, MessageId, SessionId, UserId};
use crate::patient::PatientRef;

/// Largest integer `ref`: 2^53 - 1, the largest integer a JavaScript number
/// holds exactly. Integer refs lie in `-MAX_REF_INT..=MAX_REF_INT`.
pub const MAX_REF_INT: i64 = (1 << 53) - 1;
/// Longest string `ref`, in bytes of UTF-8.
pub const MAX_REF_BYTES: usize = 256;
/// Longest `clientMsgId`, in bytes of UTF-8 (longer: `too_large`).
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;

/// The most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// `fetch_history` page size when `limit` is absent.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Largest `fetch_history` page; larger `limit`s are clamped to it.
pub const HISTORY_LIMIT_MAX: u32 = 100;

/// Prints a secret or PHI field as its length only.
pub(crate) struct Redacted(pub(crate) usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// `null` or absent means `false`.
fn null_is_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `null` or absent means `true` (`isTyping`).
fn null_is_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

// ---------------------------------------------------------------------------
// Ref
// ---------------------------------------------------------------------------

/// A request's `ref`, echoed on the frame that answers it: a string of at
/// most [`MAX_REF_BYTES`], or an integer of magnitude at most
/// [`MAX_REF_INT`] (below 2^53, so JavaScript clients keep it exact).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// An integer ref.
    Int(i64),
    /// A string ref.
    Str(String),
}

impl Ref {
    /// An integer ref, if `n` is in range.
    pub fn from_i64(n: i64) -> Option<Self> {
        (-MAX_REF_INT..=MAX_REF_INT)
            .contains(&n)
            .then_some(Self::Int(n))
    }

    /// An integer ref, if `n` is in range.
    pub fn from_u64(n: u64) -> Option<Self> {
        i64::try_from(n).ok().and_then(Self::from_i64)
    }

    /// A string ref, if `s` is short enough.
    pub fn from_string(s: impl Into<String> + AsRef<str>) -> Option<Self> {
        (s.as_ref().len() <= MAX_REF_BYTES).then(|| Self::Str(s.into()))
    }
}

impl From<u32> for Ref {
    fn from(n: u32) -> Self {
        Self::Int(n.into())
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for Ref {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => s.serialize_i64(*n),
            Self::Str(v) => s.serialize_str(v),
        }
    }
}

/// The message of every invalid `ref`.
pub(crate) const INVALID_REF: &str =
    "`ref` must be a string of at most 256 bytes or an integer below 2^53";

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl Visitor<'_> for RefVisitor {
            type Value = Ref;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INVALID_REF)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Ref, E> {
                Ref::from_u64(n).ok_or_else(|| E::custom(INVALID_REF))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Ref, E> {
                Ref::from_i64(n).ok_or_else(|| E::custom(INVALID_REF))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Ref, E> {
                Ref::from_string(s).ok_or_else(|| E::custom(INVALID_REF))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Ref, E> {
                Ref::from_string(s).ok_or_else(|| E::custom(INVALID_REF))
            }
        }

        d.deserialize_any(RefVisitor)
    }
}

// ---------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------

/// One client frame: the optional `ref` and the typed request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientFrame {
    /// Echoed on the answer (`ack`, `error`, `history`,
    /// `authentication_response`, `pong`).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// What the client asks for.
    #[serde(flatten)]
    pub request: ClientRequest,
}

impl ClientFrame {
    /// A frame without a `ref`.
    pub fn new(request: ClientRequest) -> Self {
        Self {
            reference: None,
            request,
        }
    }

    /// The same frame with `ref` set.
    pub fn with_ref(mut self, reference: impl Into<Ref>) -> Self {
        self.reference = Some(reference.into());
        self
    }
}

impl From<ClientRequest> for ClientFrame {
    fn from(request: ClientRequest) -> Self {
        Self::new(request)
    }
}

/// Every client request (PROTOCOL.md sections 3 and 4), keyed by `type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest {
    /// `authenticate`: the first frame of every connection.
    Authenticate(Authenticate),
    /// `join_channel`: answered by `ack` with `channel`, then the replay.
    JoinChannel(JoinChannel),
    /// `leave_channel`: answered by `ack`.
    LeaveChannel(LeaveChannel),
    /// `send_message`: answered by `ack` with the send result.
    SendMessage(SendMessage),
    /// `edit_message`: answered by `ack`.
    EditMessage(EditMessage),
    /// `delete_message`: answered by `ack`.
    DeleteMessage(DeleteMessage),
    /// `typing_indicator`: no answer on success.
    TypingIndicator(TypingIndicator),
    /// `read_receipt`: answered by `ack`.
    ReadReceipt(ReadReceipt),
    /// `fetch_history`: answered by `history`.
    FetchHistory(FetchHistory),
    /// `add_reaction`: answered by `ack`.
    AddReaction(Reaction),
    /// `remove_reaction`: answered by `ack`.
    RemoveReaction(Reaction),
    /// `open_direct`: answered by `ack` with `channel`.
    OpenDirect(OpenDirect),
    /// `set_status`: answered by `ack`.
    SetStatus(SetStatus),
    /// `flag_message`: answered by `ack` (a moderator's flag).
    FlagMessage(FlagMessage),
    /// `unflag_message`: answered by `ack`.
    UnflagMessage(UnflagMessage),
    /// `ping`: answered by `pong`.
    Ping,
    /// `heartbeat`: same as `ping`.
    Heartbeat,
}

impl ClientRequest {
    /// The wire `type`, e.g. `"send_message"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Authenticate(_) => "authenticate",
            Self::JoinChannel(_) => "join_channel",
            Self::LeaveChannel(_) => "leave_channel",
            Self::SendMessage(_) => "send_message",
            Self::EditMessage(_) => "edit_message",
            Self::DeleteMessage(_) => "delete_message",
            Self::TypingIndicator(_) => "typing_indicator",
            Self::ReadReceipt(_) => "read_receipt",
            Self::FetchHistory(_) => "fetch_history",
            Self::AddReaction(_) => "add_reaction",
            Self::RemoveReaction(_) => "remove_reaction",
            Self::OpenDirect(_) => "open_direct",
            Self::SetStatus(_) => "set_status",
            Self::FlagMessage(_) => "flag_message",
            Self::UnflagMessage(_) => "unflag_message",
            Self::Ping => "ping",
            Self::Heartbeat => "heartbeat",
        }
    }

    /// Whether a successful request is answered. Only `typing_indicator`
    /// is not (its errors still are).
    pub fn expects_answer(&self) -> bool {
        !matches!(self, Self::TypingIndicator(_))
    }
}

/// `authenticate {token}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticate {
    /// The JWT from `/api/auth/login`.
    pub token: String,
    /// The form of `new_message` pushes the client wants (a Courier
    /// extension; see [`crate::compact`]).
    #[serde(default, skip_serializing_if = "FrameStyle::is_standard")]
    pub frames: FrameStyle,
}

impl Authenticate {
    /// An `authenticate` with `token`, asking for the standard frames.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            frames: FrameStyle::Standard,
        }
    }
}

impl fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("token", &Redacted(self.token.len()))
            .field("frames", &self.frames)
            .finish()
    }
}

/// `join_channel {channelId, sinceSeq?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinChannel {
    /// The channel to join.
    pub channel_id: ChannelId,
    /// Replay every message with a greater `seq` before live ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seq: Option<u64>,
}

/// `leave_channel {channelId}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveChannel {
    /// The channel to leave.
    pub channel_id: ChannelId,
}

/// `send_message {channelId, text, clientMsgId?, containsPHI?, replyTo?, ttlSeconds?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    /// The channel to post in.
    pub channel_id: ChannelId,
    /// The message text (size-checked by the server: `too_large`).
    pub text: String,
    /// Makes the send idempotent (at most [`MAX_CLIENT_MSG_ID_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The client's hint that the text holds PHI.
    #[serde(
        rename = "containsPHI",
        default,
        deserialize_with = "null_is_false",
        skip_serializing_if = "is_false"
    )]
    pub contains_phi: bool,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Delete the message for everyone this many seconds after it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
    /// Files the sender uploaded to this channel
    /// (`POST /api/channels/{id}/attachments`), at most [`MAX_ATTACHMENTS`];
    /// with any, `text` may be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<FileId>,
    /// The patient the message concerns (docs/protocol.md, "Patient
    /// link"); validated on decode (`invalid_frame`, never echoed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<PatientRef>,
}

impl SendMessage {
    /// A plain send: no idempotency key, hint, reply, expiry or attachment.
    pub fn text(channel_id: ChannelId, text: impl Into<String>) -> Self {
        Self {
            channel_id,
            text: text.into(),
            client_msg_id: None,
            contains_phi: false,
            reply_to: None,
            ttl_seconds: None,
            attachments: Vec::new(),
            patient_ref: None,
        }
    }
}

impl fmt::Debug for SendMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendMessage")
            .field("channel_id", &self.channel_id)
            .field("text", &Redacted(self.text.len()))
            .field("client_msg_id", &self.client_msg_id)
            .field("contains_phi", &self.contains_phi)
            .field("reply_to", &self.reply_to)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("attachments", &self.attachments)
            .field("patient_ref", &self.patient_ref)
            .finish()
    }
}

/// `edit_message {messageId, text}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMessage {
    /// The message to edit (the sender's own).
    pub message_id: MessageId,
    /// The new text.
    pub text: String,
}

impl fmt::Debug for EditMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EditMessage")
            .field("message_id", &self.message_id)
            .field("text", &Redacted(self.text.len()))
            .finish()
    }
}

/// `delete_message {messageId}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMessage {
    /// The message to delete.
    pub message_id: MessageId,
}

/// Longest flag `reason`, in bytes of UTF-8.
pub const MAX_FLAG_REASON_BYTES: usize = 500;

/// `flag_message {messageId, reason}`: a channel owner or moderator (or an
/// admin with `messages.moderate`, outside direct channels) flags a message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagMessage {
    /// The message to flag.
    pub message_id: MessageId,
    /// Why (1 to [`MAX_FLAG_REASON_BYTES`] bytes).
    pub reason: String,
}

impl fmt::Debug for FlagMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagMessage")
            .field("message_id", &self.message_id)
            .field("reason", &Redacted(self.reason.len()))
            .finish()
    }
}

/// `unflag_message {messageId}`: clears a message's flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnflagMessage {
    /// The message whose flag goes.
    pub message_id: MessageId,
}

/// `typing_indicator {channelId, isTyping}`; `isTyping` defaults to true.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingIndicator {
    /// The channel being typed in.
    pub channel_id: ChannelId,
    /// `false` says the user stopped typing.
    #[serde(default = "yes", deserialize_with = "null_is_true")]
    pub is_typing: bool,
}

/// `read_receipt {channelId, seq}` or `{channelId, messageId}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReadReceiptWire", into = "ReadReceiptWire")]
pub struct ReadReceipt {
    /// The channel read.
    pub channel_id: ChannelId,
    /// How far.
    pub up_to: ReadPosition,
}

/// How far a `read_receipt` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPosition {
    /// Everything up to and including this `seq`.
    Seq(u64),
    /// Everything up to and including this message (the server looks up
    /// its `seq`).
    Message(MessageId),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadReceiptWire {
    channel_id: ChannelId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<MessageId>,
}

impl TryFrom<ReadReceiptWire> for ReadReceipt {
    type Error = &'static str;

    fn try_from(w: ReadReceiptWire) -> Result<Self, Self::Error> {
        // `seq` wins when both are present.
        let up_to = match (w.seq, w.message_id) {
            (Some(seq), _) => ReadPosition::Seq(seq),
            (None, Some(id)) => ReadPosition::Message(id),
            (None, None) => return Err("missing field `seq` (or `messageId`)"),
        };
        Ok(Self {
            channel_id: w.channel_id,
            up_to,
        })
    }
}

impl From<ReadReceipt> for ReadReceiptWire {
    fn from(r: ReadReceipt) -> Self {
        let (seq, message_id) = match r.up_to {
            ReadPosition::Seq(seq) => (Some(seq), None),
            ReadPosition::Message(id) => (None, Some(id)),
        };
        Self {
            channel_id: r.channel_id,
            seq,
            message_id,
        }
    }
}

/// `fetch_history {channelId, beforeSeq?, limit?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchHistory {
    /// The channel.
    pub channel_id: ChannelId,
    /// Page backwards from just before this seq; `None` for the newest page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_seq: Option<u64>,
    /// Page size as sent; use [`FetchHistory::effective_limit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl FetchHistory {
    /// `limit` clamped to `1..=100`, 50 when absent.
    pub fn effective_limit(&self) -> u32 {
        self.limit
            .unwrap_or(HISTORY_LIMIT_DEFAULT)
            .clamp(1, HISTORY_LIMIT_MAX)
    }
}

/// `add_reaction` / `remove_reaction {messageId, reaction}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reaction {
    /// The message reacted to.
    pub message_id: MessageId,
    /// The reaction, usually one emoji.
    pub reaction: String,
}

/// `open_direct {userId}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenDirect {
    /// The other user.
    pub user_id: UserId,
}

/// `set_status {status}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStatus {
    /// `online` or `away`.
    pub status: UserStatus,
}

/// The statuses a user may set (`offline` is the server's to say).
///
/// Decoded from its name only: rmp-serde would also take a variant's index
/// (`0` for `online`), which JSON refuses, and the two encodings must
/// accept the same frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum UserStatus {
    /// Here.
    Online,
    /// Connected but away.
    Away,
}

impl TryFrom<String> for UserStatus {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.as_str() {
            "online" => Ok(UserStatus::Online),
            "away" => Ok(UserStatus::Away),
            other => Err(format!(
                "unknown variant `{other}`, expected `online` or `away`"
            )),
        }
    }
}

/// A user's presence as pushed in `presence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one connection, status online.
    Online,
    /// At least one connection, status away.
    Away,
    /// No connection left.
    Offline,
}

impl From<UserStatus> for PresenceStatus {
    fn from(s: UserStatus) -> Self {
        match s {
            UserStatus::Online => Self::Online,
            UserStatus::Away => Self::Away,
        }
    }
}

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

/// Every server frame: answers (`ack`, `error`, `authentication_response`,
/// `pong`, `history`) and pushes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// `ack`: a request succeeded.
    Ack(Ack),
    /// `error`: a request failed, or the connection is about to close.
    Error(ErrorFrame),
    /// `authentication_response`: the answer to `authenticate`.
    AuthenticationResponse(AuthenticationResponse),
    /// `pong`: the answer to `ping` and `heartbeat`.
    Pong(Pong),
    /// `history`: the answer to `fetch_history`.
    History(History),
    /// `new_message` push.
    NewMessage(MessagePush),
    /// `m`: a `new_message` push in the compact form, to connections that
    /// asked for it at `authenticate` (see [`crate::compact`]).
    #[serde(rename = "m")]
    CompactMessage(CompactMessage),
    /// `message_updated` push.
    MessageUpdated(MessagePush),
    /// `message_deleted` push.
    MessageDeleted(MessageDeletedPush),
    /// `typing` push.
    Typing(Typing),
    /// `read_receipt` push.
    ReadReceipt(ReadReceiptPush),
    /// `reaction_updated` push.
    ReactionUpdated(ReactionUpdated),
    /// `presence` push.
    Presence(Presence),
    /// `system_event` push.
    SystemEvent(SystemEvent),
    /// `notification` push.
    Notification(Notification),
    /// `recovered` push: the replay of a `join_channel` with `sinceSeq` is
    /// complete; live pushes of the channel follow.
    Recovered(Recovered),
    /// `message_status` push: the caller's messages up to `seq` reached
    /// another member (delivered) or were read by them.
    MessageStatus(MessageStatus),
    /// `message_flagged` push: a message was flagged or unflagged; only to
    /// the channel's members who may see flags.
    MessageFlagged(MessageFlagged),
}

impl ServerFrame {
    /// The wire `type`, e.g. `"new_message"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Ack(_) => "ack",
            Self::Error(_) => "error",
            Self::AuthenticationResponse(_) => "authentication_response",
            Self::Pong(_) => "pong",
            Self::History(_) => "history",
            Self::NewMessage(_) => "new_message",
            Self::CompactMessage(_) => "m",
            Self::MessageUpdated(_) => "message_updated",
            Self::MessageDeleted(_) => "message_deleted",
            Self::Typing(_) => "typing",
            Self::ReadReceipt(_) => "read_receipt",
            Self::ReactionUpdated(_) => "reaction_updated",
            Self::Presence(_) => "presence",
            Self::SystemEvent(_) => "system_event",
            Self::Notification(_) => "notification",
            Self::Recovered(_) => "recovered",
            Self::MessageStatus(_) => "message_status",
            Self::MessageFlagged(_) => "message_flagged",
        }
    }

    /// The echoed `ref`, on answers that carry one.
    pub fn reference(&self) -> Option<&Ref> {
        match self {
            Self::Ack(a) => a.reference.as_ref(),
            Self::Error(e) => e.reference.as_ref(),
            Self::AuthenticationResponse(a) => a.reference.as_ref(),
            Self::Pong(p) => p.reference.as_ref(),
            Self::History(h) => h.reference.as_ref(),
            _ => None,
        }
    }

    /// An `ack` with no result fields.
    pub fn ack(reference: Option<Ref>) -> Self {
        Self::Ack(Ack {
            reference,
            result: AckResult::Done,
        })
    }

    /// An `error` frame.
    pub fn error(reference: Option<Ref>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorFrame {
            reference,
            code,
            message: message.into(),
            retry_after_ms: None,
        })
    }

    /// A `new_message` push.
    pub fn new_message(data: MessageView) -> Self {
        Self::NewMessage(MessagePush { data })
    }

    /// A `system_event` `shutdown` push.
    pub fn shutdown() -> Self {
        Self::SystemEvent(SystemEvent {
            event_type: SystemEvent::SHUTDOWN.to_owned(),
            data: serde_json::Value::Null,
        })
    }
}

/// `ack`: `ref` plus the result fields of the request it answers.
///
/// On the wire the result fields sit beside `ref`:
/// `{"type":"ack","ref":1,"messageId":…,"seq":…,"timestamp":…,"duplicate":false}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AckIn")]
pub struct Ack {
    /// The request's `ref`.
    pub reference: Option<Ref>,
    /// What the request produced.
    pub result: AckResult,
}

/// The result fields of an `ack`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckResult {
    /// No result fields (leave, edit, delete, read_receipt, reactions,
    /// set_status, flag_message, unflag_message).
    Done,
    /// `send_message`: `{messageId, seq, timestamp, duplicate}`.
    Sent(SendResult),
    /// `join_channel` and `open_direct`: `{channel}`.
    Channel(ChannelView),
}

/// The result of `send_message`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResult {
    /// The stored message's id.
    pub message_id: MessageId,
    /// Its seq in the channel.
    pub seq: u64,
    /// When it was accepted (ms since the epoch).
    pub timestamp: i64,
    /// `true` when `clientMsgId` matched an earlier send: nothing new was
    /// delivered and these are the original's `messageId` and `seq`.
    pub duplicate: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AckOut<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a ChannelView>,
}

impl Serialize for Ack {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = AckOut {
            reference: self.reference.as_ref(),
            message_id: None,
            seq: None,
            timestamp: None,
            duplicate: None,
            channel: None,
        };
        match &self.result {
            AckResult::Done => {}
            AckResult::Sent(r) => {
                out.message_id = Some(r.message_id);
                out.seq = Some(r.seq);
                out.timestamp = Some(r.timestamp);
                out.duplicate = Some(r.duplicate);
            }
            AckResult::Channel(c) => out.channel = Some(c),
        }
        out.serialize(s)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckIn {
    #[serde(rename = "ref", default)]
    reference: Option<Ref>,
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    duplicate: Option<bool>,
    #[serde(default)]
    channel: Option<ChannelView>,
}

impl TryFrom<AckIn> for Ack {
    type Error = &'static str;

    fn try_from(a: AckIn) -> Result<Self, Self::Error> {
        let result = match (a.message_id, a.channel) {
            (None, None) => AckResult::Done,
            (None, Some(channel)) => AckResult::Channel(channel),
            (Some(message_id), None) => AckResult::Sent(SendResult {
                message_id,
                seq: a.seq.ok_or("ack with `messageId` needs `seq`")?,
                timestamp: a
                    .timestamp
                    .ok_or("ack with `messageId` needs `timestamp`")?,
                duplicate: a.duplicate.unwrap_or(false),
            }),
            (Some(_), Some(_)) => return Err("ack has both `messageId` and `channel`"),
        };
        Ok(Self {
            reference: a.reference,
            result,
        })
    }
}

/// `error {ref?, code, message, retryAfterMs?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    /// The failed request's `ref`, when it had a readable one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// With `rate_limited`: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `{code, message}`: the `error` of a failed `authentication_response`
/// (and the shape of REST error bodies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// `authentication_response`.
///
/// Success: `{"success":true,"user":{…},"sessionId","serverTime","heartbeatMs"}`;
/// failure: `{"success":false,"error":{"code","message"}}`, then close 4001.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthIn")]
pub struct AuthenticationResponse {
    /// The `authenticate` request's `ref`.
    pub reference: Option<Ref>,
    /// Who the connection now acts for, or why not.
    pub result: Result<AuthSuccess, ErrorBody>,
}

/// A successful authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSuccess {
    /// The authenticated user.
    pub user: AuthUser,
    /// The login session the token belongs to.
    pub session_id: SessionId,
    /// The server's clock (ms since the epoch).
    pub server_time: i64,
    /// How often the client should send `ping` (ms).
    pub heartbeat_ms: u64,
    /// The form the connection's `new_message` pushes take.
    pub frames: FrameStyle,
}

/// The `user` of an `authentication_response`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthUser {
    /// The user's id.
    pub id: UserId,
    /// The login name.
    pub username: String,
    /// `super_admin`, `admin`, `moderator` or `user`.
    pub role: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthOut<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Ref>,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a AuthUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<FrameStyle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorBody>,
}

impl Serialize for AuthenticationResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reference = self.reference.as_ref();
        let out = match &self.result {
            Ok(ok) => AuthOut {
                reference,
                success: true,
                user: Some(&ok.user),
                session_id: Some(ok.session_id),
                server_time: Some(ok.server_time),
                heartbeat_ms: Some(ok.heartbeat_ms),
                frames: (!ok.frames.is_standard()).then_some(ok.frames),
                error: None,
            },
            Err(e) => AuthOut {
                reference,
                success: false,
                user: None,
                session_id: None,
                server_time: None,
                heartbeat_ms: None,
                frames: None,
                error: Some(e),
            },
        };
        out.serialize(s)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthIn {
    #[serde(rename = "ref", default)]
    reference: Option<Ref>,
    success: bool,
    #[serde(default)]
    user: Option<AuthUser>,
    #[serde(default)]
    session_id: Option<SessionId>,
    #[serde(default)]
    server_time: Option<i64>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    frames: FrameStyle,
    #[serde(default)]
    error: Option<ErrorBody>,
}

impl TryFrom<AuthIn> for AuthenticationResponse {
    type Error = &'static str;

    fn try_from(a: AuthIn) -> Result<Self, Self::Error> {
        let result = if a.success {
            Ok(AuthSuccess {
                user: a.user.ok_or("missing field `user`")?,
                session_id: a.session_id.ok_or("missing field `sessionId`")?,
                server_time: a.server_time.ok_or("missing field `serverTime`")?,
                heartbeat_ms: a.heartbeat_ms.ok_or("missing field `heartbeatMs`")?,
                frames: a.frames,
            })
        } else {
            Err(a.error.ok_or("missing field `error`")?)
        };
        Ok(Self {
            reference: a.reference,
            result,
        })
    }
}

/// `pong {serverTime}`. Courier also echoes the `ping`'s `ref`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pong {
    /// The `ping`'s `ref` (a Courier extension).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The server's clock (ms since the epoch).
    pub server_time: i64,
}

/// `history {ref, channelId, messages, hasMore}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The `fetch_history` request's `ref`.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The channel.
    pub channel_id: ChannelId,
    /// One page, ascending `seq`.
    pub messages: Vec<MessageView>,
    /// Whether older messages exist before this page.
    pub has_more: bool,
}

/// A message as clients see it (`data` of `new_message`, `message_updated`,
/// items of `history`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Message))]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// The message's id.
    pub id: MessageId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// Its seq in the channel.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The sender's username.
    pub sender: String,
    /// The (decrypted) text.
    pub text: String,
    /// When it was accepted (ms since the epoch).
    pub timestamp: i64,
    /// Flagged as PHI by the sender or by the server's detector.
    #[serde(rename = "containsPHI", default, deserialize_with = "null_is_false")]
    pub contains_phi: bool,
    /// The message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When it was last edited (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// When it expires (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Whether a moderator flagged it: present only for a recipient who may
    /// see flags (the channel's owners and moderators, admins with
    /// `messages.moderate` outside direct channels), absent for everyone
    /// else and in `new_message` and `message_updated` pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged: Option<bool>,
    /// The flag's reason, while `flagged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_reason: Option<String>,
    /// Who flagged it, while `flagged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_by: Option<UserId>,
    /// When it was flagged (ms since the epoch), while `flagged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_at: Option<i64>,
    /// What the message is: absent for `text`; `image` or `file` when it
    /// carries attachments.
    #[serde(default, skip_serializing_if = "MessageKind::is_text")]
    pub kind: MessageKind,
    /// Its files, in the order they were sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentView>,
    /// The patient the message itself concerns (the channel's own
    /// reference is on the channel), for those who may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<PatientRef>,
    /// The channel's members its text names as `@username`, in order of
    /// first appearance (names of non-members are not mentions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Mention>,
}

/// A member named by `@username` in a message's text (`mentions` of a
/// message): `{userId, username}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Mention {
    /// The member named.
    pub user_id: UserId,
    /// Their username, as written after the `@`.
    pub username: String,
}

/// The `kind` of a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Text only (the default, not written on the wire).
    #[default]
    Text,
    /// Every attachment is an image.
    Image,
    /// Carries attachments, not all of them images.
    File,
    /// Written by the server (calls, notices), not by a user.
    System,
}

impl MessageKind {
    /// Whether it is `text`, which the wire leaves out.
    pub fn is_text(&self) -> bool {
        *self == MessageKind::Text
    }

    /// The spelling on the wire and in the store.
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::System => "system",
        }
    }

    /// The kind of a message carrying attachments of these types.
    pub fn of_attachments<'a>(mut mimes: impl Iterator<Item = &'a str>) -> MessageKind {
        match mimes.next() {
            None => MessageKind::Text,
            Some(first)
                if first.starts_with("image/") && mimes.all(|m| m.starts_with("image/")) =>
            {
                MessageKind::Image
            }
            Some(_) => MessageKind::File,
        }
    }
}

impl std::str::FromStr for MessageKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "text" => Ok(MessageKind::Text),
            "image" => Ok(MessageKind::Image),
            "file" => Ok(MessageKind::File),
            "system" => Ok(MessageKind::System),
            _ => Err(()),
        }
    }
}

/// One attachment of a message: `{id, name, type, size}`. The content is
/// fetched over REST (`GET /api/files/{id}/content`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Attachment))]
pub struct AttachmentView {
    /// The file's id.
    pub id: FileId,
    /// The uploader's file name, sanitized (metadata only).
    pub name: String,
    /// The MIME type sniffed from the content.
    #[serde(rename = "type")]
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
}

impl fmt::Debug for AttachmentView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentView")
            .field("id", &self.id)
            .field("name", &Redacted(self.name.len()))
            .field("mime", &self.mime)
            .field("size", &self.size)
            .finish()
    }
}

impl fmt::Debug for MessageView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView")
            .field("id", &self.id)
            .field("channel_id", &self.channel_id)
            .field("seq", &self.seq)
            .field("sender_id", &self.sender_id)
            .field("sender", &self.sender)
            .field("text", &Redacted(self.text.len()))
            .field("timestamp", &self.timestamp)
            .field("contains_phi", &self.contains_phi)
            .field("reply_to", &self.reply_to)
            .field("edited_at", &self.edited_at)
            .field("expires_at", &self.expires_at)
            .field("flagged", &self.flagged)
            .field(
                "flag_reason",
                &self.flag_reason.as_ref().map(|r| Redacted(r.len())),
            )
            .field("flagged_by", &self.flagged_by)
            .field("flagged_at", &self.flagged_at)
            .field("kind", &self.kind)
            .field("attachments", &self.attachments)
            .field("patient_ref", &self.patient_ref)
            .field("mentions", &self.mentions)
            .finish()
    }
}

/// The `channel` of a `join_channel` or `open_direct` `ack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    /// The channel's id.
    pub id: ChannelId,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ChannelKindWire,
    /// The newest accepted seq (0 when empty).
    pub last_seq: u64,
    /// The caller's read position (0 when nothing read).
    pub last_read_seq: u64,
    /// Messages with seq above `last_read_seq`, deleted ones included.
    pub unread: u64,
    /// `true` when `sinceSeq` was given and every missed message is being
    /// replayed; `false` otherwise (page with `fetch_history`).
    pub recovered: bool,
    /// Users with a connection joined to the channel.
    pub online: Vec<UserId>,
    /// The channel is archived: its history is readable, nothing new is
    /// posted (present only when `true`).
    #[serde(
        default,
        deserialize_with = "null_is_false",
        skip_serializing_if = "is_false"
    )]
    pub archived: bool,
    /// The patient the channel concerns (docs/protocol.md, "Patient
    /// link"), shown to those who may read the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<PatientRef>,
}

/// A channel's kind on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKindWire {
    /// Any authenticated user may join; joining makes them a member.
    Public,
    /// Members only.
    Private,
    /// Two users.
    Direct,
    /// Members read; only owners and moderators post.
    Broadcast,
}

/// `{data: message}` (`new_message`, `message_updated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePush {
    /// The message.
    pub data: MessageView,
}

/// `{data: {messageId, channelId, seq}}` (`message_deleted`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeletedPush {
    /// Which message.
    pub data: MessageDeleted,
}

/// The `data` of `message_deleted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    /// The deleted message.
    pub message_id: MessageId,
    /// Its channel.
    pub channel_id: ChannelId,
    /// Its seq.
    pub seq: u64,
}

/// `message_flagged {channelId, messageId, seq, flagged, flagReason?,
/// flaggedBy?, flaggedAt?}`: the flag's details are present while
/// `flagged`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageFlagged {
    /// The channel.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// Its seq.
    pub seq: u64,
    /// Flagged now (`false`: the flag was cleared).
    pub flagged: bool,
    /// Why, while flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_reason: Option<String>,
    /// Who flagged it, while flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_by: Option<UserId>,
    /// When (ms since the epoch), while flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_at: Option<i64>,
}

impl fmt::Debug for MessageFlagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageFlagged")
            .field("channel_id", &self.channel_id)
            .field("message_id", &self.message_id)
            .field("seq", &self.seq)
            .field("flagged", &self.flagged)
            .field(
                "flag_reason",
                &self.flag_reason.as_ref().map(|r| Redacted(r.len())),
            )
            .field("flagged_by", &self.flagged_by)
            .field("flagged_at", &self.flagged_at)
            .finish()
    }
}

/// `typing {channelId, userId, isTyping}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    /// The channel.
    pub channel_id: ChannelId,
    /// Who types.
    pub user_id: UserId,
    /// Whether they still do (expires after 6 s without renewal).
    pub is_typing: bool,
}

/// `read_receipt {channelId, userId, seq}` (the push).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadReceiptPush {
    /// The channel.
    pub channel_id: ChannelId,
    /// Who read.
    pub user_id: UserId,
    /// Up to which seq.
    pub seq: u64,
}

/// `reaction_updated {channelId, messageId, reactions}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionUpdated {
    /// The channel.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// Every reaction now on the message, with its count.
    pub reactions: BTreeMap<String, u64>,
}

/// `presence {userId, status, lastSeen}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    /// Whose presence changed.
    pub user_id: UserId,
    /// The new status.
    pub status: PresenceStatus,
    /// When the user was last active (ms since the epoch).
    pub last_seen: i64,
}

/// `system_event {eventType, data}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemEvent {
    /// What happened, e.g. [`SystemEvent::SHUTDOWN`].
    pub event_type: String,
    /// Details; omitted when `null`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl SystemEvent {
    /// The server is shutting down; close 1001 follows.
    pub const SHUTDOWN: &'static str = "shutdown";
    /// A channel the client joined was deleted (`data: {channelId}`).
    pub const CHANNEL_DELETED: &'static str = "channel_deleted";
    /// The user was removed from a channel (`data: {channelId, userId}`).
    pub const MEMBER_REMOVED: &'static str = "member_removed";
}

/// `recovered {channelId, lastSeq}`: every message of the channel up to
/// `lastSeq` that the client missed has been replayed; what follows is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    /// The channel.
    pub channel_id: ChannelId,
    /// The replay went up to this seq; live messages have higher ones.
    pub last_seq: u64,
}

/// How far a member got with the messages of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued to at least one of the member's connections.
    Delivered,
    /// Marked read by the member (`read_receipt`).
    Read,
}

/// `message_status {channelId, userId, seq, status}`: to a sender, every
/// message of the channel up to `seq` was delivered to, or read by,
/// `userId`, the other member of a direct channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    /// The channel.
    pub channel_id: ChannelId,
    /// The member the messages reached.
    pub user_id: UserId,
    /// Up to and including this seq.
    pub seq: u64,
    /// Delivered or read.
    pub status: DeliveryStatus,
}

/// `notification {data}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Free-form content.
    pub data: serde_json::Value,
}
