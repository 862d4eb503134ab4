//! PostgreSQL backend: the production store.
//!
//! A [`PgPool`] sized by the `db_*` settings ([`PoolSettings`]; by default
//! 16 connections with a 3 s acquire timeout, so that an outage or an
//! exhausted pool surfaces quickly as [`StoreError::Unavailable`] instead of
//! hanging the caller); `synchronous_commit` is forced on, so an acknowledged batch is
//! on disk. Migrations come from `migrations/postgres`, embedded at build time.
//! TLS is the URL's: `sslmode` and `sslrootcert` as libpq reads them (see
//! [`TlsAsked`]), over rustls; a connection that fails for TLS's sake is
//! [`StoreError::Tls`], naming the cause.
//!
//! [`Store::apply_batch`] runs one transaction per batch. Consecutive message
//! inserts, the bulk of every batch under load, go to the database as one
//! `INSERT ... SELECT FROM UNNEST(...)` statement that locks each channel
//! once (the per-row foreign key check was dropped for it, migration 0002);
//! other ops are one small statement each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, SessionId, UserId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions, PgSslMode,
};
use sqlx::Row;
use uuid::Uuid;

#[path = "postgres_break_glass.rs"]
mod break_glass;
#[path = "postgres_disclosures.rs"]
mod disclosures;
#[path = "postgres_export.rs"]
mod export;
#[path = "postgres_files.rs"]
mod files;
#[path = "postgres_holds.rs"]
mod holds;
#[path = "postgres_notify.rs"]
mod notify;
#[path = "postgres_password_reset.rs"]
mod password_reset;
#[path = "postgres_patients.rs"]
mod patients;
#[path = "postgres_search.rs"]
mod search;
#[path = "postgres_totp.rs"]
mod totp;

use super::sql::{self, bound, to_db, SqlRow};
use super::{
    AuditFilter, AuditRecord, Channel, ChannelPatch, Checkpoint, ClientMsgRef, Flag, Member,
    MessageRow, NewUser, PoolSettings, PoolStats, Reencrypted, RefreshOutcome, Role, Session,
    Setting, Store, StoreError, StoredMessage, Turn, User, UserPatch, WriteOp, WriteOutcome,
    WriterLock,
};
use crate::audit::chain::{self, ChainHead};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// The advisory-lock key of the writer lock ("Courier!").
const WRITER_LOCK_KEY: i64 = 0x436f_7572_6965_7221;

/// The advisory-lock key of the write fence ("Courier/" as an integer
/// literal, so that [`BEGIN_FENCED`] can spell it too).
macro_rules! write_fence_key {
    () => {
        4_859_231_657_211_032_111
    };
}

/// The write fence: every message batch and audit append holds it shared
/// for its whole transaction, and a new writer takes it exclusively once, so
/// it starts only after every transaction of the broker before it has
/// committed or rolled back.
const WRITE_FENCE_KEY: i64 = write_fence_key!();

/// Begins a transaction that builds on the heads (message `seq`s, the audit
/// chain): `BEGIN` and the shared hold on the write fence in one round trip.
const BEGIN_FENCED: &str = concat!(
    "BEGIN; SELECT pg_advisory_xact_lock_shared(",
    write_fence_key!(),
    ")"
);

/// The advisory-lock key that orders the cluster's audit appends
/// ("Courier#").
const AUDIT_APPEND_KEY: i64 = 0x436f_7572_6965_7223;

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The pool's size (`db_max_connections`).
    max_connections: u32,
}

impl PgStore {
    /// Connects to `url` (`postgres://...`) with the default pool and runs
    /// pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PoolSettings::default()).await
    }

    /// Connects to `url` with the pool `pool` asks for and runs pending
    /// migrations. `sslmode` and `sslrootcert` in the URL are honoured
    /// ([`TlsAsked`]).
    pub async fn connect_with(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let sizes = pool.resolve("postgres");
        let options = PgConnectOptions::from_str(url)?;
        let tls = TlsAsked::of(url, &options);
        tls.check_root_cert().await?;
        let options = options
            .ssl_mode(tls.effective_mode())
            .application_name("courier")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(sizes.max_connections)
            .min_connections(sizes.min_connections)
            .acquire_timeout(sizes.acquire_timeout)
            .idle_timeout(sizes.idle_timeout)
            .connect_with(options)
            .await
            .map_err(|e| tls.explain(e))?;
        let store = PgStore {
            pool,
            max_connections: sizes.max_connections,
        };
        store.migrate().await?;
        Ok(store)
    }
}

