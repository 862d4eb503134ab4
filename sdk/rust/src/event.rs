//! What the client tells the app: connection events and every push, in the
//! order they happened, through [`Events`].

use std::time::Duration;

use courier_protocol::frames::{
    AuthUser, ErrorFrame, MessageDeleted, MessageStatus, MessageView, Notification, Presence,
    ReactionUpdated, ReadReceiptPush, SystemEvent, Typing,
};
use courier_protocol::{ChannelId, ServerFrame, SessionId};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::session::Session;

/// One thing that happened.
///
/// [`Event::Message`] comes once per message, in `seq` order per channel,
/// across reconnects, replays and history pages alike.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection attempt starts.
    Connecting,
    /// The socket is open and authenticated; channels are being rejoined
    /// and unacknowledged sends resent.
    Connected {
        /// Who the connection acts for.
        user: AuthUser,
        /// The login session.
        session_id: SessionId,
        /// How often the client pings (the server's `heartbeatMs`).
        heartbeat: Duration,
    },
    /// The connection was lost or closed; `code` is the close code, `None`
    /// when the socket ended without one (or was found dead).
    Disconnected {
        /// The WebSocket close code.
        code: Option<u16>,
        /// The close reason, or what ended the connection.
        reason: String,
    },
    /// The next connection attempt starts after `delay`.
    Reconnecting {
        /// 1 for the first attempt after a loss, then 2, 3, ...
        attempt: u32,
        /// The (jittered) wait before it.
        delay: Duration,
    },
    /// The client stopped: it will not reconnect until it gets a new
    /// session ([`crate::CourierClient::set_session`]). Also sent once when
    /// the app closes the client (`code` 1000).
    Stopped {
        /// The close code that stopped it (4003 revoked, 4001
        /// authentication failed), when a socket closed.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// The access token was refreshed; the refresh token rotated. Store
    /// this session if the app keeps sessions across restarts.
    SessionRefreshed(Session),
    /// A channel joined again with `sinceSeq` has caught up: every message
    /// up to `last_seq` was delivered (by the server's replay, or by
    /// paging `fetch_history` when `paged`); what follows is live.
    ChannelRecovered {
        /// The channel.
        channel_id: ChannelId,
        /// Caught up to this seq.
        last_seq: u64,
        /// Whether the gap was past the server's replay limit and paged.
        paged: bool,
    },
    /// Joining a channel again after a reconnect was refused (the user was
    /// removed, the channel deleted): the client no longer follows it.
    ChannelLost {
        /// The channel.
        channel_id: ChannelId,
        /// The server's answer.
        error: Error,
    },
    /// `new_message`: a message, once, in seq order.
    Message(MessageView),
    /// `message_updated`: a message was edited.
    MessageUpdated(MessageView),
    /// `message_deleted`.
    MessageDeleted(MessageDeleted),
    /// `reaction_updated`: a message's reaction counts.
    ReactionUpdated(ReactionUpdated),
    /// `read_receipt`: someone read up to a seq.
    ReadReceipt(ReadReceiptPush),
    /// `message_status`: in a direct channel, messages reached or were read
    /// by the other member.
    MessageStatus(MessageStatus),
    /// `typing`.
    Typing(Typing),
    /// `presence`.
    Presence(Presence),
    /// `system_event` (`shutdown`, `channel_deleted`, `member_removed`, or
    /// a type added later).
    System(SystemEvent),
    /// `notification`.
    Notification(Notification),
    /// An `error` frame that answers no call: a `typing_indicator`'s
    /// error, or a frame whose `ref` the server could not read.
    ServerError(ErrorFrame),
}

impl Event {
    /// The event for a push; `None` for answers (frames with a `ref`) and
    /// the frames the client handles itself (`recovered`, compact `m`).
    pub(crate) fn from_push(frame: ServerFrame) -> Option<Event> {
        Some(match frame {
            ServerFrame::NewMessage(p) => Event::Message(p.data),
            ServerFrame::MessageUpdated(p) => Event::MessageUpdated(p.data),
            ServerFrame::MessageDeleted(p) => Event::MessageDeleted(p.data),
            ServerFrame::ReactionUpdated(r) => Event::ReactionUpdated(r),
            ServerFrame::ReadReceipt(r) => Event::ReadReceipt(r),
            ServerFrame::MessageStatus(s) => Event::MessageStatus(s),
            ServerFrame::Typing(t) => Event::Typing(t),
            ServerFrame::Presence(p) => Event::Presence(p),
            ServerFrame::SystemEvent(s) => Event::System(s),
            ServerFrame::Notification(n) => Event::Notification(n),
            ServerFrame::Error(e) if e.reference.is_none() => Event::ServerError(e),
            _ => return None,
        })
    }
}

/// The connection's state, as [`crate::CourierClient::state`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting or authenticating.
    Connecting,
    /// Authenticated; requests go out at once.
    Connected,
    /// Waiting before the next attempt.
    Reconnecting,
    /// Stopped until a new session is given.
    Stopped,
    /// Closed by the app; the background task has ended.
    Closed,
}

/// The app's end of the event queue.
///
/// The queue is not bounded: the client never drops a message and never
/// waits for the app (an app that awaits a call while handling an event
/// must not stall the task that completes that call). An app that stops
/// reading holds every push in memory; drain it.
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and every event
    /// was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}
