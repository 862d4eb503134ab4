//! ClamAV's daemon (`clamd`) as a child process, for the tests of the file
//! vault's virus scanning (`tests/files_scanner.rs`).
//!
//! [`ClamdServer::start`] writes a `clamd.conf` and a signature database of
//! its own into a temporary directory and runs `clamd` in the foreground,
//! listening on a free TCP port of 127.0.0.1 (no Unix socket), as the
//! calling user (no `User` line), with no `freshclam` and no official
//! signatures: the one signature, `Courier-Test-EICAR` (a body signature of
//! `courier-test.ndb`), finds [`EICAR`] anywhere in a stream, alone or inside
//! another file; clamd reports it as [`EICAR_SIGNATURE`]. Limits:
//! `StreamMaxLength` and `MaxFileSize` 64M, `MaxScanSize` 256M,
//! `AlertExceedsMax yes`. It waits until `zPING` answers `PONG`.
//!
//! [`ClamdServer::stop`] (SIGTERM) ends it; [`ClamdServer::restart`] starts
//! it again on the same port. The child is killed when the [`ClamdServer`]
//! is dropped. Its log (`LogFile`, every start appended) is in the temporary
//! directory: [`ClamdServer::log_tail`]; what it prints (the same lines, and
//! errors before the log is open) goes to `clamd.out` beside it, shown when a
//! start fails.
//!
//! `clamd` is looked for at `/usr/sbin/clamd` (Debian's `clamav-daemon`),
//! then on `PATH`. When it is missing the test panics, saying so: the
//! scanner tests never skip for want of it.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The EICAR anti-virus test file: harmless, and found by every scanner.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The signature clamd reports for [`EICAR`] (its own databases are
/// "unofficial").
pub const EICAR_SIGNATURE: &str = "Courier-Test-EICAR.UNOFFICIAL";

/// Where Debian's `clamav-daemon` package puts the binary.
pub const DEBIAN_CLAMD: &str = "/usr/sbin/clamd";

/// How long a start may take (loading the database included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped) `clamd` child.
pub struct ClamdServer {
    bin: PathBuf,
    /// The TCP address it listens on.
    pub addr: SocketAddr,
    dir: TempDir,
    log_path: PathBuf,
    out_path: PathBuf,
    child: Option<Child>,
}

/// The `clamd` binary: Debian's, else on `PATH`. Panics when missing.
pub fn clamd_bin() -> PathBuf {
    let debian = PathBuf::from(DEBIAN_CLAMD);
    if is_executable(&debian) {
        return debian;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("clamd"))
            .find(|candidate| is_executable(candidate))
    });
    if let Some(bin) = on_path {
        return bin;
    }
    panic!(
        "clamd is not installed (not at {DEBIAN_CLAMD}, not on PATH); the virus scanner tests \
         need it: `apt-get install clamav-daemon` (Debian), or put a clamd binary on PATH"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An ndb body signature: [`EICAR`] at any offset of any file type.
fn eicar_signature() -> String {
    let hex: String = EICAR.iter().map(|b| format!("{b:02x}")).collect();
    format!("Courier-Test-EICAR:0:*:{hex}\n")
}

impl ClamdServer {
    /// Starts /usr/sbin/clamd (or `clamd` on PATH) in the foreground on a
    /// free loopback port with our own configuration and signature, and
    /// waits until zPING answers PONG. Panics, with the end of its log, when
    /// it does not come up within 60 s.
    pub async fn start() -> ClamdServer {
        let bin = clamd_bin();
        let dir = tempfile::tempdir().expect("a temporary directory for clamd");
        std::fs::write(dir.path().join("courier-test.ndb"), eicar_signature())
            .expect("write the test signature");
        let log_path = dir.path().join("clamd.log");
        let out_path = dir.path().join("clamd.out");
        let mut server = ClamdServer {
            bin,
            addr: crate::support::process::free_port(),
            dir,
            log_path,
            out_path,
            child: None,
        };
        // A port found free may be taken before the child binds it: retry.
        let mut last_failure = String::new();
        for _attempt in 1..=3 {
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(failure) if failure.to_ascii_lowercase().contains("already in use") => {
                    last_failure = failure;
                    server.addr = crate::support::process::free_port();
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("{last_failure}")
    }

    /// `tcp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The temporary directory holding the configuration, the signature
    /// database and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the child runs.
    pub fn is_running(&mut self) -> bool {
        super::child::is_running(&mut self.child)
    }

    /// SIGTERM, then waits (at most 20 s, then SIGKILL) for it to exit.
    pub async fn stop(&mut self) {
        let _ = self.stop_status().await;
    }

    /// As [`ClamdServer::stop`], with the exit status (`None` when it did not
    /// run).
    pub async fn stop_status(&mut self) -> Option<ExitStatus> {
        super::child::stop(&mut self.child, "TERM", Duration::from_secs(20)).await
    }

    /// Starts it again (after [`ClamdServer::stop`]) on the same port with
    /// the same configuration. Panics when it does not come up.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: clamd still runs");
        if let Err(failure) = self.spawn_and_wait().await {
            panic!("{failure}");
        }
    }

    /// The last `lines` lines of its log (every start appends to it).
    pub fn log_tail(&self, lines: usize) -> String {
        super::child::log_tail(&self.log_path, lines)
    }

    /// Whether `zPING` answers `PONG` within a second.
    pub async fn pong(&self) -> bool {
        let ping = async {
            let mut conn = TcpStream::connect(self.addr).await.ok()?;
            conn.write_all(b"zPING\0").await.ok()?;
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.ok()?;
            Some(answer == b"PONG\0")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Some(true))
        )
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir.path();
        let config = format!(
            "# Written by tests/support/clamd.rs.\n\
             Foreground yes\n\
             TCPSocket {port}\n\
             TCPAddr 127.0.0.1\n\
             DatabaseDirectory {dir}\n\
             TemporaryDirectory {dir}\n\
             LogFile {log}\n\
             LogTime yes\n\
             StreamMaxLength 64M\n\
             MaxFileSize 64M\n\
             MaxScanSize 256M\n\
             AlertExceedsMax yes\n\
             SelfCheck 0\n",
            port = self.addr.port(),
            dir = dir.display(),
            log = self.log_path.display(),
        );
        let path = dir.join("clamd.conf");
        std::fs::write(&path, config).expect("write clamd.conf");
        path
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.write_config();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out_path)
            .expect("open clamd's output file");
        {
            use std::io::Write;
            let mut header = &out;
            let _ = writeln!(header, "===== clamd on {}", self.addr);
        }
        let stderr = out.try_clone().expect("clone the output handle");
        let out_start = out.metadata().map_or(0, |m| m.len());
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let exited = match &mut self.child {
                Some(child) => child.try_wait().expect("poll clamd"),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let text = std::fs::read_to_string(&self.out_path).unwrap_or_default();
                let this_start = text.get(out_start as usize..).unwrap_or(&text);
                return Err(format!(
                    "clamd exited during start ({status}); it said:\n{this_start}"
                ));
            }
            if self.pong().await {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                if let Some(mut child) = self.child.take() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                return Err(format!(
                    "clamd did not answer PONG within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
