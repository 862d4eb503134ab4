//! Properties of the message cipher over its public API: every row
//! round-trips under any keyring, and flipping any single bit of what
//! authenticates a row (nonce, ciphertext, tag, and every field of the
//! associated data: channel id, message id, seq, key version) makes it fail
//! to open. Every bit is tried, not a sample.

use std::collections::BTreeSet;

use courier_actors::crypto::{
    CryptoError, Keyring, MasterKey, MessageCipher, Sealed, NONCE_LEN, TAG_LEN,
};
use courier_protocol::{ChannelId, MessageId};
use proptest::prelude::*;
use uuid::Uuid;

/// A keyring of 1 to 4 versions (often neighbours, so that a flipped
/// version bit can land on another real version) with random material, and
/// any of them active.
fn keyring() -> impl Strategy<Value = Keyring> {
    let version = prop_oneof![3 => 1u32..9, 1 => 1u32..=u32::MAX];
    (
        proptest::collection::btree_set(version, 1..5),
        any::<[u8; 32]>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(versions, seed, active): (BTreeSet<u32>, _, _)| {
            let keys = versions.iter().map(|v| {
                let mut material = seed;
                material[..4].copy_from_slice(&v.to_be_bytes());
                MasterKey::new(*v, material).expect("nonzero version")
            });
            let mut ring = Keyring::new(keys).expect("a keyring");
            let versions: Vec<u32> = versions.into_iter().collect();
            ring.set_active(versions[active.index(versions.len())])
                .expect("a held version");
            ring
        })
}

/// A seq, often at an epoch boundary (the key changes at `seq >> 24`).
fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..4).prop_map(|e| (e << 24).wrapping_sub(1)),
        (0u64..4).prop_map(|e| e << 24),
        Just(u64::MAX),
        Just(0),
    ]
}

struct Row {
    channel: ChannelId,
    message: MessageId,
    seq: u64,
    sealed: Sealed,
}

fn open(c: &MessageCipher, r: &Row) -> Result<Vec<u8>, CryptoError> {
    c.open(
        r.channel,
        r.message,
        r.seq,
        r.sealed.key_version,
        &r.sealed.nonce,
        &r.sealed.ciphertext,
    )
}

fn flip_uuid(u: Uuid, bit: usize) -> Uuid {
    Uuid::from_u128(u.as_u128() ^ (1u128 << bit))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_row_round_trips_under_any_keyring(
        ring in keyring(),
        channel in any::<u128>(),
        message in any::<u128>(),
        seq in seq(),
        text in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let active = ring.active_version();
        let c = MessageCipher::new(ring);
        let (channel, message) = (ChannelId(Uuid::from_u128(channel)), MessageId(Uuid::from_u128(message)));
        let sealed = c.seal(channel, message, seq, &text).expect("seal");
        prop_assert_eq!(sealed.key_version, active);
        prop_assert_eq!(sealed.nonce.len(), NONCE_LEN);
        prop_assert_eq!(sealed.ciphertext.len(), text.len() + TAG_LEN);
        let row = Row { channel, message, seq, sealed };
        prop_assert_eq!(open(&c, &row).expect("open"), text.clone());
        // A cold cipher over the same keyring opens it too (nothing depends
        // on the cache).
        let cold = MessageCipher::with_cache_capacity(c.keyring().as_ref().clone(), 1);
        prop_assert_eq!(open(&cold, &row).expect("open cold"), text);
    }

    #[test]
    fn every_single_bit_flip_of_nonce_ciphertext_or_associated_data_fails(
        ring in keyring(),
        channel in any::<u128>(),
        message in any::<u128>(),
        seq in seq(),
        text in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let c = MessageCipher::new(ring);
        let (channel, message) = (ChannelId(Uuid::from_u128(channel)), MessageId(Uuid::from_u128(message)));
        let sealed = c.seal(channel, message, seq, &text).expect("seal");
        let r = Row { channel, message, seq, sealed };
        let s = &r.sealed;
        let auth = |result: Result<Vec<u8>, CryptoError>, what: &str| -> Result<(), TestCaseError> {
            prop_assert!(matches!(result, Err(CryptoError::Authentication)), "{}: {:?}", what, result);
            Ok(())
        };

        for bit in 0..NONCE_LEN * 8 {
            let mut nonce = s.nonce.clone();
            nonce[bit / 8] ^= 1 << (bit % 8);
            auth(c.open(channel, message, seq, s.key_version, &nonce, &s.ciphertext), &format!("nonce bit {bit}"))?;
        }
        // The ciphertext ends with the tag: both are covered.
        for bit in 0..s.ciphertext.len() * 8 {
            let mut ct = s.ciphertext.clone();
            ct[bit / 8] ^= 1 << (bit % 8);
            auth(c.open(channel, message, seq, s.key_version, &s.nonce, &ct), &format!("ciphertext bit {bit}"))?;
        }
        for bit in 0..128 {
            let other = ChannelId(flip_uuid(channel.0, bit));
            auth(c.open(other, message, seq, s.key_version, &s.nonce, &s.ciphertext), &format!("channel bit {bit}"))?;
            let other = MessageId(flip_uuid(message.0, bit));
            auth(c.open(channel, other, seq, s.key_version, &s.nonce, &s.ciphertext), &format!("message bit {bit}"))?;
        }
        for bit in 0..64 {
            auth(c.open(channel, message, seq ^ (1 << bit), s.key_version, &s.nonce, &s.ciphertext), &format!("seq bit {bit}"))?;
        }
        let keyring = c.keyring();
        for bit in 0..32 {
            let version = s.key_version ^ (1 << bit);
            let result = c.open(channel, message, seq, version, &s.nonce, &s.ciphertext);
            if keyring.contains(version) {
                // Another real key: the tag still does not verify.
                auth(result, &format!("key version bit {bit} ({version})"))?;
            } else {
                prop_assert!(
                    matches!(result, Err(CryptoError::UnknownKeyVersion(v)) if v == version),
                    "key version bit {}: {:?}", bit, result
                );
            }
        }
        // Shortened or lengthened ciphertexts fail as well.
        for len in 0..s.ciphertext.len() {
            auth(c.open(channel, message, seq, s.key_version, &s.nonce, &s.ciphertext[..len]), &format!("cut to {len}"))?;
        }
        let mut longer = s.ciphertext.clone();
        longer.push(0);
        auth(c.open(channel, message, seq, s.key_version, &s.nonce, &longer), "one byte appended")?;
        for len in [0, NONCE_LEN - 1, NONCE_LEN + 1] {
            let nonce = vec![0u8; len];
            prop_assert!(matches!(
                c.open(channel, message, seq, s.key_version, &nonce, &s.ciphertext),
                Err(CryptoError::InvalidNonce(n)) if n == len
            ));
        }
        // And the untouched row still opens.
        prop_assert_eq!(open(&c, &r).expect("open"), text);
    }
}
