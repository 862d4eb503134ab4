//! [`PasswordResetStore`] on SQLite. Ids are hyphenated TEXT.

use async_trait::async_trait;
use courier_protocol::UserId;

use super::super::password_reset::{
    token, PasswordResetStore, ResetKind, ResetToken, KEEP_EXPIRED_MS, TOKENS_COUNT, TOKENS_PRUNE,
    TOKENS_REPLACE, TOKEN_GET, TOKEN_INSERT, TOKEN_SPEND, USERS_WITH_EMAIL,
};
use super::super::sql::{self, SqlRow};
use super::super::{StoreError, User};
use super::{begin_write, id, SqliteStore};

#[async_trait]
impl PasswordResetStore for SqliteStore {
    async fn users_with_email(&self, email: &str) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(USERS_WITH_EMAIL)
            .bind(email)
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::user)
    }

    async fn issue_reset_token(&self, t: &ResetToken) -> Result<(), StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        sqlx::query(TOKENS_PRUNE)
            .bind(t.created_at.saturating_sub(KEEP_EXPIRED_MS))
            .execute(&mut *tx)
            .await?;
        sqlx::query(TOKENS_REPLACE)
            .bind(id(t.user_id.0))
            .bind(t.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(TOKEN_INSERT)
            .bind(&t.token_hash)
            .bind(id(t.user_id.0))
            .bind(t.kind.as_str())
            .bind(t.requested_by.map(|u| id(u.0)))
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn count_reset_tokens_since(
        &self,
        user: UserId,
        kind: ResetKind,
        since: i64,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(TOKENS_COUNT)
            .bind(id(user.0))
            .bind(kind.as_str())
            .bind(since)
            .fetch_one(&mut *self.read().await?)
            .await?;
        row.uint("n")
    }

    async fn get_reset_token(&self, token_hash: &str) -> Result<Option<ResetToken>, StoreError> {
        let row = sqlx::query(TOKEN_GET)
            .bind(token_hash)
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(token).transpose()
    }

    async fn spend_reset_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<ResetToken>, StoreError> {
        let row = sqlx::query(TOKEN_SPEND)
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&mut *self.write.lock().await?)
            .await?;
        row.as_ref().map(token).transpose()
    }
}
