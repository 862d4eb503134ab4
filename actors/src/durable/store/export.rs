//! [`ExportStore`]: the reads of the compliance export (`courier export`,
//! `src/export/`): a channel's messages as stored, deleted ones included,
//! and the audit entries that name the channel, both in ascending order and
//! a page at a time, so an export of any size streams. Both backends
//! implement it (`sqlite_export.rs`, `postgres_export.rs`) over the tables
//! the rest of the store keeps; it adds none.

use async_trait::async_trait;
use courier_protocol::ChannelId;

use super::{AuditRecord, MessageRow, StoreError};

/// The reads of the compliance export.
#[async_trait]
pub trait ExportStore: Send + Sync {
    /// Every stored message of `channel` with `seq > after`, ascending, at
    /// most `limit`, with its attachments: soft-deleted and expired ones
    /// included, and the tombstones that keep `seq` gap-free (deleted, no
    /// ciphertext, key version 0) too, for the caller to tell apart.
    async fn export_messages(
        &self,
        channel: ChannelId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;

    /// The audit entries whose `details.channelId` is `channel`, with
    /// `after < seq <= through`, ascending, at most `limit`.
    async fn channel_audit(
        &self,
        channel: ChannelId,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
}
