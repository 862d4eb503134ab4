//! `courier backup --out FILE`: snapshots the database, gathers the data
//! directory's files and the local objects, writes the archive, audits it.
//!
//! The order is what keeps the archive consistent with itself: the audit
//! checkpoint file is read before the database is snapshot, so that no
//! checkpoint in the archive signs an entry the snapshot lacks (a restored
//! chain with such a checkpoint would read as truncated); the objects are
//! listed after the snapshot, so that every file row in it has its object
//! (one uploaded later is carried too, harmlessly). The archive is written
//! as `FILE.partial` (0600) and hashed as it goes; once it is on disk the
//! `backup.created` entry, with that hash, is appended to the broker's
//! chain, and only then does the archive take its name.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use courier_actors::audit::chain::PendingAudit;
use courier_actors::durable::private_files;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use super::manifest::{self, AuditHead, FileEntry, Manifest, Progress};
use super::{local_files_dir, postgres, sqlite_path, with_suffix, Backend, BackupError};
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// `courier backup`'s arguments.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// `--out`: the archive to write (it must not exist).
    pub out: PathBuf,
    /// `--pg-bin`: the directory of `pg_dump` (else `PATH`).
    pub pg_bin: Option<PathBuf>,
}

/// What a backup wrote (printed as JSON on stdout).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSummary {
    /// The archive.
    pub file: PathBuf,
    /// SHA-256 of the whole archive, hex (also in `backup.created`).
    pub sha256: String,
    /// The archive's size.
    pub bytes: u64,
    pub backend: Backend,
    pub schema_version: i64,
    pub audit_head: Option<AuditHead>,
    /// Files in the archive, the manifest aside.
    pub files: usize,
    /// Of which objects of the local file store.
    pub objects: usize,
}

/// Where a file of the archive comes from.
enum Source {
    /// A file on disk, read as the archive is written.
    Path(PathBuf),
    /// Bytes read beforehand (the small files of the data directory).
    Bytes(Vec<u8>),
}

/// One file to put in the archive.
struct Item {
    name: String,
    bytes: u64,
    source: Source,
}

/// Runs `courier backup`.
pub async fn backup(
    config: &Config,
    options: &BackupOptions,
) -> Result<BackupSummary, BackupError> {
    let out = &options.out;
    if out.exists() {
        return Err(BackupError::Invalid(format!(
            "{} exists already; a backup never overwrites one",
            out.display()
        )));
    }
    let partial = with_suffix(out, ".partial");
    let staging = staging_dir(out);
    for leftover in [&partial, &staging] {
        if leftover.exists() {
            return Err(BackupError::Invalid(format!(
                "{} exists: another backup to {} is under way, or one stopped half way \
                 (then remove it)",
                leftover.display(),
                out.display()
            )));
        }
    }
    private_files::create_dir_all(&staging).map_err(|e| BackupError::io(&staging, e))?;
    let result = write(config, options, &staging, &partial).await;
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let summary = result?;
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| BackupError::Invalid(e.to_string()))?
    );
    Ok(summary)
}

/// `.FILE.staging` beside the archive: where the snapshot or dump waits
/// (0700; the snapshot is the whole database).
fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.staging"))
}

