//! The `cluster` scenario (issue 32): one channel's fan-out across Courier
//! nodes joined over NATS, beside the same load on one node, in one run.
//!
//! Configurations, one after the other (`--baseline` picks the first two):
//! - `single`: one node without NATS (Courier as it always ran);
//! - `cluster-1`: one node in cluster mode (its own nats-server);
//! - `cluster-N`: `--nodes` nodes (3).
//!
//! Each configuration gets:
//! - a fresh PostgreSQL database, created on `--database-url`'s server
//!   (default `$DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`)
//!   and dropped at its end;
//! - cluster configurations: a nats-server with JetStream (`-js -sd DIR -a
//!   127.0.0.1 -p PORT`, a temporary store dir, a free port; `--nats-server`,
//!   default `/usr/sbin/nats-server`);
//! - its nodes, started one after the other by [`target::launch`] (the
//!   environment every Courier of the tester gets, its own free port and
//!   temporary data dir) through a wrapper script that adds
//!   `COURIER_CLUSTER_NATS_URL`, `COURIER_NODE_ID` (`n1`, `n2`, ...) and the
//!   run's shared `COURIER_JWT_SECRET` and `COURIER_MASTER_KEYS`, then
//!   `exec`s the release binary (so the pid the tester reads is the
//!   server's); each node must answer `/ready` 200 before the next starts;
//!   `--pin` puts the nodes and nats-server on core 0, the tester on core 1;
//! - `--users` users (100) registered on node 1 and logged in on every node
//!   (the tokens of one node are good on all: one secret, one database), one
//!   public channel created on node 1;
//! - `--subs` subscribers (1,000), subscriber `i` on node `i mod N`, all in
//!   that channel, and one publisher (joined too: subs + 1 deliveries per
//!   message) on `--publisher-node` (0: node 1), open-loop at `--rate`
//!   msgs/s (200), `--sweep` as in `fanout`.
//!
//! Per step, as `fanout` measures one node: deliveries/s, publish-to-deliver
//! and publish-to-ack percentiles, pass/fail (every message delivered and
//! acked, no error, p99 deliver within `--p99-limit-ms`), and: the CPU of
//! each node, of nats-server and of every `postgres` process on the machine
//! over the step and its drain, each node's RSS and connections, and each
//! node's cluster metrics over the step (`courier_cluster_forwarded_total`,
//! `courier_cluster_push_latency_seconds`). At the end of each
//! configuration, every node's `/health` `cluster` block. A summary table
//! closes the run, each configuration against `single`.

use std::io::Read;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::stats::{self, cpu_secs, now_ns, rss_kib, Recorder};
use crate::target::{self, Env, Event, Kind, Launch, Room, Rx, Server, Tx};
use crate::{publish, round2, step_passed, Cli, Part, Pending, Plan, Scenario, Step, STOPPING};

/// What to run beside the `--nodes` cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// One node without NATS, then one node in cluster mode.
    Both,
    /// One node without NATS (single-node mode).
    Single,
    /// One node in cluster mode.
    Cluster1,
    /// The cluster alone.
    None,
}

/// One configuration of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One node, no NATS.
    Single,
    /// This many nodes over one nats-server.
    Cluster(usize),
}

impl Shape {
    fn label(self) -> String {
        match self {
            Shape::Single => "single".to_owned(),
            Shape::Cluster(n) => format!("cluster-{n}"),
        }
    }

    fn nodes(self) -> usize {
        match self {
            Shape::Single => 1,
            Shape::Cluster(n) => n,
        }
    }
}

fn shapes(cli: &Cli) -> Vec<Shape> {
    let nodes = cli.nodes.max(1);
    let mut shapes = Vec::new();
    if matches!(cli.baseline, Baseline::Both | Baseline::Single) {
        shapes.push(Shape::Single);
    }
    if matches!(cli.baseline, Baseline::Both | Baseline::Cluster1) && nodes != 1 {
        shapes.push(Shape::Cluster(1));
    }
    shapes.push(Shape::Cluster(nodes));
    shapes
}

/// The secrets every node of the run shares.
struct Secrets {
    jwt: String,
    master_keys: String,
}

impl Secrets {
    fn generate() -> Result<Secrets> {
        let mut bytes = [0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("read /dev/urandom")?;
        Ok(Secrets {
            jwt: hex::encode(&bytes[..32]),
            master_keys: format!(
                "1:{}",
                base64::engine::general_purpose::STANDARD.encode(&bytes[32..])
            ),
        })
    }
}

/// Runs every configuration; returns the JSON rows (also printed).
pub async fn run(cli: &Cli) -> Result<Vec<Value>> {
    if cli.url.is_some() {
        bail!("cluster starts its own nodes: --url does not apply");
    }
    if cli.target != Kind::Courier {
        bail!("cluster measures Courier only (--target courier)");
    }
    let courier_bin = cli.server.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/courier")
    });
    if !courier_bin.exists() {
        bail!(
            "{} does not exist: run `cargo build --release` first (or pass --server)",
            courier_bin.display()
        );
    }
    let courier_bin = courier_bin.canonicalize()?;
    if courier_bin.to_string_lossy().contains('\'') {
        bail!("the Courier binary's path must not hold a single quote");
    }
    if !cli.nats_server.exists() {
        bail!(
            "{} does not exist (Debian package nats-server; or pass --nats-server)",
            cli.nats_server.display()
        );
    }
    let admin_url = cli
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let secrets = Secrets::generate()?;
    let scripts = tempfile::Builder::new()
        .prefix("courier-load-cluster-")
        .tempdir()?;
    let shapes = shapes(cli);
    eprintln!(
        "load: cluster: {} subscribers, publisher on node {}, configurations {}",
        cli.subs.or(cli.conns).unwrap_or(1000),
        cli.publisher_node + 1,
        shapes
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rows = Vec::new();
    let mut results: Vec<ShapeResult> = Vec::new();
    for shape in shapes {
        let label = shape.label();
        let name = format!(
            "courier_bench_cluster_{}_{}",
            std::process::id(),
            label.replace('-', "_")
        );
        let db = Database::create(&admin_url, &name)
            .await
            .with_context(|| format!("{label}: create database {name}"))?;
        let setup = Setup {
            cli,
            shape,
            db_url: &db.url,
            secrets: &secrets,
            courier_bin: &courier_bin,
            scripts: scripts.path(),
        };
        let measured = measure_shape(&setup).await;
        db.remove().await;
        let result = measured.with_context(|| format!("configuration {label}"))?;
        rows.extend(result.rows.iter().cloned());
        results.push(result);
    }
    let summary = print_summary(cli, &results);
    println!("{summary}");
    rows.push(summary);
    Ok(rows)
}

