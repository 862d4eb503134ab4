//! A connection's outbound side: a bounded queue of finished WebSocket
//! frames and the one writer task that drains it into the socket.
//!
//! Channel actors push into [`Outbound`] directly (no mailbox hop per
//! delivery). The queue holds [`Bytes`] that are complete frames on the wire
//! (see [`wire`]): a push is encoded and framed once and every recipient's
//! queue references the same bytes, never a copy. The queue is bounded in
//! frames and in bytes not yet written to the socket: when either bound is
//! reached the client cannot keep up, the push fails, the connection is
//! closed with 4009 and counted; memory never grows without bound.
//!
//! The writer takes everything queued at once and hands it to the socket in
//! vectored writes of up to [`WRITE_SLICES`] frames, so a burst of frames to
//! one client costs one `writev()` rather than one `write()` each. Reading
//! stays with tungstenite (see [`ControlWriter`]); only its own control
//! replies (pong, the answer to a client's close) come through this queue.
//!
//! A fan-out does not wake thousands of writers: it queues with
//! [`Outbound::push_deferred`], then [`Outbound::flush`] writes each
//! connection's queue straight to its socket when that connection's writer
//! is idle (plain TCP, see [`TcpWrite`]), with the same one `writev()` per
//! connection the writer would have made, and wakes the writer only for
//! what the socket did not take. Woken writers would each be a task in the
//! run queue ahead of the next message's own steps (its reader, its
//! connection, its channel, its commit), and each step would wait behind
//! all of them.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use courier_protocol::codec::Encoding;
use courier_protocol::compact::CompactMessage;
use courier_protocol::error::close;
use courier_protocol::frames::ServerFrame;
use futures_util::task::AtomicWaker;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::realtime::wire::{self, Opcode};
use crate::telemetry::names as m;

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
    /// Queued by a deferred push into an empty queue: nobody else answers
    /// for it, so the caller owes it a [`Outbound::flush`] or
    /// [`Outbound::wake_writer`]. (Behind other frames, a deferred push is
    /// `Queued`: whoever answers for those takes it too.)
    Deferred,
    /// The queue was full: the connection is being closed with 4009.
    SlowConsumer,
    /// The connection is gone.
    Gone,
}

/// State shared between the handles and the writer.
///
/// The queue has many producers (channel actors, the connection actor) and
/// one consumer (the writer), which takes everything queued at once by
/// swapping the deque out. A producer wakes the writer only when it finds
/// the deque empty: a non-empty deque has already woken it (or will be
/// flushed, after deferred pushes), and the writer always looks again after
/// it registers its waker. Only one party writes to the socket at a time:
/// the writer while it is busy, a flush (holding the queue's lock) while it
/// is idle.
struct Shared {
    conn_id: ConnId,
    queue: Mutex<Queue>,
    /// The writer's waker: frames arrived, a close is asked for, or the
    /// last handle went.
    writer: AtomicWaker,
    /// A close the writer must do at once (0: none).
    close_now: AtomicU16,
    /// Bytes pushed and not yet written to the socket.
    unwritten: AtomicUsize,
    max_unwritten: usize,
    max_frames: usize,
    /// Live [`Outbound`] handles; the writer ends when none is left.
    handles: AtomicUsize,
    /// The writer has ended: pushes fail with [`Push::Gone`].
    writer_gone: AtomicBool,
    /// Producers waiting in [`Outbound::room`], and how they are woken when
    /// frames were written (nobody is told while none waits).
    room_waiters: AtomicUsize,
    drained: tokio::sync::Notify,
}

/// The frames waiting for the writer.
struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of `frames[0]` a flush already wrote.
    head_written: usize,
    /// The writer holds frames it has not finished writing, or is closing
    /// or gone: nobody else writes to the socket.
    writer_busy: bool,
    /// The socket, for flushes while the writer is idle (plain TCP only).
    direct: Option<TcpWrite>,
    /// The frames queued were pushed deferred and wait for a flush (a
    /// wide channel's flush line may hold them for its window).
    deferred: bool,
}

