//! What a call can fail with.

use std::time::Duration;

use courier_protocol::frames::{ErrorBody, ErrorFrame};
use courier_protocol::ErrorCode;

/// Why a call of [`crate::CourierClient`] (or a REST helper) failed.
///
/// Cheap to clone: [`crate::Event::ChannelLost`] carries one too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered the request with an `error` frame (or REST with
    /// an error body): `rate_limited` with `retry_after`, `forbidden`,
    /// `not_found`, `too_large`, ...
    #[error("server answered {}: {message}", .code.as_str())]
    Server {
        /// The protocol's error code.
        code: ErrorCode,
        /// The server's explanation, for people.
        message: String,
        /// With `rate_limited`: when to try again.
        retry_after: Option<Duration>,
    },
    /// No answer came in time. For a send this completes the call, but
    /// not the send: it is still resent after a reconnect until it is
    /// acknowledged (its `clientMsgId` keeps it from being stored twice).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection closed after the request was written and before its
    /// answer came, so whether it took effect is unknown. Sends never fail
    /// this way: they are resent.
    #[error("the connection closed before the answer came")]
    ConnectionLost,
    /// The channel was left before its join completed.
    #[error("the channel was left before the join completed")]
    Cancelled,
    /// The client stopped and will not reconnect until it is given a new
    /// session ([`crate::CourierClient::set_session`]): the session was
    /// revoked (close 4003), authentication failed (4001), or the refresh
    /// token was refused.
    #[error("stopped (close code {code:?}): {reason}")]
    Stopped {
        /// The close code that stopped it, when a socket closed.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// The client was closed by the app ([`crate::CourierClient::close`]
    /// or every handle dropped).
    #[error("the client is closed")]
    Closed,
    /// A REST call could not be made or its answer could not be read.
    #[error("HTTP: {0}")]
    Http(String),
    /// The server answered with a frame this call did not expect.
    #[error("unexpected answer `{0}`")]
    Unexpected(&'static str),
}

impl Error {
    /// The protocol error code, for [`Error::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// When to try again, for a `rate_limited` answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<ErrorFrame> for Error {
    fn from(e: ErrorFrame) -> Self {
        Self::Server {
            code: e.code,
            message: e.message,
            retry_after: e.retry_after_ms.map(Duration::from_millis),
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(e: ErrorBody) -> Self {
        Self::Server {
            code: e.code,
            message: e.message,
            retry_after: None,
        }
    }
}
