//! The OpenAPI 3.1 description of the REST API, served at
//! `GET /api/openapi.json`. Derived, not written: [`super::routes`] builds
//! the router with utoipa-axum's `OpenApiRouter`, so every route the server
//! answers is registered together with its handler's `#[utoipa::path]`
//! (method, path, parameters, responses), request bodies are the schemas
//! of the handlers' own body types, and answers the schemas of the view
//! types they serialize (`views`, the protocol's message, the audit
//! entry). This module adds only what every operation shares: the bearer
//! scheme, and the 401, 429 and 503 answers of the middleware. A test
//! (`tests/rest_api.rs`) checks that the served document names every
//! route in [`ENDPOINTS`] and nothing else, and that each one is served.

use courier_actors::durable::store::AuditRecord;
use courier_protocol::frames::MessageView;
use courier_protocol::{ErrorCode, UserId};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::views::{ChannelView, MemberView, SessionView, UserView};

/// Every `(method, path)` the REST API serves, in the document's spelling:
/// what the tests hold the served document and router to.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/api/auth/register"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh-token"),
    ("post", "/api/auth/logout"),
    ("post", "/api/auth/change-password"),
    ("post", "/api/auth/totp/enroll"),
    ("post", "/api/auth/totp/confirm"),
    ("delete", "/api/auth/totp"),
    ("post", "/api/auth/password-reset/request"),
    ("post", "/api/auth/password-reset/confirm"),
    ("get", "/api/users"),
    ("post", "/api/users"),
    ("get", "/api/users/{id}"),
    ("put", "/api/users/{id}"),
    ("delete", "/api/users/{id}"),
    ("get", "/api/users/{id}/permissions"),
    ("get", "/api/users/{id}/sessions"),
    ("post", "/api/users/{id}/terminate-sessions"),
    ("post", "/api/users/{id}/lock"),
    ("post", "/api/users/{id}/unlock"),
    ("post", "/api/users/{id}/disable"),
    ("post", "/api/users/{id}/enable"),
    ("post", "/api/users/{id}/reset-password"),
    ("delete", "/api/users/{id}/totp"),
    ("post", "/api/users/{id}/password-reset"),
    ("get", "/api/users/{id}/security-events"),
    ("get", "/api/settings"),
    ("put", "/api/settings/rate-limits"),
    ("post", "/api/holds"),
    ("get", "/api/holds"),
    ("get", "/api/holds/{id}"),
    ("post", "/api/holds/{id}/release"),
    ("get", "/api/me/notification-preferences"),
    ("put", "/api/me/notification-preferences"),
    ("post", "/api/announcements"),
    ("get", "/api/announcements"),
    ("post", "/api/channels/{id}/break-glass"),
    ("get", "/api/break-glass"),
    ("delete", "/api/break-glass/{id}"),
    ("post", "/api/break-glass/{id}/review"),
    ("put", "/api/users/{id}/break-glass"),
    ("get", "/api/audit/checkpoints"),
    ("get", "/api/patients/{ref}/disclosures"),
    ("get", "/api/patients/{ref}/channels"),
    ("get", "/api/patients/{ref}/messages"),
    ("get", "/api/channels"),
    ("post", "/api/channels"),
    ("get", "/api/channels/{id}"),
    ("put", "/api/channels/{id}"),
    ("patch", "/api/channels/{id}"),
    ("delete", "/api/channels/{id}"),
    ("post", "/api/channels/{id}/archive"),
    ("post", "/api/channels/{id}/unarchive"),
    ("get", "/api/channels/{id}/members"),
    ("post", "/api/channels/{id}/members"),
    ("put", "/api/channels/{id}/members/{userId}"),
    ("delete", "/api/channels/{id}/members/{userId}"),
    ("get", "/api/channels/{id}/messages"),
    ("get", "/api/channels/{id}/receipts"),
    ("post", "/api/messages"),
    ("get", "/api/messages/search"),
    ("get", "/api/messages/{id}"),
    ("put", "/api/messages/{id}"),
    ("delete", "/api/messages/{id}"),
    ("post", "/api/messages/{id}/flag"),
    ("delete", "/api/messages/{id}/flag"),
    ("post", "/api/channels/{id}/attachments"),
    ("get", "/api/files"),
    ("post", "/api/files"),
    ("get", "/api/files/{id}"),
    ("delete", "/api/files/{id}"),
    ("get", "/api/files/{id}/content"),
    ("post", "/api/files/{id}/link"),
    ("get", "/api/file-links/{token}"),
    ("get", "/api/files/{id}/shares"),
    ("post", "/api/files/{id}/shares"),
    ("delete", "/api/files/{id}/shares/{share}"),
    ("get", "/api/moderation/flags"),
    ("get", "/api/audit"),
    ("get", "/api/audit/verify"),
    ("get", "/api/audit/{id}"),
    ("get", "/api/openapi.json"),
];

