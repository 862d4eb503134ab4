//! Encryption at rest and the audit chain, end to end: plaintext never
//! reaches the store, tampering fails loudly, `courier audit verify` finds
//! every kind of edit, key rotation under live traffic loses nothing.

#[macro_use]
mod support;

use std::time::Duration;

use courier::commands;
use courier::config::Config;
use courier_actors::audit::chain::{self, ChainHead, PendingAudit};
use courier_actors::durable::store::{AuditFilter, ChannelKind, Role};
use courier_protocol::client::{Client, ClientError};
use courier_protocol::codec::Encoding;
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId};
use sqlx::Connection;
use support::server::{test_config, Backend, TestServer};

const T: Duration = Duration::from_secs(10);

both_backends!(
    plaintext_never_reaches_the_store,
    tampered_or_moved_ciphertext_fails_loudly,
    audit_verify_finds_every_kind_of_tampering,
    audit_chain_moved_under_the_broker_is_continued,
    rotation_under_live_load_loses_nothing,
    group_commit_writes_batches,
    audit_events_gather_for_the_batch_delay,
);

/// A server whose configuration and data directory outlive it, so CLI
/// commands (`audit verify`, `keys retire`) can run after it stopped.
async fn start(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
) -> Option<(TestServer, Config, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tmp");
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("courier.db").display()),
        Backend::Postgres => support::fresh_postgres_url().await?,
    };
    let mut config = test_config(&dir, url);
    tweak(&mut config);
    let scratch = tempfile::tempdir().expect("tmp");
    let server = TestServer::start_config(config.clone(), scratch, None).await;
    Some((server, config, dir))
}

async fn send(c: &mut Client, ch: ChannelId, text: &str) -> SendResult {
    match c
        .ack(ClientRequest::SendMessage(SendMessage::text(ch, text)))
        .await
        .expect("acked")
        .result
    {
        AckResult::Sent(s) => s,
        other => panic!("{other:?}"),
    }
}

async fn history(c: &mut Client, ch: ChannelId) -> Result<History, ErrorFrame> {
    let request = ClientRequest::FetchHistory(FetchHistory {
        channel_id: ch,
        before_seq: None,
        limit: Some(100),
    });
    match c.request(request).await.expect("answer") {
        ServerFrame::History(h) => Ok(h),
        ServerFrame::Error(e) => Err(e),
        other => panic!("{other:?}"),
    }
}

/// Runs SQL against the server's database directly (the attacker's view).
async fn sql(url: &str, statement: &str, bytes: Option<Vec<u8>>, id: Option<MessageId>) {
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
        let mut q = sqlx::query(statement);
        if let Some(b) = bytes {
            q = q.bind(b);
        }
        if let Some(id) = id {
            q = q.bind(id.to_string());
        }
        q.execute(&mut conn).await.expect("tamper");
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
        let mut q = sqlx::query(statement);
        if let Some(b) = bytes {
            q = q.bind(b);
        }
        if let Some(id) = id {
            q = q.bind(id.0);
        }
        q.execute(&mut conn).await.expect("tamper");
    }
}

async fn plaintext_never_reaches_the_store(backend: Backend) {
    let Some((server, config, data)) = start(backend, |_| {}).await else {
        return;
    };
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::Json).await;
    const SENTINEL: &str = "SENTINEL-7f3a9c-patient-dob-1961";
    for i in 0..20 {
        send(&mut c, ch, &format!("{SENTINEL} #{i}")).await;
    }
    let sent = send(&mut c, ch, "to be edited").await;
    c.ack(ClientRequest::EditMessage(EditMessage {
        message_id: sent.message_id,
        text: format!("{SENTINEL} edited"),
    }))
    .await
    .expect("edit");
    assert_eq!(
        history(&mut c, ch).await.expect("history").messages.len(),
        21,
        "readable through the server"
    );
    let dir = data.path().to_path_buf();
    server.stop().await;

    let url = config.database_url();
    let haystack: Vec<u8> = if url.starts_with("sqlite") {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                all.extend(std::fs::read(&path).expect("read"));
            }
        }
        all
    } else {
        let out = std::process::Command::new("pg_dump")
            .arg(&url)
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.len() > 1000, "the dump has content");
        out.stdout
    };
    let needle = SENTINEL.as_bytes();
    assert!(
        !haystack.windows(needle.len()).any(|w| w == needle),
        "plaintext found in the {} store",
        url.split(':').next().unwrap_or("")
    );
}