async fn write(
    config: &Config,
    options: &BackupOptions,
    staging: &Path,
    partial: &Path,
) -> Result<BackupSummary, BackupError> {
    let url = config.database_url();
    let backend = Backend::of(&url);
    let secrets = secrets::resolve(config)?;
    let mut items = Vec::new();

    // The data directory's files first; the checkpoints before the snapshot.
    let keyring_included = match &secrets.keyring_file {
        Some(path) => {
            items.push(bytes_item(manifest::KEYRING, read(path)?));
            true
        }
        None => false,
    };
    let jwt = config.data_dir.join(secrets::JWT_FILE);
    if jwt.exists() {
        items.push(bytes_item(manifest::JWT_SECRET, read(&jwt)?));
    }
    let checkpoints = config.checkpoint_file();
    if checkpoints.exists() {
        let mut text = read(&checkpoints)?;
        // An append under way: its piece after the last newline is not yet
        // a checkpoint (verification skips it too).
        text.truncate(text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1));
        items.push(bytes_item(manifest::CHECKPOINTS, text));
    }

    let store = open_store(config).await?;
    let (schema_version, audit_head) = match backend {
        Backend::Sqlite => {
            let snapshot = staging.join("courier.db");
            snapshot_sqlite(&url, &snapshot).await?;
            let read = snapshot_facts(&snapshot).await?;
            items.push(path_item(manifest::SQLITE_DB, snapshot)?);
            read
        }
        Backend::Postgres => {
            let mut conn = postgres::connect(&url).await?;
            let version = postgres::schema_version(&mut conn).await?;
            let _ = conn.close().await;
            let dump = staging.join("courier.pgdump");
            eprintln!("courier: backup running pg_dump");
            postgres::dump(&url, options.pg_bin.as_deref(), &dump).await?;
            items.push(path_item(manifest::PG_DUMP, dump)?);
            (version, None)
        }
    };
    eprintln!(
        "courier: backup database snapshot taken ({})",
        manifest::human_bytes(items.last().map_or(0, |i| i.bytes))
    );

    let objects_dir = local_files_dir(config);
    let mut objects = Vec::new();
    if let Some(dir) = objects_dir.as_deref().filter(|d| d.is_dir()) {
        list_objects(dir, dir, &mut objects)?;
        objects.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let object_count = objects.len();
    items.extend(objects);

    let (sha256, bytes, manifest) = write_archive(
        partial,
        items,
        backend,
        schema_version,
        audit_head.clone(),
        keyring_included,
        objects_dir.is_some(),
    )?;

    let details = json!({
        "file": options.out.display().to_string(),
        "sha256": sha256,
        "bytes": bytes,
        "backend": backend,
        "schemaVersion": schema_version,
        "auditHead": audit_head,
        "files": manifest.files.len(),
        "objects": object_count,
        "keyringIncluded": keyring_included,
        "objectsIncluded": manifest.objects_included,
    });
    crate::commands::append_audit(
        &*store,
        PendingAudit::new(None, None, "backup.created", details),
    )
    .await?;
    std::fs::rename(partial, &options.out).map_err(|e| BackupError::io(&options.out, e))?;
    Ok(BackupSummary {
        file: options.out.clone(),
        sha256,
        bytes,
        backend,
        schema_version,
        audit_head,
        files: manifest.files.len(),
        objects: object_count,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(path).map_err(|e| BackupError::io(path, e))
}

fn bytes_item(name: &str, bytes: Vec<u8>) -> Item {
    Item {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        source: Source::Bytes(bytes),
    }
}

fn path_item(name: &str, path: PathBuf) -> Result<Item, BackupError> {
    let bytes = std::fs::metadata(&path)
        .map_err(|e| BackupError::io(&path, e))?
        .len();
    Ok(Item {
        name: name.to_owned(),
        bytes,
        source: Source::Path(path),
    })
}

/// `VACUUM INTO`: a consistent copy of the live database (one read
/// transaction; the broker goes on writing meanwhile, WAL lets it).
async fn snapshot_sqlite(url: &str, snapshot: &Path) -> Result<(), BackupError> {
    let db = sqlite_path(url)?;
    if !db.is_file() {
        return Err(BackupError::Invalid(format!(
            "there is no database at {} to back up",
            db.display()
        )));
    }
    let mut conn = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await?;
    let target = snapshot
        .to_str()
        .ok_or_else(|| BackupError::Invalid(format!("{} is not UTF-8", snapshot.display())))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    // SQLite created it under the umask, inside the 0700 staging directory.
    private_files::narrow(snapshot);
    Ok(())
}

/// The schema version and the audit head of a snapshot.
async fn snapshot_facts(snapshot: &Path) -> Result<(i64, Option<AuditHead>), BackupError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(snapshot)
        .read_only(true)
        .immutable(true)
        .connect()
        .await?;
    let version: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success = 1",
    )
    .fetch_one(&mut conn)
    .await?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_logs ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut conn)
            .await?;
    let _ = conn.close().await;
    Ok((
        version,
        head.map(|(seq, hash)| AuditHead {
            seq: seq as u64,
            hash,
        }),
    ))
}

