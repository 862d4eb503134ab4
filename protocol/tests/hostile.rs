//! Malformed and hostile frames: each is a `DecodeError` of the right kind,
//! with the `ref` recovered whenever the frame still has a readable one.

use courier_protocol::codec::{
    decode_client, encode_client, DecodeError, DecodeErrorKind, Encoding, MAX_DEPTH,
};
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode};
use uuid::Uuid;

use DecodeErrorKind::{Invalid, Malformed, TooDeep, UnknownType};

const CHANNEL: &str = "6f1f6a2e-8d7b-4c1e-9f3a-2b5c7d9e0a11";

/// A MessagePack map built by hand, key by key, so tests control order,
/// duplicates and the raw bytes of each value.
struct Pack {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pack {
    /// Starts `{ref: 7, type: ty}`.
    fn frame(ty: &str) -> Self {
        Self {
            entries: Vec::new(),
        }
        .int("ref", 7)
        .str("type", ty)
    }

    fn raw(mut self, key: &str, value: &[u8]) -> Self {
        let mut k = Vec::new();
        rmp::encode::write_str(&mut k, key).unwrap();
        self.entries.push((k, value.to_vec()));
        self
    }

    fn str(self, key: &str, value: &str) -> Self {
        let mut v = Vec::new();
        rmp::encode::write_str(&mut v, value).unwrap();
        self.raw(key, &v)
    }

    fn int(self, key: &str, value: i64) -> Self {
        let mut v = Vec::new();
        rmp::encode::write_sint(&mut v, value).unwrap();
        self.raw(key, &v)
    }

    fn uint(self, key: &str, value: u64) -> Self {
        let mut v = Vec::new();
        rmp::encode::write_uint(&mut v, value).unwrap();
        self.raw(key, &v)
    }

