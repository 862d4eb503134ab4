//! # Legal holds: records kept past retention until released
//!
//! **Owns** nothing in memory: holds live in the store (`legal_holds`,
//! [`HoldStore`]), and the store's expiry and purge queries consult them
//! directly, so every node and every run sees the same holds.
//!
//! **Takes** calls: [`place`] and [`release`] from REST (`/api/holds`,
//! which audits `hold.placed` / `hold.released`), [`refresh_tags`] from the
//! retention actor before each run (and from `courier retention report`).
//!
//! **Does**: validates a hold (a reason of 1 to 500 bytes; the channel or
//! user exists), seals a patient reference with
//! `RefOwner::Record(b'h', <hold id>)` and stores its tags under every
//! keyring version, so the queries can match messages concerning the
//! patient without the reference in clear. Each refresh recomputes the tags
//! from the opened reference with the keyring of the moment, and seals the
//! reference again when it is not under the active version, so that a
//! rotation neither loosens a hold nor strands its reference on a version
//! about to be retired.
//!
//! **A crash** (an error) is the caller's: nothing is half-written (each
//! store call is one transaction); a refresh that fails leaves the tags
//! stored before it, which keep holding.

use courier_protocol::{ChannelId, PatientRef, UserId};

use crate::crypto::{MessageCipher, RefOwner};
use crate::durable::store::{HoldId, HoldTarget, LegalHold, Store, StoreError};

/// The most bytes a reason (placing or releasing) may have.
pub const MAX_REASON_BYTES: usize = 500;

/// The record kind of a hold's sealed reference ([`RefOwner::Record`]).
pub const HOLD_RECORD: u8 = b'h';

/// Why a hold could not be placed or released.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// No reason, or a reason past [`MAX_REASON_BYTES`].
    #[error("a reason is required: 1 to {MAX_REASON_BYTES} bytes")]
    Reason,
    /// The channel to hold does not exist.
    #[error("no such channel")]
    NoChannel,
    /// The user to hold does not exist.
    #[error("no such user")]
    NoUser,
    /// No such hold.
    #[error("no such hold")]
    NotFound,
    /// The hold was released already.
    #[error("the hold was released already")]
    Released,
    /// The keyring could not seal, open or tag a reference.
    #[error("patient reference: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to hold.
#[derive(Clone, Debug)]
pub enum HoldOn {
    Channel(ChannelId),
    User(UserId),
    Patient(PatientRef),
}

/// The owner a hold's reference is sealed for.
pub fn ref_owner(id: HoldId) -> RefOwner {
    RefOwner::Record(HOLD_RECORD, *id.0.as_bytes())
}

/// A reason, trimmed; [`HoldError::Reason`] when empty or too long.
pub fn check_reason(reason: &str) -> Result<&str, HoldError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(HoldError::Reason);
    }
    Ok(reason)
}

/// Places a hold: in force for the next retention run and file sweep.
pub async fn place(
    store: &dyn Store,
    cipher: &MessageCipher,
    on: HoldOn,
    reason: &str,
    by: UserId,
    now: i64,
) -> Result<LegalHold, HoldError> {
    let reason = check_reason(reason)?;
    let id = HoldId::new();
    let (target, tags) = match on {
        HoldOn::Channel(channel) => {
            store
                .get_channel(channel)
                .await?
                .ok_or(HoldError::NoChannel)?;
            (HoldTarget::Channel(channel), Vec::new())
        }
        HoldOn::User(user) => {
            store.get_user(user).await?.ok_or(HoldError::NoUser)?;
            (HoldTarget::User(user), Vec::new())
        }
        HoldOn::Patient(reference) => {
            let sealed_ref = cipher.seal_patient_ref(ref_owner(id), &reference)?;
            let tag = cipher.active_patient_tag(&reference)?;
            let tags = cipher.patient_tags(&reference)?;
            (HoldTarget::Patient { sealed_ref, tag }, tags)
        }
    };
    let hold = LegalHold {
        id,
        target,
        reason: reason.to_owned(),
        placed_by: by,
        placed_at: now,
        released_at: None,
        released_by: None,
        release_reason: None,
    };
    store.insert_hold(&hold, &tags).await?;
    Ok(hold)
}

