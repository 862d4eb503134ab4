//! `/api/users`: user management (admins), a user's permissions, sessions
//! and session termination.
//!
//! Every route that acts on one account (change, password reset, role,
//! delete, list or end its sessions) passes [`target`], the one check of
//! `Action::ActOnUser`: nobody acts on a user of a higher role than their
//! own, so an admin can neither end a super admin's sessions nor read their
//! addresses. A new role also needs the right to grant it
//! (`Action::GrantRole`). Any change of role or password, and deletion,
//! revokes the account's sessions and closes its sockets (4003), and so do
//! locking, disabling and a password reset. A reset sets a temporary
//! password the user must change before anything else
//! (`mustChangePassword`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_actors::durable::store::{
    AuditFilter, AuditRecord, NewUser, Role, StoreError, User, UserPatch,
};
use courier_actors::policy::authz::{Action, UserAct};
use courier_protocol::UserId;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::extract::{path_id, Caller, JsonBody, QueryParams};
use super::openapi::{
    AuditPage, ErrorBody, Revoked, SessionList, TemporaryPassword, UserBody, UserPage,
};
use super::views::Permissions;
use super::{validate, views};
use crate::http::App;

/// `GET /api/users?search=&limit=&offset=`: `{users, limit, offset, hasMore}`.
#[utoipa::path(
    get,
    path = "/api/users",
    operation_id = "users.list",
    tag = "users",
    summary = "List users (users.read or users.manage)",
    params(("search" = Option<String>, Query, description = "Substring of the username or email (at most 64 characters)"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (50)"), ("offset" = Option<u32>, Query, description = "Users to skip (0)")),
    responses((status = 200, description = "A page of users", body = UserPage), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    caller.authorize(&app, Action::ReadUsers, "users.list", json!({}))?;
    let search = query.text("search", 64)?;
    let limit = query.int_in("limit", 1, 100, 50)? as u32;
    let offset = query.int_in("offset", 0, 1_000_000, 0)? as u32;
    let mut users = app
        .store
        .list_users(search.as_deref(), limit + 1, offset)
        .await?;
    let has_more = users.len() > limit as usize;
    users.truncate(limit as usize);
    Ok(Json(json!({
        "users": users.iter().map(views::user).collect::<Vec<_>>(),
        "limit": limit,
        "offset": offset,
        "hasMore": has_more,
    })))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateUserBody)]
pub(super) struct CreateBody {
    username: String,
    password: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

/// `POST /api/users`: 201 `{user}`.
#[utoipa::path(
    post,
    path = "/api/users",
    operation_id = "users.create",
    tag = "users",
    summary = "Create a user (users.manage; granting a role needs the right to grant it)",
    request_body = CreateBody,
    responses((status = 201, description = "Created", body = UserBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    let role = body.role.unwrap_or(Role::User);
    caller.authorize(&app, Action::ManageUsers, "users.create", json!({}))?;
    caller.authorize(
        &app,
        Action::GrantRole { role },
        "users.create",
        json!({"role": role}),
    )?;
    validate::username("username", &body.username)?;
    validate::password(&app.config, "password", &body.password, &body.username)?;
    let email = validate::email("email", body.email.as_deref())?;
    if app
        .store
        .get_user_by_username(&body.username)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict("username: already taken"));
    }
    let hash = app.passwords.hash(body.password).await?;
    let user = app
        .store
        .create_user(NewUser {
            id: UserId::new(),
            username: body.username,
            email,
            password_hash: hash,
            role,
            created_at: courier_actors::now_ms(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::conflict("username: already taken"),
            e => e.into(),
        })?;
    caller
        .audit(&app, "user.create", crate::server::user_created(&user))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": views::user(&user)})),
    )
        .into_response())
}

