//! The `connection` target's harness: a real Courier server booted once per
//! fuzz process (SQLite in a temporary directory, as `tests/support` does),
//! a fresh WebSocket per input driven by its [`Op`]s, and after every input
//! a health check by a separate, well-behaved client.
//!
//! Oracles (each one a panic, which libFuzzer reports as a crash, like any
//! panic anywhere in the server):
//! - the server accepts the connection and answers (or closes) within
//!   [`DEADLINE`] after every sync point and after the last op;
//! - everything the server sends decodes as a server frame;
//! - the healthy client can send a message and receive its `ack` and its
//!   push, and never sees anything of the fuzzer's in a channel the fuzzer
//!   does not belong to, nor a post of the fuzzer's in a broadcast channel;
//! - the healthy user's message in the fuzzer's channel is never edited or
//!   deleted (only its sender or a moderator may).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use courier::config::Config;
use courier::server;
use courier_actors::durable::store::{
    Channel, ChannelKind, ChannelRole, Member, NewUser, Role, Session, WriteOp,
};
use courier_protocol::client::Client;
use courier_protocol::codec::{decode_server, Encoding};
use courier_protocol::frames::{
    AckResult, ClientRequest, FetchHistory, Ref, SendMessage, ServerFrame,
};
use courier_protocol::{ChannelId, MessageId, SessionId, UserId};
use futures_util::{SinkExt, StreamExt};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use uuid::Uuid;

use crate::{ids, Op};

/// How long the server may take to answer anything. Generous: the machine
/// may be busy, and a miss is reported as a crash.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The `ref` of the harness's own `ping`s.
const SYNC_REF: &str = "\u{1}fuzz-sync";

/// The healthy user's message in [`ids::MEMBER`].
const BOOT_TEXT: &str = "boot message: never edited, never deleted";

/// The server's frame limit ([`Config::max_frame_bytes`] by default).
const MAX_FRAME_BYTES: usize = 65_536;

/// The server and the clients that talk to it, for the life of the process.
pub struct Harness {
    runtime: Runtime,
    ws_url: String,
    /// The fuzzer's access token.
    token: String,
    /// The id of the healthy user's boot message, as text (36 bytes).
    boot_message: String,
    healthy: Mutex<Client>,
    checks: AtomicU64,
    /// Kept so the data directory outlives the server.
    _dir: tempfile::TempDir,
}

