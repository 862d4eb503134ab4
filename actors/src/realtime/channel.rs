//! # ChannelActor: ordering and fan-out of one channel
//!
//! **Owns** a channel's `seq` counter, its joined connections (each with the
//! handle of its bounded outbound queue), the recent `clientMsgId`s of its
//! senders, the writes it has handed to the persistence actor and not yet
//! seen committed, and who is typing.
//!
//! **Takes** [`ChannelMsg`]: joins and leaves from connection actors; sends,
//! edits, deletes, receipts and reactions from connection actors and REST
//! handlers (each with a [`Reply`] that says where the answer goes); presence
//! changes from presence actors; commits from the persistence actor; member
//! removal and channel deletion from REST handlers.
//!
//! **Does**: a send is checked ([`authz`]), de-duplicated by `clientMsgId`,
//! given the next `seq` and a message id, encrypted (AES-256-GCM under the
//! channel's key for that `seq`), and handed to the persistence actor; the
//! handler returns at once. When the commit arrives the sender gets its ack,
//! and the `new_message` push is encoded once per encoding in use and the
//! same bytes are queued to every joined connection, straight into their
//! queues, in `seq` order (the persistence actor answers in submission
//! order). Once a batch of commits is fanned out, a channel of at most 64
//! connections wakes their writers; a wider one puts them in its
//! [`FlushLine`], whose task writes each idle connection's queue straight
//! to its socket, one write for the whole batch, oldest fan-out first (see
//! `Subscribers::flush` and [`flush_line`](crate::realtime::flush_line)). A join
//! with `sinceSeq` replays what the connection missed, however much, from
//! the store a page at a time, paced by the connection's queue (see
//! [`Replay`]); live messages it skips meanwhile are in the store and the
//! replay reads them too, until the rest fits in a page: from then on they
//! are held back and released after the final `recovered` frame. No gap,
//! no duplicate at the seam.
//!
//! Moderation: a flag is stored by the caller (`Realtime::flag_message`)
//! and told to this actor ([`ChannelMsg::Flagged`]), which pushes
//! `message_flagged` only to the joined connections whose user may see
//! flags (`authz`'s `SeeFlags`, against the global role each connection
//! joined with and the membership kept here): the one push that is decided
//! per recipient, so `new_message` fan-out stays as it is. An archive
//! ([`ChannelMsg::Archived`]) updates the channel this actor authorizes
//! sends against.
//!
//! **Supervised by** the [`ChannelDirectory`](crate::realtime::channel_directory),
//! which starts it on first use; it stops itself when idle. **A crash** drops
//! its state: every joined connection is closed with 1011 so that it
//! reconnects and recovers with `sinceSeq`; sends that were not acked are
//! resent by their clients; the next start recovers `seq` from the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_protocol::error::close;
use courier_protocol::frames::{
    AttachmentView, ChannelView, DeliveryStatus, Mention, MessageFlagged, MessageKind, MessageView,
    PresenceStatus, Ref, ServerFrame,
};
use courier_protocol::{ChannelId, ErrorCode, MessageId, PatientRef, UserId};
use metrics::{counter, histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::sync::{oneshot, watch};

use crate::audit::actor::AuditHandle;
use crate::audit::chain::PendingAudit;
use crate::audit::reads;
use crate::cluster::wire::Notice;
use crate::cluster::Cluster;
use crate::crypto::{MessageCipher, RefOwner};
use crate::durable::history;
use crate::durable::persistence::{Committed, PersistError, PersistReply, PersistenceHandle};
use crate::durable::store::{
    Channel, ChannelKind, ClientMsgRef, DynStore, Member, PatientSeal, Role, StoredMessage,
    WriteOp, WriteOutcome,
};
use crate::policy::authz::{self, Action, Principal, RolePermissions};
use crate::realtime::flush_line::{FlushLine, FLUSH_CHUNK};
use crate::realtime::frames_out as out;
use crate::realtime::outbound::{ConnId, EncodedFrame, Forms, Outbound, Push, PushForm};
use crate::realtime::ShutdownPhase;
use crate::search::SearchIndex;
use crate::telemetry::names as m;

mod cluster_role;
pub(crate) use cluster_role::notice_of;
pub use cluster_role::{forwarded, RemoteEvent};
use cluster_role::{Mode, RemoteFeed};

/// What the channel actors of one server share (read-only).
pub struct ChannelServices {
    pub store: DynStore,
    pub cipher: Arc<MessageCipher>,
    pub persistence: PersistenceHandle,
    pub audit: AuditHandle,
    pub permissions: Arc<RolePermissions>,
    /// A join with `sinceSeq` replays what was missed in pages of this many
    /// messages read from the store (however many were missed).
    pub recovery_limit: u32,
    /// A join with `sinceSeq` more than this many behind is answered
    /// `recovered: false` and replays nothing: the client pages
    /// `fetch_history` itself (0: every gap is replayed).
    pub recovery_max_replay: u64,
    /// A typing indicator expires after this long without renewal.
    pub typing_expiry: Duration,
    /// How long a wide channel's flush line lets a connection's first
    /// unwritten push wait for more (see [`FlushLine`]).
    pub fanout_coalesce: Duration,
    /// A channel with no connections and no pending writes stops after this.
    pub idle_stop: Duration,
    /// How often the seqs pushed to each long-lived joined connection are
    /// written to the audit (`message.delivered`), besides on leave,
    /// disconnect and stop (`audit_delivery_flush_secs`).
    pub delivery_flush: Duration,
    /// The server's shutdown phase: an actor that dies once the server is
    /// closing closes its connections with 1001, not as a crash.
    pub shutdown: watch::Receiver<ShutdownPhase>,
    /// The cluster this node is part of, if any (see `cluster_role`).
    pub cluster: Option<Arc<Cluster>>,
    /// Break-glass grants in force: reads under one are marked in the audit.
    pub break_glass: crate::compliance::break_glass::BreakGlassRegistry,
    /// Told of committed sends with mentions and of direct messages (never
    /// awaited; see [`crate::notify`]).
    pub notifier: crate::notify::NotifierHandle,
}

/// Why a request to a channel failed. Mapped to an error code at the edge.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("the message store is unavailable; retry")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
    /// The owner node's answer to a forwarded request, relayed unchanged.
    #[error("{message}")]
    Relayed { code: ErrorCode, message: String },
}

impl ChannelError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChannelError::Relayed { code, .. } => *code,
            ChannelError::Forbidden(_) => ErrorCode::Forbidden,
            ChannelError::NotFound(_) => ErrorCode::NotFound,
            ChannelError::Unavailable => ErrorCode::Unavailable,
            ChannelError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<PersistError> for ChannelError {
    fn from(e: PersistError) -> Self {
        match e {
            PersistError::Full | PersistError::StoreDown | PersistError::Closed => {
                ChannelError::Unavailable
            }
            PersistError::Rejected(why) => ChannelError::Internal(why),
        }
    }
}

/// The successful answer to a request.
// Built once per request and moved to its reply; boxing the message would
// cost an allocation per send for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Accepted {
    /// A send: the message as committed (or the original, for a duplicate).
    Sent {
        message: MessageView,
        duplicate: bool,
    },
    /// Anything else.
    Done,
}

/// Where the answer to a request goes.
pub enum Reply {
    /// An `ack` or `error` frame into a connection's queue.
    Frame {
        outbound: Outbound,
        reference: Option<Ref>,
    },
    /// A REST handler waiting for the result.
    Oneshot(oneshot::Sender<Result<Accepted, ChannelError>>),
    /// Another node, which forwarded the request, waits on this subject.
    Remote {
        cluster: Arc<Cluster>,
        subject: String,
    },
    /// Nobody is waiting.
    None,
}

impl Reply {
    /// Sends the result.
    pub fn send(self, result: Result<Accepted, ChannelError>) {
        match self {
            Reply::Frame {
                outbound,
                reference,
            } => {
                let frame = match &result {
                    Ok(Accepted::Sent { message, duplicate }) => out::ack_sent(
                        reference,
                        message.id,
                        message.seq,
                        message.timestamp,
                        *duplicate,
                    ),
                    Ok(Accepted::Done) => out::ack(reference),
                    Err(e) => out::error(reference, e.code(), &e.to_string()),
                };
                outbound.deliver(&frame);
            }
            Reply::Oneshot(tx) => {
                let _ = tx.send(result);
            }
            Reply::Remote { cluster, subject } => {
                use crate::cluster::wire::Answer;
                let answer = match result {
                    Ok(Accepted::Sent { message, duplicate }) => Answer::Sent {
                        message: Box::new(message),
                        duplicate,
                    },
                    Ok(Accepted::Done) => Answer::Done,
                    Err(e) => Answer::Failed {
                        code: e.code(),
                        message: e.to_string(),
                    },
                };
                cluster.answer(subject, &answer);
            }
            Reply::None => {}
        }
    }
}

