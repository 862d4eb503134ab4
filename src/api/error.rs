//! REST errors: `{"error": {"code", "message"}}` with a fitting status.
//!
//! Validation errors add `field` (the JSON name of the offending field, also
//! the first word of the message); rate-limit errors add `retryAfterMs` and
//! the `Retry-After` header. Internal details never reach the body: they are
//! logged. The body is [`ErrorBody`], whose schema the OpenAPI document
//! derives.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courier_actors::audit::actor::AuditError;
use courier_actors::durable::store::StoreError;
use courier_actors::realtime::channel::ChannelError;
use courier_actors::realtime::AccessError;
use courier_protocol::ErrorCode;

use super::openapi::{ErrorBody, ErrorDetail};
use crate::auth::passwords::PasswordError;
use crate::rate_limit::retry_after_secs;

/// A REST error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// The request field at fault (validation errors).
    pub field: Option<Cow<'static, str>>,
    /// When the client may retry (429).
    pub retry_after: Option<Duration>,
    /// Answer with `Connection: close` (a request body left unread).
    pub close_connection: bool,
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            close_connection: false,
        }
    }

    /// 400: a field is missing, malformed or fails a rule. The message is
    /// `"<field>: <why>"`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, why: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame,
            format!("{field}: {why}"),
        );
        e.field = Some(field);
        e
    }

    /// 400 without a single field at fault (malformed JSON, say).
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFrame, message)
    }

    /// 401: no credentials.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "an Authorization: Bearer token is required",
        )
    }

    /// 401: credentials given and refused.
    pub fn auth_failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::AuthFailed, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 408: the request body did not arrive within `http_body_timeout_ms`.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidFrame,
            "the request body did not arrive in time",
        )
    }

    /// 409.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(wait: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "rate limit exceeded; retry later",
        );
        e.retry_after = Some(wait);
        e
    }

    /// 503.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the service is temporarily unavailable; retry",
        )
    }

    /// 500; `detail` is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error in a REST handler");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!(
            courier_actors::telemetry::names::ERRORS,
            "surface" => "rest",
            "code" => self.code.as_str()
        )
        .increment(1);
        let error = ErrorDetail {
            code: self.code,
            message: self.message.into_owned(),
            field: self.field.map(Cow::into_owned),
            retry_after_ms: self
                .retry_after
                .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        };
        let mut response = (self.status, axum::Json(ErrorBody { error })).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Conflict(_) => ApiError::conflict("conflicts with an existing record"),
            StoreError::Unavailable(why) | StoreError::Tls(why) => {
                tracing::warn!(error = %why, "store unavailable");
                ApiError::unavailable()
            }
            StoreError::Corrupt(_) | StoreError::Database(_) => ApiError::internal(e),
        }
    }
}

/// An audit entry that is not durable: the request is not reported done
/// (503 `unavailable`; docs/audit.md says what was committed meanwhile).
/// The audit handle has logged why.
impl From<crate::network::Denied> for ApiError {
    fn from(e: crate::network::Denied) -> Self {
        ApiError::forbidden(e.to_string())
    }
}

/// A reset link that cannot be issued, delivered or used
/// (`crate::auth::reset`): no webhook configured is 409 `conflict`, a
/// receiver that did not take the link 503 `unavailable`, a token that
/// cannot be used 400 `invalid_token` naming the field `token`.
impl From<crate::auth::reset::ResetError> for ApiError {
    fn from(e: crate::auth::reset::ResetError) -> Self {
        use crate::auth::reset::ResetError;
        match e {
            ResetError::Off => ApiError::conflict(
                "no password reset webhook is configured; set a temporary password with \
                 /api/users/{id}/reset-password",
            ),
            ResetError::Webhook(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the password reset webhook did not take the link; nothing was sent, retry later",
            ),
            ResetError::Token(why) => {
                let mut e = Self::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidToken,
                    format!("token: {why}"),
                );
                e.field = Some("token".into());
                e
            }
            ResetError::Store(e) => e.into(),
        }
    }
}

/// A second factor that cannot be checked or made (`crate::auth::totp`):
/// the store's errors as everywhere; a sealed secret that does not open
/// (or cannot be sealed) and refused TOTP parameters are a 500.
impl From<crate::auth::totp::TotpError> for ApiError {
    fn from(e: crate::auth::totp::TotpError) -> Self {
        use crate::auth::totp::TotpError;
        match e {
            TotpError::Store(e) => e.into(),
            e @ (TotpError::Crypto(_) | TotpError::Parameters(_)) => ApiError::internal(e),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(_: AuditError) -> Self {
        ApiError::unavailable()
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        ApiError::internal(e)
    }
}

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Forbidden(why) => ApiError::forbidden(why),
            ChannelError::NotFound(why) => ApiError::not_found(why),
            ChannelError::Unavailable => ApiError::unavailable(),
            ChannelError::Internal(why) => ApiError::internal(why),
            // The owner node's answer: the same code its own REST would give.
            ChannelError::Relayed { code, message } => {
                let status = match code {
                    ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::Conflict => StatusCode::CONFLICT,
                    ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(status, code, message)
            }
        }
    }
}

/// An [`AccessError`] other than a denial (denials are audited first; see
/// `Caller::access_error`).
pub(crate) fn from_access(e: AccessError) -> ApiError {
    match e {
        AccessError::NotFound(why) => ApiError::not_found(why),
        AccessError::Denied(d) => ApiError::forbidden(d.0),
        AccessError::Invalid(why) => ApiError::bad_request(why),
        AccessError::Conflict(why) => ApiError::conflict(why),
        AccessError::Unavailable => ApiError::unavailable(),
        AccessError::Internal => ApiError::internal("access check failed"),
    }
}
