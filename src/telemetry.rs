//! Logs (tracing) and metrics (Prometheus).
//!
//! Logs are pretty in development and JSON when `log_format = "json"`.
//! Metrics go to one process-wide Prometheus recorder, installed once (tests
//! start several servers in one process and share it); `/metrics` renders it
//! after refreshing the process gauges from `/proc`.

use std::sync::OnceLock;

use courier_actors::telemetry::names as m;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Safe to call more than once (later
/// calls do nothing), so tests can call it too.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let sizes = [1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(m::PERSIST_BATCH_SIZE.into()), &sizes)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(m::AUDIT_BATCH_SIZE.into()), &sizes)
            })
            .expect("static bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program's):
        // then ours still renders, it just sees no events.
        let _ = metrics::set_global_recorder(recorder);
        m::describe();
        handle
    })
}

/// Renders `/metrics`, refreshing the process gauges first.
pub fn render_metrics() -> String {
    let handle = prometheus();
    record_process_metrics();
    handle.run_upkeep();
    handle.render()
}

/// Process RSS, CPU seconds and open fds, read from `/proc/self` (Linux).
fn record_process_metrics() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        {
            metrics::gauge!(m::PROCESS_RSS).set(kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line, in clock ticks.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (ticks(11), ticks(12)) {
                metrics::gauge!(m::PROCESS_CPU).set((u + s) / clock_ticks_per_second());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(m::PROCESS_FDS).set(dir.count() as f64);
    }
}

/// `sysconf(_SC_CLK_TCK)` is 100 on every Linux this runs on; reading it
/// would need libc (unsafe), so the constant is used.
fn clock_ticks_per_second() -> f64 {
    100.0
}
