//! [`NotifyStore`] on PostgreSQL, and the two pieces of the message path
//! that touch mentions: replacing a message's mentions (in its batch's
//! transaction) and reading them back with the messages. Ids are `uuid`.

use async_trait::async_trait;
use courier_protocol::frames::Mention;
use courier_protocol::{ChannelId, MessageId, UserId};
use sqlx::PgConnection;

use super::super::notify::{announcement, attach_mentions, prefs, Announcement, NotifyStore};
use super::super::sql::{self, SqlRow};
use super::super::{MessageRow, Role, StoreError};
use super::PgStore;
use crate::notify::prefs::NotificationPrefs;

/// Replaces the mentions of `message` (inside the batch's transaction);
/// the rows it touched.
pub(super) async fn set_mentions(
    conn: &mut PgConnection,
    message: MessageId,
    users: &[UserId],
) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM message_mentions WHERE message_id = $1")
        .bind(message.0)
        .execute(&mut *conn)
        .await?;
    let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.0).collect();
    sqlx::query(
        "INSERT INTO message_mentions (message_id, user_id, position)
         SELECT $1, u, p - 1 FROM UNNEST($2::uuid[]) WITH ORDINALITY AS t(u, p)
         ON CONFLICT DO NOTHING",
    )
    .bind(message.0)
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(1)
}

/// Fills the mentions of the rows (one query for all).
pub(super) async fn load_mentions(
    pool: &sqlx::PgPool,
    rows: &mut [MessageRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.message.id.0).collect();
    let found = sqlx::query(
        "SELECT mm.message_id, mm.user_id, u.username FROM message_mentions mm
         JOIN users u ON u.id = mm.user_id
         WHERE mm.message_id = ANY($1)
         ORDER BY mm.message_id, mm.position",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    attach_mentions(rows, &found)
}

#[async_trait]
impl NotifyStore for PgStore {
    async fn members_named(
        &self,
        channel: ChannelId,
        usernames: &[String],
    ) -> Result<Vec<Mention>, StoreError> {
        if usernames.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT u.id, u.username FROM users u
             JOIN channel_members cm ON cm.user_id = u.id AND cm.channel_id = $1
             WHERE u.username = ANY($2)",
        )
        .bind(channel.0)
        .bind(usernames)
        .fetch_all(&self.pool)
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
            .bind(user.0)
            .fetch_optional(&self.pool)
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
        .bind(user.0)
        .bind(json)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_announcement(&self, a: &Announcement) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO announcements (id, title, body, roles, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(a.id)
        .bind(&a.title)
        .bind(&a.body)
        .bind(a.roles_text())
        .bind(a.created_by.0)
        .bind(a.created_at)
        .bind(a.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn current_announcements(&self, now: i64) -> Result<Vec<Announcement>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM announcements WHERE expires_at IS NULL OR expires_at > $1
             ORDER BY created_at DESC, id DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, announcement)
    }

    async fn mark_announcements_seen(
        &self,
        user: UserId,
        at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let before =
            sqlx::query("SELECT seen_at FROM announcement_reads WHERE user_id = $1 FOR UPDATE")
                .bind(user.0)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.int("seen_at"))
                .transpose()?;
        sqlx::query(
            "INSERT INTO announcement_reads (user_id, seen_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE
             SET seen_at = GREATEST(announcement_reads.seen_at, excluded.seen_at)",
        )
        .bind(user.0)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(before)
    }

    async fn users_of_roles(&self, roles: &[Role]) -> Result<Vec<UserId>, StoreError> {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let rows =
            sqlx::query("SELECT id FROM users WHERE cardinality($1::text[]) = 0 OR role = ANY($1)")
                .bind(names)
                .fetch_all(&self.pool)
                .await?;
        sql::all(&rows, |r| Ok(UserId(r.uuid("id")?)))
    }
}
