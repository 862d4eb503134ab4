//! The audit chain's promises across a crash and off the machine, on the
//! real `courier` binary ([`support::process`]), both backends.
//!
//! | promise | test |
//! |---|---|
//! | a burst of role changes and logins (good and bad passwords), SIGKILL right after the last answer: every answered event is in the chain, `courier audit verify` is ok, before and after a restart | `answered_events_survive_sigkill::{sqlite,postgres}` |
//! | every signed checkpoint is POSTed to the webhook (bearer and HMAC headers); `audit verify --checkpoints-url` / `--checkpoints-file` is ok on the untouched chain, exits 2 naming the first bad seq after a rolled-back tail (which the store and local file alone miss) and after an edited row; `--public-key` verifies with the public key alone | `checkpoints_leave_the_machine::{sqlite,postgres}` |

#[macro_use]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use courier_actors::audit::chain::VerifyReport;
use courier_actors::durable::store::{self, AuditRecord};
use serde_json::{json, Value};
use sqlx::{Connection, Executor};
use support::process::{Broker, BrokerSpec};
use support::server::{eventually, Backend};

both_backends!(
    answered_events_survive_sigkill,
    checkpoints_leave_the_machine
);

const ADMIN: &str = "root";
const PASSWORD: &str = "correct horse battery staple";
/// Users in the burst: each gets a role change, a login and a failed login.
const USERS: usize = 12;

/// A database for `backend` with the broker's data directory `dir`; `None`
/// when PostgreSQL is unreachable outside CI (it panics in CI).
async fn database(backend: Backend, dir: &Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("courier.db").display())),
        Backend::Postgres => support::fresh_postgres_url().await,
    }
}

async fn release(backend: Backend, url: &str) {
    if backend == Backend::Postgres {
        support::release_postgres_db(url).await;
    }
}

/// A broker with an initial super admin, appending audit batches after a
/// long gather delay: without durable appends, the last answered events of
/// a burst are still waiting when SIGKILL lands.
fn spec(dir: &Path, url: &str) -> BrokerSpec {
    BrokerSpec::new(dir, url)
        .with("COURIER_INITIAL_ADMIN_USERNAME", ADMIN)
        .with("COURIER_INITIAL_ADMIN_PASSWORD", PASSWORD)
        .with("COURIER_AUDIT_BATCH_DELAY_US", 100_000)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// `POST /api/auth/login`: the status and body.
async fn login(
    http: &reqwest::Client,
    broker: &Broker,
    user: &str,
    password: &str,
) -> (u16, Value) {
    let response = http
        .post(format!("{}/api/auth/login", broker.http_url()))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("login answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin_token(http: &reqwest::Client, broker: &Broker) -> String {
    let (status, body) = login(http, broker, ADMIN, PASSWORD).await;
    assert_eq!(status, 200, "admin login: {body}");
    body["token"].as_str().expect("a token").to_owned()
}

/// Creates `user<i>` for each `i`; returns their ids.
async fn create_users(
    http: &reqwest::Client,
    broker: &Broker,
    token: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let response = http
            .post(format!("{}/api/users", broker.http_url()))
            .bearer_auth(token)
            .json(&json!({"username": format!("user{i}"), "password": PASSWORD}))
            .send()
            .await
            .expect("create answers");
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().await.expect("json");
        ids.push(body["user"]["id"].as_str().expect("an id").to_owned());
    }
    ids
}

/// The whole chain, read straight from the store.
async fn chain(url: &str) -> Vec<AuditRecord> {
    let store = store::connect(url).await.expect("open the store");
    store
        .audit_range(0, 1_000_000)
        .await
        .expect("read the chain")
}

/// What an answered request promises the chain holds.
#[derive(Debug)]
enum Answered {
    RoleChange { user_id: String },
    Login { user_id: String },
    LoginFailed { username: String },
}

impl Answered {
    fn found_in(&self, chain: &[AuditRecord]) -> bool {
        chain.iter().any(|r| match self {
            Answered::RoleChange { user_id } => {
                r.action == "user.update"
                    && r.details["userId"] == json!(user_id)
                    && r.details["role"] == json!("moderator")
            }
            Answered::Login { user_id } => {
                r.action == "auth.login" && r.actor_id.is_some_and(|a| a.to_string() == *user_id)
            }
            Answered::LoginFailed { username } => {
                r.action == "auth.login_failed" && r.details["username"] == json!(username)
            }
        })
    }
}

async fn answered_events_survive_sigkill(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let Some(url) = database(backend, dir.path()).await else {
        return;
    };
    let spec = spec(dir.path(), &url);
    let broker = spec.start().await;
    let http = http();
    let token = admin_token(&http, &broker).await;
    let ids = create_users(&http, &broker, &token, USERS).await;

    // The burst: every request at once; each answer is a promise.
    let base = broker.http_url();
    let mut requests = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (client, url, token, user_id) = (http.clone(), base.clone(), token.clone(), id.clone());
        requests.push(tokio::spawn(async move {
            let response = client
                .put(format!("{url}/api/users/{user_id}"))
                .bearer_auth(&token)
                .json(&json!({"role": "moderator"}))
                .send()
                .await
                .expect("update answers");
            (response.status() == StatusCode::OK).then_some(Answered::RoleChange { user_id })
        }));
        for password in [PASSWORD, "not the password at all"] {
            let (http, base, id) = (http.clone(), base.clone(), id.clone());
            let username = format!("user{i}");
            requests.push(tokio::spawn(async move {
                let response = http
                    .post(format!("{base}/api/auth/login"))
                    .json(&json!({"username": username, "password": password}))
                    .send()
                    .await
                    .expect("login answers");
                match response.status().as_u16() {
                    200 => Some(Answered::Login { user_id: id }),
                    401 => Some(Answered::LoginFailed { username }),
                    _ => None,
                }
            }));
        }
    }
    let mut answered = Vec::new();
    for request in requests {
        answered.extend(request.await.expect("request task"));
    }
    broker.kill().await;
    assert_eq!(
        answered.len(),
        USERS * 3,
        "every request answered as expected"
    );

    let (report, status) = spec.audit_verify().await;
    assert!(
        report.ok && status.success(),
        "after SIGKILL: {report:?} ({status})"
    );
    let entries = chain(&url).await;
    let missing: Vec<&Answered> = answered.iter().filter(|a| !a.found_in(&entries)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered events are not in the chain after SIGKILL: {missing:?}",
        missing.len(),
        answered.len()
    );

    // A restart continues the chain where the crash left it.
    let broker = spec.start().await;
    admin_token(&http, &broker).await;
    let (status, _) = broker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "courier exits 0 on SIGTERM: {status}");
    let (after, status) = spec.audit_verify().await;
    assert!(
        after.ok && status.success(),
        "after the restart: {after:?} ({status})"
    );
    assert!(after.entries > report.entries);
    release(backend, &url).await;
}