/// `GET /api/users/{id}`: `{user}`; anyone may read themselves.
#[utoipa::path(
    get,
    path = "/api/users/{id}",
    operation_id = "users.get",
    tag = "users",
    summary = "One user (yourself, or with users.read)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The user", body = UserBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    caller.authorize(
        &app,
        Action::ReadUser { target: id },
        "users.get",
        json!({"userId": id}),
    )?;
    let user = find(&app, id).await?;
    Ok(Json(json!({"user": views::user(&user)})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = UpdateUserBody)]
pub(super) struct UpdateBody {
    /// Absent: unchanged; `null` or `""`: removed.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    #[serde(default)]
    role: Option<Role>,
    /// A new password set by an administrator.
    #[serde(default)]
    password: Option<String>,
}

/// Tells an absent field (`None`) from a `null` one (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    de: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

/// `PUT /api/users/{id}`: `{user}`.
#[utoipa::path(
    put,
    path = "/api/users/{id}",
    operation_id = "users.update",
    tag = "users",
    summary = "Change a user's email, role or password (users.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    request_body = UpdateBody,
    responses((status = 200, description = "The user, changed", body = UserBody), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody), (status = 413, description = "Body or text over the size limit", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    let target = target(&app, &caller, id, UserAct::Manage, "users.update").await?;
    if let Some(role) = body.role {
        caller.authorize(
            &app,
            Action::GrantRole { role },
            "users.update",
            json!({"userId": id, "role": role}),
        )?;
    }
    let email = match &body.email {
        Some(value) => Some(validate::email("email", value.as_deref())?),
        None => None,
    };
    let password_hash = match body.password {
        Some(password) => {
            validate::password(&app.config, "password", &password, &target.username)?;
            Some(app.passwords.hash(password).await?)
        }
        None => None,
    };
    let role_changed = body.role.is_some_and(|r| r != target.role);
    let password_changed = password_hash.is_some();
    let user = app
        .store
        .update_user(
            id,
            UserPatch {
                email,
                role: body.role,
                password_hash,
                updated_at: courier_actors::now_ms(),
                ..UserPatch::default()
            },
        )
        .await?;
    let revoked = if role_changed || password_changed {
        let revoked = app.store.revoke_user_sessions(id).await?;
        app.realtime.revoke_sessions(id, None);
        revoked.len()
    } else {
        0
    };
    caller
        .audit(
            &app,
            "user.update",
            json!({
                "userId": id,
                "emailChanged": body.email.is_some(),
                "role": body.role,
                "passwordChanged": password_changed,
                "sessionsRevoked": revoked,
            }),
        )
        .await?;
    Ok(Json(json!({"user": views::user(&user)})))
}

