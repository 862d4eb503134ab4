//! Turning stored rows back into messages: decryption of history pages and
//! replays, shared by the channel actor, the connection actor and REST.
//!
//! A message's moderation flag is left out unless the reader may see flags
//! ([`Flags::Shown`]; the caller decides with `authz`).
//!
//! A ciphertext that fails authentication (changed, or moved to another row
//! or channel) is never returned as text: the read fails loudly, is logged
//! with the message id, and is counted.

use std::sync::Arc;

use courier_protocol::frames::MessageView;
use courier_protocol::{MessageId, PatientRef};
use metrics::counter;

use crate::crypto::{MessageCipher, RefOwner};
use crate::durable::store::{Channel, Flag, MessageRow, StoredMessage};
use crate::telemetry::names as m;

/// Pages larger than this are decrypted on the blocking pool.
const INLINE_ROWS: usize = 16;

/// Why stored messages could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A ciphertext failed authentication: tampering or corruption.
    #[error("message {0} failed its integrity check")]
    Integrity(MessageId),
    /// The decryption task could not run.
    #[error("decryption task failed")]
    Task,
}

/// Whether opened messages carry their moderation flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    /// No flag fields (everyone who may not see flags).
    Hidden,
    /// `flagged` on every message, with the flag's details when set.
    Shown,
}

/// Sets the flag fields of `view` from `flag` (for a reader who may see
/// flags).
pub fn show_flag(view: &mut MessageView, flag: Option<&Flag>) {
    view.flagged = Some(flag.is_some());
    view.flag_reason = flag.map(|f| f.reason.clone());
    view.flagged_by = flag.map(|f| f.by);
    view.flagged_at = flag.map(|f| f.at);
}

/// Opens a message's own `patientRef` (`None` when it has none); a blob
/// that fails authentication fails the read like its text would.
pub fn message_patient_ref(
    cipher: &MessageCipher,
    m: &StoredMessage,
) -> Result<Option<PatientRef>, HistoryError> {
    let Some(sealed) = m.patient_ref.as_deref() else {
        return Ok(None);
    };
    cipher
        .open_patient_ref(RefOwner::Message(m.id), sealed)
        .map(Some)
        .map_err(|e| {
            counter!(m::DECRYPT_FAILURES).increment(1);
            tracing::error!(message_id = %m.id, error = %e,
                "a message's patient reference failed authentication: tampered or corrupt");
            HistoryError::Integrity(m.id)
        })
}

/// Opens a channel's `patientRef` (`None` when it has none). A blob that
/// fails authentication is logged, counted and shown as no reference: a
/// channel stays usable, and its messages keep their own checks.
pub fn channel_patient_ref(cipher: &MessageCipher, channel: &Channel) -> Option<PatientRef> {
    let sealed = channel.patient_ref.as_deref()?;
    match cipher.open_patient_ref(RefOwner::Channel(channel.id), sealed) {
        Ok(r) => Some(r),
        Err(e) => {
            counter!(m::DECRYPT_FAILURES).increment(1);
            tracing::error!(channel_id = %channel.id, error = %e,
                "a channel's patient reference failed authentication: tampered or corrupt");
            None
        }
    }
}

/// Decrypts one row, without its flag.
pub fn open_row(cipher: &MessageCipher, row: MessageRow) -> Result<MessageView, HistoryError> {
    open_row_with(cipher, row, Flags::Hidden)
}

/// Decrypts one row, with its flag when `flags` says so.
pub fn open_row_with(
    cipher: &MessageCipher,
    row: MessageRow,
    flags: Flags,
) -> Result<MessageView, HistoryError> {
    let flag = match flags {
        Flags::Shown => Some(row.flag),
        Flags::Hidden => None,
    };
    let m = row.message;
    let plain = cipher
        .open(
            m.channel_id,
            m.id,
            m.seq,
            m.key_version,
            &m.nonce,
            &m.ciphertext,
        )
        .map_err(|e| {
            counter!(m::DECRYPT_FAILURES).increment(1);
            tracing::error!(message_id = %m.id, channel_id = %m.channel_id, seq = m.seq, error = %e,
                "stored message failed authentication: tampered or corrupt");
            HistoryError::Integrity(m.id)
        })?;
    let text = String::from_utf8(plain).map_err(|_| HistoryError::Integrity(m.id))?;
    let mut view = MessageView {
        id: m.id,
        channel_id: m.channel_id,
        seq: m.seq,
        sender_id: m.sender_id,
        sender: row.sender_username,
        text,
        timestamp: m.created_at,
        contains_phi: m.contains_phi,
        reply_to: m.reply_to,
        edited_at: m.edited_at,
        expires_at: m.expires_at,
        flagged: None,
        flag_reason: None,
        flagged_by: None,
        flagged_at: None,
        kind: m.kind,
        attachments: row
            .attachments
            .iter()
            .map(|f| crate::files::attachment_view(cipher, f))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                counter!(m::DECRYPT_FAILURES).increment(1);
                tracing::error!(message_id = %m.id, error = %e,
                    "an attachment's name failed authentication: tampered or corrupt");
                HistoryError::Integrity(m.id)
            })?,
        patient_ref: message_patient_ref(cipher, &m)?,
        mentions: row.mentions,
    };
    if let Some(flag) = flag {
        show_flag(&mut view, flag.as_ref());
    }
    Ok(view)
}

/// Decrypts a page of rows, off the reactor when the page is large, without
/// their flags. Messages whose `ttlSeconds` has passed are left out even
/// before the retention actor deletes them.
pub async fn open_rows(
    cipher: Arc<MessageCipher>,
    rows: Vec<MessageRow>,
) -> Result<Vec<MessageView>, HistoryError> {
    open_rows_with(cipher, rows, Flags::Hidden).await
}

/// [`open_rows`], with the flags when `flags` says so.
pub async fn open_rows_with(
    cipher: Arc<MessageCipher>,
    mut rows: Vec<MessageRow>,
    flags: Flags,
) -> Result<Vec<MessageView>, HistoryError> {
    let now = crate::now_ms();
    rows.retain(|r| r.message.expires_at.is_none_or(|t| t > now));
    let open = move |rows: Vec<MessageRow>| {
        rows.into_iter()
            .map(|r| open_row_with(&cipher, r, flags))
            .collect()
    };
    if rows.len() <= INLINE_ROWS {
        return open(rows);
    }
    tokio::task::spawn_blocking(move || open(rows))
        .await
        .map_err(|_| HistoryError::Task)?
}
