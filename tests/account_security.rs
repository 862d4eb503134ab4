//! Account security end to end, on a real server: the initial administrator
//! is held to the password policy and audited like any user creation; no
//! user-targeting route lets a caller act on a user of a higher role; failed
//! logins lock out the address they come from, not the account's owner
//! elsewhere; registration has a per-address limit of its own.
//!
//! Distinct client addresses are real: each client binds its socket to a
//! loopback address of its own (127.0.0.2, 127.0.0.3, ...; Linux routes all
//! of 127.0.0.0/8 to `lo`), and the server sees that peer address.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use courier::config::Secret;
use courier_protocol::UserId;
use reqwest::Method;
use rest::{Backend, Reply, Rest, PASSWORD, ROOT};
use serde_json::{json, Value};

both_backends!(
    initial_admin_creation_is_in_the_verified_audit_chain,
    nobody_acts_on_a_user_of_a_higher_role,
    failures_from_other_addresses_do_not_lock_out_the_owner,
    registration_is_rate_limited_per_address,
);

/// An HTTP client whose connections come from `127.0.0.<last>`.
fn client_at(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .user_agent(rest::USER_AGENT)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// `POST path` with `body` from `client`, with a bearer token when given.
async fn post_from(
    api: &Rest,
    client: &reqwest::Client,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let mut request = client.post(format!("{}{path}", api.base)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    rest::reply(request.send().await.expect("request")).await
}

async fn login_from(api: &Rest, client: &reqwest::Client, username: &str, password: &str) -> Reply {
    post_from(
        api,
        client,
        "/api/auth/login",
        None,
        json!({"username": username, "password": password}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_initial_admin_is_refused_naming_the_rule() {
    let cases = [
        (
            "root",
            "short",
            "initial_admin_password: must be at least 12 characters",
        ),
        (
            "rootrootroot",
            "RootRootRoot",
            "initial_admin_password: must not be the username",
        ),
        (
            "r",
            "correct horse battery staple",
            "initial_admin_username: must be 3 to 32 characters",
        ),
    ];
    for (username, password, message) in cases {
        let (url, dir) = support::fresh_sqlite_url();
        let mut config = support::server::test_config(&dir, url);
        rest::configure(&mut config);
        config.initial_admin_username = Some(username.into());
        config.initial_admin_password = Some(Secret::new(password));
        let error = match courier::server::start(config.clone()).await {
            Ok(_) => panic!("{username}/{password}: the server started"),
            Err(e) => e.to_string(),
        };
        assert!(error.starts_with(message), "{error:?}");
        assert!(!error.contains(password), "no password in {error:?}");
        let store = courier::server::open_store(&config).await.expect("store");
        assert_eq!(
            store.count_users().await.expect("count"),
            0,
            "no admin made"
        );
    }
}

async fn initial_admin_creation_is_in_the_verified_audit_chain(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    api.user(&root, "nurse", "user").await;
    let created = api.audit_entries("user.create", 2).await;
    let initial = created
        .iter()
        .find(|e| e.details["username"] == ROOT)
        .expect("the initial admin's user.create");
    assert_eq!(initial.actor_id, None, "the system acted");
    assert_eq!(initial.ip, None);
    assert_eq!(initial.details["userId"], root.user_id);
    assert_eq!(initial.details["role"], "super_admin");
    // The same details as a creation through REST.
    let by_rest = created
        .iter()
        .find(|e| e.details["username"] == "nurse")
        .expect("the REST user.create");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&initial.details), keys(&by_rest.details));
    assert_eq!(by_rest.actor_id, Some(root.user_id.parse().expect("id")));

    let report = api.get("/api/audit/verify", &root.token).await.expect(200);
    assert_eq!(report.body["ok"], true, "{}", report.body);
    assert!(report.body["entries"].as_u64().expect("entries") >= initial.seq);
    api.stop().await;
}

async fn nobody_acts_on_a_user_of_a_higher_role(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let admin = api.user(&root, "admin1", "admin").await;
    let peer = api.user(&root, "admin2", "admin").await;
    let nurse = api.user(&root, "nurse", "user").await;
    let on = |id: &str, rest: &str| format!("/api/users/{id}{rest}");

    // Upward: every route that acts on the super admin refuses the admin.
    let upward = [
        (Method::GET, on(&root.user_id, "/sessions"), None),
        (Method::GET, on(&root.user_id, "/sessions?all=true"), None),
        (Method::POST, on(&root.user_id, "/terminate-sessions"), None),
        (
            Method::PUT,
            on(&root.user_id, ""),
            Some(json!({"email": "x@example.org"})),
        ),
        (
            Method::PUT,
            on(&root.user_id, ""),
            Some(json!({"role": "user"})),
        ),
        (
            Method::PUT,
            on(&root.user_id, ""),
            Some(json!({"password": "a brand new password"})),
        ),
        (Method::DELETE, on(&root.user_id, ""), None),
    ];
    for (method, path, body) in &upward {
        let reply = api
            .call(method.clone(), path, Some(&admin.token), body.clone())
            .await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
        assert_eq!(reply.code(), "forbidden", "{method} {path}");
    }
    // Nothing happened to the super admin: their session still works.
    let sessions = api
        .get(&on(&root.user_id, "/sessions"), &root.token)
        .await
        .expect(200);
    assert!(!sessions.body["sessions"]
        .as_array()
        .expect("list")
        .is_empty());
    api.login(ROOT, PASSWORD).await;
    // Every refusal is audited.
    let denied = api.audit_entries("access.denied", upward.len()).await;
    let admin_id: UserId = admin.user_id.parse().expect("id");
    let refused: Vec<&Value> = denied
        .iter()
        .filter(|e| e.actor_id == Some(admin_id) && e.details["userId"] == root.user_id)
        .map(|e| &e.details["op"])
        .collect();
    assert_eq!(refused.len(), upward.len(), "{refused:?}");
    for op in [
        "users.sessions",
        "users.terminate_sessions",
        "users.update",
        "users.delete",
    ] {
        assert!(refused.iter().any(|o| *o == op), "{op} in {refused:?}");
    }

    // Level and downward: allowed.
    api.get(&on(&peer.user_id, "/sessions"), &admin.token)
        .await
        .expect(200);
    api.get(&on(&nurse.user_id, "/sessions"), &admin.token)
        .await
        .expect(200);
    let ended = api
        .post(
            &on(&nurse.user_id, "/terminate-sessions"),
            &admin.token,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(ended.body["revoked"], 1);
    // A plain user acts on nobody but themselves.
    let nurse = api.login("nurse", PASSWORD).await;
    api.get(&on(&nurse.user_id, "/sessions"), &nurse.token)
        .await
        .expect(200);
    api.get(&on(&admin.user_id, "/sessions"), &nurse.token)
        .await
        .expect_error(403, "forbidden");
    api.stop().await;
}

async fn failures_from_other_addresses_do_not_lock_out_the_owner(backend: Backend) {
    // The defaults: 5 failures lock an address, 20 across addresses start
    // the back-off.
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    api.post(
        "/api/users",
        &root.token,
        json!({"username": "nurse", "password": PASSWORD, "role": "user"}),
    )
    .await
    .expect(201);
    // The owner logs in from 127.0.0.7, once, before the attack.
    let home = client_at(7);
    let before = login_from(&api, &home, "nurse", PASSWORD).await.expect(200);
    let token = rest::session_of(&before.body).token;

    // Five wrong passwords from each of five addresses.
    let attackers: Vec<reqwest::Client> = (2..=6).map(client_at).collect();
    for attacker in &attackers {
        for _ in 0..5 {
            let reply = login_from(&api, attacker, "nurse", "not the password").await;
            assert!(
                matches!(reply.status, 401 | 429),
                "an attempt answers 401 or, under back-off, 429: {}",
                reply.body
            );
        }
    }
    // An attacking address is locked out: even the right password fails,
    // with the one answer of every failed login.
    let locked = login_from(&api, &attackers[0], "nurse", PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    let wrong = login_from(&api, &attackers[0], "nurse", "not the password").await;
    assert_eq!(locked.body, wrong.body);

    // The owner, from the address they logged in from before, gets in.
    login_from(&api, &home, "nurse", PASSWORD).await.expect(200);
    // So does the owner from a new address presenting their live session.
    let travelling = post_from(
        &api,
        &client_at(10),
        "/api/auth/login",
        Some(&token),
        json!({"username": "nurse", "password": PASSWORD}),
    )
    .await;
    assert_eq!(travelling.status, 200, "{}", travelling.body);
    // A new address without one shares the account's slow back-off: one
    // attempt per lockout_backoff_secs, the rest answered 429 with a wait.
    let stranger = client_at(11);
    let mut throttled = None;
    for _ in 0..3 {
        let reply = login_from(&api, &stranger, "nurse", "a guess at the password").await;
        if reply.status == 429 {
            throttled = Some(reply);
            break;
        }
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    let throttled = throttled.expect("throttled under back-off");
    assert_eq!(throttled.code(), "rate_limited");
    assert!(throttled.headers.contains_key("retry-after"));
    // Another account is not slowed at all.
    login_from(&api, &stranger, ROOT, PASSWORD)
        .await
        .expect(200);

    // Audited: the failures with their reasons, and both kinds of lockout.
    let failures = api.audit_entries("auth.login_failed", 26).await;
    let reasons: Vec<&str> = failures
        .iter()
        .filter_map(|e| e.details["reason"].as_str())
        .collect();
    for reason in ["bad_password", "locked", "throttled"] {
        assert!(reasons.contains(&reason), "{reason} in {reasons:?}");
    }
    let lockouts = api.audit_entries("auth.lockout", 5).await;
    let scoped = |scope: &str| {
        lockouts
            .iter()
            .filter(|e| e.details["scope"] == scope)
            .collect::<Vec<_>>()
    };
    let addresses: Vec<Option<&str>> = scoped("address").iter().map(|e| e.ip.as_deref()).collect();
    assert!(addresses.len() >= 4, "{addresses:?}");
    assert!(addresses.contains(&Some("127.0.0.2")), "{addresses:?}");
    assert!(!addresses.contains(&Some("127.0.0.7")), "{addresses:?}");
    let account = scoped("account");
    assert_eq!(account.len(), 1, "the back-off began once");
    assert_eq!(account[0].details["failures"], 20);
    api.stop().await;
}

async fn registration_is_rate_limited_per_address(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.register_per_hour = 3).await else {
        return;
    };
    let register = |client: reqwest::Client, username: &'static str| {
        let api = &api;
        async move {
            post_from(
                api,
                &client,
                "/api/auth/register",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await
        }
    };
    let prober = client_at(2);
    register(prober.clone(), "alice").await.expect(201);
    // The taken name still says so (409)...
    register(prober.clone(), "alice")
        .await
        .expect_error(409, "conflict");
    register(prober.clone(), "bob").await.expect(201);
    // ...but probing names from one address soon stops.
    let limited = register(prober.clone(), "carol")
        .await
        .expect_error(429, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    assert!(
        limited.body["error"]["retryAfterMs"]
            .as_u64()
            .expect("wait")
            > 0
    );
    // Logins from that address are not counted against registration, and
    // another address registers as usual.
    login_from(&api, &prober, "alice", PASSWORD)
        .await
        .expect(200);
    register(client_at(3), "carol").await.expect(201);
    api.stop().await;
}
