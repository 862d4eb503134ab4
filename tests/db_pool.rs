//! The store's connections (`db_*` settings, docs/operations.md): the sizes
//! reach the store and `/metrics` on both backends, and a pool with every
//! connection taken answers `unavailable` after `db_acquire_timeout_secs`
//! instead of hanging, counts the timeout, and recovers once connections
//! come free. The connections are taken for real: on PostgreSQL an outside
//! transaction locks the `users` table so that logins block holding theirs;
//! on SQLite an outside connection holds the file's write lock so that the
//! one write connection stays taken.

#[path = "support/rest.rs"]
mod rest;
mod support;

use std::time::{Duration, Instant};

use rest::{eventually, Backend, Rest, PASSWORD, ROOT};
use serde_json::json;
use sqlx::{Connection, Executor};

/// The value of the series `name` (with its labels, as exposed) in a
/// Prometheus exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

async fn figures(rest: &Rest) -> (f64, f64, f64, f64, f64) {
    let text = rest.metrics().await;
    let get = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
    };
    (
        get("courier_db_pool_max_connections"),
        get(r#"courier_db_pool_connections{state="in_use"}"#),
        get(r#"courier_db_pool_connections{state="idle"}"#),
        get("courier_store_up"),
        get("courier_db_pool_acquire_timeouts_total"),
    )
}

async fn sizes_reach_the_store_and_metrics(backend: Backend) {
    let Some(rest) = Rest::start_with(backend, |c| {
        c.db_max_connections = Some(3);
        c.db_min_connections = 1;
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    rest.get("/api/channels", &root.token).await.expect(200);
    let (max, in_use, idle, up, _) = figures(&rest).await;
    assert_eq!(max, 3.0, "COURIER_DB_MAX_CONNECTIONS reaches the pool");
    assert!(
        in_use + idle <= max,
        "in_use {in_use} + idle {idle} <= {max}"
    );
    assert!(in_use + idle >= 1.0, "db_min_connections keeps one open");
    assert_eq!(up, 1.0, "the store answers");
    let stats = rest.server.app.store.pool_stats();
    assert_eq!(stats.max, 3);
    rest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sizes_reach_the_store_and_metrics_sqlite() {
    sizes_reach_the_store_and_metrics(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sizes_reach_the_store_and_metrics_postgres() {
    sizes_reach_the_store_and_metrics(Backend::Postgres).await;
}

/// PostgreSQL, two connections, a 1 s wait: two logins blocked on a locked
/// `users` table take both; the next request is answered `unavailable`
/// within about the wait, `/ready` and `courier_store_up` say the store is
/// down, and all of it comes back when the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_postgres_pool_answers_unavailable_quickly() {
    let Some(rest) = Rest::start_with(Backend::Postgres, |c| {
        c.db_max_connections = Some(2);
        c.db_acquire_timeout_secs = Some(1);
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    let (max, _, _, _, timeouts_before) = figures(&rest).await;
    assert_eq!(max, 2.0);

    let url = rest
        .server
        .pg_url()
        .expect("a PostgreSQL server")
        .to_owned();
    let mut locker = sqlx::PgConnection::connect(&url).await.expect("connect");
    locker.execute("BEGIN").await.expect("begin");
    locker
        .execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock users");

    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let http = rest.http.clone();
            let base = rest.base.clone();
            tokio::spawn(async move {
                http.post(format!("{base}/api/auth/login"))
                    .json(&json!({"username": ROOT, "password": PASSWORD}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), async || {
            figures(&rest).await.1 >= 2.0
        })
        .await,
        "both connections taken by the blocked logins: {:?}",
        figures(&rest).await
    );

    let started = Instant::now();
    let refused = rest.get("/api/channels", &root.token).await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "unavailable", "{}", refused.body);
    assert!(
        waited < Duration::from_secs(4),
        "answered after about the 1 s acquire timeout, not hanging: {waited:?}"
    );
    let (_, _, _, _, timeouts) = figures(&rest).await;
    assert!(
        timeouts > timeouts_before,
        "the timeout is counted: {timeouts_before} -> {timeouts}"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            figures(&rest).await.3 == 0.0
        })
        .await,
        "the readiness probe cannot get a connection either: courier_store_up 0"
    );

    locker.execute("COMMIT").await.expect("unlock");
    for login in blocked {
        let status = login.await.expect("task").expect("login answered");
        assert!(
            status == 200 || status == 503,
            "a blocked login finishes once the lock goes: {status}"
        );
    }
    assert!(
        eventually(Duration::from_secs(10), async || {
            figures(&rest).await.3 == 1.0
        })
        .await,
        "the store is back"
    );
    rest.get("/api/channels", &root.token).await.expect(200);
    rest.stop().await;
}

/// SQLite with one connection (the writer reads too) and a 1 s wait: while
/// an outside connection holds the file's write lock, a login waits in the
/// busy handler holding the one connection, and a read meanwhile is answered
/// `unavailable` after about the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_sqlite_store_answers_unavailable_quickly() {
    let Some(rest) = Rest::start_with(Backend::Sqlite, |c| {
        c.db_max_connections = Some(1);
        c.db_acquire_timeout_secs = Some(1);
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    let (max, in_use, _, _, timeouts_before) = figures(&rest).await;
    assert_eq!(max, 1.0, "one connection: the writer, which also reads");
    assert_eq!(in_use, 0.0);

    let file = rest.server.dir.path().join("courier.db");
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .expect("open the database file");
    locker.execute("BEGIN IMMEDIATE").await.expect("write lock");

    let http = rest.http.clone();
    let base = rest.base.clone();
    let login = tokio::spawn(async move {
        http.post(format!("{base}/api/auth/login"))
            .json(&json!({"username": ROOT, "password": PASSWORD}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // The login reads the account (a moment's hold), verifies the password
    // without a connection, then waits up to the 5 s busy timeout for the
    // write lock holding it: the connection counts as taken only once it
    // stays taken across samples 300 ms apart.
    assert!(
        eventually(Duration::from_secs(10), async || {
            for _ in 0..3 {
                if figures(&rest).await.1 < 1.0 {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            true
        })
        .await,
        "the login holds the connection while it waits for the file lock"
    );

    let started = Instant::now();
    let refused = rest.get("/api/channels", &root.token).await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "unavailable", "{}", refused.body);
    assert!(
        waited < Duration::from_secs(4),
        "answered after about the 1 s acquire timeout: {waited:?}"
    );
    let (_, _, _, _, timeouts) = figures(&rest).await;
    assert!(timeouts > timeouts_before, "the timeout is counted");

    locker.execute("ROLLBACK").await.expect("release");
    let status = login.await.expect("task").expect("login answered");
    assert!(
        status == 200 || status == 503,
        "the login finishes: {status}"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            rest.get("/api/channels", &root.token).await.status == 200
        })
        .await,
        "reads work again"
    );
    rest.stop().await;
}
