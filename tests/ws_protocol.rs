//! The WebSocket protocol end to end: a real server in-process on port 0, real
//! WebSocket clients, both stores. Every request and push of PROTOCOL.md
//! sections 3 to 5, in both encodings.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use courier_actors::durable::store::{ChannelKind, Role};
use courier_protocol::client::{Client, ClientError};
use courier_protocol::codec::Encoding;
use courier_protocol::error::close;
use courier_protocol::frames::*;
use courier_protocol::{encode_server, ErrorCode, MessageId};
use support::server::{Backend, TestServer};

const T: Duration = Duration::from_secs(10);

// Each scenario once per backend.
both_backends!(
    send_ack_and_fan_out_in_both_encodings,
    concurrent_senders_give_identical_gap_free_order,
    recovery_replays_exactly_what_was_missed,
    client_msg_id_makes_sends_idempotent,
    edit_and_delete_are_limited_to_author_and_moderators,
    history_pages_ascending_with_has_more,
    receipts_reactions_typing_and_status,
    direct_and_broadcast_channels,
    non_members_are_refused_everywhere,
    two_connections_of_one_user,
    a_connection_is_audited_from_connect_to_disconnect,
    full_batches_commit_side_by_side_in_seq_order,
    compact_frames_carry_the_same_messages_live_and_replayed,
    flags_reach_those_who_moderate_and_nobody_else,
    an_archived_channel_refuses_new_messages_and_keeps_its_history,
);

async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start(backend).await
}

/// The next `new_message` push.
async fn next_message(client: &mut Client) -> MessageView {
    match client
        .next_push_matching(T, |f| matches!(f, ServerFrame::NewMessage(_)))
        .await
        .expect("a new_message push")
    {
        ServerFrame::NewMessage(p) => p.data,
        _ => unreachable!(),
    }
}

fn sent(ack: Ack) -> SendResult {
    match ack.result {
        AckResult::Sent(s) => s,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

fn error_code(result: Result<Ack, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

async fn send_message_ex(
    pub_client: &mut Client,
    request: SendMessage,
) -> Result<Ack, ClientError> {
    pub_client.ack(ClientRequest::SendMessage(request)).await
}

async fn send_message_ex_ok(pub_client: &mut Client, request: SendMessage) -> SendResult {
    sent(
        send_message_ex(pub_client, request)
            .await
            .expect("send acked"),
    )
}

async fn send_message_ex_text(
    pub_client: &mut Client,
    channel: courier_protocol::ChannelId,
    text: &str,
) -> SendResult {
    send_message_ex_ok(pub_client, SendMessage::text(channel, text)).await
}

async fn send_ack_and_fan_out_in_both_encodings(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("ward-4", ChannelKind::Private, &alice, &[&bob])
        .await;

    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::Json).await;
    let view = a.join(ch, None).await.expect("join");
    assert_eq!(
        (view.id, view.last_seq, view.kind),
        (ch, 0, ChannelKindWire::Private)
    );
    let view = b.join(ch, None).await.expect("join");
    assert_eq!(
        view.online.len(),
        2,
        "both joined users are online: {view:?}"
    );

    let ack = send_message_ex_text(&mut a, ch, "vitals stable").await;
    assert_eq!(ack.seq, 1);
    assert!(!ack.duplicate);
    for client in [&mut a, &mut b] {
        let m = next_message(client).await;
        assert_eq!(
            (m.id, m.seq, m.text.as_str(), m.sender.as_str()),
            (ack.message_id, 1, "vitals stable", "alice")
        );
        assert_eq!(m.sender_id, alice.id);
    }

    // The JSON client's request is answered in JSON, and the ping works.
    match b.request(ClientRequest::Ping).await.expect("pong") {
        ServerFrame::Pong(p) => assert!(p.server_time > 0),
        other => panic!("expected pong, got {other:?}"),
    }
    let ack = send_message_ex_text(&mut b, ch, "thanks").await;
    assert_eq!(ack.seq, 2);
    assert_eq!(next_message(&mut a).await.text, "thanks");
    server.stop().await;
}

async fn concurrent_senders_give_identical_gap_free_order(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(server.user(&format!("sender{i}"), Role::User).await);
    }
    let r1 = server.user("reader1", Role::User).await;
    let r2 = server.user("reader2", Role::User).await;
    let all: Vec<_> = users.iter().chain([&r1, &r2]).collect();
    let ch = server
        .channel("busy", ChannelKind::Private, &users[0], &all[1..])
        .await;
    let mut readers = Vec::new();
    for (r, enc) in [(&r1, Encoding::MessagePack), (&r2, Encoding::Json)] {
        let mut c = server.client(r, enc).await;
        c.join(ch, None).await.expect("join");
        readers.push(c);
    }
    const PER_SENDER: usize = 50;
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut c = server.client(u, Encoding::MessagePack).await;
        c.join(ch, None).await.expect("join");
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let mut req = SendMessage::text(ch, format!("s{i}-{n}"));
                req.client_msg_id = Some(format!("s{i}-{n}"));
                let ack = c.ack(ClientRequest::SendMessage(req)).await.expect("acked");
                assert!(matches!(ack.result, AckResult::Sent(_)));
            }
            c
        }));
    }
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await.expect("sender"));
    }
    let total = PER_SENDER * 4;
    let mut orders = Vec::new();
    for r in readers.iter_mut() {
        let mut order = Vec::new();
        for _ in 0..total {
            let m = next_message(r).await;
            order.push((m.seq, m.text));
        }
        let seqs: Vec<u64> = order.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "gap-free, ascending"
        );
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "every receiver sees the same order");
    // Each sender's own messages keep their sending order.
    for i in 0..4 {
        let mine: Vec<&String> = orders[0]
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(&format!("s{i}-")))
            .collect();
        let expected: Vec<String> = (0..PER_SENDER).map(|n| format!("s{i}-{n}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    server.stop().await;
}

async fn recovery_replays_exactly_what_was_missed(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("icu", ChannelKind::Private, &alice, &[&bob])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    a.join(ch, None).await.expect("join");
    let mut b = server.client(&bob, Encoding::MessagePack).await;
    b.join(ch, None).await.expect("join");
    for i in 1..=3 {
        send_message_ex_text(&mut a, ch, &format!("m{i}")).await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = next_message(&mut b).await.seq;
    }
    assert_eq!(last, 3);
    b.close().await.expect("close");

    for i in 4..=8 {
        send_message_ex_text(&mut a, ch, &format!("m{i}")).await;
    }
    // Delete one of the missed messages: recovery skips deleted ones.
    let deleted = send_message_ex_text(&mut a, ch, "m9").await;
    a.ack(ClientRequest::DeleteMessage(DeleteMessage {
        message_id: deleted.message_id,
    }))
    .await
    .expect("delete");

    let mut b = server.client(&bob, Encoding::Json).await;
    let view = b.join(ch, Some(last)).await.expect("rejoin");
    assert!(view.recovered);
    assert_eq!(view.last_seq, 9);
    // Live traffic right after the join must come after the replay, no dup.
    send_message_ex_text(&mut a, ch, "m10").await;
    let mut seqs = Vec::new();
    for _ in 0..6 {
        let m = next_message(&mut b).await;
        seqs.push((m.seq, m.text));
    }
    let expected: Vec<(u64, String)> = (4..=8)
        .map(|i| (i, format!("m{i}")))
        .chain([(10, "m10".to_string())])
        .collect();
    assert_eq!(seqs, expected);
    assert!(
        b.next_push_matching(Duration::from_millis(300), |f| matches!(
            f,
            ServerFrame::NewMessage(_)
        ))
        .await
        .is_err(),
        "nothing else"
    );

    // Recovery has no window: with pages of 2, all 4 missed messages come,
    // then `recovered`.
    server.stop().await;

    let Some(server) = TestServer::start_with(backend, |c| c.recovery_limit = 2).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let ch = server
        .channel("icu", ChannelKind::Private, &alice, &[])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    for i in 0..5 {
        send_message_ex_text(&mut a, ch, &format!("x{i}")).await;
    }
    let mut c = server.client(&alice, Encoding::MessagePack).await;
    let view = c.join(ch, Some(1)).await.expect("join");
    assert!(view.recovered);
    let mut seqs = Vec::new();
    for _ in 0..4 {
        seqs.push(next_message(&mut c).await.seq);
    }
    assert_eq!(seqs, [2, 3, 4, 5]);
    match c
        .next_push_matching(T, |f| matches!(f, ServerFrame::Recovered(_)))
        .await
        .expect("recovered")
    {
        ServerFrame::Recovered(r) => assert_eq!((r.channel_id, r.last_seq), (ch, 5)),
        _ => unreachable!(),
    }
    server.stop().await;

    // An operator's cap on the replay: a join 4 behind with a cap of 3 is
    // answered `recovered: false`, nothing is replayed, and live messages
    // follow at once (the client pages fetch_history for the gap); 3 behind
    // is still replayed.
    let Some(server) = TestServer::start_with(backend, |c| c.recovery_max_replay = 3).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let ch = server
        .channel("icu", ChannelKind::Private, &alice, &[])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    for i in 0..5 {
        send_message_ex_text(&mut a, ch, &format!("x{i}")).await;
    }
    let mut far = server.client(&alice, Encoding::MessagePack).await;
    let view = far.join(ch, Some(1)).await.expect("join");
    assert!(!view.recovered, "4 missed, cap 3");
    assert_eq!(view.last_seq, 5);
    let mut near = server.client(&alice, Encoding::MessagePack).await;
    let view = near.join(ch, Some(2)).await.expect("join");
    assert!(view.recovered, "3 missed, cap 3");
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(next_message(&mut near).await.seq);
    }
    assert_eq!(seqs, [3, 4, 5]);
    send_message_ex_text(&mut a, ch, "live").await;
    assert_eq!(
        next_message(&mut far).await.seq,
        6,
        "live at once, no replay"
    );
    let page = history(&mut far, ch, Some(6), 100).await;
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "the gap is there to page"
    );
    server.stop().await;
}

