//! The message cipher: AES-256-GCM with per-channel keys.
//!
//! The key of a message is `HKDF-SHA256(master key of the version, salt,
//! info = ["courier/message/v1", channel id, epoch])` with `epoch = seq >> 24`,
//! so one derived key encrypts at most 2^24 messages of one channel, far below
//! the 2^32 random-nonce limit of AES-GCM. Nonces are 96 random bits from the
//! OS. The associated data binds the channel id, message id, seq and key
//! version, so a ciphertext copied to another row does not open.
//!
//! Derived keys are cached (ready AES-GCM instances, zeroized on drop) by
//! (version, channel, epoch): once warm, sealing a message costs one nonce and
//! one AES-GCM pass, no HKDF. The cache is bounded; past its capacity the
//! least recently used quarter is evicted.
//!
//! The keyring can be replaced at runtime ([`MessageCipher::install`]): new
//! seals use the new active version at once, cached keys of versions the new
//! keyring still holds stay usable, and keys of removed versions are dropped.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use courier_protocol::{ChannelId, MessageId};
use dashmap::DashMap;
use zeroize::Zeroizing;

use super::{fill_random, CryptoError, Keyring};
use crate::durable::store::{Reencrypted, StoredMessage};

/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;

/// Length of the AES-GCM tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// A message key covers the seqs that agree above this bit: `epoch = seq >> 24`.
pub const EPOCH_SHIFT: u32 = 24;

/// Derived keys kept by default (about 1 KiB each).
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// HKDF purpose of message keys.
const MESSAGE_PURPOSE: &[u8] = b"courier/message/v1";

/// First bytes of the associated data of every message.
const AAD_DOMAIN: &[u8; 16] = b"courier/aad/v1\0\0";

/// Associated data: domain, channel id, message id, seq, key version.
const AAD_LEN: usize = 16 + 16 + 16 + 8 + 4;

// Cached keys rely on the AES-GCM instance wiping its key schedule on drop.
const _: fn() = || {
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroized_on_drop::<Aes256Gcm>();
};

/// A sealed message body, ready for [`StoredMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// AES-GCM ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// The 12-byte nonce.
    pub nonce: Vec<u8>,
    /// The master key version the key was derived from.
    pub key_version: u32,
}

/// Which derived key: one per version, channel and epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KeyId {
    version: u32,
    channel: ChannelId,
    epoch: u64,
}

/// A ready cipher and when it was last used (in cache misses, see `clock`).
struct CachedKey {
    aead: Aes256Gcm,
    last_used: AtomicU64,
}

/// Seals and opens message bodies. `Send + Sync`: share it as
/// `Arc<MessageCipher>`.
pub struct MessageCipher {
    /// The keyring. Only cache misses and [`MessageCipher::install`] take the
    /// lock; a miss derives and inserts under the read lock, so that an
    /// install (write lock) never races with the insertion of a key it drops.
    keyring: RwLock<Arc<Keyring>>,
    /// The active version, read by every seal without touching the lock.
    active: AtomicU32,
    /// Derived keys by (version, channel, epoch).
    keys: DashMap<KeyId, CachedKey>,
    /// Most keys kept before eviction.
    capacity: usize,
    /// Ticks once per cache miss: a recency scale that costs hits nothing
    /// but a read.
    clock: AtomicU64,
    /// Set while one thread evicts, so that others do not pile on.
    evicting: AtomicBool,
}

impl MessageCipher {
    /// A cipher over `keyring` keeping up to [`DEFAULT_CACHE_CAPACITY`] keys.
    pub fn new(keyring: Keyring) -> Self {
        MessageCipher::with_cache_capacity(keyring, DEFAULT_CACHE_CAPACITY)
    }

    /// A cipher over `keyring` keeping up to `capacity` derived keys (at least 1).
    pub fn with_cache_capacity(keyring: Keyring, capacity: usize) -> Self {
        MessageCipher {
            active: AtomicU32::new(keyring.active_version()),
            keyring: RwLock::new(Arc::new(keyring)),
            keys: DashMap::new(),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
        }
    }

