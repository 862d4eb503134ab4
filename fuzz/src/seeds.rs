//! The seed corpus: every client frame type in both encodings (for
//! `connection`, each after a valid `authenticate`), the server frames, and
//! a few hostile inputs. `cargo run --example seeds` writes it under
//! `corpus/<target>/`, and the minimized reproducers of crashes found and
//! not fixed yet under `crashes/<target>/` (not in the corpus: libFuzzer
//! stops at the first crash while loading it).

use std::collections::BTreeMap;

use courier_protocol::codec::{encode_client, encode_server, Encoding};
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId, SessionId, UserId};

use crate::{ids, Op};

/// One request of every type (and both `read_receipt` positions), naming
/// the fuzz server's channels, users and the boot message.
pub fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    let member = ChannelId(ids::MEMBER);
    let message = MessageId(ids::MESSAGE_PLACEHOLDER);
    let requests = vec![
        (
            "authenticate",
            ClientRequest::Authenticate(Authenticate::new("not.a.token")),
        ),
        (
            "join_channel",
            ClientRequest::JoinChannel(JoinChannel {
                channel_id: member,
                since_seq: Some(0),
            }),
        ),
        (
            "join_public",
            ClientRequest::JoinChannel(JoinChannel {
                channel_id: ChannelId(ids::PUBLIC),
                since_seq: None,
            }),
        ),
        (
            "join_foreign",
            ClientRequest::JoinChannel(JoinChannel {
                channel_id: ChannelId(ids::FOREIGN),
                since_seq: None,
            }),
        ),
        (
            "leave_channel",
            ClientRequest::LeaveChannel(LeaveChannel { channel_id: member }),
        ),
        (
            "send_message",
            ClientRequest::SendMessage(SendMessage {
                channel_id: member,
                text: "hello".into(),
                client_msg_id: Some("c1".into()),
                contains_phi: false,
                reply_to: Some(message),
                ttl_seconds: Some(60),
            }),
        ),
        (
            "send_broadcast",
            ClientRequest::SendMessage(SendMessage::text(ChannelId(ids::BROADCAST), "hi")),
        ),
        (
            "send_foreign",
            ClientRequest::SendMessage(SendMessage::text(ChannelId(ids::FOREIGN), "hi")),
        ),
        (
            "edit_message",
            ClientRequest::EditMessage(EditMessage {
                message_id: message,
                text: "edited".into(),
            }),
        ),
        (
            "delete_message",
            ClientRequest::DeleteMessage(DeleteMessage {
                message_id: message,
            }),
        ),
        (
            "typing_indicator",
            ClientRequest::TypingIndicator(TypingIndicator {
                channel_id: member,
                is_typing: true,
            }),
        ),
        (
            "read_receipt_seq",
            ClientRequest::ReadReceipt(ReadReceipt {
                channel_id: member,
                up_to: ReadPosition::Seq(1),
            }),
        ),
        (
            "read_receipt_message",
            ClientRequest::ReadReceipt(ReadReceipt {
                channel_id: member,
                up_to: ReadPosition::Message(message),
            }),
        ),
        (
            "fetch_history",
            ClientRequest::FetchHistory(FetchHistory {
                channel_id: member,
                before_seq: Some(10),
                limit: Some(5),
            }),
        ),
        (
            "add_reaction",
            ClientRequest::AddReaction(Reaction {
                message_id: message,
                reaction: "+1".into(),
            }),
        ),
        (
            "remove_reaction",
            ClientRequest::RemoveReaction(Reaction {
                message_id: message,
                reaction: "+1".into(),
            }),
        ),
        (
            "open_direct",
            ClientRequest::OpenDirect(OpenDirect {
                user_id: UserId(ids::HEALTHY),
            }),
        ),
        (
            "set_status",
            ClientRequest::SetStatus(SetStatus {
                status: UserStatus::Away,
            }),
        ),
        ("ping", ClientRequest::Ping),
        ("heartbeat", ClientRequest::Heartbeat),
    ];
    requests
        .into_iter()
        .enumerate()
        .map(|(i, (name, request))| (name, ClientFrame::new(request).with_ref(i as u32 + 2)))
        .collect()
}

