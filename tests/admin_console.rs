//! The admin console's server side, end to end on a real server: console
//! sessions (the cookie's attributes, CSRF on every state-changing REST
//! route, idle and absolute expiry, sign-out, who may sign in), the account
//! lifecycle routes (lock, disable, temporary passwords), runtime rate
//! limits kept across a restart, the effective configuration with its
//! secrets redacted, the overview's figures and the page's headers. The
//! page itself, in a browser, is `tests/admin_browser.rs`.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier_actors::durable::store::Role;
use courier_protocol::client::ClientError;
use courier_protocol::{ChannelId, Encoding, ErrorCode};
use reqwest::Method;
use rest::{Backend, Reply, Rest, PASSWORD, ROOT, SECRET};
use serde_json::{json, Value};

both_backends!(
    a_console_session_is_a_strict_cookie_and_every_change_needs_its_csrf_token,
    console_sessions_end_when_idle_when_old_and_at_sign_out,
    only_administrators_and_moderators_use_the_console,
    locked_disabled_and_reset_accounts,
    rate_limits_change_at_run_time_and_survive_a_restart,
    the_overview_reads_the_servers_own_figures,
);

/// A signed-in console: its cookie and CSRF token.
struct Console {
    cookie: String,
    csrf: String,
    body: Value,
}

