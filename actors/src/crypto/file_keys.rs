//! File keys: each stored file has a random AES-256 key of its own
//! ([`FileKey`], which seals its content in chunks: `files::seal`). The
//! store keeps that key only wrapped:
//!
//! - **Wrapping.** `KEK = HKDF-SHA256(master key of the version, salt,
//!   info = ["courier/file-key/v1", scope kind, scope id])`, where the scope
//!   is the file's channel (attachments) or its owner (vault files); the
//!   file key is AES-256-GCM-sealed under the KEK with a random nonce and
//!   associated data binding the file id, the scope and the version. So a
//!   wrapped key copied to another file, channel or version does not open,
//!   and a master key version covers the files wrapped under it: `keys
//!   rotate` re-wraps them (cheap: 32 bytes each, the content is not
//!   touched) and `keys retire` refuses while any is left.
//! - **Names.** A file's sanitized name is sealed under its file key (AAD:
//!   the file id), so no file name is in the database in the clear.
//! - **Download links.** [`MessageCipher::link_key`] derives the HMAC key
//!   that signs short-lived download URLs, from the active master key.

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use courier_protocol::{ChannelId, FileId, UserId};
use zeroize::Zeroizing;

use super::{fill_random, CryptoError, MessageCipher};
use crate::durable::store::WrappedKey;
use crate::files::seal::FileKey;

/// HKDF purpose of key-encryption keys.
const WRAP_PURPOSE: &[u8] = b"courier/file-key/v1";
/// HKDF purpose of the download-link key.
const LINK_PURPOSE: &[u8] = b"courier/file-link/v1";
const WRAP_AAD: &[u8; 16] = b"courier/fkey/v1\0";
const NAME_AAD: &[u8; 16] = b"courier/fname/v1";

/// Whose key-encryption key wraps a file's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// An attachment: the channel it was uploaded to.
    Channel(ChannelId),
    /// A vault file: its owner.
    Owner(UserId),
}

impl KeyScope {
    fn parts(&self) -> ([u8; 1], [u8; 16]) {
        match self {
            KeyScope::Channel(c) => ([b'c'], *c.0.as_bytes()),
            KeyScope::Owner(u) => ([b'u'], *u.0.as_bytes()),
        }
    }
}

