//! # Cluster: several Courier nodes over NATS
//!
//! **Owns** this node's link to NATS (one `async_nats::Client`), its node
//! lease and its channel claims in JetStream key-value buckets
//! ([`lease`]), the queue that publishes in order, the forwarded requests
//! waiting for their owner's answer, and what it knows of who is online on
//! the other nodes ([`presence`]). The design, subject by subject and
//! failure by failure, is `docs/cluster.md`.
//!
//! **Takes** calls from the [`realtime`](crate::realtime) side: a channel
//! actor claims its channel ([`Cluster::claim`]), publishes its pushes
//! ([`Cluster::publish_channel`]), subscribes to the other nodes' pushes of
//! its channel, and forwards what only the owner may do
//! ([`Cluster::forward`]); the presence directory announces users and asks
//! whether they are online elsewhere. What arrives for this node (forwarded
//! requests, node events, a lapsed lease, a reconnection) comes out of the
//! [`Inbound`] receivers, which the realtime supervisor routes to its
//! actors: this module names no actor.
//!
//! **A NATS outage**: publishing stops, forwarded requests answer
//! `unavailable`, the node lease lapses after two thirds of its TTL and
//! every channel this node owned stops assigning `seq` (each owner checks
//! [`Cluster::still_owner`] before it assigns one);
//! the client reconnects by itself, and the lease and claims are taken
//! again on the next request. Nothing here is a separate actor: the
//! background tasks (lease, answers, forwards, node events, the publisher)
//! end with the [`Cluster`].

pub mod lease;
pub mod presence;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use courier_protocol::{ChannelId, UserId};
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use lease::Claim;
use lease::Leases;
use presence::RemotePresence;
use wire::{Answer, ChannelEvent, Forward, NodeEvent};

use crate::telemetry::names as m;

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nats_url: String,
    pub node_id: String,
    /// The node lease's time to live: a node that stops renewing loses its
    /// channels to the others within this long.
    pub lease_ttl: Duration,
    /// How long a forwarded request waits for its owner's answer.
    pub forward_timeout: Duration,
}

/// Why the cluster link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {0}: {1}")]
    Connect(String, String),
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("NATS is unreachable")]
    Unreachable,
}

/// What arrives for this node, for the realtime side to route.
pub struct Inbound {
    /// Forwarded requests, in arrival order, with the subject to answer on
    /// ([`Cluster::answer`]).
    pub forwards: mpsc::Receiver<(Forward, String)>,
    pub node_events: mpsc::Receiver<NodeEvent>,
    /// NATS came back: followers re-read what they may have missed.
    pub reconnected: mpsc::Receiver<()>,
    /// A node died without saying goodbye (its lease is gone): its users'
    /// connections went with it.
    pub nodes_gone: mpsc::Receiver<String>,
}

/// Capacity of the ordered publish queue; past it a push is dropped (its
/// followers fill the gap from the store) and a forward answers `unavailable`.
const PUBLISH_QUEUE: usize = 65_536;

/// One message for the publisher task.
struct Outgoing {
    subject: String,
    reply: Option<String>,
    payload: Bytes,
}