async fn tampered_or_moved_ciphertext_fails_loudly(backend: Backend) {
    let Some((server, config, _data)) = start(backend, |_| {}).await else {
        return;
    };
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    let first = send(&mut c, ch, "first").await;
    let second = send(&mut c, ch, "second").await;
    let url = config.database_url();

    // One flipped byte.
    let row = server
        .app
        .store
        .get_message(first.message_id)
        .await
        .expect("read")
        .expect("row");
    let mut flipped = row.message.ciphertext.clone();
    flipped[0] ^= 0x01;
    sql(
        &url,
        "UPDATE messages SET ciphertext = $1 WHERE id = $2",
        Some(flipped),
        Some(first.message_id),
    )
    .await;
    let err = history(&mut c, ch)
        .await
        .expect_err("a tampered page must not be served");
    assert_eq!(err.code, ErrorCode::Internal);
    let metrics = courier::telemetry::render_metrics();
    assert!(
        metrics.contains("courier_decrypt_failures_total"),
        "counted"
    );

    // Restore it, then copy the second message's ciphertext into the first row.
    sql(
        &url,
        "UPDATE messages SET ciphertext = $1 WHERE id = $2",
        Some(row.message.ciphertext.clone()),
        Some(first.message_id),
    )
    .await;
    assert_eq!(
        history(&mut c, ch).await.expect("restored").messages.len(),
        2
    );
    let other = server
        .app
        .store
        .get_message(second.message_id)
        .await
        .expect("read")
        .expect("row");
    sql(
        &url,
        "UPDATE messages SET ciphertext = $1 WHERE id = $2",
        Some(other.message.ciphertext.clone()),
        Some(first.message_id),
    )
    .await;
    sql(
        &url,
        "UPDATE messages SET nonce = $1 WHERE id = $2",
        Some(other.message.nonce.clone()),
        Some(first.message_id),
    )
    .await;
    let err = history(&mut c, ch)
        .await
        .expect_err("a moved ciphertext must not decrypt");
    assert_eq!(err.code, ErrorCode::Internal);
    // The connection keeps working.
    assert!(matches!(
        c.request(ClientRequest::Ping).await,
        Ok(ServerFrame::Pong(_))
    ));
    server.stop().await;
}

async fn audit_verify_finds_every_kind_of_tampering(backend: Backend) {
    for case in [
        "untouched",
        "update",
        "delete_middle",
        "swap",
        "delete_tail",
    ] {
        let Some((server, config, _data)) = start(backend, |c| c.audit_checkpoint_every = 5).await
        else {
            return;
        };
        let u = server.user("u", Role::User).await;
        let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
        let mut c = server.client(&u, Encoding::MessagePack).await;
        for i in 0..12 {
            send(&mut c, ch, &format!("m{i}")).await;
        }
        drop(c);
        server.stop().await;
        let url = config.database_url();
        let clean = commands::audit_verify(&config).await.expect("verify");
        assert!(clean.ok, "{case}: the untouched chain verifies: {clean:?}");
        assert!(clean.entries >= 14, "{case}: entries {}", clean.entries);
        let last = clean.entries;
        let expect_bad = match case {
            "untouched" => None,
            "update" => {
                sql(
                    &url,
                    "UPDATE audit_logs SET action = 'message.nothing' WHERE seq = 6",
                    None,
                    None,
                )
                .await;
                Some(6)
            }
            "delete_middle" => {
                sql(&url, "DELETE FROM audit_logs WHERE seq = 7", None, None).await;
                Some(7)
            }
            "swap" => {
                sql(
                    &url,
                    "UPDATE audit_logs SET seq = 1000000 WHERE seq = 4",
                    None,
                    None,
                )
                .await;
                sql(
                    &url,
                    "UPDATE audit_logs SET seq = 4 WHERE seq = 5",
                    None,
                    None,
                )
                .await;
                sql(
                    &url,
                    "UPDATE audit_logs SET seq = 5 WHERE seq = 1000000",
                    None,
                    None,
                )
                .await;
                Some(4)
            }
            "delete_tail" => {
                let statement = format!("DELETE FROM audit_logs WHERE seq > {}", last - 3);
                sql(&url, &statement, None, None).await;
                Some(last - 2)
            }
            _ => unreachable!(),
        };
        let report = commands::audit_verify(&config).await.expect("verify");
        match expect_bad {
            None => assert!(report.ok),
            Some(seq) => {
                assert!(!report.ok, "{case} must be detected: {report:?}");
                assert_eq!(report.first_bad_seq, Some(seq), "{case}: {report:?}");
            }
        }
        if let Backend::Postgres = backend {
            support::release_postgres_db(&url).await;
        }
    }
}

