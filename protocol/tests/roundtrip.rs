//! Every frame survives encode -> decode in both encodings, and decoding
//! arbitrary bytes never panics.

use std::collections::BTreeMap;

use courier_protocol::codec::{
    decode_client, decode_server, encode_client, encode_server, Encoding,
};
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId, SessionId, UserId};
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

fn client_request() -> impl Strategy<Value = ClientRequest> {
    let send = (
        channel_id(),
        text(),
        proptest::option::of("[ -~]{0,64}"),
        any::<bool>(),
        proptest::option::of(message_id()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(
            |(channel_id, text, client_msg_id, contains_phi, reply_to, ttl_seconds)| {
                ClientRequest::SendMessage(SendMessage {
                    channel_id,
                    text,
                    client_msg_id,
                    contains_phi,
                    reply_to,
                    ttl_seconds,
                })
            },
        );
    let position = prop_oneof![
        any::<u64>().prop_map(ReadPosition::Seq),
        message_id().prop_map(ReadPosition::Message),
    ];
    prop_oneof![
        text().prop_map(|token| ClientRequest::Authenticate(Authenticate { token })),
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
        Just(ClientRequest::Ping),
        Just(ClientRequest::Heartbeat),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    (proptest::option::of(reference()), client_request())
        .prop_map(|(reference, request)| ClientFrame { reference, request })
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
    )
        .prop_map(
            |(
                (id, channel_id, seq, sender_id, sender, text),
                (timestamp, contains_phi, reply_to, edited_at, expires_at),
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
    )
        .prop_map(
            |(id, name, kind, (last_seq, last_read_seq, unread, recovered), online)| ChannelView {
                id,
                name,
                kind,
                last_seq,
                last_read_seq,
                unread,
                recovered,
                online,
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
    )
        .prop_map(|(id, username, role, session, server_time, heartbeat_ms)| {
            Ok(AuthSuccess {
                user: AuthUser { id, username, role },
                session_id: SessionId(session),
                server_time,
                heartbeat_ms,
            })
        });
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
