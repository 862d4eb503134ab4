//! # Who is online on the other nodes
//!
//! Each node tells the others (`NodeEvent::Online` / `Offline` on
//! `courier.node`) when a user's first connection on it opens and their
//! last closes, and answers a starting node's hello with everyone online on
//! it. A node keeps that as user → nodes; before it announces a user
//! `offline` it checks that none of those nodes is still live (a node that
//! died without saying so holds no lease, and its entries are dropped).
//! A node that dies without saying so is found by a sweep (every half lease
//! TTL, each listed node's lease is read): its entries are dropped and the
//! realtime side is told, so that every channel says `offline` for its
//! users who have no connection left anywhere. Two nodes closing a user's
//! last connections within the same instant may each still see the other:
//! both then skip the `offline`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use courier_protocol::UserId;

/// user → the other nodes they are connected to, and this node's users.
#[derive(Clone, Default)]
pub struct RemotePresence {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    remote: HashMap<UserId, HashSet<String>>,
    local: HashSet<UserId>,
}

impl RemotePresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_remote(&self, node: &str, user: UserId, online: bool) {
        let mut inner = self.lock();
        if online {
            inner
                .remote
                .entry(user)
                .or_default()
                .insert(node.to_owned());
        } else if let Some(nodes) = inner.remote.get_mut(&user) {
            nodes.remove(node);
            if nodes.is_empty() {
                inner.remote.remove(&user);
            }
        }
    }

    pub(super) fn set_local(&self, user: UserId, online: bool) {
        let mut inner = self.lock();
        if online {
            inner.local.insert(user);
        } else {
            inner.local.remove(&user);
        }
    }

    pub(super) fn nodes_of(&self, user: UserId) -> Vec<String> {
        self.lock()
            .remote
            .get(&user)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn local_users(&self) -> Vec<UserId> {
        self.lock().local.iter().copied().collect()
    }

    /// Every node some user is known to be on.
    pub(super) fn nodes(&self) -> HashSet<String> {
        self.lock().remote.values().flatten().cloned().collect()
    }

    /// Whether `user` has a connection here or on a node still listed.
    pub(super) fn online_anywhere(&self, user: UserId) -> bool {
        let inner = self.lock();
        inner.local.contains(&user) || inner.remote.contains_key(&user)
    }

    /// Drops every entry of a node that holds no lease.
    pub(super) fn forget_node(&self, node: &str) {
        let mut inner = self.lock();
        inner.remote.retain(|_, nodes| {
            nodes.remove(node);
            !nodes.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_elsewhere_until_their_last_remote_node_says_offline() {
        let p = RemotePresence::default();
        let u = UserId::new();
        p.set_remote("a", u, true);
        p.set_remote("b", u, true);
        p.set_remote("a", u, false);
        assert_eq!(p.nodes_of(u), vec!["b".to_owned()]);
        p.forget_node("b");
        assert!(p.nodes_of(u).is_empty());
    }
}
