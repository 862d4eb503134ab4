//! [`PasswordResetStore`]: the password reset tokens of issue 37
//! (`docs/identity.md`, "Password reset"). Both backends implement it
//! (`sqlite_password_reset.rs`, `postgres_password_reset.rs`) over the
//! table `password_reset_tokens` of migrations `*_account_lifecycle.sql`.
//!
//! A token is stored by its SHA-256 (hex) alone: whoever reads the
//! database cannot use a row. Each row is spent at most once, by the first
//! of: the password set with it (`used`), or a newer token issued to the
//! same user (`replaced`); spending is one conditional `UPDATE`, so two
//! requests presenting the same token cannot both win.

use async_trait::async_trait;
use courier_protocol::UserId;

use super::{StoreError, User};

/// Who asked for a reset link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// An administrator (`POST /api/users/{id}/password-reset`).
    Admin,
    /// The account's owner (`POST /api/auth/password-reset/request`).
    SelfService,
}

impl ResetKind {
    /// The stored (and webhook, and metric label) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetKind::Admin => "admin",
            ResetKind::SelfService => "self",
        }
    }

    /// The kind a stored spelling names.
    pub fn parse(s: &str) -> Option<ResetKind> {
        match s {
            "admin" => Some(ResetKind::Admin),
            "self" => Some(ResetKind::SelfService),
            _ => None,
        }
    }
}

/// One reset token, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetToken {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    pub user_id: UserId,
    pub kind: ResetKind,
    /// The administrator who asked (kind `Admin`).
    pub requested_by: Option<UserId>,
    pub created_at: i64,
    pub expires_at: i64,
    pub spent_at: Option<i64>,
    /// `used` or `replaced`, once spent.
    pub spent_reason: Option<String>,
}

/// Password reset tokens.
#[async_trait]
pub trait PasswordResetStore: Send + Sync {
    /// The accounts whose email is `email`, ignoring case: at most two
    /// (enough to tell one from several; emails are not unique).
    async fn users_with_email(&self, email: &str) -> Result<Vec<User>, StoreError>;
    /// Stores `token` (unspent) and, in the same transaction, spends every
    /// unspent token of its user as `replaced`, and drops the rows of
    /// every user that expired a day or more before `token.created_at`.
    async fn issue_reset_token(&self, token: &ResetToken) -> Result<(), StoreError>;
    /// How many tokens of `kind` were issued to `user` at or after `since`.
    async fn count_reset_tokens_since(
        &self,
        user: UserId,
        kind: ResetKind,
        since: i64,
    ) -> Result<u64, StoreError>;
    /// The token with this hash, spent or not.
    async fn get_reset_token(&self, token_hash: &str) -> Result<Option<ResetToken>, StoreError>;
    /// Spends the token as `used` when it is unspent and `expires_at > now`:
    /// the token as it is now when this call spent it, `None` otherwise.
    async fn spend_reset_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<ResetToken>, StoreError>;
}

pub(super) const USERS_WITH_EMAIL: &str =
    "SELECT * FROM users WHERE lower(email) = lower($1) ORDER BY id LIMIT 2";

pub(super) const TOKEN_INSERT: &str = "INSERT INTO password_reset_tokens (token_hash, user_id,
        kind, requested_by, created_at, expires_at, spent_at, spent_reason)
     VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)";

/// `$1`: the user, `$2`: when.
pub(super) const TOKENS_REPLACE: &str = "UPDATE password_reset_tokens
     SET spent_at = $2, spent_reason = 'replaced'
     WHERE user_id = $1 AND spent_at IS NULL";

/// `$1`: rows whose `expires_at` is before this go.
pub(super) const TOKENS_PRUNE: &str = "DELETE FROM password_reset_tokens WHERE expires_at < $1";

pub(super) const TOKENS_COUNT: &str = "SELECT COUNT(*) AS n FROM password_reset_tokens
     WHERE user_id = $1 AND kind = $2 AND created_at >= $3";

pub(super) const TOKEN_GET: &str = "SELECT * FROM password_reset_tokens WHERE token_hash = $1";

pub(super) const TOKEN_SPEND: &str = "UPDATE password_reset_tokens
     SET spent_at = $2, spent_reason = 'used'
     WHERE token_hash = $1 AND spent_at IS NULL AND expires_at > $2
     RETURNING *";

/// How long an expired row is kept (ms): a day, so that a late click is
/// still told "expired", not "unknown".
pub(super) const KEEP_EXPIRED_MS: i64 = 24 * 3_600 * 1_000;

/// Decodes a `password_reset_tokens` row.
pub(super) fn token(r: &impl super::sql::SqlRow) -> Result<ResetToken, StoreError> {
    Ok(ResetToken {
        token_hash: r.text("token_hash")?,
        user_id: UserId(r.uuid("user_id")?),
        kind: ResetKind::parse(&r.text("kind")?).ok_or_else(|| {
            StoreError::Corrupt("password_reset_tokens.kind: unknown kind".into())
        })?,
        requested_by: r.opt_uuid("requested_by")?.map(UserId),
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        spent_at: r.opt_int("spent_at")?,
        spent_reason: r.opt_text("spent_reason")?,
    })
}
