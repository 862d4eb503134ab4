//! # What travels on NATS between nodes
//!
//! Every payload is MessagePack with named fields (`rmp_serde::to_vec_named`),
//! so that a node of a newer version can add a field without breaking an
//! older one. The subjects:
//!
//! | subject | payload | from → to |
//! |---|---|---|
//! | `courier.ch.<channel>` | [`ChannelEvent`] | any node with the channel's actor → every node with one |
//! | `courier.fwd.<node>` | [`Forward`] (reply subject set) | a node without the channel's lease → its owner |
//! | `courier.ans.<node>.<token>` | [`Answer`] | the owner → the forwarding node |
//! | `courier.node` | [`NodeEvent`] | every node → every node |

use bytes::Bytes;
use courier_protocol::frames::{AttachmentView, MessageFlagged, MessageView};
use courier_protocol::{ChannelId, ErrorCode, MessageId, SessionId, UserId};
use serde::{Deserialize, Serialize};

use crate::durable::store::{ChannelRole, Member, Role};

/// The subject of a channel's events.
pub fn channel_subject(channel: ChannelId) -> String {
    format!("courier.ch.{channel}")
}

/// The subject a node takes forwarded requests on.
pub fn forward_subject(node: &str) -> String {
    format!("courier.fwd.{node}")
}

/// The prefix of the subjects a node takes answers on.
pub fn answer_prefix(node: &str) -> String {
    format!("courier.ans.{node}")
}

/// The subject of node events (presence, revocations, hellos).
pub const NODE_SUBJECT: &str = "courier.node";

/// Something that happened in a channel, for the other nodes' connections.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChannelEvent {
    /// A push, already encoded as standard MessagePack: the receiving node
    /// decodes it once and fans it out in every push form its connections use.
    Push(Push),
    /// A change the receiving node applies to its own copy of the channel.
    Notice { origin: String, notice: Notice },
}

/// A push as the origin fanned it out.
#[derive(Debug, Serialize, Deserialize)]
pub struct Push {
    pub origin: String,
    /// When the origin published it (µs since the Unix epoch): the cross-node
    /// latency histogram.
    pub sent_us: u64,
    /// Everyone but this user's connections.
    pub except: Option<UserId>,
    /// Only this user's live connections.
    pub to_user: Option<UserId>,
    /// The `seq` of a `new_message` (0 for other pushes): followers order by it.
    pub seq: u64,
    pub frame: Bytes,
}

/// Channel changes made by REST or retention on one node, and who is
/// joined to the channel there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Notice {
    MemberChanged(WireMember),
    MemberRemoved(UserId),
    Deleted,
    Expired {
        message_id: MessageId,
        seq: u64,
    },
    /// A message was flagged or unflagged: every node pushes it to its own
    /// joined users who may see flags.
    Flagged(MessageFlagged),
    /// The channel was archived (`Some`) or unarchived.
    Archived {
        archived_at: Option<i64>,
    },
    /// `user`'s first connection on the origin node joined the channel.
    Joined(UserId),
    /// `user`'s last connection on the origin node left it.
    Left(UserId),
    /// The origin node's actor started: who is joined on yours?
    Sync,
    /// Everyone joined on the origin node (the answer to `Sync`).
    Present(Vec<UserId>),
}

/// A request forwarded to the owner of its channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forward {
    pub channel: ChannelId,
    /// Wall-clock deadline (ms since the epoch): an owner that takes it later
    /// drops it, since the forwarding node has answered `unavailable` by then.
    pub deadline_ms: i64,
    pub op: ForwardOp,
}

/// The channel request itself; the owner handles it exactly as its own.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardOp {
    Publish {
        sender: WireSender,
        text: String,
        client_msg_id: Option<String>,
        contains_phi: bool,
        phi_found: Vec<String>,
        reply_to: Option<MessageId>,
        ttl_seconds: Option<u64>,
        /// The message's files, checked by the forwarding node (absent
        /// from older nodes).
        #[serde(default)]
        attachments: Vec<AttachmentView>,
        /// The patient the message concerns (absent from older nodes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patient_ref: Option<courier_protocol::PatientRef>,
        /// The members the text mentions, resolved by the forwarding node
        /// (absent from older nodes).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<courier_protocol::frames::Mention>,
    },
    Edit {
        editor: UserId,
        original: MessageView,
        text: String,
        /// As for `Publish` (absent from older nodes).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<courier_protocol::frames::Mention>,
    },
    Delete {
        deleter: UserId,
        message_id: MessageId,
        seq: u64,
        /// A moderator's reason (absent from older nodes).
        #[serde(default)]
        reason: Option<String>,
    },
    MarkRead {
        user_id: UserId,
        seq: u64,
    },
    React {
        message_id: MessageId,
        user_id: UserId,
        reaction: String,
        add: bool,
    },
}

