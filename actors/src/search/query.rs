//! Answering a search: the query checked, tokenized under each searched
//! channel's keys, matched in the store, and the page decrypted for the
//! caller with the history read path's decryption.

use courier_protocol::frames::MessageView;
use courier_protocol::{ChannelId, MessageId};
use serde_json::{json, Value};

use super::index::{ChannelSearchKey, Token};
use super::tokens::words;
use crate::audit::reads;
use crate::durable::history;
use crate::durable::store::SearchQuery;
use crate::policy::authz::{Action, Principal};
use crate::realtime::{AccessError, Realtime};

/// The longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// The most distinct words a query may have.
pub const MAX_QUERY_WORDS: usize = 16;
/// Page size when none is asked for, and the most.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// What the caller asked.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    pub q: String,
    /// One channel, or every channel the caller may read.
    pub channel: Option<ChannelId>,
    pub limit: Option<u32>,
    /// The `nextBefore` of the previous page.
    pub before: Option<MessageId>,
}

/// One page of results.
#[derive(Debug)]
pub struct SearchPage {
    /// Newest first.
    pub messages: Vec<MessageView>,
    pub has_more: bool,
    /// The id to pass as `before` for the next page (when `has_more`).
    pub next_before: Option<MessageId>,
    /// What the audit entry (`message.search`) records: the query only as
    /// its tokens (hex) per channel searched, and the messages disclosed.
    pub audit: Value,
}

/// Why a search was refused; mapped to codes at each edge.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A parameter is wrong: `field` names it (`invalid_frame`).
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// The named channel is missing or not readable, or the store failed.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// The query's distinct normalized words, checked.
pub fn query_words(q: &str) -> Result<Vec<String>, SearchError> {
    let invalid = |reason| SearchError::Invalid { field: "q", reason };
    if q.len() > MAX_QUERY_BYTES {
        return Err(invalid("must be at most 256 bytes"));
    }
    let words: Vec<String> = words(q).into_iter().collect();
    if words.is_empty() {
        return Err(invalid("must hold at least one word"));
    }
    if words.len() > MAX_QUERY_WORDS {
        return Err(invalid("must hold at most 16 distinct words"));
    }
    Ok(words)
}

impl Realtime {
    /// Finds the live messages holding every word of `req.q` in the named
    /// channel (refused unless the caller may read it) or in every channel
    /// the caller may read, newest first, decrypted. `via` names the edge
    /// in the audit details (`rest`, `ws`).
    pub async fn search(
        &self,
        who: Principal<'_>,
        req: &SearchRequest,
        via: &str,
    ) -> Result<SearchPage, SearchError> {
        let words = query_words(&req.q)?;
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(SearchError::Invalid {
                field: "limit",
                reason: "must be 1 to 100",
            });
        }
        let channels: Vec<ChannelId> = match req.channel {
            Some(id) => {
                self.channel_access(who, id, |c, m| Action::ReadChannel {
                    channel: c,
                    member: m,
                })
                .await?;
                vec![id]
            }
            // The channels a user can see are the ones they may read.
            None => self
                .store
                .list_channels_for(who.user_id)
                .await
                .map_err(AccessError::from)?
                .into_iter()
                .map(|c| c.id)
                .collect(),
        };
        let before = match req.before {
            None => None,
            Some(id) => {
                let row = self
                    .store
                    .get_message(id)
                    .await
                    .map_err(AccessError::from)?
                    .filter(|r| channels.contains(&r.message.channel_id))
                    .ok_or(SearchError::Invalid {
                        field: "before",
                        reason: "must be a message id of a previous page",
                    })?;
                Some((row.message.created_at, id))
            }
        };
        let (tokens, searched) = self.query_tokens(&channels, &words).await?;
        let query = SearchQuery {
            channels,
            tokens,
            words: words.len(),
            now: crate::now_ms(),
            before,
            limit,
        };
        let (rows, has_more) = self
            .store
            .search_messages(&query)
            .await
            .map_err(AccessError::from)?;
        let next_before = if has_more {
            rows.last().map(|r| r.message.id)
        } else {
            None
        };
        // Newest first, as the store gave them (`open_rows` keeps the order).
        let messages = history::open_rows(self.cipher.clone(), rows)
            .await
            .map_err(AccessError::from)?;
        let mut audit = reads::details_multi(messages.iter().map(|m| (m.channel_id, m.seq)), via);
        audit["searched"] = Value::Array(searched);
        audit["count"] = messages.len().into();
        Ok(SearchPage {
            messages,
            has_more,
            next_before,
            audit,
        })
    }

    /// The tokens of `words` in each channel under every key version of
    /// the keyring (rows not yet re-indexed after a rotation keep older
    /// ones), hashed on the blocking pool; and, per channel, the active
    /// version's tokens in hex for the audit entry.
    async fn query_tokens(
        &self,
        channels: &[ChannelId],
        words: &[String],
    ) -> Result<(Vec<Token>, Vec<Value>), AccessError> {
        let cipher = self.cipher.clone();
        let (channels, words) = (channels.to_vec(), words.to_vec());
        tokio::task::spawn_blocking(move || {
            let keyring = cipher.keyring();
            let active = cipher.active_version();
            let mut all = Vec::with_capacity(channels.len() * words.len());
            let mut searched = Vec::with_capacity(channels.len());
            for channel in channels {
                for version in keyring.versions() {
                    let key = ChannelSearchKey::derive(&keyring, version, channel)
                        .map_err(|_| AccessError::Internal)?;
                    let tokens: Vec<Token> = words.iter().map(|w| key.token(w)).collect();
                    if version == active {
                        searched.push(json!({
                            "channelId": channel,
                            "keyVersion": version,
                            "tokens": tokens.iter().map(hex::encode).collect::<Vec<_>>(),
                        }));
                    }
                    all.extend(tokens);
                }
            }
            Ok((all, searched))
        })
        .await
        .map_err(|_| AccessError::Internal)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        assert!(matches!(
            query_words("  !! "),
            Err(SearchError::Invalid { field: "q", .. })
        ));
        assert!(matches!(
            query_words(&"a".repeat(MAX_QUERY_BYTES + 1)),
            Err(SearchError::Invalid { field: "q", .. })
        ));
        let many: Vec<String> = (0..17).map(|i| format!("w{i}")).collect();
        assert!(query_words(&many.join(" ")).is_err());
        assert_eq!(query_words("Café CAFE cafe").expect("ok"), vec!["cafe"]);
    }
}
