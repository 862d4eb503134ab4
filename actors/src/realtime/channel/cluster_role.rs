//! # A channel actor in a cluster: owner or follower
//!
//! Without a cluster every channel actor is [`Mode::Single`] and nothing
//! here runs. In a cluster each node with connections in a channel runs its
//! actor, in one of two modes:
//!
//! - **Owner** (the node holds the channel's claim, for the current lease
//!   epoch): the actor does everything it does on a single node, and
//!   publishes every push it fans out on `courier.ch.<channel>`, once,
//!   encoded.
//! - **Follower**: joins, replays, typing and presence are handled here as
//!   on a single node; sends, edits, deletes, receipts and reactions are
//!   forwarded to the owner (in arrival order: one queue publishes them) and
//!   the owner's answer is relayed to the client unchanged. The owner's
//!   pushes arrive from NATS and are fanned out to the local connections
//!   with the same write path; a `new_message` is taken in `seq` order: one
//!   already seen is dropped, and a gap (a push lost to a NATS outage or an
//!   owner change) is read back from the store first.
//!
//! Every actor starts as a follower with no known owner; the first request
//! that needs the owner claims the channel (and the actor becomes the owner,
//! after reading the last `seq` from the store) or learns who owns it. An
//! owner whose lease epoch has passed is a follower again before it
//! assigns anything.

use std::sync::Arc;

use courier_protocol::codec::{self, Encoding};
use courier_protocol::frames::{DeliveryStatus, ServerFrame};
use courier_protocol::UserId;
use futures_util::StreamExt;
use metrics::counter;
use ractor::ActorRef;

use super::*;
use crate::cluster::wire::{self, Answer, ChannelEvent, Forward, ForwardOp, Notice, WireSender};
use crate::cluster::{Claim, Cluster};

/// Where the actor stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// No cluster.
    Single,
    /// This node owns the channel, by a claim of this lease epoch.
    Owner { epoch: u64 },
    /// Another node owns it (`None`: not known yet, or lost).
    Follower { owner: Option<String> },
}

/// An event of this channel from another node.
pub enum RemoteEvent {
    Push {
        frame: ServerFrame,
        except: Option<UserId>,
        to_user: Option<UserId>,
        seq: u64,
    },
}

/// What to do with a request that only the owner may handle.
enum Route {
    Local,
    Forward(String),
    Unavailable,
}

/// The task that hands this channel's events from the other nodes to the
/// actor; aborted when the actor stops.
pub(super) struct RemoteFeed(tokio::task::JoinHandle<()>);

impl Drop for RemoteFeed {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes to the channel's subject and feeds the actor. Called before
/// the actor reads its last `seq`, so that nothing committed after that
/// read can be missed (what arrives twice is dropped by `seq`).
pub(super) async fn feed(
    cluster: &Arc<Cluster>,
    channel: ChannelId,
    myself: ActorRef<ChannelMsg>,
) -> Result<RemoteFeed, ActorProcessingErr> {
    let mut sub = cluster.subscribe_channel(channel).await?;
    let me = cluster.node_id().to_owned();
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let msg = match wire::decode::<ChannelEvent>(&msg.payload) {
                Ok(ChannelEvent::Push(push)) if push.origin != me => {
                    let latency = crate::now_us().saturating_sub(push.sent_us) as f64 / 1e6;
                    metrics::histogram!(m::CLUSTER_PUSH_LATENCY).record(latency);
                    match codec::decode_server(&push.frame, Encoding::MessagePack) {
                        Ok(frame) => ChannelMsg::Remote(Box::new(RemoteEvent::Push {
                            frame,
                            except: push.except,
                            to_user: push.to_user,
                            seq: push.seq,
                        })),
                        Err(e) => {
                            tracing::warn!(error = %e, "an undecodable push from another node");
                            continue;
                        }
                    }
                }
                Ok(ChannelEvent::Notice { origin, notice }) if origin != me => {
                    from_notice(origin, notice)
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "an undecodable channel event from another node");
                    continue;
                }
            };
            if myself.cast(msg).is_err() {
                return;
            }
        }
    });
    // Who is joined on the other nodes already.
    cluster.publish_channel(
        channel,
        &ChannelEvent::Notice {
            origin: cluster.node_id().to_owned(),
            notice: Notice::Sync,
        },
    );
    Ok(RemoteFeed(task))
}

