//! # Realtime: the root of the actor tree and the handles the edge uses
//!
//! [`Realtime::start`] spawns the root supervisor and, under it, the
//! persistence, audit and retention actors and the channel and presence
//! directories. The returned [`Realtime`] is what the HTTP/WebSocket edge
//! and REST handlers hold: handles to those actors, the store, the cipher,
//! and the few reads that both WebSocket and REST paths share (channel
//! access checks, history pages, `open_direct`), so the two paths cannot
//! drift apart.
//!
//! The root supervisor overrides ractor's default (which would stop it when
//! any child ends): connection actors come and go; a crash of a core actor
//! is logged and marks the server unready.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_protocol::codec::Encoding;
use courier_protocol::frames::{MessageFlagged, MessageView};
use courier_protocol::{ChannelId, MessageId, UserId};
use futures_util::StreamExt;
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::audit::actor::{AuditActor, AuditConfig, AuditHandle, AuditMsg};
use crate::audit::chain::PendingAudit;
use crate::cluster::wire::NodeEvent;
use crate::cluster::{Cluster, Inbound};
use crate::compliance::break_glass::{BreakGlassAccess, BreakGlassRegistry, BreakGlassSweeper};
use crate::crypto::MessageCipher;
use crate::durable::history;
use crate::durable::history::Flags;
use crate::durable::persistence::{
    PersistError, PersistenceActor, PersistenceConfig, PersistenceHandle, PersistenceMsg,
};
use crate::durable::retention::{RetentionActor, RetentionConfig, RetentionMsg};
use crate::durable::store::{
    Channel, ChannelKind, ChannelRole, DynStore, Flag, Member, MessageRow, StoreError, WriteOp,
};
use crate::notify::NotifierHandle;
use crate::policy::authz::{self, Action, Denied, Principal, RolePermissions};
use crate::policy::identity::{Authenticator, Identity};
use crate::policy::phi::PhiDetector;
use crate::realtime::channel::{
    ChannelMsg, ChannelServices, DeleteRequest, EditRequest, PublishRequest, Reply, Sender,
};
use crate::realtime::channel_directory::{ChannelDirectory, DirectoryMsg};
use crate::realtime::connection::{send_quota, ConnectionActor, ConnectionArgs, Peer, WsWrite};
use crate::realtime::outbound::{self, ConnId, ControlWriter, QueueLimits, SocketWrite, TcpWrite};
use crate::realtime::presence::{ForUser, PresenceDirectory, PresenceMsg};

/// Per-connection limits (PROTOCOL.md section 1 and the heartbeat).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub send_per_minute: u32,
    pub outbound_queue: usize,
    /// Bytes a connection's queue may hold unwritten.
    pub outbound_queue_bytes: usize,
    pub auth_timeout: Duration,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
}

/// Phases of a graceful shutdown, seen by every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownPhase {
    Running,
    /// `system_event` `shutdown` goes out; queued writes are being flushed.
    Draining,
    /// Everything is flushed: close with 1001.
    Closing,
}

/// Everything [`Realtime::start`] needs.
pub struct RealtimeDeps {
    pub store: DynStore,
    /// Attachments: the sweeper purges and rescans them.
    pub files: Arc<crate::files::Files>,
    pub cipher: Arc<MessageCipher>,
    pub phi: Arc<PhiDetector>,
    pub authenticator: Arc<dyn Authenticator>,
    pub limits: Limits,
    pub persistence: PersistenceConfig,
    pub audit: AuditConfig,
    pub retention: RetentionConfig,
    pub recovery_limit: u32,
    /// The most missed messages a rejoin replays; past it the join answers
    /// `recovered: false` and replays nothing (0: no limit).
    pub recovery_max_replay: u64,
    pub typing_expiry: Duration,
    /// How long a wide channel's write to a connection may wait for the
    /// channel's next messages (see [`FlushLine`](crate::realtime::flush_line)).
    pub fanout_coalesce: Duration,
    /// How often a channel writes the pushes its long-lived connections
    /// were sent to the audit (`message.delivered`), besides on leave.
    pub delivery_flush: Duration,
    /// The cluster link, in cluster mode, with what it receives for this node.
    pub cluster: Option<(Arc<Cluster>, Inbound)>,
    /// How often the break-glass sweeper ends grants past their expiry
    /// (`break_glass_sweep_ms`).
    pub break_glass_sweep: Duration,
}

