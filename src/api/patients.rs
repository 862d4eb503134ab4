//! `/api/patients/{ref}/...`: the patient link (docs/protocol.md, "Patient
//! link"), and the helpers the other REST files use to take and show a
//! `patientRef`.
//!
//! - `GET /api/patients/{ref}/channels`: the channels linked to a patient.
//! - `GET /api/patients/{ref}/messages`: a page of the messages that
//!   concern the patient (the rule of `store::patients`), newest first.
//!
//! Both need `patients.read` ([`Action::ReadPatient`]); anyone else gets
//! 403 and an `access.denied` entry. `{ref}` is the reference,
//! percent-encoded (`Patient%2F123`); a reference of the wrong shape
//! answers `invalid_frame` without echoing it. Listing messages discloses
//! them: one `history.read` entry per channel read (`via: "patient_list"`,
//! `seqRanges`, docs/audit.md). No entry, log line or error holds a
//! reference in clear: entries name the patient by its keyed tag.
//!
//! (`/api/patients/{ref}/disclosures` is `disclosures.rs`'s.)

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use courier_actors::crypto::RefOwner;
use courier_actors::durable::history::{self, Flags};
use courier_actors::durable::store::{Channel, PatientCursor, PatientSeal};
use courier_actors::policy::authz::Action;
use courier_protocol::frames::MessageView;
use courier_protocol::{ChannelId, MessageId, PatientRef};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, QueryParams};
use super::openapi::ErrorBody;
use super::{disclosures, views};
use crate::http::App;

// ---- helpers for the other REST files ----------------------------------------

/// Parses a `patientRef` given in `field`; the error never echoes it.
pub(super) fn parse_ref(field: &'static str, raw: &str) -> ApiResult<PatientRef> {
    PatientRef::parse(raw).map_err(|e| {
        let why = e.to_string();
        let why = why.trim_start_matches("invalid patientRef: ").to_owned();
        ApiError::invalid(field, why)
    })
}

/// Seals `reference` for channel `id` (the row's `patient_ref` and tag).
pub(super) fn seal_for_channel(
    app: &App,
    id: ChannelId,
    reference: &PatientRef,
) -> ApiResult<PatientSeal> {
    PatientSeal::new(&app.realtime.cipher, RefOwner::Channel(id), reference)
        .map_err(ApiError::internal)
}

/// A channel's `patientRef`, opened (for a caller who may read it).
pub(super) fn channel_ref(app: &App, channel: &Channel) -> Option<PatientRef> {
    history::channel_patient_ref(&app.realtime.cipher, channel)
}

/// The patient's tags under every keyring version: what lookups match.
fn tags(app: &App, patient: &PatientRef) -> ApiResult<Vec<String>> {
    app.realtime
        .cipher
        .patient_tags(patient)
        .map_err(ApiError::internal)
}

/// The active tag: how audit entries name the patient.
fn active_tag(app: &App, patient: &PatientRef) -> ApiResult<String> {
    app.realtime
        .cipher
        .active_patient_tag(patient)
        .map_err(ApiError::internal)
}

// ---- the routes ---------------------------------------------------------------

/// `{channels}` of `GET /api/patients/{ref}/channels`.
#[derive(Serialize, ToSchema)]
#[schema(as = PatientChannels)]
pub struct PatientChannelsBody {
    #[schema(value_type = Vec<Object>)]
    channels: Vec<Value>,
}

/// `{messages, nextBefore}` of `GET /api/patients/{ref}/messages`.
#[derive(Serialize, ToSchema)]
#[schema(as = PatientMessages)]
#[serde(rename_all = "camelCase")]
pub struct PatientMessagesBody {
    messages: Vec<MessageView>,
    /// Pass as `before` for the next (older) page; `null` on the last.
    next_before: Option<String>,
}

