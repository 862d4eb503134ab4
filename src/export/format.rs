//! The export file's lines and its detached signature: what `courier export`
//! writes and `courier export verify` reads back (docs/export.md).
//!
//! The file is JSON Lines: one object per line, each with a `type`. A
//! [`Header`] first, then per channel a [`ChannelLine`], its [`MemberLine`]s,
//! [`MessageLine`]s, [`EditLine`]s, [`DeletionLine`]s and [`AuditLine`]s,
//! and a [`Footer`] last. The signature ([`SignatureFile`], `FILE.sig`)
//! signs the file's SHA-256 and the audit chain head the export was taken
//! at, under a domain label ([`signed_message`]).

use courier_actors::audit::chain::ChainHead;
use courier_actors::durable::store::AuditRecord;
use courier_protocol::frames::AttachmentView;
use courier_protocol::{ChannelId, MessageId, UserId};
use serde::{Deserialize, Serialize};

/// The `format` of a header this version writes and reads.
pub const FORMAT: &str = "courier-export/1";

/// The `format` of a signature file.
pub const SIGNATURE_FORMAT: &str = "courier-export-signature/1";

/// Domain label at the head of the signed message.
const SIGNATURE_DOMAIN: &[u8] = b"courier/export-signature/v1";

/// What the export covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// One channel, by id.
    ChannelId(ChannelId),
    /// Every channel with a message concerning one patient, named by the
    /// patient's tag under the keyring's active version (never the
    /// reference in clear).
    PatientTag(String),
}

/// The first line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// When the export was taken (ms since the epoch).
    pub created_at: i64,
    /// What it covers.
    pub scope: Scope,
    /// The audit chain head it was taken at: every audit line has a seq at
    /// or below it.
    pub chain_head: ChainHead,
    /// Who exported it (`--actor`).
    pub actor_id: UserId,
    /// Their username.
    pub actor: String,
}

/// A channel, before its members, messages and entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelLine {
    pub id: ChannelId,
    pub name: String,
    pub description: Option<String>,
    /// `public`, `private`, `direct` or `broadcast`.
    pub kind: String,
    pub created_by: UserId,
    pub created_at: i64,
    pub archived_at: Option<i64>,
    /// The channel's patient reference, decrypted, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<String>,
}

/// One member of a channel at the time of the export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberLine {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    /// `None` when the user no longer exists.
    pub username: Option<String>,
    /// `owner`, `moderator` or `member`.
    pub role: String,
    pub joined_at: i64,
    pub last_read_seq: u64,
    pub last_delivered_seq: u64,
}

/// One stored message, decrypted (deleted and expired ones included).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageLine {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub seq: u64,
    pub sender_id: UserId,
    /// The sender's username (empty when the user no longer exists).
    pub sender: String,
    pub text: String,
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// `text`, `image` or `file`.
    pub kind: String,
    #[serde(rename = "containsPHI")]
    pub contains_phi: bool,
    pub reply_to: Option<MessageId>,
    /// The files' metadata (id, name, type, size); never their content.
    pub attachments: Vec<AttachmentView>,
    /// The message's own patient reference, decrypted, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ref: Option<String>,
}

/// An edit of an exported message, from the chain's `message.edit` entry.
/// (An edit replaces the text: the earlier text is not kept anywhere.)
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditLine {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub seq: u64,
    /// When (the entry's timestamp).
    pub at: i64,
    /// Who.
    pub by: Option<UserId>,
    /// The audit entry that records it.
    pub audit_seq: u64,
}

/// A deletion of an exported message, from the chain's `message.delete`
/// entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletionLine {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub seq: u64,
    pub at: i64,
    pub by: Option<UserId>,
    /// The reason the deleter gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub audit_seq: u64,
}

/// One audit entry whose `details.channelId` is the channel, in full.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditLine {
    pub channel_id: ChannelId,
    pub entry: AuditRecord,
}

/// How many lines of each kind the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub channels: u64,
    pub members: u64,
    pub messages: u64,
    pub edits: u64,
    pub deletions: u64,
    pub audit_entries: u64,
}

/// The last line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Footer {
    pub counts: Counts,
}

/// One line of the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Line {
    Header(Header),
    Channel(ChannelLine),
    Member(MemberLine),
    Message(MessageLine),
    Edit(EditLine),
    Deletion(DeletionLine),
    Audit(AuditLine),
    Footer(Footer),
}

/// `FILE.sig`: the detached signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureFile {
    /// [`SIGNATURE_FORMAT`].
    pub format: String,
    /// The signing key, `mk<version>`: the keyring's checkpoint key of that
    /// version, whose public half `courier audit public-key` prints.
    pub key_id: String,
    /// SHA-256 of the export file, lowercase hex.
    pub sha256: String,
    /// The chain head the export was taken at (as in its header).
    pub chain_head: ChainHead,
    /// Ed25519 over [`signed_message`], hex.
    pub signature: String,
}

/// The bytes the signature covers: the domain label, then key id, file
/// hash, head seq and head hash, each length-prefixed (8 bytes, big-endian),
/// so no two inputs share an encoding.
pub fn signed_message(key_id: &str, sha256: &str, head: &ChainHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    for field in [
        SIGNATURE_DOMAIN,
        key_id.as_bytes(),
        sha256.as_bytes(),
        &head.seq.to_be_bytes(),
        head.hash.as_bytes(),
    ] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The path of the signature of `file`: `FILE.sig`.
pub fn signature_path(file: &std::path::Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_message_separates_its_fields() {
        let head = ChainHead {
            seq: 12,
            hash: "ab".into(),
        };
        let a = signed_message("mk1", "00ff", &head);
        let b = signed_message("mk10", "0ff", &head);
        assert_ne!(a, b);
        assert!(a.starts_with(&(SIGNATURE_DOMAIN.len() as u64).to_be_bytes()));
    }

    #[test]
    fn lines_carry_their_type() {
        let line = Line::Footer(Footer {
            counts: Counts::default(),
        });
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.starts_with(r#"{"type":"footer""#), "{text}");
        let back: Line = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Line::Footer(_)));
    }
}
