//! # FileSweeper: purges and rescans on an interval
//!
//! **Owns** nothing but its schedule.
//!
//! **Takes** [`SweepMsg::Run`], sent to itself every `sweep_interval`
//! (and callable by tests and operators, with a port for the report).
//!
//! **Does**, each run:
//! - deletes the object, then the rows, of every file
//!   [`FileStore::files_to_purge`](crate::durable::store::FileStore::files_to_purge)
//!   names: its owner deleted it, every message carrying it was deleted,
//!   expired or purged (so a file goes with its message), its channel was
//!   deleted, or it was uploaded to a channel and not sent within
//!   `unsent_grace`. Each purge is audited (`file.purged`, with the reason).
//! - streams every file queued while the scanner was down (`pending_scan`)
//!   through clamd again: clean makes it downloadable (`file.scanned`),
//!   infected marks it deleted for the next purge (`file.infected`); the
//!   scanner still down leaves it queued.
//!
//! **Supervised by** the realtime root. **A crash** skips runs until the
//! restart; nothing is lost, the next run does what this one did not.

use std::sync::Arc;

use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::scan::Verdict;
use super::Files;
use crate::audit::actor::AuditHandle;
use crate::audit::chain::PendingAudit;
use crate::durable::store::FileState;

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub purged: u64,
    pub rescanned_clean: u64,
    pub rescanned_infected: u64,
}

/// Messages of the sweeper.
pub enum SweepMsg {
    Run(Option<RpcReplyPort<SweepReport>>),
}

/// The actor.
pub struct FileSweeper;

/// Its handles.
pub struct SweeperState {
    files: Arc<Files>,
    audit: AuditHandle,
}

/// Files handled per query.
const BATCH: u32 = 200;

impl Actor for FileSweeper {
    type Msg = SweepMsg;
    type State = SweeperState;
    type Arguments = (Arc<Files>, AuditHandle);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (files, audit): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(files.config.sweep_interval, || SweepMsg::Run(None));
        Ok(SweeperState { files, audit })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        SweepMsg::Run(reply): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut report = SweepReport::default();
        if let Err(e) = state.purge(&mut report).await {
            tracing::warn!(error = %e, "file purge failed; will retry next interval");
        }
        if let Err(e) = state.rescan(&mut report).await {
            tracing::warn!(error = %e, "file rescan failed; will retry next interval");
        }
        if let Some(reply) = reply {
            let _ = reply.send(report);
        }
        Ok(())
    }
}

impl SweeperState {
    async fn purge(&self, report: &mut SweepReport) -> Result<(), super::FileError> {
        let files = &self.files;
        loop {
            let unsent_before = crate::now_ms()
                .saturating_sub(files.config.unsent_grace.as_millis().min(i64::MAX as u128) as i64);
            let batch = files.store.files_to_purge(unsent_before, BATCH).await?;
            let n = batch.len();
            let records: Vec<_> = batch.iter().map(|(f, _)| f.clone()).collect();
            files.remove(&records).await?;
            for (f, reason) in &batch {
                // The rows are gone; the entries wait for the chain if the
                // store is slow (the audit actor queues them).
                self.audit.record(PendingAudit::new(
                    None,
                    None,
                    "file.purged",
                    serde_json::json!({
                        "fileId": f.id,
                        "channelId": f.channel_id,
                        "ownerId": f.owner_id,
                        "reason": reason.as_str(),
                        "size": f.size,
                    }),
                ));
            }
            report.purged += n as u64;
            metrics::counter!(crate::telemetry::names::FILES_PURGED).increment(n as u64);
            if n < BATCH as usize {
                return Ok(());
            }
        }
    }

    async fn rescan(&self, report: &mut SweepReport) -> Result<(), super::FileError> {
        let files = &self.files;
        let Some(clamd) = &files.config.scanner else {
            return Ok(());
        };
        for f in files.store.files_pending_scan(BATCH).await? {
            let Ok(mut session) = clamd.start().await else {
                return Ok(()); // still down: try again next run
            };
            // A file that does not stream (its object gone or altered) or
            // that clamd refuses (past StreamMaxLength) stays queued, and
            // the files behind it are still scanned.
            let mut content = match files.content(&f, None).await {
                Ok(content) => content,
                Err(e) => {
                    tracing::warn!(file_id = %f.id, error = %e, "a queued file cannot be read for its scan");
                    continue;
                }
            };
            let mut fed = true;
            while let Some(piece) = content.next().await {
                let fed_ok = match piece {
                    Ok(piece) => session.feed(&piece).await.is_ok(),
                    Err(e) => {
                        tracing::warn!(file_id = %f.id, error = %e, "a queued file stopped mid-scan");
                        false
                    }
                };
                if !fed_ok {
                    fed = false;
                    break;
                }
            }
            if !fed {
                continue;
            }
            let verdict = match session.finish().await {
                Ok(verdict) => verdict,
                Err(e) => {
                    tracing::warn!(file_id = %f.id, error = %e, "the rescan of a queued file failed");
                    continue;
                }
            };
            let (action, details) = match &verdict {
                Verdict::Clean => {
                    files.store.set_file_state(f.id, FileState::Ready).await?;
                    report.rescanned_clean += 1;
                    (
                        "file.scanned",
                        serde_json::json!({"fileId": f.id, "verdict": "clean"}),
                    )
                }
                Verdict::Infected { signature } => {
                    files.store.delete_file(f.id, crate::now_ms()).await?;
                    report.rescanned_infected += 1;
                    (
                        "file.infected",
                        serde_json::json!({"fileId": f.id, "signature": signature, "rescan": true}),
                    )
                }
            };
            // The system acted; the owner is in the details.
            let mut details = details;
            details["ownerId"] = serde_json::json!(f.owner_id);
            self.audit
                .record(PendingAudit::new(None, None, action, details));
        }
        Ok(())
    }
}
