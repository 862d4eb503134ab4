//! [`DisclosureStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::super::{DisclosureStore, StoreError};
use super::SqliteStore;

#[async_trait]
impl DisclosureStore for SqliteStore {
    async fn audit_seq_window(&self, from: i64, to: i64) -> Result<Option<(u64, u64)>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM audit_logs
             WHERE timestamp >= $1 AND timestamp < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(&mut *self.read().await?)
        .await?;
        window(row.try_get("lo")?, row.try_get("hi")?)
    }
}

fn window(lo: Option<i64>, hi: Option<i64>) -> Result<Option<(u64, u64)>, StoreError> {
    match (lo, hi) {
        (Some(lo), Some(hi)) => {
            let seq = |v: i64| {
                u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("audit seq {v}")))
            };
            Ok(Some((seq(lo)?, seq(hi)?)))
        }
        _ => Ok(None),
    }
}
