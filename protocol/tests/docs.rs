//! Every JSON example in docs/protocol.md decodes, re-encodes to the same
//! JSON, and every frame type has at least one example.

use std::collections::BTreeSet;

use courier_protocol::codec::{
    decode_client, decode_server, encode_client, encode_server, Encoding,
};
use serde_json::Value;

/// The fenced blocks whose info string is `json <role>`.
fn examples(role: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let fence = format!("```json {role}");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() == fence {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push(block.join("\n"));
        }
    }
    out
}

#[test]
fn request_examples_decode_and_round_trip() {
    let examples = examples("request");
    let mut types = BTreeSet::new();
    for text in &examples {
        let frame = decode_client(text.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        types.insert(frame.request.type_name());
        let again: Value = serde_json::from_slice(&encode_client(&frame, Encoding::Json)).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<Value>(text).unwrap(),
            "{text}"
        );
        let packed = encode_client(&frame, Encoding::MessagePack);
        assert_eq!(decode_client(&packed, Encoding::MessagePack), Ok(frame));
    }
    let all = [
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
    assert_eq!(
        types,
        all.into_iter().collect(),
        "every request has an example"
    );
}

#[test]
fn server_examples_decode_and_round_trip() {
    let examples = examples("server");
    let mut types = BTreeSet::new();
    for text in &examples {
        let frame = decode_server(text.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        types.insert(frame.type_name());
        let again: Value = serde_json::from_slice(&encode_server(&frame, Encoding::Json)).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<Value>(text).unwrap(),
            "{text}"
        );
        let packed = encode_server(&frame, Encoding::MessagePack);
        assert_eq!(decode_server(&packed, Encoding::MessagePack), Ok(frame));
    }
    let all = [
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
    assert_eq!(
        types,
        all.into_iter().collect(),
        "every server frame has an example"
    );
}