async fn client_msg_id_makes_sends_idempotent(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("c", ChannelKind::Private, &alice, &[&bob])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::MessagePack).await;
    b.join(ch, None).await.expect("join");
    let mut req = SendMessage::text(ch, "once");
    req.client_msg_id = Some("abc-1".into());
    let first = send_message_ex_ok(&mut a, req.clone()).await;
    let again = send_message_ex_ok(&mut a, req.clone()).await;
    assert!(!first.duplicate && again.duplicate);
    assert_eq!((again.message_id, again.seq), (first.message_id, first.seq));
    // Another user may use the same client id: it is per sender.
    let bobs = send_message_ex_ok(&mut b, req.clone()).await;
    assert!(!bobs.duplicate);
    assert_eq!(next_message(&mut b).await.seq, 1);
    assert_eq!(next_message(&mut b).await.seq, 2);
    assert!(b
        .next_push_matching(Duration::from_millis(300), |f| matches!(
            f,
            ServerFrame::NewMessage(_)
        ))
        .await
        .is_err());

    // A clientMsgId over 64 bytes is refused.
    req.client_msg_id = Some("x".repeat(65));
    assert_eq!(
        error_code(send_message_ex(&mut a, req).await),
        ErrorCode::TooLarge
    );
    server.stop().await;

    // After a restart, a resend still resolves to the original.
    let dir = server_dir_reuse(backend).await;
    let Some((url, dir)) = dir else { return };
    let (first, user) = {
        let server = TestServer::start_config(
            support::server::test_config(&dir, url.clone()),
            tempfile::tempdir().expect("tmp"),
            None,
        )
        .await;
        let user = server.user("carol", Role::User).await;
        let ch = server.channel("c2", ChannelKind::Private, &user, &[]).await;
        let mut c = server.client(&user, Encoding::MessagePack).await;
        let mut req = SendMessage::text(ch, "survives");
        req.client_msg_id = Some("restart-1".into());
        let first = send_message_ex_ok(&mut c, req).await;
        server.stop().await;
        ((first, ch), user)
    };
    let server = TestServer::start_config(
        support::server::test_config(&dir, url),
        tempfile::tempdir().expect("tmp"),
        None,
    )
    .await;
    let session = server.session_for(user.id).await;
    let user = support::server::TestUser {
        token: server.app.tokens.issue(user.id, session).expect("token").0,
        session_id: session,
        ..user
    };
    let mut c = server.client(&user, Encoding::MessagePack).await;
    let mut req = SendMessage::text(first.1, "survives");
    req.client_msg_id = Some("restart-1".into());
    let again = send_message_ex_ok(&mut c, req).await;
    assert!(again.duplicate);
    assert_eq!(
        (again.message_id, again.seq),
        (first.0.message_id, first.0.seq)
    );
    server.stop().await;
}

/// A database URL and directory that outlive one server (for restarts).
async fn server_dir_reuse(backend: Backend) -> Option<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tmp");
    match backend {
        Backend::Sqlite => Some((
            format!("sqlite://{}", dir.path().join("keep.db").display()),
            dir,
        )),
        Backend::Postgres => Some((support::fresh_postgres_url().await?, dir)),
    }
}

async fn edit_and_delete_are_limited_to_author_and_moderators(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let owner = server.user("owner", Role::User).await;
    let author = server.user("author", Role::User).await;
    let other = server.user("other", Role::User).await;
    let ch = server
        .channel("c", ChannelKind::Private, &owner, &[&author, &other])
        .await;
    let mut o = server.client(&owner, Encoding::MessagePack).await;
    o.join(ch, None).await.expect("join");
    let mut a = server.client(&author, Encoding::Json).await;
    let mut x = server.client(&other, Encoding::MessagePack).await;
    let msg = send_message_ex_text(&mut a, ch, "draft").await;

    let edit = |text: &str| {
        ClientRequest::EditMessage(EditMessage {
            message_id: msg.message_id,
            text: text.into(),
        })
    };
    assert_eq!(
        error_code(x.ack(edit("hijack")).await),
        ErrorCode::Forbidden
    );
    a.ack(edit("final")).await.expect("author edits");
    let updated = o
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageUpdated(_)))
        .await
        .expect("message_updated");
    match updated {
        ServerFrame::MessageUpdated(p) => {
            assert_eq!((p.data.text.as_str(), p.data.seq), ("final", 1));
            assert!(p.data.edited_at.is_some());
        }
        _ => unreachable!(),
    }
    let page = history(&mut o, ch, None, 10).await;
    assert_eq!(
        page.messages[0].text, "final",
        "the edit is stored (re-encrypted)"
    );

    let delete = ClientRequest::DeleteMessage(DeleteMessage {
        message_id: msg.message_id,
    });
    assert_eq!(
        error_code(x.ack(delete.clone()).await),
        ErrorCode::Forbidden
    );
    o.ack(delete.clone())
        .await
        .expect("the channel owner moderates");
    match o
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageDeleted(_)))
        .await
        .expect("deleted")
    {
        ServerFrame::MessageDeleted(d) => {
            assert_eq!((d.data.message_id, d.data.seq), (msg.message_id, 1))
        }
        _ => unreachable!(),
    }
    assert_eq!(error_code(o.ack(delete).await), ErrorCode::NotFound);
    let unknown = ClientRequest::DeleteMessage(DeleteMessage {
        message_id: MessageId::new(),
    });
    assert_eq!(error_code(o.ack(unknown).await), ErrorCode::NotFound);
    server.stop().await;
}