/// The notice another node must apply for a REST or retention change.
pub(crate) fn notice_of(msg: &ChannelMsg) -> Option<Notice> {
    match msg {
        ChannelMsg::MemberChanged(member) => Some(Notice::MemberChanged((&**member).into())),
        ChannelMsg::MemberRemoved { user_id } => Some(Notice::MemberRemoved(*user_id)),
        ChannelMsg::Deleted => Some(Notice::Deleted),
        ChannelMsg::Expired { message_id, seq } => Some(Notice::Expired {
            message_id: *message_id,
            seq: *seq,
        }),
        ChannelMsg::Flagged(flagged) => Some(Notice::Flagged((**flagged).clone())),
        ChannelMsg::Archived { archived_at, .. } => Some(Notice::Archived {
            archived_at: *archived_at,
        }),
        _ => None,
    }
}

fn from_notice(origin: String, notice: Notice) -> ChannelMsg {
    match notice {
        change @ (Notice::Joined(_) | Notice::Left(_) | Notice::Sync | Notice::Present(_)) => {
            ChannelMsg::Roster {
                node: origin,
                change,
            }
        }
        Notice::MemberChanged(member) => ChannelMsg::MemberChanged(Box::new(member.into())),
        Notice::MemberRemoved(user_id) => ChannelMsg::MemberRemoved { user_id },
        Notice::Deleted => ChannelMsg::Deleted,
        Notice::Expired { message_id, seq } => ChannelMsg::Expired { message_id, seq },
        Notice::Flagged(flagged) => ChannelMsg::Flagged(Box::new(flagged)),
        Notice::Archived { archived_at } => ChannelMsg::Archived {
            archived_at,
            done: None,
        },
    }
}

/// A forwarded request as the owner's actor takes it; its answer goes back
/// over NATS to `reply`.
pub fn forwarded(cluster: Arc<Cluster>, op: ForwardOp, reply: String) -> ChannelMsg {
    let reply = Reply::Remote {
        cluster,
        subject: reply,
    };
    match op {
        ForwardOp::Publish {
            sender,
            text,
            client_msg_id,
            contains_phi,
            phi_found,
            reply_to,
            ttl_seconds,
            attachments,
            patient_ref,
            mentions,
        } => ChannelMsg::Publish(Box::new(PublishRequest {
            sender: Sender {
                user_id: sender.user_id,
                username: sender.username,
                role: sender.role,
                member: sender.member.map(Into::into),
                ip: sender.ip,
            },
            text,
            client_msg_id,
            contains_phi,
            phi_found,
            reply_to,
            ttl_seconds,
            attachments,
            patient_ref,
            mentions,
            reply,
            received: Instant::now(),
            joined: false,
        })),
        ForwardOp::Edit {
            editor,
            original,
            text,
            mentions,
        } => ChannelMsg::Edit(Box::new(EditRequest {
            editor,
            original,
            mentions,
            text,
            reply,
        })),
        ForwardOp::Delete {
            deleter,
            message_id,
            seq,
            reason,
        } => ChannelMsg::Delete(Box::new(DeleteRequest {
            deleter,
            message_id,
            seq,
            reason,
            reply,
        })),
        ForwardOp::MarkRead { user_id, seq } => ChannelMsg::MarkRead {
            user_id,
            seq,
            reply,
        },
        ForwardOp::React {
            message_id,
            user_id,
            reaction,
            add,
        } => ChannelMsg::React {
            message_id,
            user_id,
            reaction,
            add,
            reply,
        },
    }
}

