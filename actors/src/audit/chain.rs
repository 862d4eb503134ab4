//! The tamper-evident audit log: a SHA-256 hash chain with signed checkpoints.
//!
//! Every security event becomes an [`AuditRecord`] whose `hash` is
//! `SHA-256(prev_hash || canonical(entry))`, lowercase hex, where `prev_hash`
//! is the hash of the entry before (or [`GENESIS_HASH`]) and the canonical
//! encoding length-prefixes every field (the seq included) and writes
//! `details` as JSON with sorted keys. Editing, deleting, inserting or
//! reordering an entry therefore breaks the chain at that entry.
//!
//! Deleting the *tail* leaves a valid, shorter chain; [`Checkpoint`]s catch
//! that: now and then the audit actor signs the head (`seq`, `hash`) with an
//! Ed25519 key derived from the keyring and stores it in the database and in
//! a [`CheckpointFile`] outside it, so a database rollback is detected too.
//!
//! Everything here is pure except [`PendingAudit::new`] (reads the clock),
//! [`CheckpointFile`] (blocking file I/O: call it from `spawn_blocking`) and
//! [`verify_store`], which pages through the store. [`chain`] links a batch in memory; [`ChainVerifier`] checks a chain
//! fed in seq order and produces the [`VerifyReport`] that `courier audit
//! verify` and `GET /api/audit/verify` show.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use courier_protocol::UserId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crypto::Keyring;
use crate::durable::store::{AuditRecord, Checkpoint, Store, StoreError};

/// The `prev_hash` of the first entry: 64 hex zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many entries [`verify_store`] reads per query.
pub const VERIFY_PAGE: u32 = 5_000;

/// Domain separator of entry hashes.
const ENTRY_DOMAIN: &[u8] = b"courier/audit-entry/v1";

/// Domain separator of checkpoint signatures.
const CHECKPOINT_DOMAIN: &[u8] = b"courier/audit-checkpoint/v1";

/// What went wrong while verifying or keeping checkpoints. (Tampering is not
/// an error: it is a [`VerifyReport`] with `ok: false`.)
#[derive(Debug, thiserror::Error)]
pub enum AuditChainError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint file could not be read or written.
    #[error("checkpoint file {path}: {source}")]
    CheckpointIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the checkpoint file is not a checkpoint.
    #[error("checkpoint file {path}, line {line}: {problem}")]
    CheckpointLine {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// An event to append, before it has a place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingAudit {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Who did it, when a user did.
    pub actor_id: Option<UserId>,
    /// The client's address, when there is a client.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// What happened, e.g. `auth.login_failed`.
    pub action: String,
    /// A JSON object with the specifics (never message text).
    pub details: Value,
}

impl PendingAudit {
    /// An event happening now (wall clock), without a user agent.
    pub fn new(
        actor_id: Option<UserId>,
        ip: Option<String>,
        action: impl Into<String>,
        details: Value,
    ) -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        PendingAudit {
            timestamp,
            actor_id,
            ip,
            user_agent: None,
            action: action.into(),
            details,
        }
    }
}

/// The last entry of a chain: where the next one links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Seq of the last entry, 0 for an empty chain.
    pub seq: u64,
    /// Hash of the last entry, [`GENESIS_HASH`] for an empty chain.
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// The head after `last` (what `Store::audit_head` returns), or genesis.
    pub fn after(last: Option<&AuditRecord>) -> Self {
        last.map_or_else(ChainHead::genesis, |r| ChainHead {
            seq: r.seq,
            hash: r.hash.clone(),
        })
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead::genesis()
    }
}

/// Links a batch after `head`, exactly as appending the entries one at a
/// time would, and returns the records with the new head.
pub fn chain(head: &ChainHead, pending: Vec<PendingAudit>) -> (Vec<AuditRecord>, ChainHead) {
    let mut head = head.clone();
    let records = pending
        .into_iter()
        .map(|p| {
            let mut record = AuditRecord {
                seq: 0,
                timestamp: p.timestamp,
                actor_id: p.actor_id,
                ip: p.ip,
                user_agent: p.user_agent,
                action: p.action,
                details: p.details,
                prev_hash: String::new(),
                hash: String::new(),
            };
            link(&mut head, &mut record);
            record
        })
        .collect();
    (records, head)
}

/// Links records that were chained but never stored after another `head`:
/// their events stay, their `seq`s and hashes are made anew. Returns the new
/// head.
pub fn rechain(head: &ChainHead, records: &mut [AuditRecord]) -> ChainHead {
    let mut head = head.clone();
    for record in records {
        link(&mut head, record);
    }
    head
}

/// Makes `record` the entry after `head`, and `head` its own.
fn link(head: &mut ChainHead, record: &mut AuditRecord) {
    record.seq = head.seq + 1;
    record.prev_hash = std::mem::take(&mut head.hash);
    record.hash = record_hash(record);
    *head = ChainHead {
        seq: record.seq,
        hash: record.hash.clone(),
    };
}