async fn history(
    client: &mut Client,
    ch: courier_protocol::ChannelId,
    before: Option<u64>,
    limit: u32,
) -> History {
    let request = ClientRequest::FetchHistory(FetchHistory {
        channel_id: ch,
        before_seq: before,
        limit: Some(limit),
    });
    match client.request(request).await.expect("history") {
        ServerFrame::History(h) => h,
        other => panic!("expected history, got {other:?}"),
    }
}

async fn history_pages_ascending_with_has_more(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &alice, &[]).await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    for i in 1..=120 {
        send_message_ex_text(&mut a, ch, &format!("n{i}")).await;
    }
    let newest = history(&mut a, ch, None, 50).await;
    let seqs: Vec<u64> = newest.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (71..=120).collect::<Vec<_>>());
    assert!(newest.has_more);
    let older = history(&mut a, ch, Some(71), 50).await;
    assert_eq!(older.messages.first().map(|m| m.seq), Some(21));
    assert!(older.has_more);
    let oldest = history(&mut a, ch, Some(21), 50).await;
    assert_eq!(
        oldest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(!oldest.has_more);
    assert_eq!(oldest.messages[0].text, "n1");
    // Limits outside 1..100 are clamped, never an error.
    assert_eq!(history(&mut a, ch, None, 1000).await.messages.len(), 100);
    server.stop().await;
}

async fn receipts_reactions_typing_and_status(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.typing_expiry_ms = 300).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("c", ChannelKind::Private, &alice, &[&bob])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::Json).await;
    a.join(ch, None).await.expect("join");
    b.join(ch, None).await.expect("join");
    let m1 = send_message_ex_text(&mut a, ch, "one").await;
    send_message_ex_text(&mut a, ch, "two").await;

    // Read receipts move lastReadSeq and reach the channel.
    b.ack(ClientRequest::ReadReceipt(ReadReceipt {
        channel_id: ch,
        up_to: ReadPosition::Message(m1.message_id),
    }))
    .await
    .expect("receipt");
    match a
        .next_push_matching(T, |f| matches!(f, ServerFrame::ReadReceipt(_)))
        .await
        .expect("receipt push")
    {
        ServerFrame::ReadReceipt(r) => assert_eq!((r.user_id, r.seq), (bob.id, 1)),
        _ => unreachable!(),
    }
    let view = server
        .client(&bob, Encoding::MessagePack)
        .await
        .join(ch, None)
        .await
        .expect("join");
    assert_eq!((view.last_read_seq, view.unread), (1, 1));

    // Reactions.
    let react = |add: bool| {
        let r = Reaction {
            message_id: m1.message_id,
            reaction: "👍".into(),
        };
        if add {
            ClientRequest::AddReaction(r)
        } else {
            ClientRequest::RemoveReaction(r)
        }
    };
    b.ack(react(true)).await.expect("react");
    let counts = |f: ServerFrame| match f {
        ServerFrame::ReactionUpdated(r) => r.reactions,
        other => panic!("expected reaction_updated, got {other:?}"),
    };
    let got = counts(
        a.next_push_matching(T, |f| matches!(f, ServerFrame::ReactionUpdated(_)))
            .await
            .expect("push"),
    );
    assert_eq!(got, BTreeMap::from([("👍".to_string(), 1)]));
    a.ack(react(true)).await.expect("react");
    let got = counts(
        b.next_push_matching(T, |f| matches!(f, ServerFrame::ReactionUpdated(_)))
            .await
            .expect("push"),
    );
    assert_eq!(got.get("👍"), Some(&1).or(Some(&2)));
    b.ack(react(false)).await.expect("unreact");

    // Typing reaches the others and expires on its own.
    a.send(ClientRequest::TypingIndicator(TypingIndicator {
        channel_id: ch,
        is_typing: true,
    }))
    .await
    .expect("typing");
    let typing = |f: ServerFrame| match f {
        ServerFrame::Typing(t) => (t.user_id, t.is_typing),
        other => panic!("expected typing, got {other:?}"),
    };
    assert_eq!(
        typing(
            b.next_push_matching(T, |f| matches!(f, ServerFrame::Typing(_)))
                .await
                .expect("typing")
        ),
        (alice.id, true)
    );
    assert_eq!(
        typing(
            b.next_push_matching(T, |f| matches!(f, ServerFrame::Typing(_)))
                .await
                .expect("expiry")
        ),
        (alice.id, false)
    );

    // set_status away reaches users who share a channel.
    a.ack(ClientRequest::SetStatus(SetStatus {
        status: UserStatus::Away,
    }))
    .await
    .expect("status");
    let presence = b
        .next_push_matching(
            T,
            |f| matches!(f, ServerFrame::Presence(p) if p.status == PresenceStatus::Away),
        )
        .await
        .expect("presence away");
    assert!(matches!(presence, ServerFrame::Presence(p) if p.user_id == alice.id));
    server.stop().await;
}

async fn direct_and_broadcast_channels(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let nurse = server.user("nurse", Role::User).await;
    let patient = server.user("patient", Role::User).await;
    let mut n = server.client(&nurse, Encoding::MessagePack).await;
    let open = ClientRequest::OpenDirect(OpenDirect {
        user_id: patient.id,
    });
    let first = match n.ack(open.clone()).await.expect("open_direct").result {
        AckResult::Channel(c) => c,
        other => panic!("expected channel, got {other:?}"),
    };
    assert_eq!(first.kind, ChannelKindWire::Direct);
    let mut p = server.client(&patient, Encoding::MessagePack).await;
    let from_patient = ClientRequest::OpenDirect(OpenDirect { user_id: nurse.id });
    match p.ack(from_patient).await.expect("open_direct").result {
        AckResult::Channel(c) => assert_eq!(c.id, first.id, "one direct channel per pair"),
        other => panic!("expected channel, got {other:?}"),
    }
    // open_direct joined both callers.
    send_message_ex_text(&mut n, first.id, "how are you feeling?").await;
    assert_eq!(next_message(&mut p).await.text, "how are you feeling?");
    let me = ClientRequest::OpenDirect(OpenDirect { user_id: nurse.id });
    assert_eq!(error_code(n.ack(me).await), ErrorCode::InvalidFrame);

    // Broadcast: members read, only owners and moderators post.
    let admin = server.user("announcer", Role::User).await;
    let bc = server
        .channel("announcements", ChannelKind::Broadcast, &admin, &[&patient])
        .await;
    let mut ad = server.client(&admin, Encoding::MessagePack).await;
    p.join(bc, None).await.expect("join broadcast");
    send_message_ex_text(&mut ad, bc, "clinic closed friday").await;
    assert_eq!(next_message(&mut p).await.text, "clinic closed friday");
    assert_eq!(
        error_code(send_message_ex(&mut p, SendMessage::text(bc, "me too")).await),
        ErrorCode::Forbidden
    );
    server.stop().await;
}

async fn non_members_are_refused_everywhere(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let mallory = server.user("mallory", Role::Admin).await;
    let ch = server
        .channel("private", ChannelKind::Private, &alice, &[])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let secret = send_message_ex_text(&mut a, ch, "secret").await;
    let mut m = server.client(&mallory, Encoding::MessagePack).await;
    let join = ClientRequest::JoinChannel(JoinChannel {
        channel_id: ch,
        since_seq: Some(0),
    });
    assert_eq!(error_code(m.ack(join).await), ErrorCode::Forbidden);
    match m
        .request(ClientRequest::FetchHistory(FetchHistory {
            channel_id: ch,
            before_seq: None,
            limit: None,
        }))
        .await
        .expect("answer")
    {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("history leaked: {other:?}"),
    }
    assert_eq!(
        error_code(send_message_ex(&mut m, SendMessage::text(ch, "hi")).await),
        ErrorCode::Forbidden
    );
    let edit = ClientRequest::EditMessage(EditMessage {
        message_id: secret.message_id,
        text: "x".into(),
    });
    assert_eq!(error_code(m.ack(edit).await), ErrorCode::Forbidden);
    let react = ClientRequest::AddReaction(Reaction {
        message_id: secret.message_id,
        reaction: "x".into(),
    });
    assert_eq!(error_code(m.ack(react).await), ErrorCode::Forbidden);
    let receipt = ClientRequest::ReadReceipt(ReadReceipt {
        channel_id: ch,
        up_to: ReadPosition::Seq(1),
    });
    assert_eq!(error_code(m.ack(receipt).await), ErrorCode::Forbidden);
    let unknown = ClientRequest::JoinChannel(JoinChannel {
        channel_id: courier_protocol::ChannelId::new(),
        since_seq: None,
    });
    assert_eq!(error_code(m.ack(unknown).await), ErrorCode::NotFound);
    m.send(ClientRequest::TypingIndicator(TypingIndicator {
        channel_id: ch,
        is_typing: true,
    }))
    .await
    .expect("send");
    match m.next_frame(T).await.expect("typing error") {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("typing in a channel not joined: {other:?}"),
    }
    // The connection still works after all those refusals.
    assert!(matches!(
        m.request(ClientRequest::Ping).await,
        Ok(ServerFrame::Pong(_))
    ));
    server.stop().await;
}