impl Harness {
    /// The process's harness, booted on first use.
    pub fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Harness::boot)
    }

    fn boot() -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // On tmpfs when there is one: SQLite runs `synchronous = FULL`, and
        // an fsync per commit would otherwise dominate every input.
        // The harness lives in a static, so the directory is not removed when
        // libFuzzer exits: remove those of processes that are gone.
        let shm = std::path::Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale_dirs(&parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(&parent)
            .expect("temporary directory");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            database_url: Some(format!(
                "sqlite://{}",
                dir.path().join("courier.db").display()
            )),
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            send_per_minute: u32::MAX,
            rest_per_15min: u32::MAX,
            auth_per_15min: u32::MAX,
            persist_batch_delay_us: 200,
            access_token_ttl_secs: 30 * 86_400,
            max_frame_bytes: MAX_FRAME_BYTES,
            ..Config::default()
        };
        let (ws_url, token, boot_message, healthy) = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let started = server::start(config).await.expect("server starts");
            let app = started.app.clone();
            tokio::spawn(async move {
                server::serve(listener, started, std::future::pending())
                    .await
                    .expect("server runs");
            });

            let now = courier_actors::now_ms();
            let mut tokens = Vec::new();
            for (id, name) in [(ids::FUZZER, "fuzzer"), (ids::HEALTHY, "healthy")] {
                app.store
                    .create_user(NewUser {
                        id: UserId(id),
                        username: name.to_owned(),
                        email: None,
                        password_hash: "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                        role: Role::User,
                        created_at: now,
                    })
                    .await
                    .expect("create user");
                let session = Session {
                    id: SessionId::new(),
                    user_id: UserId(id),
                    token_hash: format!("{:064x}", Uuid::new_v4().as_u128()),
                    created_at: now,
                    expires_at: now + 365 * 86_400_000,
                    ip: None,
                    user_agent: None,
                    valid: true,
                    kind: courier_actors::durable::store::SessionKind::Api,
                    last_seen_at: None,
                };
                let session_id = session.id;
                app.store.create_session(session).await.expect("session");
                let (token, _) = app.tokens.issue(UserId(id), session_id).expect("token");
                tokens.push(token);
            }
            let channels = [
                (ids::PUBLIC, "public", ChannelKind::Public, false),
                (ids::MEMBER, "member", ChannelKind::Private, true),
                (ids::FOREIGN, "foreign", ChannelKind::Private, false),
                (ids::BROADCAST, "broadcast", ChannelKind::Broadcast, true),
            ];
            for (id, name, kind, fuzzer_member) in channels {
                let member = |user: Uuid, role| Member {
                    channel_id: ChannelId(id),
                    user_id: UserId(user),
                    role,
                    joined_at: now,
                    last_read_seq: 0,
                    last_delivered_seq: 0,
                };
                app.store
                    .create_channel(
                        Channel {
                            id: ChannelId(id),
                            name: name.to_owned(),
                            description: None,
                            kind,
                            created_by: UserId(ids::HEALTHY),
                            created_at: now,
                            direct_key: None,
                            archived_at: None,
                        },
                        member(ids::HEALTHY, ChannelRole::Owner),
                    )
                    .await
                    .expect("create channel");
                if fuzzer_member {
                    app.realtime
                        .persistence
                        .write(WriteOp::UpsertMember(member(
                            ids::FUZZER,
                            ChannelRole::Member,
                        )))
                        .await
                        .expect("add member");
                }
            }

            let ws_url = format!("ws://{addr}/ws");
            let mut healthy = Client::builder(&ws_url)
                .encoding(Encoding::MessagePack)
                .timeout(DEADLINE)
                .buffer(1 << 16)
                .connect()
                .await
                .expect("healthy client connects");
            let auth = healthy
                .authenticate(&tokens[1])
                .await
                .expect("healthy client authenticates");
            assert!(auth.result.is_ok(), "{auth:?}");
            healthy
                .join(ChannelId(ids::MEMBER), None)
                .await
                .expect("join member");
            let boot = healthy
                .send_text(ChannelId(ids::MEMBER), BOOT_TEXT)
                .await
                .expect("boot message");
            healthy
                .ack(ClientRequest::LeaveChannel(
                    courier_protocol::frames::LeaveChannel {
                        channel_id: ChannelId(ids::MEMBER),
                    },
                ))
                .await
                .expect("leave member");
            for channel in [ids::FOREIGN, ids::BROADCAST] {
                healthy
                    .join(ChannelId(channel), None)
                    .await
                    .expect("join");
            }
            let boot_message = boot.message_id.0.to_string();
            (ws_url, tokens.swap_remove(0), boot_message, healthy)
        });
        Harness {
            runtime,
            ws_url,
            token,
            boot_message,
            healthy: Mutex::new(healthy),
            checks: AtomicU64::new(0),
            _dir: dir,
        }
    }

    /// Runs one input: the ops on a fresh connection, then the health check.
    pub fn run(&self, ops: &[Op]) {
        self.runtime.block_on(async {
            self.drive(ops).await;
            self.check_health().await;
        });
    }

    /// The placeholder message id replaced by the boot message's.
    fn substitute(&self, body: &[u8]) -> Vec<u8> {
        let placeholder = ids::MESSAGE_PLACEHOLDER.to_string();
        let (from, to) = (placeholder.as_bytes(), self.boot_message.as_bytes());
        let mut out = body.to_vec();
        let mut i = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                i += from.len();
            } else {
                i += 1;
            }
        }
        out
    }

    fn authenticate(&self, msgpack: bool, corrupt: Option<u8>) -> Message {
        let mut token = self.token.clone().into_bytes();
        if let Some(i) = corrupt {
            let i = usize::from(i) % token.len();
            token[i] = if token[i] == b'A' { b'B' } else { b'A' };
        }
        let token = String::from_utf8(token).expect("tokens are ASCII");
        let frame = courier_protocol::ClientFrame::new(ClientRequest::Authenticate(
            courier_protocol::frames::Authenticate { token },
        ))
        .with_ref(1);
        if msgpack {
            Message::Binary(courier_protocol::encode_client(&frame, Encoding::MessagePack))
        } else {
            let bytes = courier_protocol::encode_client(&frame, Encoding::Json);
            Message::Text(String::from_utf8(bytes.to_vec()).expect("JSON").into())
        }
    }

    fn message(&self, op: &Op) -> Option<Message> {
        let raw = |header: FrameHeader, body: Vec<u8>| {
            Message::Frame(Frame::from_payload(header, Bytes::from(body)))
        };
        let control = |body: &[u8]| Bytes::from(body[..body.len().min(125)].to_vec());
        Some(match op {
            Op::Binary(b) => Message::Binary(self.substitute(b).into()),
            Op::Text(b) => {
                let b = self.substitute(b);
                match String::from_utf8(b) {
                    Ok(s) => Message::Text(s.into()),
                    Err(e) => Message::Frame(Frame::message(
                        e.into_bytes(),
                        OpCode::Data(Data::Text),
                        true,
                    )),
                }
            }
            Op::Authenticate { msgpack, corrupt } => self.authenticate(*msgpack, *corrupt),
            Op::Ping(b) => Message::Ping(control(b)),
            Op::Pong(b) => Message::Pong(control(b)),
            Op::Raw { header, body } => raw(
                FrameHeader {
                    is_final: header & 0x80 != 0,
                    rsv1: header & 0x40 != 0,
                    rsv2: header & 0x20 != 0,
                    rsv3: header & 0x10 != 0,
                    opcode: OpCode::from(header & 0x0f),
                    mask: None,
                },
                self.substitute(body),
            ),
            Op::Oversize(b) => {
                let unit: &[u8] = if b.is_empty() { &[0x80] } else { b };
                let body: Vec<u8> = unit
                    .iter()
                    .copied()
                    .cycle()
                    .take(MAX_FRAME_BYTES + 1)
                    .collect();
                Message::Binary(body.into())
            }
            Op::Fragmented { .. } | Op::Sync | Op::Close | Op::Pause => return None,
        })
    }

    /// Sends the ops on a new connection and waits until the server has
    /// handled them (a final sync) or closed it.
    async fn drive(&self, ops: &[Op]) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let connecting =
            tokio_tungstenite::connect_async_with_config(self.ws_url.as_str(), Some(config), true);
        let (mut ws, _) = match timeout(DEADLINE, connecting).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => panic!("the server refused a WebSocket connection: {e}"),
            Err(_) => panic!("the server did not accept a WebSocket connection in {DEADLINE:?}"),
        };
        let sync = serde_json::json!({"type": "ping", "ref": SYNC_REF}).to_string();
        let sync = Message::Text(sync.into());
        for op in ops {
            let messages = match op {
                Op::Sync => {
                    if !send(&mut ws, sync.clone()).await || !synced(&mut ws).await {
                        return;
                    }
                    continue;
                }
                Op::Pause => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Op::Close => {
                    if send(&mut ws, Message::Close(None)).await {
                        closed(&mut ws).await;
                    }
                    return;
                }
                Op::Fragmented { text, body } => {
                    let body = self.substitute(body);
                    let (first, rest) = body.split_at(body.len() / 2);
                    let kind = if *text { Data::Text } else { Data::Binary };
                    vec![
                        Message::Frame(Frame::message(first.to_vec(), OpCode::Data(kind), false)),
                        Message::Frame(Frame::message(
                            rest.to_vec(),
                            OpCode::Data(Data::Continue),
                            true,
                        )),
                    ]
                }
                op => self.message(op).into_iter().collect(),
            };
            for message in messages {
                if !send(&mut ws, message).await {
                    // Closed by the server, or refused by the client library
                    // (a frame it will not write): either way nothing more
                    // can be learnt from this connection.
                    return;
                }
            }
        }
        if send(&mut ws, sync).await {
            synced(&mut ws).await;
        }
    }

    /// The healthy client sends a message to a channel only it belongs to
    /// and must get its `ack` and its push; everything else it receives is
    /// checked for leaks of the fuzzer's traffic. Then the boot message
    /// must be intact.
    async fn check_health(&self) {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        let mut healthy = self.healthy.lock().await;
        let text = format!("health check {n}");
        let request = ClientRequest::SendMessage(SendMessage::text(ChannelId(ids::FOREIGN), &text));
        let reference = healthy
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("health check {n}: the healthy client cannot send: {e}"));
        let (mut acked, mut pushed) = (None::<MessageId>, false);
        while acked.is_none() || !pushed {
            let frame = healthy.next_frame(DEADLINE).await.unwrap_or_else(|e| {
                panic!("health check {n}: no ack or push for the healthy client: {e}")
            });
            check_no_leak(&frame);
            match &frame {
                ServerFrame::Ack(ack) if ack.reference.as_ref() == Some(&reference) => {
                    match &ack.result {
                        AckResult::Sent(sent) => acked = Some(sent.message_id),
                        other => panic!("health check {n}: ack without a message: {other:?}"),
                    }
                }
                ServerFrame::Error(e) if e.reference.as_ref() == Some(&reference) => {
                    panic!("health check {n}: the healthy send failed: {e:?}")
                }
                ServerFrame::NewMessage(push)
                    if push.data.channel_id == ChannelId(ids::FOREIGN)
                        && push.data.text == text =>
                {
                    pushed = true
                }
                _ => {}
            }
        }

        let history = ClientRequest::FetchHistory(FetchHistory {
            channel_id: ChannelId(ids::MEMBER),
            before_seq: Some(2),
            limit: Some(1),
        });
        let reference = healthy.send(history).await.expect("fetch_history");
        loop {
            let frame = healthy
                .next_frame(DEADLINE)
                .await
                .unwrap_or_else(|e| panic!("health check {n}: no history: {e}"));
            check_no_leak(&frame);
            match frame {
                ServerFrame::History(h) if h.reference.as_ref() == Some(&reference) => {
                    let boot = h.messages.first().unwrap_or_else(|| {
                        panic!("the healthy user's message was deleted by someone else")
                    });
                    assert_eq!(boot.id.0.to_string(), self.boot_message);
                    assert!(
                        boot.text == BOOT_TEXT && boot.edited_at.is_none(),
                        "the healthy user's message was edited by someone else: {boot:?}"
                    );
                    break;
                }
                ServerFrame::Error(e) if e.reference.as_ref() == Some(&reference) => {
                    panic!("health check {n}: history failed: {e:?}")
                }
                _ => {}
            }
        }
    }
}

