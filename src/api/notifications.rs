//! `/api/me/notification-preferences` and `/api/announcements`: a user's
//! notification preferences, and admins' announcements
//! (`courier_actors::notify`, docs/notifications.md).
//!
//! Preferences are the caller's own (any signed-in user). Posting an
//! announcement needs `announcements.create` (super_admin, admin) and is
//! audited, durably, as `announcement.created` with its id and roles (never
//! its title or body); it is then pushed as a `notification` to the
//! connected users of its roles, and to the others at their next connect.
//! `GET /api/announcements` lists the caller's current ones.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use courier_actors::durable::store::{Announcement, Role};
use courier_actors::notify::prefs::NotificationPrefs;
use courier_actors::notify::NotifyMsg;
use courier_actors::policy::authz::Action;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody};
use super::openapi::ErrorBody;
use crate::http::App;

/// The most bytes of an announcement's title and body.
const MAX_TITLE_BYTES: usize = 200;
const MAX_BODY_BYTES: usize = 4000;

/// `{preferences}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PrefsBody {
    preferences: NotificationPrefs,
}

/// The body of `POST /api/announcements`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewAnnouncement {
    /// 1 to 200 bytes.
    pub title: String,
    /// 1 to 4000 bytes.
    pub body: String,
    /// Who it is for (`super_admin`, `admin`, `moderator`, `user`);
    /// absent or empty: everyone.
    #[serde(default)]
    pub roles: Vec<String>,
    /// When it stops being current (ms since the epoch, in the future).
    pub expires_at: Option<i64>,
}

/// An announcement as shown: `{id, title, body, roles, createdBy,
/// createdAt, expiresAt}` (`roles` empty: everyone).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnnouncementView {
    #[schema(format = Uuid)]
    id: String,
    title: String,
    body: String,
    roles: Vec<String>,
    #[schema(format = Uuid)]
    created_by: String,
    created_at: i64,
    expires_at: Option<i64>,
}

/// `{announcement}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AnnouncementBody {
    announcement: AnnouncementView,
}

/// `{announcements}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AnnouncementList {
    announcements: Vec<AnnouncementView>,
}

fn view(a: &Announcement) -> AnnouncementView {
    AnnouncementView {
        id: a.id.to_string(),
        title: a.title.clone(),
        body: a.body.clone(),
        roles: a.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        created_by: a.created_by.to_string(),
        created_at: a.created_at,
        expires_at: a.expires_at,
    }
}

/// `GET /api/me/notification-preferences`: `{preferences}`.
#[utoipa::path(
    get,
    path = "/api/me/notification-preferences",
    operation_id = "notifications.preferences.get",
    tag = "notifications",
    summary = "The caller's notification preferences (the defaults until saved: every kind on, no quiet hours, nothing muted)",
    responses((status = 200, description = "The preferences", body = PrefsBody)),
    security(("bearer" = []))
)]
pub(super) async fn get_prefs(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let prefs = app
        .store
        .notification_prefs(caller.identity.user_id)
        .await?
        .unwrap_or_default();
    Ok(Json(json!({ "preferences": prefs })))
}

/// `PUT /api/me/notification-preferences`: saves them whole; `{preferences}`.
#[utoipa::path(
    put,
    path = "/api/me/notification-preferences",
    operation_id = "notifications.preferences.put",
    tag = "notifications",
    summary = "Replace the caller's notification preferences: which kinds notify (mention, directMessage, announcement), quiet hours (minutes at a UTC offset; mentions and direct messages are held back while quiet), muted channels",
    request_body(content = NotificationPrefs, description = "The preferences; absent fields take the defaults"),
    responses((status = 200, description = "The preferences saved", body = PrefsBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn put_prefs(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<NotificationPrefs>,
) -> ApiResult<Json<Value>> {
    let prefs = body
        .validated()
        .map_err(|e| ApiError::invalid("quietHours", e))?;
    app.store
        .put_notification_prefs(caller.identity.user_id, &prefs, courier_actors::now_ms())
        .await?;
    Ok(Json(json!({ "preferences": prefs })))
}

/// `POST /api/announcements`: `{announcement}` (201), pushed to its roles.
#[utoipa::path(
    post,
    path = "/api/announcements",
    operation_id = "announcements.create",
    tag = "notifications",
    summary = "Post an announcement to everyone or to roles (announcements.create; audited as announcement.created): a notification to their connected users now, and to the others at their next connect",
    request_body(content = NewAnnouncement, description = "Title, body, roles, expiry"),
    responses((status = 201, description = "The announcement", body = AnnouncementBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<NewAnnouncement>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.authorize(&app, Action::Announce, "announcements.create", json!({}))?;
    let now = courier_actors::now_ms();
    if body.title.trim().is_empty() || body.title.len() > MAX_TITLE_BYTES {
        return Err(ApiError::invalid("title", "must be 1 to 200 bytes"));
    }
    if body.body.trim().is_empty() || body.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid("body", "must be 1 to 4000 bytes"));
    }
    if body.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::invalid("expiresAt", "must be in the future"));
    }
    let mut roles = Vec::new();
    for name in &body.roles {
        let role = Role::parse(name).ok_or_else(|| {
            ApiError::invalid("roles", "must be super_admin, admin, moderator or user")
        })?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    let announcement = Announcement {
        id: uuid::Uuid::now_v7(),
        title: body.title,
        body: body.body,
        roles,
        created_by: caller.identity.user_id,
        created_at: now,
        expires_at: body.expires_at,
    };
    app.store.insert_announcement(&announcement).await?;
    let shown = view(&announcement);
    caller
        .audit(
            &app,
            "announcement.created",
            json!({"announcementId": shown.id, "roles": shown.roles, "expiresAt": shown.expires_at}),
        )
        .await?;
    app.realtime
        .notifier
        .send(NotifyMsg::Announced(Box::new(announcement)));
    Ok((StatusCode::CREATED, Json(json!({ "announcement": shown }))))
}

/// `GET /api/announcements`: `{announcements}`, the caller's current ones.
#[utoipa::path(
    get,
    path = "/api/announcements",
    operation_id = "announcements.list",
    tag = "notifications",
    summary = "The announcements for the caller's role that have not expired, newest first",
    responses((status = 200, description = "The announcements", body = AnnouncementList)),
    security(("bearer" = []))
)]
pub(super) async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Value>> {
    let all = app
        .store
        .current_announcements(courier_actors::now_ms())
        .await?;
    let mine: Vec<AnnouncementView> = all
        .iter()
        .filter(|a| a.is_for(caller.identity.role))
        .map(view)
        .collect();
    Ok(Json(json!({ "announcements": mine })))
}
