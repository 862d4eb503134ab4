//! What the load tester counts: latency histograms and counters per step,
//! and the server process's memory and CPU from `/proc`.
//!
//! Every message's text starts with its intended send time (nanoseconds
//! since the run's start [`Instant`], so latency includes any time the
//! publisher fell behind its schedule: no coordinated omission) and the
//! step it belongs to; receivers record into sharded, mutex-guarded HDR
//! histograms keyed by step, so the controller can read one step's figures
//! while the next one runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Histogram shards (tasks pick one by index).
const SHARDS: usize = 8;
/// Steps a run can have.
pub const MAX_STEPS: usize = 256;
/// Length of a message's text: "100-byte payloads".
pub const TEXT_BYTES: usize = 100;
/// Highest latency the histograms hold, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

static START: OnceLock<Instant> = OnceLock::new();

/// Fixes the run's time origin (call once, early).
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Nanoseconds since the run's start.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The text of a message: `<20-digit send ns> <5-digit step> ` then padding
/// up to `len` bytes ([`TEXT_BYTES`] unless `--text-bytes` says otherwise).
pub fn message_text(send_ns: u64, step: u32, len: usize) -> String {
    let mut text = format!("{send_ns:020} {step:05} ");
    text.extend(std::iter::repeat_n('x', len.saturating_sub(text.len())));
    text
}

/// Reads back what [`message_text`] wrote: the send time and the step.
pub fn parse_text(text: &[u8]) -> Option<(u64, u32)> {
    let digits = |bytes: &[u8]| {
        bytes.iter().try_fold(0u64, |v, b| {
            b.is_ascii_digit()
                .then(|| v.checked_mul(10)?.checked_add(u64::from(b - b'0')))
                .flatten()
        })
    };
    let ns = digits(text.get(0..20)?)?;
    let step = u32::try_from(digits(text.get(21..26)?)?).ok()?;
    Some((ns, step))
}

fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

#[derive(Default)]
struct Shard {
    deliver: BTreeMap<u32, Histogram<u64>>,
    ack: BTreeMap<u32, Histogram<u64>>,
}

/// Per-step counters and histograms shared by every task.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    /// Messages sent, by step.
    pub sent: Vec<AtomicU64>,
    /// Deliveries (`new_message` received), by step.
    pub delivered: Vec<AtomicU64>,
    /// Acks received, by step.
    pub acked: Vec<AtomicU64>,
    /// Error answers to sends.
    pub send_errors: AtomicU64,
    /// Error answers to sends by code.
    error_codes: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections that ended while the run needed them.
    pub closed: AtomicU64,
    /// Of those, closed with 4009 (slow consumer).
    pub slow_consumers: AtomicU64,
    /// Connects (with authentication and join) that failed.
    pub connect_errors: AtomicU64,
    /// Frames that could not be decoded.
    pub decode_errors: AtomicU64,
}

/// One step's latency figures, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// `{"p50_ms":…, "p99_ms":…, "p999_ms":…, "max_ms":…}` (nulls when
    /// nothing was recorded).
    pub fn value(&self) -> serde_json::Value {
        let f = |us: u64| (self.count > 0).then(|| (ms(us) * 1000.0).round() / 1000.0);
        serde_json::json!({
            "count": self.count,
            "p50_ms": f(self.p50),
            "p99_ms": f(self.p99),
            "p999_ms": f(self.p999),
            "max_ms": f(self.max),
        })
    }

    /// `p50 / p99 / p999` in ms, for the table.
    pub fn human(&self) -> String {
        if self.count == 0 {
            return "-".to_owned();
        }
        format!(
            "{:.1} / {:.1} / {:.1}",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999)
        )
    }
}

