//! # ConnectionActor: one per WebSocket
//!
//! **Owns** one socket: its reader task (frames in), its writer task and
//! bounded outbound queue (frames out, see [`outbound`](crate::realtime::outbound)),
//! the authentication state, the encoding of its pushes (that of its first
//! frame), and the channels it has joined.
//!
//! **Takes** [`ConnMsg`]: frames from its reader task (one at a time, with
//! a permit, so a flooding client is slowed by TCP instead of filling
//! memory), the clocks that task keeps (the heartbeat, and the [`Deadline`]:
//! the authentication deadline, then the token's expiry), and the server's
//! shutdown phases.
//!
//! **Does**: authenticates the first frame within the deadline, then answers
//! every request of PROTOCOL.md section 4 in the order the frames came. Reads
//! (history, membership) it does itself; writes go to the channel actors,
//! which answer straight into this connection's queue. Undecodable frames
//! get `invalid_frame` and the connection goes on; before authentication,
//! any frame but `authenticate` (decodable or not) gets `unauthenticated`
//! and close 4001.
//!
//! **Supervised by** the realtime root. **A crash** closes only this
//! socket; its channels and presence actor drop it when they next fail to
//! push to its queue.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_protocol::codec::{self, Encoding};
use courier_protocol::compact::FrameStyle;
use courier_protocol::error::close;
use courier_protocol::frames::{
    AuthSuccess, AuthUser, Authenticate, AuthenticationResponse, ClientFrame, ClientRequest,
    ErrorBody, FetchHistory, History, Pong, ReadPosition, Ref, ServerFrame, UserStatus,
    MAX_FLAG_REASON_BYTES,
};
use courier_protocol::{ChannelId, ErrorCode, MessageId};
use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use crate::audit::chain::PendingAudit;
use crate::audit::reads;
use crate::durable::history;
use crate::durable::store::{Channel, Member};
use crate::policy::authz::{Action, Principal};
use crate::policy::identity::{AuthRejected, Identity};
use crate::realtime::channel::{Accepted, ChannelError, ChannelMsg, JoinRequest, Reply, Sender};
use crate::realtime::frames_out as out;
use crate::realtime::outbound::{self, ConnId, Outbound, OutboundReceiver, PushForm, WriterEnd};
use crate::realtime::presence::{ForUser, PresenceMsg};
pub use crate::realtime::reader::WsStream;
use crate::realtime::reader::{read_loop, Deadline, ReaderEvent};
use crate::realtime::{AccessError, Change, Publish, PublishError, Realtime, ShutdownPhase};
use crate::telemetry::names as m;

/// The socket's write half: finished frames are written to it as bytes.
pub type WsWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Where the connection comes from (for the audit log and the per-address
/// connection caps).
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The edge's per-address count of this connection, if it keeps one:
    /// told when the connection first authenticates, released when the
    /// actor's state drops.
    pub slot: Option<Arc<dyn AdmissionSlot>>,
}

/// A connection's place among its client address's connections (the
/// server's connection caps).
pub trait AdmissionSlot: Send + Sync + std::fmt::Debug {
    /// The connection authenticated: it no longer counts as unauthenticated.
    fn authenticated(&self);
}

/// What a connection actor starts with.
pub struct ConnectionArgs {
    pub realtime: Arc<Realtime>,
    pub stream: WsStream,
    pub write: WsWrite,
    /// The connection's queue and its receiving end for the writer.
    pub outbound: Outbound,
    pub receiver: OutboundReceiver,
    pub peer: Peer,
    /// Counts this connection while the actor lives (for graceful shutdown).
    pub live: crate::realtime::ConnectionGuard,
}

/// Messages of a connection actor.
pub enum ConnMsg {
    /// From its reader task: frames, the clocks, shutdown phases.
    Reader(ReaderEvent),
    /// The writer stopped.
    WriteEnded(WriterEnd),
}

variant_message!(ConnMsg::Reader(ReaderEvent));

/// The actor; its configuration is the shared [`Realtime`] handles.
pub struct ConnectionActor;

/// A channel this connection joined.
struct Joined {
    actor: ActorRef<ChannelMsg>,
}

