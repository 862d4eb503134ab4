//! [`FileStore`]: what the store keeps of the file vault, and the reads
//! and writes the files subsystem (`crate::files`), retention and key
//! rotation make of it. Both backends implement it (`sqlite_files.rs`,
//! `postgres_files.rs`) over the same tables (migrations `*_files.sql`):
//!
//! - `files`: one row per stored file; the content is in the object store.
//! - `message_files`: which message carries which file, in order. The
//!   insert of a message links its files in the same transaction
//!   ([`super::Store::apply_batch`]); a file lives while a message that
//!   carries it lives.
//! - `file_shares`: grants of vault files to users or channels.

use async_trait::async_trait;
use courier_protocol::{ChannelId, FileId, ShareId, UserId};

use super::{FileRecord, FileShare, FileState, StoreError, WrappedKey};

/// Why [`FileStore::files_to_purge`] chose a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilePurge {
    /// Its owner deleted it.
    Deleted,
    /// Every message that carried it was deleted, expired or purged.
    MessagesGone,
    /// Its channel was deleted.
    ChannelGone,
    /// Uploaded to a channel and never sent, past the unsent grace period.
    NeverSent,
}

impl FilePurge {
    /// The audit's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FilePurge::Deleted => "deleted",
            FilePurge::MessagesGone => "messages_gone",
            FilePurge::ChannelGone => "channel_gone",
            FilePurge::NeverSent => "never_sent",
        }
    }
}

/// The file vault's rows.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// Records a stored file (after its object is complete).
    async fn insert_file(&self, file: FileRecord) -> Result<(), StoreError>;
    /// A file, deleted or not.
    async fn get_file(&self, id: FileId) -> Result<Option<FileRecord>, StoreError>;
    /// The files of `ids` that exist (any order).
    async fn get_files(&self, ids: &[FileId]) -> Result<Vec<FileRecord>, StoreError>;
    /// Whether a message that is neither deleted nor expired at `now`
    /// carries the file.
    async fn file_in_live_message(&self, id: FileId, now: i64) -> Result<bool, StoreError>;
    /// A user's own vault files (not deleted), newest first.
    async fn list_vault(&self, owner: UserId) -> Result<Vec<FileRecord>, StoreError>;
    /// Vault files shared, and not revoked, with `user` or with one of
    /// `channels`, newest share first.
    async fn list_shared_with(
        &self,
        user: UserId,
        channels: &[ChannelId],
    ) -> Result<Vec<(FileRecord, FileShare)>, StoreError>;
    /// Records a share.
    async fn insert_share(&self, share: FileShare) -> Result<(), StoreError>;
    /// Every share of a file, revoked ones too, oldest first.
    async fn list_shares(&self, file: FileId) -> Result<Vec<FileShare>, StoreError>;
    /// Revokes a share that is not revoked yet; returns it as it is now.
    async fn revoke_share(
        &self,
        share: ShareId,
        by: UserId,
        at: i64,
    ) -> Result<Option<FileShare>, StoreError>;
    /// Marks a file deleted (it is purged by retention); false when it
    /// was already.
    async fn delete_file(&self, id: FileId, at: i64) -> Result<bool, StoreError>;
    /// Sets a file's state (a queued file scanned clean).
    async fn set_file_state(&self, id: FileId, state: FileState) -> Result<(), StoreError>;
    /// Files waiting for a scan, oldest first.
    async fn files_pending_scan(&self, limit: u32) -> Result<Vec<FileRecord>, StoreError>;
    /// Files whose content should go, and why: deleted by their owner,
    /// their messages all gone, their channel gone, or uploaded to a
    /// channel before `unsent_before` and never sent.
    async fn files_to_purge(
        &self,
        unsent_before: i64,
        limit: u32,
    ) -> Result<Vec<(FileRecord, FilePurge)>, StoreError>;
    /// Removes files' rows with their shares and message links (after
    /// their objects were deleted).
    async fn remove_files(&self, ids: &[FileId]) -> Result<(), StoreError>;
    /// Files whose key is wrapped under a version other than `active`.
    async fn files_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError>;
    /// Stores re-wrapped file keys.
    async fn store_rewrapped(&self, rows: &[(FileId, WrappedKey)]) -> Result<(), StoreError>;
    /// How many files' keys are wrapped under `version`.
    async fn count_file_key_version(&self, version: u32) -> Result<u64, StoreError>;
}

/// The `files_to_purge` query: the same SQL on both backends but for the
/// `$1` bind (`unsent_before`) and `$2` (limit). A file that a message
/// under a legal hold carries (deleted or not) is kept, whatever else
/// would purge it ([`super::HoldStore`]).
pub(super) const FILES_TO_PURGE: &str = concat!(
    "
    SELECT f.*, CASE
        WHEN f.deleted_at IS NOT NULL THEN 'deleted'
        WHEN f.channel_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM channels c WHERE c.id = f.channel_id) THEN 'channel_gone'
        WHEN f.attached_at IS NOT NULL THEN 'messages_gone'
        ELSE 'never_sent' END AS purge_reason
    FROM files f
    WHERE (f.deleted_at IS NOT NULL
       OR (f.channel_id IS NOT NULL AND (
              NOT EXISTS (SELECT 1 FROM channels c WHERE c.id = f.channel_id)
              OR (f.attached_at IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM message_files mf JOIN messages m ON m.id = mf.message_id
                     WHERE mf.file_id = f.id AND m.deleted_at IS NULL))
              OR (f.attached_at IS NULL AND f.created_at < $1))))
    AND NOT EXISTS (SELECT 1 FROM message_files hf JOIN messages ON messages.id = hf.message_id
                    WHERE hf.file_id = f.id AND ",
    super::holds::held!(),
    ")
    ORDER BY f.created_at
    LIMIT $2"
);

/// Parses `purge_reason` of [`FILES_TO_PURGE`].
pub(super) fn purge_reason(s: &str) -> Result<FilePurge, StoreError> {
    match s {
        "deleted" => Ok(FilePurge::Deleted),
        "channel_gone" => Ok(FilePurge::ChannelGone),
        "messages_gone" => Ok(FilePurge::MessagesGone),
        "never_sent" => Ok(FilePurge::NeverSent),
        _ => Err(StoreError::Corrupt("unknown purge reason".into())),
    }
}