/// Every object under `dir` (regular files, recursively), named
/// `files/<key>`. The local store's staging files of uploads under way
/// (`<key>#<n>`) are not objects yet.
fn list_objects(root: &Path, dir: &Path, out: &mut Vec<Item>) -> Result<(), BackupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| BackupError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BackupError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| BackupError::io(&path, e))?;
        if kind.is_dir() {
            list_objects(root, &path, out)?;
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let Some(key) = path
            .strip_prefix(root)
            .ok()
            .and_then(|k| k.to_str())
            .map(|k| k.replace(std::path::MAIN_SEPARATOR, "/"))
        else {
            continue;
        };
        if key.contains('#') || !manifest::safe_relative(&key) {
            continue;
        }
        match path_item(&format!("{}{key}", manifest::FILES_PREFIX), path) {
            Ok(item) => out.push(item),
            // Purged since it was listed.
            Err(BackupError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the archive: every item, then the manifest. Returns the archive's
/// SHA-256 and size, and the manifest.
fn write_archive(
    partial: &Path,
    items: Vec<Item>,
    backend: Backend,
    schema_version: i64,
    audit_head: Option<AuditHead>,
    keyring_included: bool,
    objects_included: bool,
) -> Result<(String, u64, Manifest), BackupError> {
    let io = |e| BackupError::io(partial, e);
    let file = private_files::open(
        partial,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )
    .map_err(io)?;
    let mut tar = tar::Builder::new(manifest::HashingWriter::new(BufWriter::new(file)));
    let now = courier_actors::now_ms();
    let mtime = u64::try_from(now / 1000).unwrap_or(0);
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    let mut progress = Progress::new("backup", items.len(), total_bytes);
    let mut files = Vec::with_capacity(items.len());
    for item in items {
        let reader: Box<dyn Read> = match item.source {
            Source::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes)),
            Source::Path(path) => {
                Box::new(File::open(&path).map_err(|e| BackupError::io(&path, e))?)
            }
        };
        // At most the size in the header, whatever the file does meanwhile.
        let mut reader = manifest::HashingReader::new(reader.take(item.bytes));
        tar.append_data(&mut header(item.bytes, mtime), &item.name, &mut reader)
            .map_err(io)?;
        let (bytes, sha256) = reader.finish();
        if bytes != item.bytes {
            return Err(BackupError::Invalid(format!(
                "{} shrank while it was read",
                item.name
            )));
        }
        progress.file_done(bytes);
        files.push(FileEntry {
            path: item.name,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: manifest::FORMAT.to_owned(),
        created_at: now,
        courier_version: env!("CARGO_PKG_VERSION").to_owned(),
        backend,
        schema_version,
        audit_head,
        keyring_included,
        objects_included,
        files,
    };
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Invalid(e.to_string()))?;
    tar.append_data(
        &mut header(text.len() as u64, mtime),
        manifest::MANIFEST,
        &text[..],
    )
    .map_err(io)?;
    let writer = tar.into_inner().map_err(io)?;
    let (buffered, bytes, sha256) = writer.finish();
    let mut file = buffered.into_inner().map_err(|e| io(e.into_error()))?;
    file.flush().map_err(io)?;
    file.sync_all().map_err(io)?;
    eprintln!(
        "courier: backup wrote {} ({} files)",
        manifest::human_bytes(bytes),
        manifest.files.len()
    );
    Ok((sha256, bytes, manifest))
}

/// A regular file's header, 0600.
fn header(size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header
}
