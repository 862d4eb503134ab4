//! # Search over encrypted messages (issue 38, `docs/search.md`)
//!
//! **Owns** the blind index: how a message's text becomes keyed tokens and
//! how a query finds them, without a plaintext word ever reaching the store.
//! - [`tokens`]: the normalizer (NFKD with combining marks dropped, Unicode
//!   lowercase, a one-rule plural stemmer) and the word splitter. Pure.
//! - [`index`]: per-channel search keys (HKDF from the master keyring, their
//!   own purpose), tokens (HMAC-SHA256 truncated to 16 bytes), and the
//!   [`SearchIndex`] a message write carries: the channel actor hands over
//!   the text, the persistence actor hashes a batch's texts on the blocking
//!   pool ([`resolve_batch`]), the store writes the tokens in the batch's
//!   transaction (`durable/store/search.rs`).
//! - [`query`]: `Realtime::search`, what `GET /api/messages/search` and the
//!   WebSocket `search` request call: checks the query, tokenizes it under
//!   each searched channel's keys, matches, decrypts the page.
//!
//! **Takes** texts at send and edit, plaintexts at re-encryption (`keys
//! rotate` re-indexes with the new version), queries from the edges.
//!
//! **Failure**: no actor lives here. A text whose tokens cannot be made (a
//! key version missing from the keyring) commits without tokens and is
//! logged (the message is still delivered, it is just not found); a search
//! that fails answers its caller alone (`unavailable`/`internal`).

pub mod index;
pub mod query;
pub mod tokens;

pub use index::{
    index_text, resolve_batch, ChannelSearchKey, SearchIndex, SearchTokens, Token, TOKEN_LEN,
};
pub use query::{SearchError, SearchPage, SearchRequest};
