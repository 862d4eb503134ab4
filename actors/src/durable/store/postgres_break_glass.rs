//! [`BreakGlassStore`] on PostgreSQL. Ids are `uuid`.

use async_trait::async_trait;
use courier_protocol::UserId;

use super::super::break_glass::{
    grant, BreakGlassGrant, BreakGlassStore, GRANTS_ALL, GRANTS_OPEN, GRANTS_UNREVIEWED, GRANT_END,
    GRANT_INSERT, GRANT_RESEAL, GRANT_REVIEW,
};
use super::super::sql::{self, SqlRow};
use super::super::{Role, StoreError};
use super::PgStore;
use crate::compliance::break_glass::GrantId;

#[async_trait]
impl BreakGlassStore for PgStore {
    async fn break_glass_allowed(&self, user: UserId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM break_glass_users WHERE user_id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn set_break_glass_allowed(
        &self,
        user: UserId,
        allowed: bool,
        by: UserId,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = if allowed {
            sqlx::query(
                "INSERT INTO break_glass_users (user_id, granted_by, granted_at)
                 VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user.0)
            .bind(by.0)
            .bind(at)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM break_glass_users WHERE user_id = $1")
                .bind(user.0)
                .execute(&self.pool)
                .await?
        };
        Ok(done.rows_affected() > 0)
    }

    async fn insert_grant(&self, g: &BreakGlassGrant) -> Result<(), StoreError> {
        sqlx::query(GRANT_INSERT)
            .bind(g.id.0)
            .bind(g.channel_id.0)
            .bind(g.user_id.0)
            .bind(&g.reason_ciphertext)
            .bind(&g.reason_nonce)
            .bind(i64::from(g.reason_key_version))
            .bind(g.granted_at)
            .bind(g.expires_at)
            .bind(g.ended_at)
            .bind(g.ended_by.map(|u| u.0))
            .bind(g.end_reason.as_deref())
            .bind(g.reviewed_by.map(|u| u.0))
            .bind(g.reviewed_at)
            .bind(g.review_note.as_deref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_grant(&self, g: GrantId) -> Result<Option<BreakGlassGrant>, StoreError> {
        let row = sqlx::query("SELECT * FROM break_glass_grants WHERE id = $1")
            .bind(g.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(grant).transpose()
    }

    async fn open_grants(&self) -> Result<Vec<BreakGlassGrant>, StoreError> {
        let rows = sqlx::query(GRANTS_OPEN).fetch_all(&self.pool).await?;
        sql::all(&rows, grant)
    }

    async fn list_grants(&self, unreviewed: bool) -> Result<Vec<BreakGlassGrant>, StoreError> {
        let q = if unreviewed {
            GRANTS_UNREVIEWED
        } else {
            GRANTS_ALL
        };
        let rows = sqlx::query(q).fetch_all(&self.pool).await?;
        sql::all(&rows, grant)
    }

    async fn end_grant(
        &self,
        g: GrantId,
        at: i64,
        by: Option<UserId>,
        reason: &str,
    ) -> Result<Option<BreakGlassGrant>, StoreError> {
        let row = sqlx::query(GRANT_END)
            .bind(g.0)
            .bind(at)
            .bind(by.map(|u| u.0))
            .bind(reason)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(grant).transpose()
    }

    async fn review_grant(
        &self,
        g: GrantId,
        by: UserId,
        at: i64,
        note: &str,
    ) -> Result<Option<BreakGlassGrant>, StoreError> {
        let row = sqlx::query(GRANT_REVIEW)
            .bind(g.0)
            .bind(by.0)
            .bind(at)
            .bind(note)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(grant).transpose()
    }

    async fn reseal_grant_reason(
        &self,
        g: GrantId,
        old_version: u32,
        sealed: &crate::crypto::Sealed,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(GRANT_RESEAL)
            .bind(g.0)
            .bind(&sealed.ciphertext)
            .bind(&sealed.nonce)
            .bind(i64::from(sealed.key_version))
            .bind(i64::from(old_version))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn user_ids_with_roles(&self, roles: &[Role]) -> Result<Vec<UserId>, StoreError> {
        let mut out = Vec::new();
        for role in roles {
            let rows = sqlx::query("SELECT id FROM users WHERE role = $1")
                .bind(role.as_str())
                .fetch_all(&self.pool)
                .await?;
            for r in &rows {
                out.push(UserId(r.uuid("id")?));
            }
        }
        Ok(out)
    }
}