/// `DELETE /api/users/{id}`: 204; the account's sockets close with 4003.
#[utoipa::path(
    delete,
    path = "/api/users/{id}",
    operation_id = "users.delete",
    tag = "users",
    summary = "Delete a user (users.manage); their sessions end",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Conflicts with the current state", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: UserId = path_id("id", &id)?;
    let target = target(&app, &caller, id, UserAct::Manage, "users.delete").await?;
    if id == caller.identity.user_id {
        return Err(ApiError::conflict("cannot delete your own account"));
    }
    app.store.delete_user(id).await?;
    app.realtime.revoke_sessions(id, None);
    caller
        .audit(
            &app,
            "user.delete",
            json!({"userId": id, "username": target.username}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/users/{id}/permissions`: `{userId, role, permissions}`.
#[utoipa::path(
    get,
    path = "/api/users/{id}/permissions",
    operation_id = "users.permissions",
    tag = "users",
    summary = "A user's role and permissions",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The permissions", body = Permissions), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn permissions(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    caller.authorize(
        &app,
        Action::ReadUser { target: id },
        "users.permissions",
        json!({"userId": id}),
    )?;
    let user = find(&app, id).await?;
    Ok(Json(views::permissions(
        id,
        user.role,
        app.realtime.permissions.of(user.role),
    )))
}

/// `GET /api/users/{id}/sessions?all=`: `{sessions}`, the live ones unless
/// `all=true`.
#[utoipa::path(
    get,
    path = "/api/users/{id}/sessions",
    operation_id = "users.sessions",
    tag = "users",
    summary = "A user's sessions (yourself, or with sessions.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)"), ("all" = Option<bool>, Query, description = "Include ended sessions")),
    responses((status = 200, description = "The sessions", body = SessionList), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn sessions(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    let all = query
        .parse::<bool>("all", "true or false")?
        .unwrap_or(false);
    target(&app, &caller, id, UserAct::Sessions, "users.sessions").await?;
    let now = courier_actors::now_ms();
    let sessions: Vec<Value> = app
        .store
        .list_sessions(id)
        .await?
        .iter()
        .filter(|s| all || (s.valid && s.expires_at > now))
        .map(|s| views::session(s, caller.identity.session_id))
        .collect();
    Ok(Json(json!({"sessions": sessions})))
}

/// `POST /api/users/{id}/terminate-sessions`: `{revoked}`; every session of
/// the user ends and their sockets close with 4003.
#[utoipa::path(
    post,
    path = "/api/users/{id}/terminate-sessions",
    operation_id = "users.terminate_sessions",
    tag = "users",
    summary = "End every session of a user; their sockets close with 4003",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "How many sessions ended", body = Revoked), (status = 400, description = "A field or parameter is missing or invalid (`field` names it)", body = ErrorBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn terminate_sessions(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    target(
        &app,
        &caller,
        id,
        UserAct::Sessions,
        "users.terminate_sessions",
    )
    .await?;
    let revoked = app.store.revoke_user_sessions(id).await?;
    app.realtime.revoke_sessions(id, None);
    caller
        .audit(
            &app,
            "sessions.terminate",
            json!({"userId": id, "sessionIds": revoked}),
        )
        .await?;
    Ok(Json(json!({"revoked": revoked.len()})))
}

/// The account `id` names, once `caller` may `act` on it: the check of
/// every route that acts on one user. The permission is asked before the
/// account is read (so a caller without it cannot tell which ids exist),
/// then again with the account's role: nobody acts on a user of a higher
/// role. A refusal is audited (`access.denied` with `op`) and answers 403.
pub(super) async fn target(
    app: &App,
    caller: &Caller,
    id: UserId,
    act: UserAct,
    op: &str,
) -> ApiResult<User> {
    let ask = |role| Action::ActOnUser {
        target: id,
        role,
        act,
    };
    // `Role::User` is the lowest role: the permission alone.
    caller.authorize(app, ask(Role::User), op, json!({"userId": id}))?;
    let user = find(app, id).await?;
    caller.authorize(
        app,
        ask(user.role),
        op,
        json!({"userId": id, "role": user.role}),
    )?;
    Ok(user)
}

async fn find(app: &App, id: UserId) -> ApiResult<User> {
    app.store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))
}

/// What [`set_state`] changes about an account.
#[derive(Clone, Copy)]
enum AccountChange {
    Lock,
    Unlock,
    Disable,
    Enable,
}

impl AccountChange {
    fn op(self) -> &'static str {
        match self {
            AccountChange::Lock => "user.lock",
            AccountChange::Unlock => "user.unlock",
            AccountChange::Disable => "user.disable",
            AccountChange::Enable => "user.enable",
        }
    }
}

/// Locks, unlocks, disables or enables an account (`users.manage`, on a
/// user of no higher role, never oneself). Locking and disabling end every
/// session of the account and close its sockets (4003). Audited with the
/// acting user.
async fn set_state(
    app: &App,
    caller: &Caller,
    id: &str,
    change: AccountChange,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", id)?;
    target(app, caller, id, UserAct::Manage, change.op()).await?;
    if id == caller.identity.user_id {
        return Err(ApiError::conflict(
            "cannot change the state of your own account",
        ));
    }
    let now = courier_actors::now_ms();
    let mut patch = UserPatch {
        updated_at: now,
        ..UserPatch::default()
    };
    match change {
        // An admin's lock has no end of its own: until unlocked.
        AccountChange::Lock => patch.locked_until = Some(Some(i64::MAX)),
        AccountChange::Unlock => patch.locked_until = Some(None),
        AccountChange::Disable => patch.disabled_at = Some(Some(now)),
        AccountChange::Enable => patch.disabled_at = Some(None),
    }
    let user = app.store.update_user(id, patch).await?;
    let revoked = match change {
        AccountChange::Lock | AccountChange::Disable => {
            let revoked = app.store.revoke_user_sessions(id).await?;
            app.realtime.revoke_sessions(id, None);
            revoked.len()
        }
        AccountChange::Unlock | AccountChange::Enable => 0,
    };
    if let AccountChange::Unlock = change {
        // The address lockouts of failed logins go too.
        app.login_guard.forget_account(&id.to_string());
    }
    caller
        .audit(
            app,
            change.op(),
            json!({"userId": id, "username": user.username, "sessionsRevoked": revoked}),
        )
        .await?;
    Ok(Json(json!({"user": views::user(&user)})))
}

/// `POST /api/users/{id}/lock`: `{user}`; logins are refused until unlocked.
#[utoipa::path(
    post,
    path = "/api/users/{id}/lock",
    operation_id = "users.lock",
    tag = "users",
    summary = "Lock an account (users.manage): logins refused until unlocked; its sessions end",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The user, locked", body = UserBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn lock(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&app, &caller, &id, AccountChange::Lock).await
}

/// `POST /api/users/{id}/unlock`: `{user}`; also clears failed-login lockouts.
#[utoipa::path(
    post,
    path = "/api/users/{id}/unlock",
    operation_id = "users.unlock",
    tag = "users",
    summary = "Unlock an account (users.manage), and clear its failed-login lockouts",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The user, unlocked", body = UserBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn unlock(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&app, &caller, &id, AccountChange::Unlock).await
}

/// `POST /api/users/{id}/disable`: `{user}`; no login, no session.
#[utoipa::path(
    post,
    path = "/api/users/{id}/disable",
    operation_id = "users.disable",
    tag = "users",
    summary = "Disable an account (users.manage): no login, its sessions end, its sockets close 4003",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The user, disabled", body = UserBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn disable(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&app, &caller, &id, AccountChange::Disable).await
}

/// `POST /api/users/{id}/enable`: `{user}`.
#[utoipa::path(
    post,
    path = "/api/users/{id}/enable",
    operation_id = "users.enable",
    tag = "users",
    summary = "Enable a disabled account (users.manage)",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The user, enabled", body = UserBody), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn enable(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&app, &caller, &id, AccountChange::Enable).await
}

/// The temporary password of a reset: random, URL-safe, at least 24
/// characters (more when the policy asks).
fn temporary_password(min_length: usize) -> String {
    use base64::Engine;
    use rand::RngExt;
    let mut password = String::new();
    while password.chars().count() < min_length.max(24) {
        password.push_str(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::rng().random::<[u8; 18]>()),
        );
    }
    password
}

/// `POST /api/users/{id}/reset-password`: `{user, temporaryPassword}`.
#[utoipa::path(
    post,
    path = "/api/users/{id}/reset-password",
    operation_id = "users.reset_password",
    tag = "users",
    summary = "Set a one-time temporary password (users.manage); the user must change it at next login, and their sessions end",
    params(("id" = String, Path, description = "The resource's id (a UUID)")),
    responses((status = 200, description = "The temporary password, shown once", body = TemporaryPassword), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody), (status = 409, description = "Your own account", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn reset_password(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    target(&app, &caller, id, UserAct::Manage, "user.reset_password").await?;
    if id == caller.identity.user_id {
        return Err(ApiError::conflict(
            "change your own password with /api/auth/change-password",
        ));
    }
    let password = temporary_password(app.config.password_min_length);
    let hash = app.passwords.hash(password.clone()).await?;
    let user = app
        .store
        .update_user(
            id,
            UserPatch {
                password_hash: Some(hash),
                must_change_password: Some(true),
                updated_at: courier_actors::now_ms(),
                ..UserPatch::default()
            },
        )
        .await?;
    let revoked = app.store.revoke_user_sessions(id).await?;
    app.realtime.revoke_sessions(id, None);
    caller
        .audit(
            &app,
            "user.reset_password",
            json!({"userId": id, "username": user.username, "sessionsRevoked": revoked.len()}),
        )
        .await?;
    Ok(Json(
        json!({"user": views::user(&user), "temporaryPassword": password}),
    ))
}

/// The actions of security events: logins, lockouts, sessions, account
/// changes, refusals.
const SECURITY_ACTIONS: &[&str] = &[
    "auth.login",
    "auth.login_failed",
    "auth.lockout",
    "auth.logout",
    "auth.password_change",
    "auth.password_change_failed",
    "auth.totp.enrolment_started",
    "auth.totp.enrolled",
    "auth.totp.disabled",
    "auth.second_factor.failed",
    "auth.recovery_code.used",
    "auth.refresh_reused",
    "admin.sign_in",
    "admin.sign_out",
    "access.denied",
    "sessions.terminate",
    "user.create",
    "user.update",
    "user.delete",
    "user.lock",
    "user.unlock",
    "user.disable",
    "user.enable",
    "user.reset_password",
    "user.password_reset.requested",
    "user.password_reset.completed",
    "user.password_expired",
];

/// `GET /api/users/{id}/security-events?limit=`: `{entries}`, newest first:
/// what the account did (logins, refusals) and what was done to it.
#[utoipa::path(
    get,
    path = "/api/users/{id}/security-events",
    operation_id = "users.security_events",
    tag = "users",
    summary = "A user's recent security events, from the audit chain (sessions.manage and audit.read)",
    params(("id" = String, Path, description = "The resource's id (a UUID)"), ("limit" = Option<u32>, Query, description = "At most this many, 1 to 200 (50)")),
    responses((status = 200, description = "The entries, newest first", body = AuditPage), (status = 403, description = "Not allowed (audited as access.denied)", body = ErrorBody), (status = 404, description = "No such resource", body = ErrorBody)),
    security(("bearer" = []))
)]
pub(super) async fn security_events(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    query: QueryParams,
) -> ApiResult<Json<Value>> {
    let id: UserId = path_id("id", &id)?;
    let limit = query.int_in("limit", 1, 200, 50)? as usize;
    target(
        &app,
        &caller,
        id,
        UserAct::Sessions,
        "users.security_events",
    )
    .await?;
    caller.authorize(
        &app,
        Action::ReadAudit,
        "users.security_events",
        json!({"userId": id}),
    )?;
    let needle = id.to_string();
    let about_user = |e: &AuditRecord| {
        SECURITY_ACTIONS.contains(&e.action.as_str())
            && (e.actor_id == Some(id)
                || e.details.get("userId").and_then(Value::as_str) == Some(&needle))
    };
    // The chain is read newest first, a page at a time, until enough
    // entries about the user are found or 20 pages were looked at.
    let mut entries = Vec::new();
    let mut before = None;
    for _ in 0..20 {
        let page = app
            .store
            .list_audit(AuditFilter {
                before_seq: before,
                limit: 500,
                ..AuditFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        let more = page.len() == 500;
        entries.extend(page.into_iter().filter(about_user));
        if entries.len() >= limit || !more {
            break;
        }
    }
    entries.truncate(limit);
    caller
        .audit(
            &app,
            "audit.read",
            json!({"userId": id, "op": "users.security_events"}),
        )
        .await?;
    Ok(Json(json!({"entries": entries, "nextBefore": null})))
}
