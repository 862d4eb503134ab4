//! Health, readiness and metrics: `/metrics` passes `promtool check
//! metrics`, and `/ready` follows the store through an outage and back
//! without a restart, while nothing is acknowledged in between.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_actors::durable::store::{ChannelKind, Role};
use courier_protocol::codec::Encoding;
use courier_protocol::frames::*;
use support::server::{eventually, test_config, Backend, TestServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("http");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    c.join(ch, None).await.expect("join");
    c.send_text(ch, "hello").await.expect("send");
    let (status, body) = get(&format!("{}/metrics", server.http_url())).await;
    assert_eq!(status, 200);
    for series in [
        "courier_connections",
        "courier_messages_published_total",
        "courier_publish_ack_seconds_bucket",
        "courier_persist_batch_size_bucket",
        "courier_audit_entries_total",
        "courier_audit_batch_size_bucket",
        "courier_process_resident_memory_bytes",
        "courier_process_open_fds",
    ] {
        assert!(body.contains(series), "{series} missing from /metrics");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer_on_a_fresh_server() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    assert_eq!(get(&format!("{}/health", server.http_url())).await.0, 200);
    assert_eq!(get(&format!("{}/ready", server.http_url())).await.0, 200);
    assert_eq!(get(&format!("{}/metrics", server.http_url())).await.0, 200);
    server.stop().await;
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new
/// ones (an outage), then let them through again.
struct Proxy {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let down = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, l) = (down.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                l.lock().expect("links").push(link);
            }
        });
        Proxy { addr, down, links }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_a_postgres_outage_and_nothing_is_acked_meanwhile() {
    let Some(url) = support::fresh_postgres_url().await else {
        return;
    };
    // postgres://user@host:port/db -> the same through the proxy.
    let (before_host, rest) = url.split_once('@').expect("url has a user");
    let (host_port, db) = rest.split_once('/').expect("url has a database");
    let proxy = Proxy::start(host_port.to_string()).await;
    let proxied = format!("{before_host}@{}/{db}", proxy.addr);

    let dir = tempfile::tempdir().expect("tmp");
    let config = test_config(&dir, proxied);
    let server = TestServer::start_config(config, dir, None).await;
    let ready = format!("{}/ready", server.http_url());
    assert_eq!(get(&ready).await.0, 200);
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    c.join(ch, None).await.expect("join");
    c.send_text(ch, "before")
        .await
        .expect("acked before the outage");

    proxy.cut();
    assert!(
        eventually(Duration::from_secs(15), async || get(&ready).await.0 == 503).await,
        "/ready turns 503 while the store is down"
    );
    let mut during = SendMessage::text(ch, "during");
    during.client_msg_id = Some("during-1".into());
    match c
        .request(ClientRequest::SendMessage(during.clone()))
        .await
        .expect("answered")
    {
        ServerFrame::Error(e) => assert_eq!(e.code, courier_protocol::ErrorCode::Unavailable),
        other => panic!("nothing may be acked while the store is down: {other:?}"),
    }

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(20), async || get(&ready).await.0 == 200).await,
        "/ready returns to 200 without a restart"
    );
    // The client resends what was not acked; it is stored exactly once.
    match c
        .ack(ClientRequest::SendMessage(during.clone()))
        .await
        .expect("acked after recovery")
        .result
    {
        AckResult::Sent(s) => assert_eq!((s.seq, s.duplicate), (2, false)),
        other => panic!("{other:?}"),
    }
    c.send_text(ch, "after").await.expect("service resumed");
    let request = ClientRequest::FetchHistory(FetchHistory {
        channel_id: ch,
        before_seq: None,
        limit: None,
    });
    match c.request(request).await.expect("history") {
        ServerFrame::History(h) => {
            let texts: Vec<&str> = h.messages.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["before", "during", "after"]);
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
    support::release_postgres_db(&url).await;
}