/// The start of the name of every harness's data directory, before the pid.
const DIR_PREFIX: &str = "courier-fuzz-";

/// Removes the data directories of harness processes that no longer run.
fn remove_stale_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Sends one message; `false` when the connection is no longer usable.
async fn send<S>(ws: &mut S, message: Message) -> bool
where
    S: SinkExt<Message> + Unpin,
{
    match timeout(DEADLINE, ws.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => panic!("the server stopped reading for {DEADLINE:?}"),
    }
}

/// Reads until the answer to the harness's `ping`; `false` when the server
/// closed first.
async fn synced<S>(ws: &mut S) -> bool
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let next = timeout(DEADLINE, ws.next()).await.unwrap_or_else(|_| {
            panic!("the server neither answered a ping nor closed in {DEADLINE:?}")
        });
        match next {
            Some(Ok(message)) => {
                if let Some(ServerFrame::Pong(p)) = decoded(&message) {
                    if p.reference == Some(Ref::Str(SYNC_REF.to_owned())) {
                        return true;
                    }
                }
            }
            Some(Err(_)) | None => return false,
        }
    }
}

/// Reads until the server closes.
async fn closed<S>(ws: &mut S)
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let next = timeout(DEADLINE, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the server did not close in {DEADLINE:?}"));
        match next {
            Some(Ok(message)) => drop(decoded(&message)),
            Some(Err(_)) | None => return,
        }
    }
}

