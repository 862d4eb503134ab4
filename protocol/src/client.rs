//! The typed WebSocket client (feature `client`): used by the integration
//! tests, the load tester and Rust applications.
//!
//! ```no_run
//! # async fn demo(token: &str, channel: courier_protocol::ChannelId) -> Result<(), courier_protocol::client::ClientError> {
//! use std::time::Duration;
//! use courier_protocol::client::Client;
//!
//! let mut client = Client::connect("ws://127.0.0.1:8080/ws").await?;
//! client.authenticate(token).await?;
//! client.join(channel, None).await?;
//! let sent = client.send_text(channel, "hello").await?;
//! let push = client.next_push(Duration::from_secs(2)).await?; // our own new_message
//! # let _ = (sent, push); Ok(()) }
//! ```
//!
//! # Model
//! No background task: frames are read when a method asks for one. Every
//! frame read while waiting for something else is kept, in arrival order, in
//! a buffer of at most [`ClientBuilder::buffer`] frames (65,536 by default;
//! beyond that the oldest *push* is dropped and counted in
//! [`ClientReceiver::dropped`]). Answers are frames with a `ref` (`ack`,
//! `error`, `history`, `authentication_response`, `pong`); pushes are the
//! rest, including an `error` without `ref` (e.g. `invalid_frame` for a frame
//! whose `ref` was unreadable).
//!
//! [`Client::split`] gives a [`ClientSender`] and a [`ClientReceiver`] that
//! can live in different tasks: fire requests with [`ClientSender::send`]
//! (it returns the assigned `ref`) and collect answers and pushes with
//! [`ClientReceiver::next_frame`].

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite::Message;

use crate::codec::{decode_server, encode_client, DecodeError, Encoding};
use crate::frames::{
    Ack, AckResult, Authenticate, AuthenticationResponse, ChannelView, ClientFrame, ClientRequest,
    ErrorFrame, JoinChannel, Ref, SendMessage, SendResult, ServerFrame,
};
use crate::ids::ChannelId;

/// The client's WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Default time to wait for the upgrade, an answer or a close.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of frames kept while waiting for something else.
const DEFAULT_BUFFER: usize = 65_536;
const DEFAULT_READ_BUFFER: usize = 128 * 1024;
/// Largest incoming WebSocket message (a full `history` page is ~1.7 MB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the upgrade with an HTTP status (e.g. 403 for a
    /// refused `Origin`).
    #[error("upgrade refused with HTTP {status}")]
    Refused {
        /// The HTTP status code.
        status: u16,
    },
    /// A WebSocket or I/O error (connecting, sending).
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    /// Nothing fitting arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection is closed; `code` is the close code the server sent
    /// (`None` when it ended without a close frame).
    #[error("connection closed (code {code:?}): {reason}")]
    Closed {
        /// The WebSocket close code, e.g. 4001.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
    /// The server sent a frame this client cannot decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server answered the request with `error`.
    #[error("server answered {}: {}", .0.code.as_str(), .0.message)]
    Server(ErrorFrame),
    /// The server answered with a frame of an unexpected type.
    #[error("unexpected answer `{0}`")]
    Unexpected(&'static str),
    /// The request cannot be used this way (e.g. waiting on a request that
    /// gets no answer), or a bad header or URL.
    #[error("{0}")]
    Usage(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(e))
    }
}

/// Options for [`Client`]; start with [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    url: String,
    encoding: Encoding,
    headers: Vec<(String, String)>,
    timeout: Duration,
    buffer: usize,
    read_buffer: usize,
}

