//! Audit appends that ride a message batch's transaction (SQLite).
//!
//! SQLite has one writer and, with `synchronous = FULL`, one WAL `fsync` per
//! commit. Under load the persistence actor's message batches and the audit
//! actor's appends took turns on the write connection: two commits, two
//! fsyncs, and a message batch waiting behind an audit commit. So an audit
//! append made while a batch is under way parks its entries here, and the
//! batch (the *host*) writes them in its own transaction after its own rows:
//! their commit is its commit. An append made while no batch is under way,
//! or left behind by a batch that had already taken what was parked, commits
//! alone as before.
//!
//! A host takes parked entries only once its own rows are written, so a
//! batch that fails leaves them parked for the next host or for the append
//! itself; the entries of one append go in under a savepoint, so an append
//! that fails (say, it does not continue the chain) leaves the batch intact.
//! An append whose caller has gone (its future dropped) before a host takes
//! it is not written; one taken already commits with its host.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use super::{AuditRecord, StoreError};

/// The parked appends and the count of hosts under way.
#[derive(Debug, Default)]
pub(super) struct AuditRide {
    parked: Mutex<Vec<Parked>>,
    next_id: AtomicU64,
    /// Batches between their start and their commit (or failure).
    hosts: AtomicUsize,
    /// Signalled whenever a host finishes.
    host_done: Notify,
    /// Appends committed by a host's transaction rather than alone.
    carried: AtomicU64,
}

/// One append waiting for a transaction.
#[derive(Debug)]
pub(super) struct Parked {
    id: u64,
    pub(super) entries: Vec<AuditRecord>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Parked {
    /// Tells the appender how its entries fared.
    pub(super) fn finish(self, result: Result<(), StoreError>) {
        let _ = self.done.send(result);
    }
}

/// The appender's side of a parked append.
pub(super) struct Ticket {
    id: u64,
    done: oneshot::Receiver<Result<(), StoreError>>,
}

/// Marks a host under way; dropping it (commit, failure or cancellation)
/// wakes the appenders waiting for hosts to finish.
pub(super) struct HostGuard<'a>(&'a AuditRide);

impl Drop for HostGuard<'_> {
    fn drop(&mut self) {
        self.0.hosts.fetch_sub(1, Ordering::AcqRel);
        self.0.host_done.notify_waiters();
    }
}

/// What an append should do next.
pub(super) enum Next {
    /// A host wrote the entries (or failed to); this is the outcome.
    Done(Result<(), StoreError>),
    /// No host is under way: commit alone.
    CommitAlone,
}

impl AuditRide {
    /// Parks entries for the next host.
    pub(super) fn park(&self, entries: Vec<AuditRecord>) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, rx) = oneshot::channel();
        self.lock().push(Parked { id, entries, done });
        Ticket { id, done: rx }
    }

    /// Waits while hosts are under way, until one carries the ticket's
    /// entries or none is left.
    pub(super) async fn wait_for_host(&self, ticket: &mut Ticket) -> Next {
        loop {
            let finished = self.host_done.notified();
            tokio::pin!(finished);
            // Registered before the count is read, so a host finishing in
            // between still wakes this loop.
            finished.as_mut().enable();
            if self.hosts.load(Ordering::Acquire) == 0 {
                return match ticket.done.try_recv() {
                    Ok(result) => Next::Done(result),
                    Err(_) => Next::CommitAlone,
                };
            }
            tokio::select! {
                result = &mut ticket.done => return Next::Done(flatten(result)),
                _ = &mut finished => {}
            }
        }
    }

    /// Takes the ticket's entries back (true) unless a host already has them.
    pub(super) fn unpark(&self, ticket: &Ticket) -> bool {
        let mut parked = self.lock();
        let before = parked.len();
        parked.retain(|p| p.id != ticket.id);
        parked.len() != before
    }

    /// The outcome of a ticket whose entries a host took.
    pub(super) async fn outcome(&self, ticket: Ticket) -> Result<(), StoreError> {
        flatten(ticket.done.await)
    }

    /// Starts a host: appends made until the guard drops wait for it.
    pub(super) fn host(&self) -> HostGuard<'_> {
        self.hosts.fetch_add(1, Ordering::AcqRel);
        HostGuard(self)
    }

    /// Everything parked whose appender still waits, oldest first.
    pub(super) fn take(&self) -> Vec<Parked> {
        let mut taken = std::mem::take(&mut *self.lock());
        taken.retain(|p| !p.done.is_closed());
        taken
    }

    /// Counts appends a host's transaction committed.
    pub(super) fn count_carried(&self, appends: usize) {
        self.carried.fetch_add(appends as u64, Ordering::Relaxed);
    }

    /// Appends committed by a host's transaction since the store opened.
    pub(super) fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        // The lock is never held across a panic-prone call; recover anyway.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn flatten(
    result: Result<Result<(), StoreError>, oneshot::error::RecvError>,
) -> Result<(), StoreError> {
    result.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "the transaction carrying the audit entries was abandoned".into(),
        ))
    })
}