/// Everything the actor owns.
pub struct ConnectionState {
    realtime: Arc<Realtime>,
    conn_id: ConnId,
    peer: Peer,
    /// The queue; its encoding is that of pushes.
    outbound: Outbound,
    /// Set by the first frame.
    push_encoding: Option<Encoding>,
    identity: Option<Identity>,
    joined: HashMap<ChannelId, Joined>,
    last_heard: Instant,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// The authentication deadline, then the access token's expiry; the
    /// reader task watches it (no timer task of its own, which would also
    /// hold the actor's cell until it fired).
    deadline: Deadline,
    span: tracing::Span,
    _live: crate::realtime::ConnectionGuard,
    /// Set by a clean stop; without it (a crash) `Drop` closes with 1011.
    clean: bool,
    /// A close is queued: no more frames are answered.
    closing: bool,
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        self.reader.abort();
        if !self.clean {
            // Killed while the server closes is going away, not a crash.
            let closing = *self.realtime.shutdown.borrow() == ShutdownPhase::Closing;
            self.outbound
                .close_now(if closing { close::GOING_AWAY } else { 1011 });
        }
    }
}

impl Actor for ConnectionActor {
    type Msg = ConnMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConnectionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let outbound = args.outbound;
        let conn_id = outbound.conn_id();
        let span =
            tracing::info_span!("conn", conn_id = conn_id.0, user_id = tracing::field::Empty);
        let limits = &args.realtime.limits;
        let writer = {
            let myself = myself.clone();
            let (write, receiver) = (args.write, args.receiver);
            tokio::spawn(async move {
                let (end, closing) = outbound::run_writer(write, receiver).await;
                let _ = myself.cast(ConnMsg::WriteEnded(end));
                // The actor goes now; the close code may still reach the client.
                // Boxed: the close's timer would otherwise be part of every
                // idle connection's writer task.
                if let Some(closing) = closing {
                    Box::pin(closing.deliver()).await;
                }
            })
        };
        let deadline = Deadline::at(crate::now_ms() + limits.auth_timeout.as_millis() as i64);
        let reader = tokio::spawn(read_loop(
            args.stream,
            myself.get_derived(),
            args.realtime.shutdown.clone(),
            limits.heartbeat,
            deadline.clone(),
        ));
        counter!(m::CONNECTIONS_TOTAL).increment(1);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Ok(ConnectionState {
            realtime: args.realtime,
            conn_id,
            peer: args.peer,
            outbound,
            push_encoding: None,
            identity: None,
            joined: HashMap::new(),
            last_heard: Instant::now(),
            reader,
            deadline,
            writer,
            span,
            _live: args.live,
            clean: false,
            closing: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        state.clean = true;
        state.reader.abort();
        // Disconnected first: when this was the user's last connection, the
        // presence actor still knows their channels and tells them `offline`.
        if let Some(identity) = &state.identity {
            let msg = PresenceMsg::Disconnected {
                conn_id: state.conn_id,
                online_elsewhere: false,
            };
            let _ = state.realtime.presence.cast(ForUser(identity.user_id, msg));
            // The session's end, beside its `ws.connect`.
            state.audit(
                "ws.disconnect",
                serde_json::json!({"connId": state.conn_id.0}),
            );
        }
        for (channel_id, joined) in state.joined.drain() {
            let _ = joined.actor.cast(ChannelMsg::Leave {
                conn_id: state.conn_id,
            });
            if let Some(identity) = &state.identity {
                let msg = PresenceMsg::Left { channel_id };
                let _ = state.realtime.presence.cast(ForUser(identity.user_id, msg));
            }
        }
        // Let the writer finish what is queued (a close frame, say) briefly.
        let writer = std::mem::replace(&mut state.writer, tokio::spawn(async {}));
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(2), writer)
                .await
                .is_err()
            {
                tracing::debug!("writer did not finish in time");
            }
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The connection's span is current only while the handler is being
        // polled. An `enter()` guard held across an await stays current on
        // the worker thread for whatever task is polled next; spans then nest
        // wrongly, and tracing panics when one of those tasks clones the span
        // after it closed.
        let span = state.span.clone();
        state.dispatch(myself, msg).instrument(span).await;
        Ok(())
    }
}

