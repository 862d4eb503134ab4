//! Rows of the store, as the rest of Courier sees them. Timestamps are
//! integer milliseconds since the Unix epoch; `seq` is per channel, from 1.

use std::collections::BTreeMap;

use courier_protocol::frames::MessageKind;
use courier_protocol::{ChannelId, FileId, MessageId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// A global role. Permissions per role live in `role_permissions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including managing admins.
    SuperAdmin,
    /// Manages users and channels, reads the audit log.
    Admin,
    /// Moderates messages.
    Moderator,
    /// A clinician, patient or service account.
    User,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::SuperAdmin, Role::Admin, Role::Moderator, Role::User];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::Admin => "admin",
            Role::Moderator => "moderator",
            Role::User => "user",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A user account. `password_hash` is a PHC string (argon2id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
    pub updated_at: i64,
    /// Consecutive failed logins since the last success.
    pub failed_logins: u32,
    /// While in the future, logins are refused: an admin's lock is
    /// `i64::MAX` (until unlocked).
    pub locked_until: Option<i64>,
    /// Set while the account is disabled: no login, no session.
    pub disabled_at: Option<i64>,
    /// The password is a temporary one an admin set: it must be changed
    /// before anything else.
    pub must_change_password: bool,
    /// The last successful login (REST or the admin console).
    pub last_login_at: Option<i64>,
    /// When the password was last set (what `password_max_age_days`
    /// measures): every write of `password_hash` sets it to the write's
    /// `updated_at`.
    pub password_changed_at: i64,
}

/// What `Store::create_user` needs.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: UserId,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
}

/// A partial update of a user; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub email: Option<Option<String>>,
    pub role: Option<Role>,
    /// A new password; also sets `password_changed_at` to `updated_at`.
    pub password_hash: Option<String>,
    /// `Some(None)` unlocks.
    pub locked_until: Option<Option<i64>>,
    /// `Some(None)` enables.
    pub disabled_at: Option<Option<i64>>,
    pub must_change_password: Option<bool>,
    pub last_login_at: Option<i64>,
    pub updated_at: i64,
}

/// What a session is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// A refresh-token family of the API (login).
    #[default]
    Api,
    /// An admin console session (a cookie); never rotated as a refresh
    /// token, never behind an access token.
    Console,
}

impl SessionKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Api => "api",
            SessionKind::Console => "console",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<SessionKind> {
        [Self::Api, Self::Console]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A login session: one refresh-token family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    /// SHA-256 (hex) of the current refresh token; the token itself is never stored.
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub valid: bool,
    pub kind: SessionKind,
    /// The last request of a console session (its idle timeout).
    pub last_seen_at: Option<i64>,
}

/// What presenting a refresh token did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: the session now carries the new hash.
    Rotated(Session),
    /// The token was an old one of a live family: the session is now revoked.
    Reused {
        session_id: SessionId,
        user_id: UserId,
    },
    /// No session knows this token, or it is expired or revoked.
    Unknown,
}

/// The kind of a channel (PROTOCOL.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Public,
    Private,
    Direct,
    /// Only owners and moderators post.
    Broadcast,
}

impl ChannelKind {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::Direct => "direct",
            ChannelKind::Broadcast => "broadcast",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<ChannelKind> {
        [Self::Public, Self::Private, Self::Direct, Self::Broadcast]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    pub id: ChannelId,
    pub name: String,
    pub description: Option<String>,
    pub kind: ChannelKind,
    pub created_by: UserId,
    pub created_at: i64,
    /// For `direct` channels: the two user ids, sorted and joined by `:`.
    /// Unique, so a pair of users has one direct channel.
    pub direct_key: Option<String>,
    /// Set while archived: no new messages, history kept.
    pub archived_at: Option<i64>,
    /// The channel's `patientRef`, sealed
    /// ([`MessageCipher::seal_patient_ref`](crate::crypto::MessageCipher::seal_patient_ref)
    /// with `RefOwner::Channel`); never in clear.
    pub patient_ref: Option<Vec<u8>>,
    /// The keyed tag of that reference, for lookups (`store::patients`).
    pub patient_tag: Option<String>,
}

/// A partial update of a channel; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    /// `Some(None)` unarchives.
    pub archived_at: Option<Option<i64>>,
    /// `Some(Some(..))` links the channel to a patient (sealed reference
    /// and tag), `Some(None)` clears the link.
    pub patient: Option<Option<super::PatientSeal>>,
}

/// A role inside one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChannelRole {
    Owner,
    Moderator,
    Member,
}

impl ChannelRole {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelRole::Owner => "owner",
            ChannelRole::Moderator => "moderator",
            ChannelRole::Member => "member",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<ChannelRole> {
        [Self::Owner, Self::Moderator, Self::Member]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One user's membership of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub role: ChannelRole,
    pub joined_at: i64,
    pub last_read_seq: u64,
    pub last_delivered_seq: u64,
}

/// A message as stored: encrypted. `ciphertext`/`nonce`/`key_version` are
/// AES-256-GCM output; plaintext never reaches the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub seq: u64,
    pub sender_id: UserId,
    pub client_msg_id: Option<String>,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_version: u32,
    pub contains_phi: bool,
    pub reply_to: Option<MessageId>,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub deleted_at: Option<i64>,
    /// `text`, or `image`/`file` with attachments.
    pub kind: MessageKind,
    /// The files it carries, in order (linked in `message_files` by the
    /// insert; reads fill [`MessageRow::attachments`] instead).
    pub attachments: Vec<FileId>,
    /// The message's own `patientRef`, sealed with `RefOwner::Message`;
    /// `None` for most messages (they cost nothing more).
    pub patient_ref: Option<Vec<u8>>,
    /// The keyed tag of that reference, for lookups.
    pub patient_tag: Option<String>,
    /// Its blind-index tokens, written beside it (`crate::search`); rows
    /// read back carry `None` (the tokens stay in their table).
    pub search: crate::search::SearchIndex,
}