/// One frame of every server type.
pub fn server_frames() -> Vec<ServerFrame> {
    let channel = ChannelId(ids::MEMBER);
    let message = MessageId(ids::MESSAGE_PLACEHOLDER);
    let user = UserId(ids::HEALTHY);
    let view = MessageView {
        id: message,
        channel_id: channel,
        seq: 1,
        sender_id: user,
        sender: "healthy".into(),
        text: "hello".into(),
        timestamp: 1,
        contains_phi: false,
        reply_to: None,
        edited_at: Some(2),
        expires_at: None,
        flagged: None,
        flag_reason: None,
        flagged_by: None,
        flagged_at: None,
        kind: Default::default(),
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    vec![
        ServerFrame::ack(Some(Ref::Int(1))),
        ServerFrame::Ack(Ack {
            reference: Some(Ref::Int(2)),
            result: AckResult::Sent(SendResult {
                message_id: message,
                seq: 1,
                timestamp: 1,
                duplicate: false,
            }),
        }),
        ServerFrame::Ack(Ack {
            reference: Some(Ref::Str("j".into())),
            result: AckResult::Channel(ChannelView {
                id: channel,
                name: "member".into(),
                kind: ChannelKindWire::Private,
                last_seq: 1,
                last_read_seq: 0,
                unread: 1,
                recovered: true,
                online: vec![user],
                archived: false,
            }),
        }),
        ServerFrame::error(Some(Ref::Int(3)), ErrorCode::RateLimited, "slow down"),
        ServerFrame::AuthenticationResponse(AuthenticationResponse {
            reference: None,
            result: Ok(AuthSuccess {
                user: AuthUser {
                    id: user,
                    username: "healthy".into(),
                    role: "user".into(),
                },
                session_id: SessionId(ids::MESSAGE_PLACEHOLDER),
                server_time: 1,
                heartbeat_ms: 30_000,
                frames: courier_protocol::compact::FrameStyle::Standard,
            }),
        }),
        ServerFrame::AuthenticationResponse(AuthenticationResponse {
            reference: None,
            result: Err(ErrorBody {
                code: ErrorCode::AuthFailed,
                message: "no".into(),
            }),
        }),
        ServerFrame::Pong(Pong {
            reference: Some(Ref::Int(4)),
            server_time: 1,
        }),
        ServerFrame::History(History {
            reference: Some(Ref::Int(5)),
            channel_id: channel,
            messages: vec![view.clone()],
            has_more: false,
        }),
        ServerFrame::new_message(view.clone()),
        ServerFrame::MessageUpdated(MessagePush { data: view }),
        ServerFrame::MessageDeleted(MessageDeletedPush {
            data: MessageDeleted {
                message_id: message,
                channel_id: channel,
                seq: 1,
            },
        }),
        ServerFrame::Typing(Typing {
            channel_id: channel,
            user_id: user,
            is_typing: true,
        }),
        ServerFrame::ReadReceipt(ReadReceiptPush {
            channel_id: channel,
            user_id: user,
            seq: 1,
        }),
        ServerFrame::ReactionUpdated(ReactionUpdated {
            channel_id: channel,
            message_id: message,
            reactions: BTreeMap::from([("+1".to_owned(), 2)]),
        }),
        ServerFrame::Presence(Presence {
            user_id: user,
            status: PresenceStatus::Offline,
            last_seen: 1,
        }),
        ServerFrame::shutdown(),
        ServerFrame::Notification(Notification {
            data: serde_json::json!({"a": [1, 2.5, null, {"b": "c"}]}),
        }),
        ServerFrame::Recovered(Recovered {
            channel_id: channel,
            last_seq: 1,
        }),
        ServerFrame::MessageStatus(MessageStatus {
            channel_id: channel,
            user_id: user,
            seq: 1,
            status: DeliveryStatus::Read,
        }),
    ]
}

/// Hostile frames, each as (name, MessagePack bytes or JSON text).
fn hostile() -> Vec<(&'static str, Op)> {
    let mut deep = Vec::new();
    deep.extend_from_slice(&[0x82, 0xa4]);
    deep.extend_from_slice(b"type");
    deep.extend_from_slice(&[0xa4]);
    deep.extend_from_slice(b"ping");
    deep.extend_from_slice(&[0xa4]);
    deep.extend_from_slice(b"data");
    deep.extend(std::iter::repeat_n(0x91, 64));
    deep.push(0xc0);
    vec![
        // A truncated send_message.
        ("truncated_msgpack", {
            let frame = &client_frames()[5].1;
            let bytes = encode_client(frame, Encoding::MessagePack);
            Op::Binary(bytes[..bytes.len() / 2].to_vec())
        }),
        ("reserved_c1", Op::Binary(vec![0x81, 0xa4, b't', b'y', b'p', b'e', 0xc1])),
        (
            "str32_huge_prefix",
            Op::Binary(vec![
                0x81, 0xa4, b't', b'y', b'p', b'e', 0xdb, 0xff, 0xff, 0xff, 0xff,
            ]),
        ),
        ("array32_huge_prefix", Op::Binary(vec![0xdd, 0xff, 0xff, 0xff, 0xff])),
        ("deep_nesting", Op::Binary(deep)),
        (
            "ext_type",
            Op::Binary(vec![
                0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa1, b'x',
                0xd4, 0x01, 0x00,
            ]),
        ),
        (
            "nan",
            Op::Binary(vec![
                0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa1, b'x',
                0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0,
            ]),
        ),
        (
            "duplicate_keys_json",
            Op::Text(br#"{"type":"ping","type":"ping"}"#.to_vec()),
        ),
        (
            "wrong_types_json",
            Op::Text(
                br#"{"type":"send_message","ref":1,"channelId":7,"text":["x"],"containsPHI":"yes"}"#
                    .to_vec(),
            ),
        ),
        ("invalid_utf8_text", Op::Text(vec![b'{', 0xff, 0xfe, b'}'])),
        (
            "nul_and_rtl",
            Op::Text(
                format!(
                    r#"{{"type":"send_message","channelId":"{}","text":"a\u0000b\u202ec\u0301\u0301"}}"#,
                    ids::MEMBER
                )
                .into_bytes(),
            ),
        ),
        (
            "huge_seq_and_limit",
            Op::Text(
                format!(
                    r#"{{"type":"fetch_history","channelId":"{}","beforeSeq":18446744073709551615,"limit":4294967295}}"#,
                    ids::MEMBER
                )
                .into_bytes(),
            ),
        ),
        (
            "negative_seq",
            Op::Text(
                format!(
                    r#"{{"type":"read_receipt","ref":"r","channelId":"{}","seq":-1}}"#,
                    ids::MEMBER
                )
                .into_bytes(),
            ),
        ),
        (
            "fragmented_json",
            Op::Fragmented {
                text: true,
                body: br#"{"type":"ping","ref":"frag"}"#.to_vec(),
            },
        ),
        ("oversize", Op::Oversize(b"\x81\xa4type".to_vec())),
        ("control_ping", Op::Ping(b"hello".to_vec())),
        ("control_pong", Op::Pong(Vec::new())),
        (
            "reserved_opcode",
            Op::Raw {
                header: 0x83,
                body: vec![1, 2, 3],
            },
        ),
        (
            "rsv_bits",
            Op::Raw {
                header: 0xc1,
                body: br#"{"type":"ping"}"#.to_vec(),
            },
        ),
        (
            "long_control_frame",
            Op::Raw {
                header: 0x89,
                body: vec![0; 200],
            },
        ),
        (
            "close_bad_code",
            Op::Raw {
                header: 0x88,
                body: vec![0x03, 0xe7],
            },
        ),
        (
            "unfinished_fragment",
            Op::Raw {
                header: 0x01,
                body: br#"{"type":"#.to_vec(),
            },
        ),
    ]
}

/// The `frame_decode` seeds: every client and server frame in both
/// encodings and the hostile frames' bytes.
pub fn frame_decode() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, frame) in client_frames() {
        out.push((
            format!("client_{name}.msgpack"),
            encode_client(&frame, Encoding::MessagePack).to_vec(),
        ));
        out.push((
            format!("client_{name}.json"),
            encode_client(&frame, Encoding::Json).to_vec(),
        ));
    }
    for frame in server_frames() {
        let name = frame.type_name();
        let n = out.len();
        out.push((
            format!("server_{name}_{n}.msgpack"),
            encode_server(&frame, Encoding::MessagePack).to_vec(),
        ));
        out.push((
            format!("server_{name}_{n}.json"),
            encode_server(&frame, Encoding::Json).to_vec(),
        ));
    }
    for (name, op) in hostile() {
        match op {
            Op::Binary(b) | Op::Text(b) => out.push((format!("hostile_{name}"), b)),
            _ => {}
        }
    }
    out
}

