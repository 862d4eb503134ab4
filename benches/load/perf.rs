//! The server's system calls over a window, from `perf stat`:
//! `perf stat -x, -e raw_syscalls:sys_enter -p <pid>`, started when the
//! window opens and stopped with SIGINT when it closes (perf then prints
//! its count). Used by both testers (`load.rs`, `ticks.rs`).
//!
//! Needs `perf` on PATH and the right to trace the server (root, or
//! `kernel.perf_event_paranoid` low enough); otherwise the count is `None`
//! and the tables print `n/a`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `perf stat` on one process.
pub struct SyscallCount {
    child: Option<Child>,
}

impl SyscallCount {
    /// Starts counting the system calls of every thread of `pid`. Never
    /// fails: a missing or refused perf gives `None` at [`Self::stop`].
    pub fn start(pid: Option<u32>) -> SyscallCount {
        let child = pid.and_then(|pid| {
            Command::new("perf")
                .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ok()
        });
        SyscallCount { child }
    }

    /// Stops counting; the system calls made since [`Self::start`].
    pub fn stop(mut self) -> Option<u64> {
        let child = self.child.take()?;
        // perf stat prints its counts when interrupted.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let output = wait_output(child)?;
        parse(&String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for SyscallCount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to 5 s for perf to print and exit.
fn wait_output(mut child: Child) -> Option<std::process::Output> {
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The count in perf's CSV line (`46298,,raw_syscalls:sys_enter,…`);
/// `None` for `<not counted>`, `<not supported>` or an error message.
fn parse(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `count / deliveries`, rounded to 3 decimals.
pub fn per_delivery(count: Option<u64>, deliveries: u64) -> Option<f64> {
    count
        .filter(|_| deliveries > 0)
        .map(|c| (c as f64 / deliveries as f64 * 1000.0).round() / 1000.0)
}