impl ForwardOp {
    /// The label of the forwarded-requests metric.
    pub fn name(&self) -> &'static str {
        match self {
            ForwardOp::Publish { .. } => "send_message",
            ForwardOp::Edit { .. } => "edit_message",
            ForwardOp::Delete { .. } => "delete_message",
            ForwardOp::MarkRead { .. } => "mark_read",
            ForwardOp::React { .. } => "reaction",
        }
    }
}

/// The owner's answer, relayed to the client unchanged.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Sent {
        /// Boxed: a message with attachments is far larger than the rest.
        message: Box<MessageView>,
        duplicate: bool,
    },
    Done,
    Failed {
        code: ErrorCode,
        message: String,
    },
    /// The node does not hold the channel's lease (any more): ask again.
    NotOwner,
}

/// Who sends, as the forwarding node authenticated them.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireSender {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub member: Option<WireMember>,
    pub ip: Option<String>,
}

/// A membership row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireMember {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub role: ChannelRole,
    pub joined_at: i64,
    pub last_read_seq: u64,
    pub last_delivered_seq: u64,
}

impl From<&Member> for WireMember {
    fn from(m: &Member) -> Self {
        WireMember {
            channel_id: m.channel_id,
            user_id: m.user_id,
            role: m.role,
            joined_at: m.joined_at,
            last_read_seq: m.last_read_seq,
            last_delivered_seq: m.last_delivered_seq,
        }
    }
}

impl From<WireMember> for Member {
    fn from(m: WireMember) -> Self {
        Member {
            channel_id: m.channel_id,
            user_id: m.user_id,
            role: m.role,
            joined_at: m.joined_at,
            last_read_seq: m.last_read_seq,
            last_delivered_seq: m.last_delivered_seq,
        }
    }
}

/// Node-wide events.
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeEvent {
    /// `user`'s first connection on `node` opened.
    Online { node: String, user: UserId },
    /// `user`'s last connection on `node` closed.
    Offline { node: String, user: UserId },
    /// A node started: the others say who is online on them.
    Hello { node: String },
    /// Close these sessions of `user` (all when `None`) with 4003.
    Revoke {
        origin: String,
        user: UserId,
        sessions: Option<Vec<SessionId>>,
    },
}

/// Encodes a payload.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain types into a Vec cannot fail.
    Bytes::from(rmp_serde::to_vec_named(value).unwrap_or_default())
}

/// Decodes a payload.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_and_its_answer_survive_the_wire() {
        let user = UserId::new();
        let forward = Forward {
            channel: ChannelId::new(),
            deadline_ms: 42,
            op: ForwardOp::Publish {
                sender: WireSender {
                    user_id: user,
                    username: "ann".into(),
                    role: Role::User,
                    member: None,
                    ip: Some("127.0.0.1".into()),
                },
                text: "hi".into(),
                client_msg_id: Some("c1".into()),
                contains_phi: false,
                phi_found: vec![],
                reply_to: None,
                ttl_seconds: Some(5),
                attachments: vec![],
                patient_ref: None,
                mentions: vec![],
            },
        };
        let back: Forward = decode(&encode(&forward)).unwrap();
        assert_eq!(back.channel, forward.channel);
        let ForwardOp::Publish {
            sender,
            client_msg_id,
            ttl_seconds,
            ..
        } = back.op
        else {
            panic!("not a publish");
        };
        assert_eq!(sender.user_id, user);
        assert_eq!(client_msg_id.as_deref(), Some("c1"));
        assert_eq!(ttl_seconds, Some(5));
        let answer: Answer = decode(&encode(&Answer::Failed {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        }))
        .unwrap();
        assert!(matches!(
            answer,
            Answer::Failed {
                code: ErrorCode::Forbidden,
                ..
            }
        ));
    }
}
