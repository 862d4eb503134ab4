//! Courier's load tester: `cargo bench --bench load -- <scenario> [options]`
//! (benches/README.md has every scenario, command and result).
//!
//! A multi-threaded tokio program that starts the server under test as a
//! separate process (so its memory and CPU come honestly from
//! `/proc/<pid>/status` and `/proc/<pid>/stat`), or targets `--url`, opens
//! loopback WebSocket connections through the typed client
//! (`courier_protocol::client`) or a tiny peer adapter, publishes 100-byte
//! messages open-loop and measures:
//!
//! - publish-to-deliver latency (every message's text starts with its
//!   intended send time) and publish-to-ack latency, in HDR histograms;
//! - deliveries per second, and whether every message was delivered;
//! - server RSS per connection, server CPU-seconds per million deliveries;
//! - errors (error answers, closed connections, slow consumers, failed
//!   connects).
//!
//! Output: a table on stderr and one JSON line per measured step on stdout.
//!
//! # Layout
//! - `load/stats.rs`: histograms and counters per step, `/proc` readings.
//! - `load/target.rs`: starting the servers, provisioning Courier over REST,
//!   one adapter per kind of server.
//! - `load/perf.rs`: the server's system calls over a step (`perf stat`).
//! - `load/cluster.rs`: the `cluster` scenario (nodes over NATS beside one
//!   node, each configuration with its own PostgreSQL database).
//! - `peers/tungstenite.rs`: the bare tokio-tungstenite broadcast server,
//!   run by this same binary as `peer-tungstenite --port N`.
//! - This file: the command line, the scenarios and the step controller.

#[path = "load/cluster.rs"]
mod cluster;
#[path = "load/light.rs"]
mod light;
#[path = "load/perf.rs"]
mod perf;
#[path = "load/stats.rs"]
mod stats;
#[path = "load/target.rs"]
mod target;
#[path = "peers/tungstenite.rs"]
mod tungstenite_peer;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use stats::{
    cpu_secs, kernel_kib, message_text, now_ns, rss_kib, ErrorCounts, Percentiles, Recorder,
};
use target::{Env, Event, Kind, Launch, Room, Rx, Server, Tx};

