//! [`TotpStore`] on SQLite. Ids are hyphenated TEXT.

use async_trait::async_trait;
use courier_protocol::UserId;

use super::super::sql;
use super::super::totp::{
    count, secret, TotpSecret, TotpStore, ACCEPT_STEP, CODES_LEFT, CONFIRM, COUNT_VERSION,
    INSERT_CODE, NOT_ON_KEY, PUT_PENDING, RESEAL, USE_CODE,
};
use super::super::StoreError;
use super::{begin_write, id, SqliteStore};
use crate::crypto::Sealed;

#[async_trait]
impl TotpStore for SqliteStore {
    async fn totp_secret(&self, user: UserId) -> Result<Option<TotpSecret>, StoreError> {
        let row = sqlx::query("SELECT * FROM totp_secrets WHERE user_id = $1")
            .bind(id(user.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(secret).transpose()
    }

    async fn put_pending_totp(
        &self,
        user: UserId,
        sealed: &Sealed,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(PUT_PENDING)
            .bind(id(user.0))
            .bind(&sealed.ciphertext)
            .bind(&sealed.nonce)
            .bind(i64::from(sealed.key_version))
            .bind(at)
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn confirm_totp(
        &self,
        user: UserId,
        key_version: u32,
        step: i64,
        at: i64,
        code_hashes: &[String],
    ) -> Result<bool, StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        let done = sqlx::query(CONFIRM)
            .bind(id(user.0))
            .bind(at)
            .bind(step)
            .bind(i64::from(key_version))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
            .bind(id(user.0))
            .execute(&mut *tx)
            .await?;
        for hash in code_hashes {
            sqlx::query(INSERT_CODE)
                .bind(id(user.0))
                .bind(hash)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn accept_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(ACCEPT_STEP)
            .bind(id(user.0))
            .bind(step)
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        code_hash: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(USE_CODE)
            .bind(id(user.0))
            .bind(code_hash)
            .bind(at)
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn recovery_codes_left(&self, user: UserId) -> Result<u64, StoreError> {
        let row = sqlx::query(CODES_LEFT)
            .bind(id(user.0))
            .fetch_one(&mut *self.read().await?)
            .await?;
        count(&row)
    }

    async fn delete_totp(&self, user: UserId) -> Result<bool, StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
            .bind(id(user.0))
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM totp_secrets WHERE user_id = $1")
            .bind(id(user.0))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn totp_secrets_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<TotpSecret>, StoreError> {
        let rows = sqlx::query(NOT_ON_KEY)
            .bind(i64::from(active))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, secret)
    }

    async fn reseal_totp_secret(
        &self,
        user: UserId,
        old_version: u32,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(RESEAL)
            .bind(id(user.0))
            .bind(&sealed.ciphertext)
            .bind(&sealed.nonce)
            .bind(i64::from(sealed.key_version))
            .bind(i64::from(old_version))
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_totp_key_version(&self, version: u32) -> Result<u64, StoreError> {
        let row = sqlx::query(COUNT_VERSION)
            .bind(i64::from(version))
            .fetch_one(&mut *self.read().await?)
            .await?;
        count(&row)
    }
}
