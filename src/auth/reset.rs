//! Password reset by link, and the password maximum age (issue 37;
//! `docs/identity.md`, "Account lifecycle" and "Password reset").
//!
//! Owns the reset token (256 random bits, URL-safe base64, stored only as
//! its SHA-256 by [`PasswordResetStore`]), its delivery and the rule of a
//! password's age. It takes the [`Config`] (`password_reset_webhook_url`,
//! `_secret`, `password_reset_token_ttl_secs`, `password_max_age_days`) and
//! the store; the REST edge (`src/api/password_reset.rs`) decides who may
//! ask and answers.
//!
//! A link is delivered by one POST of JSON `{userId, username, email,
//! token, expiresAt, kind}` to `password_reset_webhook_url` (the
//! deployment's mail or SMS gateway), through the same client and
//! signature as the audit checkpoint webhook ([`crate::audit_webhook`]):
//! `X-Courier-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed by
//! `password_reset_webhook_secret`, and the secret as a bearer token. It is
//! tried once, for at most 10 s: a receiver that fails is logged and
//! counted (`courier_password_resets_total{result="webhook_failed"}`), and
//! the token, which nobody received, is simply never used. Nothing here
//! keeps state between requests: a crash loses at most a link being sent.

use courier_actors::durable::store::{PasswordResetStore, ResetKind, ResetToken, StoreError, User};
use courier_actors::telemetry::names;
use courier_protocol::UserId;
use serde_json::json;

use super::tokens::{hash_refresh_token, new_refresh_token};
use crate::audit_webhook::Hook;
use crate::config::Config;

/// Self-service links one account may be sent per [`SELF_SERVICE_WINDOW_MS`];
/// past them a request is answered like any other and sends nothing, so
/// nobody floods someone's mailbox (the per-address limit of `/api/auth/*`
/// holds first).
pub const SELF_SERVICE_PER_WINDOW: u64 = 3;
/// The window of [`SELF_SERVICE_PER_WINDOW`]: 15 minutes.
pub const SELF_SERVICE_WINDOW_MS: i64 = 15 * 60 * 1_000;

/// A reset token presented longer than this is not ours.
pub const MAX_TOKEN_LEN: usize = 256;

/// What went wrong issuing or delivering a link.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// `password_reset_webhook_url` is empty.
    #[error("no password reset webhook is configured")]
    Off,
    /// The receiver could not be reached or did not answer 2xx.
    #[error("the password reset webhook did not take the link: {0}")]
    Webhook(String),
    /// The token presented cannot be used.
    #[error("token: {0}")]
    Token(#[from] TokenRefused),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a presented reset token cannot be used (each answers 400
/// `invalid_token`: the holder of a token learns nothing by it that the
/// link did not tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("is not a valid reset token")]
    Unknown,
    #[error("was already used; ask for a new link")]
    Used,
    #[error("was replaced by a newer reset link")]
    Replaced,
    #[error("has expired; ask for a new link")]
    Expired,
    #[error("was issued before the password last changed; ask for a new link")]
    Stale,
}

/// The stored token `row` (looked up by the presented token's hash) when
/// it can still be used at `now` by an account whose password last changed
/// at `password_changed_at`: unspent, unexpired, and issued after that
/// change (a password set since, by any path, ends every older link).
pub fn usable(
    row: Option<ResetToken>,
    password_changed_at: impl FnOnce(UserId) -> Option<i64>,
    now: i64,
) -> Result<ResetToken, TokenRefused> {
    let token = row.ok_or(TokenRefused::Unknown)?;
    match token.spent_reason.as_deref() {
        Some("replaced") => return Err(TokenRefused::Replaced),
        Some(_) => return Err(TokenRefused::Used),
        None => {}
    }
    if token.expires_at <= now {
        return Err(TokenRefused::Expired);
    }
    match password_changed_at(token.user_id) {
        None => Err(TokenRefused::Unknown),
        Some(changed) if changed > token.created_at => Err(TokenRefused::Stale),
        Some(_) => Ok(token),
    }
}

/// A link issued: the token itself (only ever sent to the webhook) and when
/// it expires.
pub struct Issued {
    pub token: String,
    pub expires_at: i64,
}

/// Whether `url` can be the reset webhook: `http://` or `https://` with a
/// host. Checked with the configuration.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    Hook::new(url, None).map(|_| ()).map_err(|e| e.to_string())
}

/// Whether `user`'s password is `max_age_days` old or older at `now`
/// (`password_max_age_days`; never when it is 0).
pub fn password_expired(max_age_days: u64, user: &User, now: i64) -> bool {
    if max_age_days == 0 {
        return false;
    }
    let max_age_ms = i64::try_from(max_age_days)
        .unwrap_or(i64::MAX)
        .saturating_mul(24 * 3_600 * 1_000);
    now.saturating_sub(user.password_changed_at) >= max_age_ms
}

