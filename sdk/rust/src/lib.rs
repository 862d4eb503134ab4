//! # courier-client
//!
//! Courier's Rust SDK. A [`CourierClient`] keeps one WebSocket to a Courier
//! server open from a background task and makes the server's promises
//! (gap-free `seq`, idempotent sends, an `ack` only after the commit) the
//! app's, whatever happens to the connection:
//!
//! - **Every message once, in order.** Per channel it remembers the highest
//!   `seq` delivered and delivers a message only above it. After a
//!   reconnect it rejoins with `sinceSeq`; when the server answers
//!   `recovered: false` (the gap is past its replay limit) it pages
//!   `fetch_history` forward up to the join's `lastSeq`, holding the
//!   channel's live pushes until the gap is filled.
//! - **Sends complete once.** Each send gets a `clientMsgId` (UUID v4) and
//!   is kept until its `ack`; after a reconnect it is resent (after the
//!   rejoins), and the server answers a resend of a committed message with
//!   the original `seq` and `duplicate: true`. The call returns the first
//!   `ack` or error, never twice.
//! - **Reconnects** with exponential backoff and full jitter (250 ms
//!   doubling to 30 s, [`Backoff`]), but not after close 4003 (session
//!   revoked) or 4001 (authentication failed) until the app gives a new
//!   session, except that a 4001 once the token is due for refresh is
//!   answered by one refresh and a new attempt.
//! - **Refreshes the token** over REST before it expires
//!   ([`session::refresh_delay`]: at 80 % of `expiresIn`), keeps the rotated
//!   refresh token, never runs two refreshes at once, and authenticates the
//!   open socket again with the new token.
//! - **Finds dead sockets**: `ping` every `heartbeatMs`; a socket silent
//!   for longer than that plus a margin is replaced.
//!
//! ```no_run
//! use courier_client::{login, ClientConfig, CourierClient, Event};
//!
//! # async fn demo(channel: courier_protocol::ChannelId) -> Result<(), courier_client::Error> {
//! let server = "http://127.0.0.1:8080";
//! let me = login(server, "alice", "correct horse battery staple").await?;
//! let (client, mut events) = CourierClient::connect(ClientConfig::new(server), me.session);
//! client.join(channel).await?;
//! let sent = client.send(channel, "Bed 4 needs a fluid check").await?; // after the commit
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(m) = event {
//!         println!("#{} {}: {}", m.seq, m.sender, m.text); // once each, in seq order
//!     }
//! }
//! # let _ = sent; Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`CourierClient`], the app's handle (cheap to clone; every
//!   call is a message to the background task).
//! - `driver` (private): the background task that owns the socket, the
//!   followed channels and the calls in flight.
//! - `channel` (private): one channel's delivered seq and catch-up (replay
//!   or paging), pure.
//! - [`event`]: [`Event`], what the app is told, and [`ConnectionState`].
//! - [`session`]: [`Session`], [`login`], and the REST refresh.
//! - [`config`]: [`ClientConfig`], where the server is and how patient to be.
//! - [`backoff`]: [`Backoff`], reconnect delays.
//! - [`error`]: [`Error`], what a call fails with.
//!
//! Frames and ids are [`courier_protocol`]'s; the socket is its typed
//! client ([`courier_protocol::client`]).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod backoff;
mod channel;
pub mod client;
pub mod config;
mod driver;
pub mod error;
pub mod event;
pub mod session;

pub use backoff::Backoff;
pub use client::CourierClient;
pub use config::ClientConfig;
pub use error::Error;
pub use event::{ConnectionState, Event, Events};
pub use session::{login, Login, Session};

pub use courier_protocol;
