//! Start-up of the real `courier` binary as a process: a configuration it
//! cannot use is refused with one message listing every problem (exit 78,
//! no backtrace even with `RUST_BACKTRACE=1`), and the data it writes is
//! its owner's only (directory 0700, every file 0600, whatever the umask),
//! existing files included.
//!
//! Every child runs under `umask 000`, so a mode that is not set
//! explicitly shows up as world-writable.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::process::{free_port, COURIER_BIN};
use tokio::process::{Child, Command};

/// The exit status of a configuration Courier cannot use (README).
const EXIT_CONFIG: i32 = 78;

/// How long a start may take on a loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `courier` under `umask 000`, in `work` (so no `config/default.toml` is
/// read), with no `COURIER_*` variable from the test's environment.
fn courier(work: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(COURIER_BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COURIER_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(work)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a `courier` that is expected to refuse to start.
async fn refused(mut cmd: Command) -> (Output, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
        .await
        .expect("courier gave up within the start timeout")
        .expect("run courier");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Checks the refusal: exit 78, nothing on stdout, no backtrace, and
/// stderr exactly `header` then one line per problem, each once.
fn assert_one_message(out: &Output, stderr: &str, header: &str, problems: &[&str]) {
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.to_lowercase().contains("backtrace"),
        "a backtrace was printed:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.first().copied(), Some(header), "{stderr}");
    assert_eq!(
        lines.len(),
        1 + problems.len(),
        "one line per problem:\n{stderr}"
    );
    for problem in problems {
        let line = format!("  - {problem}");
        assert_eq!(
            lines.iter().filter(|l| **l == line).count(),
            1,
            "{problem:?} once in:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn bad_configuration_is_one_message_listing_every_problem() {
    let work = tempfile::tempdir().expect("tmp");
    std::fs::write(
        work.path().join("c.toml"),
        "max_frame_byte = 100\nheartbeat_ms = 0\n",
    )
    .expect("write the config file");
    let mut cmd = courier(work.path());
    cmd.args(["--config", "c.toml", "--data-dir", "data", "serve"])
        .env(
            "COURIER_DATABSE_URL",
            "postgres://courier@db.invalid/courier",
        )
        .env("COURIER_MAX_FRAME_BYTES", "0")
        .env("COURIER_MAX_TEXT_BYTES", "100000")
        .env("COURIER_BIND", "not-an-address");
    let (out, stderr) = refused(cmd).await;
    assert_one_message(
        &out,
        &stderr,
        "courier: invalid configuration, 6 problems:",
        &[
            "unknown key max_frame_byte in c.toml; did you mean max_frame_bytes?",
            "unknown variable COURIER_DATABSE_URL; did you mean COURIER_DATABASE_URL?",
            "COURIER_BIND: invalid socket address syntax",
            "COURIER_MAX_FRAME_BYTES: must be between 1024 and 67108864, not 0",
            "COURIER_MAX_TEXT_BYTES (100000) must not exceed COURIER_MAX_FRAME_BYTES (0): \
             such a text could never arrive",
            "heartbeat_ms in c.toml: must be between 1 and 3600000, not 0",
        ],
    );
    assert!(
        !work.path().join("data").exists(),
        "a refused start created the data directory"
    );
}

#[tokio::test]
async fn a_maintenance_command_refuses_a_typo_too() {
    let work = tempfile::tempdir().expect("tmp");
    let mut cmd = courier(work.path());
    cmd.args(["--data-dir", "data", "migrate"])
        .env("COURIER_DATA_DIRR", "elsewhere");
    let (out, stderr) = refused(cmd).await;
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "courier: invalid configuration: unknown variable COURIER_DATA_DIRR; \
         did you mean COURIER_DATA_DIR?"
    );
}

#[tokio::test]
async fn production_refusal_lists_every_missing_piece() {
    let work = tempfile::tempdir().expect("tmp");
    let mut cmd = courier(work.path());
    cmd.args(["--data-dir", "data", "serve"])
        .env("COURIER_ENV", "production");
    let (out, stderr) = refused(cmd).await;
    assert_one_message(
        &out,
        &stderr,
        "courier: invalid configuration, 3 problems:",
        &[
            "production requires COURIER_JWT_SECRET",
            "production requires COURIER_MASTER_KEYS or COURIER_KEYRING_FILE",
            "production requires TLS (COURIER_TLS_CERT and COURIER_TLS_KEY) or \
             COURIER_TRUSTED_PROXIES (the addresses of the TLS-terminating proxy)",
        ],
    );
    assert!(!work.path().join("data").exists());
}

/// A `courier serve` with its data in `<work>/data` (the default SQLite
/// database there) and its log in `<work>/log`, ready.
struct Served {
    child: Child,
}

impl Served {
    async fn start(work: &Path) -> Served {
        let addr = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("log"))
            .expect("open the log");
        let mut cmd = courier(work);
        cmd.args(["--data-dir", "data", "serve", "--bind", &addr.to_string()])
            .env("COURIER_ARGON2_MEMORY_KIB", "1024")
            .env("COURIER_ARGON2_ITERATIONS", "1")
            .env("COURIER_AUDIT_CHECKPOINT_INTERVAL_SECS", "1")
            .stdout(Stdio::from(log.try_clone().expect("clone the log")))
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn courier");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("poll the child") {
                panic!(
                    "courier exited during start ({status}):\n{}",
                    read_log(work)
                );
            }
            let ready = http.get(format!("http://{addr}/ready")).send().await;
            if ready.is_ok_and(|r| r.status().as_u16() == 200) {
                return Served { child };
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "courier was not ready within {START_TIMEOUT:?}:\n{}",
                read_log(work)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL courier");
        self.child.wait().await.expect("reap courier");
    }
}

fn read_log(work: &Path) -> String {
    std::fs::read_to_string(work.join("log")).unwrap_or_default()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// What a development start on SQLite keeps in its data directory.
const DATA_FILES: [&str; 6] = [
    "courier.db",
    "courier.db-wal",
    "courier.db-shm",
    "jwt_secret",
    "keyring",
    "audit-checkpoints.jsonl",
];

/// Waits until every one of [`DATA_FILES`] exists (the first checkpoint
/// comes within a second or two), then checks the directory is 0700 and
/// every file in it 0600.
async fn assert_private(data: &Path, work: &Path) {
    let started = Instant::now();
    while !DATA_FILES.iter().all(|f| data.join(f).exists()) {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "not every data file appeared: {:?}\n{}",
            std::fs::read_dir(data).map(|d| d.count()),
            read_log(work)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mode(data), 0o700, "the data directory");
    for entry in std::fs::read_dir(data).expect("list the data directory") {
        let path = entry.expect("entry").path();
        // The local file store's directory (`files/`) is 0700 too.
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_and_narrowed_at_start() {
    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("data");

    let served = Served::start(work.path()).await;
    assert_private(&data, work.path()).await;
    served.kill().await;

    // What an older version left: everything readable by everyone.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for file in DATA_FILES {
        let path = data.join(file);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
    let log_before = read_log(work.path()).len();
    let served = Served::start(work.path()).await;
    assert_private(&data, work.path()).await;
    served.kill().await;
    let log = read_log(work.path());
    let warned = log[log_before..]
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("mode narrowed"))
        .count();
    assert!(
        warned >= 3,
        "every narrowed file is warned about:\n{}",
        &log[log_before..]
    );
}