/// The SHA-256 (hex) a token is stored and looked up under.
pub fn token_hash(token: &str) -> String {
    hash_refresh_token(token)
}

/// Issues a new token for `user`, replacing every unspent one it had.
pub async fn issue(
    config: &Config,
    store: &dyn PasswordResetStore,
    user: UserId,
    kind: ResetKind,
    requested_by: Option<UserId>,
) -> Result<Issued, ResetError> {
    let token = new_refresh_token();
    let now = courier_actors::now_ms();
    let ttl_ms = i64::try_from(config.password_reset_token_ttl_secs.saturating_mul(1_000))
        .unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl_ms);
    store
        .issue_reset_token(&ResetToken {
            token_hash: token_hash(&token),
            user_id: user,
            kind,
            requested_by,
            created_at: now,
            expires_at,
            spent_at: None,
            spent_reason: None,
        })
        .await?;
    Ok(Issued { token, expires_at })
}

/// POSTs the link of `issued` for `user` to the webhook, once.
pub async fn deliver(
    config: &Config,
    user: &User,
    issued: &Issued,
    kind: ResetKind,
) -> Result<(), ResetError> {
    if config.password_reset_webhook_url.is_empty() {
        return Err(ResetError::Off);
    }
    let hook = Hook::new(
        &config.password_reset_webhook_url,
        config.password_reset_webhook_secret.clone(),
    )
    .map_err(|e| ResetError::Webhook(e.to_string()))?;
    let body = json!({
        "userId": user.id,
        "username": user.username,
        "email": user.email,
        "token": issued.token,
        "expiresAt": issued.expires_at,
        "kind": kind.as_str(),
    });
    let body = serde_json::to_vec(&body).map_err(|e| ResetError::Webhook(e.to_string()))?;
    hook.post(&body).await.map_err(|problem| {
        tracing::warn!(
            user_id = %user.id, kind = kind.as_str(), %problem,
            "the password reset webhook did not take a reset link"
        );
        ResetError::Webhook(problem)
    })
}

/// Counts one outcome in `courier_password_resets_total{kind, result}`
/// (`result`: one of [`names::PASSWORD_RESET_RESULTS`]).
pub fn count(kind: ResetKind, result: &'static str) {
    metrics::counter!(names::PASSWORD_RESETS, "kind" => kind.as_str(), "result" => result)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_actors::durable::store::Role;

    fn user(password_changed_at: i64) -> User {
        User {
            id: UserId::new(),
            username: "ana".into(),
            email: None,
            password_hash: String::new(),
            role: Role::User,
            created_at: 0,
            updated_at: 0,
            failed_logins: 0,
            locked_until: None,
            disabled_at: None,
            must_change_password: false,
            last_login_at: None,
            password_changed_at,
        }
    }

    #[test]
    fn a_password_expires_at_its_maximum_age_and_never_when_off() {
        let day = 24 * 3_600 * 1_000;
        assert!(!password_expired(0, &user(0), 10_000 * day));
        assert!(!password_expired(90, &user(day), 91 * day - 1));
        assert!(password_expired(90, &user(day), 91 * day));
    }

    #[test]
    fn a_token_is_usable_only_unspent_unexpired_and_newer_than_the_password() {
        let owner = UserId::new();
        let row = |spent: Option<&str>| ResetToken {
            token_hash: "h".into(),
            user_id: owner,
            kind: ResetKind::SelfService,
            requested_by: None,
            created_at: 100,
            expires_at: 200,
            spent_at: spent.map(|_| 150),
            spent_reason: spent.map(String::from),
        };
        let changed = |at: i64| move |u: UserId| (u == owner).then_some(at);
        assert!(usable(Some(row(None)), changed(50), 150).is_ok());
        assert!(usable(Some(row(None)), changed(100), 150).is_ok());
        assert_eq!(usable(None, changed(50), 150), Err(TokenRefused::Unknown));
        assert_eq!(
            usable(Some(row(Some("used"))), changed(50), 150),
            Err(TokenRefused::Used)
        );
        assert_eq!(
            usable(Some(row(Some("replaced"))), changed(50), 150),
            Err(TokenRefused::Replaced)
        );
        assert_eq!(
            usable(Some(row(None)), changed(50), 200),
            Err(TokenRefused::Expired)
        );
        assert_eq!(
            usable(Some(row(None)), changed(101), 150),
            Err(TokenRefused::Stale)
        );
        assert_eq!(
            usable(Some(row(None)), |_| None, 150),
            Err(TokenRefused::Unknown)
        );
    }

    #[test]
    fn only_http_urls_are_webhooks() {
        assert!(check_webhook_url("https://mail.example.org/reset").is_ok());
        assert!(check_webhook_url("ftp://mail.example.org/reset").is_err());
        assert!(check_webhook_url("mail.example.org").is_err());
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(a.len() >= 43, "256 bits in base64");
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