async fn two_connections_of_one_user(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let doc = server.user("doctor", Role::User).await;
    let watcher = server.user("watcher", Role::User).await;
    let ch = server
        .channel("c", ChannelKind::Private, &doc, &[&watcher])
        .await;
    let mut w = server.client(&watcher, Encoding::MessagePack).await;
    w.join(ch, None).await.expect("join");
    let mut phone = server.client(&doc, Encoding::MessagePack).await;
    let mut laptop = server.client(&doc, Encoding::Json).await;
    phone.join(ch, None).await.expect("join");
    laptop.join(ch, None).await.expect("join");
    send_message_ex_text(&mut w, ch, "page").await;
    assert_eq!(next_message(&mut phone).await.text, "page");
    assert_eq!(next_message(&mut laptop).await.text, "page");

    phone.close().await.expect("close");
    assert!(
        w.next_push_matching(
            Duration::from_millis(500),
            |f| matches!(f, ServerFrame::Presence(p) if p.status == PresenceStatus::Offline)
        )
        .await
        .is_err(),
        "still online on the laptop"
    );
    laptop.close().await.expect("close");
    let offline = w
        .next_push_matching(
            T,
            |f| matches!(f, ServerFrame::Presence(p) if p.status == PresenceStatus::Offline),
        )
        .await
        .expect("offline after the last connection");
    assert!(matches!(offline, ServerFrame::Presence(p) if p.user_id == doc.id));
    server.stop().await;
}

/// An authenticated connection leaves `ws.connect` and, once it closes,
/// `ws.disconnect` in the audit chain: the same user, the same `connId`.
async fn a_connection_is_audited_from_connect_to_disconnect(backend: Backend) {
    use courier_actors::durable::store::{AuditFilter, AuditRecord};

    let Some(server) = start(backend).await else {
        return;
    };
    let nurse = server.user("nurse", Role::User).await;
    let c = server.client(&nurse, Encoding::MessagePack).await;
    c.close().await.expect("close");
    let store = server.app.store.clone();
    let entries = async |action: &str| -> Vec<AuditRecord> {
        let filter = AuditFilter {
            action: Some(action.into()),
            actor_id: Some(nurse.id),
            limit: 10,
            ..AuditFilter::default()
        };
        store.list_audit(filter).await.expect("list audit")
    };
    let mut disconnects = Vec::new();
    let audited = support::server::eventually(T, async || {
        disconnects = entries("ws.disconnect").await;
        !disconnects.is_empty()
    })
    .await;
    assert!(audited, "ws.disconnect is audited");
    let connects = entries("ws.connect").await;
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert_eq!(disconnects.len(), 1, "{disconnects:?}");
    let conn_id = &connects[0].details["connId"];
    assert!(conn_id.is_u64(), "{connects:?}");
    assert_eq!(&disconnects[0].details["connId"], conn_id);
    assert!(disconnects[0].seq > connects[0].seq);
    server.stop().await;
}

// ---- connection lifecycle (SQLite only: no store behaviour involved) ----

#[tokio::test]
async fn requests_before_authentication_close_4001() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let mut c = Client::connect(&server.ws_url()).await.expect("connect");
    let answer = c
        .request(ClientRequest::JoinChannel(JoinChannel {
            channel_id: courier_protocol::ChannelId::new(),
            since_seq: None,
        }))
        .await
        .expect("answer");
    assert!(matches!(answer, ServerFrame::Error(e) if e.code == ErrorCode::Unauthenticated));
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::AUTH_FAILED)
    );

    let mut c = Client::connect(&server.ws_url()).await.expect("connect");
    let response = c.authenticate("not.a.jwt").await.expect("answer");
    assert!(response.result.is_err());
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::AUTH_FAILED)
    );
    server.stop().await;
}

#[tokio::test]
async fn authentication_deadline_closes_4001() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.auth_timeout_ms = 300)
        .await
        .expect("server");
    let mut c = Client::connect(&server.ws_url()).await.expect("connect");
    let frame = c.next_frame(T).await.expect("auth_timeout error");
    assert!(matches!(frame, ServerFrame::Error(e) if e.code == ErrorCode::AuthTimeout));
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::AUTH_FAILED)
    );
    server.stop().await;
}

/// An access token that expires on an open socket closes it: `error`
/// `auth_failed`, then 4001, when the token expires, not before. The token
/// here expires long before the authentication deadline the reader was
/// sleeping towards, so this also checks that authenticating moves the
/// reader's alarm.
#[tokio::test]
async fn access_token_expiry_closes_4001() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.access_token_ttl_secs = 2;
        c.auth_timeout_ms = 60_000;
    })
    .await
    .expect("server");
    let u = server.user("u", Role::User).await;
    let issued = std::time::Instant::now();
    let mut c = server.client(&u, Encoding::MessagePack).await;
    let frame = c.next_frame(T).await.expect("auth_failed error");
    assert!(
        matches!(&frame, ServerFrame::Error(e) if e.code == ErrorCode::AuthFailed),
        "{frame:?}"
    );
    // `exp` is in whole seconds: a 2 s token lives more than 1 s.
    assert!(
        issued.elapsed() >= Duration::from_millis(950),
        "closed {:?} after the token was issued",
        issued.elapsed()
    );
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::AUTH_FAILED)
    );
    server.stop().await;
}

/// Re-authenticating with a fresh token of the same user keeps the socket
/// open past the first token's expiry, until the second one expires.
#[tokio::test]
async fn reauthentication_extends_an_open_socket() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.access_token_ttl_secs = 4)
        .await
        .expect("server");
    let u = server.user("u", Role::User).await;
    let tokens = &server.app.tokens;
    let (first, first_exp) = tokens.issue(u.id, u.session_id).expect("token");
    let first_exp = first_exp as i64 * 1000;
    let mut c = Client::connect(&server.ws_url()).await.expect("connect");
    let response = c.authenticate(&first).await.expect("answer");
    assert!(response.result.is_ok(), "{response:?}");
    // `exp` is in whole seconds: issued 2 s (or more) before the first
    // one expires, the second token expires 2 s (or more) after it.
    sleep_until_wall(first_exp - 2_000).await;
    let (second, second_exp) = tokens.issue(u.id, u.session_id).expect("token");
    let second_exp = second_exp as i64 * 1000;
    assert!(second_exp >= first_exp + 2_000);
    let response = c.authenticate(&second).await.expect("answer");
    assert!(response.result.is_ok(), "{response:?}");
    sleep_until_wall(first_exp + 300).await;
    assert!(
        matches!(
            c.request(ClientRequest::Ping).await,
            Ok(ServerFrame::Pong(_))
        ),
        "the socket closed with the first token"
    );
    let frame = c.next_frame(T).await.expect("auth_failed error");
    assert!(matches!(&frame, ServerFrame::Error(e) if e.code == ErrorCode::AuthFailed));
    assert!(courier_actors::now_ms() >= second_exp);
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::AUTH_FAILED)
    );
    server.stop().await;
}

