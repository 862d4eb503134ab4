//! The patient link (issue 36, docs/protocol.md "Patient link"), end to end
//! on both stores: a server booted in-process, real WebSockets and REST.
//!
//! - a channel's `patientRef` is set on create, shown on REST channel views
//!   and the join ack to members, hidden from a non-member (403), changed
//!   and cleared (`null`) by `PATCH`;
//! - a message's `patientRef` is set on send (REST and WebSocket), shown on
//!   the push, on history and on the send's answer; a compact client gets
//!   the standard form for it;
//! - shapes that are not references are refused with `invalid_frame`
//!   without echoing them, and nothing is stored;
//! - `GET /api/patients/{ref}/channels|messages` need `patients.read`
//!   (403 and `access.denied` otherwise) and follow the "concerns" rule;
//!   the listing writes one `history.read` per channel (`via:
//!   "patient_list"`, `seqRanges`);
//! - the database holds no reference in clear (the SQLite files are
//!   grepped, the PostgreSQL columns selected), nor does the audit chain,
//!   nor the server's log output at debug level;
//! - `keys rotate` re-seals and re-tags the references under the new
//!   version (none left on version 1, which `keys retire` then takes) and
//!   the lookups still find them.

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use courier_protocol::client::{Client, Message};
use courier_protocol::frames::{ClientRequest, SendMessage, ServerFrame};
use courier_protocol::{ChannelId, PatientRef};
use reqwest::Method;
use rest::{Backend, Rest, Session};
use serde_json::{json, Value};
use sqlx::{Connection, Row};

const T: Duration = Duration::from_secs(5);

// ---- the server's log output, at debug level ---------------------------------

/// Everything every server of this test binary logged.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- helpers --------------------------------------------------------------------

/// References unique to one run of one test (both tests share the logs).
fn patient(what: &str) -> String {
    format!("Patient/{what}-{}", uuid::Uuid::new_v4().simple())
}

fn encoded(reference: &str) -> String {
    reference.replace('/', "%2F").replace('|', "%7C")
}

async fn patch(rest: &Rest, who: &Session, channel: &str, body: Value) -> rest::Reply {
    rest.call(
        Method::PATCH,
        &format!("/api/channels/{channel}"),
        Some(&who.token),
        Some(body),
    )
    .await
}

/// Every byte of the SQLite database (with its WAL), or the patient
/// columns and audit details of PostgreSQL, as one blob to search.
async fn stored_bytes(rest: &Rest) -> Vec<u8> {
    match rest.server.pg_url() {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("pg");
            let mut out = Vec::new();
            for sql in [
                "SELECT patient_ref, patient_tag FROM messages",
                "SELECT patient_ref, patient_tag FROM channels",
            ] {
                for row in sqlx::query(sql).fetch_all(&mut conn).await.expect(sql) {
                    let sealed: Option<Vec<u8>> = row.get(0);
                    let tag: Option<String> = row.get(1);
                    out.extend(sealed.unwrap_or_default());
                    out.extend(tag.unwrap_or_default().into_bytes());
                }
            }
            for row in sqlx::query("SELECT details::text FROM audit_logs")
                .fetch_all(&mut conn)
                .await
                .expect("audit")
            {
                let details: String = row.get(0);
                out.extend(details.into_bytes());
            }
            out
        }
        None => {
            let mut out = Vec::new();
            for suffix in ["", "-wal"] {
                let path = rest.server.dir.path().join(format!("courier.db{suffix}"));
                out.extend(std::fs::read(&path).unwrap_or_default());
            }
            assert!(!out.is_empty(), "the SQLite files were read");
            out
        }
    }
}

