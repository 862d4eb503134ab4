//! [`SearchStore`] on PostgreSQL, and the index writes of its batches.
//! Ids are UUIDs, tokens `bytea`; lists travel as arrays.

use async_trait::async_trait;
use courier_protocol::MessageId;
use sqlx::PgConnection;

use super::super::search::{matching, newest_first, SearchQuery, SearchStore, DROP_UNLESS_HELD};
use super::super::sql::SqlRow;
use super::super::{MessageRow, StoreError};
use super::{files, PgStore};
use crate::search::SearchTokens;

#[async_trait]
impl SearchStore for PgStore {
    async fn search_messages(
        &self,
        q: &SearchQuery,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        if q.channels.is_empty() || q.tokens.is_empty() {
            return Ok((Vec::new(), false));
        }
        let statement = format!(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.id IN ({matching})
               AND m.deleted_at IS NULL AND (m.expires_at IS NULL OR m.expires_at > $1)
               AND ($2::int8 IS NULL OR m.created_at < $2
                    OR (m.created_at = $2 AND m.id < $3::uuid))
             ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
            matching = matching(
                "SELECT unnest($5::uuid[])",
                "SELECT unnest($6::bytea[])",
                "$7"
            ),
        );
        let rows = sqlx::query(&statement)
            .bind(q.now)
            .bind(q.before.map(|(at, _)| at))
            .bind(q.before.map(|(_, m)| m.0))
            .bind(i64::from(q.limit) + 1)
            .bind(q.channels.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(q.tokens.iter().map(|t| t.to_vec()).collect::<Vec<_>>())
            .bind(q.words as i64)
            .fetch_all(&self.pool)
            .await?;
        let (mut page, more) = newest_first(&rows, q.limit)?;
        files::load_attachments(&self.pool, &mut page).await?;
        Ok((page, more))
    }

    async fn count_search_tokens_on_key(&self, version: u32) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT count(*) AS n FROM message_search_tokens WHERE key_version = $1")
                .bind(i64::from(version))
                .fetch_one(&self.pool)
                .await?;
        row.uint("n")
    }
}

/// Replaces the index rows of a message with `tokens`.
pub(super) async fn replace_tokens(
    conn: &mut PgConnection,
    message: MessageId,
    tokens: &SearchTokens,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM message_search_tokens WHERE message_id = $1")
        .bind(message.0)
        .execute(&mut *conn)
        .await?;
    insert_tokens(conn, &[(message, tokens)]).await
}

/// Adds index rows to messages (their channels read from their rows), in
/// one statement.
pub(super) async fn insert_tokens(
    conn: &mut PgConnection,
    messages: &[(MessageId, &SearchTokens)],
) -> Result<(), StoreError> {
    let (mut ids, mut tokens, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    for (message, index) in messages {
        for token in &index.tokens {
            ids.push(message.0);
            tokens.push(token.to_vec());
            versions.push(i64::from(index.key_version));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO message_search_tokens (message_id, channel_id, token, key_version)
         SELECT m.id, m.channel_id, r.token, r.key_version
         FROM UNNEST($1::uuid[], $2::bytea[], $3::int8[]) AS r(message_id, token, key_version)
         JOIN messages m ON m.id = r.message_id
         ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(tokens)
    .bind(versions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops a deleted or expired message's rows unless it is held.
pub(super) async fn drop_tokens(
    conn: &mut PgConnection,
    message: MessageId,
) -> Result<(), StoreError> {
    sqlx::query(DROP_UNLESS_HELD)
        .bind(message.0)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