/// The TLS a database URL asks for, as libpq reads it: `sslmode`
/// (`disable`, `allow`, `prefer` (the default), `require`, `verify-ca`,
/// `verify-full`) and `sslrootcert` (a PEM file of the CAs to trust; also
/// `PGSSLROOTCERT`). Kept beside the connect options to name the cause when
/// a connection fails for TLS's sake.
#[derive(Debug)]
struct TlsAsked {
    /// `sslmode` as written.
    mode: PgSslMode,
    /// `sslrootcert` as written.
    root_cert: Option<String>,
    /// The host the certificate must name under `verify-full`.
    host: String,
}

impl TlsAsked {
    fn of(url: &str, options: &PgConnectOptions) -> Self {
        // sqlx reads these keys, the last one written winning.
        let root_cert = url::Url::parse(url)
            .ok()
            .and_then(|url| {
                url.query_pairs()
                    .filter(|(key, _)| matches!(&**key, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
                    .map(|(_, value)| value.into_owned())
                    .last()
            })
            .or_else(|| std::env::var("PGSSLROOTCERT").ok());
        TlsAsked {
            mode: options.get_ssl_mode(),
            root_cert,
            host: options.get_host().to_owned(),
        }
    }

    /// The mode to connect with: as libpq does, `require` with a root
    /// certificate checks the server's chain against it (`verify-ca`).
    fn effective_mode(&self) -> PgSslMode {
        match (self.mode, &self.root_cert) {
            (PgSslMode::Require, Some(_)) => PgSslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// `sslmode` as it is spelled in a URL.
    fn mode_name(&self) -> &'static str {
        match self.mode {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    /// The `sslrootcert` file, when the mode verifies certificates with it
    /// (an inline PEM is not a file).
    fn root_cert_file(&self) -> Option<&str> {
        let verifies = matches!(
            self.effective_mode(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull
        );
        self.root_cert
            .as_deref()
            .filter(|cert| verifies && !cert.trim_start().starts_with("-----BEGIN"))
    }

    /// Before connecting: a `sslrootcert` that cannot be read or holds no
    /// certificate would otherwise surface as a bare i/o error.
    async fn check_root_cert(&self) -> Result<(), StoreError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let Some(path) = self.root_cert_file() else {
            return Ok(());
        };
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| StoreError::Tls(format!("cannot read sslrootcert={path}: {e}")))?;
        let mut certs = CertificateDer::pem_slice_iter(&pem).peekable();
        if certs.peek().is_none() || certs.any(|cert| cert.is_err()) {
            return Err(StoreError::Tls(format!(
                "sslrootcert={path} holds no valid PEM certificate"
            )));
        }
        Ok(())
    }

    /// A failed connect's error: [`StoreError::Tls`] naming the cause when
    /// TLS failed, the usual mapping otherwise.
    fn explain(&self, e: sqlx::Error) -> StoreError {
        let mode = self.mode_name();
        match &e {
            // sqlx's words when the server answers the TLS request with 'N'.
            sqlx::Error::Tls(why) if why.to_string().contains("does not support TLS") => {
                StoreError::Tls(format!(
                    "the server does not support TLS but sslmode={mode}"
                ))
            }
            sqlx::Error::Tls(why) => StoreError::Tls(format!("sslmode={mode}: {why}")),
            // The handshake's own errors come back through the socket.
            sqlx::Error::Io(io) => match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => StoreError::Tls(self.handshake_failure(tls)),
                None => e.into(),
            },
            _ => e.into(),
        }
    }

    fn handshake_failure(&self, e: &rustls::Error) -> String {
        use rustls::CertificateError as Cert;
        let mode = self.mode_name();
        let rustls::Error::InvalidCertificate(cert) = e else {
            return format!("the TLS handshake failed (sslmode={mode}): {e}");
        };
        match (cert, &self.root_cert) {
            (Cert::UnknownIssuer, Some(root)) => format!(
                "the server's certificate is not trusted by sslrootcert={root}: \
                 no CA there issued it (sslmode={mode})"
            ),
            (Cert::UnknownIssuer, None) => format!(
                "the server's certificate is not issued by a trusted CA (sslmode={mode}); \
                 name its CA with sslrootcert=<PEM file>"
            ),
            (Cert::NotValidForName | Cert::NotValidForNameContext { .. }, _) => format!(
                "the server's certificate is not issued for the host {} (sslmode={mode}): {e}",
                self.host
            ),
            _ => format!("the server's certificate is refused (sslmode={mode}): {e}"),
        }
    }
}

/// Waits, up to `deadline`, until no transaction holds the write fence: a
/// broker that died (or lost its writer lock) with a commit under way
/// releases its writer lock as soon as its lock session sees the socket
/// close, but that commit may become visible later, on another session.
/// Reading a head before it would reuse its `seq`s and fork the audit chain.
async fn wait_for_predecessors(
    conn: &mut sqlx::PgConnection,
    deadline: tokio::time::Instant,
) -> Result<(), StoreError> {
    loop {
        let fenced: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(WRITE_FENCE_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if fenced {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(WRITE_FENCE_KEY)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(
                "a previous broker's write transaction is still open".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sorts a PostgreSQL error by SQLSTATE. Messages name constraints, never values.
pub(super) fn classify(e: &PgDatabaseError) -> StoreError {
    let code = e.code();
    match code {
        "23505" => StoreError::Conflict(e.constraint().unwrap_or("unique constraint").to_owned()),
        // A reference to a row that does not exist (every delete cascades).
        "23503" => StoreError::NotFound,
        // connection exceptions, shutdowns, too many connections, and the
        // transaction conflicts that a retry resolves
        _ if code.starts_with("08") => StoreError::Unavailable(e.message().to_owned()),
        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" => {
            StoreError::Unavailable(format!("{code}: {}", e.message()))
        }
        // "database is not currently accepting connections" (a database
        // closed to new connections, or one being started or dropped)
        "55000" if e.message().contains("accepting connections") => {
            StoreError::Unavailable(format!("{code}: {}", e.message()))
        }
        "XX001" | "XX002" => StoreError::Corrupt(e.message().to_owned()),
        _ => StoreError::Database(format!("{code}: {}", e.message())),
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// A quarter of the pool (at least one): reads, the audit actor and
    /// REST keep the rest.
    fn write_parallelism(&self) -> usize {
        (self.max_connections / 4).max(1) as usize
    }

    /// 512: past it, full batches commit side by side
    /// ([`write_parallelism`](Store::write_parallelism)); 4,096-row batches
    /// measured no better here (`benches/README.md`).
    fn batch_max(&self) -> usize {
        512
    }

    /// Yes: the commits are the server's, so the sooner a reply is taken
    /// the sooner the next batch goes.
    fn writes_from_store_thread(&self) -> bool {
        true
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// sqlx's own counts: open connections, of which idle.
    fn pool_stats(&self) -> PoolStats {
        let open = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle())
            .unwrap_or(open)
            .min(open);
        PoolStats {
            max: self.max_connections,
            in_use: open - idle,
            idle,
        }
    }

    async fn lock_writer(&self, wait: Duration) -> Result<WriterLock, StoreError> {
        // A session-level advisory lock (scoped to this database) on a
        // connection of its own, out of the pool: it is released when that
        // session ends, whether the broker stops or dies.
        let mut conn = self.pool.acquire().await?.detach();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(WRITER_LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if held {
                wait_for_predecessors(&mut conn, deadline).await?;
                return Ok(WriterLock::holding(conn));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "another Courier broker is writing to this database \
                     (its writer lock is held)"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
        .bind(user.id.0)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .fetch_one(&self.pool)
        .await?;
        sql::user(&row)
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::user).transpose()
    }

    async fn get_user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query("SELECT * FROM users WHERE lower(username) = lower($1)")
            .bind(username)
            .fetch_optional(&self.pool)
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
            r#"SELECT * FROM users
               WHERE $1::text IS NULL
                  OR lower(username) LIKE $1 ESCAPE '\'
                  OR lower(email) LIKE $1 ESCAPE '\'
               ORDER BY lower(username) COLLATE "C"
               LIMIT $2 OFFSET $3"#,
        )
        .bind(search.map(sql::contains_pattern))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::user)
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT count(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        row.uint("n")
    }

    async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, StoreError> {
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
        .bind(id.0)
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
        .fetch_optional(&self.pool)
        .await?;
        sql::user(&row.ok_or(StoreError::NotFound)?)
    }

    async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        sql::found(done.rows_affected())
    }

    async fn record_login_failure(
        &self,
        id: UserId,
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
        .bind(id.0)
        .bind(i64::from(threshold))
        .bind(lock_until)
        .fetch_optional(&self.pool)
        .await?;
        sql::user(&row.ok_or(StoreError::NotFound)?)
    }

    async fn record_login_success(&self, id: UserId) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
                .bind(id.0)
                .execute(&self.pool)
                .await?;
        sql::found(done.rows_affected())
    }

    async fn role_permissions(&self, role: Role) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT permission FROM role_permissions WHERE role = $1 ORDER BY permission",
        )
        .bind(role.as_str())
        .fetch_all(&self.pool)
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
        .bind(session.id.0)
        .bind(session.user_id.0)
        .bind(&session.token_hash)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(&session.ip)
        .bind(&session.user_agent)
        .bind(session.valid)
        .bind(session.kind.as_str())
        .bind(session.last_seen_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_session(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::session).transpose()
    }

    async fn get_session_user(&self, id: SessionId) -> Result<Option<(Session, User)>, StoreError> {
        let row = sqlx::query(sql::SESSION_USER)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::session_user).transpose()
    }

    async fn list_sessions(&self, user: UserId) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sessions WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user.0)
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The row lock taken by this UPDATE makes a concurrent presentation of
        // the same token wait, then find it retired: it counts as reuse.
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
            .bind(session.id.0)
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
                    session_id: SessionId(row.try_get("id")?),
                    user_id: UserId(row.try_get("user_id")?),
                },
                None => RefreshOutcome::Unknown,
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_session(&self, id: SessionId) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE sessions SET valid = FALSE WHERE id = $1 AND valid")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_user_sessions(&self, user: UserId) -> Result<Vec<SessionId>, StoreError> {
        let rows = sqlx::query(
            "UPDATE sessions SET valid = FALSE WHERE user_id = $1 AND valid RETURNING id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, |r| Ok(SessionId(r.uuid("id")?)))
    }

    // ---- channels and members ----------------------------------------------

    async fn create_channel(&self, channel: Channel, owner: Member) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO channels (id, name, description, kind, created_by, created_at, direct_key,
                                   patient_ref, patient_tag)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(channel.id.0)
        .bind(&channel.name)
        .bind(&channel.description)
        .bind(channel.kind.as_str())
        .bind(channel.created_by.0)
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
        .bind(channel.id.0)
        .bind(owner.user_id.0)
        .bind(owner.role.as_str())
        .bind(owner.joined_at)
        .bind(to_db(owner.last_read_seq, "last_read_seq")?)
        .bind(to_db(owner.last_delivered_seq, "last_delivered_seq")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_channel(&self, id: ChannelId) -> Result<Option<Channel>, StoreError> {
        let row = sqlx::query("SELECT * FROM channels WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::channel).transpose()
    }

    async fn find_direct(&self, direct_key: &str) -> Result<Option<Channel>, StoreError> {
        let row = sqlx::query("SELECT * FROM channels WHERE direct_key = $1")
            .bind(direct_key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::channel).transpose()
    }

    async fn list_channels_for(&self, user: UserId) -> Result<Vec<Channel>, StoreError> {
        let rows = sqlx::query(
            r#"SELECT c.* FROM channels c
               WHERE c.kind IN ('public', 'broadcast')
                  OR EXISTS (SELECT 1 FROM channel_members m
                             WHERE m.channel_id = c.id AND m.user_id = $1)
               ORDER BY lower(c.name) COLLATE "C", c.id"#,
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::channel)
    }

    async fn list_all_channels(&self) -> Result<Vec<Channel>, StoreError> {
        let rows = sqlx::query(r#"SELECT * FROM channels ORDER BY lower(name) COLLATE "C", id"#)
            .fetch_all(&self.pool)
            .await?;
        sql::all(&rows, sql::channel)
    }

    async fn update_channel(
        &self,
        id: ChannelId,
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
        .bind(id.0)
        .bind(patch.name)
        .bind(patch.description.is_some())
        .bind(patch.description.flatten())
        .bind(patch.archived_at.is_some())
        .bind(patch.archived_at.flatten())
        .bind(patch.patient.is_some())
        .bind(patient.as_ref().map(|p| &p.sealed[..]))
        .bind(patient.as_ref().map(|p| p.tag.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        sql::channel(&row.ok_or(StoreError::NotFound)?)
    }

    async fn delete_channel(&self, id: ChannelId) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
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
                .bind(channel.0)
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(sql::member).transpose()
    }

    async fn get_channel_member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<(Channel, Option<Member>)>, StoreError> {
        let row = sqlx::query(sql::CHANNEL_MEMBER)
            .bind(channel.0)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::channel_member).transpose()
    }

    async fn list_members(&self, channel: ChannelId) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM channel_members WHERE channel_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(channel.0)
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::member)
    }

    // ---- messages ----------------------------------------------------------

    async fn apply_batch(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.apply_batch_in_turn(ops, &mut Turn::now()).await
    }

    /// The statements run at once; only the commit waits for its turn.
    async fn apply_batch_in_turn(
        &self,
        ops: &[WriteOp],
        turn: &mut Turn,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with(BEGIN_FENCED).await?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for run in sql::runs(ops) {
            match run {
                sql::Run::Inserts(messages) => {
                    let done = insert_messages(&mut tx, &messages).await?;
                    let mut indexed = Vec::new();
                    for (m, outcome) in messages.iter().zip(&done) {
                        if !m.attachments.is_empty() && *outcome == WriteOutcome::Done {
                            files::link_files(&mut tx, m).await?;
                        }
                        if m.patient_ref.is_some() && *outcome == WriteOutcome::Done {
                            patients::set_message_ref(&mut tx, m).await?;
                        }
                        if *outcome == WriteOutcome::Done {
                            if let Some(tokens) = super::search::tokens(&m.search)? {
                                indexed.push((m.id, tokens));
                            }
                        }
                    }
                    let indexed: Vec<_> = indexed.iter().map(|(id, t)| (*id, &**t)).collect();
                    search::insert_tokens(&mut tx, &indexed).await?;
                    outcomes.extend(done);
                }
                sql::Run::Others(others) => {
                    for op in others {
                        outcomes.push(apply_op(&mut tx, op).await?);
                    }
                }
            }
        }
        turn.wait().await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn last_seq(&self, channel: ChannelId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT GREATEST(c.purged_max_seq,
                             COALESCE((SELECT max(seq) FROM messages WHERE channel_id = $1), 0)) AS n
             FROM channels c WHERE c.id = $1",
        )
        .bind(channel.0)
        .fetch_optional(&self.pool)
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
             ) AS recent ORDER BY seq",
        )
        .bind(channel.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::client_ref)
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<MessageRow>, StoreError> {
        let row = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        let mut rows: Vec<MessageRow> = row
            .as_ref()
            .map(sql::message_row)
            .transpose()?
            .into_iter()
            .collect();
        files::load_attachments(&self.pool, &mut rows).await?;
        notify::load_mentions(&self.pool, &mut rows).await?;
        Ok(rows.pop())
    }

    async fn messages_after(
        &self,
        channel: ChannelId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.channel_id = $1 AND m.seq > $2 AND m.deleted_at IS NULL
             ORDER BY m.seq LIMIT $3",
        )
        .bind(channel.0)
        .bind(bound(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&self.pool, &mut rows).await?;
        notify::load_mentions(&self.pool, &mut rows).await?;
        Ok(rows)
    }

    async fn messages_before(
        &self,
        channel: ChannelId,
        before: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<MessageRow>, bool), StoreError> {
        // One row more than asked tells whether older ones exist.
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.channel_id = $1 AND m.seq < $2 AND m.deleted_at IS NULL
             ORDER BY m.seq DESC LIMIT $3",
        )
        .bind(channel.0)
        .bind(before.map_or(i64::MAX, bound))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let (mut rows, more) = sql::page_before(&rows, limit)?;
        files::load_attachments(&self.pool, &mut rows).await?;
        notify::load_mentions(&self.pool, &mut rows).await?;
        Ok((rows, more))
    }