fn wrap_aad(file: FileId, scope: KeyScope, version: u32) -> Vec<u8> {
    let (kind, id) = scope.parts();
    let mut aad = Vec::with_capacity(16 + 16 + 1 + 16 + 4);
    aad.extend_from_slice(WRAP_AAD);
    aad.extend_from_slice(file.0.as_bytes());
    aad.extend_from_slice(&kind);
    aad.extend_from_slice(&id);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

impl MessageCipher {
    fn kek(&self, version: u32, scope: KeyScope) -> Result<Aes256Gcm, CryptoError> {
        let keyring = self.keyring();
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let (kind, id) = scope.parts();
        let mut okm = Zeroizing::new([0u8; 32]);
        master.derive(WRAP_PURPOSE, &[&kind, &id], &mut okm[..])?;
        Aes256Gcm::new_from_slice(&okm[..]).map_err(|_| CryptoError::KeyDerivation)
    }

    /// Wraps `key` under the active version for `scope`.
    pub fn wrap_file_key(
        &self,
        file: FileId,
        scope: KeyScope,
        key: &FileKey,
    ) -> Result<WrappedKey, CryptoError> {
        let key_version = self.active_version();
        let mut nonce = Nonce::<Aes256Gcm>::default();
        fill_random(&mut nonce[..])?;
        let aad = wrap_aad(file, scope, key_version);
        let ciphertext = self
            .kek(key_version, scope)?
            .encrypt(
                &nonce,
                Payload {
                    msg: key.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encryption)?;
        Ok(WrappedKey {
            ciphertext,
            nonce: nonce.to_vec(),
            key_version,
        })
    }

    /// Unwraps a file key; [`CryptoError::Authentication`] when it was
    /// altered or belongs to another file, scope or version.
    pub fn unwrap_file_key(
        &self,
        file: FileId,
        scope: KeyScope,
        wrapped: &WrappedKey,
    ) -> Result<FileKey, CryptoError> {
        let nonce = <&Nonce<Aes256Gcm>>::try_from(&wrapped.nonce[..])
            .map_err(|_| CryptoError::InvalidNonce(wrapped.nonce.len()))?;
        let aad = wrap_aad(file, scope, wrapped.key_version);
        let bytes = Zeroizing::new(
            self.kek(wrapped.key_version, scope)?
                .decrypt(
                    nonce,
                    Payload {
                        msg: &wrapped.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Authentication)?,
        );
        let bytes: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| CryptoError::Authentication)?;
        Ok(FileKey::from_bytes(bytes))
    }

    /// Re-wraps a file key under the active version (`keys rotate`).
    pub fn rewrap_file_key(
        &self,
        file: FileId,
        scope: KeyScope,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, CryptoError> {
        let key = self.unwrap_file_key(file, scope, wrapped)?;
        self.wrap_file_key(file, scope, &key)
    }

    /// The HMAC-SHA256 key that signs download links (active version).
    pub fn link_key(&self) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        self.link_key_of(self.active_version())
    }

    /// The download-link key of `version` (links signed before a rotation
    /// stay valid while they last).
    pub fn link_key_of(&self, version: u32) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let keyring = self.keyring();
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let mut okm = Zeroizing::new([0u8; 32]);
        master.derive(LINK_PURPOSE, &[], &mut okm[..])?;
        Ok(okm)
    }
}

fn name_aead(key: &FileKey) -> Result<Aes256Gcm, CryptoError> {
    Aes256Gcm::new_from_slice(key.as_bytes()).map_err(|_| CryptoError::KeyDerivation)
}

fn name_aad(file: FileId) -> [u8; 32] {
    let mut aad = [0u8; 32];
    aad[..16].copy_from_slice(NAME_AAD);
    aad[16..].copy_from_slice(file.0.as_bytes());
    aad
}

/// Seals a file's name under its key: `(ciphertext, nonce)`.
pub fn seal_name(
    key: &FileKey,
    file: FileId,
    name: &str,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut nonce = Nonce::<Aes256Gcm>::default();
    fill_random(&mut nonce[..])?;
    let ciphertext = name_aead(key)?
        .encrypt(
            &nonce,
            Payload {
                msg: name.as_bytes(),
                aad: &name_aad(file),
            },
        )
        .map_err(|_| CryptoError::Encryption)?;
    Ok((ciphertext, nonce.to_vec()))
}

/// Opens a name sealed by [`seal_name`].
pub fn open_name(
    key: &FileKey,
    file: FileId,
    ciphertext: &[u8],
    nonce: &[u8],
) -> Result<String, CryptoError> {
    let nonce =
        <&Nonce<Aes256Gcm>>::try_from(nonce).map_err(|_| CryptoError::InvalidNonce(nonce.len()))?;
    let plain = name_aead(key)?
        .decrypt(
            nonce,
            Payload {
                msg: ciphertext,
                aad: &name_aad(file),
            },
        )
        .map_err(|_| CryptoError::Authentication)?;
    String::from_utf8(plain).map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    #[test]
    fn a_wrapped_key_opens_only_for_its_file_scope_and_version() {
        let cipher = MessageCipher::new(Keyring::generate());
        let key = FileKey::generate().unwrap();
        let file = FileId::new();
        let channel = KeyScope::Channel(ChannelId::new());
        let wrapped = cipher.wrap_file_key(file, channel, &key).unwrap();
        let opened = cipher.unwrap_file_key(file, channel, &wrapped).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
        assert!(cipher
            .unwrap_file_key(FileId::new(), channel, &wrapped)
            .is_err());
        let other = KeyScope::Channel(ChannelId::new());
        assert!(cipher.unwrap_file_key(file, other, &wrapped).is_err());
        let owner = KeyScope::Owner(UserId::new());
        assert!(cipher.unwrap_file_key(file, owner, &wrapped).is_err());
        let mut flipped = wrapped.clone();
        flipped.ciphertext[3] ^= 1;
        assert!(cipher.unwrap_file_key(file, channel, &flipped).is_err());
    }

    #[test]
    fn rotation_rewraps_under_the_new_version() {
        let ring = Keyring::generate();
        let cipher = MessageCipher::new(ring.clone());
        let key = FileKey::generate().unwrap();
        let file = FileId::new();
        let scope = KeyScope::Owner(UserId::new());
        let old = cipher.wrap_file_key(file, scope, &key).unwrap();
        cipher.install(ring.with_new_version().unwrap());
        let new = cipher.rewrap_file_key(file, scope, &old).unwrap();
        assert_eq!(new.key_version, old.key_version + 1);
        let opened = cipher.unwrap_file_key(file, scope, &new).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
    }

    #[test]
    fn names_are_sealed_per_file() {
        let key = FileKey::generate().unwrap();
        let file = FileId::new();
        let (ct, nonce) = seal_name(&key, file, "wound photo.png").unwrap();
        assert!(!ct.windows(5).any(|w| w == b"wound"));
        assert_eq!(
            open_name(&key, file, &ct, &nonce).unwrap(),
            "wound photo.png"
        );
        assert!(open_name(&key, FileId::new(), &ct, &nonce).is_err());
    }
}