/// The hash `record` should carry, recomputed from its `prev_hash` and fields
/// (its own `hash` is ignored).
pub fn record_hash(record: &AuditRecord) -> String {
    let mut enc = Encoder::new(ENTRY_DOMAIN);
    enc.field(record.prev_hash.as_bytes());
    enc.field(&record.seq.to_be_bytes());
    enc.field(&record.timestamp.to_be_bytes());
    enc.optional(
        record
            .actor_id
            .as_ref()
            .map(|id| &id.as_uuid().as_bytes()[..]),
    );
    enc.optional(record.ip.as_deref().map(str::as_bytes));
    enc.optional(record.user_agent.as_deref().map(str::as_bytes));
    enc.field(record.action.as_bytes());
    let mut details = Vec::new();
    canonical_json(&record.details, &mut details);
    enc.field(&details);
    hex::encode(Sha256::digest(&enc.0))
}

/// Length-prefixed fields after a domain label: no two inputs share an encoding.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new(domain: &[u8]) -> Self {
        let mut enc = Encoder(Vec::with_capacity(256));
        enc.field(domain);
        enc
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn optional(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.0.push(0),
            Some(bytes) => {
                self.0.push(1);
                self.field(bytes);
            }
        }
    }
}

/// Writes `value` as JSON with object keys sorted and no whitespace, whatever
/// the key order of the map (and whether `serde_json` preserves it).
/// Integral floats are written as integers, so `1.0` and `1` hash alike.
fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            let text = if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                        (f as i64).to_string()
                    }
                    Some(f) => f.to_string(),
                    None => n.to_string(),
                }
            };
            out.extend_from_slice(text.as_bytes());
        }
        Value::String(s) => canonical_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_string(key, out);
                out.push(b':');
                canonical_json(item, out);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn canonical_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

// ---- checkpoints ------------------------------------------------------------

/// The bytes a checkpoint signature covers.
fn checkpoint_message(seq: u64, head_hash: &str, time: i64, key_id: &str) -> Vec<u8> {
    let mut enc = Encoder::new(CHECKPOINT_DOMAIN);
    enc.field(&seq.to_be_bytes());
    enc.field(head_hash.as_bytes());
    enc.field(&time.to_be_bytes());
    enc.field(key_id.as_bytes());
    enc.0
}

/// Signs the chain head at `seq` (`key` and `key_id` from
/// [`Keyring::checkpoint_signing_key`] and [`Keyring::checkpoint_key_id`]).
pub fn sign_checkpoint(
    key: &SigningKey,
    key_id: &str,
    seq: u64,
    head_hash: &str,
    time: i64,
) -> Checkpoint {
    let signature = key.sign(&checkpoint_message(seq, head_hash, time, key_id));
    Checkpoint {
        seq,
        head_hash: head_hash.to_owned(),
        time,
        key_id: key_id.to_owned(),
        signature: hex::encode(signature.to_bytes()),
    }
}

/// Whether `checkpoint` carries a valid signature by `key`.
pub fn verify_checkpoint(key: &VerifyingKey, checkpoint: &Checkpoint) -> bool {
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(&checkpoint.signature, &mut bytes).is_err() {
        return false;
    }
    let message = checkpoint_message(
        checkpoint.seq,
        &checkpoint.head_hash,
        checkpoint.time,
        &checkpoint.key_id,
    );
    key.verify_strict(&message, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Checkpoints kept outside the database: one JSON object per line, only
/// ever appended, each append flushed to disk. Blocking I/O.
#[derive(Clone, Debug)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// The file at `path` (created by the first append).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointFile { path: path.into() }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one checkpoint and syncs it to disk.
    pub fn append(&self, checkpoint: &Checkpoint) -> Result<(), AuditChainError> {
        let io = |source| AuditChainError::CheckpointIo {
            path: self.path.clone(),
            source,
        };
        let created = !self.path.exists();
        // Owner-only, like every data file.
        let mut file = crate::durable::private_files::open(
            &self.path,
            OpenOptions::new().read(true).append(true).create(true),
        )
        .map_err(io)?;
        let mut line = Vec::with_capacity(256);
        // A crash may have left a torn last line: start on a fresh one.
        if file.metadata().map_err(io)?.len() > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                line.push(b'\n');
            }
        }
        line.extend_from_slice(
            &serde_json::to_vec(checkpoint).map_err(|e| io(std::io::Error::other(e)))?,
        );
        line.push(b'\n');
        file.write_all(&line).map_err(io)?;
        file.sync_data().map_err(io)?;
        if created {
            sync_parent_dir(&self.path).map_err(io)?;
        }
        Ok(())
    }

    /// Every checkpoint in the file, in file order; none when it does not
    /// exist. A torn last line (a crash during an append) is skipped; any
    /// other bad line is an error.
    pub fn read_all(&self) -> Result<Vec<Checkpoint>, AuditChainError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => parse_checkpoint_lines(&self.path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(AuditChainError::CheckpointIo {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Parses the JSON lines of a checkpoint file.
fn parse_checkpoint_lines(path: &Path, bytes: &[u8]) -> Result<Vec<Checkpoint>, AuditChainError> {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let mut checkpoints = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Checkpoint>(line) {
            Ok(checkpoint) => checkpoints.push(checkpoint),
            // The last piece has no newline after it: an interrupted append.
            Err(_) if index + 1 == lines.len() => {}
            Err(e) => {
                return Err(AuditChainError::CheckpointLine {
                    path: path.to_path_buf(),
                    line: index + 1,
                    problem: e.to_string(),
                })
            }
        }
    }
    Ok(checkpoints)
}

// ---- verification -----------------------------------------------------------

/// The outcome of a verification, as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// No tampering found.
    pub ok: bool,
    /// Entries read.
    pub entries: u64,
    /// Hash of the last entry read ([`GENESIS_HASH`] when none).
    pub head_hash: String,
    /// The first seq that cannot be trusted, when not `ok`.
    pub first_bad_seq: Option<u64>,
}

/// Checks a chain fed entry by entry in ascending seq order, against the
/// checkpoints given up front.
///
/// It checks that seqs run 1, 2, 3…, that each `prev_hash` is the hash of the
/// entry before, that each `hash` matches its entry, and that each trusted
/// checkpoint's head hash matches the chain at its seq and does not lie
/// beyond the last entry (a deleted tail).
///
/// `first_bad_seq` names the first entry found inconsistent: a missing seq,
/// an entry whose hash does not match it, or the entry before an intact one
/// that does not link to it (rewritten with a recomputed hash). When the
/// chain was rewritten consistently and only a checkpoint disagrees, it is
/// the seq after the last checkpoint that still matched.
///
/// A checkpoint with a bad signature is tampering. One whose key the keyring
/// no longer has (a retired version) cannot be trusted; it is ignored when a
/// trusted checkpoint at the same or a later seq vouches for the chain
/// anyway, and is a failure otherwise.
#[derive(Debug)]
pub struct ChainVerifier {
    /// Seq of the last entry fed.
    last_seq: u64,
    /// Stored hash of the last entry fed.
    head_hash: String,
    entries: u64,
    first_bad_seq: Option<u64>,
    /// Head hashes that trusted checkpoints claim, by seq.
    trusted: BTreeMap<u64, Vec<String>>,
    /// Highest seq of a checkpoint whose key is unknown.
    unverifiable_max: Option<u64>,
    /// Highest checkpoint seq the chain matched so far.
    vouched: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new()
    }
}

