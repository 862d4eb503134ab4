//! # Leases: which node may assign a channel's `seq`
//!
//! Two JetStream key-value buckets, both with compare-and-set by revision:
//!
//! - `courier_nodes`, whose entries expire after the lease TTL: `node.<id>`
//!   is this node's lease, created if absent and renewed every third of the
//!   TTL with update-with-expected-revision. The node counts it valid for
//!   two thirds of the TTL after it *sent* the last successful renewal, so
//!   it stops owning a third of the TTL before any other node can see the
//!   entry gone.
//! - `courier_channels`, without expiry: `ch.<channel>` names the node that
//!   owns the channel. A node claims a channel by creating the key, by
//!   updating it (expected revision) from a node whose lease is gone, or,
//!   after a lapse of its own lease, from itself: every claim is a
//!   successful write, so two nodes cannot both believe a claim stands.
//!
//! A claim holds for the lease **epoch** it was made in; the epoch moves
//! each time the node lease is taken anew, so nothing claimed before a lapse
//! survives it. The store stays the last fence: `(channel_id, seq)` is
//! unique, and a new owner reads the last `seq` from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use courier_protocol::ChannelId;
use dashmap::DashMap;
use tokio::sync::Mutex;

use super::{ClusterConfig, ClusterError};
use crate::telemetry::names as m;

const NODES_BUCKET: &str = "courier_nodes";
const CHANNELS_BUCKET: &str = "courier_channels";

/// Who owns a channel, as a claim found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This node, for the lease epoch given.
    Owner(u64),
    /// Another live node.
    Follower(String),
    /// NATS cannot be asked, or this node holds no lease.
    Unavailable,
}

/// The node lease and the channel claims.
pub struct Leases {
    nodes: kv::Store,
    channels: kv::Store,
    node: String,
    ttl: Duration,
    base: Instant,
    /// Nanoseconds after `base` until which the lease counts as held.
    valid_until: AtomicU64,
    epoch: AtomicU64,
    /// The node entry's revision while held.
    revision: Mutex<Option<u64>>,
    /// Channels claimed, with the epoch of the claim.
    owned: DashMap<ChannelId, u64>,
    /// Set by [`Leases::leave`]: the lease is not taken again.
    leaving: AtomicBool,
}

