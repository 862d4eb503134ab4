//! # PersistenceActor: group commit
//!
//! **Owns** the only write path of the realtime traffic into the store:
//! messages, edits, deletes, receipts, reactions and membership.
//!
//! **Takes** writes through a [`PersistenceHandle`] (a bounded queue, because
//! ractor mailboxes are unbounded): [`PersistenceHandle::submit`] either
//! queues a [`WriteOp`] at once or refuses with [`PersistError::Full`], which
//! the caller answers as `unavailable`. Its ractor mailbox takes only
//! [`PersistenceMsg::Drain`].
//!
//! **Does**: the body of the actor is a batching loop (group commit), run
//! with the store probe on the [`store_thread`] on PostgreSQL, so that the
//! database's replies are not queued behind every connection task. When
//! no commit is running, what is queued is committed at once in one
//! transaction ([`Store::apply_batch`]); writes that arrive while a commit
//! runs gather into the next batch, up to `batch_max`. A full batch of
//! message inserts may start beside running commits, up to
//! `commits_in_flight` (PostgreSQL; SQLite has one writer); batches still
//! commit in the order they formed. Only after its commit does it answer
//! each writer, batch by batch in the order the batches formed: channel
//! actors get one
//! [`Committed`] per batch with all their outcomes, in order;
//! other writers get a oneshot. When the store is unreachable the batch is
//! retried with backoff (nothing is acked meanwhile), and service resumes by
//! itself when the store returns. A probe pings the store every
//! [`PROBE_EVERY`]; while the probe fails or a batch cannot commit, new
//! writes are refused at once with [`PersistError::StoreDown`] (before the
//! channel actor spends a `seq` on them) instead of queueing behind a batch
//! that cannot commit, and `/ready` answers 503 ([`StoreHealth`]).
//! A batch that fails for another reason is retried op by op, so one bad row
//! fails alone. A write is refused only when the store answers and refuses
//! it: when a failure is not classified transient but the store does not
//! even answer a ping (say PostgreSQL refusing connections with a SQLSTATE
//! the backend does not know as transient), it is retried like an outage.
//! Refusing would burn the `seq` the channel actor gave the message, a gap
//! in the channel, for a fault of the store rather than of the row.
//!
//! **Supervised by** the root supervisor. **A crash** loses the writes that
//! were queued but not committed; none of them was acked, so clients resend
//! them (idempotently, by `clientMsgId`). Batches commit in order, so what
//! survives a crash is a prefix of them and every channel's `seq` stays
//! gap-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use metrics::{counter, gauge, histogram};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::durable::store::{DynStore, Turn, WriteOp, WriteOutcome};
use crate::durable::store_thread;
use crate::telemetry::names as m;

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    /// The queue is full (the store is slow or down): try again later.
    #[error("persistence queue is full")]
    Full,
    /// The store is unreachable (the last commit failed and is being
    /// retried): the write was not queued.
    #[error("the store is unreachable")]
    StoreDown,
    /// The persistence actor is stopping or gone.
    #[error("persistence is shutting down")]
    Closed,
    /// The store refused this write (not a transient failure).
    #[error("write rejected: {0}")]
    Rejected(String),
}

/// One batch's outcomes for one [`PersistReply::Batched`] writer:
/// `(token, outcome)` in the order it submitted them.
#[derive(Debug)]
pub struct Committed(pub Vec<(u64, Result<WriteOutcome, PersistError>)>);

/// Who hears about a write once it is committed.
///
/// The persistence actor names no writer's message type: a writer that
/// takes its outcomes batch by batch (a channel actor) gives a
/// [`DerivedActorRef`] whose message type converts from [`Committed`].
pub enum PersistReply {
    /// An actor, through one [`Committed`] per batch; the token lets it
    /// match outcomes to its pending writes.
    Batched(DerivedActorRef<Committed>, u64),
    /// Anyone else (REST handlers, connection actors).
    Oneshot(oneshot::Sender<Result<WriteOutcome, PersistError>>),
    /// Nobody.
    None,
}

