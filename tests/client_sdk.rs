//! The Rust SDK (`courier-client`, `sdk/rust/`) against the real `courier`
//! binary ([`support::process`]): the promises it makes to the app hold
//! through what happens to the server and the network.
//!
//! | promise | test |
//! |---|---|
//! | the server SIGKILLed mid-conversation and restarted: each app gets every acknowledged message once, in seq order; every send returns once, with its ack; nothing is stored twice | `sigkill_mid_conversation_loses_and_doubles_nothing` |
//! | an outage past the server's replay limit (`COURIER_RECOVERY_MAX_REPLAY=5`, 250 missed): paged with `fetch_history`, all once and in order, then the live ones | `an_outage_past_the_replay_limit_is_paged` |
//! | access tokens of 3 s: refreshed before expiry with the refresh token rotated, the open socket re-authenticated, never disconnected, still receiving | `the_token_is_refreshed_on_the_open_socket` |
//! | the refresh cannot reach the server until the 3 s token has expired on the socket (close 4001): refreshed once reachable, reconnected with the new token, not stopped, nothing missed | `a_4001_for_an_expired_token_is_answered_by_a_refresh` |
//! | logout revokes the session: close 4003, `Stopped`, no further connection attempt, calls fail with `Stopped` | `a_revoked_session_stops_reconnecting` |
//! | the server goes silent without the socket closing, just after a send was committed: the heartbeat (no pong for `heartbeatMs` + margin) finds the socket dead; after the reconnect nothing is missed and the resend is answered `duplicate`, stored once | `a_silent_socket_is_found_dead_and_a_lost_ack_resent` |
//!
//! A client reaches the broker through a [`Relay`]: a TCP forwarder on a
//! port of its own that the test can cut (the client's network goes away,
//! the server stays) and point at a restarted broker (which listens on a new
//! port), so the client keeps one URL, as an app behind a fixed address
//! does; the relay can also mute the server's side (a silent socket). The SDK's backoff is shortened (100 ms doubling to 1 s) so that
//! the tests are quick; the behaviour is the default's.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_client::courier_protocol::frames::{MessageView, SendResult};
use courier_client::courier_protocol::ChannelId;
use courier_client::{
    login, Backoff, ClientConfig, ConnectionState, CourierClient, Error, Event, Events, Login,
};
use serde_json::{json, Value};
use support::process::{Broker, BrokerSpec};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
/// The initial super admin, who makes the channels.
const ROOT: &str = "root";

// ---------------------------------------------------------------------------
// A relay the test can cut and point elsewhere
// ---------------------------------------------------------------------------

/// A TCP forwarder on a fixed loopback port whose target can change (a
/// restarted broker listens on a new port) and which can be cut (every
/// live connection closed, every new one closed at once, until healed) or
/// muted (connections stay open but nothing from the server gets through
/// until unmuted: to the client, a server gone silent without closing,
/// while what the client writes still arrives).
struct Relay {
    addr: SocketAddr,
    shared: Arc<RelayShared>,
    accept: JoinHandle<()>,
}

struct RelayShared {
    target: Mutex<SocketAddr>,
    cut: AtomicBool,
    muted: AtomicBool,
    /// Connections accepted, cut or not: one per connection attempt.
    accepted: AtomicU64,
    live: Mutex<Vec<AbortHandle>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(RelayShared {
            target: Mutex::new(target),
            cut: AtomicBool::new(false),
            muted: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(relay_loop(listener, shared.clone()));
        Relay {
            addr,
            shared,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("target") = target;
    }

    fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for live in self.shared.live.lock().expect("live").drain(..) {
            live.abort();
        }
    }

    fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    fn mute(&self) {
        self.shared.muted.store(true, Ordering::SeqCst);
    }

    fn unmute(&self) {
        self.shared.muted.store(false, Ordering::SeqCst);
    }

    fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay_loop(listener: TcpListener, shared: Arc<RelayShared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: closed at once
        }
        let target = *shared.target.lock().expect("target");
        let forwarding = shared.clone();
        let task = tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                pipe(in_read, out_write, None),
                pipe(out_read, in_write, Some(forwarding)),
            );
        });
        let mut live = shared.live.lock().expect("live");
        live.retain(|t| !t.is_finished());
        if shared.cut.load(Ordering::SeqCst) {
            task.abort();
        } else {
            live.push(task.abort_handle());
        }
    }
}

