//! A connection's outbound side: a bounded queue of encoded frames and the
//! one writer task that drains it into the socket.
//!
//! Channel actors push into [`Outbound`] directly (no mailbox hop per
//! delivery). The queue holds `tungstenite::Message`s whose payload is a
//! shared `Bytes`, so a push encoded once is referenced by every recipient,
//! never copied. A full queue means the client cannot keep up: the push
//! fails, the connection is closed with 4009 and counted; memory never grows
//! without bound.
//!
//! The writer takes everything queued at once, feeds it to the socket and
//! flushes once, so a burst of frames becomes few `write()` calls.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::codec::Encoding;
use courier_protocol::error::close;
use futures_util::{Sink, SinkExt};
use metrics::counter;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::metric_names as m;

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
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
    encoding: Encoding,
}

/// The writer's end, given to [`run_writer`].
pub struct OutboundReceiver {
    rx: mpsc::Receiver<Message>,
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

    /// Queues one frame without waiting. On overflow the connection is
    /// closed with 4009 and counted as a slow consumer.
    pub fn push(&self, frame: Message) -> Push {
        match self.tx.try_send(frame) {
            Ok(()) => {
                counter!(m::FRAMES_OUT).increment(1);
                Push::Queued
            }
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
    pub fn push_frame(
        &self,
        frame: &courier_protocol::frames::ServerFrame,
        encoding: Encoding,
    ) -> Push {
        match EncodedFrame::single(frame, encoding).message(encoding) {
            Some(msg) => self.push(msg),
            None => Push::Gone,
        }
    }

    /// Queues an encoded frame in this connection's encoding.
    pub fn push_encoded(&self, bytes: &EncodedFrame) -> Push {
        match bytes.message(self.encoding) {
            Some(msg) => self.push(msg),
            None => Push::Gone,
        }
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
        let frame = Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        }));
        if self.tx.send(frame).await.is_err() {
            // The writer is gone already.
        }
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One server frame encoded at most once per encoding, shared by every
/// recipient of a fan-out.
pub struct EncodedFrame {
    msgpack: Option<Bytes>,
    json: Option<Utf8Bytes>,
}

impl EncodedFrame {
    /// Encodes `frame` in each encoding for which `needs` is true.
    pub fn new(frame: &courier_protocol::frames::ServerFrame, msgpack: bool, json: bool) -> Self {
        Self {
            msgpack: msgpack
                .then(|| courier_protocol::codec::encode_server(frame, Encoding::MessagePack)),
            json: json
                .then(|| courier_protocol::codec::encode_server(frame, Encoding::Json))
                .and_then(|b| Utf8Bytes::try_from(b).ok()),
        }
    }

    /// Encodes `frame` in one encoding.
    pub fn single(frame: &courier_protocol::frames::ServerFrame, encoding: Encoding) -> Self {
        Self::new(
            frame,
            encoding == Encoding::MessagePack,
            encoding == Encoding::Json,
        )
    }

    /// The WebSocket message for an encoding (a cheap clone of shared bytes).
    pub fn message(&self, encoding: Encoding) -> Option<Message> {
        match encoding {
            Encoding::MessagePack => self.msgpack.clone().map(Message::Binary),
            Encoding::Json => self.json.clone().map(Message::Text),
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

/// Drains the queue into `sink` until a close or a socket error.
pub async fn run_writer<S>(mut sink: S, mut rx: OutboundReceiver) -> WriterEnd
where
    S: Sink<Message> + Unpin,
{
    const DRAIN_MAX: usize = 512;
    let mut frames = Vec::with_capacity(64);
    loop {
        tokio::select! {
            biased;
            _ = rx.shared.wake.notified() => {
                let code = rx.shared.close_now.load(Ordering::SeqCst);
                if code != 0 {
                    let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static("") };
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        sink.send(Message::Close(Some(frame))),
                    ).await;
                    return WriterEnd::Closed(code);
                }
            }
            n = rx.rx.recv_many(&mut frames, DRAIN_MAX) => {
                if n == 0 {
                    return WriterEnd::Dropped;
                }
                let mut close_code = None;
                for frame in frames.drain(..) {
                    if let Message::Close(Some(cf)) = &frame {
                        close_code = Some(u16::from(cf.code));
                    }
                    if sink.feed(frame).await.is_err() {
                        return WriterEnd::Failed;
                    }
                    if close_code.is_some() {
                        break;
                    }
                }
                if sink.flush().await.is_err() {
                    return WriterEnd::Failed;
                }
                if let Some(code) = close_code {
                    return WriterEnd::Closed(code);
                }
            }
        }
    }
}
