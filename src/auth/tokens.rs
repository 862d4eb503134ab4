//! Access tokens: short-lived JWTs (HS256), with `exp`, `iss`, `aud`, `sub`
//! required and validated, the algorithm pinned, a small leeway, and the
//! session id in `sid` so that a revoked session's tokens stop working.
//! Refresh tokens are opaque random values; only their SHA-256 is stored.

use base64::Engine;
use courier_protocol::{SessionId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token")]
    Invalid,
    #[error("cannot sign token")]
    Sign,
}

/// Issues and verifies access tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    /// Lifetime of an access token, seconds.
    pub ttl_secs: u64,
}

/// A verified access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// Expiry, ms since the epoch.
    pub expires_at: i64,
}

impl Tokens {
    /// HS256 with `secret`.
    pub fn hs256(secret: &Secret, issuer: &str, audience: &str, ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs,
        }
    }

    /// A signed access token for a session; returns it with its expiry (s).
    pub fn issue(&self, user: UserId, session: SessionId) -> Result<(String, u64), TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.to_string(),
            sid: session.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.ttl_secs,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Sign)?;
        Ok((token, claims.exp))
    }

    /// Checks signature, algorithm, expiry, issuer, audience and subject.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        let c = data.claims;
        Ok(Verified {
            user_id: c.sub.parse().map_err(|_| TokenError::Invalid)?,
            session_id: c.sid.parse().map_err(|_| TokenError::Invalid)?,
            expires_at: (c.exp as i64).saturating_mul(1000),
        })
    }
}

/// A new opaque refresh token (256 random bits, URL-safe base64).
pub fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How a refresh token is stored: SHA-256, hex.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::hs256(&Secret::new("x".repeat(40)), "courier", "clients", 60)
    }

    #[test]
    fn issue_and_verify() {
        let t = tokens();
        let (user, session) = (UserId::new(), SessionId::new());
        let (token, _) = t.issue(user, session).expect("issue");
        let v = t.verify(&token).expect("verify");
        assert_eq!((v.user_id, v.session_id), (user, session));
    }

    #[test]
    fn wrong_key_issuer_or_audience_fail() {
        let (token, _) = tokens().issue(UserId::new(), SessionId::new()).expect("issue");
        let other_key = Tokens::hs256(&Secret::new("y".repeat(40)), "courier", "clients", 60);
        assert!(other_key.verify(&token).is_err());
        let other_iss = Tokens::hs256(&Secret::new("x".repeat(40)), "evil", "clients", 60);
        assert!(other_iss.verify(&token).is_err());
        let other_aud = Tokens::hs256(&Secret::new("x".repeat(40)), "courier", "evil", 60);
        assert!(other_aud.verify(&token).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let t = tokens();
        let (token, _) = t.issue(UserId::new(), SessionId::new()).expect("issue");
        let payload = token.split('.').nth(1).expect("payload");
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(t.verify(&format!("{header}.{payload}.")).is_err());
    }
}
