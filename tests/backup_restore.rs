//! `courier backup` and `courier restore` with the real binary (issue 37):
//! on SQLite and on PostgreSQL, a broker with users, a channel, messages
//! and an attachment is backed up while it runs (and, on SQLite, while a
//! writer keeps sending), stopped, and restored into a fresh data directory
//! (and, on PostgreSQL, a new empty database); the restored broker serves
//! the same history, decrypted, and the same attachment, and `courier audit
//! verify` passes. A corrupted archive is refused with nothing written, and
//! a target holding data is refused.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::process::{Broker, BrokerSpec};

const ADMIN: &str = "root";
const PASSWORD: &str = "correct horse battery staple";

/// PostgreSQL 15's tools when installed there (CI's postgresql-15), else
/// whatever `PATH` has.
const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

fn spec(data_dir: &Path, url: &str) -> BrokerSpec {
    BrokerSpec::new(data_dir, url)
        .with("COURIER_INITIAL_ADMIN_USERNAME", ADMIN)
        .with("COURIER_INITIAL_ADMIN_PASSWORD", PASSWORD)
}

fn pg_bin_args() -> Vec<String> {
    if Path::new(PG15_BIN).join("pg_dump").is_file() {
        vec!["--pg-bin".into(), PG15_BIN.into()]
    } else {
        Vec::new()
    }
}

/// What the test put into the broker.
struct Seeded {
    token: String,
    channel: String,
    file_id: String,
    file: Vec<u8>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn login(broker: &Broker, username: &str, password: &str) -> String {
    let login: Value = http()
        .post(format!("{}/api/auth/login", broker.http_url()))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    login["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {login}"))
        .to_owned()
}

