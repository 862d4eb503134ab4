//! [`BreakGlassStore`]: break-glass emergency access (issue 36,
//! `docs/break-glass.md`). Both backends implement it
//! (`sqlite_break_glass.rs`, `postgres_break_glass.rs`) over the tables of
//! migrations `*_break_glass.sql`:
//!
//! - `break_glass_users`: who an admin allowed to break the glass.
//! - `break_glass_grants`: one row per emergency access, its sealed
//!   reason, its end and its review; never deleted.
//!
//! The membership a grant gives is the normal `memberships` row, written
//! through the persistence actor like any other.

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, UserId};

use super::{Role, StoreError};
use crate::compliance::break_glass::GrantId;

/// One break-glass grant, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassGrant {
    pub id: GrantId,
    pub channel_id: ChannelId,
    pub user_id: UserId,
    /// The reason, sealed by [`MessageCipher::seal`](crate::crypto::MessageCipher::seal)
    /// under the channel's key with the grant's id as message id and seq 0.
    pub reason_ciphertext: Vec<u8>,
    pub reason_nonce: Vec<u8>,
    pub reason_key_version: u32,
    pub granted_at: i64,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
    /// Who ended it (none when it expired).
    pub ended_by: Option<UserId>,
    /// `expired`, `ended_by_user` or `revoked`.
    pub end_reason: Option<String>,
    pub reviewed_by: Option<UserId>,
    pub reviewed_at: Option<i64>,
    pub review_note: Option<String>,
}

impl BreakGlassGrant {
    /// The message id its reason is sealed under.
    pub fn reason_message_id(id: GrantId) -> MessageId {
        MessageId(id.0)
    }
}

/// Break-glass rights and grants.
#[async_trait]
pub trait BreakGlassStore: Send + Sync {
    /// Whether an admin allowed `user` to break the glass.
    async fn break_glass_allowed(&self, user: UserId) -> Result<bool, StoreError>;
    /// Allows or disallows `user`; whether anything changed.
    async fn set_break_glass_allowed(
        &self,
        user: UserId,
        allowed: bool,
        by: UserId,
        at: i64,
    ) -> Result<bool, StoreError>;
    /// Records a new grant.
    async fn insert_grant(&self, grant: &BreakGlassGrant) -> Result<(), StoreError>;
    /// One grant, open or ended.
    async fn get_grant(&self, id: GrantId) -> Result<Option<BreakGlassGrant>, StoreError>;
    /// Grants not ended yet, soonest expiry first.
    async fn open_grants(&self) -> Result<Vec<BreakGlassGrant>, StoreError>;
    /// Grants newest first; only those not reviewed yet when `unreviewed`.
    async fn list_grants(&self, unreviewed: bool) -> Result<Vec<BreakGlassGrant>, StoreError>;
    /// Ends an open grant; the grant as it is now, `None` when there is no
    /// such grant or it had ended already (whoever ends it first wins).
    async fn end_grant(
        &self,
        id: GrantId,
        at: i64,
        by: Option<UserId>,
        reason: &str,
    ) -> Result<Option<BreakGlassGrant>, StoreError>;
    /// Records the review of a grant not reviewed yet; `None` when there
    /// is no such grant or it was reviewed already.
    async fn review_grant(
        &self,
        id: GrantId,
        by: UserId,
        at: i64,
        note: &str,
    ) -> Result<Option<BreakGlassGrant>, StoreError>;
    /// Replaces a grant's sealed reason (`keys rotate`), only while it is
    /// still sealed under `old_version`; whether it was replaced.
    async fn reseal_grant_reason(
        &self,
        id: GrantId,
        old_version: u32,
        sealed: &crate::crypto::Sealed,
    ) -> Result<bool, StoreError>;
    /// The users whose role is one of `roles` (who is told of a grant).
    async fn user_ids_with_roles(&self, roles: &[Role]) -> Result<Vec<UserId>, StoreError>;
}

/// The columns of `break_glass_grants`, in insert order.
pub(super) const GRANT_INSERT: &str = "INSERT INTO break_glass_grants (id, channel_id, user_id,
        reason_ciphertext, reason_nonce, reason_key_version, granted_at, expires_at, ended_at,
        ended_by, end_reason, reviewed_by, reviewed_at, review_note)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

pub(super) const GRANT_END: &str = "UPDATE break_glass_grants
     SET ended_at = $2, ended_by = $3, end_reason = $4
     WHERE id = $1 AND ended_at IS NULL RETURNING *";

pub(super) const GRANT_REVIEW: &str = "UPDATE break_glass_grants
     SET reviewed_by = $2, reviewed_at = $3, review_note = $4
     WHERE id = $1 AND reviewed_at IS NULL RETURNING *";

pub(super) const GRANT_RESEAL: &str = "UPDATE break_glass_grants
     SET reason_ciphertext = $2, reason_nonce = $3, reason_key_version = $4
     WHERE id = $1 AND reason_key_version = $5";

pub(super) const GRANTS_OPEN: &str =
    "SELECT * FROM break_glass_grants WHERE ended_at IS NULL ORDER BY expires_at, id";

pub(super) const GRANTS_UNREVIEWED: &str =
    "SELECT * FROM break_glass_grants WHERE reviewed_at IS NULL ORDER BY granted_at DESC, id";

pub(super) const GRANTS_ALL: &str = "SELECT * FROM break_glass_grants ORDER BY granted_at DESC, id";

/// Decodes a `break_glass_grants` row.
pub(super) fn grant(r: &impl super::sql::SqlRow) -> Result<BreakGlassGrant, StoreError> {
    Ok(BreakGlassGrant {
        id: GrantId(r.uuid("id")?),
        channel_id: ChannelId(r.uuid("channel_id")?),
        user_id: UserId(r.uuid("user_id")?),
        reason_ciphertext: r.bytes("reason_ciphertext")?,
        reason_nonce: r.bytes("reason_nonce")?,
        reason_key_version: r.u32("reason_key_version")?,
        granted_at: r.int("granted_at")?,
        expires_at: r.int("expires_at")?,
        ended_at: r.opt_int("ended_at")?,
        ended_by: r.opt_uuid("ended_by")?.map(UserId),
        end_reason: r.opt_text("end_reason")?,
        reviewed_by: r.opt_uuid("reviewed_by")?.map(UserId),
        reviewed_at: r.opt_int("reviewed_at")?,
        review_note: r.opt_text("review_note")?,
    })
}