/// The result a relayed answer stands for.
fn relayed(answer: Option<Answer>) -> Result<Accepted, ChannelError> {
    match answer {
        Some(Answer::Sent { message, duplicate }) => Ok(Accepted::Sent {
            message: *message,
            duplicate,
        }),
        Some(Answer::Done) => Ok(Accepted::Done),
        Some(Answer::Failed { code, message }) => Err(ChannelError::Relayed { code, message }),
        // Nobody owned it, or no answer in time: the client resends (with
        // its clientMsgId, which de-duplicates if the owner did commit).
        Some(Answer::NotOwner) | None => Err(ChannelError::Unavailable),
    }
}

impl ChannelState {
    /// Takes `msg` if this actor handles it here; a request only the owner
    /// may handle is forwarded (or refused) instead, and `None` returned.
    pub(super) async fn route(
        &mut self,
        myself: &ActorRef<ChannelMsg>,
        msg: ChannelMsg,
    ) -> Option<ChannelMsg> {
        if self.mode == Mode::Single || !owner_only(&msg) {
            return Some(msg);
        }
        let from_another_node = reply_of(&msg).is_some_and(|r| matches!(r, Reply::Remote { .. }));
        match self.owner_route().await {
            Route::Local => Some(msg),
            // Never forwarded twice: the forwarding node asks again.
            Route::Forward(_) if from_another_node => {
                answer(msg, Answer::NotOwner);
                None
            }
            Route::Unavailable if from_another_node => {
                answer(msg, Answer::NotOwner);
                None
            }
            Route::Forward(owner) => {
                self.forward(myself, owner, msg);
                None
            }
            Route::Unavailable => {
                fail(msg, ChannelError::Unavailable);
                None
            }
        }
    }

    /// Whether this node handles owner-only requests, or who does.
    async fn owner_route(&mut self) -> Route {
        let Some(cluster) = self.services.cluster.clone() else {
            return Route::Local;
        };
        if let Mode::Owner { epoch } = self.mode {
            if cluster.still_owner(epoch) {
                return Route::Local;
            }
            tracing::warn!(channel_id = %self.channel.id, "this node's lease lapsed; the channel's actor follows now");
            self.mode = Mode::Follower { owner: None };
        }
        if let Mode::Follower { owner: Some(owner) } = &self.mode {
            return Route::Forward(owner.clone());
        }
        match cluster.claim(self.channel.id).await {
            Claim::Owner(epoch) => match self.promote(epoch).await {
                Ok(()) => Route::Local,
                Err(why) => {
                    tracing::warn!(channel_id = %self.channel.id, error = %why, "cannot take the channel over");
                    cluster.release(self.channel.id);
                    Route::Unavailable
                }
            },
            Claim::Follower(owner) => {
                self.mode = Mode::Follower {
                    owner: Some(owner.clone()),
                };
                Route::Forward(owner)
            }
            Claim::Unavailable => Route::Unavailable,
        }
    }

    /// Becomes the owner: the store says where `seq` is (and which
    /// `clientMsgId`s are taken); what this node's connections missed of the
    /// old owner's messages goes out first.
    async fn promote(&mut self, epoch: u64) -> Result<(), String> {
        let store = self.services.store.clone();
        let last = store
            .last_seq(self.channel.id)
            .await
            .map_err(|e| e.to_string())?;
        if last > self.last_committed {
            self.fill_gap(last).await?;
        }
        let mut recent = store
            .recent_client_ids(self.channel.id, CLIENT_IDS_KEPT as u32)
            .await
            .map_err(|e| e.to_string())?;
        recent.sort_by_key(|r| r.seq);
        for r in recent {
            self.client_ids
                .insert((r.sender_id, r.client_msg_id.clone()), Dedup::Known(r));
        }
        self.last_committed = self.last_committed.max(last);
        self.last_assigned = self.last_assigned.max(self.last_committed);
        self.mode = Mode::Owner { epoch };
        tracing::info!(channel_id = %self.channel.id, seq = self.last_committed, epoch, "this node owns the channel");
        Ok(())
    }

