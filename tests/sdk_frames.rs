//! The TypeScript SDK's frames, checked against the Rust protocol (issue 33).
//!
//! Every request and every answer/push type of docs/protocol.md is built here
//! from the `courier_protocol` types and encoded with its codec, in JSON and
//! MessagePack, into `sdk/typescript/test/fixtures/frames.json`. This test
//! regenerates that fixture and fails when the committed one differs (run
//! with `COURIER_BLESS=1` to rewrite it). The other direction:
//!
//! - `sdk/typescript/test/frames.test.ts` (run by `npm test`) decodes every
//!   server frame of the fixture with the SDK's decoder, in both encodings,
//!   and checks the typed result field by field; it encodes every client
//!   frame with the SDK's encoder and writes those bytes (and its reading of
//!   each server frame) to `$COURIER_FRAMES_OUT`;
//! - `tests/sdk_typescript.rs` runs `npm test` with that variable set and
//!   decodes what the SDK wrote with [`decode_client`] / [`decode_server`],
//!   failing unless each equals the frame it came from.
//!
//! The compact `m` push is left out: the SDK never asks for it.

use std::{collections::BTreeMap, path::PathBuf};

use courier_protocol::{
    codec::{encode_client, encode_server, Encoding},
    compact::FrameStyle,
    frames::{
        Ack, AckResult, AuthSuccess, AuthUser, Authenticate, AuthenticationResponse,
        ChannelKindWire, ChannelView, DeleteMessage, DeliveryStatus, EditMessage, ErrorBody,
        ErrorFrame, FetchHistory, FlagMessage, History, JoinChannel, LeaveChannel, MessageDeleted,
        MessageDeletedPush, MessageFlagged, MessagePush, MessageStatus, MessageView, Notification,
        OpenDirect, Pong, Presence, PresenceStatus, Reaction, ReactionUpdated, ReadPosition,
        ReadReceipt, ReadReceiptPush, Recovered, SendMessage, SendResult, SetStatus, SystemEvent,
        Typing, TypingIndicator, UnflagMessage, UserStatus,
    },
    ChannelId, ClientFrame, ClientRequest, ErrorCode, MessageId, Ref, ServerFrame, SessionId,
    UserId,
};
use serde_json::{json, Value};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk/typescript/test/fixtures/frames.json")
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("a UUID")
}

