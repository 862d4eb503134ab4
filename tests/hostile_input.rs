//! Hostile input against a live server (issue 7, "Hostile input").
//!
//! Each table is a list of rows: one hostile input (or a burst of them) sent
//! by an attacker's connection or request, and the answer PROTOCOL.md and
//! docs/protocol.md document for it. Beside the attacker a well-behaved
//! client works on the same server: after every row it sends a message that
//! must be acked and then delivered to another member of its channel, and at
//! the end that channel's history must hold every message it sent, exactly
//! once, with its text, in a gap-free run of `seq`s.
//!
//! Every test prints its table (`input | expected | got`) and how many
//! hostile inputs it tried; `cargo test --test hostile_input -- --nocapture`
//! shows them (docs/reliability.md quotes the figures). A row that does not
//! get its documented answer fails the test once the whole table has run, so
//! one failure never hides the rows after it.
//!
//! | test | store | rows |
//! |---|---|---|
//! | `frames` | SQLite | malformed MessagePack and JSON: `invalid_frame`, the connection goes on |
//! | `websocket_framing` | SQLite | invalid UTF-8 (1007), frames and fragmented messages over the limit (1009), RFC 6455 violations (1002) |
//! | `forged_tokens` | SQLite | the JWT forgery matrix over `authenticate` |
//! | `forged_tokens_on_an_rs256_server` | SQLite | HS/RS confusion with the server's public key |
//! | `ownership_and_content` | both | other users' ids over WebSocket and REST, replayed `clientMsgId`s, negative and huge numbers, SQL-looking strings, NUL, a 1 MiB name, bidi overrides and combining floods |
//! | `nul_in_a_reaction` | both | U+0000 in a reaction (fails until the connection actor refuses it) |
//! | `connection_abuse` | SQLite | never authenticating, foreign `Origin`, a token in the URL, 200 abandoned and 200 concurrent logins |
//! | `slowloris_upgrade` | SQLite | an upgrade request dribbled a byte at a time, a TCP connection that sends nothing (fails until the HTTP side bounds the request head) |

#[path = "support/rest.rs"]
mod rest;
mod support;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use courier_protocol::client::{Client, ClientError, Message};
use courier_protocol::codec::{decode_server, encode_client, Encoding};
use courier_protocol::error::close;
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId, UserId};
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use rest::{Backend, Rest, Session, PASSWORD, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a setup step or the good client may wait.
const T: Duration = Duration::from_secs(10);
/// How long a hostile input may wait for its answer.
const ANSWER: Duration = Duration::from_secs(5);
/// The `ref` every hostile request carries, when it carries one.
const REF: i64 = 7;

// ---------------------------------------------------------------------------
// Outcomes and the table
// ---------------------------------------------------------------------------

/// What a hostile input should get, or got.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// An `error` frame with this code and `ref`; the connection still
    /// answers a ping afterwards.
    Error(ErrorCode, Option<Ref>),
    /// An `error` frame with this code, then a close with this code.
    ErrorThenClose(ErrorCode, u16),
    /// A failed `authentication_response` with this code, then close 4001.
    AuthRefused(ErrorCode),
    /// Closed with this code (`None`: the connection ended without one).
    Close(Option<u16>),
    /// Answered as a valid request would be (`ack`, `history`, `pong`, a
    /// successful `authentication_response`, a 101 upgrade).
    Accepted,
    /// An HTTP answer: the status and `error.code` (empty when there is no
    /// error body to read).
    Http(u16, String),
    /// A row-specific result, in words.
    Says(String),
    /// Anything unexpected.
    Other(String),
}

use Outcome::*;

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error(code, None) => write!(f, "error {}", code.as_str()),
            Error(code, Some(r)) => write!(f, "error {} (ref {r})", code.as_str()),
            ErrorThenClose(code, c) => write!(f, "error {}, close {c}", code.as_str()),
            AuthRefused(code) => write!(f, "authentication_response {}, close 4001", code.as_str()),
            Close(Some(c)) => write!(f, "close {c}"),
            Close(None) => write!(f, "connection ended without a close frame"),
            Accepted => write!(f, "accepted"),
            Http(status, code) if code.is_empty() => write!(f, "HTTP {status}"),
            Http(status, code) => write!(f, "HTTP {status} {code}"),
            Says(what) | Other(what) => f.write_str(what),
        }
    }
}

/// `error` `code` echoing the hostile request's ref.
fn err(code: ErrorCode) -> Outcome {
    Error(code, Some(Ref::Int(REF)))
}

/// `invalid_frame` with the ref when the frame still had a readable one.
fn invalid(with_ref: bool) -> Outcome {
    Error(ErrorCode::InvalidFrame, with_ref.then_some(Ref::Int(REF)))
}

fn http(status: u16, code: &str) -> Outcome {
    Http(status, code.to_owned())
}

fn says(what: impl Into<String>) -> Outcome {
    Says(what.into())
}

/// One test's table: every row with what it expected and what it got.
struct Table {
    title: String,
    lines: Vec<String>,
    rows: usize,
    rows_failed: usize,
    inputs: usize,
    failures: Vec<String>,
}

