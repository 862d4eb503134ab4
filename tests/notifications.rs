//! In-app notifications (issue 38, docs/notifications.md), on SQLite and
//! PostgreSQL, through the real server, REST and WebSocket clients:
//!
//! - a mention notifies the mentioned member on every device (JSON and
//!   MessagePack connections), not the sender, not a member who was not
//!   mentioned; a non-member's name is no mention; `mentions` is on the
//!   send's answer, the `new_message` push and history pages; an edit that
//!   adds a mention notifies only the one added;
//! - a direct message notifies the other party;
//! - the notification frame's bytes never hold the message's text;
//! - preferences: a muted channel, a disabled kind and quiet hours send
//!   nothing; invalid preferences are refused;
//! - announcements reach the connected users of their role live and a user
//!   who connects later (once), are listed per role, are audited, and a
//!   non-admin may not post one.
//!
//! "Nothing arrives" is proven with a sentinel: the notifier handles
//! events in order, so once a later, allowed notification arrives, an
//! earlier suppressed one would have arrived before it.

#[path = "support/rest.rs"]
mod rest;
#[macro_use]
mod support;

use std::time::Duration;

use courier_protocol::client::{Client, ClientSender};
use courier_protocol::codec::{decode_server, Encoding};
use courier_protocol::frames::{AckResult, ClientRequest, OpenDirect, ServerFrame};
use courier_protocol::UserId;
use futures_util::StreamExt;
use rest::{eventually, Backend, Rest, Session};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

both_backends!(
    mentions_and_direct_messages_notify_without_text,
    preferences_mute_disable_and_quiet_hours,
    announcements_reach_roles_live_and_on_connect,
);

/// An authenticated WebSocket client of `session` in `encoding`.
async fn device(api: &Rest, session: &Session, encoding: Encoding) -> Client {
    let mut client = Client::builder(api.server.ws_url())
        .encoding(encoding)
        .timeout(T)
        .connect()
        .await
        .expect("connect");
    let answer = client.authenticate(&session.token).await.expect("answer");
    assert!(answer.result.is_ok(), "authentication refused: {answer:?}");
    client
}

/// A receiver read raw: the frames buffered by the client, then the socket.
struct ClientReceiver2 {
    /// Held so the socket stays open.
    _sender: ClientSender,
    pending: std::collections::VecDeque<ServerFrame>,
    stream: futures_util::stream::SplitStream<courier_protocol::client::Ws>,
}

impl ClientReceiver2 {
    /// The next `notification` (raw bytes and `data`) within `wait`.
    async fn notification(
        &mut self,
        encoding: Encoding,
        wait: Duration,
    ) -> Option<(Vec<u8>, Value)> {
        while let Some(frame) = self.pending.pop_front() {
            if let ServerFrame::Notification(n) = frame {
                let bytes = courier_protocol::codec::encode_server(
                    &ServerFrame::Notification(n.clone()),
                    encoding,
                );
                return Some((bytes.to_vec(), n.data));
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(msg))) => msg,
            };
            let bytes: Vec<u8> = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                _ => continue,
            };
            if let Ok(ServerFrame::Notification(n)) = decode_server(&bytes, encoding) {
                return Some((bytes, n.data));
            }
        }
    }

    /// The next notification's data; panics when none comes.
    async fn expect(&mut self, encoding: Encoding) -> Value {
        self.notification(encoding, T)
            .await
            .expect("a notification")
            .1
    }
}

/// A client split, its receiver read raw.
async fn raw_device(api: &Rest, session: &Session, encoding: Encoding) -> ClientReceiver2 {
    let (sender, receiver) = device(api, session, encoding).await.split();
    let (pending, stream) = receiver.into_raw();
    ClientReceiver2 {
        _sender: sender,
        pending,
        stream,
    }
}

async fn users(api: &Rest, names: &[(&str, &str)]) -> (Session, Vec<Session>) {
    let root = api.root().await;
    let mut out = Vec::new();
    for (name, role) in names {
        out.push(api.user(&root, name, role).await);
    }
    (root, out)
}