/// Releases an active hold; the next run treats its messages normally.
pub async fn release(
    store: &dyn Store,
    id: HoldId,
    reason: &str,
    by: UserId,
    now: i64,
) -> Result<LegalHold, HoldError> {
    let reason = check_reason(reason)?;
    match store.release_hold(id, by, now, reason).await? {
        Some(hold) => Ok(hold),
        None => match store.get_hold(id).await? {
            Some(_) => Err(HoldError::Released),
            None => Err(HoldError::NotFound),
        },
    }
}

/// Recomputes the lookup tags of every active patient hold under the
/// keyring of the moment (sealing its reference again when it is not under
/// the active version); returns how many holds were refreshed. A hold whose
/// reference does not open keeps its stored tags (logged).
pub async fn refresh_tags(store: &dyn Store, cipher: &MessageCipher) -> Result<usize, HoldError> {
    let mut refreshed = 0;
    for hold in store.list_holds().await? {
        let HoldTarget::Patient { sealed_ref, .. } = &hold.target else {
            continue;
        };
        if !hold.active() {
            continue;
        }
        let owner = ref_owner(hold.id);
        let reference = match cipher.open_patient_ref(owner, sealed_ref) {
            Ok(reference) => reference,
            Err(e) => {
                tracing::error!(hold = %hold.id, error = %e,
                    "a legal hold's patient reference does not open; its stored tags keep holding");
                continue;
            }
        };
        let tags = cipher.patient_tags(&reference)?;
        let resealed = match MessageCipher::patient_ref_version(sealed_ref) {
            Some(v) if v == cipher.active_version() => None,
            _ => Some(cipher.seal_patient_ref(owner, &reference)?),
        };
        store
            .set_hold_tags(hold.id, &tags, resealed.as_deref())
            .await?;
        refreshed += 1;
    }
    Ok(refreshed)
}

/// The hold as the API and the audit show it: never the patient reference
/// in clear, only its tag.
pub fn view(hold: &LegalHold) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": hold.id,
        "scope": hold.target.scope(),
        "reason": hold.reason,
        "placedBy": hold.placed_by,
        "placedAt": hold.placed_at,
        "active": hold.active(),
        "releasedAt": hold.released_at,
        "releasedBy": hold.released_by,
        "releaseReason": hold.release_reason,
    });
    match &hold.target {
        HoldTarget::Channel(c) => v["channelId"] = serde_json::json!(c),
        HoldTarget::User(u) => v["userId"] = serde_json::json!(u),
        HoldTarget::Patient { tag, .. } => v["patientTag"] = serde_json::json!(tag),
    }
    v
}

/// The `details` of a `hold.placed` / `hold.released` entry: the hold's
/// id, scope and target (a patient by its tag only).
pub fn audit_details(hold: &LegalHold) -> serde_json::Value {
    let mut v = serde_json::json!({"holdId": hold.id, "scope": hold.target.scope()});
    match &hold.target {
        HoldTarget::Channel(c) => v["channelId"] = serde_json::json!(c),
        HoldTarget::User(u) => v["userId"] = serde_json::json!(u),
        HoldTarget::Patient { tag, .. } => v["patientTag"] = serde_json::json!(tag),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_required_and_bounded() {
        assert!(matches!(check_reason(""), Err(HoldError::Reason)));
        assert!(matches!(check_reason("   "), Err(HoldError::Reason)));
        assert!(matches!(
            check_reason(&"x".repeat(MAX_REASON_BYTES + 1)),
            Err(HoldError::Reason)
        ));
        assert_eq!(
            check_reason(" litigation 2024-17 ").unwrap(),
            "litigation 2024-17"
        );
        assert!(check_reason(&"é".repeat(MAX_REASON_BYTES / 2)).is_ok());
    }
}