impl Shared {
    /// Frames were written, or the writer went: wakes [`Outbound::room`].
    fn wrote(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.drained.notify_waiters();
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent deque.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `frame` unless the writer is gone or, with `bounded`, the
    /// frame bound is reached. With `wake`, wakes the writer when the deque
    /// was empty or held only deferred frames (an answer does not wait for
    /// a flush line's window, and takes those frames with it); without,
    /// says so with [`Push::Deferred`] when the deque was empty.
    fn enqueue(&self, frame: Bytes, bounded: bool, wake: bool) -> Push {
        let (was_empty, was_deferred) = {
            let mut queue = self.queue();
            if self.writer_gone.load(Ordering::Acquire) {
                return Push::Gone;
            }
            if bounded && queue.frames.len() >= self.max_frames {
                return Push::SlowConsumer;
            }
            queue.frames.push_back(frame);
            let was_empty = queue.frames.len() == 1;
            let was_deferred = queue.deferred && !was_empty;
            // A waking push hands the deque to the writer; a deferred one
            // into an empty deque owes it a flush.
            queue.deferred = !wake && (was_empty || queue.deferred);
            (was_empty, was_deferred)
        };
        if !wake && was_empty {
            return Push::Deferred;
        }
        if wake && (was_empty || was_deferred) {
            self.writer.wake();
        }
        Push::Queued
    }
}

impl Queue {
    /// Writes queued frames, up to the first close frame (the writer's to
    /// send, and then to shut the socket), straight to the socket for as
    /// long as it takes them without waiting. Returns the frames written.
    fn write_direct(&mut self, unwritten: &AtomicUsize) -> usize {
        let Queue {
            frames,
            head_written,
            direct: Some(socket),
            ..
        } = self
        else {
            return 0;
        };
        let mut done = 0;
        loop {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = gather(frames, *head_written, true, &mut slices);
            if count == 0 {
                break;
            }
            let len: usize = slices[..count].iter().map(|s| s.len()).sum();
            // Would block, or failed: the writer takes it from here.
            let Ok(n @ 1..) = socket.stream().try_write_vectored(&slices[..count]) else {
                break;
            };
            done += consume(frames, head_written, n, unwritten).frames;
            if n < len {
                // The socket is full.
                break;
            }
        }
        if frames.is_empty() {
            // Like the writer's: an idle connection keeps no queue buffer.
            *frames = VecDeque::new();
        }
        done
    }
}

/// Fills `slices` with the first frames of `frames` (the first from byte
/// `offset`), stopping before a close frame with `until_close`. Returns how
/// many it filled.
fn gather<'a>(
    frames: &'a VecDeque<Bytes>,
    offset: usize,
    until_close: bool,
    slices: &mut [IoSlice<'a>; WRITE_SLICES],
) -> usize {
    let mut count = 0;
    for (slice, frame) in slices.iter_mut().zip(frames) {
        if until_close && wire::is_close(frame) {
            break;
        }
        let skip = if count == 0 { offset } else { 0 };
        *slice = IoSlice::new(&frame[skip..]);
        count += 1;
    }
    count
}

/// What a write of `n` bytes finished.
struct Consumed {
    frames: usize,
    /// The close code, when the last frame finished was a close frame.
    close: Option<u16>,
}

/// Pops the frames the `n` bytes just written finished from `frames`, whose
/// first `offset` bytes had been written before, and uncounts them.
fn consume(
    frames: &mut VecDeque<Bytes>,
    offset: &mut usize,
    mut n: usize,
    unwritten: &AtomicUsize,
) -> Consumed {
    let mut done = Consumed {
        frames: 0,
        close: None,
    };
    while n > 0 {
        let Some(frame) = frames.front() else { break };
        let left = frame.len() - *offset;
        if n < left {
            *offset += n;
            break;
        }
        n -= left;
        *offset = 0;
        let frame = frames.pop_front().expect("a frame was written");
        unwritten.fetch_sub(frame.len(), Ordering::Relaxed);
        done.frames += 1;
        done.close = wire::close_code(&frame);
        if done.close.is_some() {
            break;
        }
    }
    done
}

/// How much a connection's queue may hold.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Frames queued.
    pub frames: usize,
    /// Bytes pushed and not yet written to the socket (a frame over it
    /// still goes through when nothing else is waiting).
    pub bytes: usize,
}

impl QueueLimits {
    /// `frames` frames, with no byte bound.
    pub fn frames(frames: usize) -> Self {
        Self {
            frames,
            bytes: usize::MAX,
        }
    }
}

/// The handle to a connection's outbound queue. Cheap to clone.
pub struct Outbound {
    shared: Arc<Shared>,
    form: PushForm,
}

/// The writer's end, given to [`run_writer`].
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