/// Set when the run is over: connections closing then are not errors.
static STOPPING: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N authenticated, joined, idle connections: server RSS per connection.
    Idle,
    /// One channel, S subscribers, one publisher at R msgs/s (`--sweep`:
    /// raise R until p99 passes the limit; report the knee).
    Fanout,
    /// C connections in rooms of 10, each sending `--rate` msgs/s (default 1).
    Rooms,
    /// Publishers each in their own channel: the acked send rate and p99
    /// ack latency (`--sweep` to find the highest with p99 ack ≤ 20 ms).
    Persist,
    /// The rooms load plus `--churn-rate` connects (with authentication and
    /// join) and disconnects per second.
    Churn,
    /// The fanout load over `--nodes` Courier nodes joined over NATS
    /// (subscribers round robin over the nodes, one channel), beside the
    /// same load on one node (`--baseline`), on PostgreSQL
    /// (benches/load/cluster.rs).
    Cluster,
    /// Run the bare tokio-tungstenite peer on `--port` (what
    /// `--target tungstenite` starts).
    PeerTungstenite,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Persist => "persist",
            Scenario::Churn => "churn",
            Scenario::Cluster => "cluster",
            Scenario::PeerTungstenite => "peer-tungstenite",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "Courier's load tester (benches/README.md)",
    after_help = "Example: cargo bench --bench load -- fanout --subs 1000 --sweep --pin"
)]
struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Which server.
    #[arg(long, value_enum, default_value_t = Kind::Courier)]
    target: Kind,
    /// A running server instead of starting one: Courier's HTTP base
    /// (`http://127.0.0.1:8080`) or a peer's WebSocket URL. Loopback only.
    #[arg(long)]
    url: Option<String>,
    /// The Courier binary [default: target/release/courier].
    #[arg(long)]
    server: Option<PathBuf>,
    /// `COURIER_DATABASE_URL` for the started Courier (default: SQLite in
    /// the temporary data dir).
    #[arg(long)]
    database_url: Option<String>,
    /// Pin the server to core 0 (`taskset -c 0`) and this tester to core 1.
    #[arg(long)]
    pin: bool,
    /// Tokio worker threads of the tester.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// peer-tungstenite: the port to listen on.
    #[arg(long, default_value_t = 9001)]
    port: u16,
    /// Connections (idle, rooms, churn; publishers for persist)
    /// [defaults: idle 2000, rooms 1000, churn 1000, persist 20].
    #[arg(long)]
    conns: Option<usize>,
    /// fanout, cluster: subscribers [default: 1000].
    #[arg(long)]
    subs: Option<usize>,
    /// Distinct users the connections authenticate as, round robin
    /// [default: fanout and cluster 100, others one per connection up to 1000].
    #[arg(long)]
    users: Option<usize>,
    /// Connections per room (idle, rooms, churn).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Publish rate, open-loop: msgs/s in total (fanout, persist) or per
    /// connection (rooms, churn) [defaults: fanout 100, cluster 200, persist 1000,
    /// rooms 1].
    #[arg(long)]
    rate: Option<f64>,
    /// Raise the rate step by step until a step fails; report the knee.
    #[arg(long)]
    sweep: bool,
    /// A failed sweep step is measured again this many times at the same
    /// rate before the sweep stops (one stall of the shared 2-core machine
    /// should not decide the knee); every try is printed.
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Each sweep step multiplies the rate by this.
    #[arg(long, default_value_t = 1.25)]
    step_factor: f64,
    /// Stop a sweep above this rate.
    #[arg(long, default_value_t = 1e9)]
    max_rate: f64,
    /// A step fails when p99 (publish-to-deliver; publish-to-ack for
    /// persist) is above this [default: 100, persist 20; rooms 25].
    #[arg(long)]
    p99_limit_ms: Option<f64>,
    /// Length of each message's text, in bytes (the issue's "100-byte
    /// payloads"). Raising it for a peer alone gives it Courier's frame
    /// size on the wire (see benches/README.md, fanout 5,000).
    #[arg(long, default_value_t = stats::TEXT_BYTES)]
    text_bytes: usize,
    /// Courier: ask for compact `new_message` frames at `authenticate`
    /// (docs/protocol.md, "Compact frames").
    #[arg(long)]
    compact: bool,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up before each step (not recorded; at least 3 s
    /// before the first).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// churn: connects and disconnects per second.
    #[arg(long, default_value_t = 200.0)]
    churn_rate: f64,
    /// churn: how long each churning connection stays, in ms.
    #[arg(long, default_value_t = 1000)]
    churn_hold_ms: u64,
    /// Seconds to wait after a step for its last deliveries and acks.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// idle: seconds to wait after the last connect before measuring.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Connects in flight at once during set-up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// cluster: Courier nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// cluster: what runs beside the cluster, with the same load.
    #[arg(long, value_enum, default_value_t = cluster::Baseline::Both)]
    baseline: cluster::Baseline,
    /// cluster: the node (0-based) the publisher connects to.
    #[arg(long, default_value_t = 0)]
    publisher_node: usize,
    /// cluster: the node (0-based) that claims the channel with one send
    /// before the steps [default: the publisher's, whose first send claims
    /// it]; another node makes every publish a forwarded send.
    #[arg(long)]
    owner_node: Option<usize>,
    /// cluster: the nats-server binary (started with JetStream on a free
    /// port).
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 900.0)]
    max_secs: f64,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; plain `cargo bench` passes nothing
    // else: print the usage and succeed rather than fail the bench run.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        eprintln!(
            "load: no scenario given; try `cargo bench --bench load -- --help` (benches/README.md)"
        );
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    stats::start_clock();
    if cli.scenario == Scenario::PeerTungstenite {
        return tungstenite_peer::run(cli.port);
    }
    let Some(runtime) = stats::tester_runtime("load", cli.pin, cli.threads) else {
        return ExitCode::FAILURE;
    };
    let bound = Duration::from_secs_f64(cli.max_secs);
    let result = runtime.block_on(async {
        match tokio::time::timeout(bound, run(&cli)).await {
            Ok(r) => r,
            Err(_) => bail!("the run passed --max-secs {}", cli.max_secs),
        }
    });
    STOPPING.store(true, Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a scenario needs.
struct Ctx<'a> {
    cli: &'a Cli,
    env: Arc<Env>,
    rec: Arc<Recorder>,
    /// The server's pid when this run started it.
    pid: Option<u32>,
    /// RSS before any connection, KiB.
    rss_before: Option<u64>,
}

async fn run(cli: &Cli) -> Result<()> {
    if let Some(url) = &cli.url {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .unwrap_or("");
        if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
            bail!("--url must be a loopback address (127.0.0.0/8, localhost, [::1])");
        }
    }
    if cli.scenario == Scenario::Cluster {
        let rows = cluster::run(cli).await?;
        STOPPING.store(true, Ordering::SeqCst);
        return write_json(cli, &rows);
    }
    let default_bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/courier");
    let courier_bin = cli.server.clone().unwrap_or(default_bin);
    let (server, base): (Option<Server>, String) = match &cli.url {
        Some(url) => (None, url.clone()),
        None => {
            let (server, base) = target::launch(&Launch {
                kind: cli.target,
                pin: cli.pin,
                courier_bin: &courier_bin,
                database_url: cli.database_url.as_deref(),
            })
            .await?;
            (Some(server), base)
        }
    };
    let conns = connections(cli);
    let users = cli.users.unwrap_or(match cli.scenario {
        Scenario::Fanout => 100,
        _ => conns.min(1000),
    });
    eprintln!(
        "load: {} against {} ({}), {} connections, {} users",
        cli.scenario.name(),
        cli.target.name(),
        base,
        conns,
        users
    );
    let mut env = Env::new(cli.target, &base, users).await?;
    env.compact = cli.compact;
    let env = Arc::new(env);
    let pid = server.as_ref().map(|s| s.pid);
    let ctx = Ctx {
        cli,
        env,
        rec: Arc::new(Recorder::new()),
        pid,
        rss_before: pid.and_then(rss_kib),
    };
    let rows = match cli.scenario {
        Scenario::Idle => idle(&ctx, conns).await?,
        Scenario::Fanout | Scenario::Rooms | Scenario::Persist | Scenario::Churn => {
            traffic(&ctx, conns).await?
        }
        Scenario::PeerTungstenite | Scenario::Cluster => Vec::new(),
    };
    STOPPING.store(true, Ordering::SeqCst);
    write_json(cli, &rows)?;
    drop(server);
    Ok(())
}

