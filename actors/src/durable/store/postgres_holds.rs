//! [`HoldStore`] on PostgreSQL. Ids are `uuid`.

use async_trait::async_trait;
use courier_protocol::frames::MessageKind;
use courier_protocol::{ChannelId, UserId};

use super::super::holds::{
    kind_figures, kind_predicate, legal_hold, HoldId, HoldStore, HoldTarget, KindFigures, KindPlan,
    LegalHold, CHANNEL_HELD, KIND_FIGURES,
};
use super::super::sql::{self, SqlRow};
use super::super::StoreError;
use super::PgStore;

#[async_trait]
impl HoldStore for PgStore {
    async fn insert_hold(&self, hold: &LegalHold, tags: &[String]) -> Result<(), StoreError> {
        let (channel, user, sealed, tag) = match &hold.target {
            HoldTarget::Channel(c) => (Some(c.0), None, None, None),
            HoldTarget::User(u) => (None, Some(u.0), None, None),
            HoldTarget::Patient { sealed_ref, tag } => {
                (None, None, Some(&sealed_ref[..]), Some(tag.as_str()))
            }
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO legal_holds (id, scope, channel_id, user_id, patient_ref, patient_tag,
                                      reason, placed_by, placed_at, released_at, released_by,
                                      release_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(hold.id.0)
        .bind(hold.target.scope())
        .bind(channel)
        .bind(user)
        .bind(sealed)
        .bind(tag)
        .bind(&hold.reason)
        .bind(hold.placed_by.0)
        .bind(hold.placed_at)
        .bind(hold.released_at)
        .bind(hold.released_by.map(|u| u.0))
        .bind(hold.release_reason.as_deref())
        .execute(&mut *tx)
        .await?;
        for tag in tags {
            sqlx::query("INSERT INTO legal_hold_tags (hold_id, tag) VALUES ($1, $2)")
                .bind(hold.id.0)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_hold(&self, hold: HoldId) -> Result<Option<LegalHold>, StoreError> {
        let row = sqlx::query("SELECT * FROM legal_holds WHERE id = $1")
            .bind(hold.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(legal_hold).transpose()
    }

    async fn list_holds(&self) -> Result<Vec<LegalHold>, StoreError> {
        let rows = sqlx::query("SELECT * FROM legal_holds ORDER BY placed_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        sql::all(&rows, legal_hold)
    }

    async fn release_hold(
        &self,
        hold: HoldId,
        by: UserId,
        at: i64,
        reason: &str,
    ) -> Result<Option<LegalHold>, StoreError> {
        let row = sqlx::query(
            "UPDATE legal_holds SET released_at = $2, released_by = $3, release_reason = $4
             WHERE id = $1 AND released_at IS NULL RETURNING *",
        )
        .bind(hold.0)
        .bind(at)
        .bind(by.0)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(legal_hold).transpose()
    }

    async fn set_hold_tags(
        &self,
        hold: HoldId,
        tags: &[String],
        resealed: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(sealed) = resealed {
            sqlx::query("UPDATE legal_holds SET patient_ref = $2 WHERE id = $1")
                .bind(hold.0)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM legal_hold_tags WHERE hold_id = $1")
            .bind(hold.0)
            .execute(&mut *tx)
            .await?;
        for tag in tags {
            sqlx::query("INSERT INTO legal_hold_tags (hold_id, tag) VALUES ($1, $2)")
                .bind(hold.0)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn channel_held(&self, channel: ChannelId) -> Result<bool, StoreError> {
        let row = sqlx::query(CHANNEL_HELD)
            .bind(channel.0)
            .fetch_one(&self.pool)
            .await?;
        row.flag("held")
    }

    async fn retention_figures(
        &self,
        now: i64,
        plan: &[KindPlan],
    ) -> Result<Vec<KindFigures>, StoreError> {
        let mut out = Vec::with_capacity(plan.len());
        for p in plan {
            let rows = sqlx::query(KIND_FIGURES)
                .bind(now)
                .bind(p.deleted_before)
                .bind(p.older_before.unwrap_or(i64::MIN))
                .bind(p.kind.as_str())
                .fetch_all(&self.pool)
                .await?;
            out.push(kind_figures(&rows)?);
        }
        Ok(out)
    }

    async fn purge_deleted_kind(&self, kind: MessageKind, before: i64) -> Result<u64, StoreError> {
        self.purge(&kind_predicate("deleted_at", kind), before)
            .await
    }

    async fn purge_older_kind(&self, kind: MessageKind, before: i64) -> Result<u64, StoreError> {
        self.purge(&kind_predicate("created_at", kind), before)
            .await
    }
}
