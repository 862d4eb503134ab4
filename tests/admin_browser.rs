//! The admin console end to end in headless Chromium.
//!
//! | test | what it checks |
//! |---|---|
//! | `admin_console_in_chromium` | `tests/browser/admin.e2e.mjs`, with Debian's `/usr/bin/chromium` driven by `playwright-core`, against the real `courier` binary on SQLite: the super admin signs in; creates a user, locks them (their REST login is refused) and unlocks them; terminates a live user's sessions and sees that user's WebSocket close 4003; a message and a channel name holding `<img src=x onerror=...>` show as text and run nothing, the message is flagged from the channel page and deleted with a reason from the queue; the channel archived refuses a send and is unarchived; `sendPerMinute` set to 2 in Settings refuses a third WebSocket send `rate_limited`; the audit log filtered by action, the chain verified ok; then this test changes one audit row in the SQLite file and the console's verify reports that row's seq as the first bad one; a state change without the CSRF token is refused; a moderator whose password was reset from the console must change it on the page first, then gets the 403 page for `#/users` and a 403 from `POST /api/users`; sign-out. Screenshots of every page go to `target/admin-screenshots/` |
//!
//! This test starts the server (so that it can reach into its database while
//! the script waits), gives the script its address, and answers the
//! script's `TAMPER` line on stdout by changing the `details` of the first
//! `user.lock` audit entry with sqlx, then writes `done <seq>` to the
//! script's stdin. Without Node 20 or Chromium it prints why and passes,
//! except under `CI=true`, where it fails.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use support::process::BrokerSpec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The whole browser run.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
const ADMIN_USERNAME: &str = "root";
const ADMIN_PASSWORD: &str = "root-password-0123456789";

/// Changes the `details` of the first `user.lock` audit entry in the
/// SQLite file behind the server's back; returns its seq.
async fn tamper(db: &Path) -> i64 {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("open the server's SQLite file");
    let seq: i64 = sqlx::query_scalar(
        "SELECT seq FROM audit_logs WHERE action = 'user.lock' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .expect("a user.lock audit entry");
    let changed = sqlx::query("UPDATE audit_logs SET details = ? WHERE seq = ?")
        .bind(r#"{"tampered":true}"#)
        .bind(seq)
        .execute(&mut conn)
        .await
        .expect("change the audit row")
        .rows_affected();
    assert_eq!(changed, 1, "one audit row changed");
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_in_chromium() {
    let Some(browser::Browser { chromium, dir }) = browser::prepare("admin console browser test")
    else {
        return;
    };

    let data = tempfile::tempdir().expect("a temporary data directory");
    let db = data.path().join("courier.db");
    let spec = BrokerSpec::new(data.path(), &format!("sqlite://{}", db.display()))
        .with("COURIER_INITIAL_ADMIN_USERNAME", ADMIN_USERNAME)
        .with("COURIER_INITIAL_ADMIN_PASSWORD", ADMIN_PASSWORD)
        // Admins must enrol a second factor (the super admin is not asked).
        .with("COURIER_TOTP_REQUIRED_ROLES", "admin");
    let started = Instant::now();
    let broker = spec.start().await;
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-screenshots");
    std::fs::create_dir_all(&screenshots).expect("the screenshot directory");

    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg("admin.e2e.mjs")
        .current_dir(&dir)
        .env("ADMIN_E2E_BASE", broker.http_url())
        .env("ADMIN_E2E_USERNAME", ADMIN_USERNAME)
        .env("ADMIN_E2E_PASSWORD", ADMIN_PASSWORD)
        .env("ADMIN_E2E_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let run = async {
        let mut tampered = None;
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            println!("{line}");
            if line.trim() == "TAMPER" {
                let seq = tamper(&db).await;
                println!("[admin_browser] changed the details of audit entry {seq}");
                tampered = Some(seq);
                stdin
                    .write_all(format!("done {seq}\n").as_bytes())
                    .await
                    .expect("answer the script");
                stdin.flush().await.expect("flush");
            }
        }
        (child.wait().await.expect("wait for node"), tampered)
    };
    let outcome = tokio::time::timeout(RUN_TIMEOUT, run).await;
    let stderr = stderr.await.unwrap_or_default();
    eprintln!("{stderr}");
    let log = std::fs::read_to_string(spec.log_path()).unwrap_or_default();
    let tail = |n: usize| {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    match outcome {
        Err(_) => panic!(
            "the browser test did not finish within {RUN_TIMEOUT:?}; the server's log ends:\n{}",
            tail(40)
        ),
        Ok((status, tampered)) => {
            assert!(
                status.success(),
                "the browser test failed ({status}); the server's log ends:\n{}",
                tail(40)
            );
            assert!(tampered.is_some(), "the script never asked to tamper");
        }
    }
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(
        panics.is_empty(),
        "the server panicked:\n{}",
        panics.join("\n")
    );
    drop(broker);
    println!(
        "the admin console browser test took {:?}; screenshots in {}",
        started.elapsed(),
        screenshots.display()
    );
}