/// Sleeps until the wall clock reads `at_ms` (ms since the epoch).
async fn sleep_until_wall(at_ms: i64) {
    let left = at_ms - courier_actors::now_ms();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

#[tokio::test]
async fn revoked_session_closes_4003() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    server
        .app
        .store
        .revoke_session(u.session_id)
        .await
        .expect("revoke");
    server
        .app
        .realtime
        .revoke_sessions(u.id, Some(vec![u.session_id]));
    let started = std::time::Instant::now();
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::SESSION_REVOKED)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second"
    );
    // The token of a revoked session no longer authenticates.
    let mut again = Client::connect(&server.ws_url()).await.expect("connect");
    assert!(again
        .authenticate(&u.token)
        .await
        .expect("answer")
        .result
        .is_err());
    server.stop().await;
}

/// A closed connection leaves no task behind. Its access-token timer used
/// to sleep on until the token expired (15 minutes by default), holding
/// the closed actor's cell: under reconnect churn, memory grew with every
/// connect.
#[tokio::test]
async fn closed_connections_leave_no_tasks_behind() {
    const CONNECTIONS: usize = 40;
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    // Held open throughout, so the user's presence actor stays.
    let _held = server.client(&u, Encoding::MessagePack).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for _ in 0..CONNECTIONS {
        let c = server.client(&u, Encoding::MessagePack).await;
        c.close().await.expect("close");
    }
    // A closed connection's writer may linger briefly (close grace).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut alive = metrics.num_alive_tasks();
    while alive > before + 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        alive = metrics.num_alive_tasks();
    }
    assert!(
        alive <= before + 2,
        "{CONNECTIONS} closed connections left {} tasks alive",
        alive - before
    );
    server.stop().await;
}

#[tokio::test]
async fn foreign_origin_is_refused_at_the_upgrade() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let refused = Client::builder(server.ws_url())
        .origin("https://evil.example")
        .connect()
        .await;
    assert!(
        matches!(refused, Err(ClientError::Refused { status: 403 })),
        "{:?}",
        refused.err()
    );
    let same = Client::builder(server.ws_url())
        .origin(format!("http://{}", server.addr))
        .connect()
        .await;
    assert!(same.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_says_so_then_closes_1001() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    let mut c = server.client(&u, Encoding::Json).await;
    let stopping = tokio::spawn(server.stop());
    let event = c
        .next_push_matching(T, |f| matches!(f, ServerFrame::SystemEvent(_)))
        .await
        .expect("system_event");
    assert!(matches!(event, ServerFrame::SystemEvent(e) if e.event_type == "shutdown"));
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::GOING_AWAY)
    );
    stopping.await.expect("stopped");
}

/// A fan-out to more connections than one flush chunk (64) is written to
/// the sockets by the channel's flush line, in chunks, while the channel
/// goes on with the next commits: every connection still gets every
/// message once, whole and in `seq` order, in its own encoding, also when
/// the publisher pipelines its sends so that commits arrive in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_fan_out_arrives_whole_and_in_order_everywhere() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let publisher = server.user("pub", Role::User).await;
    let readers = [
        server.user("ward-a", Role::User).await,
        server.user("ward-b", Role::User).await,
    ];
    let ch = server
        .channel(
            "wide",
            ChannelKind::Private,
            &publisher,
            &[&readers[0], &readers[1]],
        )
        .await;
    const CONNS: usize = 150;
    const N: usize = 40;
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let encoding = if i % 3 == 0 {
            Encoding::Json
        } else {
            Encoding::MessagePack
        };
        let mut client = server.client(&readers[i % 2], encoding).await;
        client.join(ch, None).await.expect("join");
        clients.push(client);
    }
    let mut publishing = server.client(&publisher, Encoding::MessagePack).await;
    publishing.join(ch, None).await.expect("publisher joins");
    let (mut sender, mut acks) = publishing.split();
    let reading = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut texts = Vec::new();
                for expected in 1..=N as u64 {
                    let m = next_message(&mut client).await;
                    assert_eq!(m.seq, expected, "in seq order, none missing or repeated");
                    texts.push(m.text);
                }
                texts
            })
        })
        .collect::<Vec<_>>();
    let texts: Vec<String> = (0..N)
        .map(|i| format!("obs {i}: {}", "x".repeat(i * 37)))
        .collect();
    for text in &texts {
        sender
            .send(ClientRequest::SendMessage(SendMessage::text(
                ch,
                text.clone(),
            )))
            .await
            .expect("send");
    }
    let mut acked = 0;
    while acked < N {
        if let ServerFrame::Ack(ack) = acks.next_frame(T).await.expect("ack") {
            sent(ack);
            acked += 1;
        }
    }
    for reader in reading {
        assert_eq!(reader.await.expect("reader"), texts);
    }
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_4009_and_others_keep_receiving() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.outbound_queue_frames = 256;
        // A committed batch's pushes reach a reader at once (this runtime
        // has one thread): batches of at most 64 keep each burst well under
        // the fast reader's queue, however long a commit takes.
        c.persist_batch_max = Some(64);
        c.max_text_bytes = 60_000;
    })
    .await
    .expect("server");
    let publisher = server.user("pub", Role::User).await;
    let fast = server.user("fast", Role::User).await;
    let slow = server.user("slow", Role::User).await;
    let ch = server
        .channel("flood", ChannelKind::Private, &publisher, &[&fast, &slow])
        .await;
    const N: usize = 800; // 40 MB: far more than the queue and loopback socket buffers hold
    let mut f = server.client(&fast, Encoding::MessagePack).await;
    f.join(ch, None).await.expect("join");

    // The slow client is a raw socket that authenticates, joins, then never
    // reads. Its receive buffer is small, so that what the kernel absorbs
    // does not depend on this machine's tcp_rmem (up to 32 MiB here).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr).await.expect("tcp connect");
    let (mut raw, _) = tokio_tungstenite::client_async(server.ws_url(), stream)
        .await
        .expect("raw connect");
    use futures_util::SinkExt;
    let auth = ClientFrame::new(ClientRequest::Authenticate(Authenticate::new(
        slow.token.clone(),
    )));
    raw.send(tokio_tungstenite::tungstenite::Message::Binary(
        courier_protocol::codec::encode_client(&auth, Encoding::MessagePack),
    ))
    .await
    .expect("auth");
    let join = ClientFrame::new(ClientRequest::JoinChannel(JoinChannel {
        channel_id: ch,
        since_seq: None,
    }))
    .with_ref(1u32);
    raw.send(tokio_tungstenite::tungstenite::Message::Binary(
        courier_protocol::codec::encode_client(&join, Encoding::MessagePack),
    ))
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut sender, mut receiver) = server
        .client(&publisher, Encoding::MessagePack)
        .await
        .split();
    // The slow consumer is cut while the flood goes on: the server's count
    // of connections drops by one (the fast reader and the publisher stay
    // to the end), and what its socket then holds ends with a close frame
    // carrying 4009 (the server finishes the frame it was writing first).
    let baseline = server.app.realtime.connection_count();
    let app = server.app.clone();
    let cut = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + T;
        let mut disconnected = false;
        while !disconnected && tokio::time::Instant::now() < deadline {
            disconnected = app.realtime.connection_count() < baseline;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        use futures_util::StreamExt;
        let mut code = None;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), raw.next()).await
        {
            if let tokio_tungstenite::tungstenite::Message::Close(Some(cf)) = msg {
                code = Some(u16::from(cf.code));
                break;
            }
        }
        (disconnected, code)
    });
    // The publisher reads its acks as they come, so that it is not slow itself.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < N {
            match receiver.next_frame(T).await {
                Ok(ServerFrame::Ack(_)) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost its acks: {e:?}"),
            }
        }
        acked
    });
    let body = "x".repeat(50_000);
    let flood = tokio::spawn(async move {
        for _ in 0..N {
            sender
                .send(ClientRequest::SendMessage(SendMessage::text(
                    ch,
                    body.clone(),
                )))
                .await
                .expect("send");
        }
        sender
    });
    let mut got = 0;
    while got < N {
        let m = next_message(&mut f).await;
        got += 1;
        assert_eq!(
            m.seq, got as u64,
            "the fast reader gets every message in order"
        );
    }
    let _ = flood.await;
    assert_eq!(acks.await.expect("acks"), N, "every send was acked");
    let (disconnected, code) = cut.await.expect("slow consumer watcher");
    assert!(disconnected, "the slow consumer was disconnected");
    assert_eq!(code, Some(close::SLOW_CONSUMER));
    server.stop().await;
}

