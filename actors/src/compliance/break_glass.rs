//! # Break-glass: emergency access to a channel, time-limited and reviewed
//!
//! A clinician who holds the break-glass right (an admin sets it per user)
//! and is not a member of a channel may open it in an emergency, giving a
//! reason. The grant makes them a plain `member` of the channel (the normal
//! membership row, so joining, history and pushes work as for anyone) until
//! it expires; the grant row records that the membership is break-glass, the
//! reason sealed under a key of the channel, and the review that follows.
//!
//! [`BreakGlassRegistry`] is the in-memory view of the grants now in force:
//! `Clone` and cheap (an `Arc<DashMap>`), loaded from the store at start.
//! Read paths ask it whether a read is made under a grant
//! ([`BreakGlassRegistry::active`]) and mark their audit entries with
//! `details.breakGlass`.
//!
//! The registry owns nothing durable: the store's grant rows are the truth,
//! and a restart rebuilds the registry from them.
//!
//! [`BreakGlassAccess`] opens and ends grants (the REST edge and the
//! sweeper share it, so both end a grant the same way), and
//! [`BreakGlassSweeper`] ends them on time.
//!
//! ## BreakGlassSweeper
//!
//! **Owns** nothing but its schedule (the registry is shared, the rows are
//! the store's).
//!
//! **Takes** [`SweepMsg::Sweep`], sent to itself every `sweep` interval
//! (`break_glass_sweep_ms`).
//!
//! **Does**: at start, loads the grants not ended: those past `expires_at`
//! are ended (`expired`), the others go into the registry. Each sweep adds
//! the open grants it does not know yet (opened on another node) and ends
//! those whose `expires_at` has passed: the membership goes (through the
//! persistence actor, then `ChannelMsg::MemberRemoved`, as a REST member
//! removal does, so joined sockets leave the channel), the registry forgets
//! the grant, `break_glass.ended` is appended to the audit chain (durable)
//! and `system_event` `break_glass_ended` goes to the channel's members,
//! the grantee and every connected admin.
//!
//! **Supervised by** the realtime root. **A crash** stops the sweeps until
//! restart (the server reports itself not ready); nothing is lost: grants
//! past their expiry are ended by the next start's load. Meanwhile a grant
//! past its `expires_at` keeps its membership, and reads under it are no
//! longer marked.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use courier_protocol::{ChannelId, UserId};
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;
use uuid::Uuid;

use crate::audit::actor::AuditHandle;
use crate::audit::chain::PendingAudit;
use crate::crypto::MessageCipher;
use crate::durable::persistence::PersistenceHandle;
use crate::durable::store::{
    BreakGlassGrant, Channel, ChannelKind, ChannelRole, DynStore, Member, Role, StoreError, WriteOp,
};
use crate::policy::authz::RolePermissions;
use crate::realtime::channel::ChannelMsg;
use crate::realtime::channel_directory::DirectoryMsg;
use crate::realtime::frames_out as out;
use crate::realtime::presence::{ForUser, PresenceMsg};

/// The role permission that lets a role break the glass without a per-user
/// right (super_admin, admin).
pub const PERM_BREAK_GLASS: &str = "channels.break_glass";
/// The permission to read and review the queue, revoke grants and set the
/// per-user right; who holds it is told of every grant.
pub const PERM_REVIEW: &str = "break_glass.review";
/// The shortest reason, in characters, after trimming.
pub const REASON_MIN_CHARS: usize = 10;
/// The longest reason, in bytes.
pub const REASON_MAX_BYTES: usize = 500;

/// A break-glass grant. Displays and serializes as a UUID string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(pub Uuid);

impl GrantId {
    /// A fresh, random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for GrantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for GrantId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for GrantId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl Serialize for GrantId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GrantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Uuid::parse_str(&s)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("invalid UUID string"))
    }
}

/// A grant in force, as the registry holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveGrant {
    pub id: GrantId,
    pub channel_id: ChannelId,
    pub user_id: UserId,
    /// Unix milliseconds at which it ends.
    pub expires_at: i64,
}

/// The grants in force, by (channel, user). Cheap to clone.
#[derive(Clone, Default)]
pub struct BreakGlassRegistry {
    grants: Arc<DashMap<(ChannelId, UserId), ActiveGrant>>,
}

impl fmt::Debug for BreakGlassRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakGlassRegistry")
            .field("grants", &self.grants.len())
            .finish()
    }
}

