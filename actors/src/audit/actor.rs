//! # AuditActor: the hash chain over every event
//!
//! **Owns** the head of the audit chain (`seq`, `hash`) and the checkpoint
//! schedule. Nobody else writes `audit_logs`.
//!
//! **Takes** events through an [`AuditHandle`] (a bounded queue):
//! [`AuditHandle::append`] answers once the event is committed to the chain
//! (security events on a request's path: the request answers after it);
//! [`AuditHandle::record`] never blocks its caller (fire-and-forget, for the
//! events `docs/audit.md` lists as such). Both ride the same batches. Its
//! ractor mailbox takes only [`AuditMsg::Drain`].
//!
//! **Does**: a loop (on the [`store_thread`] on PostgreSQL) takes every
//! queued event, lets more gather for `batch_delay` (one commit for a burst
//! of connects rather than one each), chains the batch in memory
//! ([`chain::chain`], so batched entries are linked exactly like
//! single ones), appends it in one transaction, retrying while the store is
//! down, and only then moves its head and answers the batch's waiters. Should the stored chain have moved
//! past the head it read (a crashed broker's last append landing late), it
//! links the batch after the stored head rather than refusing it forever.
//! In a cluster ([`AuditConfig::linked`]) every node appends to the one
//! chain: each batch is linked after the stored head inside its own
//! transaction, which holds the database's append lock, so the chain has
//! one writer at a time and every node's events in it.
//! (On SQLite an append made while a message batch commits goes into that
//! batch's transaction instead of a commit of its own: see
//! `store::audit_ride`.) Every `checkpoint_every` entries, or every
//! `checkpoint_interval` when anything changed, it signs
//! `{seq, head_hash, time}` with the keyring's Ed25519 checkpoint key and
//! writes the checkpoint to the store, to an append-only file outside the
//! database and, when one is configured, to the queue of a sink off the
//! machine ([`AuditConfig::checkpoint_sink`]; never waited on).
//!
//! **Supervised by** the root supervisor. **A crash** loses the events queued
//! but not yet appended (up to `batch_delay`'s worth more than without the
//! delay; a drain appends them at once), none of which was answered to an
//! [`AuditHandle::append`] caller; the chain in the store stays consistent,
//! because the head is re-read from the store on start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::chain::{self, ChainHead, CheckpointFile, PendingAudit};
use crate::crypto::Keyring;
use crate::durable::store::{AuditRecord, Checkpoint, DynStore, Store, StoreError};
use crate::durable::store_thread;
use crate::telemetry::names as m;

/// What travels on the queue: an event, one whose caller waits for its
/// commit, or the nudge of a drain.
pub enum Queued {
    Event(PendingAudit),
    Durable(PendingAudit, oneshot::Sender<()>),
    Wake,
}

/// The cheap, cloneable way to append events.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Queued>,
    /// How long [`AuditHandle::append`] waits for the commit.
    append_timeout: Duration,
}

impl AuditHandle {
    /// Queues an event and waits until its batch is committed to the chain.
    /// `Err` when that does not happen within the configured append timeout
    /// (the store is down: the event stays queued and is appended once the
    /// store takes it, unless the broker stops first) or the actor is gone.
    /// Callers waiting at once share one batch and one commit.
    pub async fn append(&self, event: PendingAudit) -> Result<(), AuditError> {
        let started = Instant::now();
        let (done, committed) = oneshot::channel();
        let wait = async {
            self.tx
                .send(Queued::Durable(event, done))
                .await
                .map_err(|_| AuditError::Stopped)?;
            committed.await.map_err(|_| AuditError::Stopped)
        };
        let outcome = match tokio::time::timeout(self.append_timeout, wait).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AuditError::NotDurable(self.append_timeout)),
        };
        histogram!(m::AUDIT_APPEND_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            counter!(m::AUDIT_APPEND_FAILURES).increment(1);
            tracing::error!(error = %e, "an audit entry is not durable; the request fails");
        }
        outcome
    }

    /// Queues an event without waiting. When the queue is full the event
    /// waits on a task of its own rather than being dropped.
    pub fn record(&self, event: PendingAudit) {
        match self.tx.try_send(Queued::Event(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if tx.send(event).await.is_err() {
                        tracing::error!("audit actor gone; an audit event was lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit actor gone; an audit event was lost");
            }
        }
    }
}

