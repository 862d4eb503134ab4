//! `courier export`: reads a channel (or a patient's channels), decrypts
//! it, writes the JSON Lines file, signs it, and audits the export.
//!
//! The file is written as `FILE.partial` (0600: it holds decrypted
//! messages) and hashed as it goes; once complete and on disk the
//! `compliance.export` entry is appended to the chain, then the file takes
//! its name and `FILE.sig` is written. An export whose entry cannot be
//! appended leaves no file behind: nothing is disclosed unaudited.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use courier_actors::audit::chain::{ChainHead, PendingAudit};
use courier_actors::audit::reads;
use courier_actors::crypto::{Keyring, MessageCipher, RefOwner};
use courier_actors::durable::history;
use courier_actors::durable::private_files;
use courier_actors::durable::store::{Channel, DynStore, MessageRow, User};
use courier_protocol::{ChannelId, MessageId, PatientRef};
use ed25519_dalek::Signer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::format::{
    self, AuditLine, ChannelLine, Counts, DeletionLine, EditLine, Footer, Header, Line, MemberLine,
    MessageLine, Scope, SignatureFile,
};
use super::ExportError;
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// Rows read per query.
const PAGE: u32 = 500;

/// What to export.
#[derive(Clone, Debug)]
pub enum ExportScope {
    /// One channel.
    Channel(ChannelId),
    /// Every channel with a message concerning the patient; of those, the
    /// messages concerning the patient.
    Patient(PatientRef),
}

/// `courier export`'s arguments.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// `--channel` or `--patient`.
    pub scope: ExportScope,
    /// `--out`: the file to write (it must not exist); the signature goes
    /// beside it as `FILE.sig`.
    pub out: PathBuf,
    /// `--actor`: the username of whoever takes the export (the recipient
    /// of the disclosure, in the audit entry).
    pub actor: String,
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSummary {
    /// The file.
    pub file: PathBuf,
    /// Its signature.
    pub signature: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The chain head it was taken at.
    pub chain_head: ChainHead,
    /// What it holds.
    pub counts: Counts,
    /// The key that signed it.
    pub key_id: String,
}

