//! What REST handlers take from a request: the authenticated [`Caller`]
//! (put there by the authentication middleware), the [`Client`] of an
//! unauthenticated request, JSON bodies whose errors name the field, and
//! ids and query parameters parsed with errors that name them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{BodyDataStream, Bytes};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use courier_actors::audit::chain::PendingAudit;
use courier_actors::policy::authz::{self, Action, Principal};
use courier_actors::policy::identity::Identity;
use courier_actors::realtime::AccessError;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::{from_access, ApiError};
use crate::http::App;

/// User agents are cut to this many characters before they are stored.
const MAX_USER_AGENT: usize = 256;

/// The client's address and user agent, as sessions and the audit record them.
#[derive(Clone, Debug)]
pub struct Client {
    pub ip: String,
    pub user_agent: Option<String>,
}

impl Client {
    /// From the request's headers and peer address (see [`App::client_addr`]).
    pub fn from_parts(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Self {
        let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self::at(app.client_addr(headers, peer), headers)
    }

    /// The client at `addr`, with the user agent of `headers`.
    pub fn at(addr: IpAddr, headers: &HeaderMap) -> Self {
        Client {
            ip: addr.to_string(),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(MAX_USER_AGENT).collect()),
        }
    }

    /// An audit event attributed to `actor` from this client.
    pub fn event(
        &self,
        actor: Option<courier_protocol::UserId>,
        action: &str,
        details: serde_json::Value,
    ) -> PendingAudit {
        let mut event = PendingAudit::new(actor, Some(self.ip.clone()), action, details);
        event.user_agent = self.user_agent.clone();
        event
    }
}

impl FromRequestParts<Arc<App>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(client) = parts.extensions.get::<Client>() {
            return Ok(client.clone());
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Client::from_parts(app, &parts.headers, peer))
    }
}

/// An authenticated request: who, on which session, from where.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    pub client: Client,
}

impl Caller {
    /// The caller as the authorization module sees them.
    pub fn principal<'a>(&self, app: &'a App) -> Principal<'a> {
        Principal {
            user_id: self.identity.user_id,
            role: self.identity.role,
            permissions: &app.realtime.permissions,
        }
    }

    /// Appends an audit entry for something the caller did, and waits until
    /// it is committed to the chain; `Err` (503 `unavailable`) when it is not.
    pub async fn audit(
        &self,
        app: &App,
        action: &str,
        details: serde_json::Value,
    ) -> Result<(), ApiError> {
        let event = self
            .client
            .event(Some(self.identity.user_id), action, details);
        Ok(app.realtime.audit.append(event).await?)
    }

    /// Asks the authorization module; a denial is audited
    /// (`access.denied`, with `op` and `details`) and answers 403.
    pub fn authorize(
        &self,
        app: &App,
        action: Action<'_>,
        op: &str,
        details: serde_json::Value,
    ) -> Result<(), ApiError> {
        authz::decide(self.principal(app), action)
            .map_err(|denied| self.denied(app, op, details, denied.0))
    }

    /// Maps an access error of a shared realtime path, auditing a denial.
    pub fn access_error(
        &self,
        app: &App,
        op: &str,
        details: serde_json::Value,
        e: AccessError,
    ) -> ApiError {
        match e {
            AccessError::Denied(denied) => self.denied(app, op, details, denied.0),
            other => from_access(other),
        }
    }

    fn denied(
        &self,
        app: &App,
        op: &str,
        mut details: serde_json::Value,
        why: &'static str,
    ) -> ApiError {
        if let Some(map) = details.as_object_mut() {
            map.insert("op".into(), op.into());
        }
        // Fire-and-forget (docs/audit.md): a refusal did nothing to report
        // as done, and answering it must not wait on the store.
        app.realtime.audit.record(self.client.event(
            Some(self.identity.user_id),
            "access.denied",
            details,
        ));
        ApiError::forbidden(why)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// A JSON body. Malformed JSON answers 400; a missing or mistyped field
/// answers 400 naming it; a body over the limit answers 413. The
/// `Content-Type` is not checked (bearer tokens, not cookies, authorize
/// requests, so there is no cross-site form to fend off).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The largest request body the API reads, set on every route by
/// [`super::routes`] from `max_text_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// How much of an oversized body is read past the limit, and for how long,
/// before its 413 is sent. Answering at once and dropping the connection
/// with the rest unread makes the kernel reset it, and a reset discards the
/// 413 the client had not read yet; reading a bounded tail keeps the answer
/// for any body up to this size. Past it the connection is closed.
const DRAIN_BYTES: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The body, unparsed (for handlers that decide something before parsing
/// it), with [`JsonBody`]'s size limit and errors; parse it with
/// [`parse_json`].
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let Some(&BodyLimit(limit)) = req.extensions().get::<BodyLimit>() else {
            return Err(ApiError::internal("a route without a body limit"));
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let waits_to_send = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut chunks = req.into_body().into_data_stream();
        if declared.is_some_and(|n| n > limit) {
            // A client waiting for `100 Continue` has sent nothing yet;
            // reading would ask it for the body only to drop it.
            let rest = (!waits_to_send).then_some(chunks);
            return Err(too_large(rest, 0, declared).await);
        }
        let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| body_error(&e))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(Some(chunks), body.len() + chunk.len(), declared).await);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawBody(body.freeze()))
    }
}