#[tokio::test]
async fn invalid_frames_are_answered_and_the_connection_keeps_working() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    use tokio_tungstenite::tungstenite::Message;
    for (i, bad) in [
        Message::Binary(vec![0xc1].into()),
        Message::Binary(vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'n', b'o', b'p', b'e'].into()),
        Message::Text(r#"{"type":"send_message","ref":9,"channelId":42}"#.into()),
        Message::Text("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".into()),
    ]
    .into_iter()
    .enumerate()
    {
        c.send_raw(bad).await.expect("send");
        let frame = c.next_frame(T).await.unwrap_or_else(|e| panic!("bad frame {i}: {e:?}"));
        assert!(matches!(&frame, ServerFrame::Error(e) if e.code == ErrorCode::InvalidFrame), "{frame:?}");
    }
    c.send_raw(Message::Text(
        r#"{"type":"send_message","ref":9,"channelId":42}"#.into(),
    ))
    .await
    .expect("send");
    match c.next_frame(T).await.expect("answer") {
        ServerFrame::Error(e) => assert_eq!(e.reference, Some(Ref::Int(9)), "the ref is echoed"),
        other => panic!("{other:?}"),
    }
    // Text over the limit: too_large; the connection goes on.
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let big = SendMessage::text(ch, "y".repeat(16_385));
    assert_eq!(
        error_code(send_message_ex(&mut c, big).await),
        ErrorCode::TooLarge
    );
    assert!(matches!(
        c.request(ClientRequest::Ping).await,
        Ok(ServerFrame::Pong(_))
    ));
    // A frame over the frame limit closes with 1009.
    c.send_raw(Message::Binary(vec![0u8; 70_000].into()))
        .await
        .expect("send");
    assert_eq!(
        c.wait_closed(T).await.expect("closed"),
        Some(close::TOO_LARGE)
    );
    server.stop().await;
}

#[tokio::test]
async fn send_rate_limit_answers_rate_limited_with_retry_after() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.send_per_minute = 6)
        .await
        .expect("server");
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::MessagePack).await;
    send_message_ex_text(&mut c, ch, "1").await;
    let mut limited = None;
    for _ in 0..5 {
        match send_message_ex(&mut c, SendMessage::text(ch, "again")).await {
            Err(ClientError::Server(e)) if e.code == ErrorCode::RateLimited => {
                limited = Some(e);
                break;
            }
            Ok(_) => {}
            other => panic!("{other:?}"),
        }
    }
    let e = limited.expect("rate limited within the burst");
    assert!(
        e.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 10_000),
        "{e:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ttl_messages_expire_for_everyone() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.retention_interval_secs = 1)
        .await
        .expect("server");
    let u = server.user("u", Role::User).await;
    let v = server.user("v", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[&v]).await;
    let mut a = server.client(&u, Encoding::MessagePack).await;
    let mut b = server.client(&v, Encoding::MessagePack).await;
    b.join(ch, None).await.expect("join");
    let mut req = SendMessage::text(ch, "self-destructs");
    req.ttl_seconds = Some(1);
    let short = send_message_ex_ok(&mut a, req).await;
    send_message_ex_text(&mut a, ch, "stays").await;
    let pushed = next_message(&mut b).await;
    assert!(pushed.expires_at.is_some_and(|t| t > pushed.timestamp));
    match b
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageDeleted(_)))
        .await
        .expect("expiry push")
    {
        ServerFrame::MessageDeleted(d) => assert_eq!(d.data.message_id, short.message_id),
        _ => unreachable!(),
    }
    let page = history(&mut b, ch, None, 10).await;
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["stays"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_answers_pings_is_closed_4002() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 400;
    })
    .await
    .expect("server");
    let u = server.user("u", Role::User).await;
    // A raw TCP client that upgrades, authenticates, and then never reads,
    // so it never answers the server's pings (tungstenite would answer them).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(upgrade.as_bytes()).await.expect("upgrade");
    let auth = ClientFrame::new(ClientRequest::Authenticate(Authenticate::new(
        u.token.clone(),
    )));
    let payload = courier_protocol::codec::encode_client(&auth, Encoding::MessagePack);
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.expect("auth frame");
    assert!(
        support::server::eventually(T, async || server.app.realtime.connection_count() == 0).await,
        "the idle connection was closed"
    );
    let mut received = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut received)).await;
    // A server close frame: FIN+close opcode, length 2, then the code.
    let idle = [
        0x88,
        0x02,
        (close::IDLE >> 8) as u8,
        (close::IDLE & 0xff) as u8,
    ];
    let code = received
        .windows(4)
        .any(|w| w == idle)
        .then_some(close::IDLE);
    assert_eq!(code, Some(close::IDLE));
    server.stop().await;
}

#[tokio::test]
async fn the_server_flags_phi_the_client_did_not() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let u = server.user("u", Role::User).await;
    let ch = server.channel("c", ChannelKind::Private, &u, &[]).await;
    let mut c = server.client(&u, Encoding::Json).await;
    c.join(ch, None).await.expect("join");
    send_message_ex_text(&mut c, ch, "lunch at noon?").await;
    assert!(!next_message(&mut c).await.contains_phi);
    send_message_ex_text(&mut c, ch, "pt SSN 123-45-6789, MRN: 00123456").await;
    assert!(
        next_message(&mut c).await.contains_phi,
        "detected by the server"
    );
    server.stop().await;
}

/// Locks the `messages` table of the PostgreSQL database at `url` against
/// inserts, and lets go after `hold`; the lock is held when this returns.
async fn hold_message_inserts(url: &str, hold: Duration) -> tokio::task::JoinHandle<()> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    conn.execute("BEGIN; LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
        .await
        .expect("lock messages");
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        conn.execute("COMMIT").await.expect("release the lock");
    })
}

