//! # Realtime: sockets, channels and presence
//!
//! **Owns** everything a live message touches between the socket and the
//! durable store: one [`ConnectionActor`](connection::ConnectionActor) per
//! WebSocket (with its [`reader`] task and [`outbound`] queue and writer),
//! one [`ChannelActor`](channel::ChannelActor) per channel with traffic
//! (under the [`channel_directory`]), one
//! [`PresenceActor`](presence::PresenceActor) per online user, and the
//! [`Realtime`] root supervisor that starts all of them and the
//! [`durable`](crate::durable) and [`audit`](crate::audit::actor) actors beside
//! them.
//!
//! **Takes** sockets from the server's accept loop
//! ([`Realtime::spawn_connection`]) and requests from REST handlers through
//! the [`Realtime`] handle.
//!
//! **Talks to** the [`durable`](crate::durable) subsystem (a channel actor
//! hands each write to the persistence actor and continues when it answers)
//! and the [`audit`](crate::audit::actor) actor; decisions come from
//! [`policy`](crate::policy).
//!
//! **A crash** of a connection actor closes only its socket; of a channel
//! actor, closes its channel's sockets with 1011 and the next use starts a
//! fresh one that recovers `seq` from the store; of a presence actor, loses
//! only that user's status. Each file's doc says more.
//!
//! # One message, frame in to frame out
//! 1. [`reader`] reads the frame and hands it to its
//!    [`connection`] actor, which decodes, validates, rate-limits and flags
//!    PHI ([`policy::phi`](crate::policy::phi)).
//! 2. [`channel`]: authorizes ([`policy::authz`](crate::policy::authz)),
//!    de-duplicates by `clientMsgId`, assigns `seq`, encrypts
//!    ([`crypto`](crate::crypto)) and submits the write to
//!    [`persistence`](crate::durable::persistence).
//! 3. [`persistence`](crate::durable::persistence) commits a batch in one
//!    transaction (group commit) and answers the channel.
//! 4. [`channel`] acks the sender, encodes the push once per encoding
//!    ([`frames_out`], [`wire`]) and queues the same bytes to every joined
//!    connection's [`outbound`] queue; a wide channel's writes go through
//!    its [`flush_line`].
//! 5. [`outbound`]'s writer drains each queue into vectored socket writes.

pub mod channel;
pub mod channel_directory;
pub mod connection;
pub mod flush_line;
pub mod frames_out;
pub mod outbound;
pub mod presence;
pub mod reader;
mod supervisor;
pub mod wire;

pub use supervisor::{
    direct_key, AccessError, Change, ConnectionGuard, Limits, Publish, PublishError, Realtime,
    RealtimeDeps, RootMsg, ShutdownPhase,
};