/// A body that could not be read: 408 (and the connection closed) when it
/// did not arrive within `http_body_timeout_ms`, else 400.
fn body_error(e: &axum::Error) -> ApiError {
    if crate::accept::is_body_timeout(e) {
        let mut error = ApiError::request_timeout();
        error.close_connection = true;
        return error;
    }
    ApiError::bad_request("cannot read the request body")
}

/// The 413 for a body over the limit, after reading and dropping the rest
/// of it, `chunks`, within [`DRAIN_BYTES`] and [`DRAIN_TIME`]; `read` bytes
/// are already in. A body left unread closes the connection.
async fn too_large(
    chunks: Option<BodyDataStream>,
    read: usize,
    declared: Option<usize>,
) -> ApiError {
    let too_long = declared.is_some_and(|n| n.saturating_sub(read) > DRAIN_BYTES);
    let drained = match chunks {
        Some(mut chunks) if !too_long => {
            let drain = async {
                let mut left = DRAIN_BYTES;
                while let Some(chunk) = chunks.next().await {
                    left = left.checked_sub(chunk.ok()?.len())?;
                }
                Some(())
            };
            tokio::time::timeout(DRAIN_TIME, drain).await == Ok(Some(()))
        }
        _ => false,
    };
    let mut error = ApiError::too_large("request body is over the size limit");
    error.close_connection = !drained;
    error
}

/// Parses a JSON body as [`JsonBody`] does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON object body is required"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request("the request body is not valid JSON");
        }
        // serde's message for a missing field names it; for anything else
        // the path does.
        let message = strip_position(&inner.to_string());
        match missing_field(&message) {
            Some(field) => ApiError::invalid(field, "is required"),
            None if path != "." => ApiError::invalid(path, message),
            None => ApiError::bad_request(format!("invalid body: {message}")),
        }
    })
}

/// `"missing field `x` at line 1 column 2"` without its position.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// An id from the path, e.g. `/api/users/{id}`.
pub fn path_id<T: FromStr>(field: &'static str, raw: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid(field, "must be a UUID"))
}

/// Query parameters, parsed one by one with errors that name them.
pub struct QueryParams(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(map) =
            axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::bad_request("malformed query string"))?;
        Ok(QueryParams(map))
    }
}

impl QueryParams {
    /// A text parameter; empty counts as absent.
    pub fn text(&self, name: &'static str, max_len: usize) -> Result<Option<String>, ApiError> {
        match self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(v) if v.chars().count() > max_len => Err(ApiError::invalid(
                name,
                format!("must be at most {max_len} characters"),
            )),
            // `%00` decodes to a NUL, which PostgreSQL refuses in a query
            // parameter (a 500) and SQLite cuts the pattern at.
            Some(v) if v.chars().any(char::is_control) => Err(ApiError::invalid(
                name,
                "must not contain control characters",
            )),
            v => Ok(v.map(str::to_owned)),
        }
    }

    /// A parsed parameter; empty counts as absent.
    pub fn parse<T: FromStr>(&self, name: &'static str, what: &str) -> Result<Option<T>, ApiError> {
        match self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid(name, format!("must be {what}"))),
            None => Ok(None),
        }
    }

    /// An integer in `min..=max`, `default` when absent.
    pub fn int_in(
        &self,
        name: &'static str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ApiError> {
        let what = format!("an integer from {min} to {max}");
        match self.parse::<u64>(name, &what)? {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(_) => Err(ApiError::invalid(name, format!("must be {what}"))),
            None => Ok(default),
        }
    }
}
