//! Break-glass emergency access (issue 36, docs/break-glass.md), end to end
//! on both stores: a server booted in-process, driven over REST and real
//! WebSockets.
//!
//! - a patient (a plain user without the right) is refused 403, and so is a
//!   clinician until an admin gives them the right; a reason is required
//!   (400 empty, blank or short, 413 over 500 bytes); members get 409;
//! - a grant makes the clinician a member: they join, read history (the
//!   `history.read` entry carries `details.breakGlass`) and get pushes;
//!   a connected member and a connected admin get `system_event`
//!   `break_glass`;
//! - it expires on time (ttl 2 s): the socket leaves the channel and stops
//!   receiving, REST history is 403, `break_glass.ended` (`expired`) is in
//!   the chain and `break_glass_ended` is pushed;
//! - the review queue lists it (reason opened, the read audited) until it
//!   is reviewed, after it ended too; the reason is in no audit entry;
//! - ended early by the grantee (`ended_by_user`) or revoked by an admin;
//!   after a restart an open grant is back in the registry and one whose
//!   time passed while the server was down is ended (`expired`).

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::time::Duration;

use courier_protocol::client::Client;
use courier_protocol::frames::ServerFrame;
use rest::{Backend, Rest, Session};
use serde_json::{json, Value};
use sqlx::Connection;

const T: Duration = Duration::from_secs(5);
const REASON: &str = "Cardiac arrest in bed 4, need the care team's notes";

