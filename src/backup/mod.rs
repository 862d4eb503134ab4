//! # Backup and restore
//!
//! `courier backup --out FILE` writes one archive (tar) of everything a
//! broker needs to start again where it was: the database, the secrets and
//! audit checkpoints of the data directory, and the sealed objects of the
//! local file store. `courier restore --from FILE` puts it back into an
//! empty data directory and database. The procedure, the archive's layout
//! and what is not in it: docs/backup.md.
//!
//! - SQLite: the database is snapshot online with `VACUUM INTO` (one read
//!   transaction: consistent while the broker writes), into a private
//!   staging directory beside the archive.
//! - PostgreSQL: `pg_dump --format=custom` (found on `PATH`, or in
//!   `--pg-bin DIR`) dumps it into the staging directory; restore runs
//!   `pg_restore --single-transaction` into an empty database.
//!
//! The archive ends with `manifest.json` (format, creation time, backend,
//! schema migration version, every file with its size and SHA-256). A
//! restore reads the whole archive and checks it against the manifest
//! before it writes anything, and hashes every file again as it writes it.
//!
//! # Layout
//! - [`manifest`]: the manifest, the names inside the archive, hashing.
//! - [`create`]: `courier backup`.
//! - [`restore`]: `courier restore`.
//! - [`postgres`]: `pg_dump` and `pg_restore`, and what is asked of the
//!   database directly (its schema version, whether it is empty).
//!
//! What it takes: the configuration (the store, the data directory, the
//! keyring's file, the files store), as the other CLI commands read it.
//! What it owns: the archive while it is written (`FILE.partial`, 0600) and
//! its staging directory (`.FILE.staging`, 0700), both removed when the
//! command fails; a crash leaves them behind (remove them by hand; a new
//! backup to the same FILE refuses while `FILE.partial` is there). Both
//! commands append to the audit chain: `backup.created` on the backed-up
//! broker once the archive is complete (before it takes its name), and
//! `backup.restored` on the restored one.
//!
//! The archive holds the master keyring and the database: whoever has it
//! can read every message. It is created 0600; keep it as the keyring is
//! kept.

pub mod create;
pub mod manifest;
pub mod postgres;
pub mod restore;

use std::path::{Path, PathBuf};

pub use create::{backup, BackupOptions, BackupSummary};
pub use restore::{restore, RestoreOptions, RestoreSummary};

use crate::commands::CommandError;
use crate::secrets::SecretsError;
use crate::server::ServerError;

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] courier_actors::durable::store::StoreError),
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The database refused a statement of the backup's own.
    #[error("database: {0}")]
    Database(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `pg_dump` or `pg_restore` is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// The archive is damaged or not a Courier backup: nothing was written.
    #[error("the archive cannot be restored: {0}; nothing was written")]
    Corrupt(String),
    /// The target holds data already.
    #[error("{0}")]
    NotEmpty(String),
    /// The arguments or the configuration cannot be used for this.
    #[error("{0}")]
    Invalid(String),
}

impl BackupError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        BackupError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Database(e.to_string())
    }
}

/// Which store a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of `url` (as [`crate::config::Config::database_url`]
    /// gives it; the configuration check refused any other scheme).
    pub fn of(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// As the manifest and messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where the local file store keeps its objects, `None` when the store is a
/// cloud one (`s3://`, `gs://`, `az://`): as
/// `courier_actors::files::storage::open` decides it.
pub(crate) fn local_files_dir(config: &crate::config::Config) -> Option<PathBuf> {
    let url = &config.files_store;
    if url.is_empty() {
        return Some(config.data_dir.join("files"));
    }
    let parsed = url::Url::parse(url).ok()?;
    (parsed.scheme() == "file").then(|| PathBuf::from(parsed.path()))
}

/// The SQLite database file a `sqlite:` URL names.
pub(crate) fn sqlite_path(url: &str) -> Result<PathBuf, BackupError> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(BackupError::Invalid(
            "an in-memory SQLite database cannot be backed up or restored".into(),
        ));
    }
    Ok(options.get_filename().to_path_buf())
}

/// `path` with `suffix` added to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
