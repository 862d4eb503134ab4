//! Turning stored rows back into messages: decryption of history pages and
//! replays, shared by the channel actor, the connection actor and REST.
//!
//! A ciphertext that fails authentication (changed, or moved to another row
//! or channel) is never returned as text: the read fails loudly, is logged
//! with the message id, and is counted.

use std::sync::Arc;

use courier_protocol::frames::MessageView;
use courier_protocol::MessageId;
use metrics::counter;

use crate::crypto::MessageCipher;
use crate::durable::store::MessageRow;
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

/// Decrypts one row.
pub fn open_row(cipher: &MessageCipher, row: MessageRow) -> Result<MessageView, HistoryError> {
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
    Ok(MessageView {
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
    })
}

/// Decrypts a page of rows, off the reactor when the page is large.
/// Messages whose `ttlSeconds` has passed are left out even before the
/// retention actor deletes them.
pub async fn open_rows(
    cipher: Arc<MessageCipher>,
    mut rows: Vec<MessageRow>,
) -> Result<Vec<MessageView>, HistoryError> {
    let now = crate::now_ms();
    rows.retain(|r| r.message.expires_at.is_none_or(|t| t > now));
    if rows.len() <= INLINE_ROWS {
        return rows.into_iter().map(|r| open_row(&cipher, r)).collect();
    }
    tokio::task::spawn_blocking(move || rows.into_iter().map(|r| open_row(&cipher, r)).collect())
        .await
        .map_err(|_| HistoryError::Task)?
}
