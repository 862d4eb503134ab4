//! The wire contract's sharper edges, end to end: a real server in-process
//! on port 0, real WebSocket clients in both encodings, both stores where a
//! store is involved. Before authentication only `authenticate` is answered;
//! replies must name a message of their channel; recovery replays however
//! much was missed; senders see their messages delivered and read.

#[macro_use]
mod support;

use std::time::Duration;

use courier_actors::durable::store::{ChannelKind, Role, StoredMessage, WriteOp};
use courier_protocol::client::{Client, ClientError};
use courier_protocol::codec::Encoding;
use courier_protocol::error::close;
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId};
use serde_json::{json, Value};
use support::server::{Backend, TestServer, TestUser};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

both_backends!(
    replies_must_name_a_message_of_the_channel,
    recovery_replays_any_backlog_in_order,
    delivery_status_goes_sent_delivered_read,
);

/// `value` as one frame of `encoding`, written by hand (so that it may be
/// malformed).
fn raw(value: &Value, encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => Message::Text(value.to_string().into()),
        Encoding::MessagePack => {
            Message::Binary(rmp_serde::to_vec_named(value).expect("msgpack").into())
        }
    }
}

/// The first frame the server sends on `c`, as an error.
async fn first_error(c: &mut Client) -> ErrorFrame {
    match c.next_frame(T).await {
        Ok(ServerFrame::Error(e)) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn before_authentication_only_authenticate_is_answered() {
    let server = TestServer::start(Backend::Sqlite).await.expect("server");
    let alice = server.user("alice", Role::User).await;
    let malformed_join = json!({"type": "join_channel", "ref": 5, "channelId": "not-a-uuid"});
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        let frames = [
            (malformed_join.clone(), Some(Ref::Int(5))),
            (json!({"type": "no_such_type", "ref": 6}), Some(Ref::Int(6))),
            (json!({"type": "ping", "ref": 7}), Some(Ref::Int(7))),
            (json!({"type": "heartbeat"}), None),
            (json!([1, 2, 3]), None),
        ];
        for (frame, reference) in frames {
            let mut c = Client::builder(server.ws_url())
                .encoding(encoding)
                .timeout(T)
                .connect()
                .await
                .expect("connect");
            let opened = std::time::Instant::now();
            c.send_raw(raw(&frame, encoding)).await.expect("send");
            let e = first_error(&mut c).await;
            assert_eq!(
                (e.code, e.reference),
                (ErrorCode::Unauthenticated, reference),
                "{encoding:?} {frame}"
            );
            assert_eq!(
                c.wait_closed(T).await.expect("closed"),
                Some(close::AUTH_FAILED),
                "{encoding:?} {frame}"
            );
            // At once, not at the authentication deadline (10 s).
            assert!(opened.elapsed() < Duration::from_secs(5), "{frame}");
        }
        // Undecodable MessagePack, or a JSON frame that is not JSON.
        let garbage = match encoding {
            Encoding::MessagePack => Message::Binary(vec![0xc1].into()),
            Encoding::Json => Message::Text("{\"type\":".into()),
        };
        let mut c = Client::builder(server.ws_url())
            .encoding(encoding)
            .timeout(T)
            .connect()
            .await
            .expect("connect");
        c.send_raw(garbage).await.expect("send");
        assert_eq!(first_error(&mut c).await.code, ErrorCode::Unauthenticated);
        assert_eq!(
            c.wait_closed(T).await.expect("closed"),
            Some(close::AUTH_FAILED)
        );

        // An `authenticate` with a bad field is still an `authenticate`:
        // `invalid_frame`, and the socket stays open for a good one.
        let mut c = Client::builder(server.ws_url())
            .encoding(encoding)
            .timeout(T)
            .connect()
            .await
            .expect("connect");
        let bad = json!({"type": "authenticate", "ref": 8, "token": 42});
        c.send_raw(raw(&bad, encoding)).await.expect("send");
        let e = first_error(&mut c).await;
        assert_eq!(
            (e.code, e.reference),
            (ErrorCode::InvalidFrame, Some(Ref::Int(8)))
        );
        let response = c.authenticate(&alice.token).await.expect("answer");
        assert!(response.result.is_ok(), "{response:?}");
        assert!(matches!(
            c.request(ClientRequest::Ping).await,
            Ok(ServerFrame::Pong(_))
        ));
    }
    server.stop().await;
}

/// Writes messages `seqs` of `channel` straight to the store, sealed as the
/// channel actor seals them, 1,000 a transaction (fast, and with the actor
/// not running: it reads the channel's last seq when it starts).
async fn seed(
    server: &TestServer,
    channel: ChannelId,
    sender: &TestUser,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<MessageId> {
    let cipher = &server.app.realtime.cipher;
    let seqs: Vec<u64> = seqs.collect();
    let mut ids = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(1000) {
        let ops: Vec<WriteOp> = chunk
            .iter()
            .map(|&seq| {
                let id = MessageId::new();
                ids.push(id);
                let text = format!("seeded {seq}");
                let sealed = cipher
                    .seal(channel, id, seq, text.as_bytes())
                    .expect("seal");
                WriteOp::InsertMessage(StoredMessage {
                    search: Default::default(),
                    id,
                    channel_id: channel,
                    seq,
                    sender_id: sender.id,
                    client_msg_id: None,
                    ciphertext: sealed.ciphertext,
                    nonce: sealed.nonce,
                    key_version: sealed.key_version,
                    contains_phi: false,
                    reply_to: None,
                    created_at: courier_actors::now_ms(),
                    edited_at: None,
                    expires_at: None,
                    deleted_at: None,
                    kind: Default::default(),
                    attachments: Vec::new(),
                    patient_ref: None,
                    patient_tag: None,
                })
            })
            .collect();
        server.app.store.apply_batch(&ops).await.expect("seed");
    }
    ids
}

fn reply(channel: ChannelId, text: &str, to: MessageId) -> ClientRequest {
    ClientRequest::SendMessage(SendMessage {
        reply_to: Some(to),
        ..SendMessage::text(channel, text)
    })
}

fn sent(ack: Result<Ack, ClientError>) -> SendResult {
    match ack.map(|a| a.result) {
        Ok(AckResult::Sent(s)) => s,
        other => panic!("expected a send ack, got {other:?}"),
    }
}

fn refused(answer: Result<Ack, ClientError>) -> ErrorCode {
    match answer {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A server with alice and bob, members of the private channel `ward`.
async fn ward(backend: Backend) -> Option<(TestServer, TestUser, TestUser, ChannelId)> {
    let server = TestServer::start(backend).await?;
    let alice = server.user("alice", Role::User).await;
    let bob = server.user("bob", Role::User).await;
    let ward = server
        .channel("ward", ChannelKind::Private, &alice, &[&bob])
        .await;
    Some((server, alice, bob, ward))
}

async fn replies_must_name_a_message_of_the_channel(backend: Backend) {
    let Some((server, alice, bob, ward)) = ward(backend).await else {
        return;
    };
    let other = server
        .channel("other", ChannelKind::Private, &alice, &[])
        .await;
    // Older than the channel actor: it must ask the store about these.
    let old = seed(&server, ward, &alice, 1..=2).await;
    let mut a = server.client(&alice, Encoding::MessagePack).await;
    let mut b = server.client(&bob, Encoding::Json).await;
    a.join(ward, None).await.expect("join");
    a.join(other, None).await.expect("join");
    b.join(ward, None).await.expect("join");

    let first = sent(a.ack(reply(ward, "re: old", old[0])).await);
    assert_eq!(first.seq, 3);
    let elsewhere = sent(
        a.ack(ClientRequest::SendMessage(SendMessage::text(other, "x")))
            .await,
    );
    let recent = sent(
        b.ack(ClientRequest::SendMessage(SendMessage::text(ward, "y")))
            .await,
    );
    assert_eq!(recent.seq, 4);
    assert_eq!(
        sent(a.ack(reply(ward, "re: y", recent.message_id)).await).seq,
        5
    );
    for c in [&mut a, &mut b] {
        let nowhere = c.ack(reply(ward, "re: nothing", MessageId::new())).await;
        assert_eq!(refused(nowhere), ErrorCode::NotFound);
        let foreign = c.ack(reply(ward, "re: other", elsewhere.message_id)).await;
        assert_eq!(refused(foreign), ErrorCode::NotFound);
    }

    // Sends behind one that waits for the store keep their order.
    let refs = [
        a.send(reply(ward, "re: old 2", old[1]))
            .await
            .expect("send"),
        a.send(ClientRequest::SendMessage(SendMessage::text(ward, "plain")))
            .await
            .expect("send"),
        a.send(reply(ward, "re: bogus", MessageId::new()))
            .await
            .expect("send"),
        a.send(ClientRequest::SendMessage(SendMessage::text(
            ward, "plain 2",
        )))
        .await
        .expect("send"),
    ];
    // The refusal needs no commit, so it may overtake the acks before it.
    let mut answers = vec![None; refs.len()];
    while answers.iter().any(Option::is_none) {
        let frame = match a.next_frame(T).await {
            Ok(frame) => frame,
            Err(e) => panic!("{e}; answers so far {answers:?}"),
        };
        let Some(i) = refs.iter().position(|r| frame.reference() == Some(r)) else {
            continue;
        };
        answers[i] = Some(match frame {
            ServerFrame::Ack(ack) => Ok(sent(Ok(ack)).seq),
            ServerFrame::Error(e) => Err(e.code),
            other => panic!("unexpected {other:?}"),
        });
    }
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    assert_eq!(answers, [Ok(6), Ok(7), Err(ErrorCode::NotFound), Ok(8)]);

    // A reply to a deleted message works; the original stays deleted.
    b.ack(ClientRequest::DeleteMessage(DeleteMessage {
        message_id: recent.message_id,
    }))
    .await
    .expect("deleted");
    let late = sent(a.ack(reply(ward, "re: deleted", recent.message_id)).await);
    let page = match b
        .request(ClientRequest::FetchHistory(FetchHistory {
            channel_id: ward,
            before_seq: None,
            limit: Some(100),
        }))
        .await
        .expect("history")
    {
        ServerFrame::History(h) => h.messages,
        other => panic!("unexpected {other:?}"),
    };
    assert!(page.iter().all(|m| m.id != recent.message_id));
    let shown = page
        .iter()
        .find(|m| m.id == late.message_id)
        .expect("reply");
    assert_eq!(shown.reply_to, Some(recent.message_id));
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 5, 6, 7, 8, 9]);

    // REST takes the same path.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/api/messages", server.http_url()))
        .bearer_auth(&alice.token)
        .json(&json!({"channelId": ward, "text": "rest", "replyTo": MessageId::new()}))
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    server.stop().await;
}

/// What a rejoining client got: the replayed seqs, the `recovered` frame's
/// `lastSeq`, then the live seqs, up to `until`.
async fn recover(c: &mut Client, until: u64) -> (Vec<u64>, u64, Vec<u64>) {
    let (mut replayed, mut recovered, mut live) = (Vec::new(), None, Vec::new());
    loop {
        match c.next_frame(T).await.expect("a frame") {
            ServerFrame::NewMessage(p) if recovered.is_none() => replayed.push(p.data.seq),
            ServerFrame::NewMessage(p) => live.push(p.data.seq),
            ServerFrame::Recovered(r) => {
                assert!(recovered.is_none(), "one recovered frame");
                recovered = Some(r.last_seq);
            }
            _ => {}
        }
        let last = live.last().or(replayed.last()).copied();
        if recovered.is_some() && last == Some(until) {
            return (replayed, recovered.unwrap_or_default(), live);
        }
    }
}

async fn recovery_replays_any_backlog_in_order(backend: Backend) {
    const SEEN: u64 = 5;
    const BEHIND: u64 = 50_000;
    const LIVE: u64 = 20;
    let Some((server, alice, bob, ward)) = ward(backend).await else {
        return;
    };
    let started = std::time::Instant::now();
    seed(&server, ward, &alice, 1..=SEEN + BEHIND).await;
    let seeded = started.elapsed();
    let stored = SEEN + BEHIND;

    let mut b = server.client(&bob, Encoding::Json).await;
    b.join(ward, None).await.expect("join");
    let mut rejoining = Vec::new();
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        let mut c = server.client(&alice, encoding).await;
        let view = c.join(ward, Some(SEEN)).await.expect("join");
        assert!(view.recovered, "{view:?}");
        assert_eq!(view.last_seq, stored);
        rejoining.push(c);
    }
    // Live messages while both replays run.
    let live = async {
        for i in 1..=LIVE {
            let ack = b
                .ack(ClientRequest::SendMessage(SendMessage::text(
                    ward,
                    format!("live {i}"),
                )))
                .await
                .expect("sent");
            assert!(matches!(ack.result, AckResult::Sent(s) if s.seq == stored + i));
        }
    };
    let total = stored + LIVE;
    let [first, second] = &mut rejoining[..] else {
        unreachable!()
    };
    let ((), a, b2) = tokio::join!(live, recover(first, total), recover(second, total));
    for (replayed, recovered, live) in [a, b2] {
        assert_eq!(replayed.last().copied(), Some(recovered));
        assert!(recovered >= stored, "{recovered}");
        let all: Vec<u64> = replayed.into_iter().chain(live).collect();
        let expected: Vec<u64> = (SEEN + 1..=total).collect();
        assert!(
            all == expected,
            "gap, duplicate or disorder: {} seqs",
            all.len()
        );
    }
    println!(
        "{backend:?}: {BEHIND} seeded in {seeded:?}; two clients recovered in {:?}",
        started.elapsed() - seeded
    );

    // Nothing missed: `recovered` at once; no sinceSeq: no replay at all.
    let mut c = server.client(&alice, Encoding::MessagePack).await;
    assert!(c.join(ward, Some(total)).await.expect("join").recovered);
    match c
        .next_push_matching(T, |f| matches!(f, ServerFrame::Recovered(_)))
        .await
        .expect("recovered")
    {
        ServerFrame::Recovered(r) => assert_eq!((r.channel_id, r.last_seq), (ward, total)),
        _ => unreachable!(),
    }
    let mut c = server.client(&alice, Encoding::Json).await;
    assert!(!c.join(ward, None).await.expect("join").recovered);
    assert!(c
        .next_push_matching(Duration::from_millis(300), |f| matches!(
            f,
            ServerFrame::Recovered(_) | ServerFrame::NewMessage(_)
        ))
        .await
        .is_err());
    server.stop().await;
}

/// The next `message_status` push on `c`, or `None` within `wait`.
async fn status(c: &mut Client, wait: Duration) -> Option<MessageStatus> {
    match c
        .next_push_matching(wait, |f| matches!(f, ServerFrame::MessageStatus(_)))
        .await
    {
        Ok(ServerFrame::MessageStatus(s)) => Some(s),
        _ => None,
    }
}

/// `GET /api/channels/:id/receipts` as `token`: the status and, on 200,
/// `{userId: (deliveredSeq, readSeq)}`.
async fn receipts(
    server: &TestServer,
    token: &str,
    channel: ChannelId,
) -> (u16, std::collections::HashMap<String, (u64, u64)>) {
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/api/channels/{channel}/receipts",
            server.http_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.expect("json");
    let positions = body["receipts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let seq = |k: &str| r[k].as_u64().expect("a seq");
            let user = r["userId"].as_str().expect("userId").to_owned();
            (user, (seq("deliveredSeq"), seq("readSeq")))
        })
        .collect();
    (status, positions)
}