pub struct Write {
    op: WriteOp,
    reply: PersistReply,
}

/// What travels on the queue: a write, or the nudge of a drain that wakes an
/// idle loop so it notices it must stop.
// Not boxed: the queue's slots are allocated once, and boxing would add an
// allocation per write on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Queued {
    Write(Write),
    Wake,
}

impl Queued {
    fn into_write(self) -> Option<Write> {
        match self {
            Queued::Write(w) => Some(w),
            Queued::Wake => None,
        }
    }
}

/// How often the probe pings the store.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A ping slower than this counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the store can take writes, as the persistence actor sees it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// The last ping failed.
    probe_down: AtomicBool,
    /// A batch is failing to commit for want of the store.
    commit_down: AtomicBool,
}

impl StoreHealth {
    /// Whether writes can go to the store now.
    pub fn reachable(&self) -> bool {
        !self.probe_down.load(Ordering::Relaxed) && !self.commit_down.load(Ordering::Relaxed)
    }
}

/// The cheap, cloneable way in: a bounded queue to the batching loop.
#[derive(Clone)]
pub struct PersistenceHandle {
    tx: mpsc::Sender<Queued>,
    health: Arc<StoreHealth>,
}

impl PersistenceHandle {
    /// Queues a write, or refuses at once when the queue is full.
    pub fn submit(&self, op: WriteOp, reply: PersistReply) -> Result<(), PersistError> {
        if !self.health.reachable() {
            counter!(m::PERSIST_REJECTED).increment(1);
            return Err(PersistError::StoreDown);
        }
        match self.tx.try_send(Queued::Write(Write { op, reply })) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                counter!(m::PERSIST_REJECTED).increment(1);
                Err(PersistError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PersistError::Closed),
        }
    }

    /// Whether the store can take writes now (see [`StoreHealth`]).
    pub fn store_reachable(&self) -> bool {
        self.health.reachable()
    }

    /// Queues a write and waits for its commit.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, PersistError> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, PersistReply::Oneshot(tx))?;
        rx.await.map_err(|_| PersistError::Closed)?
    }
}

/// Tuning of the batching loop.
#[derive(Clone, Debug)]
pub struct PersistenceConfig {
    /// Flush when a batch holds this many writes.
    pub batch_max: usize,
    /// While no commit runs, how long a batch waits for more writes before
    /// it commits; zero commits at once.
    pub batch_delay: Duration,
    /// Full batches committed at once at most (capped by
    /// [`Store::write_parallelism`](crate::durable::store::Store::write_parallelism)).
    pub commits_in_flight: usize,
    /// Writes that may wait; more are refused.
    pub queue_capacity: usize,
}

/// The actor. Read-only configuration.
pub struct PersistenceActor;

/// Control messages. Writes do not come this way (see [`PersistenceHandle`]).
pub enum PersistenceMsg {
    /// Stop taking writes, commit everything queued, then answer.
    Drain(RpcReplyPort<()>),
}

/// What the actor starts with.
pub struct PersistenceArgs {
    pub store: DynStore,
    pub config: PersistenceConfig,
    /// Shared with the handles.
    pub health: Arc<StoreHealth>,
}

/// The batching loop's task and the way to stop it.
pub struct PersistenceState {
    stop: Arc<AtomicBool>,
    closer: mpsc::Sender<Queued>,
    task: Option<JoinHandle<()>>,
    probe: JoinHandle<()>,
}

impl PersistenceActor {
    /// Spawns the actor linked to `supervisor` and returns it with its handle.
    pub async fn spawn_linked(
        supervisor: ractor::ActorCell,
        store: DynStore,
        config: PersistenceConfig,
    ) -> Result<(ActorRef<PersistenceMsg>, PersistenceHandle), ractor::SpawnErr> {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let health = Arc::new(StoreHealth::default());
        let handle = PersistenceHandle {
            tx: tx.clone(),
            health: health.clone(),
        };
        let (actor, _) = Actor::spawn_linked(
            None,
            PersistenceActor,
            (
                PersistenceArgs {
                    store,
                    config,
                    health,
                },
                tx,
                rx,
            ),
            supervisor,
        )
        .await?;
        Ok((actor, handle))
    }
}