impl ConnectionState {
    /// Handles one message of the actor's mailbox.
    async fn dispatch(&mut self, myself: ActorRef<ConnMsg>, msg: ConnMsg) {
        match msg {
            ConnMsg::Reader(ReaderEvent::Frame(_, _)) if self.closing => {}
            ConnMsg::Reader(ReaderEvent::Frame(frame, _permit)) => {
                self.last_heard = Instant::now();
                // Boxed: the request futures are large, and inline they would
                // make every connection's task (idle or not) that large.
                Box::pin(self.on_frame(frame)).await;
            }
            ConnMsg::Reader(ReaderEvent::ReadEnded(code)) => {
                if let Some(code) = code {
                    self.outbound.close_now(code);
                } else {
                    myself.stop(None);
                }
            }
            ConnMsg::WriteEnded(_) => myself.stop(None),
            ConnMsg::Reader(ReaderEvent::DeadlinePassed) if self.closing => {}
            ConnMsg::Reader(ReaderEvent::DeadlinePassed) => match &self.identity {
                None => {
                    counter!(m::AUTH_FAILURES, "reason" => "timeout").increment(1);
                    self.send(
                        &out::error(None, ErrorCode::AuthTimeout, "authentication timed out"),
                        self.encoding(),
                    );
                    self.close_after_queued(close::AUTH_FAILED, "authentication timed out");
                }
                Some(identity) if identity.expires_at <= crate::now_ms() => {
                    self.send(
                        &out::error(None, ErrorCode::AuthFailed, "access token expired"),
                        self.encoding(),
                    );
                    self.close_after_queued(close::AUTH_FAILED, "token expired");
                }
                // A re-authentication moved the deadline after it passed.
                Some(_) => {}
            },
            ConnMsg::Reader(ReaderEvent::Heartbeat) => {
                if self.last_heard.elapsed() >= self.realtime.limits.idle_timeout {
                    self.outbound.close_now(close::IDLE);
                } else {
                    self.outbound.ping();
                }
            }
            ConnMsg::Reader(ReaderEvent::Shutdown(ShutdownPhase::Draining)) => {
                let frame = ServerFrame::shutdown();
                self.send(&frame, self.encoding());
            }
            ConnMsg::Reader(ReaderEvent::Shutdown(ShutdownPhase::Closing)) => {
                self.close_after_queued(close::GOING_AWAY, "server shutting down");
            }
            ConnMsg::Reader(ReaderEvent::Shutdown(ShutdownPhase::Running)) => {}
        }
    }

    /// The encoding of pushes (MessagePack until the first frame says).
    fn encoding(&self) -> Encoding {
        self.push_encoding.unwrap_or(Encoding::MessagePack)
    }

    /// Queues one frame in `encoding`.
    fn send(&self, frame: &ServerFrame, encoding: Encoding) {
        self.outbound.push_frame(frame, encoding);
    }

    /// Queues a close behind what is queued; frames read from now on are
    /// dropped unanswered.
    fn close_after_queued(&mut self, code: u16, reason: &'static str) {
        self.closing = true;
        self.outbound.close_after_queued(code, reason);
    }

    fn audit(&self, action: &str, details: serde_json::Value) {
        let actor = self.identity.as_ref().map(|i| i.user_id);
        let mut event = PendingAudit::new(actor, self.peer.ip.clone(), action, details);
        event.user_agent = self.peer.user_agent.clone();
        self.realtime.audit.record(event);
    }