/// Who sends: enough to authorize, attribute and audit.
#[derive(Clone, Debug)]
pub struct Sender {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    /// The sender's membership of this channel, if any.
    pub member: Option<Member>,
    pub ip: Option<String>,
}

/// `join_channel`.
pub struct JoinRequest {
    pub outbound: Outbound,
    pub user_id: UserId,
    /// The user's global role (who may see flags).
    pub role: Role,
    pub member: Member,
    pub since_seq: Option<u64>,
    pub reference: Option<Ref>,
    /// Where the connection comes from, for the audit of what it is sent.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The channel's `patientRef`, opened by the caller from the channel it
    /// just read (this actor's copy may predate an edit).
    pub patient_ref: Option<PatientRef>,
}

/// `send_message` (WebSocket) or `POST /api/messages` (REST).
pub struct PublishRequest {
    pub sender: Sender,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub contains_phi: bool,
    /// PHI kinds the server's detectors found (names only, for the audit).
    pub phi_found: Vec<String>,
    pub reply_to: Option<MessageId>,
    pub ttl_seconds: Option<u64>,
    /// The message's files, checked by [`Realtime::publish`](crate::realtime::Realtime::publish):
    /// uploaded by the sender to this channel, scanned and ready.
    pub attachments: Vec<AttachmentView>,
    /// The patient the message concerns; sealed by this actor (a send
    /// without one seals nothing more).
    pub patient_ref: Option<PatientRef>,
    /// The channel's members its text mentions, resolved by the caller.
    pub mentions: Vec<Mention>,
    pub reply: Reply,
    /// When the request reached the server (for the ack latency metric).
    pub received: Instant,
    /// The sender's connection has joined this channel: the membership is
    /// the one this actor keeps for joined users (no store read was made,
    /// `sender.member` is empty).
    pub joined: bool,
}

/// `edit_message`: authorized by the caller, who read the message.
pub struct EditRequest {
    pub editor: UserId,
    pub original: MessageView,
    /// The members the new text mentions, resolved by the caller.
    pub mentions: Vec<Mention>,
    pub text: String,
    pub reply: Reply,
}

/// `delete_message`: authorized by the caller, who read the message.
pub struct DeleteRequest {
    pub deleter: UserId,
    pub message_id: MessageId,
    pub seq: u64,
    /// A moderator's reason, kept in the audit entry.
    pub reason: Option<String>,
    pub reply: Reply,
}

/// Messages of a channel actor.
pub enum ChannelMsg {
    Join(Box<JoinRequest>),
    Leave {
        conn_id: ConnId,
    },
    Publish(Box<PublishRequest>),
    Edit(Box<EditRequest>),
    Delete(Box<DeleteRequest>),
    Typing {
        user_id: UserId,
        is_typing: bool,
    },
    MarkRead {
        user_id: UserId,
        seq: u64,
        reply: Reply,
    },
    React {
        message_id: MessageId,
        user_id: UserId,
        reaction: String,
        add: bool,
        reply: Reply,
    },
    /// A user's presence changed (from their presence actor).
    Presence {
        user_id: UserId,
        status: PresenceStatus,
        last_seen: i64,
    },
    /// A message expired and was deleted by retention: tell the members.
    Expired {
        message_id: MessageId,
        seq: u64,
    },
    /// A membership changed (REST: a new channel role).
    MemberChanged(Box<Member>),
    /// A membership ended (REST): its connections leave, everyone is told.
    MemberRemoved {
        user_id: UserId,
    },
    /// The channel was deleted (REST): tell everyone and stop.
    Deleted,
    /// A message was flagged or unflagged (already stored and audited):
    /// push `message_flagged` to the joined users who may see flags.
    Flagged(Box<MessageFlagged>),
    /// The channel was archived (`Some`) or unarchived (REST); `done` is
    /// dropped once the actor refuses (or takes) sends accordingly.
    Archived {
        archived_at: Option<i64>,
        done: Option<oneshot::Sender<()>>,
    },
    /// Outcomes of this channel's writes, in submission order.
    Committed(Committed),
    /// The store answered whether the `replyTo` of the oldest held send
    /// names a message of this channel.
    ReplyChecked(Result<bool, String>),
    /// A join's replay queued every missed message up to `through` to the
    /// connection; `next` is told the seq to go on to, or `None` when the
    /// connection is live now (or gone).
    ReplayedThrough {
        conn_id: ConnId,
        replay: u64,
        through: u64,
        next: oneshot::Sender<Option<u64>>,
    },
    /// Members' delivered positions as this actor knows them (REST
    /// receipts take the larger of these and the store's).
    Receipts(oneshot::Sender<HashMap<UserId, u64>>),
    /// A join's replay could not read the store.
    ReplayFailed {
        conn_id: ConnId,
        replay: u64,
        why: String,
    },
    /// Once a second: typing expiry and the idle check.
    Tick,
    /// A push of this channel from another node of the cluster.
    Remote(Box<RemoteEvent>),
    /// NATS came back: read what the owner committed meanwhile.
    Resync,
    /// The node a request was forwarded to does not own the channel.
    OwnerUnknown,
    /// A node died: its users leave this channel's roster, and those with
    /// no connection anywhere are `offline`.
    NodeGone(String),
    /// Who is joined to this channel on another node.
    Roster {
        node: String,
        change: crate::cluster::wire::Notice,
    },
}

variant_message!(ChannelMsg::Committed(Committed));

/// What the actor starts with.
pub struct ChannelArgs {
    pub channel: Channel,
    pub services: Arc<ChannelServices>,
}

/// The actor; its configuration is the shared services.
pub struct ChannelActor;

struct Subscriber {
    outbound: Outbound,
    user_id: UserId,
    /// The user's global role when the connection joined.
    role: Role,
    /// False while a replay runs: other pushes wait in `held`, and so do
    /// `new_message`s once `hold_messages` is set; before that the replay
    /// reads them from the store.
    live: bool,
    hold_messages: bool,
    held: Vec<bytes::Bytes>,
    /// Which replay of this connection is running (0: none).
    replay: u64,
    /// A push found its queue empty and did not wake the writer: a flush
    /// is due.
    unflushed: bool,
    /// While live: the `new_message` pushes it was sent have seqs after
    /// this one, up to [`Subscribers::pushed_through`] (written to the
    /// audit as one range when it leaves, and every `delivery_flush`).
    pushed_from: Option<u64>,
    /// Once `hold_messages` is set: the messages it holds come after this.
    hold_from: u64,
    /// Where the connection comes from (the audit's `ip`, `userAgent`).
    ip: Option<String>,
    user_agent: Option<String>,
}

/// The joined connections. Dropped without a clean stop (a crash), it closes
/// every one of them with 1011 so that their clients reconnect and recover.
#[derive(Default)]
struct Subscribers {
    by_conn: HashMap<ConnId, Subscriber>,
    /// Joined connections per user: who is online here, without a scan of
    /// every connection on each join.
    users: HashMap<UserId, usize>,
    msgpack: usize,
    json: usize,
    compact: usize,
    clean: bool,
    /// The server's shutdown phase (see [`ChannelServices::shutdown`]).
    shutdown: Option<watch::Receiver<ShutdownPhase>>,
    /// Fan-outs leave their pushes unflushed until [`Subscribers::flush`]
    /// (a batch of commits: each connection gets all of it in one write).
    deferring: bool,
    /// Where a wide channel's unflushed connections wait for their write.
    line: FlushLine,
    /// The seq of the last `new_message` fanned out: one assignment per
    /// message, nothing per connection (see [`Subscriber::pushed_from`]).
    pushed_through: u64,
    /// Where the ranges of pushes delivered are written (none in a
    /// subscriber set that is not a channel actor's).
    deliveries: Option<DeliveryLog>,
}

/// Writes `message.delivered`: the seqs of the `new_message` pushes a
/// connection was sent, as one range per flush (fire-and-forget, like
/// `channel.join`).
struct DeliveryLog {
    channel: ChannelId,
    audit: AuditHandle,
    break_glass: crate::compliance::break_glass::BreakGlassRegistry,
}

