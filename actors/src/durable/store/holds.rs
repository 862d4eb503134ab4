//! [`HoldStore`]: legal holds, and the retention reads and purges that
//! respect them. Both backends implement it (`sqlite_holds.rs`,
//! `postgres_holds.rs`) over the same tables (migrations `*_legal_holds.sql`):
//!
//! - `legal_holds`: one row per hold, placed and (later) released; never
//!   deleted.
//! - `legal_hold_tags`: a patient hold's tags, one per keyring version,
//!   recomputed from its sealed reference by every retention run
//!   ([`crate::compliance::holds::refresh_tags`]).
//!
//! A message is *held* while an active hold covers it ([`held!`]): a hold on
//! its channel, on its sender, or on a patient it concerns (its own
//! `patient_tag` is one of the hold's tags, or its own tag is NULL and its
//! channel's is). The store's expiry and purge queries
//! ([`Store::expired_messages`](super::Store::expired_messages),
//! [`Store::purge_deleted`](super::Store::purge_deleted),
//! [`Store::purge_older_than`](super::Store::purge_older_than), the per-kind
//! purges here) leave held messages alone, and the file sweep
//! (`FILES_TO_PURGE`) keeps the files a held message carries.

use async_trait::async_trait;
use courier_protocol::frames::MessageKind;
use courier_protocol::{ChannelId, UserId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::StoreError;

/// The SQL condition "an active legal hold covers this message", on the
/// nearest `messages` row in scope (written `messages.<column>`, so use it
/// where `messages` is not aliased). A macro so that `concat!` can build
/// whole statements with it.
macro_rules! held {
    () => {
        "EXISTS (SELECT 1 FROM legal_holds h WHERE h.released_at IS NULL AND (
               (h.scope = 'channel' AND h.channel_id = messages.channel_id)
            OR (h.scope = 'user' AND h.user_id = messages.sender_id)
            OR (h.scope = 'patient' AND EXISTS (
                   SELECT 1 FROM legal_hold_tags t WHERE t.hold_id = h.id
                   AND t.tag = COALESCE(messages.patient_tag,
                       (SELECT hc.patient_tag FROM channels hc WHERE hc.id = messages.channel_id))))))"
    };
}
pub(super) use held;

/// The condition as a string.
pub(super) const HELD: &str = held!();

/// A legal hold's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(pub Uuid);

impl HoldId {
    /// A fresh, random id.
    pub fn new() -> Self {
        HoldId(Uuid::new_v4())
    }
}

impl Default for HoldId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for HoldId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for HoldId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(HoldId)
    }
}

impl Serialize for HoldId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HoldId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("invalid UUID string"))
    }
}

/// What a hold covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldTarget {
    /// Every message of the channel.
    Channel(ChannelId),
    /// Every message the user sent.
    User(UserId),
    /// Every message concerning the patient: the reference sealed with
    /// `RefOwner::Record(b'h', <hold id>)`, and its tag under the key
    /// version active when the hold was placed (what is shown).
    Patient { sealed_ref: Vec<u8>, tag: String },
}

impl HoldTarget {
    /// `channel`, `user` or `patient`.
    pub fn scope(&self) -> &'static str {
        match self {
            HoldTarget::Channel(_) => "channel",
            HoldTarget::User(_) => "user",
            HoldTarget::Patient { .. } => "patient",
        }
    }
}

/// One legal hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegalHold {
    pub id: HoldId,
    pub target: HoldTarget,
    pub reason: String,
    pub placed_by: UserId,
    pub placed_at: i64,
    pub released_at: Option<i64>,
    pub released_by: Option<UserId>,
    pub release_reason: Option<String>,
}

impl LegalHold {
    /// Whether it still holds.
    pub fn active(&self) -> bool {
        self.released_at.is_none()
    }
}

/// What a retention run does to one message kind, as cut-offs (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindPlan {
    pub kind: MessageKind,
    /// Messages soft-deleted before this are purged.
    pub deleted_before: i64,
    /// Messages created before this are purged; `None` keeps them.
    pub older_before: Option<i64>,
}

/// What a run would do to one kind at `now` (see
/// [`HoldStore::retention_figures`]), unheld messages only, and how many
/// messages it would have touched but a hold keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindFigures {
    /// TTL passed, not deleted: would be deleted (then pushed).
    pub expire: u64,
    /// Soft-deleted before the grace: would be purged.
    pub purge_deleted: u64,
    /// Older than the kind's maximum age and not purged as deleted:
    /// would be purged (expired ones of this run included).
    pub purge_old: u64,
    /// Held messages one of the three would have touched.
    pub held: u64,
}

