//! JSON shapes of the REST answers (camelCase, timestamps in ms). Nothing
//! secret leaves through them: no password hashes, no refresh-token hashes.
//! Each shape is a type whose OpenAPI schema is derived from it, so the
//! document describes what the handlers serialize.

use courier_actors::durable::store::{
    Channel, ChannelKind, ChannelRole, Member, Role, Session, User,
};
use courier_protocol::{ChannelId, PatientRef, SessionId, UserId};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// A user account.
#[derive(Serialize, ToSchema)]
#[schema(as = User)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    id: UserId,
    username: String,
    email: Option<String>,
    role: Role,
    /// ms since the Unix epoch.
    created_at: i64,
    updated_at: i64,
    /// Logins are refused: an admin locked the account (until unlocked).
    locked: bool,
    /// While `locked`: until when (`null`: until an admin unlocks it).
    locked_until: Option<i64>,
    /// The account is off: no login, no session.
    disabled: bool,
    disabled_at: Option<i64>,
    /// The password was set by an admin (a temporary one): every call but
    /// `change-password` and `logout` is refused until it is changed.
    must_change_password: bool,
    /// The last successful login or console sign-in.
    last_login_at: Option<i64>,
    /// When the password was last set (what `password_max_age_days`
    /// measures).
    password_changed_at: i64,
}

/// A user account.
pub fn user(u: &User) -> Value {
    let locked_until = u.locked_until.filter(|t| *t > courier_actors::now_ms());
    json!(UserView {
        id: u.id,
        username: u.username.clone(),
        email: u.email.clone(),
        role: u.role,
        created_at: u.created_at,
        updated_at: u.updated_at,
        locked: locked_until.is_some(),
        // An admin's lock has no end.
        locked_until: locked_until.filter(|t| *t != i64::MAX),
        disabled: u.disabled_at.is_some(),
        disabled_at: u.disabled_at,
        must_change_password: u.must_change_password,
        last_login_at: u.last_login_at,
        password_changed_at: u.password_changed_at,
    })
}

/// A channel.
#[derive(Serialize, ToSchema)]
#[schema(as = Channel)]
#[serde(rename_all = "camelCase")]
pub struct ChannelView {
    id: ChannelId,
    name: String,
    description: Option<String>,
    kind: ChannelKind,
    created_by: UserId,
    created_at: i64,
    /// The caller's role in it, when a member.
    role: Option<ChannelRole>,
    /// Archived: history readable, nothing new posted.
    archived: bool,
    /// When it was archived (ms), while `archived`.
    archived_at: Option<i64>,
    /// The last `seq` (`GET /api/channels/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seq: Option<u64>,
    /// The patient the channel concerns (docs/protocol.md, "Patient
    /// link"), for those who may read the channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    patient_ref: Option<PatientRef>,
}

/// A channel, with the caller's role in it when they are a member, and
/// `lastSeq` when given.
pub fn channel(c: &Channel, member: Option<&Member>) -> Value {
    channel_at(c, member, None)
}

/// [`channel`] with its `lastSeq`.
pub fn channel_at(c: &Channel, member: Option<&Member>, last_seq: Option<u64>) -> Value {
    channel_full(c, member, last_seq, None)
}

/// [`channel_at`] with its `patientRef`, opened for a reader who may read
/// the channel (`api::patients::channel_ref`).
pub fn channel_full(
    c: &Channel,
    member: Option<&Member>,
    last_seq: Option<u64>,
    patient_ref: Option<PatientRef>,
) -> Value {
    json!(ChannelView {
        id: c.id,
        name: c.name.clone(),
        description: c.description.clone(),
        kind: c.kind,
        created_by: c.created_by,
        created_at: c.created_at,
        role: member.map(|m| m.role),
        archived: c.archived_at.is_some(),
        archived_at: c.archived_at,
        last_seq,
        patient_ref,
    })
}

/// A membership.
#[derive(Serialize, ToSchema)]
#[schema(as = Member)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    channel_id: ChannelId,
    user_id: UserId,
    username: Option<String>,
    role: ChannelRole,
    joined_at: i64,
    last_read_seq: u64,
}

/// A membership, with the member's username when known.
pub fn member(m: &Member, username: Option<&str>) -> Value {
    json!(MemberView {
        channel_id: m.channel_id,
        user_id: m.user_id,
        username: username.map(str::to_owned),
        role: m.role,
        joined_at: m.joined_at,
        last_read_seq: m.last_read_seq,
    })
}

/// A session (never its token hash).
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    id: SessionId,
    user_id: UserId,
    created_at: i64,
    expires_at: i64,
    ip: Option<String>,
    user_agent: Option<String>,
    valid: bool,
    /// The session of this request.
    current: bool,
}

/// A session; `current` marks the caller's own.
pub fn session(s: &Session, current: SessionId) -> Value {
    json!(SessionView {
        id: s.id,
        user_id: s.user_id,
        created_at: s.created_at,
        expires_at: s.expires_at,
        ip: s.ip.clone(),
        user_agent: s.user_agent.clone(),
        valid: s.valid && s.expires_at > courier_actors::now_ms(),
        current: s.id == current,
    })
}

/// The answer of `/api/users/{id}/permissions`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    user_id: UserId,
    role: Role,
    permissions: Vec<String>,
}

/// The answer of `/api/users/{id}/permissions`.
pub fn permissions(user: UserId, role: Role, names: Vec<String>) -> Value {
    json!(Permissions {
        user_id: user,
        role,
        permissions: names,
    })
}
