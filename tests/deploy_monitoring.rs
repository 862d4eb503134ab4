//! The monitoring shipped in `deploy/` is built on what the server exports:
//! every metric name used by an expression of the Grafana dashboard
//! (`deploy/grafana/courier-dashboard.json`, its panels and its variables)
//! and of the alert rules (`deploy/prometheus/alerts.yml`) must be a family
//! a live `/metrics` exposes, on both stores; the server runs with TLS so
//! that the certificate expiry gauge is there, and it must equal the
//! certificate's `notAfter`. Then `promtool` checks the rules, runs their
//! unit tests (`deploy/prometheus/alerts.test.yml`) and checks
//! `deploy/prometheus.yml`, which loads them. Without promtool the promtool
//! part fails under `CI=true` and is skipped with a message otherwise.

#[path = "support/rest.rs"]
mod rest;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rest::{Backend, Rest};

/// Series Prometheus makes itself, not read from `/metrics`.
const SYNTHETIC: [&str; 1] = ["up"];

/// The name the test certificate is issued for.
const HOST: &str = "courier.test";

/// The test certificate's `notAfter`: 2036-01-02T00:00:00Z.
const NOT_AFTER: i64 = 2_082_844_800;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// PromQL words that are no metrics and may stand before something other
/// than `(`: binary operators, modifiers, and the aggregations, which may
/// take their `by (...)` first (`sum by (le) (...)`).
const KEYWORDS: [&str; 21] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// The metric names an expression uses: identifiers outside label matchers
/// (`{...}`), ranges (`[...]`) and strings, that are not functions or
/// aggregations (followed by `(`), grouping labels (`by (...)`, `on (...)`,
/// ...), keywords, numbers or Grafana variables (`$job`,
/// `$__rate_interval`).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut depth_braces = 0;
    let mut depth_brackets = 0;
    // After `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`:
    // the parenthesised list that follows holds label names.
    let mut label_list_next = false;
    let mut in_label_list = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => depth_brackets += 1,
            ']' => depth_brackets -= 1,
            '(' if label_list_next => {
                label_list_next = false;
                in_label_list = 1;
            }
            '(' if in_label_list > 0 => in_label_list += 1,
            ')' if in_label_list > 0 => in_label_list -= 1,
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number (1e3, 0.05, 14) or a duration (5m): skip it whole.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    label_list_next = next == Some(&'(');
                } else if depth_braces == 0
                    && depth_brackets == 0
                    && in_label_list == 0
                    && next != Some(&'(')
                    && !KEYWORDS.contains(&word.as_str())
                {
                    names.push(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// Every `expr` of the dashboard's panels and the queries of its
/// variables (`label_values(metric, label)`).
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/grafana/courier-dashboard.json"))
        .expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(value: &serde_json::Value, exprs: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => exprs.push(e.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(e)) = q.get("query") {
                                exprs.push(label_values_metric(e));
                            }
                        }
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    exprs
}

/// `label_values(courier_connections{job="x"}, instance)` -> the selector.
fn label_values_metric(query: &str) -> String {
    query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
        .map(|(selector, _)| selector.to_owned())
        .unwrap_or_else(|| query.to_owned())
}

/// Every `expr:` of the alert rules, block scalars (`expr: |`) included.
fn alert_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("read the rules");
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some((indent, value)) = line.split_once("expr:") {
            if !indent.trim().is_empty() && indent.trim() != "-" {
                i += 1;
                continue;
            }
            let value = value.trim();
            if value == "|" || value == ">" {
                let mut block = String::new();
                let base = indent.len();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > base)
                {
                    block.push_str(lines[i].trim());
                    block.push(' ');
                    i += 1;
                }
                exprs.push(block);
                continue;
            }
            exprs.push(value.to_owned());
        }
        i += 1;
    }
    exprs
}

/// The families `/metrics` exposes: names of `# TYPE` lines and of samples.
fn exposed(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Whether `name` is exposed, a histogram's `_bucket`/`_sum`/`_count` by
/// its family.
fn is_exposed(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|family| families.contains(family))
        })
}

