//! SQLite backend: the zero-setup store, one file in the data directory.
//!
//! The file is created when missing and opened in WAL mode with
//! `synchronous = FULL`, so an acknowledged batch survives a crash or power
//! loss; foreign keys are on, and a connection waits up to 5 s for a busy
//! database. Ids are stored as hyphenated TEXT. Migrations come from
//! `migrations/sqlite`, embedded at build time.
//!
//! SQLite has one writer at a time, so the store has one connection for
//! writes and a few for reads (WAL lets them read while it writes), all
//! held for the store's life rather than pooled (`sqlite_conn.rs`):
//! `db_max_connections` in all (by default 5: the writer and four readers;
//! 1 lets the writer read too), each waited for at most
//! `db_acquire_timeout_secs` (by default 5 s). Writers (the
//! persistence and audit actors, REST) queue for that one connection behind
//! a fair async mutex instead of colliding on the file lock, where SQLite's
//! busy handler would sleep them for 1 to 100 ms at a time. Every write
//! transaction still starts with `BEGIN IMMEDIATE`, which takes the write
//! lock up front (another process on the file waits on the busy timeout)
//! rather than failing when a read lock cannot be upgraded.
//! [`Store::apply_batch`] is one such transaction; its statements are prepared
//! once per connection and reused for every row (sqlx's statement cache).
//! Audit appends made while a batch is under way commit in the batch's
//! transaction rather than in one of their own (`audit_ride.rs`),
//! so that batch and audit do not take turns at one WAL fsync each.
//!
//! `sqlite::memory:` works too (the write connection also reads; the
//! database lives as long as the store).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, SessionId, UserId};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteError, SqliteJournalMode, SqliteSynchronous,
};
use sqlx::{Acquire, Connection, Sqlite, Transaction};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

#[path = "sqlite_break_glass.rs"]
mod break_glass;
#[path = "sqlite_disclosures.rs"]
mod disclosures;
#[path = "sqlite_export.rs"]
mod export;
#[path = "sqlite_files.rs"]
mod files;
#[path = "sqlite_holds.rs"]
mod holds;
#[path = "sqlite_notify.rs"]
mod notify;
#[path = "sqlite_password_reset.rs"]
mod password_reset;
#[path = "sqlite_patients.rs"]
mod patients;
#[path = "sqlite_search.rs"]
mod search;
#[path = "sqlite_totp.rs"]
mod totp;

use super::audit_ride::{AuditRide, Next, Parked};
use super::sql::{self, bound, to_db, SqlRow};
use super::sqlite_conn::{ReadConn, Reads, Writer};
use super::{
    AuditFilter, AuditRecord, Channel, ChannelPatch, Checkpoint, ClientMsgRef, Flag, Member,
    MessageRow, NewUser, PoolSettings, PoolStats, Reencrypted, RefreshOutcome, Role, Session,
    Setting, Store, StoreError, StoredMessage, User, UserPatch, WriteOp, WriteOutcome,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// What SQLite creates beside the database file.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates the database file 0600 (its directory 0700) before SQLite opens
/// it. SQLite gives the files it creates beside it (`-wal`, `-shm`,
/// `-journal`) the database file's mode, whatever the umask, so they are
/// 0600 too. Files an older version left readable by others are narrowed
/// to 0600, with a warning.
fn create_private(db: &std::path::Path) -> Result<(), StoreError> {
    use crate::durable::private_files;
    let failed =
        |e: std::io::Error| StoreError::Database(format!("cannot create {}: {e}", db.display()));
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_files::create_dir_all(dir).map_err(failed)?;
    }
    private_files::narrow(db);
    for suffix in SIDE_FILES {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        private_files::narrow(std::path::Path::new(&side));
    }
    // Only a file that does not exist yet is opened here. Closing a
    // descriptor of a database this process already has open would drop
    // every POSIX lock SQLite holds on it in this process (a second store on
    // the same file, as `courier export` in-process and the tests make), and
    // another process could then write under a connection that believes it
    // holds the lock: "database disk image is malformed".
    match private_files::open(
        db,
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true),
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// The SQLite store. Cheap to clone (the connections are shared).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads: a few connections, held (see `sqlite_conn`).
    reads: Arc<Reads>,
    /// Writes: one connection, held (see `sqlite_conn`).
    write: Arc<Writer>,
    /// Audit appends waiting to commit with the next message batch.
    audit_ride: Arc<AuditRide>,
}

