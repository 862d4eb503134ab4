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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use courier_protocol::{ChannelId, UserId};
use dashmap::DashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

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
        let key = self
            .grants
            .iter()
            .find(|e| e.id == id)
            .map(|e| *e.key())?;
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
