//! Who a connection or a REST request belongs to, and the port through
//! which the server's token verifier (JWT and session checks, in the
//! `courier` crate) authenticates them. The actors never see how tokens work.

use async_trait::async_trait;
use courier_protocol::{SessionId, UserId};

use crate::durable::store::Role;

/// An authenticated user on one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub session_id: SessionId,
    /// When the access token stops being valid (ms since the epoch).
    pub expires_at: i64,
    /// The account's password was set by an admin: until it is changed,
    /// every request but changing it (and logging out) is refused.
    pub must_change_password: bool,
    /// The account's role must have a second factor (`totp_required_roles`)
    /// and it has none yet: until it enrols, every request but the TOTP
    /// enrolment routes (and logging out) is refused.
    pub must_enrol_second_factor: bool,
}

/// Why a token was refused; the text is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRejected {
    /// Bad signature, wrong issuer or audience, malformed, expired.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The session was revoked or the user no longer exists.
    #[error("session is no longer valid")]
    SessionRevoked,
    /// The account's password must be changed first (a temporary one set
    /// by an admin): only REST `change-password` and `logout` take it.
    #[error("password change required")]
    PasswordChangeRequired,
    /// The account's role requires a second factor it has not enrolled: only
    /// REST `/api/auth/totp/*` and `logout` take it.
    #[error("second factor enrolment required")]
    SecondFactorEnrolmentRequired,
    /// The check could not be made (store down).
    #[error("authentication is unavailable; retry")]
    Unavailable,
}

/// Verifies an access token (and that its session is still valid).
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The identity a token stands for.
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthRejected>;
}