/// The number of sealed references in the store (messages and channels).
async fn sealed_refs(rest: &Rest) -> i64 {
    let sql = "SELECT (SELECT count(*) FROM messages WHERE patient_ref IS NOT NULL)
                    + (SELECT count(*) FROM channels WHERE patient_ref IS NOT NULL) AS n";
    match rest.server.pg_url() {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("pg");
            let row = sqlx::query(sql).fetch_one(&mut conn).await.expect(sql);
            row.get::<i64, _>(0)
        }
        None => {
            let path = rest.server.dir.path().join("courier.db");
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            let row = sqlx::query(sql).fetch_one(&mut conn).await.expect(sql);
            row.get::<i64, _>(0)
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The next `new_message` push's data.
async fn next_message(socket: &mut Client) -> courier_protocol::frames::MessageView {
    match socket
        .next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
        .expect("a new_message")
    {
        ServerFrame::NewMessage(p) => p.data,
        _ => unreachable!(),
    }
}

// ---- the tests ------------------------------------------------------------------

async fn set_shown_refused_and_listed(backend: Backend) {
    let logs = logs();
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let admin = rest.user(&root, "adele", "admin").await;
    let ann = rest.user(&root, "ann", "user").await;
    let bob = rest.user(&root, "bob", "user").await;
    let carl = rest.user(&root, "carl", "user").await;
    let chart = patient("chart");
    let other = patient("other");
    let own = patient("own");

    // ---- on the channel: set on create, shown to members only ----
    let created = rest
        .post(
            "/api/channels",
            &ann.token,
            json!({"name": "ward 4", "kind": "private", "patientRef": chart}),
        )
        .await
        .expect(201);
    assert_eq!(created.body["channel"]["patientRef"], chart.as_str());
    let channel = created.body["channel"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    rest.add_member(&ann, &channel, &bob).await;
    let got = rest
        .get(&format!("/api/channels/{channel}"), &bob.token)
        .await
        .expect(200);
    assert_eq!(got.body["channel"]["patientRef"], chart.as_str());
    let listed = rest.get("/api/channels", &bob.token).await.expect(200);
    assert!(listed.body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .any(|c| c["id"] == channel.as_str() && c["patientRef"] == chart.as_str()));
    // A non-member sees neither the channel nor its reference.
    let refused = rest
        .get(&format!("/api/channels/{channel}"), &carl.token)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(!refused.body.to_string().contains(&chart));
    let theirs = rest.get("/api/channels", &carl.token).await.expect(200);
    assert!(!theirs.body.to_string().contains(&chart));

    // The join ack carries it.
    let mut bob_ws = rest.joined(&bob, &channel).await;
    let mut socket = Client::connect(&rest.server.ws_url()).await.expect("ws");
    assert!(socket
        .authenticate(&ann.token)
        .await
        .expect("auth")
        .result
        .is_ok());
    let view = socket
        .join(channel.parse().expect("id"), None)
        .await
        .expect("join");
    assert_eq!(
        view.patient_ref.as_ref().map(PatientRef::as_str),
        Some(chart.as_str())
    );

    // ---- on messages: REST and WebSocket sends, push, history ----
    let plain = rest.send(&ann, &channel, "bp 120/80").await;
    let first = next_message(&mut bob_ws).await;
    assert_eq!(
        first.patient_ref, None,
        "a message without its own reference"
    );
    let sent = rest
        .post(
            "/api/messages",
            &ann.token,
            json!({"channelId": channel, "text": "labs back", "patientRef": own}),
        )
        .await
        .expect(201);
    assert_eq!(sent.body["patientRef"], own.as_str());
    let own_id = sent.body["id"].as_str().expect("id").to_owned();
    let pushed = next_message(&mut bob_ws).await;
    assert_eq!(
        pushed.patient_ref.as_ref().map(PatientRef::as_str),
        Some(own.as_str())
    );
    let mut over_ws = SendMessage::text(channel.parse::<ChannelId>().expect("id"), "sats 97%");
    over_ws.patient_ref = Some(PatientRef::parse(&own).expect("ref"));
    let ack = socket
        .ack(ClientRequest::SendMessage(over_ws))
        .await
        .expect("sent over the socket");
    drop(ack);
    let pushed = next_message(&mut bob_ws).await;
    assert_eq!(
        pushed.patient_ref.as_ref().map(PatientRef::as_str),
        Some(own.as_str())
    );
    let history = rest
        .get(&format!("/api/channels/{channel}/messages"), &bob.token)
        .await
        .expect(200);
    let messages = history.body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3);
    assert!(messages
        .iter()
        .any(|m| m["id"] == plain.as_str() && m.get("patientRef").is_none()));
    assert!(messages
        .iter()
        .any(|m| m["id"] == own_id.as_str() && m["patientRef"] == own.as_str()));

    // ---- shapes that are not references: refused, not echoed, not stored ----
    let secret_name = "John Q Public";
    let before = rest.get("/api/channels", &ann.token).await.expect(200);
    // (`Patient/` is part of the message's own guidance, so not checked.)
    let echoed = |body: &Value, bad: &str| bad != "Patient/" && body.to_string().contains(bad);
    for bad in [secret_name, "Patient/", "Practitioner/12", "a|b|c"] {
        let reply = rest
            .post(
                "/api/channels",
                &ann.token,
                json!({"name": "bad", "kind": "private", "patientRef": bad}),
            )
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(reply.field(), "patientRef");
        assert!(!echoed(&reply.body, bad), "{bad} echoed");
        let reply = rest
            .post(
                "/api/messages",
                &ann.token,
                json!({"channelId": channel, "text": "x", "patientRef": bad}),
            )
            .await
            .expect_error(400, "invalid_frame");
        assert!(!echoed(&reply.body, bad), "{bad} echoed");
        let reply = patch(&rest, &ann, &channel, json!({"patientRef": bad}))
            .await
            .expect_error(400, "invalid_frame");
        assert!(!echoed(&reply.body, bad), "{bad} echoed");
    }
    let frame = json!({"type": "send_message", "ref": 77,
        "channelId": channel, "text": "x", "patientRef": secret_name});
    socket
        .send_raw(Message::Text(frame.to_string().into()))
        .await
        .expect("raw frame");
    let error = socket
        .answer(&courier_protocol::Ref::Int(77), T)
        .await
        .expect("an answer");
    match error {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, courier_protocol::ErrorCode::InvalidFrame);
            assert!(!e.message.contains(secret_name), "echoed");
        }
        other => panic!("not an error: {other:?}"),
    }
    let after = rest.get("/api/channels", &ann.token).await.expect(200);
    assert_eq!(before.body, after.body, "no channel was created");
    let history = rest
        .get(&format!("/api/channels/{channel}/messages"), &ann.token)
        .await
        .expect(200);
    assert_eq!(history.body["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        sealed_refs(&rest).await,
        3,
        "the channel's and two messages'"
    );

    // ---- the patient routes: patients.read, the concerns rule, disclosures ----
    let path = |r: &str, what: &str| format!("/api/patients/{}/{what}", encoded(r));
    let denied = rest.audit_entries("access.denied", 0).await.len();
    rest.get(&path(&chart, "channels"), &bob.token)
        .await
        .expect_error(403, "forbidden");
    rest.get(&path(&chart, "messages"), &bob.token)
        .await
        .expect_error(403, "forbidden");
    assert!(rest.audit_entries("access.denied", denied + 2).await.len() >= denied + 2);
    rest.get(&path(secret_name, "channels"), &admin.token)
        .await
        .expect_error(400, "invalid_frame");
    let channels = rest
        .get(&path(&chart, "channels"), &admin.token)
        .await
        .expect(200);
    let found = channels.body["channels"].as_array().expect("channels");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], channel.as_str());
    assert_eq!(found[0]["patientRef"], chart.as_str());
    let reads = rest.audit_entries("history.read", 0).await.len();
    // The channel's patient: the message without a reference of its own.
    let of_chart = rest
        .get(&path(&chart, "messages"), &admin.token)
        .await
        .expect(200);
    let listed: Vec<&str> = of_chart.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, vec![plain.as_str()]);
    // The message's own patient: the two that name it, newest first, paged.
    let page = rest
        .get(&format!("{}?limit=1", path(&own, "messages")), &admin.token)
        .await
        .expect(200);
    let newest = &page.body["messages"][0];
    assert_eq!(newest["text"], "sats 97%");
    assert_eq!(newest["patientRef"], own.as_str());
    let next = page.body["nextBefore"].as_str().expect("a next page");
    let page = rest
        .get(
            &format!("{}?limit=1&before={next}", path(&own, "messages")),
            &admin.token,
        )
        .await
        .expect(200);
    assert_eq!(page.body["messages"][0]["id"], own_id.as_str());
    let entries = rest.audit_entries("history.read", reads + 3).await;
    let listing: Vec<&Value> = entries
        .iter()
        .filter(|e| e.details["via"] == "patient_list")
        .map(|e| &e.details)
        .collect();
    assert_eq!(listing.len(), 3, "one entry per page and channel");
    assert!(listing.iter().all(|d| d["channelId"] == channel.as_str()));
    assert!(listing.iter().any(|d| d["seqRanges"] == json!([[1, 1]])));
    assert!(listing.iter().any(|d| d["seqRanges"] == json!([[3, 3]])));
    assert!(listing.iter().any(|d| d["seqRanges"] == json!([[2, 2]])));
    assert!(entries
        .iter()
        .filter(|e| e.details["via"] == "patient_list")
        .all(|e| e.actor_id.map(|a| a.to_string()) == Some(admin.user_id.clone())));
    // Another patient's reference finds nothing.
    let none = rest
        .get(&path(&other, "messages"), &admin.token)
        .await
        .expect(200);
    assert_eq!(none.body["messages"], json!([]));

    // ---- edit: change, then clear ----
    let changed = patch(&rest, &ann, &channel, json!({"patientRef": other}))
        .await
        .expect(200);
    assert_eq!(changed.body["channel"]["patientRef"], other.as_str());
    let moved = rest
        .get(&path(&other, "messages"), &admin.token)
        .await
        .expect(200);
    assert_eq!(moved.body["messages"][0]["id"], plain.as_str());
    let cleared = patch(&rest, &ann, &channel, json!({"patientRef": null}))
        .await
        .expect(200);
    assert!(cleared.body["channel"].get("patientRef").is_none());
    let got = rest
        .get(&format!("/api/channels/{channel}"), &ann.token)
        .await
        .expect(200);
    assert!(got.body["channel"].get("patientRef").is_none());
    let gone = rest
        .get(&path(&other, "channels"), &admin.token)
        .await
        .expect(200);
    assert_eq!(gone.body["channels"], json!([]));
    // A PATCH without the field leaves the link alone.
    patch(&rest, &ann, &channel, json!({"patientRef": chart}))
        .await
        .expect(200);
    let renamed = patch(&rest, &ann, &channel, json!({"name": "ward 5"}))
        .await
        .expect(200);
    assert_eq!(renamed.body["channel"]["patientRef"], chart.as_str());

    // ---- nothing in clear: the database, the audit chain, the logs ----
    let stored = stored_bytes(&rest).await;
    for r in [&chart, &other, &own] {
        let id = r.trim_start_matches("Patient/");
        assert!(!contains(&stored, id), "a reference is stored in clear");
    }
    let chain = rest.audit_entries("channel.create", 1).await;
    assert!(chain
        .iter()
        .all(|e| !e.details.to_string().contains(&chart)));
    assert!(chain
        .iter()
        .any(|e| e.details["patientLinked"] == true && e.details["channelId"] == channel.as_str()));
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(
        logged.contains("DEBUG") || logged.contains("INFO"),
        "the server's log output was captured"
    );
    for r in [&chart, &other, &own, &secret_name.to_owned()] {
        assert!(!logged.contains(r.as_str()), "a reference reached the logs");
    }
    rest.stop().await;
}