    /// Replaces the keyring: new seals use its active version at once. Cached
    /// keys of versions it holds with the same material stay; others go.
    pub fn install(&self, keyring: Keyring) {
        let mut current = self.keyring.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *current, Arc::new(keyring));
        let new = Arc::clone(&current);
        self.keys
            .retain(|id, _| match (old.key(id.version), new.key(id.version)) {
                (Some(a), Some(b)) => a.same_material(b),
                _ => false,
            });
        self.active.store(new.active_version(), Ordering::Release);
    }

    /// The keyring in use (for checkpoint keys and `keys rotate`).
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The version new seals use.
    pub fn active_version(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// How many derived keys are cached.
    pub fn cached_keys(&self) -> usize {
        self.keys.len()
    }

    /// Encrypts a message body under the active version with a fresh nonce.
    pub fn seal(
        &self,
        channel: ChannelId,
        message: MessageId,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let key_version = self.active_version();
        let mut nonce = Nonce::<Aes256Gcm>::default();
        fill_random(&mut nonce[..])?;
        let aad = associated_data(channel, message, seq, key_version);
        let payload = Payload {
            msg: plaintext,
            aad: &aad,
        };
        let ciphertext = self
            .with_key(key_version, channel, seq, |aead| {
                aead.encrypt(&nonce, payload)
            })?
            .map_err(|_| CryptoError::Encryption)?;
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_version,
        })
    }

    /// Decrypts a message body. Any mismatch of channel, message id, seq, key
    /// version, nonce or ciphertext is [`CryptoError::Authentication`].
    pub fn open(
        &self,
        channel: ChannelId,
        message: MessageId,
        seq: u64,
        key_version: u32,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let nonce = <&Nonce<Aes256Gcm>>::try_from(nonce)
            .map_err(|_| CryptoError::InvalidNonce(nonce.len()))?;
        let aad = associated_data(channel, message, seq, key_version);
        let payload = Payload {
            msg: ciphertext,
            aad: &aad,
        };
        self.with_key(key_version, channel, seq, |aead| {
            aead.decrypt(nonce, payload)
        })?
        .map_err(|_| CryptoError::Authentication)
    }

    /// Opens a body sealed under `key_version` and seals it again under the
    /// active version (key rotation). The plaintext is wiped afterwards.
    pub fn reseal(
        &self,
        channel: ChannelId,
        message: MessageId,
        seq: u64,
        key_version: u32,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let plaintext =
            Zeroizing::new(self.open(channel, message, seq, key_version, nonce, ciphertext)?);
        self.seal(channel, message, seq, &plaintext)
    }

    /// [`MessageCipher::open`] for a stored row.
    pub fn open_stored(&self, m: &StoredMessage) -> Result<Vec<u8>, CryptoError> {
        self.open(
            m.channel_id,
            m.id,
            m.seq,
            m.key_version,
            &m.nonce,
            &m.ciphertext,
        )
    }

    /// [`MessageCipher::reseal`] for a stored row, as the rotation job
    /// writes it back.
    /// The message's blind-index tokens are made again from its text under
    /// the new version (`crate::search`).
    pub fn reencrypt(&self, m: &StoredMessage) -> Result<Reencrypted, CryptoError> {
        let plaintext = Zeroizing::new(self.open_stored(m)?);
        let sealed = self.seal(m.channel_id, m.id, m.seq, &plaintext)?;
        let text = String::from_utf8_lossy(&plaintext);
        let search = crate::search::index_text(self, m.channel_id, &text)?;
        Ok(Reencrypted {
            id: m.id,
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            key_version: sealed.key_version,
            search,
        })
    }

    /// Runs `f` with the cipher of (version, channel, epoch of seq), deriving
    /// and caching it on a miss.
    fn with_key<R>(
        &self,
        version: u32,
        channel: ChannelId,
        seq: u64,
        f: impl FnOnce(&Aes256Gcm) -> R,
    ) -> Result<R, CryptoError> {
        let id = KeyId {
            version,
            channel,
            epoch: seq >> EPOCH_SHIFT,
        };
        if let Some(cached) = self.keys.get(&id) {
            let now = self.clock.load(Ordering::Relaxed);
            if cached.last_used.load(Ordering::Relaxed) != now {
                cached.last_used.store(now, Ordering::Relaxed);
            }
            return Ok(f(&cached.aead));
        }

        let result = {
            let keyring = self.keyring.read().unwrap_or_else(PoisonError::into_inner);
            let master = keyring
                .key(version)
                .ok_or(CryptoError::UnknownKeyVersion(version))?;
            let mut okm = Zeroizing::new([0u8; 32]);
            master.derive(
                MESSAGE_PURPOSE,
                &[channel.as_uuid().as_bytes(), &id.epoch.to_be_bytes()],
                &mut okm[..],
            )?;
            let aead =
                Aes256Gcm::new_from_slice(&okm[..]).map_err(|_| CryptoError::KeyDerivation)?;
            let result = f(&aead);
            let tick = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
            self.keys.entry(id).or_insert(CachedKey {
                aead,
                last_used: AtomicU64::new(tick),
            });
            result
        };
        if self.keys.len() > self.capacity {
            self.evict();
        }
        Ok(result)
    }

    /// Drops the least recently used keys down to three quarters of capacity.
    fn evict(&self) {
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let target = self.capacity - self.capacity / 4;
        let mut ages: Vec<(u64, KeyId)> = self
            .keys
            .iter()
            .map(|entry| (entry.last_used.load(Ordering::Relaxed), *entry.key()))
            .collect();
        if ages.len() > target {
            let excess = ages.len() - target;
            ages.select_nth_unstable_by_key(excess - 1, |(age, _)| *age);
            for (_, id) in &ages[..excess] {
                self.keys.remove(id);
            }
        }
        self.evicting.store(false, Ordering::Release);
    }
}