async fn delivery_status_goes_sent_delivered_read(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let carol = server.user("carol", Role::User).await;
    let pairs = [
        (Encoding::MessagePack, Encoding::Json),
        (Encoding::Json, Encoding::MessagePack),
    ];
    for (i, (ea, eb)) in pairs.into_iter().enumerate() {
        let alice = server.user(&format!("alice{i}"), Role::User).await;
        let bob = server.user(&format!("bob{i}"), Role::User).await;
        let mut a = server.client(&alice, ea).await;
        let ch = match a
            .ack(ClientRequest::OpenDirect(OpenDirect { user_id: bob.id }))
            .await
            .expect("open_direct")
            .result
        {
            AckResult::Channel(view) => view.id,
            other => panic!("unexpected {other:?}"),
        };
        let mut b = server.client(&bob, eb).await;
        b.join(ch, None).await.expect("join");

        // sent (the ack), delivered (bob's connection has it), read.
        let first = sent(
            a.ack(ClientRequest::SendMessage(SendMessage::text(ch, "hi")))
                .await,
        );
        let delivered = status(&mut a, T).await.expect("delivered");
        assert_eq!(
            (
                delivered.channel_id,
                delivered.user_id,
                delivered.seq,
                delivered.status
            ),
            (ch, bob.id, first.seq, DeliveryStatus::Delivered)
        );
        b.ack(ClientRequest::ReadReceipt(ReadReceipt {
            channel_id: ch,
            up_to: ReadPosition::Seq(first.seq),
        }))
        .await
        .expect("read");
        let read = status(&mut a, T).await.expect("read");
        assert_eq!(
            (read.user_id, read.seq, read.status),
            (bob.id, first.seq, DeliveryStatus::Read)
        );
        assert!(
            status(&mut b, Duration::from_millis(200)).await.is_none(),
            "not to the reader"
        );
        let (code, positions) = receipts(&server, &alice.token, ch).await;
        assert_eq!(code, 200);
        assert_eq!(positions[&bob.id.to_string()], (1, 1));
        assert_eq!(positions[&alice.id.to_string()], (1, 0));

        // Bob leaves: his position is kept (and stored), nothing more is
        // delivered until he recovers.
        b.ack(ClientRequest::LeaveChannel(LeaveChannel { channel_id: ch }))
            .await
            .expect("leave");
        let second = sent(
            a.ack(ClientRequest::SendMessage(SendMessage::text(ch, "there?")))
                .await,
        );
        assert!(status(&mut a, Duration::from_millis(300)).await.is_none());
        assert_eq!(
            receipts(&server, &alice.token, ch).await.1[&bob.id.to_string()],
            (1, 1)
        );
        let stored = support::server::eventually(T, async || {
            let member = server.app.store.get_member(ch, bob.id).await;
            member
                .ok()
                .flatten()
                .is_some_and(|m| m.last_delivered_seq == 1)
        })
        .await;
        assert!(stored, "delivered position stored on leave");
        let view = b.join(ch, Some(first.seq)).await.expect("rejoin");
        assert!(view.recovered);
        let delivered = status(&mut a, T).await.expect("delivered on recovery");
        assert_eq!(
            (delivered.user_id, delivered.seq, delivered.status),
            (bob.id, second.seq, DeliveryStatus::Delivered)
        );
        assert_eq!(
            receipts(&server, &bob.token, ch).await.1[&bob.id.to_string()],
            (2, 1)
        );
        // Members only.
        assert_eq!(receipts(&server, &carol.token, ch).await.0, 403);
    }
    server.stop().await;
}