    /// Forwards an owner-only request; its answer is relayed by a task of
    /// its own, so the next request is forwarded at once (in order).
    fn forward(&mut self, myself: &ActorRef<ChannelMsg>, owner: String, msg: ChannelMsg) {
        let Some(cluster) = self.services.cluster.clone() else {
            return;
        };
        let (op, reply) = self.to_forward(msg);
        let Some(op) = op else {
            return;
        };
        let forward = Forward {
            channel: self.channel.id,
            deadline_ms: cluster.forward_deadline_ms(),
            op,
        };
        let pending = match cluster.forward(&owner, &forward) {
            Ok(pending) => pending,
            Err(_) => {
                reply.send(Err(ChannelError::Unavailable));
                return;
            }
        };
        let myself = myself.clone();
        tokio::spawn(async move {
            let answer = pending.answer().await;
            // Gone, or silent past the timeout: ask who owns it next time.
            if matches!(answer, Some(Answer::NotOwner) | None) {
                let _ = myself.cast(ChannelMsg::OwnerUnknown);
            }
            reply.send(relayed(answer));
        });
    }

    /// The wire form of an owner-only request, and where its answer goes.
    fn to_forward(&self, msg: ChannelMsg) -> (Option<ForwardOp>, Reply) {
        match msg {
            ChannelMsg::Publish(req) => {
                let mut req = *req;
                if req.joined {
                    req.sender.member = self.members.get(&req.sender.user_id).cloned();
                }
                let op = ForwardOp::Publish {
                    sender: WireSender {
                        user_id: req.sender.user_id,
                        username: req.sender.username,
                        role: req.sender.role,
                        member: req.sender.member.as_ref().map(Into::into),
                        ip: req.sender.ip,
                    },
                    text: req.text,
                    client_msg_id: req.client_msg_id,
                    contains_phi: req.contains_phi,
                    phi_found: req.phi_found,
                    reply_to: req.reply_to,
                    ttl_seconds: req.ttl_seconds,
                    attachments: req.attachments,
                    patient_ref: req.patient_ref,
                    mentions: req.mentions,
                };
                (Some(op), req.reply)
            }
            ChannelMsg::Edit(req) => {
                let EditRequest {
                    editor,
                    original,
                    mentions,
                    text,
                    reply,
                } = *req;
                (
                    Some(ForwardOp::Edit {
                        editor,
                        original,
                        text,
                        mentions,
                    }),
                    reply,
                )
            }
            ChannelMsg::Delete(req) => {
                let DeleteRequest {
                    deleter,
                    message_id,
                    seq,
                    reason,
                    reply,
                } = *req;
                (
                    Some(ForwardOp::Delete {
                        deleter,
                        message_id,
                        seq,
                        reason,
                    }),
                    reply,
                )
            }
            ChannelMsg::MarkRead {
                user_id,
                seq,
                reply,
            } => (Some(ForwardOp::MarkRead { user_id, seq }), reply),
            ChannelMsg::React {
                message_id,
                user_id,
                reaction,
                add,
                reply,
            } => (
                Some(ForwardOp::React {
                    message_id,
                    user_id,
                    reaction,
                    add,
                }),
                reply,
            ),
            _ => (None, Reply::None),
        }
    }

    /// Fans a push out here and, in a cluster, to the other nodes.
    pub(super) fn broadcast(&mut self, frame: &ServerFrame, except: Option<UserId>) -> u64 {
        let delivered = self.subscribers.fan_out(frame, except);
        self.publish_push(frame, except, None);
        delivered
    }

    /// Queues a push to `user`'s live connections here and elsewhere.
    pub(super) fn broadcast_to_user(&mut self, frame: &ServerFrame, user: UserId) {
        self.subscribers.to_user(frame, user);
        self.publish_push(frame, None, Some(user));
    }

    pub(super) fn publish_push(
        &self,
        frame: &ServerFrame,
        except: Option<UserId>,
        to_user: Option<UserId>,
    ) {
        let Some(cluster) = &self.services.cluster else {
            return;
        };
        let seq = match frame {
            ServerFrame::NewMessage(m) => m.data.seq,
            _ => 0,
        };
        let push = wire::Push {
            origin: cluster.node_id().to_owned(),
            sent_us: crate::now_us(),
            except,
            to_user,
            seq,
            frame: codec::encode_server(frame, Encoding::MessagePack),
        };
        cluster.publish_channel(self.channel.id, &ChannelEvent::Push(push));
    }