/// Tuning and keys of the audit actor.
#[derive(Clone)]
pub struct AuditConfig {
    pub queue_capacity: usize,
    pub checkpoint_every: u64,
    /// How long a batch waits for more events before it is appended; zero
    /// appends at once (events that queue during an append still join the
    /// next one).
    pub batch_delay: Duration,
    pub checkpoint_interval: Duration,
    /// How long [`AuditHandle::append`] waits for its commit before it
    /// gives up (and its request answers `unavailable`).
    pub append_timeout: Duration,
    /// The append-only file of signed checkpoints, outside the database.
    pub checkpoint_file: PathBuf,
    /// A bounded queue to a sink off the machine (the checkpoint webhook);
    /// a checkpoint that finds it full is dropped and counted, never waited for.
    pub checkpoint_sink: Option<mpsc::Sender<Checkpoint>>,
    /// Signs checkpoints (the checkpoint key of the active master key).
    pub keyring: Arc<Keyring>,
    /// In a cluster: other nodes append to the same chain, so each batch is
    /// linked after the stored head inside its transaction
    /// ([`Store::append_audit_linked`]).
    pub linked: bool,
}

/// The actor. Stateless itself; see [`AuditState`].
pub struct AuditActor;

/// Control messages.
pub enum AuditMsg {
    /// Append everything queued, write a final checkpoint, then answer.
    Drain(RpcReplyPort<()>),
}

/// The loop's task and its stop flag.
pub struct AuditState {
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Queued>,
    task: Option<JoinHandle<()>>,
}

/// Why the audit actor could not start, or an append did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot read the audit chain head: {0}")]
    Head(#[from] crate::durable::store::StoreError),
    /// The batch was not committed in time (the store refuses or is slow).
    #[error("the audit entry was not committed within {0:?}")]
    NotDurable(Duration),
    /// The audit actor has stopped (a shutdown under way).
    #[error("the audit actor is not running")]
    Stopped,
}

impl AuditActor {
    /// Spawns the actor linked to `supervisor`; reads the chain head first.
    pub async fn spawn_linked(
        supervisor: ractor::ActorCell,
        store: DynStore,
        config: AuditConfig,
    ) -> Result<(ActorRef<AuditMsg>, AuditHandle), ActorProcessingErr> {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let handle = AuditHandle {
            tx: tx.clone(),
            append_timeout: config.append_timeout,
        };
        let (actor, _) =
            Actor::spawn_linked(None, AuditActor, (store, config, tx, rx), supervisor).await?;
        Ok((actor, handle))
    }
}

