//! The servers under test and one tiny adapter per kind of server.
//!
//! - **Courier**: the release binary started with a temporary data dir (or
//!   `--url`); users registered and logged in over REST, channels created
//!   over REST; connections set up through the typed client
//!   (`courier_protocol::client`), then read with a light decoder that takes
//!   only the fields the tester records (see [`Rx::Courier`]).
//! - **tungstenite** and **node**: the broadcast peers under
//!   `benches/peers/` (join / send / new_message in MessagePack).
//! - **nats**: `nats-server -c benches/peers/nats.conf`, NATS text protocol
//!   (`CONNECT`, `SUB`, `PUB`, `PING`) over its WebSocket listener; the
//!   published payload is the same MessagePack map the peers push.
//!
//! Every target hands the scenarios the same pair: a [`Tx`] that sends
//! texts, an [`Rx`] that yields [`Event`]s.

use std::collections::VecDeque;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use courier_protocol::client::{Client, ClientSender, Ws as ClientWs};
use courier_protocol::compact::FrameStyle;
use courier_protocol::frames::{Authenticate, ClientRequest, SendMessage};
use courier_protocol::{ChannelId, ErrorCode, Ref, ServerFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::light;
use crate::stats::parse_text;

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Courier (`target/release/courier`, or `--url`).
    Courier,
    /// The bare tokio-tungstenite broadcast server (`benches/peers/tungstenite.rs`).
    Tungstenite,
    /// The Node.js `ws` + `@msgpack/msgpack` broadcast server (`benches/peers/node/`).
    Node,
    /// nats-server over its WebSocket listener (`benches/peers/nats.conf`).
    Nats,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Courier => "courier",
            Kind::Tungstenite => "tungstenite",
            Kind::Node => "node",
            Kind::Nats => "nats",
        }
    }
}

/// The password of every bench user (the server's policy wants 12+).
const PASSWORD: &str = "bench-password-0123456789";
/// The bench admin, created by the server on first start.
const ADMIN: &str = "benchadmin";
const ADMIN_PASSWORD: &str = "bench-admin-password-0123456789";
/// The NATS subject of every room (the peers have one broadcast set).
const NATS_SUBJECT: &str = "bench";
/// The nats-server WebSocket port in `benches/peers/nats.conf`.
const NATS_WS_PORT: u16 = 14223;

/// A server process this run started; killed on drop.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    /// The Courier data dir, removed on drop.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child, self.pid);
    }
}

/// How to start a server.
pub struct Launch<'a> {
    pub kind: Kind,
    /// `taskset -c 0` in front of the command.
    pub pin: bool,
    pub courier_bin: &'a Path,
    pub database_url: Option<&'a str>,
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn benches_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches")
}

