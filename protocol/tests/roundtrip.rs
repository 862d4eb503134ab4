//! Every frame survives encode -> decode in both encodings, and decoding
//! arbitrary bytes never panics.

use std::collections::BTreeMap;

use courier_protocol::codec::{
    decode_client, decode_server, encode_client, encode_server, Encoding,
};
use courier_protocol::compact::{CompactMessage, FrameStyle};
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, FileId, MessageId, SessionId, UserId};
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

const ENCODINGS: [Encoding; 2] = [Encoding::MessagePack, Encoding::Json];

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn channel_id() -> impl Strategy<Value = ChannelId> {
    uuid().prop_map(ChannelId)
}

fn message_id() -> impl Strategy<Value = MessageId> {
    uuid().prop_map(MessageId)
}

fn file_id() -> impl Strategy<Value = FileId> {
    uuid().prop_map(FileId)
}

fn attachment() -> impl Strategy<Value = AttachmentView> {
    (
        file_id(),
        text(),
        "[a-z]{1,12}/[a-z.+-]{1,40}",
        any::<u64>(),
    )
        .prop_map(|(id, name, mime, size)| AttachmentView {
            id,
            name,
            mime,
            size,
        })
}

fn user_id() -> impl Strategy<Value = UserId> {
    uuid().prop_map(UserId)
}

/// Any Unicode, including quotes, escapes and control characters.
fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn reference() -> impl Strategy<Value = Ref> {
    prop_oneof![
        (-MAX_REF_INT..=MAX_REF_INT).prop_map(Ref::Int),
        ".{0,24}".prop_map(Ref::Str),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Unauthenticated),
        Just(ErrorCode::AuthFailed),
        Just(ErrorCode::AuthTimeout),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::InvalidFrame),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::RateLimited),
        Just(ErrorCode::Conflict),
        Just(ErrorCode::SlowConsumer),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Internal),
    ]
}

/// A valid `patientRef` made from an id (hex digits and hyphens are a FHIR
/// id).
fn patient_of(id: impl std::fmt::Display) -> courier_protocol::PatientRef {
    courier_protocol::PatientRef::parse(&format!("Patient/{id}")).expect("a FHIR reference")
}

