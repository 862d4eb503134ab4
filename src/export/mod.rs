//! # The signed compliance export
//!
//! `courier export --channel ID | --patient REF --out FILE --actor USER`
//! writes a channel (or every channel with a message concerning a
//! patient) as JSON Lines, decrypted: the channel, its members, its
//! messages (deleted ones too), their edits and deletions from the audit
//! chain, and the channel's audit entries in full up to the chain head the
//! export was taken at. `FILE.sig` beside it is an Ed25519 signature, by
//! the keyring's checkpoint key (`mk<version>`, whose public half `courier
//! audit public-key` prints), over the file's SHA-256 and that head. The
//! export itself goes into the chain (`compliance.export`, with the
//! disclosure of what it decrypted) before the command reports success.
//! `courier export verify FILE` checks the signature, the hash, every audit
//! entry against the stored chain, and that the chain still holds the head.
//! The format: docs/export.md.
//!
//! # Layout
//! - [`format`]: the lines, the signature file, the signed message.
//! - [`write`]: `courier export`.
//! - [`verify`]: `courier export verify`.
//!
//! What it takes: the configuration (store and keyring, read as the other
//! CLI commands read them); what it owns: the two files it writes. A crash
//! mid-export leaves `FILE.partial` (0600, decrypted messages) and no audit
//! entry; a new export to the same `FILE` stops while it is there (remove
//! it by hand).

pub mod format;
pub mod verify;
pub mod write;

use std::path::{Path, PathBuf};

pub use verify::{verify, Verdict, VerifyOptions};
pub use write::{export, ExportOptions, ExportScope, ExportSummary};

use crate::commands::CommandError;
use crate::secrets::SecretsError;
use crate::server::ServerError;

/// Why an export or its verification could not be done. (An export that
/// does not verify is no error: it is a [`Verdict`] with `ok: false`.)
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] courier_actors::durable::store::StoreError),
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A key could not be derived, or a patient reference did not open.
    #[error("crypto: {0}")]
    Crypto(#[from] courier_actors::crypto::CryptoError),
    /// A stored message failed its integrity check: the export stops.
    #[error("{0}; the export stopped")]
    History(courier_actors::durable::history::HistoryError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The arguments cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The actor may not take this export.
    #[error("refused: {0}")]
    Refused(String),
}

impl ExportError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn json(e: serde_json::Error) -> Self {
        ExportError::Invalid(format!("JSON: {e}"))
    }
}
