//! A connection's outbound side: a bounded queue of finished WebSocket
//! frames and the one writer task that drains it into the socket.
//!
//! Channel actors push into [`Outbound`] directly (no mailbox hop per
//! delivery). The queue holds [`Bytes`] that are complete frames on the wire
//! (see [`wire`]): a push is encoded and framed once and every recipient's
//! queue references the same bytes, never a copy. A full queue means the
//! client cannot keep up: the push fails, the connection is closed with 4009
//! and counted; memory never grows without bound.
//!
//! The writer takes everything queued at once and hands it to the socket in
//! vectored writes of up to [`WRITE_SLICES`] frames, so a burst of frames to
//! one client costs one `writev()` rather than one `write()` each. Reading
//! stays with tungstenite (see [`ControlWriter`]); only its own control
//! replies (pong, the answer to a client's close) come through this queue.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use courier_protocol::codec::Encoding;
use courier_protocol::error::close;
use courier_protocol::frames::ServerFrame;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};

use crate::metric_names as m;
use crate::wire::{self, Opcode};

/// A connection's id, unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The next id.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What happened to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue was full: the connection is being closed with 4009.
    SlowConsumer,
    /// The connection is gone.
    Gone,
}

/// State shared between the handles and the writer.
struct Shared {
    conn_id: ConnId,
    /// A close the writer must do at once (0: none).
    close_now: AtomicU16,
    wake: Notify,
}

/// The handle to a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    encoding: Encoding,
}

/// The writer's end, given to [`run_writer`].
pub struct OutboundReceiver {
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
}

/// Creates a connection's queue of `capacity` frames.
pub fn outbound(
    conn_id: ConnId,
    capacity: usize,
    encoding: Encoding,
) -> (Outbound, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        conn_id,
        close_now: AtomicU16::new(0),
        wake: Notify::new(),
    });
    (
        Outbound {
            tx,
            shared: shared.clone(),
            encoding,
        },
        OutboundReceiver { rx, shared },
    )
}

impl Outbound {
    /// The connection this queue belongs to.
    pub fn conn_id(&self) -> ConnId {
        self.shared.conn_id
    }

    /// The encoding the connection's pushes use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The same queue with another push encoding (fixed by the first frame).
    pub fn with_encoding(&self, encoding: Encoding) -> Outbound {
        Outbound {
            encoding,
            ..self.clone()
        }
    }

    /// Queues one finished frame without waiting. On overflow the
    /// connection is closed with 4009 and counted as a slow consumer.
    pub fn push(&self, frame: Bytes) -> Push {
        match self.tx.try_send(frame) {
            Ok(()) => Push::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close_now(close::SLOW_CONSUMER) {
                    counter!(m::SLOW_CONSUMERS).increment(1);
                    tracing::info!(conn_id = %self.shared.conn_id, "slow consumer: closing with 4009");
                }
                Push::SlowConsumer
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Gone,
        }
    }

    /// Encodes `frame` in `encoding` and queues it (an answer goes out in
    /// the encoding of its request, whatever the push encoding is).
    pub fn push_frame(&self, frame: &ServerFrame, encoding: Encoding) -> Push {
        match EncodedFrame::single(frame, encoding).get(encoding) {
            Some(bytes) => self.push(bytes),
            None => Push::Gone,
        }
    }

    /// Queues an encoded frame in this connection's encoding.
    pub fn push_encoded(&self, frame: &EncodedFrame) -> Push {
        match frame.get(self.encoding) {
            Some(bytes) => self.push(bytes),
            None => Push::Gone,
        }
    }

    /// Queues a ping.
    pub fn ping(&self) -> Push {
        self.push(wire::ping())
    }

    /// Asks the writer to close the socket now with `code`, dropping what is
    /// queued. Returns false when a close was already asked for.
    pub fn close_now(&self, code: u16) -> bool {
        let first = self
            .shared
            .close_now
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        self.shared.wake.notify_one();
        first
    }