/// Creates a connection's queue.
pub fn outbound(
    conn_id: ConnId,
    limits: QueueLimits,
    encoding: Encoding,
) -> (Outbound, OutboundReceiver) {
    let shared = Arc::new(Shared {
        conn_id,
        queue: Mutex::new(Queue {
            frames: VecDeque::new(),
            head_written: 0,
            writer_busy: false,
            direct: None,
            deferred: false,
        }),
        writer: AtomicWaker::new(),
        close_now: AtomicU16::new(0),
        unwritten: AtomicUsize::new(0),
        max_unwritten: limits.bytes,
        max_frames: limits.frames.max(1),
        handles: AtomicUsize::new(1),
        writer_gone: AtomicBool::new(false),
        room_waiters: AtomicUsize::new(0),
        drained: tokio::sync::Notify::new(),
    });
    (
        Outbound {
            shared: shared.clone(),
            form: PushForm::standard(encoding),
        },
        OutboundReceiver { shared },
    )
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Outbound {
            shared: self.shared.clone(),
            form: self.form,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.writer.wake();
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let dropped = {
            let mut queue = self.shared.queue();
            self.shared.writer_gone.store(true, Ordering::Release);
            queue.writer_busy = true;
            queue.direct = None;
            queue.head_written = 0;
            std::mem::take(&mut queue.frames)
        };
        let bytes: usize = dropped.iter().map(Bytes::len).sum();
        self.shared.unwritten.fetch_sub(bytes, Ordering::Relaxed);
        self.shared.wrote();
    }
}

impl Outbound {
    /// The connection this queue belongs to.
    pub fn conn_id(&self) -> ConnId {
        self.shared.conn_id
    }

    /// The encoding the connection's pushes use.
    pub fn encoding(&self) -> Encoding {
        self.form.encoding()
    }

    /// The form the connection's pushes take.
    pub fn form(&self) -> PushForm {
        self.form
    }

    /// The same queue with another push encoding (fixed by the first frame).
    pub fn with_encoding(&self, encoding: Encoding) -> Outbound {
        self.with_form(PushForm::standard(encoding))
    }

    /// The same queue with another push form (compact frames are asked
    /// for at `authenticate`).
    pub fn with_form(&self, form: PushForm) -> Outbound {
        let mut handle = self.clone();
        handle.form = form;
        handle
    }

    /// Lets [`flush`](Self::flush) write to `socket`, the one the writer
    /// writes to, while the writer is idle.
    pub fn write_directly(&self, socket: TcpWrite) {
        self.shared.queue().direct = Some(socket);
    }