async fn open_direct(api: &Rest, me: &Session, other: &Session) -> String {
    let mut client = device(api, me, Encoding::Json).await;
    let ack = client
        .ack(ClientRequest::OpenDirect(OpenDirect {
            user_id: other.user_id.parse::<UserId>().expect("id"),
        }))
        .await
        .expect("open_direct");
    match ack.result {
        AckResult::Channel(c) => c.id.to_string(),
        other => panic!("unexpected ack {other:?}"),
    }
}

async fn mentions_and_direct_messages_notify_without_text(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let (_root, u) = users(
        &api,
        &[
            ("alice", "user"),
            ("bob", "user"),
            ("carol", "user"),
            ("dave", "user"),
        ],
    )
    .await;
    let (alice, bob, carol, dave) = (&u[0], &u[1], &u[2], &u[3]);
    let channel = api.channel(alice, "ward-7", "private").await;
    api.add_member(alice, &channel, bob).await;
    api.add_member(alice, &channel, carol).await;

    let mut bob_json = raw_device(&api, bob, Encoding::Json).await;
    let mut bob_pack = raw_device(&api, bob, Encoding::MessagePack).await;
    let mut carol_dev = raw_device(&api, carol, Encoding::Json).await;
    let mut alice_joined = api.joined(alice, &channel).await;
    let mut alice_dev = raw_device(&api, alice, Encoding::Json).await;

    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let sent = api
        .post(
            "/api/messages",
            &alice.token,
            json!({"channelId": channel, "text": format!("@bob and @dave: {marker}")}),
        )
        .await
        .expect(201);
    let message_id = sent.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        sent.body["mentions"],
        json!([{"userId": bob.user_id, "username": "bob"}]),
        "only the member is mentioned: {}",
        sent.body
    );

    for (dev, encoding) in [
        (&mut bob_json, Encoding::Json),
        (&mut bob_pack, Encoding::MessagePack),
    ] {
        let (bytes, data) = dev
            .notification(encoding, T)
            .await
            .expect("bob's device is notified");
        assert_eq!(data["kind"], "mention");
        assert_eq!(data["channelId"], channel.as_str());
        assert_eq!(data["messageId"], message_id.as_str());
        assert_eq!(data["seq"], 1);
        assert_eq!(data["title"], "New mention");
        let haystack = String::from_utf8_lossy(&bytes);
        assert!(
            !haystack.contains(&marker) && !haystack.contains("@bob"),
            "a notification never carries the text ({encoding:?}): {haystack}"
        );
    }

    // The push and history carry the mentions.
    let push = alice_joined
        .next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
        .expect("new_message");
    let ServerFrame::NewMessage(pushed) = push else {
        unreachable!()
    };
    assert_eq!(pushed.data.mentions.len(), 1);
    assert_eq!(pushed.data.mentions[0].username, "bob");
    let history = api
        .get(&format!("/api/channels/{channel}/messages"), &bob.token)
        .await
        .expect(200);
    assert_eq!(
        history.body["messages"][0]["mentions"],
        json!([{"userId": bob.user_id, "username": "bob"}]),
        "{}",
        history.body
    );

    // An edit that adds carol notifies carol only (bob was told already).
    api.put(
        &format!("/api/messages/{message_id}"),
        &alice.token,
        json!({"text": format!("@bob @carol {marker}")}),
    )
    .await
    .expect(200);
    let data = carol_dev.expect(Encoding::Json).await;
    assert_eq!(data["kind"], "mention");
    assert_eq!(data["messageId"], message_id.as_str());
    let read = api
        .get(&format!("/api/messages/{message_id}"), &carol.token)
        .await
        .expect(200);
    let mentioned: Vec<&str> = read.body["mentions"]
        .as_array()
        .expect("mentions")
        .iter()
        .map(|m| m["username"].as_str().expect("username"))
        .collect();
    assert_eq!(mentioned, ["bob", "carol"], "{}", read.body);

    // A direct message notifies the other party, not the sender; and the
    // sentinel proves carol (not mentioned the first time), dave (not a
    // member) and alice (the sender) heard nothing before it.
    let direct = open_direct(&api, bob, alice).await;
    api.send(bob, &direct, &format!("private {marker}")).await;
    let data = alice_dev.expect(Encoding::Json).await;
    assert_eq!(data["kind"], "direct_message");
    assert_eq!(data["channelId"], direct.as_str());
    assert_eq!(data["title"], "New direct message");
    // bob's next is a later mention: the edit did not tell him again, nor
    // did his own direct message.
    let sentinel = api.send(alice, &channel, "@bob sentinel").await;
    let data = bob_json.expect(Encoding::Json).await;
    assert_eq!(data["messageId"], sentinel.as_str());
    let direct_dave = open_direct(&api, dave, carol).await;
    api.send(dave, &direct_dave, "sentinel").await;
    let data = carol_dev.expect(Encoding::Json).await;
    assert_eq!(
        data["kind"], "direct_message",
        "carol's next notification is the sentinel"
    );
    api.stop().await;
}