impl Actor for PersistenceActor {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = (
        PersistenceArgs,
        mpsc::Sender<Queued>,
        mpsc::Receiver<Queued>,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (args, closer, rx): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let stop = Arc::new(AtomicBool::new(false));
        let store = args.store.clone();
        let probe = store_thread::spawn_for(
            &*store,
            probe(store.clone(), args.health.clone(), closer.downgrade()),
        );
        let task = store_thread::spawn_for(
            &*store,
            batch_loop(args.store, args.config, rx, stop.clone(), args.health),
        );
        Ok(PersistenceState {
            stop,
            closer,
            task: Some(task),
            probe,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PersistenceMsg::Drain(reply) => {
                state.stop.store(true, Ordering::SeqCst);
                // Wake the loop if it is idle on an empty queue; when the
                // queue is full it is busy and will see the flag anyway.
                let _ = state.closer.try_send(Queued::Wake);
                if let Some(task) = state.task.take() {
                    let _ = task.await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.task.take() {
            task.abort();
        }
        state.probe.abort();
        Ok(())
    }
}

/// Collects batches and commits them until drained, answering in batch
/// order.
///
/// When no commit is running, what is queued is committed at once (after
/// `batch_delay`, when one is set); while a commit runs, new writes gather
/// into the next batch (group commit). Only a full batch (`batch_max`) of
/// message inserts starts beside running ones, up to `commits_in_flight`:
/// under light load a write waits for no timer, under heavy load the store
/// works on several large transactions at once. A batch beside others runs
/// its statements at once but commits only after the batch before it
/// ([`Turn`]), so batches commit in the order they formed and a crash keeps
/// a prefix of them: `seq` stays gap-free. Inserts only, because such a
/// batch holds no lock an earlier batch could wait for (new rows, fresh
/// ids and `seq`s, key-share locks on channels) while it waits for its
/// turn; anything else waits for the running commits. Outcomes are
/// answered in the same order, so a channel actor hears of its writes in
/// `seq` order. On the store thread a full batch is noticed on a tick while
/// commits run ([`GATHER_EVERY`]), and what queued during a commit joins
/// the next batch when it ends.
async fn batch_loop(
    store: DynStore,
    config: PersistenceConfig,
    mut rx: mpsc::Receiver<Queued>,
    stop: Arc<AtomicBool>,
    health: Arc<StoreHealth>,
) {
    let batch_max = config.batch_max.max(1);
    let in_flight_max = config
        .commits_in_flight
        .clamp(1, store.write_parallelism().max(1));
    let mut received: Vec<Queued> = Vec::with_capacity(batch_max);
    // While a commit runs, look at the queue on a tick instead of waiting on
    // it: on the store thread each wake is a switch of the core (see
    // [`GATHER_EVERY`]); on the workers it is a task's poll, and waiting
    // measured better there.
    let gather_by_tick = store.writes_from_store_thread();
    let mut next: Vec<Write> = Vec::new();
    let mut commits = FuturesOrdered::new();
    // Set once the batch started last has committed: the next one's turn.
    let mut last_done: Option<watch::Receiver<bool>> = None;
    let mut open = true;
    // While no commit runs, the time the gathering batch commits at.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if open && stop.load(Ordering::SeqCst) {
            rx.close(); // what is queued is still received, then `0`
        }
        // Without a delay a batch may go at once; with one, not before its
        // deadline (set below once it has a write and no commit runs).
        let delay_over = config.batch_delay.is_zero()
            || deadline.is_some_and(|d| d <= tokio::time::Instant::now());
        let full = next.len() >= batch_max;
        let start = !next.is_empty()
            && commits.len() < in_flight_max
            && ((commits.is_empty() && (full || !open || delay_over))
                || (full && next.iter().all(|w| w.op.is_insert())));
        if start {
            // Not `with_capacity(batch_max)`: a full-size buffer for every
            // batch, most of one or a few writes, is a large allocation each.
            let batch = std::mem::take(&mut next);
            deadline = None;
            gauge!(m::PERSIST_QUEUE).set(rx.len() as f64);
            let (done, done_rx) = watch::channel(false);
            let turn = match last_done.replace(done_rx) {
                Some(before) if !commits.is_empty() => Turn::after(before),
                _ => Turn::now(),
            };
            commits.push_back(commit(store.clone(), batch, health.clone(), turn, done));
            histogram!(m::PERSIST_COMMITS_IN_FLIGHT).record(commits.len() as f64);
            continue;
        }
        if !open && commits.is_empty() && next.is_empty() {
            break; // closed, committed and answered
        }
        if deadline.is_none()
            && !config.batch_delay.is_zero()
            && commits.is_empty()
            && !next.is_empty()
        {
            deadline = Some(tokio::time::Instant::now() + config.batch_delay);
        }
        let room = batch_max.saturating_sub(next.len());
        // At least one branch is enabled: with no commit running and
        // nothing to receive, `next` is full or the queue closed, and either
        // starts a commit above.
        tokio::select! {
            Some((replies, outcomes)) = commits.next(), if !commits.is_empty() => {
                answer(replies, outcomes);
                // What came meanwhile joins the next batch, which may start now.
                if open {
                    open = gather(&mut rx, &mut received, &mut next, batch_max);
                }
            }
            n = rx.recv_many(&mut received, room),
                if open && room > 0 && (commits.is_empty() || !gather_by_tick) =>
            {
                if n == 0 {
                    open = false;
                }
                next.extend(received.drain(..).filter_map(Queued::into_write));
            }
            _ = tokio::time::sleep(GATHER_EVERY),
                if gather_by_tick && open && room > 0 && !commits.is_empty() =>
            {
                open = gather(&mut rx, &mut received, &mut next, batch_max);
            }
            _ = sleep_until_some(deadline), if deadline.is_some() && commits.is_empty() => {}
        }
    }
}

/// On the store thread, while a commit runs, how often the queue is looked
/// at for a full batch that could start beside it. The loop does not wait
/// on the queue then: each write would wake the thread, a switch of the
/// core from the connection tasks to it and back (8,700 a second at 10,000
/// room messages a second on PostgreSQL), only to move the write into a
/// batch that cannot start before the commit ends unless it fills.
const GATHER_EVERY: Duration = Duration::from_millis(1);

/// Moves what is queued into `next`, without waiting, up to `batch_max`.
/// Returns false once the queue is closed and empty.
/// `received` is the loop's buffer, empty between calls.
fn gather(
    rx: &mut mpsc::Receiver<Queued>,
    received: &mut Vec<Queued>,
    next: &mut Vec<Write>,
    batch_max: usize,
) -> bool {
    let room = batch_max.saturating_sub(next.len());
    if room == 0 {
        return true;
    }
    match rx.recv_many(received, room).now_or_never() {
        Some(0) => false,
        Some(_) => {
            next.extend(received.drain(..).filter_map(Queued::into_write));
            true
        }
        None => true,
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

type Outcome = Result<WriteOutcome, PersistError>;

/// Commits one batch in its turn, retrying while the store is unreachable;
/// says so on `done` and returns who to answer and what.
async fn commit(
    store: DynStore,
    batch: Vec<Write>,
    health: Arc<StoreHealth>,
    mut turn: Turn,
    done: watch::Sender<bool>,
) -> (Vec<PersistReply>, Vec<Outcome>) {
    let (mut ops, replies): (Vec<WriteOp>, Vec<PersistReply>) =
        batch.into_iter().map(|w| (w.op, w.reply)).unzip();
    // Messages' words become blind-index tokens here, on the blocking pool,
    // so that they commit in this batch's transaction (`crate::search`).
    crate::search::resolve_batch(&mut ops).await;
    let mut backoff = Duration::from_millis(50);
    let outcomes = loop {
        let started = Instant::now();
        match store.apply_batch_in_turn(&ops, &mut turn).await {
            Ok(outcomes) => {
                health.commit_down.store(false, Ordering::Relaxed);
                histogram!(m::PERSIST_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
                histogram!(m::PERSIST_BATCH_SIZE).record(ops.len() as f64);
                break outcomes.into_iter().map(Ok).collect();
            }
            Err(e) if e.is_transient() || !answers(&*store).await => {
                health.commit_down.store(true, Ordering::Relaxed);
                counter!(m::PERSIST_RETRIES).increment(1);
                tracing::warn!(error = %e, rows = ops.len(), retry_in_ms = backoff.as_millis() as u64,
                    "store unavailable; batch not committed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, rows = ops.len(), "batch refused; retrying row by row");
                let _ = turn.wait().await;
                break apply_one_by_one(&*store, &ops).await;
            }
        }
    };
    let _ = done.send(true);
    (replies, outcomes)
}

/// The fallback when a whole batch is refused: each op in its own transaction.
async fn apply_one_by_one(
    store: &dyn crate::durable::store::Store,
    ops: &[WriteOp],
) -> Vec<Result<WriteOutcome, PersistError>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let mut backoff = Duration::from_millis(50);
        let result = loop {
            match store.apply_batch(std::slice::from_ref(op)).await {
                Ok(mut o) => {
                    break o
                        .pop()
                        .ok_or_else(|| PersistError::Rejected("no outcome".into()))
                }
                Err(e) if e.is_transient() || !answers(store).await => {
                    counter!(m::PERSIST_RETRIES).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => break Err(PersistError::Rejected(e.to_string())),
            }
        };
        out.push(result);
    }
    out
}

/// Pings the store every [`PROBE_EVERY`] and records whether it answered,
/// until the last handle to the queue (`writers`) is gone: on the store
/// thread nothing else ends it when a server's runtime goes away without
/// stopping its actors (a test's does), and it holds the store's pool.
async fn probe(store: DynStore, health: Arc<StoreHealth>, writers: mpsc::WeakSender<Queued>) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if writers.upgrade().is_none() {
            return;
        }
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        if health.probe_down.swap(!ok, Ordering::Relaxed) == ok {
            if ok {
                tracing::info!("store reachable again");
            } else {
                tracing::warn!("store unreachable: new writes are refused until it answers");
            }
        }
    }
}

/// Whether the store answers a ping within 2 s: a write that failed while it
/// does not was refused by the store's state, not for what the write holds.
async fn answers(store: &dyn crate::durable::store::Store) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
        Ok(Ok(()))
    )
}

/// Sends every outcome to its writer: one message per batched writer.
fn answer(replies: Vec<PersistReply>, outcomes: Vec<Outcome>) {
    type Outcomes = Vec<(u64, Outcome)>;
    let mut per_actor: HashMap<ActorId, (DerivedActorRef<Committed>, Outcomes)> = HashMap::new();
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        match reply {
            PersistReply::Batched(actor, token) => {
                per_actor
                    .entry(actor.get_id())
                    .or_insert_with(|| (actor, Vec::new()))
                    .1
                    .push((token, outcome));
            }
            PersistReply::Oneshot(tx) => {
                let _ = tx.send(outcome);
            }
            PersistReply::None => {}
        }
    }
    for (_, (actor, list)) in per_actor {
        let _ = actor.send_message(Committed(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_probe_ends_when_every_handle_to_the_queue_is_gone() {
        let store = crate::durable::store::connect("sqlite::memory:")
            .await
            .expect("store");
        let (tx, _rx) = mpsc::channel::<Queued>(1);
        let health = Arc::new(StoreHealth::default());
        let task = tokio::spawn(probe(store, health.clone(), tx.downgrade()));
        tokio::time::sleep(PROBE_EVERY * 2).await;
        assert!(!task.is_finished(), "a probe with writers keeps probing");
        assert!(health.reachable());
        drop(tx);
        tokio::time::timeout(PROBE_EVERY * 8, task)
            .await
            .expect("the probe ends within a few ticks")
            .expect("the probe does not panic");
    }
}