/// Copies one direction until either side ends; with `muting`, what was
/// read is held back while the relay is muted.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    muting: Option<Arc<RelayShared>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while muting
            .as_ref()
            .is_some_and(|shared| shared.muted.load(Ordering::SeqCst))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---------------------------------------------------------------------------
// A broker, its relay, and REST set-up
// ---------------------------------------------------------------------------

struct Harness {
    spec: BrokerSpec,
    broker: Option<Broker>,
    relay: Relay,
    http: reqwest::Client,
    _dir: TempDir,
}

impl Harness {
    /// A broker on SQLite in a temporary directory, with `env` set.
    async fn start(env: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("courier.db").display());
        let mut spec = BrokerSpec::new(dir.path(), &url)
            .with("COURIER_INITIAL_ADMIN_USERNAME", ROOT)
            .with("COURIER_INITIAL_ADMIN_PASSWORD", PASSWORD);
        for (key, value) in env {
            spec = spec.with(key, value);
        }
        let broker = spec.start().await;
        let relay = Relay::start(broker.addr).await;
        Harness {
            spec,
            broker: Some(broker),
            relay,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            _dir: dir,
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("a running broker")
    }

    /// The broker's own URL (for the test's REST calls).
    fn direct(&self) -> String {
        self.broker().http_url()
    }

    /// SIGKILL.
    async fn kill(&mut self) {
        let broker = self.broker.take().expect("a running broker");
        broker.kill().await;
    }

    /// A new broker on the same data, and the relay pointed at it.
    async fn restart(&mut self) {
        assert!(self.broker.is_none(), "kill first");
        let broker = self.spec.start().await;
        self.relay.retarget(broker.addr);
        self.broker = Some(broker);
    }

    /// SDK options for a client reaching the broker through the relay.
    fn config(&self) -> ClientConfig {
        ClientConfig::new(&self.relay.url()).backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.direct()))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("a REST answer");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Registers `name` and logs in.
    async fn user(&self, name: &str) -> Login {
        let body = json!({"username": name, "password": PASSWORD});
        let (status, answer) = self.post("/api/auth/register", None, body).await;
        assert_eq!(status, 201, "register {name}: {answer}");
        login(&self.direct(), name, PASSWORD).await.expect("login")
    }

    /// A public channel (made by the super admin), which any user joins.
    async fn channel(&self, name: &str) -> ChannelId {
        let root = login(&self.direct(), ROOT, PASSWORD)
            .await
            .expect("root logs in");
        let token = root.session.access_token();
        let body = json!({"name": name, "kind": "public"});
        let (status, answer) = self.post("/api/channels", Some(token), body).await;
        assert_eq!(status, 201, "create {name}: {answer}");
        answer["channel"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no channel id: {answer}"))
    }

    /// Every message of `channel` in the store, oldest first, over REST.
    async fn stored(&self, reader: &Login, channel: ChannelId) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut url = format!(
                "{}/api/channels/{channel}/messages?limit=100",
                self.direct()
            );
            if let Some(before) = before {
                url.push_str(&format!("&beforeSeq={before}"));
            }
            let page: Value = self
                .http
                .get(url)
                .bearer_auth(reader.session.access_token())
                .send()
                .await
                .expect("history")
                .json()
                .await
                .expect("a history page");
            let page_seqs: Vec<u64> = page["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("not a page: {page}"))
                .iter()
                .map(|m| m["seq"].as_u64().expect("seq"))
                .collect();
            let Some(&oldest) = page_seqs.first() else {
                break;
            };
            seqs.splice(0..0, page_seqs);
            if page["hasMore"] != json!(true) {
                break;
            }
            before = Some(oldest);
        }
        seqs
    }
}

// ---------------------------------------------------------------------------
// What an app saw
// ---------------------------------------------------------------------------