impl ClientBuilder {
    /// Options for `url` (e.g. `ws://127.0.0.1:8080/ws`): MessagePack, no
    /// extra headers, 10 s timeout, 65,536 buffered frames.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            encoding: Encoding::MessagePack,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            buffer: DEFAULT_BUFFER,
            read_buffer: DEFAULT_READ_BUFFER,
        }
    }

    /// Send frames as MessagePack (binary) or JSON (text).
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends `Origin: origin` with the upgrade request.
    pub fn origin(self, origin: impl Into<String>) -> Self {
        self.header("Origin", origin)
    }

    /// How long to wait for the upgrade and, in [`Client::request`], for an
    /// answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many frames to keep while waiting for something else (at
    /// least 1).
    pub fn buffer(mut self, frames: usize) -> Self {
        self.buffer = frames.max(1);
        self
    }

    /// How many bytes the socket is read in at a time (tungstenite's read
    /// buffer; 128 KiB by default). Every read zeroes that much first, so a
    /// program holding thousands of connections that each receive small
    /// frames wants a few KiB.
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.max(1);
        self
    }

    /// Connects and upgrades.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let mut request = self.url.as_str().into_client_request()?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Usage(e.to_string()))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| ClientError::Usage(e.to_string()))?;
            request.headers_mut().append(name, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .read_buffer_size(self.read_buffer);
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (ws, _response) = match tokio::time::timeout(self.timeout, connecting).await {
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
            Ok(Err(tungstenite::Error::Http(response))) => {
                return Err(ClientError::Refused {
                    status: response.status().as_u16(),
                })
            }
            Ok(result) => result?,
        };
        let (sink, stream) = ws.split();
        Ok(Client {
            sender: ClientSender {
                sink,
                encoding: self.encoding,
                next_ref: 1,
            },
            receiver: ClientReceiver {
                stream,
                pending: VecDeque::new(),
                capacity: self.buffer,
                dropped: 0,
                closed: None,
            },
            timeout: self.timeout,
        })
    }
}

/// A connection to Courier's `/ws`.
pub struct Client {
    sender: ClientSender,
    receiver: ClientReceiver,
    timeout: Duration,
}

