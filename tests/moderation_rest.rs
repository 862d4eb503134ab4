//! Moderation and archive over REST (issue 34): flags and the flag queue,
//! delete with a reason, archive and unarchive, the paged list of every
//! channel, and the audit entries of each. Scenarios run on SQLite and
//! PostgreSQL.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier_protocol::frames::ServerFrame;
use reqwest::Method;
use rest::{Backend, Rest};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

both_backends!(
    flags_the_queue_and_delete_with_a_reason,
    archive_refuses_new_messages_and_keeps_history,
    every_channel_paged_for_channel_managers,
);

/// The oldest audit entry of `action` whose details name `key: value`.
async fn audited(api: &Rest, action: &str, key: &str, value: &str) -> Value {
    let entries = api.audit_entries(action, 1).await;
    let entry = entries
        .iter()
        .rev()
        .find(|e| e.details[key] == json!(value))
        .unwrap_or_else(|| panic!("no {action} entry with {key} = {value}: {entries:?}"));
    json!({"actor": entry.actor_id, "details": entry.details})
}

async fn flags_the_queue_and_delete_with_a_reason(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let owner = api.user(&root, "owner", "user").await;
    let member = api.user(&root, "member", "user").await;
    let moderator = api.user(&root, "moddy", "moderator").await;
    // Users create only private channels: root makes the public one and
    // hands it to `owner`.
    let ward = api.channel(&root, "ward-1", "public").await;
    api.post(
        &format!("/api/channels/{ward}/members"),
        &root.token,
        json!({"userId": owner.user_id, "role": "owner"}),
    )
    .await
    .expect(201);
    api.add_member(&owner, &ward, &member).await;
    let secret = api.channel(&owner, "secret", "private").await;
    api.add_member(&owner, &secret, &member).await;
    let m1 = api
        .send(&member, &ward, "Mr <img src=x onerror=alert(1)> in bed 4")
        .await;
    let m2 = api.send(&member, &ward, "second").await;
    let hidden = api.send(&member, &secret, "private talk").await;
    let mut watching = api.joined(&owner, &ward).await;

    // A plain member may not flag; an empty reason is 400; a long one 413.
    let flag = |id: &str| format!("/api/messages/{id}/flag");
    api.post(&flag(&m1), &member.token, json!({"reason": "mine"}))
        .await
        .expect_error(403, "forbidden");
    api.post(&flag(&m1), &owner.token, json!({"reason": ""}))
        .await
        .expect_error(400, "invalid_frame");
    api.post(&flag(&m1), &owner.token, json!({"reason": "x".repeat(501)}))
        .await
        .expect_error(413, "too_large");
    api.post(&flag(&m1), &owner.token, json!({}))
        .await
        .expect_error(400, "invalid_frame");

    // The channel owner flags over REST; the socket gets message_flagged.
    let flagged = api
        .post(
            &flag(&m1),
            &owner.token,
            json!({"reason": "a patient's name"}),
        )
        .await
        .expect(200);
    let message = &flagged.body["message"];
    assert_eq!(message["flagged"], json!(true));
    assert_eq!(message["flagReason"], json!("a patient's name"));
    assert_eq!(message["flaggedBy"], json!(owner.user_id));
    assert!(message["flaggedAt"].is_i64());
    match watching
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageFlagged(_)))
        .await
        .expect("message_flagged")
    {
        ServerFrame::MessageFlagged(f) => {
            assert_eq!(f.message_id.to_string(), m1);
            assert!(f.flagged);
        }
        _ => unreachable!(),
    }
    let entry = audited(&api, "message.flag", "messageId", &m1).await;
    assert_eq!(entry["actor"], json!(owner.user_id));
    assert_eq!(entry["details"]["reason"], json!("a patient's name"));
    assert_eq!(entry["details"]["channelId"], json!(ward));

    // A flag in a private channel the moderator is not in.
    api.post(&flag(&hidden), &owner.token, json!({"reason": "check"}))
        .await
        .expect(200);
    // The moderator flags m2 later: newest flag first in the queue.
    api.post(&flag(&m2), &moderator.token, json!({"reason": "spam"}))
        .await
        .expect(200);

    // The message itself: flag fields for moderators only.
    let seen = api
        .get(&format!("/api/messages/{m1}"), &moderator.token)
        .await
        .expect(200);
    assert_eq!(seen.body["flagReason"], json!("a patient's name"));
    let plain = api
        .get(&format!("/api/messages/{m1}"), &member.token)
        .await
        .expect(200);
    for key in ["flagged", "flagReason", "flaggedBy", "flaggedAt"] {
        assert!(plain.body.get(key).is_none(), "{key} shown to a member");
    }
    let page = api
        .get(&format!("/api/channels/{ward}/messages"), &member.token)
        .await
        .expect(200);
    assert!(page.body["messages"][0].get("flagged").is_none());
    let page = api
        .get(&format!("/api/channels/{ward}/messages"), &owner.token)
        .await
        .expect(200);
    assert_eq!(page.body["messages"][0]["flagged"], json!(true));

    // The queue: messages.moderate only; the private one left out for the
    // moderator, shown to no one who is not in the channel.
    api.get("/api/moderation/flags", &member.token)
        .await
        .expect_error(403, "forbidden");
    let queue = api
        .get("/api/moderation/flags?limit=10", &moderator.token)
        .await
        .expect(200);
    let ids: Vec<&str> = queue.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [m2.as_str(), m1.as_str()], "{}", queue.body);
    assert_eq!(queue.body["messages"][1]["channelName"], json!("ward-1"));
    assert_eq!(
        queue.body["messages"][1]["text"],
        json!("Mr <img src=x onerror=alert(1)> in bed 4")
    );
    assert_eq!(queue.body["hasMore"], json!(false));
    assert_eq!(
        (queue.body["limit"].clone(), queue.body["offset"].clone()),
        (json!(10), json!(0))
    );
    let first = api
        .get("/api/moderation/flags?limit=1", &moderator.token)
        .await
        .expect(200);
    assert_eq!(first.body["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(first.body["hasMore"], json!(true));
    api.get("/api/moderation/flags?limit=0", &moderator.token)
        .await
        .expect_error(400, "invalid_frame");
    let reads = api.audit_entries("history.read", 1).await;
    let read = reads
        .iter()
        .find(|e| e.details["via"] == json!("moderation.flags"))
        .expect("the queue read is audited");
    assert_eq!(
        read.actor_id.map(|u| u.to_string()),
        Some(moderator.user_id.clone())
    );
    // The root admin (super_admin) is not in `secret` either: an admin's
    // permission does not open a private conversation.
    let queue = api
        .get("/api/moderation/flags", &root.token)
        .await
        .expect(200);
    assert!(!queue.body.to_string().contains(&hidden));

    // Unflag: the queue loses it.
    let unflagged = api
        .call(Method::DELETE, &flag(&m2), Some(&moderator.token), None)
        .await
        .expect(200);
    assert_eq!(unflagged.body["message"]["flagged"], json!(false));
    assert!(unflagged.body["message"].get("flagReason").is_none());
    audited(&api, "message.unflag", "messageId", &m2).await;
    let queue = api
        .get("/api/moderation/flags", &moderator.token)
        .await
        .expect(200);
    assert_eq!(queue.body["messages"].as_array().map(Vec::len), Some(1));

    // Delete with a reason: the delete entry keeps it; a deleted message
    // leaves the queue.
    api.call(
        Method::DELETE,
        &format!("/api/messages/{m1}"),
        Some(&moderator.token),
        Some(json!({"reason": "removed: patient identifier"})),
    )
    .await
    .expect(204);
    let entry = audited(&api, "message.delete", "messageId", &m1).await;
    assert_eq!(entry["actor"], json!(moderator.user_id));
    assert_eq!(
        entry["details"]["reason"],
        json!("removed: patient identifier")
    );
    let queue = api
        .get("/api/moderation/flags", &moderator.token)
        .await
        .expect(200);
    assert_eq!(queue.body["messages"], json!([]));
    // Without a body, as before; a bad body is 400.
    api.delete(&format!("/api/messages/{m2}"), &member.token)
        .await
        .expect(204);
    let m3 = api.send(&member, &ward, "third").await;
    api.call(
        Method::DELETE,
        &format!("/api/messages/{m3}"),
        Some(&member.token),
        Some(json!({"reason": 5})),
    )
    .await
    .expect_error(400, "invalid_frame");
    api.post(&flag(&m1), &owner.token, json!({"reason": "gone"}))
        .await
        .expect_error(404, "not_found");
    api.server.stop().await;
}

async fn archive_refuses_new_messages_and_keeps_history(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let owner = api.user(&root, "owner", "user").await;
    let member = api.user(&root, "member", "user").await;
    let ward = api.channel(&owner, "ward-5", "private").await;
    api.add_member(&owner, &ward, &member).await;
    let kept = api.send(&member, &ward, "before").await;
    let mut socket = api.joined(&member, &ward).await;

    let archive = format!("/api/channels/{ward}/archive");
    api.post(&archive, &member.token, json!({}))
        .await
        .expect_error(403, "forbidden");
    let archived = api
        .post(&archive, &owner.token, json!({}))
        .await
        .expect(200);
    let channel = &archived.body["channel"];
    assert_eq!(channel["archived"], json!(true));
    let at = channel["archivedAt"].as_i64().expect("archivedAt");
    let again = api.post(&archive, &root.token, json!({})).await.expect(200);
    assert_eq!(
        again.body["channel"]["archivedAt"],
        json!(at),
        "the first archive counts"
    );
    let entry = audited(&api, "channel.archive", "channelId", &ward).await;
    assert_eq!(entry["actor"], json!(owner.user_id));

    // Nothing new: REST and socket sends, edits.
    let refused = api
        .post(
            "/api/messages",
            &member.token,
            json!({"channelId": ward, "text": "after"}),
        )
        .await
        .expect_error(403, "forbidden");
    assert_eq!(
        refused.body["error"]["message"],
        json!("this channel is archived")
    );
    api.put(
        &format!("/api/messages/{kept}"),
        &member.token,
        json!({"text": "changed"}),
    )
    .await
    .expect_error(403, "forbidden");
    let sent = socket
        .send_text(ward.parse().expect("id"), "from the socket")
        .await;
    assert!(
        matches!(&sent, Err(courier_protocol::client::ClientError::Server(e)) if e.message == "this channel is archived"),
        "{sent:?}"
    );
    // History stays, and the channel says it is archived.
    let page = api
        .get(&format!("/api/channels/{ward}/messages"), &member.token)
        .await
        .expect(200);
    assert_eq!(page.body["messages"][0]["text"], json!("before"));
    let got = api
        .get(&format!("/api/channels/{ward}"), &member.token)
        .await
        .expect(200);
    assert_eq!(got.body["channel"]["archived"], json!(true));

    let open = api
        .post(
            &format!("/api/channels/{ward}/unarchive"),
            &owner.token,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(open.body["channel"]["archived"], json!(false));
    assert_eq!(open.body["channel"]["archivedAt"], json!(null));
    audited(&api, "channel.unarchive", "channelId", &ward).await;
    api.send(&member, &ward, "open again").await;
    api.server.stop().await;
}

async fn every_channel_paged_for_channel_managers(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let alice = api.user(&root, "alice", "user").await;
    let moderator = api.user(&root, "moddy", "moderator").await;
    for name in ["Ward-A", "ward-b", "pharmacy"] {
        api.channel(&alice, name, "private").await;
    }
    api.get("/api/channels?all=true", &alice.token)
        .await
        .expect_error(403, "forbidden");
    api.get("/api/channels?all=true", &moderator.token)
        .await
        .expect_error(403, "forbidden");
    // Without all=true, as before: only what the caller can see.
    let own = api.get("/api/channels", &root.token).await.expect(200);
    assert_eq!(own.body["channels"], json!([]));
    assert!(own.body.get("hasMore").is_none());

    let names = |body: &Value| -> Vec<String> {
        body["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let all = api
        .get("/api/channels?all=true", &root.token)
        .await
        .expect(200);
    assert_eq!(names(&all.body), ["pharmacy", "Ward-A", "ward-b"]);
    assert_eq!(all.body["hasMore"], json!(false));
    assert_eq!(all.body["channels"][0]["archived"], json!(false));
    let page = api
        .get("/api/channels?all=true&search=WARD&limit=1", &root.token)
        .await
        .expect(200);
    assert_eq!(names(&page.body), ["Ward-A"]);
    assert_eq!(page.body["hasMore"], json!(true));
    let next = api
        .get(
            "/api/channels?all=true&search=ward&limit=1&offset=1",
            &root.token,
        )
        .await
        .expect(200);
    assert_eq!(names(&next.body), ["ward-b"]);
    assert_eq!(next.body["hasMore"], json!(false));
    assert_eq!(
        (next.body["limit"].clone(), next.body["offset"].clone()),
        (json!(1), json!(1))
    );
    api.get("/api/channels?all=true&limit=101", &root.token)
        .await
        .expect_error(400, "invalid_frame");
    api.get("/api/channels?all=maybe", &root.token)
        .await
        .expect_error(400, "invalid_frame");
    api.server.stop().await;
}
