//! The account lifecycle and password reset (issue 37), end to end on a
//! real server, on both stores: disabling an account closes its live
//! WebSocket with 4003 and refuses its refresh token and its logins;
//! `lastLoginAt` follows REST logins and console sign-ins; a temporary
//! password and a password past `password_max_age_days` restrict the
//! session to changing it; reset links, self-service and admin-initiated,
//! travel through a real HTTP receiver started by the test (it stands in
//! for the deployment's mail gateway, and checks the HMAC signature),
//! are single-use, replaced by newer ones, expire, end every session when
//! used, and are never sent for an unknown account; a receiver that is
//! down still answers a self-service request 202 and an admin's 503.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use courier::config::{Config, Secret};
use courier_actors::durable::store::AuditRecord;
use courier_protocol::client::Client;
use courier_protocol::Encoding;
use reqwest::Method;
use rest::{eventually, Backend, Reply, Rest, PASSWORD};
use serde_json::{json, Value};

both_backends!(
    disabling_ends_sessions_closes_sockets_and_refuses_refresh_and_login,
    last_login_at_follows_logins_and_console_sign_ins,
    a_temporary_password_must_be_changed_first,
    an_expired_password_restricts_the_session_until_changed,
    self_service_reset_through_the_webhook,
    reset_tokens_expire,
    an_admin_sends_a_reset_link,
    a_receiver_that_is_down,
);

const WEBHOOK_SECRET: &str = "reset-webhook-secret-for-the-test";
const NEW_PASSWORD: &str = "a brand new passphrase";

// ---- the stand-in mail gateway ------------------------------------------------

/// One request the receiver took: its body, and whether its signature and
/// bearer token were right.
#[derive(Clone, Debug)]
struct Delivery {
    body: Value,
    signed: bool,
}

type Received = Arc<Mutex<Vec<Delivery>>>;

async fn receive(
    State(kept): State<Received>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let secret = Secret::new(WEBHOOK_SECRET);
    let signature = headers
        .get(courier::audit_webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    let signed = signature == Some(courier::audit_webhook::signature(&secret, &body).as_str())
        && bearer == Some(&format!("Bearer {WEBHOOK_SECRET}"));
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    kept.lock().expect("lock").push(Delivery { body, signed });
    StatusCode::NO_CONTENT
}

/// A receiver on a port of its own: its URL and what it took.
async fn start_receiver() -> (String, Received) {
    let kept = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/reset", post(receive))
        .with_state(kept.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/reset"), kept)
}

/// The URL of a port nothing listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/reset")
}

fn with_webhook(config: &mut Config, url: &str) {
    config.password_reset_webhook_url = url.to_owned();
    config.password_reset_webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
}

/// Waits until the receiver holds `n` deliveries; returns them.
async fn deliveries(kept: &Received, n: usize) -> Vec<Delivery> {
    let arrived = eventually(Duration::from_secs(10), async || {
        kept.lock().expect("lock").len() >= n
    })
    .await;
    let list = kept.lock().expect("lock").clone();
    assert!(arrived, "{n} deliveries expected, got {list:?}");
    list
}

// ---- helpers ------------------------------------------------------------------

async fn call(api: &Rest, method: Method, path: &str, body: Value) -> Reply {
    api.call(method, path, None, Some(body)).await
}

async fn ask_reset(api: &Rest, body: Value) -> Reply {
    call(api, Method::POST, "/api/auth/password-reset/request", body).await
}

async fn confirm(api: &Rest, token: &str, password: &str) -> Reply {
    call(
        api,
        Method::POST,
        "/api/auth/password-reset/confirm",
        json!({"token": token, "newPassword": password}),
    )
    .await
}

/// A JSON WebSocket client of `token`, authenticated.
async fn socket(api: &Rest, token: &str) -> Client {
    let mut socket = Client::builder(api.server.ws_url())
        .encoding(Encoding::Json)
        .connect()
        .await
        .expect("connect");
    let answer = socket.authenticate(token).await.expect("answer");
    assert!(answer.result.is_ok(), "{answer:?}");
    socket
}

/// Whether a fresh socket's `authenticate` with `token` is refused.
async fn socket_refused(api: &Rest, token: &str) -> bool {
    let mut socket = Client::builder(api.server.ws_url())
        .encoding(Encoding::Json)
        .connect()
        .await
        .expect("connect");
    socket
        .authenticate(token)
        .await
        .expect("answer")
        .result
        .is_err()
}

/// `audit_entries` of `action` whose details match `pred`, once at least
/// `min` of them exist.
async fn audited(
    api: &Rest,
    action: &str,
    min: usize,
    pred: impl Fn(&AuditRecord) -> bool,
) -> Vec<AuditRecord> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(10), async || {
        found = api
            .audit_entries(action, 0)
            .await
            .into_iter()
            .filter(|e| pred(e))
            .collect();
        found.len() >= min
    })
    .await;
    found
}

