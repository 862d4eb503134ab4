//! The network edge under hostile or careless clients, and what it tells
//! operators.
//!
//! | test | backend | what it checks |
//! |---|---|---|
//! | `slow_body_gets_408` | SQLite | a body trickled a byte at a time past `http_body_timeout_ms` answers 408, the connection closes, the timeout is counted; a body sent in parts within the deadline is served |
//! | `connection_caps_per_address` | SQLite | the WebSocket past `max_unauthenticated_per_ip` is refused 429 (counted), another loopback address still gets in, authenticating frees a place, `max_connections_per_ip` caps the rest, closing frees a place |
//! | `security_headers` | SQLite | `nosniff`, `no-referrer` on every answer, `Cache-Control: no-store` on `/api` ones, no HSTS without TLS (with TLS: `rest_tls.rs`) |
//! | `health_says_what_runs` | both | `/health` names the version, uptime and store; `/ready` lists nothing failing |
//! | `ready_names_the_database` | PostgreSQL | `/ready` answers 503 with `failing: ["database"]` while the database refuses connections, and 200 again after |

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use courier_actors::durable::store::Role;
use courier_protocol::client::{Client, ClientError};
use rest::{Backend, Rest};
use serde_json::Value;
use support::outage::{Admin, ConnectionsBlocked};
use support::server::{eventually, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;

/// The value of an unlabelled counter, or of one with `label` among its
/// labels, in this process's metrics (0 before its first increment).
fn counter(name: &str, label: &str) -> f64 {
    courier::telemetry::render_metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// slow_body_gets_408
// ---------------------------------------------------------------------------

/// What a raw HTTP client saw.
struct Seen {
    /// Everything the server sent.
    answer: String,
    /// When the server closed the connection, from the first byte sent.
    closed_after: Option<Duration>,
}

/// Sends `head`, then `body` in pieces of `piece` bytes every `gap`, until
/// the server closes the connection or `give_up` passes.
async fn trickle(addr: SocketAddr, head: &str, body: &[u8], piece: usize, gap: Duration) -> Seen {
    let give_up = Duration::from_secs(15);
    let started = Instant::now();
    let (mut read, mut write) = TcpStream::connect(addr).await.expect("tcp").into_split();
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return (answer, Instant::now()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    });
    write.write_all(head.as_bytes()).await.expect("head");
    let mut pacing = tokio::time::interval(gap);
    for chunk in body.chunks(piece) {
        pacing.tick().await;
        if reader.is_finished()
            || started.elapsed() > give_up
            || write.write_all(chunk).await.is_err()
        {
            break;
        }
    }
    let (answer, closed) = match tokio::time::timeout(give_up, reader).await {
        Ok(Ok((answer, at))) => (answer, Some(at - started)),
        _ => (Vec::new(), None),
    };
    Seen {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed_after: closed,
    }
}

fn login_head(content_length: usize) -> String {
    format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: courier.test\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    )
}

