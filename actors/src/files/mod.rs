//! # Files: encrypted attachments and the file vault
//!
//! **Owns** the file content: every file is sealed in chunks under a key of
//! its own ([`seal`]) and kept in an object store ([`storage`]: a local
//! directory under the data directory by default; S3, GCS or Azure by URL).
//! The rows that describe files (`files`, `message_files`, `file_shares`)
//! are the store's ([`crate::durable::store::FileStore`]); the file keys are
//! wrapped by the master keyring ([`crate::crypto::file_keys`]).
//!
//! **Takes** uploads as byte streams ([`Files::upload`], [`upload`]): the
//! type is sniffed from the first bytes against an allow-list ([`sniff`]),
//! the bytes are counted against the size limit, streamed to ClamAV
//! ([`scan`]), sealed and written as they arrive, so a file is never held
//! whole in memory; only a file scanned clean (or queued for a scan when
//! the deployment says so) gets a row. Downloads ([`Files::content`],
//! [`download`]) open only the chunks a byte range needs, as a stream.
//!
//! **Does** on an interval ([`sweeper::FileSweeper`], an actor under the
//! realtime root): deletes the objects and rows of files whose messages are
//! gone (deleted, expired, purged), whose channel is gone, that their owner
//! deleted, or that were uploaded to a channel and never sent; and scans
//! again files queued while the scanner was down.
//!
//! **A crash** of an upload or download loses only that request: an object
//! is visible (committed by the object store and given a row) only once it
//! is complete and clean, and an abandoned multipart upload is aborted. A
//! crash of the sweeper skips runs until it restarts.
//!
//! Who may upload, download or share is decided at the edge (`src/api/files.rs`)
//! with [`crate::policy::authz`]; this module trusts its caller.

pub mod download;
pub mod scan;
pub mod seal;
pub mod sniff;
pub mod storage;
pub mod sweeper;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use courier_protocol::frames::AttachmentView;
use courier_protocol::{ChannelId, FileId, UserId};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::crypto::file_keys::open_name;
use crate::crypto::{CryptoError, KeyScope, MessageCipher};
use crate::durable::store::{DynStore, FileRecord, StoreError};

pub use download::ContentStream;
pub use upload::UploadRequest;

/// What to do with an upload when the scanner cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenScannerDown {
    /// Refuse it (`unavailable`): the default.
    Refuse,
    /// Keep it as `pending_scan`, downloadable by nobody until a rescan
    /// finds it clean.
    Queue,
}

/// How files are taken and kept.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// The largest file, in bytes.
    pub max_bytes: u64,
    /// The types accepted.
    pub allowed: sniff::AllowList,
    /// clamd; `None` stores files unscanned, unless `require_scanner`.
    pub scanner: Option<scan::Clamd>,
    /// Refuse uploads when no scanner is configured (production).
    pub require_scanner: bool,
    pub when_scanner_down: WhenScannerDown,
    /// How long a file uploaded to a channel may wait to be sent.
    pub unsent_grace: Duration,
    /// How long a signed download link lasts.
    pub link_ttl: Duration,
    /// How often the sweeper runs.
    pub sweep_interval: Duration,
}

/// Why a file operation failed; mapped to protocol error codes at the edge.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Type(#[from] sniff::SniffError),
    #[error("the file contains malware ({signature})")]
    Infected { signature: String },
    #[error("{0}")]
    ScannerDown(String),
    #[error("the upload ended before its end")]
    Incomplete,
    #[error("the object store failed: {0}")]
    Storage(String),
    #[error("the file does not open: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<object_store::Error> for FileError {
    fn from(e: object_store::Error) -> Self {
        FileError::Storage(e.to_string())
    }
}

impl From<seal::SealError> for FileError {
    fn from(e: seal::SealError) -> Self {
        FileError::Corrupt(e.to_string())
    }
}

/// The files subsystem's handle: configuration, object store, keys.
pub struct Files {
    pub config: FilesConfig,
    pub objects: Arc<dyn ObjectStore>,
    /// The local store's directory (objects are made 0600 there).
    pub local_dir: Option<std::path::PathBuf>,
    pub store: DynStore,
    pub cipher: Arc<MessageCipher>,
}

/// The scope whose key wraps a file's key.
pub fn key_scope(owner: UserId, channel: Option<ChannelId>) -> KeyScope {
    match channel {
        Some(channel) => KeyScope::Channel(channel),
        None => KeyScope::Owner(owner),
    }
}

impl Files {
    /// The handle.
    pub fn new(
        config: FilesConfig,
        objects: storage::Objects,
        store: DynStore,
        cipher: Arc<MessageCipher>,
    ) -> Arc<Files> {
        Arc::new(Files {
            config,
            objects: objects.store,
            local_dir: objects.local_dir,
            store,
            cipher,
        })
    }

    /// A file's name, opened.
    pub fn name(&self, f: &FileRecord) -> Result<String, FileError> {
        name_of(&self.cipher, f)
    }

    /// `{id, name, type, size}` of a file.
    pub fn view(&self, f: &FileRecord) -> Result<AttachmentView, FileError> {
        attachment_view(&self.cipher, f)
    }

    /// Deletes a file's object and its rows (the sweeper's purge).
    pub async fn remove(&self, files: &[FileRecord]) -> Result<(), FileError> {
        for f in files {
            match self.objects.delete(&storage::path(&f.object_key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let ids: Vec<FileId> = files.iter().map(|f| f.id).collect();
        self.store.remove_files(&ids).await?;
        Ok(())
    }
}

/// A file's name, opened with its unwrapped key.
pub fn name_of(cipher: &MessageCipher, f: &FileRecord) -> Result<String, FileError> {
    let key = cipher.unwrap_file_key(f.id, key_scope(f.owner_id, f.channel_id), &f.key)?;
    Ok(open_name(&key, f.id, &f.name_ciphertext, &f.name_nonce)?)
}

/// `{id, name, type, size}` of a file (history reads, pushes).
pub fn attachment_view(
    cipher: &MessageCipher,
    f: &FileRecord,
) -> Result<AttachmentView, FileError> {
    Ok(AttachmentView {
        id: f.id,
        name: name_of(cipher, f)?,
        mime: f.mime.clone(),
        size: f.size,
    })
}
