//! Helpers shared by the integration tests (`mod support;`): fresh, empty,
//! migrated databases on both backends.
//!
//! PostgreSQL comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each call gets an empty
//! database of its own, `courier_t_<unix secs>_<uuid>`. When PostgreSQL is
//! unreachable, tests that need it skip with a note, except in CI (`CI=true`)
//! where they fail: a test needing PostgreSQL must never pass silently there.

#![allow(dead_code)]

/// `both_backends!(a, b)` runs the async test functions `a(backend)` and
/// `b(backend)` once on SQLite and once on PostgreSQL, as `a::sqlite`,
/// `a::postgres`, ... The calling file imports `Backend` and declares
/// `#[macro_use] mod support;`.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(super::Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(super::Backend::Postgres).await }
        }
    )* };
}

pub mod child;
pub mod clamd;
pub mod nats;
pub mod outage;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_actors::durable::store::{self, DynStore};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use uuid::Uuid;

/// Where PostgreSQL is looked for when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Every test database is named with this prefix; no other database is touched.
const TEST_DB_PREFIX: &str = "courier_t_";

/// A test database released for reuse is named `courier_t_free_<uuid>`.
const FREE_DB_PREFIX: &str = "courier_t_free_";

/// Test databases older than this were left by failed runs: they are reused.
const STALE_AFTER_SECS: u64 = 3600;

/// The URL of a SQLite database file (not yet created) in a fresh temporary
/// directory. Keep the `TempDir` alive as long as the database is used.
pub fn fresh_sqlite_url() -> (String, TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("courier.db").display());
    (url, dir)
}

/// A migrated SQLite store in a fresh temporary directory.
pub async fn fresh_sqlite() -> (DynStore, TempDir) {
    let (url, dir) = fresh_sqlite_url();
    let store = store::connect(&url).await.expect("open a SQLite store");
    (store, dir)
}

/// The URL of a new, empty PostgreSQL database of its own (migrations not
/// run yet), or `None` when PostgreSQL is unreachable outside CI. Panics in CI.
///
/// Creating and dropping databases is slow (a drop forces a checkpoint, about
/// a second each), so a database handed back with [`release_postgres_db`] is
/// emptied and renamed for the next caller instead of dropped.
pub async fn fresh_postgres_url() -> Option<String> {
    let admin_url = admin_url();
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return unreachable_postgres(&e.to_string()),
            Err(_) => return unreachable_postgres("connection timed out"),
        };
    free_stale_databases(&mut admin).await;
    let name = format!(
        "{TEST_DB_PREFIX}{}_{}",
        unix_secs(),
        Uuid::new_v4().simple()
    );
    let url = with_database(&admin_url, &name);
    if claim_free_database(&mut admin, &name).await {
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("connect to a test database");
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
            .await
            .expect("empty a reused test database");
        let _ = conn.close().await;
    } else {
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create a test database");
    }
    let _ = admin.close().await;
    Some(url)
}

/// A migrated PostgreSQL store on a database of its own, with the database's
/// URL (for [`release_postgres_db`]); `None` as for [`fresh_postgres_url`].
pub async fn fresh_postgres() -> Option<(DynStore, String)> {
    let url = fresh_postgres_url().await?;
    let store = store::connect(&url).await.expect("open a PostgreSQL store");
    Some((store, url))
}

/// Hands a database from [`fresh_postgres_url`] back for reuse, closing the
/// connections still open to it. Best effort: one never released is reused
/// after an hour.
pub async fn release_postgres_db(url: &str) {
    let Some(name) = database_name(url).filter(|n| n.starts_with(TEST_DB_PREFIX)) else {
        return;
    };
    let Ok(mut admin) = PgConnection::connect(&admin_url()).await else {
        return;
    };
    // No new connections first: a pool still alive in the test (the server's
    // store, pinged by its probe) would reconnect between the terminations
    // and the rename, and each rename waits 5 s for other sessions to go
    // before it fails.
    let _ = admin.execute(allow_connections(name, false).as_str()).await;
    let _ = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await;
    // Terminated backends take a moment to go; a rename needs them gone.
    let free = format!("{FREE_DB_PREFIX}{}", Uuid::new_v4().simple());
    let rename = format!(r#"ALTER DATABASE "{name}" RENAME TO "{free}""#);
    let mut now_named = name;
    for _ in 0..50 {
        if admin.execute(rename.as_str()).await.is_ok() {
            now_named = &free;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = admin
        .execute(allow_connections(now_named, true).as_str())
        .await;
    let _ = admin.close().await;
}

/// The PostgreSQL URL tests administer databases through (`DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

fn unreachable_postgres(why: &str) -> Option<String> {
    // The URL is not printed: it may carry a password.
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL (DATABASE_URL) is unreachable in CI: {why}");
    }
    eprintln!("skipping: PostgreSQL (DATABASE_URL) is unreachable: {why}");
    None
}

/// Renames a released database to `name`; false when none is free. A rename
/// is atomic, so two tests never get the same one.
/// `ALTER DATABASE` letting new connections to `db` in, or not.
fn allow_connections(db: &str, on: bool) -> String {
    format!(r#"ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS {on}"#)
}

async fn claim_free_database(admin: &mut PgConnection, name: &str) -> bool {
    let free: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY random()",
    )
    .bind(FREE_DB_PREFIX)
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for candidate in free {
        let renamed = admin
            .execute(format!(r#"ALTER DATABASE "{candidate}" RENAME TO "{name}""#).as_str())
            .await;
        if renamed.is_ok() {
            // A release cut off half way leaves connections barred.
            let _ = admin.execute(allow_connections(name, true).as_str()).await;
            return true;
        }
    }
    false
}

/// Marks test databases left by failed runs free for reuse (once per process).
async fn free_stale_databases(admin: &mut PgConnection) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(TEST_DB_PREFIX)
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    let now = unix_secs();
    for name in names {
        let created = name[TEST_DB_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + STALE_AFTER_SECS < now) {
            let free = format!("{FREE_DB_PREFIX}{}", Uuid::new_v4().simple());
            let _ = admin
                .execute(format!(r#"ALTER DATABASE "{name}" RENAME TO "{free}""#).as_str())
                .await;
        }
    }
}

/// `url` with its database (path) replaced by `name`, query string kept.
fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// The database named in a PostgreSQL URL.
pub fn database_name(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let path = &rest[rest.find('/')? + 1..];
    Some(path.split('?').next().unwrap_or(path))
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
