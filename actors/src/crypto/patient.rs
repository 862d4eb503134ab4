//! Patient references at rest: sealed, and findable only by a keyed tag.
//!
//! - **Sealed.** A reference is stored as one self-describing blob,
//!   `version (u32, big-endian) ‖ nonce (12) ‖ AES-256-GCM ciphertext`,
//!   under `HKDF-SHA256(master key of the version, salt,
//!   info = ["courier/patient-ref/v1", owner kind, owner id])`. The
//!   associated data binds the owner (the message, channel or record that
//!   carries the reference) and the version, so a blob copied to another
//!   row does not open. See [`MessageCipher::seal_patient_ref`].
//! - **Tagged.** To find a patient's channels and messages without
//!   decrypting every row, each row also stores a tag: the first 16 bytes of
//!   `HMAC-SHA256(HKDF(master key of the version, "courier/patient-tag/v1"),
//!   reference)`, in hex. The tag is the same for one patient in every
//!   channel (the lookups need that), so a copy of the database shows that
//!   two rows concern the same patient, never who. A lookup computes the tag
//!   under every version of the keyring ([`MessageCipher::patient_tags`])
//!   and matches any; `keys rotate` re-tags rows under the active version
//!   as it re-seals them.

use aes_gcm::aead::{Aead, KeyInit as _, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use courier_protocol::{ChannelId, MessageId, PatientRef};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{fill_random, CryptoError, MessageCipher, NONCE_LEN};

/// HKDF purpose of the sealing key.
const REF_PURPOSE: &[u8] = b"courier/patient-ref/v1";
/// HKDF purpose of the tag key.
const TAG_PURPOSE: &[u8] = b"courier/patient-tag/v1";
/// Domain label at the head of the associated data.
const REF_AAD: &[u8; 16] = b"courier/pref/v1\0";
/// Bytes of HMAC output kept in a tag.
const TAG_BYTES: usize = 16;

/// What carries a sealed reference: its id goes into the key and the
/// associated data, so the blob opens only there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefOwner {
    /// A message's own `patientRef`.
    Message(MessageId),
    /// A channel's `patientRef`.
    Channel(ChannelId),
    /// Any other record (a legal hold, an export job): a one-byte kind of
    /// the caller's choosing (not `b'm'` or `b'c'`) and the record's id.
    Record(u8, [u8; 16]),
}

impl RefOwner {
    fn parts(&self) -> ([u8; 1], [u8; 16]) {
        match self {
            RefOwner::Message(m) => ([b'm'], *m.0.as_bytes()),
            RefOwner::Channel(c) => ([b'c'], *c.0.as_bytes()),
            RefOwner::Record(kind, id) => ([*kind], *id),
        }
    }
}