/// Appends the rows to `--json-out`, when given.
fn write_json(cli: &Cli, rows: &[Value]) -> Result<()> {
    if let Some(path) = &cli.json_out {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for row in rows {
            writeln!(file, "{row}")?;
        }
    }
    Ok(())
}

fn connections(cli: &Cli) -> usize {
    match cli.scenario {
        Scenario::Idle => cli.conns.unwrap_or(2000),
        Scenario::Fanout | Scenario::Cluster => cli.subs.or(cli.conns).unwrap_or(1000),
        Scenario::Rooms | Scenario::Churn => cli.conns.unwrap_or(1000),
        Scenario::Persist => cli.conns.unwrap_or(20),
        Scenario::PeerTungstenite => 0,
    }
}

/// Ack keys waiting for their ack: (key, intended send ns, step).
type Pending = Arc<Mutex<VecDeque<(u64, u64, u32)>>>;

/// Opens `n` connections (connection `i` as user `i`, in `room_of(i)`),
/// `concurrency` at a time. Failures are counted and skipped.
async fn connect_all(
    ctx: &Ctx<'_>,
    n: usize,
    room_of: impl Fn(usize) -> Room,
) -> Vec<(usize, Tx, Rx)> {
    let started = Instant::now();
    let mut first_error = None;
    let mut done = Vec::with_capacity(n);
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let env = ctx.env.clone();
            let room = room_of(i);
            async move { (i, env.connect(i, room).await) }
        })
        .buffer_unordered(ctx.cli.connect_concurrency.max(1));
    while let Some((i, result)) = attempts.next().await {
        match result {
            Ok((tx, rx)) => done.push((i, tx, rx)),
            Err(e) => {
                ctx.rec.connect_errors.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
        let count = done.len() + ctx.rec.connect_errors.load(Ordering::Relaxed) as usize;
        if count % 2000 == 0 {
            eprintln!(
                "load: {count}/{n} connects in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "load: {} connects failed; the first: {e:#}",
            ctx.rec.connect_errors.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "load: {} connections up in {:.1}s",
        done.len(),
        started.elapsed().as_secs_f64()
    );
    done.sort_by_key(|(i, _, _)| *i);
    done
}

/// Reads a connection until it ends: records deliveries and acks.
fn spawn_reader(rec: Arc<Recorder>, task: usize, mut rx: Rx, pending: Option<Pending>) {
    tokio::spawn(async move {
        loop {
            match rx.next_event().await {
                Event::Message { sent_ns, step } => rec.delivery(task, sent_ns, step, now_ns()),
                Event::Ack(_) if pending.is_none() => {}
                Event::Ack(key) => {
                    let now = now_ns();
                    if let Some((sent, step)) = take_pending(pending.as_ref(), key) {
                        rec.ack(task, step, sent, now);
                    }
                }
                Event::Nack(key, code) => {
                    rec.send_error(code);
                    let _ = take_pending(pending.as_ref(), key);
                }
                Event::Undecodable => {
                    rec.decode_errors.fetch_add(1, Ordering::Relaxed);
                }
                Event::Pong | Event::Other => {}
                Event::Closed(code) => {
                    if !STOPPING.load(Ordering::Relaxed) {
                        rec.closed.fetch_add(1, Ordering::Relaxed);
                        if code == Some(courier_protocol::error::close::SLOW_CONSUMER) {
                            rec.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return;
                }
            }
        }
    });
}

fn take_pending(pending: Option<&Pending>, key: u64) -> Option<(u64, u32)> {
    let mut queue = pending?.lock().unwrap_or_else(PoisonError::into_inner);
    while let Some(&(k, sent, step)) = queue.front() {
        if k > key {
            return None;
        }
        queue.pop_front();
        if k == key {
            return Some((sent, step));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

async fn idle(ctx: &Ctx<'_>, n: usize) -> Result<Vec<Value>> {
    let cli = ctx.cli;
    let room_size = cli.room_size.max(1);
    let rooms = ctx
        .env
        .rooms(if cli.target == Kind::Courier {
            n.div_ceil(room_size)
        } else {
            1
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = ctx.pid.and_then(rss_kib);
    let kernel_before = kernel_kib();
    let started = Instant::now();
    let conns = connect_all(ctx, n, |i| rooms[(i / room_size) % rooms.len()]).await;
    let setup_secs = started.elapsed().as_secs_f64();
    let up = conns.len();
    let mut keep = Vec::with_capacity(up);
    for (i, tx, rx) in conns {
        spawn_reader(ctx.rec.clone(), i, rx, None);
        keep.push(tx);
    }
    tokio::time::sleep(Duration::from_secs_f64(cli.settle)).await;
    let rss_after = ctx.pid.and_then(rss_kib);
    let kernel_after = kernel_kib();
    let errors = ctx.rec.errors();
    let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if up > 0 => Some(round2(a.saturating_sub(b) as f64 / up as f64)),
        _ => None,
    };
    let row = json!({
        "scenario": "idle",
        "target": cli.target.name(),
        "params": {"conns": n, "users": ctx.env.tokens.len(), "room_size": room_size, "pinned": cli.pin,
                   "database": database(cli)},
        "connected": up,
        "setup_secs": round2(setup_secs),
        "connects_per_s": round2(up as f64 / setup_secs.max(1e-9)),
        "server_rss_kib_before": rss_before,
        "server_rss_kib": rss_after,
        "rss_per_conn_kib": per_conn(rss_after, rss_before),
        "kernel_kib_per_conn_both_ends": per_conn(kernel_after, kernel_before),
        "errors": errors.value(),
        "error_codes": ctx.rec.error_codes(),
        "ok": up == n && errors.total() == 0,
    });
    eprintln!();
    eprintln!(
        "{:<12} {:>10} {:>10} {:>14} {:>16} {:>22} {:>8}",
        "target",
        "conns",
        "connected",
        "RSS MiB",
        "RSS/conn KiB",
        "kernel/conn KiB (2 ends)",
        "errors"
    );
    eprintln!(
        "{:<12} {:>10} {:>10} {:>14} {:>16} {:>22} {:>8}",
        cli.target.name(),
        n,
        up,
        rss_after.map_or("-".into(), |r| format!("{:.1}", r as f64 / 1024.0)),
        row["rss_per_conn_kib"].to_string(),
        row["kernel_kib_per_conn_both_ends"].to_string(),
        errors.total()
    );
    println!("{row}");
    STOPPING.store(true, Ordering::SeqCst);
    drop(keep);
    Ok(vec![row])
}

// ---------------------------------------------------------------------------
// fanout, rooms, persist, churn: publishers and the step controller
// ---------------------------------------------------------------------------

/// What publishers do now: the step their messages belong to and the
/// total rate, which each publisher takes its share of.
#[derive(Clone, Copy, Debug)]
struct Plan {
    step: u32,
    /// msgs/s over all publishers; 0 pauses.
    total_rate: f64,
}

/// One publisher's part of the traffic.
#[derive(Clone, Copy, Debug)]
struct Part {
    /// Its fraction of the total rate.
    share: f64,
    /// Where in one interval its messages fall (0 to 1).
    phase: f64,
    /// The length of its messages' texts.
    text_bytes: usize,
}

/// Sends open-loop: message k of a step is due at the step's start plus
/// (phase + k) / rate, and carries that due time, so a publisher that falls
/// behind shows up as latency.
async fn publish(
    rec: Arc<Recorder>,
    mut tx: Tx,
    room: Room,
    Part {
        share,
        phase,
        text_bytes,
    }: Part,
    pending: Option<Pending>,
    mut plan: watch::Receiver<Plan>,
) {
    let origin = tokio::time::Instant::now() - Duration::from_nanos(now_ns());
    loop {
        let current = *plan.borrow_and_update();
        let rate = current.total_rate * share;
        if rate <= 0.0 {
            if plan.changed().await.is_err() {
                return;
            }
            continue;
        }
        let interval = 1e9 / rate;
        let start = now_ns() as f64 + phase * interval;
        let mut k: u64 = 0;
        loop {
            let due = start + k as f64 * interval;
            tokio::select! {
                _ = tokio::time::sleep_until(origin + Duration::from_nanos(due as u64)) => {}
                changed = plan.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
            let now = now_ns() as f64;
            let mut stamps = Vec::new();
            while start + k as f64 * interval <= now && stamps.len() < 1024 {
                stamps.push((start + k as f64 * interval) as u64);
                k += 1;
            }
            if stamps.is_empty() {
                continue;
            }
            let keys = tx.next_keys(stamps.len());
            if let Some(pending) = &pending {
                let mut queue = pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, sent) in keys.iter().zip(&stamps) {
                    if let Some(key) = key {
                        queue.push_back((*key, *sent, current.step));
                    }
                }
            }
            let texts = stamps
                .iter()
                .map(|s| message_text(*s, current.step, text_bytes))
                .collect();
            let n = stamps.len() as u64;
            match tx.send_batch(room, texts).await {
                Ok(_) => {
                    rec.sent[current.step as usize % stats::MAX_STEPS]
                        .fetch_add(n, Ordering::Relaxed);
                }
                Err(_) => {
                    if !STOPPING.load(Ordering::Relaxed) {
                        rec.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

/// One measured step.
struct Step {
    step: u32,
    rate: f64,
    secs: f64,
    /// From the step's start to the end of its drain: the CPU window.
    wall: f64,
    sent: u64,
    delivered: u64,
    expected: u64,
    acked: u64,
    deliver: Percentiles,
    ack: Percentiles,
    errors: ErrorCounts,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
    rss: Option<u64>,
    churn: Option<ChurnFigures>,
    /// The server's system calls from the step's start to the end of its
    /// drain (`perf stat`; `None` without perf).
    syscalls: Option<u64>,
    /// Bytes of WebSocket frames (headers included) every connection of the
    /// tester received over the same window: pushes, acks, presence.
    wire_bytes: u64,
    /// Courier only: its persistence batches during the step (from `/metrics`).
    batches: Option<target::PersistBatches>,
}

#[derive(Clone, Copy)]
struct ChurnFigures {
    offered_per_s: f64,
    connects: u64,
    failures: u64,
    skipped: u64,
    connect: Percentiles,
}

/// The churn load: connects, authenticates, joins, holds, closes.
struct Churn {
    done: AtomicU64,
    failed: AtomicU64,
    /// Connects not attempted: the cap of sockets in flight was reached.
    skipped: AtomicU64,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

async fn traffic(ctx: &Ctx<'_>, n: usize) -> Result<Vec<Value>> {
    let cli = ctx.cli;
    let scenario = cli.scenario;
    let room_size = cli.room_size.max(1);
    // Rooms and who publishes.
    let (room_count, recipients, publishers): (usize, u64, Vec<usize>) = match scenario {
        // Subscribers 0..n, the publisher is connection n (joined too).
        Scenario::Fanout => (1, n as u64 + 1, vec![n]),
        Scenario::Rooms | Scenario::Churn => {
            (n.div_ceil(room_size), room_size as u64, (0..n).collect())
        }
        Scenario::Persist => (n, 1, (0..n).collect()),
        _ => unreachable!("traffic scenarios only"),
    };
    let total_conns = if scenario == Scenario::Fanout {
        n + 1
    } else {
        n
    };
    let rooms = ctx.env.rooms(room_count).await?;
    let room_of = |i: usize| match scenario {
        Scenario::Fanout => rooms[0],
        Scenario::Persist => rooms[i % rooms.len()],
        _ => rooms[(i / room_size) % rooms.len()],
    };
    let conns = connect_all(ctx, total_conns, room_of).await;
    if conns.len() < total_conns {
        eprintln!(
            "load: only {}/{} connections; figures cover those",
            conns.len(),
            total_conns
        );
    }
    let (plan_tx, plan_rx) = watch::channel(Plan {
        step: 0,
        total_rate: 0.0,
    });
    let publishing: Vec<bool> = {
        let mut v = vec![false; total_conns];
        for &p in &publishers {
            v[p] = true;
        }
        v
    };
    let publisher_count = conns
        .iter()
        .filter(|(i, _, _)| publishing[*i])
        .count()
        .max(1);
    let mut idle_tx = Vec::new();
    for (i, tx, rx) in conns {
        if publishing[i] {
            let pending: Pending = Arc::default();
            spawn_reader(ctx.rec.clone(), i, rx, Some(pending.clone()));
            // Spread publishers' phases evenly over one interval.
            let phase = (i as f64 * 0.618_033_988_75).fract();
            tokio::spawn(publish(
                ctx.rec.clone(),
                tx,
                room_of(i),
                Part {
                    share: 1.0 / publisher_count as f64,
                    phase,
                    text_bytes: ctx.cli.text_bytes,
                },
                Some(pending),
                plan_rx.clone(),
            ));
        } else {
            spawn_reader(ctx.rec.clone(), i, rx, None);
            idle_tx.push(tx);
        }
    }
    drop(plan_rx);
    // Per-connection rates are given per connection; the plan is a total.
    let per_conn_rate = matches!(scenario, Scenario::Rooms | Scenario::Churn);
    let first_rate = cli.rate.unwrap_or(match scenario {
        Scenario::Fanout => 100.0,
        Scenario::Persist => 1000.0,
        _ => 1.0,
    });
    let limit_ms = cli.p99_limit_ms.unwrap_or(match scenario {
        Scenario::Persist => 20.0,
        Scenario::Rooms | Scenario::Churn => 25.0,
        _ => 100.0,
    });
    let churn = Arc::new(Churn {
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        latency: Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .context("connect histogram")?,
        ),
    });
    let churn_stop = Arc::new(AtomicBool::new(false));
    if scenario == Scenario::Churn {
        tokio::spawn(run_churn(
            ctx.env.clone(),
            rooms.clone(),
            cli.churn_rate,
            Duration::from_millis(cli.churn_hold_ms),
            churn.clone(),
            churn_stop.clone(),
        ));
    }

    print_header(scenario);
    let mut rows = Vec::new();
    let mut rate = first_rate;
    let mut step_id: u32 = 1;
    let mut knee: Option<Value> = None;
    let mut retries_left = cli.retries;
    loop {
        let total = if per_conn_rate {
            rate * publisher_count as f64
        } else {
            rate
        };
        // Warm-up.
        plan_tx.send_replace(Plan {
            step: step_id,
            total_rate: total,
        });
        // The first step warms up longer: right after set-up, buffers and
        // queues are still growing to their working size.
        let warmup = if step_id == 1 {
            cli.warmup.max(3.0)
        } else {
            cli.warmup
        };
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let measured = step_id + 1;
        let errors_before = ctx.rec.errors();
        let cpu_before = ctx.pid.and_then(|p| cpu_secs(&p.to_string()));
        let batches_before = ctx.env.persist_batches().await;
        let client_before = cpu_secs("self");
        let wire_before = target::RX_BYTES.load(Ordering::Relaxed);
        let syscalls = perf::SyscallCount::start(ctx.pid);
        let churn_before = (
            churn.done.load(Ordering::Relaxed),
            churn.failed.load(Ordering::Relaxed),
            churn.skipped.load(Ordering::Relaxed),
        );
        if let Ok(mut h) = churn.latency.lock() {
            h.reset();
        }
        let started = Instant::now();
        plan_tx.send_replace(Plan {
            step: measured,
            total_rate: total,
        });
        tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
        plan_tx.send_replace(Plan {
            step: measured,
            total_rate: 0.0,
        });
        let secs = started.elapsed().as_secs_f64();
        let churn_figures = (scenario == Scenario::Churn).then(|| {
            let connect = churn
                .latency
                .lock()
                .map(|h| percentiles_of(&h))
                .unwrap_or_default();
            ChurnFigures {
                offered_per_s: cli.churn_rate,
                connects: churn.done.load(Ordering::Relaxed) - churn_before.0,
                failures: churn.failed.load(Ordering::Relaxed) - churn_before.1,
                skipped: churn.skipped.load(Ordering::Relaxed) - churn_before.2,
                connect,
            }
        });
        // Drain: wait for every delivery and ack of the step, up to --drain
        // seconds.
        // (`sent` is read again each time: a batch in flight when the step
        // ended is counted when its write completes.)
        let idx = measured as usize % stats::MAX_STEPS;
        let wants_acks = cli.target != Kind::Nats;
        let drain_deadline = Instant::now() + Duration::from_secs_f64(cli.drain);
        while Instant::now() < drain_deadline {
            let sent = ctx.rec.sent[idx].load(Ordering::Relaxed);
            let delivered = ctx.rec.delivered[idx].load(Ordering::Relaxed);
            let acked = ctx.rec.acked[idx].load(Ordering::Relaxed);
            if delivered >= sent * recipients && (!wants_acks || acked >= sent) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let syscalls = syscalls.stop();
        let wire_bytes = target::RX_BYTES.load(Ordering::Relaxed) - wire_before;
        let sent = ctx.rec.sent[idx].load(Ordering::Relaxed);
        let expected = sent * recipients;
        let (deliver, ack) = ctx.rec.take(measured);
        ctx.rec.discard_before(measured + 1);
        let step = Step {
            step: measured,
            rate,
            secs,
            wall: started.elapsed().as_secs_f64(),
            sent,
            delivered: ctx.rec.delivered[idx].load(Ordering::Relaxed),
            expected,
            acked: ctx.rec.acked[idx].load(Ordering::Relaxed),
            deliver,
            ack,
            errors: ctx.rec.errors().since(&errors_before),
            server_cpu: ctx
                .pid
                .and_then(|p| cpu_secs(&p.to_string()))
                .zip(cpu_before)
                .map(|(a, b)| a - b),
            client_cpu: cpu_secs("self").zip(client_before).map(|(a, b)| a - b),
            rss: ctx.pid.and_then(rss_kib),
            churn: churn_figures,
            syscalls,
            wire_bytes,
            batches: ctx
                .env
                .persist_batches()
                .await
                .zip(batches_before)
                .map(|(a, b)| a.since(&b)),
        };
        let passed = step_passed(scenario, &step, limit_ms, wants_acks);
        let row = step_row(ctx, &step, total_conns, passed, limit_ms);
        print_row(scenario, cli.target, &step, passed);
        println!("{row}");
        if passed {
            knee = Some(row.clone());
        }
        rows.push(row);
        step_id += 2;
        if step_id as usize + 2 >= stats::MAX_STEPS || !cli.sweep {
            break;
        }
        if !passed {
            if retries_left == 0 {
                break;
            }
            retries_left -= 1;
            continue;
        }
        retries_left = cli.retries;
        let next = rate * cli.step_factor;
        if next > cli.max_rate {
            break;
        }
        rate = next;
    }
    churn_stop.store(true, Ordering::SeqCst);
    if cli.sweep {
        let summary = json!({
            "scenario": scenario.name(),
            "target": cli.target.name(),
            "summary": "sweep",
            "params": params(ctx, total_conns, limit_ms),
            "knee_rate": knee.as_ref().map(|k| k["rate"].clone()),
            "knee_deliveries_per_s": knee.as_ref().map(|k| k["deliveries_per_s"].clone()),
            "knee_acked_per_s": knee.as_ref().map(|k| k["acked_per_s"].clone()),
            "knee_publish_to_deliver": knee.as_ref().map(|k| k["publish_to_deliver"].clone()),
            "knee_publish_to_ack": knee.as_ref().map(|k| k["publish_to_ack"].clone()),
            "steps": rows.len(),
        });
        eprintln!(
            "\nknee: {}",
            match &knee {
                Some(k) => format!(
                    "{} msgs/s offered, {} deliveries/s, {} acked/s, p99 deliver {} ms, p99 ack {} ms",
                    k["rate"], k["deliveries_per_s"], k["acked_per_s"],
                    k["publish_to_deliver"]["p99_ms"], k["publish_to_ack"]["p99_ms"]
                ),
                None => "none: the first step already failed".to_owned(),
            }
        );
        println!("{summary}");
        rows.push(summary);
    }
    STOPPING.store(true, Ordering::SeqCst);
    drop(idle_tx);
    Ok(rows)
}

fn step_passed(scenario: Scenario, s: &Step, limit_ms: f64, wants_acks: bool) -> bool {
    let limit_us = (limit_ms * 1000.0) as u64;
    let errors_ok = s.errors.total() == 0;
    match scenario {
        Scenario::Persist => errors_ok && s.sent > 0 && s.acked >= s.sent && s.ack.p99 <= limit_us,
        _ => {
            errors_ok
                && s.sent > 0
                && s.delivered >= s.expected
                && (!wants_acks || s.acked >= s.sent)
                && s.deliver.p99 <= limit_us
        }
    }
}

fn database(cli: &Cli) -> &'static str {
    match (cli.target, &cli.database_url) {
        (Kind::Courier, Some(url)) if url.starts_with("postgres") => "postgres",
        (Kind::Courier, _) if cli.url.is_some() => "as configured",
        (Kind::Courier, _) => "sqlite",
        _ => "none",
    }
}

fn params(ctx: &Ctx<'_>, conns: usize, limit_ms: f64) -> Value {
    let cli = ctx.cli;
    json!({
        "conns": conns,
        "subs": (cli.scenario == Scenario::Fanout).then_some(conns.saturating_sub(1)),
        "users": ctx.env.tokens.len(),
        "room_size": matches!(cli.scenario, Scenario::Rooms | Scenario::Churn).then_some(cli.room_size),
        "churn_rate": (cli.scenario == Scenario::Churn).then_some(cli.churn_rate),
        "duration_s": cli.duration,
        "warmup_s": cli.warmup,
        "p99_limit_ms": limit_ms,
        "text_bytes": cli.text_bytes,
        "pinned": cli.pin,
        "compact": cli.compact,
        "threads": cli.threads,
        "database": database(cli),
    })
}

fn step_row(ctx: &Ctx<'_>, s: &Step, conns: usize, passed: bool, limit_ms: f64) -> Value {
    let rss_per_conn = match (s.rss, ctx.rss_before) {
        (Some(after), Some(before)) if conns > 0 => {
            Some(round2(after.saturating_sub(before) as f64 / conns as f64))
        }
        _ => None,
    };
    let cpu_per_million = s
        .server_cpu
        .filter(|_| s.delivered > 0)
        .map(|c| round2(c / s.delivered as f64 * 1e6));
    json!({
        "scenario": ctx.cli.scenario.name(),
        "target": ctx.cli.target.name(),
        "params": params(ctx, conns, limit_ms),
        "step": s.step / 2,
        "rate": round2(s.rate),
        "offered_msgs_per_s": round2(s.sent as f64 / s.secs),
        "secs": round2(s.secs),
        "sent": s.sent,
        "delivered": s.delivered,
        "expected_deliveries": s.expected,
        "acked": s.acked,
        "deliveries_per_s": round2(s.delivered as f64 / s.secs),
        "acked_per_s": (ctx.cli.target != Kind::Nats).then(|| round2(s.acked as f64 / s.secs)),
        "publish_to_deliver": s.deliver.value(),
        "publish_to_ack": s.ack.value(),
        "server_rss_kib": s.rss,
        "rss_per_conn_kib": rss_per_conn,
        "server_cpu_s": s.server_cpu.map(round2),
        "server_cpu_s_per_million_deliveries": cpu_per_million,
        "server_cpu_pct": s.server_cpu.map(|c| round2(100.0 * c / s.wall)),
        "client_cpu_pct": s.client_cpu.map(|c| round2(100.0 * c / s.wall)),
        "server_syscalls": s.syscalls,
        "server_syscalls_per_delivery": perf::per_delivery(s.syscalls, s.delivered),
        "wire_bytes": s.wire_bytes,
        "wire_bytes_per_delivery": perf::per_delivery(Some(s.wire_bytes), s.delivered),
        "churn": s.churn.map(|c| json!({
            "offered_per_s": c.offered_per_s,
            "connects": c.connects,
            "connects_per_s": round2(c.connects as f64 / s.secs),
            "failures": c.failures,
            "skipped_at_cap": c.skipped,
            "connect_latency": c.connect.value(),
        })),
        "persist_batches": s.batches.map(|b| json!({
            "batches": b.batches,
            "rows": b.rows,
            "mean_rows": (b.batches > 0).then(|| round2(b.rows / b.batches as f64)),
            "over_128_rows": b.over_128,
        })),
        "errors": s.errors.value(),
        "error_codes_so_far": ctx.rec.error_codes(),
        "ok": passed,
    })
}

fn print_header(scenario: Scenario) {
    eprintln!();
    let extra = if scenario == Scenario::Churn {
        format!(" {:>12} {:>18}", "connects/s", "connect p50/p99")
    } else {
        String::new()
    };
    eprintln!(
        "{:<11} {:>10} {:>12} {:>9} {:>22} {:>22} {:>8} {:>10} {:>9} {:>9} {:>7} {:>7} {:>5}{extra}",
        "target",
        "rate",
        "deliveries/s",
        "deliv %",
        "deliver p50/p99/p999",
        "ack p50/p99/p999 ms",
        "srv CPU%",
        "CPU-s/M",
        "cli CPU%",
        "sys/deliv",
        "B/deliv",
        "errors",
        "ok"
    );
}

fn print_row(scenario: Scenario, target: Kind, s: &Step, passed: bool) {
    let pct = |x: Option<f64>| x.map_or("-".to_owned(), |c| format!("{:.0}", 100.0 * c / s.wall));
    let extra = match (scenario, s.churn) {
        (Scenario::Churn, Some(c)) => format!(
            " {:>12.0} {:>18}",
            c.connects as f64 / s.secs,
            format!(
                "{:.1} / {:.1}",
                stats::ms(c.connect.p50),
                stats::ms(c.connect.p99)
            )
        ),
        _ => String::new(),
    };
    eprintln!(
        "{:<11} {:>10.1} {:>12.0} {:>9.3} {:>22} {:>22} {:>8} {:>10} {:>9} {:>9} {:>7} {:>7} {:>5}{extra}",
        target.name(),
        s.rate,
        s.delivered as f64 / s.secs,
        if s.expected > 0 {
            100.0 * s.delivered as f64 / s.expected as f64
        } else {
            0.0
        },
        s.deliver.human(),
        s.ack.human(),
        pct(s.server_cpu),
        s.server_cpu
            .filter(|_| s.delivered > 0)
            .map_or("-".to_owned(), |c| format!(
                "{:.2}",
                c / s.delivered as f64 * 1e6
            )),
        pct(s.client_cpu),
        perf::per_delivery(s.syscalls, s.delivered).map_or("n/a".to_owned(), |v| format!("{v:.2}")),
        perf::per_delivery(Some(s.wire_bytes), s.delivered)
            .map_or("-".to_owned(), |v| format!("{v:.1}")),
        s.errors.total(),
        if passed { "yes" } else { "no" }
    );
}

fn percentiles_of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Opens `rate` connections per second, each authenticated and joined to a
/// random room, holds each for `hold`, then closes it; until `stop`.
async fn run_churn(
    env: Arc<Env>,
    rooms: Vec<Room>,
    rate: f64,
    hold: Duration,
    churn: Arc<Churn>,
    stop: Arc<AtomicBool>,
) {
    if rate <= 0.0 || rooms.is_empty() {
        return;
    }
    // Bounds the sockets churn holds at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(4000));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut k: usize = 0;
    while !stop.load(Ordering::Relaxed) && !STOPPING.load(Ordering::Relaxed) {
        ticker.tick().await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            churn.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        k += 1;
        let (env, churn) = (env.clone(), churn.clone());
        let room = rooms[(k * 7919) % rooms.len()];
        tokio::spawn(async move {
            let started = Instant::now();
            match env.connect(k, room).await {
                Ok((tx, rx)) => {
                    let us = started.elapsed().as_micros() as u64;
                    churn.done.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = churn.latency.lock() {
                        h.saturating_record(us.max(1));
                    }
                    tokio::time::sleep(hold).await;
                    tx.close().await;
                    drop(rx);
                }
                Err(e) => {
                    if churn.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("load: a churn connect failed (the first): {e:#}");
                    }
                }
            }
            drop(permit);
        });
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
