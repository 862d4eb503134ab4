//! The REST message and audit routes beyond a send: `GET`/`PUT`/`DELETE
//! /api/messages/{id}` (through the paths of `edit_message` and
//! `delete_message`, with their pushes to a joined socket), audit filters,
//! pages and single entries, and the JSON bodies of unknown routes and
//! wrong methods. Scenarios run on SQLite and PostgreSQL.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier_protocol::frames::{ClientRequest, EditMessage, ServerFrame};
use courier_protocol::{ErrorCode, MessageId, UserId};
use reqwest::Method;
use rest::{Backend, Rest};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);

both_backends!(
    messages_are_read_edited_and_deleted_like_the_socket_frames,
    audit_filters_pages_and_entries,
);

async fn messages_are_read_edited_and_deleted_like_the_socket_frames(backend: Backend) {
    let Some(api) = Rest::start_with(backend, |c| c.max_text_bytes = 1000).await else {
        return;
    };
    let root = api.root().await;
    let doc = api.user(&root, "doc", "user").await;
    let nurse = api.user(&root, "nurse", "user").await;
    let outsider = api.user(&root, "outsider", "user").await;
    let ward = api.channel(&doc, "ward", "private").await;
    api.add_member(&doc, &ward, &nurse).await;
    let mut socket = api.joined(&nurse, &ward).await;
    let id = api.send(&doc, &ward, "BP 120/80").await;
    let path = format!("/api/messages/{id}");

    // Reading: members only, as history pages.
    let read = api.get(&path, &nurse.token).await.expect(200);
    assert_eq!(
        (read.body["text"].clone(), read.body["sender"].clone()),
        (json!("BP 120/80"), json!("doc"))
    );
    assert_eq!(read.body["channelId"], json!(ward));
    api.get(&path, &outsider.token)
        .await
        .expect_error(403, "forbidden");
    let nobody = format!("/api/messages/{}", MessageId::new());
    api.get(&nobody, &nurse.token)
        .await
        .expect_error(404, "not_found");
    let bad = api
        .get("/api/messages/nope", &nurse.token)
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(bad.field(), "id");

    // Editing: the sender alone; a member, an outsider, even the channel's
    // owner on someone else's message, are refused and nothing changes.
    api.put(&path, &nurse.token, json!({"text": "hijack"}))
        .await
        .expect_error(403, "forbidden");
    api.put(&path, &outsider.token, json!({"text": "hijack"}))
        .await
        .expect_error(403, "forbidden");
    let nurse_id = api.send(&nurse, &ward, "note").await;
    api.put(
        &format!("/api/messages/{nurse_id}"),
        &doc.token,
        json!({"text": "owner's words"}),
    )
    .await
    .expect_error(403, "forbidden");
    let mut owner_socket = api.joined(&doc, &ward).await;
    let refused = owner_socket
        .ack(ClientRequest::EditMessage(EditMessage {
            message_id: nurse_id.parse().expect("id"),
            text: "owner's words".into(),
        }))
        .await;
    match refused {
        Err(courier_protocol::client::ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::Forbidden)
        }
        other => panic!("the owner edited someone else's message: {other:?}"),
    }
    for (body, status, code) in [
        (json!({"text": "  "}), 400, "invalid_frame"),
        (json!({}), 400, "invalid_frame"),
        (json!({"text": "x".repeat(1001)}), 413, "too_large"),
    ] {
        api.put(&path, &doc.token, body.clone())
            .await
            .expect_error(status, code);
    }
    assert_eq!(
        api.get(&path, &nurse.token).await.expect(200).body["text"],
        "BP 120/80"
    );

    let edited = api
        .put(&path, &doc.token, json!({"text": "BP 125/85"}))
        .await
        .expect(200);
    assert_eq!(edited.body["text"], "BP 125/85");
    assert!(edited.body["editedAt"].is_i64(), "{}", edited.body);
    let updated = match socket
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageUpdated(_)))
        .await
        .expect("message_updated")
    {
        ServerFrame::MessageUpdated(p) => p.data,
        _ => unreachable!(),
    };
    assert_eq!(
        (updated.id.to_string(), updated.text.as_str()),
        (id.clone(), "BP 125/85")
    );
    assert_eq!(
        api.get(&path, &nurse.token).await.expect(200).body["text"],
        "BP 125/85"
    );

    // Deleting: the sender, or the channel's owner; not a plain member.
    api.delete(&path, &nurse.token)
        .await
        .expect_error(403, "forbidden");
    api.delete(&path, &outsider.token)
        .await
        .expect_error(403, "forbidden");
    api.delete(&path, &doc.token).await.expect(204);
    let deleted = match socket
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageDeleted(_)))
        .await
        .expect("message_deleted")
    {
        ServerFrame::MessageDeleted(p) => p.data,
        _ => unreachable!(),
    };
    assert_eq!(
        (deleted.message_id.to_string(), deleted.seq),
        (id.clone(), 1)
    );
    api.get(&path, &nurse.token)
        .await
        .expect_error(404, "not_found");
    api.put(&path, &doc.token, json!({"text": "again"}))
        .await
        .expect_error(404, "not_found");
    api.delete(&path, &doc.token)
        .await
        .expect_error(404, "not_found");
    api.delete(&format!("/api/messages/{nurse_id}"), &doc.token)
        .await
        .expect(204);
    let history = api
        .get(&format!("/api/channels/{ward}/messages"), &nurse.token)
        .await
        .expect(200);
    assert_eq!(history.body["messages"], json!([]));

    // The audit entries of the socket frames, with the caller; refusals too.
    let doc_id: UserId = doc.user_id.parse().expect("id");
    let edits = api.audit_entries("message.edit", 1).await;
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].actor_id, Some(doc_id));
    assert_eq!(edits[0].details["messageId"], json!(id));
    let deletes = api.audit_entries("message.delete", 2).await;
    assert!(deletes.iter().all(|e| e.actor_id == Some(doc_id)));
    let denied = api.audit_entries("access.denied", 6).await;
    for op in [
        "messages.get",
        "messages.edit",
        "messages.delete",
        "modify_message",
    ] {
        assert!(
            denied.iter().any(|e| e.details["op"] == op),
            "no access.denied for {op}"
        );
    }
    let reads = api.audit_entries("history.read", 1).await;
    assert!(reads.iter().any(|e| e.details["messageId"] == json!(id)));
    api.stop().await;
}

