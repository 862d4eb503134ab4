//! `/api/settings`: the effective configuration, with every secret
//! redacted, and the rate limits, which an admin may change while the
//! server runs (kept across a restart; see [`crate::runtime_settings`]).
//! Both need `settings.manage`; reading is audited, and so is every change
//! (`settings.update`, with the limits before and after).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use courier_actors::policy::authz::Action;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody};
use super::openapi::{ErrorBody, RateLimitFigures, RateLimitsBody, SettingsBody};
use crate::http::App;
use crate::runtime_settings::{LimitChange, SettingsError};

/// `GET /api/settings`: `{config, rateLimits}`.
#[utoipa::path(
    get,
    path = "/api/settings",
    operation_id = "settings.get",
    tag = "settings",
    summary = "The effective configuration, secrets redacted, and the rate limits in force (settings.manage)",
    responses((status = 200, description = "The settings", body = SettingsBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ManageSettings, "settings.get", json!({}))?;
    caller.audit(&app, "settings.read", json!({})).await?;
    let mut config = app.config.effective();
    // The limits in force, not the configured ones, where they differ.
    let limits = app.rate_limits.figures();
    config["send_per_minute"] = limits.send_per_minute.into();
    config["rest_per_15min"] = limits.rest_per_15min.into();
    config["auth_per_15min"] = limits.auth_per_15min.into();
    config["register_per_hour"] = limits.register_per_hour.into();
    Ok(Json(json!({"config": config, "rateLimits": limits})))
}

/// `PUT /api/settings/rate-limits`: `{rateLimits}`, after the change.
#[utoipa::path(
    put,
    path = "/api/settings/rate-limits",
    operation_id = "settings.update_rate_limits",
    tag = "settings",
    summary = "Change rate limits at run time (settings.manage): applied at once, audited, kept across a restart",
    request_body(content = RateLimitFigures, description = "Any subset of the limits"),
    responses((status = 200, description = "The limits in force", body = RateLimitsBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn update_rate_limits(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(change): JsonBody<LimitChange>,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ManageSettings, "settings.update", json!({}))?;
    let (before, after) = app
        .rate_limits
        .update(change, caller.identity.user_id, &app.store, &app.realtime)
        .await
        .map_err(|e| match e {
            SettingsError::OutOfRange { field, .. } => {
                let message = e.to_string();
                let why = message
                    .split_once(": ")
                    .map_or(message.as_str(), |(_, w)| w);
                ApiError::invalid(field, why.to_owned())
            }
            SettingsError::Store(e) => e.into(),
        })?;
    caller
        .audit(
            &app,
            "settings.update",
            json!({"rateLimits": {"before": before, "after": after}}),
        )
        .await?;
    Ok(Json(json!({"rateLimits": after})))
}