impl BreakGlassRegistry {
    /// An empty registry (filled by [`BreakGlassRegistry::insert`] as grants
    /// are loaded or opened).
    pub fn new() -> Self {
        Self::default()
    }

    /// The grant under which `user` reads `channel` at `now_ms`, if any.
    pub fn active(&self, channel: ChannelId, user: UserId, now_ms: i64) -> Option<GrantId> {
        self.grants
            .get(&(channel, user))
            .filter(|g| g.expires_at > now_ms)
            .map(|g| g.id)
    }

    /// Records a grant in force (replacing an older one of the same pair).
    pub fn insert(&self, grant: ActiveGrant) {
        self.grants.insert((grant.channel_id, grant.user_id), grant);
    }

    /// Forgets a grant; returns it if it was there.
    pub fn remove(&self, id: GrantId) -> Option<ActiveGrant> {
        let key = self.grants.iter().find(|e| e.id == id).map(|e| *e.key())?;
        self.grants
            .remove_if(&key, |_, g| g.id == id)
            .map(|(_, g)| g)
    }

    /// The grant with this id, if in force.
    pub fn get(&self, id: GrantId) -> Option<ActiveGrant> {
        self.grants.iter().find(|e| e.id == id).map(|e| *e.value())
    }

    /// Grants whose `expires_at` is at or before `now_ms`.
    pub fn due(&self, now_ms: i64) -> Vec<ActiveGrant> {
        self.grants
            .iter()
            .filter(|e| e.expires_at <= now_ms)
            .map(|e| *e.value())
            .collect()
    }

    /// How many grants are in force.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether no grant is in force.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// How a grant ended (the audit's and the API's spelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Its `expires_at` passed.
    Expired,
    /// The grantee ended it.
    EndedByUser,
    /// An admin (`break_glass.review`) ended it.
    Revoked,
}

impl EndReason {
    /// `expired`, `ended_by_user` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::EndedByUser => "ended_by_user",
            EndReason::Revoked => "revoked",
        }
    }
}

/// Why opening or ending a grant failed; mapped to codes at the edge.
#[derive(Debug, thiserror::Error)]
pub enum BreakGlassError {
    /// The caller holds neither the per-user right nor `channels.break_glass`.
    #[error("not allowed to break the glass")]
    NotAllowed,
    /// The channel cannot be opened this way, or the caller is a member.
    #[error("{0}")]
    Conflict(&'static str),
    /// The store, the persistence actor or the audit chain is down.
    #[error("service unavailable")]
    Unavailable,
    /// A reason that does not open, or another bug.
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for BreakGlassError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Tls(_) => BreakGlassError::Unavailable,
            StoreError::Conflict(_) => BreakGlassError::Conflict("conflict"),
            other => {
                tracing::error!(error = %other, "break-glass store error");
                BreakGlassError::Internal
            }
        }
    }
}

/// Who did something, for the audit entry: a user from an address, or the
/// server itself (the sweeper).
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub actor: Option<UserId>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Origin {
    fn event(&self, action: &str, details: serde_json::Value) -> PendingAudit {
        let mut event = PendingAudit::new(self.actor, self.ip.clone(), action, details);
        event.user_agent = self.user_agent.clone();
        event
    }
}

/// Opens and ends grants. Cheap to clone; on `Realtime` as
/// `break_glass_access`.
#[derive(Clone)]
pub struct BreakGlassAccess {
    pub store: DynStore,
    pub cipher: Arc<MessageCipher>,
    pub persistence: PersistenceHandle,
    pub audit: AuditHandle,
    pub channels: ActorRef<DirectoryMsg>,
    pub presence: ActorRef<ForUser>,
    pub permissions: Arc<RolePermissions>,
    pub registry: BreakGlassRegistry,
}

impl BreakGlassAccess {
    /// Whether `user` (of `role`) may break the glass: the role has
    /// `channels.break_glass`, or an admin gave the user the right.
    pub async fn may_break_glass(&self, user: UserId, role: Role) -> Result<bool, StoreError> {
        Ok(self.permissions.has(role, PERM_BREAK_GLASS)
            || self.store.break_glass_allowed(user).await?)
    }

