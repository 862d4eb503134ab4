//! The master keyring: versioned 32-byte master keys.
//!
//! The spec format is `1:<base64 key>,2:<base64 key>` (standard base64 of 32
//! bytes); a keyring file holds the same entries, one per line or comma
//! separated, with `#` comment lines. The highest version is active (it
//! encrypts new messages) unless [`Keyring::set_active`] says otherwise. Keys
//! of older versions stay to read what they encrypted until they are retired.
//!
//! Every key Courier uses is derived from a master key with HKDF-SHA256 under
//! a fixed salt and a length-prefixed `info` that starts with a purpose label,
//! so message keys and checkpoint signing keys never coincide.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{fill_random, CryptoError};

/// Length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// HKDF salt of every derivation (a fixed, public domain separator).
const HKDF_SALT: &[u8] = b"courier/hkdf-salt/v1";

/// HKDF purpose of the audit checkpoint signing key.
const CHECKPOINT_PURPOSE: &[u8] = b"courier/audit-checkpoint/v1";

/// Prefix of checkpoint key ids: version 3 signs as `mk3`.
const KEY_ID_PREFIX: &str = "mk";

/// One master key. The bytes live on the heap (so moves do not copy them),
/// are zeroized on drop and are never shown by `Debug`.
#[derive(Clone)]
pub struct MasterKey {
    version: u32,
    bytes: Box<[u8; MASTER_KEY_LEN]>,
}

impl MasterKey {
    /// A master key of `version` (at least 1) made of `bytes`.
    pub fn new(version: u32, bytes: [u8; MASTER_KEY_LEN]) -> Result<Self, CryptoError> {
        let mut bytes = bytes;
        let key = MasterKey {
            version,
            bytes: Box::new(bytes),
        };
        bytes.zeroize();
        if version == 0 {
            return Err(CryptoError::ZeroVersion);
        }
        Ok(key)
    }

    /// A fresh key of `version` from the OS random number generator.
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        if version == 0 {
            return Err(CryptoError::ZeroVersion);
        }
        let mut bytes = Box::new([0u8; MASTER_KEY_LEN]);
        fill_random(&mut bytes[..])?;
        Ok(MasterKey { version, bytes })
    }

    /// The key's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Fills `okm` with HKDF-SHA256 output for `purpose` and `context`, each
    /// part length-prefixed in `info` so that no two inputs collide.
    pub(crate) fn derive(
        &self,
        purpose: &[u8],
        context: &[&[u8]],
        okm: &mut [u8],
    ) -> Result<(), CryptoError> {
        let mut info = Vec::with_capacity(64);
        for part in std::iter::once(purpose).chain(context.iter().copied()) {
            info.extend_from_slice(&(part.len() as u64).to_be_bytes());
            info.extend_from_slice(part);
        }
        Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.bytes[..])
            .expand(&info, okm)
            .map_err(|_| CryptoError::KeyDerivation)
    }

    /// Whether two keys hold the same bytes (constant time).
    pub(crate) fn same_material(&self, other: &MasterKey) -> bool {
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("version", &self.version)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// Master keys by version, one of them active.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, MasterKey>,
    active: u32,
}

impl Keyring {
    /// A keyring of `keys`; the highest version is active.
    pub fn new(keys: impl IntoIterator<Item = MasterKey>) -> Result<Self, CryptoError> {
        let mut map = BTreeMap::new();
        for key in keys {
            let version = key.version;
            if map.insert(version, key).is_some() {
                return Err(CryptoError::DuplicateVersion(version));
            }
        }
        let active = *map.keys().next_back().ok_or(CryptoError::EmptyKeyring)?;
        Ok(Keyring { keys: map, active })
    }