/// The document's frame: its info and the schemas no operation names
/// directly; the routes add their operations, then [`Shared`] its parts.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Courier REST API",
        description = "PROTOCOL.md section 6. Errors are {\"error\": {\"code\", \"message\"}}; \
            validation errors add `field`, rate-limit errors add `retryAfterMs` and a Retry-After \
            header. /api/auth/* is limited per client address (auth_per_15min), everything else \
            per user (rest_per_15min)."
    ),
    components(schemas(ErrorBody, ChannelPage))
)]
pub struct ApiDoc;

/// The bearer scheme, and the answers of the middleware in front of every
/// operation: 429 and 503 everywhere, 401 where a token is required.
/// Applied to the whole document once the routes are registered.
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                shared_answers(op);
            }
        }
    }
}

fn shared_answers(op: &mut Operation) {
    let secured = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().any(|r| *r != Default::default()));
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description).into());
    };
    if secured {
        add(
            "401",
            "Missing, invalid or expired token, or a revoked session",
        );
    }
    add("429", "Rate limited; see Retry-After");
    add("503", "The store is unavailable; retry");
}

/// An answer with the [`ErrorBody`].
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

/// Every error answer: `{"error": {...}}` (what `ApiError` serializes).
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error object.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (validation errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `rate_limited`: when to retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `{user}`.
#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub user: UserView,
}

/// A page of users.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPage {
    pub users: Vec<UserView>,
    pub limit: u32,
    pub offset: u32,
    pub has_more: bool,
}

/// A new session's tokens.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tokens {
    /// Access token (JWT); send as `Authorization: Bearer`.
    pub token: String,
    /// Opaque; rotated on every use.
    pub refresh_token: String,
    /// The access token's lifetime, seconds.
    pub expires_in: u64,
}

/// A login's answer: the tokens and the user.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginAnswer {
    pub token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user: UserView,
    /// The account's role must have a second factor and it has none: the
    /// session may only enrol one (`/api/auth/totp/*`) until it does.
    pub second_factor_enrolment_required: bool,
}

/// A password reset's answer: the user and the temporary password, shown
/// this once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemporaryPassword {
    pub user: UserView,
    pub temporary_password: String,
}

/// The rate limits in force.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitFigures {
    /// WebSocket sends per user per minute.
    pub send_per_minute: u32,
    /// REST requests per user per 15 minutes (0: off).
    #[serde(rename = "restPer15Min")]
    pub rest_per_15min: u32,
    /// `/api/auth/*` requests per address per 15 minutes (0: off).
    #[serde(rename = "authPer15Min")]
    pub auth_per_15min: u32,
    /// Registrations per address per hour (0: off).
    pub register_per_hour: u32,
}

/// `{rateLimits}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitsBody {
    pub rate_limits: RateLimitFigures,
}

/// The effective configuration and the rate limits.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsBody {
    /// Every configuration key with its value in force; secrets, and the
    /// credentials and query of URLs, are `"[redacted]"`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub rate_limits: RateLimitFigures,
}

/// `{checkpoints}`, ascending by seq.
#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    #[schema(value_type = Vec<Object>)]
    pub checkpoints: Vec<serde_json::Value>,
}

/// `{sessions}`.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// `{revoked}`: how many sessions ended.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: u64,
}

/// `{channel}`.
#[derive(Serialize, ToSchema)]
pub struct ChannelBody {
    pub channel: ChannelView,
}

/// `{receipts}`: one member's positions each.
#[derive(Serialize, ToSchema)]
pub struct ReceiptList {
    pub receipts: Vec<Receipt>,
}

/// A member's delivered and read positions in a channel.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub user_id: UserId,
    /// Every message up to it was queued to one of the member's connections.
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// `{channels}`.
#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelView>,
}

/// A page of every channel (`GET /api/channels?all=true`), by name.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelPage {
    pub channels: Vec<ChannelView>,
    pub limit: u32,
    pub offset: u32,
    pub has_more: bool,
}

/// `{message}`.
#[derive(Serialize, ToSchema)]
pub struct MessageBody {
    pub message: MessageView,
}

/// A flagged message in the moderation queue: the message, with its flag
/// fields, and its channel's name.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlaggedMessage {
    #[serde(flatten)]
    pub message: MessageView,
    pub channel_name: String,
}

/// A page of the moderation queue, newest flag first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlaggedPage {
    pub messages: Vec<FlaggedMessage>,
    pub limit: u32,
    pub offset: u32,
    pub has_more: bool,
}

/// `{member}`.
#[derive(Serialize, ToSchema)]
pub struct MemberBody {
    pub member: MemberView,
}

/// `{members}`.
#[derive(Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

/// A page of history, ascending `seq`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub has_more: bool,
}

/// A page of audit entries, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// The `before` of the next, older page; `null` on the last.
    pub next_before: Option<u64>,
}

/// `{entry}`.
#[derive(Serialize, ToSchema)]
pub struct AuditEntryBody {
    pub entry: AuditRecord,
}