/// An authenticated socket that joined nothing.
async fn connected(rest: &Rest, who: &Session) -> Client {
    let mut socket = Client::connect(&rest.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&who.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    socket
}

/// The next `system_event` of `event_type`, its data.
async fn system_event(socket: &mut Client, event_type: &str) -> Value {
    let frame = socket
        .next_push_matching(
            T,
            |f| matches!(f, ServerFrame::SystemEvent(e) if e.event_type == event_type),
        )
        .await
        .unwrap_or_else(|e| panic!("no system_event {event_type}: {e:?}"));
    match frame {
        ServerFrame::SystemEvent(e) => e.data,
        _ => unreachable!(),
    }
}

/// The text of the next `new_message`, if one comes within `within`.
async fn next_text(socket: &mut Client, within: Duration) -> Option<String> {
    match socket
        .next_push_matching(within, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
    {
        Ok(ServerFrame::NewMessage(p)) => Some(p.data.text),
        _ => None,
    }
}

async fn open(rest: &Rest, who: &Session, channel: &str, reason: Value) -> rest::Reply {
    rest.post(
        &format!("/api/channels/{channel}/break-glass"),
        &who.token,
        json!({ "reason": reason }),
    )
    .await
}

async fn allow(rest: &Rest, admin: &Session, user: &Session) {
    let reply = rest
        .put(
            &format!("/api/users/{}/break-glass", user.user_id),
            &admin.token,
            json!({"allowed": true}),
        )
        .await
        .expect(200);
    assert_eq!(reply.body["allowed"], true);
}

fn history(channel: &str) -> String {
    format!("/api/channels/{channel}/messages")
}

/// Runs one SQL statement on the server's database.
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

async fn granted_expires_and_is_reviewed(backend: Backend) {
    let Some(rest) = Rest::start_with(backend, |c| {
        c.break_glass_ttl_secs = 2;
        c.break_glass_sweep_ms = 100;
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    let owner = rest.user(&root, "owner", "user").await;
    let nurse = rest.user(&root, "nurse", "user").await;
    let doctor = rest.user(&root, "doctor", "user").await;
    let patient = rest.user(&root, "patient", "user").await;
    let channel = rest.channel(&owner, "icu-team", "private").await;
    rest.add_member(&owner, &channel, &nurse).await;
    rest.send(&owner, &channel, "before the emergency").await;
    let mut nurse_ws = rest.joined(&nurse, &channel).await;
    let mut root_ws = connected(&rest, &root).await;

    // Who may: not a patient, not a clinician before an admin allows it.
    open(&rest, &patient, &channel, json!(REASON))
        .await
        .expect_error(403, "forbidden");
    open(&rest, &doctor, &channel, json!(REASON))
        .await
        .expect_error(403, "forbidden");
    let denied = rest.audit_entries("access.denied", 2).await;
    assert!(denied.iter().any(|e| e.details["op"] == "break_glass.open"
        && e.actor_id.map(|u| u.to_string()) == Some(patient.user_id.clone())));
    // Only an admin sets the right.
    rest.put(
        &format!("/api/users/{}/break-glass", doctor.user_id),
        &nurse.token,
        json!({"allowed": true}),
    )
    .await
    .expect_error(403, "forbidden");
    allow(&rest, &root, &doctor).await;
    let right = rest.audit_entries("user.break_glass_right", 1).await;
    assert_eq!(right[0].details["userId"], doctor.user_id.as_str());

    // A reason is required.
    rest.post(
        &format!("/api/channels/{channel}/break-glass"),
        &doctor.token,
        json!({}),
    )
    .await
    .expect(400);
    for short in ["", "    ", "  too short "] {
        let reply = open(&rest, &doctor, &channel, json!(short))
            .await
            .expect(400);
        assert_eq!(reply.field(), "reason", "{}", reply.body);
    }
    open(&rest, &doctor, &channel, json!("x".repeat(501)))
        .await
        .expect_error(413, "too_large");
    // Members have no glass to break.
    open(&rest, &nurse, &channel, json!(REASON))
        .await
        .expect_error(403, "forbidden");
    allow(&rest, &root, &nurse).await;
    open(&rest, &nurse, &channel, json!(REASON))
        .await
        .expect_error(409, "conflict");
    rest.get(&history(&channel), &doctor.token)
        .await
        .expect_error(403, "forbidden");

    // Open.
    let reply = open(&rest, &doctor, &channel, json!(REASON))
        .await
        .expect(201);
    let grant = reply.body["grant"]["id"].as_str().expect("id").to_owned();
    let expires_at = reply.body["grant"]["expiresAt"]
        .as_i64()
        .expect("expiresAt");
    assert_eq!(reply.body["grant"]["active"], true);
    let told = system_event(&mut nurse_ws, "break_glass").await;
    assert_eq!(told["grantId"], grant.as_str());
    assert_eq!(told["channelId"], channel.as_str());
    assert_eq!(told["userId"], doctor.user_id.as_str());
    assert_eq!(told["expiresAt"], expires_at);
    let told = system_event(&mut root_ws, "break_glass").await;
    assert_eq!(told["grantId"], grant.as_str());
    let granted = rest.audit_entries("break_glass.granted", 1).await;
    assert_eq!(granted[0].details["grantId"], grant.as_str());
    assert_eq!(granted[0].details["channelId"], channel.as_str());
    assert_eq!(granted[0].details["userId"], doctor.user_id.as_str());
    assert_eq!(granted[0].details["expiresAt"], expires_at);
    open(&rest, &doctor, &channel, json!(REASON))
        .await
        .expect_error(409, "conflict");

    // Under the grant: join, pushes, history (marked in the audit).
    let mut doctor_ws = rest.joined(&doctor, &channel).await;
    rest.send(&owner, &channel, "during the emergency").await;
    assert_eq!(
        next_text(&mut doctor_ws, T).await.as_deref(),
        Some("during the emergency")
    );
    let page = rest
        .get(&history(&channel), &doctor.token)
        .await
        .expect(200);
    assert_eq!(page.body["messages"].as_array().map(Vec::len), Some(2));
    let reads = rest.audit_entries("history.read", 1).await;
    let marked: Vec<_> = reads
        .iter()
        .filter(|e| e.actor_id.map(|u| u.to_string()) == Some(doctor.user_id.clone()))
        .collect();
    assert!(!marked.is_empty());
    assert!(marked
        .iter()
        .all(|e| e.details["breakGlass"] == grant.as_str()));
    // A member's read is not marked.
    rest.get(&history(&channel), &nurse.token).await.expect(200);
    let reads = rest.audit_entries("history.read", 2).await;
    assert!(reads
        .iter()
        .filter(|e| e.actor_id.map(|u| u.to_string()) == Some(nurse.user_id.clone()))
        .all(|e| e.details.get("breakGlass").is_none()));

    // Expires on time.
    let ended = system_event(&mut doctor_ws, "break_glass_ended").await;
    assert_eq!(ended["grantId"], grant.as_str());
    assert_eq!(ended["reason"], "expired");
    let late = courier_actors::now_ms() - expires_at;
    assert!(late < 1_500, "ended {late} ms after expiresAt");
    system_event(&mut root_ws, "break_glass_ended").await;
    rest.send(&owner, &channel, "after the emergency").await;
    assert_eq!(
        next_text(&mut nurse_ws, T).await.as_deref(),
        Some("during the emergency")
    );
    assert_eq!(
        next_text(&mut nurse_ws, T).await.as_deref(),
        Some("after the emergency")
    );
    assert_eq!(
        next_text(&mut doctor_ws, Duration::from_secs(1)).await,
        None
    );
    rest.get(&history(&channel), &doctor.token)
        .await
        .expect_error(403, "forbidden");
    let ends = rest.audit_entries("break_glass.ended", 1).await;
    assert_eq!(ends[0].details["grantId"], grant.as_str());
    assert_eq!(ends[0].details["reason"], "expired");
    assert!(rest
        .server
        .app
        .realtime
        .break_glass
        .active(
            channel.parse().expect("id"),
            doctor.user_id.parse().expect("id"),
            0
        )
        .is_none());

    // The review queue: admins only; it lists the grant, ended, until reviewed.
    rest.get("/api/break-glass", &doctor.token)
        .await
        .expect_error(403, "forbidden");
    rest.get("/api/break-glass", &patient.token)
        .await
        .expect_error(403, "forbidden");
    let queue = rest.get("/api/break-glass", &root.token).await.expect(200);
    let grants = queue.body["grants"].as_array().expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["id"], grant.as_str());
    assert_eq!(grants[0]["reason"], REASON);
    assert_eq!(grants[0]["endReason"], "expired");
    assert_eq!(grants[0]["active"], false);
    let read = rest.audit_entries("break_glass.queue_read", 1).await;
    assert_eq!(read[0].details["grantIds"], json!([grant]));
    rest.post(
        &format!("/api/break-glass/{grant}/review"),
        &doctor.token,
        json!({"note": "self review"}),
    )
    .await
    .expect_error(403, "forbidden");
    rest.post(
        &format!("/api/break-glass/{grant}/review"),
        &root.token,
        json!({"note": "  "}),
    )
    .await
    .expect(400);
    let reviewed = rest
        .post(
            &format!("/api/break-glass/{grant}/review"),
            &root.token,
            json!({"note": "Justified: code blue documented"}),
        )
        .await
        .expect(200);
    assert!(reviewed.body["grant"]["reviewedAt"].is_i64());
    rest.post(
        &format!("/api/break-glass/{grant}/review"),
        &root.token,
        json!({"note": "again"}),
    )
    .await
    .expect_error(409, "conflict");
    let review = rest.audit_entries("break_glass.reviewed", 1).await;
    assert_eq!(review[0].details["grantId"], grant.as_str());
    let queue = rest.get("/api/break-glass", &root.token).await.expect(200);
    assert_eq!(queue.body["grants"], json!([]));
    let all = rest
        .get("/api/break-glass?status=all", &root.token)
        .await
        .expect(200);
    assert_eq!(all.body["grants"][0]["id"], grant.as_str());
    assert_eq!(
        all.body["grants"][0]["reviewNote"],
        "Justified: code blue documented"
    );
    rest.get("/api/break-glass?status=some", &root.token)
        .await
        .expect(400);

    // Neither the reason nor the note is in the chain, and it verifies.
    let chain = rest
        .server
        .app
        .store
        .list_audit(courier_actors::durable::store::AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .expect("audit");
    for entry in &chain {
        let details = entry.details.to_string();
        assert!(!details.contains("Cardiac"), "{details}");
        assert!(!details.contains("code blue"), "{details}");
    }
    let verify = rest.get("/api/audit/verify", &root.token).await.expect(200);
    assert_eq!(verify.body["ok"], true, "{}", verify.body);

    // Only private channels: a public one is joined, a direct one is fixed.
    let public = rest.channel(&root, "lobby", "public").await;
    open(&rest, &doctor, &public, json!(REASON))
        .await
        .expect_error(409, "conflict");
    rest.stop().await;
}

async fn ended_early_revoked_and_reloaded(backend: Backend) {
    // No sweep before the restart: the lapsed grant is ended by the load.
    let Some(rest) = Rest::start_with(backend, |c| {
        c.break_glass_sweep_ms = 3_600_000;
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    let owner = rest.user(&root, "owner", "user").await;
    let doctor = rest.user(&root, "doctor", "user").await;
    allow(&rest, &root, &doctor).await;
    let first = rest.channel(&owner, "ward-a", "private").await;
    let second = rest.channel(&owner, "ward-b", "private").await;
    let third = rest.channel(&owner, "ward-c", "private").await;

    // Ended by the grantee.
    let reply = open(&rest, &doctor, &first, json!(REASON))
        .await
        .expect(201);
    let grant = reply.body["grant"]["id"].as_str().expect("id").to_owned();
    rest.get(&history(&first), &doctor.token).await.expect(200);
    rest.delete(&format!("/api/break-glass/{grant}"), &owner.token)
        .await
        .expect_error(403, "forbidden");
    rest.delete(&format!("/api/break-glass/{grant}"), &doctor.token)
        .await
        .expect(204);
    rest.get(&history(&first), &doctor.token)
        .await
        .expect_error(403, "forbidden");
    rest.delete(&format!("/api/break-glass/{grant}"), &doctor.token)
        .await
        .expect_error(409, "conflict");
    let ends = rest.audit_entries("break_glass.ended", 1).await;
    assert_eq!(ends[0].details["reason"], "ended_by_user");

    // Two open grants; one's time passes while the server is down.
    let kept = open(&rest, &doctor, &second, json!(REASON))
        .await
        .expect(201);
    let kept = kept.body["grant"]["id"].as_str().expect("id").to_owned();
    let lapsed = open(&rest, &doctor, &third, json!(REASON))
        .await
        .expect(201);
    let lapsed = lapsed.body["grant"]["id"].as_str().expect("id").to_owned();
    exec(
        &rest,
        &format!(
            "UPDATE break_glass_grants SET expires_at = {} WHERE id = '{lapsed}'",
            courier_actors::now_ms() - 1_000
        ),
    )
    .await;
    let Rest { server, http, .. } = rest;
    let server = server.restart().await;
    let rest = Rest {
        base: server.http_url(),
        server,
        http,
    };
    let registry = &rest.server.app.realtime.break_glass;
    let doctor_id = doctor.user_id.parse().expect("id");
    let now = courier_actors::now_ms();
    assert_eq!(
        registry
            .active(second.parse().expect("id"), doctor_id, now)
            .map(|g| g.to_string()),
        Some(kept.clone())
    );
    assert!(registry
        .active(third.parse().expect("id"), doctor_id, now)
        .is_none());
    rest.get(&history(&second), &doctor.token).await.expect(200);
    rest.get(&history(&third), &doctor.token)
        .await
        .expect_error(403, "forbidden");
    let ends = rest.audit_entries("break_glass.ended", 2).await;
    assert!(ends
        .iter()
        .any(|e| e.details["grantId"] == lapsed.as_str() && e.details["reason"] == "expired"));

    // Revoked by an admin.
    rest.delete(&format!("/api/break-glass/{kept}"), &root.token)
        .await
        .expect(204);
    rest.get(&history(&second), &doctor.token)
        .await
        .expect_error(403, "forbidden");
    let ends = rest.audit_entries("break_glass.ended", 3).await;
    assert!(ends
        .iter()
        .any(|e| e.details["grantId"] == kept.as_str() && e.details["reason"] == "revoked"));
    let all = rest
        .get("/api/break-glass?status=all", &root.token)
        .await
        .expect(200);
    assert_eq!(all.body["grants"].as_array().map(Vec::len), Some(3));
    rest.stop().await;
}

/// `keys rotate` re-seals the reasons, so retiring the old version keeps
/// the review queue readable; `keys retire` refuses while one is left.
async fn reasons_survive_rotation_and_retirement(backend: Backend) {
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let owner = rest.user(&root, "owner", "user").await;
    let doctor = rest.user(&root, "doctor", "user").await;
    let channel = rest.channel(&owner, "icu-team", "private").await;
    allow(&rest, &root, &doctor).await;
    open(&rest, &doctor, &channel, json!(REASON))
        .await
        .expect(201);
    let config = rest.server.app.config.clone();
    // A grant sealed under version 1 cannot lose its key.
    let refused = courier::commands::keys_retire(&config, 1).await;
    let refused = refused.expect_err("retired a version a reason is still sealed under");
    assert!(refused.to_string().contains("break-glass"), "{refused}");
    assert_eq!(
        courier::commands::keys_rotate(&config)
            .await
            .expect("rotate"),
        2
    );
    let grants = rest
        .server
        .app
        .store
        .list_grants(false)
        .await
        .expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].reason_key_version, 2);
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
    let queue = rest.get("/api/break-glass", &root.token).await.expect(200);
    assert_eq!(queue.body["grants"][0]["reason"], REASON);
    rest.stop().await;
}

both_backends!(
    granted_expires_and_is_reviewed,
    ended_early_revoked_and_reloaded,
    reasons_survive_rotation_and_retirement,
);
