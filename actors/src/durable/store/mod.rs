//! The store: one interface, two backends.
//!
//! [`Store`] is everything Courier reads from or writes to its database.
//! [`postgres`] is the production backend, [`sqlite`] the zero-setup default
//! (one file in the data directory). Both run their own migrations from
//! `migrations/postgres` and `migrations/sqlite` on [`connect`], and both pass
//! the same conformance suite (`tests/store_conformance.rs`).
//!
//! Writes of the realtime path (messages, edits, receipts, reactions,
//! membership) go through [`Store::apply_batch`], called only by the
//! persistence actor, so that one transaction commits a whole batch.

mod audit_ride;
mod break_glass;
mod disclosures;
mod export;
mod file_rows;
mod files;
mod holds;
mod model;
mod notify;
mod password_reset;
mod patients;
mod pool;
pub mod postgres;
mod search;
mod sql;
pub mod sqlite;
mod sqlite_conn;
mod totp;

use std::sync::Arc;

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, SessionId, UserId};

pub use break_glass::{BreakGlassGrant, BreakGlassStore};
pub use disclosures::DisclosureStore;
pub use export::ExportStore;
pub use file_rows::*;
pub use files::{FilePurge, FileStore};
pub use holds::{HoldId, HoldStore, HoldTarget, KindFigures, KindPlan, LegalHold};
pub use model::*;
pub use notify::{Announcement, NotifyStore};
pub use password_reset::{PasswordResetStore, ResetKind, ResetToken};
pub use patients::{
    PatientCursor, PatientMessageRef, PatientSeal, PatientStore, SealedRefOwner, SealedRefRow,
};
pub use pool::{PoolSettings, PoolStats, ResolvedPool};
pub use search::{SearchQuery, SearchStore};
pub use totp::{TotpSecret, TotpStore};

/// A shared handle to whichever backend is configured.
pub type DynStore = Arc<dyn Store>;

/// What went wrong in the store. Mapped to protocol error codes at the edge.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write (e.g. a taken username).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or the connection broke: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row that cannot be turned back into a model (a bug or tampering).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(String),
    /// The TLS connection the database URL asks for (`sslmode`,
    /// `sslrootcert`) could not be made: the message names the cause. A
    /// configuration problem, raised when the store is opened.
    #[error("TLS to the database failed: {0}")]
    Tls(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Opens the store named by `url` (`sqlite://path` or `postgres://...`), runs
/// its migrations and returns it. SQLite files are created when missing.
/// The connections are the backend's defaults ([`connect_with`]).
pub async fn connect(url: &str) -> Result<DynStore, StoreError> {
    connect_with(url, &PoolSettings::default()).await
}

/// [`connect`] with the connection sizes and timeouts of `pool` (the
/// `db_*` settings).
pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<DynStore, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect_with(url, pool).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::connect_with(url, pool).await?,
        ))
    } else {
        Err(StoreError::Database(
            "database URL must start with sqlite: or postgres://".into(),
        ))
    }
}

/// When a batch may commit: once the batch before it has (see
/// [`Store::apply_batch_in_turn`]).
pub struct Turn(Option<tokio::sync::watch::Receiver<bool>>);

impl Turn {
    /// No batch before: commit at will.
    pub fn now() -> Self {
        Turn(None)
    }

    /// After the batch whose `done` sender this receiver listens to sets
    /// `true`.
    pub fn after(done: tokio::sync::watch::Receiver<bool>) -> Self {
        Turn(Some(done))
    }

    /// Waits for the turn; `Unavailable` when the batch before was dropped
    /// uncommitted (the loop is going away).
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        match &mut self.0 {
            None => Ok(()),
            Some(done) => done
                .wait_for(|committed| *committed)
                .await
                .map(|_| ())
                .map_err(|_| StoreError::Unavailable("the batch before was abandoned".into())),
        }
    }
}