    /// Parses `1:<base64>,2:<base64>`; entries may also be separated by
    /// newlines, and lines starting with `#` are comments. Errors name the
    /// entry by position and never contain key material.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let entries = spec
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        let mut keys = Vec::new();
        for (index, entry) in entries.enumerate() {
            keys.push(parse_entry(index + 1, entry)?);
        }
        Keyring::new(keys)
    }

    /// Reads a keyring file (same format as [`Keyring::parse`]).
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, CryptoError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::KeyringFile {
            path: path.to_path_buf(),
            source,
        })?;
        let text = Zeroizing::new(text);
        Keyring::parse(&text)
    }

    /// The spec of every key, `1:<base64>,2:<base64>`, for writing a keyring
    /// file. It contains the secret keys: write it only to a private file.
    /// (A non-default active version is not part of the spec: parsing makes
    /// the highest active again.)
    pub fn to_spec(&self) -> String {
        let engine = base64::engine::general_purpose::STANDARD;
        self.keys
            .values()
            .map(|key| format!("{}:{}", key.version, engine.encode(&key.bytes[..])))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A keyring with one fresh version 1 key.
    ///
    /// # Panics
    /// When the operating system's random number generator fails (as
    /// `rand::random` does); [`Keyring::try_generate`] returns the error.
    pub fn generate() -> Self {
        match Keyring::try_generate() {
            Ok(keyring) => keyring,
            Err(e) => panic!("cannot generate a master key: {e}"),
        }
    }

    /// A keyring with one fresh version 1 key, or the RNG's error.
    pub fn try_generate() -> Result<Self, CryptoError> {
        Keyring::new([MasterKey::generate(1)?])
    }

    /// A copy with a fresh key of version `max + 1`, made active
    /// (`courier keys rotate`).
    pub fn with_new_version(&self) -> Result<Self, CryptoError> {
        let max = self.keys.keys().next_back().copied().unwrap_or(0);
        let version = max
            .checked_add(1)
            .ok_or(CryptoError::VersionsExhausted(max))?;
        let mut next = self.clone();
        next.keys.insert(version, MasterKey::generate(version)?);
        next.active = version;
        Ok(next)
    }

    /// Makes `version` the active one.
    pub fn set_active(&mut self, version: u32) -> Result<(), CryptoError> {
        if !self.keys.contains_key(&version) {
            return Err(CryptoError::UnknownKeyVersion(version));
        }
        self.active = version;
        Ok(())
    }

    /// Removes `version` (after every message has been re-encrypted away from
    /// it). Refuses the active version.
    pub fn retire(&mut self, version: u32) -> Result<(), CryptoError> {
        if version == self.active {
            return Err(CryptoError::RetireActive(version));
        }
        self.keys
            .remove(&version)
            .map(drop)
            .ok_or(CryptoError::UnknownKeyVersion(version))
    }

    /// The version that encrypts new messages.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// Every version, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Whether the keyring has a key of `version`.
    pub fn contains(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    /// The master key of `version`.
    pub(crate) fn key(&self, version: u32) -> Option<&MasterKey> {
        self.keys.get(&version)
    }

    /// The Ed25519 key that signs audit checkpoints under `version`, derived
    /// with HKDF under its own purpose label.
    pub fn checkpoint_signing_key(&self, version: u32) -> Result<SigningKey, CryptoError> {
        let master = self
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let mut seed = Zeroizing::new([0u8; 32]);
        master.derive(CHECKPOINT_PURPOSE, &[], &mut seed[..])?;
        Ok(SigningKey::from_bytes(&seed))
    }

    /// The key id checkpoints signed under `version` carry: `mk<version>`.
    pub fn checkpoint_key_id(version: u32) -> String {
        format!("{KEY_ID_PREFIX}{version}")
    }

    /// The public key that verifies checkpoints carrying `key_id`.
    pub fn checkpoint_verifying_key(&self, key_id: &str) -> Result<VerifyingKey, CryptoError> {
        let version = key_id
            .strip_prefix(KEY_ID_PREFIX)
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok())
            .filter(|version| self.contains(*version))
            .ok_or_else(|| CryptoError::UnknownKeyId(key_id.to_owned()))?;
        Ok(self.checkpoint_signing_key(version)?.verifying_key())
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.versions())
            .field("active", &self.active)
            .finish()
    }
}