/// Runs `courier export`: prints the summary as JSON on stdout.
pub async fn export(
    config: &Config,
    options: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    if options.out.exists() {
        return Err(ExportError::Invalid(format!(
            "{} exists already; an export never overwrites one",
            options.out.display()
        )));
    }
    let keyring = secrets::resolve(config)?.keyring;
    let store = open_store(config).await?;
    let actor = authorized_actor(&store, &options.actor, &options.scope).await?;
    let cipher = MessageCipher::new(keyring.clone());

    // The head first: every audit line is at or below it, whatever the
    // broker appends while the export runs.
    let head = ChainHead::after(store.audit_head().await?.as_ref());
    let (scope, plan) = plan(&store, &cipher, &options.scope).await?;
    let total: u64 = plan.iter().map(|c| c.expected).sum();

    let partial = partial_path(&options.out);
    let file = private_files::open(
        &partial,
        std::fs::OpenOptions::new().write(true).create_new(true),
    )
    .map_err(|e| ExportError::io(&partial, e))?;
    let mut out = Output {
        writer: HashingWriter::new(BufWriter::new(file)),
        path: partial.clone(),
        counts: Counts::default(),
    };
    let progress = progress_bar(total);
    let written = write_all(
        &store, &cipher, &head, &scope, &actor, &plan, &mut out, &progress,
    )
    .await;
    progress.finish_and_clear();
    let finished = written.and_then(|disclosed| {
        let (writer, sha256) = out.writer.finish();
        let file = writer
            .into_inner()
            .map_err(|e| ExportError::io(&partial, e.into_error()))?;
        file.sync_all().map_err(|e| ExportError::io(&partial, e))?;
        Ok((disclosed, sha256))
    });
    let (disclosed, sha256) = match finished {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let counts = out.counts;

    let version = keyring.active_version();
    let key_id = Keyring::checkpoint_key_id(version);
    let signing = keyring.checkpoint_signing_key(version)?;
    let signature = signing.sign(&format::signed_message(&key_id, &sha256, &head));
    let sig = SignatureFile {
        format: format::SIGNATURE_FORMAT.to_owned(),
        key_id: key_id.clone(),
        sha256: sha256.clone(),
        chain_head: head.clone(),
        signature: hex::encode(signature.to_bytes()),
    };

    // Durable before the file takes its name and before success is told.
    // `disclosed` and `via` as every read entry writes them (audit::reads).
    let mut details = reads::details_multi(disclosed, "export");
    details["scope"] = json!(scope);
    details["counts"] = json!(counts);
    details["sha256"] = json!(sha256);
    details["chainHead"] = json!(head);
    details["keyId"] = json!(key_id);
    let entry = PendingAudit::new(Some(actor.id), None, "compliance.export", details);
    if let Err(e) = crate::commands::append_audit(&*store, entry).await {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    std::fs::rename(&partial, &options.out).map_err(|e| ExportError::io(&options.out, e))?;
    let sig_path = format::signature_path(&options.out);
    let sig_text = serde_json::to_vec_pretty(&sig).map_err(ExportError::json)?;
    let mut sig_file = private_files::open(
        &sig_path,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
    )
    .map_err(|e| ExportError::io(&sig_path, e))?;
    sig_file
        .write_all(&sig_text)
        .and_then(|()| sig_file.write_all(b"\n"))
        .and_then(|()| sig_file.sync_all())
        .map_err(|e| ExportError::io(&sig_path, e))?;

    let summary = ExportSummary {
        file: options.out.clone(),
        signature: sig_path,
        sha256,
        chain_head: head,
        counts,
        key_id,
    };
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(ExportError::json)?
    );
    Ok(summary)
}

/// The actor, when they exist, are not disabled and hold what the scope
/// needs: `audit.read` (the export carries the channel's audit entries),
/// and `patients.read` for a patient's export.
async fn authorized_actor(
    store: &DynStore,
    username: &str,
    scope: &ExportScope,
) -> Result<User, ExportError> {
    let user = store
        .get_user_by_username(username)
        .await?
        .ok_or_else(|| ExportError::Invalid(format!("--actor {username:?}: no such user")))?;
    if user.disabled_at.is_some() {
        return Err(ExportError::Refused(format!(
            "--actor {username:?} is disabled"
        )));
    }
    let held = store.role_permissions(user.role).await?;
    let mut needed = vec!["audit.read"];
    if matches!(scope, ExportScope::Patient(_)) {
        needed.push("patients.read");
    }
    for permission in needed {
        if !held.iter().any(|p| p == permission) {
            return Err(ExportError::Refused(format!(
                "--actor {username:?} ({}) lacks the {permission} permission",
                user.role.as_str()
            )));
        }
    }
    Ok(user)
}

/// One channel to export, and which of its messages.
struct Planned {
    channel: Channel,
    /// `None`: every message; `Some`: only these seqs (the patient's).
    only: Option<BTreeSet<u64>>,
    /// About how many messages it has (for the progress bar).
    expected: u64,
}

/// The channels of the scope, in order, and the scope as the file names it.
async fn plan(
    store: &DynStore,
    cipher: &MessageCipher,
    scope: &ExportScope,
) -> Result<(Scope, Vec<Planned>), ExportError> {
    match scope {
        ExportScope::Channel(id) => {
            let channel = store
                .get_channel(*id)
                .await?
                .ok_or_else(|| ExportError::Invalid(format!("no channel {id}")))?;
            let expected = store.last_seq(*id).await?;
            Ok((
                Scope::ChannelId(*id),
                vec![Planned {
                    channel,
                    only: None,
                    expected,
                }],
            ))
        }
        ExportScope::Patient(reference) => {
            let tags = cipher.patient_tags(reference)?;
            let tag = cipher.active_patient_tag(reference)?;
            let refs = store.patient_message_refs(&tags).await?;
            let mut planned: Vec<Planned> = Vec::new();
            for r in refs {
                match planned.last_mut() {
                    Some(p) if p.channel.id == r.channel_id => {
                        p.only.get_or_insert_with(BTreeSet::new).insert(r.seq);
                    }
                    _ => {
                        let Some(channel) = store.get_channel(r.channel_id).await? else {
                            continue;
                        };
                        planned.push(Planned {
                            channel,
                            only: Some(BTreeSet::from([r.seq])),
                            expected: 0,
                        });
                    }
                }
            }
            for p in &mut planned {
                p.expected = p.only.as_ref().map_or(0, |s| s.len() as u64);
            }
            Ok((Scope::PatientTag(tag), planned))
        }
    }
}

/// Where the file is written until it is complete and audited.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    name.into()
}