    /// Queues one finished frame without waiting. On overflow the
    /// connection is closed with 4009 and counted as a slow consumer.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_with(frame, true)
    }

    /// Queues like [`push`](Self::push) without waking the writer: when it
    /// returns [`Push::Deferred`], the caller calls [`flush`](Self::flush)
    /// or [`wake_writer`](Self::wake_writer) after its last push of a
    /// fan-out.
    pub fn push_deferred(&self, frame: Bytes) -> Push {
        self.push_with(frame, false)
    }

    /// Writes what is queued straight to the socket when the writer is idle
    /// and nothing stands in the way (a close asked for or queued, TLS),
    /// and wakes the writer for whatever is left. Returns the frames
    /// written here.
    pub fn flush(&self) -> usize {
        let mut queue = self.shared.queue();
        if queue.frames.is_empty() {
            return 0;
        }
        queue.deferred = false;
        let mut written = 0;
        if !queue.writer_busy && self.shared.close_now.load(Ordering::SeqCst) == 0 {
            written = queue.write_direct(&self.shared.unwritten);
        }
        let left = !queue.frames.is_empty();
        drop(queue);
        if left {
            self.shared.writer.wake();
        }
        if written > 0 {
            self.shared.wrote();
        }
        written
    }

    /// Whether at most half of each bound is used: room for a producer that
    /// paces itself (a recovery replay) while pushes from others still fit.
    pub fn has_room(&self) -> bool {
        let frames = self.shared.queue().frames.len();
        frames * 2 <= self.shared.max_frames
            && self.shared.unwritten.load(Ordering::Relaxed) * 2 <= self.shared.max_unwritten
    }

    /// Waits until [`has_room`](Self::has_room); `false` when the connection
    /// is closing or gone instead. This is the back-pressure of a producer
    /// that could otherwise overflow the queue by itself.
    pub async fn room(&self) -> bool {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.shared.room_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.shared.room_waiters);
        loop {
            if self.is_closed() || self.shared.close_now.load(Ordering::SeqCst) != 0 {
                return false;
            }
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return true;
            }
            // A close asked for wakes nobody here: look again now and then.
            let _ = tokio::time::timeout(ROOM_RECHECK, notified).await;
        }
    }

    /// Wakes the writer for what deferred pushes queued (the writer writes
    /// it; see [`flush`](Self::flush) for writing it here).
    pub fn wake_writer(&self) {
        self.shared.writer.wake();
    }

    fn push_with(&self, frame: Bytes, wake: bool) -> Push {
        if self.is_closed() {
            return Push::Gone;
        }
        let len = frame.len();
        let before = self.shared.unwritten.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.shared.max_unwritten {
            self.shared.unwritten.fetch_sub(len, Ordering::Relaxed);
            return self.slow_consumer();
        }
        match self.shared.enqueue(frame, true, wake) {
            queued @ (Push::Queued | Push::Deferred) => queued,
            refused => {
                self.shared.unwritten.fetch_sub(len, Ordering::Relaxed);
                match refused {
                    Push::SlowConsumer => self.slow_consumer(),
                    other => other,
                }
            }
        }
    }

    /// Closes the connection with 4009 (once) and counts it.
    fn slow_consumer(&self) -> Push {
        if self.close_now(close::SLOW_CONSUMER) {
            counter!(m::SLOW_CONSUMERS).increment(1);
            tracing::info!(conn_id = %self.shared.conn_id, "slow consumer: closing with 4009");
        }
        Push::SlowConsumer
    }

    /// Encodes `frame` in `encoding` and queues it (an answer goes out in
    /// the encoding of its request, whatever the push encoding is).
    pub fn push_frame(&self, frame: &ServerFrame, encoding: Encoding) -> Push {
        self.push_in(frame, PushForm::standard(encoding))
    }

    /// Encodes `frame` in this connection's push form and queues it.
    pub fn deliver(&self, frame: &ServerFrame) -> Push {
        self.push_in(frame, self.form)
    }

    fn push_in(&self, frame: &ServerFrame, form: PushForm) -> Push {
        match EncodedFrame::single(frame, form).get(form) {
            Some(bytes) => self.push(bytes),
            None => Push::Gone,
        }
    }

    /// Queues an encoded frame in this connection's push form, deferred
    /// (see [`push_deferred`](Self::push_deferred)).
    pub fn push_encoded_deferred(&self, frame: &EncodedFrame) -> Push {
        match frame.get(self.form) {
            Some(bytes) => self.push_deferred(bytes),
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
        self.shared.writer.wake();
        first
    }

    /// Queues a close frame behind everything already queued (graceful:
    /// normal closure, shutdown). The queue's bounds do not apply to it: a
    /// close always finds room.
    pub fn close_after_queued(&self, code: u16, reason: &'static str) {
        let frame = wire::close(code, reason);
        // Counted like every queued frame: the writer uncounts what it
        // writes (a close frame uncounted here once wrapped the count).
        let len = frame.len();
        self.shared.unwritten.fetch_add(len, Ordering::Relaxed);
        if self.shared.enqueue(frame, false, true) != Push::Queued {
            // The writer is gone already.
            self.shared.unwritten.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.writer_gone.load(Ordering::Acquire)
    }
}

/// The form a connection's pushes take: its push encoding, and for
/// MessagePack whether it asked for compact frames at `authenticate`
/// (see [`courier_protocol::compact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PushForm {
    /// Standard MessagePack frames.
    MessagePack,
    /// Standard JSON frames.
    Json,
    /// MessagePack, with `new_message` as the compact `m`.
    Compact,
}

impl PushForm {
    /// The codec of the form's frames.
    pub fn encoding(self) -> Encoding {
        match self {
            PushForm::MessagePack | PushForm::Compact => Encoding::MessagePack,
            PushForm::Json => Encoding::Json,
        }
    }

    /// The standard form of `encoding`.
    pub fn standard(encoding: Encoding) -> Self {
        match encoding {
            Encoding::MessagePack => PushForm::MessagePack,
            Encoding::Json => PushForm::Json,
        }
    }
}

/// Which forms a fan-out needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forms {
    pub msgpack: bool,
    pub json: bool,
    pub compact: bool,
}

impl Forms {
    /// Just `form`.
    pub fn only(form: PushForm) -> Self {
        let mut forms = Forms::default();
        match form {
            PushForm::MessagePack => forms.msgpack = true,
            PushForm::Json => forms.json = true,
            PushForm::Compact => forms.compact = true,
        }
        forms
    }
}

/// One server frame encoded and framed at most once per push form, shared
/// by every recipient of a fan-out. Only `new_message` has a compact form
/// of its own; for every other frame the compact form is the MessagePack
/// one, the same bytes.
pub struct EncodedFrame {
    msgpack: Option<Bytes>,
    json: Option<Bytes>,
    compact: Option<Bytes>,
}

