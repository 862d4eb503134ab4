//! Network allow-lists and trusted proxies (docs/network.md), against a
//! server booted in-process, with real HTTP and WebSocket clients that
//! connect from distinct loopback addresses (127.0.0.x, each a TCP peer of
//! its own) and over IPv6 (`[::1]`), on both stores where the store keeps
//! what is checked (the audit's addresses).

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use courier::config::{Config, Environment, Overrides};
use courier_protocol::client::{Client, ClientError};
use reqwest::Method;
use rest::{Reply, Rest, PASSWORD, ROOT};
use serde_json::{json, Value};
use support::server::{test_config, Backend, TestServer};

both_backends!(
    the_admin_surface_has_its_own_list,
    trusted_proxies_give_the_client_address
);

/// A server on `backend` listening on `bind`, configured as the REST tests
/// are and then by `tweak`.
async fn start_at(
    backend: Backend,
    bind: SocketAddr,
    tweak: impl FnOnce(&mut Config),
) -> Option<Rest> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (url, pg_url) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("courier.db").display()),
            None,
        ),
        Backend::Postgres => {
            let url = support::fresh_postgres_url().await?;
            (url.clone(), Some(url))
        }
    };
    let mut config = test_config(&dir, url);
    rest::configure(&mut config);
    tweak(&mut config);
    let server = TestServer::start_config_at(config, dir, pg_url, bind).await;
    let base = server.http_url();
    Some(Rest {
        server,
        http: http_from(None),
        base,
    })
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An HTTP client whose connections come from `local` (any 127.0.0.x is a
/// loopback address of its own on Linux).
fn http_from(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(rest::USER_AGENT)
        .timeout(Duration::from_secs(20))
        .local_address(local)
        .build()
        .expect("http client")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// `method path` with an optional token, JSON body and `X-Forwarded-For`.
async fn call(
    http: &reqwest::Client,
    api: &Rest,
    method: Method,
    path: &str,
    token: Option<&str>,
    forwarded: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = http.request(method, format!("{}{path}", api.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(forwarded) = forwarded {
        request = request.header("X-Forwarded-For", forwarded);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    rest::reply(request.send().await.expect("send")).await
}

/// `POST /api/auth/login` from `http`, with an optional `X-Forwarded-For`.
async fn login(
    http: &reqwest::Client,
    api: &Rest,
    forwarded: Option<&str>,
    username: &str,
    password: &str,
) -> Reply {
    call(
        http,
        api,
        Method::POST,
        "/api/auth/login",
        None,
        forwarded,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

/// A WebSocket upgrade of `/ws` over a TCP connection from `local`: the
/// HTTP status of a refusal, or `Ok` with the connected client.
async fn ws_from(
    api: &Rest,
    local: IpAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    let socket = match local {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let stream = socket.connect(api.server.addr).await.expect("connect");
    match tokio_tungstenite::client_async(api.server.ws_url(), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// `courier_network_denied_total{surface}` on this process's registry.
async fn denied(api: &Rest, surface: &str) -> u64 {
    let label = format!("surface=\"{surface}\"");
    api.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("courier_network_denied_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("courier_network_denied_total{{{label}}} is exported"))
}

/// `allowed_networks` 127.0.0.0/30 (127.0.0.0 to .3), the admin surface
/// 127.0.0.1 only: .2 uses the API but not the admin surface, .9 nothing
/// but the probes. Admin-surface refusals are audited with the client's
/// address, one per address per window; public ones are not audited.
async fn the_admin_surface_has_its_own_list(backend: Backend) {
    let Some(api) = start_at(backend, loopback(), |c| {
        c.allowed_networks = vec!["127.0.0.0/30".into()];
        c.admin_allowed_networks = vec!["127.0.0.1".into()];
    })
    .await
    else {
        return;
    };
    let admin_host = http_from(Some(ip("127.0.0.1")));
    let ward = http_from(Some(ip("127.0.0.2")));
    let outside = http_from(Some(ip("127.0.0.9")));

    // The metrics are exported (at zero) from start.
    let before_admin = denied(&api, "admin").await;
    let before_api = denied(&api, "api").await;
    let before_ws = denied(&api, "ws").await;

    let root = rest::session_of(
        &login(&admin_host, &api, None, ROOT, PASSWORD)
            .await
            .expect(200)
            .body,
    );
    call(
        &admin_host,
        &api,
        Method::GET,
        "/api/users",
        Some(&root.token),
        None,
        None,
    )
    .await
    .expect(200);
    call(&admin_host, &api, Method::GET, "/admin", None, None, None)
        .await
        .expect(200);

    // 127.0.0.2: the API, the chat page and the WebSocket, not the admin
    // surface, whatever the spelling of its paths.
    let ward_root = rest::session_of(
        &login(&ward, &api, None, ROOT, PASSWORD)
            .await
            .expect(200)
            .body,
    );
    call(
        &ward,
        &api,
        Method::GET,
        "/api/channels",
        Some(&ward_root.token),
        None,
        None,
    )
    .await
    .expect(200);
    call(&ward, &api, Method::GET, "/", None, None, None)
        .await
        .expect(200);
    for (method, path) in [
        (Method::GET, "/api/users"),
        (Method::GET, "/api/audit"),
        (Method::GET, "/api/settings"),
        (Method::GET, "/api/holds"),
        (Method::GET, "/api/break-glass"),
        (Method::GET, "/api/moderation/flags"),
        (Method::GET, "/api/%75sers"),
        (Method::GET, "/API/Users"),
        (Method::GET, "/admin"),
        (Method::GET, "/admin/assets/admin.js"),
        (Method::POST, "/admin/session"),
    ] {
        let refused = call(
            &ward,
            &api,
            method.clone(),
            path,
            Some(&ward_root.token),
            None,
            None,
        )
        .await
        .expect_error(403, "forbidden");
        assert_eq!(
            refused
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{method} {path}"
        );
    }
    let ws = ws_from(&api, ip("127.0.0.2")).await;
    assert!(ws.is_ok(), "127.0.0.2 may open a WebSocket");
    drop(ws);

    // 127.0.0.9: refused everywhere but /health and /ready, before any
    // handler (no 401 for a missing token, no 404 for a path nobody serves).
    for path in [
        "/api/channels",
        "/api/auth/login",
        "/api/nothing-here",
        "/metrics",
        "/",
        "/chat",
        "/api/openapi.json",
    ] {
        call(&outside, &api, Method::GET, path, None, None, None)
            .await
            .expect_error(403, "forbidden");
    }
    login(&outside, &api, None, ROOT, PASSWORD)
        .await
        .expect_error(403, "forbidden");
    call(&outside, &api, Method::GET, "/health", None, None, None)
        .await
        .expect(200);
    call(&outside, &api, Method::GET, "/ready", None, None, None)
        .await
        .expect(200);
    assert_eq!(
        ws_from(&api, ip("127.0.0.9")).await.err(),
        Some(403),
        "the upgrade is refused"
    );
    call(&outside, &api, Method::GET, "/api/users", None, None, None)
        .await
        .expect_error(403, "forbidden");

    // Counted per surface (other tests in this process count too: at least).
    assert!(denied(&api, "admin").await >= before_admin + 12);
    assert!(denied(&api, "api").await >= before_api + 8);
    assert!(denied(&api, "ws").await > before_ws);

    // Audited: one entry per address in the window, with the client's
    // address, the prefix, the list and the refusals left out before it.
    // 127.0.0.2 was refused 11 times and .9 once on the admin surface.
    let entries = api.audit_entries("access.network_denied", 2).await;
    let by = |addr: &str| -> Vec<&courier_actors::durable::store::AuditRecord> {
        entries
            .iter()
            .filter(|e| e.ip.as_deref() == Some(addr))
            .collect()
    };
    let ward_entries = by("127.0.0.2");
    assert_eq!(ward_entries.len(), 1, "one entry per address: {entries:?}");
    let first = &ward_entries[0].details;
    assert_eq!(first["surface"], "admin");
    assert_eq!(first["prefix"], "/api/users");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["list"], "admin_allowed_networks");
    assert_eq!(first["suppressed"], 0);
    assert_eq!(ward_entries[0].actor_id, None, "no session is looked at");
    let outside_entries = by("127.0.0.9");
    assert_eq!(outside_entries.len(), 1, "{entries:?}");
    assert_eq!(outside_entries[0].details["list"], "allowed_networks");
    assert_eq!(
        outside_entries[0].details["suppressed"], 10,
        "the ward's other refusals"
    );
    assert_eq!(
        entries.len(),
        2,
        "public-surface refusals are not audited: {entries:?}"
    );
    api.stop().await;
}

/// `trusted_proxies` 127.0.0.1: its `X-Forwarded-For` is walked from the
/// right; the address found is the one the lockout, the per-IP limits, the
/// WebSocket caps and the audit use. Another peer's header is ignored.
async fn trusted_proxies_give_the_client_address(backend: Backend) {
    let Some(api) = start_at(backend, loopback(), |c| {
        c.trusted_proxies = vec!["127.0.0.1".into(), "10.0.0.0/8".into()];
        c.lockout_threshold = 3;
        c.lockout_account_threshold = 1000;
        c.register_per_hour = 1;
        c.max_unauthenticated_per_ip = 1;
    })
    .await
    else {
        return;
    };
    let proxy = http_from(Some(ip("127.0.0.1")));
    let elsewhere = http_from(Some(ip("127.0.0.2")));

    // Three failures from 203.0.113.5 (through the proxy and one more
    // trusted hop) lock that address out of the account.
    for _ in 0..3 {
        login(
            &proxy,
            &api,
            Some("203.0.113.5, 10.0.0.7"),
            ROOT,
            "wrong password",
        )
        .await
        .expect_error(401, "auth_failed");
    }
    login(&proxy, &api, Some("203.0.113.5"), ROOT, PASSWORD)
        .await
        .expect_error(401, "auth_failed");
    // A hop the client wrote itself, left of the proxy's, changes nothing.
    login(
        &proxy,
        &api,
        Some("192.0.2.77, 203.0.113.5"),
        ROOT,
        PASSWORD,
    )
    .await
    .expect_error(401, "auth_failed");
    // Another client through the same proxy has a count of its own, even
    // when it claims to be someone else on the left.
    let other = login(
        &proxy,
        &api,
        Some("203.0.113.5, 203.0.113.6"),
        ROOT,
        PASSWORD,
    )
    .await;
    let root = rest::session_of(&other.expect(200).body);
    // A peer that is not a trusted proxy is its own address, whatever it
    // forwards.
    login(&elsewhere, &api, Some("203.0.113.5"), ROOT, PASSWORD)
        .await
        .expect(200);

    let failed = api.audit_entries("auth.login_failed", 5).await;
    assert!(
        failed
            .iter()
            .all(|e| e.ip.as_deref() == Some("203.0.113.5")),
        "every failure is the forwarded client's: {:?}",
        failed.iter().map(|e| &e.ip).collect::<Vec<_>>()
    );
    let lockout = api.audit_entries("auth.lockout", 1).await;
    assert_eq!(lockout[0].ip.as_deref(), Some("203.0.113.5"));
    let logins = api.audit_entries("auth.login", 2).await;
    let mut addresses: Vec<_> = logins.iter().filter_map(|e| e.ip.clone()).collect();
    addresses.sort();
    assert_eq!(addresses, ["127.0.0.2", "203.0.113.6"]);

    // The per-IP register limit (one an hour) counts the forwarded client.
    let register = |forwarded: &'static str, name: &'static str| {
        let api = &api;
        let proxy = &proxy;
        async move {
            call(
                proxy,
                api,
                Method::POST,
                "/api/auth/register",
                None,
                Some(forwarded),
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await
        }
    };
    register("198.51.100.1", "first").await.expect(201);
    register("198.51.100.1", "second")
        .await
        .expect_error(429, "rate_limited");
    register("198.51.100.2", "third").await.expect(201);

    // The WebSocket cap of unauthenticated sockets per address (1).
    let ws = |forwarded: &'static str| {
        Client::builder(api.server.ws_url())
            .header("X-Forwarded-For", forwarded)
            .connect()
    };
    let _held = ws("198.51.100.1").await.expect("the first socket");
    assert!(
        matches!(
            ws("198.51.100.1").await,
            Err(ClientError::Refused { status: 429 })
        ),
        "the address is at its cap"
    );
    let mut another = ws("198.51.100.2")
        .await
        .expect("another address has its own cap");
    let answer = another.authenticate(&root.token).await.expect("answer");
    assert!(answer.result.is_ok(), "{answer:?}");
    let connected = api.audit_entries("ws.connect", 1).await;
    assert_eq!(connected[0].ip.as_deref(), Some("198.51.100.2"));
    api.stop().await;
}

/// IPv6: a server on `[::1]`, lists of IPv6 blocks, and a trusted proxy at
/// `::1` forwarding IPv6 clients; the allow-list is checked against the
/// forwarded client, not the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_and_lists() {
    let v6 = SocketAddr::from((ip("::1"), 0));
    // ::1 listed: served, HTTP and WebSocket.
    let api = start_at(Backend::Sqlite, v6, |c| {
        c.allowed_networks = vec!["::1".into()];
    })
    .await
    .expect("server");
    assert!(api.base.starts_with("http://[::1]:"), "{}", api.base);
    let root = rest::session_of(
        &login(&api.http, &api, None, ROOT, PASSWORD)
            .await
            .expect(200)
            .body,
    );
    let mut client = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(client
        .authenticate(&root.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    let logins = api.audit_entries("auth.login", 1).await;
    assert_eq!(logins[0].ip.as_deref(), Some("::1"));
    api.stop().await;

    // ::1 not listed: refused, HTTP and WebSocket.
    let api = start_at(Backend::Sqlite, v6, |c| {
        c.allowed_networks = vec!["2001:db8::/32".into()];
    })
    .await
    .expect("server");
    login(&api.http, &api, None, ROOT, PASSWORD)
        .await
        .expect_error(403, "forbidden");
    assert_eq!(ws_from(&api, ip("::1")).await.err(), Some(403));
    api.stop().await;

    // Behind a trusted proxy at ::1: the forwarded client is checked.
    let api = start_at(Backend::Sqlite, v6, |c| {
        c.allowed_networks = vec!["2001:db8::/32".into()];
        c.admin_allowed_networks = vec!["2001:db8:ad::/48".into()];
        c.trusted_proxies = vec!["::1".into()];
    })
    .await
    .expect("server");
    let reply = login(&api.http, &api, Some("2001:db8::42"), ROOT, PASSWORD).await;
    let root = rest::session_of(&reply.expect(200).body);
    let logins = api.audit_entries("auth.login", 1).await;
    assert_eq!(logins[0].ip.as_deref(), Some("2001:db8::42"));
    // The nearest untrusted hop is outside: refused, whatever is left of it.
    login(
        &api.http,
        &api,
        Some("2001:db8::42, 2001:db9::1"),
        ROOT,
        PASSWORD,
    )
    .await
    .expect_error(403, "forbidden");
    // No header: the proxy itself, outside the list.
    login(&api.http, &api, None, ROOT, PASSWORD)
        .await
        .expect_error(403, "forbidden");
    // The admin surface needs the admin block.
    let users = |forwarded: &'static str| {
        let api = &api;
        let token = root.token.clone();
        async move {
            call(
                &api.http,
                api,
                Method::GET,
                "/api/users",
                Some(&token),
                Some(forwarded),
                None,
            )
            .await
        }
    };
    users("2001:db8::42").await.expect_error(403, "forbidden");
    users("[2001:db8:ad::5]:4430").await.expect(200);
    let denied = api.audit_entries("access.network_denied", 1).await;
    assert_eq!(denied[0].ip.as_deref(), Some("2001:db8::42"));
    // A WebSocket through the proxy, as the forwarded client.
    let mut ws = Client::builder(api.server.ws_url())
        .header("X-Forwarded-For", "2001:db8::43")
        .connect()
        .await
        .expect("connect");
    assert!(ws
        .authenticate(&root.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    let refused = Client::builder(api.server.ws_url())
        .header("X-Forwarded-For", "2001:db9::43")
        .connect()
        .await;
    assert!(matches!(refused, Err(ClientError::Refused { status: 403 })));
    api.stop().await;
}

/// The lists are checked with the rest of the configuration: a bad entry is
/// named with its key, an admin block outside every allowed one is refused,
/// the removed `behind_proxy` is refused with what replaces it, and
/// production without TLS needs trusted proxies.
#[test]
#[allow(clippy::result_large_err)]
fn the_lists_are_checked_at_start() {
    let bad = Config {
        allowed_networks: vec!["10.0.0.0/8".into(), "10.0.0/8".into()],
        admin_allowed_networks: vec!["192.168.1.0/24".into()],
        trusted_proxies: vec!["proxy.internal".into()],
        ..Config::default()
    };
    let message = bad.check(false).expect_err("refused").to_string();
    assert!(
        message.contains("allowed_networks: \"10.0.0/8\" is not a network"),
        "{message}"
    );
    assert!(
        message.contains("trusted_proxies: \"proxy.internal\" is not a network"),
        "{message}"
    );
    assert!(
        message.contains("admin_allowed_networks lists 192.168.1.0/24, which no entry of allowed_networks overlaps"),
        "{message}"
    );
    let good = Config {
        allowed_networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        admin_allowed_networks: vec!["10.1.0.0/16".into(), "2001:db8::5".into()],
        trusted_proxies: vec!["10.0.0.2".into()],
        ..Config::default()
    };
    good.check(false).expect("valid lists");

    // Production on plain TCP: TLS or trusted proxies.
    let production = |trusted: &[&str]| Config {
        env: Environment::Production,
        jwt_secret: Some(courier::config::Secret::new(rest::SECRET)),
        master_keys: Some(courier::config::Secret::new(
            "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )),
        trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
        ..Config::default()
    };
    let plain = production(&[])
        .check(true)
        .expect_err("refused")
        .to_string();
    assert!(plain.contains("COURIER_TRUSTED_PROXIES"), "{plain}");
    if let Err(e) = production(&["10.0.0.2"]).check(true) {
        assert!(!e.to_string().contains("TLS"), "{e}");
    }

    // behind_proxy is gone: refused with the way forward, as a variable and
    // as a key, and the lists read from a comma-separated variable.
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("COURIER_BEHIND_PROXY", "true");
        let e = Config::load(None, &Overrides::default()).expect_err("refused");
        let message = e.to_string();
        assert!(
            message.contains("COURIER_BEHIND_PROXY: removed"),
            "{message}"
        );
        assert!(message.contains("trusted_proxies"), "{message}");
        jail.clear_env();
        jail.create_file("c.toml", "behind_proxy = true\n")?;
        let e = Config::load(Some(std::path::Path::new("c.toml")), &Overrides::default())
            .expect_err("refused");
        assert!(
            e.to_string()
                .contains("key behind_proxy in c.toml: removed"),
            "{e}"
        );
        jail.clear_env();
        jail.set_env("COURIER_TRUSTED_PROXIES", "10.0.0.2, 10.0.1.0/24");
        jail.set_env("COURIER_ALLOWED_NETWORKS", "10.0.0.0/8,2001:db8::/32");
        let c = Config::load(None, &Overrides::default()).expect("loads");
        assert_eq!(c.trusted_proxies, ["10.0.0.2", "10.0.1.0/24"]);
        assert_eq!(c.allowed_networks, ["10.0.0.0/8", "2001:db8::/32"]);
        jail.set_env("COURIER_ADMIN_ALLOWED_NETWORKS", "10.0.0.0/33");
        let e = Config::load(None, &Overrides::default()).expect_err("refused");
        assert!(
            e.to_string()
                .contains("COURIER_ADMIN_ALLOWED_NETWORKS: \"10.0.0.0/33\" is not a network"),
            "{e}"
        );
        Ok(())
    });
}

/// The real binary refuses the old variable with status 78 and one message.
#[test]
fn the_binary_refuses_behind_proxy() {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("migrate")
        .current_dir(dir.path())
        .env("COURIER_BEHIND_PROXY", "true")
        .env("COURIER_DATA_DIR", dir.path())
        .output()
        .expect("run courier");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("COURIER_BEHIND_PROXY: removed"), "{stderr}");
    assert!(stderr.contains("COURIER_TRUSTED_PROXIES"), "{stderr}");
}