    async fn reaction_counts(
        &self,
        message: MessageId,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        reaction_counts(&mut *self.pool.acquire().await?, message.0).await
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
        .fetch_all(&self.pool)
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
        .fetch_one(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::message)
    }

    async fn store_reencrypted(&self, rows: &[Reencrypted]) -> Result<(), StoreError> {
        // One statement is one transaction. A row already on the target
        // version (edited meanwhile under the new key) is left alone.
        // The rows moved take their search tokens with them, in the same
        // transaction.
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE messages AS m
             SET ciphertext = r.ciphertext, nonce = r.nonce, key_version = r.key_version
             FROM UNNEST($1::uuid[], $2::bytea[], $3::bytea[], $4::int8[])
                  AS r(id, ciphertext, nonce, key_version)
             WHERE m.id = r.id AND m.key_version <> r.key_version
             RETURNING m.id",
        )
        .bind(column(rows, |r| r.id.0))
        .bind(column(rows, |r| &r.ciphertext[..]))
        .bind(column(rows, |r| &r.nonce[..]))
        .bind(column(rows, |r| i64::from(r.key_version)))
        .fetch_all(&mut *tx)
        .await?;
        let moved: Vec<Uuid> = moved
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let moved: HashSet<Uuid> =
            sqlx::query(&super::search::reindexed("SELECT unnest($1::uuid[])"))
                .bind(moved)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<_, _>>()?;
        let moved: Vec<&Reencrypted> = rows.iter().filter(|r| moved.contains(&r.id.0)).collect();
        sqlx::query("DELETE FROM message_search_tokens WHERE message_id = ANY($1::uuid[])")
            .bind(column(&moved, |r| r.id.0))
            .execute(&mut *tx)
            .await?;
        let indexed: Vec<_> = moved.iter().map(|r| (r.id, &r.search)).collect();
        search::insert_tokens(&mut tx, &indexed).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- audit -------------------------------------------------------------

