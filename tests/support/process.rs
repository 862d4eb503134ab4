//! The real `courier` binary as a child process, for the fault tests that
//! must kill it (`tests/faults.rs`).
//!
//! A [`BrokerSpec`] names a data directory, a database URL and the
//! environment; [`BrokerSpec::start`] picks a free port, spawns
//! `courier serve` with its output in `<data dir>/broker.log`, and waits
//! until `/ready` answers 200. A [`Broker`] is stopped with SIGKILL
//! ([`Broker::kill`]) or SIGTERM ([`Broker::terminate`]); its resident
//! memory comes from `/proc/<pid>/status`. [`BrokerSpec::audit_verify`] runs
//! `courier audit verify` against the same data directory and database.
//! [`Broker::ready`], [`Broker::health`] and [`Broker::metrics`] read its
//! HTTP endpoints; [`BrokerSpec::cluster_node`] and
//! [`BrokerSpec::master_keys`] make it a node of a cluster
//! (`tests/cluster.rs`).
//!
//! The child inherits no `COURIER_*` variable from the test's environment:
//! only what the spec sets, so that a developer's shell cannot change what a
//! test proves. It is killed when its [`Broker`] is dropped (a failed test
//! leaves no orphan behind).

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use courier_actors::audit::chain::VerifyReport;
use tokio::process::{Child, Command};

/// The binary under test, built by cargo for integration tests.
pub const COURIER_BIN: &str = env!("CARGO_BIN_EXE_courier");

/// The access-token secret every test broker uses, so that a test can mint
/// tokens for users it created directly in the store.
pub const TEST_JWT_SECRET: &str = "courier-fault-tests-jwt-secret-0123456789abcdef";

/// How long a start may take before the test fails (migrations on a loaded
/// CI machine included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a broker is started: where its data lives and its environment.
#[derive(Clone, Debug)]
pub struct BrokerSpec {
    pub data_dir: PathBuf,
    pub database_url: String,
    env: Vec<(String, String)>,
}

