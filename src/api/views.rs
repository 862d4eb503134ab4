//! JSON shapes of the REST answers (camelCase, timestamps in ms). Nothing
//! secret leaves through them: no password hashes, no refresh-token hashes.

use courier_actors::durable::store::{Channel, Member, Session, User};
use courier_protocol::{SessionId, UserId};
use serde_json::{json, Value};

/// A user account.
pub fn user(u: &User) -> Value {
    let locked_until = u.locked_until.filter(|t| *t > courier_actors::now_ms());
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "role": u.role,
        "createdAt": u.created_at,
        "updatedAt": u.updated_at,
        "lockedUntil": locked_until,
    })
}

/// A channel, with the caller's role in it when they are a member.
pub fn channel(c: &Channel, member: Option<&Member>) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "kind": c.kind,
        "createdBy": c.created_by,
        "createdAt": c.created_at,
        "role": member.map(|m| m.role),
    })
}

/// A membership, with the member's username when known.
pub fn member(m: &Member, username: Option<&str>) -> Value {
    json!({
        "channelId": m.channel_id,
        "userId": m.user_id,
        "username": username,
        "role": m.role,
        "joinedAt": m.joined_at,
        "lastReadSeq": m.last_read_seq,
    })
}

/// A session (never its token hash); `current` marks the caller's own.
pub fn session(s: &Session, current: SessionId) -> Value {
    json!({
        "id": s.id,
        "userId": s.user_id,
        "createdAt": s.created_at,
        "expiresAt": s.expires_at,
        "ip": s.ip,
        "userAgent": s.user_agent,
        "valid": s.valid && s.expires_at > courier_actors::now_ms(),
        "current": s.id == current,
    })
}

/// The answer of `/api/users/{id}/permissions`.
pub fn permissions(
    user: UserId,
    role: courier_actors::durable::store::Role,
    names: Vec<String>,
) -> Value {
    json!({"userId": user, "role": role, "permissions": names})
}