/// Every event of one client, in order, collected by a task.
#[derive(Clone)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn collect(mut events: Events) -> Log {
        let log = Log(Arc::new(Mutex::new(Vec::new())));
        let into = log.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                into.0.lock().expect("log").push(event);
            }
        });
        log
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("log").clone()
    }

    fn messages(&self, channel: ChannelId) -> Vec<MessageView> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.channel_id == channel => Some(m),
                _ => None,
            })
            .collect()
    }

    fn count(&self, wanted: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|e| wanted(e)).count()
    }

    /// Waits until `done` holds for the events so far; panics with `what`
    /// and the event kinds seen when `timeout` passes.
    async fn wait(&self, timeout: Duration, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events()) {
                return;
            }
            if Instant::now() > deadline {
                let kinds: Vec<String> = self
                    .events()
                    .iter()
                    .filter(|e| !matches!(e, Event::Message(_) | Event::Presence(_)))
                    .map(|e| format!("{e:?}"))
                    .collect();
                panic!(
                    "{what}: not within {timeout:?}; connection events:\n{}",
                    kinds.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Panics unless `messages` are exactly `acked` (as a set), each once, in
/// ascending seq order.
#[track_caller]
fn assert_once_in_order(who: &str, messages: &[MessageView], acked: &BTreeSet<u64>) {
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{who}: seqs not strictly ascending (a duplicate or a reordering): {seqs:?}"
    );
    let got: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<&u64> = acked.difference(&got).collect();
    let extra: Vec<&u64> = got.difference(acked).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{who}: missing acked seqs {missing:?}, unexpected seqs {extra:?}"
    );
}

fn acked_seqs(results: &[Result<SendResult, Error>]) -> BTreeSet<u64> {
    results
        .iter()
        .map(|r| r.as_ref().expect("every send is acknowledged").seq)
        .collect()
}

/// `count` sends of `text-i` from `client`, `every` apart; their results.
fn sending(
    client: CourierClient,
    channel: ChannelId,
    text: &'static str,
    count: usize,
    every: Duration,
) -> JoinHandle<Vec<Result<SendResult, Error>>> {
    tokio::spawn(async move {
        let mut results = Vec::with_capacity(count);
        for i in 0..count {
            results.push(client.send(channel, &format!("{text}-{i}")).await);
            tokio::time::sleep(every).await;
        }
        results
    })
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Two clients sending to one channel, four sends in flight each; the
/// broker is SIGKILLed mid-conversation and restarted on the same data.
/// Each send returns once, with an ack; each app gets every acked message
/// once, in seq order; and the store holds each message once (a send that
/// was committed but whose ack was lost is resent, and answered
/// `duplicate`, not stored again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_conversation_loses_and_doubles_nothing() {
    const SENDERS: usize = 4;
    const EACH: usize = 20;
    const TOTAL: usize = 2 * SENDERS * EACH;
    let mut h = Harness::start(&[]).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("ward-7").await;
    let (a, a_events) = CourierClient::connect(h.config(), alice.session.clone());
    let (b, b_events) = CourierClient::connect(h.config(), bob.session.clone());
    let (a_log, b_log) = (Log::collect(a_events), Log::collect(b_events));
    a.join(channel).await.expect("alice joins");
    b.join(channel).await.expect("bob joins");

    let every = Duration::from_millis(20);
    let mut senders = Vec::new();
    for (client, who) in [(&a, "alice"), (&b, "bob")] {
        for _ in 0..SENDERS {
            senders.push(sending(client.clone(), channel, who, EACH, every));
        }
    }
    // Mid-conversation: a third of the messages through, sends in flight.
    a_log
        .wait(Duration::from_secs(20), "traffic flows", |_| {
            a_log.messages(channel).len() >= TOTAL / 3
        })
        .await;
    h.kill().await;
    let before_kill = a_log.messages(channel).len();
    assert!(
        before_kill < TOTAL,
        "the conversation was over before the kill"
    );
    // The clients' sends pile up while nothing listens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.restart().await;

    let mut results = Vec::new();
    for sender in senders {
        results.extend(sender.await.expect("a sender"));
    }
    assert_eq!(results.len(), TOTAL, "every send returned");
    let acked = acked_seqs(&results);
    assert_eq!(acked.len(), TOTAL, "each send has its own seq");
    let duplicates = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|s| s.duplicate))
        .count();

    for (who, log) in [("alice", &a_log), ("bob", &b_log)] {
        log.wait(
            Duration::from_secs(20),
            &format!("{who} gets every acked message"),
            |_| log.messages(channel).len() >= acked.len(),
        )
        .await;
        assert_once_in_order(who, &log.messages(channel), &acked);
        let lost = log.count(|e| matches!(e, Event::Disconnected { .. }));
        assert!(
            lost >= 1,
            "{who} never saw the broker go: the test proved nothing"
        );
    }
    let stored = h.stored(&alice, channel).await;
    assert_eq!(stored.len(), TOTAL, "stored once each: {stored:?}");
    println!(
        "sdk sigkill: {TOTAL} sends acked, {before_kill} delivered before the kill, \
         {duplicates} answered duplicate after a resend"
    );
    a.close().await;
    b.close().await;
}