/// Legal holds and hold-aware retention.
#[async_trait]
pub trait HoldStore: Send + Sync {
    /// Records a new hold with its lookup tags (patient holds; empty
    /// otherwise), in one transaction.
    async fn insert_hold(&self, hold: &LegalHold, tags: &[String]) -> Result<(), StoreError>;
    /// One hold, active or released.
    async fn get_hold(&self, id: HoldId) -> Result<Option<LegalHold>, StoreError>;
    /// Every hold, active and released, newest first.
    async fn list_holds(&self) -> Result<Vec<LegalHold>, StoreError>;
    /// Releases an active hold; the hold as it is now, `None` when there
    /// is no such hold or it was released already.
    async fn release_hold(
        &self,
        id: HoldId,
        by: UserId,
        at: i64,
        reason: &str,
    ) -> Result<Option<LegalHold>, StoreError>;
    /// Replaces a hold's lookup tags and, when `resealed` is given, its
    /// sealed reference (sealed again under the active key version).
    async fn set_hold_tags(
        &self,
        id: HoldId,
        tags: &[String],
        resealed: Option<&[u8]>,
    ) -> Result<(), StoreError>;
    /// Whether an active hold covers the channel or any message in it
    /// (deleting it would destroy held messages).
    async fn channel_held(&self, channel: ChannelId) -> Result<bool, StoreError>;
    /// What a run with `plan` would do at `now`, per kind, in `plan`'s
    /// order; reads only.
    async fn retention_figures(
        &self,
        now: i64,
        plan: &[KindPlan],
    ) -> Result<Vec<KindFigures>, StoreError>;
    /// Physically removes unheld messages of `kind` soft-deleted before
    /// `before`; returns how many.
    async fn purge_deleted_kind(&self, kind: MessageKind, before: i64) -> Result<u64, StoreError>;
    /// Physically removes unheld messages of `kind` created before
    /// `before`; returns how many.
    async fn purge_older_kind(&self, kind: MessageKind, before: i64) -> Result<u64, StoreError>;
}

/// The `retention_figures` query of one kind: `$1` now, `$2` deleted
/// before, `$3` created before (`i64::MIN` when kept), `$4` the kind;
/// one row per value of `held` (0 or 1).
pub(super) const KIND_FIGURES: &str = concat!(
    "SELECT held,
        sum(CASE WHEN expires_at IS NOT NULL AND expires_at <= $1 AND deleted_at IS NULL
                 THEN 1 ELSE 0 END) AS expire,
        sum(CASE WHEN deleted_at IS NOT NULL AND deleted_at < $2 THEN 1 ELSE 0 END) AS purge_deleted,
        sum(CASE WHEN created_at < $3 AND NOT (deleted_at IS NOT NULL AND deleted_at < $2)
                 THEN 1 ELSE 0 END) AS purge_old,
        count(*) AS n
     FROM (SELECT messages.expires_at, messages.deleted_at, messages.created_at,
                  CAST(CASE WHEN ",
    held!(),
    " THEN 1 ELSE 0 END AS BIGINT) AS held
           FROM messages
           WHERE messages.kind = $4
             AND ((messages.expires_at IS NOT NULL AND messages.expires_at <= $1
                   AND messages.deleted_at IS NULL)
               OR (messages.deleted_at IS NOT NULL AND messages.deleted_at < $2)
               OR messages.created_at < $3)) AS x
     GROUP BY held"
);

/// `channel_held`'s query: `$1` the channel.
pub(super) const CHANNEL_HELD: &str = concat!(
    "SELECT (EXISTS (SELECT 1 FROM legal_holds WHERE released_at IS NULL
                     AND scope = 'channel' AND channel_id = $1)
          OR EXISTS (SELECT 1 FROM messages WHERE messages.channel_id = $1 AND ",
    held!(),
    ")) AS held"
);

/// The purge predicates of the per-kind purges (`$1`: the cut-off; the
/// kind is a literal from [`MessageKind::as_str`]).
pub(super) fn kind_predicate(column: &str, kind: MessageKind) -> String {
    format!(
        "{column} < $1 AND kind = '{}' AND NOT {HELD}",
        kind.as_str()
    )
}

/// Folds the rows of [`KIND_FIGURES`] (`held`, `expire`, `purge_deleted`,
/// `purge_old`, `n`).
pub(super) fn kind_figures<R: super::sql::SqlRow>(rows: &[R]) -> Result<KindFigures, StoreError> {
    let mut figures = KindFigures::default();
    for r in rows {
        let count = |col: &str| -> Result<u64, StoreError> {
            Ok(r.opt_int(col)?.unwrap_or(0).max(0) as u64)
        };
        if r.int("held")? == 0 {
            figures.expire = count("expire")?;
            figures.purge_deleted = count("purge_deleted")?;
            figures.purge_old = count("purge_old")?;
        } else {
            figures.held = count("n")?;
        }
    }
    Ok(figures)
}

/// Decodes a `legal_holds` row.
pub(super) fn legal_hold(r: &impl super::sql::SqlRow) -> Result<LegalHold, StoreError> {
    let corrupt = || StoreError::Corrupt("legal_holds: scope and target disagree".into());
    let target = match r.text("scope")?.as_str() {
        "channel" => HoldTarget::Channel(ChannelId(r.opt_uuid("channel_id")?.ok_or_else(corrupt)?)),
        "user" => HoldTarget::User(UserId(r.opt_uuid("user_id")?.ok_or_else(corrupt)?)),
        "patient" => HoldTarget::Patient {
            sealed_ref: r.bytes("patient_ref")?,
            tag: r.opt_text("patient_tag")?.unwrap_or_default(),
        },
        _ => return Err(StoreError::Corrupt("legal_holds.scope: unknown".into())),
    };
    Ok(LegalHold {
        id: HoldId(r.uuid("id")?),
        target,
        reason: r.text("reason")?,
        placed_by: UserId(r.uuid("placed_by")?),
        placed_at: r.int("placed_at")?,
        released_at: r.opt_int("released_at")?,
        released_by: r.opt_uuid("released_by")?.map(UserId),
        release_reason: r.opt_text("release_reason")?,
    })
}
