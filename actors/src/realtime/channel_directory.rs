//! # ChannelDirectory: which channel actor serves which channel
//!
//! **Owns** the map from channel id to its running [`ChannelActor`], and
//! supervises those actors (one per channel with traffic, started on first
//! use, gone when idle). It is the one place that routes to a channel's
//! actor on this node. In a cluster every node runs the actors of the
//! channels its connections use; which of them owns a channel (assigns
//! `seq`) is the actor's own business (`channel::cluster_role`), decided by
//! a claim in NATS.
//!
//! **Takes** [`DirectoryMsg`]: `Get` (start if needed) from connection
//! actors and REST handlers; `Notify` (deliver only if running) from REST
//! handlers and the retention actor, and in a cluster published to the
//! other nodes too; `Forwarded` requests from other nodes (the channel's
//! actor is started for them if needed); `Resync` after NATS came back.
//!
//! **Supervised by** the root supervisor. **A crash** of a channel actor
//! removes it from the map (its connections were closed with 1011 by the
//! crash); the next `Get` starts a fresh one, which recovers `seq` from the
//! store. **A crash of the directory** stops the server's realtime side (the
//! root supervisor treats it as fatal).

use std::collections::HashMap;
use std::sync::Arc;

use courier_protocol::ChannelId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::cluster::wire::{Answer, ChannelEvent, Forward};
use crate::durable::retention::Expired;
use crate::durable::store::Channel;
use crate::realtime::channel::{self, ChannelActor, ChannelArgs, ChannelMsg, ChannelServices};

/// Messages of the directory.
pub enum DirectoryMsg {
    /// The actor of a channel, started if needed (the caller has read the
    /// channel row, and authorized what it is about to do).
    Get(Channel, RpcReplyPort<Result<ActorRef<ChannelMsg>, String>>),
    /// Delivers a message to a channel's actor if one is running; a channel
    /// nobody has joined has nobody to tell. In a cluster, the other nodes
    /// are told too.
    Notify(ChannelId, ChannelMsg),
    /// A request another node forwarded here, answered on the reply subject.
    Forwarded(Box<Forward>, String),
    /// Every running channel re-reads what it may have missed.
    Resync,
    /// A node died: every running channel forgets who was joined there.
    NodeGone(String),
}

/// A message's expiry, from the retention actor, goes to its channel.
impl From<Expired> for DirectoryMsg {
    fn from(e: Expired) -> Self {
        let msg = ChannelMsg::Expired {
            message_id: e.message_id,
            seq: e.seq,
        };
        DirectoryMsg::Notify(e.channel_id, msg)
    }
}

/// The way back, which ractor needs to return an undelivered expiry.
impl TryFrom<DirectoryMsg> for Expired {
    type Error = DirectoryMsg;

    fn try_from(msg: DirectoryMsg) -> Result<Self, DirectoryMsg> {
        match msg {
            DirectoryMsg::Notify(channel_id, ChannelMsg::Expired { message_id, seq }) => {
                Ok(Expired {
                    channel_id,
                    message_id,
                    seq,
                })
            }
            other => Err(other),
        }
    }
}

/// The directory; configuration is the services its channels share.
pub struct ChannelDirectory {
    pub services: Arc<ChannelServices>,
}

/// Running channel actors.
pub struct DirectoryState {
    channels: HashMap<ChannelId, ActorRef<ChannelMsg>>,
}

impl Actor for ChannelDirectory {
    type Msg = DirectoryMsg;
    type State = DirectoryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DirectoryState {
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
            DirectoryMsg::Get(channel, reply) => {
                let _ = reply.send(self.get(&myself, state, channel).await);
            }
            DirectoryMsg::Notify(id, msg) => {
                if let (Some(cluster), Some(notice)) =
                    (&self.services.cluster, channel::notice_of(&msg))
                {
                    let event = ChannelEvent::Notice {
                        origin: cluster.node_id().to_owned(),
                        notice,
                    };
                    cluster.publish_channel(id, &event);
                }
                if let Some(actor) = state.channels.get(&id) {
                    let _ = actor.cast(msg);
                }
            }
            DirectoryMsg::Forwarded(forward, reply) => {
                self.forwarded(&myself, state, *forward, reply).await;
            }
            DirectoryMsg::Resync => {
                for actor in state.channels.values() {
                    let _ = actor.cast(ChannelMsg::Resync);
                }
            }
            DirectoryMsg::NodeGone(node) => {
                for actor in state.channels.values() {
                    let _ = actor.cast(ChannelMsg::NodeGone(node.clone()));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.channels.retain(|_, a| a.get_id() != cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(error = %err, "channel actor crashed; its connections were closed");
                state.channels.retain(|_, a| a.get_id() != cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

impl ChannelDirectory {
    /// The channel's actor, started if needed.
    async fn get(
        &self,
        myself: &ActorRef<DirectoryMsg>,
        state: &mut DirectoryState,
        channel: Channel,
    ) -> Result<ActorRef<ChannelMsg>, String> {
        if let Some(actor) = state.channels.get(&channel.id) {
            return Ok(actor.clone());
        }
        let id = channel.id;
        let args = ChannelArgs {
            channel,
            services: self.services.clone(),
        };
        match Actor::spawn_linked(None, ChannelActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                state.channels.insert(id, actor.clone());
                Ok(actor)
            }
            Err(e) => {
                tracing::error!(channel_id = %id, error = %e, "cannot start channel actor");
                Err(e.to_string())
            }
        }
    }

    /// Hands a forwarded request to its channel's actor, started for it if
    /// needed (the actor answers `NotOwner` when this node does not own the
    /// channel).
    async fn forwarded(
        &self,
        myself: &ActorRef<DirectoryMsg>,
        state: &mut DirectoryState,
        forward: Forward,
        reply: String,
    ) {
        let Some(cluster) = self.services.cluster.clone() else {
            return;
        };
        let actor = match state.channels.get(&forward.channel) {
            Some(actor) => Ok(actor.clone()),
            None => match self.services.store.get_channel(forward.channel).await {
                Ok(Some(channel)) => self.get(myself, state, channel).await,
                Ok(None) => {
                    let answer = Answer::Failed {
                        code: courier_protocol::ErrorCode::NotFound,
                        message: "no such channel".into(),
                    };
                    cluster.answer(reply, &answer);
                    return;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match actor {
            Ok(actor) => {
                let msg = channel::forwarded(cluster.clone(), forward.op, reply.clone());
                if actor.cast(msg).is_err() {
                    cluster.answer(reply, &Answer::NotOwner);
                }
            }
            Err(why) => {
                tracing::warn!(channel_id = %forward.channel, error = %why, "a forwarded request found no channel actor");
                cluster.answer(reply, &Answer::NotOwner);
            }
        }
    }
}
