//! [`NotifyStore`] on SQLite, and the two pieces of the message path that
//! touch mentions: replacing a message's mentions (in its batch's
//! transaction) and reading them back with the messages. Ids are
//! hyphenated TEXT; id and name lists are bound as one JSON array.

use async_trait::async_trait;
use courier_protocol::frames::Mention;
use courier_protocol::{ChannelId, MessageId, UserId};
use sqlx::sqlite::SqliteConnection;

use super::super::notify::{announcement, attach_mentions, prefs, Announcement, NotifyStore};
use super::super::sql::{self, SqlRow};
use super::super::{MessageRow, Role, StoreError};
use super::files::id_list;
use super::{id, SqliteStore};
use crate::notify::prefs::NotificationPrefs;

/// Replaces the mentions of `message` (inside the batch's transaction);
/// the rows it touched.
pub(super) async fn set_mentions(
    conn: &mut SqliteConnection,
    message: MessageId,
    users: &[UserId],
) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM message_mentions WHERE message_id = $1")
        .bind(id(message.0))
        .execute(&mut *conn)
        .await?;
    for (position, user) in users.iter().enumerate() {
        sqlx::query(
            "INSERT INTO message_mentions (message_id, user_id, position) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(id(message.0))
        .bind(id(user.0))
        .bind(position as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(1)
}

/// Fills the mentions of the rows (one query for all).
pub(super) async fn load_mentions(
    conn: &mut SqliteConnection,
    rows: &mut [MessageRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let found = sqlx::query(
        "SELECT mm.message_id, mm.user_id, u.username FROM message_mentions mm
         JOIN users u ON u.id = mm.user_id
         WHERE mm.message_id IN (SELECT value FROM json_each($1))
         ORDER BY mm.message_id, mm.position",
    )
    .bind(id_list(rows.iter().map(|r| &r.message.id.0)))
    .fetch_all(&mut *conn)
    .await?;
    attach_mentions(rows, &found)
}

#[async_trait]
impl NotifyStore for SqliteStore {
    async fn members_named(
        &self,
        channel: ChannelId,
        usernames: &[String],
    ) -> Result<Vec<Mention>, StoreError> {
        if usernames.is_empty() {
            return Ok(Vec::new());
        }
        let names =
            serde_json::to_string(usernames).map_err(|e| StoreError::Database(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT u.id, u.username FROM users u
             JOIN channel_members cm ON cm.user_id = u.id AND cm.channel_id = $1
             WHERE u.username IN (SELECT value FROM json_each($2))",
        )
        .bind(id(channel.0))
        .bind(names)
        .fetch_all(&mut *self.read().await?)
        .await?;
        let found: Vec<Mention> = sql::all(&rows, |r| {
            Ok(Mention {
                user_id: UserId(r.uuid("id")?),
                username: r.text("username")?,
            })
        })?;
        Ok(usernames
            .iter()
            .filter_map(|n| found.iter().find(|m| &m.username == n).cloned())
            .collect())
    }

    async fn notification_prefs(
        &self,
        user: UserId,
    ) -> Result<Option<NotificationPrefs>, StoreError> {
        let row = sqlx::query("SELECT prefs FROM notification_prefs WHERE user_id = $1")
            .bind(id(user.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.map(|r| prefs(&r.text("prefs")?)).transpose()
    }

    async fn put_notification_prefs(
        &self,
        user: UserId,
        p: &NotificationPrefs,
        at: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(p).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(
            "INSERT INTO notification_prefs (user_id, prefs, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET prefs = excluded.prefs,
                                                 updated_at = excluded.updated_at",
        )
        .bind(id(user.0))
        .bind(json)
        .bind(at)
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn insert_announcement(&self, a: &Announcement) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO announcements (id, title, body, roles, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id(a.id))
        .bind(&a.title)
        .bind(&a.body)
        .bind(a.roles_text())
        .bind(id(a.created_by.0))
        .bind(a.created_at)
        .bind(a.expires_at)
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn current_announcements(&self, now: i64) -> Result<Vec<Announcement>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM announcements WHERE expires_at IS NULL OR expires_at > $1
             ORDER BY created_at DESC, id DESC",
        )
        .bind(now)
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, announcement)
    }

    async fn mark_announcements_seen(
        &self,
        user: UserId,
        at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = super::begin_write(&mut conn).await?;
        let before = sqlx::query("SELECT seen_at FROM announcement_reads WHERE user_id = $1")
            .bind(id(user.0))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.int("seen_at"))
            .transpose()?;
        sqlx::query(
            "INSERT INTO announcement_reads (user_id, seen_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET seen_at = MAX(seen_at, excluded.seen_at)",
        )
        .bind(id(user.0))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before)
    }

    async fn users_of_roles(&self, roles: &[Role]) -> Result<Vec<UserId>, StoreError> {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let names =
            serde_json::to_string(&names).map_err(|e| StoreError::Database(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT id FROM users
             WHERE $1 = '[]' OR role IN (SELECT value FROM json_each($1))",
        )
        .bind(names)
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, |r| Ok(UserId(r.uuid("id")?)))
    }
}
