//! [`PatientStore`]: the patient link's reads and writes (issue 36,
//! docs/protocol.md "Patient link"). Both backends implement it
//! (`sqlite_patients.rs`, `postgres_patients.rs`) over the columns of the
//! migrations `*_patients.sql`:
//!
//! - `messages.patient_ref` / `messages.patient_tag`: a message's own
//!   reference, sealed, and its keyed tag. Set by the insert of the message
//!   ([`super::Store::apply_batch`], in the batch's transaction, and only
//!   for messages that carry one).
//! - `channels.patient_ref` / `channels.patient_tag`: the channel's, set on
//!   create and by [`super::ChannelPatch::patient`].
//!
//! A message **concerns patient P** when its own tag is one of P's tags, or
//! its own tag is NULL and its channel's tag is one of P's tags. Every
//! lookup here (and the legal holds, disclosures and exports built on
//! [`PatientStore::patient_message_refs`]) uses that one rule. A lookup
//! takes P's tags under every keyring version
//! ([`MessageCipher::patient_tags`]), so rows tagged before a rotation are
//! found until `keys rotate` re-tags them.

use async_trait::async_trait;
use courier_protocol::{ChannelId, MessageId, PatientRef, UserId};

use super::{Channel, MessageRow, StoreError};
use crate::crypto::{CryptoError, MessageCipher, RefOwner};

/// A sealed reference with its tag: what a row stores.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientSeal {
    /// `version ‖ nonce ‖ ciphertext` (see [`crate::crypto::patient`]).
    pub sealed: Vec<u8>,
    /// The keyed tag under the version it was sealed with.
    pub tag: String,
}

impl std::fmt::Debug for PatientSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientSeal")
            .field("sealed_len", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

impl PatientSeal {
    /// Seals `reference` for `owner` and tags it, both under the active
    /// key version.
    pub fn new(
        cipher: &MessageCipher,
        owner: RefOwner,
        reference: &PatientRef,
    ) -> Result<PatientSeal, CryptoError> {
        let sealed = cipher.seal_patient_ref(owner, reference)?;
        let version = MessageCipher::patient_ref_version(&sealed).ok_or(CryptoError::Encryption)?;
        Ok(PatientSeal {
            tag: cipher.patient_tag(version, reference)?,
            sealed,
        })
    }
}

/// One message that concerns a patient, without its content: what legal
/// holds, the accounting of disclosures and exports start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientMessageRef {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

/// Where a page of [`PatientStore::patient_messages`] resumes: strictly
/// older than this message (`created_at`, then id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatientCursor {
    pub created_at: i64,
    pub message_id: MessageId,
}

/// Which row carries a sealed reference (key rotation's work list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedRefOwner {
    Message(MessageId),
    Channel(ChannelId),
}

impl SealedRefOwner {
    /// The owner the blob is bound to.
    pub fn ref_owner(self) -> RefOwner {
        match self {
            SealedRefOwner::Message(m) => RefOwner::Message(m),
            SealedRefOwner::Channel(c) => RefOwner::Channel(c),
        }
    }
}

/// A stored sealed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRefRow {
    pub owner: SealedRefOwner,
    pub sealed: Vec<u8>,
}

/// The patient link's rows.
#[async_trait]
pub trait PatientStore: Send + Sync {
    /// Channels whose own tag is one of `tags`, by name.
    async fn patient_channels(&self, tags: &[String]) -> Result<Vec<Channel>, StoreError>;

    /// Every message that concerns the patient of `tags` (the rule of the
    /// module doc), deleted ones too (not the tombstones of duplicate
    /// sends), by channel then seq.
    async fn patient_message_refs(
        &self,
        tags: &[String],
    ) -> Result<Vec<PatientMessageRef>, StoreError>;

    /// A page of the messages (not deleted) that concern the patient of
    /// `tags`, newest first (`created_at`, then id), older than `before`,
    /// at most `limit`, with their senders' names, flags and attachments.
    async fn patient_messages(
        &self,
        tags: &[String],
        before: Option<PatientCursor>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;

    /// Up to `limit` sealed references (of messages and channels) made
    /// under a key version other than `active`.
    async fn patient_refs_not_on_key(
        &self,
        active: u32,
        limit: u32,
    ) -> Result<Vec<SealedRefRow>, StoreError>;

    /// Stores re-sealed, re-tagged references: each replaces the row's
    /// blob only while it is still the one read (a reference changed
    /// meanwhile is left alone).
    async fn store_resealed_refs(
        &self,
        rows: &[(SealedRefRow, PatientSeal)],
    ) -> Result<(), StoreError>;

    /// How many sealed references (messages and channels) use `version`.
    async fn count_patient_ref_version(&self, version: u32) -> Result<u64, StoreError>;
}

/// The first four bytes of a blob sealed under `version` (what the
/// version queries compare).
pub(super) fn version_prefix(version: u32) -> Vec<u8> {
    version.to_be_bytes().to_vec()
}