const ALICE: &str = "0b5e6c1a-3f1d-4c2a-9e51-7a0d2f4b8c01";
const BOB: &str = "0b5e6c1a-3f1d-4c2a-9e51-7a0d2f4b8c02";
const WARD: &str = "c4a1e0f2-6b7d-4e38-a9c5-1d2e3f405060";
const MSG: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
const MSG2: &str = "01890a5d-ac96-774b-bcce-b302099a8058";
const FILE: &str = "5f0c2b7e-1d3a-4e6f-8a9b-0c1d2e3f4a5b";
const SESSION: &str = "5e55a0e1-8c2d-4f1e-9a3b-000000000001";
/// The largest seq a JavaScript number holds exactly.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// Every client frame of docs/protocol.md section 5, named.
fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    let ward: ChannelId = id(WARD);
    let msg: MessageId = id(MSG);
    let f = |r: ClientRequest| ClientFrame::new(r);
    vec![
        (
            "authenticate",
            f(ClientRequest::Authenticate(Authenticate::new(
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
            )))
            .with_ref(1u32),
        ),
        (
            "authenticate compact, string ref",
            ClientFrame {
                reference: Some(Ref::Str("auth-1".into())),
                request: ClientRequest::Authenticate(Authenticate {
                    token: "t".into(),
                    frames: FrameStyle::Compact,
                }),
            },
        ),
        (
            "join_channel",
            f(ClientRequest::JoinChannel(JoinChannel {
                channel_id: ward,
                since_seq: None,
            }))
            .with_ref(2u32),
        ),
        (
            "join_channel sinceSeq",
            f(ClientRequest::JoinChannel(JoinChannel {
                channel_id: ward,
                since_seq: Some(MAX_SAFE),
            }))
            .with_ref(2u32),
        ),
        (
            "leave_channel",
            f(ClientRequest::LeaveChannel(LeaveChannel {
                channel_id: ward,
            }))
            .with_ref(3u32),
        ),
        (
            "send_message",
            f(ClientRequest::SendMessage(SendMessage::text(ward, "hi"))).with_ref(4u32),
        ),
        (
            "send_message every field",
            f(ClientRequest::SendMessage(SendMessage {
                channel_id: ward,
                text: "Bed 4 needs a fluid check <b>now</b> \u{1F489} \u{0}end".into(),
                client_msg_id: Some("a1b2c3d4-0000-4000-8000-000000000001".into()),
                contains_phi: true,
                reply_to: Some(msg),
                ttl_seconds: Some(u32::MAX),
                attachments: vec![id(FILE)],
                patient_ref: None,
            }))
            .with_ref(Ref::Int(-(MAX_SAFE as i64))),
        ),
        (
            "edit_message",
            f(ClientRequest::EditMessage(EditMessage {
                message_id: msg,
                text: "edited".into(),
            }))
            .with_ref(5u32),
        ),
        (
            "delete_message",
            f(ClientRequest::DeleteMessage(DeleteMessage {
                message_id: msg,
            }))
            .with_ref(6u32),
        ),
        (
            "typing_indicator",
            f(ClientRequest::TypingIndicator(TypingIndicator {
                channel_id: ward,
                is_typing: true,
            })),
        ),
        (
            "typing_indicator stopped",
            f(ClientRequest::TypingIndicator(TypingIndicator {
                channel_id: ward,
                is_typing: false,
            })),
        ),
        (
            "read_receipt seq",
            f(ClientRequest::ReadReceipt(ReadReceipt {
                channel_id: ward,
                up_to: ReadPosition::Seq(42),
            }))
            .with_ref(8u32),
        ),
        (
            "read_receipt messageId",
            f(ClientRequest::ReadReceipt(ReadReceipt {
                channel_id: ward,
                up_to: ReadPosition::Message(msg),
            }))
            .with_ref(9u32),
        ),
        (
            "fetch_history",
            f(ClientRequest::FetchHistory(FetchHistory {
                channel_id: ward,
                before_seq: None,
                limit: None,
            }))
            .with_ref(10u32),
        ),
        (
            "fetch_history beforeSeq limit",
            f(ClientRequest::FetchHistory(FetchHistory {
                channel_id: ward,
                before_seq: Some(141),
                limit: Some(100),
            }))
            .with_ref(10u32),
        ),
        (
            "add_reaction",
            f(ClientRequest::AddReaction(Reaction {
                message_id: msg,
                reaction: "\u{1F44D}".into(),
            }))
            .with_ref(11u32),
        ),
        (
            "remove_reaction",
            f(ClientRequest::RemoveReaction(Reaction {
                message_id: msg,
                reaction: "\u{1F44D}".into(),
            }))
            .with_ref(12u32),
        ),
        (
            "open_direct",
            f(ClientRequest::OpenDirect(OpenDirect { user_id: id(BOB) })).with_ref(13u32),
        ),
        (
            "set_status away",
            f(ClientRequest::SetStatus(SetStatus {
                status: UserStatus::Away,
            }))
            .with_ref(14u32),
        ),
        (
            "set_status online",
            f(ClientRequest::SetStatus(SetStatus {
                status: UserStatus::Online,
            }))
            .with_ref(14u32),
        ),
        (
            "flag_message",
            f(ClientRequest::FlagMessage(FlagMessage {
                message_id: msg,
                reason: "Patient name in a public channel".into(),
            }))
            .with_ref(16u32),
        ),
        (
            "unflag_message",
            f(ClientRequest::UnflagMessage(UnflagMessage {
                message_id: msg,
            }))
            .with_ref(17u32),
        ),
        ("ping", f(ClientRequest::Ping).with_ref(15u32)),
        ("heartbeat", f(ClientRequest::Heartbeat)),
    ]
}

