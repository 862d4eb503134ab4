//! The audit checkpoint webhook: a sink for signed checkpoints that is not
//! this machine's disk.
//!
//! The audit actor hands each checkpoint it signs to a bounded queue
//! ([`AuditConfig::checkpoint_sink`](courier_actors::audit::actor::AuditConfig));
//! one task here POSTs them, in order, as JSON to
//! `audit_checkpoint_webhook`, retrying each with backoff until the receiver
//! answers 2xx. Nothing here ever holds up the chain: when the receiver is
//! down long enough for the queue to fill, the audit actor drops (and
//! counts) the checkpoints that find it full. Every failed attempt is
//! logged and counted in `courier_audit_checkpoint_webhook_failures_total`.
//!
//! With `audit_checkpoint_webhook_secret` set, each request carries
//! `Authorization: Bearer <secret>` and `X-Courier-Signature:
//! sha256=<hex HMAC-SHA256 of the body under the secret>`.
//!
//! [`fetch_checkpoints`] is the other direction, for `courier audit verify
//! --checkpoints-url`: a GET answering the checkpoints a receiver kept.

use std::time::Duration;

use courier_actors::durable::store::Checkpoint;
use courier_actors::telemetry::names as m;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Secret;

/// The header that carries the HMAC of the body.
pub const SIGNATURE_HEADER: &str = "x-courier-signature";

/// How long one POST or GET may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff between attempts at one checkpoint: doubling from the first to
/// the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What went wrong talking to a checkpoint receiver.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an `http://` or `https://` URL.
    #[error("webhook URL {0:?}: must be an http:// or https:// URL")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("checkpoint webhook client: {0}")]
    Client(String),
    /// The request failed or was refused.
    #[error("checkpoint receiver {url}: {problem}")]
    Request {
        /// Where.
        url: String,
        /// What happened.
        problem: String,
    },
}

/// The running delivery task.
pub struct WebhookTask {
    finish: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl WebhookTask {
    /// Delivers what is still queued (the final checkpoint of a graceful
    /// stop among it) for up to `within`, then stops.
    pub async fn finish(self, within: Duration) {
        let _ = self.finish.send(());
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::error!(
                "the checkpoint webhook did not take every queued checkpoint before the stop"
            );
            task.abort();
        }
    }
}

/// Starts delivering to `url`; returns the queue to give the audit actor.
pub fn spawn(
    url: &str,
    secret: Option<Secret>,
    queue: usize,
) -> Result<(mpsc::Sender<Checkpoint>, WebhookTask), WebhookError> {
    let hook = Hook::new(url, secret)?;
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (finish, finishing) = oneshot::channel();
    let task = tokio::spawn(deliver_all(hook, rx, finishing));
    Ok((tx, WebhookTask { finish, task }))
}

/// `GET url`: the checkpoints a receiver kept, as a JSON array of
/// checkpoints (or an object with a `checkpoints` array). `secret`, when
/// given, goes as a bearer token.
pub async fn fetch_checkpoints(
    url: &str,
    secret: Option<&Secret>,
) -> Result<Vec<Checkpoint>, WebhookError> {
    let hook = Hook::new(url, secret.cloned())?;
    let failed = |problem: String| WebhookError::Request {
        url: url.to_owned(),
        problem,
    };
    let mut request = hook.client.get(url);
    if let Some(secret) = &hook.secret {
        request = request.bearer_auth(secret.expose());
    }
    let response = request.send().await.map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("answered {status}")));
    }
    let body = response.bytes().await.map_err(|e| failed(e.to_string()))?;
    parse_checkpoint_list(&body).map_err(failed)
}