/// Bob's network goes away while Alice sends 250 messages; the broker
/// replays at most 5 (`COURIER_RECOVERY_MAX_REPLAY`), so Bob's rejoin is
/// answered `recovered: false` and the SDK pages `fetch_history` forward.
/// Alice keeps sending while he catches up: Bob gets all of them once, in
/// order, the paged ones before the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_replay_limit_is_paged() {
    const MISSED: usize = 250;
    const LIVE: usize = 20;
    let h = Harness::start(&[("COURIER_RECOVERY_MAX_REPLAY", "5")]).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("ward-7").await;
    // Alice straight to the broker; Bob through the relay.
    let direct = ClientConfig::new(&h.direct());
    let (a, _a_events) = CourierClient::connect(direct, alice.session.clone());
    let (b, b_events) = CourierClient::connect(h.config(), bob.session.clone());
    let b_log = Log::collect(b_events);
    a.join(channel).await.expect("alice joins");
    b.join(channel).await.expect("bob joins");

    let mut results = Vec::new();
    for i in 0..3 {
        results.push(a.send(channel, &format!("before-{i}")).await);
    }
    b_log
        .wait(Duration::from_secs(10), "bob gets the first three", |_| {
            b_log.messages(channel).len() == 3
        })
        .await;

    h.relay.cut();
    b_log
        .wait(
            Duration::from_secs(10),
            "bob loses his connection",
            |events| {
                events
                    .iter()
                    .any(|e| matches!(e, Event::Disconnected { .. }))
            },
        )
        .await;
    for i in 0..MISSED {
        results.push(a.send(channel, &format!("missed-{i}")).await);
    }
    let live = sending(a.clone(), channel, "live", LIVE, Duration::from_millis(10));
    h.relay.heal();
    results.extend(live.await.expect("alice's live sends"));
    let acked = acked_seqs(&results);
    assert_eq!(acked.len(), 3 + MISSED + LIVE);

    b_log
        .wait(Duration::from_secs(30), "bob gets every message", |_| {
            b_log.messages(channel).len() >= acked.len()
        })
        .await;
    assert_once_in_order("bob", &b_log.messages(channel), &acked);
    let paged = b_log.count(|e| {
        matches!(e, Event::ChannelRecovered { channel_id, paged: true, .. } if *channel_id == channel)
    });
    assert_eq!(paged, 1, "the gap was paged (recovered: false), once");
    a.close().await;
    b.close().await;
}

