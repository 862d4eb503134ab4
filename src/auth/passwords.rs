//! Password hashing: argon2id, on the blocking pool, behind a semaphore.
//!
//! A login flood can neither stall the reactor (hashing never runs on it)
//! nor exhaust memory (at most `max_concurrent` hashes of `memory_kib` each
//! run at once; the rest wait their turn).
//!
//! The permit travels into the blocking task and is released only when the
//! hash is done. Were it held by the awaiting request instead, a client that
//! hangs up mid-login would cancel the request, free the permit, and leave
//! its hash running on the blocking pool beside the next one: a stream of
//! abandoned logins would run any number of hashes at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a hash could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing failed")]
    Hash,
    #[error("password hashing task failed")]
    Task,
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    running: Arc<Running>,
}

/// Hashes running now, and the most that ever ran at once.
#[derive(Default)]
struct Running {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one hash while it runs on the blocking pool, with its permit.
struct HashSlot {
    running: Arc<Running>,
    _permit: OwnedSemaphorePermit,
}

impl HashSlot {
    fn new(running: Arc<Running>, permit: OwnedSemaphorePermit) -> Self {
        let now = running.now.fetch_add(1, Ordering::SeqCst) + 1;
        running.peak.fetch_max(now, Ordering::SeqCst);
        Self {
            running,
            _permit: permit,
        }
    }
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        self.running.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Passwords {
    /// argon2id with these costs (OWASP baseline: 19,456 KiB, t=2, p=1).
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        max_concurrent: usize,
    ) -> Result<Self, PasswordError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        let max_concurrent = max_concurrent.max(1);
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            running: Arc::default(),
        })
    }

    /// How many hashes may run at once (`argon2_max_concurrent`).
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Hashes running right now.
    pub fn running(&self) -> usize {
        self.running.now.load(Ordering::SeqCst)
    }

    /// The most hashes that ever ran at once; never above
    /// [`Passwords::max_concurrent`].
    pub fn peak_running(&self) -> usize {
        self.running.peak.load(Ordering::SeqCst)
    }

    /// Waits for a permit; the returned slot holds it until the hash is done.
    async fn slot(&self) -> Result<HashSlot, PasswordError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Task)?;
        Ok(HashSlot::new(self.running.clone(), permit))
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$...`) of a fresh random salt and hash.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let slot = self.slot().await?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            argon2
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|_| PasswordError::Hash)
        })
        .await
        .map_err(|_| PasswordError::Task)?
    }

    /// Whether `password` matches the stored PHC string. A malformed stored
    /// hash never matches.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, PasswordError> {
        let slot = self.slot().await?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            match PasswordHash::new(&phc) {
                Ok(parsed) => argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
                Err(_) => false,
            }
        })
        .await
        .map_err(|_| PasswordError::Task)
    }

    /// Hashes a dummy password, so that a login for an unknown user costs as
    /// much as one for a known user (no user enumeration by timing).
    pub async fn burn(&self) {
        let _ = self.hash("not-a-real-password".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let p = Passwords::new(1024, 1, 1, 2).expect("params");
        let phc = p.hash("correct horse battery".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(p
            .verify("correct horse battery".into(), phc.clone())
            .await
            .expect("verify"));
        assert!(!p.verify("wrong".into(), phc).await.expect("verify"));
        assert!(!p
            .verify("x".into(), "garbage".into())
            .await
            .expect("verify"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_hash_keeps_its_permit_until_it_is_done() {
        let p = Passwords::new(8 * 1024, 2, 1, 1).expect("params");
        let phc = p.hash("correct horse battery".into()).await.expect("hash");
        // Each caller gives up while its hash runs (a client that hangs up
        // mid-login); the next one must still wait for that hash to finish.
        for _ in 0..6 {
            let verify = p.verify("correct horse battery".into(), phc.clone());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(2), verify).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while p.running() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(p.running(), 0);
        assert_eq!(p.peak_running(), 1, "never more hashes than permits");
    }
}
