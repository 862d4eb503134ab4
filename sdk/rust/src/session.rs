//! Sessions (an access token, the refresh token that renews it, and when
//! it runs out) and the two REST calls that make them: `POST
//! /api/auth/login` and `POST /api/auth/refresh-token`.
//!
//! Refresh tokens rotate: each refresh answers a new one and the old one
//! stops working (presenting it again revokes the whole session, closing
//! its sockets with 4003). So a client keeps only the newest, and never
//! runs two refreshes of one session at once.

use std::fmt;
use std::time::Duration;

use courier_protocol::frames::ErrorBody;
use courier_protocol::UserId;
use serde::Deserialize;
use tokio::time::Instant;

use crate::error::Error;

/// How long a REST call may take.
const REST_TIMEOUT: Duration = Duration::from_secs(10);

/// A logged-in session's tokens.
///
/// `Debug` prints the tokens' lengths, never the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Duration,
    obtained_at: Instant,
}

impl Session {
    /// A session whose access token was obtained just now and lives
    /// `expires_in` (the `expiresIn` of the login or refresh answer).
    /// Without a refresh token it is never refreshed: once it expires the
    /// server closes the socket (4001) and the client stops.
    pub fn new(
        access_token: impl Into<String>,
        refresh_token: Option<String>,
        expires_in: Duration,
    ) -> Self {
        Self {
            access_token: access_token.into(),
            refresh_token,
            expires_in,
            obtained_at: Instant::now(),
        }
    }

    /// The access token (JWT), sent in `authenticate` and as
    /// `Authorization: Bearer`.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token, the newest of its rotation.
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    /// The access token's lifetime when it was obtained.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// When the client refreshes it: [`refresh_delay`] after it was
    /// obtained.
    pub fn refresh_due(&self) -> Instant {
        self.obtained_at + refresh_delay(self.expires_in)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field(
                "access_token",
                &format_args!("<{} bytes>", self.access_token.len()),
            )
            .field(
                "refresh_token",
                &self
                    .refresh_token
                    .as_ref()
                    .map(|t| format!("<{} bytes>", t.len())),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// How long after obtaining a token the client refreshes it: at 80 % of
/// its lifetime, and at least 1.5 s before its end, since the token's `exp`
/// is in whole seconds and so may come up to a second before `expiresIn`
/// says; never sooner than a quarter of the lifetime.
///
/// ```
/// use std::time::Duration;
/// use courier_client::session::refresh_delay;
///
/// assert_eq!(refresh_delay(Duration::from_secs(900)), Duration::from_secs(720));
/// assert_eq!(refresh_delay(Duration::from_secs(3)), Duration::from_millis(1500));
/// assert_eq!(refresh_delay(Duration::from_secs(1)), Duration::from_millis(250));
/// ```
pub fn refresh_delay(expires_in: Duration) -> Duration {
    let four_fifths = expires_in.mul_f64(0.8);
    let before_end = expires_in.saturating_sub(Duration::from_millis(1500));
    four_fifths.min(before_end).max(expires_in / 4)
}

/// The answer of [`login`]: the session and who it is.
#[derive(Clone, Debug)]
pub struct Login {
    /// The new session's tokens.
    pub session: Session,
    /// The user's id.
    pub user_id: UserId,
    /// The login name.
    pub username: String,
    /// `super_admin`, `admin`, `moderator` or `user`.
    pub role: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokensBody {
    token: String,
    refresh_token: String,
    expires_in: u64,
}

impl TokensBody {
    fn session(self) -> Session {
        Session::new(
            self.token,
            Some(self.refresh_token),
            Duration::from_secs(self.expires_in),
        )
    }
}

#[derive(Deserialize)]
struct LoginUser {
    id: UserId,
    username: String,
    role: String,
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(flatten)]
    tokens: TokensBody,
    user: LoginUser,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestErrorBody {
    error: RestError,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestError {
    #[serde(flatten)]
    body: ErrorBody,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// A REST client for one server's base URL (`http://host:port`).
#[derive(Clone, Debug)]
pub(crate) struct Rest {
    http: reqwest::Client,
    base: String,
}

/// How a refresh ended.
#[derive(Debug)]
pub(crate) enum Refreshed {
    /// New tokens.
    Renewed(Session),
    /// The refresh token was refused (unknown, expired, reused, or the
    /// session revoked): only a new login helps.
    Refused(Error),
    /// The server could not be reached or failed: try again later.
    Failed(Error),
}

impl Rest {
    pub(crate) fn new(base: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(REST_TIMEOUT)
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> Result<Login, Error> {
        let body = serde_json::json!({"username": username, "password": password});
        let response = self
            .post("/api/auth/login", body)
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let answer: LoginBody = read(response).await?;
        Ok(Login {
            session: answer.tokens.session(),
            user_id: answer.user.id,
            username: answer.user.username,
            role: answer.user.role,
        })
    }

    pub(crate) async fn refresh(&self, refresh_token: &str) -> Refreshed {
        let body = serde_json::json!({"refreshToken": refresh_token});
        let response = match self.post("/api/auth/refresh-token", body).await {
            Ok(response) => response,
            Err(e) => return Refreshed::Failed(Error::Http(e.to_string())),
        };
        let status = response.status().as_u16();
        match read::<TokensBody>(response).await {
            Ok(tokens) => Refreshed::Renewed(tokens.session()),
            Err(e) if matches!(status, 400 | 401 | 403) => Refreshed::Refused(e),
            Err(e) => Refreshed::Failed(e),
        }
    }
}

/// A 2xx answer's JSON body, or the error body as [`Error::Server`].
async fn read<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, Error> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Error::Http(e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| Error::Http(format!("unreadable answer: {e}")));
    }
    match serde_json::from_slice::<RestErrorBody>(&bytes) {
        Ok(RestErrorBody { error }) => Err(Error::Server {
            code: error.body.code,
            message: error.body.message,
            retry_after: error.retry_after_ms.map(Duration::from_millis),
        }),
        Err(_) => Err(Error::Http(format!("HTTP {status}"))),
    }
}

/// Logs in with `POST /api/auth/login` on the server at `base_url`
/// (`http://host:port`): a fresh session for [`crate::CourierClient::connect`].
pub async fn login(base_url: &str, username: &str, password: &str) -> Result<Login, Error> {
    Rest::new(base_url)?.login(username, password).await
}