/// Microseconds to milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            sent: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            send_errors: AtomicU64::new(0),
            error_codes: Mutex::default(),
            closed: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
        }
    }

    fn shard(&self, task: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[task % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A message of `step` sent at `sent` arrived at `now`.
    pub fn delivery(&self, task: usize, sent: u64, step: u32, now: u64) {
        let step = step as usize % MAX_STEPS;
        self.delivered[step].fetch_add(1, Ordering::Relaxed);
        let us = (now.saturating_sub(sent) / 1000).clamp(1, MAX_LATENCY_US);
        let mut shard = self.shard(task);
        let h = shard
            .deliver
            .entry(step as u32)
            .or_insert_with(new_histogram);
        h.saturating_record(us);
    }

    /// The ack of a message sent at `sent` in `step` arrived at `now`.
    pub fn ack(&self, task: usize, step: u32, sent: u64, now: u64) {
        let step = step as usize % MAX_STEPS;
        self.acked[step].fetch_add(1, Ordering::Relaxed);
        let us = (now.saturating_sub(sent) / 1000).clamp(1, MAX_LATENCY_US);
        let mut shard = self.shard(task);
        let h = shard.ack.entry(step as u32).or_insert_with(new_histogram);
        h.saturating_record(us);
    }

    /// Takes one step's histograms: (publish-to-deliver, publish-to-ack).
    pub fn take(&self, step: u32) -> (Percentiles, Percentiles) {
        let mut deliver = new_histogram();
        let mut ack = new_histogram();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(h) = shard.deliver.remove(&step) {
                let _ = deliver.add(&h);
            }
            if let Some(h) = shard.ack.remove(&step) {
                let _ = ack.add(&h);
            }
        }
        (Percentiles::of(&deliver), Percentiles::of(&ack))
    }

    /// Drops every histogram of steps before `step` (warm-ups).
    pub fn discard_before(&self, step: u32) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.deliver.retain(|s, _| *s >= step);
            shard.ack.retain(|s, _| *s >= step);
        }
    }

    /// An error answer to a send.
    pub fn send_error(&self, code: &'static str) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        *self
            .error_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    /// Error answers so far, by code.
    pub fn error_codes(&self) -> serde_json::Value {
        let codes = self
            .error_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        serde_json::json!(*codes)
    }

    /// Every error counter added up.
    pub fn errors(&self) -> ErrorCounts {
        ErrorCounts {
            send_errors: self.send_errors.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
        }
    }
}

/// The error counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub send_errors: u64,
    pub closed: u64,
    pub slow_consumers: u64,
    pub connect_errors: u64,
    pub decode_errors: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.send_errors + self.closed + self.connect_errors + self.decode_errors
    }

    pub fn since(&self, before: &ErrorCounts) -> ErrorCounts {
        ErrorCounts {
            send_errors: self.send_errors - before.send_errors,
            closed: self.closed - before.closed,
            slow_consumers: self.slow_consumers - before.slow_consumers,
            connect_errors: self.connect_errors - before.connect_errors,
            decode_errors: self.decode_errors - before.decode_errors,
        }
    }

    pub fn value(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total(),
            "send_errors": self.send_errors,
            "closed": self.closed,
            "slow_consumers": self.slow_consumers,
            "connect_errors": self.connect_errors,
            "decode_errors": self.decode_errors,
        })
    }
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time of a process, in seconds (`/proc/<pid>/stat`).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Kernel memory that sockets use, in KiB: slab caches (`Slab` of
/// `/proc/meminfo`) plus TCP buffer pages (`mem` of `/proc/net/sockstat`).
/// Machine-wide: a delta covers both ends of loopback connections.
pub fn kernel_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let slab: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = tcp.split_whitespace().collect();
    let pages: u64 = words
        .iter()
        .position(|w| *w == "mem")
        .and_then(|i| words.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(slab + pages * 4)
}

/// The tester's tokio runtime with `threads` workers, on core 1 with `pin`
/// (the server has core 0): pinned before the runtime exists, so that its
/// threads inherit the mask. `None` (said on stderr) when tokio cannot
/// start; a failed `taskset` only runs unpinned.
pub fn tester_runtime(name: &str, pin: bool, threads: usize) -> Option<tokio::runtime::Runtime> {
    if pin {
        let pinned = std::process::Command::new("taskset")
            .args(["-p", "-c", "1", &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
        if !pinned.is_ok_and(|s| s.success()) {
            eprintln!("{name}: taskset failed; running unpinned");
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("{name}: cannot start tokio: {e}");
            None
        }
    }
}