impl ChainVerifier {
    /// A verifier without checkpoints.
    pub fn new() -> Self {
        ChainVerifier {
            last_seq: 0,
            head_hash: GENESIS_HASH.to_owned(),
            entries: 0,
            first_bad_seq: None,
            trusted: BTreeMap::new(),
            unverifiable_max: None,
            vouched: 0,
        }
    }

    /// A verifier that also checks `checkpoints`; `key_for` returns the
    /// verifying key of a key id (e.g.
    /// `|id| keyring.checkpoint_verifying_key(id).ok()`), `None` when unknown.
    pub fn with_checkpoints<'a>(
        checkpoints: impl IntoIterator<Item = &'a Checkpoint>,
        key_for: impl Fn(&str) -> Option<VerifyingKey>,
    ) -> Self {
        let mut verifier = ChainVerifier::new();
        let mut keys: HashMap<String, Option<VerifyingKey>> = HashMap::new();
        for checkpoint in checkpoints {
            let key = keys
                .entry(checkpoint.key_id.clone())
                .or_insert_with(|| key_for(&checkpoint.key_id));
            match key {
                None => {
                    verifier.unverifiable_max = verifier.unverifiable_max.max(Some(checkpoint.seq));
                }
                Some(key) if verify_checkpoint(key, checkpoint) => {
                    let claims = verifier.trusted.entry(checkpoint.seq).or_default();
                    if !claims.contains(&checkpoint.head_hash) {
                        claims.push(checkpoint.head_hash.clone());
                    }
                }
                Some(_) => verifier.flag(checkpoint.seq.max(1)),
            }
        }
        if let Some(claims) = verifier.trusted.get(&0) {
            if claims.iter().any(|h| h != GENESIS_HASH) {
                verifier.flag(1);
            }
        }
        verifier
    }

    /// Checks the next entry (ascending seq order).
    pub fn feed(&mut self, record: &AuditRecord) {
        self.entries += 1;
        let expected = self.last_seq + 1;
        let recomputed = record_hash(record);
        if record.seq != expected {
            // A deleted, inserted or reordered entry.
            self.flag(expected);
        } else if recomputed != record.hash {
            // An edited entry (or an edited hash).
            self.flag(record.seq);
        } else if record.prev_hash != self.head_hash {
            // This entry is intact, so the one before it was rewritten
            // (hash included) or removed.
            self.flag(record.seq.saturating_sub(1).max(1));
        }
        if let Some(claims) = self.trusted.get(&record.seq) {
            if claims.iter().all(|h| *h == recomputed) {
                self.vouched = self.vouched.max(record.seq);
            } else if claims.iter().all(|h| *h == record.hash) {
                // The signed head is the stored hash: this entry's content
                // was edited in place, which the hash check above flagged.
            } else if self.first_bad_seq.is_none_or(|bad| bad <= self.vouched) {
                // The chain up to here was rewritten since it was signed, and
                // consistently (no entry's own hash gave it away): every
                // entry after the last vouched checkpoint is suspect. When
                // the walk already found the bad entry, that one is reported.
                self.flag(self.vouched + 1);
            }
        }
        self.last_seq = record.seq;
        self.head_hash.clone_from(&record.hash);
    }

    /// The report, once every entry has been fed.
    pub fn finish(mut self) -> VerifyReport {
        let trusted_max = self.trusted.keys().next_back().copied();
        if trusted_max.is_some_and(|seq| seq > self.last_seq) {
            // A signed head beyond the last entry: the tail was deleted.
            self.flag(self.last_seq + 1);
        }
        if let Some(seq) = self.unverifiable_max {
            if trusted_max.is_none_or(|max| max < seq) {
                self.flag(seq.min(self.last_seq + 1).max(1));
            }
        }
        VerifyReport {
            ok: self.first_bad_seq.is_none(),
            entries: self.entries,
            head_hash: self.head_hash,
            first_bad_seq: self.first_bad_seq,
        }
    }

    fn flag(&mut self, seq: u64) {
        self.first_bad_seq = Some(self.first_bad_seq.map_or(seq, |s| s.min(seq)));
    }
}