/// Fails until request bodies have a deadline: before, the trickler was
/// held for as long as it kept sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_gets_408() {
    let deadline = Duration::from_millis(1500);
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.http_body_timeout_ms = deadline.as_millis() as u64;
    })
    .await
    .expect("server");
    let before = counter("courier_http_body_timeouts_total", "");

    // 2,000 bytes declared, one byte every 100 ms: 200 s if let run.
    let body = vec![b' '; 2000];
    let seen = trickle(
        server.addr,
        &login_head(body.len()),
        &body,
        1,
        Duration::from_millis(100),
    )
    .await;
    // The 408 is sent, then the connection closed; a byte the trickler sent
    // meanwhile may make that close a reset, which can discard the 408
    // before the client reads it. Either way it ends at the deadline.
    assert!(
        seen.answer.is_empty()
            || (seen.answer.starts_with("HTTP/1.1 408") && seen.answer.contains("invalid_frame")),
        "answer: {:?}",
        seen.answer
    );
    let closed = seen.closed_after.expect("the connection is closed");
    eprintln!(
        "trickler: closed after {closed:?}, answer {:?}",
        seen.answer.lines().next().unwrap_or("(none: reset)")
    );
    assert!(
        closed >= deadline,
        "closed after {closed:?}, before the deadline"
    );
    assert!(closed < deadline * 4, "closed only after {closed:?}");
    assert!(
        counter("courier_http_body_timeouts_total", "") > before,
        "the timeout is counted"
    );

    // A body in two parts well within the deadline is served (401: no such
    // user), not cut.
    let body = br#"{"username": "nobody", "password": "wrong password, long enough"}"#;
    let seen = trickle(
        server.addr,
        &login_head(body.len()),
        body,
        body.len() / 2 + 1,
        Duration::from_millis(200),
    )
    .await;
    assert!(
        seen.answer.starts_with("HTTP/1.1 401"),
        "answer: {:?}",
        seen.answer
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// connection_caps_per_address
// ---------------------------------------------------------------------------

/// A WebSocket upgrade from `from` (a loopback address) to `server`.
async fn upgrade_from(
    from: IpAddr,
    server: &TestServer,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tungstenite::Error> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind a loopback address");
    let tcp = socket.connect(server.addr).await.expect("tcp");
    tokio_tungstenite::client_async(server.ws_url(), tcp)
        .await
        .map(|(ws, _)| ws)
}

/// An unauthenticated client from 127.0.0.1, or the status refusing it.
async fn connect(server: &TestServer) -> Result<Client, u16> {
    match Client::builder(server.ws_url())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
    {
        Ok(client) => Ok(client),
        Err(ClientError::Refused { status }) => Err(status),
        Err(e) => panic!("connect: {e}"),
    }
}

async fn authenticate(client: &mut Client, token: &str) {
    let response = client.authenticate(token).await.expect("authenticate");
    assert!(response.result.is_ok(), "refused: {response:?}");
}

/// Fails until one address's WebSockets are capped: before, every upgrade
/// was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_address() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.max_unauthenticated_per_ip = 3;
        c.max_connections_per_ip = 5;
        // No socket of this test may time out unauthenticated meanwhile.
        c.auth_timeout_ms = 120_000;
    })
    .await
    .expect("server");
    let user = server.user("capped", Role::User).await;
    let refused_unauth = || {
        counter(
            "courier_connections_refused_total",
            "unauthenticated_per_ip",
        )
    };
    let refused_total = || {
        counter(
            "courier_connections_refused_total",
            "\"connections_per_ip\"",
        )
    };
    let (unauth_before, total_before) = (refused_unauth(), refused_total());

    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(connect(&server).await.expect("under the cap"));
    }
    assert_eq!(
        connect(&server).await.err(),
        Some(429),
        "the 4th unauthenticated"
    );
    assert!(refused_unauth() > unauth_before, "the refusal is counted");
    // The refusal is a JSON error with Retry-After.
    let local = IpAddr::from([127, 0, 0, 1]);
    match upgrade_from(local, &server).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON body");
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
    // Another address is counted apart.
    let other = IpAddr::from([127, 0, 0, 2]);
    let _elsewhere = upgrade_from(other, &server)
        .await
        .expect("127.0.0.2 gets in");

    // Authenticating frees an unauthenticated place.
    authenticate(&mut first[0], &user.token).await;
    first.push(connect(&server).await.expect("a freed place"));
    authenticate(&mut first[1], &user.token).await;
    first.push(connect(&server).await.expect("a freed place"));
    // 5 connections, 2 of them unauthenticated: the total cap refuses.
    authenticate(&mut first[2], &user.token).await;
    assert_eq!(
        connect(&server).await.err(),
        Some(429),
        "the 6th connection"
    );
    assert!(refused_total() > total_before, "the refusal is counted");

    // Closing one gives its place back.
    first.remove(0).close().await.expect("close");
    let mut admitted = None;
    assert!(
        eventually(Duration::from_secs(10), async || {
            admitted = connect(&server).await.ok();
            admitted.is_some()
        })
        .await,
        "a closed connection frees its place"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// security_headers
// ---------------------------------------------------------------------------

/// Fails until the answers carry the security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let root = api.root().await;
    let anonymous = reqwest::Client::new();
    let base = &api.base;
    let answers = [
        ("/health", anonymous.get(format!("{base}/health"))),
        ("/ready", anonymous.get(format!("{base}/ready"))),
        ("/metrics", anonymous.get(format!("{base}/metrics"))),
        (
            "/api/openapi.json",
            anonymous.get(format!("{base}/api/openapi.json")),
        ),
        (
            "/api/channels",
            anonymous.get(format!("{base}/api/channels")),
        ),
        (
            "/api/channels",
            anonymous
                .get(format!("{base}/api/channels"))
                .bearer_auth(&root.token),
        ),
        (
            "/api/auth/login",
            anonymous
                .post(format!("{base}/api/auth/login"))
                .json(&serde_json::json!({"username": "nobody", "password": "x"})),
        ),
        (
            "/api/no-such-thing",
            anonymous.get(format!("{base}/api/no-such-thing")),
        ),
    ];
    for (path, request) in answers {
        let answer = request.send().await.expect("request");
        let status = answer.status();
        let h = answer.headers();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(
            header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path} {status}"
        );
        assert_eq!(
            header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{path} {status}"
        );
        assert_eq!(
            header("strict-transport-security"),
            None,
            "{path}: no HSTS without TLS"
        );
        if path.starts_with("/api") {
            assert_eq!(
                header("cache-control").as_deref(),
                Some("no-store"),
                "{path} {status}"
            );
        }
    }
    api.stop().await;
}

