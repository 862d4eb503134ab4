//! # PresenceActor: one per online user
//!
//! **Owns** one user's presence: their open connections (with the session
//! each belongs to), their status (`online`/`away`), when they were last
//! seen, and the channels their connections have joined (with counts, since
//! several devices may join the same channel).
//!
//! **Takes** [`PresenceMsg`], routed by the [`PresenceDirectory`]:
//! connections opening and closing, joins and leaves, `set_status`, and
//! session revocations (logout, password change, admin action), which close
//! the matching connections with 4003, and frames to push to every
//! connection of the user.
//!
//! **Does**: a status change is pushed as `presence` to every channel the
//! user has joined, whose channel actor passes it to everyone else there. A
//! user is `offline` only when their last connection closes; in a cluster,
//! their last connection on any node (the directory asks the
//! [`cluster`](crate::cluster::presence) before it lets the actor say so).
//!
//! **Supervised by** the [`PresenceDirectory`]. **A crash** loses the status
//! (`away` reverts to `online` on the next connection) and the directory
//! forgets the user; their connections keep working, and the next
//! connection of that user starts a new actor.

use std::collections::HashMap;
use std::sync::Arc;

use courier_protocol::frames::{PresenceStatus, ServerFrame};
use courier_protocol::{ChannelId, SessionId, UserId};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::cluster::Cluster;
use crate::realtime::channel::ChannelMsg;
use crate::realtime::outbound::{ConnId, Outbound};
use crate::telemetry::names as m;
use courier_protocol::error::close;

/// Messages of a user's presence actor (also what the directory routes).
pub enum PresenceMsg {
    Connected {
        conn_id: ConnId,
        session_id: SessionId,
        outbound: Outbound,
    },
    Disconnected {
        conn_id: ConnId,
        /// Set by the directory: the user has a connection on another node,
        /// so their last one here closing is not `offline`.
        online_elsewhere: bool,
    },
    Joined {
        channel_id: ChannelId,
        channel: ActorRef<ChannelMsg>,
    },
    Left {
        channel_id: ChannelId,
    },
    SetStatus(PresenceStatus),
    /// Close the connections of these sessions (all when `None`) with 4003.
    Revoke(Option<Vec<SessionId>>),
    /// Push a frame to every connection of the user (a `system_event` meant
    /// for them wherever they are, e.g. `break_glass`).
    Push(Box<ServerFrame>),
    /// The last connection closed: stop after the messages before this one.
    Retire,
}

/// One user's presence actor.
pub struct PresenceActor;

/// What it owns.
pub struct PresenceState {
    user_id: UserId,
    connections: HashMap<ConnId, (SessionId, Outbound)>,
    status: PresenceStatus,
    channels: HashMap<ChannelId, (ActorRef<ChannelMsg>, usize)>,
}

impl PresenceState {
    fn announce(&self) {
        let now = crate::now_ms();
        for (channel, _) in self.channels.values() {
            let _ = channel.cast(ChannelMsg::Presence {
                user_id: self.user_id,
                status: self.status,
                last_seen: now,
            });
        }
    }
}

impl Actor for PresenceActor {
    type Msg = PresenceMsg;
    type State = PresenceState;
    type Arguments = UserId;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        user_id: UserId,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PresenceState {
            user_id,
            connections: HashMap::new(),
            status: PresenceStatus::Online,
            channels: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceMsg::Connected {
                conn_id,
                session_id,
                outbound,
            } => {
                state.connections.insert(conn_id, (session_id, outbound));
            }
            PresenceMsg::Disconnected {
                conn_id,
                online_elsewhere,
            } => {
                state.connections.remove(&conn_id);
                if state.connections.is_empty() && !online_elsewhere {
                    state.status = PresenceStatus::Offline;
                    state.announce();
                }
            }
            PresenceMsg::Joined {
                channel_id,
                channel,
            } => {
                state.channels.entry(channel_id).or_insert((channel, 0)).1 += 1;
            }
            PresenceMsg::Left { channel_id } => {
                if let Some(entry) = state.channels.get_mut(&channel_id) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        state.channels.remove(&channel_id);
                    }
                }
            }
            PresenceMsg::SetStatus(status) => {
                if status != state.status && status != PresenceStatus::Offline {
                    state.status = status;
                    state.announce();
                }
            }
            PresenceMsg::Revoke(sessions) => {
                for (session, outbound) in state.connections.values() {
                    if sessions.as_ref().is_none_or(|s| s.contains(session)) {
                        outbound.close_now(close::SESSION_REVOKED);
                    }
                }
            }
            PresenceMsg::Push(frame) => {
                for (_, outbound) in state.connections.values() {
                    outbound.deliver(&frame);
                }
            }
            PresenceMsg::Retire => myself.stop(None),
        }
        Ok(())
    }
}

/// Routes presence messages to each user's actor, starting and retiring
/// them; in a cluster, tells the other nodes when a user's first connection
/// here opens and their last closes.
pub struct PresenceDirectory {
    pub cluster: Option<Arc<Cluster>>,
}

/// Messages of the directory: a presence message for a user.
pub struct ForUser(pub UserId, pub PresenceMsg);

/// Running presence actors and their connection counts.
pub struct PresenceDirectoryState {
    users: HashMap<UserId, (ActorRef<PresenceMsg>, usize)>,
}

impl Actor for PresenceDirectory {
    type Msg = ForUser;
    type State = PresenceDirectoryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PresenceDirectoryState {
            users: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        ForUser(user, msg): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let PresenceMsg::Connected { .. } = msg {
            if let std::collections::hash_map::Entry::Vacant(entry) = state.users.entry(user) {
                let (actor, _) =
                    Actor::spawn_linked(None, PresenceActor, user, myself.get_cell()).await?;
                entry.insert((actor, 0));
                metrics::gauge!(m::USERS_ONLINE).set(state.users.len() as f64);
                if let Some(cluster) = &self.cluster {
                    cluster.user_online(user);
                }
            }
        }
        let Some((actor, count)) = state.users.get_mut(&user) else {
            return Ok(()); // not online: nothing to tell
        };
        let retire = match &msg {
            PresenceMsg::Connected { .. } => {
                *count += 1;
                false
            }
            PresenceMsg::Disconnected { .. } => {
                *count = count.saturating_sub(1);
                *count == 0
            }
            _ => false,
        };
        let actor = actor.clone();
        let msg = match (msg, &self.cluster) {
            (PresenceMsg::Disconnected { conn_id, .. }, Some(cluster)) if retire => {
                cluster.user_offline(user);
                PresenceMsg::Disconnected {
                    conn_id,
                    online_elsewhere: cluster.online_elsewhere(user).await,
                }
            }
            (msg, _) => msg,
        };
        let _ = actor.cast(msg);
        if retire {
            let _ = actor.cast(PresenceMsg::Retire);
            state.users.remove(&user);
            metrics::gauge!(m::USERS_ONLINE).set(state.users.len() as f64);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = &event {
            tracing::error!(error = %err, "presence actor crashed");
            state.users.retain(|_, (a, _)| a.get_id() != cell.get_id());
        }
        Ok(())
    }
}