/// `courier_password_resets_total{kind, result}` now.
async fn resets_counted(api: &Rest, kind: &str, result: &str) -> f64 {
    let needle = format!("courier_password_resets_total{{kind=\"{kind}\",result=\"{result}\"}} ");
    let metrics = api.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{needle} is not exported"))
}

/// Moves `user`'s `password_changed_at` `days` into the past, in the
/// database itself (what time would do).
async fn age_password(api: &Rest, user: &str, days: i64) {
    let url = api.server.app.config.database_url();
    let ms = days * 24 * 3_600 * 1_000;
    if url.starts_with("postgres") {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("pg");
        sqlx::query(
            "UPDATE users SET password_changed_at = password_changed_at - $1 WHERE id = $2::uuid",
        )
        .bind(ms)
        .bind(user)
        .execute(&mut conn)
        .await
        .expect("age");
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
        sqlx::query(
            "UPDATE users SET password_changed_at = password_changed_at - $1 WHERE id = $2",
        )
        .bind(ms)
        .bind(user)
        .execute(&mut conn)
        .await
        .expect("age");
    }
}

// ---- the tests ----------------------------------------------------------------

async fn disabling_ends_sessions_closes_sockets_and_refuses_refresh_and_login(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let mut live = socket(&api, &bob.token).await;
    api.post(
        &format!("/api/users/{}/disable", bob.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(
        live.wait_closed(Duration::from_secs(5))
            .await
            .expect("closed"),
        Some(4003)
    );
    api.get("/api/channels", &bob.token)
        .await
        .expect_error(401, "auth_failed");
    api.call(
        Method::POST,
        "/api/auth/refresh-token",
        None,
        Some(json!({"refreshToken": bob.refresh})),
    )
    .await
    .expect_error(401, "auth_failed");
    api.try_login("bob", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    assert!(socket_refused(&api, &bob.token).await);
    let failed = audited(&api, "auth.login_failed", 1, |e| {
        e.details["reason"] == "disabled"
    })
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    // Enabled again: the old session stays ended, a new login works.
    api.post(
        &format!("/api/users/{}/enable", bob.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect(200);
    api.get("/api/channels", &bob.token)
        .await
        .expect_error(401, "auth_failed");
    let bob = api.login("bob", PASSWORD).await;
    api.get("/api/channels", &bob.token).await.expect(200);
    api.stop().await;
}

async fn last_login_at_follows_logins_and_console_sign_ins(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    api.post(
        "/api/users",
        &root.token,
        json!({"username": "carol", "password": PASSWORD, "role": "admin"}),
    )
    .await
    .expect(201);
    let path_of = |id: &str| format!("/api/users/{id}");
    let listed = api
        .get("/api/users?search=carol", &root.token)
        .await
        .expect(200);
    let id = listed.body["users"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(listed.body["users"][0]["lastLoginAt"], Value::Null);
    let before = courier_actors::now_ms();
    let login = api.try_login("carol", PASSWORD).await.expect(200);
    let first = login.body["user"]["lastLoginAt"].as_i64().expect("set");
    assert!(first >= before, "{first} < {before}");
    let shown = api.get(&path_of(&id), &root.token).await.expect(200);
    assert_eq!(shown.body["user"]["lastLoginAt"], first);
    let listed = api
        .get("/api/users?search=carol", &root.token)
        .await
        .expect(200);
    assert_eq!(listed.body["users"][0]["lastLoginAt"], first);
    // A failed login leaves it alone; a console sign-in moves it.
    api.try_login("carol", "not the password at all")
        .await
        .expect_error(401, "auth_failed");
    let shown = api.get(&path_of(&id), &root.token).await.expect(200);
    assert_eq!(shown.body["user"]["lastLoginAt"], first);
    eventually(Duration::from_secs(2), async || {
        courier_actors::now_ms() > first
    })
    .await;
    let console = rest::reply(
        api.http
            .post(format!("{}/admin/session", api.base))
            .json(&json!({"username": "carol", "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await
    .expect(200);
    assert!(console.body["user"]["lastLoginAt"].as_i64().expect("set") > first);
    let shown = api.get(&path_of(&id), &root.token).await.expect(200);
    assert!(shown.body["user"]["lastLoginAt"].as_i64().expect("set") > first);
    api.stop().await;
}

async fn a_temporary_password_must_be_changed_first(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let mut live = socket(&api, &bob.token).await;
    let reset = api
        .post(
            &format!("/api/users/{}/reset-password", bob.user_id),
            &root.token,
            json!({}),
        )
        .await
        .expect(200);
    let temporary = reset.body["temporaryPassword"]
        .as_str()
        .expect("password")
        .to_owned();
    assert_eq!(
        live.wait_closed(Duration::from_secs(5))
            .await
            .expect("closed"),
        Some(4003)
    );
    let login = api.try_login("bob", &temporary).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], true);
    let token = login.body["token"].as_str().expect("token").to_owned();
    let refused = api
        .get("/api/channels", &token)
        .await
        .expect_error(403, "forbidden");
    assert_eq!(refused.body["error"]["message"], "password change required");
    assert!(socket_refused(&api, &token).await);
    api.post(
        "/api/auth/change-password",
        &token,
        json!({"currentPassword": temporary, "newPassword": temporary}),
    )
    .await
    .expect_error(400, "invalid_frame");
    api.post(
        "/api/auth/change-password",
        &token,
        json!({"currentPassword": temporary, "newPassword": NEW_PASSWORD}),
    )
    .await
    .expect(204);
    let login = api.try_login("bob", NEW_PASSWORD).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], false);
    let token = login.body["token"].as_str().expect("token");
    api.get("/api/channels", token).await.expect(200);
    socket(&api, token).await;
    api.stop().await;
}

async fn an_expired_password_restricts_the_session_until_changed(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.password_max_age_days = 30).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let shown = api
        .get(&format!("/api/users/{}", bob.user_id), &root.token)
        .await
        .expect(200);
    assert!(shown.body["user"]["passwordChangedAt"].as_i64().is_some());
    api.get("/api/channels", &bob.token).await.expect(200);
    age_password(&api, &bob.user_id, 29).await;
    api.get("/api/channels", &bob.token).await.expect(200);
    age_password(&api, &bob.user_id, 2).await;
    // A session opened before the password expired is restricted too.
    let refused = api
        .get("/api/channels", &bob.token)
        .await
        .expect_error(403, "forbidden");
    assert_eq!(refused.body["error"]["message"], "password change required");
    assert!(socket_refused(&api, &bob.token).await);
    // The login succeeds, restricted; audited once.
    let login = api.try_login("bob", PASSWORD).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], true);
    let token = login.body["token"].as_str().expect("token").to_owned();
    api.get("/api/channels", &token)
        .await
        .expect_error(403, "forbidden");
    api.try_login("bob", PASSWORD).await.expect(200);
    let expired = audited(&api, "user.password_expired", 1, |e| {
        e.details["userId"] == bob.user_id.as_str()
    })
    .await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].details["maxAgeDays"], 30);
    // The same password again is refused; a new one clears it all.
    api.post(
        "/api/auth/change-password",
        &token,
        json!({"currentPassword": PASSWORD, "newPassword": PASSWORD}),
    )
    .await
    .expect_error(400, "invalid_frame");
    api.post(
        "/api/auth/change-password",
        &token,
        json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
    )
    .await
    .expect(204);
    let login = api.try_login("bob", NEW_PASSWORD).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], false);
    let token = login.body["token"].as_str().expect("token");
    api.get("/api/channels", token).await.expect(200);
    socket(&api, token).await;
    // Other accounts were never touched.
    api.get("/api/channels", &root.token).await.expect(200);
    api.stop().await;
}

