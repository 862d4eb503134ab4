//! # RetentionActor: expiry and purges on an interval
//!
//! **Owns** nothing but its schedule.
//!
//! **Takes** [`RetentionMsg::Run`], sent to itself every `interval` (and
//! callable for tests and operators).
//!
//! **Does**, each run: deletes messages whose `ttlSeconds` passed (through
//! the persistence actor, like any delete) and pushes `message_deleted` to
//! the channel's joined connections; physically purges messages soft-deleted
//! more than `deleted_retention` ago; when `message_retention` is set, purges
//! messages older than it. Every run is audited with its counts.
//!
//! **Supervised by** the realtime root. **A crash** skips runs until restart;
//! nothing is lost, the next run catches up.

use std::time::Duration;

use courier_protocol::{ChannelId, MessageId};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};

use crate::audit::actor::AuditHandle;
use crate::audit::chain::PendingAudit;
use crate::durable::persistence::PersistenceHandle;
use crate::durable::store::{DynStore, WriteOp, WriteOutcome};

/// When and what to purge.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub interval: Duration,
    /// Soft-deleted messages are purged after this.
    pub deleted_retention: Duration,
    /// Messages older than this are purged; `None` keeps them.
    pub message_retention: Option<Duration>,
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub expired: u64,
    pub purged_deleted: u64,
    pub purged_old: u64,
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
        PersistenceHandle,
        AuditHandle,
        DerivedActorRef<Expired>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, store, persistence, audit, expiries): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(config.interval, || RetentionMsg::Run(None));
        Ok(RetentionState {
            config,
            store,
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
                RetentionReport::default()
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
                serde_json::json!({
                    "expired": report.expired,
                    "purgedDeleted": report.purged_deleted,
                    "purgedOld": report.purged_old,
                }),
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
    async fn run(&self) -> Result<RetentionReport, Box<dyn std::error::Error + Send + Sync>> {
        let mut report = RetentionReport::default();
        let now = crate::now_ms();
        loop {
            let expired = self.store.expired_messages(now, EXPIRE_BATCH).await?;
            let n = expired.len();
            for message in expired {
                let op = WriteOp::DeleteMessage {
                    id: message.id,
                    deleted_at: now,
                };
                if let WriteOutcome::Done = self.persistence.write(op).await? {
                    report.expired += 1;
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
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        report.purged_deleted = self
            .store
            .purge_deleted(now.saturating_sub(ms(self.config.deleted_retention)))
            .await?;
        if let Some(keep) = self.config.message_retention {
            report.purged_old = self
                .store
                .purge_older_than(now.saturating_sub(ms(keep)))
                .await?;
        }
        Ok(report)
    }
}