fn message(seq: u64) -> MessageView {
    MessageView {
        id: id(MSG),
        channel_id: id(WARD),
        seq,
        sender_id: id(ALICE),
        sender: "alice".into(),
        text: "On my way".into(),
        timestamp: 1_760_000_000_123,
        contains_phi: false,
        reply_to: None,
        edited_at: None,
        expires_at: None,
        flagged: None,
        flag_reason: None,
        flagged_by: None,
        flagged_at: None,
        kind: Default::default(),
        attachments: Vec::new(),
        patient_ref: None,
        mentions: Vec::new(),
    }
}

fn full_message() -> MessageView {
    MessageView {
        text: "Bed 4 <script>alert(1)</script> \u{1F489}".into(),
        contains_phi: true,
        reply_to: Some(id(MSG2)),
        edited_at: Some(1_760_000_060_000),
        expires_at: Some(1_760_086_400_123),
        kind: courier_protocol::frames::MessageKind::Image,
        attachments: vec![courier_protocol::frames::AttachmentView {
            id: id(FILE),
            name: "wound \u{1F4F7}.png".into(),
            mime: "image/png".into(),
            size: 48_213,
        }],
        patient_ref: Some(
            "urn:oid:1.2.36.146.595.217.0.1|MRN-0042"
                .parse()
                .expect("a reference"),
        ),
        ..message(MAX_SAFE)
    }
}

fn channel(recovered: bool) -> ChannelView {
    ChannelView {
        id: id(WARD),
        name: "ward-7".into(),
        kind: ChannelKindWire::Public,
        last_seq: 42,
        last_read_seq: 40,
        unread: 2,
        recovered,
        online: vec![id(ALICE), id(BOB)],
        archived: false,
        patient_ref: recovered.then(|| "Patient/ward-7".parse().expect("a reference")),
    }
}

