//! Rows of the file vault (`files`, `message_files`, `file_shares`): what
//! the store keeps of an attachment or a vault file. The content itself is
//! never here: it lives encrypted in the object store (`files::storage`),
//! under `object_key`; the row holds its per-file key wrapped by a master
//! key version, its name sealed under that file key, and what the upload
//! found (type, size, scan state).

use courier_protocol::{ChannelId, FileId, ShareId, UserId};

/// Whether a file may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileState {
    /// Scanned clean: may be attached and downloaded.
    Ready,
    /// Stored while the scanner was unreachable (`files_when_scanner_down =
    /// "queue"`): nobody may download it until a rescan finds it clean.
    PendingScan,
}

impl FileState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Ready => "ready",
            FileState::PendingScan => "pending_scan",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<FileState> {
        [FileState::Ready, FileState::PendingScan]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A file's per-file key, wrapped (AES-256-GCM) under a key derived from
/// master key `key_version` for the file's scope (its channel, or its
/// owner for a vault file).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_version: u32,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// One stored file (table `files`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub id: FileId,
    /// Who uploaded it.
    pub owner_id: UserId,
    /// The channel it was uploaded to; `None` for a vault file.
    pub channel_id: Option<ChannelId>,
    /// The sanitized file name, AES-256-GCM under the file key.
    pub name_ciphertext: Vec<u8>,
    pub name_nonce: Vec<u8>,
    /// The MIME type sniffed from the content.
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Where the sealed object is in the object store.
    pub object_key: String,
    /// Plaintext bytes per sealed chunk.
    pub chunk_len: u32,
    pub key: WrappedKey,
    pub state: FileState,
    pub created_at: i64,
    /// When a message first carried it (then it lives and dies with its
    /// messages).
    pub attached_at: Option<i64>,
    /// When its owner deleted it (vault files); purged soon after.
    pub deleted_at: Option<i64>,
}

/// What a share lets its grantee do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShareRights {
    /// See the file and its metadata in their vault listing.
    View,
    /// Also fetch its content.
    Download,
}

impl ShareRights {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareRights::View => "view",
            ShareRights::Download => "download",
        }
    }

    /// Parses the stored and wire spelling.
    pub fn parse(s: &str) -> Option<ShareRights> {
        [ShareRights::View, ShareRights::Download]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Who a share is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grantee {
    User(UserId),
    /// Every member of the channel (as it is when the file is asked for).
    Channel(ChannelId),
}

/// One grant of a vault file (table `file_shares`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileShare {
    pub id: ShareId,
    pub file_id: FileId,
    pub grantee: Grantee,
    pub rights: ShareRights,
    pub granted_by: UserId,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<UserId>,
}