impl EncodedFrame {
    /// Encodes `frame` in each form `forms` asks for.
    pub fn new(frame: &ServerFrame, forms: Forms) -> Self {
        let build = |frame: &ServerFrame, encoding, opcode| {
            let payload = courier_protocol::codec::encode_server(frame, encoding);
            wire::frame(opcode, &payload)
        };
        let compact_message = match frame {
            // A message with files or a patient reference has no compact
            // form: compact clients get the standard one (docs/protocol.md,
            // compact pushes).
            ServerFrame::NewMessage(push)
                if forms.compact
                    && push.data.attachments.is_empty()
                    && push.data.patient_ref.is_none() =>
            {
                Some(build(
                    &ServerFrame::CompactMessage(CompactMessage::from(&push.data)),
                    Encoding::MessagePack,
                    Opcode::Binary,
                ))
            }
            _ => None,
        };
        let msgpack = (forms.msgpack || (forms.compact && compact_message.is_none()))
            .then(|| build(frame, Encoding::MessagePack, Opcode::Binary));
        let compact = match compact_message {
            Some(bytes) => Some(bytes),
            None if forms.compact => msgpack.clone(),
            None => None,
        };
        Self {
            msgpack,
            json: forms
                .json
                .then(|| build(frame, Encoding::Json, Opcode::Text)),
            compact,
        }
    }

    /// Encodes `frame` in one form.
    pub fn single(frame: &ServerFrame, form: PushForm) -> Self {
        Self::new(frame, Forms::only(form))
    }

    /// The frame's bytes in `form` (a cheap clone of shared bytes).
    pub fn get(&self, form: PushForm) -> Option<Bytes> {
        match form {
            PushForm::MessagePack => self.msgpack.clone(),
            PushForm::Json => self.json.clone(),
            PushForm::Compact => self.compact.clone(),
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
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often [`Outbound::room`] looks again without being woken.
const ROOM_RECHECK: Duration = Duration::from_millis(100);
/// How long a connection closed by the server (4009, say) may take to take
/// the rest of a half-written frame and the close frame, after its actor
/// has gone: the socket, and at most one frame, are held that long.
pub const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// A close the writer could not finish at once (the socket was full): the
/// rest of the frame being written, then the close frame.
pub struct Closing<W> {
    io: W,
    rest: Bytes,
    code: u16,
}

impl<W: AsyncWrite + Unpin> Closing<W> {
    /// Writes what is left and the close frame, within [`CLOSE_LINGER`],
    /// then shuts the socket down; gives up silently when the client does
    /// not take them.
    pub async fn deliver(mut self) {
        let close = wire::close(self.code, "");
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            self.io.write_all(&self.rest).await?;
            self.io.write_all(&close).await?;
            self.io.shutdown().await
        })
        .await;
    }
}

/// What the writer found when it looked at the queue.
enum Take {
    /// Frames, now in the writer's batch.
    Frames,
    /// A close asked for with `close_now`, and the rest of a frame a flush
    /// half wrote.
    Close(u16, Bytes),
    /// Every handle was dropped and nothing is left.
    Dropped,
}

impl OutboundReceiver {
    /// A close asked for with `close_now`, with the writer's waker
    /// registered first so that a later one wakes it.
    fn close_asked(&self, cx: &mut Context<'_>) -> Option<u16> {
        self.shared.writer.register(cx.waker());
        match self.shared.close_now.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }

    /// Swaps everything queued into the empty `batch` (with how much of
    /// its first frame a flush wrote into `offset`), or waits for it; the
    /// writer is busy from then until it finds the queue empty.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Bytes>,
        offset: &mut usize,
    ) -> Poll<Take> {
        let close = self.close_asked(cx);
        let mut queue = self.shared.queue();
        if let Some(code) = close {
            // From here on only this writer, then its `Closing`, writes.
            queue.writer_busy = true;
            let rest = match queue.frames.front() {
                Some(frame) if queue.head_written > 0 => frame.slice(queue.head_written..),
                _ => Bytes::new(),
            };
            return Poll::Ready(Take::Close(code, rest));
        }
        if !queue.frames.is_empty() {
            queue.deferred = false;
            std::mem::swap(&mut queue.frames, batch);
            *offset = std::mem::take(&mut queue.head_written);
            queue.writer_busy = true;
            return Poll::Ready(Take::Frames);
        }
        if self.shared.handles.load(Ordering::Acquire) == 0 {
            queue.writer_busy = true;
            return Poll::Ready(Take::Dropped);
        }
        queue.writer_busy = false;
        Poll::Pending
    }
}