    async fn on_frame(&mut self, frame: Message) {
        let (bytes, encoding) = match &frame {
            Message::Binary(b) => (b.as_ref(), Encoding::MessagePack),
            Message::Text(t) => (t.as_bytes(), Encoding::Json),
            Message::Close(_) => {
                // The client's close: answer it (tungstenite does) and stop reading.
                return;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return,
        };
        counter!(m::FRAMES_IN).increment(1);
        if self.push_encoding.is_none() {
            self.push_encoding = Some(encoding);
            self.outbound = self.outbound.with_encoding(encoding);
        }
        let request = match codec::decode_client(bytes, encoding) {
            Ok(request) => request,
            // Before authentication only `authenticate` is answered; one
            // with bad fields is still an `authenticate`, and `invalid_frame`
            // never closes (PROTOCOL.md section 2).
            Err(e) if self.identity.is_some() || e.frame_type() == Some("authenticate") => {
                counter!(m::INVALID_FRAMES).increment(1);
                self.send(&e.to_error_frame(), encoding);
                return;
            }
            Err(e) => {
                counter!(m::INVALID_FRAMES).increment(1);
                self.unauthenticated(e.reference().cloned(), encoding);
                return;
            }
        };
        let ClientFrame { reference, request } = request;
        match (&self.identity, request) {
            (_, ClientRequest::Authenticate(auth)) => {
                self.authenticate(reference, &auth, encoding).await;
            }
            (None, _) => self.unauthenticated(reference, encoding),
            (Some(identity), request) => {
                let identity = identity.clone();
                let reply = Reply::Frame {
                    outbound: self.outbound.with_encoding(encoding),
                    reference: reference.clone(),
                };
                if let Err(e) = self
                    .request(&identity, request, reference.clone(), encoding, reply)
                    .await
                {
                    self.send(&out::error(reference, e.code(), &e.to_string()), encoding);
                }
            }
        }
    }

    /// Any frame but `authenticate` before authentication (PROTOCOL.md
    /// section 3): `unauthenticated`, then close 4001.
    fn unauthenticated(&mut self, reference: Option<Ref>, encoding: Encoding) {
        counter!(m::AUTH_FAILURES, "reason" => "unauthenticated").increment(1);
        self.send(
            &out::error(reference, ErrorCode::Unauthenticated, "authenticate first"),
            encoding,
        );
        self.close_after_queued(close::AUTH_FAILED, "not authenticated");
    }

    async fn authenticate(
        &mut self,
        reference: Option<Ref>,
        auth: &Authenticate,
        encoding: Encoding,
    ) {
        let result = self.realtime.authenticator.authenticate(&auth.token).await;
        let identity = match (result, &self.identity) {
            (Ok(new), Some(current)) if new.user_id != current.user_id => {
                Err(AuthRejected::InvalidToken)
            }
            (Ok(new), _) if new.must_change_password => Err(AuthRejected::PasswordChangeRequired),
            (Ok(new), _) if new.must_enrol_second_factor => {
                Err(AuthRejected::SecondFactorEnrolmentRequired)
            }
            (other, _) => other,
        };
        match identity {
            Ok(identity) => {
                let first = self.identity.is_none();
                if first
                    && auth.frames == FrameStyle::Compact
                    && self.outbound.form() == PushForm::MessagePack
                {
                    // Before anything holds this handle: presence, joins.
                    self.outbound = self.outbound.with_form(PushForm::Compact);
                }
                let frames = match self.outbound.form() {
                    PushForm::Compact => FrameStyle::Compact,
                    PushForm::MessagePack | PushForm::Json => FrameStyle::Standard,
                };
                self.span
                    .record("user_id", tracing::field::display(identity.user_id));
                self.deadline.set(identity.expires_at);
                let response = ServerFrame::AuthenticationResponse(AuthenticationResponse {
                    reference,
                    result: Ok(AuthSuccess {
                        user: AuthUser {
                            id: identity.user_id,
                            username: identity.username.clone(),
                            role: identity.role.as_str().to_owned(),
                        },
                        session_id: identity.session_id,
                        server_time: crate::now_ms(),
                        heartbeat_ms: self.realtime.limits.heartbeat.as_millis() as u64,
                        frames,
                    }),
                });
                if first {
                    if let Some(slot) = &self.peer.slot {
                        slot.authenticated();
                    }
                    let msg = PresenceMsg::Connected {
                        conn_id: self.conn_id,
                        session_id: identity.session_id,
                        outbound: self.outbound.clone(),
                    };
                    let _ = self.realtime.presence.cast(ForUser(identity.user_id, msg));
                }
                let user = (identity.user_id, identity.role);
                self.identity = Some(identity);
                if first {
                    self.audit("ws.connect", serde_json::json!({"connId": self.conn_id.0}));
                }
                self.send(&response, encoding);
                if first {
                    // The current announcements it has not had yet, after
                    // the answer: a client sees `authenticated` first.
                    self.realtime
                        .notifier
                        .send(crate::notify::NotifyMsg::Connected {
                            user_id: user.0,
                            role: user.1,
                        });
                }
            }
            Err(rejected) => {
                counter!(m::AUTH_FAILURES, "reason" => "token").increment(1);
                self.audit(
                    "ws.auth_failed",
                    serde_json::json!({"reason": rejected.to_string()}),
                );
                let code = match rejected {
                    AuthRejected::Unavailable => ErrorCode::Unavailable,
                    _ => ErrorCode::AuthFailed,
                };
                let response = ServerFrame::AuthenticationResponse(AuthenticationResponse {
                    reference,
                    result: Err(ErrorBody {
                        code,
                        message: rejected.to_string(),
                    }),
                });
                self.send(&response, encoding);
                self.close_after_queued(close::AUTH_FAILED, "authentication failed");
            }
        }
    }

    fn principal<'a>(&'a self, identity: &Identity) -> Principal<'a> {
        Principal {
            user_id: identity.user_id,
            role: identity.role,
            permissions: &self.realtime.permissions,
        }
    }

    fn sender(&self, identity: &Identity, member: Option<Member>) -> Sender {
        Sender {
            user_id: identity.user_id,
            username: identity.username.clone(),
            role: identity.role,
            member,
            ip: self.peer.ip.clone(),
        }
    }

    /// The channel actor for a channel the caller may read, with the caller's
    /// membership.
    async fn channel_actor(
        &self,
        identity: &Identity,
        channel_id: ChannelId,
    ) -> Result<(ActorRef<ChannelMsg>, Channel, Option<Member>), RequestError> {
        let (channel, member) = self
            .realtime
            .channel_access(self.principal(identity), channel_id, |c, m| {
                Action::ReadChannel {
                    channel: c,
                    member: m,
                }
            })
            .await?;
        let actor = match self.joined.get(&channel_id) {
            Some(j) => j.actor.clone(),
            None => self.realtime.channel_actor(channel.clone()).await?,
        };
        Ok((actor, channel, member))
    }

    async fn request(
        &mut self,
        identity: &Identity,
        request: ClientRequest,
        reference: Option<Ref>,
        encoding: Encoding,
        reply: Reply,
    ) -> Result<(), RequestError> {
        let limits = &self.realtime.limits;
        match request {
            // Handled before dispatch, in `on_frame`.
            ClientRequest::Authenticate(_) => {}
            ClientRequest::Ping | ClientRequest::Heartbeat => self.send(&pong(reference), encoding),
            ClientRequest::JoinChannel(join) => {
                let (channel, member) = self
                    .realtime
                    .channel_access(self.principal(identity), join.channel_id, |c, m| {
                        Action::ReadChannel {
                            channel: c,
                            member: m,
                        }
                    })
                    .await
                    .inspect_err(|_| {
                        self.audit(
                            "access.denied",
                            serde_json::json!({"op": "join_channel", "channelId": join.channel_id}),
                        );
                    })?;
                self.join(identity, channel, member, join.since_seq, reference)
                    .await?;
            }
            ClientRequest::LeaveChannel(leave) => {
                if let Some(joined) = self.joined.remove(&leave.channel_id) {
                    let _ = joined.actor.cast(ChannelMsg::Leave {
                        conn_id: self.conn_id,
                    });
                    let msg = PresenceMsg::Left {
                        channel_id: leave.channel_id,
                    };
                    let _ = self.realtime.presence.cast(ForUser(identity.user_id, msg));
                }
                reply.send(Ok(Accepted::Done));
            }
            ClientRequest::SendMessage(send) => {
                let publish = Publish {
                    sender: self.sender(identity, None),
                    channel_id: send.channel_id,
                    text: send.text,
                    client_msg_id: send.client_msg_id,
                    contains_phi: send.contains_phi,
                    reply_to: send.reply_to,
                    ttl_seconds: send.ttl_seconds.map(u64::from),
                    attachments: send.attachments,
                    patient_ref: send.patient_ref,
                    received: Instant::now(),
                    actor: self.joined.get(&send.channel_id).map(|j| j.actor.clone()),
                };
                match self.realtime.publish(publish, reply).await {
                    Ok(()) => {}
                    Err(PublishError::RateLimited(wait)) => {
                        self.send(
                            &out::rate_limited(reference, wait.as_millis() as u64),
                            encoding,
                        );
                    }
                    Err(PublishError::TooLarge) => {
                        return Err(RequestError::TooLarge(
                            "text or clientMsgId is over its size limit",
                        ))
                    }
                    Err(PublishError::Invalid(why)) => return Err(RequestError::Invalid(why)),
                    Err(PublishError::Access(e)) => return Err(e.into()),
                }
            }
            ClientRequest::EditMessage(edit) => {
                if edit.text.len() > limits.max_text_bytes {
                    return Err(RequestError::TooLarge("text is over the size limit"));
                }
                let change = Change::Edit(edit.text);
                self.change_message(identity, edit.message_id, change, reply)
                    .await?;
            }
            ClientRequest::DeleteMessage(delete) => {
                let change = Change::Delete { reason: None };
                self.change_message(identity, delete.message_id, change, reply)
                    .await?;
            }
            ClientRequest::FlagMessage(flag) => {
                let reason = flag_reason(&flag.reason)?;
                self.flag(identity, flag.message_id, Some(reason), reply)
                    .await?;
            }
            ClientRequest::UnflagMessage(unflag) => {
                self.flag(identity, unflag.message_id, None, reply).await?;
            }
            ClientRequest::TypingIndicator(typing) => {
                let joined = self
                    .joined
                    .get(&typing.channel_id)
                    .ok_or(RequestError::Forbidden("join the channel first"))?;
                let _ = joined.actor.cast(ChannelMsg::Typing {
                    user_id: identity.user_id,
                    is_typing: typing.is_typing,
                });
            }
            ClientRequest::ReadReceipt(receipt) => {
                let (actor, _, member) = self.channel_actor(identity, receipt.channel_id).await?;
                if member.is_none() {
                    return Err(RequestError::Forbidden("not a member of this channel"));
                }
                let seq = match receipt.up_to {
                    ReadPosition::Seq(seq) => seq,
                    ReadPosition::Message(id) => {
                        let row = self.realtime.store.get_message(id).await?;
                        match row {
                            Some(r) if r.message.channel_id == receipt.channel_id => r.message.seq,
                            _ => return Err(RequestError::NotFound("no such message")),
                        }
                    }
                };
                actor
                    .cast(ChannelMsg::MarkRead {
                        user_id: identity.user_id,
                        seq,
                        reply,
                    })
                    .map_err(|_| RequestError::Unavailable)?;
            }
            ClientRequest::FetchHistory(fetch) => {
                let frame = self.history(identity, reference, &fetch).await?;
                self.send(&frame, encoding);
            }
            ClientRequest::AddReaction(r) | ClientRequest::RemoveReaction(r)
                if r.reaction.is_empty() || r.reaction.len() > 64 || r.reaction.contains('\0') =>
            {
                return Err(RequestError::Invalid(
                    "reaction must be 1 to 64 bytes, without U+0000",
                ));
            }
            ClientRequest::AddReaction(r) => {
                self.react(identity, r.message_id, r.reaction, true, reply)
                    .await?
            }
            ClientRequest::RemoveReaction(r) => {
                self.react(identity, r.message_id, r.reaction, false, reply)
                    .await?
            }
            ClientRequest::OpenDirect(open) => {
                let channel = self.realtime.open_direct(identity, open.user_id).await?;
                let member = self
                    .realtime
                    .store
                    .get_member(channel.id, identity.user_id)
                    .await?;
                self.audit(
                    "channel.open_direct",
                    serde_json::json!({"channelId": channel.id}),
                );
                self.join(identity, channel, member, None, reference)
                    .await?;
            }
            ClientRequest::SetStatus(status) => {
                let status = match status.status {
                    UserStatus::Online => courier_protocol::frames::PresenceStatus::Online,
                    UserStatus::Away => courier_protocol::frames::PresenceStatus::Away,
                };
                let _ = self
                    .realtime
                    .presence
                    .cast(ForUser(identity.user_id, PresenceMsg::SetStatus(status)));
                reply.send(Ok(Accepted::Done));
            }
        }
        Ok(())
    }

    /// Joins a channel the caller may read: membership first (public and
    /// broadcast channels make the caller a member), then the channel actor
    /// answers with the `channel` object and any replay.
    async fn join(
        &mut self,
        identity: &Identity,
        channel: Channel,
        member: Option<Member>,
        since_seq: Option<u64>,
        reference: Option<Ref>,
    ) -> Result<(), RequestError> {
        let member = match member {
            Some(member) => member,
            None => {
                self.realtime
                    .become_member(&channel, identity.user_id)
                    .await?
            }
        };
        let actor = self.realtime.channel_actor(channel.clone()).await?;
        let request = JoinRequest {
            outbound: self.outbound.clone(),
            user_id: identity.user_id,
            role: identity.role,
            member,
            since_seq,
            reference,
            ip: self.peer.ip.clone(),
            user_agent: self.peer.user_agent.clone(),
            patient_ref: history::channel_patient_ref(&self.realtime.cipher, &channel),
        };
        actor
            .cast(ChannelMsg::Join(Box::new(request)))
            .map_err(|_| RequestError::Unavailable)?;
        if self
            .joined
            .insert(
                channel.id,
                Joined {
                    actor: actor.clone(),
                },
            )
            .is_none()
        {
            let msg = PresenceMsg::Joined {
                channel_id: channel.id,
                channel: actor,
            };
            let _ = self.realtime.presence.cast(ForUser(identity.user_id, msg));
        }
        self.audit("channel.join", serde_json::json!({"channelId": channel.id}));
        Ok(())
    }

    /// A message the caller may edit or delete, with its channel's actor.
    /// `edit_message` and `delete_message`, through [`Realtime::change_message`]
    /// (the path REST shares); a refusal is audited.
    async fn change_message(
        &self,
        identity: &Identity,
        message_id: MessageId,
        change: Change,
        reply: Reply,
    ) -> Result<(), RequestError> {
        let joined = |channel_id| self.joined.get(&channel_id).map(|j| j.actor.clone());
        self.realtime
            .change_message(self.principal(identity), message_id, change, joined, reply)
            .await
            .inspect_err(|e| {
                if matches!(e, AccessError::Denied(_)) {
                    self.audit(
                        "access.denied",
                        serde_json::json!({"op": "modify_message", "messageId": message_id}),
                    );
                }
            })
            .map_err(RequestError::from)
    }

    async fn react(
        &self,
        identity: &Identity,
        message_id: MessageId,
        reaction: String,
        add: bool,
        reply: Reply,
    ) -> Result<(), RequestError> {
        let row = self
            .realtime
            .store
            .get_message(message_id)
            .await?
            .filter(|r| r.message.deleted_at.is_none())
            .ok_or(RequestError::NotFound("no such message"))?;
        let (channel, _) = self
            .realtime
            .channel_access(self.principal(identity), row.message.channel_id, |c, m| {
                Action::React {
                    channel: c,
                    member: m,
                }
            })
            .await?;
        let actor = match self.joined.get(&channel.id) {
            Some(j) => j.actor.clone(),
            None => self.realtime.channel_actor(channel).await?,
        };
        actor
            .cast(ChannelMsg::React {
                message_id,
                user_id: identity.user_id,
                reaction,
                add,
                reply,
            })
            .map_err(|_| RequestError::Unavailable)
    }

    /// `flag_message` (`reason` given) or `unflag_message`, through
    /// [`Realtime::flag_message`] (the path REST shares); a refusal is
    /// audited.
    async fn flag(
        &self,
        identity: &Identity,
        message_id: MessageId,
        reason: Option<String>,
        reply: Reply,
    ) -> Result<(), RequestError> {
        self.realtime
            .flag_message(
                self.principal(identity),
                self.peer.ip.clone(),
                message_id,
                reason,
            )
            .await
            .inspect_err(|e| {
                if matches!(e, AccessError::Denied(_)) {
                    self.audit(
                        "access.denied",
                        serde_json::json!({"op": "flag_message", "messageId": message_id}),
                    );
                }
            })?;
        reply.send(Ok(Accepted::Done));
        Ok(())
    }

    async fn history(
        &self,
        identity: &Identity,
        reference: Option<Ref>,
        fetch: &FetchHistory,
    ) -> Result<ServerFrame, RequestError> {
        let (messages, has_more) = self
            .realtime
            .read_history(
                self.principal(identity),
                fetch.channel_id,
                fetch.before_seq,
                fetch.effective_limit(),
            )
            .await?;
        // What was disclosed, by seq (docs/audit.md, "Disclosures").
        let mut details =
            reads::details(fetch.channel_id, messages.iter().map(|m| m.seq), "history");
        details["count"] = messages.len().into();
        let grant =
            self.realtime
                .break_glass
                .active(fetch.channel_id, identity.user_id, crate::now_ms());
        reads::mark_break_glass(&mut details, grant);
        self.audit("history.read", details);
        Ok(ServerFrame::History(History {
            reference,
            channel_id: fetch.channel_id,
            messages,
            has_more,
        }))
    }
}

