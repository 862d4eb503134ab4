//! # The reader task of a connection, and the connection's clocks
//!
//! [`read_loop`] reads a connection's frames and hands them to its actor one
//! permit at a time, so a flooding client is slowed by TCP instead of filling
//! memory. It also keeps the connection's clocks, so that they cost no task
//! of their own (an idle connection pays for each task it holds): the
//! heartbeat tick, and the [`Deadline`] the actor sets, first the
//! authentication deadline, then the access token's expiry.

use std::future::poll_fn;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use courier_protocol::error::close;
use futures_util::stream::BoxStream;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use ractor::DerivedActorRef;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::realtime::ShutdownPhase;

/// The socket's read half as WebSocket messages, boxed so that plain TCP
/// and TLS look the same.
pub type WsStream = BoxStream<'static, Result<Message, tungstenite::Error>>;

/// What the reader tells its connection actor. The reader names no actor's
/// message type: it sends through a [`DerivedActorRef`] whose actor converts
/// these into its own messages.
#[derive(Debug)]
pub enum ReaderEvent {
    /// A frame from the socket; the permit bounds frames in flight.
    Frame(Message, OwnedSemaphorePermit),
    /// The socket's read side ended (with a close code to send, if any).
    ReadEnded(Option<u16>),
    /// The connection's [`Deadline`] passed.
    DeadlinePassed,
    /// The heartbeat interval passed.
    Heartbeat,
    /// The server entered a shutdown phase.
    Shutdown(ShutdownPhase),
}

/// Frames a client may have in flight before its reader waits.
const FRAMES_IN_FLIGHT: usize = 8;

/// No deadline.
const NEVER: i64 = i64::MAX;

/// When a connection's next deadline falls, in ms since the epoch: set by
/// the actor, slept on by the reader, which sends [`ReaderEvent::DeadlinePassed`]
/// when it passes. Moving it wakes the reader, which aims at the new time.
#[derive(Clone)]
pub struct Deadline(Arc<DeadlineCell>);

struct DeadlineCell {
    at_ms: AtomicI64,
    moved: AtomicWaker,
}

impl Deadline {
    /// A deadline at `at_ms` (ms since the epoch).
    pub fn at(at_ms: i64) -> Self {
        Deadline(Arc::new(DeadlineCell {
            at_ms: AtomicI64::new(at_ms),
            moved: AtomicWaker::new(),
        }))
    }

    /// Moves the deadline to `at_ms`.
    pub fn set(&self, at_ms: i64) {
        self.0.at_ms.store(at_ms, Ordering::Release);
        self.0.moved.wake();
    }

    fn get(&self) -> i64 {
        self.0.at_ms.load(Ordering::Acquire)
    }

    /// Resolves once the deadline is no longer `aimed`.
    async fn moved_from(&self, aimed: i64) {
        poll_fn(|cx| {
            self.0.moved.register(cx.waker());
            if self.get() == aimed {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// The instant of the tokio clock at which the wall clock reads `at_ms`.
fn instant_at(at_ms: i64) -> Instant {
    let left = Duration::from_millis(at_ms.saturating_sub(crate::now_ms()).max(0) as u64);
    let now = Instant::now();
    // Far deadlines (a token valid for centuries) sleep a year at a time.
    now.checked_add(left.min(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Reads frames and hands them to the actor; ticks the heartbeat; tells the
/// actor when its deadline passes. Ends when the socket's read side ends
/// (telling the actor with [`ReaderEvent::ReadEnded`]) or the actor is gone.
pub(crate) async fn read_loop(
    mut stream: WsStream,
    actor: DerivedActorRef<ReaderEvent>,
    mut shutdown: watch::Receiver<ShutdownPhase>,
    heartbeat: Duration,
    deadline: Deadline,
) {
    let permits = Arc::new(Semaphore::new(FRAMES_IN_FLIGHT));
    // One timer for both clocks (an idle connection pays for each timer it
    // holds): it is set for the next heartbeat or the deadline, whichever
    // comes first.
    let mut next_beat = Instant::now() + heartbeat;
    let alarm = tokio::time::sleep_until(next_beat);
    tokio::pin!(alarm);
    // The deadline the alarm accounts for, and when it falls on the tokio
    // clock (`None`: none, or it fired).
    let mut aimed = NEVER;
    let mut deadline_at: Option<Instant> = None;
    let mut shutdown_open = true;
    // The alarm went off: set it again even when aimed at the same time.
    let mut rearm = false;
    let end = loop {
        let due = deadline.get();
        if due != aimed {
            aimed = due;
            deadline_at = (due != NEVER).then(|| instant_at(due));
        }
        let wake = deadline_at.map_or(next_beat, |at| at.min(next_beat));
        if rearm || alarm.deadline() != wake {
            alarm.as_mut().reset(wake);
            rearm = false;
        }
        tokio::select! {
            _ = &mut alarm => {
                rearm = true;
                let now = Instant::now();
                if now >= next_beat {
                    // A late tick delays the next one rather than bunching.
                    next_beat = now + heartbeat;
                    if actor.send_message(ReaderEvent::Heartbeat).is_err() {
                        return;
                    }
                }
                if deadline_at.is_some_and(|at| now >= at) {
                    // The wall clock and the timer may disagree by a little.
                    if crate::now_ms() < aimed {
                        deadline_at = Some(instant_at(aimed));
                        continue;
                    }
                    deadline_at = None;
                    if actor.send_message(ReaderEvent::DeadlinePassed).is_err() {
                        return;
                    }
                }
            }
            _ = deadline.moved_from(aimed) => {}
            changed = shutdown.changed(), if shutdown_open => {
                if changed.is_err() {
                    shutdown_open = false;
                    continue;
                }
                let phase = *shutdown.borrow_and_update();
                if actor.send_message(ReaderEvent::Shutdown(phase)).is_err() {
                    return;
                }
            }
            item = stream.next() => match item {
                Some(Ok(msg)) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { break None };
                    if actor.send_message(ReaderEvent::Frame(msg, permit)).is_err() {
                        return;
                    }
                }
                Some(Err(tungstenite::Error::Capacity(_))) => break Some(close::TOO_LARGE),
                Some(Err(tungstenite::Error::Utf8(_))) => break Some(close::INVALID_PAYLOAD),
                Some(Err(tungstenite::Error::Protocol(_))) => break Some(1002),
                Some(Err(_)) | None => break None,
            }
        }
    };
    let _ = actor.send_message(ReaderEvent::ReadEnded(end));
}
