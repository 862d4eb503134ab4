//! The background task: it owns the socket, the followed channels and every
//! call not answered yet. One task, one `select!` loop over the app's
//! commands, the socket, the connection attempt, the token refresh and the
//! timers; nothing else touches this state.
//!
//! ```text
//!            ┌────────────── loss (not 4001/4003) ───────────────┐
//!            ▼                                                   │
//!  Backoff(jitter) ──► Connecting ──► Live: rejoin, resend, ping ┘
//!                          │  ▲           │ 4001 past the refresh point
//!                          │  └─ refresh ◄┘ (once), then connect
//!                          └── 4003, 4001, refresh refused ──► Stopped
//!                                              (until set_session)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use courier_protocol::client::{Client, ClientError, ClientReceiver, ClientSender};
use courier_protocol::error::close;
use courier_protocol::frames::{
    AckResult, AuthSuccess, Authenticate, JoinChannel, LeaveChannel, SystemEvent,
};
use courier_protocol::{
    ChannelId, ClientFrame, ClientRequest, ErrorCode, Ref, ServerFrame, UserId,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::channel::{ChannelState, Phase as ChannelPhase};
use crate::client::{Answer, Call, Command, Reply};
use crate::config::ClientConfig;
use crate::error::Error;
use crate::event::{ConnectionState, Event};
use crate::session::{Refreshed, Rest, Session};

/// How long a read waits before the loop looks again (timers wake it
/// sooner; this only bounds one future).
const READ_SLICE: Duration = Duration::from_secs(3600);
/// How long an app's close waits to write the close frame.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// What a connection attempt gives: the socket, its authentication and
/// the token it authenticated with.
type Attempt = Result<(Client, AuthSuccess, String), Ended>;

/// Why a socket (or an attempt at one) ended.
#[derive(Debug)]
struct Ended {
    code: Option<u16>,
    reason: String,
}

/// The connection's lifecycle.
enum Phase {
    /// Between two phases (never seen by the loop).
    Idle,
    /// An attempt (upgrade and `authenticate`) under way.
    Connecting(JoinHandle<Attempt>),
    /// Connecting as soon as the refresh under way ends.
    AwaitingRefresh,
    /// Waiting until then before the next attempt.
    Backoff(Instant),
    /// Authenticated.
    Live(Box<Conn>),
    /// Not reconnecting until the app gives a new session.
    Stopped { code: Option<u16>, reason: String },
}

/// A live socket and what was written on it.
struct Conn {
    sender: ClientSender,
    receiver: ClientReceiver,
    /// Requests written on this socket and not answered, by `ref`.
    in_flight: HashMap<i64, Pending>,
    /// The answer deadlines of internal requests (joins and pages).
    internal_deadlines: BTreeSet<(Instant, i64)>,
    heartbeat: Duration,
    last_heard: Instant,
    next_ping: Instant,
    /// The last app call written: a close 1009 (frame too large) fails it.
    last_written: Option<u64>,
    /// The access token the server holds for this socket.
    token: String,
    /// The token of a re-authentication not answered yet.
    reauth: Option<String>,
}

/// What a `ref` on the socket stands for.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// An app call (op id).
    Op(u64),
    /// A (re)join of a followed channel.
    Join(ChannelId),
    /// A history page of a channel's catch-up.
    Page(ChannelId),
    /// A heartbeat `ping`.
    Heartbeat,
    /// `authenticate` with a refreshed token.
    Reauth,
}

/// An app call not answered yet.
struct Op {
    kind: OpKind,
    /// `None` once answered by a timeout (a send is still resent).
    reply: Option<Reply>,
    /// When it times out; a send's moves each time it is written.
    deadline: Option<Instant>,
}

enum OpKind {
    Send(courier_protocol::frames::SendMessage),
    Request(ClientRequest),
    Join,
}

/// What the socket or the attempt produced.
enum PhaseEvent {
    Frame(Result<ServerFrame, ClientError>),
    Attempted(Result<Attempt, tokio::task::JoinError>),
}

/// The task's state; see the [module](self) docs.
pub(crate) struct Driver {
    config: Arc<ClientConfig>,
    rest: Option<Rest>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    state: watch::Sender<ConnectionState>,
    session_out: watch::Sender<Session>,
    session: Session,
    /// The authenticated user (for `member_removed`).
    me: Option<UserId>,
    phase: Phase,
    /// Connection attempts since the last success.
    attempt: u32,
    /// The refresh under way: never more than one.
    refreshing: Option<JoinHandle<Refreshed>>,
    /// When the timer starts the next refresh.
    refresh_at: Instant,
    refresh_failures: u32,
    /// A 4001 past the refresh point was answered by a refresh already.
    refreshed_for_4001: bool,
    ops: HashMap<u64, Op>,
    next_op: u64,
    /// Sends waiting for a socket, in the order the app made them.
    unsent_sends: BTreeSet<u64>,
    /// Other calls waiting for a socket.
    unsent_requests: VecDeque<u64>,
    /// App calls' deadlines.
    deadlines: BTreeSet<(Instant, u64)>,
    channels: BTreeMap<ChannelId, ChannelState>,
}

