//! Legal holds and retention by kind (issue 36, docs/retention.md), end to
//! end on both stores: a server booted in-process (development mode, files
//! stored unscanned, no clamd), driven over REST; messages are aged in the
//! database itself so that a run has something old to purge.
//!
//! - a held message survives a run (TTL expiry, purge of deleted, purge by
//!   age) that removes its unheld neighbours, and so does its attachment's
//!   object; after release the next run removes them;
//! - holds on a channel, a user and a patient reference (the "concerns the
//!   patient" rule: own tag, else the channel's) each hold;
//! - a channel with held messages cannot be deleted (409);
//! - the dry run (`courier retention report`'s figures) equals what the
//!   run then does, kind by kind, held counts included;
//! - reasons are required, `holds.manage` is required, and neither the
//!   patient reference nor the reason reaches the audit chain.

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::path::PathBuf;
use std::time::Duration;

use courier_actors::durable::retention::{RetentionMsg, RetentionReport};
use courier_protocol::PatientRef;
use rest::{eventually, Backend, Rest, Session};
use serde_json::{json, Value};
use sqlx::Connection;

const DAY_MS: i64 = 86_400_000;

/// The smallest valid PNG (a 1x1 transparent pixel), padded to be unique.
fn png() -> Vec<u8> {
    let mut bytes = vec![
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

/// A server whose retention runs only when asked (and whose file sweep
/// runs every second), with text and image messages kept 2557 days.
async fn start(backend: Backend) -> Option<Rest> {
    Rest::start_with(backend, |c| {
        c.retention_interval_secs = 86_400;
        c.files_sweep_interval_secs = 1;
        c.retention_text_days = Some(2557);
        c.retention_image_days = Some(2557);
    })
    .await
}

/// Runs one SQL statement on the server's database (ids inlined as
/// literals: the same text on both stores).
async fn exec(rest: &Rest, sql: &str) {
    match rest.server.pg_url() {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("pg");
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
        None => {
            let path = rest.server.dir.path().join("courier.db");
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
    }
}

/// Makes a message `days` older.
async fn age(rest: &Rest, message: &str, days: i64) {
    exec(
        rest,
        &format!(
            "UPDATE messages SET created_at = created_at - {} WHERE id = '{message}'",
            days * DAY_MS
        ),
    )
    .await;
}

/// Deletes a message (REST) and makes its deletion `days` old.
async fn delete_long_ago(rest: &Rest, who: &Session, message: &str, days: i64) {
    rest.delete(&format!("/api/messages/{message}"), &who.token)
        .await
        .expect(204);
    exec(
        rest,
        &format!(
            "UPDATE messages SET deleted_at = deleted_at - {} WHERE id = '{message}'",
            days * DAY_MS
        ),
    )
    .await;
}

/// Sends with a TTL of one second.
async fn send_ttl(rest: &Rest, who: &Session, channel: &str, text: &str) -> String {
    let sent = rest
        .post(
            "/api/messages",
            &who.token,
            json!({"channelId": channel, "text": text, "ttlSeconds": 1}),
        )
        .await
        .expect(201);
    sent.body["id"].as_str().expect("id").to_owned()
}

/// Uploads a PNG to `channel` and sends it; `(message id, file id)`.
async fn send_image(rest: &Rest, who: &Session, channel: &str) -> (String, String) {
    let response = rest
        .http
        .post(format!(
            "{}/api/channels/{channel}/attachments?name=x.png",
            rest.base
        ))
        .bearer_auth(&who.token)
        .header("content-type", "application/octet-stream")
        .body(png())
        .send()
        .await
        .expect("upload");
    let up = rest::reply(response).await.expect(201);
    let file = up.body["id"].as_str().expect("file id").to_owned();
    let sent = rest
        .post(
            "/api/messages",
            &who.token,
            json!({"channelId": channel, "text": "", "attachments": [file]}),
        )
        .await
        .expect(201);
    (sent.body["id"].as_str().expect("id").to_owned(), file)
}

fn object_of(rest: &Rest, file: &str) -> PathBuf {
    rest.server.dir.path().join("files").join("f").join(file)
}

/// Whether the message's row is still stored (deleted or not).
async fn stored(rest: &Rest, message: &str) -> bool {
    rest.server
        .app
        .store
        .get_message(message.parse().expect("id"))
        .await
        .expect("get")
        .is_some()
}

/// The dry run, as `courier retention report` computes it.
async fn dry_run(rest: &Rest) -> RetentionReport {
    courier::retention_report::dry_run(&rest.server.app.config)
        .await
        .expect("dry run")
        .report
}

/// One retention run, now.
async fn run(rest: &Rest) -> RetentionReport {
    ractor::call!(
        rest.server.app.realtime.retention,
        |port| RetentionMsg::Run(Some(port))
    )
    .expect("run")
}

fn kind<'a>(
    report: &'a RetentionReport,
    name: &str,
) -> &'a courier_actors::durable::retention::KindReport {
    report
        .by_kind
        .iter()
        .find(|k| k.kind.as_str() == name)
        .expect("kind")
}

async fn place(rest: &Rest, who: &Session, body: Value) -> Value {
    rest.post("/api/holds", &who.token, body)
        .await
        .expect(201)
        .body["hold"]
        .clone()
}

async fn held_messages_and_their_files_survive_until_release(backend: Backend) {
    let Some(rest) = start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let alice = rest.user(&root, "alice", "user").await;
    let bob = rest.user(&root, "bob", "user").await;
    let held_ch = rest.channel(&alice, "litigation", "private").await;
    let free_ch = rest.channel(&alice, "ward", "private").await;
    rest.add_member(&alice, &free_ch, &bob).await;

    // The same four messages in each channel: old, deleted long ago,
    // expiring, and an old image with its file.
    let mut sets = Vec::new();
    for ch in [&held_ch, &free_ch] {
        let old = rest.send(&alice, ch, "old").await;
        age(&rest, &old, 3000).await;
        let gone = rest.send(&alice, ch, "deleted").await;
        delete_long_ago(&rest, &alice, &gone, 100).await;
        let ttl = send_ttl(&rest, &alice, ch, "expiring").await;
        let (image, file) = send_image(&rest, &alice, ch).await;
        age(&rest, &image, 3000).await;
        sets.push((old, gone, ttl, image, file));
    }
    // Bob's messages in the free channel are held by a hold on him.
    let bob_old = rest.send(&bob, &free_ch, "bob old").await;
    age(&rest, &bob_old, 3000).await;
    let bob_gone = rest.send(&bob, &free_ch, "bob deleted").await;
    delete_long_ago(&rest, &bob, &bob_gone, 100).await;

    let channel_hold = place(
        &rest,
        &root,
        json!({"scope": "channel", "channelId": held_ch, "reason": "litigation 2024-17"}),
    )
    .await;
    assert_eq!(channel_hold["scope"], "channel");
    assert_eq!(channel_hold["active"], true);
    let user_hold = place(
        &rest,
        &root,
        json!({"scope": "user", "userId": bob.user_id, "reason": "HR investigation"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the TTLs pass

    // The dry run says what the run then does, kind by kind.
    let dry = dry_run(&rest).await;
    let done = run(&rest).await;
    assert_eq!(dry, done, "the dry run differs from the run");
    let text = kind(&done, "text");
    assert_eq!(
        (
            text.expired,
            text.purged_deleted,
            text.purged_old,
            text.held
        ),
        (1, 1, 1, 5),
        "{done:?}"
    );
    let image = kind(&done, "image");
    assert_eq!(
        (
            image.expired,
            image.purged_deleted,
            image.purged_old,
            image.held
        ),
        (0, 0, 1, 1),
        "{done:?}"
    );
    assert_eq!((done.expired, done.purged_old, done.held), (1, 2, 6));

    let (h_old, h_gone, h_ttl, h_image, h_file) = &sets[0];
    let (f_old, f_gone, f_ttl, f_image, f_file) = &sets[1];
    for m in [h_old, h_gone, h_ttl, h_image, &bob_old, &bob_gone] {
        assert!(stored(&rest, m).await, "a held message was purged");
    }
    let held_ttl = rest
        .server
        .app
        .store
        .get_message(h_ttl.parse().unwrap())
        .await
        .unwrap();
    assert!(
        held_ttl.unwrap().message.deleted_at.is_none(),
        "a held message expired"
    );
    for m in [f_old, f_gone, f_image] {
        assert!(!stored(&rest, m).await, "an unheld neighbour survived");
    }
    let expired = rest
        .server
        .app
        .store
        .get_message(f_ttl.parse().unwrap())
        .await
        .unwrap();
    assert!(
        expired.unwrap().message.deleted_at.is_some(),
        "unheld TTL not expired"
    );

    // The sweep takes the neighbour's file; the held one's stays.
    assert!(
        eventually(Duration::from_secs(10), async || !object_of(&rest, f_file)
            .exists())
        .await,
        "the unheld image's file was not purged"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await; // another sweep
    assert!(
        object_of(&rest, h_file).exists(),
        "a held message's file was purged"
    );

    // Channels with held messages cannot be deleted: one held itself, one
    // holding bob's messages.
    for ch in [&held_ch, &free_ch] {
        rest.delete(&format!("/api/channels/{ch}"), &alice.token)
            .await
            .expect_error(409, "conflict");
    }

    // Release: a reason is required, once only.
    let release = format!(
        "/api/holds/{}/release",
        channel_hold["id"].as_str().unwrap()
    );
    let refused = rest
        .post(&release, &root.token, json!({"reason": " "}))
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(refused.field(), "reason");
    let released = rest
        .post(&release, &root.token, json!({"reason": "case closed"}))
        .await
        .expect(200);
    assert_eq!(released.body["hold"]["active"], false);
    assert_eq!(released.body["hold"]["releaseReason"], "case closed");
    rest.post(&release, &root.token, json!({"reason": "again"}))
        .await
        .expect_error(409, "conflict");

    // The next run treats them as any other: the held TTL expires now,
    // the old and the deleted go; bob's stay held.
    let dry = dry_run(&rest).await;
    let done = run(&rest).await;
    assert_eq!(dry, done);
    let text = kind(&done, "text");
    assert_eq!(
        (
            text.expired,
            text.purged_deleted,
            text.purged_old,
            text.held
        ),
        (1, 1, 1, 2),
        "{done:?}"
    );
    assert_eq!(kind(&done, "image").purged_old, 1);
    for m in [h_old, h_gone, h_image] {
        assert!(!stored(&rest, m).await, "released, yet kept");
    }
    assert!(stored(&rest, &bob_old).await && stored(&rest, &bob_gone).await);
    assert!(
        eventually(Duration::from_secs(10), async || !object_of(&rest, h_file)
            .exists())
        .await,
        "the released image's file was not purged"
    );
    rest.delete(&format!("/api/channels/{held_ch}"), &alice.token)
        .await
        .expect(204);

    // The listing has both holds; the audit has them, without reasons.
    let listed = rest.get("/api/holds", &root.token).await.expect(200);
    assert_eq!(listed.body["holds"].as_array().unwrap().len(), 2);
    let one = rest
        .get(
            &format!("/api/holds/{}", user_hold["id"].as_str().unwrap()),
            &root.token,
        )
        .await
        .expect(200);
    assert_eq!(one.body["hold"]["userId"], json!(bob.user_id));
    let placed = rest.audit_entries("hold.placed", 2).await;
    assert_eq!(placed.len(), 2);
    assert!(placed
        .iter()
        .any(|e| e.details["channelId"] == json!(held_ch)
            && e.details["scope"] == "channel"
            && e.details["holdId"] == channel_hold["id"]));
    assert!(placed
        .iter()
        .all(|e| !e.details.to_string().contains("litigation")));
    let released = rest.audit_entries("hold.released", 1).await;
    assert_eq!(released[0].details["holdId"], channel_hold["id"]);
    let runs = rest.audit_entries("retention.run", 2).await;
    assert!(runs
        .iter()
        .any(|e| e.details["held"] == 6 && e.details["byKind"]["image"]["held"] == 1));
    rest.stop().await;
}

async fn patient_holds_follow_the_concerns_rule(backend: Backend) {
    let Some(rest) = start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let alice = rest.user(&root, "alice", "user").await;
    let cipher = rest.server.app.realtime.cipher.clone();
    let patient = PatientRef::parse("Patient/123").expect("ref");
    let other = PatientRef::parse("Patient/999").expect("ref");
    let tag = cipher.active_patient_tag(&patient).expect("tag");
    let other_tag = cipher.active_patient_tag(&other).expect("tag");

    // A channel about the patient; a channel about no one.
    let about = rest.channel(&alice, "bed-4", "private").await;
    let general = rest.channel(&alice, "general", "private").await;
    exec(
        &rest,
        &format!("UPDATE channels SET patient_tag = '{tag}' WHERE id = '{about}'"),
    )
    .await;
    let by_channel = rest.send(&alice, &about, "no tag of its own").await;
    let other_patient = rest.send(&alice, &about, "about someone else").await;
    let own_tag = rest.send(&alice, &general, "about the patient").await;
    let unrelated = rest.send(&alice, &general, "about no one").await;
    exec(
        &rest,
        &format!("UPDATE messages SET patient_tag = '{other_tag}' WHERE id = '{other_patient}'"),
    )
    .await;
    exec(
        &rest,
        &format!("UPDATE messages SET patient_tag = '{tag}' WHERE id = '{own_tag}'"),
    )
    .await;
    for m in [&by_channel, &other_patient, &own_tag, &unrelated] {
        age(&rest, m, 3000).await;
    }

    // Permission and reasons first.
    let body = json!({"scope": "patient", "patientRef": "Patient/123", "reason": "subpoena"});
    rest.post("/api/holds", &alice.token, body.clone())
        .await
        .expect_error(403, "forbidden");
    rest.get("/api/holds", &alice.token)
        .await
        .expect_error(403, "forbidden");
    for reason in [json!(""), json!("x".repeat(501))] {
        let r = rest
            .post(
                "/api/holds",
                &root.token,
                json!({"scope": "patient", "patientRef": "Patient/123", "reason": reason}),
            )
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(r.field(), "reason");
    }
    rest.post(
        "/api/holds",
        &root.token,
        json!({"scope": "patient", "patientRef": "Patient/123"}),
    )
    .await
    .expect(400);
    let r = rest
        .post(
            "/api/holds",
            &root.token,
            json!({"scope": "channel", "userId": alice.user_id, "reason": "r"}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(r.field(), "channelId");
    assert!(rest.audit_entries("hold.placed", 0).await.is_empty());

    let placed = rest.post("/api/holds", &root.token, body).await.expect(201);
    let hold = &placed.body["hold"];
    assert_eq!(hold["patientTag"], json!(tag));
    assert!(!placed.body.to_string().contains("Patient/123"));

    let dry = dry_run(&rest).await;
    let done = run(&rest).await;
    assert_eq!(dry, done);
    let text = kind(&done, "text");
    assert_eq!((text.purged_old, text.held), (2, 2), "{done:?}");
    assert!(
        stored(&rest, &by_channel).await,
        "the channel's patient is not held"
    );
    assert!(
        stored(&rest, &own_tag).await,
        "the message's own patient is not held"
    );
    assert!(
        !stored(&rest, &other_patient).await,
        "its own tag names someone else"
    );
    assert!(!stored(&rest, &unrelated).await);
    rest.delete(&format!("/api/channels/{about}"), &alice.token)
        .await
        .expect_error(409, "conflict");

    let entries = rest.audit_entries("hold.placed", 1).await;
    assert_eq!(entries[0].details["patientTag"], json!(tag));
    assert_eq!(entries[0].details["scope"], "patient");
    assert!(!entries[0].details.to_string().contains("Patient/123"));

    let release = format!("/api/holds/{}/release", hold["id"].as_str().unwrap());
    rest.post(&release, &root.token, json!({"reason": "done"}))
        .await
        .expect(200);
    let done = run(&rest).await;
    assert_eq!(kind(&done, "text").purged_old, 2);
    assert!(!stored(&rest, &by_channel).await && !stored(&rest, &own_tag).await);
    rest.stop().await;
}

both_backends!(
    held_messages_and_their_files_survive_until_release,
    patient_holds_follow_the_concerns_rule,
);
