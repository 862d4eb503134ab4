//! The archive's manifest and names, and the hashing both commands share.
//!
//! An archive is a tar file of regular files (mode 0600), named:
//!
//! | name in the archive | what | restored to |
//! |---|---|---|
//! | `database/courier.db` | SQLite: the `VACUUM INTO` snapshot | the database file of the restore's URL |
//! | `database/courier.pgdump` | PostgreSQL: `pg_dump --format=custom` | the restore's database, by `pg_restore` |
//! | `data/keyring` | the master keyring (when it is a file) | `COURIER_KEYRING_FILE`, else `<data dir>/keyring` |
//! | `data/jwt_secret` | the generated JWT secret (development) | `<data dir>/jwt_secret` |
//! | `data/audit-checkpoints.jsonl` | the signed audit checkpoints | `<data dir>/audit-checkpoints.jsonl` |
//! | `files/<key>` | the local file store's sealed objects (`f/<id>`) | the restore's local file store |
//! | `manifest.json` | [`Manifest`], last | (read, not written) |
//!
//! Pure but for the readers and writers it wraps: no store, no config.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Backend;

/// The format this version writes and reads.
pub const FORMAT: &str = "courier-backup/1";

/// The manifest's name in the archive.
pub const MANIFEST: &str = "manifest.json";
/// The SQLite snapshot's name.
pub const SQLITE_DB: &str = "database/courier.db";
/// The PostgreSQL dump's name.
pub const PG_DUMP: &str = "database/courier.pgdump";
/// The keyring's name.
pub const KEYRING: &str = "data/keyring";
/// The generated JWT secret's name.
pub const JWT_SECRET: &str = "data/jwt_secret";
/// The checkpoint file's name.
pub const CHECKPOINTS: &str = "data/audit-checkpoints.jsonl";
/// The prefix of the local file store's objects.
pub const FILES_PREFIX: &str = "files/";

/// The largest manifest a restore reads (a million objects fit).
pub const MANIFEST_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What the archive holds, written as its last entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// When the backup was taken, ms since the epoch.
    pub created_at: i64,
    /// The `courier` version that took it.
    pub courier_version: String,
    /// The store it came from.
    pub backend: Backend,
    /// The highest migration applied to the database backed up.
    pub schema_version: i64,
    /// The audit chain's head in the snapshot (SQLite; a PostgreSQL dump
    /// is read by `pg_dump` alone, so it is not known there).
    pub audit_head: Option<AuditHead>,
    /// Whether the keyring is in the archive (`false`: it came from
    /// `COURIER_MASTER_KEYS` and must be given to the restore the same way).
    pub keyring_included: bool,
    /// Whether the file store's objects are in the archive (`false`: a
    /// cloud store, backed up by the provider's means).
    pub objects_included: bool,
    /// Every other entry of the archive, in archive order.
    pub files: Vec<FileEntry>,
}

/// The chain head a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// One file of the archive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Its name in the archive.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of its content, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// The entry named `path`.
    pub fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The sum of every file's size.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// The object key of an archive name under [`FILES_PREFIX`], when it is a
/// plain relative path (no `..`, no root, no empty part): the only kind a
/// restore writes.
pub fn object_key(name: &str) -> Option<&str> {
    let key = name.strip_prefix(FILES_PREFIX)?;
    safe_relative(key).then_some(key)
}

/// Whether `key` is a relative path of normal parts only.
pub fn safe_relative(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('\\')
        && !key.split('/').any(|part| part.is_empty())
        && Path::new(key)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Whether `name` is one a restore knows.
pub fn known_name(name: &str) -> bool {
    matches!(
        name,
        SQLITE_DB | PG_DUMP | KEYRING | JWT_SECRET | CHECKPOINTS
    ) || object_key(name).is_some()
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The bytes read and their SHA-256 (hex).
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hash.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The writer, the bytes written and their SHA-256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The SHA-256 (hex) and size of a file on disk.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut reader = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

/// Progress on stderr: files and bytes done of the total, at most twice a
/// second and once at the end.
pub struct Progress {
    verb: &'static str,
    total_files: usize,
    total_bytes: u64,
    files: usize,
    bytes: u64,
    last: Option<std::time::Instant>,
}

impl Progress {
    pub fn new(verb: &'static str, total_files: usize, total_bytes: u64) -> Self {
        Progress {
            verb,
            total_files,
            total_bytes,
            files: 0,
            bytes: 0,
            last: None,
        }
    }

    /// One more file of `bytes` done.
    pub fn file_done(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(500));
        if due || self.files == self.total_files {
            self.print();
        }
    }

    fn print(&mut self) {
        self.last = Some(std::time::Instant::now());
        eprintln!(
            "courier: {} {}/{} files, {} of {}",
            self.verb,
            self.files,
            self.total_files,
            human_bytes(self.bytes),
            human_bytes(self.total_bytes)
        );
    }
}

/// `1.5 MiB`, `120 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Where the object `key` lives under a local store's directory.
pub fn object_path(dir: &Path, key: &str) -> PathBuf {
    key.split('/')
        .fold(dir.to_path_buf(), |p, part| p.join(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_object_names_are_restored() {
        assert_eq!(object_key("files/f/0b1c"), Some("f/0b1c"));
        for bad in [
            "files/",
            "files/../keyring",
            "files/f/../../x",
            "files//etc",
            "files/./f",
            "files/f\\x",
            "data/other",
            "/files/f/x",
        ] {
            assert!(!known_name(bad), "{bad}");
        }
        assert!(known_name(SQLITE_DB) && known_name(KEYRING) && known_name(CHECKPOINTS));
    }

    #[test]
    fn hashing_reader_and_writer_agree_with_sha256() {
        let data = b"courier backup".repeat(1000);
        let mut reader = HashingReader::new(&data[..]);
        let mut writer = HashingWriter::new(Vec::new());
        io::copy(&mut reader, &mut writer).expect("copy");
        let (read, read_hash) = reader.finish();
        let (out, written, written_hash) = writer.finish();
        assert_eq!(out, data);
        assert_eq!((read, written), (data.len() as u64, data.len() as u64));
        assert_eq!(read_hash, hex::encode(Sha256::digest(&data)));
        assert_eq!(read_hash, written_hash);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