    /// Queues a close frame behind everything already queued (graceful:
    /// normal closure, shutdown). Waits for room.
    pub async fn close_after_queued(&self, code: u16, reason: &'static str) {
        if self.tx.send(wire::close(code, reason)).await.is_err() {
            // The writer is gone already.
        }
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One server frame encoded and framed at most once per encoding, shared
/// by every recipient of a fan-out.
pub struct EncodedFrame {
    msgpack: Option<Bytes>,
    json: Option<Bytes>,
}

impl EncodedFrame {
    /// Encodes `frame` in each encoding for which `needs` is true.
    pub fn new(frame: &ServerFrame, msgpack: bool, json: bool) -> Self {
        let build = |encoding, opcode| {
            let payload = courier_protocol::codec::encode_server(frame, encoding);
            wire::frame(opcode, &payload)
        };
        Self {
            msgpack: msgpack.then(|| build(Encoding::MessagePack, Opcode::Binary)),
            json: json.then(|| build(Encoding::Json, Opcode::Text)),
        }
    }

    /// Encodes `frame` in one encoding.
    pub fn single(frame: &ServerFrame, encoding: Encoding) -> Self {
        Self::new(
            frame,
            encoding == Encoding::MessagePack,
            encoding == Encoding::Json,
        )
    }

    /// The frame's bytes in `encoding` (a cheap clone of shared bytes).
    pub fn get(&self, encoding: Encoding) -> Option<Bytes> {
        match encoding {
            Encoding::MessagePack => self.msgpack.clone(),
            Encoding::Json => self.json.clone(),
        }
    }
}

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// It sent a close frame with this code.
    Closed(u16),
    /// Every handle was dropped.
    Dropped,
    /// The socket failed.
    Failed,
}

/// Frames handed to one `writev()`.
pub const WRITE_SLICES: usize = 64;
/// Frames taken from the queue at once.
const DRAIN_MAX: usize = 256;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Drains the queue into `io` until a close or a socket error.
///
/// Each round takes what is queued and writes it with vectored writes; a
/// `close_now` is honoured between any two writes, also while the socket is
/// full (a slow consumer is closed even though its socket never drains).
pub async fn run_writer<W>(mut io: W, mut rx: OutboundReceiver) -> WriterEnd
where
    W: AsyncWrite + Unpin,
{
    let mut batch: Vec<Bytes> = Vec::new();
    // Progress into `batch`: whole frames written, then bytes of the next.
    let mut done = 0;
    let mut offset = 0;
    loop {
        if done == batch.len() {
            batch.clear();
            done = 0;
            tokio::select! {
                biased;
                _ = rx.shared.wake.notified() => {
                    if let Some(end) = close_now(&mut io, &rx.shared, false).await {
                        return end;
                    }
                    continue;
                }
                n = rx.rx.recv_many(&mut batch, DRAIN_MAX) => {
                    if n == 0 {
                        return WriterEnd::Dropped;
                    }
                }
            }
            // Let the rest of a fan-out burst (or of a commit batch) reach
            // the queue, so that it leaves in the same write.
            tokio::task::yield_now().await;
            while batch.len() < DRAIN_MAX {
                match rx.rx.try_recv() {
                    Ok(frame) => batch.push(frame),
                    Err(_) => break,
                }
            }
            counter!(m::FRAMES_OUT).increment(batch.len() as u64);
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (i, frame) in batch[done..].iter().take(WRITE_SLICES).enumerate() {
                let skip = if i == 0 { offset } else { 0 };
                slices[i] = IoSlice::new(&frame[skip..]);
                count += 1;
            }
            tokio::select! {
                biased;
                _ = rx.shared.wake.notified() => {
                    if let Some(end) = close_now(&mut io, &rx.shared, offset > 0).await {
                        return end;
                    }
                    continue;
                }
                r = io.write_vectored(&slices[..count]) => r,
            }
        };
        let mut n = match written {
            Ok(0) | Err(_) => return WriterEnd::Failed,
            Ok(n) => n,
        };
        while n > 0 {
            let left = batch[done].len() - offset;
            if n < left {
                offset += n;
                break;
            }
            n -= left;
            offset = 0;
            done += 1;
            if let Some(code) = wire::close_code(&batch[done - 1]) {
                let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
                return WriterEnd::Closed(code);
            }
        }
    }
}

/// Honours a pending `close_now`, if any: sends the close frame (unless a
/// frame is half written, which a close frame cannot follow) and ends.
async fn close_now<W>(io: &mut W, shared: &Shared, mid_frame: bool) -> Option<WriterEnd>
where
    W: AsyncWrite + Unpin,
{
    let code = shared.close_now.load(Ordering::SeqCst);
    if code == 0 {
        return None;
    }
    if !mid_frame {
        let frame = wire::close(code, "");
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            io.write_all(&frame).await?;
            io.shutdown().await
        })
        .await;
    }
    Some(WriterEnd::Closed(code))
}

