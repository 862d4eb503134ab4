//! Authentication: passwords, tokens, and the verifier the WebSocket edge
//! uses ([`SessionAuthenticator`]).

pub mod lockout;
pub mod passwords;
pub mod policy;
pub mod reset;
pub mod tokens;
pub mod totp;

use std::sync::Arc;

use async_trait::async_trait;
use courier_actors::durable::store::{DynStore, SessionKind, StoreError};
use courier_actors::policy::identity::{AuthRejected, Authenticator, Identity};

use tokens::Tokens;

/// Verifies an access token and that its session is still valid, is an
/// API session (a console session's id in a token is refused), and that
/// its user still exists and is not disabled (one read of both): a revoked
/// session's tokens stop working at once. A password past its maximum age
/// restricts the session as a temporary one does (`must_change_password`).
pub struct SessionAuthenticator {
    pub tokens: Arc<Tokens>,
    pub store: DynStore,
    /// `password_max_age_days` (0: passwords never expire).
    pub password_max_age_days: u64,
    /// The roles that must have a second factor: a session of such an
    /// account without one may only enrol (`must_enrol_second_factor`).
    pub totp_required_roles: Vec<courier_actors::durable::store::Role>,
}

#[async_trait]
impl Authenticator for SessionAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthRejected> {
        let verified = self
            .tokens
            .verify(token)
            .map_err(|_| AuthRejected::InvalidToken)?;
        let unavailable = |e: StoreError| match e {
            StoreError::Unavailable(_) | StoreError::Tls(_) => AuthRejected::Unavailable,
            _ => AuthRejected::InvalidToken,
        };
        let (session, user) = self
            .store
            .get_session_user(verified.session_id)
            .await
            .map_err(unavailable)?
            .filter(|(s, u)| {
                s.valid
                    && s.kind == SessionKind::Api
                    && s.user_id == verified.user_id
                    && s.expires_at > courier_actors::now_ms()
                    && u.disabled_at.is_none()
            })
            .ok_or(AuthRejected::SessionRevoked)?;
        let must_enrol_second_factor =
            totp::enrolment_required(&*self.store, &self.totp_required_roles, &user)
                .await
                .map_err(unavailable)?;
        let must_change_password = user.must_change_password
            || reset::password_expired(self.password_max_age_days, &user, courier_actors::now_ms());
        Ok(Identity {
            user_id: user.id,
            username: user.username,
            role: user.role,
            session_id: session.id,
            expires_at: verified.expires_at,
            must_change_password,
            must_enrol_second_factor,
        })
    }
}