fn ref_aad(owner: RefOwner, version: u32) -> Vec<u8> {
    let (kind, id) = owner.parts();
    let mut aad = Vec::with_capacity(16 + 1 + 16 + 4);
    aad.extend_from_slice(REF_AAD);
    aad.extend_from_slice(&kind);
    aad.extend_from_slice(&id);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

impl MessageCipher {
    fn ref_aead(&self, version: u32, owner: RefOwner) -> Result<Aes256Gcm, CryptoError> {
        let keyring = self.keyring();
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let (kind, id) = owner.parts();
        let mut okm = Zeroizing::new([0u8; 32]);
        master.derive(REF_PURPOSE, &[&kind, &id], &mut okm[..])?;
        Aes256Gcm::new_from_slice(&okm[..]).map_err(|_| CryptoError::KeyDerivation)
    }

    /// Seals `reference` for `owner` under the active version: the blob to
    /// store (see the module doc).
    pub fn seal_patient_ref(
        &self,
        owner: RefOwner,
        reference: &PatientRef,
    ) -> Result<Vec<u8>, CryptoError> {
        let version = self.active_version();
        let mut nonce = Nonce::<Aes256Gcm>::default();
        fill_random(&mut nonce[..])?;
        let aad = ref_aad(owner, version);
        let ciphertext = self
            .ref_aead(version, owner)?
            .encrypt(
                &nonce,
                Payload {
                    msg: reference.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encryption)?;
        let mut blob = Vec::with_capacity(4 + NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&version.to_be_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// Opens a blob made by [`seal_patient_ref`](Self::seal_patient_ref)
    /// for the same owner; [`CryptoError::Authentication`] when it was
    /// altered, belongs elsewhere, or does not hold a valid reference.
    pub fn open_patient_ref(
        &self,
        owner: RefOwner,
        blob: &[u8],
    ) -> Result<PatientRef, CryptoError> {
        if blob.len() < 4 + NONCE_LEN {
            return Err(CryptoError::Authentication);
        }
        let (version, rest) = blob.split_at(4);
        let version = u32::from_be_bytes(version.try_into().expect("four bytes"));
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = <&Nonce<Aes256Gcm>>::try_from(nonce)
            .map_err(|_| CryptoError::InvalidNonce(nonce.len()))?;
        let aad = ref_aad(owner, version);
        let plain = Zeroizing::new(
            self.ref_aead(version, owner)?
                .decrypt(
                    nonce,
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Authentication)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Authentication)?;
        PatientRef::parse(text).map_err(|_| CryptoError::Authentication)
    }

    /// The key version a sealed blob was made under (`None` when it is too
    /// short to say): what `keys rotate` looks at.
    pub fn patient_ref_version(blob: &[u8]) -> Option<u32> {
        blob.get(..4)
            .map(|v| u32::from_be_bytes(v.try_into().expect("four bytes")))
    }

    /// The tag of `reference` under `version` (lowercase hex).
    pub fn patient_tag(&self, version: u32, reference: &PatientRef) -> Result<String, CryptoError> {
        let keyring = self.keyring();
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let mut key = Zeroizing::new([0u8; 32]);
        master.derive(TAG_PURPOSE, &[], &mut key[..])?;
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key[..])
            .map_err(|_| CryptoError::KeyDerivation)?;
        mac.update(reference.as_bytes());
        let out = mac.finalize().into_bytes();
        Ok(hex::encode(&out[..TAG_BYTES]))
    }

    /// The tag under the active version: what a write stores.
    pub fn active_patient_tag(&self, reference: &PatientRef) -> Result<String, CryptoError> {
        self.patient_tag(self.active_version(), reference)
    }

    /// The tag of `reference` under every version of the keyring: what a
    /// lookup matches (rows tagged before a rotation keep their old tag
    /// until `keys rotate` re-tags them).
    pub fn patient_tags(&self, reference: &PatientRef) -> Result<Vec<String>, CryptoError> {
        self.keyring()
            .versions()
            .into_iter()
            .map(|v| self.patient_tag(v, reference))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    fn cipher() -> MessageCipher {
        MessageCipher::new(Keyring::generate())
    }

    fn patient(s: &str) -> PatientRef {
        PatientRef::parse(s).unwrap()
    }

    #[test]
    fn a_sealed_reference_opens_only_for_its_owner() {
        let c = cipher();
        let m = RefOwner::Message(MessageId::new());
        let blob = c.seal_patient_ref(m, &patient("Patient/123")).unwrap();
        assert!(!blob.windows(3).any(|w| w == b"123"));
        assert_eq!(
            c.open_patient_ref(m, &blob).unwrap().as_str(),
            "Patient/123"
        );
        let other = RefOwner::Message(MessageId::new());
        assert!(matches!(
            c.open_patient_ref(other, &blob),
            Err(CryptoError::Authentication)
        ));
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(c.open_patient_ref(m, &flipped).is_err());
        assert!(c.open_patient_ref(m, &blob[..10]).is_err());
        assert_eq!(
            MessageCipher::patient_ref_version(&blob),
            Some(c.active_version())
        );
    }

    #[test]
    fn tags_are_stable_per_version_and_differ_between_patients() {
        let c = cipher();
        let a = c.active_patient_tag(&patient("Patient/1")).unwrap();
        assert_eq!(a, c.active_patient_tag(&patient("Patient/1")).unwrap());
        assert_ne!(a, c.active_patient_tag(&patient("Patient/2")).unwrap());
        assert_eq!(a.len(), 2 * TAG_BYTES);
    }

    #[test]
    fn after_a_rotation_lookups_match_old_and_new_tags() {
        let c = cipher();
        let r = patient("Patient/9");
        let old = c.active_patient_tag(&r).unwrap();
        c.install(c.keyring().with_new_version().unwrap());
        let new = c.active_patient_tag(&r).unwrap();
        assert_ne!(old, new);
        let all = c.patient_tags(&r).unwrap();
        assert!(all.contains(&old) && all.contains(&new));
    }
}
