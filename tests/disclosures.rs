//! The accounting of disclosures per patient (issue 36), on SQLite and
//! PostgreSQL: `GET /api/patients/{ref}/disclosures` and `courier report
//! disclosures` list exactly the reads made of a patient's messages — a
//! WebSocket history page, a REST history page, a recovery replay, live
//! pushes delivered, one message read — by whom, from which address,
//! which messages; nothing from a user who only wrote, nothing outside the
//! window, nothing of another patient's messages; the permission is
//! required; an audit row changed in the database fails the report (and
//! the CLI exits 2).

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use courier_actors::crypto::RefOwner;
use courier_actors::durable::store::{ChannelPatch, PatientSeal};
use courier_protocol::client::Client;
use courier_protocol::frames::{ClientRequest, FetchHistory, ServerFrame};
use courier_protocol::{ChannelId, PatientRef};
use rest::{Backend, Rest, Session, PASSWORD, USER_AGENT};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const WS_AGENT: &str = "courier-disclosure-tests-ws/1";

both_backends!(
    a_report_lists_exactly_the_reads_made,
    break_glass_console_and_long_joins_are_accounted,
);

/// What a row says, in a form to compare: (reader, action, via, message
/// ids, ip, userAgent).
type Row = (String, String, String, Vec<String>, String, Option<String>);