/// A flag's reason, checked: 1 to 500 bytes of text, without U+0000 (the
/// stores keep it as text).
pub fn flag_reason(reason: &str) -> Result<String, RequestError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(RequestError::Invalid("reason must not be empty"));
    }
    if reason.len() > MAX_FLAG_REASON_BYTES {
        return Err(RequestError::TooLarge("reason is over 500 bytes"));
    }
    if reason.contains('\0') {
        return Err(RequestError::Invalid("reason must not contain U+0000"));
    }
    Ok(reason.to_owned())
}

fn pong(reference: Option<Ref>) -> ServerFrame {
    ServerFrame::Pong(Pong {
        reference,
        server_time: crate::now_ms(),
    })
}

/// Why a request failed; mapped to an error code once, here.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    TooLarge(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("service unavailable; retry")]
    Unavailable,
    #[error("internal error")]
    Internal,
    /// The channel owner node's answer, relayed unchanged.
    #[error("{message}")]
    Relayed { code: ErrorCode, message: String },
}

impl RequestError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Forbidden(_) => ErrorCode::Forbidden,
            RequestError::NotFound(_) => ErrorCode::NotFound,
            RequestError::Invalid(_) => ErrorCode::InvalidFrame,
            RequestError::TooLarge(_) => ErrorCode::TooLarge,
            RequestError::Conflict(_) => ErrorCode::Conflict,
            RequestError::Unavailable => ErrorCode::Unavailable,
            RequestError::Internal => ErrorCode::Internal,
            RequestError::Relayed { code, .. } => *code,
        }
    }
}