impl DeliveryLog {
    /// The entry for what `sub` was pushed after its `pushed_from` up to
    /// `through`, if anything; moves its `pushed_from` to `through`.
    fn write(&self, sub: &mut Subscriber, through: u64) {
        let Some(from) = sub.pushed_from else {
            return;
        };
        if through <= from {
            return;
        }
        sub.pushed_from = Some(through);
        let mut details = reads::details_of_ranges(self.channel, &[[from + 1, through]], "push");
        details["connId"] = sub.outbound.conn_id().0.into();
        let grant = self
            .break_glass
            .active(self.channel, sub.user_id, crate::now_ms());
        reads::mark_break_glass(&mut details, grant);
        let mut event = PendingAudit::new(
            Some(sub.user_id),
            sub.ip.clone(),
            "message.delivered",
            details,
        );
        event.user_agent = sub.user_agent.clone();
        self.audit.record(event);
    }
}

impl Subscribers {
    fn insert(&mut self, sub: Subscriber) {
        match sub.outbound.form() {
            PushForm::MessagePack => self.msgpack += 1,
            PushForm::Json => self.json += 1,
            PushForm::Compact => self.compact += 1,
        }
        *self.users.entry(sub.user_id).or_default() += 1;
        if let Some(mut old) = self.by_conn.insert(sub.outbound.conn_id(), sub) {
            if old.unflushed {
                old.outbound.flush();
            }
            self.delivered(&mut old, self.pushed_through);
            self.uncount(&old);
        }
    }

    fn remove(&mut self, conn: ConnId) -> Option<Subscriber> {
        self.remove_through(conn, self.pushed_through)
    }

    /// Removes a connection that was pushed the messages up to `through`.
    fn remove_through(&mut self, conn: ConnId, through: u64) -> Option<Subscriber> {
        let mut sub = self.by_conn.remove(&conn)?;
        if sub.unflushed {
            sub.outbound.flush();
        }
        self.delivered(&mut sub, through);
        self.uncount(&sub);
        Some(sub)
    }

    /// Audits what `sub` was pushed up to `through` (see [`DeliveryLog`]).
    fn delivered(&self, sub: &mut Subscriber, through: u64) {
        if let Some(log) = &self.deliveries {
            log.write(sub, through);
        }
    }

    /// Audits what every live connection was pushed since the last time:
    /// every `delivery_flush`, and when the actor stops.
    fn flush_deliveries(&mut self) {
        let Some(log) = &self.deliveries else {
            return;
        };
        for sub in self.by_conn.values_mut() {
            log.write(sub, self.pushed_through);
        }
    }

    fn uncount(&mut self, sub: &Subscriber) {
        if let Some(count) = self.users.get_mut(&sub.user_id) {
            *count -= 1;
            if *count == 0 {
                self.users.remove(&sub.user_id);
            }
        }
        match sub.outbound.form() {
            PushForm::MessagePack => self.msgpack -= 1,
            PushForm::Json => self.json -= 1,
            PushForm::Compact => self.compact -= 1,
        }
    }

    fn online(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.users.keys().copied().collect();
        users.sort_unstable();
        users
    }

