//! Blind-index tokens: the keyed form in which a message's words are stored.
//!
//! The search key of a channel is `HKDF-SHA256(master key of the version,
//! salt, info = ["courier/search/v1", channel id])` (the keyring's
//! derivation, with a purpose of its own: never a message key, and a new key
//! for every channel). A word's token is the first [`TOKEN_LEN`] bytes of
//! `HMAC-SHA256(search key, normalized word)`: equal words of one channel
//! under one key version give equal tokens, words of two channels never
//! compare.
//!
//! A message's tokens travel with its write as a [`SearchIndex`]: the channel
//! actor hands over the text ([`SearchIndex::pending`]), and the persistence
//! actor hashes a whole batch's texts on the blocking pool
//! ([`resolve_batch`]) before the store writes the tokens in the batch's
//! transaction.

use std::fmt;
use std::sync::Arc;

use courier_protocol::ChannelId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::tokens::words;
use crate::crypto::{CryptoError, Keyring, MessageCipher};
use crate::durable::store::WriteOp;

/// Bytes kept of each HMAC-SHA256 output.
pub const TOKEN_LEN: usize = 16;

/// HKDF purpose of search keys.
const SEARCH_PURPOSE: &[u8] = b"courier/search/v1";

/// One blind-index token.
pub type Token = [u8; TOKEN_LEN];

/// The tokens of one message, under one key version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchTokens {
    pub key_version: u32,
    /// Distinct, sorted.
    pub tokens: Vec<Token>,
}

/// The search key of one channel under one version, ready to key words.
pub struct ChannelSearchKey {
    mac: Hmac<Sha256>,
    version: u32,
}

impl ChannelSearchKey {
    /// Derives the key of `channel` under `version` of `keyring`.
    pub fn derive(
        keyring: &Keyring,
        version: u32,
        channel: ChannelId,
    ) -> Result<Self, CryptoError> {
        let master = keyring
            .key(version)
            .ok_or(CryptoError::UnknownKeyVersion(version))?;
        let mut key = Zeroizing::new([0u8; 32]);
        master.derive(
            SEARCH_PURPOSE,
            &[channel.as_uuid().as_bytes()],
            &mut key[..],
        )?;
        let mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key[..])
            .map_err(|_| CryptoError::KeyDerivation)?;
        Ok(ChannelSearchKey { mac, version })
    }

    /// The token of one normalized word.
    pub fn token(&self, word: &str) -> Token {
        let mut mac = self.mac.clone();
        mac.update(word.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&out[..TOKEN_LEN]);
        token
    }

    /// The tokens of every word of `text`, distinct and sorted.
    pub fn tokens_of(&self, text: &str) -> SearchTokens {
        let mut tokens: Vec<Token> = words(text).iter().map(|w| self.token(w)).collect();
        tokens.sort_unstable();
        tokens.dedup();
        SearchTokens {
            key_version: self.version,
            tokens,
        }
    }
}

/// Tokens of `text` in `channel` under the cipher's active version.
pub fn index_text(
    cipher: &MessageCipher,
    channel: ChannelId,
    text: &str,
) -> Result<SearchTokens, CryptoError> {
    let keyring = cipher.keyring();
    let key = ChannelSearchKey::derive(&keyring, cipher.active_version(), channel)?;
    Ok(key.tokens_of(text))
}

/// A text waiting to be indexed: held in memory only, wiped on drop.
pub struct PendingText {
    cipher: Arc<MessageCipher>,
    channel: ChannelId,
    text: Zeroizing<String>,
}

/// What a message write stores in the blind index.
#[derive(Clone, Default)]
pub enum SearchIndex {
    /// Nothing (rows read back, tombstones, writes that index nothing).
    #[default]
    None,
    /// Words not hashed yet; [`resolve_batch`] turns them into tokens.
    Pending(Arc<PendingText>),
    /// The tokens to store.
    Tokens(SearchTokens),
}

impl SearchIndex {
    /// The text of a message of `channel`, to be indexed under the active
    /// version when its batch commits.
    pub fn pending(cipher: Arc<MessageCipher>, channel: ChannelId, text: &str) -> Self {
        SearchIndex::Pending(Arc::new(PendingText {
            cipher,
            channel,
            text: Zeroizing::new(text.to_owned()),
        }))
    }

    /// Hashes a pending text (in place); others are left alone.
    pub fn resolve(&mut self) -> Result<(), CryptoError> {
        if let SearchIndex::Pending(p) = self {
            *self = SearchIndex::Tokens(index_text(&p.cipher, p.channel, &p.text)?);
        }
        Ok(())
    }
    /// The tokens to store: `None` when there is nothing to index. A text
    /// still pending is hashed here (a writer that skipped [`resolve_batch`]).
    pub fn tokens(&self) -> Result<Option<std::borrow::Cow<'_, SearchTokens>>, CryptoError> {
        match self {
            SearchIndex::None => Ok(None),
            SearchIndex::Tokens(t) => Ok(Some(std::borrow::Cow::Borrowed(t))),
            SearchIndex::Pending(p) => Ok(Some(std::borrow::Cow::Owned(index_text(
                &p.cipher, p.channel, &p.text,
            )?))),
        }
    }
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchIndex::None => f.write_str("None"),
            SearchIndex::Pending(_) => f.write_str("Pending(..)"),
            SearchIndex::Tokens(t) => write!(f, "Tokens(v{}, {})", t.key_version, t.tokens.len()),
        }
    }
}