async fn preferences_mute_disable_and_quiet_hours(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let (root, u) = users(&api, &[("alice", "user"), ("bob", "user")]).await;
    let (alice, bob) = (&u[0], &u[1]);
    let channel = api.channel(alice, "ward-8", "private").await;
    api.add_member(alice, &channel, bob).await;
    let direct = open_direct(&api, alice, bob).await;
    let mut bob_dev = raw_device(&api, bob, Encoding::Json).await;

    let defaults = api
        .get("/api/me/notification-preferences", &bob.token)
        .await
        .expect(200);
    assert_eq!(
        defaults.body["preferences"],
        json!({"mention": true, "directMessage": true, "announcement": true,
               "quietHours": null, "mutedChannels": []})
    );
    api.put(
        "/api/me/notification-preferences",
        &bob.token,
        json!({"quietHours": {"startMinute": 1440, "endMinute": 0}}),
    )
    .await
    .expect_error(400, "invalid_frame");

    // Muted channel: nothing; the direct message after it arrives first.
    api.put(
        "/api/me/notification-preferences",
        &bob.token,
        json!({"mutedChannels": [channel]}),
    )
    .await
    .expect(200);
    api.send(alice, &channel, "@bob muted").await;
    api.send(alice, &direct, "sentinel one").await;
    let data = bob_dev.expect(Encoding::Json).await;
    assert_eq!(
        data["kind"], "direct_message",
        "the muted mention sent nothing"
    );
    assert_eq!(data["channelId"], direct.as_str());

    // Mentions turned off: nothing; the direct message after it arrives.
    let saved = api
        .put(
            "/api/me/notification-preferences",
            &bob.token,
            json!({"mention": false}),
        )
        .await
        .expect(200);
    assert_eq!(saved.body["preferences"]["mutedChannels"], json!([]));
    api.send(alice, &channel, "@bob off").await;
    api.send(alice, &direct, "sentinel two").await;
    let data = bob_dev.expect(Encoding::Json).await;
    assert_eq!(
        data["kind"], "direct_message",
        "the disabled kind sent nothing"
    );

    // Quiet hours around now: no mention, no direct message; an
    // announcement (never held by quiet hours) is the sentinel.
    let minute = (courier_actors::now_ms() / 60_000).rem_euclid(1440);
    api.put(
        "/api/me/notification-preferences",
        &bob.token,
        json!({"quietHours": {"startMinute": (minute + 1380) % 1440,
                              "endMinute": (minute + 60) % 1440,
                              "utcOffsetMinutes": 0}}),
    )
    .await
    .expect(200);
    api.send(alice, &channel, "@bob quiet").await;
    api.send(alice, &direct, "quiet too").await;
    api.post(
        "/api/announcements",
        &root.token,
        json!({"title": "Sentinel", "body": "after the quiet ones"}),
    )
    .await
    .expect(201);
    let data = bob_dev.expect(Encoding::Json).await;
    assert_eq!(data["kind"], "announcement", "quiet hours held the others");
    let metrics = api.metrics().await;
    for reason in ["muted", "disabled", "quiet_hours"] {
        let line = format!("courier_notifications_suppressed_total{{reason=\"{reason}\"}}");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{line} counted"
        );
    }
    api.stop().await;
}