impl fmt::Debug for MessageCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCipher")
            .field("active_version", &self.active_version())
            .field("cached_keys", &self.keys.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The associated data of a message: fixed-width fields, so unambiguous.
fn associated_data(
    channel: ChannelId,
    message: MessageId,
    seq: u64,
    key_version: u32,
) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..16].copy_from_slice(AAD_DOMAIN);
    aad[16..32].copy_from_slice(channel.as_uuid().as_bytes());
    aad[32..48].copy_from_slice(message.as_uuid().as_bytes());
    aad[48..56].copy_from_slice(&seq.to_be_bytes());
    aad[56..60].copy_from_slice(&key_version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    fn ring(versions: &[u32]) -> Keyring {
        Keyring::new(
            versions
                .iter()
                .map(|v| MasterKey::new(*v, [*v as u8; 32]).expect("key")),
        )
        .expect("ring")
    }

    fn cipher() -> MessageCipher {
        MessageCipher::new(ring(&[1]))
    }

    struct Row {
        channel: ChannelId,
        message: MessageId,
        seq: u64,
        sealed: Sealed,
    }

    fn sealed_row(c: &MessageCipher, seq: u64, text: &[u8]) -> Row {
        let (channel, message) = (ChannelId::new(), MessageId::new());
        let sealed = c.seal(channel, message, seq, text).expect("seal");
        Row {
            channel,
            message,
            seq,
            sealed,
        }
    }

    fn open_row(c: &MessageCipher, r: &Row) -> Result<Vec<u8>, CryptoError> {
        c.open(
            r.channel,
            r.message,
            r.seq,
            r.sealed.key_version,
            &r.sealed.nonce,
            &r.sealed.ciphertext,
        )
    }

    fn assert_auth_fails(result: Result<Vec<u8>, CryptoError>, what: &str) {
        assert!(
            matches!(result, Err(CryptoError::Authentication)),
            "{what}: {result:?}"
        );
    }

    #[test]
    fn round_trip() {
        let c = cipher();
        let r = sealed_row(&c, 42, b"blood pressure 120/80");
        assert_eq!(r.sealed.key_version, 1);
        assert_eq!(r.sealed.nonce.len(), NONCE_LEN);
        assert_eq!(r.sealed.ciphertext.len(), 21 + TAG_LEN);
        assert_eq!(open_row(&c, &r).expect("open"), b"blood pressure 120/80");
        let empty = sealed_row(&c, 1, b"");
        assert_eq!(open_row(&c, &empty).expect("open empty"), b"");
    }

    #[test]
    fn any_other_row_or_alteration_fails_authentication() {
        let c = MessageCipher::new(ring(&[1, 2]));
        let r = sealed_row(&c, 7, b"hello");
        let s = &r.sealed;
        let open = |channel, message, seq, version, nonce: &[u8], ct: &[u8]| {
            c.open(channel, message, seq, version, nonce, ct)
        };
        assert_auth_fails(
            open(
                ChannelId::new(),
                r.message,
                r.seq,
                2,
                &s.nonce,
                &s.ciphertext,
            ),
            "other channel",
        );
        assert_auth_fails(
            open(
                r.channel,
                MessageId::new(),
                r.seq,
                2,
                &s.nonce,
                &s.ciphertext,
            ),
            "other message",
        );
        assert_auth_fails(
            open(r.channel, r.message, 8, 2, &s.nonce, &s.ciphertext),
            "other seq",
        );
        assert_auth_fails(
            open(r.channel, r.message, r.seq, 1, &s.nonce, &s.ciphertext),
            "other key version",
        );
        assert!(matches!(
            open(r.channel, r.message, r.seq, 9, &s.nonce, &s.ciphertext),
            Err(CryptoError::UnknownKeyVersion(9))
        ));
        assert!(matches!(
            open(r.channel, r.message, r.seq, 2, &s.nonce[..8], &s.ciphertext),
            Err(CryptoError::InvalidNonce(8))
        ));
        assert_auth_fails(
            open(
                r.channel,
                r.message,
                r.seq,
                2,
                &s.nonce,
                &s.ciphertext[..TAG_LEN - 1],
            ),
            "truncated",
        );
        // One flipped bit anywhere: body, tag or nonce.
        let body = 0;
        let tag = s.ciphertext.len() - 1;
        for index in [body, tag] {
            let mut ct = s.ciphertext.clone();
            ct[index] ^= 0x01;
            assert_auth_fails(open(r.channel, r.message, r.seq, 2, &s.nonce, &ct), "bit");
        }
        let mut nonce = s.nonce.clone();
        nonce[11] ^= 0x80;
        assert_auth_fails(
            open(r.channel, r.message, r.seq, 2, &nonce, &s.ciphertext),
            "nonce bit",
        );
        // The untouched row still opens.
        assert_eq!(open_row(&c, &r).expect("open"), b"hello");
    }

    #[test]
    fn nonces_differ_between_seals_of_the_same_text() {
        let c = cipher();
        let (channel, message) = (ChannelId::new(), MessageId::new());
        let a = c.seal(channel, message, 1, b"same").expect("seal");
        let b = c.seal(channel, message, 1, b"same").expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn epochs_use_different_keys() {
        let c = cipher();
        let channel = ChannelId::new();
        let message = MessageId::new();
        let last_of_epoch0 = (1u64 << EPOCH_SHIFT) - 1;
        let first_of_epoch1 = 1u64 << EPOCH_SHIFT;
        c.seal(channel, message, 1, b"x").expect("seal");
        c.seal(channel, message, last_of_epoch0, b"x")
            .expect("seal");
        assert_eq!(c.cached_keys(), 1, "one epoch, one key");
        c.seal(channel, message, first_of_epoch1, b"x")
            .expect("seal");
        assert_eq!(c.cached_keys(), 2, "a new epoch derives a new key");

        // The derivation itself: epochs and channels give different keys.
        let keyring = c.keyring();
        let master = keyring.key(1).expect("v1");
        let derive = |epoch: u64| {
            let mut okm = [0u8; 32];
            master
                .derive(
                    MESSAGE_PURPOSE,
                    &[channel.as_uuid().as_bytes(), &epoch.to_be_bytes()],
                    &mut okm,
                )
                .expect("derive");
            okm
        };
        assert_ne!(derive(0), derive(1));
        let other_channel = {
            let mut okm = [0u8; 32];
            master
                .derive(
                    MESSAGE_PURPOSE,
                    &[ChannelId::new().as_uuid().as_bytes(), &0u64.to_be_bytes()],
                    &mut okm,
                )
                .expect("derive");
            okm
        };
        assert_ne!(derive(0), other_channel);
    }

    #[test]
    fn rotation_takes_effect_at_once_and_old_rows_still_open() {
        let v1 = ring(&[1]);
        let c = MessageCipher::new(v1.clone());
        let old = sealed_row(&c, 3, b"before rotation");
        assert_eq!(old.sealed.key_version, 1);

        let mut v2 = v1.with_new_version().expect("rotate");
        c.install(v2.clone());
        assert_eq!(c.active_version(), 2);
        assert_eq!(open_row(&c, &old).expect("old opens"), b"before rotation");
        let new = sealed_row(&c, 4, b"after rotation");
        assert_eq!(new.sealed.key_version, 2);
        assert_eq!(open_row(&c, &new).expect("new opens"), b"after rotation");

        let resealed = c
            .reseal(
                old.channel,
                old.message,
                old.seq,
                1,
                &old.sealed.nonce,
                &old.sealed.ciphertext,
            )
            .expect("reseal");
        assert_eq!(resealed.key_version, 2);
        let moved = Row {
            sealed: resealed,
            ..old
        };
        assert_eq!(
            open_row(&c, &moved).expect("resealed opens"),
            b"before rotation"
        );

        // Retiring v1 drops its cached keys: v1 rows no longer open.
        let again = sealed_row(&MessageCipher::new(v1), 5, b"v1");
        v2.retire(1).expect("retire");
        c.install(v2);
        assert!(matches!(
            open_row(&c, &again),
            Err(CryptoError::UnknownKeyVersion(1))
        ));
    }

    #[test]
    fn installing_different_material_under_a_version_drops_its_keys() {
        let c = MessageCipher::new(ring(&[1]));
        let r = sealed_row(&c, 1, b"x");
        c.install(Keyring::new([MasterKey::new(1, [0xEE; 32]).expect("key")]).expect("ring"));
        assert_auth_fails(open_row(&c, &r), "other material");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = MessageCipher::with_cache_capacity(ring(&[1]), 8);
        let hot = sealed_row(&c, 1, b"hot");
        for _ in 0..50 {
            sealed_row(&c, 1, b"x");
            open_row(&c, &hot).expect("hot row");
            assert!(c.cached_keys() <= 8, "{}", c.cached_keys());
        }
    }

    #[test]
    fn the_cipher_is_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<MessageCipher>();
        let c = Arc::new(cipher());
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let r = sealed_row(&c, i, b"threaded");
                    open_row(&c, &r).expect("open")
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), b"threaded");
        }
    }

    proptest! {
        #[test]
        fn any_plaintext_round_trips_and_any_bit_flip_fails(
            text in proptest::collection::vec(any::<u8>(), 0..512),
            seq in any::<u64>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let c = cipher();
            let r = sealed_row(&c, seq, &text);
            prop_assert_eq!(open_row(&c, &r).expect("open"), text.clone());

            // Flip one bit of nonce || ciphertext (which ends with the tag).
            let bits = (NONCE_LEN + r.sealed.ciphertext.len()) * 8;
            let bit = flip.index(bits);
            let (mut nonce, mut ct) = (r.sealed.nonce.clone(), r.sealed.ciphertext.clone());
            let byte = bit / 8;
            if byte < NONCE_LEN {
                nonce[byte] ^= 1 << (bit % 8);
            } else {
                ct[byte - NONCE_LEN] ^= 1 << (bit % 8);
            }
            let result = c.open(r.channel, r.message, r.seq, 1, &nonce, &ct);
            prop_assert!(matches!(result, Err(CryptoError::Authentication)));
        }
    }
}