impl SqliteStore {
    /// Opens the database named by `url` (`sqlite://path/to/file.db` or
    /// `sqlite::memory:`) with the default connections, creating the file
    /// and its directory when missing, and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PoolSettings::default()).await
    }

    /// [`SqliteStore::connect`] with `pool`'s connection count and wait.
    pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let sizes = pool.resolve("sqlite");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Statement journals (a multi-row insert's undo within its
            // transaction) stay in memory instead of spilling to a temporary
            // file at 64 KiB; durability is the WAL's, not theirs.
            .pragma("temp_store", "memory");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_private(options.get_filename())?;
        }
        let write =
            Arc::new(Writer::open(options.clone(), &MIGRATOR, sizes.acquire_timeout).await?);
        let readers = sizes.max_connections as usize - 1;
        let reads = if in_memory || readers == 0 {
            // An in-memory database lives as long as its one connection,
            // which then reads and writes; so does a store of one connection.
            Reads::Writer
        } else {
            Reads::open(&options, readers, sizes.acquire_timeout).await?
        };
        let store = SqliteStore {
            reads: Arc::new(reads),
            write,
            audit_ride: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Audit appends that committed in a message batch's transaction rather
    /// than alone, since the store opened.
    pub fn audit_appends_carried(&self) -> u64 {
        self.audit_ride.carried()
    }

    /// A connection to read on.
    async fn read(&self) -> Result<ReadConn<'_>, StoreError> {
        self.reads.take(&self.write).await
    }

    /// Physically removes the messages matching `predicate` (on `$1`), first
    /// raising each channel's `purged_max_seq` so its last seq never goes back.
    async fn purge(&self, predicate: &str, before: i64) -> Result<u64, StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        sqlx::query(&format!(
            "UPDATE channels SET purged_max_seq = max(purged_max_seq, p.top)
             FROM (SELECT channel_id, max(seq) AS top FROM messages
                   WHERE {predicate} GROUP BY channel_id) AS p
             WHERE channels.id = p.channel_id"
        ))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(&format!("DELETE FROM messages WHERE {predicate}"))
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// Sorts an SQLite error by its result code. Messages name tables and
/// columns, never values.
pub(super) fn classify(e: &SqliteError) -> StoreError {
    if e.is_unique_violation() {
        return StoreError::Conflict(e.message().to_owned());
    }
    if e.is_foreign_key_violation() {
        // A reference to a row that does not exist (every delete cascades).
        return StoreError::NotFound;
    }
    let code = e.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(1);
    // The primary code is the low byte of the extended one.
    match code & 0xff {
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN: retry later
        5 | 6 | 10 | 13 | 14 => StoreError::Unavailable(e.message().to_owned()),
        // CORRUPT, NOTADB
        11 | 26 => StoreError::Corrupt(e.message().to_owned()),
        _ => StoreError::Database(e.message().to_owned()),
    }
}

