//! `courier export verify FILE`: checks an export against its signature
//! and against the audit chain, and prints a JSON verdict.
//!
//! Checks, all of them every time (the verdict lists each problem):
//! 1. `FILE.sig` is a signature of this format whose Ed25519 signature, by
//!    the key it names (from the keyring, or `--public-key` alone), covers
//!    the file's SHA-256 and the chain head;
//! 2. the file's SHA-256 is the one signed;
//! 3. the file parses: a header naming the same chain head, a footer whose
//!    counts are the file's;
//! 4. every audit entry in the file recomputes to its own hash, is at or
//!    below the head, and is the stored chain's entry of that seq (the same
//!    hash);
//! 5. the stored chain still holds the head: walked once from genesis to
//!    the head's seq, every entry links to the one before and recomputes to
//!    its hash, and the last has the head's hash (a stored row changed
//!    after the export, even one the file does not carry, fails this).
//!
//! Content that fails a check is a verdict (`ok: false`, exit 2); only a
//! file that cannot be read or a store that cannot be reached is an error.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use courier_actors::audit::chain::{self, ChainHead, VERIFY_PAGE};
use courier_actors::durable::store::DynStore;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::format::{self, Counts, Line, SignatureFile};
use super::ExportError;
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// The most problems a verdict lists (the count is always whole).
const MAX_LISTED: usize = 50;

/// `courier export verify`'s arguments.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The export file; its signature is `FILE.sig`.
    pub file: PathBuf,
    /// `--public-key`: verify with these public keys alone (`mk1:<hex>`, as
    /// `courier audit public-key` prints them); the master keys are not
    /// read.
    pub public_keys: Option<String>,
}

/// What `courier export verify` found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Every check passed.
    pub ok: bool,
    /// The file checked.
    pub file: PathBuf,
    /// The key the signature names.
    pub key_id: Option<String>,
    /// The signature verifies, by a known key, over what the file is.
    pub signature_valid: bool,
    /// The file's SHA-256 is the one signed.
    pub sha256_matches: bool,
    /// The chain head the export was taken at (from the signature).
    pub chain_head: Option<ChainHead>,
    /// The stored chain still holds that head.
    pub head_held: bool,
    /// Audit entries in the file.
    pub audit_entries: u64,
    /// Every one recomputes to its hash and equals the stored entry.
    pub entries_match: bool,
    /// The lowest seq of an entry that does not.
    pub first_bad_seq: Option<u64>,
    /// The file parses, its header names the signed head and its footer
    /// counts its lines.
    pub file_well_formed: bool,
    /// What failed, in words (at most 50; `problemCount` has them all).
    pub problems: Vec<String>,
    /// How many checks failed.
    pub problem_count: usize,
}

impl Verdict {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(text);
        }
    }
}

