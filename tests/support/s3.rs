//! An S3-compatible server as a child process, for the attachment store
//! tests (issue 35): `s3s-fs`, the file-system S3 server of the `s3s`
//! crates (crates.io), which keeps each bucket as a directory.
//!
//! [`S3Server::start`] picks a free loopback port, gives the server a
//! temporary data directory holding the bucket [`BUCKET`], and waits until
//! it answers HTTP. [`S3Server::stop`] (SIGINT: `s3s-fs` shuts down
//! gracefully on it and has no SIGTERM handler, so SIGTERM would be a kill)
//! and [`S3Server::kill`] (SIGKILL) end it; [`S3Server::restart`] starts it
//! again on the same port with the same data directory, so that what was
//! stored survives. The child is killed when the [`S3Server`] is dropped.
//!
//! Requests are path-style (`http://127.0.0.1:PORT/courier-test/KEY`) and
//! signed with SigV4 by [`ACCESS_KEY_ID`] / [`SECRET_ACCESS_KEY`]; the
//! server checks the signatures. [`S3Server::courier_env`] is the
//! environment a Courier server needs to keep its files there;
//! [`S3Server::client`] is an `object_store` client with the same settings.
//!
//! # Why s3s-fs and not s3rver
//! `s3rver` 3.7.1 (npm) was tried first and fails what Courier relies on:
//! `AbortMultipartUpload` answers 405 (the parts stay on disk), a suffix
//! range (`bytes=-N`) returns the first N+1 bytes, a PUT cut off by a crash
//! leaves the truncated object listed, and parts under 5 MiB are accepted.
//! `s3s-fs` does all four as S3 does: it writes every object and part to a
//! temporary file renamed into place when complete.
//!
//! # The binary
//! `COURIER_S3S_FS` names one; otherwise `s3s-fs` [`S3S_FS_VERSION`] is
//! looked for under `$CARGO_HOME/courier-tools/` and, when missing,
//! installed there once with `cargo install --locked` (about 4 minutes on
//! two cores; later runs on the same machine reuse it). When it cannot be
//! had the test panics, saying how to install it by hand: it never skips.
//!
//! Included with `#[path = "support/s3.rs"] mod s3;` beside `mod support;`
//! (it takes free ports from `support::process`), or as `support::s3`.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The bucket every test server has.
pub const BUCKET: &str = "courier-test";

/// The access key id the server accepts.
pub const ACCESS_KEY_ID: &str = "courier-test-access-key";

/// The secret access key that goes with [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "courier-test-secret-key";

/// The region signatures are made for (the server accepts any).
pub const REGION: &str = "us-east-1";

/// The `s3s-fs` release the tests are written against.
pub const S3S_FS_VERSION: &str = "0.14.1";

/// How long a start (or a restart) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) S3-compatible server.
pub struct S3Server {
    bin: PathBuf,
    addr: SocketAddr,
    /// Holds `data/` (the server's root, one directory per bucket) and
    /// `s3s-fs.log`.
    dir: TempDir,
    log_path: PathBuf,
    child: Option<Child>,
}

