//! The REST API beyond `/api/auth`: users, sessions, channels, members,
//! history, `POST /api/messages` (and its fan-out to sockets), the audit
//! log, the per-user rate limit and the OpenAPI description. Scenarios run
//! on SQLite and PostgreSQL.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier::api::openapi::ENDPOINTS;
use courier_actors::durable::store::Role;
use courier_actors::policy::identity::Identity;
use courier_protocol::client::Client;
use courier_protocol::frames::ServerFrame;
use courier_protocol::{ChannelId, SessionId, UserId};
use reqwest::Method;
use rest::{Backend, Rest, Session, PASSWORD, ROOT};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

both_backends!(
    users_are_managed_by_admins,
    sessions_are_listed_and_terminated,
    channels_and_members,
    messages_publish_through_the_socket_path_and_page,
    non_members_never_read_private_or_direct_channels,
    audit_is_listed_filtered_and_verified,
);

fn ids(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn users_are_managed_by_admins(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let admin = api.user(&root, "admin1", "admin").await;
    let plain = api.user(&admin, "plain", "user").await;

    // Create: validation, conflicts, who may grant what.
    let bad = api
        .post(
            "/api/users",
            &admin.token,
            json!({"username": "x y", "password": PASSWORD}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "username");
    let bad = api
        .post(
            "/api/users",
            &admin.token,
            json!({"username": "xy1", "password": PASSWORD, "role": "god"}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "role");
    api.post(
        "/api/users",
        &admin.token,
        json!({"username": "PLAIN", "password": PASSWORD}),
    )
    .await
    .expect_error(409, "conflict");
    api.post(
        "/api/users",
        &plain.token,
        json!({"username": "sneaky", "password": PASSWORD}),
    )
    .await
    .expect_error(403, "forbidden");
    api.post(
        "/api/users",
        &admin.token,
        json!({"username": "boss", "password": PASSWORD, "role": "super_admin"}),
    )
    .await
    .expect_error(403, "forbidden");
    let created = api
        .post("/api/users", &root.token, json!({"username": "mod1", "password": PASSWORD, "role": "moderator", "email": "m@example.org"}))
        .await
        .expect(201);
    let mod_id = created.body["user"]["id"].as_str().expect("id").to_owned();

    // List: paging, search, permission.
    let page = api
        .get("/api/users?limit=2", &admin.token)
        .await
        .expect(200);
    assert_eq!(page.body["users"].as_array().expect("users").len(), 2);
    assert_eq!(page.body["hasMore"], true);
    let page = api
        .get("/api/users?limit=2&offset=2", &admin.token)
        .await
        .expect(200);
    assert_eq!(page.body["users"].as_array().expect("users").len(), 2);
    assert_eq!(page.body["hasMore"], false);
    let found = api
        .get("/api/users?search=MOD", &admin.token)
        .await
        .expect(200);
    assert_eq!(ids(&found.body, "users"), vec![mod_id.clone()]);
    let bad = api
        .get("/api/users?limit=0", &admin.token)
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "limit");
    api.get("/api/users?limit=many", &admin.token)
        .await
        .expect_error(400, "invalid_frame");
    api.get("/api/users", &plain.token)
        .await
        .expect_error(403, "forbidden");
    // A moderator has users.read.
    let moderator = api.login("mod1", PASSWORD).await;
    api.get("/api/users", &moderator.token).await.expect(200);

    // Read: yourself, or with users.read.
    let me = api
        .get(&format!("/api/users/{}", plain.user_id), &plain.token)
        .await
        .expect(200);
    assert_eq!(me.body["user"]["username"], "plain");
    api.get(&format!("/api/users/{}", admin.user_id), &plain.token)
        .await
        .expect_error(403, "forbidden");
    api.get(&format!("/api/users/{}", UserId::new()), &admin.token)
        .await
        .expect_error(404, "not_found");
    let bad = api
        .get("/api/users/not-a-uuid", &admin.token)
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "id");

    // Permissions.
    let perms = api
        .get(
            &format!("/api/users/{}/permissions", plain.user_id),
            &plain.token,
        )
        .await
        .expect(200);
    assert_eq!(perms.body["role"], "user");
    assert_eq!(
        perms.body["permissions"],
        json!(["channels.create_private"])
    );
    let perms = api
        .get(&format!("/api/users/{mod_id}/permissions"), &admin.token)
        .await
        .expect(200);
    assert!(perms.body["permissions"]
        .as_array()
        .expect("list")
        .contains(&json!("messages.moderate")));
    api.get(
        &format!("/api/users/{}/permissions", root.user_id),
        &plain.token,
    )
    .await
    .expect_error(403, "forbidden");
    api.get(
        &format!("/api/users/{}/permissions", UserId::new()),
        &admin.token,
    )
    .await
    .expect_error(404, "not_found");

    // Update: email alone keeps sessions; a role change ends them.
    let updated = api
        .put(
            &format!("/api/users/{}", plain.user_id),
            &admin.token,
            json!({"email": "p@example.org"}),
        )
        .await
        .expect(200);
    assert_eq!(updated.body["user"]["email"], "p@example.org");
    api.get("/api/channels", &plain.token).await.expect(200);
    let bad = api
        .put(
            &format!("/api/users/{}", plain.user_id),
            &admin.token,
            json!({"email": "nope"}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "email");
    let bad = api
        .put(
            &format!("/api/users/{}", plain.user_id),
            &admin.token,
            json!({"password": "short"}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "password");
    api.put(
        &format!("/api/users/{}", plain.user_id),
        &plain.token,
        json!({"role": "admin"}),
    )
    .await
    .expect_error(403, "forbidden");
    api.put(
        &format!("/api/users/{}", root.user_id),
        &admin.token,
        json!({"email": "r@example.org"}),
    )
    .await
    .expect_error(403, "forbidden");
    api.put(
        &format!("/api/users/{}", UserId::new()),
        &admin.token,
        json!({"email": null}),
    )
    .await
    .expect_error(404, "not_found");
    let promoted = api
        .put(
            &format!("/api/users/{}", plain.user_id),
            &admin.token,
            json!({"role": "moderator", "email": null}),
        )
        .await
        .expect(200);
    assert_eq!(promoted.body["user"]["role"], "moderator");
    assert_eq!(promoted.body["user"]["email"], Value::Null);
    api.get("/api/channels", &plain.token)
        .await
        .expect_error(401, "auth_failed");

    // Delete.
    api.delete(&format!("/api/users/{}", admin.user_id), &admin.token)
        .await
        .expect_error(409, "conflict");
    api.delete(&format!("/api/users/{}", root.user_id), &admin.token)
        .await
        .expect_error(403, "forbidden");
    api.delete(&format!("/api/users/{mod_id}"), &plain.token)
        .await
        .expect_error(401, "auth_failed");
    let victim = api.login("mod1", PASSWORD).await;
    api.delete(&format!("/api/users/{mod_id}"), &admin.token)
        .await
        .expect(204);
    api.get(&format!("/api/users/{mod_id}"), &admin.token)
        .await
        .expect_error(404, "not_found");
    api.get("/api/channels", &victim.token)
        .await
        .expect_error(401, "auth_failed");
    api.delete(&format!("/api/users/{mod_id}"), &admin.token)
        .await
        .expect_error(404, "not_found");

    let denials = api.audit_entries("access.denied", 5).await;
    assert!(denials.len() >= 5, "denials are audited: {denials:?}");
    assert!(!api.audit_entries("user.delete", 1).await.is_empty());
    api.stop().await;
}

async fn sessions_are_listed_and_terminated(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let alice = api.user(&root, "alice", "user").await;
    let alice2 = api.login("alice", PASSWORD).await;
    let bob = api.user(&root, "bob", "user").await;

    let mine = api
        .get(
            &format!("/api/users/{}/sessions", alice.user_id),
            &alice.token,
        )
        .await
        .expect(200);
    let sessions = mine.body["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    assert!(sessions
        .iter()
        .all(|s| s["userAgent"] == rest::USER_AGENT && s["ip"] == "127.0.0.1"));
    assert!(
        !mine.body.to_string().contains(&alice.refresh),
        "no refresh tokens"
    );
    api.get(
        &format!("/api/users/{}/sessions", alice.user_id),
        &bob.token,
    )
    .await
    .expect_error(403, "forbidden");
    api.get(
        &format!("/api/users/{}/sessions", UserId::new()),
        &root.token,
    )
    .await
    .expect_error(404, "not_found");
    api.get(
        &format!("/api/users/{}/sessions?all=maybe", alice.user_id),
        &root.token,
    )
    .await
    .expect_error(400, "invalid_frame");

    let mut socket = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&alice2.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    api.post(
        &format!("/api/users/{}/terminate-sessions", alice.user_id),
        &bob.token,
        json!({}),
    )
    .await
    .expect_error(403, "forbidden");
    api.post(
        &format!("/api/users/{}/terminate-sessions", UserId::new()),
        &root.token,
        json!({}),
    )
    .await
    .expect_error(404, "not_found");
    let ended = api
        .post(
            &format!("/api/users/{}/terminate-sessions", alice.user_id),
            &root.token,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(ended.body["revoked"], 2);
    assert_eq!(
        socket.wait_closed(T).await.expect("closed"),
        Some(courier_protocol::error::close::SESSION_REVOKED)
    );
    api.get("/api/channels", &alice.token)
        .await
        .expect_error(401, "auth_failed");
    api.get("/api/channels", &alice2.token)
        .await
        .expect_error(401, "auth_failed");
    let all = api
        .get(
            &format!("/api/users/{}/sessions?all=true", alice.user_id),
            &root.token,
        )
        .await
        .expect(200);
    assert!(all.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .all(|s| s["valid"] == false));
    // Users may end their own sessions.
    let again = api.login("alice", PASSWORD).await;
    api.post(
        &format!("/api/users/{}/terminate-sessions", again.user_id),
        &again.token,
        json!({}),
    )
    .await
    .expect(200);
    api.get("/api/channels", &again.token)
        .await
        .expect_error(401, "auth_failed");
    assert!(!api.audit_entries("sessions.terminate", 2).await.is_empty());
    api.stop().await;
}

async fn channels_and_members(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let owner = api.user(&root, "owner", "moderator").await;
    let member = api.user(&root, "member", "user").await;
    let plain = api.user(&root, "plain", "user").await;

    // Create.
    for (body, field) in [
        (json!({"name": "", "kind": "public"}), "name"),
        (json!({"name": "x", "kind": "secret"}), "kind"),
        (json!({"name": "x", "kind": "direct"}), "kind"),
        (json!({"kind": "public"}), "name"),
        (
            json!({"name": "x", "kind": "public", "description": "d".repeat(1001)}),
            "description",
        ),
    ] {
        let reply = api
            .post("/api/channels", &owner.token, body)
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(reply.field(), field, "{}", reply.body);
    }
    api.post(
        "/api/channels",
        &plain.token,
        json!({"name": "announce", "kind": "public"}),
    )
    .await
    .expect_error(403, "forbidden");
    let created = api
        .post(
            "/api/channels",
            &owner.token,
            json!({"name": " ward-7 ", "kind": "private", "description": "Night shift"}),
        )
        .await
        .expect(201);
    assert_eq!(created.body["channel"]["name"], "ward-7");
    assert_eq!(created.body["channel"]["role"], "owner");
    let ward = created.body["channel"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let lobby = api.channel(&owner, "lobby", "public").await;
    let own = api.channel(&plain, "plain-private", "private").await;

    // List and get.
    let listed = ids(
        &api.get("/api/channels", &plain.token)
            .await
            .expect(200)
            .body,
        "channels",
    );
    assert!(listed.contains(&lobby) && listed.contains(&own) && !listed.contains(&ward));
    let got = api
        .get(&format!("/api/channels/{ward}"), &owner.token)
        .await
        .expect(200);
    assert_eq!(
        (
            got.body["channel"]["kind"].clone(),
            got.body["channel"]["lastSeq"].clone()
        ),
        (json!("private"), json!(0))
    );
    api.get(&format!("/api/channels/{lobby}"), &plain.token)
        .await
        .expect(200);
    api.get(&format!("/api/channels/{}", ChannelId::new()), &owner.token)
        .await
        .expect_error(404, "not_found");
    api.get("/api/channels/nope", &owner.token)
        .await
        .expect_error(400, "invalid_frame");

    // Members: add, duplicate, unknown user, role, remove, last owner.
    api.get(&format!("/api/channels/{ward}/members"), &member.token)
        .await
        .expect_error(403, "forbidden");
    let added = api
        .post(
            &format!("/api/channels/{ward}/members"),
            &owner.token,
            json!({"userId": member.user_id}),
        )
        .await
        .expect(201);
    assert_eq!(
        (
            added.body["member"]["role"].clone(),
            added.body["member"]["username"].clone()
        ),
        (json!("member"), json!("member"))
    );
    api.post(
        &format!("/api/channels/{ward}/members"),
        &owner.token,
        json!({"userId": member.user_id}),
    )
    .await
    .expect_error(409, "conflict");
    api.post(
        &format!("/api/channels/{ward}/members"),
        &owner.token,
        json!({"userId": UserId::new()}),
    )
    .await
    .expect_error(404, "not_found");
    let bad = api
        .post(
            &format!("/api/channels/{ward}/members"),
            &owner.token,
            json!({"userId": "x"}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "userId");
    api.post(
        &format!("/api/channels/{ward}/members"),
        &member.token,
        json!({"userId": plain.user_id}),
    )
    .await
    .expect_error(403, "forbidden");
    let members = api
        .get(&format!("/api/channels/{ward}/members"), &member.token)
        .await
        .expect(200);
    assert_eq!(
        members.body["members"].as_array().expect("members").len(),
        2
    );
    api.put(
        &format!("/api/channels/{ward}/members/{}", owner.user_id),
        &owner.token,
        json!({"role": "member"}),
    )
    .await
    .expect_error(409, "conflict");
    api.delete(
        &format!("/api/channels/{ward}/members/{}", owner.user_id),
        &owner.token,
    )
    .await
    .expect_error(409, "conflict");
    let promoted = api
        .put(
            &format!("/api/channels/{ward}/members/{}", member.user_id),
            &owner.token,
            json!({"role": "moderator"}),
        )
        .await
        .expect(200);
    assert_eq!(promoted.body["member"]["role"], "moderator");
    api.put(
        &format!("/api/channels/{ward}/members/{}", plain.user_id),
        &owner.token,
        json!({"role": "moderator"}),
    )
    .await
    .expect_error(404, "not_found");
    api.put(
        &format!("/api/channels/{ward}/members/{}", member.user_id),
        &owner.token,
        json!({"role": "boss"}),
    )
    .await
    .expect_error(400, "invalid_frame");

    // A joined member who is removed gets member_removed and leaves.
    let mut socket = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(socket
        .authenticate(&member.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    let ward_id: ChannelId = ward.parse().expect("id");
    socket.join(ward_id, None).await.expect("join");
    api.delete(
        &format!("/api/channels/{ward}/members/{}", member.user_id),
        &owner.token,
    )
    .await
    .expect(204);
    socket
        .next_push_matching(
            T,
            |f| matches!(f, ServerFrame::SystemEvent(e) if e.event_type == "member_removed"),
        )
        .await
        .expect("member_removed");
    api.get(&format!("/api/channels/{ward}"), &member.token)
        .await
        .expect_error(403, "forbidden");
    api.delete(
        &format!("/api/channels/{ward}/members/{}", member.user_id),
        &owner.token,
    )
    .await
    .expect_error(404, "not_found");

    // Update.
    let renamed = api
        .put(
            &format!("/api/channels/{ward}"),
            &owner.token,
            json!({"name": "ward-8", "description": null}),
        )
        .await
        .expect(200);
    assert_eq!(
        (
            renamed.body["channel"]["name"].clone(),
            renamed.body["channel"]["description"].clone()
        ),
        (json!("ward-8"), Value::Null)
    );
    api.put(
        &format!("/api/channels/{ward}"),
        &owner.token,
        json!({"kind": "public"}),
    )
    .await
    .expect_error(400, "invalid_frame");
    api.put(
        &format!("/api/channels/{lobby}"),
        &plain.token,
        json!({"name": "mine"}),
    )
    .await
    .expect_error(403, "forbidden");
    // An admin manages any non-direct channel.
    api.put(
        &format!("/api/channels/{lobby}"),
        &root.token,
        json!({"name": "main lobby"}),
    )
    .await
    .expect(200);

    // Delete: joined sockets are told.
    let mut watcher = Client::connect(&api.server.ws_url())
        .await
        .expect("connect");
    assert!(watcher
        .authenticate(&plain.token)
        .await
        .expect("answer")
        .result
        .is_ok());
    watcher
        .join(lobby.parse().expect("id"), None)
        .await
        .expect("join");
    api.delete(&format!("/api/channels/{lobby}"), &plain.token)
        .await
        .expect_error(403, "forbidden");
    api.delete(&format!("/api/channels/{lobby}"), &owner.token)
        .await
        .expect(204);
    watcher
        .next_push_matching(
            T,
            |f| matches!(f, ServerFrame::SystemEvent(e) if e.event_type == "channel_deleted"),
        )
        .await
        .expect("channel_deleted");
    api.get(&format!("/api/channels/{lobby}"), &owner.token)
        .await
        .expect_error(404, "not_found");
    api.delete(&format!("/api/channels/{lobby}"), &owner.token)
        .await
        .expect_error(404, "not_found");
    assert!(!api.audit_entries("channel.delete", 1).await.is_empty());
    api.stop().await;
}

async fn messages_publish_through_the_socket_path_and_page(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.max_text_bytes = 1000).await else {
        return;
    };
    let root = api.root().await;
    let doc = api.user(&root, "doc", "user").await;
    let nurse = api.user(&root, "nurse", "user").await;
    let ward = api.channel(&doc, "ward", "private").await;
    api.add_member(&doc, &ward, &nurse).await;
    let mut socket = api.joined(&nurse, &ward).await;

    let sent = api
        .post(
            "/api/messages",
            &doc.token,
            json!({"channelId": ward, "text": "BP 120/80", "clientMsgId": "m-1"}),
        )
        .await
        .expect(201);
    assert_eq!(
        (sent.body["seq"].clone(), sent.body["text"].clone()),
        (json!(1), json!("BP 120/80"))
    );
    assert_eq!(sent.body["sender"], "doc");
    let pushed = match socket
        .next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
        .expect("new_message")
    {
        ServerFrame::NewMessage(p) => p.data,
        _ => unreachable!(),
    };
    assert_eq!(pushed.id.to_string(), sent.body["id"].as_str().expect("id"));
    assert_eq!(pushed.text, "BP 120/80");

    let again = api
        .post(
            "/api/messages",
            &doc.token,
            json!({"channelId": ward, "text": "BP 120/80", "clientMsgId": "m-1"}),
        )
        .await
        .expect(200);
    assert_eq!(again.body["id"], sent.body["id"]);
    assert_eq!(again.body["text"], "BP 120/80", "the original's content");
    for i in 2..=5 {
        let reply = api
            .post(
                "/api/messages",
                &nurse.token,
                json!({"channelId": ward, "text": format!("note {i}"), "containsPHI": true}),
            )
            .await
            .expect(201);
        assert_eq!(reply.body["containsPHI"], true);
    }
    for (body, status, field) in [
        (json!({"channelId": ward, "text": ""}), 400, "text"),
        (json!({"channelId": ward}), 400, "text"),
        (json!({"text": "x"}), 400, "channelId"),
        (json!({"channelId": "nope", "text": "x"}), 400, "channelId"),
        (
            json!({"channelId": ward, "text": "x", "clientMsgId": "c".repeat(65)}),
            400,
            "clientMsgId",
        ),
        (
            json!({"channelId": ward, "text": "x".repeat(1001)}),
            413,
            "",
        ),
    ] {
        let reply = api.post("/api/messages", &doc.token, body.clone()).await;
        assert_eq!(
            (reply.status, reply.field()),
            (status, field),
            "{body}: {}",
            reply.body
        );
    }
    api.post(
        "/api/messages",
        &doc.token,
        json!({"channelId": ChannelId::new(), "text": "x"}),
    )
    .await
    .expect_error(404, "not_found");

    // History pages ascending with hasMore, as fetch_history.
    let newest = api
        .get(
            &format!("/api/channels/{ward}/messages?limit=2"),
            &doc.token,
        )
        .await
        .expect(200);
    let seqs = |body: &Value| -> Vec<u64> {
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect()
    };
    assert_eq!(seqs(&newest.body), vec![4, 5], "the resend took no seq");
    assert_eq!(newest.body["hasMore"], true);
    let older = api
        .get(
            &format!("/api/channels/{ward}/messages?beforeSeq=4&limit=10"),
            &doc.token,
        )
        .await
        .expect(200);
    assert_eq!(seqs(&older.body), vec![1, 2, 3]);
    assert_eq!(older.body["hasMore"], false);
    // Each page read is audited, as a WebSocket fetch_history is.
    let reader: UserId = doc.user_id.parse().expect("user id");
    let ward_id: ChannelId = ward.parse().expect("channel id");
    let mut counts = Vec::new();
    let audited = rest::eventually(Duration::from_secs(5), async || {
        let reads = api.audit_entries("history.read", 0).await;
        counts = reads
            .iter()
            .filter(|r| r.actor_id == Some(reader) && r.details["channelId"] == json!(ward_id))
            .map(|r| r.details["count"].as_u64().expect("count"))
            .collect();
        counts.len() >= 2
    })
    .await;
    assert!(audited, "both page reads are audited: {counts:?}");
    assert_eq!(counts, vec![3, 2], "newest first");
    for query in [
        "limit=0",
        "limit=101",
        "beforeSeq=0",
        "beforeSeq=-1",
        "limit=x",
    ] {
        api.get(
            &format!("/api/channels/{ward}/messages?{query}"),
            &doc.token,
        )
        .await
        .expect_error(400, "invalid_frame");
    }
    api.get(
        &format!("/api/channels/{}/messages", ChannelId::new()),
        &doc.token,
    )
    .await
    .expect_error(404, "not_found");

    // Broadcast: plain members may not post; the channel actor refuses.
    let news = api.channel(&root, "news", "broadcast").await;
    api.post(
        "/api/messages",
        &doc.token,
        json!({"channelId": news, "text": "hi"}),
    )
    .await
    .expect_error(403, "forbidden");
    api.post(
        "/api/messages",
        &root.token,
        json!({"channelId": news, "text": "hello all"}),
    )
    .await
    .expect(201);
    api.stop().await;
}

/// Opens the direct channel of two users, as `open_direct` does.
async fn direct_channel(api: &Rest, a: &Session, b: &Session) -> String {
    let me = Identity {
        user_id: a.user_id.parse().expect("id"),
        username: a.username.clone(),
        role: Role::User,
        session_id: SessionId::new(),
        expires_at: i64::MAX,
        must_change_password: false,
        must_enrol_second_factor: false,
    };
    let view = api
        .server
        .app
        .realtime
        .open_direct(&me, b.user_id.parse().expect("id"))
        .await
        .expect("open_direct");
    view.id.to_string()
}

async fn non_members_never_read_private_or_direct_channels(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let doc = api.user(&root, "doc", "user").await;
    let nurse = api.user(&root, "nurse", "user").await;
    let outsider = api.user(&root, "outsider", "user").await;
    let admin = api.user(&root, "admin1", "admin").await;
    let ward = api.channel(&doc, "ward", "private").await;
    api.post(
        &format!("/api/channels/{ward}/members"),
        &doc.token,
        json!({"userId": nurse.user_id}),
    )
    .await
    .expect(201);
    api.post(
        "/api/messages",
        &doc.token,
        json!({"channelId": ward, "text": "patient in bed 4"}),
    )
    .await
    .expect(201);
    let direct = direct_channel(&api, &doc, &nurse).await;
    api.post(
        "/api/messages",
        &nurse.token,
        json!({"channelId": direct, "text": "call me"}),
    )
    .await
    .expect(201);

    for channel in [&ward, &direct] {
        for who in [&outsider, &admin, &root] {
            let token = &who.token;
            let listed = ids(
                &api.get("/api/channels", token).await.expect(200).body,
                "channels",
            );
            assert!(
                !listed.contains(channel),
                "{} sees {channel} listed",
                who.username
            );
            for path in [
                format!("/api/channels/{channel}"),
                format!("/api/channels/{channel}/members"),
                format!("/api/channels/{channel}/messages"),
                format!("/api/channels/{channel}/messages?beforeSeq=2&limit=1"),
            ] {
                let reply = api.get(&path, token).await;
                assert_eq!(
                    reply.status, 403,
                    "{} GET {path}: {}",
                    who.username, reply.body
                );
                assert!(
                    !reply.body.to_string().contains("bed 4")
                        && !reply.body.to_string().contains("call me")
                );
            }
            let reply = api
                .post(
                    "/api/messages",
                    token,
                    json!({"channelId": channel, "text": "let me in"}),
                )
                .await;
            assert_eq!(reply.status, 403, "{} posts to {channel}", who.username);
        }
        // Outsiders cannot manage their way in either.
        let token = &outsider.token;
        api.put(
            &format!("/api/channels/{channel}"),
            token,
            json!({"name": "mine"}),
        )
        .await
        .expect_error(403, "forbidden");
        api.post(
            &format!("/api/channels/{channel}/members"),
            token,
            json!({"userId": outsider.user_id}),
        )
        .await
        .expect_error(403, "forbidden");
        api.put(
            &format!("/api/channels/{channel}/members/{}", outsider.user_id),
            token,
            json!({"role": "owner"}),
        )
        .await
        .expect_error(403, "forbidden");
        api.delete(
            &format!("/api/channels/{channel}/members/{}", nurse.user_id),
            token,
        )
        .await
        .expect_error(403, "forbidden");
        api.delete(&format!("/api/channels/{channel}"), token)
            .await
            .expect_error(403, "forbidden");
    }
    // Admins may not add themselves to a direct channel.
    api.post(
        &format!("/api/channels/{direct}/members"),
        &root.token,
        json!({"userId": root.user_id}),
    )
    .await
    .expect_error(403, "forbidden");
    // Admins manage a private channel they are not in, and then may read it
    // only as the member they made themselves (audited).
    api.post(
        &format!("/api/channels/{ward}/members"),
        &admin.token,
        json!({"userId": admin.user_id}),
    )
    .await
    .expect(201);
    api.get(&format!("/api/channels/{ward}/messages"), &admin.token)
        .await
        .expect(200);
    assert!(!api.audit_entries("channel.member_add", 2).await.is_empty());

    // Members read both.
    for channel in [&ward, &direct] {
        api.get(&format!("/api/channels/{channel}/messages"), &nurse.token)
            .await
            .expect(200);
    }
    let denied = api.audit_entries("access.denied", 20).await;
    let outsider_id: UserId = outsider.user_id.parse().expect("id");
    assert!(
        denied
            .iter()
            .filter(|e| e.actor_id == Some(outsider_id))
            .count()
            >= 10
    );
    api.stop().await;
}

async fn audit_is_listed_filtered_and_verified(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let plain = api.user(&root, "plain", "user").await;
    api.try_login("plain", "wrong password here")
        .await
        .expect(401);
    api.get("/api/audit", &plain.token)
        .await
        .expect_error(403, "forbidden");
    api.get("/api/audit/verify", &plain.token)
        .await
        .expect_error(403, "forbidden");
    api.audit_entries("auth.login_failed", 1).await;

    let all = api
        .get("/api/audit?limit=1000", &root.token)
        .await
        .expect(200);
    let entries = all.body["entries"].as_array().expect("entries");
    assert!(entries.len() >= 4);
    let seqs: Vec<u64> = entries
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    assert!(entries
        .iter()
        .all(|e| e["hash"].is_string() && e["prevHash"].is_string()));

    let failed = api
        .get("/api/audit?action=auth.login_failed", &root.token)
        .await
        .expect(200);
    let failed = failed.body["entries"].as_array().expect("entries");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["actorId"], json!(plain.user_id));
    let by_user = api
        .get(&format!("/api/audit?userId={}", plain.user_id), &root.token)
        .await
        .expect(200);
    assert!(by_user.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .all(|e| e["actorId"] == json!(plain.user_id)));
    let after = seqs[seqs.len() / 2];
    let newer = api
        .get(&format!("/api/audit?after={after}&limit=2"), &root.token)
        .await
        .expect(200);
    let newer = newer.body["entries"].as_array().expect("entries");
    assert!(
        newer.len() <= 2
            && newer
                .iter()
                .all(|e| e["seq"].as_u64().expect("seq") > after)
    );
    for query in ["userId=nope", "after=-3", "limit=0", "limit=1001"] {
        api.get(&format!("/api/audit?{query}"), &root.token)
            .await
            .expect_error(400, "invalid_frame");
    }
    // Reading the log is itself logged, with the reader.
    let reads = api.audit_entries("audit.read", 4).await;
    let root_id: UserId = root.user_id.parse().expect("id");
    assert!(reads.iter().all(|e| e.actor_id == Some(root_id)));

    let report = api.get("/api/audit/verify", &root.token).await.expect(200);
    assert_eq!(report.body["ok"], true, "{}", report.body);
    assert!(report.body["entries"].as_u64().expect("entries") >= 4);
    assert_eq!(report.body["headHash"].as_str().expect("head").len(), 64);
    assert_eq!(report.body["firstBadSeq"], Value::Null);
    assert!(!api.audit_entries("audit.verify", 1).await.is_empty());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_is_limited_per_user() {
    let api = Rest::start_with(Backend::Sqlite, |c| c.rest_per_15min = 5)
        .await
        .expect("server");
    let root = api.root().await;
    let users: Vec<Session> = {
        // Creating users spends root's budget: 2 of 5.
        let a = api.user(&root, "alice", "user").await;
        let b = api.user(&root, "bob", "user").await;
        vec![a, b]
    };
    for _ in 0..5 {
        api.get("/api/channels", &users[0].token).await.expect(200);
    }
    let limited = api
        .get("/api/channels", &users[0].token)
        .await
        .expect_error(429, "rate_limited");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=180).contains(&retry), "{retry}");
    // Another user has their own budget; /api/auth is not counted here.
    api.get("/api/channels", &users[1].token).await.expect(200);
    api.login("alice", PASSWORD).await;
    api.call(
        Method::POST,
        "/api/auth/logout",
        Some(&users[0].token),
        None,
    )
    .await
    .expect(204);
    let metrics = api.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("courier_rate_limited_total") && l.contains("limit=\"rest\"")),
        "{metrics}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route_the_server_answers() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let doc = api
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .expect(200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    if let Ok(file) = std::env::var("COURIER_OPENAPI_DUMP") {
        std::fs::write(file, doc.body.to_string()).expect("dump");
    }
    // Every schema it refers to is in it.
    let text = doc.body.to_string();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').expect("closing quote")];
        assert!(
            doc.body["components"]["schemas"].get(name).is_some(),
            "{name}"
        );
    }
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut described = 0;
    for (path, ops) in paths {
        for method in ops.as_object().expect("operations").keys() {
            described += 1;
            let op = &ops[method];
            let responses = op["responses"].as_object().expect("responses");
            assert!(responses.contains_key("429"), "{method} {path}");
            assert!(
                responses.contains_key("401") || !secured(path),
                "{method} {path}"
            );
            assert!(
                ENDPOINTS.contains(&(method.as_str(), path.as_str())),
                "{method} {path}"
            );
            // Every described route exists: a fresh session each time (one
            // of them is logout), random ids.
            let session = api.login(ROOT, PASSWORD).await;
            let concrete = path
                .replace("{id}", &uuid::Uuid::new_v4().to_string())
                .replace("{userId}", &uuid::Uuid::new_v4().to_string());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = (method == Method::POST || method == Method::PUT).then(|| json!({}));
            let reply = api
                .call(method.clone(), &concrete, Some(&session.token), body)
                .await;
            assert_ne!(reply.status, 405, "{method} {path}");
            assert!(
                !(reply.status == 404 && reply.body["error"]["message"] == "no such endpoint"),
                "{method} {path} is described but not served"
            );
        }
    }
    assert_eq!(described, ENDPOINTS.len());
    let missing = api.call(Method::GET, "/api/nothing-here", None, None).await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    api.stop().await;
}

/// Every endpoint but the public ones (a signed file link is its own
/// credential).
fn secured(path: &str) -> bool {
    !matches!(
        path,
        "/api/auth/register"
            | "/api/auth/login"
            | "/api/auth/refresh-token"
            | "/api/auth/password-reset/request"
            | "/api/auth/password-reset/confirm"
            | "/api/openapi.json"
            | "/api/file-links/{token}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_401_and_429() {
    let api = Rest::start_with(Backend::Sqlite, |c| {
        c.rest_per_15min = 1;
        c.auth_per_15min = 1;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    .expect("server");
    // Log in from an address of its own (behind the trusted proxy).
    let login = api
        .http
        .post(format!("{}/api/auth/login", api.base))
        .header("X-Forwarded-For", "198.51.100.7")
        .json(&json!({"username": ROOT, "password": PASSWORD}))
        .send()
        .await
        .expect("send");
    let root = rest::session_of(&rest::reply(login).await.expect(200).body);
    let concrete = |path: &str| {
        path.replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{userId}", &uuid::Uuid::new_v4().to_string())
    };
    let method_of = |m: &str| Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");

    // 401 without a token or with a bad one, each from an address of its
    // own (/api/auth/logout and change-password are limited per address
    // before the token is checked). Refused requests spend no user budget.
    let from = |ip: String, method: &str, path: &str, token: Option<&str>| {
        let mut request = api
            .http
            .request(method_of(method), format!("{}{}", api.base, concrete(path)))
            .header("X-Forwarded-For", ip)
            .json(&json!({}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { rest::reply(request.send().await.expect("send")).await }
    };
    for (i, (method, path)) in ENDPOINTS.iter().filter(|(_, p)| secured(p)).enumerate() {
        let none = from(format!("192.0.2.{i}"), method, path, None).await;
        assert_eq!(
            (none.status, none.code()),
            (401, "unauthenticated"),
            "{method} {path}"
        );
        let forged = from(
            format!("192.0.2.{}", i + 100),
            method,
            path,
            Some("not.a.token"),
        )
        .await;
        assert_eq!(
            (forged.status, forged.code()),
            (401, "auth_failed"),
            "{method} {path}"
        );
    }
    // /api/auth/* was counted per address; the address above spent its one.
    // Now spend 127.0.0.1's one and root's one, then everything is 429.
    api.try_login(ROOT, "wrong password here").await.expect(401);
    api.get("/api/channels", &root.token).await.expect(200);
    // (Not the public routes outside the auth limiter: the document and a
    // signed link, which has no user to count until its token is checked.)
    let per_user = |p: &str| p != "/api/openapi.json" && p != "/api/file-links/{token}";
    for (method, path) in ENDPOINTS.iter().filter(|(_, p)| per_user(p)) {
        let reply = api
            .call(
                method_of(method),
                &concrete(path),
                Some(&root.token),
                Some(json!({})),
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (429, "rate_limited"),
            "{method} {path}"
        );
        assert!(reply.headers.contains_key("retry-after"), "{method} {path}");
    }
    api.stop().await;
}

/// `COURIER_CORS_ORIGINS`: a listed origin's preflight is answered and its
/// requests carry `Access-Control-Allow-Origin`; any other origin gets no
/// CORS header (its browser then refuses to show the answer), and with no
/// origins listed nobody does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_listed_origins() {
    const APP: &str = "https://app.clinic.example";
    let api = Rest::start_with(Backend::Sqlite, |c| c.cors_origins = vec![APP.into()])
        .await
        .expect("server");
    let root = api.root().await;
    let preflight = |origin: &'static str| {
        api.http
            .request(Method::OPTIONS, format!("{}/api/channels", api.base))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight(APP).await.expect("preflight");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    let methods = h["access-control-allow-methods"].to_str().expect("ascii");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let get = |origin: &'static str| {
        api.http
            .get(format!("{}/api/channels", api.base))
            .bearer_auth(&root.token)
            .header("Origin", origin)
            .send()
    };
    let listed = get(APP).await.expect("get");
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], APP);
    let expose = listed.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(expose.contains("retry-after"), "{expose}");
    let unlisted = get("https://evil.example").await.expect("get");
    assert!(unlisted
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    api.stop().await;

    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let root = api.root().await;
    let plain = api
        .http
        .get(format!("{}/api/channels", api.base))
        .bearer_auth(&root.token)
        .header("Origin", APP)
        .send()
        .await
        .expect("get");
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    api.stop().await;
}