/// Why a channel action was refused; mapped to codes at each edge.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Denied(Denied),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("service unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for AccessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AccessError::NotFound("not found"),
            StoreError::Conflict(_) => AccessError::Conflict("conflict"),
            StoreError::Unavailable(_) | StoreError::Tls(_) => AccessError::Unavailable,
            StoreError::Corrupt(_) | StoreError::Database(_) => {
                tracing::error!(error = %e, "store error");
                AccessError::Internal
            }
        }
    }
}

impl From<PersistError> for AccessError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Full | PersistError::StoreDown | PersistError::Closed => {
                AccessError::Unavailable
            }
            PersistError::Rejected(_) => AccessError::Internal,
        }
    }
}

impl From<history::HistoryError> for AccessError {
    fn from(_: history::HistoryError) -> Self {
        AccessError::Internal
    }
}

/// The handles of a running realtime side. Shared as `Arc<Realtime>`.
pub struct Realtime {
    pub store: DynStore,
    pub cipher: Arc<MessageCipher>,
    pub phi: Arc<PhiDetector>,
    pub persistence: PersistenceHandle,
    pub audit: AuditHandle,
    pub channels: ActorRef<DirectoryMsg>,
    pub presence: ActorRef<ForUser>,
    pub permissions: Arc<RolePermissions>,
    pub authenticator: Arc<dyn Authenticator>,
    pub limits: Limits,
    /// The retention actor: `RetentionMsg::Run` runs it now (tests,
    /// operators) and answers with its report.
    pub retention: ActorRef<RetentionMsg>,
    /// The cluster link, in cluster mode.
    pub cluster: Option<Arc<Cluster>>,
    /// Break-glass grants in force (loaded from the store at start): reads
    /// under one are marked `details.breakGlass` in the audit.
    pub break_glass: BreakGlassRegistry,
    /// Opens and ends break-glass grants (the REST edge and the sweeper).
    pub break_glass_access: BreakGlassAccess,
    /// The notifier: `notification` pushes for mentions, direct messages
    /// and announcements ([`crate::notify`]).
    pub notifier: NotifierHandle,
    /// Connections see shutdown phases here.
    pub shutdown: watch::Receiver<ShutdownPhase>,
    shutdown_tx: watch::Sender<ShutdownPhase>,
    /// The per-user send limit; replaced whole by [`Realtime::set_send_per_minute`].
    send_limiter: arc_swap::ArcSwap<DefaultKeyedRateLimiter<UserId>>,
    root: ActorRef<RootMsg>,
    persistence_actor: ActorRef<PersistenceMsg>,
    audit_actor: ActorRef<AuditMsg>,
    core_failed: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

/// The root supervisor takes no messages of its own.
pub enum RootMsg {}

/// The root supervisor.
struct Root {
    core_failed: Arc<AtomicBool>,
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RootMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            let is_core = cell.get_name().is_some();
            if is_core {
                tracing::error!(actor = ?cell.get_name(), error = %err, "core actor crashed; the server is not ready");
                self.core_failed.store(true, Ordering::SeqCst);
            } else {
                tracing::warn!(error = %err, "connection actor crashed; its socket is closed");
            }
        }
        Ok(())
    }
}

