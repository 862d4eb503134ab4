//! [`ClientConfig`]: where the server is and how patient to be.

use std::time::Duration;

use courier_protocol::Encoding;

use crate::backoff::Backoff;

/// Options for [`crate::CourierClient::connect`].
///
/// ```
/// use std::time::Duration;
/// use courier_client::ClientConfig;
///
/// let config = ClientConfig::new("http://127.0.0.1:8080")
///     .request_timeout(Duration::from_secs(5));
/// assert_eq!(config.ws_url(), "ws://127.0.0.1:8080/ws");
/// assert_eq!(config.http_url(), "http://127.0.0.1:8080");
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(crate) ws_url: String,
    pub(crate) http_url: String,
    pub(crate) encoding: Encoding,
    pub(crate) backoff: Backoff,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_margin: Duration,
    pub(crate) headers: Vec<(String, String)>,
}

impl ClientConfig {
    /// The server at `server`: its base URL (`http://host:port`, or
    /// `https://` for TLS), whose `/ws` is the socket and whose `/api` the
    /// REST calls; a `ws://host:port/ws` URL works too. Defaults:
    /// MessagePack, backoff 250 ms doubling to 30 s, 10 s per request and
    /// per connection attempt, a socket silent 5 s past `heartbeatMs` is
    /// dead.
    pub fn new(server: &str) -> Self {
        let server = server.trim_end_matches('/');
        let (ws_url, http_url) = if let Some(rest) = server.strip_prefix("ws://") {
            let host = rest.strip_suffix("/ws").unwrap_or(rest);
            (format!("ws://{rest}"), format!("http://{host}"))
        } else if let Some(rest) = server.strip_prefix("wss://") {
            let host = rest.strip_suffix("/ws").unwrap_or(rest);
            (format!("wss://{rest}"), format!("https://{host}"))
        } else if let Some(host) = server.strip_prefix("https://") {
            (format!("wss://{host}/ws"), server.to_owned())
        } else {
            let host = server.strip_prefix("http://").unwrap_or(server);
            (format!("ws://{host}/ws"), format!("http://{host}"))
        };
        Self {
            ws_url,
            http_url,
            encoding: Encoding::MessagePack,
            backoff: Backoff::DEFAULT,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            heartbeat_margin: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// The REST base URL.
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// Uses this WebSocket URL instead of the one derived from the server.
    pub fn with_ws_url(mut self, url: impl Into<String>) -> Self {
        self.ws_url = url.into();
        self
    }

    /// Uses this REST base URL instead of the one derived from the server.
    pub fn with_http_url(mut self, url: impl Into<String>) -> Self {
        self.http_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// MessagePack (binary frames, the default) or JSON (text frames).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The reconnect backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a call waits for its answer. A send's clock runs only while
    /// it is on a socket (and restarts when it is resent); the other calls'
    /// runs from the call, connected or not.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (upgrade and authentication) may
    /// take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long past the server's `heartbeatMs` a silent socket is given
    /// before it is taken for dead and replaced.
    pub fn heartbeat_margin(mut self, margin: Duration) -> Self {
        self.heartbeat_margin = margin;
        self
    }

    /// Adds a header to every upgrade request (e.g. `Origin`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_derived_from_either_form() {
        let c = ClientConfig::new("https://chat.example/");
        assert_eq!(
            (c.ws_url(), c.http_url()),
            ("wss://chat.example/ws", "https://chat.example")
        );
        let c = ClientConfig::new("ws://127.0.0.1:9/ws");
        assert_eq!(
            (c.ws_url(), c.http_url()),
            ("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")
        );
        let c = ClientConfig::new("127.0.0.1:9");
        assert_eq!(
            (c.ws_url(), c.http_url()),
            ("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")
        );
    }
}