impl Driver {
    pub(crate) fn new(
        config: ClientConfig,
        session: Session,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        state: watch::Sender<ConnectionState>,
        session_out: watch::Sender<Session>,
    ) -> Self {
        let rest = match Rest::new(&config.http_url) {
            Ok(rest) => Some(rest),
            Err(e) => {
                tracing::warn!(error = %e, "no REST client: the token is never refreshed");
                None
            }
        };
        Self {
            config: Arc::new(config),
            rest,
            commands,
            events,
            state,
            session_out,
            refresh_at: session.refresh_due(),
            session,
            me: None,
            phase: Phase::Idle,
            attempt: 0,
            refreshing: None,
            refresh_failures: 0,
            refreshed_for_4001: false,
            ops: HashMap::new(),
            next_op: 0,
            unsent_sends: BTreeSet::new(),
            unsent_requests: VecDeque::new(),
            deadlines: BTreeSet::new(),
            channels: BTreeMap::new(),
        }
    }

    /// Runs until the app closes the client or drops every handle.
    pub(crate) async fn run(mut self) {
        self.start_connecting();
        loop {
            let wake = self
                .next_wake()
                .unwrap_or_else(|| Instant::now() + READ_SLICE);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Close(done)) => {
                        self.close().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => {
                        self.close().await;
                        return;
                    }
                },
                event = phase_event(&mut self.phase) => match event {
                    PhaseEvent::Frame(frame) => self.on_frame(frame).await,
                    PhaseEvent::Attempted(attempt) => self.on_attempt(attempt).await,
                },
                refreshed = refresh_result(&mut self.refreshing) => self.on_refreshed(refreshed).await,
                () = sleep_until(wake) => self.on_timers().await,
            }
        }
    }

    // -- events out ---------------------------------------------------------

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn emit_all(&self, events: Vec<Event>) {
        for event in events {
            self.emit(event);
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    // -- connecting ---------------------------------------------------------

    /// Starts an attempt, after a refresh when the token is past its
    /// refresh point.
    fn start_connecting(&mut self) {
        self.set_state(ConnectionState::Connecting);
        if self.can_refresh() && Instant::now() >= self.session.refresh_due() {
            self.start_refresh();
            self.phase = Phase::AwaitingRefresh;
            return;
        }
        self.emit(Event::Connecting);
        let config = self.config.clone();
        let token = self.session.access_token().to_owned();
        self.phase = Phase::Connecting(tokio::spawn(attempt(config, token)));
    }

    /// The next attempt after a jittered delay.
    fn schedule_reconnect(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.config.backoff.delay(self.attempt);
        self.emit(Event::Reconnecting {
            attempt: self.attempt,
            delay,
        });
        self.set_state(ConnectionState::Reconnecting);
        self.phase = Phase::Backoff(Instant::now() + delay);
    }

    async fn on_attempt(&mut self, attempt: Result<Attempt, tokio::task::JoinError>) {
        self.phase = Phase::Idle;
        match attempt {
            Ok(Ok((client, auth, token))) => self.on_connected(client, auth, token).await,
            Ok(Err(ended)) => {
                tracing::debug!(code = ?ended.code, reason = %ended.reason, "connection attempt failed");
                self.after_loss(ended);
            }
            Err(e) => self.after_loss(Ended {
                code: None,
                reason: format!("connection attempt failed: {e}"),
            }),
        }
    }

    /// What follows a lost socket or a failed attempt.
    fn after_loss(&mut self, ended: Ended) {
        match ended.code {
            Some(close::SESSION_REVOKED) => self.stop(ended.code, ended.reason),
            Some(close::AUTH_FAILED) => {
                // An expired token is renewed once; anything else stops.
                let expired = Instant::now() >= self.session.refresh_due();
                if self.can_refresh() && expired && !self.refreshed_for_4001 {
                    self.refreshed_for_4001 = true;
                    self.set_state(ConnectionState::Connecting);
                    self.start_refresh();
                    self.phase = Phase::AwaitingRefresh;
                } else {
                    self.stop(ended.code, ended.reason);
                }
            }
            _ => self.schedule_reconnect(),
        }
    }

    async fn on_connected(&mut self, client: Client, auth: AuthSuccess, token: String) {
        let (sender, receiver) = client.split();
        let now = Instant::now();
        let heartbeat = Duration::from_millis(auth.heartbeat_ms.max(100));
        self.attempt = 0;
        self.refreshed_for_4001 = false;
        self.me = Some(auth.user.id);
        self.phase = Phase::Live(Box::new(Conn {
            sender,
            receiver,
            in_flight: HashMap::new(),
            internal_deadlines: BTreeSet::new(),
            heartbeat,
            last_heard: now,
            next_ping: now + heartbeat,
            last_written: None,
            token,
            reauth: None,
        }));
        self.set_state(ConnectionState::Connected);
        self.emit(Event::Connected {
            user: auth.user,
            session_id: auth.session_id,
            heartbeat,
        });
        // Rejoins first, then the sends in the order they were made, then
        // the other calls: one connection's frames are handled in order.
        let mut batch = Vec::new();
        for channel in self.channels.values_mut() {
            let request = ClientRequest::JoinChannel(JoinChannel {
                channel_id: channel.id,
                since_seq: channel.since_seq(),
            });
            channel.join_sent();
            batch.push((request, Pending::Join(channel.id)));
        }
        for id in std::mem::take(&mut self.unsent_sends) {
            if let Some(Op {
                kind: OpKind::Send(message),
                ..
            }) = self.ops.get(&id)
            {
                let request = ClientRequest::SendMessage(message.clone());
                batch.push((request, Pending::Op(id)));
            }
        }
        for id in std::mem::take(&mut self.unsent_requests) {
            let Some(op) = self.ops.get(&id) else {
                continue; // timed out meanwhile
            };
            if op.reply.as_ref().is_none_or(|r| r.is_closed()) {
                self.ops.remove(&id); // the caller is gone
                continue;
            }
            if let OpKind::Request(request) = &op.kind {
                batch.push((request.clone(), Pending::Op(id)));
            }
        }
        self.write_batch(batch).await;
    }

    // -- writing ------------------------------------------------------------

    async fn write(&mut self, request: ClientRequest, pending: Pending) {
        self.write_batch(vec![(request, pending)]).await;
    }

    /// Writes requests with one flush and records what their `ref`s stand
    /// for. A failed write loses the socket; what was in the batch is then
    /// handled like everything else in flight (sends resent, other calls
    /// failed with [`Error::ConnectionLost`]).
    async fn write_batch(&mut self, batch: Vec<(ClientRequest, Pending)>) {
        if batch.is_empty() {
            return;
        }
        let Phase::Live(conn) = &mut self.phase else {
            // Not connected: back to waiting.
            for (_, pending) in batch {
                self.requeue(pending);
            }
            return;
        };
        let requests: Vec<ClientRequest> = batch.iter().map(|(r, _)| r.clone()).collect();
        let written = conn.sender.send_batch(requests).await;
        let now = Instant::now();
        match written {
            Ok(refs) => {
                for ((_, pending), reference) in batch.into_iter().zip(refs) {
                    let Ref::Int(n) = reference else { continue };
                    self.register(n, pending, now);
                }
            }
            Err(e) => {
                // Which were written is unknown: record them all.
                for (k, (_, pending)) in batch.into_iter().enumerate() {
                    let n = -1 - k as i64;
                    self.register(n, pending, now);
                }
                self.lost(Ended {
                    code: None,
                    reason: format!("write failed: {e}"),
                })
                .await;
            }
        }
    }

    fn register(&mut self, n: i64, pending: Pending, now: Instant) {
        let timeout = self.config.request_timeout;
        let Phase::Live(conn) = &mut self.phase else {
            return;
        };
        conn.in_flight.insert(n, pending);
        match pending {
            Pending::Op(id) => {
                conn.last_written = Some(id);
                if let Some(op) = self.ops.get_mut(&id) {
                    if matches!(op.kind, OpKind::Send(_)) {
                        // A send's clock runs while it is on a socket.
                        op.deadline = Some(now + timeout);
                        self.deadlines.insert((now + timeout, id));
                    }
                }
            }
            Pending::Join(_) => {
                conn.internal_deadlines.insert((now + timeout, n));
            }
            Pending::Page(channel) => {
                conn.internal_deadlines.insert((now + timeout, n));
                if let Some(state) = self.channels.get_mut(&channel) {
                    state.page_sent(n);
                }
            }
            Pending::Heartbeat | Pending::Reauth => {}
        }
    }

    /// A request that could not go out waits for the next socket.
    fn requeue(&mut self, pending: Pending) {
        if let Pending::Op(id) = pending {
            match self.ops.get(&id).map(|op| &op.kind) {
                Some(OpKind::Send(_)) => {
                    self.unsent_sends.insert(id);
                }
                Some(OpKind::Request(_)) => self.unsent_requests.push_back(id),
                Some(OpKind::Join) | None => {}
            }
        }
    }

    // -- losing the socket ----------------------------------------------------

    /// The socket is gone: sends wait to be resent, other calls in flight
    /// fail, channels wait to be rejoined, and the loss is reported.
    fn teardown(&mut self, ended: &Ended) {
        let Phase::Live(conn) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let conn = *conn;
        if ended.code == Some(close::TOO_LARGE) {
            // The last call written was over the server's frame limit:
            // resending it would only close the next socket too.
            if let Some(op) = conn.last_written.and_then(|id| self.ops.remove(&id)) {
                if let Some(reply) = op.reply {
                    let _ = reply.send(Err(Error::Server {
                        code: ErrorCode::TooLarge,
                        message: "the frame is over the server's limit (close 1009)".into(),
                        retry_after: None,
                    }));
                }
            }
        }
        for pending in conn.in_flight.into_values() {
            let Pending::Op(id) = pending else { continue };
            match self.ops.get(&id).map(|op| &op.kind) {
                Some(OpKind::Send(_)) => {
                    self.unsent_sends.insert(id);
                }
                Some(OpKind::Request(_)) => {
                    if let Some(reply) = self.ops.remove(&id).and_then(|op| op.reply) {
                        let _ = reply.send(Err(Error::ConnectionLost));
                    }
                }
                Some(OpKind::Join) | None => {}
            }
        }
        for channel in self.channels.values_mut() {
            channel.detach();
        }
        self.emit(Event::Disconnected {
            code: ended.code,
            reason: ended.reason.clone(),
        });
    }

    /// The socket ended (or was given up on): tear down, then reconnect,
    /// refresh or stop as the close code says.
    async fn lost(&mut self, ended: Ended) {
        let replaced = matches!(
            &self.phase,
            Phase::Live(conn) if conn.token != self.session.access_token()
        );
        self.teardown(&ended);
        if replaced && ended.code == Some(close::AUTH_FAILED) {
            // The socket's token ran out before the refreshed one reached
            // the server; that one is still good: connect with it now.
            self.start_connecting();
            return;
        }
        self.after_loss(ended);
    }

    /// Stops until a new session: every waiting call fails.
    fn stop(&mut self, code: Option<u16>, reason: String) {
        if let Some(refresh) = self.refreshing.take() {
            refresh.abort();
        }
        if let Phase::Connecting(attempt) = &self.phase {
            attempt.abort();
        }
        let error = Error::Stopped {
            code,
            reason: reason.clone(),
        };
        self.fail_all(&error);
        for channel in self.channels.values_mut() {
            channel.detach();
        }
        self.phase = Phase::Stopped {
            code,
            reason: reason.clone(),
        };
        self.set_state(ConnectionState::Stopped);
        self.emit(Event::Stopped { code, reason });
    }

    fn fail_all(&mut self, error: &Error) {
        for (_, op) in self.ops.drain() {
            if let Some(reply) = op.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.unsent_sends.clear();
        self.unsent_requests.clear();
        self.deadlines.clear();
        for channel in self.channels.values_mut() {
            channel.waiters.clear();
        }
    }

    /// The app closes: a normal close, every call fails with
    /// [`Error::Closed`].
    async fn close(&mut self) {
        if let Some(refresh) = self.refreshing.take() {
            refresh.abort();
        }
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Live(mut conn) => {
                let _ = tokio::time::timeout(CLOSE_WRITE, conn.sender.close()).await;
            }
            Phase::Connecting(attempt) => attempt.abort(),
            _ => {}
        }
        self.fail_all(&Error::Closed);
        self.set_state(ConnectionState::Closed);
        self.emit(Event::Stopped {
            code: Some(close::NORMAL),
            reason: "closed by the app".into(),
        });
    }

    // -- commands -----------------------------------------------------------

    fn new_op(&mut self, kind: OpKind, reply: Reply, deadline: Option<Instant>) -> u64 {
        self.next_op += 1;
        let id = self.next_op;
        if let Some(at) = deadline {
            self.deadlines.insert((at, id));
        }
        let reply = Some(reply);
        self.ops.insert(
            id,
            Op {
                kind,
                reply,
                deadline,
            },
        );
        id
    }

    fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live(_))
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Call { call, reply } => self.on_call(call, reply).await,
            Command::SetSession(session) => self.on_new_session(session).await,
            Command::Close(_) => unreachable!("handled by the loop"),
        }
    }

    async fn on_call(&mut self, call: Call, reply: Reply) {
        if let Phase::Stopped { code, reason } = &self.phase {
            let result = match call {
                Call::Leave(channel_id) => {
                    self.channels.remove(&channel_id);
                    Ok(Answer::Done)
                }
                _ => Err(Error::Stopped {
                    code: *code,
                    reason: reason.clone(),
                }),
            };
            let _ = reply.send(result);
            return;
        }
        let deadline = Some(Instant::now() + self.config.request_timeout);
        match call {
            Call::Join {
                channel_id,
                since_seq,
            } => {
                let state = self
                    .channels
                    .entry(channel_id)
                    .or_insert_with(|| ChannelState::new(channel_id, since_seq));
                let joined = !matches!(
                    state.phase,
                    ChannelPhase::Detached | ChannelPhase::Joining { .. }
                );
                if let (true, Some(view)) = (joined, &state.view) {
                    let _ = reply.send(Ok(Answer::Channel(view.clone())));
                    return;
                }
                let detached = matches!(state.phase, ChannelPhase::Detached);
                let live = self.is_live();
                let id = self.new_op(OpKind::Join, reply, deadline);
                let state = self.channels.get_mut(&channel_id).expect("inserted above");
                state.waiters.push(id);
                if detached && live {
                    let since_seq = state.since_seq();
                    state.join_sent();
                    let request = ClientRequest::JoinChannel(JoinChannel {
                        channel_id,
                        since_seq,
                    });
                    self.write(request, Pending::Join(channel_id)).await;
                }
            }
            Call::Leave(channel_id) => {
                if let Some(state) = self.channels.remove(&channel_id) {
                    for id in state.waiters {
                        if let Some(reply) = self.ops.remove(&id).and_then(|op| op.reply) {
                            let _ = reply.send(Err(Error::Cancelled));
                        }
                    }
                }
                if self.is_live() {
                    let request = ClientRequest::LeaveChannel(LeaveChannel { channel_id });
                    let id = self.new_op(OpKind::Request(request.clone()), reply, deadline);
                    self.write(request, Pending::Op(id)).await;
                } else {
                    // Joined on no socket; the next one will not rejoin it.
                    let _ = reply.send(Ok(Answer::Done));
                }
            }
            Call::Send(message) => {
                let request = ClientRequest::SendMessage(message.clone());
                let id = self.new_op(OpKind::Send(message), reply, None);
                if self.is_live() {
                    self.write(request, Pending::Op(id)).await;
                } else {
                    self.unsent_sends.insert(id);
                }
            }
            Call::Typing(indicator) => {
                if let Phase::Live(conn) = &mut self.phase {
                    let frame = ClientFrame::new(ClientRequest::TypingIndicator(indicator));
                    if let Err(e) = conn.sender.send_frame(&frame).await {
                        self.lost(Ended {
                            code: None,
                            reason: format!("write failed: {e}"),
                        })
                        .await;
                    }
                }
                let _ = reply.send(Ok(Answer::Done));
            }
            Call::Request(request) => {
                let id = self.new_op(OpKind::Request(request.clone()), reply, deadline);
                if self.is_live() {
                    self.write(request, Pending::Op(id)).await;
                } else {
                    self.unsent_requests.push_back(id);
                }
            }
        }
    }

    async fn on_new_session(&mut self, session: Session) {
        if let Some(refresh) = self.refreshing.take() {
            refresh.abort();
        }
        self.refresh_at = session.refresh_due();
        self.refresh_failures = 0;
        self.refreshed_for_4001 = false;
        self.session = session.clone();
        self.session_out.send_replace(session);
        match self.phase {
            Phase::Stopped { .. } | Phase::AwaitingRefresh => {
                self.attempt = 0;
                self.start_connecting();
            }
            Phase::Live(_) => self.reauthenticate().await,
            Phase::Idle | Phase::Connecting(_) | Phase::Backoff(_) => {}
        }
    }

    async fn reauthenticate(&mut self) {
        let token = self.session.access_token().to_owned();
        if let Phase::Live(conn) = &mut self.phase {
            conn.reauth = Some(token.clone());
        }
        let request = ClientRequest::Authenticate(Authenticate::new(token));
        self.write(request, Pending::Reauth).await;
    }

    // -- refresh ------------------------------------------------------------

    fn can_refresh(&self) -> bool {
        self.rest.is_some() && self.session.refresh_token().is_some()
    }

    /// Starts a refresh unless one is under way (one at a time: a second
    /// would present a refresh token the first already used up).
    fn start_refresh(&mut self) {
        if self.refreshing.is_some() {
            return;
        }
        let (Some(rest), Some(token)) = (self.rest.clone(), self.session.refresh_token()) else {
            return;
        };
        let token = token.to_owned();
        self.refreshing = Some(tokio::spawn(async move { rest.refresh(&token).await }));
    }

    async fn on_refreshed(&mut self, result: Result<Refreshed, tokio::task::JoinError>) {
        self.refreshing = None;
        let outcome = result.unwrap_or_else(|e| Refreshed::Failed(Error::Http(e.to_string())));
        match outcome {
            Refreshed::Renewed(session) => {
                self.refresh_failures = 0;
                self.refresh_at = session.refresh_due();
                self.session = session.clone();
                self.session_out.send_replace(session.clone());
                self.emit(Event::SessionRefreshed(session));
                match self.phase {
                    Phase::Live(_) => self.reauthenticate().await,
                    Phase::AwaitingRefresh => self.start_connecting(),
                    _ => {}
                }
            }
            Refreshed::Refused(e) => {
                if let Phase::Live(conn) = &mut self.phase {
                    let _ = tokio::time::timeout(CLOSE_WRITE, conn.sender.close()).await;
                }
                let ended = Ended {
                    code: None,
                    reason: format!("the refresh token was refused: {e}"),
                };
                self.teardown(&ended);
                self.stop(None, ended.reason);
            }
            Refreshed::Failed(e) => {
                self.refresh_failures = self.refresh_failures.saturating_add(1);
                let retry = self.config.backoff.delay(self.refresh_failures);
                self.refresh_at = Instant::now() + retry.max(Duration::from_millis(100));
                tracing::debug!(error = %e, ?retry, "token refresh failed; trying again");
                if matches!(self.phase, Phase::AwaitingRefresh) {
                    self.schedule_reconnect();
                }
            }
        }
    }

    // -- timers -------------------------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = self.deadlines.first().map(|(at, _)| *at);
        let mut consider = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        match &self.phase {
            Phase::Backoff(until) => consider(*until),
            Phase::Live(conn) => {
                if let Some((at, _)) = conn.internal_deadlines.first() {
                    consider(*at);
                }
                consider(conn.next_ping);
                consider(conn.last_heard + conn.heartbeat + self.config.heartbeat_margin);
            }
            _ => {}
        }
        if self.refresh_wanted() {
            consider(self.refresh_at);
        }
        wake
    }

    fn refresh_wanted(&self) -> bool {
        self.refreshing.is_none()
            && self.can_refresh()
            && !matches!(self.phase, Phase::Stopped { .. })
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        // App calls past their deadline.
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            if op.deadline != Some(at) {
                continue; // moved by a resend
            }
            let timeout = Err(Error::Timeout(self.config.request_timeout));
            if matches!(op.kind, OpKind::Send(_)) {
                // The call completes; the send stays, to be resent.
                if let Some(reply) = op.reply.take() {
                    let _ = reply.send(timeout);
                }
            } else if let Some(reply) = self.ops.remove(&id).and_then(|op| op.reply) {
                let _ = reply.send(timeout);
            }
        }
        if self.refresh_wanted() && now >= self.refresh_at {
            self.start_refresh();
        }
        match &mut self.phase {
            Phase::Backoff(until) if *until <= now => self.start_connecting(),
            Phase::Live(conn) => {
                let silence = conn.heartbeat + self.config.heartbeat_margin;
                if now >= conn.last_heard + silence {
                    let reason = format!("no frame for {silence:?}: the socket is dead");
                    self.lost(Ended { code: None, reason }).await;
                    return;
                }
                while let Some(&(at, n)) = conn.internal_deadlines.first() {
                    if at > now {
                        break;
                    }
                    conn.internal_deadlines.pop_first();
                    if conn.in_flight.contains_key(&n) {
                        let reason = "a join or history page was not answered in time".to_owned();
                        self.lost(Ended { code: None, reason }).await;
                        return;
                    }
                }
                if now >= conn.next_ping {
                    conn.next_ping = now + conn.heartbeat;
                    self.write(ClientRequest::Ping, Pending::Heartbeat).await;
                }
            }
            _ => {}
        }
    }

    // -- the socket -----------------------------------------------------------

    async fn on_frame(&mut self, frame: Result<ServerFrame, ClientError>) {
        let frame = match frame {
            Ok(frame) => frame,
            Err(ClientError::Timeout(_)) => return,
            Err(ClientError::Decode(e)) => {
                // A frame type or field added later: skip it.
                tracing::warn!(error = %e, "undecodable frame skipped");
                self.heard();
                return;
            }
            Err(ClientError::Closed { code, reason }) => {
                self.lost(Ended { code, reason }).await;
                return;
            }
            Err(e) => {
                let reason = e.to_string();
                self.lost(Ended { code: None, reason }).await;
                return;
            }
        };
        self.heard();
        match frame.reference() {
            Some(Ref::Int(n)) => {
                let n = *n;
                let pending = match &mut self.phase {
                    Phase::Live(conn) => conn.in_flight.remove(&n),
                    _ => None,
                };
                if let Some(pending) = pending {
                    self.on_answer(n, pending, frame).await;
                }
            }
            Some(Ref::Str(_)) => {} // never sent by this client
            None => self.on_push(frame).await,
        }
    }

    fn heard(&mut self) {
        if let Phase::Live(conn) = &mut self.phase {
            conn.last_heard = Instant::now();
        }
    }

    async fn on_answer(&mut self, n: i64, pending: Pending, frame: ServerFrame) {
        match pending {
            Pending::Op(id) => self.answer_op(id, frame),
            Pending::Join(channel_id) => self.on_join_answer(channel_id, frame).await,
            Pending::Page(channel_id) => self.on_page(n, channel_id, frame).await,
            Pending::Heartbeat => {}
            Pending::Reauth => match frame {
                ServerFrame::AuthenticationResponse(r) if r.result.is_ok() => {
                    if let Phase::Live(conn) = &mut self.phase {
                        if let Some(token) = conn.reauth.take() {
                            conn.token = token;
                        }
                    }
                    tracing::debug!("re-authenticated with the refreshed token");
                }
                other => {
                    // The server closes with 4001 next if the old token runs out.
                    tracing::warn!(answer = other.type_name(), "re-authentication refused");
                }
            },
        }
    }

    fn answer_op(&mut self, id: u64, frame: ServerFrame) {
        let Some(op) = self.ops.remove(&id) else {
            return; // timed out already
        };
        let result = match frame {
            ServerFrame::Error(e) => Err(Error::from(e)),
            ServerFrame::Ack(ack) => Ok(match ack.result {
                AckResult::Done => Answer::Done,
                AckResult::Sent(sent) => Answer::Sent(sent),
                AckResult::Channel(view) => {
                    // `open_direct` joins the caller: follow the channel.
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        self.channels.entry(view.id)
                    {
                        let mut state = ChannelState::new(view.id, None);
                        state.join_sent();
                        state.joined(view.clone(), &mut Vec::new());
                        slot.insert(state);
                    }
                    Answer::Channel(view)
                }
            }),
            ServerFrame::History(history) => Ok(Answer::History(history)),
            ServerFrame::Pong(pong) => Ok(Answer::Pong(pong)),
            other => Err(Error::Unexpected(other.type_name())),
        };
        if let Some(reply) = op.reply {
            let _ = reply.send(result);
        }
    }

    async fn on_join_answer(&mut self, channel_id: ChannelId, frame: ServerFrame) {
        let Some(state) = self.channels.get_mut(&channel_id) else {
            return; // left meanwhile
        };
        match frame {
            ServerFrame::Ack(ack) => {
                let AckResult::Channel(view) = ack.result else {
                    tracing::warn!("join answered without a channel");
                    return;
                };
                let mut out = Vec::new();
                let page = state.joined(view.clone(), &mut out);
                let waiters = std::mem::take(&mut state.waiters);
                for id in waiters {
                    if let Some(reply) = self.ops.remove(&id).and_then(|op| op.reply) {
                        let _ = reply.send(Ok(Answer::Channel(view.clone())));
                    }
                }
                self.emit_all(out);
                if let Some(page) = page {
                    self.write(ClientRequest::FetchHistory(page), Pending::Page(channel_id))
                        .await;
                }
            }
            ServerFrame::Error(e) if retryable(e.code) => {
                let reason = format!("join of {channel_id} failed: {}", e.message);
                self.lost(Ended { code: None, reason }).await;
            }
            ServerFrame::Error(e) => {
                let error = Error::from(e);
                let state = self.channels.remove(&channel_id).expect("looked up above");
                for id in state.waiters {
                    if let Some(reply) = self.ops.remove(&id).and_then(|op| op.reply) {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                self.emit(Event::ChannelLost { channel_id, error });
            }
            other => tracing::warn!(answer = other.type_name(), "unexpected answer to a join"),
        }
    }

    async fn on_page(&mut self, n: i64, channel_id: ChannelId, frame: ServerFrame) {
        let Some(state) = self.channels.get_mut(&channel_id) else {
            return;
        };
        if !state.awaits_page(n) {
            return;
        }
        match frame {
            ServerFrame::History(history) => {
                let mut out = Vec::new();
                let next = state.page(history, &mut out);
                self.emit_all(out);
                if let Some(next) = next {
                    self.write(ClientRequest::FetchHistory(next), Pending::Page(channel_id))
                        .await;
                }
            }
            other => {
                // Start over from what was delivered, on a new socket.
                let reason = match other {
                    ServerFrame::Error(e) => format!("history page refused: {}", e.message),
                    other => format!("history page answered with `{}`", other.type_name()),
                };
                self.lost(Ended { code: None, reason }).await;
            }
        }
    }

    async fn on_push(&mut self, frame: ServerFrame) {
        let channel_id = match &frame {
            ServerFrame::NewMessage(p) | ServerFrame::MessageUpdated(p) => Some(p.data.channel_id),
            ServerFrame::MessageDeleted(p) => Some(p.data.channel_id),
            ServerFrame::ReactionUpdated(r) => Some(r.channel_id),
            ServerFrame::ReadReceipt(r) => Some(r.channel_id),
            ServerFrame::MessageStatus(s) => Some(s.channel_id),
            ServerFrame::Typing(t) => Some(t.channel_id),
            ServerFrame::Recovered(r) => {
                let mut out = Vec::new();
                if let Some(state) = self.channels.get_mut(&r.channel_id) {
                    state.recovered(*r, &mut out);
                }
                self.emit_all(out);
                return;
            }
            ServerFrame::Error(e)
                if e.code == ErrorCode::Internal
                    && self.channels.values().any(|c| c.replaying()) =>
            {
                // A replay failed: rejoin from what was delivered.
                let reason = format!("a replay failed: {}", e.message);
                self.lost(Ended { code: None, reason }).await;
                return;
            }
            ServerFrame::SystemEvent(event) => {
                self.on_system_event(event);
                None
            }
            _ => None,
        };
        match channel_id.and_then(|id| self.channels.get_mut(&id)) {
            Some(state) => {
                let mut out = Vec::new();
                state.push(frame, &mut out);
                self.emit_all(out);
            }
            None => {
                if let Some(event) = Event::from_push(frame) {
                    self.emit(event);
                }
            }
        }
    }

    /// A channel deleted, or the user removed from it: stop following it.
    fn on_system_event(&mut self, event: &SystemEvent) {
        let channel = event.data["channelId"]
            .as_str()
            .and_then(|id| id.parse::<ChannelId>().ok());
        let gone = match event.event_type.as_str() {
            SystemEvent::CHANNEL_DELETED => true,
            SystemEvent::MEMBER_REMOVED => {
                let user = event.data["userId"].as_str().and_then(|id| id.parse().ok());
                user.is_some() && user == self.me
            }
            _ => false,
        };
        if let (true, Some(channel)) = (gone, channel) {
            self.channels.remove(&channel);
        }
    }
}

/// Whether a refused join is worth trying again on a new socket.
fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::Internal
            | ErrorCode::RateLimited
            | ErrorCode::SlowConsumer
    )
}