    /// A push from another node: fanned out here only. A `new_message` goes
    /// in `seq` order: one seen already is dropped, and a gap before it is
    /// read from the store first.
    pub(super) async fn remote(&mut self, event: RemoteEvent) {
        let RemoteEvent::Push {
            frame,
            except,
            to_user,
            seq,
        } = event;
        if seq == 0 {
            if let ServerFrame::Presence(p) = &frame {
                // Offline everywhere: joined nowhere either (also when the
                // node that had them died without saying `Left`).
                if p.status == courier_protocol::frames::PresenceStatus::Offline {
                    self.remote_users.remove(&p.user_id);
                }
            }
            match to_user {
                Some(user) => self.subscribers.to_user(&frame, user),
                None => {
                    self.subscribers.fan_out(&frame, except);
                }
            }
            return;
        }
        if seq <= self.last_committed {
            return;
        }
        if seq > self.last_committed + 1 {
            if let Err(why) = self.fill_gap(seq - 1).await {
                self.lose_connections(&why);
                return;
            }
        }
        if let ServerFrame::NewMessage(m) = &frame {
            self.recent_ids.insert(m.data.id);
            self.take_message(&frame, m.data.sender_id, seq);
        }
    }

    /// A committed message reaches this node's connections.
    pub(super) fn take_message(&mut self, frame: &ServerFrame, sender: UserId, seq: u64) {
        self.last_committed = self.last_committed.max(seq);
        self.last_assigned = self.last_assigned.max(seq);
        let delivered = self.subscribers.fan_out(frame, None);
        counter!(m::MESSAGES_DELIVERED).increment(delivered);
        if self.channel.kind == ChannelKind::Direct {
            let other = self
                .subscribers
                .by_conn
                .values()
                .find_map(|s| (s.live && s.user_id != sender).then_some(s.user_id));
            if let Some(other) = other {
                let status =
                    out::message_status(self.channel.id, other, seq, DeliveryStatus::Delivered);
                self.broadcast_to_user(&status, sender);
            }
        }
    }

    /// Reads the messages after `last_committed` up to `through` from the
    /// store and fans them out, in order.
    pub(super) async fn fill_gap(&mut self, through: u64) -> Result<(), String> {
        while self.last_committed < through {
            let (messages, next) = page_after(
                &self.services,
                self.channel.id,
                self.last_committed,
                through,
            )
            .await?;
            for message in messages {
                let (sender, seq) = (message.sender_id, message.seq);
                counter!(m::CLUSTER_GAP_FILLS).increment(1);
                self.take_message(&out::new_message(message), sender, seq);
            }
            // Seqs the store does not have were never committed (refused writes).
            self.last_committed = self.last_committed.max(next);
            self.last_assigned = self.last_assigned.max(next);
        }
        Ok(())
    }

    /// After NATS came back (or before a join that asks for more than this
    /// follower has seen): what the owner committed meanwhile.
    pub(super) async fn resync(&mut self) {
        if matches!(self.mode, Mode::Single | Mode::Owner { .. }) {
            return;
        }
        let last = match self.services.store.last_seq(self.channel.id).await {
            Ok(last) => last,
            Err(e) => {
                self.lose_connections(&e.to_string());
                return;
            }
        };
        if last > self.last_committed {
            if let Err(why) = self.fill_gap(last).await {
                self.lose_connections(&why);
            }
        }
    }

    /// The store could not say what was missed: every connection here is
    /// closed with 1011, so that it reconnects and recovers by `sinceSeq`.
    fn lose_connections(&mut self, why: &str) {
        tracing::error!(channel_id = %self.channel.id, error = %why, "cannot read missed messages; closing this channel's connections");
        let conns: Vec<ConnId> = self.subscribers.by_conn.keys().copied().collect();
        for conn in conns {
            if let Some(sub) = self.subscribers.remove(conn) {
                sub.outbound.close_now(1011);
            }
        }
    }