/// The `seq`s of a listing's entries.
fn seqs(body: &Value) -> Vec<u64> {
    body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

async fn audit_filters_pages_and_entries(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let root = api.root().await;
    let nurse = api.user(&root, "nurse", "user").await;
    let a = api.channel(&nurse, "ward-a", "private").await;
    let b = api.channel(&root, "ward-b", "public").await;
    api.send(&nurse, &a, "in a").await;
    api.send(&root, &b, "in b").await;
    api.try_login("nurse", "wrong password here")
        .await
        .expect(401);
    api.audit_entries("auth.login_failed", 1).await;

    // A snapshot of the whole log; later reads are bounded by `before` so
    // that the entries they add themselves stay out.
    let all = api
        .get("/api/audit?limit=1000", &root.token)
        .await
        .expect(200);
    assert_eq!(all.body["nextBefore"], Value::Null);
    let entries: Vec<Value> = all.body["entries"].as_array().expect("entries").clone();
    let head = entries[0]["seq"].as_u64().expect("seq");
    let listed = |query: String| {
        let api = &api;
        let token = root.token.clone();
        async move {
            let page = api
                .get(
                    &format!("/api/audit?{query}&before={}&limit=1000", head + 1),
                    &token,
                )
                .await
                .expect(200);
            seqs(&page.body)
        }
    };
    let expected = |keep: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| keep(e))
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    };

    let in_a = expected(&|e| e["details"]["channelId"] == json!(a));
    assert!(in_a.len() >= 2, "channel.create and message.send: {in_a:?}");
    assert_eq!(listed(format!("channelId={a}")).await, in_a);
    let by_nurse = expected(&|e| e["actorId"] == json!(nurse.user_id));
    assert_eq!(listed(format!("userId={}", nurse.user_id)).await, by_nurse);
    let creates = expected(&|e| e["action"] == "channel.create");
    assert_eq!(creates.len(), 2);
    assert_eq!(listed("action=channel.create".into()).await, creates);
    let nurse_creates =
        expected(&|e| e["action"] == "channel.create" && e["actorId"] == json!(nurse.user_id));
    assert_eq!(
        listed(format!("action=channel.create&userId={}", nurse.user_id)).await,
        nurse_creates
    );
    assert_eq!(nurse_creates.len(), 1);
    // A time range: `since` included, `until` not.
    let time = |i: usize| entries[i]["timestamp"].as_i64().expect("timestamp");
    let (since, until) = (time(entries.len() - 2), time(1));
    let in_range = expected(&|e| {
        let t = e["timestamp"].as_i64().expect("timestamp");
        since <= t && t < until
    });
    assert!(!in_range.is_empty());
    assert_eq!(
        listed(format!("since={since}&until={until}")).await,
        in_range
    );

    // Pages of three, newest first, visit every entry once.
    let mut paged = Vec::new();
    let mut before = head + 1;
    loop {
        let page = api
            .get(&format!("/api/audit?before={before}&limit=3"), &root.token)
            .await
            .expect(200);
        let page_seqs = seqs(&page.body);
        assert!(page_seqs.len() <= 3);
        paged.extend(page_seqs);
        match page.body["nextBefore"].as_u64() {
            Some(next) => before = next,
            None => break,
        }
    }
    assert_eq!(paged, expected(&|_| true));

    // One entry by its seq.
    let one = &entries[entries.len() / 2];
    let seq = one["seq"].as_u64().expect("seq");
    let got = api
        .get(&format!("/api/audit/{seq}"), &root.token)
        .await
        .expect(200);
    assert_eq!(&got.body["entry"], one);
    api.get("/api/audit/987654321", &root.token)
        .await
        .expect_error(404, "not_found");
    for bad in ["0", "-1", "abc"] {
        let reply = api
            .get(&format!("/api/audit/{bad}"), &root.token)
            .await
            .expect_error(400, "invalid_frame");
        assert_eq!(reply.field(), "id");
    }
    api.get(&format!("/api/audit/{seq}"), &nurse.token)
        .await
        .expect_error(403, "forbidden");
    for query in ["channelId=nope", "since=soon", "until=1.5", "before=-2"] {
        api.get(&format!("/api/audit?{query}"), &root.token)
            .await
            .expect_error(400, "invalid_frame");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let root = api.root().await;
    for (method, path, allow) in [
        (Method::GET, "/api/messages", "POST"),
        (Method::POST, "/api/audit", "GET"),
        (Method::PATCH, "/api/messages/x", "DELETE"),
        (Method::POST, "/health", "GET"),
    ] {
        let reply = api
            .call(method.clone(), path, Some(&root.token), None)
            .await;
        assert_eq!(reply.status, 405, "{method} {path}: {:?}", reply.body);
        assert_eq!(reply.code(), "not_found", "{method} {path}");
        assert!(reply.body["error"]["message"].is_string());
        let allowed = reply.headers["allow"].to_str().expect("ascii");
        assert!(allowed.contains(allow), "{method} {path}: Allow {allowed}");
        assert_eq!(reply.headers["content-type"], "application/json");
    }
    for path in ["/api/nothing-here", "/nothing-here", "/api"] {
        let reply = api.call(Method::GET, path, None, None).await;
        assert_eq!(
            (reply.status, reply.code()),
            (404, "not_found"),
            "{path}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["message"], "no such endpoint");
    }
    api.stop().await;
}