/// The handle every part of the node shares.
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    publish: mpsc::Sender<Outgoing>,
    leases: Arc<Leases>,
    presence: RemotePresence,
    /// Forwarded requests waiting for their answer, by token.
    waiting: Arc<DashMap<u64, oneshot::Sender<Answer>>>,
    next_token: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Cluster {
    /// Connects to NATS, opens (or creates) the lease buckets, takes the
    /// node lease and starts the background tasks.
    pub async fn connect(config: ClusterConfig) -> Result<(Arc<Cluster>, Inbound), ClusterError> {
        let (reconnected_tx, reconnected) = mpsc::channel(4);
        let node = config.node_id.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("courier-{node}"))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let reconnected_tx = reconnected_tx.clone();
                let node = node.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(node = %node, "connected to NATS");
                            let _ = reconnected_tx.try_send(());
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(node = %node, "disconnected from NATS");
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(node = %node, sid, "a NATS subscription fell behind; followers re-read from the store");
                            let _ = reconnected_tx.try_send(());
                        }
                        other => tracing::info!(node = %node, event = %other, "NATS"),
                    }
                }
            })
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| ClusterError::Connect(config.nats_url.clone(), e.to_string()))?;
        let js = jetstream::new(client.clone());
        let leases = Arc::new(Leases::open(&js, &client, &config).await?);
        let (forwards_tx, forwards) = mpsc::channel(4096);
        let (events_tx, node_events) = mpsc::channel(4096);
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (gone_tx, nodes_gone) = mpsc::channel(64);
        let waiting = Arc::new(DashMap::new());
        let presence = RemotePresence::default();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(publisher(client.clone(), publish_rx)));
        tasks.push(tokio::spawn(leases.clone().run()));
        tasks.push(tokio::spawn(sweep_dead_nodes(
            leases.clone(),
            presence.clone(),
            config.lease_ttl / 2,
            gone_tx,
        )));
        let answers = client
            .subscribe(format!("{}.*", wire::answer_prefix(&config.node_id)))
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        tasks.push(tokio::spawn(take_answers(answers, waiting.clone())));
        let requests = client
            .subscribe(wire::forward_subject(&config.node_id))
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        tasks.push(tokio::spawn(take_forwards(requests, forwards_tx)));
        let events = client
            .subscribe(wire::NODE_SUBJECT)
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        tasks.push(tokio::spawn(take_node_events(
            events,
            config.node_id.clone(),
            presence.clone(),
            events_tx,
        )));
        tracing::info!(node = %config.node_id, nats = %config.nats_url, lease_ms = config.lease_ttl.as_millis() as u64, "cluster mode");
        let cluster = Arc::new(Cluster {
            config,
            client,
            publish,
            leases,
            presence,
            waiting,
            next_token: AtomicU64::new(1),
            tasks,
        });
        cluster.send_node_event(&NodeEvent::Hello {
            node: cluster.node_id().to_owned(),
        });
        Ok((
            cluster,
            Inbound {
                forwards,
                node_events,
                reconnected,
                nodes_gone,
            },
        ))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Whether the NATS connection is up.
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether this node holds its lease (and so may own channels).
    pub fn lease_held(&self) -> bool {
        self.leases.valid()
    }

    /// Channels this node owns now.
    pub fn channels_owned(&self) -> usize {
        self.leases.owned_count()
    }

    /// The lease epoch: it changes each time the node lease is taken anew,
    /// and ownership claimed in an earlier epoch is void.
    pub fn epoch(&self) -> u64 {
        self.leases.epoch()
    }

    /// Whether a claim made in `epoch` still stands: the lease is held and
    /// has not lapsed since. Checked before every `seq` is assigned.
    pub fn still_owner(&self, epoch: u64) -> bool {
        self.leases.valid() && self.leases.epoch() == epoch
    }

    /// A graceful stop: see [`Leases::leave`].
    pub async fn leave(&self, drained: impl std::future::Future<Output = ()>) {
        self.leases.leave(drained).await;
    }

    /// Takes or finds the owner of `channel` (see [`Leases::claim`]).
    pub async fn claim(&self, channel: ChannelId) -> Claim {
        if !self.nats_connected() {
            return Claim::Unavailable;
        }
        // NATS going away mid-claim must not hold the channel's actor up.
        tokio::time::timeout(self.config.lease_ttl / 2, self.leases.claim(channel))
            .await
            .unwrap_or(Claim::Unavailable)
    }

    /// The channel's actor on this node stopped: its claim is given up here
    /// (the key stays, naming this node, until another node takes it).
    pub fn release(&self, channel: ChannelId) {
        self.leases.release(channel);
    }

    /// Subscribes to the channel's events from the other nodes.
    pub async fn subscribe_channel(
        &self,
        channel: ChannelId,
    ) -> Result<async_nats::Subscriber, ClusterError> {
        let sub = self
            .client
            .subscribe(wire::channel_subject(channel))
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        // The server has the subscription once a flush returns: what the
        // caller reads from the store next cannot miss a later push.
        let flushed = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            return Err(ClusterError::Unreachable);
        }
        Ok(sub)
    }

    /// Publishes a channel event, in order with everything this node
    /// publishes; never waits. Dropped when the queue is full (followers
    /// fill `new_message` gaps from the store).
    pub fn publish_channel(&self, channel: ChannelId, event: &ChannelEvent) {
        let outgoing = Outgoing {
            subject: wire::channel_subject(channel),
            reply: None,
            payload: wire::encode(event),
        };
        if self.publish.try_send(outgoing).is_err() {
            metrics::counter!(m::CLUSTER_PUSHES_DROPPED).increment(1);
        }
    }

    /// Sends a node event to every node.
    pub fn send_node_event(&self, event: &NodeEvent) {
        let outgoing = Outgoing {
            subject: wire::NODE_SUBJECT.to_owned(),
            reply: None,
            payload: wire::encode(event),
        };
        if self.publish.try_send(outgoing).is_err() {
            tracing::warn!("the cluster publish queue is full; a node event was dropped");
        }
    }

    /// Forwards a request to `owner`, in order with this node's other
    /// publishes (so a connection's sends keep their order), and returns
    /// where its answer will come: [`Answer::NotOwner`] when nobody took it
    /// or the node is not the owner, `Err` when it could not be sent. The
    /// answer is awaited with [`Cluster::await_answer`].
    pub fn forward(&self, owner: &str, forward: &Forward) -> Result<Pending, ClusterError> {
        if !self.nats_connected() {
            return Err(ClusterError::Unreachable);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(token, tx);
        let outgoing = Outgoing {
            subject: wire::forward_subject(owner),
            reply: Some(format!(
                "{}.{token}",
                wire::answer_prefix(&self.config.node_id)
            )),
            payload: wire::encode(forward),
        };
        if self.publish.try_send(outgoing).is_err() {
            self.waiting.remove(&token);
            return Err(ClusterError::Unreachable);
        }
        metrics::counter!(m::CLUSTER_FORWARDED, "op" => forward.op.name()).increment(1);
        Ok(Pending {
            token,
            rx,
            timeout: self.config.forward_timeout,
            waiting: self.waiting.clone(),
        })
    }

    /// The wall-clock deadline to put in a forward made now.
    pub fn forward_deadline_ms(&self) -> i64 {
        crate::now_ms() + self.config.forward_timeout.as_millis() as i64
    }

    /// Answers a forwarded request.
    pub fn answer(&self, reply: String, answer: &Answer) {
        let outgoing = Outgoing {
            subject: reply,
            reply: None,
            payload: wire::encode(answer),
        };
        if self.publish.try_send(outgoing).is_err() {
            tracing::warn!("the cluster publish queue is full; an answer was dropped");
        }
    }

    /// `user`'s first connection on this node opened.
    pub fn user_online(&self, user: UserId) {
        self.presence.set_local(user, true);
        self.send_node_event(&NodeEvent::Online {
            node: self.config.node_id.clone(),
            user,
        });
    }

    /// `user`'s last connection on this node closed.
    pub fn user_offline(&self, user: UserId) {
        self.presence.set_local(user, false);
        self.send_node_event(&NodeEvent::Offline {
            node: self.config.node_id.clone(),
            user,
        });
    }

    /// Whether `user` has a connection on another live node.
    pub async fn online_elsewhere(&self, user: UserId) -> bool {
        for node in self.presence.nodes_of(user) {
            // Unanswered (NATS away): the node counts as live, as it was
            // when last heard of.
            let alive =
                tokio::time::timeout(Duration::from_millis(500), self.leases.node_alive(&node))
                    .await
                    .unwrap_or(true);
            if alive {
                return true;
            }
            self.presence.forget_node(&node);
        }
        false
    }

    /// Whether `user` has a connection on this node or on a live one.
    pub fn online_anywhere(&self, user: UserId) -> bool {
        self.presence.online_anywhere(user)
    }

    /// Answers another node's hello: who is online here.
    pub fn introduce(&self) {
        for user in self.presence.local_users() {
            self.send_node_event(&NodeEvent::Online {
                node: self.config.node_id.clone(),
                user,
            });
        }
    }

    /// Revokes sessions on every other node.
    pub fn revoke_elsewhere(
        &self,
        user: UserId,
        sessions: Option<Vec<courier_protocol::SessionId>>,
    ) {
        self.send_node_event(&NodeEvent::Revoke {
            origin: self.config.node_id.clone(),
            user,
            sessions,
        });
    }
}

