//! The SQLite store's connections: one for writes and a few for reads, held
//! for the store's life rather than pooled.
//!
//! A pool pings a connection when it hands it out and again, from a task of
//! its own, when it takes it back: two more round trips to sqlx's SQLite
//! thread and one more wait in the runtime's queue for every transaction
//! and every read, which under fan-out load wait behind thousands of writer
//! tasks. Held behind async mutexes, connections cost nothing to take or
//! give back. Writers queue fairly for the write connection (tokio's mutex
//! is FIFO); a reader takes a free read connection, or queues for them in
//! turn when all are taken. Either waits at most the store's acquire timeout
//! (`db_acquire_timeout_secs`, by default 5 s), as they did for the pools, and
//! a wait that gives up is counted (`courier_db_pool_acquire_timeouts_total`).
//! [`Writer::in_use`] and [`Reads::in_use`] tell how many are taken, for
//! `/metrics`.
//!
//! A transaction whose future is dropped rolls back as before: sqlx queues
//! the rollback on the connection's thread, ahead of the next user's
//! statements. What the pool's pings were for, noticing a connection whose
//! thread is gone, [`Writer::check`] and [`Reads::check`] do when the store
//! is pinged (every [`PROBE_EVERY`](crate::durable::persistence::PROBE_EVERY) by the
//! persistence actor's probe): they ping each connection nobody holds and
//! reopen one whose thread has gone.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, MutexGuard};

use super::StoreError;

/// The one write connection.
#[derive(Debug)]
pub(super) struct Writer {
    conn: Mutex<SqliteConnection>,
    /// To reopen the connection when its thread is gone.
    options: SqliteConnectOptions,
    /// Run again on a reopened connection (an in-memory database starts
    /// empty).
    migrator: &'static Migrator,
    /// How long a writer waits for the connection before it gives up.
    wait: Duration,
}

impl Writer {
    /// Opens the write connection; a writer waits at most `wait` for it.
    pub(super) async fn open(
        options: SqliteConnectOptions,
        migrator: &'static Migrator,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        Ok(Writer {
            conn: Mutex::new(options.connect().await?),
            options,
            migrator,
            wait,
        })
    }

    /// Takes the write connection, waiting at most the acquire timeout.
    pub(super) async fn lock(&self) -> Result<MutexGuard<'_, SqliteConnection>, StoreError> {
        tokio::time::timeout(self.wait, self.conn.lock())
            .await
            .map_err(|_| {
                super::pool::count_acquire_timeout();
                StoreError::Unavailable("timed out waiting for the SQLite write connection".into())
            })
    }

    /// Whether someone holds the write connection now.
    pub(super) fn in_use(&self) -> bool {
        self.conn.try_lock().is_err()
    }

    /// Pings the write connection when nobody holds it (a writer holding it
    /// is proof enough that it is there), and reopens it when its thread has
    /// gone.
    pub(super) async fn check(&self) -> Result<(), StoreError> {
        match self.conn.try_lock() {
            Ok(mut conn) => ping_or_reopen(&mut conn, &self.options, Some(self.migrator)).await,
            Err(_) => Ok(()),
        }
    }
}