impl Table {
    fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            lines: Vec::new(),
            rows: 0,
            rows_failed: 0,
            inputs: 0,
            failures: Vec::new(),
        }
    }

    /// Records a row of `inputs` hostile inputs.
    fn row(&mut self, input: &str, inputs: usize, expected: &Outcome, got: &Outcome) {
        self.row_note(input, inputs, expected, got, "");
    }

    /// Records a row, with a note (figures) printed beside it.
    fn row_note(
        &mut self,
        input: &str,
        inputs: usize,
        expected: &Outcome,
        got: &Outcome,
        note: &str,
    ) {
        let ok = expected == got;
        self.rows += 1;
        self.inputs += inputs;
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" [{note}]")
        };
        let line = format!(
            "{} | {input} | expected: {expected} | got: {got}{note}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            self.rows_failed += 1;
            self.failures.push(line.clone());
        }
        self.lines.push(line);
    }

    /// Records a control row: a well-formed input beside the hostile ones,
    /// showing that what the hostile rows break is the hostility. Not
    /// counted as a hostile input.
    fn control(&mut self, input: &str, expected: &Outcome, got: &Outcome) {
        self.row_note(&format!("control: {input}"), 0, expected, got, "");
    }

    /// Records a failure of the good client (or of a check after the rows).
    fn fail(&mut self, what: impl Into<String>) {
        let line = format!("FAIL | {}", what.into());
        self.failures.push(line.clone());
        self.lines.push(line);
    }

    /// Prints the table and fails the test if any row did.
    fn finish(self, good: &str) {
        let mut out = format!("\n== hostile input: {} ==\n", self.title);
        for line in &self.lines {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!(
            "== {}: {} rows, {} hostile inputs tried, {} rows as documented; {good} ==\n",
            self.title,
            self.rows,
            self.inputs,
            self.rows - self.rows_failed
        ));
        println!("{out}");
        assert!(
            self.failures.is_empty(),
            "{} of the {} rows did not get their documented answer:\n{}",
            self.failures.len(),
            self.rows,
            self.failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// The well-behaved client
// ---------------------------------------------------------------------------

/// A user who only ever sends well-formed messages to a channel, and another
/// member who watches them arrive.
struct Good {
    sender: Client,
    watcher: Client,
    channel: ChannelId,
    sent: usize,
    acked: Vec<(SendResult, String)>,
    delivered: usize,
    lost: Option<usize>,
}

impl Good {
    async fn start(url: &str, sender: &str, watcher: &str, channel: ChannelId) -> Good {
        let sender = connect(url, sender, Encoding::MessagePack).await;
        let mut watcher = connect(url, watcher, Encoding::Json).await;
        watcher
            .join(channel, None)
            .await
            .expect("the watcher joins");
        Good {
            sender,
            watcher,
            channel,
            sent: 0,
            acked: Vec::new(),
            delivered: 0,
            lost: None,
        }
    }

    /// One message: acked, then delivered to the watcher.
    async fn round_trip(&mut self) -> Result<(), String> {
        self.sent += 1;
        let n = self.sent;
        let text = format!("good message {n}");
        let mut request = SendMessage::text(self.channel, text.clone());
        request.client_msg_id = Some(format!("good-{n}"));
        let sending = self.sender.ack(ClientRequest::SendMessage(request));
        let sent = match tokio::time::timeout(T, sending).await {
            Ok(Ok(Ack {
                result: AckResult::Sent(sent),
                ..
            })) => sent,
            Ok(Ok(ack)) => return Err(format!("good message {n}: unexpected {ack:?}")),
            Ok(Err(e)) => return Err(format!("good message {n} refused: {e}")),
            Err(_) => return Err(format!("good message {n} not acked within {T:?}")),
        };
        let id = sent.message_id;
        self.acked.push((sent, text));
        let delivered = self
            .watcher
            .next_push_matching(
                T,
                |f| matches!(f, ServerFrame::NewMessage(m) if m.data.id == id),
            )
            .await;
        match delivered {
            Ok(_) => {
                self.delivered += 1;
                Ok(())
            }
            Err(e) => Err(format!("good message {n} acked but not delivered: {e}")),
        }
    }

    /// A round trip after `row`; a failure is a failure of the table.
    async fn after(&mut self, table: &mut Table, row: &str) {
        if let Err(e) = self.round_trip().await {
            table.fail(format!("good client after \"{row}\": {e}"));
        }
    }

    /// The channel's history holds every acked message once, with its text,
    /// at seqs 1..=n.
    async fn verify(&mut self, table: &mut Table) {
        let mut found: Vec<MessageView> = Vec::new();
        let mut before = None;
        loop {
            let request = ClientRequest::FetchHistory(FetchHistory {
                channel_id: self.channel,
                before_seq: before,
                limit: Some(100),
            });
            let page = match self.watcher.request(request).await {
                Ok(ServerFrame::History(page)) => page,
                other => {
                    table.fail(format!("good client's history: {other:?}"));
                    return;
                }
            };
            before = page.messages.first().map(|m| m.seq);
            found.splice(0..0, page.messages);
            if !page.has_more || before.is_none() {
                break;
            }
        }
        let kept = self
            .acked
            .iter()
            .filter(|(sent, text)| {
                found
                    .iter()
                    .filter(|m| m.id == sent.message_id && m.seq == sent.seq && m.text == *text)
                    .count()
                    == 1
            })
            .count();
        self.lost = Some(self.acked.len() - kept);
        let seqs: Vec<u64> = found.iter().map(|m| m.seq).collect();
        let expected: Vec<u64> = (1..=self.acked.len() as u64).collect();
        if seqs != expected || kept != self.acked.len() {
            table.fail(format!(
                "good client's channel: {} acked, {kept} found intact; seqs {seqs:?}",
                self.acked.len()
            ));
        }
    }

    fn summary(&self) -> String {
        let lost = self
            .lost
            .map_or_else(|| "not checked".to_owned(), |l| l.to_string());
        format!(
            "good client: {} sent, {} acked, {} delivered, {lost} lost",
            self.sent,
            self.acked.len(),
            self.delivered
        )
    }
}

// ---------------------------------------------------------------------------
// Connections and answers
// ---------------------------------------------------------------------------

/// A connected, authenticated client.
async fn connect(url: &str, token: &str, encoding: Encoding) -> Client {
    let mut client = Client::builder(url)
        .encoding(encoding)
        .timeout(T)
        .connect()
        .await
        .expect("connect");
    let response = client.authenticate(token).await.expect("authenticate");
    assert!(response.result.is_ok(), "refused: {response:?}");
    client
}

/// The first answer on `c` (pushes are skipped), as an outcome.
async fn answer(c: &mut Client) -> Outcome {
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_frame(left).await {
            Ok(ServerFrame::Error(e)) => return Error(e.code, e.reference),
            Ok(ServerFrame::AuthenticationResponse(r)) => {
                return match r.result {
                    Ok(_) => Accepted,
                    Err(body) => Error(body.code, r.reference),
                }
            }
            Ok(frame) if frame.reference().is_some() => return Accepted,
            Ok(_) => continue,
            Err(ClientError::Closed { code, .. }) => return Close(code),
            Err(ClientError::Timeout(_)) => return Other(format!("no answer within {ANSWER:?}")),
            Err(e) => return Other(e.to_string()),
        }
    }
}

/// Whether the connection still answers a ping; `Err` is how it ended.
async fn alive(c: &mut Client) -> Result<(), Outcome> {
    let probe = Ref::Str("probe".into());
    let frame = ClientFrame::new(ClientRequest::Ping).with_ref(probe.clone());
    if let Err(e) = c.send_frame(&frame).await {
        return Err(Other(format!("cannot send a ping: {e}")));
    }
    match c.answer(&probe, ANSWER).await {
        Ok(ServerFrame::Pong(_)) => Ok(()),
        Ok(other) => Err(Other(format!("ping answered with {}", other.type_name()))),
        Err(ClientError::Closed { code, .. }) => Err(Close(code)),
        Err(e) => Err(Other(format!("ping unanswered: {e}"))),
    }
}

/// Error codes the server follows with a close (PROTOCOL.md section 2).
const CLOSING: [ErrorCode; 4] = [
    ErrorCode::Unauthenticated,
    ErrorCode::AuthFailed,
    ErrorCode::AuthTimeout,
    ErrorCode::SlowConsumer,
];

/// `first`, checked against what the connection did next: an error or an
/// acceptance must leave it open; an error followed by a close becomes
/// [`Outcome::ErrorThenClose`].
async fn settle(c: &mut Client, first: Outcome) -> Outcome {
    if let Error(code, _) = first {
        if CLOSING.contains(&code) {
            // Documented to close: wait for it rather than probe with a
            // ping, which may be answered before the close goes out.
            return match c.wait_closed(ANSWER).await {
                Ok(Some(close)) => ErrorThenClose(code, close),
                other => Other(format!("{first}, then {other:?}")),
            };
        }
    }
    if !matches!(first, Error(..) | Accepted) {
        return first;
    }
    match alive(c).await {
        Ok(()) => first,
        Err(Close(Some(code))) => match first {
            Error(e, _) => ErrorThenClose(e, code),
            _ => Other(format!("accepted, then closed with {code}")),
        },
        Err(ended) => Other(format!("{first}, then {ended}")),
    }
}

/// Sends `message` on `c` and tells its first answer, without probing the
/// connection afterwards.
async fn attack_raw(c: &mut Client, message: Message) -> Outcome {
    if let Err(e) = c.send_raw(message).await {
        return Other(format!("cannot send: {e}"));
    }
    answer(c).await
}

/// Sends `message` on `c` and tells what it got.
async fn attack(c: &mut Client, message: Message) -> Outcome {
    if let Err(e) = c.send_raw(message).await {
        return Other(format!("cannot send: {e}"));
    }
    let first = answer(c).await;
    settle(c, first).await
}

fn text(s: impl Into<String>) -> Message {
    Message::Text(s.into().into())
}

fn binary(bytes: Vec<u8>) -> Message {
    Message::Binary(bytes.into())
}

/// A JSON request with the hostile `ref`.
fn request(mut value: Value) -> Message {
    value["ref"] = json!(REF);
    text(value.to_string())
}

/// Sends a JSON request and returns the whole answering frame (pushes kept).
async fn ask(c: &mut Client, value: Value) -> Result<ServerFrame, ClientError> {
    c.send_raw(request(value)).await?;
    c.answer(&Ref::Int(REF), ANSWER).await
}

// ---------------------------------------------------------------------------
// MessagePack by hand: the bytes a real encoder would never write
// ---------------------------------------------------------------------------

mod mp {
    /// A str of any bytes (so invalid UTF-8 too).
    pub fn raw_str(bytes: &[u8]) -> Vec<u8> {
        let n = bytes.len();
        let mut out = match n {
            0..=31 => vec![0xa0 | n as u8],
            32..=255 => vec![0xd9, n as u8],
            256..=65_535 => {
                let mut v = vec![0xda];
                v.extend_from_slice(&(n as u16).to_be_bytes());
                v
            }
            _ => {
                let mut v = vec![0xdb];
                v.extend_from_slice(&(n as u32).to_be_bytes());
                v
            }
        };
        out.extend_from_slice(bytes);
        out
    }

    pub fn str(s: &str) -> Vec<u8> {
        raw_str(s.as_bytes())
    }

    /// A positive fixint.
    pub fn fix(n: u8) -> Vec<u8> {
        assert!(n < 128);
        vec![n]
    }

    pub fn uint(n: u64) -> Vec<u8> {
        let mut v = vec![0xcf];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    pub fn int(n: i64) -> Vec<u8> {
        let mut v = vec![0xd3];
        v.extend_from_slice(&n.to_be_bytes());
        v
    }

    pub fn f64(x: f64) -> Vec<u8> {
        let mut v = vec![0xcb];
        v.extend_from_slice(&x.to_be_bytes());
        v
    }

    pub fn f32(x: f32) -> Vec<u8> {
        let mut v = vec![0xca];
        v.extend_from_slice(&x.to_be_bytes());
        v
    }

    /// A map of raw keys and values, in order (duplicates allowed).
    pub fn map_raw(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let n = entries.len();
        let mut out = if n < 16 {
            vec![0x80 | n as u8]
        } else {
            let mut v = vec![0xde];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        };
        for (k, v) in entries {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }

    /// A map with string keys, in order (duplicates allowed).
    pub fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let raw: Vec<(Vec<u8>, Vec<u8>)> =
            entries.iter().map(|(k, v)| (str(k), v.clone())).collect();
        map_raw(&raw)
    }

    /// `{ref: 7, type: ty, ..fields}`.
    pub fn frame(ty: &str, fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut entries = vec![("ref", fix(super::REF as u8)), ("type", str(ty))];
        entries.extend(fields.iter().cloned());
        map(&entries)
    }
}

// ---------------------------------------------------------------------------
// A WebSocket client written by hand
// ---------------------------------------------------------------------------

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const OP_CONTINUE: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// One client frame: `first` is FIN, RSV and opcode; masked as clients must
/// (unless `masked` is false).
fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked frame header announcing `len` payload bytes, without them.
fn ws_header_only(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw WebSocket connection: for what tungstenite will not send (unmasked
/// frames, reserved opcodes, invalid UTF-8, lone fragments).
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades; panics unless the server answers 101.
    async fn upgrade(addr: SocketAddr) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
        tcp.write_all(upgrade_request(addr, "").as_bytes())
            .await
            .expect("upgrade request");
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + T;
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill(deadline).await, "no upgrade answer");
        };
        assert!(
            raw.buf.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {}",
            String::from_utf8_lossy(&raw.buf[..head_end])
        );
        raw.buf.drain(..head_end);
        raw
    }

    /// Upgrades and authenticates with `token`.
    async fn authenticated(addr: SocketAddr, token: &str) -> RawWs {
        let mut raw = Self::upgrade(addr).await;
        let auth = ClientFrame::new(ClientRequest::Authenticate(Authenticate::new(token)));
        let bytes = encode_client(&auth, Encoding::MessagePack);
        raw.send(&ws_frame(FIN | OP_BINARY, &bytes, true)).await;
        match raw
            .next_data(T)
            .await
            .map(|p| decode_server(&p, Encoding::MessagePack))
        {
            Some(Ok(ServerFrame::AuthenticationResponse(r))) if r.result.is_ok() => raw,
            other => panic!("raw authentication failed: {other:?}"),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; what it answered tells.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Reads more bytes; false at EOF, on an error or after the deadline.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next server frame: opcode and payload.
    async fn next_frame(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((opcode, len, start)) = parse_header(&self.buf) {
                if self.buf.len() >= start + len {
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// The payload of the next data frame.
    async fn next_data(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        loop {
            match self.next_frame(timeout).await? {
                (OP_TEXT | OP_BINARY, payload) => return Some(payload),
                (OP_CLOSE, _) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until the server's close frame: `Close(code)`, or
    /// `Close(None)` when the connection ended without one.
    async fn closed(&mut self, timeout: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some((OP_CLOSE, payload)) if payload.len() >= 2 => {
                    return Close(Some(u16::from_be_bytes([payload[0], payload[1]])))
                }
                Some((OP_CLOSE, _)) => return Close(None),
                Some(_) => continue,
                None if tokio::time::Instant::now() >= deadline => {
                    return Other(format!("still open after {timeout:?}"))
                }
                None => return Close(None),
            }
        }
    }

    /// The first answer to a request: a decoded data frame, or the close.
    async fn answer(&mut self) -> Outcome {
        loop {
            match self.next_frame(ANSWER).await {
                Some((OP_TEXT, p)) => return outcome_of(decode_server(&p, Encoding::Json)),
                Some((OP_BINARY, p)) => {
                    return outcome_of(decode_server(&p, Encoding::MessagePack))
                }
                Some((OP_CLOSE, p)) if p.len() >= 2 => {
                    return Close(Some(u16::from_be_bytes([p[0], p[1]])))
                }
                Some((OP_CLOSE, _)) | None => return Close(None),
                Some(_) => continue,
            }
        }
    }
}

fn outcome_of(frame: Result<ServerFrame, courier_protocol::codec::DecodeError>) -> Outcome {
    match frame {
        Ok(ServerFrame::Error(e)) => Error(e.code, e.reference),
        Ok(frame) if frame.reference().is_some() => Accepted,
        Ok(frame) => Other(format!("push {}", frame.type_name())),
        Err(e) => Other(format!("undecodable answer: {e}")),
    }
}

/// A server frame header at the start of `buf`: opcode, payload length and
/// where the payload starts.
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    Some((opcode, len, start))
}

// ---------------------------------------------------------------------------
// frames: malformed MessagePack and JSON on an authenticated connection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames() {
    let server = support::server::TestServer::start(Backend::Sqlite)
        .await
        .expect("server");
    let url = server.ws_url();
    let good = server
        .user("good", courier_actors::durable::store::Role::User)
        .await;
    let watcher = server
        .user("watcher", courier_actors::durable::store::Role::User)
        .await;
    let mallory = server
        .user("mallory", courier_actors::durable::store::Role::User)
        .await;
    let kind = courier_actors::durable::store::ChannelKind::Private;
    let good_ch = server.channel("ward", kind, &good, &[&watcher]).await;
    let own = server
        .channel("mallory's", kind, &mallory, &[])
        .await
        .to_string();
    let mut good = Good::start(&url, &good.token, &watcher.token, good_ch).await;
    let mut attacker = connect(&url, &mallory.token, Encoding::MessagePack).await;
    let mut table = Table::new("frames (SQLite)");

    // Every prefix of a well-formed send_message: the ref is echoed once
    // the cut falls after it (fixmap, "ref", 7: six bytes).
    let whole = mp::frame(
        "send_message",
        &[("channelId", mp::str(&own)), ("text", mp::str("hello"))],
    );
    let mut mismatch = None;
    for cut in 0..whole.len() {
        let expected = invalid(cut >= 6);
        let got = attack(&mut attacker, binary(whole[..cut].to_vec())).await;
        if got != expected && mismatch.is_none() {
            mismatch = Some(Other(format!("cut at byte {cut}: {got}")));
        }
    }
    let row = "truncated MessagePack: every prefix of a send_message";
    let shape = says("invalid_frame each, with the ref once it was readable");
    let got = mismatch.unwrap_or_else(|| shape.clone());
    table.row(row, whole.len(), &shape, &got);
    good.after(&mut table, row).await;

    // Written out: serde_json's map would put `ref` after `channelId`.
    let json_whole =
        format!(r#"{{"ref":{REF},"type":"send_message","channelId":"{own}","text":"hello"}}"#);
    let ref_end = format!(r#"{{"ref":{REF}"#).len();
    let mut mismatch = None;
    for cut in 0..json_whole.len() {
        let got = attack(&mut attacker, text(&json_whole[..cut])).await;
        if got != invalid(cut >= ref_end) && mismatch.is_none() {
            mismatch = Some(Other(format!("cut at byte {cut}: {got}")));
        }
    }
    let row = "truncated JSON: every prefix of a send_message";
    let got = mismatch.unwrap_or_else(|| shape.clone());
    table.row(row, json_whole.len(), &shape, &got);
    good.after(&mut table, row).await;

    let ping = |field: &str, value: Vec<u8>| binary(mp::frame("ping", &[(field, value)]));
    let send = |fields: &[(&str, Vec<u8>)]| {
        let mut all = vec![("channelId", mp::str(&own)), ("text", mp::str("hi"))];
        all.extend(fields.iter().cloned());
        binary(mp::frame("send_message", &all))
    };
    let json_send = |extra: &str| {
        text(format!(
            r#"{{"ref":{REF},"type":"send_message","channelId":"{own}","text":"hi"{extra}}}"#
        ))
    };
    let nested_arrays = {
        let mut v = vec![0x91; 2048];
        v.push(0xc0);
        v
    };
    let nested_maps = {
        let mut v = Vec::new();
        for _ in 0..2048 {
            v.extend_from_slice(&[0x81, 0xa1, b'a']);
        }
        v.push(0xc0);
        v
    };
    let json_nested = format!(
        r#"{{"ref":{REF},"type":"ping","x":{}{}}}"#,
        "[".repeat(2048),
        "]".repeat(2048)
    );
    let huge_ref_key = {
        let mut v = mp::map_raw(&[(mp::str("ref"), mp::fix(REF as u8))]);
        v[0] = 0x82;
        v.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
        v
    };
    let dup_type = mp::map(&[
        ("ref", mp::fix(REF as u8)),
        ("type", mp::str("ping")),
        ("type", mp::str("send_message")),
    ]);
    let nested_dup = mp::frame(
        "ping",
        &[("x", mp::map(&[("a", mp::fix(1)), ("a", mp::fix(2))]))],
    );
    let non_string_key = mp::map_raw(&[
        (mp::str("ref"), mp::fix(REF as u8)),
        (mp::str("type"), mp::str("ping")),
        (mp::fix(1), mp::fix(1)),
    ]);
    let long_ref = "r".repeat(300);
    let rows: Vec<(&str, Message, Outcome)> = vec![
        (
            "reserved byte 0xc1 as the whole frame",
            binary(vec![0xc1]),
            invalid(false),
        ),
        (
            "reserved byte 0xc1 as a field value",
            ping("x", vec![0xc1]),
            invalid(true),
        ),
        (
            "str32 length 2^32-1 without a body, as `text`",
            binary(mp::frame(
                "send_message",
                &[
                    ("channelId", mp::str(&own)),
                    ("text", vec![0xdb, 0xff, 0xff, 0xff, 0xff]),
                ],
            )),
            invalid(true),
        ),
        (
            "str32 length 2^32-1 without a body, as `type`",
            binary(mp::map(&[
                ("ref", mp::fix(REF as u8)),
                ("type", vec![0xdb, 0xff, 0xff, 0xff, 0xff]),
            ])),
            invalid(true),
        ),
        (
            "str32 length 2^32-1 without a body, as a map key",
            binary(huge_ref_key),
            invalid(true),
        ),
        (
            "bin32 length 2^32-1 without a body",
            ping("x", vec![0xc6, 0xff, 0xff, 0xff, 0xff]),
            invalid(true),
        ),
        (
            "array32 length 2^32-1 without a body",
            ping("x", vec![0xdd, 0xff, 0xff, 0xff, 0xff]),
            invalid(true),
        ),
        (
            "map32 length 2^32-1 without a body, as the frame",
            binary(vec![0xdf, 0xff, 0xff, 0xff, 0xff]),
            invalid(false),
        ),
        (
            "map32 length 2^32-1 as the frame, then a real ref",
            binary({
                let mut v = vec![0xdf, 0xff, 0xff, 0xff, 0xff];
                v.extend_from_slice(&mp::frame("ping", &[])[1..]);
                v
            }),
            invalid(true),
        ),
        (
            "2,048 nested arrays (MessagePack)",
            ping("x", nested_arrays),
            invalid(true),
        ),
        (
            "2,048 nested maps (MessagePack)",
            ping("x", nested_maps),
            invalid(true),
        ),
        (
            "2,048 nested arrays (JSON)",
            text(json_nested),
            invalid(true),
        ),
        (
            "ext type: fixext1",
            ping("x", vec![0xd4, 0x01, 0x00]),
            invalid(true),
        ),
        (
            "ext type: timestamp (fixext4, type -1)",
            ping("x", vec![0xd6, 0xff, 0, 0, 0, 0]),
            invalid(true),
        ),
        (
            "ext type: ext8 as `sinceSeq`",
            binary(mp::frame(
                "join_channel",
                &[
                    ("channelId", mp::str(&own)),
                    ("sinceSeq", vec![0xc7, 0x01, 0x05, 0x00]),
                ],
            )),
            invalid(true),
        ),
        (
            "ext type: ext32 of 2^32-1 bytes without a body",
            ping("x", vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x05]),
            invalid(true),
        ),
        (
            "NaN (f64) in an ignored field",
            ping("x", mp::f64(f64::NAN)),
            invalid(true),
        ),
        (
            "+infinity (f64) as `sinceSeq`",
            binary(mp::frame(
                "join_channel",
                &[
                    ("channelId", mp::str(&own)),
                    ("sinceSeq", mp::f64(f64::INFINITY)),
                ],
            )),
            invalid(true),
        ),
        (
            "-infinity (f32) in an ignored field",
            ping("x", mp::f32(f32::NEG_INFINITY)),
            invalid(true),
        ),
        (
            "NaN (f32) as `limit`",
            binary(mp::frame(
                "fetch_history",
                &[("channelId", mp::str(&own)), ("limit", mp::f32(f32::NAN))],
            )),
            invalid(true),
        ),
        (
            "JSON NaN literal",
            text(format!(r#"{{"ref":{REF},"type":"ping","x":NaN}}"#)),
            invalid(true),
        ),
        (
            "JSON 1e999 as `sinceSeq`",
            text(format!(
                r#"{{"ref":{REF},"type":"join_channel","channelId":"{own}","sinceSeq":1e999}}"#
            )),
            invalid(true),
        ),
        (
            "integer out of range: `seq` 2^64",
            text(format!(
                r#"{{"ref":{REF},"type":"read_receipt","channelId":"{own}","seq":18446744073709551616}}"#
            )),
            invalid(true),
        ),
        (
            "integer out of range: `sinceSeq` -1 (i64)",
            binary(mp::frame(
                "join_channel",
                &[("channelId", mp::str(&own)), ("sinceSeq", mp::int(-1))],
            )),
            invalid(true),
        ),
        (
            "integer out of range: `limit` 2^32",
            binary(mp::frame(
                "fetch_history",
                &[("channelId", mp::str(&own)), ("limit", mp::uint(1 << 32))],
            )),
            invalid(true),
        ),
        (
            "integer out of range: `ttlSeconds` -1",
            send(&[("ttlSeconds", mp::int(-1))]),
            invalid(true),
        ),
        (
            "integer out of range: `ref` 2^53",
            text(r#"{"ref":9007199254740992,"type":"ping"}"#),
            invalid(false),
        ),
        (
            "integer out of range: `ref` 2^64-1",
            binary(mp::map(&[
                ("ref", mp::uint(u64::MAX)),
                ("type", mp::str("ping")),
            ])),
            invalid(false),
        ),
        (
            "a float where an integer belongs: `sinceSeq` 1.5",
            text(format!(
                r#"{{"ref":{REF},"type":"join_channel","channelId":"{own}","sinceSeq":1.5}}"#
            )),
            invalid(true),
        ),
        (
            "wrong type: `channelId` a number",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","channelId":42,"text":"hi"}}"#
            )),
            invalid(true),
        ),
        (
            "wrong type: `channelId` not a UUID",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","channelId":"ward-7","text":"hi"}}"#
            )),
            invalid(true),
        ),
        (
            "wrong type: `channelId` as 16 raw bytes (bin8)",
            binary(mp::frame(
                "send_message",
                &[
                    ("channelId", {
                        let mut v = vec![0xc4, 16];
                        v.extend_from_slice(ChannelId::new().0.as_bytes());
                        v
                    }),
                    ("text", mp::str("hi")),
                ],
            )),
            invalid(true),
        ),
        (
            "wrong type: `text` an array",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","channelId":"{own}","text":["h","i"]}}"#
            )),
            invalid(true),
        ),
        (
            "wrong type: `containsPHI` a string",
            json_send(r#","containsPHI":"yes""#),
            invalid(true),
        ),
        (
            "wrong type: `type` a number",
            text(format!(r#"{{"ref":{REF},"type":5}}"#)),
            invalid(true),
        ),
        (
            "wrong type: `ref` a bool",
            text(r#"{"ref":true,"type":"ping"}"#),
            invalid(false),
        ),
        (
            "wrong type: `ref` a string of 300 bytes",
            text(format!(r#"{{"ref":"{long_ref}","type":"ping"}}"#)),
            invalid(false),
        ),
        (
            "wrong type: a map key that is not a string",
            binary(non_string_key),
            invalid(true),
        ),
        (
            "not a map: a MessagePack array",
            binary(vec![0x92, 0x01, 0x02]),
            invalid(false),
        ),
        ("not a map: JSON null", text("null"), invalid(false)),
        (
            "unknown keys, nested, beside a valid send_message",
            json_send(r#","zzz":{"deep":[1,{"x":null}]},"__proto__":{"admin":true}"#),
            Accepted,
        ),
        (
            "unknown type",
            text(format!(r#"{{"ref":{REF},"type":"grant_admin"}}"#)),
            invalid(true),
        ),
        (
            "duplicate key `type` (MessagePack)",
            binary(dup_type),
            invalid(true),
        ),
        (
            "duplicate key `text` (JSON)",
            json_send(r#","text":"again""#),
            invalid(true),
        ),
        (
            "duplicate key `text` spelled with an escape (JSON)",
            json_send(r#","\u0074ext":"again""#),
            invalid(true),
        ),
        (
            "duplicate key in a nested map",
            binary(nested_dup),
            invalid(true),
        ),
        (
            "missing required field: send_message without `text`",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","channelId":"{own}"}}"#
            )),
            invalid(true),
        ),
        (
            "missing required field: send_message without `channelId`",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","text":"hi"}}"#
            )),
            invalid(true),
        ),
        (
            "missing required field: edit_message without `messageId`",
            text(format!(
                r#"{{"ref":{REF},"type":"edit_message","text":"hi"}}"#
            )),
            invalid(true),
        ),
        (
            "missing required field: read_receipt without `seq` or `messageId`",
            text(format!(
                r#"{{"ref":{REF},"type":"read_receipt","channelId":"{own}"}}"#
            )),
            invalid(true),
        ),
        (
            "missing required field: no `type`",
            text(format!(r#"{{"ref":{REF}}}"#)),
            invalid(true),
        ),
        (
            "missing everything: an empty map",
            binary(vec![0x80]),
            invalid(false),
        ),
        (
            "invalid UTF-8 inside a MessagePack string",
            binary(mp::frame(
                "send_message",
                &[
                    ("channelId", mp::str(&own)),
                    ("text", mp::raw_str(&[0x68, 0xff, 0xfe])),
                ],
            )),
            invalid(true),
        ),
        (
            "trailing bytes after the frame's map",
            binary({
                let mut v = mp::frame("ping", &[]);
                v.push(0xc0);
                v
            }),
            invalid(true),
        ),
        (
            "`text` of 16,385 bytes (limit 16,384) in a frame under the frame limit",
            text(format!(
                r#"{{"ref":{REF},"type":"send_message","channelId":"{own}","text":"{}"}}"#,
                "y".repeat(16_385)
            )),
            err(ErrorCode::TooLarge),
        ),
        (
            "`clientMsgId` of 65 bytes (limit 64)",
            json_send(&format!(r#","clientMsgId":"{}""#, "c".repeat(65))),
            err(ErrorCode::TooLarge),
        ),
    ];
    for (row, message, expected) in rows {
        let got = attack(&mut attacker, message).await;
        table.row(row, 1, &expected, &got);
        good.after(&mut table, row).await;
    }

    good.verify(&mut table).await;
    let summary = good.summary();
    server.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// websocket_framing: what the WebSocket layer itself refuses
// ---------------------------------------------------------------------------

/// A message of `count` fragments of `size` bytes (`a`s), the last one not
/// final: the message never completes, so every byte sent is read.
fn fragments(opcode: u8, size: usize, count: usize) -> Vec<u8> {
    let chunk = vec![b'a'; size];
    let mut out = ws_frame(opcode, &chunk, true);
    for _ in 1..count {
        out.extend(ws_frame(OP_CONTINUE, &chunk, true));
    }
    out
}

/// `payload` as a fragmented message: pieces of at most `size` bytes.
fn split_message(opcode: u8, payload: &[u8], size: usize) -> Vec<u8> {
    let pieces: Vec<&[u8]> = payload.chunks(size).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let op = if i == 0 { opcode } else { OP_CONTINUE };
        let fin = if i + 1 == pieces.len() { FIN } else { 0 };
        out.extend(ws_frame(fin | op, piece, true));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing() {
    use courier_actors::durable::store::{ChannelKind, Role};
    let server = support::server::TestServer::start(Backend::Sqlite)
        .await
        .expect("server");
    let (url, addr) = (server.ws_url(), server.addr);
    let good = server.user("good", Role::User).await;
    let watcher = server.user("watcher", Role::User).await;
    let mallory = server.user("mallory", Role::User).await;
    let good_ch = server
        .channel("ward", ChannelKind::Private, &good, &[&watcher])
        .await;
    let own = server
        .channel("mallory's", ChannelKind::Private, &mallory, &[])
        .await;
    let mut good = Good::start(&url, &good.token, &watcher.token, good_ch).await;
    let mut table = Table::new("WebSocket framing (SQLite)");
    let limit = server.app.config.max_frame_bytes as u64;
    assert_eq!(limit, 65_536, "the rows below are written for the default");

    let send = {
        let mut frame = ClientFrame::new(ClientRequest::SendMessage(SendMessage::text(
            own,
            "sent in pieces",
        )));
        frame.reference = Some(Ref::Int(REF));
        encode_client(&frame, Encoding::MessagePack).to_vec()
    };
    let ping_json = format!(r#"{{"ref":{REF},"type":"ping","x":"é"}}"#).into_bytes();
    let e_acute = ping_json.iter().position(|&b| b == 0xc3).expect("é") + 1;
    let controls: Vec<(&str, Vec<u8>)> = vec![
        (
            "a send_message in 4 fragments, reassembled and acked",
            split_message(OP_BINARY, &send, send.len() / 4 + 1),
        ),
        ("a JSON text message split inside a 2-byte character", {
            let mut v = ws_frame(OP_TEXT, &ping_json[..e_acute], true);
            v.extend(ws_frame(FIN | OP_CONTINUE, &ping_json[e_acute..], true));
            v
        }),
    ];
    for (row, bytes) in controls {
        let mut raw = RawWs::authenticated(addr, &mallory.token).await;
        raw.send(&bytes).await;
        table.control(row, &Accepted, &raw.answer().await);
        good.after(&mut table, row).await;
    }

    let ping_frame = mp::frame("ping", &[]);
    let text_frame = |bytes: &[u8]| ws_frame(FIN | OP_TEXT, bytes, true);
    let rows: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame (0xff 0xfe)",
            text_frame(b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}"),
            close::INVALID_PAYLOAD,
        ),
        (
            "overlong UTF-8 in a text frame (0xc0 0xaf for '/')",
            text_frame(b"{\"type\":\"ping\",\"x\":\"\xc0\xaf\"}"),
            close::INVALID_PAYLOAD,
        ),
        (
            "a UTF-16 surrogate encoded as UTF-8 in a text frame (0xed 0xa0 0x80)",
            text_frame(b"{\"type\":\"ping\",\"x\":\"\xed\xa0\x80\"}"),
            close::INVALID_PAYLOAD,
        ),
        (
            "invalid UTF-8 across two text fragments (0xc3 | 0x28)",
            {
                let mut v = ws_frame(OP_TEXT, b"{\"x\":\"\xc3", true);
                v.extend(ws_frame(FIN | OP_CONTINUE, b"\x28\"}", true));
                v
            },
            close::INVALID_PAYLOAD,
        ),
        (
            "a frame header announcing 65,537 bytes (limit 65,536), no body",
            ws_header_only(FIN | OP_BINARY, limit + 1),
            close::TOO_LARGE,
        ),
        (
            "a frame header announcing 2^63-1 bytes, no body",
            ws_header_only(FIN | OP_BINARY, i64::MAX as u64),
            close::TOO_LARGE,
        ),
        (
            "a binary message in 5 fragments of 16 KiB (80 KiB in all)",
            fragments(OP_BINARY, 16 * 1024, 5),
            close::TOO_LARGE,
        ),
        (
            "a text message in 4,097 fragments of 16 bytes (65,552 bytes in all)",
            fragments(OP_TEXT, 16, 4097),
            close::TOO_LARGE,
        ),
        (
            "an unmasked client frame",
            ws_frame(FIN | OP_BINARY, &ping_frame, false),
            1002,
        ),
        (
            "reserved opcode 0x3",
            ws_frame(FIN | 0x3, &ping_frame, true),
            1002,
        ),
        (
            "RSV1 set without a negotiated extension",
            ws_frame(FIN | RSV1 | OP_BINARY, &ping_frame, true),
            1002,
        ),
        (
            "a continuation frame with no message started",
            ws_frame(FIN | OP_CONTINUE, &ping_frame, true),
            1002,
        ),
        (
            "a ping control frame of 126 bytes",
            ws_frame(FIN | OP_PING, &[0; 126], true),
            1002,
        ),
        (
            "a fragmented ping control frame",
            ws_frame(OP_PING, b"x", true),
            1002,
        ),
        (
            "a new data frame inside an unfinished fragmented message",
            {
                let mut v = ws_frame(OP_BINARY, &ping_frame[..2], true);
                v.extend(ws_frame(FIN | OP_BINARY, &ping_frame, true));
                v
            },
            1002,
        ),
    ];
    for (row, bytes, code) in rows {
        let mut raw = RawWs::authenticated(addr, &mallory.token).await;
        raw.send(&bytes).await;
        table.row(row, 1, &Close(Some(code)), &raw.closed(ANSWER).await);
        good.after(&mut table, row).await;
    }

    // Whole frames over the limit, sent by tungstenite (the server stops
    // reading at the header, so these also test that the close frame
    // reaches a client whose bytes were left unread).
    let big_send = json!({"type": "send_message", "channelId": own, "text": "z".repeat(70_000)});
    let whole: Vec<(&str, Message)> = vec![
        ("a binary frame of 70,000 bytes", binary(vec![0x80; 70_000])),
        ("a text frame of 70,000 bytes", text("a".repeat(70_000))),
        (
            "a send_message of 70,000 bytes (text far over 16 KiB)",
            text(big_send.to_string()),
        ),
    ];
    for (row, message) in whole {
        let mut c = connect(&url, &mallory.token, Encoding::MessagePack).await;
        let got = match c.send_raw(message).await {
            Ok(()) => match c.wait_closed(ANSWER).await {
                Ok(code) => Close(code),
                Err(e) => Other(e.to_string()),
            },
            Err(e) => Other(format!("cannot send: {e}")),
        };
        table.row(row, 1, &Close(Some(close::TOO_LARGE)), &got);
        good.after(&mut table, row).await;
    }

    good.verify(&mut table).await;
    let summary = good.summary();
    server.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// forged_tokens: the JWT forgery matrix over `authenticate`
// ---------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a token.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims")
}

fn sign(header: Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn hs(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    sign(Header::new(alg), &EncodingKey::from_secret(key), claims)
}

/// `token` with its header replaced by `header` (signature kept).
fn reheaded(token: &str, header: &str) -> String {
    let mut parts = token.splitn(2, '.');
    let _ = parts.next();
    format!("{}.{}", b64(header.as_bytes()), parts.next().unwrap_or(""))
}

/// Authenticates a fresh connection with `token`.
async fn try_token(url: &str, token: &str) -> Outcome {
    let mut c = match Client::builder(url).timeout(ANSWER).connect().await {
        Ok(c) => c,
        Err(e) => return Other(format!("cannot connect: {e}")),
    };
    let response = match c.authenticate(token).await {
        Ok(r) => r,
        Err(ClientError::Server(e)) => return settle(&mut c, Error(e.code, e.reference)).await,
        Err(ClientError::Closed { code, .. }) => return Close(code),
        Err(e) => return Other(e.to_string()),
    };
    match response.result {
        Ok(_) => Accepted,
        Err(body) => match c.wait_closed(ANSWER).await {
            Ok(Some(close::AUTH_FAILED)) => AuthRefused(body.code),
            Ok(code) => Other(format!("{} then close {code:?}", body.code.as_str())),
            Err(e) => Other(format!("{}, but not closed: {e}", body.code.as_str())),
        },
    }
}

/// A private channel of `owner` with `member` in it, through REST.
async fn rest_channel(api: &Rest, owner: &Session, member: &Session, name: &str) -> ChannelId {
    let id = api.channel(owner, name, "private").await;
    api.post(
        &format!("/api/channels/{id}/members"),
        &owner.token,
        json!({"userId": member.user_id}),
    )
    .await
    .expect(201);
    id.parse().expect("channel id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens() {
    let api = Rest::start(Backend::Sqlite).await.expect("server");
    let url = api.server.ws_url();
    let root = api.root().await;
    let good = api.user(&root, "goodnurse", "user").await;
    let peer = api.user(&root, "peer", "user").await;
    let mallory = api.user(&root, "mallory", "user").await;
    let ward = rest_channel(&api, &good, &peer, "ward").await;
    let mut good_client = Good::start(&url, &good.token, &peer.token, ward).await;
    let mut table = Table::new("forged tokens over WebSocket authenticate (SQLite)");

    let token = mallory.token.clone();
    let claims = claims_of(&token);
    let parts: Vec<&str> = token.split('.').collect();
    let (header, payload, signature) = (parts[0], parts[1], parts[2]);
    let now = jsonwebtoken::get_current_timestamp();
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = claims.clone();
        c.as_object_mut().expect("object").remove(key);
        c
    };
    let secret = SECRET.as_bytes();
    let good_user: UserId = good.user_id.parse().expect("id");
    let good_session = api
        .server
        .app
        .store
        .list_sessions(good_user)
        .await
        .expect("sessions")[0]
        .id;
    let logged_out = api.login("mallory", PASSWORD).await;
    api.call(
        Method::POST,
        "/api/auth/logout",
        Some(&logged_out.token),
        None,
    )
    .await
    .expect(204);
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    let rsa_key = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("RSA pem");
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("Ed25519 pem");
    let flipped = {
        let mut s = signature.to_owned();
        let first = if s.starts_with('A') { "B" } else { "A" };
        s.replace_range(..1, first);
        s
    };
    let tampered = |c: &Value| format!("{header}.{}.{signature}", b64(c.to_string().as_bytes()));
    let none = |alg: &str| b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
    let kid_header = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("../../../../dev/null".into());
        h.jku = Some("http://127.0.0.1:1/keys.json".into());
        h
    };

    table.control(
        "the genuine token",
        &Accepted,
        &try_token(&url, &token).await,
    );
    let refused = AuthRefused(ErrorCode::AuthFailed);
    let rows: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            format!("{}.{payload}.", none("none")),
        ),
        ("alg None", format!("{}.{payload}.", none("None"))),
        ("alg NONE", format!("{}.{payload}.", none("NONE"))),
        ("alg nOnE", format!("{}.{payload}.", none("nOnE"))),
        (
            "alg none, the real signature kept",
            format!("{}.{payload}.{signature}", none("none")),
        ),
        ("a header without alg", reheaded(&token, r#"{"typ":"JWT"}"#)),
        (
            "RS256 in the header over the HS256 signature (HS/RS confusion)",
            reheaded(&token, r#"{"alg":"RS256","typ":"JWT"}"#),
        ),
        (
            "RS256, signed with the attacker's own RSA key",
            sign(Header::new(Algorithm::RS256), &rsa_key, &claims),
        ),
        (
            "EdDSA, signed with the attacker's own Ed25519 key",
            sign(Header::new(Algorithm::EdDSA), &ed_key, &claims),
        ),
        (
            "HS256 with a wrong key",
            hs(
                Algorithm::HS256,
                b"another-secret-another-secret-0123456",
                &claims,
            ),
        ),
        (
            "HS256 with an empty key",
            hs(Algorithm::HS256, b"", &claims),
        ),
        (
            "HS256, kid pointing at /dev/null and a jku, signed with an empty key",
            sign(kid_header, &EncodingKey::from_secret(b""), &claims),
        ),
        (
            "HS384 with the right key",
            hs(Algorithm::HS384, secret, &claims),
        ),
        (
            "HS512 with the right key",
            hs(Algorithm::HS512, secret, &claims),
        ),
        (
            "expired an hour ago",
            hs(Algorithm::HS256, secret, &with("exp", json!(now - 3600))),
        ),
        (
            "expired 30 s ago (leeway 5 s)",
            hs(Algorithm::HS256, secret, &with("exp", json!(now - 30))),
        ),
        (
            "not yet valid: nbf an hour ahead",
            hs(Algorithm::HS256, secret, &with("nbf", json!(now + 3600))),
        ),
        (
            "wrong issuer",
            hs(Algorithm::HS256, secret, &with("iss", json!("evil"))),
        ),
        (
            "wrong audience",
            hs(Algorithm::HS256, secret, &with("aud", json!("evil"))),
        ),
        (
            "audience a list without ours",
            hs(
                Algorithm::HS256,
                secret,
                &with("aud", json!(["evil", "other"])),
            ),
        ),
        ("missing exp", hs(Algorithm::HS256, secret, &without("exp"))),
        ("missing iss", hs(Algorithm::HS256, secret, &without("iss"))),
        ("missing aud", hs(Algorithm::HS256, secret, &without("aud"))),
        ("missing sub", hs(Algorithm::HS256, secret, &without("sub"))),
        ("missing sid", hs(Algorithm::HS256, secret, &without("sid"))),
        (
            "sub not a UUID",
            hs(Algorithm::HS256, secret, &with("sub", json!("root"))),
        ),
        (
            "sub of another user, with the attacker's session",
            hs(Algorithm::HS256, secret, &with("sub", json!(root.user_id))),
        ),
        (
            "sid of another user's session",
            hs(Algorithm::HS256, secret, &with("sid", json!(good_session))),
        ),
        (
            "sid of a session that does not exist",
            hs(
                Algorithm::HS256,
                secret,
                &with("sid", json!(uuid::Uuid::new_v4())),
            ),
        ),
        (
            "tampered payload: sub of the super admin, signature kept",
            tampered(&with("sub", json!(root.user_id))),
        ),
        (
            "tampered payload: exp a year later, signature kept",
            tampered(&with("exp", json!(now + 365 * 86_400))),
        ),
        ("signature stripped", format!("{header}.{payload}.")),
        (
            "signature with its first character changed",
            format!("{header}.{payload}.{flipped}"),
        ),
        (
            "the token of a logged-out session",
            logged_out.token.clone(),
        ),
        (
            "the refresh token as an access token",
            mallory.refresh.clone(),
        ),
        ("garbage: abc.def.ghi", "abc.def.ghi".to_owned()),
        ("an empty string", String::new()),
        ("only dots", "..".to_owned()),
        ("not base64: @@@.@@@.@@@", "@@@.@@@.@@@".to_owned()),
        (
            "a header that is a JSON array",
            format!("{}.{payload}.{signature}", b64(b"[]")),
        ),
        (
            "a payload that is not JSON",
            format!("{header}.{}.{signature}", b64(b"hello")),
        ),
        ("four parts", format!("{token}.{signature}")),
        (
            "NUL bytes inside the token",
            format!("{}\0{}", &token[..10], &token[10..]),
        ),
        (
            "the token behind a Bearer prefix",
            format!("Bearer {token}"),
        ),
        ("60,000 bytes of token", "x".repeat(60_000)),
    ];
    for (row, forged) in &rows {
        let got = try_token(&url, forged).await;
        table.row(row, 1, &refused, &got);
        good_client.after(&mut table, row).await;
    }

    // Not a token at all: the frame is invalid, the socket stays open
    // (until the authentication deadline). Before authentication only
    // `authenticate` is answered, so the probe that it is still open is a
    // valid one, accepted.
    for (row, frame) in [
        (
            "`token` a number",
            json!({"type": "authenticate", "token": 42}),
        ),
        ("`token` missing", json!({"type": "authenticate"})),
    ] {
        let mut c = Client::connect(&url).await.expect("connect");
        let first = attack_raw(&mut c, request(frame)).await;
        let then = c
            .authenticate(&mallory.token)
            .await
            .map(|r| r.result.is_ok());
        let got = match (&first, then) {
            (Error(..), Ok(true)) => first,
            (_, then) => Other(format!("{first}, then authenticate: {then:?}")),
        };
        table.row(row, 1, &invalid(true), &got);
        good_client.after(&mut table, row).await;
    }
    // An open socket re-authenticated as someone else (renewal is for the
    // same user only).
    let row = "re-authenticating an open socket with another user's valid token";
    let mut c = connect(&url, &mallory.token, Encoding::MessagePack).await;
    let got = match c.authenticate(&good.token).await {
        Ok(r) => match (r.result, c.wait_closed(ANSWER).await) {
            (Err(body), Ok(Some(close::AUTH_FAILED))) => AuthRefused(body.code),
            (result, closed) => Other(format!("{result:?}, {closed:?}")),
        },
        Err(e) => Other(e.to_string()),
    };
    table.row(row, 1, &refused, &got);
    good_client.after(&mut table, row).await;

    good_client.verify(&mut table).await;
    let summary = good_client.summary();
    api.stop().await;
    table.finish(&summary);
}

/// On a server that signs with RS256, an HS256 token keyed with its public
/// key (which anyone has) is the classic algorithm-confusion forgery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_on_an_rs256_server() {
    use courier_actors::durable::store::{ChannelKind, Role};
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let keys = tempfile::tempdir().expect("tmp");
    let (private, public) = (keys.path().join("jwt.key"), keys.path().join("jwt.pub"));
    std::fs::write(&private, pair.serialize_pem()).expect("write");
    std::fs::write(&public, pair.public_key_pem()).expect("write");
    let server = support::server::TestServer::start_with(Backend::Sqlite, |c| {
        c.jwt_algorithm = "RS256".into();
        c.jwt_private_key_file = Some(private.clone());
        c.jwt_public_key_file = Some(public.clone());
    })
    .await
    .expect("server");
    let url = server.ws_url();
    let good = server.user("good", Role::User).await;
    let watcher = server.user("watcher", Role::User).await;
    let mallory = server.user("mallory", Role::User).await;
    let ward = server
        .channel("ward", ChannelKind::Private, &good, &[&watcher])
        .await;
    let mut good = Good::start(&url, &good.token, &watcher.token, ward).await;
    let mut table = Table::new("forged tokens on an RS256 server (SQLite)");

    let claims = claims_of(&mallory.token);
    let payload = mallory.token.split('.').nth(1).expect("payload");
    table.control(
        "the genuine RS256 token",
        &Accepted,
        &try_token(&url, &mallory.token).await,
    );
    let other_key = EncodingKey::from_rsa_pem(other.serialize_pem().as_bytes()).expect("pem");
    let rows: Vec<(&str, String)> = vec![
        (
            "HS256 keyed with the server's public key (PEM)",
            hs(Algorithm::HS256, pair.public_key_pem().as_bytes(), &claims),
        ),
        (
            "HS256 keyed with the server's public key (DER)",
            hs(
                Algorithm::HS256,
                &rcgen::PublicKeyData::subject_public_key_info(&pair),
                &claims,
            ),
        ),
        (
            "RS256 signed with another RSA key",
            sign(Header::new(Algorithm::RS256), &other_key, &claims),
        ),
        (
            "PS256 signed with another RSA key",
            sign(Header::new(Algorithm::PS256), &other_key, &claims),
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
        ),
    ];
    for (row, forged) in &rows {
        let got = try_token(&url, forged).await;
        table.row(row, 1, &AuthRefused(ErrorCode::AuthFailed), &got);
        good.after(&mut table, row).await;
    }
    good.verify(&mut table).await;
    let summary = good.summary();
    server.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// ownership_and_content: other users' ids, replays, numbers, strange strings
// ---------------------------------------------------------------------------

mod ownership_and_content {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::ownership_and_content(super::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::ownership_and_content(super::Backend::Postgres).await
    }
}

fn sent_of(frame: &ServerFrame) -> Option<&SendResult> {
    match frame {
        ServerFrame::Ack(Ack {
            result: AckResult::Sent(sent),
            ..
        }) => Some(sent),
        _ => None,
    }
}

/// A message's text as REST returns it, looked up by id in the newest 100.
async fn stored_text(api: &Rest, token: &str, channel: ChannelId, id: MessageId) -> Option<String> {
    let page = api
        .get(
            &format!("/api/channels/{channel}/messages?limit=100"),
            token,
        )
        .await;
    page.body["messages"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id.to_string().as_str()))
        .and_then(|m| m["text"].as_str())
        .map(str::to_owned)
}

/// Sends `text` as a message over WebSocket, and tells whether it came back
/// byte for byte from history.
async fn literal_text(
    api: &Rest,
    c: &mut Client,
    token: &str,
    channel: ChannelId,
    text: &str,
) -> Outcome {
    let frame = match ask(
        c,
        json!({"type": "send_message", "channelId": channel, "text": text}),
    )
    .await
    {
        Ok(frame) => frame,
        Err(e) => return Other(e.to_string()),
    };
    let Some(sent) = sent_of(&frame) else {
        return match frame {
            ServerFrame::Error(e) => settle(c, Error(e.code, e.reference)).await,
            other => Other(format!("answered {}", other.type_name())),
        };
    };
    match stored_text(api, token, channel, sent.message_id).await {
        Some(stored) if stored == text => says("acked; history returns it byte for byte"),
        Some(stored) => Other(format!(
            "stored as {} bytes: {:?}",
            stored.len(),
            stored.chars().take(40).collect::<String>()
        )),
        None => Other("acked but not in history".into()),
    }
}

/// A REST call as an outcome: status and error code.
async fn rest_outcome(
    api: &Rest,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Outcome {
    let reply = api.call(method, path, Some(token), body).await;
    Http(reply.status, reply.code().to_owned())
}

async fn ownership_and_content(backend: Backend) {
    let Some(api) = Rest::start(backend).await else {
        return;
    };
    let store = if backend == Backend::Sqlite {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let url = api.server.ws_url();
    let root = api.root().await;
    let good = api.user(&root, "goodnurse", "user").await;
    let peer = api.user(&root, "peer", "user").await;
    let mallory = api.user(&root, "mallory", "user").await;
    let ward = rest_channel(&api, &good, &peer, "good-ward").await;
    let lobby: ChannelId = api
        .channel(&root, "lobby", "public")
        .await
        .parse()
        .expect("id");
    let room: ChannelId = api
        .channel(&mallory, "mallory-room", "private")
        .await
        .parse()
        .expect("id");
    let mut good_client = Good::start(&url, &good.token, &peer.token, ward).await;
    let mut table = Table::new(format!("ownership and content ({store})"));
    good_client
        .round_trip()
        .await
        .expect("a first good message");
    let ward_msg = good_client.acked[0].0.message_id;

    // The good user's message in the shared lobby, with a clientMsgId, and
    // their direct channel with the peer.
    let mut good_lobby = connect(&url, &good.token, Encoding::Json).await;
    good_lobby.join(lobby, None).await.expect("join lobby");
    let mut shared = SendMessage::text(lobby, "good's lobby note");
    shared.client_msg_id = Some("shared-1".into());
    let original = match good_lobby.ack(ClientRequest::SendMessage(shared)).await {
        Ok(Ack {
            result: AckResult::Sent(s),
            ..
        }) => s,
        other => panic!("lobby send: {other:?}"),
    };
    let mut shared = SendMessage::text(lobby, "good's second lobby note");
    shared.client_msg_id = Some("shared-2".into());
    let second_original = match good_lobby.ack(ClientRequest::SendMessage(shared)).await {
        Ok(Ack {
            result: AckResult::Sent(s),
            ..
        }) => s,
        other => panic!("lobby send: {other:?}"),
    };
    let direct = match good_lobby
        .ack(ClientRequest::OpenDirect(OpenDirect {
            user_id: peer.user_id.parse().expect("id"),
        }))
        .await
    {
        Ok(Ack {
            result: AckResult::Channel(c),
            ..
        }) => c.id,
        other => panic!("open_direct: {other:?}"),
    };
    let mut private_cid = SendMessage::text(direct, "a direct note with an id");
    private_cid.client_msg_id = Some("direct-1".into());
    good_lobby
        .ack(ClientRequest::SendMessage(private_cid))
        .await
        .expect("direct send");

    let mut m = connect(&url, &mallory.token, Encoding::Json).await;
    m.join(lobby, None).await.expect("join lobby");
    m.join(room, None).await.expect("join room");
    let mut room_msg = None;
    for i in 0..3 {
        let sent = m
            .send_text(room, &format!("room message {i}"))
            .await
            .expect("room send");
        room_msg.get_or_insert(sent.message_id);
    }
    let room_msg = room_msg.expect("a room message");

    // ---- other users' channel and message ids, over WebSocket ----
    let forbidden = err(ErrorCode::Forbidden);
    let not_found = err(ErrorCode::NotFound);
    let nobody = uuid::Uuid::new_v4();
    let ws_rows: Vec<(&str, Value, Outcome)> = vec![
        (
            "join_channel: someone else's private channel",
            json!({"type": "join_channel", "channelId": ward}),
            forbidden.clone(),
        ),
        (
            "join_channel: someone else's direct channel",
            json!({"type": "join_channel", "channelId": direct}),
            forbidden.clone(),
        ),
        (
            "send_message: into someone else's private channel",
            json!({"type": "send_message", "channelId": ward, "text": "let me in"}),
            forbidden.clone(),
        ),
        (
            "send_message: into someone else's direct channel",
            json!({"type": "send_message", "channelId": direct, "text": "let me in"}),
            forbidden.clone(),
        ),
        (
            "fetch_history: someone else's private channel",
            json!({"type": "fetch_history", "channelId": ward}),
            forbidden.clone(),
        ),
        (
            "fetch_history: someone else's direct channel",
            json!({"type": "fetch_history", "channelId": direct}),
            forbidden.clone(),
        ),
        (
            "read_receipt: someone else's private channel",
            json!({"type": "read_receipt", "channelId": ward, "seq": 1}),
            forbidden.clone(),
        ),
        (
            "typing_indicator: someone else's private channel",
            json!({"type": "typing_indicator", "channelId": ward}),
            forbidden.clone(),
        ),
        (
            "edit_message: someone else's message in their private channel",
            json!({"type": "edit_message", "messageId": ward_msg, "text": "pwned"}),
            forbidden.clone(),
        ),
        (
            "delete_message: someone else's message in their private channel",
            json!({"type": "delete_message", "messageId": ward_msg}),
            forbidden.clone(),
        ),
        (
            "add_reaction: someone else's message in their private channel",
            json!({"type": "add_reaction", "messageId": ward_msg, "reaction": "👎"}),
            forbidden.clone(),
        ),
        (
            "remove_reaction: someone else's message in their private channel",
            json!({"type": "remove_reaction", "messageId": ward_msg, "reaction": "👍"}),
            forbidden.clone(),
        ),
        (
            "edit_message: someone else's message in a shared public channel",
            json!({"type": "edit_message", "messageId": original.message_id, "text": "pwned"}),
            forbidden.clone(),
        ),
        (
            "delete_message: someone else's message in a shared public channel",
            json!({"type": "delete_message", "messageId": original.message_id}),
            forbidden.clone(),
        ),
        (
            "read_receipt: own channel, a messageId from someone else's channel",
            json!({"type": "read_receipt", "channelId": room, "messageId": ward_msg}),
            not_found.clone(),
        ),
        (
            "edit_message: a message id that does not exist",
            json!({"type": "edit_message", "messageId": nobody, "text": "x"}),
            not_found.clone(),
        ),
        (
            "join_channel: a channel id that does not exist",
            json!({"type": "join_channel", "channelId": nobody}),
            not_found.clone(),
        ),
        (
            "open_direct: a user id that does not exist",
            json!({"type": "open_direct", "userId": nobody}),
            not_found.clone(),
        ),
        (
            "leave_channel: someone else's channel, never joined (a no-op)",
            json!({"type": "leave_channel", "channelId": ward}),
            Accepted,
        ),
    ];
    for (row, frame, expected) in ws_rows {
        let got = attack(&mut m, request(frame)).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }

    // ---- other users' ids over REST ----
    let (g, p, mal) = (&good.user_id, &peer.user_id, &mallory.user_id);
    let rest_rows: Vec<(&str, Method, String, Option<Value>, Outcome)> = vec![
        (
            "GET someone else's private channel",
            Method::GET,
            format!("/api/channels/{ward}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET someone else's private channel's messages",
            Method::GET,
            format!("/api/channels/{ward}/messages"),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET someone else's direct channel's messages",
            Method::GET,
            format!("/api/channels/{direct}/messages"),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET someone else's private channel's members",
            Method::GET,
            format!("/api/channels/{ward}/members"),
            None,
            http(403, "forbidden"),
        ),
        (
            "PUT a new name on someone else's private channel",
            Method::PUT,
            format!("/api/channels/{ward}"),
            Some(json!({"name": "pwned"})),
            http(403, "forbidden"),
        ),
        (
            "DELETE someone else's private channel",
            Method::DELETE,
            format!("/api/channels/{ward}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "POST yourself into someone else's private channel",
            Method::POST,
            format!("/api/channels/{ward}/members"),
            Some(json!({"userId": mal, "role": "owner"})),
            http(403, "forbidden"),
        ),
        (
            "PUT a new role on a member of someone else's channel",
            Method::PUT,
            format!("/api/channels/{ward}/members/{g}"),
            Some(json!({"role": "member"})),
            http(403, "forbidden"),
        ),
        (
            "DELETE a member of someone else's channel",
            Method::DELETE,
            format!("/api/channels/{ward}/members/{p}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "POST a message into someone else's private channel",
            Method::POST,
            "/api/messages".into(),
            Some(json!({"channelId": ward, "text": "let me in"})),
            http(403, "forbidden"),
        ),
        (
            "PUT a new name on a public channel you only belong to",
            Method::PUT,
            format!("/api/channels/{lobby}"),
            Some(json!({"name": "pwned"})),
            http(403, "forbidden"),
        ),
        (
            "DELETE a public channel you only belong to",
            Method::DELETE,
            format!("/api/channels/{lobby}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET another user",
            Method::GET,
            format!("/api/users/{g}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "PUT a new role on another user",
            Method::PUT,
            format!("/api/users/{g}"),
            Some(json!({"role": "user"})),
            http(403, "forbidden"),
        ),
        (
            "DELETE another user",
            Method::DELETE,
            format!("/api/users/{g}"),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET another user's sessions",
            Method::GET,
            format!("/api/users/{g}/sessions"),
            None,
            http(403, "forbidden"),
        ),
        (
            "POST terminate another user's sessions",
            Method::POST,
            format!("/api/users/{g}/terminate-sessions"),
            None,
            http(403, "forbidden"),
        ),
        (
            "PUT super_admin on yourself",
            Method::PUT,
            format!("/api/users/{mal}"),
            Some(json!({"role": "super_admin"})),
            http(403, "forbidden"),
        ),
        (
            "GET the audit log",
            Method::GET,
            "/api/audit".into(),
            None,
            http(403, "forbidden"),
        ),
        (
            "GET a channel id that does not exist",
            Method::GET,
            format!("/api/channels/{nobody}"),
            None,
            http(404, "not_found"),
        ),
        (
            "GET a channel id that is not a UUID",
            Method::GET,
            "/api/channels/1%20OR%201=1".into(),
            None,
            http(400, "invalid_frame"),
        ),
    ];
    for (row, method, path, body, expected) in rest_rows {
        let got = rest_outcome(&api, method, &path, &mallory.token, body).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }
    // Nothing of the good user's changed.
    let ward_now = api
        .get(&format!("/api/channels/{ward}"), &good.token)
        .await
        .expect(200);
    let members = api
        .get(&format!("/api/channels/{ward}/members"), &good.token)
        .await
        .expect(200);
    if ward_now.body["channel"]["name"] != "good-ward"
        || members.body["members"].as_array().map(Vec::len) != Some(2)
    {
        table.fail(format!(
            "the good user's channel changed: {} {}",
            ward_now.body, members.body
        ));
    }

    // ---- replayed clientMsgIds ----
    let row = "clientMsgId replayed from another session of the same user";
    let second = api.login("goodnurse", PASSWORD).await;
    let mut other_session = connect(&url, &second.token, Encoding::MessagePack).await;
    let replay = json!({
        "type": "send_message", "channelId": lobby, "text": "a different text",
        "clientMsgId": "shared-1",
    });
    let got = match ask(&mut other_session, replay)
        .await
        .as_ref()
        .ok()
        .and_then(sent_of)
    {
        Some(s) if s.duplicate && s.message_id == original.message_id && s.seq == original.seq => {
            says("duplicate: the original messageId and seq (same sender)")
        }
        other => Other(format!("{other:?}")),
    };
    table.row(
        row,
        1,
        &says("duplicate: the original messageId and seq (same sender)"),
        &got,
    );
    good_client.after(&mut table, row).await;

    let own_copy = says("a new message of the replayer's own; the original untouched");
    let row = "another user's clientMsgId replayed in the same channel (WebSocket)";
    let theirs = json!({
        "type": "send_message", "channelId": lobby, "text": "mallory's copy",
        "clientMsgId": "shared-1",
    });
    let got = match ask(&mut m, theirs).await.as_ref().ok().and_then(sent_of) {
        Some(s) if !s.duplicate && s.message_id != original.message_id => own_copy.clone(),
        other => Other(format!("{other:?}")),
    };
    table.row(row, 1, &own_copy, &got);
    good_client.after(&mut table, row).await;

    let row = "another user's clientMsgId replayed in the same channel (REST)";
    let reply = api
        .post(
            "/api/messages",
            &mallory.token,
            json!({"channelId": lobby, "text": "mallory's REST copy", "clientMsgId": "shared-2"}),
        )
        .await;
    let got = if reply.status == 201
        && reply.body["id"].as_str() != Some(second_original.message_id.to_string().as_str())
        && reply.body["text"] == "mallory's REST copy"
        && reply.body["senderId"].as_str() == Some(mal.as_str())
    {
        own_copy.clone()
    } else {
        Other(format!("HTTP {} {}", reply.status, reply.body))
    };
    table.row(row, 1, &own_copy, &got);
    good_client.after(&mut table, row).await;

    let row = "another user's clientMsgId from a channel they cannot see, replayed in their own";
    let copycat = json!({
        "type": "send_message", "channelId": room, "text": "copycat", "clientMsgId": "direct-1",
    });
    let got = match ask(&mut m, copycat).await.as_ref().ok().and_then(sent_of) {
        Some(s) if !s.duplicate => own_copy.clone(),
        other => Other(format!("{other:?}")),
    };
    table.row(row, 1, &own_copy, &got);
    good_client.after(&mut table, row).await;

    let kept = says("duplicate of the original; its text unchanged in history");
    for (cid, first, text) in [
        ("shared-1", &original, "good's lobby note"),
        ("shared-2", &second_original, "good's second lobby note"),
    ] {
        let row = format!("the original sender's resend of {cid} after the replays");
        let resend =
            json!({"type": "send_message", "channelId": lobby, "text": text, "clientMsgId": cid});
        let got = match ask(&mut good_lobby, resend)
            .await
            .as_ref()
            .ok()
            .and_then(sent_of)
        {
            Some(s) if s.duplicate && s.message_id == first.message_id => {
                match stored_text(&api, &good.token, lobby, first.message_id).await {
                    Some(now) if now == text => kept.clone(),
                    other => Other(format!("the original now reads {other:?}")),
                }
            }
            other => Other(format!("{other:?}")),
        };
        table.control(&row, &kept, &got);
        good_client.after(&mut table, &row).await;
    }

    // ---- negative and huge numbers ----
    let last = |view: &ServerFrame| match view {
        ServerFrame::Ack(Ack {
            result: AckResult::Channel(c),
            ..
        }) => Some((c.last_seq, c.last_read_seq, c.unread)),
        _ => None,
    };
    let history_len = |frame: &ServerFrame| match frame {
        ServerFrame::History(h) => Some(h.messages.len()),
        _ => None,
    };
    // Written as text: 2^64 does not fit a serde_json number.
    let raw = |fields: &str| text(format!(r#"{{"ref":{REF},{fields}}}"#));
    let number_rows: Vec<(&str, Message)> = vec![
        (
            "fetch_history limit -1",
            raw(&format!(
                r#""type":"fetch_history","channelId":"{room}","limit":-1"#
            )),
        ),
        (
            "fetch_history limit 2^32",
            raw(&format!(
                r#""type":"fetch_history","channelId":"{room}","limit":4294967296"#
            )),
        ),
        (
            "fetch_history limit 1e3 (a float)",
            raw(&format!(
                r#""type":"fetch_history","channelId":"{room}","limit":1e3"#
            )),
        ),
        (
            "fetch_history beforeSeq -1",
            raw(&format!(
                r#""type":"fetch_history","channelId":"{room}","beforeSeq":-1"#
            )),
        ),
        (
            "fetch_history beforeSeq 2^64",
            raw(&format!(
                r#""type":"fetch_history","channelId":"{room}","beforeSeq":18446744073709551616"#
            )),
        ),
        (
            "join_channel sinceSeq -1",
            raw(&format!(
                r#""type":"join_channel","channelId":"{room}","sinceSeq":-1"#
            )),
        ),
        (
            "join_channel sinceSeq 10^30",
            raw(&format!(
                r#""type":"join_channel","channelId":"{room}","sinceSeq":1000000000000000000000000000000"#
            )),
        ),
        (
            "read_receipt seq -1",
            raw(&format!(
                r#""type":"read_receipt","channelId":"{room}","seq":-1"#
            )),
        ),
        (
            "read_receipt seq 2^64",
            raw(&format!(
                r#""type":"read_receipt","channelId":"{room}","seq":18446744073709551616"#
            )),
        ),
        (
            "send_message ttlSeconds -1",
            raw(&format!(
                r#""type":"send_message","channelId":"{room}","text":"x","ttlSeconds":-1"#
            )),
        ),
        (
            "send_message ttlSeconds 2^32",
            raw(&format!(
                r#""type":"send_message","channelId":"{room}","text":"x","ttlSeconds":4294967296"#
            )),
        ),
    ];
    for (row, frame) in number_rows {
        let expected = invalid(true);
        let got = attack(&mut m, frame).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }
    let room_len = 4; // three messages and the copycat
    let clamped: Vec<(&str, Value, usize)> = vec![
        (
            "fetch_history limit 0 (clamped to 1)",
            json!({"type": "fetch_history", "channelId": room, "limit": 0}),
            1,
        ),
        (
            "fetch_history limit 2^32-1 (clamped to 100)",
            json!({"type": "fetch_history", "channelId": room, "limit": u32::MAX}),
            room_len,
        ),
        (
            "fetch_history beforeSeq 2^64-1 (the newest page)",
            json!({"type": "fetch_history", "channelId": room, "beforeSeq": u64::MAX}),
            room_len,
        ),
        (
            "fetch_history beforeSeq 0 (nothing before seq 1)",
            json!({"type": "fetch_history", "channelId": room, "beforeSeq": 0}),
            0,
        ),
    ];
    for (row, frame, n) in clamped {
        let expected = says(format!("history of {n} messages"));
        let got = match ask(&mut m, frame).await.as_ref().ok().and_then(history_len) {
            Some(len) => says(format!("history of {len} messages")),
            None => Other("no history".into()),
        };
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }
    let row = "read_receipt seq 2^64-1 (clamped to lastSeq)";
    let receipt = ask(
        &mut m,
        json!({"type": "read_receipt", "channelId": room, "seq": u64::MAX}),
    )
    .await;
    let view = ask(&mut m, json!({"type": "join_channel", "channelId": room})).await;
    let expected = says("ack; then lastReadSeq = lastSeq and unread 0");
    let got = match (&receipt, view.as_ref().ok().and_then(last)) {
        (Ok(ServerFrame::Ack(_)), Some((last_seq, read, 0))) if read == last_seq => {
            expected.clone()
        }
        (receipt, view) => Other(format!("{receipt:?} then {view:?}")),
    };
    table.row(row, 1, &expected, &got);
    good_client.after(&mut table, row).await;
    let row = "join_channel sinceSeq 2^64-1 (beyond lastSeq)";
    let expected = says("ack; nothing replayed");
    let got = match ask(
        &mut m,
        json!({"type": "join_channel", "channelId": room, "sinceSeq": u64::MAX}),
    )
    .await
    {
        Ok(ServerFrame::Ack(_)) => {
            match m
                .next_push_matching(
                    Duration::from_millis(300),
                    |f| matches!(f, ServerFrame::NewMessage(p) if p.data.channel_id == room),
                )
                .await
            {
                Err(ClientError::Timeout(_)) => expected.clone(),
                other => Other(format!("replayed {other:?}")),
            }
        }
        other => Other(format!("{other:?}")),
    };
    table.row(row, 1, &expected, &got);
    good_client.after(&mut table, row).await;
    let row = "send_message ttlSeconds 2^32-1 (136 years)";
    let forever = json!({
        "type": "send_message", "channelId": room, "text": "forever", "ttlSeconds": u32::MAX,
    });
    let got = attack(&mut m, request(forever)).await;
    table.row(row, 1, &Accepted, &got);
    good_client.after(&mut table, row).await;

    let messages = format!("/api/channels/{room}/messages");
    let rest_numbers: Vec<(&str, String, Outcome)> = vec![
        (
            "REST ?limit=-1",
            format!("{messages}?limit=-1"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?limit=0",
            format!("{messages}?limit=0"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?limit=101",
            format!("{messages}?limit=101"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?limit=10^23",
            format!("{messages}?limit=99999999999999999999999"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?limit=1e2",
            format!("{messages}?limit=1e2"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?beforeSeq=-1",
            format!("{messages}?beforeSeq=-1"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?beforeSeq=0",
            format!("{messages}?beforeSeq=0"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?beforeSeq=2^64",
            format!("{messages}?beforeSeq=18446744073709551616"),
            http(400, "invalid_frame"),
        ),
        (
            "REST ?beforeSeq=2^64-1 (the newest page)",
            format!("{messages}?beforeSeq=18446744073709551615"),
            http(200, ""),
        ),
    ];
    for (row, path, expected) in rest_numbers {
        let got = rest_outcome(&api, Method::GET, &path, &mallory.token, None).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }

    // ---- strings: SQL-looking, NUL, bidi overrides, combining floods ----
    let literal = says("acked; history returns it byte for byte");
    let combining_ok = format!("e{}", "\u{301}".repeat(8_000));
    let combining_over = format!("e{}", "\u{301}".repeat(8_192));
    let zalgo: String = "zalgo"
        .chars()
        .cycle()
        .take(1_000)
        .flat_map(|c| {
            std::iter::once(c).chain("\u{300}\u{316}\u{35c}\u{489}\u{334}\u{336}\u{337}".chars())
        })
        .collect();
    let text_rows: Vec<(&str, String)> = vec![
        (
            "SQL in text: '); DROP TABLE messages; --",
            "'); DROP TABLE messages; --".into(),
        ),
        ("SQL in text: 1' OR '1'='1", "1' OR '1'='1".into()),
        (
            "SQL in text: a LIKE wildcard and a backslash",
            r"100% \_ \\ %' ESCAPE '\".into(),
        ),
        ("NUL bytes in text", "before\0after\0".into()),
        ("text that is only NUL", "\0".into()),
        (
            "right-to-left override in text",
            "\u{202E}gnp.exe\u{202C} is a harmless png".into(),
        ),
        (
            "1,000 unclosed bidi isolates in text",
            "\u{2067}".repeat(1_000),
        ),
        (
            "combining-character flood in text: 8,000 marks on one letter (16,001 bytes)",
            combining_ok,
        ),
        (
            "zalgo text: 7 combining marks on each of 1,000 letters",
            zalgo,
        ),
    ];
    for (row, t) in text_rows {
        let got = literal_text(&api, &mut m, &mallory.token, room, &t).await;
        table.row(row, 1, &literal, &got);
        good_client.after(&mut table, row).await;
    }
    let row = "a lone surrogate escape (\\ud800) in JSON text";
    let lone = raw(&format!(
        r#""type":"send_message","channelId":"{room}","text":"\ud800""#
    ));
    let got = attack(&mut m, lone).await;
    table.row(row, 1, &invalid(true), &got);
    good_client.after(&mut table, row).await;
    let row = "combining-character flood in text: 8,192 marks on one letter (16,385 bytes)";
    let got = attack(
        &mut m,
        request(json!({"type": "send_message", "channelId": room, "text": combining_over})),
    )
    .await;
    table.row(row, 1, &err(ErrorCode::TooLarge), &got);
    good_client.after(&mut table, row).await;

    let row = "NUL bytes in text, in MessagePack";
    let mut mp_client = connect(&url, &mallory.token, Encoding::MessagePack).await;
    let got = match mp_client.send_text(room, "mp\0nul").await {
        Ok(sent) => match stored_text(&api, &mallory.token, room, sent.message_id)
            .await
            .as_deref()
        {
            Some("mp\0nul") => literal.clone(),
            other => Other(format!("stored as {other:?}")),
        },
        Err(e) => Other(e.to_string()),
    };
    table.row(row, 1, &literal, &got);
    good_client.after(&mut table, row).await;

    let field_rows: Vec<(&str, Value, Outcome)> = vec![
        (
            "SQL in clientMsgId",
            json!({"type": "send_message", "channelId": room, "text": "x", "clientMsgId": "' OR 1=1; --"}),
            Accepted,
        ),
        (
            "NUL in clientMsgId",
            json!({"type": "send_message", "channelId": room, "text": "x", "clientMsgId": "id\u{0}1"}),
            invalid(true),
        ),
        (
            "SQL in a reaction",
            json!({"type": "add_reaction", "messageId": room_msg, "reaction": "'); DROP TABLE reactions; --"}),
            Accepted,
        ),
        (
            "right-to-left override in a reaction",
            json!({"type": "add_reaction", "messageId": room_msg, "reaction": "\u{202E}👍"}),
            Accepted,
        ),
        (
            "combining flood in a reaction (84 bytes, limit 64)",
            json!({"type": "add_reaction", "messageId": room_msg, "reaction": format!("👍{}", "\u{301}".repeat(40))}),
            invalid(true),
        ),
        (
            "a NUL inside an unknown key",
            json!({"type": "ping", "a\u{0}b": 1}),
            Accepted,
        ),
    ];
    for (row, frame, expected) in field_rows {
        let got = attack(&mut m, request(frame)).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }

    // Names, over REST.
    let mib = "n".repeat(1 << 20);
    let combining_name = format!("a{}", "\u{301}".repeat(1_000));
    let name_rows: Vec<(&str, Method, String, Value, Outcome)> = vec![
        (
            "a channel name of 1 MiB",
            Method::POST,
            "/api/channels".into(),
            json!({"name": mib, "kind": "private"}),
            http(413, "too_large"),
        ),
        (
            "a rename to 1 MiB",
            Method::PUT,
            format!("/api/channels/{room}"),
            json!({"name": mib}),
            http(413, "too_large"),
        ),
        (
            "a channel name of 101 characters",
            Method::POST,
            "/api/channels".into(),
            json!({"name": "n".repeat(101), "kind": "private"}),
            http(400, "invalid_frame"),
        ),
        (
            "NUL in a channel name",
            Method::POST,
            "/api/channels".into(),
            json!({"name": "ward\u{0}7", "kind": "private"}),
            http(400, "invalid_frame"),
        ),
        (
            "NUL in a channel description",
            Method::POST,
            "/api/channels".into(),
            json!({"name": "described", "description": "line\u{0}two", "kind": "private"}),
            http(400, "invalid_frame"),
        ),
        (
            "combining flood in a channel name (1,001 characters)",
            Method::POST,
            "/api/channels".into(),
            json!({"name": combining_name, "kind": "private"}),
            http(400, "invalid_frame"),
        ),
        (
            "a username with a right-to-left override, at registration",
            Method::POST,
            "/api/auth/register".into(),
            json!({"username": "\u{202E}toor", "password": PASSWORD}),
            http(400, "invalid_frame"),
        ),
        (
            "SQL as the username at login",
            Method::POST,
            "/api/auth/login".into(),
            json!({"username": "' OR '1'='1' --", "password": "x"}),
            http(401, "auth_failed"),
        ),
        (
            "NUL in the username at login",
            Method::POST,
            "/api/auth/login".into(),
            json!({"username": "root\u{0}", "password": PASSWORD}),
            http(401, "auth_failed"),
        ),
    ];
    for (row, method, path, body, expected) in name_rows {
        let got = rest_outcome(&api, method, &path, &mallory.token, Some(body)).await;
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }
    let stored_names: Vec<(&str, String)> = vec![
        ("SQL in a channel name", "x'); DROP TABLE channels; --".into()),
        ("a right-to-left override in a channel name", "\u{202E}7-draw".into()),
        ("100 combining marks on one letter as a channel name (the length limit counts characters)", format!("a{}", "\u{301}".repeat(99))),
    ];
    for (row, name) in stored_names {
        let expected = says("201; GET returns the name byte for byte");
        let reply = api
            .post(
                "/api/channels",
                &mallory.token,
                json!({"name": name, "kind": "private"}),
            )
            .await;
        let got = match (reply.status, reply.body["channel"]["id"].as_str()) {
            (201, Some(id)) => {
                let back = api
                    .get(&format!("/api/channels/{id}"), &mallory.token)
                    .await;
                if back.body["channel"]["name"].as_str() == Some(name.as_str()) {
                    expected.clone()
                } else {
                    Other(format!("stored as {}", back.body["channel"]["name"]))
                }
            }
            _ => Other(format!("HTTP {} {}", reply.status, reply.body)),
        };
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }
    // An administrator's user search with LIKE wildcards and NUL: matched
    // literally, or refused.
    let search_rows: Vec<(&str, &str, Outcome)> = vec![
        (
            "user search for %",
            "%25",
            says("200, 0 users: matched literally"),
        ),
        (
            "user search for _",
            "_",
            says("200, 0 users: matched literally"),
        ),
        (
            "user search for ' OR '1'='1",
            "'%20OR%20'1'%3D'1",
            says("200, 0 users: matched literally"),
        ),
        (
            "user search with a NUL",
            "root%00",
            http(400, "invalid_frame"),
        ),
    ];
    for (row, query, expected) in search_rows {
        let reply = api
            .get(&format!("/api/users?search={query}"), &root.token)
            .await;
        let got = match (reply.status, reply.body["users"].as_array()) {
            (200, Some(users)) if users.is_empty() => says("200, 0 users: matched literally"),
            (200, Some(users)) => Other(format!("200, {} users", users.len())),
            (status, _) => Http(status, reply.code().to_owned()),
        };
        table.row(row, 1, &expected, &got);
        good_client.after(&mut table, row).await;
    }

    good_client.verify(&mut table).await;
    let summary = good_client.summary();
    api.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// nul_in_a_reaction: kept apart until the edge refuses it
// ---------------------------------------------------------------------------

mod nul_in_a_reaction {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::nul_in_a_reaction(super::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::nul_in_a_reaction(super::Backend::Postgres).await
    }
}

/// A reaction is stored as text, which PostgreSQL cannot hold U+0000 in:
/// today the same frame is stored on SQLite and answered `internal` on
/// PostgreSQL. The reaction check of the connection actor (1 to 64 bytes)
/// is where it belongs; these rows fail until it refuses U+0000 too, as it
/// already does for `clientMsgId` (`invalid_frame`).
async fn nul_in_a_reaction(backend: Backend) {
    use courier_actors::durable::store::{ChannelKind, Role};
    let Some(server) = support::server::TestServer::start(backend).await else {
        return;
    };
    let store = if backend == Backend::Sqlite {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let url = server.ws_url();
    let good = server.user("good", Role::User).await;
    let watcher = server.user("watcher", Role::User).await;
    let mallory = server.user("mallory", Role::User).await;
    let ward = server
        .channel("ward", ChannelKind::Private, &good, &[&watcher])
        .await;
    let own = server
        .channel("mallory's", ChannelKind::Private, &mallory, &[])
        .await;
    let mut good = Good::start(&url, &good.token, &watcher.token, ward).await;
    let mut m = connect(&url, &mallory.token, Encoding::Json).await;
    let target = m
        .send_text(own, "react to me")
        .await
        .expect("send")
        .message_id;
    let mut table = Table::new(format!("NUL in a reaction ({store})"));
    for (row, ty) in [
        ("NUL in a reaction (add_reaction)", "add_reaction"),
        ("NUL in a reaction (remove_reaction)", "remove_reaction"),
    ] {
        let frame = json!({"type": ty, "messageId": target, "reaction": "\u{0}"});
        let got = attack(&mut m, request(frame)).await;
        table.row(row, 1, &invalid(true), &got);
        good.after(&mut table, row).await;
    }
    good.verify(&mut table).await;
    let summary = good.summary();
    server.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// connection_abuse: sockets that never authenticate, foreign origins, login floods
// ---------------------------------------------------------------------------

/// How long the abuse server gives a socket to authenticate.
const AUTH_DEADLINE: Duration = Duration::from_millis(500);

/// What a socket that does not authenticate gets, and when: `error`
/// `auth_timeout` then close 4001, no later than the deadline plus `slack`.
async fn closed_at_deadline(c: &mut Client, opened: Instant, slack: Duration) -> Outcome {
    let first = answer(c).await;
    let closed = c.wait_closed(ANSWER).await;
    let took = opened.elapsed();
    match (first, closed) {
        (Error(code, _), Ok(Some(close))) if took <= AUTH_DEADLINE + slack => {
            ErrorThenClose(code, close)
        }
        (first, closed) => Other(format!("{first}, {closed:?} after {took:?}")),
    }
}

/// A login request written by hand, for clients that hang up before the
/// answer, from the address `from` (X-Forwarded-For).
fn login_request(addr: SocketAddr, from: &str, username: &str, password: &str) -> String {
    let body = json!({"username": username, "password": password}).to_string();
    format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Forwarded-For: {from}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Waits until no hash runs (the server finished what the logins started).
async fn hashes_done(api: &Rest) {
    let passwords = &api.server.app.passwords;
    rest::eventually(Duration::from_secs(30), async || passwords.running() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_abuse() {
    let cap = 2;
    let Some(api) = Rest::start_with(Backend::Sqlite, |c| {
        c.auth_timeout_ms = AUTH_DEADLINE.as_millis() as u64;
        // Costly enough that 200 hashes take a while, with the default cap.
        c.argon2_memory_kib = 8 * 1024;
        c.argon2_iterations = 1;
        c.argon2_max_concurrent = cap;
        // Each flood below comes from addresses of its own (X-Forwarded-For,
        // trusted behind a proxy), with 100 logins per address.
        c.auth_per_15min = 100;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await
    else {
        unreachable!("SQLite is always there")
    };
    let (url, addr) = (api.server.ws_url(), api.server.addr);
    let root = api.root().await;
    let good = api.user(&root, "goodnurse", "user").await;
    let peer = api.user(&root, "peer", "user").await;
    api.user(&root, "flood", "user").await;
    let ward = rest_channel(&api, &good, &peer, "ward").await;
    let mut good_client = Good::start(&url, &good.token, &peer.token, ward).await;
    let mut table = Table::new("connection abuse (SQLite)");
    let slack = Duration::from_millis(1500);

    // ---- sockets that never authenticate ----
    let timeout_close = ErrorThenClose(ErrorCode::AuthTimeout, close::AUTH_FAILED);
    let row = "a socket that never sends a frame";
    let opened = Instant::now();
    let mut c = Client::connect(&url).await.expect("connect");
    let got = closed_at_deadline(&mut c, opened, slack).await;
    table.row(row, 1, &timeout_close, &got);
    good_client.after(&mut table, row).await;

    let row = "an `authenticate` with a wrong field type, then silence";
    let opened = Instant::now();
    let mut c = Client::connect(&url).await.expect("connect");
    // Still an `authenticate`: `invalid_frame`, which never closes; then
    // the deadline closes it.
    let first = attack_raw(&mut c, request(json!({"type": "authenticate", "token": 7}))).await;
    let got = match first {
        Error(ErrorCode::InvalidFrame, _) => closed_at_deadline(&mut c, opened, slack).await,
        other => Other(format!("first answer {other}")),
    };
    table.row_note(row, 1, &timeout_close, &got, "invalid_frame first");
    good_client.after(&mut table, row).await;

    let row = "a raw upgraded socket that neither reads nor writes";
    let mut raw = RawWs::upgrade(addr).await;
    tokio::time::sleep(AUTH_DEADLINE + Duration::from_millis(200)).await;
    let got = raw.closed(ANSWER).await;
    table.row(row, 1, &Close(Some(close::AUTH_FAILED)), &got);
    good_client.after(&mut table, row).await;

    let row = "50 silent sockets at once";
    let opened = Instant::now();
    let sockets = join_all((0..50).map(|_| Client::connect(&url))).await;
    let outcomes = join_all(sockets.into_iter().map(|s| async move {
        match s {
            Ok(mut c) => closed_at_deadline(&mut c, opened, slack + Duration::from_secs(1)).await,
            Err(e) => Other(format!("cannot connect: {e}")),
        }
    }))
    .await;
    let all = says("every one: error auth_timeout, close 4001");
    let got = match outcomes.iter().find(|o| **o != timeout_close) {
        None => all.clone(),
        Some(bad) => Other(format!(
            "{} of 50 differ, e.g. {bad}",
            outcomes.iter().filter(|o| **o != timeout_close).count()
        )),
    };
    table.row(row, 50, &all, &got);
    good_client.after(&mut table, row).await;

    let unauthenticated = ErrorThenClose(ErrorCode::Unauthenticated, close::AUTH_FAILED);
    for (row, frame) in [
        (
            "join_channel before authenticate",
            json!({"type": "join_channel", "channelId": ward}),
        ),
        (
            "send_message before authenticate",
            json!({"type": "send_message", "channelId": ward, "text": "hi"}),
        ),
        (
            "fetch_history before authenticate",
            json!({"type": "fetch_history", "channelId": ward}),
        ),
        ("ping before authenticate", json!({"type": "ping"})),
        (
            "heartbeat before authenticate",
            json!({"type": "heartbeat"}),
        ),
    ] {
        let mut c = Client::connect(&url).await.expect("connect");
        let got = attack(&mut c, request(frame)).await;
        table.row(row, 1, &unauthenticated, &got);
        good_client.after(&mut table, row).await;
    }
    // Undecodable before authentication: the same, not `invalid_frame`.
    for (row, frame) in [
        (
            "join_channel with a malformed channelId before authenticate",
            request(json!({"type": "join_channel", "channelId": "not-a-uuid"})),
        ),
        (
            "an unknown type before authenticate",
            request(json!({"type": "subscribe_all"})),
        ),
        ("MessagePack 0xc1 before authenticate", binary(vec![0xc1])),
        (
            "JSON that is not an object before authenticate",
            text("[1,2]"),
        ),
    ] {
        let mut c = Client::connect(&url).await.expect("connect");
        let got = attack(&mut c, frame).await;
        table.row(row, 1, &unauthenticated, &got);
        good_client.after(&mut table, row).await;
    }

    // ---- the upgrade request itself ----
    let port = addr.port();
    let origin_rows: Vec<(String, Outcome)> = vec![
        ("https://evil.example".into(), http(403, "")),
        ("null".into(), http(403, "")),
        ("http://127.0.0.1:1".into(), http(403, "")),
        (
            format!("http://127.0.0.1:{port}.evil.example"),
            http(403, ""),
        ),
        (
            format!("http://evil.example@127.0.0.1:{port}"),
            http(403, ""),
        ),
        (format!("http://127.0.0.1:{port}/.."), http(403, "")),
        (format!("http://localhost:{port}"), http(403, "")),
    ];
    for (origin, expected) in origin_rows {
        let row = format!("a foreign Origin: {origin}");
        let got = match Client::builder(&url).origin(origin).connect().await {
            Ok(_) => Accepted,
            Err(ClientError::Refused { status }) => Http(status, String::new()),
            Err(e) => Other(e.to_string()),
        };
        table.row(&row, 1, &expected, &got);
        good_client.after(&mut table, &row).await;
    }
    let same = Client::builder(&url)
        .origin(format!("http://{addr}"))
        .connect()
        .await;
    table.control(
        "the server's own Origin",
        &Accepted,
        &same.map_or_else(|e| Other(e.to_string()), |_| Accepted),
    );
    let row = "the token in the URL query";
    let got = match Client::connect(&format!("{url}?token={}", good.token)).await {
        Ok(_) => Accepted,
        Err(ClientError::Refused { status }) => Http(status, String::new()),
        Err(e) => Other(e.to_string()),
    };
    table.row(row, 1, &http(400, ""), &got);
    good_client.after(&mut table, row).await;

    // ---- login floods: argon2 stays capped, the server stays responsive ----
    let passwords = &api.server.app.passwords;
    assert_eq!(passwords.max_concurrent(), cap);
    let capped = says(format!("at most {cap} argon2 hashes at once"));

    let row = "200 logins from 200 addresses whose clients hang up 0 to 400 ms after sending";
    let started = Instant::now();
    let dropped = join_all((0..200u64).map(|i| async move {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let name = if i % 2 == 0 {
            "flood".to_owned()
        } else {
            format!("nobody{i}")
        };
        let from = format!("10.7.{}.{}", i / 250, i % 250 + 1);
        let request = login_request(addr, &from, &name, PASSWORD);
        tcp.write_all(request.as_bytes()).await.ok()?;
        // Hang up while the login waits for a permit or hashes.
        tokio::time::sleep(Duration::from_millis(i * 2)).await;
        drop(tcp);
        Some(())
    }))
    .await;
    let good_during = good_client.round_trip().await;
    hashes_done(&api).await;
    let peak = passwords.peak_running();
    let got = if peak <= cap {
        capped.clone()
    } else {
        Other(format!("{peak} argon2 hashes at once"))
    };
    table.row_note(
        row,
        dropped.iter().filter(|d| d.is_some()).count(),
        &capped,
        &got,
        &format!(
            "peak {peak}; the server worked through them in {:?}",
            started.elapsed()
        ),
    );
    if let Err(e) = good_during {
        table.fail(format!("good client during \"{row}\": {e}"));
    }
    good_client.after(&mut table, row).await;

    let row = "200 concurrent logins from one address (limit 100 per address)";
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http");
    let started = Instant::now();
    let logins = join_all((0..200).map(|_| {
        let http = http.clone();
        let url = format!("{}/api/auth/login", api.base);
        async move {
            http.post(url)
                .header("X-Forwarded-For", "198.51.100.7")
                .json(&json!({"username": "flood", "password": PASSWORD}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    }));
    let watching = async {
        // Meanwhile the good client goes on and /health answers.
        let mut health = Duration::ZERO;
        let mut trips = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let ok = http
                .get(format!("{}/health", api.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            health = health.max(if ok { t.elapsed() } else { Duration::MAX });
            trips.push(good_client.round_trip().await);
        }
        (health, trips)
    };
    let (answers, (slowest_health, trips)) = tokio::join!(logins, watching);
    let took = started.elapsed();
    hashes_done(&api).await;
    let peak = passwords.peak_running();
    let ok = answers.iter().filter(|a| **a == Ok(200)).count();
    let limited = answers.iter().filter(|a| **a == Ok(429)).count();
    let expected = says(format!(
        "every one answered 200 or 429; at most {cap} argon2 hashes at once"
    ));
    let got = if ok + limited == answers.len() && peak <= cap {
        expected.clone()
    } else {
        let other: Vec<_> = answers
            .iter()
            .filter(|a| !matches!(a, Ok(200 | 429)))
            .take(3)
            .collect();
        Other(format!(
            "{ok} × 200, {limited} × 429, others {other:?}; peak {peak}"
        ))
    };
    table.row_note(
        row,
        answers.len(),
        &expected,
        &got,
        &format!("{ok} × 200, {limited} × 429 in {took:?}; peak {peak} hashes; slowest /health {slowest_health:?}"),
    );
    for trip in trips {
        if let Err(e) = trip {
            table.fail(format!("good client during \"{row}\": {e}"));
        }
    }
    if slowest_health > Duration::from_secs(2) {
        table.fail(format!(
            "/health took {slowest_health:?} during the login flood"
        ));
    }
    good_client.after(&mut table, row).await;

    good_client.verify(&mut table).await;
    let summary = good_client.summary();
    api.stop().await;
    table.finish(&summary);
}

// ---------------------------------------------------------------------------
// slowloris_upgrade: the HTTP request before the upgrade, dribbled
// ---------------------------------------------------------------------------

/// The deadline a socket gets to authenticate on this server; the upgrade
/// request that precedes it cannot take longer than that.
const SLOW_DEADLINE: Duration = Duration::from_millis(1000);

/// Writes `request` a byte every `gap` while watching for the server to end
/// the connection; returns when it did, or `None` by `give_up`.
async fn dribble(
    addr: SocketAddr,
    request: &[u8],
    gap: Duration,
    give_up: Duration,
) -> (Option<Duration>, usize) {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (mut read, mut write) = tcp.into_split();
    let ended = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => continue,
            }
        }
    });
    let mut sent = 0;
    let deadline = started + give_up;
    while Instant::now() < deadline && !ended.is_finished() {
        if sent < request.len() {
            if write.write_all(&request[sent..=sent]).await.is_err() {
                break;
            }
            sent += 1;
        }
        tokio::time::sleep(gap).await;
    }
    let closed = if ended.is_finished() {
        ended.await.ok().map(|at| at - started)
    } else {
        ended.abort();
        None
    };
    (closed, sent)
}

/// Fails until the HTTP side bounds how long a request head may take.
/// `axum::serve` gives hyper no timer, so hyper's header read timeout never
/// runs: a connection that dribbles its request head, or sends nothing, is
/// held for as long as the client likes (each one a task and a socket). The
/// bound asked for here is the authentication deadline: a socket that is not
/// even upgraded by then cannot be authenticated in time either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_upgrade() {
    let Some(api) = Rest::start_with(Backend::Sqlite, |c| {
        c.auth_timeout_ms = SLOW_DEADLINE.as_millis() as u64;
        c.http_header_timeout_ms = SLOW_DEADLINE.as_millis() as u64;
    })
    .await
    else {
        unreachable!("SQLite is always there")
    };
    let (url, addr) = (api.server.ws_url(), api.server.addr);
    let root = api.root().await;
    let good = api.user(&root, "goodnurse", "user").await;
    let peer = api.user(&root, "peer", "user").await;
    let ward = rest_channel(&api, &good, &peer, "ward").await;
    let mut good_client = Good::start(&url, &good.token, &peer.token, ward).await;
    let mut table = Table::new("slowloris on the upgrade (SQLite)");
    let bound = SLOW_DEADLINE + Duration::from_secs(2);
    let expected = says(format!("closed by the server within {bound:?}"));

    let request = upgrade_request(addr, "User-Agent: slowloris\r\n");
    let rows: Vec<(&str, &[u8], Duration)> = vec![
        (
            "the upgrade request, one byte every 100 ms",
            request.as_bytes(),
            Duration::from_millis(100),
        ),
        (
            "a TCP connection that never sends a byte",
            b"",
            Duration::from_millis(100),
        ),
    ];
    for (row, bytes, gap) in rows {
        // The good client works while the slow one hangs on.
        let slow = dribble(addr, bytes, gap, bound + Duration::from_millis(500));
        let (good_trip, (closed, sent)) = tokio::join!(good_client.round_trip(), slow);
        let got = match closed {
            Some(after) if after <= bound => expected.clone(),
            Some(after) => Other(format!("closed after {after:?}")),
            None => Other(format!(
                "still open after {:?} ({sent} bytes sent)",
                bound + Duration::from_millis(500)
            )),
        };
        table.row(row, 1, &expected, &got);
        if let Err(e) = good_trip {
            table.fail(format!("good client during \"{row}\": {e}"));
        }
        good_client.after(&mut table, row).await;
    }

    good_client.verify(&mut table).await;
    let summary = good_client.summary();
    api.stop().await;
    table.finish(&summary);
}