/// Runs `courier export verify`: prints the verdict as JSON on stdout.
pub async fn verify(config: &Config, options: &VerifyOptions) -> Result<Verdict, ExportError> {
    let public = match &options.public_keys {
        Some(text) => Some(chain::parse_public_keys(text).map_err(ExportError::Invalid)?),
        None => None,
    };
    let keyring = match &public {
        Some(_) => None,
        None => Some(secrets::resolve(config)?.keyring),
    };
    let key_for = |key_id: &str| -> Option<VerifyingKey> {
        match (&public, &keyring) {
            (Some(keys), _) => keys.get(key_id).copied(),
            (None, Some(ring)) => ring.checkpoint_verifying_key(key_id).ok(),
            (None, None) => None,
        }
    };
    let mut verdict = Verdict {
        ok: false,
        file: options.file.clone(),
        key_id: None,
        signature_valid: false,
        sha256_matches: false,
        chain_head: None,
        head_held: false,
        audit_entries: 0,
        entries_match: true,
        first_bad_seq: None,
        file_well_formed: true,
        problems: Vec::new(),
        problem_count: 0,
    };

    let sha256 = file_sha256(&options.file)?;
    let sig_path = format::signature_path(&options.file);
    let sig_bytes = std::fs::read(&sig_path).map_err(|e| ExportError::io(&sig_path, e))?;
    let sig = match serde_json::from_slice::<SignatureFile>(&sig_bytes) {
        Ok(sig) if sig.format == format::SIGNATURE_FORMAT => Some(sig),
        Ok(sig) => {
            verdict.problem(format!(
                "{}: unknown format {:?}",
                sig_path.display(),
                sig.format
            ));
            None
        }
        Err(e) => {
            verdict.problem(format!("{}: not a signature file: {e}", sig_path.display()));
            None
        }
    };
    if let Some(sig) = &sig {
        verdict.key_id = Some(sig.key_id.clone());
        verdict.chain_head = Some(sig.chain_head.clone());
        verdict.sha256_matches = sig.sha256 == sha256;
        if !verdict.sha256_matches {
            verdict.problem(format!(
                "the file's SHA-256 is {sha256}, the signature's {}",
                sig.sha256
            ));
        }
        match key_for(&sig.key_id) {
            None => verdict.problem(format!("no key {:?} to verify with", sig.key_id)),
            Some(key) => {
                let message = format::signed_message(&sig.key_id, &sig.sha256, &sig.chain_head);
                let mut bytes = [0u8; 64];
                let valid = hex::decode_to_slice(&sig.signature, &mut bytes).is_ok()
                    && key
                        .verify_strict(&message, &Signature::from_bytes(&bytes))
                        .is_ok();
                // Valid only over what the file is: the hash must match too.
                verdict.signature_valid = valid && verdict.sha256_matches;
                if !valid {
                    verdict.problem(format!("the signature does not verify by {}", sig.key_id));
                }
            }
        }
    }

    let head = sig.as_ref().map(|s| s.chain_head.clone());
    let entries = check_lines(&options.file, head.as_ref(), &mut verdict)?;
    let store = open_store(config).await?;
    if let Some(head) = &head {
        walk_chain(&store, head, &entries, &mut verdict).await?;
    }
    verdict.ok = verdict.problem_count == 0
        && verdict.signature_valid
        && verdict.sha256_matches
        && verdict.head_held
        && verdict.entries_match
        && verdict.file_well_formed;
    println!(
        "{}",
        serde_json::to_string(&verdict).map_err(ExportError::json)?
    );
    Ok(verdict)
}

fn file_sha256(path: &Path) -> Result<String, ExportError> {
    let mut file = std::fs::File::open(path).map_err(|e| ExportError::io(path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| ExportError::io(path, e))?;
        if n == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}

/// The audit entries of the file that recompute to their hash: seq to
/// (hash, line number).
type FileEntries = BTreeMap<u64, (String, usize)>;

/// Check 3 and the first half of 4: reads the file line by line; returns
/// the entries to compare with the stored chain.
fn check_lines(
    path: &Path,
    head: Option<&ChainHead>,
    verdict: &mut Verdict,
) -> Result<FileEntries, ExportError> {
    let file = std::fs::File::open(path).map_err(|e| ExportError::io(path, e))?;
    let mut entries = FileEntries::new();
    let mut counts = Counts::default();
    let mut header_seen = false;
    let mut footer: Option<Counts> = None;
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let number = index + 1;
        let bytes = line.map_err(|e| ExportError::io(path, e))?;
        let parsed = match serde_json::from_slice::<Line>(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                verdict.file_well_formed = false;
                verdict.problem(format!("line {number} is not an export line: {e}"));
                continue;
            }
        };
        if footer.is_some() {
            verdict.file_well_formed = false;
            verdict.problem(format!("line {number} follows the footer"));
        }
        match parsed {
            Line::Header(h) => {
                if header_seen || number != 1 {
                    verdict.file_well_formed = false;
                    verdict.problem(format!("line {number}: a second header"));
                }
                header_seen = true;
                if h.format != format::FORMAT {
                    verdict.file_well_formed = false;
                    verdict.problem(format!("unknown format {:?}", h.format));
                }
                if head.is_some_and(|head| *head != h.chain_head) {
                    verdict.file_well_formed = false;
                    verdict.problem("the header's chain head is not the signed one".into());
                }
            }
            Line::Channel(_) => counts.channels += 1,
            Line::Member(_) => counts.members += 1,
            Line::Message(_) => counts.messages += 1,
            Line::Edit(_) => counts.edits += 1,
            Line::Deletion(_) => counts.deletions += 1,
            Line::Audit(a) => {
                counts.audit_entries += 1;
                let entry = a.entry;
                let bad = |verdict: &mut Verdict, why: &str| {
                    let text = format!("audit entry {} (line {number}) {why}", entry.seq);
                    mark_bad(verdict, entry.seq, text);
                };
                if chain::record_hash(&entry) != entry.hash {
                    bad(verdict, "does not recompute to its hash");
                } else if head.is_some_and(|head| entry.seq > head.seq) {
                    bad(verdict, "is past the export's chain head");
                } else {
                    entries.insert(entry.seq, (entry.hash.clone(), number));
                }
                if a.channel_id.to_string()
                    != entry
                        .details
                        .get("channelId")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                {
                    verdict.file_well_formed = false;
                    verdict.problem(format!(
                        "audit entry {} (line {number}) is not its channel's",
                        entry.seq
                    ));
                }
            }
            Line::Footer(f) => footer = Some(f.counts),
        }
    }
    verdict.audit_entries = counts.audit_entries;
    if !header_seen {
        verdict.file_well_formed = false;
        verdict.problem("no header".into());
    }
    match footer {
        None => {
            verdict.file_well_formed = false;
            verdict.problem("no footer: the file is cut short".into());
        }
        Some(f) if f != counts => {
            verdict.file_well_formed = false;
            verdict.problem(format!(
                "the footer counts {f:?}, the file holds {counts:?}"
            ));
        }
        Some(_) => {}
    }
    Ok(entries)
}