/// `POST /admin/session` as `username`.
async fn sign_in_reply(api: &Rest, username: &str, password: &str) -> Reply {
    rest::reply(
        api.http
            .post(format!("{}/admin/session", api.base))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn sign_in(api: &Rest, username: &str) -> Console {
    let reply = sign_in_reply(api, username, PASSWORD).await.expect(200);
    let set_cookie = reply.headers["set-cookie"].to_str().expect("ascii");
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    Console {
        cookie,
        csrf: reply.body["csrf"].as_str().expect("csrf").to_owned(),
        body: reply.body,
    }
}

/// A call with the console's cookie, and its CSRF token when `csrf`.
async fn call(
    api: &Rest,
    console: &Console,
    method: Method,
    path: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = api
        .http
        .request(method, format!("{}{path}", api.base))
        .header("cookie", &console.cookie);
    if let Some(token) = csrf {
        request = request.header("x-csrf-token", token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    rest::reply(request.send().await.expect("request")).await
}

async fn a_console_session_is_a_strict_cookie_and_every_change_needs_its_csrf_token(
    backend: Backend,
) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let reply = sign_in_reply(&api, ROOT, PASSWORD).await.expect(200);
    let set_cookie = reply.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} missing: {set_cookie}"
        );
    }
    assert!(set_cookie.starts_with("courier_admin="), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert_eq!(reply.body["user"]["username"], ROOT);
    assert!(reply.body["permissions"]
        .as_array()
        .expect("permissions")
        .contains(&json!("users.manage")));
    let console = sign_in(&api, ROOT).await;
    call(&api, &console, Method::GET, "/admin/session", None, None)
        .await
        .expect(200);

    // Every state-changing operation of the API, with the cookie and no
    // token, or a wrong one: 403 before the handler runs. The routes that
    // take no session (register, login, refresh, the password reset's
    // request and confirmation) do not look at the cookie, so a forged
    // request gains nothing from it.
    let document = api
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .expect(200)
        .body;
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("item") {
            if method == "get"
                || [
                    "/api/auth/register",
                    "/api/auth/login",
                    "/api/auth/refresh-token",
                    "/api/auth/password-reset/request",
                    "/api/auth/password-reset/confirm",
                ]
                .contains(&path.as_str())
            {
                continue;
            }
            let concrete = path
                .replace("{id}", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
                .replace("{userId}", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c");
            let method: Method = method.to_uppercase().parse().expect("method");
            for csrf in [None, Some("0".repeat(64).as_str())] {
                let reply = call(
                    &api,
                    &console,
                    method.clone(),
                    &concrete,
                    csrf,
                    Some(json!({})),
                )
                .await;
                assert_eq!(
                    reply.status, 403,
                    "{method} {path} without CSRF: {}",
                    reply.body
                );
                assert_eq!(
                    reply.body["error"]["message"], "missing or wrong CSRF token",
                    "{method} {path}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} state-changing operations");
    let denied = api.audit_entries("access.denied", 1).await;
    assert!(denied.iter().any(|e| e.details["op"] == "csrf"));
    // Sign-out is a change too.
    call(&api, &console, Method::DELETE, "/admin/session", None, None)
        .await
        .expect_error(403, "forbidden");

    // With the token the same call works, attributed to the admin.
    let created = call(
        &api,
        &console,
        Method::POST,
        "/api/users",
        Some(&console.csrf),
        Some(json!({"username": "carol", "password": PASSWORD})),
    )
    .await
    .expect(201);
    let entries = api.audit_entries("user.create", 2).await;
    let entry = entries
        .iter()
        .find(|e| e.details["userId"] == created.body["user"]["id"])
        .expect("audited");
    assert_eq!(
        entry.actor_id.map(|id| id.to_string()),
        console.body["user"]["id"].as_str().map(str::to_owned)
    );
    // A bearer token next to the cookie is what counts: no CSRF needed.
    let root = api.root().await;
    let reply = rest::reply(
        api.http
            .post(format!("{}/api/users", api.base))
            .bearer_auth(&root.token)
            .header("cookie", &console.cookie)
            .json(&json!({"username": "dave", "password": PASSWORD}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    reply.expect(201);
    api.stop().await;
}

async fn console_sessions_end_when_idle_when_old_and_at_sign_out(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let store = api.server.app.store.clone();
    let session_of = |console: &Console| -> courier_protocol::SessionId {
        let value = console.cookie.split_once('=').expect("pair").1;
        value
            .split_once('.')
            .expect("id.secret")
            .0
            .parse()
            .expect("id")
    };

    // Idle past admin_idle_minutes (15): the next request ends it.
    let idle = sign_in(&api, ROOT).await;
    let now = courier_actors::now_ms();
    store
        .touch_session(session_of(&idle), now - 16 * 60_000)
        .await
        .expect("touch");
    call(&api, &idle, Method::GET, "/api/users", None, None)
        .await
        .expect_error(401, "auth_failed");
    let row = store
        .get_session(session_of(&idle))
        .await
        .expect("read")
        .expect("row");
    assert!(!row.valid, "an idle session is revoked when presented");

    // Used within the idle time: still good, and touched.
    let busy = sign_in(&api, ROOT).await;
    store
        .touch_session(session_of(&busy), now - 10 * 60_000)
        .await
        .expect("touch");
    call(&api, &busy, Method::GET, "/api/users", None, None)
        .await
        .expect(200);
    let row = store
        .get_session(session_of(&busy))
        .await
        .expect("read")
        .expect("row");
    assert!(row.last_seen_at.expect("seen") >= now);

    // Older than admin_session_hours, however busy: over.
    let old = sign_in(&api, ROOT).await;
    let url = api.server.app.config.database_url();
    let sql = "UPDATE sessions SET expires_at = $1 WHERE CAST(id AS TEXT) = $2";
    let expired_at = now - 1;
    let id = session_of(&old).to_string();
    if url.starts_with("postgres") {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("pg");
        sqlx::query(sql)
            .bind(expired_at)
            .bind(&id)
            .execute(&mut db)
            .await
            .expect("update");
    } else {
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("sqlite");
        sqlx::query(sql)
            .bind(expired_at)
            .bind(&id)
            .execute(&mut db)
            .await
            .expect("update");
    }
    call(&api, &old, Method::GET, "/admin/session", None, None)
        .await
        .expect_error(401, "auth_failed");

    // Sign-out: 204, the cookie cleared, the session over.
    let console = sign_in(&api, ROOT).await;
    let out = call(
        &api,
        &console,
        Method::DELETE,
        "/admin/session",
        Some(&console.csrf),
        None,
    )
    .await
    .expect(204);
    assert!(out.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .contains("Max-Age=0"));
    call(&api, &console, Method::GET, "/admin/session", None, None)
        .await
        .expect_error(401, "auth_failed");
    api.audit_entries("admin.sign_out", 1).await;
    // A console session's id is no API session: a token naming it fails.
    let (token, _) = api
        .server
        .app
        .tokens
        .issue(
            console.body["user"]["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid"),
            session_of(&busy),
        )
        .expect("token");
    api.get("/api/users", &token)
        .await
        .expect_error(401, "auth_failed");
    api.stop().await;
}

async fn only_administrators_and_moderators_use_the_console(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.auth_per_15min = 12).await else {
        return;
    };
    let root = api.root().await;
    api.user(&root, "mona", "moderator").await;
    api.user(&root, "uma", "user").await;

    sign_in_reply(&api, "uma", PASSWORD)
        .await
        .expect_error(403, "forbidden");
    sign_in_reply(&api, "mona", "wrong password")
        .await
        .expect_error(401, "auth_failed");
    sign_in_reply(&api, "nobody", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    let failed = api.audit_entries("auth.login_failed", 2).await;
    assert!(failed.iter().any(|e| e.details["reason"] == "bad_password"));

    let mona = sign_in(&api, "mona").await;
    let permissions = mona.body["permissions"].as_array().expect("permissions");
    assert!(permissions.contains(&json!("messages.moderate")));
    assert!(permissions.contains(&json!("audit.read")));
    assert!(!permissions.contains(&json!("users.manage")));
    // Moderation and audit: yes. User management, settings, overview: no.
    call(&api, &mona, Method::GET, "/api/audit?limit=5", None, None)
        .await
        .expect(200);
    call(
        &api,
        &mona,
        Method::POST,
        "/api/users",
        Some(&mona.csrf),
        Some(json!({"username": "eve", "password": PASSWORD})),
    )
    .await
    .expect_error(403, "forbidden");
    call(&api, &mona, Method::GET, "/api/settings", None, None)
        .await
        .expect_error(403, "forbidden");
    call(&api, &mona, Method::GET, "/admin/overview", None, None)
        .await
        .expect_error(403, "forbidden");

    // The sign-in shares the per-address limit of /api/auth/*.
    let mut limited = false;
    for _ in 0..12 {
        if sign_in_reply(&api, ROOT, PASSWORD).await.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "auth_per_15min holds for the console's sign-in");
    api.stop().await;
}

async fn locked_disabled_and_reset_accounts(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let bob = api.user(&root, "bob", "user").await;
    let id = &bob.user_id;

    // Lock: the login fails like a wrong password, the session ends.
    let locked = api
        .post(&format!("/api/users/{id}/lock"), &root.token, json!({}))
        .await
        .expect(200);
    assert_eq!(locked.body["user"]["locked"], true);
    api.try_login("bob", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    api.get("/api/channels", &bob.token)
        .await
        .expect_error(401, "auth_failed");
    let failed = api.audit_entries("auth.login_failed", 1).await;
    assert!(failed
        .iter()
        .any(|e| e.details["reason"] == "locked_by_admin"));
    api.post(&format!("/api/users/{id}/unlock"), &root.token, json!({}))
        .await
        .expect(200);
    let bob = api.login("bob", PASSWORD).await;

    // Disable: the live socket closes 4003, no login until enabled.
    let user = api
        .server
        .app
        .store
        .get_user(bob.user_id.parse().expect("id"))
        .await
        .expect("read")
        .expect("bob");
    assert!(user.last_login_at.is_some(), "the login was recorded");
    let mut socket = courier_protocol::client::Client::builder(api.server.ws_url())
        .encoding(Encoding::Json)
        .connect()
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&bob.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    let disabled = api
        .post(&format!("/api/users/{id}/disable"), &root.token, json!({}))
        .await
        .expect(200);
    assert_eq!(disabled.body["user"]["disabled"], true);
    assert_eq!(
        socket
            .wait_closed(Duration::from_secs(5))
            .await
            .expect("closed"),
        Some(4003)
    );
    api.try_login("bob", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    api.post(&format!("/api/users/{id}/enable"), &root.token, json!({}))
        .await
        .expect(200);
    api.login("bob", PASSWORD).await;

    // Nobody locks or disables themselves.
    api.post(
        &format!("/api/users/{}/lock", root.user_id),
        &root.token,
        json!({}),
    )
    .await
    .expect_error(409, "conflict");

    // Reset: a temporary password that must be changed before anything.
    let reset = api
        .post(
            &format!("/api/users/{id}/reset-password"),
            &root.token,
            json!({}),
        )
        .await
        .expect(200);
    let temporary = reset.body["temporaryPassword"].as_str().expect("password");
    assert!(temporary.len() >= 24);
    assert_eq!(reset.body["user"]["mustChangePassword"], true);
    api.try_login("bob", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    let login = api.try_login("bob", temporary).await.expect(200);
    assert_eq!(login.body["user"]["mustChangePassword"], true);
    let token = login.body["token"].as_str().expect("token").to_owned();
    let refused = api
        .get("/api/channels", &token)
        .await
        .expect_error(403, "forbidden");
    assert_eq!(refused.body["error"]["message"], "password change required");
    let mut socket = courier_protocol::client::Client::builder(api.server.ws_url())
        .encoding(Encoding::Json)
        .connect()
        .await
        .expect("connect");
    let answer = socket.authenticate(&token).await.expect("answer");
    assert!(answer.result.is_err(), "{answer:?}");
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
        json!({"currentPassword": temporary, "newPassword": "a brand new passphrase"}),
    )
    .await
    .expect(204);
    let bob = api.login("bob", "a brand new passphrase").await;
    api.get("/api/channels", &bob.token).await.expect(200);

    // The account's security events, newest first.
    let events = api
        .get(&format!("/api/users/{id}/security-events"), &root.token)
        .await
        .expect(200);
    let actions: Vec<&str> = events.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "auth.login",
        "user.lock",
        "user.disable",
        "user.reset_password",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let checkpoints = api
        .get("/api/audit/checkpoints", &root.token)
        .await
        .expect(200);
    assert!(checkpoints.body["checkpoints"].is_array());
    api.stop().await;
}

async fn rate_limits_change_at_run_time_and_survive_a_restart(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let settings = api.get("/api/settings", &root.token).await.expect(200);
    assert_eq!(settings.body["config"]["jwt_secret"], "[redacted]");
    assert_eq!(
        settings.body["config"]["initial_admin_password"],
        "[redacted]"
    );
    let text = settings.body.to_string();
    assert!(!text.contains(SECRET) && !text.contains(PASSWORD), "{text}");
    assert_eq!(settings.body["rateLimits"]["sendPerMinute"], 1_000_000);

    api.put(
        "/api/settings/rate-limits",
        &root.token,
        json!({"sendPerMinute": 0}),
    )
    .await
    .expect_error(400, "invalid_frame");
    api.put(
        "/api/settings/rate-limits",
        &root.token,
        json!({"sendsPerMinute": 5}),
    )
    .await
    .expect_error(400, "invalid_frame");
    let changed = api
        .put(
            "/api/settings/rate-limits",
            &root.token,
            json!({"sendPerMinute": 2}),
        )
        .await
        .expect(200);
    assert_eq!(changed.body["rateLimits"]["sendPerMinute"], 2);
    assert_eq!(changed.body["rateLimits"]["restPer15Min"], 1_000_000);
    let entries = api.audit_entries("settings.update", 1).await;
    assert_eq!(
        entries[0].details["rateLimits"]["after"]["sendPerMinute"],
        2
    );

    // Enforced at once: 2 a minute has a burst of 1.
    let sender = api.server.user("sender", Role::User).await;
    let channel: ChannelId = api
        .server
        .channel(
            "limited",
            courier_actors::durable::store::ChannelKind::Public,
            &sender,
            &[],
        )
        .await;
    let mut ws = api.server.client(&sender, Encoding::MessagePack).await;
    ws.join(channel, None).await.expect("join");
    ws.send_text(channel, "one").await.expect("first send");
    match ws.send_text(channel, "two").await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::RateLimited),
        other => panic!("the second send within the minute: {other:?}"),
    }

    // A restart on the same database keeps the change.
    let Rest { server, http, .. } = api;
    let server = server.restart().await;
    let api = Rest {
        base: server.http_url(),
        server,
        http,
    };
    let root = api.root().await;
    let settings = api.get("/api/settings", &root.token).await.expect(200);
    assert_eq!(settings.body["rateLimits"]["sendPerMinute"], 2);
    assert_eq!(settings.body["config"]["send_per_minute"], 2);
    api.stop().await;
}

async fn the_overview_reads_the_servers_own_figures(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let user = api.server.user("watcher", Role::User).await;
    let _ws = api.server.client(&user, Encoding::Json).await;
    let console = sign_in(&api, ROOT).await;
    let overview = call(&api, &console, Method::GET, "/admin/overview", None, None)
        .await
        .expect(200);
    let body = &overview.body;
    assert!(
        body["connections"].as_u64().expect("connections") >= 1,
        "{body}"
    );
    assert_eq!(body["store"]["reachable"], true);
    assert_eq!(body["audit"]["healthy"], true);
    assert!(body["rssBytes"].as_f64().expect("rss") > 0.0, "{body}");
    assert!(body["cpuSeconds"].as_f64().is_some(), "{body}");
    assert!(body["uptimeSeconds"].is_u64());
    assert_eq!(overview.headers["cache-control"], "no-store");

    // The page: a strict policy, no inline script or style.
    let page = api
        .http
        .get(format!("{}/admin", api.base))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.expect("html");
    assert!(!html.contains("style="), "inline style in the page");
    for script in html.split("<script").skip(1) {
        let tag = script.split('>').next().unwrap_or("");
        assert!(tag.contains("src="), "an inline script: <script{tag}>");
    }
    let js = api
        .http
        .get(format!("{}/admin/assets/admin.js", api.base))
        .send()
        .await
        .expect("js");
    assert_eq!(js.status(), 200);
    let js = js.text().await.expect("js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!js.contains(sink), "admin.js uses {sink}");
    }
    api.stop().await;
}
