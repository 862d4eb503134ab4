//! # Notify: in-app notifications, mentions, preferences, announcements
//!
//! **Owns** the decision of who hears about what, off the hot path:
//! [`notifier::Notifier`], one actor per server with a bounded queue, turns
//! committed messages (a mention of someone, a direct message) and
//! announcements into `notification` pushes to the connected devices of
//! each user concerned, under their [`prefs`]; [`mentions`] finds the
//! `@username`s of a text (pure).
//!
//! **Takes** [`notifier::NotifyMsg`] through a
//! [`NotifierHandle`](notifier::NotifierHandle): from channel actors once a
//! send or an edit is committed, from the REST edge when an announcement is
//! posted, from connection actors once a socket authenticates.
//!
//! **Talks to** the store ([`NotifyStore`](crate::durable::store::NotifyStore):
//! preferences, members, announcements) and the
//! [`PresenceDirectory`](crate::realtime::presence::PresenceDirectory),
//! which pushes a frame to every connection of a user (and drops it for a
//! user with none).
//!
//! **What a notification carries**: ids and a generic title
//! (`{kind, channelId, messageId, seq, title}`), never message text or a
//! patient reference; an announcement carries its own title and body, which
//! an admin wrote for everyone. **Offline delivery** (Web Push, webhooks)
//! is not part of this folder yet: it is a second sink the notifier hands
//! the same decision to, for users with no connection.
//!
//! **A crash** of the notifier loses the events queued in it (nothing
//! durable lives there: mentions are stored with their message by the
//! persistence actor); the root supervisor marks the server not ready. A
//! full queue drops the event and counts it (`courier_notifications_dropped_total`):
//! messaging never waits for notifications.

pub mod mentions;
pub mod notifier;
pub mod prefs;

pub use notifier::{MessageEvent, Notifier, NotifierHandle, NotifyMsg};