/// Verifies the whole chain in `store`, [`VERIFY_PAGE`] entries at a time,
/// with the checkpoints of the store and of `checkpoint_file` (when given;
/// a missing file has none), their signatures checked with `keyring`.
pub async fn verify_store(
    store: &dyn Store,
    keyring: &Keyring,
    checkpoint_file: Option<&Path>,
) -> Result<VerifyReport, AuditChainError> {
    verify_source(
        store,
        &CheckpointKeys::Keyring(keyring),
        checkpoint_file,
        Vec::new(),
    )
    .await
}

/// As [`verify_store`], with checkpoints kept elsewhere too (`more`: fetched
/// from a sink off the machine, or a file exported elsewhere; any of them
/// that disagrees with the chain is tampering), and the keys of `keys`.
pub async fn verify_store_with(
    store: &dyn Store,
    keys: &CheckpointKeys<'_>,
    checkpoint_file: Option<&Path>,
    more: Vec<Checkpoint>,
) -> Result<VerifyReport, AuditChainError> {
    verify_source(store, keys, checkpoint_file, more).await
}

/// Where the keys that verify checkpoints come from.
pub enum CheckpointKeys<'a> {
    /// Derived from the master keys (the server's own view).
    Keyring(&'a Keyring),
    /// Public keys alone, by key id (an auditor's view: no secret needed;
    /// see [`parse_public_keys`]).
    Public(&'a HashMap<String, VerifyingKey>),
}

impl CheckpointKeys<'_> {
    /// The key that verifies checkpoints carrying `key_id`, if known.
    pub fn key_for(&self, key_id: &str) -> Option<VerifyingKey> {
        match self {
            CheckpointKeys::Keyring(keyring) => keyring.checkpoint_verifying_key(key_id).ok(),
            CheckpointKeys::Public(keys) => keys.get(key_id).copied(),
        }
    }
}

/// A checkpoint public key as `courier audit public-key` prints it and
/// `courier audit verify --public-key` takes it: `<key id>:<64 hex digits>`.
pub fn public_key_line(key_id: &str, key: &VerifyingKey) -> String {
    format!("{key_id}:{}", hex::encode(key.as_bytes()))
}

