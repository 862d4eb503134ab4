//! [`ExportStore`] on SQLite.

use async_trait::async_trait;
use courier_protocol::ChannelId;

use super::super::sql::{self, bound};
use super::super::{AuditRecord, ExportStore, MessageRow, StoreError};
use super::{files, id, SqliteStore};

#[async_trait]
impl ExportStore for SqliteStore {
    async fn export_messages(
        &self,
        channel: ChannelId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.channel_id = $1 AND m.seq > $2
             ORDER BY m.seq LIMIT $3",
        )
        .bind(id(channel.0))
        .bind(bound(after))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&mut conn, &mut rows).await?;
        Ok(rows)
    }

    async fn channel_audit(
        &self,
        channel: ChannelId,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_logs
             WHERE seq > $1 AND seq <= $2 AND json_extract(details, '$.channelId') = $3
             ORDER BY seq LIMIT $4",
        )
        .bind(bound(after))
        .bind(bound(through))
        .bind(channel.to_string())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::audit)
    }
}