/// A data message as a server frame; the server never sends anything that
/// does not decode.
fn decoded(message: &Message) -> Option<ServerFrame> {
    let (bytes, encoding) = match message {
        Message::Binary(b) => (&b[..], Encoding::MessagePack),
        Message::Text(t) => (t.as_bytes(), Encoding::Json),
        _ => return None,
    };
    match decode_server(bytes, encoding) {
        Ok(frame) => Some(frame),
        Err(e) => panic!(
            "the server sent an undecodable {encoding:?} frame ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Nothing of the fuzzer's reaches a channel it does not belong to, and it
/// never posts in a broadcast channel.
fn check_no_leak(frame: &ServerFrame) {
    let (foreign, broadcast) = (ChannelId(ids::FOREIGN), ChannelId(ids::BROADCAST));
    let fuzzer = UserId(ids::FUZZER);
    let leak = match frame {
        ServerFrame::NewMessage(m) | ServerFrame::MessageUpdated(m) => {
            m.data.sender_id == fuzzer
                && (m.data.channel_id == foreign || m.data.channel_id == broadcast)
        }
        ServerFrame::MessageDeleted(d) => d.data.channel_id == foreign,
        ServerFrame::ReactionUpdated(r) => r.channel_id == foreign,
        ServerFrame::Typing(t) => t.user_id == fuzzer && t.channel_id == foreign,
        ServerFrame::ReadReceipt(r) => r.user_id == fuzzer && r.channel_id == foreign,
        _ => false,
    };
    assert!(!leak, "the fuzzer's traffic reached the healthy user: {frame:?}");
}
