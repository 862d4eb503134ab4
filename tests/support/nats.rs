//! A NATS server (`nats-server`, JetStream on) as a child process, for the
//! cluster tests (`tests/cluster.rs`).
//!
//! [`Nats::start`] picks a free client port and a free monitoring port,
//! gives JetStream a temporary store directory (`-js -sd DIR`), listens on
//! 127.0.0.1 only, and waits until the monitoring endpoint `/healthz`
//! answers 200 (it checks JetStream too) and the client port takes a
//! connection. [`Nats::stop`] (SIGTERM) and [`Nats::kill`] (SIGKILL) end it;
//! [`Nats::restart`] starts it again on the same ports with the same store
//! directory, so that what JetStream held (the cluster's leases) survives.
//! The child is killed when the [`Nats`] is dropped.
//!
//! `nats-server` is looked for on `PATH`, then at `/usr/sbin/nats-server`
//! (the Debian package). When it is missing the test panics, saying so:
//! the cluster tests never skip for want of it.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Where Debian's `nats-server` package puts the binary.
pub const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long a start (or a restart, JetStream recovering its store) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) `nats-server` child.
pub struct Nats {
    bin: PathBuf,
    /// The client port (`nats://` URLs).
    pub addr: SocketAddr,
    /// The HTTP monitoring port (`/healthz`).
    pub monitor: SocketAddr,
    store: TempDir,
    log_path: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

/// The `nats-server` binary: on `PATH`, else Debian's. Panics when missing.
pub fn nats_server_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| is_executable(candidate))
    });
    if let Some(bin) = on_path {
        return bin;
    }
    let debian = PathBuf::from(DEBIAN_NATS_SERVER);
    if is_executable(&debian) {
        return debian;
    }
    panic!(
        "nats-server is not installed (not on PATH, not at {DEBIAN_NATS_SERVER}); the cluster \
         tests need it: `apt-get install nats-server` (Debian, 2.9 or later, JetStream), or put \
         a nats-server binary on PATH"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Nats {
    /// Starts `nats-server -js` on free loopback ports with a fresh store
    /// directory, and waits until it serves. Panics, with the end of its
    /// log, when it does not come up.
    pub async fn start() -> Nats {
        let bin = nats_server_bin();
        let mut store = tempfile::tempdir().expect("a temporary directory for JetStream");
        let log_path = store.path().join("nats-server.log");
        // A port found free may be taken before the child binds it: retry.
        let mut last_failure = String::new();
        for _attempt in 1..=3 {
            let mut nats = Nats {
                bin: bin.clone(),
                addr: super::process::free_port(),
                monitor: super::process::free_port(),
                store,
                log_path: log_path.clone(),
                child: None,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("http client"),
            };
            match nats.spawn_and_wait().await {
                Ok(()) => return nats,
                Err(failure) if failure.contains("address already in use") => {
                    last_failure = failure;
                    store = nats.into_store().await;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("{last_failure}")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The JetStream store directory (kept across [`Nats::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("js")
    }

    /// Whether the child runs.
    pub fn is_running(&mut self) -> bool {
        super::child::is_running(&mut self.child)
    }

    /// SIGTERM, then waits (at most 20 s, then SIGKILL) for it to exit.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        super::child::stop(&mut self.child, "TERM", Duration::from_secs(20)).await
    }

    /// SIGKILL, then reaps it.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        super::child::kill(&mut self.child).await
    }

    /// Starts it again (after [`Nats::stop`] or [`Nats::kill`]) on the same
    /// ports with the same store directory. Panics when it does not come up.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: nats-server still runs");
        if let Err(failure) = self.spawn_and_wait().await {
            panic!("{failure}");
        }
    }

    /// The last `lines` lines of its log (every start appends to it).
    pub fn log_tail(&self, lines: usize) -> String {
        super::child::log_tail(&self.log_path, lines)
    }

    /// Whether `/healthz` answers 200 (JetStream included).
    pub async fn healthy(&self) -> bool {
        let url = format!("http://{}/healthz", self.monitor);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the nats-server log");
        {
            use std::io::Write;
            let mut header = &log;
            let _ = writeln!(
                header,
                "===== nats-server -p {} -m {}",
                self.addr.port(),
                self.monitor.port()
            );
        }
        let stderr = log.try_clone().expect("clone the log handle");
        let log_start = log.metadata().map_or(0, |m| m.len());
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.addr.port().to_string())
            .arg("-m")
            .arg(self.monitor.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let exited = match &mut self.child {
                Some(child) => child.try_wait().expect("poll nats-server"),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let this_start = text.get(log_start as usize..).unwrap_or(&text);
                return Err(format!(
                    "nats-server exited during start ({status}); its log:\n{this_start}"
                ));
            }
            if self.healthy().await && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = self.kill().await;
                return Err(format!(
                    "nats-server was not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Gives back the store directory of a failed start.
    async fn into_store(mut self) -> TempDir {
        let _ = self.kill().await;
        let Nats { store, .. } = self;
        store
    }
}