impl PartialEq for SearchIndex {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SearchIndex::None, SearchIndex::None) => true,
            (SearchIndex::Pending(a), SearchIndex::Pending(b)) => Arc::ptr_eq(a, b),
            (SearchIndex::Tokens(a), SearchIndex::Tokens(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for SearchIndex {}

/// The index of a write, if it carries one.
fn index_of(op: &mut WriteOp) -> Option<&mut SearchIndex> {
    match op {
        WriteOp::InsertMessage(m) => Some(&mut m.search),
        WriteOp::EditMessage { search, .. } => Some(search),
        _ => None,
    }
}

/// Hashes every pending text of a batch on the blocking pool, so the HMACs
/// never run on a reactor thread; the batch itself stays where it is. A text
/// that cannot be hashed (its key version gone: a broken keyring) leaves the
/// write without tokens and is logged; the message itself still commits. If
/// the blocking task cannot run, the texts stay pending and the store hashes
/// them as it writes them ([`SearchIndex::tokens`]).
pub async fn resolve_batch(ops: &mut [WriteOp]) {
    let pending: Vec<(usize, Arc<PendingText>)> = ops
        .iter_mut()
        .enumerate()
        .filter_map(|(i, op)| match index_of(op)? {
            SearchIndex::Pending(p) => Some((i, Arc::clone(p))),
            _ => None,
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    let hashed = tokio::task::spawn_blocking(move || {
        pending
            .into_iter()
            .map(|(i, p)| (i, index_text(&p.cipher, p.channel, &p.text)))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(hashed) = hashed else {
        return;
    };
    for (i, tokens) in hashed {
        if let Some(index) = index_of(&mut ops[i]) {
            *index = match tokens {
                Ok(tokens) => SearchIndex::Tokens(tokens),
                Err(e) => {
                    tracing::error!(error = %e, "a message's search tokens could not be made");
                    SearchIndex::None
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    fn ring(versions: &[u32]) -> Keyring {
        Keyring::new(
            versions
                .iter()
                .map(|v| MasterKey::new(*v, [*v as u8; 32]).expect("key")),
        )
        .expect("ring")
    }

    #[test]
    fn tokens_differ_across_channels_and_versions_and_fold_case() {
        let keyring = ring(&[1, 2]);
        let (a, b) = (ChannelId::new(), ChannelId::new());
        let a1 = ChannelSearchKey::derive(&keyring, 1, a).expect("key");
        let a2 = ChannelSearchKey::derive(&keyring, 2, a).expect("key");
        let b1 = ChannelSearchKey::derive(&keyring, 1, b).expect("key");
        assert_ne!(a1.token("cafe"), b1.token("cafe"));
        assert_ne!(a1.token("cafe"), a2.token("cafe"));
        assert_eq!(a1.tokens_of("Café"), a1.tokens_of("CAFE cafe"));
        assert_eq!(a1.tokens_of("one two two").tokens.len(), 2);
        assert!(matches!(
            ChannelSearchKey::derive(&keyring, 9, a),
            Err(CryptoError::UnknownKeyVersion(9))
        ));
    }

    #[test]
    fn the_search_key_is_not_a_message_key() {
        let keyring = ring(&[1]);
        let channel = ChannelId::new();
        let master = keyring.key(1).expect("v1");
        let mut search = [0u8; 32];
        master
            .derive(SEARCH_PURPOSE, &[channel.as_uuid().as_bytes()], &mut search)
            .expect("derive");
        let mut message = [0u8; 32];
        master
            .derive(
                b"courier/message/v1",
                &[channel.as_uuid().as_bytes(), &0u64.to_be_bytes()],
                &mut message,
            )
            .expect("derive");
        assert_ne!(search, message);
    }

    #[tokio::test]
    async fn a_batch_is_resolved_off_the_reactor() {
        let cipher = Arc::new(MessageCipher::new(ring(&[1])));
        let channel = ChannelId::new();
        let mut index = SearchIndex::pending(cipher.clone(), channel, "Hello world");
        let expected = index_text(&cipher, channel, "hello WORLD").expect("tokens");
        assert_eq!(
            index.tokens().expect("tokens").expect("some").into_owned(),
            expected
        );
        let mut ops = [WriteOp::EditMessage {
            id: courier_protocol::MessageId::new(),
            ciphertext: Vec::new(),
            nonce: Vec::new(),
            key_version: 1,
            edited_at: 0,
            search: index.clone(),
        }];
        resolve_batch(&mut ops).await;
        let WriteOp::EditMessage { search, .. } = &ops[0] else {
            unreachable!()
        };
        assert_eq!(*search, SearchIndex::Tokens(expected.clone()));
        index.resolve().expect("resolve");
        assert_eq!(index, SearchIndex::Tokens(expected));
        assert!(!format!("{index:?}").contains("Hello"));
    }
}