/// A bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} exporting [{bar:40}] {pos}/{len} messages ({elapsed}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The file being written, hashed as it goes, with its counts.
struct Output {
    writer: HashingWriter<BufWriter<std::fs::File>>,
    path: PathBuf,
    counts: Counts,
}

impl Output {
    fn line(&mut self, line: &Line) -> Result<(), ExportError> {
        let path = &self.path;
        serde_json::to_writer(&mut self.writer, line)
            .map_err(|e| ExportError::io(path, e.into()))?;
        self.writer
            .write_all(b"\n")
            .map_err(|e| ExportError::io(path, e))?;
        let c = &mut self.counts;
        match line {
            Line::Channel(_) => c.channels += 1,
            Line::Member(_) => c.members += 1,
            Line::Message(_) => c.messages += 1,
            Line::Edit(_) => c.edits += 1,
            Line::Deletion(_) => c.deletions += 1,
            Line::Audit(_) => c.audit_entries += 1,
            Line::Header(_) | Line::Footer(_) => {}
        }
        Ok(())
    }
}

/// Writes every line; returns the messages it decrypted (channel, seq).
#[allow(clippy::too_many_arguments)]
async fn write_all(
    store: &DynStore,
    cipher: &MessageCipher,
    head: &ChainHead,
    scope: &Scope,
    actor: &User,
    plan: &[Planned],
    out: &mut Output,
    progress: &ProgressBar,
) -> Result<Vec<(ChannelId, u64)>, ExportError> {
    out.line(&Line::Header(Header {
        format: format::FORMAT.to_owned(),
        created_at: courier_actors::now_ms(),
        scope: scope.clone(),
        chain_head: head.clone(),
        actor_id: actor.id,
        actor: actor.username.clone(),
    }))?;
    let mut disclosed = Vec::new();
    for planned in plan {
        progress.set_message(planned.channel.name.clone());
        let seqs = write_channel(store, cipher, head, planned, out, progress).await?;
        disclosed.extend(seqs.into_iter().map(|seq| (planned.channel.id, seq)));
    }
    let counts = out.counts.clone();
    out.line(&Line::Footer(Footer { counts }))?;
    Ok(disclosed)
}