/// A write transaction holding SQLite's write lock from the start.
async fn begin_write(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>, StoreError> {
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

/// An id as stored: hyphenated TEXT.
fn id(uuid: Uuid) -> Hyphenated {
    uuid.hyphenated()
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// One: SQLite has a single writer (and this store one write connection).
    fn write_parallelism(&self) -> usize {
        1
    }

    /// 4,096. A commit writes every page its batch touched to the WAL, and
    /// a busy store touches the same index pages (a channel's last `seq`s)
    /// batch after batch, so larger batches write far fewer pages a row.
    /// At 10,000 messages a second in 1,000 rooms on one core, 512-row
    /// batches fell behind by seconds (p99 11 s, 24 CPU-s per million
    /// deliveries); batches of about 3,000 kept up (p99 0.9 s, 10 CPU-s).
    /// Under a light load batches are what is queued, far below either.
    fn batch_max(&self) -> usize {
        4096
    }

    /// No: the commits run in this process, on sqlx's SQLite thread. Taken
    /// at once, replies make a commit of every few writes, and each one's
    /// WAL write and `fsync` take the core from the connection tasks (on
    /// the store thread churn fell from 1,190–1,420 to 124–632 connects/s,
    /// `benches/README.md`); behind the workers' queue writes gather into
    /// fewer, larger commits.
    fn writes_from_store_thread(&self) -> bool {
        false
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(MIGRATOR.run_direct(&mut *self.write.lock().await?).await?)
    }

    /// Pings every connection nobody holds ([`Reads::check`],
    /// [`Writer::check`]); one in use counts as there.
    async fn ping(&self) -> Result<(), StoreError> {
        self.reads.check().await?;
        self.write.check().await
    }

    /// The write connection and the read connections, all held open.
    fn pool_stats(&self) -> PoolStats {
        let (readers, reading) = self.reads.in_use();
        let writing = u32::from(self.write.in_use());
        let max = readers + 1;
        PoolStats {
            max,
            in_use: writing + reading,
            idle: max - writing - reading,
        }
    }

    // ---- users -------------------------------------------------------------

    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at,
                 password_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6)
             RETURNING *",
        )
        .bind(id(user.id.0))
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .fetch_one(&mut *self.write.lock().await?)
        .await?;
        sql::user(&row)
    }

    async fn get_user(&self, user: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id(user.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::user).transpose()
    }

    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE lower(username) = lower($1)")
            .bind(username)
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::user).transpose()
    }

    async fn list_users(
        &self,
        search: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            r"SELECT * FROM users
              WHERE $1 IS NULL
                 OR lower(username) LIKE $1 ESCAPE '\'
                 OR lower(email) LIKE $1 ESCAPE '\'
              ORDER BY lower(username)
              LIMIT $2 OFFSET $3",
        )
        .bind(search.map(sql::contains_pattern))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::user)
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM users")
            .fetch_one(&mut *self.read().await?)
            .await?;
        row.uint("n")
    }

    async fn update_user(&self, user: UserId, patch: UserPatch) -> Result<User, StoreError> {
        let row = sqlx::query(
            "UPDATE users SET
                 email = CASE WHEN $2 THEN $3 ELSE email END,
                 role = COALESCE($4, role),
                 password_hash = COALESCE($5, password_hash),
                 password_changed_at = CASE WHEN $5 IS NULL THEN password_changed_at ELSE $6 END,
                 updated_at = $6,
                 locked_until = CASE WHEN $7 THEN $8 ELSE locked_until END,
                 disabled_at = CASE WHEN $9 THEN $10 ELSE disabled_at END,
                 must_change_password = COALESCE($11, must_change_password),
                 last_login_at = COALESCE($12, last_login_at)
             WHERE id = $1
             RETURNING *",
        )
        .bind(id(user.0))
        .bind(patch.email.is_some())
        .bind(patch.email.flatten())
        .bind(patch.role.map(Role::as_str))
        .bind(patch.password_hash)
        .bind(patch.updated_at)
        .bind(patch.locked_until.is_some())
        .bind(patch.locked_until.flatten())
        .bind(patch.disabled_at.is_some())
        .bind(patch.disabled_at.flatten())
        .bind(patch.must_change_password)
        .bind(patch.last_login_at)
        .fetch_optional(&mut *self.write.lock().await?)
        .await?;
        sql::user(&row.ok_or(StoreError::NotFound)?)
    }

    async fn delete_user(&self, user: UserId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id(user.0))
            .execute(&mut *self.write.lock().await?)
            .await?;
        sql::found(done.rows_affected())
    }

    async fn record_login_failure(
        &self,
        user: UserId,
        threshold: u32,
        lock_until: i64,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(
            "UPDATE users SET
                 failed_logins = failed_logins + 1,
                 locked_until = CASE WHEN failed_logins + 1 >= $2 THEN $3 ELSE locked_until END
             WHERE id = $1
             RETURNING *",
        )
        .bind(id(user.0))
        .bind(i64::from(threshold))
        .bind(lock_until)
        .fetch_optional(&mut *self.write.lock().await?)
        .await?;
        sql::user(&row.ok_or(StoreError::NotFound)?)
    }

    async fn record_login_success(&self, user: UserId) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
                .bind(id(user.0))
                .execute(&mut *self.write.lock().await?)
                .await?;
        sql::found(done.rows_affected())
    }

    async fn role_permissions(&self, role: Role) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT permission FROM role_permissions WHERE role = $1 ORDER BY permission",
        )
        .bind(role.as_str())
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, |r| r.text("permission"))
    }

    // ---- sessions ----------------------------------------------------------

    async fn create_session(&self, session: Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions
                 (id, user_id, token_hash, created_at, expires_at, ip, user_agent, valid, kind, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id(session.id.0))
        .bind(id(session.user_id.0))
        .bind(&session.token_hash)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(&session.ip)
        .bind(&session.user_agent)
        .bind(session.valid)
        .bind(session.kind.as_str())
        .bind(session.last_seen_at)
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn get_session(&self, session: SessionId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id(session.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::session).transpose()
    }

    async fn get_session_user(
        &self,
        session: SessionId,
    ) -> Result<Option<(Session, User)>, StoreError> {
        let row = sqlx::query(sql::SESSION_USER)
            .bind(id(session.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::session_user).transpose()
    }

    async fn list_sessions(&self, user: UserId) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sessions WHERE user_id = $1 ORDER BY created_at, id")
            .bind(id(user.0))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::session)
    }

    async fn rotate_refresh(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: i64,
        new_expires_at: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        let rotated = sqlx::query(
            "UPDATE sessions SET token_hash = $2, expires_at = $4
             WHERE token_hash = $1 AND valid AND expires_at > $3 AND kind = 'api'
             RETURNING *",
        )
        .bind(presented_hash)
        .bind(new_hash)
        .bind(now)
        .bind(new_expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = if let Some(row) = rotated {
            let session = sql::session(&row)?;
            sqlx::query(
                "INSERT INTO session_refresh_tokens (token_hash, session_id, retired_at)
                 VALUES ($1, $2, $3)",
            )
            .bind(presented_hash)
            .bind(id(session.id.0))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            RefreshOutcome::Rotated(session)
        } else {
            let revoked = sqlx::query(
                "UPDATE sessions SET valid = FALSE
                 WHERE valid AND expires_at > $2
                   AND id = (SELECT session_id FROM session_refresh_tokens WHERE token_hash = $1)
                 RETURNING id, user_id",
            )
            .bind(presented_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            match revoked {
                Some(row) => RefreshOutcome::Reused {
                    session_id: SessionId(row.uuid("id")?),
                    user_id: UserId(row.uuid("user_id")?),
                },
                None => RefreshOutcome::Unknown,
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_session(&self, session: SessionId) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE sessions SET valid = FALSE WHERE id = $1 AND valid")
            .bind(id(session.0))
            .execute(&mut *self.write.lock().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_user_sessions(&self, user: UserId) -> Result<Vec<SessionId>, StoreError> {
        let rows = sqlx::query(
            "UPDATE sessions SET valid = FALSE WHERE user_id = $1 AND valid RETURNING id",
        )
        .bind(id(user.0))
        .fetch_all(&mut *self.write.lock().await?)
        .await?;
        sql::all(&rows, |r| Ok(SessionId(r.uuid("id")?)))
    }

    // ---- channels and members ----------------------------------------------

    async fn create_channel(&self, channel: Channel, owner: Member) -> Result<(), StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        sqlx::query(
            "INSERT INTO channels (id, name, description, kind, created_by, created_at, direct_key,
                                   patient_ref, patient_tag)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id(channel.id.0))
        .bind(&channel.name)
        .bind(&channel.description)
        .bind(channel.kind.as_str())
        .bind(id(channel.created_by.0))
        .bind(channel.created_at)
        .bind(&channel.direct_key)
        .bind(channel.patient_ref.as_deref())
        .bind(channel.patient_tag.as_deref())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO channel_members
                 (channel_id, user_id, role, joined_at, last_read_seq, last_delivered_seq)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id(channel.id.0))
        .bind(id(owner.user_id.0))
        .bind(owner.role.as_str())
        .bind(owner.joined_at)
        .bind(to_db(owner.last_read_seq, "last_read_seq")?)
        .bind(to_db(owner.last_delivered_seq, "last_delivered_seq")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_channel(&self, channel: ChannelId) -> Result<Option<Channel>, StoreError> {
        let row = sqlx::query("SELECT * FROM channels WHERE id = $1")
            .bind(id(channel.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::channel).transpose()
    }

    async fn find_direct(&self, direct_key: &str) -> Result<Option<Channel>, StoreError> {
        let row = sqlx::query("SELECT * FROM channels WHERE direct_key = $1")
            .bind(direct_key)
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::channel).transpose()
    }

    async fn list_channels_for(&self, user: UserId) -> Result<Vec<Channel>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.* FROM channels c
             WHERE c.kind IN ('public', 'broadcast')
                OR EXISTS (SELECT 1 FROM channel_members m
                           WHERE m.channel_id = c.id AND m.user_id = $1)
             ORDER BY lower(c.name), c.id",
        )
        .bind(id(user.0))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::channel)
    }

    async fn list_all_channels(&self) -> Result<Vec<Channel>, StoreError> {
        let rows = sqlx::query("SELECT * FROM channels ORDER BY lower(name), id")
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::channel)
    }

    async fn update_channel(
        &self,
        channel: ChannelId,
        patch: ChannelPatch,
    ) -> Result<Channel, StoreError> {
        let patient = patch.patient.clone().flatten();
        let row = sqlx::query(
            "UPDATE channels SET
                 name = COALESCE($2, name),
                 description = CASE WHEN $3 THEN $4 ELSE description END,
                 archived_at = CASE WHEN $5 THEN $6 ELSE archived_at END,
                 patient_ref = CASE WHEN $7 THEN $8 ELSE patient_ref END,
                 patient_tag = CASE WHEN $7 THEN $9 ELSE patient_tag END
             WHERE id = $1
             RETURNING *",
        )
        .bind(id(channel.0))
        .bind(patch.name)
        .bind(patch.description.is_some())
        .bind(patch.description.flatten())
        .bind(patch.archived_at.is_some())
        .bind(patch.archived_at.flatten())
        .bind(patch.patient.is_some())
        .bind(patient.as_ref().map(|p| &p.sealed[..]))
        .bind(patient.as_ref().map(|p| p.tag.as_str()))
        .fetch_optional(&mut *self.write.lock().await?)
        .await?;
        sql::channel(&row.ok_or(StoreError::NotFound)?)
    }

    async fn delete_channel(&self, channel: ChannelId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(id(channel.0))
            .execute(&mut *self.write.lock().await?)
            .await?;
        sql::found(done.rows_affected())
    }

    async fn get_member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(id(channel.0))
                .bind(id(user.0))
                .fetch_optional(&mut *self.read().await?)
                .await?;
        row.as_ref().map(sql::member).transpose()
    }

    async fn get_channel_member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<(Channel, Option<Member>)>, StoreError> {
        let row = sqlx::query(sql::CHANNEL_MEMBER)
            .bind(id(channel.0))
            .bind(id(user.0))
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::channel_member).transpose()
    }

    async fn list_members(&self, channel: ChannelId) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM channel_members WHERE channel_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(id(channel.0))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::member)
    }

    // ---- messages ----------------------------------------------------------

    async fn apply_batch(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let _host = self.audit_ride.host();
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        let mut outcomes = Vec::with_capacity(ops.len());
        // Each run of inserts is one multi-row statement per `INSERT_ROWS_MAX`
        // rows (each statement is a round trip to sqlx's SQLite thread).
        for run in sql::runs(ops) {
            match run {
                sql::Run::Inserts(messages) => {
                    for chunk in messages.chunks(INSERT_ROWS_MAX) {
                        let done = insert_messages(&mut tx, chunk).await?;
                        for (m, outcome) in chunk.iter().zip(&done) {
                            if !m.attachments.is_empty() && *outcome == WriteOutcome::Done {
                                files::link_files(&mut tx, m).await?;
                            }
                            if m.patient_ref.is_some() && *outcome == WriteOutcome::Done {
                                patients::set_message_ref(&mut tx, m).await?;
                            }
                            if *outcome == WriteOutcome::Done {
                                if let Some(tokens) = super::search::tokens(&m.search)? {
                                    search::insert_tokens(&mut tx, m.id, &tokens).await?;
                                }
                            }
                        }
                        outcomes.extend(done);
                    }
                }
                sql::Run::Others(others) => {
                    for op in others {
                        outcomes.push(apply_op(&mut tx, op).await?);
                    }
                }
            }
        }
        // The audit appends parked meanwhile commit with this batch.
        let carried = write_parked(&mut tx, self.audit_ride.take()).await;
        let committed = tx.commit().await.map_err(StoreError::from);
        if committed.is_ok() {
            let written = carried.iter().filter(|(_, outcome)| outcome.is_ok());
            self.audit_ride.count_carried(written.count());
        }
        finish_parked(&committed, carried);
        committed.map(|()| outcomes)
    }

    async fn last_seq(&self, channel: ChannelId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT max(c.purged_max_seq,
                        COALESCE((SELECT max(seq) FROM messages WHERE channel_id = $1), 0)) AS n
             FROM channels c WHERE c.id = $1",
        )
        .bind(id(channel.0))
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.map_or(Ok(0), |r| r.uint("n"))
    }

    async fn recent_client_ids(
        &self,
        channel: ChannelId,
        limit: u32,
    ) -> Result<Vec<ClientMsgRef>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (
                 SELECT id, seq, sender_id, client_msg_id, created_at FROM messages
                 WHERE channel_id = $1 AND client_msg_id IS NOT NULL
                 ORDER BY seq DESC LIMIT $2
             ) ORDER BY seq",
        )
        .bind(id(channel.0))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::client_ref)
    }

    async fn get_message(&self, message: MessageId) -> Result<Option<MessageRow>, StoreError> {
        let mut conn = self.read().await?;
        let row = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.id = $1",
        )
        .bind(id(message.0))
        .fetch_optional(&mut *conn)
        .await?;
        let mut rows: Vec<MessageRow> = row
            .as_ref()
            .map(sql::message_row)
            .transpose()?
            .into_iter()
            .collect();
        files::load_attachments(&mut conn, &mut rows).await?;
        notify::load_mentions(&mut conn, &mut rows).await?;
        Ok(rows.pop())
    }

    async fn messages_after(
        &self,
        channel: ChannelId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.channel_id = $1 AND m.seq > $2 AND m.deleted_at IS NULL
             ORDER BY m.seq LIMIT $3",
        )
        .bind(id(channel.0))
        .bind(bound(after))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&mut conn, &mut rows).await?;
        notify::load_mentions(&mut conn, &mut rows).await?;
        Ok(rows)
    }

    async fn messages_before(
        &self,
        channel: ChannelId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        // One row more than asked tells whether older ones exist.
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.channel_id = $1 AND m.seq < $2 AND m.deleted_at IS NULL
             ORDER BY m.seq DESC LIMIT $3",
        )
        .bind(id(channel.0))
        .bind(before.map_or(i64::MAX, bound))
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *conn)
        .await?;
        let (mut rows, more) = sql::page_before(&rows, limit)?;
        files::load_attachments(&mut conn, &mut rows).await?;
        notify::load_mentions(&mut conn, &mut rows).await?;
        Ok((rows, more))
    }

    async fn reaction_counts(
        &self,
        message: MessageId,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        reaction_counts(&mut *self.read().await?, message.0).await
    }

    async fn expired_messages(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM messages
             WHERE expires_at IS NOT NULL AND expires_at <= $1 AND deleted_at IS NULL
               AND NOT {HELD}
             ORDER BY expires_at LIMIT $2",
            HELD = super::holds::HELD
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::message)
    }

    async fn purge_deleted(&self, before: i64) -> Result<u64, StoreError> {
        self.purge(
            &format!("deleted_at < $1 AND NOT {}", super::holds::HELD),
            before,
        )
        .await
    }

    async fn purge_older_than(&self, before: i64) -> Result<u64, StoreError> {
        self.purge(
            &format!("created_at < $1 AND NOT {}", super::holds::HELD),
            before,
        )
        .await
    }

    async fn count_key_version(&self, version: u32) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM messages WHERE key_version = $1 AND length(ciphertext) > 0",
        )
        .bind(i64::from(version))
        .fetch_one(&mut *self.read().await?)
        .await?;
        row.uint("n")
    }

    async fn messages_not_on_key(
        &self,
        version: u32,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM messages WHERE key_version <> $1 AND length(ciphertext) > 0 LIMIT $2",
        )
        .bind(i64::from(version))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::message)
    }

    async fn store_reencrypted(&self, rows: &[Reencrypted]) -> Result<(), StoreError> {
        let mut conn = self.write.lock().await?;
        let mut tx = begin_write(&mut conn).await?;
        for row in rows {
            // A row already on the target version (edited meanwhile under the
            // new key) is left alone.
            let touched = sqlx::query(
                "UPDATE messages SET ciphertext = $2, nonce = $3, key_version = $4
                 WHERE id = $1 AND key_version <> $4",
            )
            .bind(id(row.id.0))
            .bind(&row.ciphertext[..])
            .bind(&row.nonce[..])
            .bind(i64::from(row.key_version))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Its tokens move to the new version with it.
            if touched > 0
                && sqlx::query(&super::search::reindexed("$1"))
                    .bind(id(row.id.0))
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some()
            {
                search::replace_tokens(&mut tx, row.id, &row.search).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- audit -------------------------------------------------------------

    async fn append_audit(&self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ride = &self.audit_ride;
        let mut ticket = ride.park(entries.to_vec());
        if let Next::Done(result) = ride.wait_for_host(&mut ticket).await {
            return result;
        }
        let mut conn = self.write.lock().await;
        let begun = match &mut conn {
            Ok(conn) => begin_write(conn).await,
            Err(e) => Err(e.clone()),
        };
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(e) if ride.unpark(&ticket) => return Err(e),
            // A batch took the entries while this waited for the connection.
            Err(_) => return ride.outcome(ticket).await,
        };
        let parked = ride.take();
        if !parked.is_empty() {
            let written = write_parked(&mut tx, parked).await;
            finish_parked(&tx.commit().await.map_err(StoreError::from), written);
        }
        // Empty: a batch took them while this waited; `tx` rolls back.
        ride.outcome(ticket).await
    }

    async fn audit_head(&self) -> Result<Option<AuditRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM audit_logs ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.read().await?)
            .await?;
        row.as_ref().map(sql::audit).transpose()
    }

    async fn audit_range(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_logs WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(bound(after))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::audit)
    }

    async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_logs
             WHERE ($1 IS NULL OR actor_id = $1)
               AND ($2 IS NULL OR action = $2)
               AND seq > $3 AND seq < $5
               AND timestamp >= $6 AND timestamp < $7
               AND ($8 IS NULL OR json_extract(details, '$.channelId') = $8)
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(filter.actor_id.map(|a| id(a.0)))
        .bind(filter.action)
        .bind(filter.after_seq.map_or(-1, bound))
        .bind(i64::from(filter.limit))
        .bind(filter.before_seq.map_or(i64::MAX, bound))
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(filter.channel_id.map(|c| c.to_string()))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::audit)
    }

    async fn insert_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, head_hash, time, key_id, signature)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_db(checkpoint.seq, "checkpoint seq")?)
        .bind(&checkpoint.head_hash)
        .bind(checkpoint.time)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::checkpoint)
    }

    async fn touch_session(&self, session: SessionId, now: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1")
            .bind(id(session.0))
            .bind(now)
            .execute(&mut *self.write.lock().await?)
            .await?;
        sql::found(done.rows_affected())
    }

    async fn set_message_flag(
        &self,
        message: MessageId,
        flag: Option<Flag>,
    ) -> Result<MessageRow, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET flagged_at = $2, flagged_by = $3, flag_reason = $4
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id(message.0))
        .bind(flag.as_ref().map(|f| f.at))
        .bind(flag.as_ref().map(|f| id(f.by.0)))
        .bind(flag.as_ref().map(|f| f.reason.clone()))
        .execute(&mut *self.write.lock().await?)
        .await?;
        sql::found(done.rows_affected())?;
        self.get_message(message).await?.ok_or(StoreError::NotFound)
    }

    async fn list_flagged(&self, limit: u32, offset: u32) -> Result<Vec<MessageRow>, StoreError> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.flagged_at IS NOT NULL AND m.deleted_at IS NULL
             ORDER BY m.flagged_at DESC, m.id
             LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&mut *conn)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&mut conn, &mut rows).await?;
        notify::load_mentions(&mut conn, &mut rows).await?;
        Ok(rows)
    }

    async fn list_channels_page(
        &self,
        search: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Channel>, StoreError> {
        let rows = sqlx::query(
            r#"SELECT * FROM channels
               WHERE $1 IS NULL OR lower(name) LIKE $1 ESCAPE '\'
               ORDER BY lower(name), id
               LIMIT $2 OFFSET $3"#,
        )
        .bind(search.map(sql::contains_pattern))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&mut *self.read().await?)
        .await?;
        sql::all(&rows, sql::channel)
    }

    async fn list_settings(&self) -> Result<Vec<Setting>, StoreError> {
        let rows = sqlx::query("SELECT * FROM settings ORDER BY key")
            .fetch_all(&mut *self.read().await?)
            .await?;
        sql::all(&rows, sql::setting)
    }

    async fn put_setting(&self, setting: Setting) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET
                 value = excluded.value, updated_at = excluded.updated_at,
                 updated_by = excluded.updated_by",
        )
        .bind(&setting.key)
        .bind(&setting.value)
        .bind(setting.updated_at)
        .bind(setting.updated_by.map(|u| id(u.0)))
        .execute(&mut *self.write.lock().await?)
        .await?;
        Ok(())
    }
}

