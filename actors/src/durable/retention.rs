//! # RetentionActor: expiry and purges on an interval, by message kind
//!
//! **Owns** nothing but its schedule.
//!
//! **Takes** [`RetentionMsg::Run`], sent to itself every `interval` (and
//! callable for tests and operators).
//!
//! **Does**, each run: recomputes the lookup tags of patient legal holds
//! ([`holds::refresh_tags`]); deletes messages whose `ttlSeconds` passed
//! (through the persistence actor, like any delete) and pushes
//! `message_deleted` to the channel's joined connections; then, kind by
//! kind (`text`, `image`, `file`, `system`), physically purges messages
//! soft-deleted more than `deleted_retention` ago and, when the kind has a
//! maximum age, messages older than it. Messages under a legal hold are
//! left alone by all three (the store's queries skip them), and the run
//! counts, per kind, the held messages it would otherwise have touched.
//! Every run is audited (`retention.run`) with its figures. [`preview`]
//! computes the same figures without changing a message: the dry run of
//! `courier retention report`.
//!
//! **Supervised by** the realtime root. **A crash** skips runs until restart;
//! nothing is lost, the next run catches up.

use std::sync::Arc;
use std::time::Duration;

use courier_protocol::frames::MessageKind;
use courier_protocol::{ChannelId, MessageId};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use serde::Serialize;

use crate::audit::actor::AuditHandle;
use crate::audit::chain::PendingAudit;
use crate::compliance::holds;
use crate::crypto::MessageCipher;
use crate::durable::persistence::PersistenceHandle;
use crate::durable::store::{DynStore, KindPlan, Store, WriteOp, WriteOutcome};

/// The kinds retention handles, in report order.
pub const KINDS: [MessageKind; 4] = [
    MessageKind::Text,
    MessageKind::Image,
    MessageKind::File,
    MessageKind::System,
];

/// A value per message kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByKind<T> {
    pub text: T,
    pub image: T,
    pub file: T,
    pub system: T,
}

impl<T: Copy> ByKind<T> {
    /// The same value for every kind.
    pub fn all(value: T) -> Self {
        ByKind {
            text: value,
            image: value,
            file: value,
            system: value,
        }
    }

    /// The value of `kind`.
    pub fn get(&self, kind: MessageKind) -> T {
        match kind {
            MessageKind::Text => self.text,
            MessageKind::Image => self.image,
            MessageKind::File => self.file,
            MessageKind::System => self.system,
        }
    }
}

/// When and what to purge.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub interval: Duration,
    /// Soft-deleted messages (of any kind) are purged after this.
    pub deleted_retention: Duration,
    /// Messages of a kind older than its age are purged; `None` keeps them.
    pub max_age: ByKind<Option<Duration>>,
}

impl RetentionConfig {
    /// The cut-offs of a run at `now`, kind by kind, in [`KINDS`] order.
    pub fn plan(&self, now: i64) -> Vec<KindPlan> {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        KINDS
            .iter()
            .map(|&kind| KindPlan {
                kind,
                deleted_before: now.saturating_sub(ms(self.deleted_retention)),
                older_before: self
                    .max_age
                    .get(kind)
                    .map(|age| now.saturating_sub(ms(age))),
            })
            .collect()
    }
}

/// What one run did (or, from [`preview`], would do) to one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindReport {
    pub kind: MessageKind,
    /// Deleted because their TTL passed.
    pub expired: u64,
    /// Purged: deleted longer ago than the grace.
    pub purged_deleted: u64,
    /// Purged: older than the kind's maximum age.
    pub purged_old: u64,
    /// Messages one of the three would have touched, kept by a legal hold.
    pub held: u64,
}

/// What one run did, in all and per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionReport {
    pub expired: u64,
    pub purged_deleted: u64,
    pub purged_old: u64,
    /// Messages kept by a legal hold that the run would otherwise have
    /// expired or purged.
    pub held: u64,
    /// The same, kind by kind ([`KINDS`] order).
    pub by_kind: Vec<KindReport>,
}

impl RetentionReport {
    /// A report with every kind at zero.
    fn empty() -> Self {
        RetentionReport {
            by_kind: KINDS
                .iter()
                .map(|&kind| KindReport {
                    kind,
                    ..KindReport::default()
                })
                .collect(),
            ..RetentionReport::default()
        }
    }

    fn kind_mut(&mut self, kind: MessageKind) -> &mut KindReport {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        &mut self.by_kind[i]
    }

    /// Sums the kinds into the totals.
    fn total(mut self) -> Self {
        self.expired = self.by_kind.iter().map(|k| k.expired).sum();
        self.purged_deleted = self.by_kind.iter().map(|k| k.purged_deleted).sum();
        self.purged_old = self.by_kind.iter().map(|k| k.purged_old).sum();
        self.held = self.by_kind.iter().map(|k| k.held).sum();
        self
    }