/// Held while this process is the store's only writer; dropping it lets
/// another process become the writer (see [`Store::lock_writer`]).
pub struct WriterLock {
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl WriterLock {
    /// A lock that holds nothing (a store with no cross-process lock).
    pub fn none() -> Self {
        WriterLock { _held: None }
    }

    /// A lock held for as long as `held` lives (e.g. a connection).
    pub fn holding(held: impl std::any::Any + Send + Sync) -> Self {
        WriterLock {
            _held: Some(Box::new(held)),
        }
    }
}

/// Everything Courier keeps. Implementations are cheap to share (`Arc`) and
/// safe to call from many tasks at once.
#[async_trait]
pub trait Store:
    BreakGlassStore
    + FileStore
    + ExportStore
    + HoldStore
    + PatientStore
    + DisclosureStore
    + PasswordResetStore
    + TotpStore
    + NotifyStore
    + SearchStore
    + Send
    + Sync
    + 'static
{
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// How many write transactions can usefully run at once: the
    /// persistence actor commits at most this many batches side by side.
    fn write_parallelism(&self) -> usize;

    /// The most writes one batch takes unless configured
    /// (`persist_batch_max`).
    fn batch_max(&self) -> usize;

    /// Whether the write loops wait for this store on the
    /// [`store_thread`](crate::durable::store_thread) rather than on the runtime's
    /// workers: where a commit is another process's work.
    fn writes_from_store_thread(&self) -> bool;

    /// Runs pending migrations (also done by [`connect`]).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A cheap round trip: `Ok` when the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The connections now: the most, taken and free (`/metrics`).
    fn pool_stats(&self) -> PoolStats;

    /// Makes this process the store's only writer for as long as the
    /// returned lock lives. A broker's `seq` counters and audit chain head
    /// are read once at start and then advanced in memory, so a second
    /// writer would break both. On PostgreSQL the lock also orders a restart
    /// after a crash: the dead broker's last message batch or audit append
    /// may still be committing, on a session of its own, when its successor
    /// starts. Every such transaction holds a write fence shared, and the
    /// lock is granted only once the fence is free, so the successor reads
    /// heads that include whatever its predecessor committed. Waits up to
    /// `wait` for a previous holder and its transactions, then fails with
    /// `Unavailable`. The default holds nothing (SQLite: one process owns
    /// the file, and its commits are done when the process is gone).
    async fn lock_writer(&self, wait: std::time::Duration) -> Result<WriterLock, StoreError> {
        let _ = wait;
        Ok(WriterLock::none())
    }

    // ---- users -------------------------------------------------------------

    /// Creates a user; `Conflict` when the username is taken.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Usernames are matched case-insensitively.
    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// Users ordered by username; `search` matches a substring of the
    /// username or email, case-insensitively.
    async fn list_users(
        &self,
        search: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<User>, StoreError>;
    async fn count_users(&self) -> Result<u64, StoreError>;
    /// `NotFound` when there is no such user.
    async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, StoreError>;
    /// Deletes the user and their sessions and memberships; their messages
    /// stay (the sender id remains, for the audit trail). `NotFound` if absent.
    async fn delete_user(&self, id: UserId) -> Result<(), StoreError>;
    /// Records a failed login; sets `locked_until` to `lock_until` when the
    /// count reaches `threshold`. Returns the user after the update.
    async fn record_login_failure(
        &self,
        id: UserId,
        threshold: u32,
        lock_until: i64,
    ) -> Result<User, StoreError>;
    /// Clears the failure count and any lockout.
    async fn record_login_success(&self, id: UserId) -> Result<(), StoreError>;
    /// The permission names of a role, from `role_permissions`.
    async fn role_permissions(&self, role: Role) -> Result<Vec<String>, StoreError>;

    // ---- sessions ----------------------------------------------------------

    async fn create_session(&self, session: Session) -> Result<(), StoreError>;
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError>;
    /// A session with its user, in one read: what authenticating a token
    /// needs.
    async fn get_session_user(&self, id: SessionId) -> Result<Option<(Session, User)>, StoreError>;
    async fn list_sessions(&self, user: UserId) -> Result<Vec<Session>, StoreError>;
    /// Presents a refresh token (by hash). A current, valid, unexpired token
    /// rotates to `new_hash` (and `new_expires_at`); a token that was current
    /// once in a still-valid family revokes that session (`Reused`).
    async fn rotate_refresh(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
        new_expires_at: i64,
    ) -> Result<RefreshOutcome, StoreError>;
    /// Records a console session's last request (`last_seen_at`).
    /// `NotFound` when there is no such session.
    async fn touch_session(&self, id: SessionId, now: i64) -> Result<(), StoreError>;
    /// Marks one session invalid. Returns whether it was valid before.
    async fn revoke_session(&self, id: SessionId) -> Result<bool, StoreError>;
    /// Marks every valid session of a user invalid; returns their ids.
    async fn revoke_user_sessions(&self, user: UserId) -> Result<Vec<SessionId>, StoreError>;

    // ---- channels and members ----------------------------------------------

    /// Creates a channel and makes `owner` its owner, in one transaction.
    /// `Conflict` when a direct channel for the same pair exists.
    async fn create_channel(&self, channel: Channel, owner: Member) -> Result<(), StoreError>;
    async fn get_channel(&self, id: ChannelId) -> Result<Option<Channel>, StoreError>;
    async fn find_direct(&self, direct_key: &str) -> Result<Option<Channel>, StoreError>;
    /// Channels a user can see: every public and broadcast channel, and every
    /// channel they are a member of; ordered by name.
    async fn list_channels_for(&self, user: UserId) -> Result<Vec<Channel>, StoreError>;
    /// Every channel (admins).
    async fn list_all_channels(&self) -> Result<Vec<Channel>, StoreError>;
    /// Every channel whose name contains `search` (case-insensitive), by
    /// name, a page at a time (admins).
    async fn list_channels_page(
        &self,
        search: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Channel>, StoreError>;
    async fn update_channel(
        &self,
        id: ChannelId,
        patch: ChannelPatch,
    ) -> Result<Channel, StoreError>;
    /// Deletes the channel with its members, messages and reactions.
    async fn delete_channel(&self, id: ChannelId) -> Result<(), StoreError>;
    async fn get_member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError>;
    /// A channel with `user`'s membership of it, in one read: what every
    /// access check on a channel needs. `None` when there is no channel.
    async fn get_channel_member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<(Channel, Option<Member>)>, StoreError>;
    async fn list_members(&self, channel: ChannelId) -> Result<Vec<Member>, StoreError>;

    // ---- messages ----------------------------------------------------------

    /// Applies a group-commit batch in one transaction (see [`WriteOp`]).
    /// Either every op is applied or none is.
    async fn apply_batch(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// [`apply_batch`](Store::apply_batch) for a batch that may run beside
    /// the one before it: the statements may run at once, but the commit
    /// waits for `turn` (the batch before committed), so batches commit in
    /// the order they formed and a crash keeps a prefix of them (`seq` stays
    /// gap-free). The default waits for its turn, then applies.
    async fn apply_batch_in_turn(
        &self,
        ops: &[WriteOp],
        turn: &mut Turn,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        turn.wait().await?;
        self.apply_batch(ops).await
    }
    /// The highest `seq` ever used in a channel (tombstones and deleted rows
    /// included), 0 when none.
    async fn last_seq(&self, channel: ChannelId) -> Result<u64, StoreError>;
    /// The client ids of the newest `limit` messages of a channel that have one.
    async fn recent_client_ids(
        &self,
        channel: ChannelId,
        limit: u32,
    ) -> Result<Vec<ClientMsgRef>, StoreError>;
    /// One message, deleted or not.
    async fn get_message(&self, id: MessageId) -> Result<Option<MessageRow>, StoreError>;
    /// Non-deleted messages with `seq > after`, ascending, at most `limit`.
    async fn messages_after(
        &self,
        channel: ChannelId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;
    /// The newest `limit` non-deleted messages with `seq < before` (all when
    /// `None`), returned in ascending order, and whether older ones exist.
    async fn messages_before(
        &self,
        channel: ChannelId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<MessageRow>, bool), StoreError>;
    /// Sets (`Some`) or clears (`None`) a message's moderation flag and
    /// returns the row after. `NotFound` when there is no such message or
    /// it is deleted.
    async fn set_message_flag(
        &self,
        id: MessageId,
        flag: Option<Flag>,
    ) -> Result<MessageRow, StoreError>;
    /// Flagged messages that are not deleted, newest flag first.
    async fn list_flagged(&self, limit: u32, offset: u32) -> Result<Vec<MessageRow>, StoreError>;
    /// Reaction counts of a message, `{reaction: count}`.
    async fn reaction_counts(
        &self,
        message: MessageId,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError>;
    /// Non-deleted messages whose `expires_at <= now`, at most `limit`;
    /// none under a legal hold ([`HoldStore`]).
    async fn expired_messages(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Physically removes messages soft-deleted before `before`, but those
    /// under a legal hold; returns how many.
    async fn purge_deleted(&self, before: i64) -> Result<u64, StoreError>;
    /// Physically removes messages created before `before`, but those
    /// under a legal hold; returns how many.
    async fn purge_older_than(&self, before: i64) -> Result<u64, StoreError>;
    /// How many stored messages (any state) use a key version.
    async fn count_key_version(&self, version: u32) -> Result<u64, StoreError>;
    /// Up to `limit` messages that do not use `version` (rotation work list).
    async fn messages_not_on_key(
        &self,
        version: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Replaces ciphertexts after re-encryption, in one transaction.
    async fn store_reencrypted(&self, rows: &[Reencrypted]) -> Result<(), StoreError>;

    // ---- runtime settings --------------------------------------------------

    /// Every stored setting, by key.
    async fn list_settings(&self) -> Result<Vec<Setting>, StoreError>;
    /// Stores a setting, replacing any of the same key.
    async fn put_setting(&self, setting: Setting) -> Result<(), StoreError>;

    // ---- audit -------------------------------------------------------------

    /// Appends chained entries in one transaction. Seqs must continue the chain.
    async fn append_audit(&self, entries: &[AuditRecord]) -> Result<(), StoreError>;
    /// Appends entries after whatever the stored head is, re-linking them
    /// (seqs, hashes) when another writer appended since they were chained:
    /// the cluster's one chain, written by every node, one append at a time.
    /// A backend that never hosts a cluster appends as [`Store::append_audit`].
    async fn append_audit_linked(&self, entries: &mut [AuditRecord]) -> Result<(), StoreError> {
        self.append_audit(entries).await
    }
    /// The last entry of the chain, if any.
    async fn audit_head(&self) -> Result<Option<AuditRecord>, StoreError>;
    /// Entries with `seq > after`, ascending, at most `limit` (for verification).
    async fn audit_range(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Filtered entries, newest first (`GET /api/audit`).
    async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    async fn insert_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError>;
    /// Every checkpoint, ascending by seq.
    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}
