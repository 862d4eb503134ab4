//! Criterion micro-benchmarks of the per-message hot path:
//! `cargo bench --bench hot_path` (benches/README.md has the figures).
//!
//! - frame decode and encode, MessagePack and JSON, of a `send_message`
//!   (what the server decodes per send) and a `new_message` (what it encodes
//!   once per push, and what every client decodes);
//! - seal and open of a 100-byte message (`MessageCipher`, warm key cache);
//! - one audit chain step (`chain::chain` with one entry).

use std::hint::black_box;

use courier_actors::audit::chain::{chain, ChainHead, PendingAudit};
use courier_actors::crypto::{Keyring, MessageCipher};
use courier_protocol::frames::{ClientRequest, MessageView, SendMessage};
use courier_protocol::{
    decode_client, decode_server, encode_client, encode_server, ChannelId, ClientFrame, Encoding,
    MessageId, Ref, ServerFrame, UserId,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The load tester's payload: 100 bytes of text.
fn text() -> String {
    let mut t = format!("{:020} {:05} ", 1_234_567_890_123u64, 3);
    t.extend(std::iter::repeat_n('x', 100 - t.len()));
    t
}

fn frames() -> (ClientFrame, ServerFrame) {
    let channel = ChannelId::new();
    let send = ClientFrame {
        reference: Some(Ref::Int(42)),
        request: ClientRequest::SendMessage(SendMessage::text(channel, text())),
    };
    let push = ServerFrame::new_message(MessageView {
        id: MessageId::new(),
        channel_id: channel,
        seq: 123_456,
        sender_id: UserId::new(),
        sender: "bench-user-17".to_owned(),
        text: text(),
        timestamp: 1_790_000_000_000,
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
    });
    (send, push)
}

fn codec(c: &mut Criterion) {
    let (send, push) = frames();
    for (name, encoding) in [("msgpack", Encoding::MessagePack), ("json", Encoding::Json)] {
        let send_bytes = encode_client(&send, encoding);
        let push_bytes = encode_server(&push, encoding);
        let mut g = c.benchmark_group(format!("codec/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("decode send_message", |b| {
            b.iter(|| decode_client(black_box(&send_bytes), encoding))
        });
        g.bench_function("encode send_message", |b| {
            b.iter(|| encode_client(black_box(&send), encoding))
        });
        g.bench_function("encode new_message", |b| {
            b.iter(|| encode_server(black_box(&push), encoding))
        });
        g.bench_function("decode new_message", |b| {
            b.iter(|| decode_server(black_box(&push_bytes), encoding))
        });
        g.finish();
        println!(
            "codec/{name}: send_message {} bytes, new_message {} bytes",
            send_bytes.len(),
            push_bytes.len()
        );
    }
}

fn crypto(c: &mut Criterion) {
    let cipher = MessageCipher::new(Keyring::generate());
    let channel = ChannelId::new();
    let message = MessageId::new();
    let plaintext = text().into_bytes();
    let sealed = cipher
        .seal(channel, message, 7, &plaintext)
        .unwrap_or_else(|e| panic!("seal: {e}"));
    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Bytes(plaintext.len() as u64));
    g.bench_function("seal 100 B", |b| {
        b.iter(|| cipher.seal(channel, message, black_box(7), black_box(&plaintext)))
    });
    g.bench_function("open 100 B", |b| {
        b.iter(|| {
            cipher.open(
                channel,
                message,
                black_box(7),
                sealed.key_version,
                &sealed.nonce,
                black_box(&sealed.ciphertext),
            )
        })
    });
    g.finish();
}

fn audit(c: &mut Criterion) {
    let head = ChainHead::genesis();
    let entry = PendingAudit::new(
        Some(UserId::new()),
        Some("127.0.0.1".to_owned()),
        "message.send",
        serde_json::json!({"channelId": ChannelId::new(), "messageId": MessageId::new(), "seq": 99}),
    );
    c.bench_function("audit/chain one entry", |b| {
        b.iter(|| chain(black_box(&head), vec![entry.clone()]))
    });
}

criterion_group!(benches, codec, crypto, audit);
criterion_main!(benches);
