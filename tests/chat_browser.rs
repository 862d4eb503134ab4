//! The chat page end to end in headless Chromium.
//!
//! | test | what it checks |
//! |---|---|
//! | `chat_page_in_chromium` | `tests/browser/chat.e2e.mjs`, with Debian's `/usr/bin/chromium` driven by `playwright-core`: two users register through the page in two browser contexts and chat in one channel; each sees the other's messages, typing, presence and read receipts; a message with markup shows as text and runs nothing; every answer of the page carries the CSP and it has no inline script; the server is SIGKILLed and restarted on the same port and data, both pages show reconnecting then connected, and nothing is lost or doubled (a send made during the outage included); a reloaded tab resumes its session from sessionStorage, shows the newest page of history and loads the older ones, every message once in seq order |
//!
//! The script starts the `courier` binary itself (it must kill it and start
//! it again on the same port); this test gives it the binary and a data
//! directory, installs the locked Node packages (`npm ci`) when they are
//! missing, and fails when the server's log shows a panic. Without Node 20
//! or Chromium it prints why and passes, except under `CI=true`, where it
//! fails.

#[path = "support/browser.rs"]
mod browser;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole browser run, server starts included.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn chat_page_in_chromium() {
    let Some(browser::Browser { chromium, dir }) = browser::prepare("chat page browser test")
    else {
        return;
    };

    let data = tempfile::tempdir().expect("a temporary data directory");
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg("chat.e2e.mjs")
        .current_dir(&dir)
        .env("COURIER_BIN", env!("CARGO_BIN_EXE_courier"))
        .env("CHAT_E2E_DATA_DIR", data.path())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    // Drain both pipes on threads so that a chatty run cannot block on them.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll node") {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            // SIGTERM first: the script then kills its server before exiting.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");
    let log = std::fs::read_to_string(data.path().join("broker.log")).unwrap_or_default();
    let tail = |n: usize| {
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    match status {
        None => panic!(
            "the browser test did not finish within {RUN_TIMEOUT:?}; the server's log ends:\n{}",
            tail(40)
        ),
        Some(status) => assert!(
            status.success(),
            "the browser test failed ({status}); the server's log ends:\n{}",
            tail(40)
        ),
    }
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(
        panics.is_empty(),
        "the server panicked:\n{}",
        panics.join("\n")
    );
    println!("the chat page browser test took {:?}", started.elapsed());
}
