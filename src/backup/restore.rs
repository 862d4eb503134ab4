//! `courier restore --from FILE`: checks the archive, refuses a target
//! that holds data, puts the database and files back, audits the restore
//! and verifies the restored chain.
//!
//! Nothing is written until the whole archive has been read and every file
//! matched its size and SHA-256 in the manifest. Then each file is written
//! beside its place (`<name>.restoring`, 0600; objects under
//! `<files dir>.restoring/`, 0700 directories), hashed again as it is
//! written; the database is restored (`pg_restore` in one transaction, or
//! the SQLite snapshot moved into place), and only then do the files take
//! their names. A failure before that removes what it wrote and leaves the
//! target as it was. The restored store is then opened as `serve` opens it
//! (migrations from an older backup run forward), `backup.restored` is
//! appended to its chain, and the chain is verified against the restored
//! checkpoints.
//!
//! A target holds data when the database is not empty (a SQLite file with
//! content; a PostgreSQL database with any table) or when a file the
//! archive would write exists (the objects' directory: when it has any
//! entry). `--force` replaces such files of a data directory (stop the
//! broker first); a PostgreSQL database is never restored over: create an
//! empty one (docs/backup.md).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use courier_actors::audit::chain::{self, CheckpointKeys, PendingAudit, VerifyReport};
use courier_actors::durable::private_files;
use serde_json::json;
use sqlx::Connection;

use super::manifest::{self, AuditHead, HashingReader, Manifest, Progress};
use super::{local_files_dir, postgres, sqlite_path, with_suffix, Backend, BackupError};
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// `courier restore`'s arguments.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// `--from`: the archive.
    pub from: PathBuf,
    /// `--force`: replace the data directory's files that exist.
    pub force: bool,
    /// `--pg-bin`: the directory of `pg_restore` (else `PATH`).
    pub pg_bin: Option<PathBuf>,
}

/// What a restore did (printed as JSON on stdout).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSummary {
    pub from: PathBuf,
    /// SHA-256 of the archive (as `backup.created` recorded it).
    pub sha256: String,
    pub backend: Backend,
    /// When the backup was taken, ms since the epoch.
    pub backup_created_at: i64,
    pub schema_version: i64,
    pub files: usize,
    pub objects: usize,
    /// `courier audit verify`'s report on the restored chain.
    pub audit: VerifyReport,
}

/// Where each kind of file of the archive goes.
struct Targets {
    /// The SQLite database file (SQLite only).
    database: Option<PathBuf>,
    /// The keyring's file, `None` when the keys come from
    /// `COURIER_MASTER_KEYS` (the archive's keyring is then not written).
    keyring: Option<PathBuf>,
    jwt_secret: PathBuf,
    checkpoints: PathBuf,
    /// The local file store's directory, `None` for a cloud store.
    objects: Option<PathBuf>,
    /// Where a PostgreSQL dump waits for `pg_restore`.
    dump: PathBuf,
}

impl Targets {
    fn of(config: &Config, backend: Backend) -> Result<Targets, BackupError> {
        Ok(Targets {
            database: match backend {
                Backend::Sqlite => Some(sqlite_path(&config.database_url())?),
                Backend::Postgres => None,
            },
            keyring: match (&config.master_keys, &config.keyring_file) {
                (Some(_), _) => None,
                (None, Some(file)) => Some(file.clone()),
                (None, None) => Some(config.data_dir.join(secrets::KEYRING_FILE)),
            },
            jwt_secret: config.data_dir.join(secrets::JWT_FILE),
            checkpoints: config.checkpoint_file(),
            objects: local_files_dir(config),
            dump: config.data_dir.join(".courier.pgdump.restoring"),
        })
    }

    /// Where the archive's `name` is finally written; `None` for what is
    /// not written as a file (the manifest, the dump, a keyring the
    /// configuration gives).
    fn place(&self, name: &str) -> Option<PathBuf> {
        match name {
            manifest::SQLITE_DB => self.database.clone(),
            manifest::KEYRING => self.keyring.clone(),
            manifest::JWT_SECRET => Some(self.jwt_secret.clone()),
            manifest::CHECKPOINTS => Some(self.checkpoints.clone()),
            _ => None,
        }
    }
}