impl Client {
    /// Connects with default options (MessagePack, 10 s timeout).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        ClientBuilder::new(url).connect().await
    }

    /// Options for a connection to `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Sends `authenticate` and returns the `authentication_response`
    /// (check its `result`: a failure is answered, then closed with 4001).
    pub async fn authenticate(
        &mut self,
        token: &str,
    ) -> Result<AuthenticationResponse, ClientError> {
        self.authenticate_with(Authenticate::new(token)).await
    }

    /// Sends this `authenticate` (e.g. one asking for compact frames, see
    /// [`crate::compact`]) and returns the `authentication_response`.
    pub async fn authenticate_with(
        &mut self,
        authenticate: Authenticate,
    ) -> Result<AuthenticationResponse, ClientError> {
        let request = ClientRequest::Authenticate(authenticate);
        match self.request(request).await? {
            ServerFrame::AuthenticationResponse(r) => Ok(r),
            ServerFrame::Error(e) => Err(ClientError::Server(e)),
            other => Err(ClientError::Unexpected(other.type_name())),
        }
    }

    /// Sends `request` with the next `ref` and waits for the frame that
    /// answers it (`ack`, `error`, `history`, `authentication_response`,
    /// `pong`). An `error` answer is returned as `Ok(ServerFrame::Error)`.
    /// `typing_indicator` gets no answer: use [`Client::send`].
    pub async fn request(&mut self, request: ClientRequest) -> Result<ServerFrame, ClientError> {
        if !request.expects_answer() {
            return Err(ClientError::Usage(format!(
                "`{}` gets no answer; use send",
                request.type_name()
            )));
        }
        let reference = self.sender.send(request).await?;
        self.receiver.answer(&reference, self.timeout).await
    }

    /// [`Client::request`] for requests answered by `ack`; an `error`
    /// answer becomes [`ClientError::Server`].
    pub async fn ack(&mut self, request: ClientRequest) -> Result<Ack, ClientError> {
        match self.request(request).await? {
            ServerFrame::Ack(ack) => Ok(ack),
            ServerFrame::Error(e) => Err(ClientError::Server(e)),
            other => Err(ClientError::Unexpected(other.type_name())),
        }
    }

    /// Joins a channel and returns its `channel` object.
    pub async fn join(
        &mut self,
        channel_id: ChannelId,
        since_seq: Option<u64>,
    ) -> Result<ChannelView, ClientError> {
        let request = ClientRequest::JoinChannel(JoinChannel {
            channel_id,
            since_seq,
        });
        match self.ack(request).await?.result {
            AckResult::Channel(channel) => Ok(channel),
            _ => Err(ClientError::Unexpected("ack without channel")),
        }
    }

    /// Sends a plain text message and returns the send result.
    pub async fn send_text(
        &mut self,
        channel_id: ChannelId,
        text: &str,
    ) -> Result<SendResult, ClientError> {
        let request = ClientRequest::SendMessage(SendMessage::text(channel_id, text));
        match self.ack(request).await?.result {
            AckResult::Sent(sent) => Ok(sent),
            _ => Err(ClientError::Unexpected("ack without messageId")),
        }
    }

    /// See [`ClientSender::send`].
    pub async fn send(&mut self, request: ClientRequest) -> Result<Ref, ClientError> {
        self.sender.send(request).await
    }

    /// See [`ClientSender::send_frame`].
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.sender.send_frame(frame).await
    }

    /// See [`ClientSender::send_raw`].
    pub async fn send_raw(&mut self, message: Message) -> Result<(), ClientError> {
        self.sender.send_raw(message).await
    }

    /// See [`ClientReceiver::next_frame`].
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        self.receiver.next_frame(timeout).await
    }

    /// See [`ClientReceiver::answer`].
    pub async fn answer(
        &mut self,
        reference: &Ref,
        timeout: Duration,
    ) -> Result<ServerFrame, ClientError> {
        self.receiver.answer(reference, timeout).await
    }

    /// See [`ClientReceiver::next_push`].
    pub async fn next_push(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        self.receiver.next_push(timeout).await
    }

    /// See [`ClientReceiver::next_push_matching`].
    pub async fn next_push_matching(
        &mut self,
        timeout: Duration,
        matches: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame, ClientError> {
        self.receiver.next_push_matching(timeout, matches).await
    }

    /// See [`ClientReceiver::wait_closed`].
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Option<u16>, ClientError> {
        self.receiver.wait_closed(timeout).await
    }

    /// See [`ClientReceiver::close_code`].
    pub fn close_code(&self) -> Option<u16> {
        self.receiver.close_code()
    }

    /// Sends a normal close (1000) and waits up to the timeout for the
    /// server's reply.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.sender.close().await?;
        match self.receiver.wait_closed(self.timeout).await {
            Ok(_) | Err(ClientError::Timeout(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Two halves for two tasks (the load tester's sender and reader).
    pub fn split(self) -> (ClientSender, ClientReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half.
pub struct ClientSender {
    sink: SplitSink<Ws, Message>,
    encoding: Encoding,
    next_ref: i64,
}

impl ClientSender {
    /// The encoding frames are sent in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Sends `request` with the next integer `ref` (1, 2, ...) without
    /// waiting for the answer; returns that `ref`.
    pub async fn send(&mut self, request: ClientRequest) -> Result<Ref, ClientError> {
        let reference = self.next_ref();
        let frame = ClientFrame {
            reference: Some(reference.clone()),
            request,
        };
        self.send_frame(&frame).await?;
        Ok(reference)
    }

    /// Sends many requests with one flush; returns their `ref`s in order.
    pub async fn send_batch(
        &mut self,
        requests: impl IntoIterator<Item = ClientRequest>,
    ) -> Result<Vec<Ref>, ClientError> {
        let mut refs = Vec::new();
        for request in requests {
            let reference = self.next_ref();
            let frame = ClientFrame {
                reference: Some(reference.clone()),
                request,
            };
            self.sink.feed(self.message(&frame)?).await?;
            refs.push(reference);
        }
        self.sink.flush().await?;
        Ok(refs)
    }

    /// Sends a frame as given (its own `ref`, or none).
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let message = self.message(frame)?;
        self.send_raw(message).await
    }

    /// Sends any WebSocket message, e.g. malformed bytes.
    pub async fn send_raw(&mut self, message: Message) -> Result<(), ClientError> {
        self.sink.send(message).await?;
        Ok(())
    }

    /// Sends a normal close (1000).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        };
        match self.sink.send(Message::Close(Some(frame))).await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn next_ref(&mut self) -> Ref {
        self.next_ref += 1;
        Ref::Int(self.next_ref - 1)
    }

    fn message(&self, frame: &ClientFrame) -> Result<Message, ClientError> {
        let bytes = encode_client(frame, self.encoding);
        Ok(match self.encoding {
            Encoding::MessagePack => Message::Binary(bytes),
            Encoding::Json => Message::Text(
                Utf8Bytes::try_from(bytes)
                    .map_err(|_| ClientError::Usage("JSON is not UTF-8".to_owned()))?,
            ),
        })
    }
}

/// Why the connection ended.
#[derive(Clone, Debug)]
struct Ended {
    code: Option<u16>,
    reason: String,
}

/// The receiving half.
pub struct ClientReceiver {
    stream: SplitStream<Ws>,
    /// Frames read while waiting for something else, in arrival order.
    pending: VecDeque<ServerFrame>,
    capacity: usize,
    dropped: u64,
    closed: Option<Ended>,
}

impl ClientReceiver {
    /// The frames read but not taken yet, and the WebSocket stream: for a
    /// reader that decodes frames itself, such as the load tester, which
    /// reads only the few fields it records.
    pub fn into_raw(self) -> (VecDeque<ServerFrame>, SplitStream<Ws>) {
        (self.pending, self.stream)
    }

    /// The next frame of any kind: buffered ones first.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        let deadline = Instant::now() + timeout;
        self.read_until(deadline, timeout).await
    }

    /// The frame that answers `reference`; frames read meanwhile are kept.
    pub async fn answer(
        &mut self,
        reference: &Ref,
        timeout: Duration,
    ) -> Result<ServerFrame, ClientError> {
        self.wait_for(timeout, |f| f.reference() == Some(reference))
            .await
    }

    /// The next push (a frame without `ref`); answers read meanwhile are
    /// kept.
    pub async fn next_push(&mut self, timeout: Duration) -> Result<ServerFrame, ClientError> {
        self.wait_for(timeout, |f| f.reference().is_none()).await
    }

    /// The next push for which `matches` is true; every other frame read
    /// meanwhile is kept, in order.
    pub async fn next_push_matching(
        &mut self,
        timeout: Duration,
        mut matches: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame, ClientError> {
        self.wait_for(timeout, |f| f.reference().is_none() && matches(f))
            .await
    }

    /// Reads (keeping frames) until the server closes; returns its close
    /// code (`None` when the connection ended without a close frame).
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Option<u16>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_until(deadline, timeout).await {
                Ok(frame) => self.keep(frame),
                Err(ClientError::Closed { code, .. }) => return Ok(code),
                Err(e) => return Err(e),
            }
        }
    }

    /// The server's close code, once a close frame was read.
    pub fn close_code(&self) -> Option<u16> {
        self.closed.as_ref().and_then(|c| c.code)
    }

    /// How many pushes were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// How many frames are buffered.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    async fn wait_for(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&ServerFrame) -> bool,
    ) -> Result<ServerFrame, ClientError> {
        if let Some(frame) = self
            .pending
            .iter()
            .position(&mut wanted)
            .and_then(|i| self.pending.remove(i))
        {
            return Ok(frame);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.read_until(deadline, timeout).await?;
            if wanted(&frame) {
                return Ok(frame);
            }
            self.keep(frame);
        }
    }

    fn keep(&mut self, frame: ServerFrame) {
        if self.pending.len() >= self.capacity {
            let oldest_push = self.pending.iter().position(|f| f.reference().is_none());
            self.pending.remove(oldest_push.unwrap_or(0));
            self.dropped += 1;
        }
        self.pending.push_back(frame);
    }

    async fn read_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<ServerFrame, ClientError> {
        match timeout_at(deadline, self.read()).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Reads the next data frame. Cancel-safe: dropping it loses nothing.
    async fn read(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            if let Some(ended) = &self.closed {
                return Err(ClientError::Closed {
                    code: ended.code,
                    reason: ended.reason.clone(),
                });
            }
            let ended = match self.stream.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    return Ok(decode_server(&bytes, Encoding::MessagePack)?)
                }
                Some(Ok(Message::Text(text))) => {
                    return Ok(decode_server(text.as_bytes(), Encoding::Json)?)
                }
                Some(Ok(Message::Close(frame))) => Ended {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                },
                Some(Ok(_)) => continue, // Ping (answered by tungstenite), Pong
                Some(Err(e)) => Ended {
                    code: None,
                    reason: e.to_string(),
                },
                None => Ended {
                    code: None,
                    reason: "connection ended".to_owned(),
                },
            };
            self.closed = Some(ended);
            // tungstenite queued its reply to a close frame; one more poll
            // flushes it without waiting for anything.
            let _ = self.stream.next().now_or_never();
        }
    }
}