/// Drains the queue into `io` until a close or a socket error.
///
/// Each round takes everything queued and writes it with vectored writes;
/// a `close_now` is honoured between any two writes, also while the socket
/// is full: the writer ends at once (so a slow consumer's actor goes at
/// once) and hands back a [`Closing`] with what must still go out for the
/// client to see the close code; the caller delivers it after telling the
/// actor.
pub async fn run_writer<W>(mut io: W, rx: OutboundReceiver) -> (WriterEnd, Option<Closing<W>>)
where
    W: AsyncWrite + Unpin,
{
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    // Bytes of `batch[0]` already written.
    let mut offset = 0;
    loop {
        if batch.is_empty() {
            // An idle connection keeps no queue buffer: the drained one is
            // freed before waiting, and the next burst allocates one again
            // (one allocation per burst, against one write per burst).
            if batch.capacity() > 0 {
                batch = VecDeque::new();
            }
            match poll_fn(|cx| rx.poll_take(cx, &mut batch, &mut offset)).await {
                Take::Frames => counter!(m::FRAMES_OUT).increment(batch.len() as u64),
                Take::Close(code, rest) => return closing(io, rest, code),
                Take::Dropped => return (WriterEnd::Dropped, None),
            }
        }
        let written = poll_fn(|cx| {
            if let Some(code) = rx.close_asked(cx) {
                return Poll::Ready(Err(code));
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = gather(&batch, offset, false, &mut slices);
            Pin::new(&mut io)
                .poll_write_vectored(cx, &slices[..count])
                .map(Ok)
        })
        .await;
        let n = match written {
            Err(code) => {
                let rest = if offset > 0 {
                    batch[0].slice(offset..)
                } else {
                    Bytes::new()
                };
                return closing(io, rest, code);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return (WriterEnd::Failed, None),
            Ok(Ok(n)) => n,
        };
        let consumed = consume(&mut batch, &mut offset, n, &rx.shared.unwritten);
        rx.shared.wrote();
        if let Some(code) = consumed.close {
            // Boxed, like every rare path here: its timer would otherwise
            // be part of every idle connection's writer.
            let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, io.shutdown())).await;
            return (WriterEnd::Closed(code), None);
        }
    }
}

/// The end of a writer told to close now with `code`.
fn closing<W>(io: W, rest: Bytes, code: u16) -> (WriterEnd, Option<Closing<W>>) {
    (WriterEnd::Closed(code), Some(Closing { io, rest, code }))
}

/// A connection's socket write half, as it comes from the upgrade.
pub enum SocketWrite {
    /// Plain TCP: flushes may write to it while the writer is idle.
    Tcp(OwnedWriteHalf),
    /// Anything else (TLS): only the writer writes to it.
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
}

/// A plain TCP socket's write half, shared by the connection's writer and
/// the flushes that write for it while it is idle (never both at once: see
/// [`Outbound::flush`]). Its last clone's drop shuts the sending side down.
#[derive(Clone)]
pub struct TcpWrite(Arc<OwnedWriteHalf>);