/// Access tokens live 3 s. For more than three lifetimes the client stays
/// connected: it refreshes before expiry (the refresh token rotating each
/// time) and authenticates the open socket again; without that the server
/// would close it with 4001 at the first expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_on_the_open_socket() {
    let h = Harness::start(&[
        ("COURIER_ACCESS_TOKEN_TTL_SECS", "3"),
        ("COURIER_HEARTBEAT_MS", "1000"),
    ])
    .await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("ward-7").await;
    let (a, _a_events) = CourierClient::connect(h.config(), alice.session.clone());
    let (b, b_events) = CourierClient::connect(h.config(), bob.session.clone());
    let b_log = Log::collect(b_events);
    a.join(channel).await.expect("alice joins");
    b.join(channel).await.expect("bob joins");

    let results = sending(a.clone(), channel, "tick", 25, Duration::from_millis(400))
        .await
        .expect("alice's sends");
    let acked = acked_seqs(&results);
    b_log
        .wait(Duration::from_secs(10), "bob gets every message", |_| {
            b_log.messages(channel).len() >= acked.len()
        })
        .await;
    assert_once_in_order("bob", &b_log.messages(channel), &acked);

    let events = b_log.events();
    let lost: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. } | Event::Stopped { .. }))
        .collect();
    assert!(lost.is_empty(), "bob's socket did not stay open: {lost:?}");
    let mut refresh_tokens = vec![bob
        .session
        .refresh_token()
        .expect("a refresh token")
        .to_owned()];
    for event in &events {
        if let Event::SessionRefreshed(session) = event {
            refresh_tokens.push(session.refresh_token().expect("rotated").to_owned());
        }
    }
    assert!(
        refresh_tokens.len() >= 4,
        "{} refreshes in 10 s of 3 s tokens",
        refresh_tokens.len() - 1
    );
    let distinct: BTreeSet<&String> = refresh_tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        refresh_tokens.len(),
        "each refresh rotated the refresh token"
    );
    assert_eq!(
        b.session().refresh_token(),
        refresh_tokens.last().map(String::as_str),
        "the client keeps the newest"
    );
    assert_eq!(b.state(), ConnectionState::Connected);
    a.close().await;
    b.close().await;
}

/// Logging out revokes the session: the server closes the socket with
/// 4003 and the client stops, making no further connection attempt, and
/// its calls fail with `Stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_stops_reconnecting() {
    let h = Harness::start(&[]).await;
    let bob = h.user("bob").await;
    let channel = h.channel("ward-7").await;
    let (b, b_events) = CourierClient::connect(h.config(), bob.session.clone());
    let b_log = Log::collect(b_events);
    b.join(channel).await.expect("bob joins");

    let (status, body) = h
        .post(
            "/api/auth/logout",
            Some(bob.session.access_token()),
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "logout: {body}");
    b_log
        .wait(
            Duration::from_secs(10),
            "bob is stopped with 4003",
            |events| {
                events.iter().any(|e| {
                    matches!(
                        e,
                        Event::Stopped {
                            code: Some(4003),
                            ..
                        }
                    )
                })
            },
        )
        .await;
    let attempts = h.relay.accepted();
    // Longer than the test's backoff cap (1 s): a reconnect would show.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.relay.accepted(),
        attempts,
        "a connection attempt after 4003"
    );
    let events = b_log.events();
    let stopped = events
        .iter()
        .position(|e| matches!(e, Event::Stopped { .. }))
        .expect("stopped");
    let after: Vec<&Event> = events[stopped + 1..]
        .iter()
        .filter(|e| matches!(e, Event::Connecting | Event::Reconnecting { .. }))
        .collect();
    assert!(after.is_empty(), "reconnecting after 4003: {after:?}");
    assert_eq!(b.state(), ConnectionState::Stopped);
    match b.send(channel, "after logout").await {
        Err(Error::Stopped {
            code: Some(4003), ..
        }) => {}
        other => panic!("a send after revocation: {other:?}"),
    }
    b.close().await;
}