/// The socket as tungstenite sees it: reads come from the socket; what
/// tungstenite writes by itself (a pong, the answer to a client's close) is
/// queued behind the pushes, so the one writer keeps frames whole and in
/// order. tungstenite writes whole frames, so each write is one queue entry.
pub struct ControlWriter<R> {
    read: R,
    queue: Outbound,
}

impl<R> ControlWriter<R> {
    /// Reads from `read`, writes into `queue`.
    pub fn new(read: R, queue: Outbound) -> Self {
        Self { read, queue }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ControlWriter<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ControlWriter<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.queue.push(Bytes::copy_from_slice(buf)) {
            Push::Queued | Push::SlowConsumer => Poll::Ready(Ok(buf.len())),
            Push::Gone => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn queue(capacity: usize) -> (Outbound, OutboundReceiver) {
        outbound(ConnId::next(), capacity, Encoding::MessagePack)
    }

    #[tokio::test]
    async fn frames_leave_whole_and_in_order() {
        let (tx, rx) = queue(1024);
        let (client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(run_writer(server, rx));
        let frames: Vec<Bytes> = (0..300u32)
            .map(|i| wire::frame(Opcode::Binary, &i.to_be_bytes().repeat(i as usize % 40)))
            .collect();
        for f in &frames {
            assert_eq!(tx.push(f.clone()), Push::Queued);
        }
        tx.close_after_queued(1000, "bye").await;
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.expect("read");
        let mut expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        expected.extend_from_slice(&wire::close(1000, "bye"));
        assert_eq!(got, expected);
        assert_eq!(writer.await.expect("writer"), WriterEnd::Closed(1000));
    }

    #[tokio::test]
    async fn close_now_ends_a_writer_whose_socket_is_full() {
        let (tx, rx) = queue(8);
        // The client never reads: a 16-byte pipe fills at once.
        let (_client, server) = tokio::io::duplex(16);
        let writer = tokio::spawn(run_writer(server, rx));
        let big = wire::frame(Opcode::Binary, &[1u8; 1000]);
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            outcomes.push(tx.push(big.clone()));
            tokio::task::yield_now().await;
        }
        assert!(outcomes.contains(&Push::SlowConsumer), "{outcomes:?}");
        let end = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer ends although its socket never drains")
            .expect("writer");
        assert_eq!(end, WriterEnd::Closed(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn control_writes_queue_behind_pushes() {
        let (tx, rx) = queue(16);
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(run_writer(server, rx));
        let push = wire::frame(Opcode::Text, b"{}");
        tx.push(push.clone());
        let mut control = ControlWriter::new(tokio::io::empty(), tx.clone());
        let pong = wire::frame(Opcode::Pong, b"p");
        control.write_all(&pong).await.expect("queued");
        let reply = wire::close(1000, "");
        control.write_all(&reply).await.expect("queued");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, [&push[..], &pong[..], &reply[..]].concat());
        assert_eq!(writer.await.expect("writer"), WriterEnd::Closed(1000));
    }
}