/// `GET /api/patients/{ref}/channels`: `{channels}`, the channels linked to
/// the patient, by name, each with its `patientRef`. Needs `patients.read`;
/// audited as `patient.channels` with the patient's tag.
#[utoipa::path(
    get,
    path = "/api/patients/{ref}/channels",
    operation_id = "patients.channels",
    tag = "patients",
    summary = "The channels linked to a patient (patients.read)",
    params(("ref" = String, Path, description = "The patient reference, percent-encoded (Patient%2F123)")),
    responses((status = 200, description = "The channels", body = PatientChannelsBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn channels(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(reference): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadPatient, "patients.channels", json!({}))?;
    let patient = parse_ref("ref", &reference)?;
    let found = app.store.patient_channels(&tags(&app, &patient)?).await?;
    let mut channels = Vec::with_capacity(found.len());
    for channel in &found {
        let member = app
            .store
            .get_member(channel.id, caller.identity.user_id)
            .await?;
        channels.push(views::channel_full(
            channel,
            member.as_ref(),
            None,
            channel_ref(&app, channel),
        ));
    }
    caller
        .audit(
            &app,
            "patient.channels",
            json!({"patientTag": active_tag(&app, &patient)?, "count": channels.len()}),
        )
        .await?;
    Ok(Json(json!({"channels": channels})))
}

/// Parses `before` (`<createdAt>.<messageId>`, as `nextBefore` gives it).
fn parse_cursor(raw: &str) -> Option<PatientCursor> {
    let (at, id) = raw.split_once('.')?;
    Some(PatientCursor {
        created_at: at.parse().ok()?,
        message_id: MessageId(id.parse().ok()?),
    })
}

/// `GET /api/patients/{ref}/messages?limit=&before=`: `{messages,
/// nextBefore}`, the messages (not deleted) that concern the patient,
/// decrypted, newest first, `limit` (1 to 100, 50) at a time. Needs
/// `patients.read`. Each channel whose messages are shown gets a
/// `history.read` entry (`via: "patient_list"`, `seqRanges`, the patient's
/// tag).
#[utoipa::path(
    get,
    path = "/api/patients/{ref}/messages",
    operation_id = "patients.messages",
    tag = "patients",
    summary = "A page of the messages that concern a patient, newest first (patients.read)",
    params(("ref" = String, Path, description = "The patient reference, percent-encoded (Patient%2F123)"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (50)"), ("before" = Option<String>, Query, description = "The nextBefore of the previous page")),
    responses((status = 200, description = "A page of messages", body = PatientMessagesBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn messages(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(reference): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadPatient, "patients.messages", json!({}))?;
    let patient = parse_ref("ref", &reference)?;
    let limit = query.int_in("limit", 1, 100, 50)? as u32;
    let before = match query.text("before", 128)? {
        Some(raw) => Some(parse_cursor(&raw).ok_or_else(|| {
            ApiError::invalid("before", "must be the nextBefore of a previous page")
        })?),
        None => None,
    };
    let rows = app
        .store
        .patient_messages(&tags(&app, &patient)?, before, limit)
        .await?;
    let next_before = match rows.last() {
        Some(last) if rows.len() == limit as usize => {
            Some(format!("{}.{}", last.message.created_at, last.message.id.0))
        }
        _ => None,
    };
    let messages = history::open_rows_with(app.realtime.cipher.clone(), rows, Flags::Hidden)
        .await
        .map_err(ApiError::internal)?;
    // One entry per channel: what was shown, by seq.
    let mut by_channel: BTreeMap<ChannelId, Vec<u64>> = BTreeMap::new();
    for m in &messages {
        by_channel.entry(m.channel_id).or_default().push(m.seq);
    }
    if !by_channel.is_empty() {
        let tag = active_tag(&app, &patient)?;
        for (channel, seqs) in by_channel {
            let count = seqs.len();
            let mut details =
                disclosures::read_details(&app, &caller, channel, seqs, "patient_list");
            details["count"] = count.into();
            details["patientTag"] = tag.clone().into();
            caller.audit(&app, "history.read", details).await?;
        }
    }
    Ok(Json(json!(PatientMessagesBody {
        messages,
        next_before,
    })))
}
