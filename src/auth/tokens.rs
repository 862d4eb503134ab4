//! Access tokens: short-lived JWTs (HS256 by default; RS256 or EdDSA with a
//! PEM key pair), with `exp`, `iss`, `aud`, `sub` required and validated, the
//! algorithm pinned (a token signed with any other algorithm is refused, so
//! an HS256 token "signed" with an RS256/EdDSA public key is worthless),
//! `nbf` honoured when present, a small leeway, and the session id in `sid`
//! so that a revoked session's tokens stop working. Refresh tokens are
//! opaque random values; only their SHA-256 is stored.

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
    /// A PEM key could not be read (the message never contains the key).
    #[error("invalid {0} key")]
    Key(&'static str),
}

/// An asymmetric signing algorithm for access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPairAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// Ed25519.
    EdDsa,
}

/// Issues and verifies access tokens.
pub struct Tokens {
    algorithm: Algorithm,
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
        Self::with_keys(
            Algorithm::HS256,
            EncodingKey::from_secret(secret.expose().as_bytes()),
            DecodingKey::from_secret(secret.expose().as_bytes()),
            issuer,
            audience,
            ttl_secs,
        )
    }

    /// RS256 or EdDSA with a PEM key pair: the private key as PKCS#8 (or
    /// PKCS#1 for RSA), the public key as SubjectPublicKeyInfo (or PKCS#1
    /// for RSA). Only `algorithm` is accepted when verifying.
    pub fn key_pair(
        algorithm: KeyPairAlgorithm,
        private_pem: &[u8],
        public_pem: &[u8],
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> Result<Self, TokenError> {
        let (alg, encoding, decoding) = match algorithm {
            KeyPairAlgorithm::Rs256 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(private_pem)
                    .map_err(|_| TokenError::Key("RSA private"))?,
                DecodingKey::from_rsa_pem(public_pem).map_err(|_| TokenError::Key("RSA public"))?,
            ),
            KeyPairAlgorithm::EdDsa => (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(private_pem)
                    .map_err(|_| TokenError::Key("Ed25519 private"))?,
                DecodingKey::from_ed_pem(public_pem)
                    .map_err(|_| TokenError::Key("Ed25519 public"))?,
            ),
        };
        let tokens = Self::with_keys(alg, encoding, decoding, issuer, audience, ttl_secs);
        // A key pair that does not match would issue tokens nobody accepts.
        let (probe, _) = tokens.issue(UserId::new(), SessionId::new())?;
        tokens
            .verify(&probe)
            .map_err(|_| TokenError::Key("mismatched"))?;
        Ok(tokens)
    }

    fn with_keys(
        algorithm: Algorithm,
        encoding: EncodingKey,
        decoding: DecodingKey,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // jsonwebtoken ignores `nbf` unless asked; RFC 7519 section 4.1.5
        // says a token must not be accepted before it.
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = 5;
        Self {
            algorithm,
            encoding,
            decoding,
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
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
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
        let (token, _) = tokens()
            .issue(UserId::new(), SessionId::new())
            .expect("issue");
        let other_key = Tokens::hs256(&Secret::new("y".repeat(40)), "courier", "clients", 60);
        assert!(other_key.verify(&token).is_err());
        let other_iss = Tokens::hs256(&Secret::new("x".repeat(40)), "evil", "clients", 60);
        assert!(other_iss.verify(&token).is_err());
        let other_aud = Tokens::hs256(&Secret::new("x".repeat(40)), "courier", "evil", 60);
        assert!(other_aud.verify(&token).is_err());
    }

    fn ed25519_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
        (key.serialize_pem(), key.public_key_pem())
    }

    fn rsa_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        (key.serialize_pem(), key.public_key_pem())
    }

    #[test]
    fn key_pairs_issue_and_verify_and_pin_their_algorithm() {
        for (algorithm, (private, public)) in [
            (KeyPairAlgorithm::EdDsa, ed25519_pair()),
            (KeyPairAlgorithm::Rs256, rsa_pair()),
        ] {
            let t = Tokens::key_pair(
                algorithm,
                private.as_bytes(),
                public.as_bytes(),
                "courier",
                "clients",
                60,
            )
            .expect("key pair");
            let (user, session) = (UserId::new(), SessionId::new());
            let (token, _) = t.issue(user, session).expect("issue");
            assert_eq!(t.verify(&token).expect("verify").user_id, user);

            // Algorithm confusion: HS256 "signed" with the public key, which
            // anyone has. The verifier only takes its own algorithm.
            let claims: Claims = {
                let payload = token.split('.').nth(1).expect("payload");
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .expect("base64");
                serde_json::from_slice(&bytes).expect("claims")
            };
            let forged = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public.as_bytes()),
            )
            .expect("forge");
            assert!(
                t.verify(&forged).is_err(),
                "{algorithm:?}: HS256 with the public key"
            );
            // Nor does an HS256 verifier take an asymmetric token.
            assert!(tokens().verify(&token).is_err());
        }
    }

    #[test]
    fn mismatched_or_bad_keys_are_refused() {
        let (private, _) = ed25519_pair();
        let (_, other_public) = ed25519_pair();
        let mismatched = Tokens::key_pair(
            KeyPairAlgorithm::EdDsa,
            private.as_bytes(),
            other_public.as_bytes(),
            "courier",
            "clients",
            60,
        );
        assert!(matches!(mismatched, Err(TokenError::Key("mismatched"))));
        let garbage = Tokens::key_pair(
            KeyPairAlgorithm::Rs256,
            b"nope",
            b"nope",
            "courier",
            "clients",
            60,
        );
        assert!(matches!(garbage, Err(TokenError::Key(_))));
    }

    #[test]
    fn not_yet_valid_is_refused() {
        let t = tokens();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |nbf: u64| {
            serde_json::json!({
                "sub": UserId::new().to_string(), "sid": SessionId::new().to_string(),
                "iss": "courier", "aud": "clients", "exp": now + 60, "iat": now, "nbf": nbf,
                "jti": "j",
            })
        };
        let key = EncodingKey::from_secret("x".repeat(40).as_bytes());
        let sign =
            |c| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &key).expect("sign");
        assert!(
            t.verify(&sign(claims(now + 3600))).is_err(),
            "nbf an hour ahead"
        );
        assert!(t.verify(&sign(claims(now))).is_ok(), "nbf now");
    }

    #[test]
    fn alg_none_is_refused() {
        let t = tokens();
        let (token, _) = t.issue(UserId::new(), SessionId::new()).expect("issue");
        let payload = token.split('.').nth(1).expect("payload");
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(t.verify(&format!("{header}.{payload}.")).is_err());
    }
}