impl From<AccessError> for RequestError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NotFound(what) => RequestError::NotFound(what),
            AccessError::Denied(d) => RequestError::Forbidden(d.0),
            AccessError::Invalid(what) => RequestError::Invalid(what),
            AccessError::Conflict(what) => RequestError::Conflict(what),
            AccessError::Unavailable => RequestError::Unavailable,
            AccessError::Internal => RequestError::Internal,
        }
    }
}

impl From<crate::durable::store::StoreError> for RequestError {
    fn from(e: crate::durable::store::StoreError) -> Self {
        AccessError::from(e).into()
    }
}

impl From<history::HistoryError> for RequestError {
    fn from(_: history::HistoryError) -> Self {
        RequestError::Internal
    }
}

impl From<ChannelError> for RequestError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Forbidden(w) => RequestError::Forbidden(w),
            ChannelError::NotFound(w) => RequestError::NotFound(w),
            ChannelError::Unavailable => RequestError::Unavailable,
            ChannelError::Internal(_) => RequestError::Internal,
            ChannelError::Relayed { code, message } => RequestError::Relayed { code, message },
        }
    }
}

/// A send rate of `per_minute`, with a burst of a sixth of it (at least 1).
pub fn send_quota(per_minute: u32) -> governor::Quota {
    let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new((per_minute.get() / 6).max(1)).unwrap_or(NonZeroU32::MIN);
    governor::Quota::per_minute(per_minute).allow_burst(burst)
}