// ---- checkpoints off the machine -------------------------------------------

const WEBHOOK_SECRET: &str = "webhook-secret-for-the-test";

/// What the receiver kept, and the requests it refused.
#[derive(Default)]
struct Received {
    checkpoints: Vec<Value>,
    refused: usize,
}

type Receiver = Arc<Mutex<Received>>;

/// Keeps a checkpoint when the bearer token and the HMAC are right.
async fn receive(
    State(kept): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let secret = courier::config::Secret::new(WEBHOOK_SECRET);
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    let signature = headers
        .get(courier::audit_webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let expected = courier::audit_webhook::signature(&secret, &body);
    let mut kept = kept.lock().expect("lock");
    if bearer != Some(&format!("Bearer {WEBHOOK_SECRET}")) || signature != Some(expected.as_str()) {
        kept.refused += 1;
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice(&body) {
        Ok(checkpoint) => {
            kept.checkpoints.push(checkpoint);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn list(State(kept): State<Receiver>) -> axum::Json<Value> {
    axum::Json(Value::Array(kept.lock().expect("lock").checkpoints.clone()))
}

/// A checkpoint receiver on a port of its own; returns its URL.
async fn start_receiver(kept: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/checkpoints", post(receive).get(list))
        .with_state(kept);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/checkpoints")
}

/// `courier <args>`: the report printed, and the exit code.
async fn verify(spec: &BrokerSpec, args: &[&str]) -> (Option<VerifyReport>, Option<i32>, String) {
    let out = spec.cli(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<VerifyReport>(l.trim()).ok());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (report, out.status.code(), format!("{stdout}{stderr}"))
}

/// Runs SQL on the broker's database while it is stopped.
async fn tamper(backend: Backend, url: &str, sql: &str) {
    match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url)
                .await
                .expect("open SQLite");
            conn.execute(sql).await.expect("tamper");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .expect("open PostgreSQL");
            conn.execute(sql).await.expect("tamper");
        }
    }
}

async fn checkpoints_leave_the_machine(backend: Backend) {
    let dir = tempfile::tempdir().expect("tmp");
    let Some(url) = database(backend, dir.path()).await else {
        return;
    };
    let kept = Receiver::default();
    let hook = start_receiver(kept.clone()).await;
    let spec = spec(dir.path(), &url)
        .with("COURIER_AUDIT_BATCH_DELAY_US", 1_000)
        .with("COURIER_AUDIT_CHECKPOINT_EVERY", 4)
        .with("COURIER_AUDIT_CHECKPOINT_WEBHOOK", &hook)
        .with("COURIER_AUDIT_CHECKPOINT_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let broker = spec.start().await;
    let http = http();
    let token = admin_token(&http, &broker).await;
    create_users(&http, &broker, &token, 8).await;
    let (status, _) = broker.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "courier exits 0 on SIGTERM: {status}");

    // The graceful stop's final checkpoint signs the head: it reached the
    // receiver before the broker exited.
    let head = chain(&url).await.last().map(|r| r.seq).expect("entries");
    let max_seq = |kept: &Receiver| {
        let kept = kept.lock().expect("lock");
        kept.checkpoints
            .iter()
            .filter_map(|c| c["seq"].as_u64())
            .max()
    };
    assert!(
        eventually(Duration::from_secs(5), async || max_seq(&kept)
            == Some(head))
        .await,
        "the receiver has the head checkpoint {head}: it has {:?}",
        max_seq(&kept)
    );
    let received = kept.lock().expect("lock").checkpoints.len();
    assert!(received >= 3, "a checkpoint every 4 entries: {received}");
    assert_eq!(kept.lock().expect("lock").refused, 0);

    let with_url = ["audit", "verify", "--checkpoints-url", hook.as_str()];
    let (report, code, out) = verify(&spec, &with_url).await;
    assert_eq!(code, Some(0), "untouched, against the receiver: {out}");
    assert_eq!(report.expect("a report").entries, head);

    // The public key alone: a data directory without any secret.
    let out = spec.cli(&["audit", "public-key"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public_key = String::from_utf8_lossy(&out.stdout)
        .trim()
        .replace('\n', ",");
    assert!(public_key.starts_with("mk1:"), "{public_key}");
    let auditor_dir = tempfile::tempdir().expect("tmp");
    let auditor = BrokerSpec::new(auditor_dir.path(), &url);
    let public_only = [with_url.as_slice(), &["--public-key", public_key.as_str()]].concat();
    let (report, code, out) = verify(&auditor, &public_only).await;
    assert_eq!(code, Some(0), "with the public key only: {out}");
    assert!(report.expect("a report").ok);
    for secret in ["keyring", "jwt_secret"] {
        assert!(
            !auditor_dir.path().join(secret).exists(),
            "verification with the public key read or made {secret}"
        );
    }

    // The database rolled back: its tail and its own checkpoints are gone,
    // and so is the local checkpoint file. Only the receiver remembers.
    let cut = head - 5;
    tamper(
        backend,
        &url,
        &format!("DELETE FROM audit_logs WHERE seq > {cut}"),
    )
    .await;
    tamper(backend, &url, "DELETE FROM audit_checkpoints").await;
    std::fs::remove_file(dir.path().join("audit-checkpoints.jsonl")).expect("remove the file");
    let (report, code, out) = verify(&spec, &["audit", "verify"]).await;
    assert_eq!(code, Some(0), "the store alone cannot tell: {out}");
    assert!(report.expect("a report").ok);
    let (report, code, out) = verify(&spec, &with_url).await;
    assert_eq!(code, Some(2), "the receiver's checkpoints tell: {out}");
    assert_eq!(report.expect("a report").first_bad_seq, Some(cut + 1));
    let (report, code, out) = verify(&auditor, &public_only).await;
    assert_eq!(code, Some(2), "and with the public key only: {out}");
    assert_eq!(report.expect("a report").first_bad_seq, Some(cut + 1));

    // The receiver's list exported to a file tells the same.
    let exported = dir.path().join("exported.json");
    let list = kept.lock().expect("lock").checkpoints.clone();
    std::fs::write(&exported, serde_json::to_vec(&list).expect("json")).expect("export");
    let exported = exported.display().to_string();
    let (report, code, out) = verify(
        &spec,
        &["audit", "verify", "--checkpoints-file", exported.as_str()],
    )
    .await;
    assert_eq!(code, Some(2), "from the exported file: {out}");
    assert_eq!(report.expect("a report").first_bad_seq, Some(cut + 1));

    // An edited row is named by its own seq.
    tamper(
        backend,
        &url,
        "UPDATE audit_logs SET action = 'nothing.to.see' WHERE seq = 3",
    )
    .await;
    let (report, code, out) = verify(&spec, &with_url).await;
    assert_eq!(code, Some(2), "an edited row: {out}");
    assert_eq!(report.expect("a report").first_bad_seq, Some(3));
    release(backend, &url).await;
}