/// Parses public keys given as [`public_key_line`]s, separated by commas,
/// white space or newlines.
pub fn parse_public_keys(text: &str) -> Result<HashMap<String, VerifyingKey>, String> {
    let mut keys = HashMap::new();
    for item in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|i| !i.is_empty())
    {
        let (id, key_hex) = item
            .split_once(':')
            .ok_or_else(|| format!("{item:?}: expected <key id>:<hex public key>"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(key_hex, &mut bytes)
            .map_err(|_| format!("{item:?}: the key is not 64 hex digits"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("{item:?}: not an Ed25519 public key"))?;
        keys.insert(id.to_owned(), key);
    }
    if keys.is_empty() {
        return Err("no public key given".into());
    }
    Ok(keys)
}

/// The part of [`Store`] that verification reads (a seam for tests).
#[async_trait::async_trait]
trait AuditSource: Sync {
    async fn audit_range(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> AuditSource for S {
    async fn audit_range(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        Store::audit_range(self, after, limit).await
    }

    async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        Store::list_checkpoints(self).await
    }
}

async fn verify_source<S: AuditSource + ?Sized>(
    source: &S,
    keys: &CheckpointKeys<'_>,
    checkpoint_file: Option<&Path>,
    more: Vec<Checkpoint>,
) -> Result<VerifyReport, AuditChainError> {
    let mut checkpoints = source.list_checkpoints().await?;
    checkpoints.extend(more);
    if let Some(path) = checkpoint_file {
        let from_file = match tokio::fs::read(path).await {
            Ok(bytes) => parse_checkpoint_lines(path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(AuditChainError::CheckpointIo {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        checkpoints.extend(from_file);
    }
    let mut verifier = ChainVerifier::with_checkpoints(&checkpoints, |id| keys.key_for(id));
    let mut after = 0;
    loop {
        let page = source.audit_range(after, VERIFY_PAGE).await?;
        for record in &page {
            verifier.feed(record);
        }
        match page.last() {
            // A short page is the end; a page that does not move forward
            // (a broken store) must not loop forever.
            Some(last) if page.len() == VERIFY_PAGE as usize && last.seq > after => {
                after = last.seq;
            }
            _ => break,
        }
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pending(i: u64) -> PendingAudit {
        PendingAudit {
            timestamp: 1_700_000_000_000 + i as i64,
            actor_id: (i % 2 == 1).then(UserId::new),
            ip: (i % 3 > 0).then(|| format!("10.0.0.{i}")),
            user_agent: Some("courier-test/1".into()),
            action: format!("test.event{}", i % 4),
            details: json!({"n": i, "nested": {"b": [1, 2.5, null], "a": "x\"y\n"}}),
        }
    }

    fn build(n: u64) -> Vec<AuditRecord> {
        chain(&ChainHead::genesis(), (1..=n).map(pending).collect()).0
    }

    fn verify(records: &[AuditRecord], checkpoints: &[Checkpoint]) -> VerifyReport {
        let key = signing_key();
        let mut v = ChainVerifier::with_checkpoints(checkpoints, |id| {
            (id == "test").then(|| key.verifying_key())
        });
        for r in records {
            v.feed(r);
        }
        v.finish()
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn checkpoint_at(records: &[AuditRecord], seq: u64) -> Checkpoint {
        let hash = &records[seq as usize - 1].hash;
        sign_checkpoint(&signing_key(), "test", seq, hash, 1)
    }

    #[test]
    fn rechained_records_are_the_chain_their_events_make_after_the_new_head() {
        let all: Vec<PendingAudit> = (1..=10).map(pending).collect();
        let (stored, stored_head) = chain(&ChainHead::genesis(), all[..6].to_vec());
        // Chained after entry 3, as a broker that missed entries 4 to 6 would.
        let (_, stale) = chain(&ChainHead::genesis(), all[..3].to_vec());
        let (mut late, _) = chain(&stale, all[6..].to_vec());
        assert_eq!(late[0].seq, 4);

        let head = rechain(&stored_head, &mut late);
        let (expected, expected_head) = chain(&stored_head, all[6..].to_vec());
        assert_eq!(late, expected);
        assert_eq!(head, expected_head);
        assert!(verify(&[stored, late].concat(), &[]).ok);
    }

    #[test]
    fn batches_chain_exactly_like_single_appends() {
        let all: Vec<PendingAudit> = (1..=10).map(pending).collect();
        let (one_batch, head) = chain(&ChainHead::genesis(), all.clone());

        let mut singles = Vec::new();
        let mut single_head = ChainHead::genesis();
        for p in all.iter().cloned() {
            let (mut records, next) = chain(&single_head, vec![p]);
            singles.append(&mut records);
            single_head = next;
        }
        assert_eq!(one_batch, singles);
        assert_eq!(head, single_head);

        let (first, mid) = chain(&ChainHead::genesis(), all[..4].to_vec());
        let (rest, end) = chain(&mid, all[4..].to_vec());
        assert_eq!([first, rest].concat(), one_batch);
        assert_eq!(end, head);
        assert_eq!(ChainHead::after(one_batch.last()), head);
        assert_eq!(head.seq, 10);
        assert_eq!(one_batch[0].prev_hash, GENESIS_HASH);
        assert!(head.hash.len() == 64 && head.hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(head.hash, head.hash.to_lowercase());

        let report = verify(&one_batch, &[]);
        assert_eq!(
            report,
            VerifyReport {
                ok: true,
                entries: 10,
                head_hash: head.hash.clone(),
                first_bad_seq: None
            }
        );
        let (none, same) = chain(&head, Vec::new());
        assert!(none.is_empty());
        assert_eq!(same, head);
    }

    #[test]
    fn the_report_serializes_in_camel_case() {
        let report = verify(&[], &[]);
        assert_eq!(
            serde_json::to_value(&report).expect("json"),
            json!({"ok": true, "entries": 0, "headHash": GENESIS_HASH, "firstBadSeq": null})
        );
    }

    #[test]
    fn details_key_order_does_not_matter_but_values_do() {
        let mut a = build(1).remove(0);
        let mut b = a.clone();
        a.details = serde_json::from_str(r#"{"x":1,"y":{"p":true,"q":[1,"s"]}}"#).expect("json");
        b.details = serde_json::from_str(r#"{"y":{"q":[1,"s"],"p":true},"x":1}"#).expect("json");
        assert_eq!(record_hash(&a), record_hash(&b));
        b.details = json!({"x": 2, "y": {"p": true, "q": [1, "s"]}});
        assert_ne!(record_hash(&a), record_hash(&b));
        b.details = json!({"x": 1.0, "y": {"p": true, "q": [1, "s"]}});
        assert_eq!(
            record_hash(&a),
            record_hash(&b),
            "1.0 and 1 are the same number"
        );
    }

    #[test]
    fn fields_cannot_bleed_into_each_other() {
        let mut a = build(1).remove(0);
        let mut b = a.clone();
        a.ip = Some("1.2.3.4".into());
        a.user_agent = None;
        b.ip = None;
        b.user_agent = Some("1.2.3.4".into());
        assert_ne!(record_hash(&a), record_hash(&b));
        a.ip = Some("ab".into());
        a.action = "c".into();
        b.ip = Some("a".into());
        b.user_agent = a.user_agent.clone();
        b.action = "bc".into();
        assert_ne!(record_hash(&a), record_hash(&b));
    }

    #[test]
    fn an_update_of_any_field_is_detected_at_its_seq() {
        type FieldEdit = (&'static str, fn(&mut AuditRecord));
        let records = build(6);
        let edits: Vec<FieldEdit> = vec![
            ("timestamp", |r| r.timestamp += 1),
            ("actor", |r| r.actor_id = Some(UserId::new())),
            ("ip", |r| r.ip = Some("192.168.1.1".into())),
            ("user agent", |r| r.user_agent = None),
            ("action", |r| r.action.push('x')),
            ("details", |r| r.details["n"] = json!(99)),
            ("prev hash", |r| {
                r.prev_hash = GENESIS_HASH.replace('0', "1")
            }),
            ("hash", |r| r.hash = GENESIS_HASH.into()),
        ];
        for (name, edit) in edits {
            let mut tampered = records.clone();
            edit(&mut tampered[3]);
            let report = verify(&tampered, &[]);
            assert!(!report.ok, "{name}");
            assert_eq!(report.first_bad_seq, Some(4), "{name}");
            assert_eq!(report.entries, 6);
        }
    }

    #[test]
    fn an_update_with_a_recomputed_hash_is_detected() {
        let mut records = build(6);
        records[2].action = "nothing.to.see".into();
        records[2].hash = record_hash(&records[2]);
        let report = verify(&records, &[]);
        assert_eq!(report.first_bad_seq, Some(3));

        // Rewriting the whole rest of the chain consistently needs a checkpoint.
        let original = build(6);
        let checkpoint = checkpoint_at(&original, 5);
        let mut rewritten = original.clone();
        rewritten[2].action = "nothing.to.see".into();
        let head = ChainHead::after(Some(&rewritten[1]));
        let pending = rewritten[2..]
            .iter()
            .map(|r| PendingAudit {
                timestamp: r.timestamp,
                actor_id: r.actor_id,
                ip: r.ip.clone(),
                user_agent: r.user_agent.clone(),
                action: r.action.clone(),
                details: r.details.clone(),
            })
            .collect();
        let (tail, _) = chain(&head, pending);
        rewritten.truncate(2);
        rewritten.extend(tail);
        assert!(
            verify(&rewritten, &[]).ok,
            "undetectable without checkpoints"
        );
        let vouched = checkpoint_at(&original, 2);
        let report = verify(&rewritten, &[vouched.clone(), checkpoint.clone()]);
        assert_eq!(report.first_bad_seq, Some(3), "after the last vouched seq");
        assert_eq!(verify(&rewritten, &[checkpoint]).first_bad_seq, Some(1));
    }

    #[test]
    fn a_deleted_middle_row_is_detected() {
        let mut records = build(6);
        records.remove(2);
        let report = verify(&records, &[]);
        assert!(!report.ok);
        assert_eq!(report.first_bad_seq, Some(3));
        assert_eq!(report.entries, 5);
    }

    #[test]
    fn a_swapped_pair_is_detected() {
        // Rows exchanged whole (seq included) and read back in seq order:
        // the contents are swapped under the seqs.
        let original = build(6);
        let mut swapped = original.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        assert_eq!(verify(&swapped, &[]).first_bad_seq, Some(3));

        // Fed out of order.
        let mut out_of_order = original.clone();
        out_of_order.swap(2, 3);
        assert_eq!(verify(&out_of_order, &[]).first_bad_seq, Some(3));
    }

    #[test]
    fn a_deleted_tail_is_detected_by_a_checkpoint() {
        let records = build(8);
        let checkpoint = checkpoint_at(&records, 8);
        assert!(verify(&records, std::slice::from_ref(&checkpoint)).ok);

        let truncated = &records[..5];
        assert!(
            verify(truncated, &[]).ok,
            "a shorter chain is valid on its own"
        );
        let report = verify(truncated, &[checkpoint]);
        assert!(!report.ok);
        assert_eq!(report.first_bad_seq, Some(6));
        assert_eq!(report.head_hash, records[4].hash);
    }

    #[test]
    fn a_checkpoint_that_disagrees_with_the_chain_is_detected() {
        let records = build(4);
        let other = build(4);
        let checkpoint = checkpoint_at(&other, 3);
        let report = verify(&records, &[checkpoint]);
        assert_eq!(report.first_bad_seq, Some(1));
    }

    #[test]
    fn forged_checkpoints_are_rejected() {
        let records = build(3);
        let good = checkpoint_at(&records, 3);
        let key = signing_key().verifying_key();
        assert!(verify_checkpoint(&key, &good));

        let forgeries = [
            Checkpoint {
                seq: 9,
                ..good.clone()
            },
            Checkpoint {
                time: 2,
                ..good.clone()
            },
            Checkpoint {
                head_hash: records[1].hash.clone(),
                ..good.clone()
            },
            Checkpoint {
                signature: "00".repeat(64),
                ..good.clone()
            },
            Checkpoint {
                signature: "zz".into(),
                ..good.clone()
            },
            sign_checkpoint(
                &SigningKey::from_bytes(&[8u8; 32]),
                "test",
                3,
                &records[2].hash,
                1,
            ),
        ];
        for forged in forgeries {
            assert!(!verify_checkpoint(&key, &forged), "{forged:?}");
            let report = verify(&records, &[forged]);
            assert!(!report.ok);
        }
    }

    #[test]
    fn checkpoints_of_retired_keys_are_ignored_only_when_covered() {
        let records = build(5);
        let old = Checkpoint {
            key_id: "retired".into(),
            ..checkpoint_at(&records, 3)
        };
        let newer = checkpoint_at(&records, 4);
        assert!(verify(&records, &[old.clone(), newer]).ok);
        let report = verify(&records, &[old]);
        assert_eq!(report.first_bad_seq, Some(3));
    }

    #[test]
    fn keyring_checkpoints_verify_from_the_keyring_alone() {
        let keyring = Keyring::generate();
        let version = keyring.active_version();
        let key = keyring.checkpoint_signing_key(version).expect("key");
        let records = build(2);
        let cp = sign_checkpoint(
            &key,
            &Keyring::checkpoint_key_id(version),
            2,
            &records[1].hash,
            5,
        );
        let mut v =
            ChainVerifier::with_checkpoints([&cp], |id| keyring.checkpoint_verifying_key(id).ok());
        records.iter().for_each(|r| v.feed(r));
        assert!(v.finish().ok);
        let vk = keyring
            .checkpoint_verifying_key(&cp.key_id)
            .expect("known id");
        assert!(verify_checkpoint(&vk, &cp));
    }

    #[test]
    fn the_checkpoint_file_appends_and_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = CheckpointFile::new(dir.path().join("checkpoints.jsonl"));
        assert!(file.read_all().expect("missing is empty").is_empty());
        let records = build(3);
        let a = checkpoint_at(&records, 2);
        let b = checkpoint_at(&records, 3);
        file.append(&a).expect("append");
        // A torn write after the first line is skipped, and the next append
        // starts on a line of its own.
        std::fs::OpenOptions::new()
            .append(true)
            .open(file.path())
            .and_then(|mut f| f.write_all(b"{\"seq\":3,\"hea"))
            .expect("tear");
        assert_eq!(file.read_all().expect("torn tail"), vec![a.clone()]);
        file.append(&b).expect("append");
        let err = file.read_all().expect_err("a bad middle line");
        assert!(err.to_string().contains("line 2"), "{err}");

        let clean = CheckpointFile::new(dir.path().join("clean.jsonl"));
        clean.append(&a).expect("append");
        clean.append(&b).expect("append");
        assert_eq!(clean.read_all().expect("read"), vec![a, b]);
    }

    /// `verify_store` can run in a spawned task or an axum handler.
    #[allow(dead_code)]
    fn verify_store_is_send(store: &dyn Store, keyring: &Keyring) {
        fn send<T: Send>(_: T) {}
        send(verify_store(store, keyring, None));
    }

    /// An in-memory audit table for `verify_source`.
    struct Table {
        records: Vec<AuditRecord>,
        checkpoints: Vec<Checkpoint>,
    }

    #[async_trait::async_trait]
    impl AuditSource for Table {
        async fn audit_range(
            &self,
            after: u64,
            limit: u32,
        ) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(self
                .records
                .iter()
                .filter(|r| r.seq > after)
                .take(limit as usize)
                .cloned()
                .collect())
        }

        async fn list_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
            Ok(self.checkpoints.clone())
        }
    }

    #[tokio::test]
    async fn verify_store_pages_and_checks_both_checkpoint_sources() {
        let keyring = Keyring::generate();
        let v = keyring.active_version();
        let key = keyring.checkpoint_signing_key(v).expect("key");
        let id = Keyring::checkpoint_key_id(v);
        let n = u64::from(VERIFY_PAGE) * 2 + 17;
        let (records, head) = chain(&ChainHead::genesis(), (1..=n).map(pending).collect());
        let in_db = sign_checkpoint(&key, &id, 100, &records[99].hash, 1);
        let at_head = sign_checkpoint(&key, &id, n, &head.hash, 2);

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("checkpoints.jsonl");
        let file = CheckpointFile::new(&path);
        file.append(&in_db).expect("append");
        file.append(&at_head).expect("append");

        let table = Table {
            records,
            checkpoints: vec![in_db],
        };
        let report = verify_source(
            &table,
            &CheckpointKeys::Keyring(&keyring),
            Some(&path),
            Vec::new(),
        )
        .await
        .expect("verify");
        assert_eq!(
            report,
            VerifyReport {
                ok: true,
                entries: n,
                head_hash: head.hash,
                first_bad_seq: None
            }
        );

        // A database rollback: the tail and its checkpoint are gone from the
        // database, but the file remembers the head.
        let mut rolled_back = table;
        rolled_back.records.truncate(6_000);
        let report = verify_source(
            &rolled_back,
            &CheckpointKeys::Keyring(&keyring),
            Some(&path),
            Vec::new(),
        )
        .await
        .expect("verify");
        assert_eq!(report.first_bad_seq, Some(6_001));
        assert_eq!(report.entries, 6_000);
        let without_file = verify_source(
            &rolled_back,
            &CheckpointKeys::Keyring(&keyring),
            None,
            Vec::new(),
        )
        .await
        .expect("verify");
        assert!(without_file.ok);
        let missing = dir.path().join("none.jsonl");
        assert!(
            verify_source(
                &rolled_back,
                &CheckpointKeys::Keyring(&keyring),
                Some(&missing),
                Vec::new()
            )
            .await
            .expect("ok")
            .ok
        );
    }

    #[tokio::test]
    async fn public_keys_alone_verify_and_outside_checkpoints_catch_a_rollback() {
        let keyring = Keyring::generate();
        let v = keyring.active_version();
        let key = keyring.checkpoint_signing_key(v).expect("key");
        let id = Keyring::checkpoint_key_id(v);
        let (records, head) = chain(&ChainHead::genesis(), (1..=20).map(pending).collect());
        let outside = sign_checkpoint(&key, &id, 20, &head.hash, 3);
        let other = SigningKey::from_bytes(&[3u8; 32]).verifying_key();
        let text = format!(
            "{}, {}\n",
            public_key_line(&id, &key.verifying_key()),
            public_key_line("mk99", &other)
        );
        let public = parse_public_keys(&text).expect("two keys");
        assert_eq!(public.len(), 2);
        let keys = CheckpointKeys::Public(&public);

        let whole = Table {
            records: records.clone(),
            checkpoints: Vec::new(),
        };
        let report = verify_source(&whole, &keys, None, vec![outside.clone()])
            .await
            .expect("verify");
        assert!(report.ok, "{report:?}");

        // The database lost its tail and its own checkpoints with it: only
        // the checkpoint kept elsewhere tells.
        let rolled_back = Table {
            records: records[..12].to_vec(),
            checkpoints: Vec::new(),
        };
        let alone = verify_source(&rolled_back, &keys, None, Vec::new())
            .await
            .expect("verify");
        assert!(alone.ok);
        let report = verify_source(&rolled_back, &keys, None, vec![outside.clone()])
            .await
            .expect("verify");
        assert_eq!(report.first_bad_seq, Some(13));

        // A public key that is not the signer's: the checkpoint is forged.
        let wrong: HashMap<String, VerifyingKey> = [(id.clone(), other)].into();
        let report = verify_source(&whole, &CheckpointKeys::Public(&wrong), None, vec![outside])
            .await
            .expect("verify");
        assert!(!report.ok);

        for bad in ["", "mk1", "mk1:abcd", &format!("mk1:{}", "zz".repeat(32))] {
            assert!(parse_public_keys(bad).is_err(), "{bad:?}");
        }
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Timestamp,
        Actor,
        Ip,
        UserAgent,
        Action,
        Details,
        PrevHash,
        Hash,
        Seq,
        Delete,
        SwapWithNext,
    }

    proptest! {
        #[test]
        fn any_single_edit_is_detected(
            n in 1u64..12,
            at in any::<prop::sample::Index>(),
            edit in prop_oneof![
                Just(Edit::Timestamp), Just(Edit::Actor), Just(Edit::Ip),
                Just(Edit::UserAgent), Just(Edit::Action), Just(Edit::Details),
                Just(Edit::PrevHash), Just(Edit::Hash), Just(Edit::Seq),
                Just(Edit::Delete), Just(Edit::SwapWithNext),
            ],
            salt in "[a-z]{1,8}",
        ) {
            let records = build(n);
            let i = at.index(n as usize);
            let head = checkpoint_at(&records, n);
            let mut tampered = records.clone();
            let r = &mut tampered[i];
            match edit {
                Edit::Timestamp => r.timestamp = r.timestamp.wrapping_add(1),
                Edit::Actor => r.actor_id = match r.actor_id {
                    Some(_) => None,
                    None => Some(UserId::new()),
                },
                Edit::Ip => r.ip = Some(format!("{}{salt}", r.ip.clone().unwrap_or_default())),
                Edit::UserAgent => r.user_agent = Some(salt.clone()),
                Edit::Action => r.action.push_str(&salt),
                Edit::Details => r.details[&salt] = json!(salt),
                Edit::PrevHash => r.prev_hash = record_hash(r),
                Edit::Hash => r.hash = GENESIS_HASH.into(),
                Edit::Seq => r.seq += n,
                Edit::Delete => { tampered.remove(i); }
                Edit::SwapWithNext => {
                    prop_assume!(i + 1 < tampered.len());
                    tampered.swap(i, i + 1);
                }
            }
            let report = verify(&tampered, &[head]);
            prop_assert!(!report.ok, "{:?} at {} undetected", edit, i + 1);
            prop_assert_eq!(report.first_bad_seq, Some(i as u64 + 1));
        }
    }
}