impl Actor for AuditActor {
    type Msg = AuditMsg;
    type State = AuditState;
    type Arguments = (
        DynStore,
        AuditConfig,
        mpsc::Sender<Queued>,
        mpsc::Receiver<Queued>,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (store, config, tx, rx): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let last = store.audit_head().await.map_err(AuditError::from)?;
        let head = ChainHead::after(last.as_ref());
        let stop = Arc::new(AtomicBool::new(false));
        let task = store_thread::spawn_for(
            &*store,
            chain_loop(store.clone(), config, head, rx, stop.clone()),
        );
        Ok(AuditState {
            stop,
            tx,
            task: Some(task),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AuditMsg::Drain(reply) => {
                state.stop.store(true, Ordering::SeqCst);
                // A no-op wake-up: an empty queue would otherwise keep the loop asleep.
                let _ = state.tx.try_send(Queued::Wake);
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
        Ok(())
    }
}

const BATCH_MAX: usize = 1024;

/// Chains and appends batches until drained.
async fn chain_loop(
    store: DynStore,
    config: AuditConfig,
    mut head: ChainHead,
    mut rx: mpsc::Receiver<Queued>,
    stop: Arc<AtomicBool>,
) {
    let file = CheckpointFile::new(config.checkpoint_file.clone());
    let mut checkpointed_seq = head.seq;
    let mut last_checkpoint = Instant::now();
    let mut queued = Vec::with_capacity(BATCH_MAX);
    loop {
        if stop.load(Ordering::SeqCst) {
            rx.close();
        }
        let received = tokio::select! {
            n = rx.recv_many(&mut queued, BATCH_MAX) => n,
            _ = tokio::time::sleep(config.checkpoint_interval) => usize::MAX,
        };
        if received == 0 {
            break; // closed and empty
        }
        if received != usize::MAX {
            gather(&mut rx, &mut queued, config.batch_delay, &stop).await;
        }
        let mut pending = Vec::with_capacity(queued.len());
        let mut waiters = Vec::new();
        for q in queued.drain(..) {
            match q {
                Queued::Event(e) => pending.push(e),
                Queued::Durable(e, done) => {
                    pending.push(e);
                    waiters.push(done);
                }
                Queued::Wake => {}
            }
        }
        if !pending.is_empty() {
            let (mut records, new_head) = chain::chain(&head, pending);
            head = if config.linked {
                append_linked_with_retry(&*store, &mut records).await
            } else {
                append_with_retry(&*store, &mut records, new_head).await
            };
            counter!(m::AUDIT_ENTRIES).increment(records.len() as u64);
            histogram!(m::AUDIT_BATCH_SIZE).record(records.len() as f64);
            // Committed: the callers that wait may answer now. (One that
            // gave up meanwhile has dropped its receiver.)
            for done in waiters {
                let _ = done.send(());
            }
        }
        let due = head.seq >= checkpointed_seq + config.checkpoint_every
            || (head.seq > checkpointed_seq
                && last_checkpoint.elapsed() >= config.checkpoint_interval);
        if due {
            checkpoint(&*store, &config, &file, &head).await;
            checkpointed_seq = head.seq;
            last_checkpoint = Instant::now();
        }
    }
    if head.seq > checkpointed_seq {
        checkpoint(&*store, &config, &file, &head).await;
    }
}

/// Lets events join `queued` for up to `delay` after the first arrived, so
/// that a burst (each connect writes `ws.connect` and `channel.join`)
/// commits in one transaction rather than in one every event or two: each
/// commit is an `fsync`. A caller of [`AuditHandle::append`] waits up to
/// `delay` more for its answer, and in exchange shares the commit with
/// every other caller of the burst. Stops early when the batch is full or a
/// drain has begun.
async fn gather(
    rx: &mut mpsc::Receiver<Queued>,
    queued: &mut Vec<Queued>,
    delay: Duration,
    stop: &AtomicBool,
) {
    if delay.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + delay;
    while queued.len() < BATCH_MAX && !stop.load(Ordering::SeqCst) {
        let more = rx.recv_many(queued, BATCH_MAX - queued.len());
        match tokio::time::timeout_at(deadline, more).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Appends `records` (chained up to `head`), retrying while the store
/// refuses, and returns the head after them.
///
/// A conflict means the stored chain is not where these records begin. When
/// it has moved on (entries this actor did not write: a crashed broker's last
/// append that committed after this one read the head), the records, never
/// stored, are linked anew after the stored head instead of being refused
/// forever; when they turn out to be stored already, that is success.
async fn append_with_retry(
    store: &dyn Store,
    records: &mut [AuditRecord],
    mut head: ChainHead,
) -> ChainHead {
    let mut backoff = Duration::from_millis(50);
    loop {
        let error = match store.append_audit(records).await {
            Ok(()) => return head,
            Err(e) => e,
        };
        if matches!(error, StoreError::Conflict(_)) {
            match store.audit_head().await {
                Ok(stored) => {
                    let stored = ChainHead::after(stored.as_ref());
                    if stored == head {
                        return head;
                    }
                    let first = &records[0];
                    if stored.seq + 1 != first.seq || stored.hash != first.prev_hash {
                        tracing::error!(
                            error = %error, stored_seq = stored.seq, expected_seq = first.seq - 1,
                            entries = records.len(),
                            "the audit chain moved under this broker; linking the entries after its stored head"
                        );
                        head = chain::rechain(&stored, records);
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the audit chain head"),
            }
        }
        tracing::warn!(error = %error, entries = records.len(), "audit append failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Appends `records` after the stored head (re-linked there), retrying
/// while the store refuses, and returns the head after them.
async fn append_linked_with_retry(store: &dyn Store, records: &mut [AuditRecord]) -> ChainHead {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.append_audit_linked(records).await {
            Ok(()) => return ChainHead::after(records.last()),
            Err(e) => {
                tracing::warn!(error = %e, entries = records.len(), "audit append failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn checkpoint(
    store: &dyn crate::durable::store::Store,
    config: &AuditConfig,
    file: &CheckpointFile,
    head: &ChainHead,
) {
    let version = config.keyring.active_version();
    let key = match config.keyring.checkpoint_signing_key(version) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "no checkpoint signing key; checkpoint skipped");
            return;
        }
    };
    let cp = chain::sign_checkpoint(
        &key,
        &Keyring::checkpoint_key_id(version),
        head.seq,
        &head.hash,
        crate::now_ms(),
    );
    if let Err(e) = file.append(&cp) {
        tracing::error!(error = %e, "cannot append to the checkpoint file");
    }
    if let Some(sink) = &config.checkpoint_sink {
        if let Err(e) = sink.try_send(cp.clone()) {
            counter!(m::AUDIT_CHECKPOINT_SINK_DROPPED).increment(1);
            tracing::error!(seq = cp.seq, error = %e, "the checkpoint sink's queue refused a checkpoint; dropped");
        }
    }
    if let Err(e) = store.insert_checkpoint(cp).await {
        tracing::error!(error = %e, "cannot store the audit checkpoint");
    }
}
