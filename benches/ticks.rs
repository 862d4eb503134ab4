//! The second fan-out load tester, "ticks" shape (issue 40):
//! `cargo bench --bench ticks -- --target courier|nats|tungstenite --subs 1000
//! [--users N] [--compact] --pin [--rates 25,50,...] [--duration 5]
//! [--json-out FILE]` (benches/README.md, "Second shape: `ticks`").
//!
//! It reproduces the independent load generator of issue 40, which measured
//! Courier's fan-out lower than the project's own tester (`load.rs`) does:
//!
//! - the server pinned to core 0 (`taskset -c 0`, with `--pin`), this
//!   generator to core 1; every subscriber and the one publisher in this
//!   process;
//! - every subscriber is a plain `tokio_tungstenite::connect_async` stream
//!   with the default `WebSocketConfig` (128 KiB read buffer), reading
//!   `Message::Binary` and decoding each frame in full with
//!   `rmp_serde::from_slice` into a small serde struct (Courier: `{type,
//!   data: {text}}` or compact `{type: "m", x}`; the peers: `{type, text}`;
//!   NATS: `MSG <subj> <sid> <len>\r\n<payload>\r\n` cut out of the binary
//!   frames, the payload rmp-decoded);
//! - the publisher is one tokio task on a 1 ms `tokio::time::interval`
//!   (`MissedTickBehavior::Burst`), open-loop: at each tick it sends
//!   `round(rate * elapsed) - sent` messages. Each text is 100 bytes: the
//!   send instant (ns since the tester's start) in decimal, a space, padding.
//!   Publish-to-deliver latency goes into one HdrHistogram per step (µs, 3
//!   significant digits);
//! - 5-second steps at 25, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700,
//!   800, 1000, 1200, 1500, 2000 msgs/s, each followed by up to 3 s of drain,
//!   a fresh channel per step (Courier: a new public channel, every
//!   connection leaves the old one and joins the new one; NATS: a new
//!   subject; the tungstenite peer has one broadcast set); the knee is the
//!   last step with >= 99.9 % delivered and p99 <= 100 ms; the sweep stops
//!   after two failing steps in a row;
//! - 1,000 subscribers on one channel; Courier's subscribers are distinct
//!   users by default (`--users 1`: all the same user); the publisher is one
//!   more connection (its own user), joined too but not counted.
//!
//! How it differs from `load.rs fanout`: full tokio-tungstenite reading and
//! decoding (load.rs reads with an 8 KiB buffer and borrows three fields out
//! of each frame, `load/light.rs`), 1 ms ticks instead of per-message due
//! times, distinct users, a fresh channel per step, fixed rate steps.
//!
//! Per step it records the rate offered, messages sent, deliveries expected
//! and received, deliveries/s, p50/p99/p99.9/max, server CPU-seconds (and per
//! million deliveries), this process's CPU, the server's system calls per
//! delivery (`perf stat`, `load/perf.rs`), WebSocket bytes on the wire per
//! delivery (every frame the subscribers receive during the step, headers
//! included) and the server's RSS. A table goes to stderr, one JSON line per
//! step to stdout (and `--json-out`).
//!
//! Shared with `load.rs`: `load/target.rs` (starting the servers,
//! provisioning Courier over REST), `load/stats.rs` (histograms, `/proc`),
//! `load/perf.rs`, and `peers/tungstenite.rs` (which this binary runs as
//! `ticks peer-tungstenite --port N` for `--target tungstenite`).

#[allow(dead_code)]
#[path = "load/light.rs"]
mod light;
#[path = "load/perf.rs"]
mod perf;
#[allow(dead_code)]
#[path = "load/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "load/target.rs"]
mod target;
#[path = "peers/tungstenite.rs"]
mod tungstenite_peer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use stats::{cpu_secs, now_ns, rss_kib, Percentiles, Recorder};
use target::{frame_wire_bytes, peer_frame, Env, Kind, Launch, PeerFrame};

const DEFAULT_RATES: [f64; 16] = [
    25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 1000.0,
    1200.0, 1500.0, 2000.0,
];

/// `ref` bit of a `join_channel` (its ack counts as a join).
const JOIN_REF: u64 = 1 << 40;
/// `ref` bit of a `leave_channel`.
const LEAVE_REF: u64 = 1 << 41;
/// `ref` of `authenticate`.
const AUTH_REF: u64 = 1 << 42;

