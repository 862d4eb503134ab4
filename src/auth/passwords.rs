//! Password hashing: argon2id, on the blocking pool, behind a semaphore.
//!
//! A login flood can neither stall the reactor (hashing never runs on it)
//! nor exhaust memory (at most `max_concurrent` hashes of `memory_kib` each
//! run at once; the rest wait their turn).

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

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
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$...`) of a fresh random salt and hash.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || {
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
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || match PasswordHash::new(&phc) {
            Ok(parsed) => argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
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
}