fn rows_of(report: &Value) -> BTreeSet<Row> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["readerUsername"].as_str().expect("reader").to_owned(),
                r["action"].as_str().expect("action").to_owned(),
                r["via"].as_str().expect("via").to_owned(),
                r["messageIds"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|id| id.as_str().expect("id").to_owned())
                    .collect(),
                r["ip"].as_str().expect("ip").to_owned(),
                r["userAgent"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Links `channel` to `patient` in the store (the sealed reference and its
/// keyed tag), as a channel created with a `patientRef` is.
async fn link(api: &Rest, channel: &str, patient: &PatientRef) {
    let app = &api.server.app;
    let id: ChannelId = channel.parse().expect("channel id");
    let seal = PatientSeal::new(&app.realtime.cipher, RefOwner::Channel(id), patient)
        .expect("seal the patient reference");
    app.store
        .update_channel(
            id,
            ChannelPatch {
                patient: Some(Some(seal)),
                ..ChannelPatch::default()
            },
        )
        .await
        .expect("link the channel to the patient");
}

/// A socket of `session` with its own user agent, authenticated.
async fn socket(api: &Rest, session: &Session) -> Client {
    let mut socket = Client::builder(api.server.ws_url())
        .header("User-Agent", WS_AGENT)
        .connect()
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&session.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    socket
}

fn path(patient: &PatientRef, from: i64, to: i64) -> String {
    let encoded: String = patient
        .as_str()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/api/patients/{encoded}/disclosures?from={from}&to={to}")
}

/// The report once it has `rows` rows (fire-and-forget entries land a
/// little after the reads), as `session` asks for it.
async fn report_with(api: &Rest, session: &Session, path: &str, rows: usize) -> Value {
    let mut report = Value::Null;
    rest::eventually(T, async || {
        report = api.get(path, &session.token).await.expect(200).body;
        report["rows"].as_array().map_or(0, Vec::len) >= rows
    })
    .await;
    report
}

async fn pause() {
    // Entries are stamped in ms: keep the window's edges apart.
    tokio::time::sleep(Duration::from_millis(30)).await;
}

fn now_ms() -> i64 {
    courier_actors::now_ms()
}

/// Runs `courier report disclosures` against the server's data directory
/// and database.
async fn cli(api: &Rest, args: &[&str]) -> std::process::Output {
    let dir = api.server.dir.path();
    let url = match api.server.pg_url() {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", dir.join("courier.db").display()),
    };
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_courier"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COURIER_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(&url)
        .args(["report", "disclosures"])
        .args(args)
        .current_dir(dir)
        // The server's secret (no warning about a generated one on stdout).
        .env("COURIER_JWT_SECRET", rest::SECRET)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the CLI finished")
        .expect("run the CLI")
}

async fn a_report_lists_exactly_the_reads_made(backend: Backend) {
    // Pushes are written on leave here; a long flush interval keeps the
    // periodic flush out of the way.
    let Some(api) = Rest::start_with(backend, |c| c.audit_delivery_flush_secs = 3_600).await else {
        return;
    };
    let root = api.root().await;
    let doc = api.user(&root, "doc", "user").await;
    let nurse = api.user(&root, "nurse", "user").await;
    let clerk = api.user(&root, "clerk", "user").await;
    let moderator = api.user(&root, "mod", "moderator").await;
    let patient = PatientRef::parse("Patient/p-123").expect("ref");
    let other_patient = PatientRef::parse("urn:oid:1.2.36.1|998877").expect("ref");

    let ward = api.channel(&doc, "ward", "private").await;
    let other = api.channel(&doc, "other", "private").await;
    for channel in [&ward, &other] {
        api.add_member(&doc, channel, &nurse).await;
        api.add_member(&doc, channel, &clerk).await;
    }
    link(&api, &ward, &patient).await;
    link(&api, &other, &other_patient).await;
    let ward_id: ChannelId = ward.parse().expect("id");
    let other_id: ChannelId = other.parse().expect("id");

    // The nurse is joined while the doctor writes: three live pushes.
    let mut live = socket(&api, &nurse).await;
    live.join(ward_id, None).await.expect("join");
    let m1 = api.send(&doc, &ward, "BP 120/80").await;
    let m2 = api.send(&doc, &ward, "HR 72").await;
    let m3 = api.send(&doc, &ward, "SpO2 98%").await;
    let q1 = api.send(&doc, &other, "another patient's note").await;
    for _ in 0..3 {
        live.next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
            .await
            .expect("new_message");
    }
    let page = format!("/api/channels/{ward}/messages");

    // Before the window: a read that must not be listed.
    api.get(&page, &clerk.token).await.expect(200);
    pause().await;
    let from = now_ms();
    pause().await;

    // In the window. Live pushes delivered: written when the socket leaves.
    live.close().await.expect("close");
    // A REST history page and one message, by the clerk.
    api.get(&page, &clerk.token).await.expect(200);
    api.get(&format!("/api/messages/{m2}"), &clerk.token)
        .await
        .expect(200);
    // A WebSocket history page and a recovery replay (seqs 2 and 3), by
    // the nurse.
    let mut ws = socket(&api, &nurse).await;
    match ws
        .request(ClientRequest::FetchHistory(FetchHistory {
            channel_id: ward_id,
            before_seq: None,
            limit: None,
        }))
        .await
        .expect("history")
    {
        ServerFrame::History(h) => assert_eq!(h.messages.len(), 3),
        other => panic!("not a history page: {}", other.type_name()),
    }
    ws.join(ward_id, Some(1)).await.expect("rejoin");
    ws.next_push_matching(T, |f| matches!(f, ServerFrame::Recovered(_)))
        .await
        .expect("recovered");
    // The doctor reads back what they wrote: no disclosure of theirs.
    api.get(&page, &doc.token).await.expect(200);
    // Another patient's messages, read by the nurse.
    let other_page = format!("/api/channels/{other}/messages");
    api.get(&other_page, &nurse.token).await.expect(200);
    ws.close().await.expect("close");
    pause().await;
    let to = now_ms();
    pause().await;
    // After the window: not listed either.
    api.get(&format!("/api/messages/{m1}"), &clerk.token)
        .await
        .expect(200);

    let report_path = path(&patient, from, to);
    let report = report_with(&api, &root, &report_path, 5).await;
    let ip = "127.0.0.1".to_owned();
    let all = vec![m1.clone(), m2.clone(), m3.clone()];
    let want: BTreeSet<Row> = [
        (
            "nurse",
            "message.delivered",
            "push",
            all.clone(),
            Some(WS_AGENT),
        ),
        (
            "clerk",
            "history.read",
            "history",
            all.clone(),
            Some(USER_AGENT),
        ),
        (
            "clerk",
            "history.read",
            "message",
            vec![m2.clone()],
            Some(USER_AGENT),
        ),
        (
            "nurse",
            "history.read",
            "history",
            all.clone(),
            Some(WS_AGENT),
        ),
        (
            "nurse",
            "history.read",
            "recovery",
            vec![m2.clone(), m3.clone()],
            Some(WS_AGENT),
        ),
    ]
    .into_iter()
    .map(|(reader, action, via, ids, agent)| {
        (
            reader.to_owned(),
            action.to_owned(),
            via.to_owned(),
            ids,
            ip.clone(),
            agent.map(str::to_owned),
        )
    })
    .collect();
    assert_eq!(rows_of(&report), want, "{report:#}");
    assert_eq!(report["rows"].as_array().expect("rows").len(), 5);
    for row in report["rows"].as_array().expect("rows") {
        assert_eq!(row["channelId"], ward.as_str());
        assert!(row["timestamp"]
            .as_i64()
            .is_some_and(|t| (from..to).contains(&t)));
        assert!(row["breakGlass"].is_null());
        assert_eq!(row["entryHash"].as_str().map(str::len), Some(64));
    }
    let head = report["chainHead"]["seq"].as_u64().expect("head");
    assert!(
        report["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["entrySeq"].as_u64().is_some_and(|s| s <= head)),
        "{report:#}"
    );
    assert_eq!(report["patientMessages"], 3);

    // The other patient's report has the nurse's read of their channel,
    // and nothing of the first patient's.
    let theirs = report_with(&api, &root, &path(&other_patient, from, to), 1).await;
    let theirs_rows = rows_of(&theirs);
    assert_eq!(
        theirs_rows
            .into_iter()
            .map(|r| (r.0, r.2, r.3))
            .collect::<Vec<_>>(),
        vec![("nurse".to_owned(), "history".to_owned(), vec![q1.clone()])],
        "{theirs:#}"
    );
    assert_eq!(theirs["rows"][0]["channelId"], other_id.to_string());

    // The whole history (no window): the early and the late reads too.
    let everything = report_with(&api, &root, &path(&patient, 0, now_ms() + 1), 7).await;
    assert_eq!(everything["rows"].as_array().expect("rows").len(), 7);

    // The permission: patients.disclosures (admins), not users or
    // moderators; refusals are audited.
    api.get(&report_path, &nurse.token)
        .await
        .expect_error(403, "forbidden");
    api.get(&report_path, &moderator.token)
        .await
        .expect_error(403, "forbidden");
    let denied = api.audit_entries("access.denied", 2).await;
    assert!(
        denied
            .iter()
            .filter(|e| e.details["op"] == "patients.disclosures")
            .count()
            >= 2
    );
    // A reference of the wrong shape, and a reversed window.
    let bad = api
        .get("/api/patients/not%20a%20ref/disclosures", &root.token)
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "ref");
    assert!(!bad.body.to_string().contains("not a ref"));
    api.get(&path(&patient, to, from), &root.token)
        .await
        .expect_error(400, "invalid_frame");
    // RFC 3339 bounds are taken too: the epoch to far ahead.
    let rfc = "/api/patients/Patient%2Fp-123/disclosures?from=1970-01-01T00:00:00Z&to=2999-01-01T00:00:00%2B01:00";
    let by_date = api.get(rfc, &root.token).await.expect(200).body;
    assert_eq!(by_date["rows"].as_array().expect("rows").len(), 7);

    // The report itself is audited, without the reference in clear.
    let reports = api.audit_entries("patient.disclosures_report", 1).await;
    let tag = api
        .server
        .app
        .realtime
        .cipher
        .active_patient_tag(&patient)
        .expect("tag");
    assert!(reports
        .iter()
        .any(|e| e.details["patientTag"] == tag.as_str()
            && e.details["ok"] == true
            && e.actor_id.map(|a| a.to_string()) == Some(root.user_id.clone())));
    for entry in &reports {
        assert!(
            !entry.details.to_string().contains("p-123"),
            "{}",
            entry.details
        );
    }

    // The CLI prints the same rows.
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let out = cli(
        &api,
        &[
            "--patient",
            patient.as_str(),
            "--from",
            &from_s,
            "--to",
            &to_s,
            "--json",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{stdout}"))
        })
        .collect();
    let (cli_rows, summary) = lines.split_at(lines.len() - 1);
    assert_eq!(
        rows_of(&serde_json::json!({"rows": cli_rows})),
        rows_of(&report)
    );
    assert_eq!(
        cli_rows
            .iter()
            .map(|r| r["entrySeq"].clone())
            .collect::<Vec<_>>(),
        report["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["entrySeq"].clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(summary[0]["rows"], 5);
    let table = cli(
        &api,
        &[
            "--patient",
            patient.as_str(),
            "--from",
            &from_s,
            "--to",
            &to_s,
        ],
    )
    .await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("recovery") && table.contains("clerk"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("nurse")).count(),
        3,
        "{table}"
    );

    // Tampering: an address changed in the database. The report fails,
    // naming the entry, and so does the CLI (exit 2).
    let victim = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["readerUsername"] == "clerk")
        .and_then(|r| r["entrySeq"].as_u64())
        .expect("a clerk row");
    tamper(&api, victim).await;
    let failed = api
        .get(&report_path, &root.token)
        .await
        .expect_error(500, "internal");
    let message = failed.body["error"]["message"].as_str().expect("message");
    assert!(message.contains(&format!("seq {victim}")), "{message}");
    let out = cli(
        &api,
        &[
            "--patient",
            patient.as_str(),
            "--from",
            &from_s,
            "--to",
            &to_s,
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("seq {victim}")));
    // Away from the changed entry the chain still holds: the window
    // before it reports the early read alone.
    let early = api
        .get(&path(&patient, 0, from), &root.token)
        .await
        .expect(200)
        .body;
    assert_eq!(rows_of(&early).len(), 1, "{early:#}");

    api.stop().await;
}

/// Changes the address of the audit entry `seq` in the database, as
/// someone with write access to it could.
async fn tamper(api: &Rest, seq: u64) {
    match api.server.pg_url() {
        Some(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let done = sqlx::query("UPDATE audit_logs SET ip = '6.6.6.6' WHERE seq = $1")
                .bind(seq as i64)
                .execute(&mut conn)
                .await
                .expect("update");
            assert_eq!(done.rows_affected(), 1);
        }
        None => {
            use sqlx::Connection;
            let file = api.server.dir.path().join("courier.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .expect("connect");
            let done = sqlx::query("UPDATE audit_logs SET ip = '6.6.6.6' WHERE seq = $1")
                .bind(seq as i64)
                .execute(&mut conn)
                .await
                .expect("update");
            assert_eq!(done.rows_affected(), 1);
        }
    }
}

/// A read under break-glass access carries the grant; a read through the
/// admin console's cookie says `console`; a connection that stays joined
/// has its pushes written every `audit_delivery_flush_secs`, not only
/// when it leaves.
async fn break_glass_console_and_long_joins_are_accounted(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.audit_delivery_flush_secs = 1).await else {
        return;
    };
    let root = api.root().await;
    let owner = api.user(&root, "owner", "user").await;
    let watcher = api.user(&root, "watcher", "user").await;
    let doctor = api.user(&root, "er-doctor", "user").await;
    let patient = PatientRef::parse("Patient/bg-1").expect("ref");
    let ward = api.channel(&owner, "icu", "private").await;
    api.add_member(&owner, &ward, &watcher).await;
    // The console reads what its user may read: root is a member here.
    api.add_member(&owner, &ward, &root).await;
    link(&api, &ward, &patient).await;
    let from = now_ms();

    // A long-lived join: its pushes are written while it stays joined.
    let mut long = socket(&api, &watcher).await;
    long.join(ward.parse().expect("id"), None)
        .await
        .expect("join");
    let m1 = api.send(&owner, &ward, "lactate 4.1").await;
    long.next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
        .expect("new_message");
    let mut flushed = Vec::new();
    assert!(
        rest::eventually(Duration::from_secs(5), async || {
            flushed = api.audit_entries("message.delivered", 0).await;
            !flushed.is_empty()
        })
        .await,
        "no message.delivered while the connection stays joined"
    );
    assert_eq!(flushed[0].details["via"], "push");
    assert_eq!(
        flushed[0].actor_id.map(|a| a.to_string()),
        Some(watcher.user_id.clone())
    );

    // Break-glass: the doctor, not a member, opens the channel and reads.
    api.put(
        &format!("/api/users/{}/break-glass", doctor.user_id),
        &root.token,
        serde_json::json!({"allowed": true}),
    )
    .await
    .expect(200);
    let grant = api
        .post(
            &format!("/api/channels/{ward}/break-glass"),
            &doctor.token,
            serde_json::json!({"reason": "cardiac arrest in bed 4, records needed now"}),
        )
        .await
        .expect(201);
    let grant = grant.body["grant"]["id"]
        .as_str()
        .expect("grant id")
        .to_owned();
    api.get(&format!("/api/channels/{ward}/messages"), &doctor.token)
        .await
        .expect(200);

    // The admin console: root signs in and reads the channel's messages
    // with the cookie, as the console's channel page does.
    let signed_in = rest::reply(
        api.http
            .post(format!("{}/admin/session", api.base))
            .json(&serde_json::json!({"username": rest::ROOT, "password": PASSWORD}))
            .send()
            .await
            .expect("sign in"),
    )
    .await
    .expect(200);
    let cookie = signed_in.headers["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let console_read = api
        .http
        .get(format!("{}/api/channels/{ward}/messages", api.base))
        .header("cookie", cookie)
        .send()
        .await
        .expect("console read");
    assert_eq!(console_read.status(), 200);
    pause().await;
    let to = now_ms();

    let report = report_with(&api, &root, &path(&patient, from, to), 3).await;
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{report:#}");
    let by = |reader: &str| {
        rows.iter()
            .find(|r| r["readerUsername"] == reader)
            .unwrap_or_else(|| panic!("no row of {reader}: {report:#}"))
    };
    let watched = by("watcher");
    assert_eq!(
        (watched["via"].as_str(), watched["action"].as_str()),
        (Some("push"), Some("message.delivered"))
    );
    assert_eq!(watched["messageIds"], serde_json::json!([m1.clone()]));
    let emergency = by("er-doctor");
    assert_eq!(emergency["via"], "history");
    assert_eq!(emergency["breakGlass"], grant.as_str());
    assert_eq!(emergency["messageIds"], serde_json::json!([m1.clone()]));
    let console = by(rest::ROOT);
    assert_eq!(console["via"], "console");
    assert!(console["breakGlass"].is_null());
    // The watcher's later flushes carry nothing new: one row only.
    assert_eq!(
        rows.iter()
            .filter(|r| r["readerUsername"] == "watcher")
            .count(),
        1
    );
    drop(long);
    api.stop().await;
}