/// A stored message with its sender's username, its moderation flag and
/// its files, as reads return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRow {
    pub message: StoredMessage,
    pub sender_username: String,
    pub flag: Option<Flag>,
    /// The rows of its attachments, in order.
    pub attachments: Vec<super::FileRecord>,
    /// The members its text mentions, in order (`message_mentions`).
    pub mentions: Vec<courier_protocol::frames::Mention>,
}

/// A moderator's flag on a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub at: i64,
    pub by: UserId,
    pub reason: String,
}

/// A runtime setting (table `settings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub updated_at: i64,
    pub updated_by: Option<UserId>,
}

/// The original of a message whose `clientMsgId` was sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMsgRef {
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub message_id: MessageId,
    pub seq: u64,
    pub created_at: i64,
}

/// One write of a group-commit batch. A batch is applied in one transaction,
/// in order; each op yields one [`WriteOutcome`] at the same index.
///
/// Inserts are nearly every op of a batch, so the message stays inline:
/// boxing it would cost an allocation per message on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Insert a message. When `(channel_id, sender_id, client_msg_id)` exists
    /// already, nothing new is visible: the outcome is `Duplicate` with the
    /// original, and a tombstone row (deleted, empty ciphertext, no client id)
    /// takes this message's `seq` so that `seq` stays gap-free in the store.
    InsertMessage(StoredMessage),
    /// Replace a message's ciphertext (an edit re-encrypts) and set
    /// `edited_at`; its blind-index tokens are replaced by `search`'s.
    EditMessage {
        id: MessageId,
        ciphertext: Vec<u8>,
        nonce: Vec<u8>,
        key_version: u32,
        edited_at: i64,
        search: crate::search::SearchIndex,
    },
    /// Soft-delete: set `deleted_at`, and drop its blind-index tokens unless
    /// a legal hold keeps the message. The row is purged after retention.
    DeleteMessage { id: MessageId, deleted_at: i64 },
    /// Move `last_read_seq` forward (never backward) and `last_delivered_seq` with it.
    MarkRead {
        channel_id: ChannelId,
        user_id: UserId,
        seq: u64,
    },
    /// Move `last_delivered_seq` forward (never backward): written when a
    /// member's last connection leaves a channel, not per message.
    MarkDelivered {
        channel_id: ChannelId,
        user_id: UserId,
        seq: u64,
    },
    /// Add a reaction (idempotent); the outcome carries the new counts.
    AddReaction {
        message_id: MessageId,
        user_id: UserId,
        reaction: String,
        created_at: i64,
    },
    /// Remove a reaction (idempotent); the outcome carries the new counts.
    RemoveReaction {
        message_id: MessageId,
        user_id: UserId,
        reaction: String,
    },
    /// Add or update a membership (role changes keep the read position).
    UpsertMember(Member),
    /// Remove a membership.
    RemoveMember {
        channel_id: ChannelId,
        user_id: UserId,
    },
    /// Replace the members a message mentions (after its insert or edit in
    /// the same channel's order; `users` empty clears them).
    SetMentions {
        message_id: MessageId,
        users: Vec<UserId>,
    },
}

impl WriteOp {
    /// Whether this is a message insert.
    pub fn is_insert(&self) -> bool {
        matches!(self, WriteOp::InsertMessage(_))
    }
}

/// What one [`WriteOp`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied.
    Done,
    /// `InsertMessage` whose client id was already used: the original.
    Duplicate(ClientMsgRef),
    /// Reaction counts of the message after the op, `{reaction: count}`.
    Reactions(BTreeMap<String, u64>),
    /// The target row does not exist (or is deleted); nothing changed.
    NotFound,
}

/// One entry of the audit hash chain. `prev_hash` and `hash` are lowercase hex
/// SHA-256; `details` is a JSON object (never message text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AuditEntry))]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: u64,
    pub timestamp: i64,
    pub actor_id: Option<UserId>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub action: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters of `GET /api/audit`; all optional. Newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor_id: Option<UserId>,
    pub action: Option<String>,
    /// Only entries with `seq` greater than this.
    pub after_seq: Option<u64>,
    /// Only entries with `seq` less than this (the next page of a listing:
    /// the last `seq` of the previous one).
    pub before_seq: Option<u64>,
    /// Only entries whose `details.channelId` is this channel.
    pub channel_id: Option<ChannelId>,
    /// Only entries with `timestamp` at or after this (ms).
    pub since: Option<i64>,
    /// Only entries with `timestamp` before this (ms).
    pub until: Option<i64>,
    pub limit: u32,
}

/// A signed audit checkpoint: the chain head at `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub seq: u64,
    pub head_hash: String,
    pub time: i64,
    /// Which keyring key signed it.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// Re-encryption of one message under a new key version (key rotation).
#[derive(Clone, Debug)]
pub struct Reencrypted {
    pub id: MessageId,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_version: u32,
    /// The message's blind-index tokens under the new version: they replace
    /// its old ones.
    pub search: crate::search::SearchTokens,
}
