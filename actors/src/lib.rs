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
//! ├── Notifier              notification pushes (bounded queue)
//! ├── ChannelDirectory
//! │   └── ChannelActor ×N   one per channel with traffic: seq, fan-out
//! ├── PresenceDirectory
//! │   └── PresenceActor ×N  one per online user
//! └── ConnectionActor ×N    one per WebSocket
//! ```
//!
//! # Layout
//! One folder per subsystem, each with a module doc: what it owns, what it
//! takes, who it talks to, what a crash does.
//! - [`realtime`]: the root supervisor ([`Realtime`](realtime::Realtime),
//!   the handles the edge uses), and the actors a live message crosses:
//!   connections (their reader task, outbound queue and writer, the flush
//!   line), channels and their directory, presence, and the frames built
//!   once for the wire.
//! - [`durable`]: the [`store`](durable::store) with its PostgreSQL and
//!   SQLite backends, the persistence actor (group commit), the store's
//!   thread, history decryption, and the retention actor.
//! - [`audit`]: the audit actor and the pure SHA-256 chain with its signed
//!   checkpoints.
//! - [`policy`]: authorization, identity, PHI detection; pure decisions.
//! - [`crypto`]: the master keyring, per-channel AES-256-GCM message keys,
//!   the wrapping of per-file keys, and sealed, tagged patient references.
//! - [`files`]: encrypted attachments and the file vault: uploads streamed
//!   through type sniffing, ClamAV and chunked sealing into an object store,
//!   ranged downloads, and the sweeper actor that purges and rescans.
//! - [`compliance`]: legal holds, break-glass access and the accounting of
//!   disclosures per patient (issue 36).
//! - [`search`]: search over encrypted messages: the normalizer, the blind
//!   index of keyed per-channel tokens, and the search query (issue 38).
//! - [`notify`]: in-app notifications: `@username` mentions, the notifier
//!   actor that pushes `notification` for mentions, direct messages and
//!   announcements under each user's preferences (issue 38).
//! - [`telemetry`]: the name of every `courier_*` metric.
//!
//! Edges point down: `realtime` uses `durable`, `audit`, `policy` and
//! `crypto`; `durable` answers its writers through reply targets they give
//! it (ractor's `DerivedActorRef`), never by naming their message types.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

/// `variant_message!(Outer::Variant(Inner))`: `Inner` converts into
/// `Outer::Variant` and back, so that a lower subsystem can send `Inner`
/// through a [`ractor::DerivedActorRef`] without naming `Outer` (ractor
/// needs the way back to return an undelivered message).
macro_rules! variant_message {
    ($outer:ident :: $variant:ident ( $inner:ty )) => {
        impl From<$inner> for $outer {
            fn from(inner: $inner) -> Self {
                $outer::$variant(inner)
            }
        }

        impl TryFrom<$outer> for $inner {
            type Error = $outer;

            fn try_from(outer: $outer) -> Result<Self, $outer> {
                match outer {
                    $outer::$variant(inner) => Ok(inner),
                    other => Err(other),
                }
            }
        }
    };
}

pub mod audit;
pub mod cluster;
pub mod compliance;
pub mod crypto;
pub mod durable;
pub mod files;
pub mod notify;
pub mod policy;
pub mod realtime;
pub mod search;
pub mod telemetry;

/// Microseconds since the Unix epoch (cross-node latencies).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, the unit of every timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