/// Pings `conn`, and replaces it with a new connection (migrated, when
/// `migrator` is given) when its thread has gone.
async fn ping_or_reopen(
    conn: &mut SqliteConnection,
    options: &SqliteConnectOptions,
    migrator: Option<&Migrator>,
) -> Result<(), StoreError> {
    match conn.ping().await {
        Err(sqlx::Error::WorkerCrashed) => {
            tracing::warn!("a SQLite connection's thread is gone; reopening the connection");
            let mut fresh = options.connect().await?;
            if let Some(migrator) = migrator {
                migrator.run_direct(&mut fresh).await?;
            }
            *conn = fresh;
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Where reads go: a few read connections, held like the write connection
/// (a pool would ping each twice per read), or, for an in-memory database,
/// which lives in one connection, the write connection.
#[derive(Debug)]
// One per store, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Reads {
    Held {
        conns: Box<[Mutex<SqliteConnection>]>,
        /// Where a reader that finds every connection taken queues next.
        next: AtomicUsize,
        /// To reopen a connection whose thread is gone.
        options: SqliteConnectOptions,
        /// How long a reader waits for a taken connection.
        wait: Duration,
    },
    Writer,
}

/// A connection taken for a read.
pub(super) struct ReadConn<'a>(MutexGuard<'a, SqliteConnection>);

impl Reads {
    /// Opens `n` read connections (at least one); a reader waits at most
    /// `wait` for a taken one.
    pub(super) async fn open(
        options: &SqliteConnectOptions,
        n: usize,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            conns.push(Mutex::new(options.connect().await?));
        }
        Ok(Reads::Held {
            conns: conns.into(),
            next: AtomicUsize::new(0),
            options: options.clone(),
            wait,
        })
    }

    /// The read connections held, and how many of them are taken now (none
    /// of its own when reads go to the write connection).
    pub(super) fn in_use(&self) -> (u32, u32) {
        match self {
            Reads::Held { conns, .. } => {
                let taken = conns.iter().filter(|c| c.try_lock().is_err()).count();
                (conns.len() as u32, taken as u32)
            }
            Reads::Writer => (0, 0),
        }
    }

    /// Pings every read connection nobody holds, and reopens those whose
    /// thread has gone.
    pub(super) async fn check(&self) -> Result<(), StoreError> {
        if let Reads::Held { conns, options, .. } = self {
            for conn in conns.iter() {
                if let Ok(mut conn) = conn.try_lock() {
                    ping_or_reopen(&mut conn, options, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Takes a free read connection, or queues (at most the acquire timeout)
    /// for the connections in turn when none is free.
    pub(super) async fn take<'a>(&'a self, writer: &'a Writer) -> Result<ReadConn<'a>, StoreError> {
        let (conns, next, wait) = match self {
            Reads::Held {
                conns, next, wait, ..
            } => (conns, next, *wait),
            Reads::Writer => return Ok(ReadConn(writer.lock().await?)),
        };
        if let Some(free) = conns.iter().find_map(|c| c.try_lock().ok()) {
            return Ok(ReadConn(free));
        }
        let turn = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
        tokio::time::timeout(wait, turn.lock())
            .await
            .map(ReadConn)
            .map_err(|_| {
                super::pool::count_acquire_timeout();
                StoreError::Unavailable("timed out waiting for a SQLite read connection".into())
            })
    }
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.0
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

    const WAIT: Duration = Duration::from_secs(5);

    fn options(dir: &tempfile::TempDir) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.path().join("c.db").display()))
            .expect("options")
            .create_if_missing(true)
    }

    #[tokio::test]
    async fn the_check_does_not_wait_for_a_writer_holding_the_connection() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = Writer::open(options(&dir), &MIGRATOR, WAIT)
            .await
            .expect("open");
        writer
            .check()
            .await
            .expect("a free connection answers its ping");
        let held = writer.lock().await.expect("lock");
        tokio::time::timeout(Duration::from_millis(500), writer.check())
            .await
            .expect("the check must not queue behind the holder")
            .expect("a held connection counts as there");
        drop(held);
    }

    #[tokio::test]
    async fn a_writer_gives_up_after_the_acquire_timeout() {
        let dir = tempfile::tempdir().expect("dir");
        let wait = Duration::from_millis(200);
        let writer = Writer::open(options(&dir), &MIGRATOR, wait)
            .await
            .expect("open");
        assert!(!writer.in_use());
        let held = writer.lock().await.expect("lock");
        assert!(writer.in_use(), "a held connection counts as in use");
        let started = std::time::Instant::now();
        let second = writer.lock().await;
        assert!(
            matches!(second, Err(StoreError::Unavailable(_))),
            "a second writer is refused unavailable"
        );
        let waited = started.elapsed();
        assert!(
            waited >= wait && waited < Duration::from_secs(2),
            "it waits the acquire timeout, not the default: {waited:?}"
        );
        drop(held);
        assert!(writer.lock().await.is_ok(), "free again");
    }

    #[tokio::test]
    async fn a_reader_takes_a_free_connection_or_queues_for_one() {
        let dir = tempfile::tempdir().expect("dir");
        let writer = Writer::open(options(&dir), &MIGRATOR, WAIT)
            .await
            .expect("open");
        let reads = Reads::open(&options(&dir), 2, WAIT).await.expect("reads");
        let first = reads.take(&writer).await.expect("first");
        let second = tokio::time::timeout(Duration::from_millis(500), reads.take(&writer))
            .await
            .expect("a free connection is taken at once")
            .expect("second");
        let third = reads.take(&writer);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut third)
                .await
                .is_err(),
            "with both taken, a reader waits"
        );
        drop(first);
        drop(second);
        let mut third = tokio::time::timeout(Duration::from_millis(500), third)
            .await
            .expect("a returned connection goes to the reader queued for it")
            .expect("third");
        sqlx::query("SELECT 1")
            .execute(&mut *third)
            .await
            .expect("the connection reads");
    }
}