/// A forwarded request's answer, on its way.
pub struct Pending {
    token: u64,
    rx: oneshot::Receiver<Answer>,
    timeout: Duration,
    waiting: Arc<DashMap<u64, oneshot::Sender<Answer>>>,
}

impl Pending {
    /// The owner's answer; `None` when none came within the forward timeout.
    pub async fn answer(self) -> Option<Answer> {
        let answer = tokio::time::timeout(self.timeout, self.rx).await;
        self.waiting.remove(&self.token);
        answer.ok().and_then(Result::ok)
    }
}

/// Every `every`, reads the lease of each node some user is on; a node
/// whose lease is gone died (a graceful stop says `Offline` for each user
/// first): its entries are dropped and `gone` is told.
async fn sweep_dead_nodes(
    leases: Arc<Leases>,
    presence: RemotePresence,
    every: Duration,
    gone: mpsc::Sender<String>,
) {
    loop {
        tokio::time::sleep(every).await;
        for node in presence.nodes() {
            let alive = tokio::time::timeout(every, leases.node_alive(&node))
                .await
                .unwrap_or(true);
            if !alive {
                tracing::warn!(node = %node, "a node's lease is gone; its users are offline unless connected elsewhere");
                presence.forget_node(&node);
                if gone.send(node).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Publishes everything queued, in order.
async fn publisher(client: async_nats::Client, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        let sent = match out.reply {
            Some(reply) => {
                client
                    .publish_with_reply(out.subject, reply, out.payload)
                    .await
            }
            None => client.publish(out.subject, out.payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "a cluster publish failed");
        }
    }
}

/// Routes answers to the forwards waiting for them. A "no responders"
/// status (nobody subscribes to the owner's subject: it died) is
/// [`Answer::NotOwner`].
async fn take_answers(
    mut sub: async_nats::Subscriber,
    waiting: Arc<DashMap<u64, oneshot::Sender<Answer>>>,
) {
    while let Some(msg) = sub.next().await {
        let Some(token) = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let answer = if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Answer::NotOwner
        } else {
            match wire::decode::<Answer>(&msg.payload) {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(error = %e, "an undecodable cluster answer");
                    continue;
                }
            }
        };
        if let Some((_, tx)) = waiting.remove(&token) {
            let _ = tx.send(answer);
        }
    }
}

/// Hands forwarded requests, in arrival order, to the realtime side.
async fn take_forwards(mut sub: async_nats::Subscriber, tx: mpsc::Sender<(Forward, String)>) {
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.map(|r| r.to_string()) else {
            continue;
        };
        match wire::decode::<Forward>(&msg.payload) {
            Ok(forward) if forward.deadline_ms >= crate::now_ms() => {
                if tx.send((forward, reply)).await.is_err() {
                    return;
                }
            }
            // Past its deadline: the forwarding node answered `unavailable`.
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "an undecodable forwarded request"),
        }
    }
}

/// Keeps [`RemotePresence`] and hands revocations and hellos on.
async fn take_node_events(
    mut sub: async_nats::Subscriber,
    me: String,
    presence: RemotePresence,
    tx: mpsc::Sender<NodeEvent>,
) {
    while let Some(msg) = sub.next().await {
        let event = match wire::decode::<NodeEvent>(&msg.payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "an undecodable node event");
                continue;
            }
        };
        let from_me = match &event {
            NodeEvent::Online { node, user } => {
                if *node != me {
                    presence.set_remote(node, *user, true);
                }
                true // nothing more to do
            }
            NodeEvent::Offline { node, user } => {
                if *node != me {
                    presence.set_remote(node, *user, false);
                }
                true
            }
            NodeEvent::Hello { node } => *node == me,
            NodeEvent::Revoke { origin, .. } => *origin == me,
        };
        if !from_me && tx.send(event).await.is_err() {
            return;
        }
    }
}
