//! [`PatientStore`] on PostgreSQL, and the piece of the message path that
//! touches the patient link: storing a new message's sealed reference.
//! Tag lists are bound as one `text[]` (`= ANY($1)`).

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, UserId};
use sqlx::PgConnection;

use super::super::patients::{
    version_prefix, PatientCursor, PatientMessageRef, PatientSeal, PatientStore, SealedRefOwner,
    SealedRefRow,
};
use super::super::sql::{self, SqlRow};
use super::super::{Channel, MessageRow, StoreError, StoredMessage};
use super::{files, PgStore};

/// The rule of `store::patients`: `m` concerns the patient whose tags are
/// the array `$1`.
const CONCERNS: &str = "(m.patient_tag = ANY($1)
     OR (m.patient_tag IS NULL AND m.channel_id IN
         (SELECT c.id FROM channels c WHERE c.patient_tag = ANY($1))))";

/// Stores a just-inserted message's sealed reference (in the insert's
/// transaction; only for messages that carry one).
pub(super) async fn set_message_ref(
    conn: &mut PgConnection,
    m: &StoredMessage,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE messages SET patient_ref = $2, patient_tag = $3 WHERE id = $1")
        .bind(m.id.0)
        .bind(m.patient_ref.as_deref())
        .bind(m.patient_tag.as_deref())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl PatientStore for PgStore {
    async fn patient_channels(&self, tags: &[String]) -> Result<Vec<Channel>, StoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            r#"SELECT * FROM channels WHERE patient_tag = ANY($1)
               ORDER BY lower(name) COLLATE "C", id"#,
        )
        .bind(tags)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::channel)
    }

    async fn patient_message_refs(
        &self,
        tags: &[String],
    ) -> Result<Vec<PatientMessageRef>, StoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT m.channel_id, m.id, m.seq, m.sender_id, m.created_at, m.deleted_at
             FROM messages m
             WHERE length(m.ciphertext) > 0 AND {CONCERNS}
             ORDER BY m.channel_id, m.seq"
        ))
        .bind(tags)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, |r| {
            Ok(PatientMessageRef {
                channel_id: ChannelId(r.uuid("channel_id")?),
                message_id: MessageId(r.uuid("id")?),
                seq: r.uint("seq")?,
                sender_id: UserId(r.uuid("sender_id")?),
                created_at: r.int("created_at")?,
                deleted_at: r.opt_int("deleted_at")?,
            })
        })
    }

    async fn patient_messages(
        &self,
        tags: &[String],
        before: Option<PatientCursor>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let (at, after_id) = match before {
            Some(c) => (c.created_at, Some(c.message_id.0)),
            None => (i64::MAX, None),
        };
        let rows = sqlx::query(&format!(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.deleted_at IS NULL AND {CONCERNS}
               AND (m.created_at < $2 OR (m.created_at = $2 AND $3::uuid IS NOT NULL AND m.id < $3))
             ORDER BY m.created_at DESC, m.id DESC
             LIMIT $4"
        ))
        .bind(tags)
        .bind(at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&self.pool, &mut rows).await?;
        Ok(rows)
    }

    async fn patient_refs_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<SealedRefRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT 'm'::text AS owner, id, patient_ref FROM messages
             WHERE patient_ref IS NOT NULL AND substring(patient_ref from 1 for 4) <> $1
             UNION ALL
             SELECT 'c'::text AS owner, id, patient_ref FROM channels
             WHERE patient_ref IS NOT NULL AND substring(patient_ref from 1 for 4) <> $1
             LIMIT $2",
        )
        .bind(version_prefix(active))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, |r| {
            let uuid = r.uuid("id")?;
            Ok(SealedRefRow {
                owner: match r.text("owner")?.as_str() {
                    "m" => SealedRefOwner::Message(MessageId(uuid)),
                    _ => SealedRefOwner::Channel(ChannelId(uuid)),
                },
                sealed: r.bytes("patient_ref")?,
            })
        })
    }

    async fn store_resealed_refs(
        &self,
        rows: &[(SealedRefRow, PatientSeal)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (old, seal) in rows {
            let (statement, uuid) = match old.owner {
                SealedRefOwner::Message(m) => (
                    "UPDATE messages SET patient_ref = $2, patient_tag = $3
                     WHERE id = $1 AND patient_ref = $4",
                    m.0,
                ),
                SealedRefOwner::Channel(c) => (
                    "UPDATE channels SET patient_ref = $2, patient_tag = $3
                     WHERE id = $1 AND patient_ref = $4",
                    c.0,
                ),
            };
            sqlx::query(statement)
                .bind(uuid)
                .bind(&seal.sealed[..])
                .bind(&seal.tag)
                .bind(&old.sealed[..])
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count_patient_ref_version(&self, version: u32) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT ((SELECT count(*) FROM messages WHERE substring(patient_ref from 1 for 4) = $1)
                  + (SELECT count(*) FROM channels WHERE substring(patient_ref from 1 for 4) = $1))::bigint AS n",
        )
        .bind(version_prefix(version))
        .fetch_one(&self.pool)
        .await?;
        row.uint("n")
    }
}