/// The next frame of a live socket, or the end of a connection attempt;
/// never ready in the other phases.
async fn phase_event(phase: &mut Phase) -> PhaseEvent {
    match phase {
        Phase::Live(conn) => PhaseEvent::Frame(conn.receiver.next_frame(READ_SLICE).await),
        Phase::Connecting(attempt) => PhaseEvent::Attempted(attempt.await),
        _ => std::future::pending().await,
    }
}

async fn refresh_result(
    refreshing: &mut Option<JoinHandle<Refreshed>>,
) -> Result<Refreshed, tokio::task::JoinError> {
    match refreshing {
        Some(refresh) => refresh.await,
        None => std::future::pending().await,
    }
}

/// One connection attempt: upgrade, then `authenticate`.
async fn attempt(config: Arc<ClientConfig>, token: String) -> Attempt {
    let ended = |e: ClientError| match e {
        ClientError::Closed { code, reason } => Ended { code, reason },
        other => Ended {
            code: None,
            reason: other.to_string(),
        },
    };
    let mut builder = Client::builder(config.ws_url.clone())
        .encoding(config.encoding)
        .timeout(config.connect_timeout);
    for (name, value) in &config.headers {
        builder = builder.header(name.clone(), value.clone());
    }
    let mut client = builder.connect().await.map_err(ended)?;
    let response = client.authenticate(&token).await.map_err(ended)?;
    match response.result {
        Ok(auth) => Ok((client, auth, token)),
        // A refused token is answered, then closed with 4001.
        Err(body) => Err(Ended {
            code: Some(close::AUTH_FAILED),
            reason: format!("authentication failed: {}", body.message),
        }),
    }
}
