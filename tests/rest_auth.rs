//! `/api/auth/*` end to end: registration and its policy, login with
//! lockout of the address, refresh-token rotation and reuse detection,
//! logout and password change closing live sockets (4003), the forged-token
//! matrix, the per-IP rate limit, and request bodies over the size limit.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use courier_protocol::client::Client;
use courier_protocol::error::close;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use rest::{session_of, Backend, Rest, PASSWORD, ROOT, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

// Each scenario once per backend.
both_backends!(
    register_follows_the_policy,
    login_answers_tokens_and_one_failure_for_all,
    lockout_answers_like_any_failure,
    refresh_rotates_and_reuse_revokes_the_session,
    logout_revokes_the_session_and_closes_its_socket,
    change_password_ends_every_session,
);

async fn register(api: &Rest, body: Value) -> rest::Reply {
    api.call(Method::POST, "/api/auth/register", None, Some(body))
        .await
}

async fn register_follows_the_policy(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let ok = register(
        &api,
        json!({"username": "alice", "password": PASSWORD, "email": "alice@example.org"}),
    )
    .await
    .expect(201);
    assert_eq!(ok.body["user"]["username"], "alice");
    assert_eq!(ok.body["user"]["role"], "user");
    assert_eq!(ok.body["user"]["email"], "alice@example.org");
    assert!(
        !ok.body.to_string().contains("argon2"),
        "no hash in answers"
    );

    let cases = [
        (json!({"username": "bob"}), "password"),
        (json!({"password": PASSWORD}), "username"),
        (json!({"username": "bob", "password": "short"}), "password"),
        (
            json!({"username": "bobbobbobbobbob", "password": "BOBbobbobbobBOB"}),
            "password",
        ),
        (json!({"username": "b", "password": PASSWORD}), "username"),
        (
            json!({"username": "bob smith", "password": PASSWORD}),
            "username",
        ),
        (
            json!({"username": "bob", "password": PASSWORD, "email": "not-an-email"}),
            "email",
        ),
        (json!({"username": 7, "password": PASSWORD}), "username"),
    ];
    for (body, field) in cases {
        let reply = register(&api, body.clone())
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(reply.field(), field, "{body}: {}", reply.body);
        assert!(reply.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(field));
    }
    let raw = api
        .http
        .post(format!("{}/api/auth/register", api.base))
        .body("{not json")
        .send()
        .await
        .expect("send");
    rest::reply(raw).await.expect_error(400, "invalid_frame");
    let huge = json!({"username": "big", "password": "x".repeat(200_000)});
    register(&api, huge).await.expect_error(413, "too_large");

    register(&api, json!({"username": "ALICE", "password": PASSWORD}))
        .await
        .expect_error(409, "conflict");
    api.login("alice", PASSWORD).await;
    assert!(!api.audit_entries("auth.register", 1).await.is_empty());
    api.stop().await;

    // Closed registration answers 403 whatever the body.
    let Some(closed) = Rest::start_with(backend, |c| c.allow_registration = Some(false)).await
    else {
        return;
    };
    register(&closed, json!({"username": "carol", "password": PASSWORD}))
        .await
        .expect_error(403, "forbidden");
    closed.stop().await;
}

async fn login_answers_tokens_and_one_failure_for_all(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let reply = api.try_login(ROOT, PASSWORD).await.expect(200);
    assert_eq!(reply.body["expiresIn"], 900);
    assert_eq!(reply.body["user"]["role"], "super_admin");
    let root = session_of(&reply.body);
    assert_ne!(root.token, root.refresh);
    api.get(&format!("/api/users/{}", root.user_id), &root.token)
        .await
        .expect(200);

    // The session stores the refresh token's hash, the ip and the user agent.
    let sessions = api
        .server
        .app
        .store
        .list_sessions(root.user_id.parse().expect("id"))
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_ne!(sessions[0].token_hash, root.refresh);
    assert_eq!(sessions[0].token_hash.len(), 64);
    assert_eq!(sessions[0].ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(sessions[0].user_agent.as_deref(), Some(rest::USER_AGENT));

    let wrong = api
        .try_login(ROOT, "wrong password here")
        .await
        .expect_error(401, "auth_failed");
    let unknown = api
        .try_login("nobody", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    assert_eq!(
        wrong.body, unknown.body,
        "no user enumeration through the answer"
    );
    api.call(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"username": ROOT})),
    )
    .await
    .expect_error(400, "invalid_frame");

    let failures = api.audit_entries("auth.login_failed", 2).await;
    let reasons: Vec<&str> = failures
        .iter()
        .filter_map(|e| e.details["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"bad_password") && reasons.contains(&"unknown_user"),
        "{reasons:?}"
    );
    let logins = api.audit_entries("auth.login", 1).await;
    assert_eq!(logins[0].ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(logins[0].user_agent.as_deref(), Some(rest::USER_AGENT));
    api.stop().await;
}

async fn lockout_answers_like_any_failure(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.lockout_threshold = 3).await else {
        return;
    };
    let root = api.root().await;
    let nurse = api.user(&root, "nurse", "user").await;
    for _ in 0..3 {
        api.try_login("nurse", "not the password")
            .await
            .expect_error(401, "auth_failed");
    }
    // Locked: even the right password fails, with the same answer.
    let locked = api
        .try_login("nurse", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    let wrong = api.try_login("nurse", "not the password").await;
    assert_eq!(locked.body, wrong.body);
    let lockouts = api.audit_entries("auth.lockout", 1).await;
    assert_eq!(lockouts.len(), 1, "one lockout entry");
    assert_eq!(lockouts[0].details["failures"], 3);
    assert_eq!(lockouts[0].details["scope"], "address");
    assert_eq!(lockouts[0].details["userId"], nurse.user_id);
    assert_eq!(lockouts[0].ip.as_deref(), Some("127.0.0.1"));
    // The lock is this address's alone (tests/account_security.rs), and it
    // runs out after lockout_minutes (the unit tests of auth::lockout).
    api.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_the_session(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let refresh = |token: &str| {
        let body = json!({"refreshToken": token});
        let api = &api;
        async move {
            api.call(Method::POST, "/api/auth/refresh-token", None, Some(body))
                .await
        }
    };
    let first = refresh(&root.refresh).await.expect(200);
    assert_eq!(first.body["expiresIn"], 900);
    let token2 = first.body["token"].as_str().expect("token").to_owned();
    let refresh2 = first.body["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(refresh2, root.refresh, "rotated");
    api.get("/api/channels", &token2).await.expect(200);

    let mut socket = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&token2)
        .await
        .expect("answer")
        .result
        .is_ok());

    // The old refresh token again: theft. The whole session ends.
    refresh(&root.refresh)
        .await
        .expect_error(401, "auth_failed");
    assert_eq!(
        socket.wait_closed(T).await.expect("closed"),
        Some(close::SESSION_REVOKED)
    );
    api.get("/api/channels", &token2)
        .await
        .expect_error(401, "auth_failed");
    api.get("/api/channels", &root.token)
        .await
        .expect_error(401, "auth_failed");
    refresh(&refresh2).await.expect_error(401, "auth_failed");
    assert!(!api.audit_entries("auth.refresh_reuse", 1).await.is_empty());

    refresh("not-a-token")
        .await
        .expect_error(401, "auth_failed");
    api.call(
        Method::POST,
        "/api/auth/refresh-token",
        None,
        Some(json!({})),
    )
    .await
    .expect_error(400, "invalid_frame");
    // Another session of the same user is untouched.
    let again = api.root().await;
    api.get("/api/channels", &again.token).await.expect(200);
    api.stop().await;
}

async fn logout_revokes_the_session_and_closes_its_socket(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let other = api.root().await;
    let mut socket = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&root.token)
        .await
        .expect("answer")
        .result
        .is_ok());

    api.call(Method::POST, "/api/auth/logout", None, None)
        .await
        .expect_error(401, "unauthenticated");
    let started = Instant::now();
    let reply = api
        .call(Method::POST, "/api/auth/logout", Some(&root.token), None)
        .await
        .expect(204);
    assert_eq!(reply.body, Value::Null);
    assert_eq!(
        socket.wait_closed(T).await.expect("closed"),
        Some(close::SESSION_REVOKED)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    api.get("/api/channels", &root.token)
        .await
        .expect_error(401, "auth_failed");
    api.call(
        Method::POST,
        "/api/auth/refresh-token",
        None,
        Some(json!({"refreshToken": root.refresh})),
    )
    .await
    .expect_error(401, "auth_failed");
    api.get("/api/channels", &other.token).await.expect(200);
    assert!(!api.audit_entries("auth.logout", 1).await.is_empty());
    api.stop().await;
}

async fn change_password_ends_every_session(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let first = api.user(&root, "doctor", "user").await;
    let second = api.login("doctor", PASSWORD).await;
    let mut socket = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&second.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    let change = |current: &str, new: &str| {
        let body = json!({"currentPassword": current, "newPassword": new});
        let (api, token) = (&api, first.token.clone());
        async move {
            api.call(
                Method::POST,
                "/api/auth/change-password",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    change("wrong current password", "a brand new passphrase")
        .await
        .expect_error(403, "forbidden");
    let weak = change(PASSWORD, "short")
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(weak.field(), "newPassword");
    change(PASSWORD, "DOCTOR")
        .await
        .expect_error(400, "invalid_frame");
    change(PASSWORD, "a brand new passphrase").await.expect(204);

    assert_eq!(
        socket.wait_closed(T).await.expect("closed"),
        Some(close::SESSION_REVOKED)
    );
    api.get("/api/channels", &first.token)
        .await
        .expect_error(401, "auth_failed");
    api.get("/api/channels", &second.token)
        .await
        .expect_error(401, "auth_failed");
    api.try_login("doctor", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    api.login("doctor", "a brand new passphrase").await;
    assert!(!api
        .audit_entries("auth.password_change", 1)
        .await
        .is_empty());
    api.stop().await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let root = api.root().await;
    let plain = api.user(&root, "plain", "user").await;
    let payload = plain.token.split('.').nth(1).expect("payload");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("claims");
    let now = jsonwebtoken::get_current_timestamp();
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = claims.clone();
        c.as_object_mut().expect("object").remove(key);
        c
    };
    let secret = SECRET.as_bytes();

    // A correctly signed token of the real session works: the forgeries
    // below differ from it in one thing each.
    let genuine = sign(Algorithm::HS256, secret, &claims);
    api.get("/api/channels", &genuine).await.expect(200);

    let mut tampered_claims = claims.clone();
    tampered_claims["sub"] = json!(root.user_id);
    let parts: Vec<&str> = plain.token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(tampered_claims.to_string().as_bytes()),
        parts[2]
    );
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let rs256_header = format!(
        "{}.{payload}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#),
        parts[2]
    );
    let forged = [
        ("alg none", alg_none),
        ("RS256 header on an HS256 signature", rs256_header),
        ("tampered payload", tampered),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                b"another-secret-another-secret-0123456",
                &claims,
            ),
        ),
        (
            "HS384 with the right key",
            sign(Algorithm::HS384, secret, &claims),
        ),
        (
            "HS512 with the right key",
            sign(Algorithm::HS512, secret, &claims),
        ),
        (
            "expired",
            sign(Algorithm::HS256, secret, &with("exp", json!(now - 3600))),
        ),
        (
            "missing exp",
            sign(Algorithm::HS256, secret, &without("exp")),
        ),
        (
            "missing iss",
            sign(Algorithm::HS256, secret, &without("iss")),
        ),
        (
            "wrong iss",
            sign(Algorithm::HS256, secret, &with("iss", json!("evil"))),
        ),
        (
            "missing aud",
            sign(Algorithm::HS256, secret, &without("aud")),
        ),
        (
            "wrong aud",
            sign(Algorithm::HS256, secret, &with("aud", json!("evil"))),
        ),
        (
            "missing sub",
            sign(Algorithm::HS256, secret, &without("sub")),
        ),
        (
            "sub of another user",
            sign(Algorithm::HS256, secret, &with("sub", json!(root.user_id))),
        ),
        (
            "unknown session",
            sign(
                Algorithm::HS256,
                secret,
                &with("sid", json!(uuid::Uuid::new_v4())),
            ),
        ),
        ("garbage", "abc.def.ghi".to_owned()),
        ("too long", "x".repeat(10_000)),
    ];
    for (what, token) in &forged {
        let reply = api.get("/api/channels", token).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "auth_failed"),
            "{what}: {}",
            reply.body
        );
        let reply = api
            .post(
                "/api/messages",
                token,
                json!({"channelId": uuid::Uuid::new_v4(), "text": "x"}),
            )
            .await;
        assert_eq!(reply.status, 401, "{what} on POST");
    }
    for header in ["", "Bearer", "Basic cm9vdDpwYXNz", "Token abc"] {
        let reply = rest::reply(
            api.http
                .get(format!("{}/api/channels", api.base))
                .header("Authorization", header)
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(reply.status, 401, "{header:?}");
    }
    api.call(Method::GET, "/api/channels", None, None)
        .await
        .expect_error(401, "unauthenticated");
    // Tokens are never taken from the query string.
    let query = format!("/api/channels?token={}", plain.token);
    api.call(Method::GET, &query, None, None)
        .await
        .expect_error(401, "unauthenticated");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_endpoints_are_limited_per_ip() {
    let api = Rest::start_with(Backend::Sqlite, |c| {
        c.auth_per_15min = 3;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    .expect("server");
    for _ in 0..3 {
        api.try_login(ROOT, "wrong password here").await.expect(401);
    }
    let limited = api
        .try_login(ROOT, PASSWORD)
        .await
        .expect_error(429, "rate_limited");
    let retry: u64 = limited
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (1..=300).contains(&retry),
        "one request comes back every 5 minutes: {retry}"
    );
    assert!(limited.body["error"]["retryAfterMs"].as_u64().is_some());
    // Every /api/auth/* endpoint shares the budget.
    api.call(Method::POST, "/api/auth/register", None, Some(json!({})))
        .await
        .expect_error(429, "rate_limited");
    api.call(
        Method::POST,
        "/api/auth/refresh-token",
        None,
        Some(json!({})),
    )
    .await
    .expect_error(429, "rate_limited");

    // Another client address (behind a trusted proxy) has its own budget.
    let other = api
        .http
        .post(format!("{}/api/auth/login", api.base))
        .header("X-Forwarded-For", "203.0.113.9")
        .json(&json!({"username": ROOT, "password": PASSWORD}))
        .send()
        .await
        .expect("send");
    let root = session_of(&rest::reply(other).await.expect(200).body);
    // The rest of the API is not counted against the address.
    api.get("/api/channels", &root.token).await.expect(200);

    let metrics = api.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("courier_rate_limited_total") && l.contains("limit=\"auth\"")),
        "{metrics}"
    );
    api.stop().await;
}