/// Writes parked audit appends in `tx` and pairs each with its outcome;
/// [`finish_parked`] tells them after the commit. An append that fails
/// leaves the rest of the transaction as it was: one that is a single
/// statement because SQLite undoes a failed statement and nothing else,
/// a longer one because it goes in under a savepoint of its own (two round
/// trips more).
async fn write_parked(
    tx: &mut Transaction<'_, Sqlite>,
    parked: Vec<Parked>,
) -> Vec<(Parked, Result<(), StoreError>)> {
    let mut written = Vec::with_capacity(parked.len());
    for append in parked {
        let outcome = if append.entries.len() <= INSERT_ROWS_MAX {
            insert_audit(tx, &append.entries).await
        } else {
            async {
                let mut savepoint = tx.begin().await?;
                insert_audit(&mut savepoint, &append.entries).await?;
                savepoint.commit().await?;
                Ok(())
            }
            .await
        };
        written.push((append, outcome));
    }
    written
}

/// Answers the appends written by [`write_parked`] once their transaction
/// has committed, or failed to.
fn finish_parked(
    committed: &Result<(), StoreError>,
    written: Vec<(Parked, Result<(), StoreError>)>,
) {
    for (append, outcome) in written {
        append.finish(committed.clone().and(outcome));
    }
}

