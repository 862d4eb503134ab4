//! Error codes of `error` frames and REST error bodies, and WebSocket close
//! codes (PROTOCOL.md section 2).

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame or a REST error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A request other than `authenticate` before authentication.
    Unauthenticated,
    /// Bad credentials or an invalid token.
    AuthFailed,
    /// No `authenticate` within the deadline.
    AuthTimeout,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// The target does not exist (or is not visible to the caller).
    NotFound,
    /// Undecodable frame, unknown `type`, wrong field types, missing fields.
    InvalidFrame,
    /// A field (usually `text`) is over its size limit.
    TooLarge,
    /// Over a rate limit; see `retryAfterMs`.
    RateLimited,
    /// The request conflicts with the current state.
    Conflict,
    /// The connection could not keep up with its pushes.
    SlowConsumer,
    /// The server cannot serve this now (store down, queue full).
    Unavailable,
    /// A bug on the server side.
    Internal,
    /// An uploaded file's content is of a type the server does not accept
    /// (sniffed from the bytes; the claimed type and name do not count).
    UnsupportedType,
    /// The virus scanner found malware in an uploaded file.
    Infected,
    /// The request body ended before its declared length (an upload cut
    /// short); nothing was kept.
    Incomplete,
    /// A password reset token that is unknown, used, replaced by a newer
    /// one or expired (REST only, HTTP 400).
    InvalidToken,
    /// The account has a second factor and the login presented no code
    /// (REST only, HTTP 401): ask for `totpCode` or `recoveryCode`.
    SecondFactorRequired,
    /// A second-factor code that is wrong, stale, replayed or an unknown or
    /// used recovery code (REST only, HTTP 401).
    SecondFactorFailed,
}

impl ErrorCode {
    /// The wire spelling, e.g. `"invalid_frame"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::AuthFailed => "auth_failed",
            Self::AuthTimeout => "auth_timeout",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::InvalidFrame => "invalid_frame",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Conflict => "conflict",
            Self::SlowConsumer => "slow_consumer",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::UnsupportedType => "unsupported_type",
            Self::Infected => "infected",
            Self::Incomplete => "incomplete",
            Self::InvalidToken => "invalid_token",
            Self::SecondFactorRequired => "second_factor_required",
            Self::SecondFactorFailed => "second_factor_failed",
        }
    }
}

/// WebSocket close codes.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (Origin).
    pub const POLICY: u16 = 1008;
    /// A frame or message over the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// Authentication failed or timed out.
    pub const AUTH_FAILED: u16 = 4001;
    /// No frame or pong for the idle timeout.
    pub const IDLE: u16 = 4002;
    /// The session was revoked (logout, password change, admin action).
    pub const SESSION_REVOKED: u16 = 4003;
    /// The outbound queue overflowed: the client is too slow.
    pub const SLOW_CONSUMER: u16 = 4009;
}
