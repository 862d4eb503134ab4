//! The overview page's figures: `GET /admin/overview`.
//!
//! Read from the server's own Prometheus registry (what `/metrics` serves,
//! rendered and parsed here), so the console shows exactly what Prometheus
//! scrapes. Counters are sent as totals and the page turns them into rates
//! between two polls. The two distributions (publish-to-ack latency and
//! persistence batch size) are histograms since start; their recent p99 and
//! mean are taken over the window since the previous poll of any console
//! (the last histogram seen is kept here, process-wide, as the registry
//! is). Needs a console session allowed `ReadServerStatus`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_actors::policy::authz::Action;
use courier_actors::telemetry::names as m;
use serde_json::{json, Value};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::Client;
use crate::http::App;

/// One parsed registry: each metric's value summed over its label sets,
/// and each histogram's cumulative buckets `(le, count)` the same way.
#[derive(Clone, Debug, Default)]
struct Registry {
    values: HashMap<String, f64>,
    buckets: HashMap<String, Vec<(f64, f64)>>,
}

impl Registry {
    /// Parses the Prometheus text format.
    fn parse(text: &str) -> Self {
        let mut registry = Registry::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if let Some(histogram) = name.strip_suffix("_bucket") {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .map(|v| v.trim_end_matches('"'))
                    .and_then(|v| match v {
                        "+Inf" => Some(f64::INFINITY),
                        v => v.parse().ok(),
                    });
                if let Some(le) = le {
                    let buckets = registry.buckets.entry(histogram.to_owned()).or_default();
                    match buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some((_, count)) => *count += value,
                        None => buckets.push((le, value)),
                    }
                }
            } else {
                *registry.values.entry(name.to_owned()).or_default() += value;
            }
        }
        for buckets in registry.buckets.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        registry
    }

    fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// The histogram's buckets minus `earlier`'s (the window between).
    fn window(&self, name: &str, earlier: Option<&Registry>) -> Vec<(f64, f64)> {
        let now = self.buckets.get(name).cloned().unwrap_or_default();
        let Some(before) = earlier.and_then(|e| e.buckets.get(name)) else {
            return now;
        };
        now.into_iter()
            .map(|(le, count)| {
                let old = before
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, (count - old).max(0.0))
            })
            .collect()
    }
}

/// The upper bound of the bucket that holds quantile `q` of cumulative
/// `buckets`; `None` when they hold nothing. An answer in the `+Inf`
/// bucket is the largest finite bound.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last().map(|(_, c)| *c).filter(|t| *t > 0.0)?;
    let rank = total * q;
    let largest = buckets
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .fold(0.0, f64::max);
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(le, _)| if le.is_finite() { *le } else { largest })
}

/// The mean of a histogram over the window: Δsum / Δcount.
fn windowed_mean(now: &Registry, earlier: Option<&Registry>, name: &str) -> Option<f64> {
    let get = |r: &Registry, suffix: &str| r.value(&format!("{name}{suffix}"));
    let (sum, count) = match earlier {
        Some(e) => (
            get(now, "_sum") - get(e, "_sum"),
            get(now, "_count") - get(e, "_count"),
        ),
        None => (get(now, "_sum"), get(now, "_count")),
    };
    (count > 0.0).then(|| sum / count)
}

/// The registry at the previous poll.
static LAST: Mutex<Option<Registry>> = Mutex::new(None);

/// `GET /admin/overview`: the figures as JSON.
pub(super) async fn figures(
    State(app): State<Arc<App>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let result: ApiResult<Json<Value>> = async {
        let checked = super::session::require(&app, &headers, &Method::GET, client).await?;
        if checked.caller.identity.must_change_password {
            return Err(ApiError::forbidden("password change required"));
        }
        if checked.caller.identity.must_enrol_second_factor {
            return Err(ApiError::forbidden("second factor enrolment required"));
        }
        checked
            .caller
            .authorize(&app, Action::ReadServerStatus, "admin.overview", json!({}))?;
        Ok(Json(read(&app)))
    }
    .await;
    super::with_csp(result.into_response())
}

/// The figures now.
fn read(app: &App) -> Value {
    let now = Registry::parse(&crate::telemetry::render_metrics());
    let earlier = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        last.replace(now.clone())
    };
    let ack = now.window(m::PUBLISH_ACK_SECONDS, earlier.as_ref());
    let audit_failures = now.value(m::AUDIT_APPEND_FAILURES);
    let audit_failures_before = earlier
        .as_ref()
        .map_or(0.0, |e| e.value(m::AUDIT_APPEND_FAILURES));
    json!({
        "at": courier_actors::now_ms(),
        "uptimeSeconds": app.started_at.elapsed().as_secs(),
        "connections": app.realtime.connection_count(),
        "usersOnline": now.value(m::USERS_ONLINE),
        "channelsActive": now.value(m::CHANNELS_ACTIVE),
        "messagesPublished": now.value(m::MESSAGES_PUBLISHED),
        "messagesDelivered": now.value(m::MESSAGES_DELIVERED),
        "publishAckP99Ms": quantile(&ack, 0.99).map(|s| s * 1000.0),
        "persistBatchSizeAvg": windowed_mean(&now, earlier.as_ref(), m::PERSIST_BATCH_SIZE),
        "persistQueueDepth": now.value(m::PERSIST_QUEUE),
        "rssBytes": now.value(m::PROCESS_RSS),
        "cpuSeconds": now.value(m::PROCESS_CPU),
        "openFds": now.value(m::PROCESS_FDS),
        "store": {
            "backend": app.store.backend(),
            "reachable": app.realtime.persistence.store_reachable(),
        },
        "audit": {
            "entries": now.value(m::AUDIT_ENTRIES),
            "appendFailures": audit_failures,
            // Healthy while no append failed since the previous poll.
            "healthy": audit_failures <= audit_failures_before,
        },
        "actorsHealthy": app.realtime.healthy(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE courier_connections gauge
courier_connections 3
courier_messages_published_total{kind=\"text\"} 5
courier_messages_published_total{kind=\"system\"} 2
courier_publish_ack_seconds_bucket{le=\"0.001\"} 90
courier_publish_ack_seconds_bucket{le=\"0.01\"} 99
courier_publish_ack_seconds_bucket{le=\"+Inf\"} 100
courier_publish_ack_seconds_sum 0.5
courier_publish_ack_seconds_count 100
";

    #[test]
    fn sums_label_sets_and_reads_histograms() {
        let r = Registry::parse(TEXT);
        assert_eq!(r.value("courier_connections"), 3.0);
        assert_eq!(r.value("courier_messages_published_total"), 7.0);
        let buckets = r.window("courier_publish_ack_seconds", None);
        assert_eq!(quantile(&buckets, 0.5), Some(0.001));
        assert_eq!(quantile(&buckets, 0.99), Some(0.01));
        assert_eq!(
            quantile(&buckets, 1.0),
            Some(0.01),
            "+Inf is the largest bound"
        );
        assert_eq!(
            windowed_mean(&r, None, "courier_publish_ack_seconds"),
            Some(0.005)
        );
    }

    #[test]
    fn the_window_is_what_came_since() {
        let before = Registry::parse(TEXT);
        let after = Registry::parse(&TEXT.replace("} 100", "} 110"));
        // Ten new observations, all above 10 ms.
        let window = after.window("courier_publish_ack_seconds", Some(&before));
        assert_eq!(quantile(&window, 0.99), Some(0.01));
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.99), None);
    }
}