/// A CA and a server certificate for [`HOST`] and 127.0.0.1 expiring at
/// [`NOT_AFTER`], in `dir`; the CA's PEM.
fn make_certificates(dir: &Path) -> String {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Courier monitoring test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let mut params = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params.not_after = rcgen::date_time_ymd(2036, 1, 2);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
    ca.pem()
}

fn https_client(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .resolve(HOST, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn every_name_is_exported(backend: Backend) {
    let certs = tempfile::tempdir().expect("dir");
    let ca = make_certificates(certs.path());
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let Some(rest) = Rest::start_with(backend, move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await
    else {
        return;
    };
    let addr = rest.server.addr;
    let http = https_client(&ca, addr);
    let base = format!("https://{HOST}:{}", addr.port());
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape /metrics over TLS")
        .text()
        .await
        .expect("metrics body");
    let families = exposed(&metrics);

    let mut used = BTreeSet::new();
    for (source, exprs) in [
        ("deploy/grafana/courier-dashboard.json", dashboard_exprs()),
        ("deploy/prometheus/alerts.yml", alert_exprs()),
    ] {
        assert!(exprs.len() >= 10, "{source}: too few expressions found");
        for expr in exprs {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "{source}: no metric in {expr:?}");
            for name in names {
                used.insert((name, source));
            }
        }
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !SYNTHETIC.contains(&name.as_str()) && !is_exposed(name, &families))
        .map(|(name, source)| format!("{name} (in {source})"))
        .collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alerts but not exposed by /metrics:\n  {}",
        missing.join("\n  ")
    );
    for name in [
        "courier_db_pool_connections",
        "courier_store_up",
        "courier_tls_cert_expiry_timestamp_seconds",
        "courier_audit_append_failures_total",
        "courier_slow_consumer_disconnects_total",
    ] {
        assert!(
            used.iter().any(|(n, _)| n == name),
            "{name} is watched by neither the dashboard nor the alerts"
        );
    }
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("courier_tls_cert_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the expiry gauge");
    assert_eq!(
        expiry as i64, NOT_AFTER,
        "the served certificate's notAfter"
    );
    rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_is_exported_sqlite() {
    every_name_is_exported(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_is_exported_postgres() {
    every_name_is_exported(Backend::Postgres).await;
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, instance) (rate(courier_x_seconds_bucket{job=~"$job", code="a b"}[$__rate_interval])))"#
        ),
        ["courier_x_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum by (instance, job) (courier_a{state=\"in_use\"}) >= on (instance) group_left (x) courier_b - time() < 14 * 86400 and up == 0"
        ),
        ["courier_a", "courier_b", "up"]
    );
    assert_eq!(
        metric_names("rate(courier_c[5m]) * 1e3 offset 1h"),
        ["courier_c"]
    );
    let families =
        exposed("# TYPE courier_h histogram\ncourier_h_bucket{le=\"1\"} 0\ncourier_g 1\n");
    assert!(is_exposed("courier_h_count", &families));
    assert!(is_exposed("courier_g", &families));
    assert!(!is_exposed("courier_typo", &families));
}

/// Runs promtool with `args` in `deploy/`; `None` when promtool is missing
/// outside CI.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(repo("deploy"))
        .output()
    {
        Ok(output) => Some(output),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is needed under CI=true (Debian's prometheus package): {e}")
        }
        Err(e) => {
            eprintln!("skipping the promtool checks: promtool not found ({e}); apt-get install prometheus");
            None
        }
    }
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    for args in [
        &["check", "rules", "prometheus/alerts.yml"][..],
        &["test", "rules", "prometheus/alerts.test.yml"][..],
        &["check", "config", "prometheus.yml"][..],
        &["check", "config", "prometheus.cluster.yml"][..],
    ] {
        let Some(output) = promtool(args) else {
            return;
        };
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