    /// Opens a grant: `user` becomes a plain member of `channel` until
    /// `ttl` has passed. The reason is checked by the caller. Audited
    /// `break_glass.granted` (durable) and announced.
    pub async fn open(
        &self,
        user: UserId,
        role: Role,
        channel: &Channel,
        reason: &str,
        ttl: Duration,
        origin: &Origin,
    ) -> Result<BreakGlassGrant, BreakGlassError> {
        if !self.may_break_glass(user, role).await? {
            return Err(BreakGlassError::NotAllowed);
        }
        match channel.kind {
            ChannelKind::Private => {}
            ChannelKind::Direct => {
                return Err(BreakGlassError::Conflict(
                    "a direct channel's members cannot change",
                ))
            }
            ChannelKind::Public | ChannelKind::Broadcast => {
                return Err(BreakGlassError::Conflict(
                    "anyone may join this channel: join it",
                ))
            }
        }
        if self.store.get_member(channel.id, user).await?.is_some() {
            return Err(BreakGlassError::Conflict(
                "already a member of this channel",
            ));
        }
        let id = GrantId::new();
        let now = crate::now_ms();
        let sealed = self
            .cipher
            .seal(
                channel.id,
                BreakGlassGrant::reason_message_id(id),
                0,
                reason.as_bytes(),
            )
            .map_err(|_| BreakGlassError::Internal)?;
        let grant = BreakGlassGrant {
            id,
            channel_id: channel.id,
            user_id: user,
            reason_ciphertext: sealed.ciphertext,
            reason_nonce: sealed.nonce,
            reason_key_version: sealed.key_version,
            granted_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            ended_at: None,
            ended_by: None,
            end_reason: None,
            reviewed_by: None,
            reviewed_at: None,
            review_note: None,
        };
        self.store.insert_grant(&grant).await?;
        let member = Member {
            channel_id: channel.id,
            user_id: user,
            role: ChannelRole::Member,
            joined_at: now,
            last_read_seq: 0,
            last_delivered_seq: 0,
        };
        self.persistence
            .write(WriteOp::UpsertMember(member))
            .await
            .map_err(|_| BreakGlassError::Unavailable)?;
        self.registry.insert(ActiveGrant {
            id,
            channel_id: channel.id,
            user_id: user,
            expires_at: grant.expires_at,
        });
        let data = json!({
            "grantId": id,
            "channelId": channel.id,
            "userId": user,
            "expiresAt": grant.expires_at,
        });
        self.audit
            .append(origin.event("break_glass.granted", data.clone()))
            .await
            .map_err(|_| BreakGlassError::Unavailable)?;
        self.announce(&grant, "break_glass", data).await;
        Ok(grant)
    }

    /// Ends an open grant: the membership goes (unless an owner changed its
    /// role meanwhile), joined sockets leave, the registry forgets it,
    /// `break_glass.ended` is audited (durable) and announced. `None` when
    /// it had ended already.
    pub async fn end(
        &self,
        id: GrantId,
        reason: EndReason,
        origin: &Origin,
    ) -> Result<Option<BreakGlassGrant>, BreakGlassError> {
        let now = crate::now_ms();
        let Some(grant) = self
            .store
            .end_grant(id, now, origin.actor, reason.as_str())
            .await?
        else {
            self.registry.remove(id);
            return Ok(None);
        };
        let member = self
            .store
            .get_member(grant.channel_id, grant.user_id)
            .await?;
        if member.is_some_and(|m| m.role == ChannelRole::Member) {
            self.persistence
                .write(WriteOp::RemoveMember {
                    channel_id: grant.channel_id,
                    user_id: grant.user_id,
                })
                .await
                .map_err(|_| BreakGlassError::Unavailable)?;
            let _ = self.channels.cast(DirectoryMsg::Notify(
                grant.channel_id,
                ChannelMsg::MemberRemoved {
                    user_id: grant.user_id,
                },
            ));
        }
        self.registry.remove(id);
        let data = json!({
            "grantId": id,
            "channelId": grant.channel_id,
            "userId": grant.user_id,
            "reason": reason.as_str(),
        });
        self.audit
            .append(origin.event("break_glass.ended", data.clone()))
            .await
            .map_err(|_| BreakGlassError::Unavailable)?;
        self.announce(&grant, "break_glass_ended", data).await;
        Ok(Some(grant))
    }

    /// The reason of a grant, opened.
    pub fn reason(&self, grant: &BreakGlassGrant) -> Result<String, BreakGlassError> {
        let plain = self
            .cipher
            .open(
                grant.channel_id,
                BreakGlassGrant::reason_message_id(grant.id),
                0,
                grant.reason_key_version,
                &grant.reason_nonce,
                &grant.reason_ciphertext,
            )
            .map_err(|e| {
                tracing::error!(grant = %grant.id, error = %e, "a break-glass reason does not open");
                BreakGlassError::Internal
            })?;
        String::from_utf8(plain).map_err(|_| BreakGlassError::Internal)
    }