    fn has_user(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    fn has_live_user(&self, user: UserId) -> bool {
        self.by_conn.values().any(|s| s.live && s.user_id == user)
    }

    /// Queues `frame` to the live connections of `user` only.
    fn to_user(&self, frame: &ServerFrame, user: UserId) {
        for sub in self.by_conn.values() {
            if sub.live && sub.user_id == user {
                sub.outbound.deliver(frame);
            }
        }
    }

    /// Encodes `frame` once per encoding in use and queues it to every
    /// subscriber but those of `except`, then flushes unless `deferring`.
    /// Returns how many got it.
    fn fan_out(&mut self, frame: &ServerFrame, except: Option<UserId>) -> u64 {
        // Those cut off below did not get this message.
        let through_before = self.pushed_through;
        if let ServerFrame::NewMessage(m) = frame {
            self.pushed_through = self.pushed_through.max(m.data.seq);
        }
        if self.by_conn.is_empty() {
            return 0;
        }
        let forms = Forms {
            msgpack: self.msgpack > 0,
            json: self.json > 0,
            compact: self.compact > 0,
        };
        let encoded = EncodedFrame::new(frame, forms);
        let is_message = matches!(frame, ServerFrame::NewMessage(_));
        let mut delivered = 0;
        let mut gone = Vec::new();
        for sub in self.by_conn.values_mut() {
            if Some(sub.user_id) == except {
                continue;
            }
            if !sub.live {
                if is_message && !sub.hold_messages {
                    // Committed, so the replay reads it from the store.
                    continue;
                }
                if sub.held.len() >= HELD_MAX {
                    if sub.outbound.close_now(close::SLOW_CONSUMER) {
                        counter!(m::SLOW_CONSUMERS).increment(1);
                    }
                    gone.push(sub.outbound.conn_id());
                } else if let Some(msg) = encoded.get(sub.outbound.form()) {
                    sub.held.push(msg);
                }
                continue;
            }
            match sub.outbound.push_encoded_deferred(&encoded) {
                Push::Queued => delivered += 1,
                Push::Deferred => {
                    delivered += 1;
                    sub.unflushed = true;
                }
                Push::SlowConsumer | Push::Gone => gone.push(sub.outbound.conn_id()),
            }
        }
        for conn in gone {
            self.remove_through(conn, through_before);
        }
        if !self.deferring {
            self.flush();
        }
        delivered
    }

    /// Queues `frame` (never a `new_message`) to the subscribers `to`
    /// picks, holding it for those in a replay, and flushes unless
    /// `deferring`. For the rare push decided per recipient; [`fan_out`]
    /// stays free of per-recipient decisions.
    ///
    /// [`fan_out`]: Subscribers::fan_out
    fn fan_out_to(&mut self, frame: &ServerFrame, to: impl Fn(&Subscriber) -> bool) -> u64 {
        let picked: Vec<ConnId> = self
            .by_conn
            .values()
            .filter(|s| to(s))
            .map(|s| s.outbound.conn_id())
            .collect();
        if picked.is_empty() {
            return 0;
        }
        let forms = Forms {
            msgpack: self.msgpack > 0,
            json: self.json > 0,
            compact: self.compact > 0,
        };
        let encoded = EncodedFrame::new(frame, forms);
        let mut delivered = 0;
        let mut gone = Vec::new();
        for conn in picked {
            let Some(sub) = self.by_conn.get_mut(&conn) else {
                continue;
            };
            if !sub.live {
                if sub.held.len() >= HELD_MAX {
                    if sub.outbound.close_now(close::SLOW_CONSUMER) {
                        counter!(m::SLOW_CONSUMERS).increment(1);
                    }
                    gone.push(conn);
                } else if let Some(msg) = encoded.get(sub.outbound.form()) {
                    sub.held.push(msg);
                }
                continue;
            }
            match sub.outbound.push_encoded_deferred(&encoded) {
                Push::Queued => delivered += 1,
                Push::Deferred => {
                    delivered += 1;
                    sub.unflushed = true;
                }
                Push::SlowConsumer | Push::Gone => gone.push(conn),
            }
        }
        for conn in gone {
            self.remove(conn);
        }
        if !self.deferring {
            self.flush();
        }
        delivered
    }

    /// Sends every connection's unflushed pushes on their way. In a channel
    /// of at most [`FLUSH_CHUNK`] connections that wakes their writers, as a
    /// push does: when the server falls behind, writers that run late find
    /// several frames queued and write them at once. A wider fan-out is
    /// written to the sockets by the channel's [`FlushLine`], which yields
    /// every [`FLUSH_CHUNK`] connections: thousands of woken writers would
    /// each be a task in the run queue ahead of the next message's own steps
    /// (reader, connection, channel, commit), and each step would wait
    /// behind all of them. Neither this actor nor those steps wait for the
    /// line; a later fan-out's pushes may go out with this one's, in queue
    /// order.
    fn flush(&mut self) {
        let wide = self.by_conn.len() > FLUSH_CHUNK;
        let unflushed = self
            .by_conn
            .values_mut()
            .filter_map(|sub| std::mem::take(&mut sub.unflushed).then_some(&sub.outbound));
        if wide {
            self.line.join(unflushed.cloned());
        } else {
            unflushed.for_each(Outbound::wake_writer);
        }
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        // A stop, and a crash that unwinds, still write what was pushed.
        self.flush_deliveries();
        if !self.clean {
            let closing = self
                .shutdown
                .as_ref()
                .is_some_and(|s| *s.borrow() == ShutdownPhase::Closing);
            let code = if closing { close::GOING_AWAY } else { 1011 };
            for sub in self.by_conn.values() {
                sub.outbound.close_now(code);
            }
        }
    }
}

/// Recent client ids of this channel's senders, oldest evicted first.
struct ClientIds {
    map: HashMap<(UserId, String), Dedup>,
    order: VecDeque<(UserId, String)>,
}

enum Dedup {
    /// Committed: the original.
    Known(ClientMsgRef),
    /// In flight: resends wait for the original's commit.
    Pending(u64),
}

const CLIENT_IDS_KEPT: usize = 10_000;

/// Pushes held for one connection while its replay runs; past this it is a
/// slow consumer (closed with 4009, it reconnects and recovers).
const HELD_MAX: usize = 4096;

/// Ids of the messages this actor committed, newest kept: a `replyTo` naming
/// one of them needs no store read.
#[derive(Default)]
struct RecentIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

/// How many [`RecentIds`] are kept.
const RECENT_IDS_KEPT: usize = 10_000;

impl RecentIds {
    fn insert(&mut self, id: MessageId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl ClientIds {
    fn insert(&mut self, key: (UserId, String), value: Dedup) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            if self.order.len() > CLIENT_IDS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// A write handed to the persistence actor, awaiting its commit.
enum Pending {
    Publish {
        message: MessageView,
        reply: Reply,
        /// Resends of the same `clientMsgId` that arrived meanwhile.
        resends: Vec<Reply>,
        received: Instant,
        phi_found: Vec<String>,
        ip: Option<String>,
        /// `(sender, clientMsgId)` when the send carried one.
        client_key: Option<(UserId, String)>,
    },
    Edit {
        message: MessageView,
        editor: UserId,
        reply: Reply,
        /// Who the text mentioned before the edit (they are not told again).
        before: Vec<UserId>,
    },
    Delete {
        deleter: UserId,
        message_id: MessageId,
        seq: u64,
        reason: Option<String>,
        reply: Reply,
    },
    Read {
        user_id: UserId,
        seq: u64,
        reply: Reply,
    },
    React {
        user_id: UserId,
        message_id: MessageId,
        reaction: String,
        add: bool,
        reply: Reply,
    },
    /// A member's delivered position; nobody waits for it.
    Delivered,
    /// A message's mentions, stored after its insert or edit; nobody waits.
    Mentions,
}

/// Everything the actor owns.
pub struct ChannelState {
    services: Arc<ChannelServices>,
    channel: Channel,
    /// The last `seq` handed out.
    last_assigned: u64,
    /// The last `seq` committed and fanned out.
    last_committed: u64,
    subscribers: Subscribers,
    /// The membership of every user who joined since the actor started,
    /// kept current by `MemberChanged` and `MemberRemoved`: a joined
    /// connection's sends are authorized against it without a store read.
    members: HashMap<UserId, Member>,
    client_ids: ClientIds,
    /// Messages committed lately, for `replyTo` checks.
    recent_ids: RecentIds,
    /// Sends waiting, in arrival order, for the store to say whether the
    /// first one's `replyTo` is a message of this channel; later sends wait
    /// behind it so that seqs follow arrival order.
    held_sends: VecDeque<PublishRequest>,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    /// This actor, as the persistence actor answers it: one [`Committed`]
    /// per batch (made once, so a submit costs no allocation).
    commits_to: DerivedActorRef<Committed>,
    typing: HashMap<UserId, Instant>,
    idle_since: Instant,
    /// The last replay id handed out.
    last_replay: u64,
    /// Delivered positions of users with no live connection here, kept
    /// when their last one left or finished a replay. A user with a live
    /// connection has everything committed (see `delivered_seq`): nothing
    /// is counted per message.
    delivered: HashMap<UserId, u64>,
    /// When the pushes delivered were last written to the audit.
    deliveries_flushed: Instant,
    /// Owner or follower in a cluster; `Single` without one.
    mode: Mode,
    /// The other nodes' events of this channel, in a cluster.
    _feed: Option<RemoteFeed>,
    /// Users joined to this channel on other nodes, with those nodes: a
    /// join's `online` names them too.
    remote_users: HashMap<UserId, HashSet<String>>,
}

impl Actor for ChannelActor {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Arguments = ChannelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ChannelArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let feed = match &args.services.cluster {
            Some(cluster) => {
                Some(cluster_role::feed(cluster, args.channel.id, myself.clone()).await?)
            }
            None => None,
        };
        let mode = match feed {
            Some(_) => Mode::Follower { owner: None },
            None => Mode::Single,
        };
        let store = &args.services.store;
        let last = store.last_seq(args.channel.id).await?;
        let mut client_ids = ClientIds {
            map: HashMap::new(),
            order: VecDeque::new(),
        };
        let mut recent = store
            .recent_client_ids(args.channel.id, CLIENT_IDS_KEPT as u32)
            .await?;
        recent.sort_by_key(|r| r.seq);
        for r in recent {
            client_ids.insert((r.sender_id, r.client_msg_id.clone()), Dedup::Known(r));
        }
        myself.send_interval(Duration::from_secs(1), || ChannelMsg::Tick);
        metrics::gauge!(m::CHANNELS_ACTIVE).increment(1.0);
        let shutdown = args.services.shutdown.clone();
        let coalesce = args.services.fanout_coalesce;
        let deliveries = DeliveryLog {
            channel: args.channel.id,
            audit: args.services.audit.clone(),
            break_glass: args.services.break_glass.clone(),
        };
        Ok(ChannelState {
            services: args.services,
            channel: args.channel,
            last_assigned: last,
            last_committed: last,
            subscribers: Subscribers {
                by_conn: HashMap::new(),
                users: HashMap::new(),
                msgpack: 0,
                json: 0,
                compact: 0,
                clean: false,
                shutdown: Some(shutdown),
                deferring: false,
                line: FlushLine::new(coalesce),
                pushed_through: last,
                deliveries: Some(deliveries),
            },
            members: HashMap::new(),
            client_ids,
            recent_ids: RecentIds::default(),
            held_sends: VecDeque::new(),
            pending: HashMap::new(),
            next_token: 1,
            commits_to: myself.get_derived(),
            typing: HashMap::new(),
            idle_since: Instant::now(),
            last_replay: 0,
            delivered: HashMap::new(),
            deliveries_flushed: Instant::now(),
            mode,
            _feed: feed,
            remote_users: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.subscribers.clean = true;
        metrics::gauge!(m::CHANNELS_ACTIVE).decrement(1.0);
        if let Some(cluster) = &state.services.cluster {
            cluster.release(state.channel.id);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state.route(&myself, msg).await else {
            return Ok(());
        };
        match msg {
            ChannelMsg::Remote(event) => state.remote(*event).await,
            ChannelMsg::Resync => state.resync().await,
            ChannelMsg::OwnerUnknown => state.owner_unknown(),
            ChannelMsg::Roster { node, change } => state.roster(node, change),
            ChannelMsg::NodeGone(node) => state.node_gone(&node),
            ChannelMsg::Join(req) if state.lags(&req) => {
                // A follower behind the client (pushes lost with a dead
                // owner or a NATS outage): catch up from the store first,
                // or the client would see seqs it has again.
                state.resync().await;
                state.join(&myself, *req);
            }
            ChannelMsg::Join(req) => state.join(&myself, *req),
            ChannelMsg::Leave { conn_id } => {
                if let Some(sub) = state.subscribers.remove(conn_id) {
                    if !state.subscribers.has_user(sub.user_id) {
                        state.announce_roster(Notice::Left(sub.user_id));
                        state.stop_typing(sub.user_id);
                        if sub.live {
                            state.left(sub.user_id);
                        }
                    }
                }
            }
            ChannelMsg::Receipts(reply) => {
                let users = state
                    .members
                    .keys()
                    .chain(state.delivered.keys())
                    .copied()
                    .collect::<HashSet<_>>();
                let positions = users
                    .into_iter()
                    .filter_map(|u| state.delivered_seq(u).map(|seq| (u, seq)))
                    .collect();
                let _ = reply.send(positions);
            }
            ChannelMsg::Publish(req) => state.publish(&myself, *req),
            ChannelMsg::Edit(req) => state.edit(*req),
            ChannelMsg::Delete(req) => state.delete(*req),
            // Nothing new happens in an archived channel.
            ChannelMsg::Typing {
                is_typing: true, ..
            } if state.channel.archived_at.is_some() => {}
            ChannelMsg::Typing { user_id, is_typing } => {
                if is_typing {
                    let deadline = Instant::now() + state.services.typing_expiry;
                    state.typing.insert(user_id, deadline);
                    let frame = out::typing(state.channel.id, user_id, true);
                    state.broadcast(&frame, Some(user_id));
                } else {
                    state.stop_typing(user_id);
                }
            }
            ChannelMsg::MarkRead {
                user_id,
                seq,
                reply,
            } => {
                let seq = seq.min(state.last_committed);
                let op = WriteOp::MarkRead {
                    channel_id: state.channel.id,
                    user_id,
                    seq,
                };
                state.submit(
                    op,
                    Pending::Read {
                        user_id,
                        seq,
                        reply,
                    },
                );
            }
            ChannelMsg::React {
                message_id,
                user_id,
                reaction,
                add,
                reply,
            } => {
                let op = if add {
                    WriteOp::AddReaction {
                        message_id,
                        user_id,
                        reaction: reaction.clone(),
                        created_at: crate::now_ms(),
                    }
                } else {
                    WriteOp::RemoveReaction {
                        message_id,
                        user_id,
                        reaction: reaction.clone(),
                    }
                };
                let pending = Pending::React {
                    user_id,
                    message_id,
                    reaction,
                    add,
                    reply,
                };
                state.submit(op, pending);
            }
            ChannelMsg::Presence {
                user_id,
                status,
                last_seen,
            } => {
                let frame = out::presence(user_id, status, last_seen);
                state.broadcast(&frame, Some(user_id));
            }
            ChannelMsg::Expired { message_id, seq } => {
                let frame = out::message_deleted(message_id, state.channel.id, seq);
                state.subscribers.fan_out(&frame, None);
            }
            ChannelMsg::MemberChanged(member) => {
                state.members.insert(member.user_id, *member);
            }
            ChannelMsg::MemberRemoved { user_id } => {
                state.members.remove(&user_id);
                state.remote_users.remove(&user_id);
                let frame = out::system_event(
                    "member_removed",
                    serde_json::json!({"channelId": state.channel.id, "userId": user_id}),
                );
                state.subscribers.fan_out(&frame, None);
                let conns: Vec<ConnId> = state
                    .subscribers
                    .by_conn
                    .values()
                    .filter(|s| s.user_id == user_id)
                    .map(|s| s.outbound.conn_id())
                    .collect();
                for conn in conns {
                    state.subscribers.remove(conn);
                }
            }
            ChannelMsg::Flagged(flagged) => state.flagged(*flagged),
            ChannelMsg::Archived { archived_at, done } => {
                state.channel.archived_at = archived_at;
                drop(done);
            }
            ChannelMsg::Deleted => {
                let frame = out::system_event(
                    "channel_deleted",
                    serde_json::json!({"channelId": state.channel.id}),
                );
                state.subscribers.fan_out(&frame, None);
                state.subscribers.clean = true;
                myself.stop(Some("channel deleted".into()));
            }
            ChannelMsg::Committed(Committed(outcomes)) => {
                state.subscribers.deferring = true;
                for (token, outcome) in outcomes {
                    if let Some(pending) = state.pending.remove(&token) {
                        state.committed(pending, outcome);
                    }
                }
                state.subscribers.deferring = false;
                state.subscribers.flush();
            }
            ChannelMsg::ReplyChecked(found) => state.reply_checked(&myself, found),
            ChannelMsg::ReplayedThrough {
                conn_id,
                replay,
                through,
                next,
            } => state.replayed_through(conn_id, replay, through, next),
            ChannelMsg::ReplayFailed {
                conn_id,
                replay,
                why,
            } => {
                let replaying = state.subscriber_replaying(conn_id, replay);
                if let Some(outbound) = replaying.map(|s| s.outbound.clone()) {
                    tracing::error!(channel_id = %state.channel.id, error = %why, "replay failed");
                    let frame = out::error(
                        None,
                        ErrorCode::Internal,
                        "recovery failed; page with fetch_history",
                    );
                    outbound.deliver(&frame);
                    state.go_live(conn_id, None);
                }
            }
            ChannelMsg::Tick => {
                let now = Instant::now();
                let expired: Vec<UserId> = state
                    .typing
                    .iter()
                    .filter(|(_, deadline)| **deadline <= now)
                    .map(|(u, _)| *u)
                    .collect();
                for user in expired {
                    state.stop_typing(user);
                }
                if state.deliveries_flushed.elapsed() >= state.services.delivery_flush {
                    state.deliveries_flushed = now;
                    state.subscribers.flush_deliveries();
                }
                if state.subscribers.by_conn.is_empty()
                    && state.pending.is_empty()
                    && state.held_sends.is_empty()
                {
                    if state.idle_since.elapsed() >= state.services.idle_stop {
                        state.subscribers.clean = true;
                        myself.stop(Some("idle".into()));
                    }
                } else {
                    state.idle_since = now;
                }
            }
        }
        Ok(())
    }
}

impl ChannelState {
    fn principal<'a>(&'a self, sender: &Sender) -> Principal<'a> {
        Principal {
            user_id: sender.user_id,
            role: sender.role,
            permissions: &self.services.permissions,
        }
    }

    /// `message_flagged`, to the joined users who may see flags here.
    fn flagged(&mut self, flagged: MessageFlagged) {
        let frame = ServerFrame::MessageFlagged(flagged);
        let (channel, members, permissions) =
            (&self.channel, &self.members, &self.services.permissions);
        self.subscribers.fan_out_to(&frame, |sub| {
            let who = Principal {
                user_id: sub.user_id,
                role: sub.role,
                permissions,
            };
            let member = members.get(&sub.user_id);
            authz::decide(who, Action::SeeFlags { channel, member }).is_ok()
        });
    }

    fn join(&mut self, myself: &ActorRef<ChannelMsg>, req: JoinRequest) {
        let JoinRequest {
            outbound,
            user_id,
            role,
            member,
            since_seq,
            reference,
            ip,
            user_agent,
            patient_ref,
        } = req;
        let last = self.last_committed;
        // However far behind, the replay pages through the store, unless the
        // operator capped it: then a join further behind than the cap gets
        // `recovered: false`, nothing replayed, and goes live at once.
        let max = self.services.recovery_max_replay;
        let since_seq = since_seq.filter(|after| max == 0 || last.saturating_sub(*after) <= max);
        let recovered = since_seq.is_some();
        let arriving = !self.subscribers.has_user(user_id);
        let mut online = self.subscribers.online();
        if arriving {
            online.push(user_id);
            self.announce_roster(Notice::Joined(user_id));
        }
        online.extend(
            self.remote_users
                .keys()
                .filter(|u| !self.subscribers.has_user(**u) && **u != user_id),
        );
        online.sort_unstable();
        let view = ChannelView {
            id: self.channel.id,
            name: self.channel.name.clone(),
            kind: out::kind(self.channel.kind),
            last_seq: last,
            last_read_seq: member.last_read_seq.min(last),
            unread: last.saturating_sub(member.last_read_seq),
            recovered,
            online,
            archived: self.channel.archived_at.is_some(),
            patient_ref,
        };
        let ack = out::ack_channel(reference, view);
        outbound.deliver(&ack);
        if arriving {
            let frame = out::presence(user_id, PresenceStatus::Online, crate::now_ms());
            self.broadcast(&frame, Some(user_id));
        }
        let conn_id = outbound.conn_id();
        self.members.insert(user_id, member);
        let replay = match since_seq {
            Some(_) => {
                self.last_replay += 1;
                self.last_replay
            }
            None => 0,
        };
        let job = since_seq.map(|after| Replay {
            services: self.services.clone(),
            channel: self.channel.id,
            outbound: outbound.clone(),
            replay,
            after,
            target: last,
            actor: myself.clone(),
            reader: Reader {
                user_id,
                ip: ip.clone(),
                user_agent: user_agent.clone(),
            },
            sent: Vec::new(),
        });
        self.subscribers.insert(Subscriber {
            outbound,
            user_id,
            role,
            live: since_seq.is_none(),
            hold_messages: false,
            held: Vec::new(),
            replay,
            unflushed: false,
            pushed_from: since_seq.is_none().then_some(last),
            hold_from: 0,
            ip,
            user_agent,
        });
        match job {
            Some(job) if job.after < last => {
                tokio::spawn(job.run());
            }
            Some(_) => self.go_live(conn_id, Some(last)),
            None => {}
        }
    }

    /// The connection's subscriber, while replay `replay` runs for it.
    fn subscriber_replaying(&mut self, conn_id: ConnId, replay: u64) -> Option<&mut Subscriber> {
        self.subscribers
            .by_conn
            .get_mut(&conn_id)
            .filter(|s| !s.live && s.replay == replay)
    }

    /// A replay queued everything up to `through`. Messages committed since
    /// were not held: the replay goes on to the newest committed seq. Once
    /// what is left fits in a page, new messages are held from then on,
    /// and the replay's next report ends it.
    fn replayed_through(
        &mut self,
        conn_id: ConnId,
        replay: u64,
        through: u64,
        next: oneshot::Sender<Option<u64>>,
    ) {
        let last = self.last_committed;
        let page = u64::from(self.services.recovery_limit.max(1));
        let Some(sub) = self.subscriber_replaying(conn_id, replay) else {
            let _ = next.send(None);
            return;
        };
        if !sub.hold_messages && last > through {
            sub.hold_messages = last - through <= page;
            sub.hold_from = last;
            if next.send(Some(last)).is_ok() {
                return;
            }
        } else {
            let _ = next.send(None);
        }
        self.go_live(conn_id, Some(through));
    }

    /// Ends a connection's replay: `recovered` (when it got through), the
    /// pushes held meanwhile, and live pushes from now on.
    fn go_live(&mut self, conn_id: ConnId, through: Option<u64>) {
        let Some(sub) = self.subscribers.by_conn.get_mut(&conn_id) else {
            return;
        };
        let mut ok = match through {
            Some(seq) => {
                let frame = out::recovered(self.channel.id, seq);
                sub.outbound.deliver(&frame) == Push::Queued
            }
            None => true,
        };
        for held in std::mem::take(&mut sub.held) {
            if !ok || sub.outbound.push(held) != Push::Queued {
                ok = false;
                break;
            }
        }
        // Pushes from here on: the held ones and the live ones after.
        sub.pushed_from = Some(match through {
            Some(seq) => seq,
            None if sub.hold_messages => sub.hold_from,
            None => self.subscribers.pushed_through,
        });
        sub.live = true;
        sub.hold_messages = false;
        sub.replay = 0;
        let user = sub.user_id;
        if !ok {
            self.subscribers.remove(conn_id);
        } else if let Some(seq) = through {
            self.delivered.remove(&user);
            self.direct_status(user, seq, DeliveryStatus::Delivered);
        }
    }

    /// How far `user` got: everything committed while a connection of theirs
    /// is live here, else what was kept when the last one left.
    fn delivered_seq(&self, user: UserId) -> Option<u64> {
        if self.subscribers.has_live_user(user) {
            return Some(self.last_committed);
        }
        self.delivered.get(&user).copied()
    }

    /// `user`'s last live connection left: keep and store how far they got
    /// (one write per departure, none per message).
    fn left(&mut self, user: UserId) {
        let seq = self.last_committed;
        self.delivered.insert(user, seq);
        let op = WriteOp::MarkDelivered {
            channel_id: self.channel.id,
            user_id: user,
            seq,
        };
        self.submit(op, Pending::Delivered);
    }

    /// In a direct channel, tells the other member's live connections that
    /// `user` got (or read) their messages up to `seq`.
    fn direct_status(&mut self, user: UserId, seq: u64, status: DeliveryStatus) {
        if self.channel.kind == ChannelKind::Direct {
            let frame = out::message_status(self.channel.id, user, seq, status);
            self.broadcast(&frame, Some(user));
        }
    }

    fn stop_typing(&mut self, user: UserId) {
        if self.typing.remove(&user).is_some() {
            let frame = out::typing(self.channel.id, user, false);
            self.broadcast(&frame, Some(user));
        }
    }

    /// Hands a write to the persistence actor; answers `unavailable` at once
    /// when its queue is full. Returns whether it was queued.
    fn submit(&mut self, op: WriteOp, pending: Pending) -> bool {
        let token = self.next_token;
        match self
            .services
            .persistence
            .submit(op, PersistReply::Batched(self.commits_to.clone(), token))
        {
            Ok(()) => {
                self.next_token += 1;
                self.pending.insert(token, pending);
                true
            }
            Err(e) => {
                pending.fail(e.into());
                false
            }
        }
    }

    /// A send: at once when its `replyTo` (if any) is a message this actor
    /// knows, else held until the store says; sends behind a held one wait
    /// their turn.
    fn publish(&mut self, myself: &ActorRef<ChannelMsg>, req: PublishRequest) {
        if self.held_sends.is_empty() {
            let _held = self.publish_or_hold(myself, req);
        } else {
            self.held_sends.push_back(req);
        }
    }

    /// Publishes `req`, or holds it (first in line) and asks the store
    /// whether its `replyTo` is a message of this channel. Returns whether
    /// it was held.
    fn publish_or_hold(&mut self, myself: &ActorRef<ChannelMsg>, mut req: PublishRequest) -> bool {
        let Some(reply_to) = req.reply_to.filter(|id| !self.recent_ids.set.contains(id)) else {
            self.publish_checked(req);
            return false;
        };
        // Refused senders learn nothing about the channel's messages.
        if !self.authorize(&mut req) {
            return false;
        }
        self.held_sends.push_front(req);
        let store = self.services.store.clone();
        let channel = self.channel.id;
        let myself = myself.clone();
        tokio::spawn(async move {
            let found = match store.get_message(reply_to).await {
                Ok(row) => Ok(row.is_some_and(|r| r.message.channel_id == channel)),
                Err(e) => Err(e.to_string()),
            };
            let _ = myself.cast(ChannelMsg::ReplyChecked(found));
        });
        true
    }

    /// The store answered for the first held send: publish or refuse it,
    /// then the sends behind it until one needs the store again.
    fn reply_checked(&mut self, myself: &ActorRef<ChannelMsg>, found: Result<bool, String>) {
        let Some(req) = self.held_sends.pop_front() else {
            return;
        };
        match found {
            Ok(true) => {
                if let Some(id) = req.reply_to {
                    self.recent_ids.insert(id);
                }
                self.publish_checked(req);
            }
            Ok(false) => req.reply.send(Err(ChannelError::NotFound(
                "replyTo names no message of this channel",
            ))),
            Err(why) => {
                tracing::warn!(channel_id = %self.channel.id, error = %why, "replyTo lookup failed");
                req.reply.send(Err(ChannelError::Unavailable));
            }
        }
        while let Some(next) = self.held_sends.pop_front() {
            if self.publish_or_hold(myself, next) {
                break;
            }
        }
    }

    /// Whether the sender may post here; a refusal is answered and audited.
    fn authorize(&self, req: &mut PublishRequest) -> bool {
        if req.joined {
            req.sender.member = self.members.get(&req.sender.user_id).cloned();
        }
        let principal = self.principal(&req.sender);
        let action = Action::Post {
            channel: &self.channel,
            member: req.sender.member.as_ref(),
        };
        let Err(denied) = authz::decide(principal, action) else {
            return true;
        };
        self.services.audit.record(PendingAudit::new(
            Some(req.sender.user_id),
            req.sender.ip.clone(),
            "access.denied",
            serde_json::json!({"op": "send_message", "channelId": self.channel.id}),
        ));
        let reply = std::mem::replace(&mut req.reply, Reply::None);
        reply.send(Err(ChannelError::Forbidden(denied.0)));
        false
    }

    /// Publishes a send whose `replyTo` is known to be of this channel.
    fn publish_checked(&mut self, mut req: PublishRequest) {
        if !self.authorize(&mut req) {
            return;
        }
        let dedup_key = req
            .client_msg_id
            .as_ref()
            .map(|c| (req.sender.user_id, c.clone()));
        if let Some(key) = &dedup_key {
            match self.client_ids.map.get(key) {
                Some(Dedup::Known(original)) => {
                    let message = MessageView {
                        id: original.message_id,
                        channel_id: self.channel.id,
                        seq: original.seq,
                        sender_id: original.sender_id,
                        sender: req.sender.username.clone(),
                        text: String::new(),
                        timestamp: original.created_at,
                        contains_phi: false,
                        reply_to: None,
                        edited_at: None,
                        expires_at: None,
                        flagged: None,
                        flag_reason: None,
                        flagged_by: None,
                        flagged_at: None,
                        kind: Default::default(),
                        attachments: Vec::new(),
                        patient_ref: None,
                        mentions: Vec::new(),
                    };
                    req.reply.send(Ok(Accepted::Sent {
                        message,
                        duplicate: true,
                    }));
                    return;
                }
                Some(Dedup::Pending(token)) => {
                    if let Some(Pending::Publish { resends, .. }) = self.pending.get_mut(token) {
                        resends.push(req.reply);
                        return;
                    }
                }
                None => {}
            }
        }

        let seq = self.last_assigned + 1;
        let id = MessageId::new();
        let now = crate::now_ms();
        let sealed = match self
            .services
            .cipher
            .seal(self.channel.id, id, seq, req.text.as_bytes())
        {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::error!(error = %e, "encryption failed");
                req.reply
                    .send(Err(ChannelError::Internal("encryption failed".into())));
                return;
            }
        };
        // Only a message that names a patient pays for sealing and tagging it.
        let patient = match &req.patient_ref {
            None => None,
            Some(r) => match PatientSeal::new(&self.services.cipher, RefOwner::Message(id), r) {
                Ok(seal) => Some(seal),
                Err(e) => {
                    tracing::error!(error = %e, "sealing a patient reference failed");
                    req.reply
                        .send(Err(ChannelError::Internal("encryption failed".into())));
                    return;
                }
            },
        };
        let (patient_ref, patient_tag) = match patient {
            Some(PatientSeal { sealed, tag }) => (Some(sealed), Some(tag)),
            None => (None, None),
        };
        let expires_at = req
            .ttl_seconds
            .map(|ttl| now.saturating_add((ttl.min(i64::MAX as u64 / 1000) * 1000) as i64));
        let stored = StoredMessage {
            id,
            channel_id: self.channel.id,
            seq,
            sender_id: req.sender.user_id,
            client_msg_id: req.client_msg_id.clone(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce.to_vec(),
            key_version: sealed.key_version,
            contains_phi: req.contains_phi,
            reply_to: req.reply_to,
            created_at: now,
            edited_at: None,
            expires_at,
            deleted_at: None,
            kind: MessageKind::of_attachments(req.attachments.iter().map(|a| a.mime.as_str())),
            attachments: req.attachments.iter().map(|a| a.id).collect(),
            patient_ref,
            patient_tag,
            // Hashed into blind-index tokens by the persistence actor's batch.
            search: SearchIndex::pending(self.services.cipher.clone(), self.channel.id, &req.text),
        };
        let message = MessageView {
            id,
            channel_id: self.channel.id,
            seq,
            sender_id: req.sender.user_id,
            sender: req.sender.username,
            text: req.text,
            timestamp: now,
            contains_phi: req.contains_phi,
            reply_to: req.reply_to,
            edited_at: None,
            expires_at,
            flagged: None,
            flag_reason: None,
            flagged_by: None,
            flagged_at: None,
            kind: stored.kind,
            attachments: req.attachments,
            patient_ref: req.patient_ref,
            mentions: req.mentions,
        };
        if !message.mentions.is_empty() {
            // Before the insert, so that its ack means both are committed.
            let op = WriteOp::SetMentions {
                message_id: id,
                users: message.mentions.iter().map(|m| m.user_id).collect(),
            };
            self.submit(op, Pending::Mentions);
        }
        let token = self.next_token;
        let pending = Pending::Publish {
            message,
            reply: req.reply,
            resends: Vec::new(),
            received: req.received,
            phi_found: req.phi_found,
            ip: req.sender.ip,
            client_key: dedup_key.clone(),
        };
        if self.submit(WriteOp::InsertMessage(stored), pending) {
            self.last_assigned = seq;
            if let Some(key) = dedup_key {
                self.client_ids.insert(key, Dedup::Pending(token));
            }
        }
    }

    fn edit(&mut self, req: EditRequest) {
        let o = &req.original;
        let sealed =
            match self
                .services
                .cipher
                .seal(self.channel.id, o.id, o.seq, req.text.as_bytes())
            {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::error!(error = %e, "encryption failed");
                    req.reply
                        .send(Err(ChannelError::Internal("encryption failed".into())));
                    return;
                }
            };
        let edited_at = crate::now_ms();
        let op = WriteOp::EditMessage {
            id: o.id,
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce.to_vec(),
            key_version: sealed.key_version,
            edited_at,
            search: SearchIndex::pending(self.services.cipher.clone(), self.channel.id, &req.text),
        };
        let mut message = req.original;
        message.text = req.text;
        message.edited_at = Some(edited_at);
        let before: Vec<UserId> = message.mentions.iter().map(|m| m.user_id).collect();
        message.mentions = req.mentions;
        let after: Vec<UserId> = message.mentions.iter().map(|m| m.user_id).collect();
        let message_id = message.id;
        let pending = Pending::Edit {
            message,
            editor: req.editor,
            reply: req.reply,
            before: before.clone(),
        };
        if before != after {
            // Before the edit, so that its answer means both are committed.
            let mentions = WriteOp::SetMentions {
                message_id,
                users: after,
            };
            self.submit(mentions, Pending::Mentions);
        }
        self.submit(op, pending);
    }

    fn delete(&mut self, req: DeleteRequest) {
        let op = WriteOp::DeleteMessage {
            id: req.message_id,
            deleted_at: crate::now_ms(),
        };
        let pending = Pending::Delete {
            deleter: req.deleter,
            message_id: req.message_id,
            seq: req.seq,
            reason: req.reason,
            reply: req.reply,
        };
        self.submit(op, pending);
    }

    /// Tells the notifier of a committed message: the members it mentions
    /// (but those in `already`) and, for a new message of a direct
    /// channel, the other party. Nothing is queued for anything else.
    fn notify(&self, message: &MessageView, already: &[UserId], new: bool) {
        let direct = new && self.channel.kind == ChannelKind::Direct;
        let mentioned: Vec<UserId> = message
            .mentions
            .iter()
            .map(|m| m.user_id)
            .filter(|u| !already.contains(u))
            .collect();
        if !direct && mentioned.is_empty() {
            return;
        }
        self.services
            .notifier
            .send(crate::notify::NotifyMsg::Message(
                crate::notify::MessageEvent {
                    channel_id: self.channel.id,
                    message_id: message.id,
                    seq: message.seq,
                    sender: message.sender_id,
                    mentioned,
                    direct,
                },
            ));
    }

    /// A write was committed (or refused): answer, push, audit.
    fn committed(&mut self, pending: Pending, outcome: Result<WriteOutcome, PersistError>) {
        let channel_id = self.channel.id;
        let audit =
            |actor: UserId, ip: Option<String>, action: &str, details: serde_json::Value| {
                PendingAudit::new(Some(actor), ip, action, details)
            };
        match (pending, outcome) {
            (Pending::Delivered, Ok(_)) => {}
            (Pending::Delivered, Err(e)) => {
                tracing::warn!(channel_id = %channel_id, error = %e, "delivered position not stored");
            }
            (Pending::Mentions, Ok(_)) => {}
            (Pending::Mentions, Err(e)) => {
                tracing::warn!(channel_id = %channel_id, error = %e, "a message's mentions were not stored");
            }
            (
                Pending::Publish {
                    message,
                    reply,
                    resends,
                    received,
                    phi_found,
                    ip,
                    client_key,
                },
                Ok(WriteOutcome::Done),
            ) => {
                self.last_committed = self.last_committed.max(message.seq);
                self.recent_ids.insert(message.id);
                if let Some(key) = client_key {
                    self.client_ids.map.insert(
                        key.clone(),
                        Dedup::Known(ClientMsgRef {
                            sender_id: message.sender_id,
                            client_msg_id: key.1,
                            message_id: message.id,
                            seq: message.seq,
                            created_at: message.timestamp,
                        }),
                    );
                }
                histogram!(m::PUBLISH_ACK_SECONDS).record(received.elapsed().as_secs_f64());
                counter!(m::MESSAGES_PUBLISHED).increment(1);
                self.services.audit.record(audit(
                    message.sender_id,
                    ip,
                    "message.send",
                    serde_json::json!({
                        "channelId": channel_id, "messageId": message.id, "seq": message.seq,
                        "containsPHI": message.contains_phi, "phiDetected": phi_found,
                    }),
                ));
                for resend in resends {
                    resend.send(Ok(Accepted::Sent {
                        message: message.clone(),
                        duplicate: true,
                    }));
                }
                let (sender, seq) = (message.sender_id, message.seq);
                self.notify(&message, &[], true);
                let frame = out::new_message(message.clone());
                reply.send(Ok(Accepted::Sent {
                    message,
                    duplicate: false,
                }));
                self.publish_push(&frame, None, None);
                // The other member of a direct channel has it once a live
                // connection of theirs does (here, or on another node).
                self.take_message(&frame, sender, seq);
            }
            (
                Pending::Publish {
                    message,
                    reply,
                    resends,
                    ..
                },
                Ok(WriteOutcome::Duplicate(original)),
            ) => {
                // A tombstone took this seq in the store; nothing is delivered.
                self.last_committed = self.last_committed.max(message.seq);
                let key = (original.sender_id, original.client_msg_id.clone());
                let view = MessageView {
                    id: original.message_id,
                    seq: original.seq,
                    timestamp: original.created_at,
                    ..message
                };
                self.client_ids.map.insert(key, Dedup::Known(original));
                for r in resends.into_iter().chain(std::iter::once(reply)) {
                    r.send(Ok(Accepted::Sent {
                        message: view.clone(),
                        duplicate: true,
                    }));
                }
            }
            (
                Pending::Publish {
                    message,
                    reply,
                    resends,
                    client_key,
                    ..
                },
                outcome,
            ) => {
                // Refused: the seq stays unused in the store. Resends may try again.
                if let Some(key) = client_key {
                    self.client_ids.map.remove(&key);
                }
                let err = match outcome {
                    Err(e) => ChannelError::from(e),
                    Ok(_) => ChannelError::Internal("unexpected write outcome".into()),
                };
                tracing::error!(channel_id = %channel_id, seq = message.seq, error = %err, "message not committed");
                self.last_committed = self.last_committed.max(message.seq);
                for r in resends.into_iter().chain(std::iter::once(reply)) {
                    r.send(Err(err.clone()));
                }
            }
            (
                Pending::Edit {
                    message,
                    editor,
                    reply,
                    before,
                },
                Ok(WriteOutcome::Done),
            ) => {
                self.notify(&message, &before, false);
                self.services.audit.record(audit(
                    editor,
                    None,
                    "message.edit",
                    serde_json::json!({"channelId": channel_id, "messageId": message.id, "seq": message.seq}),
                ));
                reply.send(Ok(Accepted::Done));
                self.broadcast(&out::message_updated(message), None);
            }
            (
                Pending::Delete {
                    deleter,
                    message_id,
                    seq,
                    reason,
                    reply,
                },
                Ok(WriteOutcome::Done),
            ) => {
                let mut details = serde_json::json!({"channelId": channel_id, "messageId": message_id, "seq": seq});
                if let Some(reason) = reason {
                    details["reason"] = reason.into();
                }
                self.services
                    .audit
                    .record(audit(deleter, None, "message.delete", details));
                reply.send(Ok(Accepted::Done));
                self.broadcast(&out::message_deleted(message_id, channel_id, seq), None);
            }
            (
                Pending::Read {
                    user_id,
                    seq,
                    reply,
                },
                Ok(WriteOutcome::Done),
            ) => {
                self.services.audit.record(audit(
                    user_id,
                    None,
                    "message.read_receipt",
                    serde_json::json!({"channelId": channel_id, "seq": seq}),
                ));
                reply.send(Ok(Accepted::Done));
                self.broadcast(&out::read_receipt(channel_id, user_id, seq), None);
                self.direct_status(user_id, seq, DeliveryStatus::Read);
            }
            (
                Pending::React {
                    user_id,
                    message_id,
                    reaction,
                    add,
                    reply,
                },
                Ok(WriteOutcome::Reactions(counts)),
            ) => {
                self.services.audit.record(audit(
                    user_id,
                    None,
                    if add { "reaction.add" } else { "reaction.remove" },
                    serde_json::json!({"channelId": channel_id, "messageId": message_id, "reaction": reaction}),
                ));
                reply.send(Ok(Accepted::Done));
                self.broadcast(&out::reaction_updated(channel_id, message_id, counts), None);
            }
            (pending, Ok(WriteOutcome::NotFound)) => {
                pending.fail(ChannelError::NotFound("no such message"))
            }
            (pending, Ok(other)) => {
                tracing::error!(outcome = ?other, "unexpected write outcome");
                pending.fail(ChannelError::Internal("unexpected write outcome".into()));
            }
            (pending, Err(e)) => pending.fail(e.into()),
        }
    }
}

impl Pending {
    fn fail(self, err: ChannelError) {
        match self {
            Pending::Publish { reply, resends, .. } => {
                for r in resends.into_iter().chain(std::iter::once(reply)) {
                    r.send(Err(err.clone()));
                }
            }
            Pending::Delivered | Pending::Mentions => {}
            Pending::Edit { reply, .. }
            | Pending::Delete { reply, .. }
            | Pending::Read { reply, .. }
            | Pending::React { reply, .. } => reply.send(Err(err)),
        }
    }
}

/// A join's replay: reads what the connection missed from the store a page
/// at a time, in seq order, and queues it as `new_message` frames, waiting
/// for room in the connection's queue (memory stays at one page however far
/// behind the client is). Each time it reaches its target it asks the
/// channel actor how far to go on.
struct Replay {
    services: Arc<ChannelServices>,
    channel: ChannelId,
    outbound: Outbound,
    replay: u64,
    /// Queued up to here.
    after: u64,
    /// Going up to here.
    target: u64,
    actor: ActorRef<ChannelMsg>,
    /// Who is sent the replay (the audit's reader).
    reader: Reader,
    /// The seqs queued so far, merged as they go.
    sent: Vec<reads::SeqRange>,
}

/// The reader of a replay, for its `history.read` entry.
struct Reader {
    user_id: UserId,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl Replay {
    async fn run(mut self) {
        self.replay_all().await;
        self.audit();
    }

    /// `history.read` with `via: "recovery"`: the seqs queued to the
    /// connection (however the replay ended), once.
    fn audit(&self) {
        if self.sent.is_empty() {
            return;
        }
        let count: u64 = self.sent.iter().map(|[a, b]| b - a + 1).sum();
        let mut details = reads::details_of_ranges(self.channel, &self.sent, "recovery");
        details["count"] = count.into();
        details["connId"] = self.outbound.conn_id().0.into();
        let grant =
            self.services
                .break_glass
                .active(self.channel, self.reader.user_id, crate::now_ms());
        reads::mark_break_glass(&mut details, grant);
        let mut event = PendingAudit::new(
            Some(self.reader.user_id),
            self.reader.ip.clone(),
            "history.read",
            details,
        );
        event.user_agent = self.reader.user_agent.clone();
        self.services.audit.record(event);
    }

    async fn replay_all(&mut self) {
        let conn_id = self.outbound.conn_id();
        loop {
            match self.catch_up().await {
                Ok(true) => {}
                // The connection is closing; its actor makes it leave.
                Ok(false) => return,
                Err(why) => {
                    let msg = ChannelMsg::ReplayFailed {
                        conn_id,
                        replay: self.replay,
                        why,
                    };
                    let _ = self.actor.cast(msg);
                    return;
                }
            }
            let (next, told) = oneshot::channel();
            let msg = ChannelMsg::ReplayedThrough {
                conn_id,
                replay: self.replay,
                through: self.target,
                next,
            };
            if self.actor.cast(msg).is_err() {
                return;
            }
            match told.await {
                Ok(Some(target)) => self.target = target,
                _ => return,
            }
        }
    }

    /// Queues every message up to `target`; `Ok(false)` when the
    /// connection closed first.
    async fn catch_up(&mut self) -> Result<bool, String> {
        while self.after < self.target {
            let (messages, next) =
                page_after(&self.services, self.channel, self.after, self.target).await?;
            self.after = next;
            for message in messages {
                if !self.outbound.has_room() && !self.outbound.room().await {
                    return Ok(false);
                }
                let seq = message.seq;
                let frame = out::new_message(message);
                if self.outbound.deliver(&frame) != Push::Queued {
                    return Ok(false);
                }
                match self.sent.last_mut() {
                    Some(last) if last[1] + 1 == seq => last[1] = seq,
                    _ => self.sent.push([seq, seq]),
                }
            }
        }
        Ok(true)
    }
}

/// One page of the channel's stored messages after `after` (at most
/// `recovery_limit`), those up to `through` opened, and where the next page
/// starts: `through` once the store has nothing more.
async fn page_after(
    services: &ChannelServices,
    channel: ChannelId,
    after: u64,
    through: u64,
) -> Result<(Vec<MessageView>, u64), String> {
    let page = services.recovery_limit.max(1);
    let rows = services
        .store
        .messages_after(channel, after, page)
        .await
        .map_err(|e| e.to_string())?;
    let next = match rows.last() {
        Some(row) if rows.len() == page as usize => row.message.seq.min(through),
        _ => through,
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| r.message.seq <= through)
        .collect();
    let messages = history::open_rows(services.cipher.clone(), rows)
        .await
        .map_err(|e| e.to_string())?;
    Ok((messages, next))
}
