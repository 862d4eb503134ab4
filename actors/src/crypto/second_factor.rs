//! TOTP secrets at rest (issue 37, `docs/identity.md`).
//!
//! An account's RFC 6238 secret is sealed with AES-256-GCM under
//! `HKDF-SHA256(master key of the version, salt, info =
//! ["courier/totp-secret/v1", user id])` with a random nonce; the associated
//! data binds the user and the version, so a sealed secret copied to another
//! account or relabelled with another version does not open. The result is
//! a [`Sealed`] (ciphertext, nonce, version) the store keeps in three
//! columns; `keys rotate` re-seals every secret not on the active version
//! and `keys retire` refuses a version one is still sealed under.
//!
//! Opening returns the secret in a [`Zeroizing`] buffer; no error carries it.

use aes_gcm::aead::{Aead, KeyInit as _, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use courier_protocol::UserId;
use zeroize::Zeroizing;

use super::{fill_random, CryptoError, MessageCipher, Sealed};

/// HKDF purpose of the sealing key.
const TOTP_PURPOSE: &[u8] = b"courier/totp-secret/v1";
/// Domain label at the head of the associated data.
const TOTP_AAD: &[u8; 16] = b"courier/totp/v1\0";

fn totp_aad(user: UserId, version: u32) -> [u8; 36] {
    let mut aad = [0u8; 36];
    aad[..16].copy_from_slice(TOTP_AAD);
    aad[16..32].copy_from_slice(user.0.as_bytes());
    aad[32..].copy_from_slice(&version.to_be_bytes());
    aad
}

impl MessageCipher {
    fn totp_aead(&self, version: u32, user: UserId) -> Result<Aes256Gcm, CryptoError> {
        let keyring = self.keyring();
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let mut okm = Zeroizing::new([0u8; 32]);
        master.derive(TOTP_PURPOSE, &[user.0.as_bytes()], &mut okm[..])?;
        Aes256Gcm::new_from_slice(&okm[..]).map_err(|_| CryptoError::KeyDerivation)
    }

    /// Seals `user`'s TOTP secret under the active version.
    pub fn seal_totp_secret(&self, user: UserId, secret: &[u8]) -> Result<Sealed, CryptoError> {
        let key_version = self.active_version();
        let mut nonce = Nonce::<Aes256Gcm>::default();
        fill_random(&mut nonce[..])?;
        let ciphertext = self
            .totp_aead(key_version, user)?
            .encrypt(
                &nonce,
                Payload {
                    msg: secret,
                    aad: &totp_aad(user, key_version),
                },
            )
            .map_err(|_| CryptoError::Encryption)?;
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_version,
        })
    }

    /// Opens a secret sealed by [`seal_totp_secret`](Self::seal_totp_secret)
    /// for the same user; [`CryptoError::Authentication`] when it was altered
    /// or belongs to another account or version.
    pub fn open_totp_secret(
        &self,
        user: UserId,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let nonce = <&Nonce<Aes256Gcm>>::try_from(&sealed.nonce[..])
            .map_err(|_| CryptoError::InvalidNonce(sealed.nonce.len()))?;
        let plain = self
            .totp_aead(sealed.key_version, user)?
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &totp_aad(user, sealed.key_version),
                },
            )
            .map_err(|_| CryptoError::Authentication)?;
        Ok(Zeroizing::new(plain))
    }

    /// Re-seals a secret under the active version (`keys rotate`).
    pub fn reseal_totp_secret(&self, user: UserId, sealed: &Sealed) -> Result<Sealed, CryptoError> {
        let secret = self.open_totp_secret(user, sealed)?;
        self.seal_totp_secret(user, &secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    #[test]
    fn a_sealed_secret_opens_only_for_its_user_and_version() {
        let cipher = MessageCipher::new(Keyring::generate());
        let user = UserId::new();
        let secret = b"12345678901234567890";
        let sealed = cipher.seal_totp_secret(user, secret).unwrap();
        assert!(!sealed.ciphertext.windows(8).any(|w| w == b"12345678"));
        assert_eq!(&cipher.open_totp_secret(user, &sealed).unwrap()[..], secret);
        assert!(cipher.open_totp_secret(UserId::new(), &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(cipher.open_totp_secret(user, &flipped).is_err());
    }

    #[test]
    fn rotation_reseals_under_the_new_version() {
        let ring = Keyring::generate();
        let cipher = MessageCipher::new(ring.clone());
        let user = UserId::new();
        let old = cipher
            .seal_totp_secret(user, b"abcdefghijklmnopqrst")
            .unwrap();
        cipher.install(ring.with_new_version().unwrap());
        let new = cipher.reseal_totp_secret(user, &old).unwrap();
        assert_eq!(new.key_version, old.key_version + 1);
        let mut relabelled = old.clone();
        relabelled.key_version = new.key_version;
        assert!(cipher.open_totp_secret(user, &relabelled).is_err());
        assert_eq!(
            &cipher.open_totp_secret(user, &new).unwrap()[..],
            b"abcdefghijklmnopqrst"
        );
    }
}