impl Leases {
    /// Opens the buckets (creating them on first use) and takes the node
    /// lease, waiting out an entry of this node id's previous life (at most
    /// one TTL).
    pub(super) async fn open(
        js: &jetstream::Context,
        client: &async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<Leases, ClusterError> {
        let nodes = bucket(js, client, NODES_BUCKET, config.lease_ttl).await?;
        let channels = bucket(js, client, CHANNELS_BUCKET, Duration::ZERO).await?;
        let leases = Leases {
            nodes,
            channels,
            node: config.node_id.clone(),
            ttl: config.lease_ttl,
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            revision: Mutex::new(None),
            owned: DashMap::new(),
            leaving: AtomicBool::new(false),
        };
        let deadline = Instant::now() + config.lease_ttl * 2 + Duration::from_secs(1);
        while !leases.renew().await && Instant::now() < deadline {
            tokio::time::sleep(config.lease_ttl / 6).await;
        }
        if !leases.valid() {
            tracing::warn!(node = %leases.node, "the node lease is not held yet (an entry of this node id has not expired); retrying");
        }
        Ok(leases)
    }

    fn key(&self) -> String {
        format!("node.{}", self.node)
    }

    /// Whether the node lease counts as held now.
    pub fn valid(&self) -> bool {
        self.base.elapsed().as_nanos() < u128::from(self.valid_until.load(Ordering::SeqCst))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn owned_count(&self) -> usize {
        self.owned.len()
    }

    /// Takes or renews the node lease once; whether it is held after.
    async fn renew(&self) -> bool {
        let sent = self.base.elapsed();
        let mut revision = self.revision.lock().await;
        let value = Bytes::from(self.node.clone());
        let wait = self.ttl / 3;
        let outcome = match *revision {
            None => tokio::time::timeout(wait, self.nodes.create(self.key(), value))
                .await
                .map(|r| r.map_err(|e| e.to_string())),
            Some(rev) => tokio::time::timeout(wait, self.nodes.update(self.key(), value, rev))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                            // The entry expired (or was replaced): the lease is gone.
                            "lost".to_owned()
                        } else {
                            e.to_string()
                        }
                    })
                }),
        };
        match outcome {
            Ok(Ok(new_revision)) => {
                if revision.is_none() {
                    let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                    tracing::info!(node = %self.node, epoch, "node lease taken");
                }
                *revision = Some(new_revision);
                let until = sent + self.ttl - self.ttl / 3;
                self.valid_until
                    .store(until.as_nanos() as u64, Ordering::SeqCst);
                true
            }
            Ok(Err(why)) if why == "lost" => {
                drop(revision);
                self.lapse("the node lease entry is gone").await;
                false
            }
            Ok(Err(why)) => {
                tracing::debug!(node = %self.node, error = %why, "node lease not renewed");
                self.valid()
            }
            Err(_) => self.valid(),
        }
    }

    /// Gives up the lease and every claim.
    async fn lapse(&self, why: &str) {
        let mut revision = self.revision.lock().await;
        if revision.take().is_some() {
            self.valid_until.store(0, Ordering::SeqCst);
            self.epoch.fetch_add(1, Ordering::SeqCst);
            let lost = self.owned.len();
            self.owned.clear();
            metrics::gauge!(m::CLUSTER_LEASES_HELD).set(0.0);
            metrics::counter!(m::CLUSTER_LEASE_CHANGES, "change" => "lost").increment(lost as u64);
            tracing::warn!(node = %self.node, channels = lost, why, "node lease lapsed; this node owns no channel now");
        }
    }

    /// Renews the lease every third of the TTL; gives it up when it could
    /// not for two thirds of it.
    pub(super) async fn run(self: std::sync::Arc<Self>) {
        let every = self.ttl / 3;
        while !self.leaving.load(Ordering::SeqCst) {
            let started = Instant::now();
            let held = self.renew().await;
            if !held && self.revision.lock().await.is_some() {
                self.lapse("not renewed in time").await;
            }
            let pause = every.saturating_sub(started.elapsed());
            tokio::time::sleep(pause.max(Duration::from_millis(10))).await;
        }
    }

    /// A graceful stop: this node owns nothing from now on (its writes in
    /// flight still commit), and once `drained` resolves its lease entry is
    /// deleted, so that the other nodes take its channels over at once
    /// instead of after the TTL.
    pub async fn leave(&self, drained: impl std::future::Future<Output = ()>) {
        self.leaving.store(true, Ordering::SeqCst);
        self.lapse("this node is stopping").await;
        drained.await;
        let delete = self.nodes.delete(self.key());
        match tokio::time::timeout(Duration::from_secs(1), delete).await {
            Ok(Ok(())) => tracing::info!(node = %self.node, "node lease given up"),
            _ => tracing::warn!(node = %self.node, "node lease not deleted; it expires by itself"),
        }
    }

    /// Whether `node` holds its lease (an error reading it counts as yes:
    /// never take a channel over on a guess).
    pub async fn node_alive(&self, node: &str) -> bool {
        !matches!(self.nodes.get(format!("node.{node}")).await, Ok(None))
    }

    /// Claims `channel`, or names its live owner.
    pub async fn claim(&self, channel: ChannelId) -> Claim {
        let epoch = self.epoch();
        if !self.valid() {
            return Claim::Unavailable;
        }
        if self.owned.get(&channel).is_some_and(|e| *e == epoch) {
            return Claim::Owner(epoch);
        }
        let key = format!("ch.{channel}");
        let me = Bytes::from(self.node.clone());
        for _ in 0..4 {
            let entry = match self.channels.entry(key.clone()).await {
                Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a channel's lease");
                    return Claim::Unavailable;
                }
            };
            let written = match entry {
                None => match self.channels.create(&key, me.clone()).await {
                    Ok(_) => "acquired",
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim a channel");
                        return Claim::Unavailable;
                    }
                },
                Some(entry) => {
                    let holder = String::from_utf8_lossy(&entry.value).into_owned();
                    let change = if holder == self.node {
                        "renewed"
                    } else if self.node_alive(&holder).await {
                        return Claim::Follower(holder);
                    } else {
                        "taken_over"
                    };
                    match self.channels.update(&key, me.clone(), entry.revision).await {
                        Ok(_) => change,
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot claim a channel");
                            return Claim::Unavailable;
                        }
                    }
                }
            };
            if !self.valid() || self.epoch() != epoch {
                return Claim::Unavailable;
            }
            self.owned.insert(channel, epoch);
            metrics::gauge!(m::CLUSTER_LEASES_HELD).set(self.owned.len() as f64);
            metrics::counter!(m::CLUSTER_LEASE_CHANGES, "change" => written).increment(1);
            tracing::debug!(channel_id = %channel, change = written, "channel claimed");
            return Claim::Owner(epoch);
        }
        Claim::Unavailable
    }

    /// Forgets the claim of a channel whose actor stopped here.
    pub fn release(&self, channel: ChannelId) {
        if self.owned.remove(&channel).is_some() {
            metrics::gauge!(m::CLUSTER_LEASES_HELD).set(self.owned.len() as f64);
        }
    }
}

/// Opens a bucket, creating it when it does not exist.
///
/// The bucket's stream is created with a plain JetStream API request, in
/// the configuration a key-value bucket has (one message per subject,
/// roll-ups, direct gets): `async_nats`'s own `create_key_value` sends the
/// fields of newer servers, which the 2.9 server refuses.
async fn bucket(
    js: &jetstream::Context,
    client: &async_nats::Client,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let stream = format!("KV_{name}");
    let config = serde_json::json!({
        "name": stream,
        "subjects": [format!("$KV.{name}.>")],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": max_age.as_nanos() as u64,
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "discard": "new",
        "storage": "file",
        "num_replicas": 1,
        "duplicate_window": if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        }
        .as_nanos() as u64,
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "allow_direct": true,
    });
    let answer = client
        .request(
            format!("$JS.API.STREAM.CREATE.{stream}"),
            config.to_string().into(),
        )
        .await
        .map_err(|e| ClusterError::JetStream(format!("bucket {name}: {e}")))?;
    let reply: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    // 10058: created meanwhile by another node.
    if let Some(error) = reply.get("error") {
        if error.get("err_code").and_then(|c| c.as_u64()) != Some(10058) {
            return Err(ClusterError::JetStream(format!(
                "bucket {name}: JetStream refused to create it: {error}"
            )));
        }
    }
    js.get_key_value(name)
        .await
        .map_err(|e| ClusterError::JetStream(format!("bucket {name}: {e}")))
}