/// Every answer and push of docs/protocol.md section 6 but `m`, named.
fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let ward: ChannelId = id(WARD);
    let msg: MessageId = id(MSG);
    let bob: UserId = id(BOB);
    vec![
        ("ack", ServerFrame::ack(Some(Ref::Int(3)))),
        ("ack without ref", ServerFrame::ack(None)),
        (
            "ack send_message",
            ServerFrame::Ack(Ack {
                reference: Some(Ref::Int(4)),
                result: AckResult::Sent(SendResult {
                    message_id: msg,
                    seq: 42,
                    timestamp: 1_760_000_000_123,
                    duplicate: false,
                }),
            }),
        ),
        (
            "ack send_message duplicate",
            ServerFrame::Ack(Ack {
                reference: Some(Ref::Str("send-7".into())),
                result: AckResult::Sent(SendResult {
                    message_id: msg,
                    seq: MAX_SAFE,
                    timestamp: 1_760_000_000_123,
                    duplicate: true,
                }),
            }),
        ),
        (
            "ack join_channel",
            ServerFrame::Ack(Ack {
                reference: Some(Ref::Int(2)),
                result: AckResult::Channel(channel(true)),
            }),
        ),
        (
            "ack join_channel archived",
            ServerFrame::Ack(Ack {
                reference: Some(Ref::Int(2)),
                result: AckResult::Channel(ChannelView {
                    archived: true,
                    ..channel(false)
                }),
            }),
        ),
        (
            "ack open_direct",
            ServerFrame::Ack(Ack {
                reference: Some(Ref::Int(13)),
                result: AckResult::Channel(ChannelView {
                    kind: ChannelKindWire::Direct,
                    online: vec![],
                    archived: false,
                    recovered: false,
                    ..channel(false)
                }),
            }),
        ),
        (
            "error",
            ServerFrame::error(
                Some(Ref::Int(7)),
                ErrorCode::Forbidden,
                "not a member of this channel",
            ),
        ),
        (
            "error rate_limited",
            ServerFrame::Error(ErrorFrame {
                reference: Some(Ref::Int(13)),
                code: ErrorCode::RateLimited,
                message: "60 messages per minute".into(),
                retry_after_ms: Some(2400),
            }),
        ),
        (
            "error without ref",
            ServerFrame::error(
                None,
                ErrorCode::Internal,
                "recovery failed; page with fetch_history",
            ),
        ),
        (
            "authentication_response",
            ServerFrame::AuthenticationResponse(AuthenticationResponse {
                reference: Some(Ref::Int(1)),
                result: Ok(AuthSuccess {
                    user: AuthUser {
                        id: id(ALICE),
                        username: "alice".into(),
                        role: "user".into(),
                    },
                    session_id: id::<SessionId>(SESSION),
                    server_time: 1_760_000_000_000,
                    heartbeat_ms: 30_000,
                    frames: FrameStyle::Standard,
                }),
            }),
        ),
        (
            "authentication_response compact",
            ServerFrame::AuthenticationResponse(AuthenticationResponse {
                reference: Some(Ref::Str("auth-1".into())),
                result: Ok(AuthSuccess {
                    user: AuthUser {
                        id: id(ALICE),
                        username: "alice".into(),
                        role: "super_admin".into(),
                    },
                    session_id: id::<SessionId>(SESSION),
                    server_time: 1_760_000_000_000,
                    heartbeat_ms: 1_000,
                    frames: FrameStyle::Compact,
                }),
            }),
        ),
        (
            "authentication_response failure",
            ServerFrame::AuthenticationResponse(AuthenticationResponse {
                reference: Some(Ref::Int(1)),
                result: Err(ErrorBody {
                    code: ErrorCode::AuthFailed,
                    message: "invalid token".into(),
                }),
            }),
        ),
        (
            "pong",
            ServerFrame::Pong(Pong {
                reference: Some(Ref::Int(15)),
                server_time: 1_760_000_000_456,
            }),
        ),
        (
            "pong without ref",
            ServerFrame::Pong(Pong {
                reference: None,
                server_time: 1_760_000_000_456,
            }),
        ),
        (
            "history",
            ServerFrame::History(History {
                reference: Some(Ref::Int(10)),
                channel_id: ward,
                messages: vec![message(40), full_message()],
                has_more: true,
            }),
        ),
        (
            "history with flags",
            ServerFrame::History(History {
                reference: Some(Ref::Int(10)),
                channel_id: ward,
                messages: vec![
                    MessageView {
                        flagged: Some(false),
                        ..message(40)
                    },
                    MessageView {
                        flagged: Some(true),
                        flag_reason: Some("Patient name in a public channel".into()),
                        flagged_by: Some(id(BOB)),
                        flagged_at: Some(1_760_000_200_000),
                        kind: Default::default(),
                        attachments: Vec::new(),
                        ..message(41)
                    },
                ],
                has_more: false,
            }),
        ),
        (
            "history empty",
            ServerFrame::History(History {
                reference: Some(Ref::Int(10)),
                channel_id: ward,
                messages: vec![],
                has_more: false,
            }),
        ),
        ("new_message", ServerFrame::new_message(message(42))),
        (
            "new_message every field",
            ServerFrame::new_message(full_message()),
        ),
        (
            "message_flagged",
            ServerFrame::MessageFlagged(MessageFlagged {
                channel_id: ward,
                message_id: msg,
                seq: 42,
                flagged: true,
                flag_reason: Some("Patient name <b>here</b>".into()),
                flagged_by: Some(id(BOB)),
                flagged_at: Some(1_760_000_200_000),
            }),
        ),
        (
            "message_flagged cleared",
            ServerFrame::MessageFlagged(MessageFlagged {
                channel_id: ward,
                message_id: msg,
                seq: 42,
                flagged: false,
                flag_reason: None,
                flagged_by: None,
                flagged_at: None,
            }),
        ),
        (
            "message_updated",
            ServerFrame::MessageUpdated(MessagePush {
                data: full_message(),
            }),
        ),
        (
            "message_deleted",
            ServerFrame::MessageDeleted(MessageDeletedPush {
                data: MessageDeleted {
                    message_id: msg,
                    channel_id: ward,
                    seq: 42,
                },
            }),
        ),
        (
            "typing",
            ServerFrame::Typing(Typing {
                channel_id: ward,
                user_id: bob,
                is_typing: true,
            }),
        ),
        (
            "typing stopped",
            ServerFrame::Typing(Typing {
                channel_id: ward,
                user_id: bob,
                is_typing: false,
            }),
        ),
        (
            "read_receipt",
            ServerFrame::ReadReceipt(ReadReceiptPush {
                channel_id: ward,
                user_id: bob,
                seq: 42,
            }),
        ),
        (
            "reaction_updated",
            ServerFrame::ReactionUpdated(ReactionUpdated {
                channel_id: ward,
                message_id: msg,
                reactions: BTreeMap::from([
                    ("\u{1F44D}".to_owned(), 2),
                    ("\u{2705}".to_owned(), 1),
                ]),
            }),
        ),
        (
            "reaction_updated none left",
            ServerFrame::ReactionUpdated(ReactionUpdated {
                channel_id: ward,
                message_id: msg,
                reactions: BTreeMap::new(),
            }),
        ),
        (
            "presence online",
            ServerFrame::Presence(Presence {
                user_id: bob,
                status: PresenceStatus::Online,
                last_seen: 1_760_000_100_000,
            }),
        ),
        (
            "presence away",
            ServerFrame::Presence(Presence {
                user_id: bob,
                status: PresenceStatus::Away,
                last_seen: 1_760_000_100_000,
            }),
        ),
        (
            "presence offline",
            ServerFrame::Presence(Presence {
                user_id: bob,
                status: PresenceStatus::Offline,
                last_seen: 1_760_000_100_000,
            }),
        ),
        ("system_event shutdown", ServerFrame::shutdown()),
        (
            "system_event member_removed",
            ServerFrame::SystemEvent(SystemEvent {
                event_type: SystemEvent::MEMBER_REMOVED.into(),
                data: json!({"channelId": WARD, "userId": BOB}),
            }),
        ),
        (
            "system_event channel_deleted",
            ServerFrame::SystemEvent(SystemEvent {
                event_type: SystemEvent::CHANNEL_DELETED.into(),
                data: json!({"channelId": WARD}),
            }),
        ),
        (
            "notification",
            ServerFrame::Notification(Notification {
                data: json!({"title": "Shift handover", "body": "Ward 7 handover at 19:00", "n": [1, 2.5, null, true]}),
            }),
        ),
        (
            "recovered",
            ServerFrame::Recovered(Recovered {
                channel_id: ward,
                last_seq: 50_042,
            }),
        ),
        (
            "message_status delivered",
            ServerFrame::MessageStatus(MessageStatus {
                channel_id: ward,
                user_id: bob,
                seq: 42,
                status: DeliveryStatus::Delivered,
            }),
        ),
        (
            "message_status read",
            ServerFrame::MessageStatus(MessageStatus {
                channel_id: ward,
                user_id: bob,
                seq: 42,
                status: DeliveryStatus::Read,
            }),
        ),
    ]
}