/// Parses one `<version>:<base64 key>` entry (`entry` is its position).
fn parse_entry(entry: usize, text: &str) -> Result<MasterKey, CryptoError> {
    let invalid = |problem: &str| CryptoError::InvalidKeyringEntry {
        entry,
        problem: problem.to_owned(),
    };
    let (version, key) = text
        .split_once(':')
        .ok_or_else(|| invalid("expected `<version>:<base64 32-byte key>`"))?;
    let version: u32 = version
        .trim()
        .parse()
        .map_err(|_| invalid("the version is not a number"))?;
    if version == 0 {
        return Err(invalid("the version must be at least 1"));
    }
    // Room for a little more than a key, so that a too-long key is reported
    // by its length rather than as a decoding error.
    let mut buf = Zeroizing::new([0u8; 2 * MASTER_KEY_LEN]);
    let len = base64::engine::general_purpose::STANDARD
        .decode_slice(key.trim().as_bytes(), &mut buf[..])
        .map_err(|e| match e {
            base64::DecodeSliceError::OutputSliceTooSmall => {
                invalid("the key must decode to 32 bytes (it is longer)")
            }
            base64::DecodeSliceError::DecodeError(_) => {
                invalid("the key is not valid standard base64")
            }
        })?;
    if len != MASTER_KEY_LEN {
        return Err(CryptoError::InvalidKeyringEntry {
            entry,
            problem: format!("the key must decode to 32 bytes, got {len}"),
        });
    }
    let mut bytes = Box::new([0u8; MASTER_KEY_LEN]);
    bytes.copy_from_slice(&buf[..MASTER_KEY_LEN]);
    Ok(MasterKey { version, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn spec_of(entries: &[(u32, u8)]) -> String {
        entries
            .iter()
            .map(|(v, fill)| format!("{v}:{}", b64(&[*fill; 32])))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn parses_and_renders_a_spec() {
        let spec = spec_of(&[(1, 1), (2, 2)]);
        let ring = Keyring::parse(&spec).expect("valid spec");
        assert_eq!(ring.versions(), vec![1, 2]);
        assert_eq!(ring.active_version(), 2);
        assert_eq!(ring.to_spec(), spec);
        assert_eq!(
            Keyring::parse(&ring.to_spec())
                .expect("round trip")
                .to_spec(),
            spec
        );
    }

    #[test]
    fn parses_a_file_with_lines_commas_and_comments() {
        let text = format!(
            "# courier keyring\n{}\n\n  {} , {}\n",
            spec_of(&[(3, 3)]),
            spec_of(&[(1, 1)]),
            spec_of(&[(2, 2)])
        );
        let dir = std::env::temp_dir().join(format!("courier-keyring-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("keyring");
        std::fs::write(&path, text).expect("write");
        let ring = Keyring::load_file(&path).expect("valid file");
        assert_eq!(ring.versions(), vec![1, 2, 3]);
        assert_eq!(ring.active_version(), 3);
        std::fs::remove_dir_all(&dir).expect("cleanup");

        let missing = Keyring::load_file(dir.join("nope")).expect_err("missing file");
        assert!(
            matches!(missing, CryptoError::KeyringFile { .. }),
            "{missing}"
        );
    }

    #[test]
    fn parse_errors_name_the_problem_without_key_material() {
        let good = b64(&[9; 32]);
        let short = b64(&[9; 16]);
        let long = b64(&[9; 40]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            (" , ,\n# only a comment\n".into(), "empty"),
            (format!("1{good}"), "entry 1: expected"),
            (
                format!("1:{good},x:{good}"),
                "entry 2: the version is not a number",
            ),
            (format!("0:{good}"), "at least 1"),
            (
                format!("1:{good},2:{short}"),
                "entry 2: the key must decode to 32 bytes, got 16",
            ),
            (format!("1:{long}"), "32 bytes"),
            (
                format!("1:{}!!", &good[..good.len() - 2]),
                "not valid standard base64",
            ),
            (format!("1:{good},1:{good}"), "version 1 more than once"),
        ];
        for (spec, expected) in cases {
            let err = Keyring::parse(&spec).expect_err(&format!("should refuse {expected}"));
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "{text:?} should mention {expected:?}"
            );
            assert!(!text.contains(&good[..8]), "{text:?} leaks key material");
            assert!(!text.contains(&long[..8]), "{text:?} leaks key material");
        }
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = MasterKey::new(1, [0xAB; 32]).expect("key");
        let ring = Keyring::new([key.clone()]).expect("ring");
        for text in [format!("{key:?}"), format!("{ring:?}")] {
            assert!(!text.to_lowercase().contains("ab, ab"), "{text}");
            assert!(!text.contains("171"), "{text}");
            assert!(!text.contains(&b64(&[0xAB; 32])[..8]), "{text}");
        }
        assert!(format!("{ring:?}").contains("active: 1"));
    }

    #[test]
    fn rotation_adds_an_active_version_and_retire_refuses_the_active_one() {
        let ring = Keyring::generate();
        assert_eq!(ring.versions(), vec![1]);
        let mut rotated = ring.with_new_version().expect("rotate");
        assert_eq!(rotated.versions(), vec![1, 2]);
        assert_eq!(rotated.active_version(), 2);
        assert!(matches!(
            rotated.retire(2),
            Err(CryptoError::RetireActive(2))
        ));
        assert!(matches!(
            rotated.retire(7),
            Err(CryptoError::UnknownKeyVersion(7))
        ));
        rotated.retire(1).expect("retire old version");
        assert_eq!(rotated.versions(), vec![2]);

        let mut ring = Keyring::parse(&spec_of(&[(1, 1), (2, 2)])).expect("ring");
        ring.set_active(1).expect("known version");
        assert_eq!(ring.active_version(), 1);
        assert!(ring.set_active(5).is_err());
        assert_ne!(Keyring::generate().to_spec(), Keyring::generate().to_spec());
    }

    #[test]
    fn checkpoint_keys_are_derived_per_version_and_verifiable_by_id() {
        let ring = Keyring::parse(&spec_of(&[(1, 1), (2, 2)])).expect("ring");
        let k1 = ring.checkpoint_signing_key(1).expect("v1");
        let k2 = ring.checkpoint_signing_key(2).expect("v2");
        assert_ne!(k1.verifying_key(), k2.verifying_key());
        assert_eq!(
            k1.verifying_key(),
            ring.checkpoint_signing_key(1)
                .expect("again")
                .verifying_key()
        );
        assert_eq!(Keyring::checkpoint_key_id(2), "mk2");
        let vk = ring.checkpoint_verifying_key("mk2").expect("known id");
        assert_eq!(vk, k2.verifying_key());
        for bad in ["mk3", "mk", "k1", "mk+1", "mk01x", ""] {
            assert!(ring.checkpoint_verifying_key(bad).is_err(), "{bad}");
        }
    }
}