/// Runs `courier restore`.
pub async fn restore(
    config: &Config,
    options: &RestoreOptions,
) -> Result<RestoreSummary, BackupError> {
    let url = config.database_url();
    let backend = Backend::of(&url);
    let (manifest, sha256) = verify_archive(&options.from)?;
    eprintln!(
        "courier: restore checked {} files ({}) against the manifest",
        manifest.files.len(),
        manifest::human_bytes(manifest.total_bytes())
    );
    if manifest.backend != backend {
        return Err(BackupError::Invalid(format!(
            "{} is a {} backup and the configured database is {}: restore it into a {} database",
            options.from.display(),
            manifest.backend.as_str(),
            backend.as_str(),
            manifest.backend.as_str()
        )));
    }
    let targets = Targets::of(config, backend)?;
    if !manifest.keyring_included && targets.keyring.is_some() && config.keyring_file.is_none() {
        return Err(BackupError::Invalid(
            "the archive holds no keyring (the broker backed up had COURIER_MASTER_KEYS): \
             give the restore the same keys in COURIER_MASTER_KEYS or COURIER_KEYRING_FILE"
                .into(),
        ));
    }
    let objects = manifest
        .files
        .iter()
        .filter(|f| manifest::object_key(&f.path).is_some())
        .count();
    if objects > 0 && targets.objects.is_none() {
        return Err(BackupError::Invalid(format!(
            "the archive holds {objects} objects of a local file store and COURIER_FILES_STORE \
             names a cloud store: restore with the local store (unset, or file:///dir), then \
             copy the objects to the bucket (docs/backup.md)"
        )));
    }
    check_empty(config, &targets, &manifest, backend, options.force).await?;
    private_files::create_dir_all(&config.data_dir)
        .map_err(|e| BackupError::io(&config.data_dir, e))?;

    let mut written = Written::default();
    let placed = async {
        extract(&options.from, &manifest, &targets, &mut written)?;
        if backend == Backend::Postgres {
            eprintln!("courier: restore running pg_restore");
            postgres::restore(&url, options.pg_bin.as_deref(), &targets.dump).await?;
        }
        written.commit(&targets)
    }
    .await;
    written.clean_up();
    placed?;
    eprintln!("courier: restore wrote the database and files; opening the restored store");

    let store = open_store(config).await.map_err(|e| {
        BackupError::Invalid(format!(
            "the files are restored but the store does not open ({e}); an archive of a newer \
             courier than this one needs that version"
        ))
    })?;
    let head = store.audit_head().await?.map(|r| AuditHead {
        seq: r.seq,
        hash: r.hash,
    });
    if manifest.audit_head.is_some() && head != manifest.audit_head {
        return Err(BackupError::Invalid(format!(
            "the restored chain ends at {head:?}, the manifest says {:?}",
            manifest.audit_head
        )));
    }
    let details = json!({
        "from": options.from.display().to_string(),
        "sha256": sha256,
        "backupCreatedAt": manifest.created_at,
        "backend": backend,
        "schemaVersion": manifest.schema_version,
        "auditHead": head,
        "files": manifest.files.len(),
        "objects": objects,
        "forced": options.force,
    });
    crate::commands::append_audit(
        &*store,
        PendingAudit::new(None, None, "backup.restored", details),
    )
    .await?;
    let keyring = secrets::resolve(config)?.keyring;
    let checkpoints = config.checkpoint_file();
    let audit = chain::verify_store_with(
        &*store,
        &CheckpointKeys::Keyring(&keyring),
        Some(&checkpoints),
        Vec::new(),
    )
    .await
    .map_err(|e| BackupError::Invalid(e.to_string()))?;
    let summary = RestoreSummary {
        from: options.from.clone(),
        sha256,
        backend,
        backup_created_at: manifest.created_at,
        schema_version: manifest.schema_version,
        files: manifest.files.len(),
        objects,
        audit,
    };
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| BackupError::Invalid(e.to_string()))?
    );
    Ok(summary)
}

