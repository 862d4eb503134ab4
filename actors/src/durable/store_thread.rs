//! # The store's thread: where the write loops wait for PostgreSQL
//!
//! A batch's transaction is several round trips to the database (begin,
//! insert, commit), and every reply wakes the task that waits for it. On
//! the runtime's workers that task then waits its turn behind every
//! connection task queued before it, once per round trip: on a busy server
//! thousands of readers and writers, so a commit that takes PostgreSQL a
//! few milliseconds took the batch loop hundreds, and the batches behind it
//! filled up. On PostgreSQL the group-commit loop
//! ([`persistence`](crate::durable::persistence)), its store probe and the audit
//! chain's append loop ([`audit`](crate::audit::actor)) therefore run here, on one
//! thread of their own with a single-threaded runtime: a reply from the
//! database wakes that thread, which the OS runs at once, and the loop
//! hands its outcomes back to the actors on the workers through their
//! mailboxes, as before. SQLite's loops stay on the workers (see
//! [`Store::writes_from_store_thread`]).
//!
//! One thread serves every server in the process (tests start many) and
//! lives as long as the process: a database connection opened by a loop
//! here is registered with this runtime's I/O driver, and others share the
//! pool it goes back to, so the driver must outlive every pool. A loop
//! ends when its queue's senders are gone, as it did on the workers.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;

use crate::durable::store::Store;

/// The store thread's runtime, started on first use.
fn handle() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("courier-store")
            .build()
            .expect("cannot build the store thread's runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("courier-store".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("cannot start the store thread");
        handle
    })
}

/// Runs `task` on the store thread.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(task)
}

/// Runs a write loop of `store` where that store wants it: on the store
/// thread, or on the current runtime.
pub fn spawn_for<F>(store: &dyn Store, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if store.writes_from_store_thread() {
        spawn(task)
    } else {
        tokio::spawn(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_runs_on_the_store_thread_and_its_result_comes_back() {
        let name = spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("courier-store"));
    }

    #[tokio::test]
    async fn the_thread_outlives_the_runtime_that_started_it() {
        // Another test's runtime may have started it and gone; it still runs.
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { spawn(async {}).await.unwrap() })
        })
        .join()
        .unwrap();
        assert_eq!(spawn(async { 7 }).await.unwrap(), 7);
    }
}
