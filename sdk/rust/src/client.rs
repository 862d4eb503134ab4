//! [`CourierClient`]: the app's handle. Every call is a message to the
//! background task that owns the socket (the private `driver`), answered on a
//! oneshot channel, so the handle is cheap to clone and every method takes
//! `&self`.

use std::time::Duration;

use courier_protocol::frames::{
    ChannelView, DeleteMessage, EditMessage, FetchHistory, History, OpenDirect, Pong, Reaction,
    ReadPosition, ReadReceipt, SendMessage, SendResult, SetStatus, TypingIndicator, UserStatus,
};
use courier_protocol::{ChannelId, ClientRequest, MessageId, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::driver::Driver;
use crate::error::Error;
use crate::event::{ConnectionState, Events};
use crate::session::Session;

/// What a call asks of the background task.
#[derive(Debug)]
pub(crate) enum Call {
    /// Follow a channel: join it now and after every reconnect.
    Join {
        channel_id: ChannelId,
        since_seq: Option<u64>,
    },
    /// Stop following a channel.
    Leave(ChannelId),
    /// A send, with its `clientMsgId` set.
    Send(SendMessage),
    /// `typing_indicator`: no answer on success.
    Typing(TypingIndicator),
    /// Any other request that the server answers.
    Request(ClientRequest),
}

/// A successful call's result, before the handle narrows it to its type.
#[derive(Debug)]
pub(crate) enum Answer {
    Done,
    Channel(ChannelView),
    Sent(SendResult),
    History(History),
    Pong(Pong),
}

/// Where a call's result goes.
pub(crate) type Reply = oneshot::Sender<Result<Answer, Error>>;

/// A message from the handle to the background task.
#[derive(Debug)]
pub(crate) enum Command {
    Call { call: Call, reply: Reply },
    SetSession(Session),
    Close(oneshot::Sender<()>),
}

/// A Courier client: one socket, kept open, owned by a background task.
///
/// See the [crate docs](crate) for what it does on its own. Clone it
/// freely: every clone drives the same connection. The task ends when
/// [`CourierClient::close`] is called or every clone is dropped.
#[derive(Clone, Debug)]
pub struct CourierClient {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    session: watch::Receiver<Session>,
}

impl CourierClient {
    /// Starts the background task, which connects at once; returns the
    /// handle and the app's event queue. Must be called inside a tokio
    /// runtime. Calls made before the connection is up wait for it.
    pub fn connect(config: ClientConfig, session: Session) -> (CourierClient, Events) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (session_tx, session_rx) = watch::channel(session.clone());
        let driver = Driver::new(
            config,
            session,
            commands_rx,
            events_tx,
            state_tx,
            session_tx,
        );
        tokio::spawn(driver.run());
        let client = CourierClient {
            commands,
            state,
            session: session_rx,
        };
        (client, Events { rx: events_rx })
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Waits until the state is `wanted` (or `timeout` passes); returns the
    /// state it ended in.
    pub async fn wait_for_state(
        &self,
        wanted: ConnectionState,
        timeout: Duration,
    ) -> ConnectionState {
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(timeout, state.wait_for(|s| *s == wanted)).await;
        let now = *state.borrow();
        now
    }

    /// The current session: the app's, or the newest refresh of it.
    pub fn session(&self) -> Session {
        self.session.borrow().clone()
    }

    /// Replaces the session (after a new login, say). A stopped client
    /// connects again with it; a connected one authenticates the open
    /// socket with it.
    pub fn set_session(&self, session: Session) {
        let _ = self.commands.send(Command::SetSession(session));
    }

    /// Closes the socket (1000), fails the calls still waiting with
    /// [`Error::Closed`] and ends the background task.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }

    async fn call(&self, call: Call) -> Result<Answer, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Call { call, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.unwrap_or(Err(Error::Closed))
    }

    async fn channel(&self, call: Call) -> Result<ChannelView, Error> {
        match self.call(call).await? {
            Answer::Channel(view) => Ok(view),
            _ => Err(Error::Unexpected("ack without channel")),
        }
    }

    async fn done(&self, request: ClientRequest) -> Result<(), Error> {
        self.call(Call::Request(request)).await.map(|_| ())
    }

    /// Follows a channel from now on: joins it, and joins it again after
    /// every reconnect, recovering what was missed. Returns the join's
    /// `channel` (for an already followed channel, the last one).
    pub async fn join(&self, channel_id: ChannelId) -> Result<ChannelView, Error> {
        let call = Call::Join {
            channel_id,
            since_seq: None,
        };
        self.channel(call).await
    }

    /// Follows a channel from `since_seq`, the last seq the app has (kept
    /// from an earlier run): every later message is delivered once, in
    /// order, before live ones.
    pub async fn join_since(
        &self,
        channel_id: ChannelId,
        since_seq: u64,
    ) -> Result<ChannelView, Error> {
        let call = Call::Join {
            channel_id,
            since_seq: Some(since_seq),
        };
        self.channel(call).await
    }

    /// Stops following a channel (`leave_channel`; membership stays).
    pub async fn leave(&self, channel_id: ChannelId) -> Result<(), Error> {
        self.call(Call::Leave(channel_id)).await.map(|_| ())
    }

    /// Sends a text message. Returns once: with the `ack` (after the
    /// server committed it; `duplicate: true` when a resend found it
    /// already committed) or the error. Unacknowledged sends survive
    /// reconnects and are resent with the same `clientMsgId`; dropping the
    /// returned future does not withdraw the message.
    pub async fn send(&self, channel_id: ChannelId, text: &str) -> Result<SendResult, Error> {
        self.send_message(SendMessage::text(channel_id, text)).await
    }

    /// Sends a message with every option (`containsPHI`, `replyTo`,
    /// `ttlSeconds`); a `clientMsgId` is made (UUID v4) unless given.
    pub async fn send_message(&self, mut message: SendMessage) -> Result<SendResult, Error> {
        if message.client_msg_id.is_none() {
            message.client_msg_id = Some(uuid::Uuid::new_v4().to_string());
        }
        match self.call(Call::Send(message)).await? {
            Answer::Sent(sent) => Ok(sent),
            _ => Err(Error::Unexpected("ack without messageId")),
        }
    }

    /// Edits one of the user's messages.
    pub async fn edit(&self, message_id: MessageId, text: &str) -> Result<(), Error> {
        let text = text.to_owned();
        self.done(ClientRequest::EditMessage(EditMessage { message_id, text }))
            .await
    }

    /// Deletes a message.
    pub async fn delete(&self, message_id: MessageId) -> Result<(), Error> {
        self.done(ClientRequest::DeleteMessage(DeleteMessage { message_id }))
            .await
    }

    /// Says the user is (or stopped) typing. Not answered on success, so
    /// this returns once the frame is written; while disconnected it is
    /// dropped. Errors arrive as [`crate::Event::ServerError`].
    pub async fn typing(&self, channel_id: ChannelId, is_typing: bool) -> Result<(), Error> {
        let indicator = TypingIndicator {
            channel_id,
            is_typing,
        };
        self.call(Call::Typing(indicator)).await.map(|_| ())
    }

    /// Marks everything up to and including `seq` read.
    pub async fn mark_read(&self, channel_id: ChannelId, seq: u64) -> Result<(), Error> {
        let up_to = ReadPosition::Seq(seq);
        self.done(ClientRequest::ReadReceipt(ReadReceipt {
            channel_id,
            up_to,
        }))
        .await
    }

    /// One page of history: the `limit` (1..=100, default 50) messages
    /// before `before_seq`, or the newest ones; ascending seq.
    pub async fn history(
        &self,
        channel_id: ChannelId,
        before_seq: Option<u64>,
        limit: Option<u32>,
    ) -> Result<History, Error> {
        let request = ClientRequest::FetchHistory(FetchHistory {
            channel_id,
            before_seq,
            limit,
        });
        match self.call(Call::Request(request)).await? {
            Answer::History(history) => Ok(history),
            _ => Err(Error::Unexpected("not a history page")),
        }
    }

    /// Adds a reaction to a message.
    pub async fn react(&self, message_id: MessageId, reaction: &str) -> Result<(), Error> {
        let reaction = reaction.to_owned();
        self.done(ClientRequest::AddReaction(Reaction {
            message_id,
            reaction,
        }))
        .await
    }

    /// Removes a reaction from a message.
    pub async fn unreact(&self, message_id: MessageId, reaction: &str) -> Result<(), Error> {
        let reaction = reaction.to_owned();
        self.done(ClientRequest::RemoveReaction(Reaction {
            message_id,
            reaction,
        }))
        .await
    }

    /// Opens (creating on first use) the direct channel with `user_id` and
    /// follows it like [`CourierClient::join`].
    pub async fn open_direct(&self, user_id: UserId) -> Result<ChannelView, Error> {
        self.channel(Call::Request(ClientRequest::OpenDirect(OpenDirect {
            user_id,
        })))
        .await
    }

    /// Sets the user's status (`online` or `away`).
    pub async fn set_status(&self, status: UserStatus) -> Result<(), Error> {
        self.done(ClientRequest::SetStatus(SetStatus { status }))
            .await
    }

    /// A `ping`, answered by `pong` with the server's clock.
    pub async fn ping(&self) -> Result<Pong, Error> {
        match self.call(Call::Request(ClientRequest::Ping)).await? {
            Answer::Pong(pong) => Ok(pong),
            _ => Err(Error::Unexpected("not a pong")),
        }
    }
}