    fn f64(self, key: &str, value: f64) -> Self {
        let mut v = Vec::new();
        rmp::encode::write_f64(&mut v, value).unwrap();
        self.raw(key, &v)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, self.entries.len() as u32).unwrap();
        for (k, v) in &self.entries {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }
}

fn msgpack_err(bytes: &[u8]) -> DecodeError {
    match decode_client(bytes, Encoding::MessagePack) {
        Ok(frame) => panic!("decoded {frame:?} from {bytes:02x?}"),
        Err(e) => e,
    }
}

fn json_err(text: &str) -> DecodeError {
    match decode_client(text.as_bytes(), Encoding::Json) {
        Ok(frame) => panic!("decoded {frame:?} from {text}"),
        Err(e) => e,
    }
}

/// Asserts the kind and the recovered ref (`Some(7)` or none).
#[track_caller]
fn check(err: &DecodeError, kind: DecodeErrorKind, has_ref: bool) {
    assert_eq!(err.kind(), kind, "kind of {err:?}");
    let expected = has_ref.then_some(Ref::Int(7));
    assert_eq!(err.reference(), expected.as_ref(), "ref of {err:?}");
    assert!(
        err.reason().len() <= 170,
        "reason too long: {}",
        err.reason()
    );
    assert!(!err.reason().is_empty());
}

fn send_message_json(extra: &str) -> String {
    format!(r#"{{"ref":7,"type":"send_message","channelId":"{CHANNEL}","text":"hi"{extra}}}"#)
}

#[test]
fn well_formed_frames_decode() {
    let frame = decode_client(send_message_json("").as_bytes(), Encoding::Json).unwrap();
    assert_eq!(frame.reference, Some(Ref::Int(7)));
    let ClientRequest::SendMessage(send) = frame.request else {
        panic!("not a send: {frame:?}");
    };
    assert_eq!(send.text, "hi");
    assert_eq!(send.channel_id.to_string(), CHANNEL);

    let bytes = Pack::frame("send_message")
        .str("channelId", CHANNEL)
        .str("text", "hi")
        .bytes();
    let frame = decode_client(&bytes, Encoding::MessagePack).unwrap();
    assert_eq!(frame.reference, Some(Ref::Int(7)));
    assert!(matches!(frame.request, ClientRequest::SendMessage(ref s) if s.text == "hi"));
}

#[test]
fn truncated_msgpack_is_malformed_and_keeps_the_ref() {
    let bytes = Pack::frame("send_message")
        .str("channelId", CHANNEL)
        .str("text", "hello")
        .bytes();
    // fixmap, "ref", 7: the ref is readable from byte 6 on.
    let ref_end = 1 + 4 + 1;
    for cut in 0..bytes.len() {
        let err = msgpack_err(&bytes[..cut]);
        check(&err, Malformed, cut >= ref_end);
    }
}

#[test]
fn truncated_json_is_malformed_and_keeps_the_ref() {
    let text = send_message_json("");
    // serde_json reads the number 7 even at the very end of the input.
    let ref_end = r#"{"ref":7"#.len();
    for cut in 0..text.len() {
        let err = json_err(&text[..cut]);
        check(&err, Malformed, cut >= ref_end);
    }
}

#[test]
fn reserved_byte_0xc1_is_malformed() {
    check(
        &msgpack_err(&Pack::frame("ping").raw("x", &[0xc1]).bytes()),
        Malformed,
        true,
    );
    check(&msgpack_err(&[0xc1]), Malformed, false);
}

#[test]
fn huge_length_prefixes_without_a_body_fail_fast() {
    let prefixes: [&[u8]; 6] = [
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
        &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin32
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
        &[0xda, 0xff, 0xff],                   // str16
        &[0xdd, 0x00, 0x01, 0x00, 0x00, 0xc0], // array32 of 65,536 with one element
    ];
    for prefix in prefixes {
        // As a field value after the ref, and as the whole frame.
        check(
            &msgpack_err(&Pack::frame("ping").raw("x", prefix).bytes()),
            Malformed,
            true,
        );
        check(&msgpack_err(prefix), Malformed, false);
    }
    // A map32 frame header announcing 2^32 - 1 entries, then a real ref:
    // the walk reads the ref and stops where the bytes end.
    let mut bytes = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
    bytes.extend_from_slice(&Pack::frame("ping").bytes()[1..]);
    check(&msgpack_err(&bytes), Malformed, true);
    // A str32 `type` value claiming 4 GiB.
    let bytes = Pack::frame("ping")
        .raw("type", &[0xdb, 0xff, 0xff, 0xff, 0xff])
        .bytes();
    check(&msgpack_err(&bytes), Malformed, true);
}

#[test]
fn deep_nesting_is_rejected() {
    // 2,048 nested arrays inside a field, after the ref.
    let mut nested = vec![0x91; 2048];
    nested.push(0xc0);
    check(
        &msgpack_err(&Pack::frame("ping").raw("x", &nested).bytes()),
        TooDeep,
        true,
    );

    // 2,048 nested maps {"a": {"a": ...}}.
    let mut nested = Vec::new();
    for _ in 0..2048 {
        nested.extend_from_slice(&[0x81, 0xa1, b'a']);
    }
    nested.push(0xc0);
    check(
        &msgpack_err(&Pack::frame("ping").raw("x", &nested).bytes()),
        TooDeep,
        true,
    );

    let json = format!(
        r#"{{"ref":7,"type":"ping","x":{}1{}}}"#,
        "[".repeat(2048),
        "]".repeat(2048)
    );
    check(&json_err(&json), TooDeep, true);
    let json = format!(
        r#"{{"ref":7,"type":"ping","x":{}1{}}}"#,
        r#"{"a":"#.repeat(2048),
        "}".repeat(2048)
    );
    check(&json_err(&json), TooDeep, true);

    // A bare array nest is not a frame at all.
    check(&json_err(&"[".repeat(2048)), Malformed, false);
}

#[test]
fn nesting_up_to_the_cap_is_accepted() {
    // The frame's map is level 1, so MAX_DEPTH - 1 arrays fit below it.
    let ok = MAX_DEPTH - 1;
    let json = format!(
        r#"{{"ref":7,"type":"ping","x":{}{}}}"#,
        "[".repeat(ok),
        "]".repeat(ok)
    );
    assert!(decode_client(json.as_bytes(), Encoding::Json).is_ok());
    let json = format!(
        r#"{{"ref":7,"type":"ping","x":{}{}}}"#,
        "[".repeat(ok + 1),
        "]".repeat(ok + 1)
    );
    check(&json_err(&json), TooDeep, true);

    let mut nested = vec![0x91; ok - 1];
    nested.push(0x90);
    assert!(decode_client(
        &Pack::frame("ping").raw("x", &nested).bytes(),
        Encoding::MessagePack
    )
    .is_ok());
    let mut nested = vec![0x91; ok];
    nested.push(0x90);
    check(
        &msgpack_err(&Pack::frame("ping").raw("x", &nested).bytes()),
        TooDeep,
        true,
    );
}

#[test]
fn ext_types_are_rejected() {
    let exts: [&[u8]; 4] = [
        &[0xd4, 0x01, 0x00],                   // fixext1
        &[0xd6, 0xff, 0, 0, 0, 0],             // fixext4, timestamp type
        &[0xc7, 0x01, 0x05, 0x00],             // ext8
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x05], // ext32, no body
    ];
    for ext in exts {
        check(
            &msgpack_err(&Pack::frame("ping").raw("x", ext).bytes()),
            Malformed,
            true,
        );
        let join = Pack::frame("join_channel")
            .str("channelId", CHANNEL)
            .raw("sinceSeq", ext);
        check(&msgpack_err(&join.bytes()), Malformed, true);
    }
}

#[test]
fn nan_and_infinities_are_rejected() {
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        check(
            &msgpack_err(&Pack::frame("ping").f64("x", v).bytes()),
            Malformed,
            true,
        );
        let join = Pack::frame("join_channel")
            .str("channelId", CHANNEL)
            .f64("sinceSeq", v);
        check(&msgpack_err(&join.bytes()), Malformed, true);
    }
    let f32_nan = [0xca, 0x7f, 0xc0, 0x00, 0x00];
    check(
        &msgpack_err(&Pack::frame("ping").raw("x", &f32_nan).bytes()),
        Malformed,
        true,
    );
    // A finite float where an integer is expected is a wrong type.
    let join = Pack::frame("join_channel")
        .str("channelId", CHANNEL)
        .f64("sinceSeq", 1.0);
    check(&msgpack_err(&join.bytes()), Invalid, true);

