//! # Notifier: `notification` pushes, off the hot path
//!
//! **Owns** nothing but its queue's length: every decision reads the
//! store (preferences, members, announcements) and ends in pushes.
//!
//! **Takes** [`NotifyMsg`], sent through [`NotifierHandle`] (never awaited):
//! - `Message`: a committed send (or an edit's new mentions); the users
//!   mentioned, and in a direct channel the other party, each get one
//!   notification (`mention` when they are mentioned, else
//!   `direct_message`), never the sender;
//! - `Announced`: a new announcement, to every account of its roles
//!   (the presence directory drops it for those with no connection);
//! - `Connected`: a user's connection authenticated; it receives the
//!   current announcements of its role created since that user's previous
//!   connect (all current ones at a first connect).
//!
//! Each recipient's [`NotificationPrefs`] decide ([`NotificationPrefs::allows`]):
//! kind turned off, channel muted or quiet hours suppress the push (counted
//! by `reason`).
//!
//! **Bounded**: [`NotifierHandle`] counts what is queued; past
//! [`QUEUE_CAPACITY`] an event is dropped and counted, so a slow store
//! never slows the channel actors that report messages.
//!
//! **Supervised by** the realtime root. **A crash** loses what is queued;
//! the server reports not ready (a core actor).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use courier_protocol::frames::{Notification, ServerFrame};
use courier_protocol::{ChannelId, MessageId, UserId};
use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use super::prefs::{NotificationKind, NotificationPrefs};
use crate::durable::store::{Announcement, DynStore, Role, StoreError};
use crate::realtime::presence::{ForUser, PresenceMsg};
use crate::telemetry::names as m;

/// The most events queued before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;

/// The notifier actor.
pub struct Notifier;

/// A committed message someone may hear about (ids only).
#[derive(Clone, Debug)]
pub struct MessageEvent {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub seq: u64,
    pub sender: UserId,
    /// Members mentioned (for an edit: only those the edit added).
    pub mentioned: Vec<UserId>,
    /// A new message of a direct channel: its other member is told.
    pub direct: bool,
}

/// Messages of the notifier.
pub enum NotifyMsg {
    Message(MessageEvent),
    Announced(Box<Announcement>),
    Connected { user_id: UserId, role: Role },
}

/// What it is started with.
pub struct NotifierArgs {
    pub store: DynStore,
    pub presence: ActorRef<ForUser>,
    pub queued: Arc<AtomicUsize>,
}

/// Its state: the same as its arguments.
pub struct NotifierState {
    store: DynStore,
    presence: ActorRef<ForUser>,
    queued: Arc<AtomicUsize>,
}

/// Sends to the notifier without waiting; drops and counts past
/// [`QUEUE_CAPACITY`].
#[derive(Clone)]
pub struct NotifierHandle {
    actor: ActorRef<NotifyMsg>,
    queued: Arc<AtomicUsize>,
}

impl NotifierHandle {
    /// Starts the notifier under `supervisor`.
    pub async fn spawn_linked(
        name: String,
        supervisor: ractor::ActorCell,
        store: DynStore,
        presence: ActorRef<ForUser>,
    ) -> Result<NotifierHandle, ActorProcessingErr> {
        let queued = Arc::new(AtomicUsize::new(0));
        let args = NotifierArgs {
            store,
            presence,
            queued: queued.clone(),
        };
        let (actor, _) = Actor::spawn_linked(Some(name), Notifier, args, supervisor).await?;
        Ok(NotifierHandle { actor, queued })
    }

    /// Events sent and not yet handled (the one being handled included).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues `msg`, or drops and counts it.
    pub fn send(&self, msg: NotifyMsg) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE_CAPACITY {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            counter!(m::NOTIFICATIONS_DROPPED).increment(1);
            return;
        }
        if self.actor.cast(msg).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            counter!(m::NOTIFICATIONS_DROPPED).increment(1);
        }
    }
}