// ---------------------------------------------------------------------------
// health_says_what_runs, ready_names_the_database
// ---------------------------------------------------------------------------

async fn get_json(url: String) -> (u16, Value) {
    let answer = reqwest::get(url).await.expect("request");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("JSON"))
}

both_backends!(health_says_what_runs);

async fn health_says_what_runs(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let (status, health) = get_json(format!("{}/health", server.http_url())).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");
    assert!(health["uptimeSeconds"].is_u64(), "{health}");
    let store = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(health["store"], store, "{health}");
    let (status, ready) = get_json(format!("{}/ready", server.http_url())).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["failing"], serde_json::json!([]), "{ready}");
    server.stop().await;
}

/// Fails until `/ready` names what is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_database() {
    let Some(server) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    let db = support::database_name(server.pg_url().expect("PostgreSQL"))
        .expect("a database name")
        .to_owned();
    let url = format!("{}/ready", server.http_url());
    let mut admin = Admin::connect().await;
    let blocked = ConnectionsBlocked::block(&mut admin, &db).await;
    admin.terminate(&db).await;
    let cut = Instant::now();
    let mut last = Value::Null;
    let down = eventually(Duration::from_secs(20), async || {
        let (status, body) = get_json(url.clone()).await;
        last = body;
        status == 503
    })
    .await;
    assert!(
        down,
        "/ready stayed ready while the database refused: {last}"
    );
    assert_eq!(last["ready"], false, "{last}");
    assert_eq!(last["failing"], serde_json::json!(["database"]), "{last}");
    assert_eq!(last["store"], false, "{last}");
    let to_503 = cut.elapsed();
    blocked.restore(&mut admin).await;
    let restored = Instant::now();
    let up = eventually(Duration::from_secs(20), async || {
        let (status, body) = get_json(url.clone()).await;
        last = body;
        status == 200
    })
    .await;
    assert!(up, "/ready did not come back: {last}");
    assert_eq!(last["failing"], serde_json::json!([]), "{last}");
    eprintln!(
        "/ready: 503 {to_503:?} after the cut, 200 {:?} after the restore",
        restored.elapsed()
    );
    server.stop().await;
}