async fn self_service_reset_through_the_webhook(backend: Backend) {
    let (url, kept) = start_receiver().await;
    let Some(api) = Rest::start_with(backend, |c| with_webhook(c, &url)).await else {
        return;
    };
    let root = api.root().await;
    api.post(
        "/api/users",
        &root.token,
        json!({"username": "bob", "password": PASSWORD, "email": "Bob@Example.org"}),
    )
    .await
    .expect(201);
    let bob = api.login("bob", PASSWORD).await;
    let mut live = socket(&api, &bob.token).await;

    // Bad input is refused, naming the field; nothing is sent.
    ask_reset(&api, json!({}))
        .await
        .expect_error(400, "invalid_frame");
    let both = ask_reset(&api, json!({"username": "bob", "email": "bob@example.org"}))
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(both.field(), "username");
    ask_reset(&api, json!({"email": "not an email"}))
        .await
        .expect_error(400, "invalid_frame");

    // An unknown account: the same 202, no delivery, audited.
    let unknown = ask_reset(&api, json!({"username": "nobody"}))
        .await
        .expect(202);
    let known = ask_reset(&api, json!({"username": "bob"}))
        .await
        .expect(202);
    assert_eq!(unknown.body, known.body);
    let asked = audited(&api, "user.password_reset.requested", 2, |_| true).await;
    assert!(
        asked.iter().any(|e| e.details["reason"] == "no_account"
            && e.details["username"] == "nobody"
            && e.details["sent"] == false),
        "{asked:?}"
    );
    let first = deliveries(&kept, 1).await;
    assert_eq!(kept.lock().expect("lock").len(), 1, "nothing for nobody");
    let link = &first[0];
    assert!(link.signed, "the signature and bearer token check out");
    assert_eq!(link.body["userId"], bob.user_id.as_str());
    assert_eq!(link.body["username"], "bob");
    assert_eq!(link.body["email"], "Bob@Example.org");
    assert_eq!(link.body["kind"], "self");
    let token = link.body["token"].as_str().expect("token").to_owned();
    assert!(token.len() >= 43, "at least 256 bits: {token}");
    let expires_at = link.body["expiresAt"].as_i64().expect("expiresAt");
    let ttl = expires_at - courier_actors::now_ms();
    assert!(ttl > 800_000 && ttl <= 900_000, "{ttl}");

    // The policy applies, and a refusal spends nothing.
    confirm(&api, &token, "short")
        .await
        .expect_error(400, "invalid_frame");
    confirm(&api, &token, NEW_PASSWORD).await.expect(204);
    assert_eq!(
        live.wait_closed(Duration::from_secs(5))
            .await
            .expect("closed"),
        Some(4003)
    );
    api.get("/api/channels", &bob.token)
        .await
        .expect_error(401, "auth_failed");
    api.call(
        Method::POST,
        "/api/auth/refresh-token",
        None,
        Some(json!({"refreshToken": bob.refresh})),
    )
    .await
    .expect_error(401, "auth_failed");
    api.try_login("bob", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    let login = api.try_login("bob", NEW_PASSWORD).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], false);
    // Single use.
    let again = confirm(&api, &token, "yet another passphrase")
        .await
        .expect_error(400, "invalid_token");
    assert_eq!(again.field(), "token");
    assert!(
        again.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{}",
        again.body
    );
    confirm(&api, "made-up-token", "yet another passphrase")
        .await
        .expect_error(400, "invalid_token");

    // By email (any case); a newer link replaces the older one.
    ask_reset(&api, json!({"email": "bob@EXAMPLE.org"}))
        .await
        .expect(202);
    let older = deliveries(&kept, 2).await[1].body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    ask_reset(&api, json!({"username": "BOB"}))
        .await
        .expect(202);
    let newer = deliveries(&kept, 3).await[2].body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let replaced = confirm(&api, &older, "yet another passphrase")
        .await
        .expect_error(400, "invalid_token");
    assert!(
        replaced.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("replaced"),
        "{}",
        replaced.body
    );
    // The account's fourth link in 15 minutes is not sent.
    ask_reset(&api, json!({"username": "bob"}))
        .await
        .expect(202);
    audited(&api, "user.password_reset.requested", 1, |e| {
        e.details["reason"] == "throttled"
    })
    .await;
    assert_eq!(kept.lock().expect("lock").len(), 3);
    confirm(&api, &newer, "yet another passphrase")
        .await
        .expect(204);
    api.login("bob", "yet another passphrase").await;

    // Audited, never with a token.
    let completed = audited(&api, "user.password_reset.completed", 2, |_| true).await;
    assert_eq!(completed.len(), 2, "{completed:?}");
    assert_eq!(completed[0].details["kind"], "self");
    let all: Vec<AuditRecord> = {
        let store = api.server.app.store.clone();
        store
            .list_audit(courier_actors::durable::store::AuditFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("audit")
    };
    let all = serde_json::to_string(&all).expect("json");
    for token in [&token, &older, &newer] {
        assert!(!all.contains(token.as_str()), "a token in the audit chain");
    }
    assert!(resets_counted(&api, "self", "sent").await >= 3.0);
    assert!(resets_counted(&api, "self", "completed").await >= 2.0);
    api.stop().await;
}

