//! [`TotpStore`]: accounts' TOTP second factor (issue 37,
//! `docs/identity.md`). Both backends implement it (`sqlite_totp.rs`,
//! `postgres_totp.rs`) over the tables of migrations `*_totp.sql`:
//!
//! - `totp_secrets`: one row per account that began enrolment, its secret
//!   sealed with the keyring ([`MessageCipher::seal_totp_secret`](crate::crypto::MessageCipher::seal_totp_secret)),
//!   pending until a code confirms it, and the last time step accepted (the
//!   replay guard, advanced by one conditional `UPDATE`, so two logins racing
//!   with one code cannot both pass).
//! - `totp_recovery_codes`: the hashes of the one-time recovery codes, each
//!   spent by one conditional `UPDATE`.
//!
//! The store never sees a secret or a code in clear.

use async_trait::async_trait;
use courier_protocol::UserId;

use super::StoreError;
use crate::crypto::Sealed;

/// An account's TOTP secret, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotpSecret {
    pub user_id: UserId,
    /// The sealed secret (see the module doc).
    pub sealed: Sealed,
    pub created_at: i64,
    /// `None`: enrolment pending; the account has no second factor yet.
    pub confirmed_at: Option<i64>,
    /// The highest time step a code was accepted for.
    pub last_step: Option<i64>,
}

impl TotpSecret {
    /// Whether the account has this second factor (enrolment confirmed).
    pub fn is_active(&self) -> bool {
        self.confirmed_at.is_some()
    }
}

/// TOTP secrets and recovery codes.
#[async_trait]
pub trait TotpStore: Send + Sync {
    /// The account's secret, pending or confirmed.
    async fn totp_secret(&self, user: UserId) -> Result<Option<TotpSecret>, StoreError>;
    /// Stores a pending secret, replacing a pending one; `false` (nothing
    /// written) when the account has a confirmed one.
    async fn put_pending_totp(
        &self,
        user: UserId,
        sealed: &Sealed,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Confirms the pending secret sealed under `key_version` with the
    /// code of `step`, and replaces the account's recovery codes with
    /// `code_hashes`, in one transaction; `false` when there is no such
    /// pending secret (confirmed meanwhile, replaced, or re-sealed).
    async fn confirm_totp(
        &self,
        user: UserId,
        key_version: u32,
        step: i64,
        at: i64,
        code_hashes: &[String],
    ) -> Result<bool, StoreError>;
    /// Records that a code of `step` was accepted, only when the account's
    /// secret is confirmed and no code of this or a later step was; whether
    /// it was (`false`: a replay).
    async fn accept_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError>;
    /// Spends an unused recovery code; whether it was one.
    async fn use_recovery_code(
        &self,
        user: UserId,
        code_hash: &str,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// How many unused recovery codes the account has.
    async fn recovery_codes_left(&self, user: UserId) -> Result<u64, StoreError>;
    /// Removes the account's secret and recovery codes; whether it had a
    /// secret (pending or confirmed).
    async fn delete_totp(&self, user: UserId) -> Result<bool, StoreError>;
    /// Up to `limit` secrets sealed under a version other than `active`.
    async fn totp_secrets_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<TotpSecret>, StoreError>;
    /// Replaces a secret's seal (`keys rotate`), only while it is still
    /// sealed under `old_version`; whether it was replaced.
    async fn reseal_totp_secret(
        &self,
        user: UserId,
        old_version: u32,
        sealed: &Sealed,
    ) -> Result<bool, StoreError>;
    /// How many secrets are sealed under `version` (`keys retire`).
    async fn count_totp_key_version(&self, version: u32) -> Result<u64, StoreError>;
}

pub(super) const PUT_PENDING: &str = "INSERT INTO totp_secrets
        (user_id, secret_ciphertext, secret_nonce, key_version, created_at, confirmed_at, last_step)
     VALUES ($1, $2, $3, $4, $5, NULL, NULL)
     ON CONFLICT (user_id) DO UPDATE
        SET secret_ciphertext = excluded.secret_ciphertext,
            secret_nonce = excluded.secret_nonce,
            key_version = excluded.key_version,
            created_at = excluded.created_at,
            last_step = NULL
        WHERE totp_secrets.confirmed_at IS NULL";

pub(super) const CONFIRM: &str = "UPDATE totp_secrets SET confirmed_at = $2, last_step = $3
     WHERE user_id = $1 AND confirmed_at IS NULL AND key_version = $4";

pub(super) const ACCEPT_STEP: &str = "UPDATE totp_secrets SET last_step = $2
     WHERE user_id = $1 AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $2)";

pub(super) const USE_CODE: &str = "UPDATE totp_recovery_codes SET used_at = $3
     WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL";

pub(super) const CODES_LEFT: &str =
    "SELECT COUNT(*) AS n FROM totp_recovery_codes WHERE user_id = $1 AND used_at IS NULL";

pub(super) const INSERT_CODE: &str =
    "INSERT INTO totp_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)";

pub(super) const NOT_ON_KEY: &str =
    "SELECT * FROM totp_secrets WHERE key_version <> $1 ORDER BY user_id LIMIT $2";

pub(super) const RESEAL: &str = "UPDATE totp_secrets
     SET secret_ciphertext = $2, secret_nonce = $3, key_version = $4
     WHERE user_id = $1 AND key_version = $5";

pub(super) const COUNT_VERSION: &str =
    "SELECT COUNT(*) AS n FROM totp_secrets WHERE key_version = $1";

/// Decodes a `totp_secrets` row.
pub(super) fn secret(r: &impl super::sql::SqlRow) -> Result<TotpSecret, StoreError> {
    Ok(TotpSecret {
        user_id: UserId(r.uuid("user_id")?),
        sealed: Sealed {
            ciphertext: r.bytes("secret_ciphertext")?,
            nonce: r.bytes("secret_nonce")?,
            key_version: r.u32("key_version")?,
        },
        created_at: r.int("created_at")?,
        confirmed_at: r.opt_int("confirmed_at")?,
        last_step: r.opt_int("last_step")?,
    })
}

/// A `COUNT(*) AS n` as a `u64`.
pub(super) fn count(r: &impl super::sql::SqlRow) -> Result<u64, StoreError> {
    u64::try_from(r.int("n")?).map_err(|_| StoreError::Corrupt("negative count".into()))
}