/// A list of checkpoints as a receiver answers it, or as a file exported
/// elsewhere holds it: a JSON array, an object `{"checkpoints": [...]}`, or
/// one checkpoint per line.
pub fn parse_checkpoint_list(bytes: &[u8]) -> Result<Vec<Checkpoint>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Bare(Vec<Checkpoint>),
        Wrapped { checkpoints: Vec<Checkpoint> },
    }
    match serde_json::from_slice::<List>(bytes) {
        Ok(List::Bare(list) | List::Wrapped { checkpoints: list }) => Ok(list),
        Err(whole) => {
            let mut list = Vec::new();
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let checkpoint = serde_json::from_slice(line).map_err(|e| {
                    format!(
                        "not a list of checkpoints ({whole}), nor one per line (line {}: {e})",
                        i + 1
                    )
                })?;
                list.push(checkpoint);
            }
            Ok(list)
        }
    }
}

/// Where and how to deliver: one receiver of signed JSON POSTs (the
/// checkpoint webhook here; the password reset webhook,
/// [`crate::auth::reset`], too).
pub(crate) struct Hook {
    url: String,
    secret: Option<Secret>,
    client: reqwest::Client,
}

impl Hook {
    pub(crate) fn new(url: &str, secret: Option<Secret>) -> Result<Hook, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::Url(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(WebhookError::Url(url.to_owned()));
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Hook {
            url: url.to_owned(),
            secret,
            client,
        })
    }

    /// One POST of `body`; `Err` says why it did not land.
    pub(crate) async fn post(&self, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request
                .bearer_auth(secret.expose())
                .header(SIGNATURE_HEADER, signature(secret, body));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers every queued checkpoint in order until the queue closes or, once
/// told to finish, is empty.
async fn deliver_all(
    hook: Hook,
    mut rx: mpsc::Receiver<Checkpoint>,
    mut finish: oneshot::Receiver<()>,
) {
    let mut finishing = false;
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = &mut finish, if !finishing => {
                finishing = true;
                // What is queued is still delivered; then `recv` ends.
                rx.close();
                continue;
            }
        };
        let Some(checkpoint) = next else { return };
        let body = match serde_json::to_vec(&checkpoint) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a checkpoint");
                continue;
            }
        };
        let mut backoff = BACKOFF_FIRST;
        loop {
            match hook.post(&body).await {
                Ok(()) => {
                    metrics::counter!(m::AUDIT_CHECKPOINT_WEBHOOK_SENT).increment(1);
                    break;
                }
                Err(problem) => {
                    metrics::counter!(m::AUDIT_CHECKPOINT_WEBHOOK_FAILURES).increment(1);
                    tracing::warn!(
                        seq = checkpoint.seq, url = %hook.url, %problem, retry_in_ms = backoff.as_millis() as u64,
                        "the checkpoint webhook did not take a checkpoint; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            head_hash: "ab".repeat(32),
            time: 7,
            key_id: "mk1".into(),
            signature: "cd".repeat(64),
        }
    }

    #[test]
    fn lists_parse_as_an_array_an_object_or_lines() {
        let list = vec![checkpoint(1), checkpoint(2)];
        let array = serde_json::to_vec(&list).expect("json");
        assert_eq!(parse_checkpoint_list(&array).expect("array"), list);
        let object = serde_json::to_vec(&serde_json::json!({"checkpoints": list})).expect("json");
        assert_eq!(parse_checkpoint_list(&object).expect("object"), list);
        let lines: Vec<u8> = list
            .iter()
            .flat_map(|c| {
                let mut line = serde_json::to_vec(c).expect("json");
                line.push(b'\n');
                line
            })
            .collect();
        assert_eq!(parse_checkpoint_list(&lines).expect("lines"), list);
        let err = parse_checkpoint_list(b"{\"seq\": 1}\nnope").expect_err("bad");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn only_http_urls_are_taken() {
        for bad in ["ftp://x/y", "not a url", "file:///etc/passwd"] {
            assert!(Hook::new(bad, None).is_err(), "{bad}");
        }
        assert!(Hook::new("https://sink.example.org/cp", None).is_ok());
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_body() {
        // RFC 4231, test case 2.
        let secret = Secret::new("Jefe");
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