/// Entries the broker did not write land after the head it holds (as a
/// crashed predecessor's last append can, committing late): its next events
/// are linked after them instead of being refused forever, nothing is lost,
/// and the chain verifies.
async fn audit_chain_moved_under_the_broker_is_continued(backend: Backend) {
    let Some((server, config, _data)) = start(backend, |_| {}).await else {
        return;
    };
    let url = config.database_url();
    let u = server.user("u", Role::User).await;
    let store = courier_actors::durable::store::connect(&url)
        .await
        .expect("a second store");
    let foreign = |i: u64| PendingAudit {
        timestamp: 1_700_000_000_000,
        actor_id: None,
        ip: None,
        user_agent: None,
        action: format!("test.foreign{i}"),
        details: serde_json::json!({}),
    };
    // The broker's own start-up events may still be landing: append after
    // whatever the head is once they have.
    let mut attempts = 0;
    let foreign_head = loop {
        let head = ChainHead::after(store.audit_head().await.expect("head").as_ref());
        let (records, after) = chain::chain(&head, (1..=3).map(foreign).collect());
        match store.append_audit(&records).await {
            Ok(()) => break after,
            Err(e) if attempts < 20 => {
                attempts += 1;
                println!("foreign append raced the broker ({e}); again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("foreign append: {e}"),
        }
    };

    // The broker still holds the head before them; its next events follow them.
    let c = server.client(&u, Encoding::MessagePack).await;
    let linked = support::server::eventually(T, async || {
        let tail = store
            .audit_range(foreign_head.seq, 10)
            .await
            .expect("range");
        tail.iter().any(|r| r.action == "ws.connect")
    })
    .await;
    assert!(
        linked,
        "the broker's next event was not linked after the foreign entries"
    );
    drop(c);
    server.stop().await;
    let actions: Vec<String> = store
        .audit_range(0, 10_000)
        .await
        .expect("range")
        .into_iter()
        .map(|r| r.action)
        .collect();
    println!("foreign head {} actions {actions:?}", foreign_head.seq);
    for i in 1..=3 {
        let action = format!("test.foreign{i}");
        assert_eq!(
            actions.iter().filter(|a| **a == action).count(),
            1,
            "{actions:?}"
        );
    }
    let report = commands::audit_verify(&config).await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries as usize, actions.len());
    drop(store);
    if let Backend::Postgres = backend {
        support::release_postgres_db(&url).await;
    }
}

async fn rotation_under_live_load_loses_nothing(backend: Backend) {
    let Some((server, config, _data)) = start(backend, |_| {}).await else {
        return;
    };
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    for i in 0..60 {
        send(&mut c, ch, &format!("before {i}")).await;
    }
    assert_eq!(server.app.realtime.cipher.active_version(), 1);
    // Live traffic during the rotation: every send must be acked.
    let sender = tokio::spawn(async move {
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match c
                .ack(ClientRequest::SendMessage(SendMessage::text(
                    ch,
                    format!("during {n}"),
                )))
                .await
            {
                Ok(_) => n += 1,
                Err(ClientError::Server(e)) => panic!("a send failed during rotation: {e:?}"),
                Err(e) => panic!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (c, n)
    });
    let active = commands::keys_rotate(&config).await.expect("rotate");
    assert_eq!(active, 2);
    let (mut c, during) = sender.await.expect("sender");
    assert!(during > 20, "traffic kept flowing: {during}");
    assert!(
        support::server::eventually(T, async || server.app.realtime.cipher.active_version() == 2)
            .await,
        "the server reloaded the keyring"
    );
    // Every message still reads, old and new.
    let total = 60 + during;
    let mut texts = Vec::new();
    let mut before = None;
    loop {
        let request = ClientRequest::FetchHistory(FetchHistory {
            channel_id: ch,
            before_seq: before,
            limit: Some(100),
        });
        let page = match c.request(request).await.expect("history") {
            ServerFrame::History(h) => h,
            other => panic!("{other:?}"),
        };
        before = page.messages.first().map(|m| m.seq);
        texts.extend(page.messages.into_iter().map(|m| m.text));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(texts.len(), total, "nothing lost");
    // Nothing uses version 1 any more (a final sweep after the reload window
    // catches sends written before the server picked up version 2).
    let left = server.app.store.count_key_version(1).await.expect("count");
    assert_eq!(left, 0);
    server.stop().await;
    commands::keys_retire(&config, 1)
        .await
        .expect("version 1 retires");
}

async fn group_commit_writes_batches(backend: Backend) {
    // A batch delay makes the batching independent of how fast this build
    // commits (without one, writes gather only while a commit runs).
    let Some((server, _config, _data)) = start(backend, |c| c.persist_batch_delay_us = 2_000).await
    else {
        return;
    };
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let (mut sender, mut receiver) = server.client(&u, Encoding::MessagePack).await.split();
    // 400 sends pipelined: the persistence actor commits them in batches.
    let batch: Vec<ClientRequest> = (0..400)
        .map(|i| ClientRequest::SendMessage(SendMessage::text(ch, format!("b{i}"))))
        .collect();
    let refs = sender.send_batch(batch).await.expect("send");
    for r in &refs {
        match receiver.answer(r, T).await.expect("ack") {
            ServerFrame::Ack(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let metrics = courier::telemetry::render_metrics();
    let (sum, count) = (
        metric(&metrics, "courier_persist_batch_size_sum"),
        metric(&metrics, "courier_persist_batch_size_count"),
    );
    assert!(
        count > 0.0 && sum / count > 2.0,
        "batches average more than two rows: sum {sum}, count {count}"
    );
    server.stop().await;
}

/// Audit events that arrive within the batch delay after the first one
/// wait for it and commit together; a drain appends what waits without
/// sitting out the delay.
async fn audit_events_gather_for_the_batch_delay(backend: Backend) {
    let Some((server, config, _data)) =
        start(backend, |c| c.audit_batch_delay_us = 60_000_000).await
    else {
        return;
    };
    let url = config.database_url();
    let audit = server.app.realtime.audit.clone();
    for i in 0..5 {
        audit.record(PendingAudit::new(
            None,
            None,
            "test.gather",
            serde_json::json!({ "i": i }),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without the delay each would have committed within milliseconds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        audit_count(&url, "test.gather").await,
        0,
        "nothing is appended before the delay is over"
    );
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("the drain does not wait out the 60 s delay");
    assert_eq!(
        audit_count(&url, "test.gather").await,
        5,
        "the drain appended every waiting event"
    );
    let verified = commands::audit_verify(&config).await.expect("verify");
    assert!(verified.ok, "the chain verifies: {verified:?}");
}

/// Audit entries of `action` in the store at `url`.
async fn audit_count(url: &str, action: &str) -> usize {
    let store = courier_actors::durable::store::connect(url)
        .await
        .expect("a second store");
    let filter = AuditFilter {
        action: Some(action.into()),
        limit: 1000,
        ..AuditFilter::default()
    };
    store.list_audit(filter).await.expect("list audit").len()
}

/// On SQLite a batch takes up to 4,096 writes by default, not 512: its
/// commits write every page a batch touched, so a store that fell behind
/// catches up in a few large batches. Another connection holds the
/// database's write lock while 2,000 sends queue; once it lets go they
/// commit in batches larger than 512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_catches_up_in_batches_past_512() {
    // Room for the 4,000 acks and pushes that come back at once.
    let (server, config, _data) = start(Backend::Sqlite, |c| c.outbound_queue_frames = 8_192)
        .await
        .expect("sqlite");
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let (mut sender, mut receiver) = server.client(&u, Encoding::MessagePack).await.split();

    let url = config.database_url.clone().expect("a sqlite url");
    let mut blocker = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("the write lock");
    // Metrics are process-wide: count this test's batches as a difference.
    let before = batch_sizes();
    let sends: Vec<ClientRequest> = (0..2_000)
        .map(|i| ClientRequest::SendMessage(SendMessage::text(ch, format!("q{i}"))))
        .collect();
    let refs = sender.send_batch(sends).await.expect("send");
    // Well within the writer's 5 s busy timeout.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("let go");
    for r in &refs {
        match receiver.answer(r, T).await.expect("ack") {
            ServerFrame::Ack(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let after = batch_sizes();
    let (batches, up_to_512) = (after.0 - before.0, after.1 - before.1);
    assert!(
        batches > up_to_512,
        "a batch past 512 rows: {batches} batches, {up_to_512} of at most 512"
    );
    server.stop().await;
}

/// `courier_persist_batch_size`: how many batches, and how many of at most
/// 512 rows, so far in this process.
fn batch_sizes() -> (f64, f64) {
    let metrics = courier::telemetry::render_metrics();
    (
        metric(&metrics, "courier_persist_batch_size_count"),
        metric(&metrics, "courier_persist_batch_size_bucket{le=\"512\"}"),
    )
}

/// The value of the first line of `metrics` (Prometheus text) that starts
/// with `prefix`; 0 when there is none.
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A supervisor that takes nothing, for an actor started on its own.
struct Root;

impl ractor::Actor for Root {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

/// On PostgreSQL the group-commit loop runs on the store thread: a write
/// commits while the test holds its runtime's only worker, on which a loop
/// of the workers could not run.
#[tokio::test(flavor = "current_thread")]
async fn a_write_commits_while_every_worker_is_busy_on_postgres() {
    use courier_actors::durable::persistence::{PersistReply, PersistenceActor, PersistenceConfig};
    use courier_actors::durable::store::{StoredMessage, WriteOp, WriteOutcome};
    use courier_actors::durable::store_thread;
    use courier_protocol::UserId;
    use tokio::sync::oneshot::{self, error::TryRecvError};

    let Some(url) = support::fresh_postgres_url().await else {
        return;
    };
    // Opened on the store thread, whose runtime then answers the pool's
    // connections (those opened here would wait for this held worker).
    let opening = url.clone();
    let store =
        store_thread::spawn(async move { courier_actors::durable::store::connect(&opening).await })
            .await
            .expect("the store thread")
            .expect("a PostgreSQL store");
    let (root, _) = ractor::Actor::spawn(None, Root, ()).await.expect("root");
    let config = PersistenceConfig {
        batch_max: 16,
        batch_delay: Duration::ZERO,
        commits_in_flight: 1,
        queue_capacity: 16,
    };
    let (persistence, handle) = PersistenceActor::spawn_linked(root.get_cell(), store, config)
        .await
        .expect("persistence");
    let to_nowhere = WriteOp::InsertMessage(StoredMessage {
        search: Default::default(),
        id: MessageId::new(),
        channel_id: ChannelId::new(),
        seq: 1,
        sender_id: UserId::new(),
        client_msg_id: None,
        ciphertext: vec![0; 16],
        nonce: vec![0; 12],
        key_version: 1,
        contains_phi: false,
        reply_to: None,
        created_at: 0,
        edited_at: None,
        expires_at: None,
        deleted_at: None,
        kind: Default::default(),
        attachments: Vec::new(),
        patient_ref: None,
        patient_tag: None,
    });
    let (tx, mut rx) = oneshot::channel();
    handle
        .submit(to_nowhere, PersistReply::Oneshot(tx))
        .expect("queued");
    let held_until = std::time::Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        match rx.try_recv() {
            Ok(outcome) => break outcome,
            Err(TryRecvError::Empty) if std::time::Instant::now() < held_until => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("no commit while the worker was held: {e:?}"),
        }
    };
    assert!(
        matches!(outcome, Ok(WriteOutcome::NotFound)),
        "a message to a channel that does not exist is committed as not found, got {outcome:?}"
    );
    persistence.stop(None);
    root.stop(None);
    drop(handle);
    support::release_postgres_db(&url).await;
}