/// With tiny batches and several commits allowed in flight, eight senders
/// pipelining 100 sends each into eight channels: every send is acked, acks
/// of one channel come in `seq` order, and a reader joined to all eight sees
/// each channel's messages once, in order, without gaps. On PostgreSQL, with
/// the first commit held back by a lock, full batches commit side by side.
async fn full_batches_commit_side_by_side_in_seq_order(backend: Backend) {
    // In this binary: no other test reads the batch metrics, which these
    // two-row batches would skew.
    let Some(server) = TestServer::start_with(backend, |c| {
        c.persist_batch_max = Some(2);
        c.persist_commits_in_flight = 4;
    })
    .await
    else {
        return;
    };
    const SENDS: u64 = 100;
    const CHANNELS: u64 = 8;
    let reader_user = server.user("reader", Role::User).await;
    let mut channels = Vec::new();
    let mut senders = Vec::new();
    for i in 0..CHANNELS {
        let u = server.user(&format!("s{i}"), Role::User).await;
        let ch = server
            .channel(&format!("c{i}"), ChannelKind::Private, &u, &[&reader_user])
            .await;
        channels.push(ch);
        senders.push((u, ch));
    }
    let mut reader = server.client(&reader_user, Encoding::MessagePack).await;
    for ch in &channels {
        reader.join(*ch, None).await.expect("join");
    }
    let reading = tokio::spawn(async move {
        let mut last = std::collections::HashMap::<courier_protocol::ChannelId, u64>::new();
        for _ in 0..SENDS * CHANNELS {
            match reader.next_push(T).await.expect("push") {
                ServerFrame::NewMessage(push) => {
                    let m = push.data;
                    let previous = last.insert(m.channel_id, m.seq).unwrap_or(0);
                    assert_eq!(
                        m.seq,
                        previous + 1,
                        "in order, no gaps, in {}",
                        m.channel_id
                    );
                }
                other => panic!("unexpected push {other:?}"),
            }
        }
        last
    });
    let mut clients = Vec::new();
    for (u, ch) in senders {
        clients.push((server.client(&u, Encoding::MessagePack).await, ch));
    }
    // On PostgreSQL, inserts into `messages` are held back while the sends
    // pour in: the first commit waits on the lock, so the full batches
    // behind it start beside it. Without the lock, whether two commits ever
    // overlap is a matter of timing (a fast database may commit every batch
    // before the next one fills). The lock is taken once every sender is
    // connected, so that on a loaded machine it is not over before the
    // sends begin.
    let held = match server.pg_url() {
        Some(url) => Some(hold_message_inserts(url, Duration::from_millis(500)).await),
        None => None,
    };
    let mut sending = Vec::new();
    for (client, ch) in clients {
        let (mut tx, mut rx) = client.split();
        sending.push(tokio::spawn(async move {
            let batch: Vec<ClientRequest> = (0..SENDS)
                .map(|i| ClientRequest::SendMessage(SendMessage::text(ch, format!("p{i}"))))
                .collect();
            let refs = tx.send_batch(batch).await.expect("send");
            let mut seqs = Vec::new();
            for r in &refs {
                match rx.answer(r, T).await.expect("ack") {
                    ServerFrame::Ack(Ack {
                        result: AckResult::Sent(sent),
                        ..
                    }) => seqs.push(sent.seq),
                    other => panic!("{other:?}"),
                }
            }
            seqs
        }));
    }
    for task in sending {
        let seqs = task.await.expect("sender");
        assert_eq!(seqs, (1..=SENDS).collect::<Vec<_>>(), "acked in seq order");
    }
    if let Some(held) = held {
        held.await.expect("lock holder");
    }
    let last = reading.await.expect("reader");
    assert!(channels.iter().all(|ch| last.get(ch) == Some(&SENDS)));
    if backend == Backend::Postgres {
        let metrics = courier::telemetry::render_metrics();
        let most = metrics
            .lines()
            .find(|l| l.starts_with("courier_persist_commits_in_flight{quantile=\"1\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            most > 1.0,
            "full batches committed side by side: at most {most} in flight"
        );
    }
    server.stop().await;
}

/// A client authenticated as `user` that asked for `frames` (over `encoding`),
/// and the form the server granted.
async fn client_with_frames(
    server: &TestServer,
    user: &support::server::TestUser,
    encoding: Encoding,
    frames: courier_protocol::compact::FrameStyle,
) -> (Client, courier_protocol::compact::FrameStyle) {
    let mut client = Client::builder(server.ws_url())
        .encoding(encoding)
        .timeout(T)
        .connect()
        .await
        .expect("connect");
    let mut request = Authenticate::new(user.token.as_str());
    request.frames = frames;
    let response = client
        .authenticate_with(request)
        .await
        .expect("authenticate");
    let granted = response.result.expect("authenticated").frames;
    (client, granted)
}

/// The next `m` push.
async fn next_compact(client: &mut Client) -> courier_protocol::compact::CompactMessage {
    match client
        .next_push_matching(T, |f| {
            matches!(
                f,
                ServerFrame::CompactMessage(_) | ServerFrame::NewMessage(_)
            )
        })
        .await
        .expect("a message push")
    {
        ServerFrame::CompactMessage(m) => m,
        other => panic!("expected a compact `m`, got {other:?}"),
    }
}

/// A MessagePack client that asks for compact frames gets every
/// `new_message`, live and replayed by `sinceSeq`, as `m` with the same
/// fields (PHI flag, reply, expiry included) but the username, while a
/// standard client in the same channel and a JSON client that asked for
/// compact frames get standard `new_message`s of the same messages; other
/// frames stay standard on the compact connection.
async fn compact_frames_carry_the_same_messages_live_and_replayed(backend: Backend) {
    use courier_protocol::compact::FrameStyle;
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("ward-9", ChannelKind::Private, &alice, &[&bob])
        .await;
    let (mut compact, granted) =
        client_with_frames(&server, &bob, Encoding::MessagePack, FrameStyle::Compact).await;
    assert_eq!(granted, FrameStyle::Compact);
    let (mut json, granted) =
        client_with_frames(&server, &bob, Encoding::Json, FrameStyle::Compact).await;
    assert_eq!(granted, FrameStyle::Standard, "JSON stays standard");
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    for client in [&mut a, &mut compact, &mut json] {
        client.join(ch, None).await.expect("join");
    }

    let first = send_message_ex_text(&mut a, ch, "bed 4: fluids").await;
    let mut request = SendMessage::text(ch, "BP 120/80 for MRN 12345678");
    request.contains_phi = true;
    request.reply_to = Some(first.message_id);
    request.ttl_seconds = Some(3600);
    let second = send_message_ex_ok(&mut a, request).await;

    let mut standard = Vec::new();
    for _ in 0..2 {
        let m = next_message(&mut json).await;
        assert_eq!(next_message(&mut a).await, m, "JSON and MessagePack agree");
        standard.push(m);
    }
    for m in &standard {
        let c = next_compact(&mut compact).await;
        assert_eq!(c.clone().into_view(m.sender.clone()), *m, "same message");
        let frame = ServerFrame::CompactMessage(c);
        let len = encode_server(&frame, Encoding::MessagePack).len();
        let full = encode_server(
            &ServerFrame::NewMessage(MessagePush { data: m.clone() }),
            Encoding::MessagePack,
        )
        .len();
        assert!(len * 3 < full * 2, "compact {len} bytes against {full}");
    }
    assert_eq!((standard[0].seq, standard[1].seq), (first.seq, second.seq));
    assert!(standard[1].contains_phi && standard[1].expires_at.is_some());
    assert_eq!(standard[1].reply_to, Some(first.message_id));

    // Other pushes stay standard on the compact connection.
    a.ack(ClientRequest::ReadReceipt(ReadReceipt {
        channel_id: ch,
        up_to: ReadPosition::Seq(second.seq),
    }))
    .await
    .expect("read receipt");
    match compact
        .next_push_matching(T, |f| matches!(f, ServerFrame::ReadReceipt(_)))
        .await
        .expect("a read_receipt push")
    {
        ServerFrame::ReadReceipt(r) => assert_eq!((r.user_id, r.seq), (alice.id, second.seq)),
        _ => unreachable!(),
    }

    // A compact connection that recovers gets the replay compact too.
    drop(compact);
    let (mut again, _) =
        client_with_frames(&server, &bob, Encoding::MessagePack, FrameStyle::Compact).await;
    let view = again.join(ch, Some(0)).await.expect("join with sinceSeq");
    assert!(view.recovered);
    for m in &standard {
        let c = next_compact(&mut again).await;
        assert_eq!(
            (c.seq, c.id, c.text.as_str()),
            (m.seq, m.id, m.text.as_str())
        );
    }
    server.stop().await;
}

fn refusal(result: Result<Ack, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Server(e)) => (e.code, e.message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn flag_request(message_id: MessageId, reason: &str) -> ClientRequest {
    ClientRequest::FlagMessage(FlagMessage {
        message_id,
        reason: reason.into(),
    })
}

async fn next_flagged(client: &mut Client) -> MessageFlagged {
    match client
        .next_push_matching(T, |f| matches!(f, ServerFrame::MessageFlagged(_)))
        .await
        .expect("a message_flagged push")
    {
        ServerFrame::MessageFlagged(f) => f,
        _ => unreachable!(),
    }
}

/// A channel owner flags, a global moderator unflags; both get
/// `message_flagged` and see the flag in history; a plain member may not
/// flag, gets no push (the next push after the flag is the next message)
/// and sees no flag field in history.
async fn flags_reach_those_who_moderate_and_nobody_else(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let carol = server.user("carol", Role::Moderator).await;
    let ch = server
        .channel("ward-2", ChannelKind::Public, &alice, &[&bob, &carol])
        .await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::Json).await;
    let mut c = server.client(&carol, Encoding::Json).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join(ch, None).await.expect("join");
    }
    let msg = send_message_ex_text(&mut b, ch, "Mr Smith, bed 4").await;

    assert_eq!(
        refusal(b.ack(flag_request(msg.message_id, "mine")).await).0,
        ErrorCode::Forbidden,
        "a plain member may not flag"
    );
    assert_eq!(
        refusal(a.ack(flag_request(msg.message_id, "  ")).await).0,
        ErrorCode::InvalidFrame,
        "a reason is required"
    );
    assert_eq!(
        refusal(a.ack(flag_request(msg.message_id, &"x".repeat(501))).await).0,
        ErrorCode::TooLarge
    );
    assert_eq!(
        refusal(a.ack(flag_request(MessageId::new(), "why")).await).0,
        ErrorCode::NotFound
    );
    a.ack(flag_request(msg.message_id, "a patient's name"))
        .await
        .expect("the channel owner flags");
    for client in [&mut a, &mut c] {
        let f = next_flagged(client).await;
        assert_eq!((f.channel_id, f.message_id, f.seq), (ch, msg.message_id, 1));
        assert!(f.flagged);
        assert_eq!(f.flag_reason.as_deref(), Some("a patient's name"));
        assert_eq!(f.flagged_by, Some(alice.id));
        assert!(f.flagged_at.is_some());
    }
    // Bob's next push of either kind is the next message: no flag reached him.
    send_message_ex_text(&mut a, ch, "noted").await;
    let next = b
        .next_push_matching(T, |f| {
            matches!(f, ServerFrame::MessageFlagged(_))
                || matches!(f, ServerFrame::NewMessage(m) if m.data.seq == 2)
        })
        .await
        .expect("a push");
    assert!(
        matches!(&next, ServerFrame::NewMessage(m) if m.data.seq == 2 && m.data.flagged.is_none()),
        "{next:?}"
    );

    let flagged = &history(&mut a, ch, None, 10).await.messages[0];
    assert_eq!(flagged.flagged, Some(true));
    assert_eq!(flagged.flag_reason.as_deref(), Some("a patient's name"));
    assert_eq!(flagged.flagged_by, Some(alice.id));
    let page = history(&mut a, ch, None, 10).await;
    assert_eq!(
        page.messages[1].flagged,
        Some(false),
        "moderators see unflagged ones too"
    );
    let seen_by_carol = &history(&mut c, ch, None, 10).await.messages[0];
    assert_eq!(seen_by_carol.flagged, Some(true));
    for m in history(&mut b, ch, None, 10).await.messages {
        assert_eq!(
            (m.flagged, m.flag_reason, m.flagged_by, m.flagged_at),
            (None, None, None, None),
            "no flag fields for a plain member"
        );
    }

    c.ack(ClientRequest::UnflagMessage(UnflagMessage {
        message_id: msg.message_id,
    }))
    .await
    .expect("a global moderator unflags");
    for client in [&mut a, &mut c] {
        let f = next_flagged(client).await;
        assert!(!f.flagged);
        assert_eq!(
            (f.flag_reason, f.flagged_by, f.flagged_at),
            (None, None, None)
        );
    }
    assert_eq!(
        history(&mut a, ch, None, 10).await.messages[0].flagged,
        Some(false)
    );
    // Both were in the chain before their acks.
    for (action, by) in [("message.flag", alice.id), ("message.unflag", carol.id)] {
        let filter = courier_actors::durable::store::AuditFilter {
            action: Some(action.into()),
            channel_id: Some(ch),
            limit: 10,
            ..Default::default()
        };
        let entries = server.app.store.list_audit(filter).await.expect("audit");
        assert_eq!(entries.len(), 1, "{action}");
        assert_eq!(entries[0].actor_id, Some(by), "{action}");
        assert_eq!(
            entries[0].details["messageId"],
            serde_json::json!(msg.message_id)
        );
    }
    assert_eq!(
        entries_reason(&server, ch).await.as_deref(),
        Some("a patient's name")
    );
    server.stop().await;
}