async fn rotation_keeps_lookups(backend: Backend) {
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let chart = patient("rot");
    let own = patient("rot-own");
    let created = rest
        .post(
            "/api/channels",
            &root.token,
            json!({"name": "icu", "kind": "private", "patientRef": chart}),
        )
        .await
        .expect(201);
    let channel = created.body["channel"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let plain = rest.send(&root, &channel, "rounds").await;
    let owned = rest
        .post(
            "/api/messages",
            &root.token,
            json!({"channelId": channel, "text": "consult", "patientRef": own}),
        )
        .await
        .expect(201);
    let owned = owned.body["id"].as_str().expect("id").to_owned();
    let store = rest.server.app.store.clone();
    assert_eq!(store.count_patient_ref_version(1).await.expect("count"), 2);

    let config = rest.server.app.config.clone();
    let active = courier::commands::keys_rotate(&config)
        .await
        .expect("rotate");
    assert_eq!(active, 2);
    assert_eq!(store.count_patient_ref_version(1).await.expect("count"), 0);
    assert_eq!(store.count_patient_ref_version(2).await.expect("count"), 2);
    assert!(
        rest::eventually(Duration::from_secs(10), async || rest
            .server
            .app
            .realtime
            .cipher
            .active_version()
            == 2)
        .await,
        "the server reloaded the keyring"
    );
    courier::commands::keys_retire(&config, 1)
        .await
        .expect("retire version 1");
    assert!(
        rest::eventually(Duration::from_secs(10), async || !rest
            .server
            .app
            .realtime
            .cipher
            .keyring()
            .contains(1))
        .await,
        "version 1 is gone from the running server"
    );
    // Found under the new tags, and opened under the new key.
    let path = |r: &str, what: &str| format!("/api/patients/{}/{what}", encoded(r));
    let channels = rest
        .get(&path(&chart, "channels"), &root.token)
        .await
        .expect(200);
    assert_eq!(channels.body["channels"][0]["patientRef"], chart.as_str());
    let of_chart = rest
        .get(&path(&chart, "messages"), &root.token)
        .await
        .expect(200);
    assert_eq!(of_chart.body["messages"][0]["id"], plain.as_str());
    let of_own = rest
        .get(&path(&own, "messages"), &root.token)
        .await
        .expect(200);
    assert_eq!(of_own.body["messages"][0]["id"], owned.as_str());
    assert_eq!(of_own.body["messages"][0]["patientRef"], own.as_str());
    let refs = store
        .patient_message_refs(
            &rest
                .server
                .app
                .realtime
                .cipher
                .patient_tags(&PatientRef::parse(&chart).expect("ref"))
                .expect("tags"),
        )
        .await
        .expect("refs");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].message_id.to_string(), plain);
    rest.stop().await;
}

both_backends!(set_shown_refused_and_listed, rotation_keeps_lookups);