/// One HTTP/1.1 answer read off a raw socket: its status, its headers
/// (names lower-cased) and its body. `None` when the server closed first.
async fn read_answer(tcp: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(T, tcp.read(&mut chunk))
            .await
            .expect("answer in time")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head[9..12].parse().expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .expect("length");
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.expect("body");
        assert!(n > 0, "the body was cut short");
        body.extend_from_slice(&chunk[..n]);
    }
    Some((status, head, body))
}

fn register_head(addr: std::net::SocketAddr, length: usize) -> String {
    format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// A body over the limit gets its 413 on a socket that stays open: the
/// server reads and drops the rest of the body before answering, because
/// closing with it unread would reset the connection and the reset can
/// discard the 413 before the client reads it. A body too large to drain
/// gets its 413 with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_on_a_live_connection() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let addr = api.server.addr;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    for length in [150_000, 3_000_000] {
        let mut request = register_head(addr, length).into_bytes();
        request.resize(request.len() + length, b'x');
        tcp.write_all(&request).await.expect("write");
        let (status, head, body) = read_answer(&mut tcp).await.expect("an answer, not a reset");
        assert_eq!(status, 413, "{length}: {head}");
        assert!(!head.contains("connection: close"), "{length}: {head}");
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["code"], "too_large");
    }
    // The same connection serves the next request.
    let small = br#"{"username": "b"}"#;
    tcp.write_all(register_head(addr, small.len()).as_bytes())
        .await
        .expect("write");
    tcp.write_all(small).await.expect("write");
    let (status, head, _) = read_answer(&mut tcp).await.expect("the connection lives");
    assert_eq!(status, 400, "{head}");

    // Declared far past what is drained: answered at once, then closed.
    // (No body bytes are sent: ones the server never reads would reset
    // the socket here too.)
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(register_head(addr, 50_000_000).as_bytes())
        .await
        .expect("write");
    let (status, head, _) = read_answer(&mut tcp).await.expect("an answer");
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        read_answer(&mut tcp).await.is_none(),
        "closed after the 413"
    );
    api.stop().await;
}