/// The `type` of every server frame variant; exhaustive, so a new variant
/// fails to compile here until the fixture covers it.
fn server_type(frame: &ServerFrame) -> Option<&'static str> {
    Some(match frame {
        ServerFrame::Ack(_) => "ack",
        ServerFrame::Error(_) => "error",
        ServerFrame::AuthenticationResponse(_) => "authentication_response",
        ServerFrame::Pong(_) => "pong",
        ServerFrame::History(_) => "history",
        ServerFrame::NewMessage(_) => "new_message",
        ServerFrame::CompactMessage(_) => return None,
        ServerFrame::MessageUpdated(_) => "message_updated",
        ServerFrame::MessageDeleted(_) => "message_deleted",
        ServerFrame::Typing(_) => "typing",
        ServerFrame::ReadReceipt(_) => "read_receipt",
        ServerFrame::ReactionUpdated(_) => "reaction_updated",
        ServerFrame::Presence(_) => "presence",
        ServerFrame::SystemEvent(_) => "system_event",
        ServerFrame::Notification(_) => "notification",
        ServerFrame::Recovered(_) => "recovered",
        ServerFrame::MessageStatus(_) => "message_status",
        ServerFrame::MessageFlagged(_) => "message_flagged",
    })
}

const SERVER_TYPES: [&str; 17] = [
    "ack",
    "error",
    "authentication_response",
    "pong",
    "history",
    "new_message",
    "message_updated",
    "message_deleted",
    "typing",
    "read_receipt",
    "reaction_updated",
    "presence",
    "system_event",
    "notification",
    "recovered",
    "message_status",
    "message_flagged",
];

