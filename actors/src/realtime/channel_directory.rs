//! # ChannelDirectory: which channel actor serves which channel
//!
//! **Owns** the map from channel id to its running [`ChannelActor`], and
//! supervises those actors (one per channel with traffic, started on first
//! use, gone when idle). It is the one place that routes to a channel: a
//! cluster of brokers would put the "which node owns this channel" decision
//! here, with nothing else changing.
//!
//! **Takes** [`DirectoryMsg`]: `Get` (start if needed) from connection
//! actors and REST handlers; `Notify` (deliver only if running) from REST
//! handlers and the retention actor.
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

use crate::durable::retention::Expired;
use crate::durable::store::Channel;
use crate::realtime::channel::{ChannelActor, ChannelArgs, ChannelMsg, ChannelServices};

/// Messages of the directory.
pub enum DirectoryMsg {
    /// The actor of a channel, started if needed (the caller has read the
    /// channel row, and authorized what it is about to do).
    Get(Channel, RpcReplyPort<Result<ActorRef<ChannelMsg>, String>>),
    /// Delivers a message to a channel's actor if one is running; a channel
    /// nobody has joined has nobody to tell.
    Notify(ChannelId, ChannelMsg),
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
                if let Some(actor) = state.channels.get(&channel.id) {
                    let _ = reply.send(Ok(actor.clone()));
                    return Ok(());
                }
                let id = channel.id;
                let args = ChannelArgs {
                    channel,
                    services: self.services.clone(),
                };
                match Actor::spawn_linked(None, ChannelActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.channels.insert(id, actor.clone());
                        let _ = reply.send(Ok(actor));
                    }
                    Err(e) => {
                        tracing::error!(channel_id = %id, error = %e, "cannot start channel actor");
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            DirectoryMsg::Notify(id, msg) => {
                if let Some(actor) = state.channels.get(&id) {
                    let _ = actor.cast(msg);
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