async fn reset_tokens_expire(backend: Backend) {
    let (url, kept) = start_receiver().await;
    let Some(api) = Rest::start_with(backend, |c| {
        with_webhook(c, &url);
        c.password_reset_token_ttl_secs = 1;
    })
    .await
    else {
        return;
    };
    let root = api.root().await;
    api.user(&root, "bob", "user").await;
    ask_reset(&api, json!({"username": "bob"}))
        .await
        .expect(202);
    let link = deliveries(&kept, 1).await[0].body.clone();
    let token = link["token"].as_str().expect("token");
    let expires_at = link["expiresAt"].as_i64().expect("expiresAt");
    // Past its expiry (the wait is the TTL's, not a guess).
    let left = expires_at - courier_actors::now_ms() + 50;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(left.max(0)).unwrap_or(0),
    ))
    .await;
    let expired = confirm(&api, token, NEW_PASSWORD)
        .await
        .expect_error(400, "invalid_token");
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{}",
        expired.body
    );
    api.login("bob", PASSWORD).await;
    api.stop().await;
}

async fn an_admin_sends_a_reset_link(backend: Backend) {
    let (url, kept) = start_receiver().await;
    let Some(api) = Rest::start_with(backend, |c| with_webhook(c, &url)).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let eve = api.user(&root, "eve", "user").await;
    let path = format!("/api/users/{}/password-reset", bob.user_id);
    // Not for a plain user, nor for oneself.
    api.post(&path, &eve.token, json!({}))
        .await
        .expect_error(403, "forbidden");
    api.post(
        &format!("/api/users/{}/password-reset", root.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect_error(409, "conflict");
    let sent = api.post(&path, &root.token, json!({})).await.expect(202);
    assert_eq!(sent.body["userId"], bob.user_id.as_str());
    let link = deliveries(&kept, 1).await[0].clone();
    assert!(link.signed);
    assert_eq!(link.body["kind"], "admin");
    assert_eq!(link.body["expiresAt"], sent.body["expiresAt"]);
    let requested = audited(&api, "user.password_reset.requested", 1, |e| {
        e.details["kind"] == "admin"
    })
    .await;
    assert_eq!(
        requested[0].actor_id.map(|u| u.to_string()),
        Some(root.user_id.clone())
    );
    assert_eq!(requested[0].details["sent"], true);
    // Bob's session lives until the link is used.
    api.get("/api/channels", &bob.token).await.expect(200);
    let token = link.body["token"].as_str().expect("token");
    confirm(&api, token, NEW_PASSWORD).await.expect(204);
    api.get("/api/channels", &bob.token)
        .await
        .expect_error(401, "auth_failed");
    api.login("bob", NEW_PASSWORD).await;
    // A password changed by any other path ends the links issued before.
    api.post(&path, &root.token, json!({})).await.expect(202);
    let stale = deliveries(&kept, 2).await[1].body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let temporary = api
        .post(
            &format!("/api/users/{}/reset-password", bob.user_id),
            &root.token,
            json!({}),
        )
        .await
        .expect(200);
    assert!(temporary.body["temporaryPassword"].is_string());
    confirm(&api, &stale, "yet another passphrase")
        .await
        .expect_error(400, "invalid_token");
    // A disabled account gets no link.
    api.post(
        &format!("/api/users/{}/disable", eve.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect(200);
    api.post(
        &format!("/api/users/{}/password-reset", eve.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect_error(409, "conflict");
    assert_eq!(kept.lock().expect("lock").len(), 2);
    // The account's security events show both sides.
    let events = api
        .get(
            &format!("/api/users/{}/security-events", bob.user_id),
            &root.token,
        )
        .await
        .expect(200);
    let actions: Vec<&str> = events.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "user.password_reset.requested",
        "user.password_reset.completed",
    ] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
    api.stop().await;
}

async fn a_receiver_that_is_down(backend: Backend) {
    // No webhook at all: self-service is off, an admin is told so.
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    ask_reset(&api, json!({"username": "bob"}))
        .await
        .expect_error(403, "forbidden");
    api.post(
        &format!("/api/users/{}/password-reset", bob.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect_error(409, "conflict");
    api.stop().await;

    let url = closed_url().await;
    let Some(api) = Rest::start_with(backend, |c| with_webhook(c, &url)).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let failed_before = resets_counted(&api, "self", "webhook_failed").await;
    ask_reset(&api, json!({"username": "bob"}))
        .await
        .expect(202);
    let asked = audited(&api, "user.password_reset.requested", 1, |e| {
        e.details["reason"] == "webhook_failed"
    })
    .await;
    assert_eq!(asked[0].details["sent"], false);
    assert!(resets_counted(&api, "self", "webhook_failed").await > failed_before);
    let admin = api
        .post(
            &format!("/api/users/{}/password-reset", bob.user_id),
            &root.token,
            json!({}),
        )
        .await
        .expect_error(503, "unavailable");
    assert!(
        admin.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("webhook"),
        "{}",
        admin.body
    );
    let audited_admin = audited(&api, "user.password_reset.requested", 1, |e| {
        e.details["kind"] == "admin"
    })
    .await;
    assert_eq!(audited_admin[0].details["sent"], false);
    assert!(resets_counted(&api, "admin", "webhook_failed").await >= 1.0);
    // Nothing changed for the account.
    api.login("bob", PASSWORD).await;
    api.stop().await;
}