    /// Tells the other nodes who joined or left here.
    pub(super) fn announce_roster(&self, notice: Notice) {
        if let Some(cluster) = &self.services.cluster {
            let event = ChannelEvent::Notice {
                origin: cluster.node_id().to_owned(),
                notice,
            };
            cluster.publish_channel(self.channel.id, &event);
        }
    }

    /// Who is joined on another node.
    pub(super) fn roster(&mut self, node: String, change: Notice) {
        match change {
            Notice::Joined(user) => {
                self.remote_users.entry(user).or_default().insert(node);
            }
            Notice::Left(user) => self.remote_left(user, &node),
            Notice::Present(users) => {
                for user in users {
                    self.remote_users
                        .entry(user)
                        .or_default()
                        .insert(node.clone());
                }
            }
            Notice::Sync => {
                let users = self.subscribers.online();
                if !users.is_empty() {
                    self.announce_roster(Notice::Present(users));
                }
            }
            _ => {}
        }
    }

    /// Whether a join asks for more than this follower has seen.
    pub(super) fn lags(&self, req: &JoinRequest) -> bool {
        !matches!(self.mode, Mode::Single) && req.since_seq.is_some_and(|s| s > self.last_committed)
    }

    /// A node died: who was joined only there left, and is `offline` unless
    /// connected somewhere else.
    pub(super) fn node_gone(&mut self, node: &str) {
        let users: Vec<UserId> = self
            .remote_users
            .iter()
            .filter(|(_, nodes)| nodes.contains(node))
            .map(|(user, _)| *user)
            .collect();
        for user in users {
            self.remote_left(user, node);
            let elsewhere = self.remote_users.contains_key(&user)
                || self.subscribers.has_user(user)
                || self
                    .services
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.online_anywhere(user));
            if !elsewhere {
                let frame = out::presence(
                    user,
                    courier_protocol::frames::PresenceStatus::Offline,
                    crate::now_ms(),
                );
                // Every live node says it to its own connections.
                self.subscribers.fan_out(&frame, Some(user));
            }
        }
    }

    fn remote_left(&mut self, user: UserId, node: &str) {
        if let Some(nodes) = self.remote_users.get_mut(&user) {
            nodes.remove(node);
            if nodes.is_empty() {
                self.remote_users.remove(&user);
            }
        }
    }

    /// The owner this actor forwarded to answered that it is not the owner.
    pub(super) fn owner_unknown(&mut self) {
        if matches!(self.mode, Mode::Follower { .. }) {
            self.mode = Mode::Follower { owner: None };
        }
    }
}

/// Requests that only the owner handles.
fn owner_only(msg: &ChannelMsg) -> bool {
    matches!(
        msg,
        ChannelMsg::Publish(_)
            | ChannelMsg::Edit(_)
            | ChannelMsg::Delete(_)
            | ChannelMsg::MarkRead { .. }
            | ChannelMsg::React { .. }
    )
}

fn reply_of(msg: &ChannelMsg) -> Option<&Reply> {
    match msg {
        ChannelMsg::Publish(req) => Some(&req.reply),
        ChannelMsg::Edit(req) => Some(&req.reply),
        ChannelMsg::Delete(req) => Some(&req.reply),
        ChannelMsg::MarkRead { reply, .. } | ChannelMsg::React { reply, .. } => Some(reply),
        _ => None,
    }
}

fn into_reply(msg: ChannelMsg) -> Option<Reply> {
    match msg {
        ChannelMsg::Publish(req) => Some(req.reply),
        ChannelMsg::Edit(req) => Some(req.reply),
        ChannelMsg::Delete(req) => Some(req.reply),
        ChannelMsg::MarkRead { reply, .. } | ChannelMsg::React { reply, .. } => Some(reply),
        _ => None,
    }
}

fn fail(msg: ChannelMsg, err: ChannelError) {
    if let Some(reply) = into_reply(msg) {
        reply.send(Err(err));
    }
}

fn answer(msg: ChannelMsg, answer: Answer) {
    if let Some(Reply::Remote { cluster, subject }) = into_reply(msg) {
        cluster.answer(subject, &answer);
    }
}
