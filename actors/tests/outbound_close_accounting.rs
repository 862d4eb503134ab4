//! Regression tests for the first crash of the `connection` fuzz target
//! (fuzz/README.md, 2026-11-23): "attempt to add with overflow" at
//! `actors/src/realtime/outbound.rs:158` in `Outbound::push`.
//!
//! `Outbound::close_after_queued` sends its close frame straight into the
//! channel without adding its length to the queue's unwritten-bytes count,
//! but the writer subtracts the length of every frame it writes, the close
//! frame included. The count wraps below zero, and the next push to that
//! queue (a tungstenite control reply through `ControlWriter`, a channel's
//! fan-out to a connection whose second `authenticate` just failed, a
//! heartbeat ping) reads a count near `usize::MAX`:
//! - a push longer than the close frame overflows `before + len`: a panic
//!   wherever overflow checks are on (debug and test builds, the fuzz
//!   build), in whatever task pushed;
//! - a shorter one (an empty pong is 2 bytes, a 4001 close 21) is taken for
//!   a slow consumer: `close_now(4009)` and `courier_slow_consumers_total`
//!   counts a client that did nothing wrong.
//!
//! Fixed: `close_after_queued` counts its close frame. Run:
//! `cargo test -p courier-actors --test outbound_close_accounting`.

use courier_actors::realtime::outbound::{
    outbound, run_writer, ConnId, Outbound, Push, QueueLimits, WriterEnd,
};
use courier_actors::realtime::wire::{self, Opcode};
use courier_protocol::codec::Encoding;
use tokio::io::AsyncReadExt;

/// A queue with the server's default bounds, closed gracefully with 4001
/// (as the connection actor does before authentication), and drained.
async fn closed_queue() -> Outbound {
    let limits = QueueLimits {
        frames: 1024,
        bytes: 4 << 20,
    };
    let (tx, rx) = outbound(ConnId::next(), limits, Encoding::MessagePack);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let writer = tokio::spawn(run_writer(server, rx));
    tx.close_after_queued(4001, "not authenticated");
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, wire::close(4001, "not authenticated"));
    assert_eq!(writer.await.expect("writer").0, WriterEnd::Closed(4001));
    tx
}

#[tokio::test]
async fn a_short_push_after_a_graceful_close_is_not_a_slow_consumer() {
    let tx = closed_queue().await;
    // tungstenite's pong to a ping that crossed the close.
    assert_eq!(tx.push(wire::frame(Opcode::Pong, b"")), Push::Gone);
}

#[tokio::test]
async fn a_long_push_after_a_graceful_close_does_not_overflow() {
    let tx = closed_queue().await;
    // A channel's fan-out to a connection that is still joined.
    assert_eq!(
        tx.push(wire::frame(Opcode::Binary, &[0u8; 100])),
        Push::Gone
    );
}