/// One channel's lines; returns the seqs of the messages decrypted.
async fn write_channel(
    store: &DynStore,
    cipher: &MessageCipher,
    head: &ChainHead,
    planned: &Planned,
    out: &mut Output,
    progress: &ProgressBar,
) -> Result<Vec<u64>, ExportError> {
    let channel = &planned.channel;
    let patient_ref = match &channel.patient_ref {
        Some(blob) => Some(
            cipher
                .open_patient_ref(RefOwner::Channel(channel.id), blob)?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    out.line(&Line::Channel(ChannelLine {
        id: channel.id,
        name: channel.name.clone(),
        description: channel.description.clone(),
        kind: channel.kind.as_str().to_owned(),
        created_by: channel.created_by,
        created_at: channel.created_at,
        archived_at: channel.archived_at,
        patient_ref,
    }))?;

    for member in store.list_members(channel.id).await? {
        let username = store.get_user(member.user_id).await?.map(|u| u.username);
        out.line(&Line::Member(MemberLine {
            channel_id: channel.id,
            user_id: member.user_id,
            username,
            role: member.role.as_str().to_owned(),
            joined_at: member.joined_at,
            last_read_seq: member.last_read_seq,
            last_delivered_seq: member.last_delivered_seq,
        }))?;
    }

    let mut seqs = Vec::new();
    let mut exported: HashSet<MessageId> = HashSet::new();
    let mut after = 0;
    loop {
        let rows = store.export_messages(channel.id, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.message.seq;
        for row in rows {
            let m = &row.message;
            let tombstone = m.key_version == 0 && m.ciphertext.is_empty();
            let wanted = planned.only.as_ref().is_none_or(|s| s.contains(&m.seq));
            if tombstone || !wanted {
                continue;
            }
            let line = message_line(cipher, row)?;
            seqs.push(line.seq);
            exported.insert(line.id);
            out.line(&Line::Message(line))?;
            progress.inc(1);
        }
    }

    // Edits and deletions, from the chain, of the messages exported.
    let mut changes = Vec::new();
    let mut after = 0;
    loop {
        let entries = store
            .channel_audit(channel.id, after, head.seq, PAGE)
            .await?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for e in entries {
            if e.action != "message.edit" && e.action != "message.delete" {
                continue;
            }
            let field = |name: &str| e.details.get(name).cloned();
            let Some(message_id) = field("messageId")
                .and_then(|v| serde_json::from_value::<MessageId>(v).ok())
                .filter(|id| exported.contains(id))
            else {
                continue;
            };
            let seq = field("seq").and_then(|v| v.as_u64()).unwrap_or_default();
            changes.push(if e.action == "message.edit" {
                Line::Edit(EditLine {
                    channel_id: channel.id,
                    message_id,
                    seq,
                    at: e.timestamp,
                    by: e.actor_id,
                    audit_seq: e.seq,
                })
            } else {
                Line::Deletion(DeletionLine {
                    channel_id: channel.id,
                    message_id,
                    seq,
                    at: e.timestamp,
                    by: e.actor_id,
                    reason: field("reason").and_then(|v| v.as_str().map(str::to_owned)),
                    audit_seq: e.seq,
                })
            });
        }
    }
    changes.sort_by_key(|l| matches!(l, Line::Deletion(_)));
    for line in &changes {
        out.line(line)?;
    }

    // The channel's audit entries in full, up to the head.
    let mut after = 0;
    loop {
        let entries = store
            .channel_audit(channel.id, after, head.seq, PAGE)
            .await?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for entry in entries {
            out.line(&Line::Audit(AuditLine {
                channel_id: channel.id,
                entry,
            }))?;
        }
    }
    Ok(seqs)
}

/// A stored message decrypted into its line.
fn message_line(cipher: &MessageCipher, row: MessageRow) -> Result<MessageLine, ExportError> {
    let deleted_at = row.message.deleted_at;
    // The text, the attachments' names and the message's own patientRef,
    // each failing loudly when it does not authenticate.
    let view = history::open_row(cipher, row).map_err(ExportError::History)?;
    Ok(MessageLine {
        id: view.id,
        channel_id: view.channel_id,
        seq: view.seq,
        sender_id: view.sender_id,
        sender: view.sender,
        text: view.text,
        created_at: view.timestamp,
        edited_at: view.edited_at,
        deleted_at,
        expires_at: view.expires_at,
        kind: view.kind.as_str().to_owned(),
        contains_phi: view.contains_phi,
        reply_to: view.reply_to,
        attachments: view.attachments,
        patient_ref: view.patient_ref.map(|r| r.as_str().to_owned()),
    })
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
        }
    }

    /// The writer, flushed by its owner, and the hex SHA-256 of all written.
    fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
