//! Disclosures over REST: the audit details of every REST read that shows
//! messages (history pages, one message, the flag queue; from the admin
//! console too), and `GET /api/patients/{ref}/disclosures`, the accounting
//! of disclosures of one patient ([`courier_actors::compliance::disclosures`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use courier_actors::audit::reads;
use courier_actors::compliance::disclosures::{self, DisclosureError, DisclosureReport};
use courier_actors::policy::authz::Action;
use courier_protocol::{ChannelId, ErrorCode, PatientRef};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use super::openapi::ErrorBody;
use crate::http::App;

/// The `via` of a REST read: `console` when the admin console's cookie
/// made the request (it carries no `Authorization` header), else `rest`.
pub(super) fn via(headers: &HeaderMap, rest: &'static str) -> &'static str {
    if headers.contains_key(header::AUTHORIZATION) {
        rest
    } else {
        "console"
    }
}

/// The details of a `history.read` entry for the messages `seqs` of
/// `channel` read by `caller` (see [`reads::details`]), marked when the
/// caller reads under a break-glass grant.
pub(super) fn read_details(
    app: &App,
    caller: &Caller,
    channel: ChannelId,
    seqs: impl IntoIterator<Item = u64>,
    via: &str,
) -> Value {
    let mut details = reads::details(channel, seqs, via);
    let grant =
        app.realtime
            .break_glass
            .active(channel, caller.identity.user_id, courier_actors::now_ms());
    reads::mark_break_glass(&mut details, grant);
    details
}

/// `GET /api/patients/{ref}/disclosures?from=&to=`: the accounting of
/// disclosures of one patient over `[from, to)` (ms since the epoch or RFC
/// 3339; `from` defaults to the epoch, `to` to now): every read of the
/// patient's messages the audit chain records (history pages, single
/// messages, recovery replays, live pushes delivered, the flag queue,
/// exports, console views), who read them from where, and the chain head
/// the report was built at. `{ref}` is the patient reference,
/// percent-encoded (`Patient%2F123`). Needs `patients.disclosures`;
/// audited as `patient.disclosures_report` with the patient's keyed tag,
/// never the reference. An audit chain that does not hold together over
/// the window fails the report (500, the message names the seq).
#[utoipa::path(
    get,
    path = "/api/patients/{ref}/disclosures",
    operation_id = "patients.disclosures",
    tag = "patients",
    summary = "The accounting of disclosures of a patient, built from the audit chain (patients.disclosures)",
    params(("ref" = String, Path, description = "The patient reference, percent-encoded (Patient%2F123)"), ("from" = Option<String>, Query, description = "Window start, included: ms since the epoch or RFC 3339 (the epoch)"), ("to" = Option<String>, Query, description = "Window end, excluded: ms since the epoch or RFC 3339 (now)")),
    responses((status = 200, description = "The report", body = DisclosureReport), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 500, description = "The audit chain is broken over the window (the message names the seq)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn report(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(reference): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(
        &app,
        Action::ReadDisclosures,
        "patients.disclosures",
        json!({}),
    )?;
    // Never echoed: a reference may be PHI.
    let patient =
        PatientRef::parse(&reference).map_err(|e| ApiError::invalid("ref", e.to_string()))?;
    let instant = |name: &'static str, default: i64| -> ApiResult<i64> {
        match query.text(name, 64)? {
            Some(text) => {
                disclosures::parse_instant(&text).map_err(|why| ApiError::invalid(name, why))
            }
            None => Ok(default),
        }
    };
    let from = instant("from", 0)?;
    let to = instant("to", courier_actors::now_ms().saturating_add(1))?;
    if from >= to {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    let tag = app
        .realtime
        .cipher
        .active_patient_tag(&patient)
        .map_err(ApiError::internal)?;
    let outcome = disclosures::report(&*app.store, &app.realtime.cipher, &patient, from, to).await;
    let mut details = json!({"patientTag": tag, "from": from, "to": to});
    match &outcome {
        Ok(report) => {
            details["ok"] = true.into();
            details["rows"] = report.rows.len().into();
            details["chainHeadSeq"] = report.chain_head.seq.into();
        }
        Err(DisclosureError::Tampered { seq, .. }) => {
            details["ok"] = false.into();
            details["brokenAt"] = (*seq).into();
        }
        Err(_) => {}
    }
    if !details["ok"].is_null() {
        caller
            .audit(&app, "patient.disclosures_report", details)
            .await?;
    }
    match outcome {
        Ok(report) => Ok(Json(json!(report))),
        Err(e) => Err(report_error(e)),
    }
}

/// A report's failure at the edge.
fn report_error(e: DisclosureError) -> ApiError {
    match e {
        DisclosureError::Window => ApiError::invalid("to", "must be after from"),
        DisclosureError::Store(e) => ApiError::from(e),
        DisclosureError::Tampered { .. } => {
            tracing::error!(error = %e, "a disclosure report found the audit chain broken");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        }
        DisclosureError::Crypto(e) => ApiError::internal(e),
    }
}