/// The `notification` push of a message event (ids and a generic title).
pub fn message_frame(kind: NotificationKind, e: &MessageEvent) -> ServerFrame {
    ServerFrame::Notification(Notification {
        data: json!({
            "kind": kind.as_str(),
            "channelId": e.channel_id,
            "messageId": e.message_id,
            "seq": e.seq,
            "title": kind.title(),
        }),
    })
}

/// The `notification` push of an announcement.
pub fn announcement_frame(a: &Announcement) -> ServerFrame {
    let mut data = json!({
        "kind": NotificationKind::Announcement.as_str(),
        "announcementId": a.id,
        "title": a.title,
        "body": a.body,
        "createdAt": a.created_at,
    });
    if let Some(at) = a.expires_at {
        data["expiresAt"] = at.into();
    }
    ServerFrame::Notification(Notification { data })
}

impl NotifierState {
    async fn prefs(&self, user: UserId) -> Result<NotificationPrefs, StoreError> {
        Ok(self
            .store
            .notification_prefs(user)
            .await?
            .unwrap_or_default())
    }

    /// Pushes `frame` to `user`'s connections if their preferences allow.
    async fn offer(
        &self,
        user: UserId,
        kind: NotificationKind,
        channel: Option<ChannelId>,
        frame: &ServerFrame,
    ) -> Result<(), StoreError> {
        let prefs = self.prefs(user).await?;
        match prefs.allows(kind, channel, crate::now_ms()) {
            Ok(()) => {
                counter!(m::NOTIFICATIONS_SENT, "kind" => kind.as_str()).increment(1);
                let _ = self
                    .presence
                    .cast(ForUser(user, PresenceMsg::Push(Box::new(frame.clone()))));
            }
            Err(why) => {
                counter!(m::NOTIFICATIONS_SUPPRESSED, "reason" => why.as_str()).increment(1);
            }
        }
        Ok(())
    }

    async fn message(&self, e: MessageEvent) -> Result<(), StoreError> {
        let mut recipients: Vec<(UserId, NotificationKind)> = e
            .mentioned
            .iter()
            .filter(|u| **u != e.sender)
            .map(|u| (*u, NotificationKind::Mention))
            .collect();
        if e.direct {
            for member in self.store.list_members(e.channel_id).await? {
                let u = member.user_id;
                if u != e.sender && !recipients.iter().any(|(r, _)| *r == u) {
                    recipients.push((u, NotificationKind::DirectMessage));
                }
            }
        }
        for (user, kind) in recipients {
            self.offer(user, kind, Some(e.channel_id), &message_frame(kind, &e))
                .await?;
        }
        Ok(())
    }

    async fn announced(&self, a: &Announcement) -> Result<(), StoreError> {
        let frame = announcement_frame(a);
        for user in self.store.users_of_roles(&a.roles).await? {
            self.offer(user, NotificationKind::Announcement, None, &frame)
                .await?;
        }
        Ok(())
    }

    async fn connected(&self, user: UserId, role: Role) -> Result<(), StoreError> {
        let now = crate::now_ms();
        let since = self.store.mark_announcements_seen(user, now).await?;
        let current = self.store.current_announcements(now).await?;
        // Oldest first, as they were posted.
        for a in current.iter().rev() {
            if a.is_for(role) && since.is_none_or(|s| a.created_at > s) {
                self.offer(
                    user,
                    NotificationKind::Announcement,
                    None,
                    &announcement_frame(a),
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl Actor for Notifier {
    type Msg = NotifyMsg;
    type State = NotifierState;
    type Arguments = NotifierArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: NotifierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(NotifierState {
            store: args.store,
            presence: args.presence,
            queued: args.queued,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let done = match msg {
            NotifyMsg::Message(e) => state.message(e).await,
            NotifyMsg::Announced(a) => state.announced(&a).await,
            NotifyMsg::Connected { user_id, role } => state.connected(user_id, role).await,
        };
        state.queued.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = done {
            // The store failed: this event is lost, the next may succeed.
            counter!(m::NOTIFICATIONS_DROPPED).increment(1);
            tracing::warn!(error = %e, "a notification was not delivered: the store failed");
        }
        Ok(())
    }
}