fn client_request() -> impl Strategy<Value = ClientRequest> {
    let send = (
        channel_id(),
        text(),
        proptest::option::of("[ -~]{0,64}"),
        any::<bool>(),
        proptest::option::of(message_id()),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(file_id(), 0..3),
    )
        .prop_map(
            |(
                channel_id,
                text,
                client_msg_id,
                contains_phi,
                reply_to,
                ttl_seconds,
                attachments,
            )| {
                ClientRequest::SendMessage(SendMessage {
                    channel_id,
                    text,
                    client_msg_id,
                    contains_phi,
                    reply_to,
                    ttl_seconds,
                    attachments,
                    patient_ref: reply_to.map(patient_of),
                })
            },
        );
    let position = prop_oneof![
        any::<u64>().prop_map(ReadPosition::Seq),
        message_id().prop_map(ReadPosition::Message),
    ];
    prop_oneof![
        (text(), frame_style()).prop_map(|(token, frames)| {
            ClientRequest::Authenticate(Authenticate { token, frames })
        }),
        (channel_id(), proptest::option::of(any::<u64>())).prop_map(|(channel_id, since_seq)| {
            ClientRequest::JoinChannel(JoinChannel {
                channel_id,
                since_seq,
            })
        }),
        channel_id()
            .prop_map(|channel_id| ClientRequest::LeaveChannel(LeaveChannel { channel_id })),
        send,
        (message_id(), text()).prop_map(|(message_id, text)| ClientRequest::EditMessage(
            EditMessage { message_id, text }
        )),
        message_id()
            .prop_map(|message_id| ClientRequest::DeleteMessage(DeleteMessage { message_id })),
        (channel_id(), any::<bool>()).prop_map(|(channel_id, is_typing)| {
            ClientRequest::TypingIndicator(TypingIndicator {
                channel_id,
                is_typing,
            })
        }),
        (channel_id(), position).prop_map(|(channel_id, up_to)| ClientRequest::ReadReceipt(
            ReadReceipt { channel_id, up_to }
        )),
        (
            channel_id(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(channel_id, before_seq, limit)| ClientRequest::FetchHistory(FetchHistory {
                    channel_id,
                    before_seq,
                    limit
                })
            ),
        (message_id(), text()).prop_map(|(message_id, reaction)| ClientRequest::AddReaction(
            Reaction {
                message_id,
                reaction
            }
        )),
        (message_id(), text()).prop_map(|(message_id, reaction)| ClientRequest::RemoveReaction(
            Reaction {
                message_id,
                reaction
            }
        )),
        user_id().prop_map(|user_id| ClientRequest::OpenDirect(OpenDirect { user_id })),
        prop_oneof![Just(UserStatus::Online), Just(UserStatus::Away)]
            .prop_map(|status| ClientRequest::SetStatus(SetStatus { status })),
        (message_id(), text()).prop_map(|(message_id, reason)| ClientRequest::FlagMessage(
            FlagMessage { message_id, reason }
        )),
        message_id()
            .prop_map(|message_id| ClientRequest::UnflagMessage(UnflagMessage { message_id })),
        Just(ClientRequest::Ping),
        Just(ClientRequest::Heartbeat),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (proptest::option::of(reference()), client_request())
        .prop_map(|(reference, request)| ClientFrame { reference, request })
}

fn frame_style() -> impl Strategy<Value = FrameStyle> {
    prop_oneof![Just(FrameStyle::Standard), Just(FrameStyle::Compact)]
}

fn message_view() -> impl Strategy<Value = MessageView> {
    (
        (
            message_id(),
            channel_id(),
            any::<u64>(),
            user_id(),
            text(),
            text(),
        ),
        (
            any::<i64>(),
            any::<bool>(),
            proptest::option::of(message_id()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
        ),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(text()),
            proptest::option::of(user_id()),
            proptest::option::of(any::<i64>()),
        ),
        (
            prop_oneof![
                Just(MessageKind::Text),
                Just(MessageKind::Image),
                Just(MessageKind::File),
                Just(MessageKind::System)
            ],
            proptest::collection::vec(attachment(), 0..3),
        ),
    )
        .prop_map(
            |(
                (id, channel_id, seq, sender_id, sender, text),
                (timestamp, contains_phi, reply_to, edited_at, expires_at),
                (flagged, flag_reason, flagged_by, flagged_at),
                (kind, attachments),
            )| {
                MessageView {
                    id,
                    channel_id,
                    seq,
                    sender_id,
                    sender,
                    text,
                    timestamp,
                    contains_phi,
                    reply_to,
                    edited_at,
                    expires_at,
                    flagged,
                    flag_reason,
                    flagged_by,
                    flagged_at,
                    kind,
                    attachments,
                    patient_ref: reply_to.map(patient_of),
                    mentions: Vec::new(),
                }
            },
        )
}

fn channel_view() -> impl Strategy<Value = ChannelView> {
    let kind = prop_oneof![
        Just(ChannelKindWire::Public),
        Just(ChannelKindWire::Private),
        Just(ChannelKindWire::Direct),
        Just(ChannelKindWire::Broadcast),
    ];
    (
        channel_id(),
        text(),
        kind,
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
        proptest::collection::vec(user_id(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(id, name, kind, (last_seq, last_read_seq, unread, recovered), online, archived)| {
                ChannelView {
                    id,
                    name,
                    kind,
                    last_seq,
                    last_read_seq,
                    unread,
                    recovered,
                    online,
                    archived,
                    patient_ref: archived.then(|| patient_of(id)),
                }
            },
        )
}

/// JSON values without floats (serde_json does not round-trip every float
/// exactly without its `float_roundtrip` feature).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ack_result() -> impl Strategy<Value = AckResult> {
    prop_oneof![
        Just(AckResult::Done),
        (message_id(), any::<u64>(), any::<i64>(), any::<bool>()).prop_map(
            |(message_id, seq, timestamp, duplicate)| {
                AckResult::Sent(SendResult {
                    message_id,
                    seq,
                    timestamp,
                    duplicate,
                })
            }
        ),
        channel_view().prop_map(AckResult::Channel),
    ]
}

fn auth_response() -> impl Strategy<Value = AuthenticationResponse> {
    let success = (
        user_id(),
        text(),
        "[a-z_]{1,12}",
        uuid(),
        any::<i64>(),
        any::<u64>(),
        frame_style(),
    )
        .prop_map(
            |(id, username, role, session, server_time, heartbeat_ms, frames)| {
                Ok(AuthSuccess {
                    user: AuthUser { id, username, role },
                    session_id: SessionId(session),
                    server_time,
                    heartbeat_ms,
                    frames,
                })
            },
        );
    let failure =
        (error_code(), text()).prop_map(|(code, message)| Err(ErrorBody { code, message }));
    (
        proptest::option::of(reference()),
        prop_oneof![success, failure],
    )
        .prop_map(|(reference, result)| AuthenticationResponse { reference, result })
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let status = prop_oneof![
        Just(PresenceStatus::Online),
        Just(PresenceStatus::Away),
        Just(PresenceStatus::Offline),
    ];
    prop_oneof![
        (proptest::option::of(reference()), ack_result())
            .prop_map(|(reference, result)| ServerFrame::Ack(Ack { reference, result })),
        (
            proptest::option::of(reference()),
            error_code(),
            text(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(reference, code, message, retry_after_ms)| ServerFrame::Error(ErrorFrame {
                    reference,
                    code,
                    message,
                    retry_after_ms
                })
            ),
        auth_response().prop_map(ServerFrame::AuthenticationResponse),
        (proptest::option::of(reference()), any::<i64>()).prop_map(|(reference, server_time)| {
            ServerFrame::Pong(Pong {
                reference,
                server_time,
            })
        }),
        (
            proptest::option::of(reference()),
            channel_id(),
            proptest::collection::vec(message_view(), 0..3),
            any::<bool>()
        )
            .prop_map(
                |(reference, channel_id, messages, has_more)| ServerFrame::History(History {
                    reference,
                    channel_id,
                    messages,
                    has_more
                })
            ),
        message_view().prop_map(|data| ServerFrame::NewMessage(MessagePush { data })),
        message_view().prop_map(|data| ServerFrame::CompactMessage(CompactMessage::from(&data))),
        message_view().prop_map(|data| ServerFrame::MessageUpdated(MessagePush { data })),
        (message_id(), channel_id(), any::<u64>()).prop_map(|(message_id, channel_id, seq)| {
            ServerFrame::MessageDeleted(MessageDeletedPush {
                data: MessageDeleted {
                    message_id,
                    channel_id,
                    seq,
                },
            })
        }),
        (channel_id(), user_id(), any::<bool>()).prop_map(|(channel_id, user_id, is_typing)| {
            ServerFrame::Typing(Typing {
                channel_id,
                user_id,
                is_typing,
            })
        }),
        (channel_id(), user_id(), any::<u64>()).prop_map(|(channel_id, user_id, seq)| {
            ServerFrame::ReadReceipt(ReadReceiptPush {
                channel_id,
                user_id,
                seq,
            })
        }),
        (
            channel_id(),
            message_id(),
            proptest::collection::btree_map(text(), any::<u64>(), 0..4)
        )
            .prop_map(
                |(channel_id, message_id, reactions)| ServerFrame::ReactionUpdated(
                    ReactionUpdated {
                        channel_id,
                        message_id,
                        reactions: reactions.into_iter().collect::<BTreeMap<_, _>>(),
                    }
                )
            ),
        (user_id(), status, any::<i64>()).prop_map(|(user_id, status, last_seen)| {
            ServerFrame::Presence(Presence {
                user_id,
                status,
                last_seen,
            })
        }),
        ("[a-z_]{1,16}", json_value()).prop_map(|(event_type, data)| ServerFrame::SystemEvent(
            SystemEvent { event_type, data }
        )),
        json_value().prop_map(|data| ServerFrame::Notification(Notification { data })),
        (channel_id(), any::<u64>()).prop_map(|(channel_id, last_seq)| {
            ServerFrame::Recovered(Recovered {
                channel_id,
                last_seq,
            })
        }),
        (channel_id(), user_id(), any::<u64>(), any::<bool>()).prop_map(
            |(channel_id, user_id, seq, read)| {
                ServerFrame::MessageStatus(MessageStatus {
                    channel_id,
                    user_id,
                    seq,
                    status: if read {
                        DeliveryStatus::Read
                    } else {
                        DeliveryStatus::Delivered
                    },
                })
            }
        ),
        (
            (channel_id(), message_id(), any::<u64>(), any::<bool>()),
            (
                proptest::option::of(text()),
                proptest::option::of(user_id()),
                proptest::option::of(any::<i64>())
            )
        )
            .prop_map(
                |(
                    (channel_id, message_id, seq, flagged),
                    (flag_reason, flagged_by, flagged_at),
                )| {
                    ServerFrame::MessageFlagged(MessageFlagged {
                        channel_id,
                        message_id,
                        seq,
                        flagged,
                        flag_reason,
                        flagged_by,
                        flagged_at,
                    })
                }
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        for encoding in ENCODINGS {
            let bytes = encode_client(&frame, encoding);
            prop_assert_eq!(decode_client(&bytes, encoding), Ok(frame.clone()), "{:?}", encoding);
        }
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        for encoding in ENCODINGS {
            let bytes = encode_server(&frame, encoding);
            prop_assert_eq!(decode_server(&bytes, encoding), Ok(frame.clone()), "{:?}", encoding);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for encoding in ENCODINGS {
            let _ = decode_client(&bytes, encoding);
            let _ = decode_server(&bytes, encoding);
        }
    }

    /// Valid frames with a few bytes overwritten reach deeper into the
    /// decoder than random bytes do.
    #[test]
    fn decoding_corrupted_frames_never_panics(
        frame in client_frame(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for encoding in ENCODINGS {
            let mut bytes = encode_client(&frame, encoding).to_vec();
            for (at, byte) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            let _ = decode_client(&bytes, encoding);
            let _ = decode_client(&bytes[..cut.index(bytes.len())], encoding);
        }
    }
}

// ---------------------------------------------------------------------------
// Every variant, not just most of them
// ---------------------------------------------------------------------------

/// Round trips per variant (and per sub-shape) that the coverage tests
/// below insist on.
const PER_SHAPE: usize = 24;

/// The variant of a client request, with the shape of `read_receipt`'s
/// position. The match is exhaustive: a new variant does not compile until
/// it is named here, and then [`every_client_frame_type_round_trips`] fails
/// until [`CLIENT_SHAPES`] lists it and [`client_request`] generates it.
fn client_shape(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::Authenticate(_) => "authenticate",
        ClientRequest::JoinChannel(_) => "join_channel",
        ClientRequest::LeaveChannel(_) => "leave_channel",
        ClientRequest::SendMessage(_) => "send_message",
        ClientRequest::EditMessage(_) => "edit_message",
        ClientRequest::DeleteMessage(_) => "delete_message",
        ClientRequest::TypingIndicator(_) => "typing_indicator",
        ClientRequest::ReadReceipt(ReadReceipt {
            up_to: ReadPosition::Seq(_),
            ..
        }) => "read_receipt/seq",
        ClientRequest::ReadReceipt(ReadReceipt {
            up_to: ReadPosition::Message(_),
            ..
        }) => "read_receipt/messageId",
        ClientRequest::FetchHistory(_) => "fetch_history",
        ClientRequest::AddReaction(_) => "add_reaction",
        ClientRequest::RemoveReaction(_) => "remove_reaction",
        ClientRequest::OpenDirect(_) => "open_direct",
        ClientRequest::SetStatus(_) => "set_status",
        ClientRequest::FlagMessage(_) => "flag_message",
        ClientRequest::UnflagMessage(_) => "unflag_message",
        ClientRequest::Ping => "ping",
        ClientRequest::Heartbeat => "heartbeat",
    }
}

const CLIENT_SHAPES: [&str; 18] = [
    "authenticate",
    "join_channel",
    "leave_channel",
    "send_message",
    "edit_message",
    "delete_message",
    "typing_indicator",
    "read_receipt/seq",
    "read_receipt/messageId",
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

/// The variant of a server frame, with the result shapes of `ack` and
/// `authentication_response`. Exhaustive, like [`client_shape`].
fn server_shape(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Ack(Ack {
            result: AckResult::Done,
            ..
        }) => "ack/done",
        ServerFrame::Ack(Ack {
            result: AckResult::Sent(_),
            ..
        }) => "ack/sent",
        ServerFrame::Ack(Ack {
            result: AckResult::Channel(_),
            ..
        }) => "ack/channel",
        ServerFrame::Error(_) => "error",
        ServerFrame::AuthenticationResponse(AuthenticationResponse { result: Ok(_), .. }) => {
            "authentication_response/success"
        }
        ServerFrame::AuthenticationResponse(AuthenticationResponse { result: Err(_), .. }) => {
            "authentication_response/failure"
        }
        ServerFrame::Pong(_) => "pong",
        ServerFrame::History(_) => "history",
        ServerFrame::NewMessage(_) => "new_message",
        ServerFrame::CompactMessage(_) => "m",
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
    }
}

const SERVER_SHAPES: [&str; 21] = [
    "ack/done",
    "ack/sent",
    "ack/channel",
    "error",
    "authentication_response/success",
    "authentication_response/failure",
    "pong",
    "history",
    "new_message",
    "m",
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

/// Draws from `strategy` (deterministically) until every shape in `shapes`
/// has passed `check` [`PER_SHAPE`] times, with and without a `ref`, and
/// fails if some shape is never generated.
fn cover<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    shapes: &[&'static str],
    shape_of: impl Fn(&T) -> &'static str,
    has_ref: impl Fn(&T) -> bool,
    check: impl Fn(&T),
) {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    let done = |seen: &BTreeMap<(&str, bool), usize>| {
        shapes.iter().all(|s| {
            [false, true]
                .iter()
                .all(|r| seen.get(&(*s, *r)).copied().unwrap_or(0) >= PER_SHAPE)
        })
    };
    for _ in 0..200_000 {
        if done(&seen) {
            break;
        }
        let value = strategy.new_tree(&mut runner).expect("a value").current();
        let shape = shape_of(&value);
        assert!(shapes.contains(&shape), "{shape} is not in the shape list");
        let count = seen.entry((shape, has_ref(&value))).or_default();
        if *count < PER_SHAPE {
            check(&value);
            *count += 1;
        }
    }
    // Frames without a `ref` field never have one.
    let missing: Vec<_> = shapes
        .iter()
        .flat_map(|s| [(*s, false), (*s, true)])
        .filter(|k| seen.get(k).copied().unwrap_or(0) < PER_SHAPE)
        .filter(|(s, with_ref)| !*with_ref || !NO_REF_SHAPES.contains(s))
        .collect();
    assert!(missing.is_empty(), "never generated enough of {missing:?}");
}

/// Pushes: they carry no `ref`.
const NO_REF_SHAPES: [&str; 13] = [
    "new_message",
    "m",
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

#[test]
fn every_client_frame_type_round_trips() {
    cover(
        client_frame(),
        &CLIENT_SHAPES,
        |f| client_shape(&f.request),
        |f| f.reference.is_some(),
        |frame| {
            for encoding in ENCODINGS {
                let bytes = encode_client(frame, encoding);
                assert_eq!(
                    decode_client(&bytes, encoding).as_ref(),
                    Ok(frame),
                    "{encoding:?}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        },
    );
}

#[test]
fn every_server_frame_type_round_trips() {
    cover(
        server_frame(),
        &SERVER_SHAPES,
        server_shape,
        |f| f.reference().is_some(),
        |frame| {
            for encoding in ENCODINGS {
                let bytes = encode_server(frame, encoding);
                assert_eq!(
                    decode_server(&bytes, encoding).as_ref(),
                    Ok(frame),
                    "{encoding:?}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        },
    );
}

// ---------------------------------------------------------------------------
// Hostile but well-formed input: maps that look like frames
// ---------------------------------------------------------------------------

/// Any MessagePack value, or the JSON closest to it.
#[derive(Clone, Debug)]
enum Tree {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// MessagePack only: JSON gets an array of numbers.
    Bin(Vec<u8>),
    Array(Vec<Tree>),
    /// Keys in order, duplicates allowed.
    Map(Vec<(String, Tree)>),
}

impl Tree {
    fn msgpack(&self, out: &mut Vec<u8>) {
        use rmp::encode as w;
        match self {
            Tree::Nil => w::write_nil(out).unwrap(),
            Tree::Bool(b) => w::write_bool(out, *b).unwrap(),
            Tree::Int(n) => drop(w::write_sint(out, *n).unwrap()),
            Tree::UInt(n) => drop(w::write_uint(out, *n).unwrap()),
            Tree::Float(f) => w::write_f64(out, *f).unwrap(),
            Tree::Str(s) => w::write_str(out, s).unwrap(),
            Tree::Bin(b) => w::write_bin(out, b).unwrap(),
            Tree::Array(items) => {
                w::write_array_len(out, items.len() as u32).unwrap();
                items.iter().for_each(|t| t.msgpack(out));
            }
            Tree::Map(entries) => {
                w::write_map_len(out, entries.len() as u32).unwrap();
                for (k, v) in entries {
                    w::write_str(out, k).unwrap();
                    v.msgpack(out);
                }
            }
        }
    }

    fn json(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Tree::Nil => out.push_str("null"),
            Tree::Bool(b) => write!(out, "{b}").unwrap(),
            Tree::Int(n) => write!(out, "{n}").unwrap(),
            Tree::UInt(n) => write!(out, "{n}").unwrap(),
            // Not finite: a literal serde_json refuses ("number out of range").
            Tree::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => write!(out, "{n}").unwrap(),
                None => out.push_str("1e999"),
            },
            Tree::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Tree::Bin(b) => {
                Tree::Array(b.iter().map(|x| Tree::UInt((*x).into())).collect()).json(out)
            }
            Tree::Array(items) => {
                out.push('[');
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    t.json(out);
                }
                out.push(']');
            }
            Tree::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.json(out);
                }
                out.push('}');
            }
        }
    }

    fn bytes(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::MessagePack => {
                let mut out = Vec::new();
                self.msgpack(&mut out);
                out
            }
            Encoding::Json => {
                let mut out = String::new();
                self.json(&mut out);
                out.into_bytes()
            }
        }
    }

    /// The same value with nothing that one encoding holds and the other
    /// does not: bin becomes an array of numbers, a float JSON does not
    /// write exactly becomes its integer part.
    fn portable(self) -> Tree {
        match self {
            Tree::Bin(b) => Tree::Array(b.into_iter().map(|x| Tree::UInt(x.into())).collect()),
            Tree::Float(f)
                if !f.is_finite()
                    || serde_json::from_str::<f64>(&f.to_string()).ok() != Some(f) =>
            {
                Tree::Int(if f.is_finite() { f as i64 } else { 0 })
            }
            Tree::Array(items) => Tree::Array(items.into_iter().map(Tree::portable).collect()),
            Tree::Map(entries) => Tree::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, v.portable()))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Every `type` either side knows, and a few it does not.
const TYPES: [&str; 31] = [
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
    "ping",
    "heartbeat",
    "ack",
    "error",
    "authentication_response",
    "pong",
    "history",
    "new_message",
    "message_updated",
    "message_deleted",
    "typing",
    "reaction_updated",
    "presence",
    "system_event",
    "notification",
    "",
    "PING",
    "send_message\u{0}",
];

/// Every field name of every frame, and a few near misses.
const FIELDS: [&str; 44] = [
    "ref",
    "type",
    "token",
    "channelId",
    "sinceSeq",
    "text",
    "clientMsgId",
    "containsPHI",
    "replyTo",
    "ttlSeconds",
    "messageId",
    "isTyping",
    "seq",
    "beforeSeq",
    "limit",
    "reaction",
    "userId",
    "status",
    "success",
    "user",
    "id",
    "username",
    "role",
    "sessionId",
    "serverTime",
    "heartbeatMs",
    "error",
    "code",
    "message",
    "retryAfterMs",
    "messages",
    "hasMore",
    "data",
    "eventType",
    "reactions",
    "lastSeen",
    "duplicate",
    "timestamp",
    "channel",
    "name",
    "kind",
    "channel_id",
    "ContainsPHI",
    "",
];

/// Scalars that frames hold, valid or nearly so.
fn leaf() -> impl Strategy<Value = Tree> {
    prop_oneof![
        Just(Tree::Nil),
        any::<bool>().prop_map(Tree::Bool),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(MAX_REF_INT),
            Just(MAX_REF_INT + 1),
            Just(-MAX_REF_INT - 1),
            any::<i64>(),
            -100i64..200,
        ]
        .prop_map(Tree::Int),
        prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX) + 1), any::<u64>()]
            .prop_map(Tree::UInt),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            Just(1.0),
            any::<f64>(),
        ]
        .prop_map(Tree::Float),
        prop_oneof![
            uuid().prop_map(|u| u.to_string()),
            uuid().prop_map(|u| u.simple().to_string()),
            prop::sample::select(&["online", "away", "offline", "public", "not_found"][..])
                .prop_map(str::to_owned),
            prop::sample::select(&TYPES[..]).prop_map(str::to_owned),
            ".{0,12}",
            "[ -~]{250,300}",
        ]
        .prop_map(Tree::Str),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(Tree::Bin),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Tree::Array),
            proptest::collection::vec((field_name(), inner), 0..5).prop_map(Tree::Map),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&FIELDS[..]).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// A map that looks like a frame: usually a known `type`, often a `ref`,
/// then known and unknown fields with values of any type. Sometimes nested
/// far beyond [`courier_protocol::codec::MAX_DEPTH`].
fn random_frame_like() -> impl Strategy<Value = Tree> {
    let ty = prop_oneof![
        8 => prop::sample::select(&TYPES[..]).prop_map(|t| Some(Tree::Str(t.to_owned()))),
        1 => leaf().prop_map(Some),
        1 => Just(None),
    ];
    let reference = proptest::option::of(leaf());
    let fields = proptest::collection::vec((field_name(), tree()), 0..7);
    let nesting = prop_oneof![8 => Just(0usize), 1 => 1usize..40];
    (ty, reference, fields, nesting, any::<prop::sample::Index>()).prop_map(
        |(ty, reference, mut fields, nesting, at)| {
            if let Some(ty) = ty {
                fields.insert(at.index(fields.len() + 1), ("type".to_owned(), ty));
            }
            if let Some(r) = reference {
                fields.insert(0, ("ref".to_owned(), r));
            }
            if nesting > 0 {
                let mut deep = Tree::Nil;
                for i in 0..nesting {
                    deep = if i % 2 == 0 {
                        Tree::Array(vec![deep])
                    } else {
                        Tree::Map(vec![("data".to_owned(), deep)])
                    };
                }
                fields.push(("data".to_owned(), deep));
            }
            Tree::Map(fields)
        },
    )
}

impl From<Value> for Tree {
    fn from(v: Value) -> Tree {
        match v {
            Value::Null => Tree::Nil,
            Value::Bool(b) => Tree::Bool(b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Tree::UInt(u),
                (_, Some(i), _) => Tree::Int(i),
                (_, _, f) => Tree::Float(f.unwrap_or(0.0)),
            },
            Value::String(s) => Tree::Str(s),
            Value::Array(items) => Tree::Array(items.into_iter().map(Tree::from).collect()),
            Value::Object(map) => Tree::Map(map.into_iter().map(|(k, v)| (k, v.into())).collect()),
        }
    }
}

/// One edit of a valid frame's top-level map.
#[derive(Clone, Debug)]
enum Mutation {
    /// Another value for the field at this index.
    Replace(prop::sample::Index, Tree),
    /// The field at this index goes.
    Remove(prop::sample::Index),
    /// A new field.
    Insert(prop::sample::Index, String, Tree),
    /// The field at this index appears twice.
    Duplicate(prop::sample::Index),
    /// The value at this index is wrapped in an array.
    Wrap(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        3 => (at(), tree()).prop_map(|(i, t)| Mutation::Replace(i, t)),
        2 => at().prop_map(Mutation::Remove),
        2 => (at(), field_name(), tree()).prop_map(|(i, k, t)| Mutation::Insert(i, k, t)),
        1 => at().prop_map(Mutation::Duplicate),
        1 => at().prop_map(Mutation::Wrap),
    ]
}

/// A valid frame with a few of its fields replaced, removed, added,
/// duplicated or wrapped.
fn mutated(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Tree> {
    (valid, proptest::collection::vec(mutation(), 0..4)).prop_map(|(value, mutations)| {
        let Tree::Map(mut fields) = Tree::from(value) else {
            unreachable!("frames are maps")
        };
        for m in mutations {
            let n = fields.len();
            match m {
                Mutation::Replace(i, t) if n > 0 => fields[i.index(n)].1 = t,
                Mutation::Remove(i) if n > 0 => drop(fields.remove(i.index(n))),
                Mutation::Insert(i, k, t) => fields.insert(i.index(n + 1), (k, t)),
                Mutation::Duplicate(i) if n > 0 => {
                    let field = fields[i.index(n)].clone();
                    fields.push(field);
                }
                Mutation::Wrap(i) if n > 0 => {
                    let v = &mut fields[i.index(n)].1;
                    *v = Tree::Array(vec![std::mem::replace(v, Tree::Nil)]);
                }
                _ => {}
            }
        }
        Tree::Map(fields)
    })
}

/// Maps that look like frames: random ones, and valid client and server
/// frames with a few edits.
fn frame_like() -> impl Strategy<Value = Tree> {
    let json = |bytes: bytes::Bytes| serde_json::from_slice::<Value>(&bytes).expect("valid JSON");
    prop_oneof![
        random_frame_like(),
        mutated(client_frame().prop_map(move |f| json(encode_client(&f, Encoding::Json)))),
        mutated(server_frame().prop_map(move |f| json(encode_server(&f, Encoding::Json)))),
    ]
}

/// What every decode result must satisfy: a frame re-encodes (in either
/// encoding) to itself; an error is short and answerable.
fn check_client_result(result: &Result<ClientFrame, courier_protocol::DecodeError>) {
    match result {
        Ok(frame) => {
            for encoding in ENCODINGS {
                let bytes = encode_client(frame, encoding);
                assert_eq!(decode_client(&bytes, encoding).as_ref(), Ok(frame));
            }
        }
        Err(e) => check_error(e),
    }
}

fn check_error(e: &courier_protocol::DecodeError) {
    // 160 bytes plus the ellipsis.
    assert!(e.reason().len() <= 163, "{}", e.reason());
    assert!(e.frame_type().is_none_or(|t| t.len() <= 64));
    let answer = e.to_error_frame();
    for encoding in ENCODINGS {
        let bytes = encode_server(&answer, encoding);
        assert_eq!(decode_server(&bytes, encoding).as_ref(), Ok(&answer));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Frame-shaped maps of anything reach past the envelope into every
    /// typed decoder. Whatever decodes re-encodes to the same frame in both
    /// encodings; whatever does not is a short, answerable error.
    #[test]
    fn frame_like_maps_decode_to_frames_that_round_trip_or_fail_cleanly(tree in frame_like()) {
        for encoding in ENCODINGS {
            let bytes = tree.bytes(encoding);
            check_client_result(&decode_client(&bytes, encoding));
            match decode_server(&bytes, encoding) {
                Ok(frame) => {
                    // Re-encoding must not panic and must decode again
                    // (floats in `data` may not survive JSON exactly).
                    for e2 in ENCODINGS {
                        let again = encode_server(&frame, e2);
                        prop_assert!(decode_server(&again, e2).is_ok(), "{:?}", frame);
                    }
                }
                Err(e) => check_error(&e),
            }
            // Cut anywhere: never a panic.
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                let _ = decode_client(&bytes[..cut], encoding);
                let _ = decode_server(&bytes[..cut], encoding);
            }
        }
    }

    /// The two encodings carry the same schema: the same map decodes to the
    /// same client frame from MessagePack and from JSON, or fails in both,
    /// with the same kind of error and the same recovered `ref`.
    #[test]
    fn msgpack_and_json_agree_on_every_client_frame(tree in frame_like().prop_map(Tree::portable)) {
        let from_msgpack = decode_client(&tree.bytes(Encoding::MessagePack), Encoding::MessagePack);
        let from_json = decode_client(&tree.bytes(Encoding::Json), Encoding::Json);
        match (&from_msgpack, &from_json) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.kind(), b.kind(), "{} / {}", a.reason(), b.reason());
                prop_assert_eq!(a.reference(), b.reference());
                prop_assert_eq!(a.frame_type(), b.frame_type());
            }
            _ => prop_assert!(false, "msgpack {:?} but json {:?}", from_msgpack, from_json),
        }
    }
}