    /// Pushes `system_event` `event_type` to every connection of the
    /// channel's members, of the grantee and of every user whose role may
    /// review grants. Best effort: a store error leaves someone untold,
    /// never the grant undone (the audit has it).
    async fn announce(&self, grant: &BreakGlassGrant, event_type: &str, data: serde_json::Value) {
        let mut users: HashSet<UserId> = HashSet::from([grant.user_id]);
        match self.store.list_members(grant.channel_id).await {
            Ok(members) => users.extend(members.iter().map(|m| m.user_id)),
            Err(e) => tracing::warn!(error = %e, "break-glass: cannot list the members to tell"),
        }
        let roles: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| self.permissions.has(*r, PERM_REVIEW))
            .collect();
        match self.store.user_ids_with_roles(&roles).await {
            Ok(admins) => users.extend(admins),
            Err(e) => tracing::warn!(error = %e, "break-glass: cannot list the admins to tell"),
        }
        let frame = out::system_event(event_type, data);
        for user in users {
            let _ = self
                .presence
                .cast(ForUser(user, PresenceMsg::Push(Box::new(frame.clone()))));
        }
    }

    /// Adds the open grants the registry does not hold yet, and ends those
    /// past their expiry (`expired`). At start and on every sweep.
    pub async fn sweep(&self) -> Result<usize, BreakGlassError> {
        let now = crate::now_ms();
        let mut ended = 0;
        for grant in self.store.open_grants().await? {
            if grant.expires_at <= now {
                if self
                    .end(grant.id, EndReason::Expired, &Origin::default())
                    .await?
                    .is_some()
                {
                    ended += 1;
                }
            } else if self.registry.get(grant.id).is_none() {
                self.registry.insert(ActiveGrant {
                    id: grant.id,
                    channel_id: grant.channel_id,
                    user_id: grant.user_id,
                    expires_at: grant.expires_at,
                });
            }
        }
        // Grants ended elsewhere (another node) are gone from the store's
        // open list but may linger here until their expiry.
        for stale in self.registry.due(now) {
            self.end(stale.id, EndReason::Expired, &Origin::default())
                .await?;
        }
        Ok(ended)
    }
}

/// The sweeper's messages.
pub enum SweepMsg {
    /// Ends grants past their expiry.
    Sweep,
}

/// Ends grants on time (see the module doc).
pub struct BreakGlassSweeper;

impl Actor for BreakGlassSweeper {
    type Msg = SweepMsg;
    type State = BreakGlassAccess;
    type Arguments = (BreakGlassAccess, Duration);

    async fn pre_start(
        &self,
        myself: ActorRef<SweepMsg>,
        (access, every): Self::Arguments,
    ) -> Result<BreakGlassAccess, ActorProcessingErr> {
        // A store down at start: the first sweep loads and ends instead.
        if let Err(e) = access.sweep().await {
            tracing::warn!(error = %e, "break-glass grants not loaded at start; the next sweep will");
        }
        myself.send_interval(every, || SweepMsg::Sweep);
        Ok(access)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SweepMsg>,
        SweepMsg::Sweep: SweepMsg,
        access: &mut BreakGlassAccess,
    ) -> Result<(), ActorProcessingErr> {
        // A store that is down now is tried again next sweep.
        if let Err(e) = access.sweep().await {
            tracing::warn!(error = %e, "break-glass sweep failed; trying again next sweep");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_active_until_it_expires() {
        let reg = BreakGlassRegistry::new();
        let (c, u) = (ChannelId::new(), UserId::new());
        assert_eq!(reg.active(c, u, 0), None);
        let g = ActiveGrant {
            id: GrantId::new(),
            channel_id: c,
            user_id: u,
            expires_at: 1_000,
        };
        reg.insert(g);
        let clone = reg.clone();
        assert_eq!(clone.active(c, u, 999), Some(g.id));
        assert_eq!(clone.active(c, u, 1_000), None);
        assert_eq!(clone.active(c, UserId::new(), 0), None);
        assert_eq!(reg.due(1_000), vec![g]);
        assert_eq!(reg.remove(g.id), Some(g));
        assert_eq!(reg.active(c, u, 0), None);
        assert!(reg.is_empty());
        assert_eq!(g.id.to_string().len(), 36);
        let json = serde_json::to_string(&g.id).unwrap();
        assert_eq!(serde_json::from_str::<GrantId>(&json).unwrap(), g.id);
    }
}