/// Check 5 and the second half of 4: walks the stored chain from genesis
/// to the head, once. The head is held when every entry up to it links to
/// the one before and recomputes to its hash, and the entry at the head's
/// seq has the head's hash; each of the file's entries must be the stored
/// one of its seq (same hash, and so the same fields).
async fn walk_chain(
    store: &DynStore,
    head: &ChainHead,
    entries: &FileEntries,
    verdict: &mut Verdict,
) -> Result<(), ExportError> {
    let mut prev = ChainHead::genesis();
    let mut broken: Option<u64> = None;
    let mut seen = 0usize;
    'pages: while prev.seq < head.seq {
        let page = store.audit_range(prev.seq, VERIFY_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for record in page {
            if record.seq > head.seq {
                break 'pages;
            }
            if broken.is_none()
                && (record.seq != prev.seq + 1
                    || record.prev_hash != prev.hash
                    || chain::record_hash(&record) != record.hash)
            {
                broken = Some(record.seq);
            }
            if let Some((hash, number)) = entries.get(&record.seq) {
                seen += 1;
                if *hash != record.hash {
                    mark_bad(
                        verdict,
                        record.seq,
                        format!(
                            "audit entry {} (line {number}) differs from the stored entry",
                            record.seq
                        ),
                    );
                }
            }
            prev = ChainHead {
                seq: record.seq,
                hash: record.hash,
            };
        }
    }
    if seen < entries.len() {
        for (seq, (_, number)) in entries {
            if *seq > prev.seq {
                mark_bad(
                    verdict,
                    *seq,
                    format!("audit entry {seq} (line {number}) is not in the stored chain"),
                );
            }
        }
    }
    verdict.head_held = broken.is_none() && prev == *head;
    match broken {
        Some(seq) => verdict.problem(format!(
            "the stored chain is broken at seq {seq}, below the export's head {}",
            head.seq
        )),
        None if prev != *head => verdict.problem(format!(
            "the stored chain no longer holds the head {} at seq {}",
            head.hash, head.seq
        )),
        None => {}
    }
    Ok(())
}

/// Records an audit entry of the file that does not match.
fn mark_bad(verdict: &mut Verdict, seq: u64, why: String) {
    verdict.entries_match = false;
    verdict.first_bad_seq = Some(verdict.first_bad_seq.map_or(seq, |s| s.min(seq)));
    verdict.problem(why);
}