/// The `connection` seeds: every client frame in both encodings after a
/// valid `authenticate` (in the same encoding), a frame before
/// authenticating, a wrong token, a session that does everything once, and
/// each hostile frame after authenticating.
pub fn connection() -> Vec<(String, Vec<u8>)> {
    let frame_op = |frame: &ClientFrame, encoding| {
        let bytes = encode_client(frame, encoding).to_vec();
        match encoding {
            Encoding::MessagePack => Op::Binary(bytes),
            Encoding::Json => Op::Text(bytes),
        }
    };
    let auth = |msgpack| Op::Authenticate {
        msgpack,
        corrupt: None,
    };
    let mut out = Vec::new();
    for (encoding, ext, msgpack) in [
        (Encoding::MessagePack, "msgpack", true),
        (Encoding::Json, "json", false),
    ] {
        for (name, frame) in client_frames() {
            let ops = [auth(msgpack), frame_op(&frame, encoding), Op::Sync];
            out.push((format!("{name}.{ext}"), crate::encode(&ops)));
        }
        let everything: Vec<Op> = std::iter::once(auth(msgpack))
            .chain(
                client_frames()
                    .iter()
                    .filter(|(name, _)| *name != "authenticate")
                    .map(|(_, frame)| frame_op(frame, encoding)),
            )
            .chain([Op::Sync, Op::Close])
            .collect();
        out.push((format!("session.{ext}"), crate::encode(&everything)));
        let (_, ping) = &client_frames()[client_frames().len() - 2];
        out.push((
            format!("unauthenticated.{ext}"),
            crate::encode(&[frame_op(ping, encoding), auth(msgpack)]),
        ));
        out.push((
            format!("forged_token.{ext}"),
            crate::encode(&[
                Op::Authenticate {
                    msgpack,
                    corrupt: Some(40),
                },
                frame_op(ping, encoding),
            ]),
        ));
    }
    for (name, op) in hostile() {
        let ops = [auth(false), op, Op::Sync];
        out.push((format!("hostile_{name}"), crate::encode(&ops)));
    }
    out
}

/// Reproducers of crashes found by the `connection` target whose fix is
/// pending (fuzz/README.md), by name.
pub fn connection_crashes() -> Vec<(String, Vec<u8>)> {
    let join = ClientFrame::new(ClientRequest::JoinChannel(JoinChannel {
        channel_id: ChannelId(ids::MEMBER),
        since_seq: None,
    }));
    let join = Op::Text(encode_client(&join, Encoding::Json).to_vec());
    // Before authenticating: `error` and a graceful close 4001, whose frame
    // the writer subtracts from the unwritten count without it ever having
    // been added; then pings whose pongs (22 bytes) are longer than that
    // close frame (21 bytes): `Outbound::push` overflows when a pong is
    // pushed after the close frame is written and before the actor stops
    // reading (a race: about one run in three).
    let pings = std::iter::repeat_n(Op::Ping(vec![b'p'; 20]), 100);
    let ops: Vec<Op> = std::iter::once(join).chain(pings).collect();
    vec![(
        "outbound_close_underflow".to_owned(),
        crate::encode(&ops),
    )]
}