    async fn append_audit(&self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(BEGIN_FENCED).await?;
        let head = sqlx::query(sql::AUDIT_CHAIN_HEAD)
            .fetch_optional(&mut *tx)
            .await?;
        sql::check_audit_continuity(sql::chain_head(head.as_ref())?, entries)?;
        insert_audit(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One writer at a time for the whole cluster: the transaction takes an
    /// exclusive advisory lock before it reads the head, so appends of
    /// several nodes queue in the database and each links after the last.
    async fn append_audit_linked(&self, entries: &mut [AuditRecord]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with(BEGIN_FENCED).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_APPEND_KEY)
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query(sql::AUDIT_CHAIN_HEAD)
            .fetch_optional(&mut *tx)
            .await?;
        let stored = match sql::chain_head(head.as_ref())? {
            Some((seq, hash)) => ChainHead { seq, hash },
            None => ChainHead::genesis(),
        };
        if entries[0].seq != stored.seq + 1 || entries[0].prev_hash != stored.hash {
            chain::rechain(&stored, entries);
        }
        insert_audit(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_head(&self) -> Result<Option<AuditRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM audit_logs ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(sql::audit).transpose()
    }

    async fn audit_range(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_logs WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(bound(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        sql::all(&rows, sql::audit)
    }

    async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM audit_logs
             WHERE ($1::uuid IS NULL OR actor_id = $1)
               AND ($2::text IS NULL OR action = $2)
               AND seq > $3 AND seq < $5
               AND timestamp >= $6 AND timestamp < $7
               AND ($8::text IS NULL OR (details::jsonb ->> 'channelId') = $8)
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(filter.actor_id.map(|a| a.0))
        .bind(filter.action)
        .bind(filter.after_seq.map_or(-1, bound))
        .bind(i64::from(filter.limit))
        .bind(filter.before_seq.map_or(i64::MAX, bound))
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(filter.channel_id.map(|c| c.to_string()))
        .fetch_all(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        sql::all(&rows, sql::checkpoint)
    }

    async fn touch_session(&self, session: SessionId, now: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1")
            .bind(session.0)
            .bind(now)
            .execute(&self.pool)
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
        .bind(message.0)
        .bind(flag.as_ref().map(|f| f.at))
        .bind(flag.as_ref().map(|f| f.by.0))
        .bind(flag.as_ref().map(|f| f.reason.clone()))
        .execute(&self.pool)
        .await?;
        sql::found(done.rows_affected())?;
        self.get_message(message).await?.ok_or(StoreError::NotFound)
    }

    async fn list_flagged(&self, limit: u32, offset: u32) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.*, u.username AS sender_username
             FROM messages m LEFT JOIN users u ON u.id = m.sender_id
             WHERE m.flagged_at IS NOT NULL AND m.deleted_at IS NULL
             ORDER BY m.flagged_at DESC, m.id
             LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        let mut rows = sql::all(&rows, sql::message_row)?;
        files::load_attachments(&self.pool, &mut rows).await?;
        notify::load_mentions(&self.pool, &mut rows).await?;
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
               WHERE $1::text IS NULL OR lower(name) LIKE $1 ESCAPE '\'
               ORDER BY lower(name) COLLATE "C", id
               LIMIT $2 OFFSET $3"#,
        )
        .bind(search.map(sql::contains_pattern))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        sql::all(&rows, sql::channel)
    }

    async fn list_settings(&self) -> Result<Vec<Setting>, StoreError> {
        let rows = sqlx::query("SELECT * FROM settings ORDER BY key")
            .fetch_all(&self.pool)
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
        .bind(setting.updated_by.map(|u| u.0))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl PgStore {
    /// Physically removes the messages matching `predicate` (on `$1`), first
    /// raising each channel's `purged_max_seq` so its last seq never goes back.
    async fn purge(&self, predicate: &str, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "UPDATE channels c SET purged_max_seq = GREATEST(c.purged_max_seq, p.top)
             FROM (SELECT channel_id, max(seq) AS top FROM messages
                   WHERE {predicate} GROUP BY channel_id) AS p
             WHERE c.id = p.channel_id"
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

/// One array parameter: `f` of every item.
fn column<'a, T, U>(items: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    items.iter().map(f).collect()
}

/// Inserts `messages` (in order) with one statement and returns one outcome
/// per message: `Done`, `Duplicate` (a tombstone then takes the seq), or
/// `NotFound` when the channel does not exist.
async fn insert_messages(
    conn: &mut PgConnection,
    messages: &[&StoredMessage],
) -> Result<Vec<WriteOutcome>, StoreError> {
    let inserted = insert_rows(conn, messages).await?;
    if inserted.len() == messages.len() {
        return Ok(vec![WriteOutcome::Done; messages.len()]);
    }
    let refused: Vec<&StoredMessage> = messages
        .iter()
        .copied()
        .filter(|m| !inserted.contains(&m.id.0))
        .collect();
    let originals = originals(conn, &refused).await?;
    let mut tombstones = Vec::new();
    let outcomes = messages
        .iter()
        .map(|m| {
            if inserted.contains(&m.id.0) {
                return WriteOutcome::Done;
            }
            let key = |client: &String| (m.channel_id.0, m.sender_id.0, client.clone());
            match m
                .client_msg_id
                .as_ref()
                .and_then(|c| originals.get(&key(c)))
            {
                Some(original) => {
                    tombstones.push(sql::tombstone(m));
                    WriteOutcome::Duplicate(original.clone())
                }
                None => WriteOutcome::NotFound,
            }
        })
        .collect();
    if !tombstones.is_empty() {
        insert_rows(conn, &tombstones.iter().collect::<Vec<_>>()).await?;
    }
    Ok(outcomes)
}

/// One multi-row insert; returns the ids that went in. Rows whose client id
/// is taken, or whose channel does not exist, are skipped.
async fn insert_rows(
    conn: &mut PgConnection,
    messages: &[&StoredMessage],
) -> Result<HashSet<Uuid>, StoreError> {
    let seq: Vec<i64> = messages
        .iter()
        .map(|m| to_db(m.seq, "seq"))
        .collect::<Result<_, _>>()?;
    // `ORDER BY ord` keeps the batch order, so that of two rows with one
    // client id the first is the original.
    // The channels are locked once each (`FOR KEY SHARE`, what a foreign
    // key would take per row): a channel deleted meanwhile waits for this
    // transaction, whose rows its delete then cascades to (migration 0002).
    let rows = sqlx::query(
        "WITH locked AS (
             SELECT id FROM channels WHERE id = ANY($2::uuid[]) FOR KEY SHARE
         )
         INSERT INTO messages (id, channel_id, seq, sender_id, client_msg_id, ciphertext, nonce,
                               key_version, contains_phi, reply_to, created_at, edited_at,
                               expires_at, deleted_at)
         SELECT u.id, u.channel_id, u.seq, u.sender_id, u.client_msg_id, u.ciphertext, u.nonce,
                u.key_version, u.contains_phi, u.reply_to, u.created_at, u.edited_at,
                u.expires_at, u.deleted_at
         FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::bytea[],
                     $7::bytea[], $8::int8[], $9::bool[], $10::uuid[], $11::int8[], $12::int8[],
                     $13::int8[], $14::int8[])
              WITH ORDINALITY AS u(id, channel_id, seq, sender_id, client_msg_id, ciphertext,
                                   nonce, key_version, contains_phi, reply_to, created_at,
                                   edited_at, expires_at, deleted_at, ord)
         WHERE u.channel_id IN (SELECT id FROM locked)
         ORDER BY u.ord
         ON CONFLICT (channel_id, sender_id, client_msg_id) DO NOTHING
         RETURNING id",
    )
    .bind(column(messages, |m| m.id.0))
    .bind(column(messages, |m| m.channel_id.0))
    .bind(seq)
    .bind(column(messages, |m| m.sender_id.0))
    .bind(column(messages, |m| m.client_msg_id.as_deref()))
    .bind(column(messages, |m| &m.ciphertext[..]))
    .bind(column(messages, |m| &m.nonce[..]))
    .bind(column(messages, |m| i64::from(m.key_version)))
    .bind(column(messages, |m| m.contains_phi))
    .bind(column(messages, |m| m.reply_to.map(|r| r.0)))
    .bind(column(messages, |m| m.created_at))
    .bind(column(messages, |m| m.edited_at))
    .bind(column(messages, |m| m.expires_at))
    .bind(column(messages, |m| m.deleted_at))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

/// The stored originals of `messages`' client ids, keyed by
/// `(channel, sender, client id)`.
async fn originals(
    conn: &mut PgConnection,
    messages: &[&StoredMessage],
) -> Result<HashMap<(Uuid, Uuid, String), ClientMsgRef>, StoreError> {
    let keyed: Vec<(&StoredMessage, &str)> = messages
        .iter()
        .filter_map(|m| Some((*m, m.client_msg_id.as_deref()?)))
        .collect();
    if keyed.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT m.id, m.seq, m.channel_id, m.sender_id, m.client_msg_id, m.created_at
         FROM messages m
         JOIN UNNEST($1::uuid[], $2::uuid[], $3::text[]) AS k(channel_id, sender_id, client_msg_id)
           ON m.channel_id = k.channel_id AND m.sender_id = k.sender_id
          AND m.client_msg_id = k.client_msg_id",
    )
    .bind(column(&keyed, |(m, _)| m.channel_id.0))
    .bind(column(&keyed, |(m, _)| m.sender_id.0))
    .bind(column(&keyed, |(_, client)| *client))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let original = sql::client_ref(row)?;
            let key = (
                row.uuid("channel_id")?,
                original.sender_id.0,
                original.client_msg_id.clone(),
            );
            Ok((key, original))
        })
        .collect()
}

/// Applies one op other than `InsertMessage`.
async fn apply_op(conn: &mut PgConnection, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    let touched = match op {
        WriteOp::InsertMessage(m) => {
            return Ok(insert_messages(conn, &[m]).await?.remove(0));
        }
        WriteOp::EditMessage {
            id,
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
            .bind(id.0)
            .bind(&ciphertext[..])
            .bind(&nonce[..])
            .bind(i64::from(*key_version))
            .bind(edited_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if touched > 0 {
                let tokens = super::search::tokens(index)?.unwrap_or_default();
                search::replace_tokens(conn, *id, &tokens).await?;
            }
            touched
        }
        WriteOp::DeleteMessage { id, deleted_at } => {
            let touched = sqlx::query(
                "UPDATE messages SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id.0)
            .bind(deleted_at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            search::drop_tokens(conn, *id).await?;
            touched
        }
        WriteOp::MarkRead {
            channel_id,
            user_id,
            seq,
        } => sqlx::query(
            "UPDATE channel_members SET
                 last_read_seq = GREATEST(last_read_seq, $3),
                 last_delivered_seq = GREATEST(last_delivered_seq, $3)
             WHERE channel_id = $1 AND user_id = $2",
        )
        .bind(channel_id.0)
        .bind(user_id.0)
        .bind(to_db(*seq, "seq")?)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        WriteOp::MarkDelivered {
            channel_id,
            user_id,
            seq,
        } => sqlx::query(
            "UPDATE channel_members SET last_delivered_seq = GREATEST(last_delivered_seq, $3)
             WHERE channel_id = $1 AND user_id = $2",
        )
        .bind(channel_id.0)
        .bind(user_id.0)
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
            .bind(message_id.0)
            .bind(user_id.0)
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
            .bind(message_id.0)
            .bind(user_id.0)
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
        .bind(member.channel_id.0)
        .bind(member.user_id.0)
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
            .bind(channel_id.0)
            .bind(user_id.0)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        WriteOp::SetMentions { message_id, users } => {
            notify::set_mentions(conn, *message_id, users).await?
        }
    };
    Ok(sql::done_or_not_found(touched))
}

/// Whether the message exists undeleted and the user exists.
async fn reaction_target_exists(
    conn: &mut PgConnection,
    message: Uuid,
    user: Uuid,
) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND deleted_at IS NULL)
            AND EXISTS (SELECT 1 FROM users WHERE id = $2) AS ok",
    )
    .bind(message)
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    row.flag("ok")
}

async fn reaction_counts(
    conn: &mut PgConnection,
    message: Uuid,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let rows = sqlx::query(
        "SELECT reaction, count(*) AS n FROM message_reactions
         WHERE message_id = $1 GROUP BY reaction",
    )
    .bind(message)
    .fetch_all(&mut *conn)
    .await?;
    sql::reaction_counts(&rows)
}

/// Inserts chained audit entries in `tx`; the primary key refuses a
/// concurrent writer that read the same head.
async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    entries: &[AuditRecord],
) -> Result<(), StoreError> {
    let seqs: Vec<i64> = entries
        .iter()
        .map(|e| to_db(e.seq, "audit seq"))
        .collect::<Result<_, _>>()?;
    let details: Vec<String> = entries
        .iter()
        .map(|e| sql::details_json(&e.details))
        .collect::<Result<_, _>>()?;
    // The primary key refuses a concurrent writer that read the same head.
    sqlx::query(
        "INSERT INTO audit_logs
             (seq, timestamp, actor_id, ip, user_agent, action, details, prev_hash, hash)
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::uuid[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::text[])",
    )
    .bind(seqs)
    .bind(column(entries, |e| e.timestamp))
    .bind(column(entries, |e| e.actor_id.map(|a| a.0)))
    .bind(column(entries, |e| e.ip.as_deref()))
    .bind(column(entries, |e| e.user_agent.as_deref()))
    .bind(column(entries, |e| e.action.as_str()))
    .bind(details)
    .bind(column(entries, |e| e.prev_hash.as_str()))
    .bind(column(entries, |e| e.hash.as_str()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