/// Bob stops hearing from the server without his socket closing (the
/// relay holds back everything the server sends), just after sending a
/// message: the server commits it, but the ack never reaches him. With no
/// pong for `heartbeatMs` plus the margin, the SDK takes the socket for
/// dead and, once the path is back, reconnects, recovers what Alice sent
/// meanwhile, and resends his message: answered `duplicate: true` with the
/// original seq, his send returns once, and the message exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_found_dead_and_a_lost_ack_resent() {
    let h = Harness::start(&[("COURIER_HEARTBEAT_MS", "500")]).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("ward-7").await;
    let (a, _a_events) =
        CourierClient::connect(ClientConfig::new(&h.direct()), alice.session.clone());
    let config = h
        .config()
        .heartbeat_margin(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1));
    let (b, b_events) = CourierClient::connect(config, bob.session);
    let b_log = Log::collect(b_events);
    a.join(channel).await.expect("alice joins");
    b.join(channel).await.expect("bob joins");
    let mut results = vec![a.send(channel, "before").await];

    h.relay.mute();
    let muted = Instant::now();
    let lost_ack = tokio::spawn({
        let b = b.clone();
        async move { b.send(channel, "my ack is lost").await }
    });
    for i in 0..5 {
        results.push(
            a.send(channel, &format!("while bob hears nothing {i}"))
                .await,
        );
    }
    b_log
        .wait(
            Duration::from_secs(10),
            "bob finds his socket dead",
            |events| {
                events.iter().any(|e| {
                matches!(e, Event::Disconnected { code: None, reason } if reason.contains("dead"))
            })
            },
        )
        .await;
    let noticed = muted.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "a silent socket was noticed after {noticed:?}"
    );
    let stored_before = h.stored(&alice, channel).await.len();
    assert_eq!(stored_before, 7, "bob's send was committed while muted");
    h.relay.unmute();
    let resent = lost_ack.await.expect("bob's sender");
    let resent = resent.expect("bob's send is acknowledged");
    assert!(resent.duplicate, "the resend found the committed message");
    results.push(Ok(resent));
    let acked = acked_seqs(&results);
    b_log
        .wait(Duration::from_secs(20), "bob recovers", |_| {
            b_log.messages(channel).len() >= acked.len()
        })
        .await;
    assert_once_in_order("bob", &b_log.messages(channel), &acked);
    assert_eq!(h.stored(&alice, channel).await.len(), 7, "stored once");
    assert_eq!(
        b.wait_for_state(ConnectionState::Connected, Duration::from_secs(5))
            .await,
        ConnectionState::Connected
    );
    a.close().await;
    b.close().await;
}

/// The refresh cannot reach the server (the REST path is cut), so the
/// 3-second token runs out on the open socket and the server closes it
/// with 4001. That 4001 is not the end: the token was due for refresh, so
/// the SDK refreshes (once the REST path is back) and reconnects with the
/// new token, recovering what was sent meanwhile, instead of stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4001_for_an_expired_token_is_answered_by_a_refresh() {
    let h = Harness::start(&[("COURIER_ACCESS_TOKEN_TTL_SECS", "3")]).await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("ward-7").await;
    let (a, _a_events) = CourierClient::connect(ClientConfig::new(&h.direct()), alice.session);
    let rest = Relay::start(h.broker().addr).await;
    rest.cut();
    let config = h.config().with_http_url(rest.url());
    let (b, b_events) = CourierClient::connect(config, bob.session);
    let b_log = Log::collect(b_events);
    a.join(channel).await.expect("alice joins");
    b.join(channel).await.expect("bob joins");

    b_log
        .wait(
            Duration::from_secs(10),
            "the server closes 4001",
            |events| {
                events.iter().any(|e| {
                    matches!(
                        e,
                        Event::Disconnected {
                            code: Some(4001),
                            ..
                        }
                    )
                })
            },
        )
        .await;
    // Alice's client refreshes straight from the broker.
    let mut results = Vec::new();
    for i in 0..3 {
        results.push(a.send(channel, &format!("while bob is out {i}")).await);
    }
    assert_ne!(
        b.state(),
        ConnectionState::Stopped,
        "stopped on a 4001 of an expired token"
    );
    rest.heal();
    let acked = acked_seqs(&results);
    b_log
        .wait(
            Duration::from_secs(20),
            "bob refreshes, reconnects and recovers",
            |_| b_log.messages(channel).len() >= acked.len(),
        )
        .await;
    assert_once_in_order("bob", &b_log.messages(channel), &acked);
    let events = b_log.events();
    let closed = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Disconnected {
                    code: Some(4001),
                    ..
                }
            )
        })
        .expect("the 4001");
    let refreshed = events[closed..]
        .iter()
        .position(|e| matches!(e, Event::SessionRefreshed(_)))
        .expect("a refresh after the 4001");
    assert!(
        events[closed + refreshed..]
            .iter()
            .any(|e| matches!(e, Event::Connected { .. })),
        "connected again after the refresh"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Stopped { .. })),
        "stopped: {events:?}"
    );
    a.close().await;
    b.close().await;
}