/// Starts the server and waits until it accepts connections. Returns it
/// and the base URL (`http://…` for Courier, `ws://…` for the peers).
pub async fn launch(l: &Launch<'_>) -> Result<(Server, String)> {
    let dir = tempfile::Builder::new().prefix("courier-load-").tempdir()?;
    let log = dir.path().join("server.log");
    let port = match l.kind {
        Kind::Nats => NATS_WS_PORT,
        _ => free_port()?,
    };
    let (program, args): (PathBuf, Vec<String>) = match l.kind {
        Kind::Courier => {
            if !l.courier_bin.exists() {
                bail!(
                    "{} does not exist: run `cargo build --release` first (or pass --server / --url)",
                    l.courier_bin.display()
                );
            }
            (l.courier_bin.to_path_buf(), vec!["serve".into()])
        }
        Kind::Tungstenite => (
            std::env::current_exe()?,
            vec!["peer-tungstenite".into(), "--port".into(), port.to_string()],
        ),
        Kind::Node => {
            let node_dir = benches_dir().join("peers/node");
            if !node_dir.join("node_modules/ws").exists() {
                bail!("run `npm install` in {} first", node_dir.display());
            }
            (
                PathBuf::from("node"),
                vec![
                    node_dir.join("server.js").display().to_string(),
                    port.to_string(),
                ],
            )
        }
        Kind::Nats => (
            PathBuf::from("nats-server"),
            vec![
                "-c".into(),
                benches_dir().join("peers/nats.conf").display().to_string(),
            ],
        ),
    };
    let mut command = if l.pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(&program).args(&args);
        c
    } else {
        let mut c = Command::new(&program);
        c.args(&args);
        c
    };
    if l.kind == Kind::Courier {
        let limit = "100000000";
        command
            .env("COURIER_BIND", format!("127.0.0.1:{port}"))
            .env("COURIER_DATA_DIR", dir.path().join("data"))
            .env("COURIER_SEND_PER_MINUTE", limit)
            .env("COURIER_REST_PER_15MIN", limit)
            .env("COURIER_AUTH_PER_15MIN", limit)
            // Every bench user registers from 127.0.0.1.
            .env("COURIER_REGISTER_PER_HOUR", limit)
            // Every load client connects from 127.0.0.1.
            .env("COURIER_MAX_UNAUTHENTICATED_PER_IP", limit)
            .env("COURIER_MAX_CONNECTIONS_PER_IP", limit)
            .env("COURIER_ALLOW_REGISTRATION", "true")
            .env("COURIER_INITIAL_ADMIN_USERNAME", ADMIN)
            .env("COURIER_INITIAL_ADMIN_PASSWORD", ADMIN_PASSWORD)
            // Logins are set-up, not measured: cheap password hashes keep
            // registering hundreds of users fast. WebSocket authentication
            // (JWT and session check) is unaffected.
            .env("COURIER_ARGON2_MEMORY_KIB", "1024")
            .env("COURIER_ARGON2_ITERATIONS", "1")
            .env("COURIER_LOCKOUT_THRESHOLD", "0");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        if let Some(url) = l.database_url {
            command.env("COURIER_DATABASE_URL", url);
        }
    }
    let out = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let server = Server {
        pid: child.id(),
        child,
        log,
        _dir: dir,
    };
    let base = match l.kind {
        Kind::Courier => format!("http://127.0.0.1:{port}"),
        _ => format!("ws://127.0.0.1:{port}"),
    };
    wait_ready(l.kind, port, &server).await?;
    Ok((server, base))
}

