//! The TOTP second factor (RFC 6238; issue 37, `docs/identity.md` "Second
//! factor (TOTP)").
//!
//! # What it owns
//! The rules, not the state: secrets and recovery codes live in the store
//! ([`TotpStore`]), sealed and hashed. This module makes secrets (20 random
//! bytes: HMAC-SHA1, 6 digits, 30-second steps, what every authenticator
//! app reads from an `otpauth://` URI), the URI and its QR code, the ten
//! recovery codes (16 characters of a 32-letter alphabet each, 80 bits,
//! kept as SHA-256 of the user id and the code), and checks what a login
//! presents: a code of the current step or one either side
//! ([`SKEW_STEPS`]); a code of a step at or before the last one accepted is
//! a replay (the store's conditional update decides, so two logins racing
//! with one code cannot both pass); a recovery code is spent by its use.
//!
//! # What it takes
//! The store, the keyring's cipher (to open the sealed secret) and the
//! clock. The callers ([`crate::api::auth::check_credentials`], the
//! `/api/auth/totp*` handlers) do the auditing, the lockout and the answer.
//!
//! # Failure
//! A store that cannot be reached is [`TotpError::Store`] (503 at the
//! edge); a secret that does not open under the keyring (tampered, or its
//! key version retired by force) is [`TotpError::Crypto`], a 500 that
//! refuses the login rather than letting it through without the factor.

use courier_actors::crypto::{CryptoError, MessageCipher};
use courier_actors::durable::store::{Role, Store, StoreError, TotpSecret, User};
use courier_protocol::UserId;
use rand::RngExt;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_BYTES: usize = 20;
/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Steps either side of the current one a code may be of.
pub const SKEW_STEPS: u16 = 1;
/// Recovery codes made at confirmation.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (without its dashes).
const RECOVERY_CODE_CHARS: usize = 16;
/// The recovery codes' alphabet: Crockford's base32 (digits and letters
/// without i, l, o and u), read back with o as 0 and i and l as 1.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// What went wrong checking or making a second factor.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed secret does not open, or one cannot be sealed.
    #[error("the TOTP secret cannot be opened or sealed: {0}")]
    Crypto(#[from] CryptoError),
    /// The TOTP parameters were refused (an account name or issuer that
    /// cannot go into an `otpauth://` URI).
    #[error("TOTP: {0}")]
    Parameters(String),
}

/// What a login or a disabling presents as its second factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// Nothing.
    Nothing,
    /// A code from the authenticator app.
    Code(&'a str),
    /// One of the recovery codes.
    RecoveryCode(&'a str),
}

impl Presented<'_> {
    /// `"totp"`, `"recovery"` or `"none"`: what the audit entry says.
    pub fn kind(&self) -> &'static str {
        match self {
            Presented::Nothing => "none",
            Presented::Code(_) => "totp",
            Presented::RecoveryCode(_) => "recovery",
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The account has no (confirmed) second factor: nothing to check.
    NotEnrolled,
    /// It has one and nothing was presented.
    Missing,
    /// A code of a step not used before.
    Accepted,
    /// A recovery code, now spent; `left` unused ones remain.
    RecoveryUsed { left: u64 },
    /// A code of this or an earlier step was accepted already.
    Replayed,
    /// Wrong, stale (outside the window), malformed, or an unknown or
    /// spent recovery code.
    Failed,
}

/// A pending enrolment as shown to the user, once.
pub struct Enrolment {
    /// `otpauth://totp/<issuer>:<account>?secret=...&issuer=...`.
    pub uri: String,
    /// The secret in base32, for typing into an app by hand.
    pub secret_base32: String,
    /// The URI as a QR code: `data:image/png;base64,...`.
    pub qr_data_url: String,
}

/// A new random secret.
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    Zeroizing::new(rand::rng().random::<[u8; SECRET_BYTES]>().to_vec())
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.to_vec())
        .with_account_name(account)
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| TotpError::Parameters(e.to_string()))
}

/// The URI, base32 secret and QR code of `secret` for `account`.
pub fn enrolment(secret: &[u8], issuer: &str, account: &str) -> Result<Enrolment, TotpError> {
    let totp = totp(secret, issuer, account)?;
    let uri = totp
        .to_url()
        .map_err(|e| TotpError::Parameters(e.to_string()))?;
    let qr = totp
        .to_qr_base64()
        .map_err(|e| TotpError::Parameters(e.to_string()))?;
    Ok(Enrolment {
        uri,
        secret_base32: totp.secret().to_base32(),
        qr_data_url: format!("data:image/png;base64,{qr}"),
    })
}

/// The step `code` is the code of at `now_secs`, within the window; `None`
/// when it is of none (wrong, stale, or not six digits).
pub fn matching_step(secret: &[u8], code: &str, now_secs: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The account name and issuer play no part in the code.
    let totp = totp(secret, "Courier", "check").ok()?;
    totp.check(&code, now_secs)
}

