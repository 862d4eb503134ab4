//! No message text, token or password reaches the log, at the most verbose
//! level anyone can ask for: the real `courier` binary runs with
//! `RUST_LOG=trace` and `COURIER_LOG_LEVEL=trace` (pretty on SQLite, JSON on
//! PostgreSQL), a user registers, logs in, sends messages with a unique
//! marker over WebSocket (JSON and MessagePack) and REST, refreshes its
//! tokens and changes its password; then the captured stdout and stderr
//! must hold none of the markers, tokens or passwords. The log must also
//! hold trace lines, so that the test cannot pass on an empty log.
//! Dependencies that print frames and bodies at trace are capped by
//! `telemetry::CAPPED_TARGETS` (docs/operations.md).

mod support;

use std::time::Duration;

use courier_protocol::client::Client;
use courier_protocol::codec::Encoding;
use courier_protocol::ChannelId;
use serde_json::{json, Value};
use support::process::{Broker, BrokerSpec};

const PASSWORD: &str = "hygiene-old-pass-7f3a91c2";
const NEW_PASSWORD: &str = "hygiene-new-pass-b84e06d5";

async fn call(
    http: &reqwest::Client,
    broker: &Broker,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{}{path}", broker.http_url()))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

async fn ws_send(broker: &Broker, token: &str, channel: ChannelId, encoding: Encoding, text: &str) {
    let mut client = Client::builder(broker.ws_url())
        .encoding(encoding)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    let auth = client.authenticate(token).await.expect("authenticate");
    assert!(auth.result.is_ok(), "authenticated: {:?}", auth.result);
    client.join(channel, None).await.expect("join");
    client
        .send_text(channel, text)
        .await
        .expect("send over WebSocket");
}

async fn nothing_secret_is_logged(database_url: &str, dir: &tempfile::TempDir, format: &str) {
    let spec = BrokerSpec::new(dir.path(), database_url)
        .with("RUST_LOG", "trace")
        .with("COURIER_LOG_LEVEL", "trace")
        .with("COURIER_LOG_FORMAT", format)
        .with("COURIER_ALLOW_REGISTRATION", "true");
    let broker = spec.start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let marker = format!("hygiene-marker-{}", uuid::Uuid::new_v4().simple());
    let username = format!("hygiene{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    let (status, body) = call(
        &http,
        &broker,
        "/api/auth/register",
        None,
        json!({"username": username, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "register: {body}");
    let (status, login) = call(
        &http,
        &broker,
        "/api/auth/login",
        None,
        json!({"username": username, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "login: {login}");
    let token = login["token"].as_str().expect("token").to_owned();
    let refresh = login["refreshToken"].as_str().expect("refresh").to_owned();
    let (status, created) = call(
        &http,
        &broker,
        "/api/channels",
        Some(&token),
        json!({"name": "hygiene", "kind": "private"}),
    )
    .await;
    assert_eq!(status, 201, "channel: {created}");
    let channel: ChannelId =
        serde_json::from_value(created["channel"]["id"].clone()).expect("channel id");

    ws_send(
        &broker,
        &token,
        channel,
        Encoding::Json,
        &format!("{marker}-ws-json"),
    )
    .await;
    ws_send(
        &broker,
        &token,
        channel,
        Encoding::MessagePack,
        &format!("{marker}-ws-msgpack"),
    )
    .await;
    let (status, sent) = call(
        &http,
        &broker,
        "/api/messages",
        Some(&token),
        json!({"channelId": channel, "text": format!("{marker}-rest")}),
    )
    .await;
    assert!(status == 200 || status == 201, "REST send: {sent}");
    let history = http
        .get(format!(
            "{}/api/channels/{channel}/messages",
            broker.http_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history");
    assert_eq!(history.status().as_u16(), 200);
    let history = history.text().await.expect("history body");
    assert!(history.contains(&marker), "the messages were stored");

    let (status, refreshed) = call(
        &http,
        &broker,
        "/api/auth/refresh-token",
        None,
        json!({"refreshToken": refresh}),
    )
    .await;
    assert_eq!(status, 200, "refresh: {refreshed}");
    let token2 = refreshed["token"].as_str().expect("token").to_owned();
    let refresh2 = refreshed["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    // A failed login with the old password's look-alike, and a bad token:
    // refusals must not echo what was sent either.
    let wrong = format!("{PASSWORD}-wrong");
    let (status, _) = call(
        &http,
        &broker,
        "/api/auth/login",
        None,
        json!({"username": username, "password": wrong}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &http,
        &broker,
        "/api/auth/change-password",
        Some(&token2),
        json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(status, 204, "change password");
    let (status, relogin) = call(
        &http,
        &broker,
        "/api/auth/login",
        None,
        json!({"username": username, "password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "login with the new password: {relogin}");
    let token3 = relogin["token"].as_str().expect("token").to_owned();

    let log_path = spec.log_path();
    broker.terminate(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&log_path).expect("read the log");

    assert!(
        log.contains("TRACE") || log.contains("\"level\":\"TRACE\""),
        "the broker logged at trace level"
    );
    let secrets = [
        ("message text", marker.as_str()),
        ("access token", token.as_str()),
        ("refresh token", refresh.as_str()),
        ("refreshed access token", token2.as_str()),
        ("rotated refresh token", refresh2.as_str()),
        ("access token after the password change", token3.as_str()),
        ("password", PASSWORD),
        ("new password", NEW_PASSWORD),
    ];
    for (what, secret) in secrets {
        if let Some(at) = log.find(secret) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!(
                "the {what} reached the log ({format}):\n{}",
                &log[line_start..line_end.min(line_start + 2000)]
            );
        }
    }
    // A token's signature alone (its last part) must not be there either.
    for token in [&token, &token2, &token3] {
        let signature = token.rsplit('.').next().expect("a JWT");
        assert!(
            !log.contains(signature),
            "a token's signature reached the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_is_logged_at_trace_sqlite_pretty() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("courier.db").display());
    nothing_secret_is_logged(&url, &dir, "pretty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_is_logged_at_trace_postgres_json() {
    let Some(url) = support::fresh_postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    nothing_secret_is_logged(&url, &dir, "json").await;
    support::release_postgres_db(&url).await;
}