async fn wait_ready(kind: Kind, port: u16, server: &Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::new();
    loop {
        let ready = match kind {
            Kind::Courier => http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            _ => TcpStream::connect(("127.0.0.1", port)).await.is_ok(),
        };
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline
            || !std::path::Path::new(&format!("/proc/{}", server.pid)).exists()
        {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            bail!(
                "{} did not become ready on port {port}; log tail (newest first):\n{tail}",
                kind.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a run's connections go and who they authenticate as.
pub struct Env {
    pub kind: Kind,
    /// The WebSocket URL.
    pub ws_url: String,
    /// Courier only: the REST base URL, the admin's token and the users'.
    pub http_url: String,
    admin_token: String,
    pub tokens: Vec<String>,
    /// Courier only: ask for compact `new_message` frames at `authenticate`.
    pub compact: bool,
    rest: reqwest::Client,
}

/// Courier's persistence batches so far, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PersistBatches {
    pub batches: u64,
    pub rows: f64,
    /// Batches of more than 128 rows (the histogram's `le="128"` bucket).
    pub over_128: u64,
}

impl PersistBatches {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &PersistBatches) -> PersistBatches {
        PersistBatches {
            batches: self.batches.saturating_sub(earlier.batches),
            rows: self.rows - earlier.rows,
            over_128: self.over_128.saturating_sub(earlier.over_128),
        }
    }

    fn parse(metrics: &str) -> PersistBatches {
        let value = |prefix: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let batches = value("courier_persist_batch_size_count") as u64;
        let upto_128 = value("courier_persist_batch_size_bucket{le=\"128\"}") as u64;
        PersistBatches {
            batches,
            rows: value("courier_persist_batch_size_sum"),
            over_128: batches.saturating_sub(upto_128),
        }
    }
}

/// A room: a Courier channel, or the peers' one broadcast set.
#[derive(Clone, Copy, Debug)]
pub enum Room {
    Channel(ChannelId),
    Broadcast,
}

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

#[derive(Deserialize)]
struct ChannelAnswer {
    channel: ChannelIdOnly,
}

#[derive(Deserialize)]
struct ChannelIdOnly {
    id: ChannelId,
}

impl Env {
    /// Courier's persistence batches so far (None for the peers).
    pub async fn persist_batches(&self) -> Option<PersistBatches> {
        if self.kind != Kind::Courier {
            return None;
        }
        let text = self
            .rest
            .get(format!("{}/metrics", self.http_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(PersistBatches::parse(&text))
    }

    /// Connects to a peer as is, or to Courier after registering and
    /// logging in `users` users.
    pub async fn new(kind: Kind, base: &str, users: usize) -> Result<Env> {
        let rest = reqwest::Client::new();
        let mut env = Env {
            kind,
            ws_url: base.to_owned(),
            http_url: String::new(),
            admin_token: String::new(),
            tokens: Vec::new(),
            compact: false,
            rest,
        };
        if kind != Kind::Courier {
            return Ok(env);
        }
        let http = base.trim_end_matches('/').to_owned();
        env.ws_url = format!(
            "{}/ws",
            http.replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        env.http_url = http;
        env.admin_token = env.login(ADMIN, ADMIN_PASSWORD).await.context(
            "admin login (a --url server must have been started with \
             COURIER_INITIAL_ADMIN_USERNAME=benchadmin and \
             COURIER_INITIAL_ADMIN_PASSWORD=bench-admin-password-0123456789)",
        )?;
        let run = std::process::id();
        let names: Vec<String> = (0..users.max(1))
            .map(|i| format!("bench-{run}-{i}"))
            .collect();
        let mut tokens = Vec::with_capacity(names.len());
        for chunk in names.chunks(16) {
            let logins = chunk.iter().map(|name| env.register_and_login(name));
            for token in futures_util::future::join_all(logins).await {
                tokens.push(token?);
            }
        }
        env.tokens = tokens;
        Ok(env)
    }

    async fn register_and_login(&self, name: &str) -> Result<String> {
        let response = self
            .rest
            .post(format!("{}/api/auth/register", self.http_url))
            .json(&serde_json::json!({"username": name, "password": PASSWORD}))
            .send()
            .await?;
        if !(response.status().is_success() || response.status().as_u16() == 409) {
            bail!(
                "register {name}: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        self.login(name, PASSWORD).await
    }

    async fn login(&self, name: &str, password: &str) -> Result<String> {
        let response = self
            .rest
            .post(format!("{}/api/auth/login", self.http_url))
            .json(&serde_json::json!({"username": name, "password": password}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "login {name}: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json::<LoginAnswer>().await?.token)
    }

    /// `n` rooms: public channels created by the admin over REST (the
    /// peers have one broadcast set, so `n` must be 1 there).
    pub async fn rooms(&self, n: usize) -> Result<Vec<Room>> {
        if self.kind != Kind::Courier {
            if n > 1 {
                bail!(
                    "{} has one broadcast set: this scenario needs Courier",
                    self.kind.name()
                );
            }
            return Ok(vec![Room::Broadcast]);
        }
        let run = std::process::id();
        let mut rooms = Vec::with_capacity(n);
        let indices: Vec<usize> = (0..n).collect();
        for chunk in indices.chunks(16) {
            let creates = chunk
                .iter()
                .map(|i| async move { self.create_channel(&format!("bench-{run}-{i}")).await });
            for room in futures_util::future::join_all(creates).await {
                rooms.push(Room::Channel(room?));
            }
        }
        Ok(rooms)
    }

    /// Courier: one public channel named `name`, created by the admin over
    /// REST.
    pub async fn create_channel(&self, name: &str) -> Result<ChannelId> {
        let response = self
            .rest
            .post(format!("{}/api/channels", self.http_url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({"name": name, "kind": "public"}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "create channel: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json::<ChannelAnswer>().await?.channel.id)
    }

    /// One connection, authenticated (as user `user`, modulo the user
    /// count) and joined to `room`.
    pub async fn connect(&self, user: usize, room: Room) -> Result<(Tx, Rx)> {
        match (self.kind, room) {
            (Kind::Courier, Room::Channel(channel)) => {
                let token = &self.tokens[user % self.tokens.len()];
                let mut client = Client::builder(&self.ws_url)
                    .timeout(Duration::from_secs(30))
                    .read_buffer(READ_BUFFER)
                    .connect()
                    .await?;
                let mut request = Authenticate::new(token.as_str());
                if self.compact {
                    request.frames = FrameStyle::Compact;
                }
                let auth = client.authenticate_with(request).await?;
                if let Err(e) = auth.result {
                    bail!("authentication refused: {}", e.message);
                }
                client.join(channel, None).await?;
                let (sender, rx) = client.split();
                let (read, stream) = rx.into_raw();
                // `authenticate` and `join_channel` took refs 1 and 2: the
                // client numbers its requests 1, 2, 3, ...
                Ok((
                    Tx::Courier {
                        sender,
                        next_key: 3,
                    },
                    Rx::Courier { read, stream },
                ))
            }
            (Kind::Courier, Room::Broadcast) => Err(anyhow!("a Courier room is a channel")),
            (Kind::Tungstenite | Kind::Node, _) => {
                let (ws, _) = tokio_tungstenite::connect_async_with_config(
                    &self.ws_url,
                    Some(ws_config()),
                    true,
                )
                .await?;
                let (mut sink, mut stream) = ws.split();
                sink.send(Message::Binary(peer_frame("join", None))).await?;
                // Wait for the join's ack.
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if decode_peer(&b)?.kind == "ack" => break,
                        Ok(Some(Ok(_))) => continue,
                        _ => bail!("no ack to join"),
                    }
                }
                Ok((
                    Tx::Ws {
                        sink,
                        nats: false,
                        sent: 0,
                    },
                    Rx::Ws {
                        stream,
                        nats: None,
                        acks: 0,
                    },
                ))
            }
            (Kind::Nats, _) => {
                let (ws, _) = tokio_tungstenite::connect_async_with_config(
                    &self.ws_url,
                    Some(ws_config()),
                    true,
                )
                .await?;
                let (mut sink, stream) = ws.split();
                let hello = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1}}\r\nSUB {NATS_SUBJECT} 1\r\nPING\r\n"
                );
                sink.send(Message::Binary(Bytes::from(hello))).await?;
                let mut rx = Rx::Ws {
                    stream,
                    nats: Some(BytesMut::new()),
                    acks: 0,
                };
                // The PONG to our PING: CONNECT and SUB were processed.
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), rx.next_event()).await {
                        Ok(Event::Pong) => break,
                        Ok(Event::Closed(_)) | Err(_) => bail!("nats: no PONG after SUB"),
                        Ok(_) => continue,
                    }
                }
                Ok((
                    Tx::Ws {
                        sink,
                        nats: true,
                        sent: 0,
                    },
                    rx,
                ))
            }
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The tester's read buffer per connection, for every target alike.
/// tungstenite zeroes its whole read buffer before each read (128 KiB by
/// default): with a thousand connections that each get a small frame per
/// read, that memset was a fifth of the tester's core.
const READ_BUFFER: usize = 8 * 1024;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER)
}

/// A peer frame (`join`, `send`, `ack`, `new_message`), both ways, and the
/// NATS payload.
#[derive(Serialize, Deserialize)]
pub struct PeerFrame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A peer frame in MessagePack.
pub fn peer_frame(kind: &str, text: Option<String>) -> Bytes {
    let frame = PeerFrame {
        kind: kind.to_owned(),
        text,
    };
    Bytes::from(rmp_serde::to_vec_named(&frame).unwrap_or_default())
}

fn decode_peer(bytes: &[u8]) -> Result<PeerFrame> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// What a receiver saw.
#[derive(Debug)]
pub enum Event {
    /// A pushed message, sent at `sent_ns` (the tester's clock) in `step`.
    Message { sent_ns: u64, step: u32 },
    /// The answer to the send with this key ([`Tx::send_batch`]).
    Ack(u64),
    /// An error answer to the send with this key, with its code.
    Nack(u64, &'static str),
    /// NATS: the answer to our `PING`.
    Pong,
    /// Anything else (presence, …).
    Other,
    /// A frame that did not decode.
    Undecodable,
    /// The connection ended, with the server's close code when it sent one.
    Closed(Option<u16>),
}

/// The sending half.
pub enum Tx {
    Courier {
        sender: ClientSender,
        /// The `ref` the next request gets.
        next_key: u64,
    },
    Ws {
        sink: SplitSink<Ws, Message>,
        nats: bool,
        /// Sends so far: the key of the next one is `sent + 1`.
        sent: u64,
    },
}

impl Tx {
    /// The ack keys the next `n` sends will get (`None`: no acks), so that
    /// they can be registered before an ack can arrive.
    pub fn next_keys(&self, n: usize) -> Vec<Option<u64>> {
        let first = match self {
            Tx::Courier { next_key, .. } => *next_key,
            Tx::Ws { nats: true, .. } => return vec![None; n],
            Tx::Ws { sent, .. } => sent + 1,
        };
        (first..first + n as u64).map(Some).collect()
    }

    /// Sends `texts` to `room` with one flush. Returns each send's ack key,
    /// or `None` when the target acknowledges nothing (NATS).
    pub async fn send_batch(&mut self, room: Room, texts: Vec<String>) -> Result<Vec<Option<u64>>> {
        match self {
            Tx::Courier { sender, next_key } => {
                let Room::Channel(channel) = room else {
                    bail!("a Courier room is a channel");
                };
                let requests = texts
                    .into_iter()
                    .map(|text| ClientRequest::SendMessage(SendMessage::text(channel, text)));
                let refs = sender.send_batch(requests).await?;
                if let Some(Ref::Int(last)) = refs.last() {
                    *next_key = *last as u64 + 1;
                }
                Ok(refs
                    .into_iter()
                    .map(|r| match r {
                        Ref::Int(n) => Some(n as u64),
                        Ref::Str(_) => None,
                    })
                    .collect())
            }
            Tx::Ws { sink, nats, sent } => {
                let mut keys = Vec::with_capacity(texts.len());
                for text in texts {
                    if *nats {
                        let payload = peer_frame("new_message", Some(text));
                        let mut frame =
                            format!("PUB {NATS_SUBJECT} {}\r\n", payload.len()).into_bytes();
                        frame.extend_from_slice(&payload);
                        frame.extend_from_slice(b"\r\n");
                        sink.feed(Message::Binary(Bytes::from(frame))).await?;
                        keys.push(None);
                    } else {
                        sink.feed(Message::Binary(peer_frame("send", Some(text))))
                            .await?;
                        *sent += 1;
                        keys.push(Some(*sent));
                    }
                }
                sink.flush().await?;
                Ok(keys)
            }
        }
    }

    /// Closes the connection (normal close).
    pub async fn close(self) {
        match self {
            Tx::Courier { mut sender, .. } => {
                let _ = sender.close().await;
            }
            Tx::Ws { mut sink, .. } => {
                let _ = sink.close().await;
            }
        }
    }
}

/// Bytes on the wire of every data frame (binary or text) the tester's
/// receivers have read so far, WebSocket headers included: one relaxed add
/// per frame (the tester runs on one core, so the line does not bounce).
pub static RX_BYTES: AtomicU64 = AtomicU64::new(0);

/// The size on the wire of a server-to-client (unmasked) WebSocket frame
/// with `payload` bytes: 2 header bytes, plus 2 or 8 of extended length.
pub fn frame_wire_bytes(payload: usize) -> u64 {
    let extended = match payload {
        0..=125 => 0,
        126..=65535 => 2,
        _ => 8,
    };
    (2 + extended + payload) as u64
}

fn count_rx(payload: usize) {
    RX_BYTES.fetch_add(frame_wire_bytes(payload), Ordering::Relaxed);
}

/// The receiving half.
pub enum Rx {
    /// Courier's frames are not decoded into typed frames: at hundreds of
    /// thousands of deliveries per second, full decoding (every id parsed,
    /// every string copied and checked) took most of the tester's core and
    /// made the tester, not the server, the limit of the fanout runs.
    /// [`courier_event`] borrows the few fields it needs from the bytes.
    Courier {
        /// Frames the typed client read during set-up.
        read: VecDeque<ServerFrame>,
        stream: SplitStream<ClientWs>,
    },
    Ws {
        stream: SplitStream<Ws>,
        /// NATS: bytes of a protocol line or message not complete yet.
        nats: Option<BytesMut>,
        /// Acks so far (peers answer sends in order).
        acks: u64,
    },
}

impl Rx {
    /// The next event. A NATS receiver does not answer the server's `PING`s
    /// (the sending half has the socket); nats.conf pings every 10 minutes,
    /// longer than any run.
    pub async fn next_event(&mut self) -> Event {
        match self {
            Rx::Courier { read, stream } => {
                if let Some(frame) = read.pop_front() {
                    return typed_event(frame);
                }
                loop {
                    return match stream.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            count_rx(b.len());
                            courier_event(&b)
                        }
                        Some(Ok(Message::Close(frame))) => {
                            Event::Closed(frame.map(|f| u16::from(f.code)))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => Event::Closed(None),
                    };
                }
            }
            Rx::Ws { stream, nats, acks } => loop {
                if let Some(buf) = nats {
                    if let Some(event) = nats_event(buf) {
                        return event;
                    }
                }
                let bytes = match stream.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        count_rx(b.len());
                        b
                    }
                    Some(Ok(Message::Text(t))) => {
                        count_rx(t.len());
                        Bytes::copy_from_slice(t.as_bytes())
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Event::Closed(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Event::Closed(None),
                };
                if let Some(buf) = nats {
                    buf.extend_from_slice(&bytes);
                    continue;
                }
                return peer_event(&bytes, acks);
            },
        }
    }
}

/// An event from a frame the typed client decoded.
fn typed_event(frame: ServerFrame) -> Event {
    match frame {
        ServerFrame::NewMessage(push) => message_event(Some(push.data.text.as_bytes())),
        ServerFrame::Ack(ack) => match ack.reference {
            Some(Ref::Int(n)) => Event::Ack(n as u64),
            _ => Event::Other,
        },
        ServerFrame::Error(e) => match e.reference {
            Some(Ref::Int(n)) => Event::Nack(n as u64, e.code.as_str()),
            _ => Event::Undecodable,
        },
        _ => Event::Other,
    }
}

/// The event of one Courier server frame, from the few fields recorded.
fn courier_event(bytes: &[u8]) -> Event {
    let Some(frame) = light::read(bytes) else {
        return Event::Undecodable;
    };
    match (frame.kind, frame.reference) {
        (b"new_message" | b"m", _) => message_event(frame.text),
        (b"ack", Some(n)) => Event::Ack(n),
        (b"error", Some(n)) => match frame.code.map(rmp_serde::from_slice::<ErrorCode>) {
            Some(Ok(code)) => Event::Nack(n, code.as_str()),
            _ => Event::Undecodable,
        },
        (b"error", None) => Event::Undecodable,
        _ => Event::Other,
    }
}

/// The event of a pushed message's text (as [`stats::message_text`] wrote it).
fn message_event(text: Option<&[u8]>) -> Event {
    match text.and_then(parse_text) {
        Some((sent_ns, step)) => Event::Message { sent_ns, step },
        None => Event::Undecodable,
    }
}

/// The event of one peer frame (`ack` or `new_message`); `acks` counts the
/// acks so far (peers answer sends in order).
fn peer_event(bytes: &[u8], acks: &mut u64) -> Event {
    match light::read(bytes) {
        Some(f) if f.kind == b"new_message" => message_event(f.text),
        Some(f) if f.kind == b"ack" => {
            *acks += 1;
            Event::Ack(*acks)
        }
        Some(_) => Event::Other,
        None => Event::Undecodable,
    }
}

/// Takes one complete NATS protocol message off the front of `buf`.
fn nats_event(buf: &mut BytesMut) -> Option<Event> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[..line_end];
    if line.starts_with(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let size: usize = std::str::from_utf8(line)
            .ok()?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        let total = line_end + 2 + size + 2;
        if buf.len() < total {
            return None;
        }
        let message = buf.split_to(total);
        let payload = &message[line_end + 2..line_end + 2 + size];
        return Some(match light::read(payload) {
            Some(f) => message_event(f.text),
            None => Event::Undecodable,
        });
    }
    let event = if line.starts_with(b"PONG") {
        Event::Pong
    } else if line.starts_with(b"-ERR") {
        Event::Undecodable
    } else {
        Event::Other // INFO, PING, +OK
    };
    let _ = buf.split_to(line_end + 2);
    Some(event)
}

/// SIGTERM, then up to 5 s for the child to exit, then SIGKILL.
pub(crate) fn terminate(child: &mut std::process::Child, pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