/// Reads the whole archive: every entry a regular file with a known name,
/// none twice, each matching its size and SHA-256 in the manifest, and the
/// manifest listing no file the archive lacks. Returns the manifest and the
/// archive's SHA-256.
fn verify_archive(path: &Path) -> Result<(Manifest, String), BackupError> {
    let file = File::open(path).map_err(|e| BackupError::io(path, e))?;
    let mut archive = tar::Archive::new(HashingReader::new(BufReader::new(file)));
    let corrupt = |what: String| BackupError::Corrupt(what);
    let mut seen: HashMap<String, (u64, String)> = HashMap::new();
    let mut found: Option<Manifest> = None;
    for entry in archive
        .entries()
        .map_err(|e| corrupt(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| corrupt(format!("a damaged entry: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| corrupt(format!("an entry's name: {e}")))?
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| corrupt("an entry's name is not UTF-8".into()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(format!("{name:?} is not a regular file")));
        }
        if name == manifest::MANIFEST {
            if found.is_some() {
                return Err(corrupt("two manifests".into()));
            }
            if entry.size() > manifest::MANIFEST_MAX_BYTES {
                return Err(corrupt("the manifest is too large".into()));
            }
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| corrupt(format!("the manifest: {e}")))?;
            let parsed: Manifest =
                serde_json::from_slice(&text).map_err(|e| corrupt(format!("the manifest: {e}")))?;
            if parsed.format != manifest::FORMAT {
                return Err(corrupt(format!(
                    "its format is {:?}; this courier reads {}",
                    parsed.format,
                    manifest::FORMAT
                )));
            }
            found = Some(parsed);
            continue;
        }
        if !manifest::known_name(&name) {
            return Err(corrupt(format!("an unexpected entry {name:?}")));
        }
        let mut reader = HashingReader::new(&mut entry);
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        if seen.insert(name.clone(), reader.finish()).is_some() {
            return Err(corrupt(format!("{name} is in it twice")));
        }
    }
    let manifest = found.ok_or_else(|| corrupt("it has no manifest".into()))?;
    let mut reader = archive.into_inner();
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| BackupError::io(path, e))?;
    let (_, sha256) = reader.finish();
    for entry in &manifest.files {
        match seen.remove(&entry.path) {
            None => return Err(corrupt(format!("{} is missing", entry.path))),
            Some((bytes, hash)) if bytes != entry.bytes || hash != entry.sha256 => {
                return Err(corrupt(format!(
                    "{} does not match its checksum in the manifest",
                    entry.path
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().next() {
        return Err(corrupt(format!("{extra} is not in the manifest")));
    }
    let databases = [manifest::SQLITE_DB, manifest::PG_DUMP]
        .iter()
        .filter(|n| manifest.entry(n).is_some())
        .count();
    let expected = match manifest.backend {
        Backend::Sqlite => manifest::SQLITE_DB,
        Backend::Postgres => manifest::PG_DUMP,
    };
    if databases != 1 || manifest.entry(expected).is_none() {
        return Err(corrupt(format!("it holds no {expected}")));
    }
    Ok((manifest, sha256))
}

/// Refuses a target holding data (see the module doc).
async fn check_empty(
    config: &Config,
    targets: &Targets,
    manifest: &Manifest,
    backend: Backend,
    force: bool,
) -> Result<(), BackupError> {
    if backend == Backend::Postgres {
        let mut conn = postgres::connect(&config.database_url()).await?;
        let tables = postgres::user_tables(&mut conn).await?;
        let _ = conn.close().await;
        if !tables.is_empty() {
            return Err(BackupError::NotEmpty(format!(
                "the database is not empty (it has {}): restore into a new, empty database \
                 (createdb), never over one; --force does not change this",
                tables.join(", ")
            )));
        }
    }
    let mut present = Vec::new();
    if let Some(db) = &targets.database {
        if std::fs::metadata(db).is_ok_and(|m| m.len() > 0) {
            present.push(db.clone());
        }
    }
    for entry in &manifest.files {
        if let Some(place) = targets
            .place(&entry.path)
            .filter(|_| entry.path != manifest::SQLITE_DB)
        {
            if place.exists() {
                present.push(place);
            }
        }
    }
    if let Some(dir) = &targets.objects {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            present.push(dir.clone());
        }
    }
    if present.is_empty() || force {
        return Ok(());
    }
    let names: Vec<String> = present.iter().map(|p| p.display().to_string()).collect();
    Err(BackupError::NotEmpty(format!(
        "the target holds data already ({}): restore into an empty data directory, or pass \
         --force to replace these (with the broker stopped)",
        names.join(", ")
    )))
}

/// What a restore wrote beside the targets, to move into place or remove.
#[derive(Default)]
struct Written {
    /// `(written, final place)` of single files.
    files: Vec<(PathBuf, PathBuf)>,
    /// The objects' staging directory and its final place.
    objects: Option<(PathBuf, PathBuf)>,
    /// The dump, removed once restored.
    dump: Option<PathBuf>,
}

impl Written {
    /// Moves everything into place (`--force` was checked before: what is
    /// there is replaced).
    fn commit(&mut self, targets: &Targets) -> Result<(), BackupError> {
        if let Some(db) = &targets.database {
            // The WAL and shared memory of a database replaced by --force
            // would be read as the new one's.
            for suffix in ["-wal", "-shm", "-journal"] {
                let side = with_suffix(db, suffix);
                match std::fs::remove_file(&side) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(BackupError::io(&side, e)),
                }
            }
        }
        for (from, to) in std::mem::take(&mut self.files) {
            std::fs::rename(&from, &to).map_err(|e| BackupError::io(&to, e))?;
        }
        if let Some((from, to)) = self.objects.take() {
            if to.exists() {
                std::fs::remove_dir_all(&to).map_err(|e| BackupError::io(&to, e))?;
            }
            std::fs::rename(&from, &to).map_err(|e| BackupError::io(&to, e))?;
        }
        Ok(())
    }

    /// Removes whatever was not moved into place.
    fn clean_up(&mut self) {
        for (from, _) in self.files.drain(..) {
            let _ = std::fs::remove_file(from);
        }
        if let Some((from, _)) = self.objects.take() {
            let _ = std::fs::remove_dir_all(from);
        }
        if let Some(dump) = self.dump.take() {
            let _ = std::fs::remove_file(dump);
        }
    }
}

/// Writes every file of the archive beside its place, hashing it again.
fn extract(
    path: &Path,
    manifest: &Manifest,
    targets: &Targets,
    written: &mut Written,
) -> Result<(), BackupError> {
    let file = File::open(path).map_err(|e| BackupError::io(path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let changed =
        |name: &str| BackupError::Corrupt(format!("{name} changed since the archive was checked"));
    let mut progress = Progress::new("restore", manifest.files.len(), manifest.total_bytes());
    let entries = archive.entries().map_err(|e| BackupError::io(path, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::io(path, e))?;
        let name = entry
            .path()
            .map_err(|e| BackupError::io(path, e))?
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| changed("an entry's name"))?;
        if name == manifest::MANIFEST {
            continue;
        }
        let expected = manifest.entry(&name).ok_or_else(|| changed(&name))?;
        let dest = if name == manifest::PG_DUMP {
            written.dump = Some(targets.dump.clone());
            targets.dump.clone()
        } else if let Some(key) = manifest::object_key(&name) {
            let Some(dir) = &targets.objects else {
                continue;
            };
            let staging = with_suffix(dir, ".restoring");
            if written.objects.is_none() {
                if staging.exists() {
                    std::fs::remove_dir_all(&staging).map_err(|e| BackupError::io(&staging, e))?;
                }
                private_files::create_dir_all(&staging)
                    .map_err(|e| BackupError::io(&staging, e))?;
                written.objects = Some((staging.clone(), dir.clone()));
            }
            let dest = manifest::object_path(&staging, key);
            if let Some(parent) = dest.parent() {
                private_files::create_dir_all(parent).map_err(|e| BackupError::io(parent, e))?;
            }
            dest
        } else if let Some(place) = targets.place(&name) {
            if let Some(parent) = place.parent().filter(|p| !p.as_os_str().is_empty()) {
                private_files::create_dir_all(parent).map_err(|e| BackupError::io(parent, e))?;
            }
            let dest = with_suffix(&place, ".restoring");
            written.files.push((dest.clone(), place));
            dest
        } else {
            // The keyring when the configuration gives the keys itself.
            progress.file_done(expected.bytes);
            continue;
        };
        let mut out = private_files::open(
            &dest,
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .map_err(|e| BackupError::io(&dest, e))?;
        let mut reader = HashingReader::new(&mut entry);
        std::io::copy(&mut reader, &mut out).map_err(|e| BackupError::io(&dest, e))?;
        out.sync_all().map_err(|e| BackupError::io(&dest, e))?;
        let (bytes, sha256) = reader.finish();
        if bytes != expected.bytes || sha256 != expected.sha256 {
            return Err(changed(&name));
        }
        progress.file_done(bytes);
    }
    Ok(())
}
