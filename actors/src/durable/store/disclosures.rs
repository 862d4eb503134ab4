//! [`DisclosureStore`]: the one read the accounting of disclosures
//! ([`crate::compliance::disclosures`]) needs beyond the audit chain's own
//! (`Store::audit_range`, `Store::audit_head`): where a time window lies in
//! the chain. Both backends implement it (`sqlite_disclosures.rs`,
//! `postgres_disclosures.rs`) over `audit_logs` and its timestamp index
//! (migrations pg `0008_disclosures.sql`, sqlite `0007_disclosures.sql`).

use async_trait::async_trait;

use super::StoreError;

/// The audit chain's reads by time.
#[async_trait]
pub trait DisclosureStore: Send + Sync {
    /// The smallest and the largest `seq` of the entries whose `timestamp`
    /// is in `[from, to)`, `None` when there is none. Timestamps follow
    /// seqs only roughly (an event is stamped when it happens and chained
    /// when its batch commits), so entries between the two may lie outside
    /// the window: every entry inside it lies between them.
    async fn audit_seq_window(&self, from: i64, to: i64) -> Result<Option<(u64, u64)>, StoreError>;
}