async fn announcements_reach_roles_live_and_on_connect(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let (root, u) = users(
        &api,
        &[("bob", "user"), ("mona", "moderator"), ("eve", "user")],
    )
    .await;
    let (bob, mona, eve) = (&u[0], &u[1], &u[2]);
    let mut bob_dev = raw_device(&api, bob, Encoding::MessagePack).await;
    let mut mona_dev = raw_device(&api, mona, Encoding::Json).await;

    api.post(
        "/api/announcements",
        &bob.token,
        json!({"title": "Nope", "body": "users may not announce"}),
    )
    .await
    .expect_error(403, "forbidden");

    let posted = api
        .post(
            "/api/announcements",
            &root.token,
            json!({"title": "Shift handover", "body": "Ward 7 handover at 19:00",
                   "roles": ["user"]}),
        )
        .await
        .expect(201);
    let first = posted.body["announcement"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let data = bob_dev.expect(Encoding::MessagePack).await;
    assert_eq!(data["kind"], "announcement");
    assert_eq!(data["announcementId"], first.as_str());
    assert_eq!(data["title"], "Shift handover");
    assert_eq!(data["body"], "Ward 7 handover at 19:00");

    api.post(
        "/api/announcements",
        &root.token,
        json!({"title": "Everyone", "body": "Fire drill at noon"}),
    )
    .await
    .expect(201);
    let data = mona_dev.expect(Encoding::Json).await;
    assert_eq!(
        data["title"], "Everyone",
        "the moderator did not get the users' announcement"
    );

    // eve connects later: both current announcements for users, oldest
    // first; connecting again, nothing old, only what is new since. (Once
    // the notifier has handled both announcements: mona may have had
    // "Everyone" from her own connect's catch-up while its live delivery
    // was still queued, which would reach eve live first.)
    let notifier = api.server.app.realtime.notifier.clone();
    assert!(
        eventually(T, async || notifier.queued() == 0).await,
        "the notifier drains"
    );
    let mut eve_dev = raw_device(&api, eve, Encoding::Json).await;
    assert_eq!(
        eve_dev.expect(Encoding::Json).await["title"],
        "Shift handover"
    );
    assert_eq!(eve_dev.expect(Encoding::Json).await["title"], "Everyone");
    drop(eve_dev);
    assert!(
        eventually(T, async || notifier.queued() == 0).await,
        "the notifier drains"
    );
    api.post(
        "/api/announcements",
        &root.token,
        json!({"title": "Third", "body": "new since", "expiresAt": courier_actors::now_ms() + 3_600_000}),
    )
    .await
    .expect(201);
    let mut eve_again = raw_device(&api, eve, Encoding::Json).await;
    let data = eve_again.expect(Encoding::Json).await;
    assert_eq!(
        data["title"], "Third",
        "only what is new since the last connect"
    );

    let listed = api.get("/api/announcements", &mona.token).await.expect(200);
    let titles: Vec<&str> = listed.body["announcements"]
        .as_array()
        .expect("announcements")
        .iter()
        .map(|a| a["title"].as_str().expect("title"))
        .collect();
    assert_eq!(titles, ["Third", "Everyone"], "a moderator's current ones");
    let listed = api.get("/api/announcements", &eve.token).await.expect(200);
    assert_eq!(
        listed.body["announcements"].as_array().expect("list").len(),
        3
    );

    let audited = api.audit_entries("announcement.created", 3).await;
    assert_eq!(audited.len(), 3);
    assert!(audited
        .iter()
        .any(|e| e.details["announcementId"] == first.as_str()
            && e.details["roles"] == json!(["user"])));
    assert!(
        !serde_json::to_string(&audited[0].details)
            .expect("json")
            .contains("handover"),
        "the audit holds no announcement text"
    );
    api.stop().await;
}