async fn post(broker: &Broker, token: &str, path: &str, body: Value) -> Value {
    let response = http()
        .post(format!("{}{path}", broker.http_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path}: {status} {body}");
    body
}

async fn get(broker: &Broker, token: &str, path: &str) -> Value {
    let response = http()
        .get(format!("{}{path}", broker.http_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A PNG signature, then bytes that do not compress.
fn png(len: usize) -> Vec<u8> {
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, 0x49, 0x48, 0x44, 0x52,
    ];
    (0..len)
        .map(|i| match PNG.get(i) {
            Some(b) => *b,
            None => {
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (x >> 29) as u8 ^ (x >> 47) as u8
            }
        })
        .collect()
}

/// A second user, a channel with both, messages from each, an attachment.
async fn seed(broker: &Broker) -> Seeded {
    let token = login(broker, ADMIN, PASSWORD).await;
    let nurse = post(
        broker,
        &token,
        "/api/users",
        json!({"username": "nurse", "password": PASSWORD, "role": "user"}),
    )
    .await;
    let nurse_id = nurse["id"]
        .as_str()
        .or_else(|| nurse["user"]["id"].as_str())
        .unwrap_or_else(|| panic!("user id: {nurse}"))
        .to_owned();
    let created = post(
        broker,
        &token,
        "/api/channels",
        json!({"name": "ward-7", "kind": "private"}),
    )
    .await;
    let channel = created["channel"]["id"].as_str().expect("id").to_owned();
    post(
        broker,
        &token,
        &format!("/api/channels/{channel}/members"),
        json!({"userId": nurse_id}),
    )
    .await;
    let nurse_token = login(broker, "nurse", PASSWORD).await;
    for i in 0..20 {
        let who = if i % 2 == 0 { &token } else { &nurse_token };
        post(
            broker,
            who,
            "/api/messages",
            json!({"channelId": channel, "text": format!("observation {i}: BP 120/80 ✓")}),
        )
        .await;
    }
    let file = png(300 * 1024);
    let response = http()
        .post(format!(
            "{}/api/channels/{channel}/attachments?name=scan.png",
            broker.http_url()
        ))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(file.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 201, "upload");
    let up: Value = response.json().await.expect("upload body");
    let file_id = up["id"].as_str().expect("file id").to_owned();
    post(
        broker,
        &token,
        "/api/messages",
        json!({"channelId": channel, "text": "the scan", "attachments": [file_id]}),
    )
    .await;
    Seeded {
        token,
        channel,
        file_id,
        file,
    }
}

/// The whole history of the channel, ascending: `(id, seq, sender, text,
/// attachments)` of each message.
async fn history(broker: &Broker, token: &str, channel: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(seq) => format!("/api/channels/{channel}/messages?limit=100&beforeSeq={seq}"),
            None => format!("/api/channels/{channel}/messages?limit=100"),
        };
        let page = get(broker, token, &path).await;
        let messages = page["messages"].as_array().expect("messages").clone();
        let first = messages.first().and_then(|m| m["seq"].as_u64());
        let mut rows: Vec<Value> = messages
            .iter()
            .map(|m| {
                json!([
                    m["id"],
                    m["seq"],
                    m["senderId"],
                    m["text"],
                    m["attachments"]
                ])
            })
            .collect();
        rows.append(&mut all);
        all = rows;
        match (page["hasMore"].as_bool(), first) {
            (Some(true), Some(seq)) => before = Some(seq),
            _ => return all,
        }
    }
}

async fn download(broker: &Broker, token: &str, file_id: &str) -> Vec<u8> {
    let response = http()
        .get(format!("{}/api/files/{file_id}/content", broker.http_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200, "download");
    response.bytes().await.expect("body").to_vec()
}

/// The audit entries of `action`, newest first.
async fn audited(broker: &Broker, token: &str, action: &str) -> Vec<Value> {
    let page = get(broker, token, &format!("/api/audit?action={action}")).await;
    page["entries"].as_array().expect("entries").clone()
}

/// The JSON summary a command printed last on stdout.
fn summary(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no summary ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every directory under `dir` is 0700 and every file 0600.
fn assert_private_tree(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            assert_private_tree(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

/// A copy of the archive with one byte of `name`'s content flipped.
fn corrupt_copy(archive: &Path, name: &str, to: &Path) {
    let mut bytes = std::fs::read(archive).expect("read archive");
    let mut tar = tar::Archive::new(&bytes[..]);
    let offset = tar
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| e.path().expect("path").to_str() == Some(name))
        .map(|e| e.raw_file_position() + e.size() / 2)
        .unwrap_or_else(|| panic!("{name} is in the archive"));
    bytes[offset as usize] ^= 0x55;
    std::fs::write(to, bytes).expect("write the corrupt copy");
}

async fn run_cli(spec: &BrokerSpec, args: &[&str]) -> std::process::Output {
    spec.cli(args).await
}

fn args<'a>(base: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    base.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_while_running_restores_history_files_and_chain() {
    let work = tempfile::tempdir().expect("tmp");
    let source_dir = work.path().join("source");
    let source = spec(
        &source_dir,
        &format!("sqlite://{}/courier.db", source_dir.display()),
    );
    let broker = source.start().await;
    let seeded = seed(&broker).await;
    // A signed checkpoint in the file, so the archive carries one.
    let checkpoints = source_dir.join("audit-checkpoints.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&checkpoints).map_or(0, |m| m.len()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A writer keeps sending while the backup runs: the snapshot must be
    // one consistent moment of the database all the same.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, url, token, channel) = (
            stop.clone(),
            broker.http_url(),
            seeded.token.clone(),
            seeded.channel.clone(),
        );
        tokio::spawn(async move {
            let client = http();
            let mut sent = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let response = client
                    .post(format!("{url}/api/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"channelId": channel, "text": format!("during backup {sent}")}))
                    .send()
                    .await
                    .expect("send during the backup");
                assert_eq!(response.status(), 201);
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let archive = work.path().join("courier-backup.tar");
    let archive_arg = archive.display().to_string();
    let out = run_cli(&source, &["backup", "--out", &archive_arg]).await;
    stop.store(true, Ordering::SeqCst);
    let sent_during = writer.await.expect("writer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "backup failed: {stderr}");
    assert!(sent_during > 0, "messages were sent while the backup ran");
    assert!(stderr.contains("files,"), "progress on stderr: {stderr}");
    let made = summary(&out);
    assert_eq!(made["backend"], "sqlite");
    assert!(made["objects"].as_u64() >= Some(1), "{made}");
    assert_eq!(mode(&archive), 0o600, "the archive holds the keyring");
    assert!(!work.path().join("courier-backup.tar.partial").exists());
    assert!(!work.path().join(".courier-backup.tar.staging").exists());

    // The backup is in the source's chain with the archive's hash.
    let created = audited(&broker, &seeded.token, "backup.created").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["details"]["sha256"], made["sha256"]);
    let before = history(&broker, &seeded.token, &seeded.channel).await;
    // A second backup to the same file is refused.
    let again = run_cli(&source, &["backup", "--out", &archive_arg]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    broker.terminate(Duration::from_secs(20)).await;

    // A corrupted archive is refused, and nothing is written.
    let bad = work.path().join("corrupt.tar");
    corrupt_copy(&archive, "database/courier.db", &bad);
    let bad_dir = work.path().join("bad");
    std::fs::create_dir(&bad_dir).expect("mkdir");
    let bad_spec = spec(
        &bad_dir,
        &format!("sqlite://{}/courier.db", bad_dir.display()),
    );
    let refused = run_cli(
        &bad_spec,
        &["restore", "--from", &bad.display().to_string()],
    )
    .await;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{why}");
    assert!(
        why.contains("database/courier.db does not match its checksum")
            && why.contains("nothing was written"),
        "{why}"
    );
    let left: Vec<_> = std::fs::read_dir(&bad_dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
    // So is a truncated one.
    let bytes = std::fs::read(&archive).expect("read");
    let cut = work.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let refused = run_cli(
        &bad_spec,
        &["restore", "--from", &cut.display().to_string()],
    )
    .await;
    assert!(!refused.status.success());
    assert!(std::fs::read_dir(&bad_dir).expect("list").next().is_none());

    // The restore into a fresh data directory.
    let restored_dir = work.path().join("restored");
    let restored = spec(
        &restored_dir,
        &format!("sqlite://{}/courier.db", restored_dir.display()),
    );
    std::fs::create_dir(&restored_dir).expect("mkdir");
    let out = run_cli(&restored, &["restore", "--from", &archive_arg]).await;
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = summary(&out);
    assert_eq!(report["audit"]["ok"], true, "{report}");
    assert_eq!(report["sha256"], made["sha256"]);
    assert_private_tree(&restored_dir);
    for name in ["courier.db", "keyring", "audit-checkpoints.jsonl"] {
        assert!(restored_dir.join(name).is_file(), "{name} restored");
    }

    // Over a data directory that holds data: refused, unless --force.
    let over = run_cli(&restored, &["restore", "--from", &archive_arg]).await;
    assert!(!over.status.success());
    assert!(
        String::from_utf8_lossy(&over.stderr).contains("holds data already"),
        "{}",
        String::from_utf8_lossy(&over.stderr)
    );

    let (verified, status) = restored.audit_verify().await;
    assert!(status.success() && verified.ok, "{verified:?}");

    let broker = restored.start().await;
    let token = login(&broker, ADMIN, PASSWORD).await;
    let after = history(&broker, &token, &seeded.channel).await;
    // Every message before the backup started, then a consistent prefix of
    // those sent while it ran: the source's history up to the last restored.
    let last = after.last().expect("messages")[1].as_u64().expect("seq");
    let expected: Vec<Value> = before
        .iter()
        .filter(|m| m[1].as_u64().is_some_and(|s| s <= last))
        .cloned()
        .collect();
    assert_eq!(after, expected);
    assert!(after.len() >= 21, "the seeded messages: {}", after.len());
    assert!(
        after.iter().any(|m| m[3] == "observation 3: BP 120/80 ✓"),
        "text decrypted"
    );
    assert_eq!(
        download(&broker, &token, &seeded.file_id).await,
        seeded.file
    );
    let restored_entries = audited(&broker, &token, "backup.restored").await;
    assert_eq!(restored_entries.len(), 1);
    assert_eq!(restored_entries[0]["details"]["sha256"], made["sha256"]);
    broker.terminate(Duration::from_secs(20)).await;
    let (verified, status) = restored.audit_verify().await;
    assert!(status.success() && verified.ok, "{verified:?}");

    // --force replaces what is there (the broker stopped).
    let forced = run_cli(&restored, &["restore", "--from", &archive_arg, "--force"]).await;
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(summary(&forced)["audit"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_restores_into_a_new_database() {
    let Some(source_url) = support::fresh_postgres_url().await else {
        return;
    };
    let Some(target_url) = support::fresh_postgres_url().await else {
        return;
    };
    let work = tempfile::tempdir().expect("tmp");
    let source_dir = work.path().join("source");
    let source = spec(&source_dir, &source_url);
    let broker = source.start().await;
    let seeded = seed(&broker).await;
    let before = history(&broker, &seeded.token, &seeded.channel).await;

    let archive = work.path().join("pg-backup.tar");
    let archive_arg = archive.display().to_string();
    let pg_bin = pg_bin_args();
    let out = run_cli(&source, &args(&["backup", "--out", &archive_arg], &pg_bin)).await;
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = summary(&out);
    assert_eq!(made["backend"], "postgres");
    assert_eq!(mode(&archive), 0o600);
    let created = audited(&broker, &seeded.token, "backup.created").await;
    assert_eq!(created.len(), 1);
    broker.terminate(Duration::from_secs(20)).await;

    // An archive of one backend does not restore into the other.
    let wrong_dir = work.path().join("wrong");
    std::fs::create_dir(&wrong_dir).expect("mkdir");
    let wrong = spec(
        &wrong_dir,
        &format!("sqlite://{}/courier.db", wrong_dir.display()),
    );
    let refused = run_cli(&wrong, &["restore", "--from", &archive_arg]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("postgres backup"));

    // A database that is not empty is refused, even with --force.
    let over_dir = work.path().join("over");
    std::fs::create_dir(&over_dir).expect("mkdir");
    let over = spec(&over_dir, &source_url);
    let refused = run_cli(
        &over,
        &args(&["restore", "--from", &archive_arg, "--force"], &pg_bin),
    )
    .await;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("the database is not empty"),
        "{why}"
    );

    let restored_dir = work.path().join("restored");
    std::fs::create_dir(&restored_dir).expect("mkdir");
    let restored = spec(&restored_dir, &target_url);
    let out = run_cli(
        &restored,
        &args(&["restore", "--from", &archive_arg], &pg_bin),
    )
    .await;
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&out)["audit"]["ok"], true);
    assert_private_tree(&restored_dir);

    let broker = restored.start().await;
    let token = login(&broker, ADMIN, PASSWORD).await;
    assert_eq!(history(&broker, &token, &seeded.channel).await, before);
    assert_eq!(
        download(&broker, &token, &seeded.file_id).await,
        seeded.file
    );
    assert_eq!(audited(&broker, &token, "backup.restored").await.len(), 1);
    broker.terminate(Duration::from_secs(20)).await;
    let (verified, status) = restored.audit_verify().await;
    assert!(status.success() && verified.ok, "{verified:?}");

    support::release_postgres_db(&source_url).await;
    support::release_postgres_db(&target_url).await;
}