impl BrokerSpec {
    /// A broker on `database_url` with its secrets, checkpoint file and log
    /// in `data_dir`; test settings: a known JWT secret, cheap argon2, rate
    /// limits out of the way, frequent audit checkpoints (so that a crash
    /// can land next to one).
    pub fn new(data_dir: &Path, database_url: &str) -> Self {
        let env = [
            ("COURIER_ENV", "development"),
            ("COURIER_JWT_SECRET", TEST_JWT_SECRET),
            ("COURIER_ACCESS_TOKEN_TTL_SECS", "86400"),
            ("COURIER_ARGON2_MEMORY_KIB", "1024"),
            ("COURIER_ARGON2_ITERATIONS", "1"),
            ("COURIER_SEND_PER_MINUTE", "100000000"),
            ("COURIER_REST_PER_15MIN", "100000000"),
            ("COURIER_AUTH_PER_15MIN", "100000000"),
            ("COURIER_MAX_UNAUTHENTICATED_PER_IP", "100000000"),
            ("COURIER_MAX_CONNECTIONS_PER_IP", "100000000"),
            ("COURIER_AUDIT_CHECKPOINT_EVERY", "200"),
            ("COURIER_AUDIT_CHECKPOINT_INTERVAL_SECS", "1"),
            ("COURIER_LOG_FORMAT", "pretty"),
        ];
        BrokerSpec {
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Sets (or replaces) one environment variable of the child.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// A node of a cluster: `COURIER_NODE_ID` and `COURIER_CLUSTER_NATS_URL`
    /// (the cluster tests, `tests/cluster.rs`).
    pub fn cluster_node(self, node_id: &str, nats_url: &str) -> Self {
        self.with("COURIER_NODE_ID", node_id)
            .with("COURIER_CLUSTER_NATS_URL", nats_url)
    }

    /// `COURIER_MASTER_KEYS`: the master keyring (`1:<base64>`), shared by
    /// every node of a cluster, so that ciphertexts cross nodes.
    pub fn master_keys(self, spec: &str) -> Self {
        self.with("COURIER_MASTER_KEYS", spec)
    }

    /// The value this spec gives an environment variable of the child.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `courier` command with this spec's global flags and environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(COURIER_BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("COURIER_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--database-url")
            .arg(&self.database_url)
            // No `config/default.toml` from the test's working directory.
            .current_dir(&self.data_dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Where the children's output goes (appended, one header per start).
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("broker.log")
    }

    /// Starts `courier serve` on a free port and waits for `/ready` 200.
    /// Panics, with the end of the log, when it does not come up.
    pub async fn start(&self) -> Broker {
        std::fs::create_dir_all(&self.data_dir).expect("create the data directory");
        // A port found free may be taken before the child binds it: retry.
        for attempt in 1..=3 {
            let addr = free_port();
            let log_path = self.log_path();
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open the broker log");
            use std::io::Write;
            let _ = writeln!(log, "===== courier serve --bind {addr} (attempt {attempt})");
            let log_start = log.metadata().map_or(0, |m| m.len());
            let stderr = log.try_clone().expect("clone the log handle");
            let mut cmd = self.command();
            cmd.arg("serve")
                .arg("--bind")
                .arg(addr.to_string())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(stderr))
                .kill_on_drop(true);
            let child = cmd.spawn().expect("spawn the courier binary");
            let pid = child.id().expect("a running child has a pid");
            let mut broker = Broker {
                child,
                pid,
                addr,
                log_path,
                log_start,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .expect("http client"),
            };
            let started = Instant::now();
            loop {
                if let Some(status) = broker.child.try_wait().expect("poll the child") {
                    let log = broker.log_tail(40);
                    if attempt < 3 && log.contains("cannot listen") {
                        break; // the port was taken meanwhile: another one
                    }
                    panic!("courier exited during start ({status}); its log ends:\n{log}");
                }
                if broker.ready_status().await == Some(200) {
                    return broker;
                }
                if started.elapsed() > READY_TIMEOUT {
                    panic!(
                        "courier was not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                        broker.log_tail(40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Runs `courier <args>` against this spec's data directory and database.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.env("RUST_LOG", "warn")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("the courier CLI finished within 2 minutes")
            .expect("run the courier CLI")
    }

    /// `courier audit verify`: its report and whether it exited 0.
    pub async fn audit_verify(&self) -> (VerifyReport, ExitStatus) {
        let out = self.cli(&["audit", "verify"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<VerifyReport>(line.trim()).ok())
            .unwrap_or_else(|| {
                panic!(
                    "`courier audit verify` printed no report ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        (report, out.status)
    }
}

/// A running `courier serve` child.
pub struct Broker {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    log_path: PathBuf,
    /// Where this start's output begins in the shared log.
    log_start: u64,
    http: reqwest::Client,
}

impl Broker {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `ws://.../ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://...`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The status of `GET /ready`, `None` when nothing answered in 3 s.
    pub async fn ready_status(&self) -> Option<u16> {
        let url = format!("{}/ready", self.http_url());
        match self.http.get(url).send().await {
            Ok(response) => Some(response.status().as_u16()),
            Err(_) => None,
        }
    }

    /// `GET /ready`: its status and JSON body, `None` when nothing answered
    /// in 3 s.
    pub async fn ready(&self) -> Option<(u16, serde_json::Value)> {
        self.get_json("/ready").await
    }

    /// `GET /health`'s JSON body, `None` when nothing answered in 3 s.
    pub async fn health(&self) -> Option<serde_json::Value> {
        self.get_json("/health").await.map(|(_, body)| body)
    }

    /// The Prometheus exposition of `GET /metrics`.
    pub async fn metrics(&self) -> Option<String> {
        let url = format!("{}/metrics", self.http_url());
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    async fn get_json(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.http_url());
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Some((status, body))
    }

    /// Resident memory of the child in bytes (`VmRSS` of
    /// `/proc/<pid>/status`); `None` when it is gone or not on Linux.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reaps the child. Panics when the broker's log shows a
    /// bug (see [`Broker::log_faults`]).
    pub async fn kill(mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL the broker");
        let status = self.child.wait().await.expect("reap the broker");
        self.assert_log_sound();
        status
    }

    /// A panic anywhere in the broker is a bug, even one its task survived,
    /// and so is a log line under another connection's span.
    fn assert_log_sound(&self) {
        let faults = self.log_faults();
        assert!(faults.is_empty(), "the broker's log shows a bug:\n{faults}");
    }

    /// SIGTERM, then waits up to `timeout` for the child to exit; returns
    /// its status and how long it took. Panics (after a SIGKILL) when it
    /// does not exit in time, and when the broker's log shows a bug (see
    /// [`Broker::log_faults`]).
    pub async fn terminate(mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                self.assert_log_sound();
                (status.expect("reap the broker"), started.elapsed())
            }
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                panic!(
                    "courier did not exit within {timeout:?} of SIGTERM; its log ends:\n{}",
                    self.log_tail(40)
                );
            }
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) with kill(1): the test
    /// crate has no libc binding, and this is only ever our own child.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// The last `lines` lines this start wrote to the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The lines of this start's log that show a bug whatever the test: a
    /// panic (with the line after it, where the message is), or a
    /// connection's span nested in another connection's (a span left
    /// current on a worker thread, where other tasks then log under it).
    pub fn log_faults(&self) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        let mut found = Vec::new();
        for (i, line) in all.iter().enumerate() {
            if line.contains("panicked") {
                found.extend(all[i..(i + 2).min(all.len())].iter().copied());
            } else if line.matches("conn{conn_id=").count() > 1 {
                found.push(line);
            }
        }
        found.join("\n")
    }

    /// Everything this start has logged so far.
    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            let _ = file.seek(SeekFrom::Start(self.log_start));
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where a process's memory is, for a failure message: the RSS lines and
/// thread count of `/proc/<pid>/status`, then its eight largest mappings by
/// resident size (from `/proc/<pid>/smaps`).
pub fn memory_report(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut report: Vec<String> = status
        .lines()
        .filter(|l| {
            ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:", "Threads:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut mappings: Vec<(u64, String)> = Vec::new();
    let mut header = String::new();
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib = kib.trim().trim_end_matches(" kB").parse().unwrap_or(0);
            mappings.push((kib, header.clone()));
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            header = line.split_whitespace().collect::<Vec<_>>().join(" ");
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    report.extend(
        mappings
            .iter()
            .take(8)
            .map(|(kib, map)| format!("{kib} kB {map}")),
    );
    report.join("\n")
}

/// The sum of every series of metric `name` (any labels) in a Prometheus
/// exposition; `None` when there is none.
pub fn metric_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some(' ') => rest.trim(),
            Some('{') => match rest.rfind('}') {
                Some(end) => rest[end + 1..].trim(),
                None => continue,
            },
            _ => continue,
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}