impl TcpWrite {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self(Arc::new(half))
    }

    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// Tries `write` until the socket takes it or reports an error, waiting
    /// for it to become writable after each would-block.
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
            match write(self.stream()) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for TcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let socket = socket2::SockRef::from(self.stream());
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
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
            Push::Queued | Push::Deferred | Push::SlowConsumer => Poll::Ready(Ok(buf.len())),
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
        outbound(
            ConnId::next(),
            QueueLimits::frames(capacity),
            Encoding::MessagePack,
        )
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
        tx.close_after_queued(1000, "bye");
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.expect("read");
        let mut expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        expected.extend_from_slice(&wire::close(1000, "bye"));
        assert_eq!(got, expected);
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Closed(1000));
    }

    /// An idle connection keeps no queue buffer: once a burst is written
    /// and the writer waits again, the queue it swapped in has none (the
    /// writer freed its drained one first), so the deque a producer fills
    /// next starts empty. Two bursts, since the first one's swap hands the
    /// queue the writer's initial, never-allocated deque either way.
    #[tokio::test]
    async fn an_idle_writer_leaves_no_queue_buffer() {
        let (tx, rx) = queue(1024);
        let shared = rx.shared.clone();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(run_writer(server, rx));
        let frame = wire::frame(Opcode::Binary, b"hello");
        for _ in 0..2 {
            for _ in 0..10 {
                assert_eq!(tx.push(frame.clone()), Push::Queued);
            }
            let mut got = vec![0u8; frame.len() * 10];
            client
                .read_exact(&mut got)
                .await
                .expect("the burst arrives");
            // Let the writer go back to waiting.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(shared.queue().frames.len(), 0);
        assert_eq!(
            shared.queue().frames.capacity(),
            0,
            "an idle queue holds a buffer"
        );
        drop(tx);
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Dropped);
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
        assert_eq!(end.0, WriterEnd::Closed(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn the_byte_bound_closes_a_consumer_before_the_frame_bound() {
        let limits = QueueLimits {
            frames: 1024,
            bytes: 10_000,
        };
        let (tx, rx) = outbound(ConnId::next(), limits, Encoding::MessagePack);
        let (_client, server) = tokio::io::duplex(16);
        let writer = tokio::spawn(run_writer(server, rx));
        let frame = wire::frame(Opcode::Binary, &[0u8; 3000]);
        // Pushed without yielding: the writer has written none of them.
        let outcomes: Vec<Push> = (0..4).map(|_| tx.push(frame.clone())).collect();
        assert_eq!(&outcomes[..3], &[Push::Queued; 3]);
        assert_eq!(outcomes[3], Push::SlowConsumer);
        let end = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer ends")
            .expect("writer");
        assert_eq!(end.0, WriterEnd::Closed(close::SLOW_CONSUMER));
    }

    /// What `client` reads once `writer`, told to close with 4009 while a
    /// frame was half written, has ended and its close is delivered.
    async fn read_after_close_now<W>(
        writer: tokio::task::JoinHandle<(WriterEnd, Option<Closing<W>>)>,
        client: &mut (impl AsyncRead + Unpin),
    ) -> Vec<u8>
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (end, closing) = writer.await.expect("writer");
        assert_eq!(end, WriterEnd::Closed(close::SLOW_CONSUMER));
        let deliver = tokio::spawn(closing.expect("a frame was half written").deliver());
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        deliver.await.expect("deliver");
        got
    }

    #[tokio::test]
    async fn a_client_that_reads_late_still_gets_the_close_code() {
        let (tx, rx) = queue(8);
        let (mut client, server) = tokio::io::duplex(16);
        let writer = tokio::spawn(run_writer(server, rx));
        let big = wire::frame(Opcode::Binary, &[9u8; 1000]);
        tx.push(big.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.close_now(close::SLOW_CONSUMER);
        let got = read_after_close_now(writer, &mut client).await;
        assert_eq!(
            got,
            [&big[..], &wire::close(close::SLOW_CONSUMER, "")[..]].concat()
        );
    }

    #[tokio::test]
    async fn the_writer_ends_when_the_last_handle_goes_after_writing_what_is_queued() {
        let (tx, rx) = queue(16);
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(run_writer(server, rx));
        let other = tx.with_encoding(Encoding::Json);
        let frame = wire::frame(Opcode::Binary, b"last");
        assert_eq!(other.push(frame.clone()), Push::Queued);
        drop(tx);
        drop(other);
        let (end, closing) = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer ends")
            .expect("writer");
        assert_eq!(end, WriterEnd::Dropped);
        assert!(closing.is_none());
        let mut got = vec![0u8; frame.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, frame);
    }

    #[tokio::test]
    async fn a_push_after_the_writer_ended_is_gone_and_uncounted() {
        let (tx, rx) = queue(16);
        let (_client, server) = tokio::io::duplex(1024);
        tx.close_now(close::GOING_AWAY);
        let (end, _) = run_writer(server, rx).await;
        assert_eq!(end, WriterEnd::Closed(close::GOING_AWAY));
        assert!(tx.is_closed());
        assert_eq!(tx.push(wire::frame(Opcode::Binary, b"late")), Push::Gone);
        assert_eq!(tx.shared.unwritten.load(Ordering::Relaxed), 0);
    }

    /// A loopback TCP connection with a small send buffer: the server's
    /// write half as the connection's [`TcpWrite`], the client's stream, and
    /// the server's read half (dropping it would not close the socket, but
    /// keeping it mirrors a live connection).
    async fn tcp_pair() -> (TcpWrite, TcpStream, tokio::net::tcp::OwnedReadHalf) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        // Small on the sending side only: a receive buffer as small makes
        // Linux hold back window updates, and the transfer crawls.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .expect("sndbuf");
        let (read, write) = server.into_split();
        (TcpWrite::new(write), client, read)
    }

    type Writer = tokio::task::JoinHandle<(WriterEnd, Option<Closing<TcpWrite>>)>;

    /// A queue whose flushes write to a [`tcp_pair`], its writer started and
    /// waiting, the client's end, and the server's read half.
    async fn direct_writer(
        capacity: usize,
    ) -> (Outbound, Writer, TcpStream, tokio::net::tcp::OwnedReadHalf) {
        let (socket, client, read) = tcp_pair().await;
        let (tx, rx) = queue(capacity);
        tx.write_directly(socket.clone());
        let writer = tokio::spawn(run_writer(socket, rx));
        tokio::task::yield_now().await;
        (tx, writer, client, read)
    }

    #[tokio::test]
    async fn a_flush_writes_to_an_idle_connection_itself() {
        let (tx, writer, mut client, _read) = direct_writer(16).await;
        let frames: Vec<Bytes> = (0..3u8)
            .map(|i| wire::frame(Opcode::Binary, &[i; 100]))
            .collect();
        for (i, f) in frames.iter().enumerate() {
            // The first finds the queue empty and is owed a flush; the rest
            // queue behind it.
            let expected = if i == 0 { Push::Deferred } else { Push::Queued };
            assert_eq!(tx.push_deferred(f.clone()), expected);
        }
        assert_eq!(tx.flush(), 3, "the socket took all three at once");
        assert_eq!(tx.shared.unwritten.load(Ordering::Relaxed), 0);
        assert_eq!(tx.shared.queue().frames.capacity(), 0);
        let mut got = vec![0u8; frames.iter().map(Bytes::len).sum()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, frames.concat());
        drop(tx);
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Dropped);
    }

    /// An answer (a waking push) behind deferred frames that wait for a
    /// flush (a flush line's window) wakes the writer, which takes them all
    /// in order: answers never wait for a window.
    #[tokio::test]
    async fn an_answer_behind_deferred_frames_goes_out_without_a_flush() {
        let (tx, writer, mut client, _read) = direct_writer(16).await;
        let pushed = wire::frame(Opcode::Binary, &[1; 100]);
        let answer = wire::frame(Opcode::Binary, &[2; 50]);
        assert_eq!(tx.push_deferred(pushed.clone()), Push::Deferred);
        assert_eq!(tx.push(answer.clone()), Push::Queued);
        let mut got = vec![0u8; pushed.len() + answer.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the writer wrote both without a flush")
            .expect("read");
        assert_eq!(got, [pushed, answer].concat());
        // The next deferred push is owed a flush again.
        let later = wire::frame(Opcode::Binary, &[3; 10]);
        tokio::task::yield_now().await;
        assert_eq!(tx.push_deferred(later), Push::Deferred);
        drop(tx);
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Dropped);
    }

    /// A flush writes what the socket takes; the writer goes on from the
    /// byte where it stopped, and frames pushed meanwhile (deferred or not)
    /// follow in order; the close frame is the writer's to send.
    #[tokio::test]
    async fn what_a_full_socket_does_not_take_the_writer_sends_in_order() {
        let (tx, writer, mut client, _read) = direct_writer(1024).await;
        let frames: Vec<Bytes> = (0..40u32)
            .map(|i| wire::frame(Opcode::Binary, &i.to_be_bytes().repeat(2_000 + i as usize)))
            .collect();
        let mut flushed = 0;
        for (i, f) in frames.iter().enumerate() {
            let pushed = if i % 3 == 0 {
                tx.push(f.clone())
            } else {
                tx.push_deferred(f.clone())
            };
            assert!(
                matches!(pushed, Push::Queued | Push::Deferred),
                "{pushed:?}"
            );
            flushed += tx.flush();
        }
        assert!(flushed < frames.len(), "the socket never filled: {flushed}");
        tx.close_after_queued(1000, "bye");
        tx.flush();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        let mut expected = frames.concat();
        expected.extend_from_slice(&wire::close(1000, "bye"));
        assert!(
            got == expected,
            "{} bytes against {}",
            got.len(),
            expected.len()
        );
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Closed(1000));
        assert_eq!(tx.shared.unwritten.load(Ordering::Relaxed), 0);
    }

    /// A frame a flush half wrote still arrives whole before the close code
    /// when the connection is closed at once.
    #[tokio::test]
    async fn close_now_after_a_half_flushed_frame_completes_it() {
        let (tx, writer, mut client, _read) = direct_writer(16).await;
        let big = wire::frame(Opcode::Binary, &[5u8; 1 << 20]);
        assert_eq!(tx.push_deferred(big.clone()), Push::Deferred);
        assert_eq!(tx.push_deferred(big.clone()), Push::Queued);
        assert_eq!(tx.flush(), 0, "a 1 MiB frame does not fit a small socket");
        assert!(tx.shared.queue().head_written > 0, "part of it was written");
        // Before the writer runs: it finds the close, not the frames.
        tx.close_now(close::SLOW_CONSUMER);
        let got = read_after_close_now(writer, &mut client).await;
        assert!(
            got == [&big[..], &wire::close(close::SLOW_CONSUMER, "")[..]].concat(),
            "got {} bytes",
            got.len()
        );
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
        assert_eq!(writer.await.expect("writer").0, WriterEnd::Closed(1000));
    }
}