#[derive(Parser, Debug)]
#[command(
    name = "ticks",
    about = "Courier's second fan-out tester, the issue-40 shape (benches/README.md)",
    after_help = "Example: cargo bench --bench ticks -- --target courier --subs 1000 --pin"
)]
struct Cli {
    /// Which server (node speaks the tungstenite peer's protocol).
    #[arg(long, value_enum, default_value_t = Kind::Courier)]
    target: Kind,
    /// Subscribers (the publisher is one more connection).
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Courier: distinct users the subscribers authenticate as, round robin
    /// [default: --subs]; the publisher is its own user (user 0 with 1).
    #[arg(long)]
    users: Option<usize>,
    /// Courier: ask for compact `new_message` frames (`m`) at authenticate.
    #[arg(long)]
    compact: bool,
    /// Pin the server to core 0 (`taskset -c 0`) and this tester to core 1.
    #[arg(long)]
    pin: bool,
    /// The steps' rates, msgs/s.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_RATES)]
    rates: Vec<f64>,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to wait after a step for its last deliveries, at most.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Seconds between the last join of a step's channel and its first send.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Length of each message's text, bytes.
    #[arg(long, default_value_t = stats::TEXT_BYTES)]
    text_bytes: usize,
    /// A step passes with at least this share delivered, %.
    #[arg(long, default_value_t = 99.9)]
    min_delivered_pct: f64,
    /// A step passes with p99 publish-to-deliver at most this, ms.
    #[arg(long, default_value_t = 100.0)]
    p99_limit_ms: f64,
    /// Tokio worker threads of the tester.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connects in flight at once during set-up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The Courier binary [default: target/release/courier].
    #[arg(long)]
    server: Option<PathBuf>,
    /// `COURIER_DATABASE_URL` for the started Courier (default: SQLite in
    /// the temporary data dir).
    #[arg(long)]
    database_url: Option<String>,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 1800.0)]
    max_secs: f64,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; plain `cargo bench` passes nothing
    // else: print a hint and succeed rather than run a long sweep.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        eprintln!(
            "ticks: no options given; try `cargo bench --bench ticks -- --target courier --subs 1000 --pin` \
             or `-- --help` (benches/README.md)"
        );
        return ExitCode::SUCCESS;
    }
    stats::start_clock();
    if args[1] == "peer-tungstenite" {
        return serve_peer(&args[2..]);
    }
    let cli = Cli::parse_from(args);
    let Some(runtime) = stats::tester_runtime("ticks", cli.pin, cli.threads) else {
        return ExitCode::FAILURE;
    };
    let shared = Arc::new(Shared::new());
    let bound = Duration::from_secs_f64(cli.max_secs);
    let result = runtime.block_on(async {
        match tokio::time::timeout(bound, run(&cli, shared.clone())).await {
            Ok(r) => r,
            Err(_) => bail!("the run passed --max-secs {}", cli.max_secs),
        }
    });
    shared.stopping.store(true, Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ticks: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ticks peer-tungstenite --port N`: what `--target tungstenite` starts
/// (`target::launch` runs this same binary).
fn serve_peer(args: &[String]) -> ExitCode {
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(9001);
    tungstenite_peer::run(port)
}

// ---------------------------------------------------------------------------
// Counters shared by the readers and the controller
// ---------------------------------------------------------------------------

struct Shared {
    /// Deliveries and latency histograms per step (step 0: none).
    rec: Recorder,
    /// The step being measured; 0 between steps (frames then count for
    /// nothing).
    current: AtomicU32,
    /// When the current step's sending started (`now_ns`): a delivery
    /// stamped earlier belongs to no step (a stray).
    step_start_ns: AtomicU64,
    /// WebSocket bytes the subscribers received, by step.
    wire_bytes: Vec<AtomicU64>,
    /// Frames the subscribers received, by step.
    frames: Vec<AtomicU64>,
    /// Courier: acks of `join_channel`; NATS: `PONG`s.
    joins: AtomicU64,
    /// The publisher's send acks (Courier, peers).
    send_acks: AtomicU64,
    /// `error` frames, NATS `-ERR`s.
    error_frames: AtomicU64,
    /// Frames that did not decode.
    undecodable: AtomicU64,
    /// Connections that ended before the run did.
    closed: AtomicU64,
    /// Deliveries outside every step's window.
    strays: AtomicU64,
    stopping: AtomicBool,
    /// The first error frame or failure, to print.
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Self {
        let per_step = || (0..stats::MAX_STEPS).map(|_| AtomicU64::new(0)).collect();
        Shared {
            rec: Recorder::new(),
            current: AtomicU32::new(0),
            step_start_ns: AtomicU64::new(u64::MAX),
            wire_bytes: per_step(),
            frames: per_step(),
            joins: AtomicU64::new(0),
            send_acks: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            first_error: Mutex::default(),
        }
    }

    fn note_error(&self, what: String) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            eprintln!("ticks: {what} (the first such; the rest are counted)");
            *first = Some(what);
        }
    }

    /// Error counters added up: error frames, undecodable frames, closes.
    fn errors(&self) -> u64 {
        self.error_frames.load(Ordering::Relaxed)
            + self.undecodable.load(Ordering::Relaxed)
            + self.closed.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Wire formats
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Courier,
    /// The tungstenite and Node peers: `{type, text}`.
    Peer,
    Nats,
}

impl Proto {
    fn of(kind: Kind) -> Proto {
        match kind {
            Kind::Courier => Proto::Courier,
            Kind::Tungstenite | Kind::Node => Proto::Peer,
            Kind::Nats => Proto::Nats,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Subscriber,
    Publisher,
}

#[derive(Serialize)]
struct AuthenticateReq<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    reference: u64,
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<&'static str>,
}

/// `join_channel` and `leave_channel`.
#[derive(Serialize)]
struct ChannelReq<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    reference: u64,
    #[serde(rename = "channelId")]
    channel_id: &'a str,
}

#[derive(Serialize)]
struct SendReq<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    reference: u64,
    #[serde(rename = "channelId")]
    channel_id: &'a str,
    text: &'a str,
}

/// What a subscriber reads of a Courier frame; other fields are ignored.
#[derive(Deserialize)]
struct CourierFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<CourierData>,
    /// The text of a compact `m`.
    #[serde(default)]
    x: Option<String>,
    #[serde(rename = "ref", default)]
    reference: Option<i64>,
    #[serde(default)]
    success: Option<bool>,
}

#[derive(Deserialize)]
struct CourierData {
    #[serde(default)]
    text: Option<String>,
}

fn msgpack<T: Serialize>(value: &T) -> Bytes {
    // Maps of strings and integers always encode.
    Bytes::from(rmp_serde::to_vec_named(value).unwrap_or_default())
}

/// The text of a message: the send instant in ns, a space, padding to `len`.
fn stamp_text(ns: u64, len: usize) -> String {
    let mut text = ns.to_string();
    text.push(' ');
    text.extend(std::iter::repeat_n('x', len.saturating_sub(text.len())));
    text
}

/// The stamp [`stamp_text`] wrote.
fn read_stamp(text: &str) -> Option<u64> {
    text.split(' ').next()?.parse().ok()
}

/// One item of the NATS text protocol.
enum NatsItem {
    Msg(Bytes),
    Pong,
    Err(String),
    Other,
}

/// Takes one complete NATS protocol message off the front of `buf`.
fn nats_next(buf: &mut BytesMut) -> Option<NatsItem> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[..line_end];
    if line.starts_with(b"MSG ") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let size: usize = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let total = line_end + 2 + size + 2;
        if buf.len() < total {
            return None;
        }
        let mut message = buf.split_to(total).freeze();
        let payload = message.split_off(line_end + 2).slice(..size);
        return Some(NatsItem::Msg(payload));
    }
    let item = if line.starts_with(b"PONG") {
        NatsItem::Pong
    } else if line.starts_with(b"-ERR") {
        NatsItem::Err(String::from_utf8_lossy(line).into_owned())
    } else {
        NatsItem::Other // INFO, PING, +OK
    };
    let _ = buf.split_to(line_end + 2);
    Some(item)
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// Opens one connection with the default WebSocketConfig and sets it up:
/// Courier authenticated (not joined yet), a peer joined, NATS connected
/// (not subscribed yet). Returns the sink and the reader's task handle.
async fn connect(
    shared: Arc<Shared>,
    proto: Proto,
    url: String,
    token: Option<String>,
    compact: bool,
    role: Role,
    task: usize,
) -> Result<Sink> {
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connect {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let mut nats_buf = BytesMut::new();
    let timeout = Duration::from_secs(30);
    match proto {
        Proto::Courier => {
            let token = token.context("no token")?;
            let auth = AuthenticateReq {
                kind: "authenticate",
                reference: AUTH_REF,
                token: &token,
                frames: compact.then_some("compact"),
            };
            sink.send(Message::Binary(msgpack(&auth))).await?;
            loop {
                let bytes = next_binary(&mut stream, timeout).await?;
                let Ok(frame) = rmp_serde::from_slice::<CourierFrame>(&bytes) else {
                    continue;
                };
                if frame.kind == "authentication_response" {
                    if frame.success != Some(true) {
                        bail!("authentication refused");
                    }
                    break;
                }
            }
        }
        Proto::Peer => {
            sink.send(Message::Binary(peer_frame("join", None))).await?;
            loop {
                let bytes = next_binary(&mut stream, timeout).await?;
                if rmp_serde::from_slice::<PeerFrame>(&bytes).is_ok_and(|f| f.kind == "ack") {
                    break;
                }
            }
        }
        Proto::Nats => {
            let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1}\r\nPING\r\n";
            sink.send(Message::Binary(Bytes::from_static(hello.as_bytes())))
                .await?;
            'pong: loop {
                let bytes = next_binary(&mut stream, timeout).await?;
                nats_buf.extend_from_slice(&bytes);
                while let Some(item) = nats_next(&mut nats_buf) {
                    match item {
                        NatsItem::Pong => break 'pong,
                        NatsItem::Err(e) => bail!("nats: {e}"),
                        _ => {}
                    }
                }
            }
        }
    }
    tokio::spawn(read_loop(shared, proto, role, task, stream, nats_buf));
    Ok(sink)
}

/// The next binary (or text) frame's bytes, within `timeout`.
async fn next_binary(stream: &mut Stream, timeout: Duration) -> Result<Bytes> {
    loop {
        match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return Ok(b),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(Bytes::copy_from_slice(t.as_bytes())),
            Ok(Some(Ok(Message::Close(c)))) => bail!("closed during set-up: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("read during set-up: {e}"),
            Ok(None) => bail!("closed during set-up"),
            Err(_) => bail!("no answer during set-up within {timeout:?}"),
        }
    }
}

/// Reads one connection until it ends: decodes every frame, records the
/// subscribers' deliveries and bytes, counts acks and errors.
async fn read_loop(
    shared: Arc<Shared>,
    proto: Proto,
    role: Role,
    task: usize,
    mut stream: Stream,
    mut nats_buf: BytesMut,
) {
    loop {
        let message = stream.next().await;
        let now = now_ns();
        let bytes = match message {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
            Some(Ok(Message::Close(frame))) => {
                if !shared.stopping.load(Ordering::Relaxed) {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!(
                        "the server closed a {role:?} connection: {}",
                        frame.map_or("no close frame".to_owned(), |f| format!(
                            "code {} {}",
                            u16::from(f.code),
                            f.reason
                        ))
                    ));
                }
                return;
            }
            Some(Err(e)) => {
                if !shared.stopping.load(Ordering::Relaxed) {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("a {role:?} connection failed: {e}"));
                }
                return;
            }
            None => {
                if !shared.stopping.load(Ordering::Relaxed) {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("a {role:?} connection ended"));
                }
                return;
            }
            Some(Ok(_)) => continue,
        };
        let step = shared.current.load(Ordering::Relaxed);
        if role == Role::Subscriber {
            let i = step as usize % stats::MAX_STEPS;
            shared.wire_bytes[i].fetch_add(frame_wire_bytes(bytes.len()), Ordering::Relaxed);
            shared.frames[i].fetch_add(1, Ordering::Relaxed);
        }
        match proto {
            Proto::Courier => match rmp_serde::from_slice::<CourierFrame>(&bytes) {
                Ok(frame) => match frame.kind.as_str() {
                    "new_message" => {
                        let text = frame.data.and_then(|d| d.text);
                        deliver(&shared, role, task, step, text.as_deref(), now);
                    }
                    "m" => deliver(&shared, role, task, step, frame.x.as_deref(), now),
                    "ack" => match frame.reference {
                        Some(r) if r as u64 & JOIN_REF != 0 => {
                            shared.joins.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) if r as u64 & LEAVE_REF != 0 => {}
                        _ => {
                            if role == Role::Publisher {
                                shared.send_acks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    },
                    "error" => {
                        shared.error_frames.fetch_add(1, Ordering::Relaxed);
                        let m = rmp_serde::from_slice::<serde_json::Value>(&bytes)
                            .map(|v| v.to_string())
                            .unwrap_or_default();
                        shared.note_error(format!("error frame: {m}"));
                    }
                    _ => {}
                },
                Err(e) => {
                    shared.undecodable.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("undecodable Courier frame: {e}"));
                }
            },
            Proto::Peer => match rmp_serde::from_slice::<PeerFrame>(&bytes) {
                Ok(frame) if frame.kind == "new_message" => {
                    deliver(&shared, role, task, step, frame.text.as_deref(), now);
                }
                Ok(frame) if frame.kind == "ack" && role == Role::Publisher => {
                    shared.send_acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    shared.undecodable.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(format!("undecodable peer frame: {e}"));
                }
            },
            Proto::Nats => {
                nats_buf.extend_from_slice(&bytes);
                while let Some(item) = nats_next(&mut nats_buf) {
                    match item {
                        NatsItem::Msg(payload) => {
                            match rmp_serde::from_slice::<PeerFrame>(&payload) {
                                Ok(frame) => {
                                    deliver(&shared, role, task, step, frame.text.as_deref(), now)
                                }
                                Err(e) => {
                                    shared.undecodable.fetch_add(1, Ordering::Relaxed);
                                    shared.note_error(format!("undecodable NATS payload: {e}"));
                                }
                            }
                        }
                        NatsItem::Pong => {
                            shared.joins.fetch_add(1, Ordering::Relaxed);
                        }
                        NatsItem::Err(e) => {
                            shared.error_frames.fetch_add(1, Ordering::Relaxed);
                            shared.note_error(format!("nats: {e}"));
                        }
                        NatsItem::Other => {}
                    }
                }
            }
        }
    }
}

/// A pushed message's text arrived at `now` on a connection.
fn deliver(shared: &Shared, role: Role, task: usize, step: u32, text: Option<&str>, now: u64) {
    if role != Role::Subscriber {
        return;
    }
    let Some(stamp) = text.and_then(read_stamp) else {
        shared.undecodable.fetch_add(1, Ordering::Relaxed);
        shared.note_error("a message without a stamp".to_owned());
        return;
    };
    if step == 0 || stamp < shared.step_start_ns.load(Ordering::Relaxed) {
        shared.strays.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.rec.delivery(task, stamp, step, now);
}

// ---------------------------------------------------------------------------
// The publisher
// ---------------------------------------------------------------------------

/// Where a step's messages go.
#[derive(Clone)]
enum Dest {
    /// A Courier channel id.
    Channel(String),
    /// The peers' broadcast set.
    Broadcast,
    /// A NATS subject.
    Subject(String),
}

/// What a step's publishing did.
struct Published {
    sink: Sink,
    sent: u64,
    next_ref: u64,
    secs: f64,
    error: Option<String>,
}

/// One tokio task, open-loop on 1 ms ticks: at each tick, sends
/// `round(rate * elapsed) - sent` messages, each stamped with its send
/// instant, then flushes.
async fn publish(
    mut sink: Sink,
    dest: Dest,
    rate: f64,
    duration: Duration,
    text_bytes: usize,
    mut next_ref: u64,
) -> Published {
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut error = None;
    'ticks: loop {
        ticks.tick().await;
        let elapsed = started.elapsed().min(duration);
        let due = (rate * elapsed.as_secs_f64()).round() as u64;
        while sent < due {
            let text = stamp_text(now_ns(), text_bytes);
            let frame = match &dest {
                Dest::Channel(channel) => {
                    next_ref += 1;
                    msgpack(&SendReq {
                        kind: "send_message",
                        reference: next_ref,
                        channel_id: channel,
                        text: &text,
                    })
                }
                Dest::Broadcast => peer_frame("send", Some(text)),
                Dest::Subject(subject) => {
                    let payload = peer_frame("new_message", Some(text));
                    let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
                    frame.extend_from_slice(&payload);
                    frame.extend_from_slice(b"\r\n");
                    Bytes::from(frame)
                }
            };
            if let Err(e) = sink.feed(Message::Binary(frame)).await {
                error = Some(format!("publisher send: {e}"));
                break 'ticks;
            }
            sent += 1;
        }
        if let Err(e) = sink.flush().await {
            error = Some(format!("publisher flush: {e}"));
            break;
        }
        if elapsed >= duration {
            break;
        }
    }
    Published {
        sink,
        sent,
        next_ref,
        secs: started.elapsed().as_secs_f64().min(duration.as_secs_f64()),
        error,
    }
}

// ---------------------------------------------------------------------------
// The sweep
// ---------------------------------------------------------------------------

/// One measured step.
struct Step {
    index: u32,
    rate: f64,
    secs: f64,
    /// From the first send to the end of the drain: the CPU window.
    wall: f64,
    sent: u64,
    expected: u64,
    delivered: u64,
    deliver: Percentiles,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    syscalls: Option<u64>,
    wire_bytes: u64,
    frames: u64,
    rss: Option<u64>,
    errors: u64,
    strays: u64,
    setup_secs: f64,
}

impl Step {
    fn delivered_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * self.delivered as f64 / self.expected as f64
        }
    }

    fn deliveries_per_s(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }
}

async fn run(cli: &Cli, shared: Arc<Shared>) -> Result<()> {
    let proto = Proto::of(cli.target);
    let subs = cli.subs.max(1);
    let users = cli.users.unwrap_or(subs).clamp(1, subs);
    // The publisher is its own user, unless every connection shares one.
    let (registered, publisher_user) = if users == 1 {
        (1, 0)
    } else {
        (users + 1, users)
    };
    let default_bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/courier");
    let courier_bin = cli.server.clone().unwrap_or(default_bin);
    let (server, base) = target::launch(&Launch {
        kind: cli.target,
        pin: cli.pin,
        courier_bin: &courier_bin,
        database_url: cli.database_url.as_deref(),
    })
    .await?;
    let pid = server.pid;
    eprintln!(
        "ticks: {} ({base}, pid {pid}), {subs} subscribers{}, rates {:?}, {} s steps",
        cli.target.name(),
        if proto == Proto::Courier {
            format!(
                ", {users} users{}",
                if cli.compact { ", compact frames" } else { "" }
            )
        } else {
            String::new()
        },
        cli.rates,
        cli.duration
    );
    let started = Instant::now();
    let env = Arc::new(
        Env::new(
            cli.target,
            &base,
            if proto == Proto::Courier {
                registered
            } else {
                0
            },
        )
        .await?,
    );
    if proto == Proto::Courier {
        eprintln!(
            "ticks: {} users registered and logged in in {:.1}s",
            env.tokens.len(),
            started.elapsed().as_secs_f64()
        );
    }

    // Connections: 0..subs are the subscribers, subs the publisher.
    let started = Instant::now();
    let token_of = |i: usize| -> Option<String> {
        (proto == Proto::Courier).then(|| {
            let user = if i == subs { publisher_user } else { i % users };
            env.tokens[user % env.tokens.len()].clone()
        })
    };
    let mut attempts = futures_util::stream::iter(0..=subs)
        .map(|i| {
            let role = if i == subs {
                Role::Publisher
            } else {
                Role::Subscriber
            };
            connect(
                shared.clone(),
                proto,
                env.ws_url.clone(),
                token_of(i),
                cli.compact,
                role,
                i,
            )
            .map(move |r| (i, r))
        })
        .buffer_unordered(cli.connect_concurrency.max(1));
    let mut sub_sinks = Vec::with_capacity(subs);
    let mut publisher = None;
    let mut connect_errors = 0usize;
    while let Some((i, result)) = attempts.next().await {
        match result {
            Ok(sink) if i == subs => publisher = Some(sink),
            Ok(sink) => sub_sinks.push(sink),
            Err(e) => {
                connect_errors += 1;
                if i == subs {
                    return Err(e.context("the publisher's connect"));
                }
                shared.note_error(format!("connect failed: {e:#}"));
            }
        }
    }
    drop(attempts);
    let mut publisher = publisher.context("no publisher")?;
    let connected = sub_sinks.len();
    eprintln!(
        "ticks: {connected}/{subs} subscribers and the publisher up in {:.1}s{}",
        started.elapsed().as_secs_f64(),
        if connect_errors > 0 {
            format!(" ({connect_errors} connects failed)")
        } else {
            String::new()
        }
    );
    let rss_connected = rss_kib(pid);

    print_header();
    let mut rows = Vec::new();
    let mut knee: Option<Value> = None;
    let mut previous_failed = false;
    let mut old_channel: Option<String> = None;
    let mut next_ref: u64 = 0;
    let run_id = std::process::id();
    for (k, &rate) in cli.rates.iter().enumerate() {
        let index = k as u32 + 1;
        if index as usize >= stats::MAX_STEPS {
            break;
        }
        // A fresh channel (subject) for the step.
        let setup = Instant::now();
        let dest = match proto {
            Proto::Courier => {
                let channel = env
                    .create_channel(&format!("ticks-{run_id}-{index}"))
                    .await?
                    .to_string();
                let before = shared.joins.load(Ordering::Relaxed);
                let old = old_channel.as_deref();
                let new = channel.as_str();
                switch_channel(&mut publisher, old, new, index)
                    .await
                    .context("the publisher's leave/join (its connection is gone)")?;
                wait_for(&shared.joins, before + 1, Duration::from_secs(60)).await;
                // In batches of --connect-concurrency, each batch's join acks
                // awaited before the next: a join sends presence to every
                // connection already in the channel, and waiting for the
                // acks (queued behind that presence) keeps the server from
                // running further ahead of the readers than a batch.
                for batch in sub_sinks.chunks_mut(cli.connect_concurrency.max(1)) {
                    let before = shared.joins.load(Ordering::Relaxed);
                    let results = futures_util::future::join_all(
                        batch
                            .iter_mut()
                            .map(|sink| switch_channel(sink, old, new, index)),
                    )
                    .await;
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    wait_for(&shared.joins, before + ok, Duration::from_secs(60)).await;
                }
                old_channel = Some(channel.clone());
                Dest::Channel(channel)
            }
            Proto::Nats => {
                let before = shared.joins.load(Ordering::Relaxed);
                let text = if index > 1 {
                    format!(
                        "UNSUB {}\r\nSUB ticks.{index} {index}\r\nPING\r\n",
                        index - 1
                    )
                } else {
                    format!("SUB ticks.{index} {index}\r\nPING\r\n")
                };
                let frame = Bytes::from(text);
                let failed = AtomicU64::new(0);
                futures_util::stream::iter(sub_sinks.iter_mut())
                    .for_each_concurrent(cli.connect_concurrency.max(1), |sink| {
                        let failed = &failed;
                        let frame = frame.clone();
                        async move {
                            if sink.send(Message::Binary(frame)).await.is_err() {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .await;
                let wanted = connected as u64 - failed.load(Ordering::Relaxed);
                wait_for(&shared.joins, before + wanted, Duration::from_secs(60)).await;
                Dest::Subject(format!("ticks.{index}"))
            }
            Proto::Peer => Dest::Broadcast,
        };
        // Until the subscribers have had no frame for 250 ms (the presence
        // of the joins, at most 60 s), then the settle.
        let quiet_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let frames = shared.frames[0].load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(250)).await;
            if shared.frames[0].load(Ordering::Relaxed) == frames || Instant::now() > quiet_deadline
            {
                break;
            }
        }
        let setup_secs = setup.elapsed().as_secs_f64();
        // Settle; perf is attached during its last 200 ms, so that it counts
        // from the first send.
        let settle = cli.settle.max(0.2);
        tokio::time::sleep(Duration::from_secs_f64(settle - 0.2)).await;
        let syscalls = perf::SyscallCount::start(Some(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;

        let errors_before = shared.errors();
        let strays_before = shared.strays.load(Ordering::Relaxed);
        let server_before = cpu_secs(&pid.to_string());
        let client_before = cpu_secs("self");
        shared.step_start_ns.store(now_ns(), Ordering::SeqCst);
        shared.current.store(index, Ordering::SeqCst);
        let step_started = Instant::now();
        let published = tokio::spawn(publish(
            publisher,
            dest,
            rate,
            Duration::from_secs_f64(cli.duration),
            cli.text_bytes,
            next_ref,
        ))
        .await
        .context("the publisher task")?;
        publisher = published.sink;
        next_ref = published.next_ref;
        if let Some(e) = &published.error {
            shared.note_error(e.clone());
        }
        let sent = published.sent;
        let expected = sent * connected as u64;
        // Drain.
        let i = index as usize;
        let deadline = Instant::now() + Duration::from_secs_f64(cli.drain);
        while Instant::now() < deadline
            && shared.rec.delivered[i].load(Ordering::Relaxed) < expected
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared.current.store(0, Ordering::SeqCst);
        let syscalls = syscalls.stop();
        let wall = step_started.elapsed().as_secs_f64();
        let server_cpu = cpu_secs(&pid.to_string())
            .zip(server_before)
            .map(|(a, b)| a - b);
        let client_cpu = cpu_secs("self").zip(client_before).map(|(a, b)| a - b);
        let (deliver, _) = shared.rec.take(index);
        let step = Step {
            index,
            rate,
            secs: published.secs,
            wall,
            sent,
            expected,
            delivered: shared.rec.delivered[i].load(Ordering::Relaxed),
            deliver,
            server_cpu,
            client_cpu,
            syscalls,
            wire_bytes: shared.wire_bytes[i].load(Ordering::Relaxed),
            frames: shared.frames[i].load(Ordering::Relaxed),
            rss: rss_kib(pid),
            errors: shared.errors() - errors_before,
            strays: shared.strays.load(Ordering::Relaxed) - strays_before,
            setup_secs,
        };
        let passed = step.sent > 0
            && step.delivered_pct() >= cli.min_delivered_pct
            && step.deliver.p99 as f64 <= cli.p99_limit_ms * 1000.0;
        print_row(cli.target, &step, passed);
        let row = step_row(cli, users, connected, &step, passed);
        println!("{row}");
        append(cli, &row)?;
        if passed {
            knee = Some(row.clone());
        }
        rows.push(row);
        if !passed && previous_failed {
            break;
        }
        previous_failed = !passed;
    }

    let summary = json!({
        "tester": "ticks",
        "target": cli.target.name(),
        "summary": "sweep",
        "params": params(cli, users, connected),
        "server_rss_kib_connected": rss_connected,
        "knee_rate": knee.as_ref().map(|k| k["rate"].clone()),
        "knee_deliveries_per_s": knee.as_ref().map(|k| k["deliveries_per_s"].clone()),
        "knee_publish_to_deliver": knee.as_ref().map(|k| k["publish_to_deliver"].clone()),
        "steps": rows.len(),
        "connect_errors": connect_errors,
        "send_acks": shared.send_acks.load(Ordering::Relaxed),
        "first_error": shared.first_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    });
    eprintln!(
        "\nknee: {}",
        match &knee {
            Some(k) => format!(
                "{} msgs/s, {} deliveries/s, p99 {} ms ({} subscribers)",
                k["rate"], k["deliveries_per_s"], k["publish_to_deliver"]["p99_ms"], connected
            ),
            None => "none: no step passed".to_owned(),
        }
    );
    println!("{summary}");
    append(cli, &summary)?;
    shared.stopping.store(true, Ordering::SeqCst);
    drop(server);
    Ok(())
}

/// Courier: `leave_channel` for the previous step's channel, if any, then
/// `join_channel` for this step's, in one flush.
async fn switch_channel(
    sink: &mut Sink,
    old: Option<&str>,
    new: &str,
    index: u32,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let frame = |kind: &'static str, channel_id: &str, reference: u64| {
        Message::Binary(msgpack(&ChannelReq {
            kind,
            reference,
            channel_id,
        }))
    };
    if let Some(old) = old {
        sink.feed(frame("leave_channel", old, LEAVE_REF | u64::from(index)))
            .await?;
    }
    sink.feed(frame("join_channel", new, JOIN_REF | u64::from(index)))
        .await?;
    sink.flush().await
}

/// Waits until `counter` reaches `target`, at most `timeout`.
async fn wait_for(counter: &AtomicU64, target: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            eprintln!(
                "ticks: only {} of {target} join acks (PONGs) after {timeout:?}; measuring anyway",
                counter.load(Ordering::Relaxed)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn append(cli: &Cli, row: &Value) -> Result<()> {
    if let Some(path) = &cli.json_out {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(file, "{row}")?;
    }
    Ok(())
}

fn params(cli: &Cli, users: usize, connected: usize) -> Value {
    json!({
        "subs": cli.subs,
        "subs_connected": connected,
        "users": (cli.target == Kind::Courier).then_some(users),
        "compact": cli.compact,
        "pinned": cli.pin,
        "threads": cli.threads,
        "duration_s": cli.duration,
        "drain_s": cli.drain,
        "settle_s": cli.settle,
        "text_bytes": cli.text_bytes,
        "min_delivered_pct": cli.min_delivered_pct,
        "p99_limit_ms": cli.p99_limit_ms,
        "tick_ms": 1,
    })
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn step_row(cli: &Cli, users: usize, connected: usize, s: &Step, passed: bool) -> Value {
    json!({
        "tester": "ticks",
        "target": cli.target.name(),
        "params": params(cli, users, connected),
        "step": s.index,
        "rate": s.rate,
        "secs": round(s.secs, 3),
        "sent": s.sent,
        "expected_deliveries": s.expected,
        "delivered": s.delivered,
        "delivered_pct": round(s.delivered_pct(), 3),
        "deliveries_per_s": round(s.deliveries_per_s(), 1),
        "publish_to_deliver": s.deliver.value(),
        "ok": passed,
        "server_cpu_s": s.server_cpu.map(|c| round(c, 3)),
        "server_cpu_s_per_million_deliveries": s
            .server_cpu
            .filter(|_| s.delivered > 0)
            .map(|c| round(c / s.delivered as f64 * 1e6, 3)),
        "server_cpu_pct": s.server_cpu.map(|c| round(100.0 * c / s.wall, 1)),
        "client_cpu_pct": s.client_cpu.map(|c| round(100.0 * c / s.wall, 1)),
        "cpu_window_s": round(s.wall, 3),
        "server_syscalls": s.syscalls,
        "server_syscalls_per_delivery": perf::per_delivery(s.syscalls, s.delivered),
        "wire_bytes": s.wire_bytes,
        "wire_frames": s.frames,
        "wire_bytes_per_delivery": perf::per_delivery(Some(s.wire_bytes), s.delivered),
        "server_rss_kib": s.rss,
        "errors": s.errors,
        "strays": s.strays,
        "channel_setup_s": round(s.setup_secs, 3),
    })
}

fn print_header() {
    eprintln!();
    eprintln!(
        "{:<11} {:>6} {:>7} {:>8} {:>11} {:>28} {:>7} {:>8} {:>7} {:>9} {:>7} {:>7} {:>4} {:>3}",
        "target",
        "rate",
        "sent",
        "deliv %",
        "deliv/s",
        "p50 / p99 / p99.9 / max ms",
        "srv CPU",
        "CPU-s/M",
        "cli CPU",
        "sys/deliv",
        "B/deliv",
        "RSS MiB",
        "err",
        "ok"
    );
}

fn print_row(target: Kind, s: &Step, passed: bool) {
    let latency = if s.deliver.count == 0 {
        "-".to_owned()
    } else {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            stats::ms(s.deliver.p50),
            stats::ms(s.deliver.p99),
            stats::ms(s.deliver.p999),
            stats::ms(s.deliver.max)
        )
    };
    let pct = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{:.0}%", 100.0 * c / s.wall));
    eprintln!(
        "{:<11} {:>6} {:>7} {:>8.3} {:>11.0} {:>28} {:>7} {:>8} {:>7} {:>9} {:>7} {:>7} {:>4} {:>3}",
        target.name(),
        s.rate,
        s.sent,
        s.delivered_pct(),
        s.deliveries_per_s(),
        latency,
        pct(s.server_cpu),
        s.server_cpu
            .filter(|_| s.delivered > 0)
            .map_or("-".to_owned(), |c| format!("{:.2}", c / s.delivered as f64 * 1e6)),
        pct(s.client_cpu),
        perf::per_delivery(s.syscalls, s.delivered).map_or("n/a".to_owned(), |v| format!("{v:.3}")),
        perf::per_delivery(Some(s.wire_bytes), s.delivered)
            .map_or("-".to_owned(), |v| format!("{v:.1}")),
        s.rss
            .map_or("-".to_owned(), |r| format!("{:.1}", r as f64 / 1024.0)),
        s.errors,
        if passed { "yes" } else { "no" }
    );
}
