//! [`FileStore`] on SQLite, and the two pieces of the message path that
//! touch files: linking a new message's files, and reading them back with
//! the messages. Ids are hyphenated TEXT; id lists are bound as one JSON
//! array (`json_each`), so a statement's text never depends on their number.

use async_trait::async_trait;
use courier_protocol::{ChannelId, FileId, ShareId, UserId};
use sqlx::sqlite::SqliteConnection;

use super::super::files::{purge_reason, FILES_TO_PURGE};
use super::super::sql::{self, SqlRow};
use super::super::{
    FilePurge, FileRecord, FileShare, FileState, FileStore, Grantee, MessageRow, StoreError,
    StoredMessage, WrappedKey,
};
use super::{begin_write, id, SqliteStore};

/// A JSON array of hyphenated ids, for `json_each`.
pub(super) fn id_list<'a>(ids: impl Iterator<Item = &'a uuid::Uuid>) -> String {
    let mut out = String::from("[");
    for (i, uuid) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(
            uuid.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        out.push('"');
    }
    out.push(']');
    out
}

/// Links a just-inserted message to its files and sets its kind (in the
/// insert's transaction; only for messages with attachments).
pub(super) async fn link_files(
    conn: &mut SqliteConnection,
    m: &StoredMessage,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE messages SET kind = $2 WHERE id = $1")
        .bind(id(m.id.0))
        .bind(m.kind.as_str())
        .execute(&mut *conn)
        .await?;
    for (position, file) in m.attachments.iter().enumerate() {
        sqlx::query(
            "INSERT INTO message_files (message_id, file_id, position) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(id(m.id.0))
        .bind(id(file.0))
        .bind(position as i64)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE files SET attached_at = $2 WHERE id = $1 AND attached_at IS NULL")
            .bind(id(file.0))
            .bind(m.created_at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Fills the attachments of the rows that have any (one query for all).
pub(super) async fn load_attachments(
    conn: &mut SqliteConnection,
    rows: &mut [MessageRow],
) -> Result<(), StoreError> {
    let with_files: Vec<_> = rows
        .iter()
        .filter(|r| !r.message.kind.is_text())
        .map(|r| &r.message.id.0)
        .collect();
    if with_files.is_empty() {
        return Ok(());
    }
    let files = sqlx::query(
        "SELECT mf.message_id, f.* FROM message_files mf JOIN files f ON f.id = mf.file_id
         WHERE mf.message_id IN (SELECT value FROM json_each($1))
         ORDER BY mf.message_id, mf.position",
    )
    .bind(id_list(with_files.into_iter()))
    .fetch_all(&mut *conn)
    .await?;
    sql::attach_rows(rows, &files)
}

#[async_trait]
impl FileStore for SqliteStore {
    async fn insert_file(&self, f: FileRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO files (id, owner_id, channel_id, name_ciphertext, name_nonce, mime, size,
                                object_key, chunk_len, wrapped_key, key_nonce, key_version,
                                state, created_at, attached_at, deleted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(id(f.id.0))
        .bind(id(f.owner_id.0))
        .bind(f.channel_id.map(|c| id(c.0)))
        .bind(&f.name_ciphertext[..])
        .bind(&f.name_nonce[..])
        .bind(&f.mime)
        .bind(sql::to_db(f.size, "size")?)
        .bind(&f.object_key)
        .bind(i64::from(f.chunk_len))
        .bind(&f.key.ciphertext[..])
        .bind(&f.key.nonce[..])
        .bind(i64::from(f.key.key_version))
        .bind(f.state.as_str())
        .bind(f.created_at)
        .bind(f.attached_at)
        .bind(f.deleted_at)
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn get_file(&self, file: FileId) -> Result<Option<FileRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM files WHERE id = $1")
            .bind(id(file.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::file_record).transpose()
    }

    async fn get_files(&self, ids: &[FileId]) -> Result<Vec<FileRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT * FROM files WHERE id IN (SELECT value FROM json_each($1))")
            .bind(id_list(ids.iter().map(|f| &f.0)))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::file_record)
    }

    async fn file_in_live_message(&self, file: FileId, now: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM message_files mf JOIN messages m ON m.id = mf.message_id
                            WHERE mf.file_id = $1 AND m.deleted_at IS NULL
                              AND (m.expires_at IS NULL OR m.expires_at > $2)) AS live",
        )
        .bind(id(file.0))
        .bind(now)
        .fetch_one(&mut *self.read().await?)
        .await?;
        row.flag("live")
    }

    async fn list_vault(&self, owner: UserId) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM files WHERE owner_id = $1 AND channel_id IS NULL AND deleted_at IS NULL
             ORDER BY created_at DESC",
        )
        .bind(id(owner.0))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::file_record)
    }

    async fn list_shared_with(
        &self,
        user: UserId,
        channels: &[ChannelId],
    ) -> Result<Vec<(FileRecord, FileShare)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT f.*, {} FROM file_shares s JOIN files f ON f.id = s.file_id
             WHERE s.revoked_at IS NULL AND f.deleted_at IS NULL
               AND (s.user_id = $1 OR s.channel_id IN (SELECT value FROM json_each($2)))
             ORDER BY s.created_at DESC",
            sql::SHARE_COLUMNS_PREFIXED
        ))
        .bind(id(user.0))
        .bind(id_list(channels.iter().map(|c| &c.0)))
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter()
            .map(|r| Ok((sql::file_record(r)?, sql::prefixed_share(r)?)))
            .collect()
    }

    async fn insert_share(&self, s: FileShare) -> Result<(), StoreError> {
        let (user, channel) = match s.grantee {
            Grantee::User(u) => (Some(id(u.0)), None),
            Grantee::Channel(c) => (None, Some(id(c.0))),
        };
        sqlx::query(
            "INSERT INTO file_shares (id, file_id, user_id, channel_id, rights, granted_by,
                                      created_at, revoked_at, revoked_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id(s.id.0))
        .bind(id(s.file_id.0))
        .bind(user)
        .bind(channel)
        .bind(s.rights.as_str())
        .bind(id(s.granted_by.0))
        .bind(s.created_at)
        .bind(s.revoked_at)
        .bind(s.revoked_by.map(|u| id(u.0)))
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn list_shares(&self, file: FileId) -> Result<Vec<FileShare>, StoreError> {
        let rows = sqlx::query("SELECT * FROM file_shares WHERE file_id = $1 ORDER BY created_at")
            .bind(id(file.0))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::file_share)
    }

    async fn revoke_share(
        &self,
        share: ShareId,
        by: UserId,
        at: i64,
    ) -> Result<Option<FileShare>, StoreError> {
        let row = sqlx::query(
            "UPDATE file_shares SET revoked_at = $2, revoked_by = $3
             WHERE id = $1 AND revoked_at IS NULL RETURNING *",
        )
        .bind(id(share.0))
        .bind(at)
        .bind(id(by.0))
        .fetch_optional(&mut *self.write.lock().await?)
        .await?;
        row.as_ref().map(sql::file_share).transpose()
    }

    async fn delete_file(&self, file: FileId, at: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE files SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id(file.0))
                .bind(at)
                .execute(&mut *self.write.lock().await?)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_file_state(&self, file: FileId, state: FileState) -> Result<(), StoreError> {
        sqlx::query("UPDATE files SET state = $2 WHERE id = $1")
            .bind(id(file.0))
            .bind(state.as_str())
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(())
    }

    async fn files_pending_scan(&self, limit: u32) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM files WHERE state = 'pending_scan' AND deleted_at IS NULL
             ORDER BY created_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::file_record)
    }

    async fn files_to_purge(
        &self,
        unsent_before: i64,
        limit: u32,
    ) -> Result<Vec<(FileRecord, FilePurge)>, StoreError> {
        let rows = sqlx::query(FILES_TO_PURGE)
            .bind(unsent_before)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.read().await?)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    sql::file_record(r)?,
                    purge_reason(&r.text("purge_reason")?)?,
                ))
            })
            .collect()
    }

    async fn remove_files(&self, ids: &[FileId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let list = id_list(ids.iter().map(|f| &f.0));
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        for table in ["message_files", "file_shares"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE file_id IN (SELECT value FROM json_each($1))"
            ))
            .bind(&list)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM files WHERE id IN (SELECT value FROM json_each($1))")
            .bind(&list)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn files_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM files WHERE key_version <> $1 ORDER BY id LIMIT $2")
            .bind(i64::from(active))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::file_record)
    }

    async fn store_rewrapped(&self, rows: &[(FileId, WrappedKey)]) -> Result<(), StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        for (file, key) in rows {
            sqlx::query(
                "UPDATE files SET wrapped_key = $2, key_nonce = $3, key_version = $4 WHERE id = $1",
            )
            .bind(id(file.0))
            .bind(&key.ciphertext[..])
            .bind(&key.nonce[..])
            .bind(i64::from(key.key_version))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count_file_key_version(&self, version: u32) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM files WHERE key_version = $1")
            .bind(i64::from(version))
            .fetch_one(&mut *self.read().await?)
            .await?;
        row.uint("n")
    }
}