/// Ten new recovery codes, `xxxx-xxxx-xxxx-xxxx`.
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut code = String::with_capacity(RECOVERY_CODE_CHARS + 3);
            for i in 0..RECOVERY_CODE_CHARS {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                let pick = rng.random_range(0..RECOVERY_ALPHABET.len());
                code.push(char::from(RECOVERY_ALPHABET[pick]));
            }
            code
        })
        .collect()
}

/// What the store keeps of a recovery code: SHA-256 (hex) of a label, the
/// user id and the code in lowercase without dashes or spaces (o read as 0,
/// i and l as 1). The codes carry 80 random bits, so a fast hash is enough.
pub fn recovery_code_hash(user: UserId, code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        })
        .collect();
    let mut hash = Sha256::new();
    hash.update(b"courier/recovery-code/v1\0");
    hash.update(user.0.as_bytes());
    hash.update(normalized.as_bytes());
    hex::encode(hash.finalize())
}

/// The account's confirmed second factor, if it has one.
pub async fn active_secret(
    store: &dyn Store,
    user: UserId,
) -> Result<Option<TotpSecret>, StoreError> {
    Ok(store.totp_secret(user).await?.filter(TotpSecret::is_active))
}

/// Whether `user` must enrol before its sessions may do anything else: its
/// role is one of `required` and it has no confirmed second factor.
pub async fn enrolment_required(
    store: &dyn Store,
    required: &[Role],
    user: &User,
) -> Result<bool, StoreError> {
    if !required.contains(&user.role) {
        return Ok(false);
    }
    Ok(active_secret(store, user.id).await?.is_none())
}

/// Checks what `user` presents against its second factor (see [`Verdict`]),
/// at `now_ms`. An accepted code moves the account's last step; a recovery
/// code is spent.
pub async fn verify(
    store: &dyn Store,
    cipher: &MessageCipher,
    user: UserId,
    presented: Presented<'_>,
    now_ms: i64,
) -> Result<Verdict, TotpError> {
    let Some(secret) = active_secret(store, user).await? else {
        return Ok(Verdict::NotEnrolled);
    };
    match presented {
        Presented::Nothing => Ok(Verdict::Missing),
        Presented::Code(code) => {
            let opened = cipher.open_totp_secret(user, &secret.sealed)?;
            let now_secs = u64::try_from(now_ms / 1000).unwrap_or(0);
            let Some(step) = matching_step(&opened, code, now_secs) else {
                return Ok(Verdict::Failed);
            };
            let step = i64::try_from(step).unwrap_or(i64::MAX);
            if store.accept_totp_step(user, step).await? {
                Ok(Verdict::Accepted)
            } else {
                Ok(Verdict::Replayed)
            }
        }
        Presented::RecoveryCode(code) => {
            if code.chars().count() > 64 {
                return Ok(Verdict::Failed);
            }
            let hash = recovery_code_hash(user, code);
            if store.use_recovery_code(user, &hash, now_ms).await? {
                let left = store.recovery_codes_left(user).await?;
                Ok(Verdict::RecoveryUsed { left })
            } else {
                Ok(Verdict::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        let secret = new_secret();
        let t = totp(&secret, "Courier", "alice").unwrap();
        let now = 1_700_000_000;
        let step = now / STEP_SECS;
        let code = t.generate(now).to_string();
        assert_eq!(matching_step(&secret, &code, now), Some(step));
        assert_eq!(
            matching_step(&secret, &code, now + STEP_SECS),
            Some(step),
            "one step late is accepted"
        );
        assert_eq!(matching_step(&secret, &code, now + 3 * STEP_SECS), None);
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert_eq!(matching_step(&secret, "abcdef", now), None);
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(matching_step(&secret, &spaced, now), Some(step));
    }

    #[test]
    fn enrolment_shows_an_otpauth_uri_that_an_app_reads_back() {
        let secret = new_secret();
        let e = enrolment(&secret, "Courier", "alice").unwrap();
        assert!(
            e.uri.starts_with("otpauth://totp/Courier:alice?"),
            "{}",
            e.uri
        );
        assert!(e.qr_data_url.starts_with("data:image/png;base64,"));
        let read = Totp::from_url(&e.uri).unwrap();
        assert_eq!(read.secret().as_ref(), &secret[..]);
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_whatever_their_spelling() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        let user = UserId::new();
        let code = &codes[0];
        assert_eq!(code.len(), 19);
        let loose = code.replace('-', " ").to_uppercase();
        assert_eq!(
            recovery_code_hash(user, code),
            recovery_code_hash(user, &loose)
        );
        assert_ne!(
            recovery_code_hash(user, code),
            recovery_code_hash(UserId::new(), code)
        );
    }
}
