//! The blind index of messages (issue 38, `crate::search`): its table
//! `message_search_tokens`, written beside the messages in the batch's
//! transaction (inserts, edits, deletes: `apply_batch`) and by the
//! re-encryption of `keys rotate` (`store_reencrypted`), and read by
//! [`SearchStore::search_messages`]. Only keyed tokens are stored, never a
//! word.

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId};

use super::sql::{self, SqlRow};
use super::{MessageRow, StoreError};
use crate::search::{SearchIndex, SearchTokens, Token};

/// One search: messages of `channels` whose index holds a token of every
/// query word.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    /// The channels searched (the caller may read each).
    pub channels: Vec<ChannelId>,
    /// The query words' tokens, in every searched channel under every key
    /// version: a message matches when `words` distinct ones of them are in
    /// its index (its tokens are all under one version).
    pub tokens: Vec<Token>,
    /// How many distinct words the query has.
    pub words: usize,
    /// Messages whose `expires_at` is at or before this are not found.
    pub now: i64,
    /// Only messages older than this one, `(created_at, id)`: the next page.
    pub before: Option<(i64, MessageId)>,
    pub limit: u32,
}

/// Reads of the blind index.
#[async_trait]
pub trait SearchStore {
    /// The live (not deleted, not expired) messages matching `query`,
    /// newest first (`created_at`, then id, descending), at most `limit`,
    /// and whether more exist.
    async fn search_messages(
        &self,
        query: &SearchQuery,
    ) -> Result<(Vec<MessageRow>, bool), StoreError>;

    /// How many index rows are under a key version (`keys retire`).
    async fn count_search_tokens_on_key(&self, version: u32) -> Result<u64, StoreError>;
}

/// The matching ids (a subquery over `t`, the token table): every token
/// placeholder list and channel list is the backend's.
pub(super) fn matching(channels: &str, tokens: &str, words: &str) -> String {
    format!(
        "SELECT t.message_id FROM message_search_tokens t
         WHERE t.channel_id IN ({channels}) AND t.token IN ({tokens})
         GROUP BY t.message_id, t.key_version HAVING COUNT(DISTINCT t.token) = {words}"
    )
}

/// Deletes a deleted or expired message's rows, unless a legal hold keeps
/// the message (then they stay until it is purged, which cascades).
pub(super) const DROP_UNLESS_HELD: &str = concat!(
    "DELETE FROM message_search_tokens WHERE message_id = $1
     AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = $1 AND ",
    super::holds::held!(),
    ")"
);

/// A page in the order read (newest first), and whether more exist.
pub(super) fn newest_first<R: SqlRow>(
    rows: &[R],
    limit: u32,
) -> Result<(Vec<MessageRow>, bool), StoreError> {
    let (mut page, more) = sql::page_before(rows, limit)?;
    page.reverse();
    Ok((page, more))
}

/// The tokens a write stores (a text still pending is hashed here).
pub(super) fn tokens(
    index: &SearchIndex,
) -> Result<Option<std::borrow::Cow<'_, SearchTokens>>, StoreError> {
    index
        .tokens()
        .map_err(|e| StoreError::Database(format!("search tokens: {e}")))
}

/// Of the messages just re-encrypted (`$1`, a list), those whose tokens are
/// made again: live ones, and deleted ones that kept theirs (a legal hold).
/// A deleted message whose tokens went stays without.
pub(super) fn reindexed(ids: &str) -> String {
    format!(
        "SELECT m.id FROM messages m WHERE m.id IN ({ids})
         AND (m.deleted_at IS NULL
              OR EXISTS (SELECT 1 FROM message_search_tokens t WHERE t.message_id = m.id))"
    )
}
