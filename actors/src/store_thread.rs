//! # The store's thread: where the write loops wait for the database
//!
//! A batch's transaction is several round trips to the database (begin,
//! insert, commit; one more per statement on SQLite's thread), and every
//! reply wakes the task that waits for it. On the runtime's workers that
//! task then waits its turn behind every connection task queued before it,
//! once per round trip: on a busy server thousands of readers and writers,
//! so a commit that takes the database a few milliseconds took the batch
//! loop hundreds, and the batches behind it filled up. The group-commit
//! loop ([`persistence`](crate::persistence)), its store probe and the
//! audit chain's append loop ([`audit`](crate::audit)) therefore run here,
//! on one thread of their own with a single-threaded runtime: a reply from
//! the database wakes that thread, which the OS runs at once, and the loop
//! hands its outcomes back to the actors on the workers through their
//! mailboxes, as before.
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