/// A unique suffix for core actor names, so several servers in one process
/// (tests) do not collide in ractor's registry.
fn core_name(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

impl Realtime {
    /// Starts the actor tree.
    pub async fn start(deps: RealtimeDeps) -> Result<Arc<Realtime>, ActorProcessingErr> {
        let core_failed = Arc::new(AtomicBool::new(false));
        let (root, _) = Actor::spawn(
            None,
            Root {
                core_failed: core_failed.clone(),
            },
            (),
        )
        .await?;
        let permissions = Arc::new(RolePermissions::load(&*deps.store).await?);
        let (persistence_actor, persistence) =
            PersistenceActor::spawn_linked(root.get_cell(), deps.store.clone(), deps.persistence)
                .await?;
        let (audit_actor, audit) =
            AuditActor::spawn_linked(root.get_cell(), deps.store.clone(), deps.audit).await?;
        let (shutdown_tx, shutdown) = watch::channel(ShutdownPhase::Running);
        let (cluster, inbound) = match deps.cluster {
            Some((cluster, inbound)) => (Some(cluster), Some(inbound)),
            None => (None, None),
        };
        let (presence, _) = Actor::spawn_linked(
            Some(core_name("presence")),
            PresenceDirectory {
                cluster: cluster.clone(),
            },
            (),
            root.get_cell(),
        )
        .await?;
        let notifier = NotifierHandle::spawn_linked(
            core_name("notifier"),
            root.get_cell(),
            deps.store.clone(),
            presence.clone(),
        )
        .await?;
        let break_glass = BreakGlassRegistry::new();
        let services = Arc::new(ChannelServices {
            store: deps.store.clone(),
            cipher: deps.cipher.clone(),
            persistence: persistence.clone(),
            audit: audit.clone(),
            permissions: permissions.clone(),
            recovery_limit: deps.recovery_limit,
            recovery_max_replay: deps.recovery_max_replay,
            typing_expiry: deps.typing_expiry,
            fanout_coalesce: deps.fanout_coalesce,
            idle_stop: Duration::from_secs(60),
            delivery_flush: deps.delivery_flush,
            shutdown: shutdown.clone(),
            cluster: cluster.clone(),
            break_glass: break_glass.clone(),
            notifier: notifier.clone(),
        });
        let (channels, _) = Actor::spawn_linked(
            Some(core_name("channels")),
            ChannelDirectory { services },
            (),
            root.get_cell(),
        )
        .await?;
        let (retention, _) = Actor::spawn_linked(
            Some(core_name("retention")),
            RetentionActor,
            (
                deps.retention,
                deps.store.clone(),
                deps.cipher.clone(),
                persistence.clone(),
                audit.clone(),
                channels.get_derived(),
            ),
            root.get_cell(),
        )
        .await?;
        Actor::spawn_linked(
            Some(core_name("file-sweeper")),
            crate::files::sweeper::FileSweeper,
            (deps.files.clone(), audit.clone()),
            root.get_cell(),
        )
        .await?;
        let break_glass_access = BreakGlassAccess {
            store: deps.store.clone(),
            cipher: deps.cipher.clone(),
            persistence: persistence.clone(),
            audit: audit.clone(),
            channels: channels.clone(),
            presence: presence.clone(),
            permissions: permissions.clone(),
            registry: break_glass.clone(),
        };
        Actor::spawn_linked(
            Some(core_name("break-glass")),
            BreakGlassSweeper,
            (break_glass_access.clone(), deps.break_glass_sweep),
            root.get_cell(),
        )
        .await?;
        if let (Some(cluster), Some(inbound)) = (&cluster, inbound) {
            route_inbound(cluster.clone(), inbound, channels.clone(), presence.clone());
        }
        Ok(Arc::new(Realtime {
            retention,
            notifier,
            cluster,
            break_glass,
            break_glass_access,
            send_limiter: arc_swap::ArcSwap::from_pointee(RateLimiter::keyed(send_quota(
                deps.limits.send_per_minute,
            ))),
            store: deps.store,
            cipher: deps.cipher,
            phi: deps.phi,
            persistence,
            audit,
            channels,
            presence,
            permissions,
            authenticator: deps.authenticator,
            limits: deps.limits,
            shutdown,
            shutdown_tx,
            root,
            persistence_actor,
            audit_actor,
            core_failed,
            connections: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// Whether every core actor is alive.
    pub fn healthy(&self) -> bool {
        !self.core_failed.load(Ordering::SeqCst)
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Starts the actor of a new, upgraded WebSocket from its two halves:
    /// tungstenite reads `read` (with `config`'s limits); the connection's
    /// writer writes finished frames to `write`, and so do fan-outs' flushes
    /// while the writer is idle when it is plain TCP.
    pub async fn spawn_connection<R>(
        self: &Arc<Self>,
        read: R,
        write: SocketWrite,
        config: WebSocketConfig,
        peer: Peer,
    ) -> Result<(), ractor::SpawnErr>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (outbound, receiver) = outbound::outbound(
            ConnId::next(),
            QueueLimits {
                frames: self.limits.outbound_queue,
                bytes: self.limits.outbound_queue_bytes,
            },
            Encoding::MessagePack,
        );
        let write: WsWrite = match write {
            SocketWrite::Tcp(half) => {
                let socket = TcpWrite::new(half);
                outbound.write_directly(socket.clone());
                Box::pin(socket)
            }
            SocketWrite::Stream(write) => write,
        };
        let stream = WebSocketStream::from_raw_socket(
            ControlWriter::new(read, outbound.clone()),
            Role::Server,
            Some(config),
        )
        .await;
        let args = ConnectionArgs {
            realtime: self.clone(),
            stream: stream.boxed(),
            write,
            outbound,
            receiver,
            peer,
            live: ConnectionCount(self.connections.clone()).acquire(),
        };
        Actor::spawn_linked(None, ConnectionActor, args, self.root.get_cell()).await?;
        Ok(())
    }

    /// Reads a channel and the caller's membership, and authorizes `action`
    /// on them. A channel the caller may not see is `forbidden`, whether or
    /// not it exists, except that a missing one is `not_found`.
    pub async fn channel_access<'p>(
        &self,
        who: Principal<'p>,
        channel_id: ChannelId,
        action: impl for<'a> FnOnce(&'a Channel, Option<&'a Member>) -> Action<'a>,
    ) -> Result<(Channel, Option<Member>), AccessError> {
        let (channel, member) = self
            .store
            .get_channel_member(channel_id, who.user_id)
            .await?
            .ok_or(AccessError::NotFound("no such channel"))?;
        authz::decide(who, action(&channel, member.as_ref())).map_err(AccessError::Denied)?;
        Ok((channel, member))
    }

    /// Makes a user a member of a public or broadcast channel they joined.
    pub async fn become_member(
        &self,
        channel: &Channel,
        user: UserId,
    ) -> Result<Member, AccessError> {
        let member = Member {
            channel_id: channel.id,
            user_id: user,
            role: ChannelRole::Member,
            joined_at: crate::now_ms(),
            last_read_seq: 0,
            last_delivered_seq: 0,
        };
        self.persistence
            .write(WriteOp::UpsertMember(member.clone()))
            .await?;
        // Durable before the join answers: a membership change is a
        // security event.
        self.audit
            .append(PendingAudit::new(
                Some(user),
                None,
                "channel.member_add",
                serde_json::json!({"channelId": channel.id, "userId": user, "role": "member", "via": "join"}),
            ))
            .await
            .map_err(|_| AccessError::Unavailable)?;
        Ok(member)
    }

    /// The actor of a channel, started if needed.
    pub async fn channel_actor(
        &self,
        channel: Channel,
    ) -> Result<ActorRef<ChannelMsg>, AccessError> {
        ractor::call_t!(self.channels, DirectoryMsg::Get, 5_000, channel)
            .map_err(|_| AccessError::Unavailable)?
            .map_err(|_| AccessError::Unavailable)
    }

    /// Tells a channel's actor something, if it runs.
    pub fn notify_channel(&self, channel: ChannelId, msg: ChannelMsg) {
        let _ = self.channels.cast(DirectoryMsg::Notify(channel, msg));
    }

    /// The caller's direct channel with `other`, created on first use.
    pub async fn open_direct(&self, me: &Identity, other: UserId) -> Result<Channel, AccessError> {
        if other == me.user_id {
            return Err(AccessError::Invalid(
                "cannot open a direct channel with yourself",
            ));
        }
        let peer = self
            .store
            .get_user(other)
            .await?
            .ok_or(AccessError::NotFound("no such user"))?;
        let key = direct_key(me.user_id, other);
        let channel = match self.store.find_direct(&key).await? {
            Some(c) => c,
            None => {
                let now = crate::now_ms();
                let channel = Channel {
                    id: ChannelId::new(),
                    name: format!("{} & {}", me.username, peer.username),
                    description: None,
                    kind: ChannelKind::Direct,
                    created_by: me.user_id,
                    created_at: now,
                    direct_key: Some(key.clone()),
                    archived_at: None,
                    patient_ref: None,
                    patient_tag: None,
                };
                let owner = Member {
                    channel_id: channel.id,
                    user_id: me.user_id,
                    role: ChannelRole::Owner,
                    joined_at: now,
                    last_read_seq: 0,
                    last_delivered_seq: 0,
                };
                match self.store.create_channel(channel.clone(), owner).await {
                    Ok(()) => {
                        let second = Member {
                            channel_id: channel.id,
                            user_id: other,
                            role: ChannelRole::Owner,
                            joined_at: now,
                            last_read_seq: 0,
                            last_delivered_seq: 0,
                        };
                        self.persistence
                            .write(WriteOp::UpsertMember(second))
                            .await?;
                        self.audit
                            .append(PendingAudit::new(
                                Some(me.user_id),
                                None,
                                "channel.create",
                                serde_json::json!({"channelId": channel.id, "kind": "direct"}),
                            ))
                            .await
                            .map_err(|_| AccessError::Unavailable)?;
                        channel
                    }
                    // Both users opened it at once: the other call won.
                    Err(StoreError::Conflict(_)) => self
                        .store
                        .find_direct(&key)
                        .await?
                        .ok_or(AccessError::Internal)?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(channel)
    }

    /// A page of history: the newest `limit` before `before`, ascending;
    /// with the messages' flags when the caller may see them.
    pub async fn read_history(
        &self,
        who: Principal<'_>,
        channel_id: ChannelId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<MessageView>, bool), AccessError> {
        let (channel, member) = self
            .channel_access(who, channel_id, |c, m| Action::ReadChannel {
                channel: c,
                member: m,
            })
            .await?;
        let flags = flags_for(who, &channel, member.as_ref());
        let (rows, has_more) = self
            .store
            .messages_before(channel_id, before, limit.clamp(1, 100))
            .await?;
        let messages = history::open_rows_with(self.cipher.clone(), rows, flags).await?;
        Ok((messages, has_more))
    }

    /// One live message (not deleted, not expired), opened, when the caller
    /// may read its channel (the rule of history pages): `GET
    /// /api/messages/{id}`. With its flag when the caller may see flags.
    pub async fn read_message(
        &self,
        who: Principal<'_>,
        message_id: MessageId,
    ) -> Result<MessageView, AccessError> {
        let (channel, member, row) = self
            .live_message_of(who, message_id, |c, m, _| Action::ReadChannel {
                channel: c,
                member: m,
            })
            .await?;
        let flags = flags_for(who, &channel, member.as_ref());
        Ok(history::open_row_with(&self.cipher, row, flags)?)
    }

    /// `flag_message` / `unflag_message`, from a WebSocket or from REST:
    /// sets (`reason` given) or clears the flag of a live message whose
    /// channel the caller moderates ([`Action::FlagMessage`]), appends
    /// `message.flag` / `message.unflag` to the audit chain (durably, before
    /// answering), and tells the channel's actors, which push
    /// `message_flagged` to the joined users who may see flags. Answers the
    /// message with its flag.
    pub async fn flag_message(
        &self,
        who: Principal<'_>,
        ip: Option<String>,
        message_id: MessageId,
        reason: Option<String>,
    ) -> Result<MessageView, AccessError> {
        let (channel, _, row) = self
            .live_message_of(who, message_id, |c, m, _| Action::FlagMessage {
                channel: c,
                member: m,
            })
            .await?;
        let flag = reason.map(|reason| Flag {
            at: crate::now_ms(),
            by: who.user_id,
            reason,
        });
        let row = match (&flag, &row.flag) {
            // Clearing a flag that is not there changes nothing.
            (None, None) => row,
            _ => {
                self.store
                    .set_message_flag(message_id, flag.clone())
                    .await?
            }
        };
        let (action, mut details) = match &flag {
            Some(f) => ("message.flag", serde_json::json!({"reason": f.reason})),
            None => ("message.unflag", serde_json::json!({})),
        };
        details["channelId"] = serde_json::json!(channel.id);
        details["messageId"] = serde_json::json!(message_id);
        details["seq"] = serde_json::json!(row.message.seq);
        self.audit
            .append(PendingAudit::new(Some(who.user_id), ip, action, details))
            .await
            .map_err(|_| AccessError::Unavailable)?;
        let pushed = MessageFlagged {
            channel_id: channel.id,
            message_id,
            seq: row.message.seq,
            flagged: row.flag.is_some(),
            flag_reason: row.flag.as_ref().map(|f| f.reason.clone()),
            flagged_by: row.flag.as_ref().map(|f| f.by),
            flagged_at: row.flag.as_ref().map(|f| f.at),
        };
        self.notify_channel(channel.id, ChannelMsg::Flagged(Box::new(pushed)));
        Ok(history::open_row_with(&self.cipher, row, Flags::Shown)?)
    }

    /// Archives (`true`) or unarchives a channel the caller may manage
    /// ([`Action::ManageChannel`]): stored, then told to the channel's
    /// actors, which refuse sends from then on (this node's before the
    /// answer). Archiving an archived
    /// channel keeps its first `archivedAt`. Answers the channel as stored
    /// and the caller's membership; the caller audits it.
    pub async fn archive_channel(
        &self,
        who: Principal<'_>,
        channel_id: ChannelId,
        archive: bool,
    ) -> Result<(Channel, Option<Member>), AccessError> {
        let (channel, member) = self
            .channel_access(who, channel_id, |c, m| Action::ManageChannel {
                channel: c,
                member: m,
            })
            .await?;
        let archived_at = match (archive, channel.archived_at) {
            (true, Some(at)) => Some(at),
            (true, None) => Some(crate::now_ms()),
            (false, _) => None,
        };
        let patch = crate::durable::store::ChannelPatch {
            archived_at: Some(archived_at),
            ..Default::default()
        };
        let channel = self.store.update_channel(channel_id, patch).await?;
        // Answered once this node's actor (if one runs) has it, so that a
        // send after the answer is refused here; other nodes take it from
        // the cluster's notice moments later.
        let (done, applied) = tokio::sync::oneshot::channel();
        let msg = ChannelMsg::Archived {
            archived_at,
            done: Some(done),
        };
        self.notify_channel(channel_id, msg);
        let _ = tokio::time::timeout(Duration::from_secs(5), applied).await;
        Ok((channel, member))
    }

    /// An `edit_message` or `delete_message`, from a WebSocket or from REST:
    /// the message must be live; an edit is its sender's alone
    /// ([`Action::EditMessage`]), a delete its sender's, a channel
    /// moderator's or an admin's ([`Action::ModifyMessage`]). Hands the
    /// change to the channel's actor (`joined` names it when the caller holds
    /// it already), which commits it, audits it (`message.edit`,
    /// `message.delete`), answers through `reply` and pushes
    /// `message_updated` / `message_deleted` to the joined connections.
    pub async fn change_message(
        &self,
        who: Principal<'_>,
        message_id: MessageId,
        change: Change,
        joined: impl FnOnce(ChannelId) -> Option<ActorRef<ChannelMsg>>,
        reply: Reply,
    ) -> Result<(), AccessError> {
        let editing = matches!(change, Change::Edit(_));
        let (channel, row) = self
            .live_message(who, message_id, |c, m, author| {
                if editing {
                    Action::EditMessage {
                        channel: c,
                        member: m,
                        author,
                    }
                } else {
                    Action::ModifyMessage {
                        channel: c,
                        member: m,
                        author,
                    }
                }
            })
            .await?;
        let actor = match joined(channel.id) {
            Some(actor) => actor,
            None => self.channel_actor(channel).await?,
        };
        let msg = match change {
            Change::Edit(text) => ChannelMsg::Edit(Box::new(EditRequest {
                editor: who.user_id,
                mentions: self.mentions(row.message.channel_id, &text).await?,
                original: history::open_row(&self.cipher, row)?,
                text,
                reply,
            })),
            Change::Delete { reason } => ChannelMsg::Delete(Box::new(DeleteRequest {
                deleter: who.user_id,
                message_id,
                seq: row.message.seq,
                reason,
                reply,
            })),
        };
        actor.cast(msg).map_err(|_| AccessError::Unavailable)
    }

    /// A live message and its channel, when `action` on them is allowed.
    async fn live_message(
        &self,
        who: Principal<'_>,
        message_id: MessageId,
        action: impl for<'a> FnOnce(&'a Channel, Option<&'a Member>, UserId) -> Action<'a>,
    ) -> Result<(Channel, MessageRow), AccessError> {
        let (channel, _, row) = self.live_message_of(who, message_id, action).await?;
        Ok((channel, row))
    }

    /// [`Realtime::live_message`], with the caller's membership.
    async fn live_message_of(
        &self,
        who: Principal<'_>,
        message_id: MessageId,
        action: impl for<'a> FnOnce(&'a Channel, Option<&'a Member>, UserId) -> Action<'a>,
    ) -> Result<(Channel, Option<Member>, MessageRow), AccessError> {
        let now = crate::now_ms();
        let row = self
            .store
            .get_message(message_id)
            .await?
            .filter(|r| r.message.deleted_at.is_none())
            .filter(|r| r.message.expires_at.is_none_or(|t| t > now))
            .ok_or(AccessError::NotFound("no such message"))?;
        let author = row.message.sender_id;
        let (channel, member) = self
            .channel_access(who, row.message.channel_id, |c, m| action(c, m, author))
            .await?;
        Ok((channel, member, row))
    }

    /// A send, from a WebSocket or from REST: validates it, applies the
    /// sender's rate limit, flags PHI, and hands it to the channel's actor,
    /// which answers through `reply` after the durable commit.
    pub async fn publish(&self, send: Publish, reply: Reply) -> Result<(), PublishError> {
        if send.text.len() > self.limits.max_text_bytes {
            return Err(PublishError::TooLarge);
        }
        match send.client_msg_id.as_deref() {
            Some("") => return Err(PublishError::Invalid("clientMsgId must not be empty")),
            Some(id) if id.len() > 64 => return Err(PublishError::TooLarge),
            // Stored as text, which PostgreSQL cannot hold U+0000 in: the
            // store would refuse the row (`internal`, and a seq left unused)
            // where SQLite keeps it.
            Some(id) if id.contains('\0') => {
                return Err(PublishError::Invalid("clientMsgId must not contain U+0000"))
            }
            _ => {}
        }
        if let Err(wait) = self.check_send_rate(send.sender.user_id) {
            metrics::counter!(crate::telemetry::names::RATE_LIMITED, "limit" => "send_message")
                .increment(1);
            return Err(PublishError::RateLimited(wait));
        }
        // A joined connection's sends are authorized by the channel actor
        // against the membership it keeps; others read channel and
        // membership from the store first.
        let joined = send.actor.is_some();
        let (actor, member) = match send.actor {
            Some(actor) => (actor, None),
            None => {
                let principal = Principal {
                    user_id: send.sender.user_id,
                    role: send.sender.role,
                    permissions: &self.permissions,
                };
                let (channel, member) = self
                    .channel_access(principal, send.channel_id, |c, m| Action::ReadChannel {
                        channel: c,
                        member: m,
                    })
                    .await
                    .map_err(PublishError::Access)?;
                let actor = self
                    .channel_actor(channel)
                    .await
                    .map_err(PublishError::Access)?;
                (actor, member)
            }
        };
        let attachments = self
            .attachments(send.sender.user_id, send.channel_id, &send.attachments)
            .await?;
        let mentions = self
            .mentions(send.channel_id, &send.text)
            .await
            .map_err(|e| PublishError::Access(e.into()))?;
        let phi_found = self.phi.detect_names(&send.text);
        if !phi_found.is_empty() {
            metrics::counter!(crate::telemetry::names::PHI_DETECTED).increment(1);
        }
        let request = PublishRequest {
            mentions,
            sender: Sender {
                member,
                ..send.sender
            },
            contains_phi: send.contains_phi || !phi_found.is_empty(),
            phi_found,
            text: send.text,
            client_msg_id: send.client_msg_id,
            reply_to: send.reply_to,
            ttl_seconds: send.ttl_seconds,
            attachments,
            patient_ref: send.patient_ref,
            reply,
            received: send.received,
            joined,
        };
        actor
            .cast(ChannelMsg::Publish(Box::new(request)))
            .map_err(|_| PublishError::Access(AccessError::Unavailable))
    }

    /// The members of `channel` that `text` mentions (`@username`); no
    /// store read for a text without a candidate name.
    pub async fn mentions(
        &self,
        channel: ChannelId,
        text: &str,
    ) -> Result<Vec<courier_protocol::frames::Mention>, StoreError> {
        let names = crate::notify::mentions::candidates(text);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.store.members_named(channel, &names).await
    }

    /// The files a send names, as its message shows them: each must be one
    /// the sender uploaded to this channel, scanned and not deleted. The
    /// same file may go out in several messages of its channel; it lives
    /// while one of them does.
    async fn attachments(
        &self,
        sender: UserId,
        channel: ChannelId,
        ids: &[courier_protocol::FileId],
    ) -> Result<Vec<courier_protocol::frames::AttachmentView>, PublishError> {
        use crate::durable::store::FileState;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if ids.len() > courier_protocol::frames::MAX_ATTACHMENTS {
            return Err(PublishError::Invalid(
                "a message carries at most 10 attachments",
            ));
        }
        if ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id)) {
            return Err(PublishError::Invalid("an attachment is named twice"));
        }
        let found = self
            .store
            .get_files(ids)
            .await
            .map_err(|e| PublishError::Access(e.into()))?;
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            let file = found
                .iter()
                .find(|f| f.id == *id)
                .filter(|f| {
                    f.owner_id == sender && f.channel_id == Some(channel) && f.deleted_at.is_none()
                })
                .ok_or(PublishError::Access(AccessError::NotFound(
                    "no such attachment in this channel",
                )))?;
            if file.state != FileState::Ready {
                return Err(PublishError::Access(AccessError::Conflict(
                    "an attachment is waiting for its virus scan",
                )));
            }
            let view = crate::files::attachment_view(&self.cipher, file).map_err(|e| {
                tracing::error!(error = %e, "an attachment's name does not open");
                PublishError::Access(AccessError::Internal)
            })?;
            views.push(view);
        }
        Ok(views)
    }

    /// Checks the per-user send rate; `Err` carries the wait until a retry.
    pub fn check_send_rate(&self, user: UserId) -> Result<(), Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.send_limiter
            .load()
            .check_key(&user)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Replaces the per-user send limit (an admin's runtime setting). The
    /// new limit starts with every user's bucket full.
    pub fn set_send_per_minute(&self, per_minute: u32) {
        self.send_limiter
            .store(Arc::new(RateLimiter::keyed(send_quota(per_minute))));
    }

    /// Closes the live sockets of these sessions (all of the user's when
    /// `None`) with 4003.
    pub fn revoke_sessions(
        &self,
        user: UserId,
        sessions: Option<Vec<courier_protocol::SessionId>>,
    ) {
        if let Some(cluster) = &self.cluster {
            cluster.revoke_elsewhere(user, sessions.clone());
        }
        let _ = self
            .presence
            .cast(ForUser(user, PresenceMsg::Revoke(sessions)));
    }

    /// Graceful shutdown: tell every connection, flush every queued write,
    /// close every socket with 1001, flush the audit chain, stop the tree.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown_tx.send(ShutdownPhase::Draining);
        self.audit.record(PendingAudit::new(
            None,
            None,
            "server.stop",
            serde_json::json!({}),
        ));
        let drain = async {
            if let Err(e) = ractor::call_t!(self.persistence_actor, PersistenceMsg::Drain, 60_000) {
                tracing::error!(error = %e, "persistence did not drain");
            }
        };
        match &self.cluster {
            // Stop owning channels before the last writes commit; then let
            // the other nodes take them at once.
            Some(cluster) => cluster.leave(drain).await,
            None => drain.await,
        }
        let _ = self.shutdown_tx.send(ShutdownPhase::Closing);
        let deadline = Instant::now() + grace;
        while self.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = ractor::call_t!(self.audit_actor, AuditMsg::Drain, 60_000) {
            tracing::error!(error = %e, "audit did not drain");
        }
        self.root.stop(None);
    }
}

/// Routes what the cluster receives for this node to its actors: forwarded
/// requests to the channel directory (in arrival order), revocations to the
/// presence directory, hellos answered, and after a reconnection every
/// channel re-reads what it may have missed, and a dead node's users leave
/// every channel. The tasks end with the
/// cluster's channels (when the node stops).
fn route_inbound(
    cluster: Arc<Cluster>,
    inbound: Inbound,
    channels: ActorRef<DirectoryMsg>,
    presence: ActorRef<ForUser>,
) {
    let Inbound {
        mut forwards,
        mut node_events,
        mut reconnected,
        mut nodes_gone,
    } = inbound;
    let to_channels = channels.clone();
    tokio::spawn(async move {
        while let Some((forward, reply)) = forwards.recv().await {
            if to_channels
                .cast(DirectoryMsg::Forwarded(Box::new(forward), reply))
                .is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(event) = node_events.recv().await {
            match event {
                NodeEvent::Hello { .. } => cluster.introduce(),
                NodeEvent::Revoke { user, sessions, .. } => {
                    let _ = presence.cast(ForUser(user, PresenceMsg::Revoke(sessions)));
                }
                NodeEvent::Online { .. } | NodeEvent::Offline { .. } => {}
            }
        }
    });
    let gone_to = channels.clone();
    tokio::spawn(async move {
        while let Some(node) = nodes_gone.recv().await {
            if gone_to.cast(DirectoryMsg::NodeGone(node)).is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        // The first "connected" is the initial connection.
        let mut first = true;
        while reconnected.recv().await.is_some() {
            if !std::mem::take(&mut first) && channels.cast(DirectoryMsg::Resync).is_err() {
                return;
            }
        }
    });
}

/// A send as the edge received it.
pub struct Publish {
    pub sender: Sender,
    pub channel_id: ChannelId,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub contains_phi: bool,
    pub reply_to: Option<courier_protocol::MessageId>,
    pub ttl_seconds: Option<u64>,
    /// Files the sender uploaded to this channel.
    pub attachments: Vec<courier_protocol::FileId>,
    /// The patient the message concerns (validated by the edge).
    pub patient_ref: Option<courier_protocol::PatientRef>,
    /// When the request arrived (for the ack latency metric).
    pub received: Instant,
    /// The channel's actor when the caller already holds it (a joined channel).
    pub actor: Option<ActorRef<ChannelMsg>>,
}

/// What an `edit_message` or `delete_message` asks of a message.
pub enum Change {
    /// New text.
    Edit(String),
    /// A soft delete, with a moderator's reason for the audit entry.
    Delete { reason: Option<String> },
}

/// Whether `who` reads the flags of `channel`'s messages.
fn flags_for(who: Principal<'_>, channel: &Channel, member: Option<&Member>) -> Flags {
    match authz::decide(who, Action::SeeFlags { channel, member }) {
        Ok(()) => Flags::Shown,
        Err(_) => Flags::Hidden,
    }
}

/// Why a send was refused before reaching its channel.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("text or clientMsgId is over its size limit")]
    TooLarge,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("rate limit exceeded")]
    RateLimited(Duration),
    #[error(transparent)]
    Access(AccessError),
}

/// Counts live connections: one guard per connection actor.
pub(crate) struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    fn acquire(self) -> ConnectionGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(self.0)
    }
}

/// Held by a connection actor's state; counts it until dropped.
pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The unique key of the direct channel of two users.
pub fn direct_key(a: UserId, b: UserId) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("{x}:{y}")
}