// ---------------------------------------------------------------------------
// The processes: PostgreSQL database, nats-server, nodes
// ---------------------------------------------------------------------------

/// A database of this run on the server of `admin_url`.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str, name: &str) -> Result<Database> {
        let mut admin =
            tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(admin_url))
                .await
                .context("connecting to PostgreSQL timed out")?
                .with_context(|| format!("connect to PostgreSQL at {admin_url}"))?;
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{name}""#).as_str())
            .await?;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        let _ = admin.close().await;
        Ok(Database {
            admin_url: admin_url.to_owned(),
            name: name.to_owned(),
            url: with_database(admin_url, name),
        })
    }

    /// Drops it (every node stopped by now; `WITH (FORCE)` for stragglers).
    async fn remove(self) {
        let drop = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str(),
                )
                .await?;
            let _ = admin.close().await;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(30), drop).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("load: could not drop database {}: {e:#}", self.name),
            Err(_) => eprintln!("load: dropping database {} timed out", self.name),
        }
    }
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A nats-server with JetStream this run started; stopped on drop.
struct Nats {
    child: Child,
    pid: u32,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    async fn start(bin: &Path, pin: bool) -> Result<Nats> {
        let dir = tempfile::Builder::new()
            .prefix("courier-load-nats-")
            .tempdir()?;
        let port = free_port()?;
        let log_path = dir.path().join("nats.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        command
            .arg("-js")
            .arg("-sd")
            .arg(dir.path().join("jetstream"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let nats = Nats {
            pid: child.id(),
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                // JetStream comes up just after the client port; the nodes'
                // `/ready` (lease held) is the real gate.
                return Ok(nats);
            }
            if Instant::now() > deadline || !Path::new(&format!("/proc/{}", nats.pid)).exists() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("nats-server did not listen on port {port}; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        super::target::terminate(&mut self.child, self.pid);
    }
}

/// Writes the script that starts node `node` (0-based) of `label`: the
/// cluster's variables and the shared secrets, then `exec` of Courier with
/// the arguments [`target::launch`] gives (`serve`).
fn node_script(
    dir: &Path,
    label: &str,
    node: usize,
    courier_bin: &Path,
    nats_url: Option<&str>,
    secrets: &Secrets,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{label}-n{}.sh", node + 1));
    let mut script = String::from(
        "#!/bin/sh\n# The load tester's cluster scenario (benches/load/cluster.rs).\n",
    );
    if let Some(url) = nats_url {
        script.push_str(&format!(
            "export COURIER_CLUSTER_NATS_URL='{url}'\nexport COURIER_NODE_ID='n{}'\n",
            node + 1
        ));
    }
    script.push_str(&format!(
        "export COURIER_JWT_SECRET='{}'\nexport COURIER_MASTER_KEYS='{}'\nexec '{}' \"$@\"\n",
        secrets.jwt,
        secrets.master_keys,
        courier_bin.display()
    ));
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    Ok(path)
}

/// Waits for `/ready` 200 (database, actors and, in cluster mode, NATS and
/// the lease).
async fn wait_ready(http: &reqwest::Client, base: &str, server: &Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match http.get(format!("{base}/ready")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            bail!("{base}/ready did not answer 200 in 30 s (last: {last}); log tail (newest first):\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Measuring one configuration
// ---------------------------------------------------------------------------

struct Setup<'a> {
    cli: &'a Cli,
    shape: Shape,
    db_url: &'a str,
    secrets: &'a Secrets,
    courier_bin: &'a Path,
    scripts: &'a Path,
}

/// One node while a configuration runs.
struct Node {
    id: String,
    base: String,
    pid: u32,
    /// Tester connections on it (subscribers, and the publisher on its node).
    conns: usize,
    rss_before: Option<u64>,
}

/// What one configuration gave: its rows and the figures of its last
/// step (its knee with `--sweep`).
struct ShapeResult {
    label: String,
    nodes: usize,
    rows: Vec<Value>,
    chosen: Option<Value>,
}

async fn measure_shape(s: &Setup<'_>) -> Result<ShapeResult> {
    let cli = s.cli;
    let label = s.shape.label();
    let count = s.shape.nodes();
    let http = reqwest::Client::new();
    let nats = match s.shape {
        Shape::Single => None,
        Shape::Cluster(_) => Some(Nats::start(&cli.nats_server, cli.pin).await?),
    };
    let nats_url = nats.as_ref().map(Nats::url);
    let mut servers: Vec<Server> = Vec::with_capacity(count);
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    // One after the other: the first runs the migrations and creates the
    // bench admin, and each holds its lease before the next starts.
    for k in 0..count {
        let script = node_script(
            s.scripts,
            &label,
            k,
            s.courier_bin,
            nats_url.as_deref(),
            s.secrets,
        )?;
        let (server, base) = target::launch(&Launch {
            kind: Kind::Courier,
            pin: cli.pin,
            courier_bin: &script,
            database_url: Some(s.db_url),
        })
        .await
        .with_context(|| format!("{label}: start node n{}", k + 1))?;
        wait_ready(&http, &base, &server)
            .await
            .with_context(|| format!("{label}: node n{}", k + 1))?;
        nodes.push(Node {
            id: format!("n{}", k + 1),
            base,
            pid: server.pid,
            conns: 0,
            rss_before: None,
        });
        servers.push(server);
    }
    let result = drive(s, &http, &mut nodes, nats.as_ref()).await;
    // Stop the nodes, then NATS (blocking waits, off the reactor).
    let _ = tokio::task::spawn_blocking(move || {
        drop(servers);
        drop(nats);
    })
    .await;
    result
}

/// Users, channel, connections, steps.
async fn drive(
    s: &Setup<'_>,
    http: &reqwest::Client,
    nodes: &mut [Node],
    nats: Option<&Nats>,
) -> Result<ShapeResult> {
    let cli = s.cli;
    let label = s.shape.label();
    let count = nodes.len();
    let users = cli.users.unwrap_or(100);
    let started = Instant::now();
    let mut envs = Vec::with_capacity(count);
    for node in nodes.iter() {
        // Node 1 registers the users; the others get 409 and log them in.
        let mut env = Env::new(Kind::Courier, &node.base, users)
            .await
            .with_context(|| format!("{label}: users on {}", node.id))?;
        env.compact = cli.compact;
        envs.push(Arc::new(env));
    }
    let room = envs[0].rooms(1).await?[0];
    eprintln!(
        "load: {label}: {count} node(s) up, {users} users logged in on each, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let subs = cli.subs.or(cli.conns).unwrap_or(1000);
    let publisher = subs;
    let publisher_node = cli.publisher_node.min(count - 1);
    let node_of = |i: usize| {
        if i == publisher {
            publisher_node
        } else {
            i % count
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in nodes.iter_mut() {
        node.rss_before = rss_kib(node.pid);
    }
    let rec = Arc::new(Recorder::new());
    let per_node = Arc::new(NodeDeliveries::new(count));
    let conns = connect_spread(cli, &rec, &envs, subs + 1, node_of, room).await;
    for (i, _, _) in &conns {
        nodes[node_of(*i)].conns += 1;
    }
    let up = conns.len();
    let (plan_tx, plan_rx) = watch::channel(Plan {
        step: 0,
        total_rate: 0.0,
    });
    let mut idle = Vec::with_capacity(up);
    let mut have_publisher = false;
    for (i, tx, rx) in conns {
        if i == publisher {
            let pending: Pending = Arc::default();
            spawn_node_reader(
                rec.clone(),
                per_node.clone(),
                node_of(i),
                i,
                rx,
                Some(pending.clone()),
            );
            tokio::spawn(publish(
                rec.clone(),
                tx,
                room,
                Part {
                    share: 1.0,
                    phase: 0.0,
                    text_bytes: cli.text_bytes,
                },
                Some(pending),
                plan_rx.clone(),
            ));
            have_publisher = true;
        } else {
            spawn_node_reader(rec.clone(), per_node.clone(), node_of(i), i, rx, None);
            idle.push((i, tx));
        }
    }
    drop(plan_rx);
    if !have_publisher {
        bail!("{label}: the publisher could not connect");
    }
    // The first send that needs the channel's owner claims it: with
    // --owner-node, a subscriber on that node sends one message first, so
    // that the publisher's sends are forwarded to it.
    let owner_node = cli.owner_node.map(|k| k.min(count - 1));
    if let Some(owner) = owner_node.filter(|k| *k != publisher_node) {
        let claimer = idle
            .iter_mut()
            .find(|(i, _)| node_of(*i) == owner)
            .map(|(_, tx)| tx);
        if let Some(tx) = claimer {
            let text = stats::message_text(stats::now_ns(), 0, cli.text_bytes);
            tx.send_batch(room, vec![text])
                .await
                .context("the claiming send")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if up < subs + 1 {
        eprintln!(
            "load: {label}: only {up}/{} connections; figures cover those",
            subs + 1
        );
    }
    let recipients = up as u64;
    let limit_ms = cli.p99_limit_ms.unwrap_or(100.0);
    let params = json!({
        "nodes": count,
        "subs": subs,
        "conns": up,
        "users": users,
        "publisher_node": nodes[publisher_node].id,
        "owner_node": nodes[owner_node.unwrap_or(publisher_node)].id,
        "duration_s": cli.duration,
        "warmup_s": cli.warmup,
        "p99_limit_ms": limit_ms,
        "text_bytes": cli.text_bytes,
        "pinned": cli.pin,
        "compact": cli.compact,
        "threads": cli.threads,
        "database": "postgres",
        "nats": nats.is_some(),
    });
    print_header(&label, nodes);

    let mut rows = Vec::new();
    let mut measured_steps = Vec::new();
    let mut chosen = None;
    let mut rate = cli.rate.unwrap_or(200.0);
    let mut step_id: u32 = 1;
    let mut retries_left = cli.retries;
    loop {
        plan_tx.send_replace(Plan {
            step: step_id,
            total_rate: rate,
        });
        let warmup = if step_id == 1 {
            cli.warmup.max(3.0)
        } else {
            cli.warmup
        };
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let measured = step_id + 1;
        let errors_before = rec.errors();
        let reordered_before = per_node.acks_out_of_order.load(Ordering::Relaxed);
        let inverted_before = per_node.deliveries_out_of_order.load(Ordering::Relaxed);
        let before = Snapshot::take(http, nodes, nats).await;
        let started = Instant::now();
        plan_tx.send_replace(Plan {
            step: measured,
            total_rate: rate,
        });
        tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
        plan_tx.send_replace(Plan {
            step: measured,
            total_rate: 0.0,
        });
        let secs = started.elapsed().as_secs_f64();
        let idx = measured as usize % stats::MAX_STEPS;
        let drain_deadline = Instant::now() + Duration::from_secs_f64(cli.drain);
        while Instant::now() < drain_deadline {
            let sent = rec.sent[idx].load(Ordering::Relaxed);
            if rec.delivered[idx].load(Ordering::Relaxed) >= sent * recipients
                && rec.acked[idx].load(Ordering::Relaxed) >= sent
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = started.elapsed().as_secs_f64();
        let after = Snapshot::take(http, nodes, nats).await;
        let sent = rec.sent[idx].load(Ordering::Relaxed);
        let (deliver, ack) = rec.take(measured);
        rec.discard_before(measured + 1);
        let node_cpu: Vec<Option<f64>> = after
            .nodes_cpu
            .iter()
            .zip(&before.nodes_cpu)
            .map(|(a, b)| a.zip(*b).map(|(a, b)| a - b))
            .collect();
        let server_cpu = node_cpu.iter().try_fold(0.0, |sum, c| c.map(|c| sum + c));
        let step = Step {
            step: measured,
            rate,
            secs,
            wall,
            sent,
            delivered: rec.delivered[idx].load(Ordering::Relaxed),
            expected: sent * recipients,
            acked: rec.acked[idx].load(Ordering::Relaxed),
            deliver,
            ack,
            errors: rec.errors().since(&errors_before),
            server_cpu,
            client_cpu: after.me.zip(before.me).map(|(a, b)| a - b),
            rss: None,
            churn: None,
            syscalls: None,
            wire_bytes: after.wire - before.wire,
            batches: None,
        };
        let passed = step_passed(Scenario::Fanout, &step, limit_ms, true);
        let node_delivered: Vec<u64> = (0..count).map(|k| per_node.get(k, measured)).collect();
        let figures = StepFigures {
            step: &step,
            nodes,
            node_delivered: &node_delivered,
            node_cpu: &node_cpu,
            before: &before,
            after: &after,
        };
        let mut row = figures.row(&label, &params, up, passed);
        let reordered = per_node.acks_out_of_order.load(Ordering::Relaxed) - reordered_before;
        let inverted = per_node.deliveries_out_of_order.load(Ordering::Relaxed) - inverted_before;
        row["acks_out_of_order"] = json!(reordered);
        row["deliveries_out_of_send_order"] = json!(inverted);
        if reordered > 0 || inverted > 0 {
            eprintln!(
                "    out of the publisher's send order: {reordered} acks (before an earlier send's), {inverted} deliveries"
            );
        }
        figures.print(&label, passed);
        println!("{row}");
        measured_steps.push(measured);
        if passed || chosen.is_none() || !cli.sweep {
            chosen = Some(row.clone());
        }
        rows.push(row);
        step_id += 2;
        if !cli.sweep || step_id as usize + 2 >= stats::MAX_STEPS {
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
    drop(plan_tx);

    // Whatever of each step arrived after its drain: late, not lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (row, measured) in rows.iter_mut().zip(&measured_steps) {
        let idx = *measured as usize % stats::MAX_STEPS;
        let delivered = rec.delivered[idx].load(Ordering::Relaxed);
        let acked = rec.acked[idx].load(Ordering::Relaxed);
        let late = json!({
            "delivered": delivered.saturating_sub(row["delivered"].as_u64().unwrap_or(0)),
            "acked": acked.saturating_sub(row["acked"].as_u64().unwrap_or(0)),
        });
        if late["delivered"].as_u64() != Some(0) || late["acked"].as_u64() != Some(0) {
            eprintln!(
                "load: {label}: step {} had {} deliveries and {} acks more 2 s after the run's last drain",
                row["step"], late["delivered"], late["acked"]
            );
        }
        row["late_after_run"] = late;
    }
    if let Some(chosen) = chosen.as_mut() {
        if let Some(row) = rows.iter().find(|r| r["step"] == chosen["step"]) {
            *chosen = row.clone();
        }
    }

    // Every node's cluster block, then close the connections.
    let mut health = Vec::with_capacity(count);
    for node in nodes.iter() {
        let cluster = get_json(http, &format!("{}/health", node.base))
            .await
            .map(|h| h.get("cluster").cloned().unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        eprintln!("  {} /health cluster: {cluster}", node.id);
        health.push(json!({"node": node.id, "cluster": cluster}));
    }
    let closing = futures_util::future::join_all(idle.into_iter().map(|(_, tx)| tx.close()));
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    if let Some(last) = rows.last_mut() {
        last["health"] = Value::Array(health);
    }
    Ok(ShapeResult {
        label,
        nodes: count,
        rows,
        chosen,
    })
}

/// Opens `n` connections, connection `i` as user `i` on node `node_of(i)`,
/// joined to `room`, `--connect-concurrency` at a time. Failures are
/// counted and skipped.
async fn connect_spread(
    cli: &Cli,
    rec: &Recorder,
    envs: &[Arc<Env>],
    n: usize,
    node_of: impl Fn(usize) -> usize,
    room: Room,
) -> Vec<(usize, Tx, Rx)> {
    let started = Instant::now();
    let mut first_error = None;
    let mut done = Vec::with_capacity(n);
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let env = envs[node_of(i)].clone();
            async move { (i, env.connect(i, room).await) }
        })
        .buffer_unordered(cli.connect_concurrency.max(1));
    while let Some((i, result)) = attempts.next().await {
        match result {
            Ok((tx, rx)) => done.push((i, tx, rx)),
            Err(e) => {
                rec.connect_errors.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "load: {} connects failed; the first: {e:#}",
            rec.connect_errors.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "load: {} connections up over {} node(s) in {:.1}s",
        done.len(),
        envs.len(),
        started.elapsed().as_secs_f64()
    );
    done.sort_by_key(|(i, _, _)| *i);
    done
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

// ---------------------------------------------------------------------------
// Readings: CPU, RSS, the cluster metrics
// ---------------------------------------------------------------------------

/// Readings at one moment.
struct Snapshot {
    nodes_cpu: Vec<Option<f64>>,
    nats_cpu: Option<f64>,
    postgres_cpu: Option<f64>,
    me: Option<f64>,
    wire: u64,
    metrics: Vec<ClusterMetrics>,
}

impl Snapshot {
    async fn take(http: &reqwest::Client, nodes: &[Node], nats: Option<&Nats>) -> Snapshot {
        let mut metrics = Vec::with_capacity(nodes.len());
        for node in nodes {
            let text = get_text(http, &format!("{}/metrics", node.base)).await;
            metrics.push(ClusterMetrics::parse(text.as_deref().unwrap_or("")));
        }
        Snapshot {
            nodes_cpu: nodes.iter().map(|n| cpu_secs(&n.pid.to_string())).collect(),
            nats_cpu: nats.and_then(|n| cpu_secs(&n.pid.to_string())),
            postgres_cpu: postgres_cpu(),
            me: cpu_secs("self"),
            wire: target::RX_BYTES.load(Ordering::Relaxed),
            metrics,
        }
    }
}

/// CPU seconds of every process named `postgres` on the machine (the
/// server and its backends: the nodes' pools are long-lived, so a delta
/// over a step covers what the database did for it, and anything else that
/// used it meanwhile).
fn postgres_cpu() -> Option<f64> {
    let mut total = 0.0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres");
        if is_postgres {
            if let Some(c) = cpu_secs(pid) {
                total += c;
                found = true;
            }
        }
    }
    found.then_some(total)
}

/// One node's cluster metrics (all zero on a node without cluster mode).
#[derive(Clone, Debug, Default)]
struct ClusterMetrics {
    forwarded: f64,
    dropped: f64,
    gap_fills: f64,
    push_count: f64,
    push_sum: f64,
    /// `(le, cumulative count)` of the push latency histogram, by `le`.
    push_buckets: Vec<(f64, f64)>,
    /// The exporter's own quantiles when it renders a summary instead.
    push_quantiles: Vec<(f64, f64)>,
}

const FORWARDED: &str = "courier_cluster_forwarded_total";
const DROPPED: &str = "courier_cluster_pushes_dropped_total";
const GAP_FILLS: &str = "courier_cluster_gap_fills_total";
const PUSH: &str = "courier_cluster_push_latency_seconds";

impl ClusterMetrics {
    fn parse(text: &str) -> ClusterMetrics {
        let mut m = ClusterMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (series, ""),
            };
            match name {
                FORWARDED => m.forwarded += value,
                DROPPED => m.dropped += value,
                GAP_FILLS => m.gap_fills += value,
                n if n == format!("{PUSH}_count") => m.push_count += value,
                n if n == format!("{PUSH}_sum") => m.push_sum += value,
                n if n == format!("{PUSH}_bucket") => {
                    if let Some(le) = label(labels, "le") {
                        add_at(&mut m.push_buckets, le, value);
                    }
                }
                PUSH => {
                    if let Some(q) = label(labels, "quantile") {
                        add_at(&mut m.push_quantiles, q, value);
                    }
                }
                _ => {}
            }
        }
        m.push_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m.push_quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }
}

/// The value of label `key` in `a="1",key="0.5"}` as a number (`+Inf` too).
fn label(labels: &str, key: &str) -> Option<f64> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = start + labels[start..].find('"')?;
    match &labels[start..end] {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

fn add_at(list: &mut Vec<(f64, f64)>, key: f64, value: f64) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => *v += value,
        None => list.push((key, value)),
    }
}

/// The push latency over a step, in ms: (count, mean, p50, p99), the
/// quantiles as the upper bound of the bucket they fall in (or the
/// exporter's own quantiles, over its window, for a summary).
fn push_latency(before: &ClusterMetrics, after: &ClusterMetrics) -> Value {
    let count = after.push_count - before.push_count;
    if count <= 0.0 {
        return json!({"count": 0});
    }
    let mean = (after.push_sum - before.push_sum) / count * 1000.0;
    let quantile = |q: f64| -> Option<f64> {
        if after.push_buckets.is_empty() {
            return after
                .push_quantiles
                .iter()
                .find(|(k, _)| (*k - q).abs() < 1e-9)
                .map(|(_, v)| v * 1000.0);
        }
        let deltas: Vec<(f64, f64)> = after
            .push_buckets
            .iter()
            .map(|(le, c)| {
                let was = before
                    .push_buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, c - was)
            })
            .collect();
        let total = deltas.last()?.1;
        if total <= 0.0 {
            return None;
        }
        deltas
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| le * 1000.0)
            .filter(|v| v.is_finite())
    };
    json!({
        "count": count,
        "mean_ms": round3(mean),
        "p50_ms": quantile(0.5).map(round3),
        "p99_ms": quantile(0.99).map(round3),
        "from": if after.push_buckets.is_empty() { "summary" } else { "bucket upper bounds" },
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// One step with its readings.
struct StepFigures<'a> {
    step: &'a Step,
    nodes: &'a [Node],
    /// Deliveries each node's connections received.
    node_delivered: &'a [u64],
    node_cpu: &'a [Option<f64>],
    before: &'a Snapshot,
    after: &'a Snapshot,
}

impl StepFigures<'_> {
    fn nats_cpu(&self) -> Option<f64> {
        self.after
            .nats_cpu
            .zip(self.before.nats_cpu)
            .map(|(a, b)| a - b)
    }

    fn postgres_cpu(&self) -> Option<f64> {
        self.after
            .postgres_cpu
            .zip(self.before.postgres_cpu)
            .map(|(a, b)| a - b)
    }

    fn pct(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.map(|c| round2(100.0 * c / self.step.wall))
    }

    /// CPU seconds per million deliveries.
    fn per_million(&self, cpu: Option<f64>, deliveries: f64) -> Option<f64> {
        cpu.filter(|_| deliveries > 0.0)
            .map(|c| round2(c / deliveries * 1e6))
    }

    /// Deliveries node `k`'s connections received.
    fn node_deliveries(&self, k: usize) -> f64 {
        self.node_delivered[k] as f64
    }

    /// Of the deliveries node `k`'s connections should have had, in %.
    fn node_delivered_pct(&self, k: usize) -> Option<f64> {
        let expected = self.step.sent * self.nodes[k].conns as u64;
        (expected > 0).then(|| round3(100.0 * self.node_delivered[k] as f64 / expected as f64))
    }

    fn all_cpu(&self) -> Option<f64> {
        let nats = if self.before.nats_cpu.is_some() {
            self.nats_cpu()?
        } else {
            0.0
        };
        Some(self.step.server_cpu? + nats + self.postgres_cpu()?)
    }

    fn row(&self, label: &str, params: &Value, conns: usize, passed: bool) -> Value {
        let s = self.step;
        let delivered = s.delivered as f64;
        let per_node: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, node)| {
                let rss = rss_kib(node.pid);
                let deliveries = self.node_deliveries(k);
                json!({
                    "node": node.id,
                    "pid": node.pid,
                    "conns": node.conns,
                    "cpu_s": self.node_cpu[k].map(round2),
                    "cpu_pct": self.pct(self.node_cpu[k]),
                    "deliveries": self.node_delivered[k],
                    "delivered_pct": self.node_delivered_pct(k),
                    "cpu_s_per_million_own_deliveries": self.per_million(self.node_cpu[k], deliveries),
                    "rss_kib": rss,
                    "rss_per_conn_kib": rss.zip(node.rss_before).filter(|_| node.conns > 0).map(|(a, b)| {
                        round2(a.saturating_sub(b) as f64 / node.conns as f64)
                    }),
                    "forwarded": self.after.metrics[k].forwarded - self.before.metrics[k].forwarded,
                    "pushes_dropped": self.after.metrics[k].dropped - self.before.metrics[k].dropped,
                    "gap_fills": self.after.metrics[k].gap_fills - self.before.metrics[k].gap_fills,
                    "push_latency": push_latency(&self.before.metrics[k], &self.after.metrics[k]),
                })
            })
            .collect();
        json!({
            "scenario": "cluster",
            "config": label,
            "nodes": self.nodes.len(),
            "params": params,
            "step": s.step / 2,
            "rate": round2(s.rate),
            "offered_msgs_per_s": round2(s.sent as f64 / s.secs),
            "secs": round2(s.secs),
            "sent": s.sent,
            "delivered": s.delivered,
            "expected_deliveries": s.expected,
            "acked": s.acked,
            "conns": conns,
            "deliveries_per_s": round2(delivered / s.secs),
            "acked_per_s": round2(s.acked as f64 / s.secs),
            "publish_to_deliver": s.deliver.value(),
            "publish_to_ack": s.ack.value(),
            "server_cpu_s": s.server_cpu.map(round2),
            "server_cpu_pct": self.pct(s.server_cpu),
            "server_cpu_s_per_million_deliveries": self.per_million(s.server_cpu, delivered),
            "nats_cpu_pct": self.pct(self.nats_cpu()),
            "postgres_cpu_pct": self.pct(self.postgres_cpu()),
            "all_cpu_s_per_million_deliveries": self.per_million(self.all_cpu(), delivered),
            "client_cpu_pct": self.pct(s.client_cpu),
            "wire_bytes_per_delivery": crate::perf::per_delivery(Some(s.wire_bytes), s.delivered),
            "per_node": per_node,
            "errors": s.errors.value(),
            "ok": passed,
        })
    }

    fn print(&self, label: &str, passed: bool) {
        let s = self.step;
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        eprintln!(
            "{:<10} {:>5} {:>8.1} {:>12.0} {:>8.3} {:>22} {:>22} {:>8} {:>6} {:>6} {:>8} {:>8} {:>6} {:>7} {:>6} {:>4}",
            label,
            self.nodes.len(),
            s.rate,
            s.delivered as f64 / s.secs,
            if s.expected > 0 {
                100.0 * s.delivered as f64 / s.expected as f64
            } else {
                0.0
            },
            s.deliver.human(),
            s.ack.human(),
            opt(self.pct(s.server_cpu), 0),
            opt(self.pct(self.nats_cpu()), 0),
            opt(self.pct(self.postgres_cpu()), 0),
            opt(self.per_million(s.server_cpu, s.delivered as f64), 2),
            opt(self.per_million(self.all_cpu(), s.delivered as f64), 2),
            opt(self.pct(s.client_cpu), 0),
            opt(
                crate::perf::per_delivery(Some(s.wire_bytes), s.delivered),
                1
            ),
            s.errors.total(),
            if passed { "yes" } else { "no" }
        );
        for (k, node) in self.nodes.iter().enumerate() {
            let rss = rss_kib(node.pid);
            let push = push_latency(&self.before.metrics[k], &self.after.metrics[k]);
            let ms = |key: &str| {
                push[key]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.2}"))
            };
            eprintln!(
                "    {:<4} conns {:>6}  deliv % {:>8}  CPU% {:>4}  CPU-s/M own {:>6}  RSS {:>7} MiB  RSS/conn {:>6} KiB  forwarded {:>7}  dropped {:>5}  gap fills {:>5}  push mean/p50/p99 {} / {} / {} ms",
                node.id,
                node.conns,
                opt(self.node_delivered_pct(k), 3),
                opt(self.pct(self.node_cpu[k]), 0),
                opt(self.per_million(self.node_cpu[k], self.node_deliveries(k)), 2),
                rss.map_or("-".to_owned(), |r| format!("{:.1}", r as f64 / 1024.0)),
                rss.zip(node.rss_before)
                    .filter(|_| node.conns > 0)
                    .map_or("-".to_owned(), |(a, b)| format!(
                        "{:.2}",
                        a.saturating_sub(b) as f64 / node.conns as f64
                    )),
                self.after.metrics[k].forwarded - self.before.metrics[k].forwarded,
                self.after.metrics[k].dropped - self.before.metrics[k].dropped,
                self.after.metrics[k].gap_fills - self.before.metrics[k].gap_fills,
                ms("mean_ms"),
                ms("p50_ms"),
                ms("p99_ms"),
            );
        }
    }
}

fn print_header(label: &str, nodes: &[Node]) {
    eprintln!(
        "\n{label}: {}",
        nodes
            .iter()
            .map(|n| format!("{} {} (pid {})", n.id, n.base, n.pid))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "{:<10} {:>5} {:>8} {:>12} {:>8} {:>22} {:>22} {:>8} {:>6} {:>6} {:>8} {:>8} {:>6} {:>7} {:>6} {:>4}",
        "config",
        "nodes",
        "rate",
        "deliveries/s",
        "deliv %",
        "deliver p50/p99/p999",
        "ack p50/p99/p999 ms",
        "srv CPU%",
        "nats%",
        "pg%",
        "CPU-s/M",
        "all/M",
        "cli%",
        "B/deliv",
        "errors",
        "ok"
    );
}

/// The closing table: each configuration's last step (its knee with
/// `--sweep`), against `single` when it ran.
fn print_summary(cli: &Cli, results: &[ShapeResult]) -> Value {
    let f = |row: &Value, path: &[&str]| -> Option<f64> {
        let mut v = row;
        for key in path {
            v = v.get(key)?;
        }
        v.as_f64()
    };
    let base = results
        .iter()
        .find(|r| r.label == "single")
        .or_else(|| results.first());
    // The baseline's step at the same rate (its last try there).
    let baseline_at = |rate: Option<f64>| -> Option<Value> {
        let rate = rate?;
        base?
            .rows
            .iter()
            .rev()
            .find(|r| f(r, &["rate"]).is_some_and(|x| (x - rate).abs() < 1e-6))
            .cloned()
    };
    eprintln!(
        "\ncluster summary ({}; publish-to-deliver and publish-to-ack in ms; Δ against {} at the same rate):",
        if cli.sweep {
            "each configuration's knee, else its first step"
        } else {
            "each configuration's step"
        },
        results
            .iter()
            .find(|r| r.label == "single")
            .or_else(|| results.first())
            .map_or("-", |r| r.label.as_str())
    );
    eprintln!(
        "{:<10} {:>5} {:>8} {:>12} {:>16} {:>16} {:>8} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>4}",
        "config",
        "nodes",
        "rate",
        "deliveries/s",
        "deliver p50/p99",
        "ack p50/p99",
        "srv CPU%",
        "nats%",
        "CPU-s/M",
        "all/M",
        "Δ p50",
        "Δ p99",
        "×CPU/M",
        "ok"
    );
    let mut configs = Vec::new();
    for r in results {
        let Some(row) = &r.chosen else {
            continue;
        };
        let p = |path: &[&str]| f(row, path);
        let baseline = baseline_at(p(&["rate"]));
        let d50 = p(&["publish_to_deliver", "p50_ms"])
            .zip(
                baseline
                    .as_ref()
                    .and_then(|b| f(b, &["publish_to_deliver", "p50_ms"])),
            )
            .map(|(a, b)| a - b);
        let d99 = p(&["publish_to_deliver", "p99_ms"])
            .zip(
                baseline
                    .as_ref()
                    .and_then(|b| f(b, &["publish_to_deliver", "p99_ms"])),
            )
            .map(|(a, b)| a - b);
        let ratio = p(&["server_cpu_s_per_million_deliveries"])
            .zip(
                baseline
                    .as_ref()
                    .and_then(|b| f(b, &["server_cpu_s_per_million_deliveries"])),
            )
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| a / b);
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        eprintln!(
            "{:<10} {:>5} {:>8.1} {:>12.0} {:>16} {:>16} {:>8} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>4}",
            r.label,
            r.nodes,
            p(&["rate"]).unwrap_or(0.0),
            p(&["deliveries_per_s"]).unwrap_or(0.0),
            format!(
                "{} / {}",
                opt(p(&["publish_to_deliver", "p50_ms"]), 1),
                opt(p(&["publish_to_deliver", "p99_ms"]), 1)
            ),
            format!(
                "{} / {}",
                opt(p(&["publish_to_ack", "p50_ms"]), 1),
                opt(p(&["publish_to_ack", "p99_ms"]), 1)
            ),
            opt(p(&["server_cpu_pct"]), 0),
            opt(p(&["nats_cpu_pct"]), 0),
            opt(p(&["server_cpu_s_per_million_deliveries"]), 2),
            opt(p(&["all_cpu_s_per_million_deliveries"]), 2),
            opt(d50, 1),
            opt(d99, 1),
            opt(ratio, 2),
            if row["ok"].as_bool() == Some(true) { "yes" } else { "no" }
        );
        configs.push(json!({
            "config": r.label,
            "nodes": r.nodes,
            "row": row,
            "delta_p50_ms": d50.map(round3),
            "delta_p99_ms": d99.map(round3),
            "cpu_per_million_ratio": ratio.map(round3),
        }));
    }
    json!({
        "scenario": "cluster",
        "summary": if cli.sweep { "knees" } else { "configs" },
        "configs": configs,
    })
}

/// Deliveries per node and step, and acks that overtook an earlier send's.
struct NodeDeliveries {
    delivered: Vec<Vec<AtomicU64>>,
    acks_out_of_order: AtomicU64,
    /// Deliveries stamped before one the same connection had already had.
    deliveries_out_of_order: AtomicU64,
}

impl NodeDeliveries {
    fn new(nodes: usize) -> NodeDeliveries {
        NodeDeliveries {
            delivered: (0..nodes)
                .map(|_| (0..stats::MAX_STEPS).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            acks_out_of_order: AtomicU64::new(0),
            deliveries_out_of_order: AtomicU64::new(0),
        }
    }

    fn add(&self, node: usize, step: u32) {
        self.delivered[node][step as usize % stats::MAX_STEPS].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, node: usize, step: u32) -> u64 {
        self.delivered[node][step as usize % stats::MAX_STEPS].load(Ordering::Relaxed)
    }
}

/// Takes the send with ack key `key` off the queue of those waiting, in any
/// order: load.rs's `take_pending` expects acks in the order of the sends
/// (one node answers them so) and drops every key before the one answered,
/// but a forwarded send's answer comes back from its channel's owner over
/// NATS, and those can overtake one another. Counts the acks that came
/// before an earlier send's.
fn take_any(pending: Option<&Pending>, key: u64, per_node: &NodeDeliveries) -> Option<(u64, u32)> {
    let mut queue = pending?
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Keys are queued in increasing order.
    let at = queue.binary_search_by_key(&key, |(k, _, _)| *k).ok()?;
    if at > 0 {
        per_node.acks_out_of_order.fetch_add(1, Ordering::Relaxed);
    }
    let (_, sent, step) = queue.remove(at)?;
    Some((sent, step))
}

/// Reads a connection until it ends, as `spawn_reader` in load.rs does
/// (deliveries, acks, error answers, closes into `rec`), and also counts
/// its deliveries for its node.
fn spawn_node_reader(
    rec: Arc<Recorder>,
    per_node: Arc<NodeDeliveries>,
    node: usize,
    task: usize,
    mut rx: Rx,
    pending: Option<Pending>,
) {
    tokio::spawn(async move {
        // The publisher stamps its messages in increasing order: a delivery
        // stamped before the previous one came out of its send order.
        let mut last_sent = 0;
        loop {
            match rx.next_event().await {
                Event::Message { sent_ns, step } => {
                    if sent_ns < last_sent {
                        per_node
                            .deliveries_out_of_order
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    last_sent = last_sent.max(sent_ns);
                    per_node.add(node, step);
                    rec.delivery(task, sent_ns, step, now_ns());
                }
                Event::Ack(key) => {
                    let now = now_ns();
                    if let Some((sent, step)) = take_any(pending.as_ref(), key, &per_node) {
                        rec.ack(task, step, sent, now);
                    }
                }
                Event::Nack(key, code) => {
                    rec.send_error(code);
                    let _ = take_any(pending.as_ref(), key, &per_node);
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
