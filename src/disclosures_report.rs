//! `courier report disclosures --patient REF [--from T] [--to T] [--json]`:
//! the accounting of disclosures of one patient, as
//! `GET /api/patients/{ref}/disclosures` builds it
//! ([`courier_actors::compliance::disclosures::report`]), against the
//! configured store. A table on stdout, or with `--json` JSON Lines: one
//! line per disclosure (the REST report's `rows`, same fields), then one
//! line with the report's `from`, `to`, `chainHead`, `scanned`,
//! `patientMessages` and `rows` (their count). The run is itself audited
//! (`patient.disclosures_report`, `via: "cli"`, no actor, the patient's
//! keyed tag, never the reference). A broken audit chain prints why on
//! stderr and exits 2, as `courier audit verify` does.

use std::fmt::Write as _;

use courier_actors::audit::chain::PendingAudit;
use courier_actors::compliance::disclosures::{
    self, DisclosureError, DisclosureReport, DisclosureRow,
};
use courier_actors::crypto::MessageCipher;
use courier_protocol::PatientRef;
use serde_json::json;

use crate::commands::{append_audit, CommandError};
use crate::config::Config;
use crate::secrets;
use crate::server::open_store;

/// What the command was asked.
#[derive(Clone, Debug)]
pub struct Request {
    /// `--patient`.
    pub patient: String,
    /// `--from`: ms or RFC 3339; the epoch when absent.
    pub from: Option<String>,
    /// `--to`: ms or RFC 3339; now when absent.
    pub to: Option<String>,
    /// `--json`: JSON Lines instead of a table.
    pub json: bool,
}

/// How the run ended, when it ran.
pub enum Outcome {
    /// The report, printed.
    Report(DisclosureReport),
    /// The audit chain is broken at `seq`: nothing printed on stdout.
    Tampered { seq: u64, why: String },
}

/// Builds the report, audits the run and prints it (see the module doc).
pub async fn run(config: &Config, request: &Request) -> Result<Outcome, CommandError> {
    let invalid = |field: &str, why: &str| CommandError::Invalid(format!("{field}: {why}"));
    // Never echoed: a reference may be PHI.
    let patient = PatientRef::parse(&request.patient)
        .map_err(|e| CommandError::Invalid(format!("--patient: {e}")))?;
    let from = match &request.from {
        Some(t) => disclosures::parse_instant(t).map_err(|w| invalid("--from", w))?,
        None => 0,
    };
    let to = match &request.to {
        Some(t) => disclosures::parse_instant(t).map_err(|w| invalid("--to", w))?,
        None => courier_actors::now_ms().saturating_add(1),
    };
    if from >= to {
        return Err(invalid("--to", "must be after --from"));
    }
    let secrets = secrets::resolve(config)?;
    let store = open_store(config).await?;
    let cipher = MessageCipher::new(secrets.keyring);
    let tag = cipher
        .active_patient_tag(&patient)
        .map_err(|e| CommandError::Invalid(format!("the patient's tag: {e}")))?;
    let outcome = disclosures::report(&*store, &cipher, &patient, from, to).await;
    let mut details = json!({"patientTag": tag, "from": from, "to": to, "via": "cli"});
    let outcome = match outcome {
        Ok(report) => {
            details["ok"] = true.into();
            details["rows"] = report.rows.len().into();
            details["chainHeadSeq"] = report.chain_head.seq.into();
            Outcome::Report(report)
        }
        Err(DisclosureError::Tampered { seq, problem }) => {
            details["ok"] = false.into();
            details["brokenAt"] = seq.into();
            Outcome::Tampered {
                seq,
                why: problem.to_owned(),
            }
        }
        Err(DisclosureError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(CommandError::Invalid(e.to_string())),
    };
    append_audit(
        &*store,
        PendingAudit::new(None, None, "patient.disclosures_report", details),
    )
    .await?;
    match &outcome {
        Outcome::Report(report) if request.json => print!("{}", to_json_lines(report)),
        Outcome::Report(report) => print!("{}", to_table(report)),
        Outcome::Tampered { seq, why } => {
            eprintln!("courier: the audit chain is broken at seq {seq} ({why}); no report");
        }
    }
    Ok(outcome)
}

/// JSON Lines: each row, then the summary.
pub fn to_json_lines(report: &DisclosureReport) -> String {
    let mut out = String::new();
    for row in &report.rows {
        out.push_str(&json!(row).to_string());
        out.push('\n');
    }
    let summary = json!({
        "from": report.from,
        "to": report.to,
        "chainHead": report.chain_head,
        "scanned": report.scanned,
        "patientMessages": report.patient_messages,
        "rows": report.rows.len(),
    });
    out.push_str(&summary.to_string());
    out.push('\n');
    out
}

/// A table, one line per disclosure, with the chain head under it.
pub fn to_table(report: &DisclosureReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:>13}  {:<20}  {:<15}  {:<17}  {:<9}  {:<36}  {:>4}  break-glass",
        "entry", "time (ms)", "reader", "address", "action", "via", "channel", "msgs",
    );
    for row in &report.rows {
        let _ = writeln!(out, "{}", table_line(row));
    }
    let _ = writeln!(
        out,
        "\n{} disclosure(s) of {} message(s) of the patient, window [{}, {}); \
         audit chain head seq {} hash {}",
        report.rows.len(),
        report.patient_messages,
        report.from,
        report.to,
        report.chain_head.seq,
        report.chain_head.hash
    );
    out
}

fn table_line(row: &DisclosureRow) -> String {
    let reader = match (&row.reader_username, row.reader_id) {
        (Some(name), _) => name.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => "(system)".into(),
    };
    format!(
        "{:>8}  {:>13}  {:<20}  {:<15}  {:<17}  {:<9}  {:<36}  {:>4}  {}",
        row.entry_seq,
        row.timestamp,
        reader,
        row.ip.as_deref().unwrap_or("-"),
        row.action,
        row.via.as_deref().unwrap_or("-"),
        row.channel_id,
        row.message_ids.len(),
        row.break_glass.as_deref().unwrap_or("-"),
    )
}