    for literal in ["NaN", "Infinity", "-Infinity", "1e999"] {
        let json = format!(
            r#"{{"ref":7,"type":"join_channel","channelId":"{CHANNEL}","sinceSeq":{literal}}}"#
        );
        check(&json_err(&json), Malformed, true);
    }
    let json =
        format!(r#"{{"ref":7,"type":"join_channel","channelId":"{CHANNEL}","sinceSeq":1.5}}"#);
    check(&json_err(&json), Invalid, true);
}

#[test]
fn out_of_range_integers_are_invalid() {
    let cases = [
        r#""sinceSeq":-1"#,
        r#""sinceSeq":18446744073709551616"#,
        r#""sinceSeq":99999999999999999999999"#,
    ];
    for field in cases {
        let json = format!(r#"{{"ref":7,"type":"join_channel","channelId":"{CHANNEL}",{field}}}"#);
        check(&json_err(&json), Invalid, true);
    }
    check(
        &json_err(&send_message_json(r#","ttlSeconds":4294967296"#)),
        Invalid,
        true,
    );
    check(
        &json_err(&send_message_json(r#","ttlSeconds":-1"#)),
        Invalid,
        true,
    );

    let join = Pack::frame("join_channel")
        .str("channelId", CHANNEL)
        .int("sinceSeq", -1);
    check(&msgpack_err(&join.bytes()), Invalid, true);
    let send = Pack::frame("send_message")
        .str("channelId", CHANNEL)
        .str("text", "x")
        .uint("ttlSeconds", u64::MAX);
    check(&msgpack_err(&send.bytes()), Invalid, true);
    let history = Pack::frame("fetch_history")
        .str("channelId", CHANNEL)
        .int("limit", -5);
    check(&msgpack_err(&history.bytes()), Invalid, true);
}

#[test]
fn wrong_field_types_are_invalid_with_the_ref() {
    let cases = [
        r#"{"ref":7,"type":"join_channel","channelId":5}"#.to_owned(),
        r#"{"ref":7,"type":"join_channel","channelId":"not-a-uuid"}"#.to_owned(),
        format!(r#"{{"ref":7,"type":"send_message","channelId":"{CHANNEL}","text":true}}"#),
        format!(
            r#"{{"ref":7,"type":"typing_indicator","channelId":"{CHANNEL}","isTyping":"yes"}}"#
        ),
        r#"{"ref":7,"type":"set_status","status":"offline"}"#.to_owned(),
        format!(
            r#"{{"ref":7,"type":"send_message","channelId":"{CHANNEL}","text":"x","containsPHI":1}}"#
        ),
        r#"{"ref":7,"type":"authenticate","token":["a"]}"#.to_owned(),
    ];
    for json in &cases {
        let err = json_err(json);
        check(&err, Invalid, true);
        assert!(err.frame_type().is_some());
        assert_eq!(
            err.to_error_frame(),
            ServerFrame::error(Some(Ref::Int(7)), ErrorCode::InvalidFrame, err.reason())
        );
    }
    let send = Pack::frame("send_message")
        .str("channelId", CHANNEL)
        .raw("text", &[0xc3]);
    check(&msgpack_err(&send.bytes()), Invalid, true);
    let join = Pack::frame("join_channel").raw("channelId", &[0x07]);
    check(&msgpack_err(&join.bytes()), Invalid, true);
    // A variant's index is not its name (JSON refuses `"status":0` too).
    let status = Pack::frame("set_status").raw("status", &[0x00]);
    check(&msgpack_err(&status.bytes()), Invalid, true);
    // `type` itself of the wrong type.
    check(&json_err(r#"{"ref":7,"type":5}"#), Invalid, true);
    let pack = Pack {
        entries: Vec::new(),
    }
    .int("ref", 7)
    .raw("type", &[0x05]);
    check(&msgpack_err(&pack.bytes()), Invalid, true);
}

#[test]
fn a_huge_wrong_value_is_not_echoed() {
    let big = "x".repeat(60_000);
    let err = json_err(&format!(
        r#"{{"ref":7,"type":"join_channel","channelId":"{big}"}}"#
    ));
    check(&err, Invalid, true);
    let err = json_err(&format!(
        r#"{{"ref":7,"type":"join_channel","channelId":"{CHANNEL}","sinceSeq":"{big}"}}"#
    ));
    check(&err, Invalid, true);
    let err = json_err(&format!(r#"{{"ref":7,"type":"{big}"}}"#));
    check(&err, UnknownType, true);
    assert_eq!(err.frame_type(), None, "long types are not kept");
}

#[test]
fn unknown_keys_are_ignored() {
    let json = send_message_json(r#","future":{"a":[1,2,{"b":null}]},"priority":3.5,"tags":["x"]"#);
    let frame = decode_client(json.as_bytes(), Encoding::Json).unwrap();
    assert!(matches!(frame.request, ClientRequest::SendMessage(ref s) if s.text == "hi"));

    let bytes = Pack::frame("ping")
        .raw("future", &[0x92, 0x01, 0xa1, b'z'])
        .f64("f", 1.5)
        .bytes();
    assert_eq!(
        decode_client(&bytes, Encoding::MessagePack),
        Ok(ClientFrame::new(ClientRequest::Ping).with_ref(7u32))
    );
}

#[test]
fn duplicate_keys_are_malformed() {
    let json_cases = [
        r#"{"ref":7,"type":"ping","type":"ping"}"#.to_owned(),
        r#"{"ref":7,"type":"ping","ref":8}"#.to_owned(),
        send_message_json(r#","text":"again""#),
        r#"{"ref":7,"type":"ping","x":1,"x":1}"#.to_owned(),
        r#"{"ref":7,"type":"ping","x":{"a":1,"a":2}}"#.to_owned(),
        r#"{"ref":7,"type":"ping","x":[{"a":1,"a":2}]}"#.to_owned(),
        // The same key spelled with an escape.
        r#"{"ref":7,"type":"ping","x":1,"\u0078":1}"#.to_owned(),
    ];
    for json in &json_cases {
        check(&json_err(json), Malformed, true);
    }

    let pack_cases = [
        Pack::frame("ping").str("type", "ping"),
        Pack::frame("ping").int("ref", 8),
        Pack::frame("send_message")
            .str("channelId", CHANNEL)
            .str("text", "a")
            .str("text", "b"),
        Pack::frame("ping").int("x", 1).int("x", 1),
        Pack::frame("ping").raw("x", &[0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02]),
    ];
    for pack in &pack_cases {
        check(&msgpack_err(&pack.bytes()), Malformed, true);
    }

    // Duplicate detection still works past the 16 inline keys.
    let mut wide = Pack::frame("ping");
    for i in 0..40 {
        wide = wide.int(&format!("k{i}"), i);
    }
    assert!(decode_client(&wide.bytes(), Encoding::MessagePack).is_ok());
    check(&msgpack_err(&wide.int("k33", 0).bytes()), Malformed, true);
}

#[test]
fn missing_required_fields_are_invalid() {
    let cases = [
        format!(r#"{{"ref":7,"type":"send_message","channelId":"{CHANNEL}"}}"#),
        r#"{"ref":7,"type":"send_message","text":"hi"}"#.to_owned(),
        format!(r#"{{"ref":7,"type":"read_receipt","channelId":"{CHANNEL}"}}"#),
        r#"{"ref":7,"type":"authenticate"}"#.to_owned(),
        r#"{"ref":7,"type":"set_status"}"#.to_owned(),
        r#"{"ref":7}"#.to_owned(),
    ];
    for json in &cases {
        check(&json_err(json), Invalid, true);
    }
    check(
        &msgpack_err(&Pack::frame("edit_message").bytes()),
        Invalid,
        true,
    );
    let no_type = Pack {
        entries: Vec::new(),
    }
    .int("ref", 7);
    check(&msgpack_err(&no_type.bytes()), Invalid, true);
}

#[test]
fn unknown_type_keeps_ref_and_type() {
    let err = json_err(r#"{"ref":"abc","type":"launch_rockets"}"#);
    assert_eq!(err.kind(), UnknownType);
    assert_eq!(err.reference(), Some(&Ref::Str("abc".to_owned())));
    assert_eq!(err.frame_type(), Some("launch_rockets"));
    // A server-only type is unknown to the server's decoder.
    check(
        &msgpack_err(&Pack::frame("new_message").bytes()),
        UnknownType,
        true,
    );
}

#[test]
fn ref_range() {
    let limit = 1_i64 << 53;
    for good in [0, 1, limit - 1, -(limit - 1)] {
        let json = format!(r#"{{"ref":{good},"type":"ping"}}"#);
        let frame = decode_client(json.as_bytes(), Encoding::Json).unwrap();
        assert_eq!(frame.reference, Some(Ref::Int(good)));
        let pack = Pack {
            entries: Vec::new(),
        }
        .int("ref", good)
        .str("type", "ping");
        assert_eq!(
            decode_client(&pack.bytes(), Encoding::MessagePack)
                .unwrap()
                .reference,
            Some(Ref::Int(good))
        );
    }
    for bad in [
        limit.to_string(),
        (-limit).to_string(),
        u64::MAX.to_string(),
        "1.5".into(),
        "true".into(),
        "null".into(),
        "[7]".into(),
    ] {
        let json = format!(r#"{{"ref":{bad},"type":"ping"}}"#);
        let err = json_err(&json);
        assert_eq!(err.kind(), Invalid, "{json}: {err:?}");
        assert_eq!(err.reference(), None);
    }
    for bad in [limit as u64, u64::MAX] {
        let pack = Pack {
            entries: Vec::new(),
        }
        .uint("ref", bad)
        .str("type", "ping");
        check(&msgpack_err(&pack.bytes()), Invalid, false);
    }
    let long = "r".repeat(MAX_REF_BYTES + 1);
    check(
        &json_err(&format!(r#"{{"ref":"{long}","type":"ping"}}"#)),
        Invalid,
        false,
    );
    let longest = "r".repeat(MAX_REF_BYTES);
    let frame = decode_client(
        format!(r#"{{"ref":"{longest}","type":"ping"}}"#).as_bytes(),
        Encoding::Json,
    )
    .unwrap();
    assert_eq!(frame.reference, Some(Ref::Str(longest)));
}

#[test]
fn not_a_frame() {
    for json in [
        "",
        " ",
        "5",
        "\"ping\"",
        "[1,2]",
        "null",
        "{",
        "{\"type\":\"ping\"} {}",
        "{\"type\":\"ping\"}x",
    ] {
        check(&json_err(json), Malformed, false);
    }
    let ping = Pack {
        entries: Vec::new(),
    }
    .str("type", "ping")
    .bytes();
    let mut trailing = ping.clone();
    trailing.push(0xc0);
    for bytes in [
        &[][..],
        &[0xc0],
        &[0x92, 0x01, 0x02],
        &[0xa4, b'p', b'i', b'n', b'g'],
        &trailing,
    ] {
        check(&msgpack_err(bytes), Malformed, false);
    }
    // Non-string and non-UTF-8 keys.
    check(&msgpack_err(&[0x81, 0x01, 0x02]), Malformed, false);
    check(
        &msgpack_err(&[0x81, 0xa2, 0xff, 0xfe, 0x02]),
        Malformed,
        false,
    );
}

#[test]
fn lenient_where_clients_expect_it() {
    // null for optional fields, as JSON clients often send.
    let json = send_message_json(
        r#","clientMsgId":null,"containsPHI":null,"replyTo":null,"ttlSeconds":null"#,
    );
    let frame = decode_client(json.as_bytes(), Encoding::Json).unwrap();
    assert!(
        matches!(frame.request, ClientRequest::SendMessage(ref s) if !s.contains_phi && s.reply_to.is_none())
    );
    // An escaped `type` is still that type.
    let frame = decode_client(br#"{"type":"p\u0069ng"}"#, Encoding::Json).unwrap();
    assert_eq!(frame, ClientFrame::new(ClientRequest::Ping));
    // isTyping defaults to true; read_receipt by messageId; seq wins over messageId.
    let frame = decode_client(
        format!(r#"{{"type":"typing_indicator","channelId":"{CHANNEL}"}}"#).as_bytes(),
        Encoding::Json,
    )
    .unwrap();
    assert!(matches!(
        frame.request,
        ClientRequest::TypingIndicator(TypingIndicator {
            is_typing: true,
            ..
        })
    ));
    let id = Uuid::now_v7();
    let frame = decode_client(
        format!(r#"{{"type":"read_receipt","channelId":"{CHANNEL}","messageId":"{id}"}}"#)
            .as_bytes(),
        Encoding::Json,
    )
    .unwrap();
    assert!(
        matches!(frame.request, ClientRequest::ReadReceipt(ReadReceipt { up_to: ReadPosition::Message(m), .. }) if m.0 == id)
    );
    let frame = decode_client(
        format!(r#"{{"type":"read_receipt","channelId":"{CHANNEL}","messageId":"{id}","seq":4}}"#)
            .as_bytes(),
        Encoding::Json,
    )
    .unwrap();
    assert!(matches!(
        frame.request,
        ClientRequest::ReadReceipt(ReadReceipt {
            up_to: ReadPosition::Seq(4),
            ..
        })
    ));
    // fetch_history limits are clamped, not rejected.
    let limit = |l: Option<u32>| {
        FetchHistory {
            channel_id: ChannelId(Uuid::nil()),
            before_seq: None,
            limit: l,
        }
        .effective_limit()
    };
    assert_eq!(
        (
            limit(None),
            limit(Some(0)),
            limit(Some(7)),
            limit(Some(5000))
        ),
        (50, 1, 7, 100)
    );
}

#[test]
fn ids_are_uuid_strings_in_msgpack() {
    let channel = ChannelId(Uuid::parse_str(CHANNEL).unwrap());
    let frame = ClientFrame::new(ClientRequest::LeaveChannel(LeaveChannel {
        channel_id: channel,
    }));
    let bytes = encode_client(&frame, Encoding::MessagePack);
    let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"type": "leave_channel", "channelId": CHANNEL})
    );
}
