//! `courier retention report`: the dry run of retention. It computes what
//! the next run would do, kind by kind (messages whose TTL passed, deleted
//! ones past the grace, ones past their kind's maximum age) and how many a
//! legal hold keeps, with the same queries the retention actor runs
//! ([`courier_actors::durable::retention::preview`]), and lists the holds in
//! force. No message or file changes; the one write is the patient holds'
//! lookup tags, recomputed under the current keyring as every run does.

use courier_actors::compliance::holds;
use courier_actors::crypto::MessageCipher;
use courier_actors::durable::retention::{self, RetentionReport};
use courier_actors::durable::store::LegalHold;

use crate::commands::CommandError;
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// What the dry run found: the figures and the holds in force.
pub struct DryRun {
    pub report: RetentionReport,
    pub holds: Vec<LegalHold>,
}

/// Computes the dry run against the configured store.
pub async fn dry_run(config: &Config) -> Result<DryRun, CommandError> {
    let secrets = secrets::resolve(config)?;
    let store = open_store(config).await?;
    let cipher = MessageCipher::new(secrets.keyring);
    let report = retention::preview(
        &*store,
        &cipher,
        &config.retention(),
        courier_actors::now_ms(),
    )
    .await
    .map_err(|e| CommandError::Invalid(format!("retention report failed: {e}")))?;
    let holds = store
        .list_holds()
        .await?
        .into_iter()
        .filter(LegalHold::active)
        .collect();
    Ok(DryRun { report, holds })
}

/// The dry run as JSON: `{dryRun: true, ...report, holds: [...]}`.
pub fn to_json(run: &DryRun) -> serde_json::Value {
    let mut v = serde_json::to_value(&run.report).unwrap_or_default();
    v["dryRun"] = true.into();
    v["holds"] = run.holds.iter().map(holds::view).collect();
    v
}

/// The dry run as a table.
pub fn to_text(run: &DryRun, config: &Config) -> String {
    use std::fmt::Write;
    let plan = config.retention();
    let mut out = String::from("retention report (dry run: nothing was changed)\n\n");
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>14} {:>10} {:>8}  max age",
        "kind", "expire", "purge-deleted", "purge-old", "held"
    );
    for k in &run.report.by_kind {
        let age = match plan.max_age.get(k.kind) {
            Some(age) => format!("{} days", age.as_secs() / 86_400),
            None => "kept".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>14} {:>10} {:>8}  {age}",
            k.kind.as_str(),
            k.expired,
            k.purged_deleted,
            k.purged_old,
            k.held
        );
    }
    let r = &run.report;
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>14} {:>10} {:>8}",
        "total", r.expired, r.purged_deleted, r.purged_old, r.held
    );
    let _ = writeln!(
        out,
        "\ndeleted messages are purged {} days after deletion",
        plan.deleted_retention.as_secs() / 86_400
    );
    let _ = writeln!(out, "legal holds in force: {}", run.holds.len());
    for h in &run.holds {
        let target = match &h.target {
            courier_actors::durable::store::HoldTarget::Channel(c) => format!("channel {c}"),
            courier_actors::durable::store::HoldTarget::User(u) => format!("user {u}"),
            courier_actors::durable::store::HoldTarget::Patient { tag, .. } => {
                format!("patient tag {tag}")
            }
        };
        let _ = writeln!(out, "  {}  {target}  placed at {} ms", h.id, h.placed_at);
    }
    out
}

/// `courier retention report [--json]`: prints the dry run.
pub async fn run(config: &Config, json: bool) -> Result<DryRun, CommandError> {
    let dry = dry_run(config).await?;
    if json {
        println!("{}", to_json(&dry));
    } else {
        print!("{}", to_text(&dry, config));
    }
    Ok(dry)
}