    /// The `details` of the run's `retention.run` audit entry.
    pub fn audit_details(&self) -> serde_json::Value {
        let by_kind: serde_json::Map<String, serde_json::Value> = self
            .by_kind
            .iter()
            .map(|k| {
                (
                    k.kind.as_str().to_owned(),
                    serde_json::json!({
                        "expired": k.expired,
                        "purgedDeleted": k.purged_deleted,
                        "purgedOld": k.purged_old,
                        "held": k.held,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "expired": self.expired,
            "purgedDeleted": self.purged_deleted,
            "purgedOld": self.purged_old,
            "held": self.held,
            "byKind": by_kind,
        })
    }
}

type RunError = Box<dyn std::error::Error + Send + Sync>;

/// What a run at `now` would do, changing no message: the figures of
/// `courier retention report`. Like a run, it first recomputes the patient
/// holds' lookup tags (the only write).
pub async fn preview(
    store: &dyn Store,
    cipher: &MessageCipher,
    config: &RetentionConfig,
    now: i64,
) -> Result<RetentionReport, RunError> {
    holds::refresh_tags(store, cipher).await?;
    let plan = config.plan(now);
    let figures = store.retention_figures(now, &plan).await?;
    let mut report = RetentionReport::empty();
    for (p, f) in plan.iter().zip(figures) {
        let k = report.kind_mut(p.kind);
        k.expired = f.expire;
        k.purged_deleted = f.purge_deleted;
        k.purged_old = f.purge_old;
        k.held = f.held;
    }
    Ok(report.total())
}

/// A message deleted because its `ttlSeconds` passed, told to whoever
/// serves its channel live (the channel directory, which passes it to the
/// channel's actor if one runs), so that joined clients see it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub seq: u64,
}

/// Messages of the retention actor.
pub enum RetentionMsg {
    /// Run now; answer with what was done when a port is given.
    Run(Option<RpcReplyPort<RetentionReport>>),
}

/// The actor.
pub struct RetentionActor;

/// Its handles.
pub struct RetentionState {
    config: RetentionConfig,
    store: DynStore,
    /// Opens patient holds' references to recompute their tags.
    cipher: Arc<MessageCipher>,
    persistence: PersistenceHandle,
    audit: AuditHandle,
    /// Where expiries are told; a type of this subsystem, so retention
    /// names nothing of the realtime side.
    expiries: DerivedActorRef<Expired>,
}

const EXPIRE_BATCH: u32 = 500;

impl Actor for RetentionActor {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = (
        RetentionConfig,
        DynStore,
        Arc<MessageCipher>,
        PersistenceHandle,
        AuditHandle,
        DerivedActorRef<Expired>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, store, cipher, persistence, audit, expiries): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(config.interval, || RetentionMsg::Run(None));
        Ok(RetentionState {
            config,
            store,
            cipher,
            persistence,
            audit,
            expiries,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        RetentionMsg::Run(reply): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let report = match state.run().await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "retention run failed; will retry next interval");
                RetentionReport::empty()
            }
        };
        // The purge is committed already; its entry is committed before the
        // run answers (and before the next run starts). Should it not be,
        // it stays queued and is appended when the store takes it.
        let appended = state
            .audit
            .append(PendingAudit::new(
                None,
                None,
                "retention.run",
                report.audit_details(),
            ))
            .await;
        if let Err(e) = appended {
            tracing::error!(error = %e, "the retention run's audit entry is not durable yet");
        }
        if let Some(reply) = reply {
            let _ = reply.send(report);
        }
        Ok(())
    }
}

impl RetentionState {
    async fn run(&self) -> Result<RetentionReport, RunError> {
        let now = crate::now_ms();
        // What holds keep, counted as the dry run counts it (after the
        // tags are refreshed, before anything changes).
        let held = preview(&*self.store, &self.cipher, &self.config, now).await?;
        let mut report = RetentionReport::empty();
        for k in &held.by_kind {
            report.kind_mut(k.kind).held = k.held;
        }
        loop {
            let expired = self.store.expired_messages(now, EXPIRE_BATCH).await?;
            let n = expired.len();
            for message in expired {
                let op = WriteOp::DeleteMessage {
                    id: message.id,
                    deleted_at: now,
                };
                if let WriteOutcome::Done = self.persistence.write(op).await? {
                    report.kind_mut(message.kind).expired += 1;
                    let _ = self.expiries.send_message(Expired {
                        channel_id: message.channel_id,
                        message_id: message.id,
                        seq: message.seq,
                    });
                }
            }
            if n < EXPIRE_BATCH as usize {
                break;
            }
        }
        for p in self.config.plan(now) {
            let deleted = self
                .store
                .purge_deleted_kind(p.kind, p.deleted_before)
                .await?;
            report.kind_mut(p.kind).purged_deleted = deleted;
            if let Some(before) = p.older_before {
                let old = self.store.purge_older_kind(p.kind, before).await?;
                report.kind_mut(p.kind).purged_old = old;
            }
        }
        Ok(report.total())
    }
}