impl S3Server {
    /// Starts the server on a free port with a fresh data directory and the
    /// bucket [`BUCKET`], and waits (30 s at most) until it serves. Panics,
    /// with the end of its log, when it cannot be had or does not come up.
    pub async fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let mut dir = tempfile::tempdir().expect("a temporary directory for the S3 server");
        let log_path = dir.path().join("s3s-fs.log");
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET))
            .expect("the bucket directory");
        // A port found free may be taken before the child binds it: retry.
        let mut last_failure = String::new();
        for _attempt in 1..=3 {
            let mut server = S3Server {
                bin: bin.clone(),
                addr: crate::support::process::free_port(),
                dir,
                log_path: log_path.clone(),
                child: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(failure) if failure.contains("in use") => {
                    last_failure = failure;
                    dir = server.into_dir().await;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("{last_failure}")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// [`BUCKET`].
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The server's root (kept across [`S3Server::restart`]): a directory
    /// per bucket holding the objects under their keys, and beside them the
    /// server's own files (`.bucket-*.json` metadata, `.upload_id-*` parts
    /// of unfinished multipart uploads, `.tmp.*` writes in progress).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The environment a Courier server needs to keep its files under
    /// `prefix` in the bucket. `AmazonS3Builder::from_env()` reads the
    /// `AWS_*` ones. Path-style requests are said explicitly (they are
    /// `object_store`'s default with an endpoint, and the server has no
    /// virtual hosts on an IP address).
    pub fn courier_env(&self, prefix: &str) -> Vec<(String, String)> {
        let prefix = prefix.trim_matches('/');
        let store = if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        };
        [
            ("COURIER_FILES_STORE", store),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A builder with the settings of [`S3Server::courier_env`], for a test
    /// that changes some (the retry settings, ...) before `build()`.
    pub fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
    }

    /// An `object_store` client for the bucket (default retries).
    pub fn client(&self) -> AmazonS3 {
        self.builder()
            .build()
            .expect("an S3 client for the test server")
    }

    /// Every file under the data directory (objects, metadata, parts of
    /// unfinished uploads, writes in progress), to grep what landed on disk.
    pub fn files_on_disk(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![self.data_dir()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(entry.path()),
                    Ok(_) => files.push(entry.path()),
                    Err(_) => {}
                }
            }
        }
        files.sort();
        files
    }

    /// Whether the child runs.
    pub fn is_running(&mut self) -> bool {
        super::child::is_running(&mut self.child)
    }

    /// Asks it to stop (SIGINT: it stops accepting and lets requests in
    /// flight finish, 10 s at most), then waits (at most 15 s, then SIGKILL).
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        super::child::stop(&mut self.child, "INT", Duration::from_secs(15)).await
    }

    /// SIGKILL, then reaps it.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        super::child::kill(&mut self.child).await
    }

    /// Starts it again (after [`S3Server::stop`] or [`S3Server::kill`]) on
    /// the same port with the same data. Panics when it does not come up.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the S3 server still runs");
        if let Err(failure) = self.spawn_and_wait().await {
            panic!("{failure}");
        }
    }

    /// The last `lines` lines of its log (every start appends to it).
    pub fn log_tail(&self, lines: usize) -> String {
        super::child::log_tail(&self.log_path, lines)
    }

    /// Whether it answers HTTP (any status: an unsigned request is refused).
    async fn answers(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await else {
            return false;
        };
        let request = format!(
            "HEAD /{BUCKET} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut head));
        matches!(read.await, Ok(Ok(_))) && head.starts_with(b"HTTP/1.1 ")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the S3 server log");
        {
            use std::io::Write;
            let mut header = &log;
            let _ = writeln!(header, "===== s3s-fs --port {}", self.addr.port());
        }
        let log_start = log.metadata().map_or(0, |m| m.len()) as usize;
        let stderr = log.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(&self.bin);
        cmd.env("RUST_LOG", "s3s_fs=info,s3s=warn")
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY_ID)
            .arg("--secret-key")
            .arg(SECRET_ACCESS_KEY)
            .arg(self.data_dir())
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
                Some(child) => child.try_wait().expect("poll the S3 server"),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let this_start = text.get(log_start..).unwrap_or(&text);
                return Err(format!(
                    "s3s-fs exited during start ({status}); its log:\n{this_start}"
                ));
            }
            if self.answers().await {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = self.kill().await;
                return Err(format!(
                    "s3s-fs was not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gives back the directory of a failed start.
    async fn into_dir(mut self) -> TempDir {
        let _ = self.kill().await;
        let S3Server { dir, .. } = self;
        dir
    }
}

/// The `s3s-fs` binary: `COURIER_S3S_FS`, else the pinned release under
/// `$CARGO_HOME/courier-tools/`, installed there when missing. Panics,
/// saying how to install it, when it cannot be had.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("COURIER_S3S_FS") {
        let bin = PathBuf::from(bin);
        assert!(
            is_executable(&bin),
            "COURIER_S3S_FS={} is not an executable file",
            bin.display()
        );
        return bin;
    }
    // One install at a time in this process; tests starting together wait.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tools_root();
    let bin = root.join("bin").join("s3s-fs");
    if is_executable(&bin) {
        return bin;
    }
    let install_hint = format!(
        "cargo install s3s-fs --version ={S3S_FS_VERSION} --features binary --locked --root {}",
        root.display()
    );
    eprintln!(
        "s3s-fs {S3S_FS_VERSION} is not installed: installing it once (about 4 minutes): \
         {install_hint}"
    );
    let build_dir = tempfile::tempdir().expect("a temporary build directory for s3s-fs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["install", "s3s-fs", "--version"])
        .arg(format!("={S3S_FS_VERSION}"))
        .args(["--features", "binary", "--locked", "--root"])
        .arg(&root)
        // Never the workspace's target directory: `cargo test` holds it.
        .arg("--target-dir")
        .arg(build_dir.path())
        .output();
    match out {
        Ok(out) if out.status.success() && is_executable(&bin) => bin,
        Ok(out) => panic!(
            "installing s3s-fs failed ({}); the S3 tests need it. By hand: `{install_hint}` \
             (or set COURIER_S3S_FS to a binary). cargo said:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run cargo to install s3s-fs ({e}); the S3 tests need it. By hand: \
             `{install_hint}` (or set COURIER_S3S_FS to a binary)"
        ),
    }
}

/// `$CARGO_HOME/courier-tools/s3s-fs-VERSION` (`~/.cargo` when unset).
fn tools_root() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .expect("CARGO_HOME or HOME is set");
    cargo_home
        .join("courier-tools")
        .join(format!("s3s-fs-{S3S_FS_VERSION}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
