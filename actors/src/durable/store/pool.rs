//! How the store holds its database connections: the `db_*` settings and
//! the figures `/metrics` shows of them.
//!
//! [`PoolSettings`] is what the configuration asks for; each backend reads
//! it when it connects. PostgreSQL hands it to sqlx's pool as it is: at
//! most `max` connections, `min` kept open, an unused connection closed
//! after `idle_timeout`, and a caller that finds every connection taken
//! waits at most `acquire_timeout` before its operation fails as
//! [`StoreError::Unavailable`](super::StoreError::Unavailable) (the edge
//! answers `unavailable`). SQLite holds its connections for the store's life
//! instead of pooling them (`sqlite_conn.rs`): `max` of them, one for writes
//! and the rest for reads (with `max = 1` the write connection reads too),
//! all opened at start, so `min` and `idle_timeout` do not apply; the wait
//! for a taken one is `acquire_timeout` all the same. Unset sizes and waits
//! take the backend's own defaults ([`PoolSettings::resolve`]).
//!
//! [`PoolStats`] is a moment's view, sampled when `/metrics` is scraped. A
//! timed-out wait is counted where it happens
//! ([`count_acquire_timeout`]). Nothing here fails: a bad value is refused
//! by the configuration check before a store is opened.

use std::time::Duration;

use crate::telemetry::names as m;

/// The connection settings a store is opened with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSettings {
    /// The most connections; `None`: the backend's default (16 on
    /// PostgreSQL, 5 on SQLite).
    pub max_connections: Option<u32>,
    /// Connections kept open even when unused (PostgreSQL).
    pub min_connections: u32,
    /// How long a caller waits for a taken connection; `None`: the
    /// backend's default (3 s on PostgreSQL, 5 s on SQLite).
    pub acquire_timeout: Option<Duration>,
    /// An unused connection above `min_connections` is closed after this
    /// (PostgreSQL); `None`: never.
    pub idle_timeout: Option<Duration>,
}

/// PostgreSQL's pool size unless configured.
const PG_DEFAULT_MAX: u32 = 16;
/// SQLite's connections unless configured: one writer and four readers.
const SQLITE_DEFAULT_MAX: u32 = 5;
/// PostgreSQL's wait for a connection unless configured: short, so that an
/// outage surfaces quickly as `unavailable` instead of hanging the caller.
const PG_DEFAULT_ACQUIRE: Duration = Duration::from_secs(3);
/// SQLite's wait for its write or a read connection unless configured:
/// writers queue behind one connection, so it is longer.
const SQLITE_DEFAULT_ACQUIRE: Duration = Duration::from_secs(5);

/// [`PoolSettings`] with the backend's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedPool {
    /// The most connections (at least 1).
    pub max_connections: u32,
    /// Kept open (PostgreSQL), at most `max_connections`.
    pub min_connections: u32,
    /// The wait for a taken connection.
    pub acquire_timeout: Duration,
    /// When an unused connection is closed (PostgreSQL).
    pub idle_timeout: Option<Duration>,
}

impl PoolSettings {
    /// The settings for `backend` (`"postgres"` or `"sqlite"`), defaults
    /// filled in and `max_connections` at least 1.
    pub fn resolve(&self, backend: &str) -> ResolvedPool {
        let (max, acquire) = match backend {
            "postgres" => (PG_DEFAULT_MAX, PG_DEFAULT_ACQUIRE),
            _ => (SQLITE_DEFAULT_MAX, SQLITE_DEFAULT_ACQUIRE),
        };
        let max_connections = self.max_connections.unwrap_or(max).max(1);
        ResolvedPool {
            max_connections,
            min_connections: self.min_connections.min(max_connections),
            acquire_timeout: self.acquire_timeout.unwrap_or(acquire),
            idle_timeout: self.idle_timeout,
        }
    }
}

/// A moment's view of the store's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The most connections the store opens.
    pub max: u32,
    /// Open and taken.
    pub in_use: u32,
    /// Open and free.
    pub idle: u32,
}

impl PoolStats {
    /// Sets the pool gauges of `/metrics` to these figures.
    pub fn record(&self) {
        metrics::gauge!(m::DB_POOL_MAX).set(f64::from(self.max));
        metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "in_use").set(f64::from(self.in_use));
        metrics::gauge!(m::DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(self.idle));
    }
}

/// Counts one wait for a connection that gave up.
pub(super) fn count_acquire_timeout() {
    metrics::counter!(m::DB_POOL_ACQUIRE_TIMEOUTS).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_values_take_the_backends_defaults() {
        let unset = PoolSettings::default();
        let pg = unset.resolve("postgres");
        assert_eq!(pg.max_connections, 16);
        assert_eq!(pg.acquire_timeout, Duration::from_secs(3));
        let sqlite = unset.resolve("sqlite");
        assert_eq!(sqlite.max_connections, 5);
        assert_eq!(sqlite.acquire_timeout, Duration::from_secs(5));
        assert_eq!(sqlite.idle_timeout, None);
    }

    #[test]
    fn set_values_win_and_stay_in_range() {
        let set = PoolSettings {
            max_connections: Some(0),
            min_connections: 9,
            acquire_timeout: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(60)),
        };
        let pg = set.resolve("postgres");
        assert_eq!(pg.max_connections, 1, "never below one connection");
        assert_eq!(pg.min_connections, 1, "never above max");
        assert_eq!(pg.acquire_timeout, Duration::from_secs(1));
        assert_eq!(pg.idle_timeout, Some(Duration::from_secs(60)));
    }
}