/// Appends entries that continue the chain at its stored head.
///
/// The head is not read first: the first statement checks it itself and
/// inserts nothing unless the chain is empty or its head is the entry
/// before the first (a round trip to sqlx's SQLite thread less). The head
/// is read only to say why an append was refused.
async fn insert_audit(
    conn: &mut SqliteConnection,
    entries: &[AuditRecord],
) -> Result<(), StoreError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    sql::check_audit_continuity(None, entries)?;
    // Multi-row statements: each statement is a round trip to sqlx's
    // SQLite thread. 9 parameters a row.
    for (i, chunk) in entries.chunks(INSERT_ROWS_MAX).enumerate() {
        let mut statement = String::from(
            "INSERT INTO audit_logs
                 (seq, timestamp, actor_id, ip, user_agent, action, details, prev_hash, hash)
             SELECT * FROM (VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                statement.push(',');
            }
            statement.push_str("(?,?,?,?,?,?,?,?,?)");
        }
        statement.push(')');
        let at_head = i == 0;
        if at_head {
            // NULL, so true, for an empty chain.
            statement.push_str(
                " WHERE coalesce((SELECT seq + 1 = ? AND hash = ? FROM audit_logs
                                  ORDER BY seq DESC LIMIT 1), 1)",
            );
        }
        let mut query = sqlx::query(&statement);
        for e in chunk {
            query = query
                .bind(to_db(e.seq, "audit seq")?)
                .bind(e.timestamp)
                .bind(e.actor_id.map(|a| id(a.0)))
                .bind(&e.ip)
                .bind(&e.user_agent)
                .bind(&e.action)
                .bind(sql::details_json(&e.details)?)
                .bind(&e.prev_hash)
                .bind(&e.hash);
        }
        if at_head {
            query = query
                .bind(to_db(first.seq, "audit seq")?)
                .bind(&first.prev_hash);
        }
        let done = query.execute(&mut *conn).await?;
        if at_head && done.rows_affected() == 0 {
            let head = sqlx::query(sql::AUDIT_CHAIN_HEAD)
                .fetch_optional(&mut *conn)
                .await?;
            sql::check_audit_continuity(sql::chain_head(head.as_ref())?, entries)?;
            return Err(StoreError::Conflict(format!(
                "audit entry {} does not continue the chain",
                first.seq
            )));
        }
    }
    Ok(())
}

