//! Encryption at rest: the master keyring and the per-channel message cipher.
//!
//! - [`Keyring`] holds the versioned 32-byte master keys (`1:<base64>,2:<base64>`);
//!   the highest version is active unless set otherwise. It also derives the
//!   Ed25519 key that signs audit checkpoints, so that verification needs the
//!   keyring alone.
//! - [`MessageCipher`] seals and opens message bodies with AES-256-GCM under
//!   keys derived per (key version, channel, epoch = `seq >> 24`) with
//!   HKDF-SHA256. The associated data binds channel, message id, seq and key
//!   version, so a ciphertext moved to another row fails to open with
//!   [`CryptoError::Authentication`].
//!
//! - [`patient`] seals patient references and makes the keyed tags that
//!   find them.
//! - `second_factor` seals accounts' TOTP secrets
//!   ([`MessageCipher::seal_totp_secret`]).
//!
//! Secrets are zeroized on drop and never appear in `Debug` output or errors.

mod cipher;
pub mod file_keys;
mod keyring;
pub mod patient;
mod second_factor;

pub use cipher::{MessageCipher, Sealed, DEFAULT_CACHE_CAPACITY, EPOCH_SHIFT, NONCE_LEN, TAG_LEN};
pub use file_keys::KeyScope;
pub use keyring::{Keyring, MasterKey, MASTER_KEY_LEN};
pub use patient::RefOwner;

use std::path::PathBuf;

/// What went wrong with keys or ciphertexts. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A keyring spec or file holds no key.
    #[error("the keyring is empty: expected `<version>:<base64 32-byte key>` entries")]
    EmptyKeyring,
    /// One entry of a keyring spec is malformed (1-based position; the entry
    /// itself is never echoed, it may contain key material).
    #[error("keyring entry {entry}: {problem}")]
    InvalidKeyringEntry {
        /// Position of the entry, from 1.
        entry: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Two entries share a version.
    #[error("keyring has key version {0} more than once")]
    DuplicateVersion(u32),
    /// The keyring file could not be read.
    #[error("cannot read keyring file {path}: {source}")]
    KeyringFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Version 0 is reserved (versions start at 1).
    #[error("key version 0 is not allowed (versions start at 1)")]
    ZeroVersion,
    /// The keyring has no key of this version.
    #[error("unknown key version {0}")]
    UnknownKeyVersion(u32),
    /// The active version cannot be retired.
    #[error("key version {0} is active and cannot be retired")]
    RetireActive(u32),
    /// Every `u32` version is used.
    #[error("no key version is left after {0}")]
    VersionsExhausted(u32),
    /// A checkpoint names a key id that is not `mk<version>` of this keyring.
    #[error("unknown checkpoint key id {0:?}")]
    UnknownKeyId(String),
    /// A nonce of the wrong length.
    #[error("nonce must be {NONCE_LEN} bytes, got {0}")]
    InvalidNonce(usize),
    /// The ciphertext does not belong to this channel, message, seq and key
    /// version, or it was altered.
    #[error(
        "authentication failed: the ciphertext was altered or does not belong \
         to this channel, message, seq and key version"
    )]
    Authentication,
    /// Encryption refused the input (a plaintext beyond AES-GCM's limit).
    #[error("encryption failed: plaintext too long")]
    Encryption,
    /// HKDF refused an output length (a bug).
    #[error("key derivation failed")]
    KeyDerivation,
    /// The operating system's random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Rng(rand::rngs::SysError),
}

/// Fills `buf` from the operating system's RNG.
fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    use rand::TryRng as _;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(CryptoError::Rng)
}
