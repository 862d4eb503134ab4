//! # courier-protocol
//!
//! Courier's wire contract (`shared/PROTOCOL.md`, documented in
//! `docs/protocol.md`) as Rust types and codecs. Pure: no runtime, no I/O,
//! usable by any Rust client.
//!
//! # Layout
//! - [`ids`]: typed UUID identifiers.
//! - [`patient`]: the validated patient reference (`patientRef`).
//! - [`error`]: error codes and close codes.
//! - [`frames`]: `ClientFrame` (requests) and `ServerFrame` (answers, pushes).
//! - [`codec`]: the only calls to MessagePack and JSON; decoding is bounded.
//! - [`compact`]: the short `new_message` form a client may ask for.
//! - `client` (feature `client`): an async WebSocket client for tests, the
//!   load tester and Rust applications. It is the only part that needs a
//!   runtime (tokio, tokio-tungstenite).
//!
//! The server's side in four lines:
//!
//! ```
//! use courier_protocol::{decode_client, encode_server, ClientRequest, Encoding, ServerFrame};
//!
//! let frame = decode_client(br#"{"type":"ping","ref":7}"#, Encoding::Json).unwrap();
//! assert_eq!(frame.request, ClientRequest::Ping);
//! let pong = ServerFrame::Pong(courier_protocol::frames::Pong { reference: frame.reference, server_time: 0 });
//! assert_eq!(&encode_server(&pong, Encoding::Json)[..], br#"{"type":"pong","ref":7,"serverTime":0}"#);
//! ```
//!
//! An undecodable frame is a [`DecodeError`] that still carries the frame's
//! `ref` when it was readable; answer it with
//! [`DecodeError::to_error_frame`] and keep the connection.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod compact;
pub mod error;
pub mod frames;
pub mod ids;
pub mod patient;

#[cfg(feature = "client")]
pub mod client;

pub use codec::{
    decode_client, decode_server, encode_client, encode_server, DecodeError, Encoding,
};
pub use error::ErrorCode;
pub use frames::{ClientFrame, ClientRequest, Ref, ServerFrame};
pub use ids::{ChannelId, FileId, MessageId, SessionId, ShareId, UserId};
pub use patient::PatientRef;