/// Archived: sends, edits and reactions are refused with `forbidden`
/// "this channel is archived", for joined and new connections alike;
/// history, receipts and deletes go on; a join says `archived`; unarchived,
/// sends work again.
async fn an_archived_channel_refuses_new_messages_and_keeps_its_history(backend: Backend) {
    use courier_actors::policy::authz::Principal;
    let Some(server) = start(backend).await else {
        return;
    };
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ch = server
        .channel("ward-3", ChannelKind::Private, &alice, &[&bob])
        .await;
    let mut b = server.client(&bob, Encoding::MessagePack).await;
    b.join(ch, None).await.expect("join");
    let kept = send_message_ex_text(&mut b, ch, "before the archive").await;
    let owner = Principal {
        user_id: alice.id,
        role: Role::User,
        permissions: &server.app.realtime.permissions,
    };
    let (archived, _) = server
        .app
        .realtime
        .archive_channel(owner, ch, true)
        .await
        .expect("archive");
    assert!(archived.archived_at.is_some());

    let archived_refusal = (ErrorCode::Forbidden, "this channel is archived".to_owned());
    assert_eq!(
        refusal(send_message_ex(&mut b, SendMessage::text(ch, "after")).await),
        archived_refusal,
        "a joined connection's send"
    );
    let mut a = server.client(&alice, Encoding::Json).await;
    assert_eq!(
        refusal(send_message_ex(&mut a, SendMessage::text(ch, "owner too")).await),
        archived_refusal,
        "a send from a connection that has not joined"
    );
    let edit = ClientRequest::EditMessage(EditMessage {
        message_id: kept.message_id,
        text: "changed".into(),
    });
    assert_eq!(refusal(b.ack(edit).await), archived_refusal);
    let react = ClientRequest::AddReaction(Reaction {
        message_id: kept.message_id,
        reaction: "👍".into(),
    });
    assert_eq!(refusal(b.ack(react).await), archived_refusal);

    let view = a.join(ch, None).await.expect("join an archived channel");
    assert!(view.archived);
    assert_eq!(view.last_seq, 1);
    let page = history(&mut a, ch, None, 10).await;
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].text, "before the archive");
    b.ack(ClientRequest::ReadReceipt(ReadReceipt {
        channel_id: ch,
        up_to: ReadPosition::Seq(1),
    }))
    .await
    .expect("receipts go on");
    a.ack(flag_request(kept.message_id, "kept for the record"))
        .await
        .expect("flags go on");

    server
        .app
        .realtime
        .archive_channel(owner, ch, false)
        .await
        .expect("unarchive");
    let again = send_message_ex_text(&mut b, ch, "open again").await;
    assert_eq!(again.seq, 2);
    let view = b.join(ch, None).await.expect("rejoin");
    assert!(!view.archived);
    server.stop().await;
}

async fn entries_reason(server: &TestServer, ch: courier_protocol::ChannelId) -> Option<String> {
    let filter = courier_actors::durable::store::AuditFilter {
        action: Some("message.flag".into()),
        channel_id: Some(ch),
        limit: 1,
        ..Default::default()
    };
    let entries = server.app.store.list_audit(filter).await.ok()?;
    entries.first()?.details["reason"]
        .as_str()
        .map(str::to_owned)
}
