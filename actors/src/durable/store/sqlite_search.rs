//! [`SearchStore`] on SQLite, and the index writes of its batches. Ids are
//! hyphenated TEXT, tokens BLOBs.

use async_trait::async_trait;
use courier_protocol::MessageId;
use sqlx::SqliteConnection;

use super::super::search::{matching, newest_first, SearchQuery, SearchStore, DROP_UNLESS_HELD};
use super::super::sql::SqlRow;
use super::super::{MessageRow, StoreError};
use super::{files, id, SqliteStore};
use crate::search::SearchTokens;

#[async_trait]
impl SearchStore for SqliteStore {
    async fn search_messages(
        &self,
        q: &SearchQuery,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        if q.channels.is_empty() || q.tokens.is_empty() {
            return Ok((Vec::new(), false));
        }
        // $1 now, $2/$3 the cursor, $4 the limit, then channels, then tokens.
        let list = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let channels = list(5, q.channels.len());
        let tokens = list(5 + q.channels.len(), q.tokens.len());
        let statement = format!(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.id IN ({matching})
               AND m.deleted_at IS NULL AND (m.expires_at IS NULL OR m.expires_at > $1)
               AND ($2 IS NULL OR m.created_at < $2 OR (m.created_at = $2 AND m.id < $3))
             ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
            matching = matching(&channels, &tokens, &q.words.to_string()),
        );
        let mut query = sqlx::query(&statement)
            .bind(q.now)
            .bind(q.before.map(|(at, _)| at))
            .bind(q.before.map(|(_, m)| id(m.0)))
            .bind(i64::from(q.limit) + 1);
        for c in &q.channels {
            query = query.bind(id(c.0));
        }
        for t in &q.tokens {
            query = query.bind(&t[..]);
        }
        let mut conn = self.read().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        let (mut page, more) = newest_first(&rows, q.limit)?;
        files::load_attachments(&mut conn, &mut page).await?;
        Ok((page, more))
    }

    async fn count_search_tokens_on_key(&self, version: u32) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT count(*) AS n FROM message_search_tokens WHERE key_version = $1")
                .bind(i64::from(version))
                .fetch_one(&mut *self.read().await?)
                .await?;
        row.uint("n")
    }
}

/// Replaces the index rows of a message with `tokens`.
pub(super) async fn replace_tokens(
    conn: &mut SqliteConnection,
    message: MessageId,
    tokens: &SearchTokens,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM message_search_tokens WHERE message_id = $1")
        .bind(id(message.0))
        .execute(&mut *conn)
        .await?;
    insert_tokens(conn, message, tokens).await
}

/// Index rows written per statement (each is a round trip to sqlx's
/// SQLite thread; SQLite takes at most 32,766 parameters).
const TOKENS_PER_STATEMENT: usize = 500;

/// Adds index rows to a message (its channel read from its row), a few
/// hundred per statement.
pub(super) async fn insert_tokens(
    conn: &mut SqliteConnection,
    message: MessageId,
    tokens: &SearchTokens,
) -> Result<(), StoreError> {
    for chunk in tokens.tokens.chunks(TOKENS_PER_STATEMENT) {
        let values = (3..3 + chunk.len())
            .map(|i| format!("(${i})"))
            .collect::<Vec<_>>()
            .join(", ");
        let statement = format!(
            "INSERT INTO message_search_tokens (message_id, channel_id, token, key_version)
             SELECT m.id, m.channel_id, v.column1, $2
             FROM messages m, (VALUES {values}) AS v
             WHERE m.id = $1
             ON CONFLICT DO NOTHING"
        );
        let mut query = sqlx::query(&statement)
            .bind(id(message.0))
            .bind(i64::from(tokens.key_version));
        for token in chunk {
            query = query.bind(&token[..]);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Drops a deleted or expired message's rows unless it is held.
pub(super) async fn drop_tokens(
    conn: &mut SqliteConnection,
    message: MessageId,
) -> Result<(), StoreError> {
    sqlx::query(DROP_UNLESS_HELD)
        .bind(id(message.0))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
