//! # courier-actors
//!
//! The engine of Courier: the ractor actors that own connections, channels,
//! presence, persistence and the audit chain, and the store and crypto they
//! use.
//!
//! # Supervision tree
//! ```text
//! Realtime (root supervisor)
//! ├── PersistenceActor      group commit of every realtime write
//! ├── AuditActor            the SHA-256 hash chain and signed checkpoints
//! ├── RetentionActor        TTL expiry and purges, on an interval
//! ├── ChannelDirectory
//! │   └── ChannelActor ×N   one per channel with traffic: seq, fan-out
//! ├── PresenceDirectory
//! │   └── PresenceActor ×N  one per online user
//! └── ConnectionActor ×N    one per WebSocket
//! ```
//!
//! # Layout
//! - [`realtime`]: the root supervisor and the handles the edge uses.
//! - [`connection`], [`channel`], [`channel_directory`], [`presence`],
//!   [`persistence`], [`audit`], [`retention`]: one actor per file.
//! - [`outbound`]: a connection's bounded queue and its vectored writer.
//! - [`wire`]: server frames built once as the bytes that go on the wire.
//! - [`authz`]: every authorization decision.
//! - [`history`]: decrypting stored messages for history and replay.
//! - [`frames_out`]: building server frames.
//! - [`store`]: the `Store` trait with its PostgreSQL and SQLite backends.
//! - [`store_thread`]: the thread the persistence and audit write loops run
//!   on with PostgreSQL, away from the connection tasks.
//! - [`crypto`]: the master keyring and per-channel AES-256-GCM message keys.
//! - [`audit_chain`]: the SHA-256 hash chain and signed checkpoints (pure).
//! - [`phi`]: detectors that flag protected health information in text.
//! - [`private_files`]: data files 0600 and directories 0700.
//! - [`metric_names`]: every `courier_*` metric.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod audit;
pub mod audit_chain;
pub mod authz;
pub mod channel;
pub mod channel_directory;
pub mod connection;
pub mod crypto;
pub mod flush_line;
pub mod frames_out;
pub mod history;
pub mod identity;
pub mod metric_names;
pub mod outbound;
pub mod persistence;
pub mod phi;
pub mod presence;
pub mod private_files;
pub mod reader;
pub mod realtime;
pub mod retention;
pub mod store;
pub mod store_thread;
pub mod wire;

/// Milliseconds since the Unix epoch, the unit of every timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
