//! What the harnesses of real servers share (`nats.rs`, `clamd.rs`,
//! `s3.rs`): whether their child runs, stopping it with a signal and a
//! grace period, killing it, and the end of its log.

#![allow(dead_code)]

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

/// Whether `child` runs.
pub fn is_running(child: &mut Option<Child>) -> bool {
    match child {
        Some(child) => matches!(child.try_wait(), Ok(None)),
        None => false,
    }
}

/// Sends `signal` (`"TERM"`, `"INT"`), waits up to `grace` for the exit,
/// then SIGKILLs; `None` when it did not run.
pub async fn stop(child: &mut Option<Child>, signal: &str, grace: Duration) -> Option<ExitStatus> {
    let mut child = child.take()?;
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// SIGKILL, then reaps it.
pub async fn kill(child: &mut Option<Child>) -> Option<ExitStatus> {
    let mut child = child.take()?;
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