const CLIENT_TYPES: [&str; 17] = [
    "authenticate",
    "join_channel",
    "leave_channel",
    "send_message",
    "edit_message",
    "delete_message",
    "typing_indicator",
    "read_receipt",
    "fetch_history",
    "add_reaction",
    "remove_reaction",
    "open_direct",
    "set_status",
    "flag_message",
    "unflag_message",
    "ping",
    "heartbeat",
];

fn entry(name: &str, json_bytes: &[u8], msgpack: &[u8]) -> Value {
    let json: Value = serde_json::from_slice(json_bytes).expect("the codec writes JSON");
    json!({ "name": name, "json": json, "msgpack": hex::encode(msgpack) })
}

fn fixture() -> Value {
    let client: Vec<Value> = client_frames()
        .iter()
        .map(|(name, f)| {
            entry(
                name,
                &encode_client(f, Encoding::Json),
                &encode_client(f, Encoding::MessagePack),
            )
        })
        .collect();
    let server: Vec<Value> = server_frames()
        .iter()
        .map(|(name, f)| {
            entry(
                name,
                &encode_server(f, Encoding::Json),
                &encode_server(f, Encoding::MessagePack),
            )
        })
        .collect();
    json!({
        "about": "Every frame of docs/protocol.md, encoded by courier_protocol::codec. Generated by tests/sdk_frames.rs: COURIER_BLESS=1 cargo test --test sdk_frames rewrites it. Checked by test/frames.test.ts.",
        "client": client,
        "server": server,
    })
}

#[test]
fn the_fixture_covers_every_frame_type() {
    let mut client: Vec<&str> = client_frames()
        .iter()
        .map(|(_, f)| f.request.type_name())
        .collect();
    client.sort_unstable();
    client.dedup();
    let mut want: Vec<&str> = CLIENT_TYPES.to_vec();
    want.sort_unstable();
    assert_eq!(client, want, "client frame types");

    let mut server: Vec<&str> = server_frames()
        .iter()
        .filter_map(|(_, f)| server_type(f))
        .collect();
    server.sort_unstable();
    server.dedup();
    let mut want: Vec<&str> = SERVER_TYPES.to_vec();
    want.sort_unstable();
    assert_eq!(server, want, "server frame types");
}

#[test]
fn the_committed_fixture_is_what_the_rust_protocol_produces() {
    let path = fixture_path();
    let now = fixture();
    let text = serde_json::to_string_pretty(&now).expect("serializable") + "\n";
    if std::env::var_os("COURIER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create fixtures/");
        std::fs::write(&path, &text).expect("write the fixture");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with COURIER_BLESS=1 cargo test --test sdk_frames",
            path.display()
        )
    });
    let committed: Value = serde_json::from_str(&committed).expect("the fixture is JSON");
    if committed != now {
        let mismatch = (0..)
            .map(|i| (i, committed["server"].get(i), now["server"].get(i)))
            .take_while(|(_, a, b)| a.is_some() || b.is_some())
            .find(|(_, a, b)| a != b)
            .map(|(i, a, b)| format!("server[{i}]: committed {a:?}, now {b:?}"))
            .unwrap_or_else(|| "in the client frames or the header".into());
        panic!(
            "{} differs from what courier_protocol encodes now ({mismatch}); \
             regenerate with COURIER_BLESS=1 cargo test --test sdk_frames and run npm test in sdk/typescript",
            path.display()
        );
    }
}
