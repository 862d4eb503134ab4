//! Logs (tracing) and metrics (Prometheus).
//!
//! Logs are pretty in development and JSON when `log_format = "json"`.
//! What is logged is `RUST_LOG` when it is set, else `log_level`
//! (`COURIER_LOG_LEVEL`, default `info`); either way the dependencies that
//! would print WebSocket frames, HTTP bodies, TLS records or SQL are capped
//! at `info` ([`CAPPED_TARGETS`]), so no message text, token or password
//! reaches the log at any level (`tests/log_hygiene.rs` runs the binary at
//! `trace` to prove it). A filter that cannot be parsed falls back to `info`
//! with a warning; the configuration check refuses a bad `log_level` first.
//!
//! Metrics go to one process-wide Prometheus recorder, installed once (tests
//! start several servers in one process and share it), with every family
//! exported at zero from the start; `/metrics` renders it after refreshing
//! the process gauges from `/proc` and the store's figures
//! ([`record_store`]).

use std::sync::OnceLock;

use courier_actors::durable::store::PoolStats;
use courier_actors::telemetry::names as m;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Targets capped at `info` whatever the filter asks: at `debug` and
/// `trace` they print what crosses the wire or reaches the database
/// (WebSocket frames and payloads, HTTP headers and bodies, TLS records,
/// SQL statements, NATS messages between nodes, requests to the webhook and
/// object stores), which carry message text, tokens and passwords.
pub const CAPPED_TARGETS: [&str; 14] = [
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio_rustls",
    "sqlx",
    "async_nats",
    "reqwest",
    "object_store",
    "tower_http",
    "axum",
    "mio",
];

/// Levels, quietest first (`off` logs nothing).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
/// Where `info` stands in [`LEVELS`]: the most a capped target may log.
const INFO: usize = 3;

/// A level's place in [`LEVELS`].
fn level_rank(level: &str) -> Option<usize> {
    let level = level.trim().to_ascii_lowercase();
    LEVELS.iter().position(|l| *l == level)
}

/// The filter to log with: `RUST_LOG` when set and not blank, else
/// `log_level`. Each capped target logs at the filter's default level or
/// `info`, whichever is quieter (so `RUST_LOG=error` keeps SQL notices out
/// too), or at the level a directive of its own asks when that is no more
/// than `info`; its directives asking more (or a bare target, which means
/// `trace`), and span-field directives (`[span{field}]=trace`, which would
/// reach the capped targets' events inside such spans), are dropped. Also
/// the filter's text, and the directives dropped (to warn about once
/// logging runs).
pub fn log_filter(log_level: &str) -> (EnvFilter, String, Vec<String>) {
    let asked = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| log_level.to_owned());
    let (text, mut dropped) = filter_text(&asked);
    match EnvFilter::try_new(&text) {
        Ok(filter) => (filter, text, dropped),
        Err(_) => {
            dropped.push(format!("{asked} (unreadable: logging at info)"));
            let fallback = std::iter::once("info".to_owned())
                .chain(CAPPED_TARGETS.iter().map(|cap| format!("{cap}=info")))
                .collect::<Vec<_>>()
                .join(",");
            (EnvFilter::new(&fallback), fallback, dropped)
        }
    }
}

/// [`log_filter`]'s text for the filter `asked`, and the directives dropped.
fn filter_text(asked: &str) -> (String, Vec<String>) {
    let capped = |target: &str| {
        CAPPED_TARGETS
            .iter()
            .any(|cap| target == *cap || target.starts_with(&format!("{cap}::")))
    };
    // A filter without a bare level logs errors of unnamed targets.
    let mut default = level_rank("error").unwrap_or(1);
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut set_caps = Vec::new();
    for directive in asked.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (target, level_rank(level)),
            None => match level_rank(directive) {
                Some(rank) => {
                    default = rank;
                    kept.push(directive.to_owned());
                    continue;
                }
                None => (directive, None),
            },
        };
        if directive.contains('[') {
            dropped.push(directive.to_owned());
        } else if capped(target) {
            match level {
                Some(rank) if rank <= INFO => {
                    set_caps.push(target.to_owned());
                    kept.push(directive.to_owned());
                }
                _ => dropped.push(directive.to_owned()),
            }
        } else {
            kept.push(directive.to_owned());
        }
    }
    let cap_level = LEVELS[default.min(INFO)];
    kept.extend(
        CAPPED_TARGETS
            .iter()
            .filter(|cap| !set_caps.iter().any(|t| t == *cap))
            .map(|cap| format!("{cap}={cap_level}")),
    );
    (kept.join(","), dropped)
}

/// Installs the global tracing subscriber with [`log_filter`]`(log_level)`.
/// Safe to call more than once (later calls do nothing), so tests can call
/// it too.
pub fn init_logging(format: LogFormat, log_level: &str) {
    let (filter, _, dropped) = log_filter(log_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    for directive in dropped {
        tracing::warn!(
            %directive,
            "log filter directive ignored: it would log frames, bodies or SQL (docs/operations.md)"
        );
    }
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
        m::export_from_start();
        handle
    })
}

/// Records the store's figures for the next render: its connections and
/// whether it answers the readiness probe (`courier_store_up`). Called by
/// `/metrics` before [`render_metrics`], so a scrape sees them as of now.
pub fn record_store(pool: PoolStats, reachable: bool) {
    pool.record();
    metrics::gauge!(m::STORE_UP).set(if reachable { 1.0 } else { 0.0 });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(text: &str) -> Vec<&str> {
        text.split(',').collect()
    }

    #[test]
    fn capped_targets_log_no_more_than_info_or_the_default() {
        let (text, dropped) = filter_text("trace");
        assert!(directives(&text).contains(&"sqlx=info"), "{text}");
        assert!(dropped.is_empty());
        // A quieter default quiets them too: RUST_LOG=error keeps SQL
        // notices (sqlx logs them at info) out of a command's output.
        let (text, _) = filter_text("error");
        assert!(directives(&text).contains(&"sqlx=error"), "{text}");
        assert!(!text.contains("=info"), "{text}");
        let (text, _) = filter_text("courier=debug");
        assert!(directives(&text).contains(&"hyper=error"), "{text}");
    }

    #[test]
    fn a_capped_target_may_be_quieter_never_louder() {
        let (text, dropped) = filter_text("debug,sqlx=warn,hyper=trace,h2,[req{body}]=trace");
        let d = directives(&text);
        assert!(
            d.contains(&"sqlx=warn") && !d.contains(&"sqlx=info"),
            "{text}"
        );
        assert!(d.contains(&"hyper=info"), "{text}");
        assert!(d.contains(&"h2=info"), "{text}");
        assert_eq!(dropped, ["hyper=trace", "h2", "[req{body}]=trace"]);
        assert!(EnvFilter::try_new(&text).is_ok(), "{text}");
    }
}