/// Applies one op of a batch inside its transaction.
async fn apply_op(conn: &mut SqliteConnection, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    let touched = match op {
        WriteOp::InsertMessage(m) => return insert_message(conn, m).await,
        WriteOp::EditMessage {
            id: message,
            ciphertext,
            nonce,
            key_version,
            edited_at,
            search: index,
        } => {
            let touched = sqlx::query(
                "UPDATE messages SET ciphertext = $2, nonce = $3, key_version = $4, edited_at = $5
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id(message.0))
            .bind(&ciphertext[..])
            .bind(&nonce[..])
            .bind(i64::from(*key_version))
            .bind(edited_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if touched > 0 {
                let tokens = super::search::tokens(index)?.unwrap_or_default();
                search::replace_tokens(conn, *message, &tokens).await?;
            }
            touched
        }
        WriteOp::DeleteMessage {
            id: message,
            deleted_at,
        } => {
            let touched = sqlx::query(
                "UPDATE messages SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id(message.0))
            .bind(deleted_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            search::drop_tokens(conn, *message).await?;
            touched
        }
        WriteOp::MarkRead {
            channel_id,
            user_id,
            seq,
        } => sqlx::query(
            "UPDATE channel_members SET
                 last_read_seq = max(last_read_seq, $3),
                 last_delivered_seq = max(last_delivered_seq, $3)
             WHERE channel_id = $1 AND user_id = $2",
        )
        .bind(id(channel_id.0))
        .bind(id(user_id.0))
        .bind(to_db(*seq, "seq")?)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        WriteOp::MarkDelivered {
            channel_id,
            user_id,
            seq,
        } => sqlx::query(
            "UPDATE channel_members SET last_delivered_seq = max(last_delivered_seq, $3)
             WHERE channel_id = $1 AND user_id = $2",
        )
        .bind(id(channel_id.0))
        .bind(id(user_id.0))
        .bind(to_db(*seq, "seq")?)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        WriteOp::AddReaction {
            message_id,
            user_id,
            reaction,
            created_at,
        } => {
            if !reaction_target_exists(conn, message_id.0, user_id.0).await? {
                return Ok(WriteOutcome::NotFound);
            }
            sqlx::query(
                "INSERT INTO message_reactions (message_id, user_id, reaction, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(id(message_id.0))
            .bind(id(user_id.0))
            .bind(reaction)
            .bind(created_at)
            .execute(&mut *conn)
            .await?;
            return Ok(WriteOutcome::Reactions(
                reaction_counts(conn, message_id.0).await?,
            ));
        }
        WriteOp::RemoveReaction {
            message_id,
            user_id,
            reaction,
        } => {
            if !reaction_target_exists(conn, message_id.0, user_id.0).await? {
                return Ok(WriteOutcome::NotFound);
            }
            sqlx::query(
                "DELETE FROM message_reactions
                 WHERE message_id = $1 AND user_id = $2 AND reaction = $3",
            )
            .bind(id(message_id.0))
            .bind(id(user_id.0))
            .bind(reaction)
            .execute(&mut *conn)
            .await?;
            return Ok(WriteOutcome::Reactions(
                reaction_counts(conn, message_id.0).await?,
            ));
        }
        WriteOp::UpsertMember(member) => sqlx::query(
            "INSERT INTO channel_members
                 (channel_id, user_id, role, joined_at, last_read_seq, last_delivered_seq)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE EXISTS (SELECT 1 FROM channels WHERE id = $1)
               AND EXISTS (SELECT 1 FROM users WHERE id = $2)
             ON CONFLICT (channel_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(id(member.channel_id.0))
        .bind(id(member.user_id.0))
        .bind(member.role.as_str())
        .bind(member.joined_at)
        .bind(to_db(member.last_read_seq, "last_read_seq")?)
        .bind(to_db(member.last_delivered_seq, "last_delivered_seq")?)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        WriteOp::RemoveMember {
            channel_id,
            user_id,
        } => sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
            .bind(id(channel_id.0))
            .bind(id(user_id.0))
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        WriteOp::SetMentions { message_id, users } => {
            notify::set_mentions(conn, *message_id, users).await?
        }
    };
    Ok(sql::done_or_not_found(touched))
}

/// Inserts one message: `Done`; `Duplicate` when its client id is taken (a
/// tombstone then takes its seq); `NotFound` when the channel does not exist.
async fn insert_message(
    conn: &mut SqliteConnection,
    message: &StoredMessage,
) -> Result<WriteOutcome, StoreError> {
    if insert_row(conn, message).await? {
        return Ok(WriteOutcome::Done);
    }
    refused_insert(conn, message).await
}

/// What a message that did not go in resolves to: the original of its
/// client id (its own seq then gets a tombstone), or `NotFound`.
async fn refused_insert(
    conn: &mut SqliteConnection,
    message: &StoredMessage,
) -> Result<WriteOutcome, StoreError> {
    let Some(client) = &message.client_msg_id else {
        return Ok(WriteOutcome::NotFound);
    };
    let original = sqlx::query(
        "SELECT id, seq, sender_id, client_msg_id, created_at FROM messages
         WHERE channel_id = $1 AND sender_id = $2 AND client_msg_id = $3",
    )
    .bind(id(message.channel_id.0))
    .bind(id(message.sender_id.0))
    .bind(client)
    .fetch_optional(&mut *conn)
    .await?;
    match original {
        Some(row) => {
            insert_row(conn, &sql::tombstone(message)).await?;
            Ok(WriteOutcome::Duplicate(sql::client_ref(&row)?))
        }
        None => Ok(WriteOutcome::NotFound),
    }
}

/// Rows per multi-row insert: 14 parameters each, well under SQLite's
/// 32,766.
const INSERT_ROWS_MAX: usize = 256;

/// Inserts `messages` with one statement; a row whose client id is taken
/// resolves to the original (and its seq gets a tombstone), one whose
/// channel does not exist is `NotFound`.
async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[&StoredMessage],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut statement = String::with_capacity(400 + messages.len() * 48);
    statement.push_str(
        "INSERT INTO messages (id, channel_id, seq, sender_id, client_msg_id, ciphertext, nonce,
                               key_version, contains_phi, reply_to, created_at, edited_at,
                               expires_at, deleted_at)
         SELECT * FROM (VALUES ",
    );
    for i in 0..messages.len() {
        if i > 0 {
            statement.push(',');
        }
        statement.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    }
    // The WHERE also settles SQLite's parse of `ON CONFLICT` after a SELECT.
    statement.push_str(
        ") AS v WHERE EXISTS (SELECT 1 FROM channels WHERE id = v.column2)
         ON CONFLICT (channel_id, sender_id, client_msg_id) DO NOTHING",
    );
    let mut query = sqlx::query(&statement);
    for m in messages {
        query = query
            .bind(id(m.id.0))
            .bind(id(m.channel_id.0))
            .bind(to_db(m.seq, "seq")?)
            .bind(id(m.sender_id.0))
            .bind(&m.client_msg_id)
            .bind(&m.ciphertext[..])
            .bind(&m.nonce[..])
            .bind(i64::from(m.key_version))
            .bind(m.contains_phi)
            .bind(m.reply_to.map(|r| id(r.0)))
            .bind(m.created_at)
            .bind(m.edited_at)
            .bind(m.expires_at)
            .bind(m.deleted_at);
    }
    // Not `RETURNING`: sqlx hands each returned row from its SQLite thread
    // to this task one at a time, a scheduler round trip per row.
    let done = query.execute(&mut *conn).await?;
    if done.rows_affected() == messages.len() as u64 {
        return Ok(vec![WriteOutcome::Done; messages.len()]);
    }
    // Rare: a resend that reached the store, or a deleted channel. Which
    // rows went in is read back.
    let mut lookup = String::from("SELECT id FROM messages WHERE id IN (");
    for i in 0..messages.len() {
        lookup.push_str(if i == 0 { "?" } else { ",?" });
    }
    lookup.push(')');
    let mut query = sqlx::query(&lookup);
    for m in messages {
        query = query.bind(id(m.id.0));
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut inserted = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        inserted.insert(row.uuid("id")?);
    }
    let mut outcomes = Vec::with_capacity(messages.len());
    for m in messages {
        if inserted.contains(&m.id.0) {
            outcomes.push(WriteOutcome::Done);
        } else {
            // Rare: a resend that reached the store, or a deleted channel.
            outcomes.push(refused_insert(conn, m).await?);
        }
    }
    Ok(outcomes)
}

/// Inserts a message row unless its client id is taken or its channel does
/// not exist; returns whether it went in.
async fn insert_row(conn: &mut SqliteConnection, m: &StoredMessage) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO messages (id, channel_id, seq, sender_id, client_msg_id, ciphertext, nonce,
                               key_version, contains_phi, reply_to, created_at, edited_at,
                               expires_at, deleted_at)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
         WHERE EXISTS (SELECT 1 FROM channels WHERE id = $2)
         ON CONFLICT (channel_id, sender_id, client_msg_id) DO NOTHING",
    )
    .bind(id(m.id.0))
    .bind(id(m.channel_id.0))
    .bind(to_db(m.seq, "seq")?)
    .bind(id(m.sender_id.0))
    .bind(&m.client_msg_id)
    .bind(&m.ciphertext[..])
    .bind(&m.nonce[..])
    .bind(i64::from(m.key_version))
    .bind(m.contains_phi)
    .bind(m.reply_to.map(|r| id(r.0)))
    .bind(m.created_at)
    .bind(m.edited_at)
    .bind(m.expires_at)
    .bind(m.deleted_at)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Whether the message exists undeleted and the user exists.
async fn reaction_target_exists(
    conn: &mut SqliteConnection,
    message: Uuid,
    user: Uuid,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND deleted_at IS NULL)
            AND EXISTS (SELECT 1 FROM users WHERE id = $2) AS ok",
    )
    .bind(id(message))
    .bind(id(user))
    .fetch_one(&mut *conn)
    .await?;
    row.flag("ok")
}

async fn reaction_counts(
    conn: &mut SqliteConnection,
    message: Uuid,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let rows = sqlx::query(
        "SELECT reaction, count(*) AS n FROM message_reactions
         WHERE message_id = $1 GROUP BY reaction",
    )
    .bind(id(message))
    .fetch_all(&mut *conn)
    .await?;
    sql::reaction_counts(&rows)
}
