//! One followed channel: what was delivered to the app, and how a (re)join
//! catches up. Pure: no I/O; the driver sends what it asks for.
//!
//! The rule that makes every message arrive once, in order: remember the
//! highest `seq` delivered, and deliver a `new_message` only above it. A
//! rejoin sends `sinceSeq` = that seq, and then:
//!
//! - `recovered: true`: the server replays the gap, then `recovered`; the
//!   replay and live pushes never overlap, and the seq rule drops anything
//!   seen twice.
//! - `recovered: false` (the gap is past the server's replay limit): page
//!   `fetch_history` forward from the delivered seq up to the ack's
//!   `lastSeq` — `beforeSeq = cursor + 1 + 100`, `limit: 100` gives the
//!   messages up to `cursor + 100` — holding the channel's live pushes
//!   meanwhile, then release them. One page in memory, whatever the gap.

use courier_protocol::frames::{ChannelView, FetchHistory, History, Recovered, HISTORY_LIMIT_MAX};
use courier_protocol::{ChannelId, ServerFrame};

use crate::event::Event;

/// How many seqs one history page covers.
const PAGE: u64 = HISTORY_LIMIT_MAX as u64;

/// A channel the app follows.
#[derive(Debug)]
pub(crate) struct ChannelState {
    pub(crate) id: ChannelId,
    /// The highest seq delivered to the app; `None` until the first join
    /// answers (the app then starts from the channel's `lastSeq`).
    pub(crate) delivered: Option<u64>,
    pub(crate) phase: Phase,
    /// The `channel` of the last join's `ack`.
    pub(crate) view: Option<ChannelView>,
    /// App calls waiting for the join's answer (op ids of the driver).
    pub(crate) waiters: Vec<u64>,
}

/// Where the channel's catch-up is.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Not joined on any socket (no connection, or not sent yet).
    Detached,
    /// `join_channel` sent; pushes that come before its `ack` wait.
    Joining { held: Vec<ServerFrame> },
    /// The server replays the gap; `recovered` ends it. Pushes that came
    /// before the join's `ack` wait for its end.
    Replaying { held: Vec<ServerFrame> },
    /// Paging the gap with `fetch_history`; live pushes wait.
    Paging {
        /// The `ref` of the page asked for, once it was sent.
        awaiting: Option<i64>,
        /// Every message up to here was delivered (or does not exist).
        cursor: u64,
        /// The join's `lastSeq`: paging ends there.
        target: u64,
        held: Vec<ServerFrame>,
    },
    /// Caught up: pushes are delivered as they come.
    Live,
}

impl ChannelState {
    /// A channel to follow from `since_seq` (the app's own position), or
    /// from whatever is newest when it is first joined.
    pub(crate) fn new(id: ChannelId, since_seq: Option<u64>) -> Self {
        Self {
            id,
            delivered: since_seq,
            phase: Phase::Detached,
            view: None,
            waiters: Vec::new(),
        }
    }

    /// The `sinceSeq` of the next join.
    pub(crate) fn since_seq(&self) -> Option<u64> {
        self.delivered
    }

    /// A `join_channel` went out.
    pub(crate) fn join_sent(&mut self) {
        self.phase = Phase::Joining { held: Vec::new() };
    }

    /// The socket is gone: what was held is asked for again next time.
    pub(crate) fn detach(&mut self) {
        self.phase = Phase::Detached;
    }

    /// The join's `ack`. Returns the first page to ask for, when the
    /// server left the gap to the client.
    pub(crate) fn joined(
        &mut self,
        view: ChannelView,
        out: &mut Vec<Event>,
    ) -> Option<FetchHistory> {
        let held = match std::mem::replace(&mut self.phase, Phase::Live) {
            Phase::Joining { held } => held,
            _ => Vec::new(),
        };
        let (recovered, last_seq) = (view.recovered, view.last_seq);
        self.view = Some(view);
        match self.delivered {
            None => {
                // First join: live from here; history is the app's call.
                self.delivered = Some(last_seq);
            }
            Some(_) if recovered => {
                self.phase = Phase::Replaying { held };
                return None;
            }
            Some(delivered) if delivered >= last_seq => {
                out.push(Event::ChannelRecovered {
                    channel_id: self.id,
                    last_seq,
                    paged: false,
                });
            }
            Some(delivered) => {
                self.phase = Phase::Paging {
                    awaiting: None,
                    cursor: delivered,
                    target: last_seq,
                    held,
                };
                return Some(self.page_request(delivered));
            }
        }
        for frame in held {
            self.deliver(frame, out);
        }
        None
    }

    /// The page asked for went out with `reference`.
    pub(crate) fn page_sent(&mut self, reference: i64) {
        if let Phase::Paging { awaiting, .. } = &mut self.phase {
            *awaiting = Some(reference);
        }
    }

    /// Whether `reference` is the page this channel waits for.
    pub(crate) fn awaits_page(&self, reference: i64) -> bool {
        matches!(self.phase, Phase::Paging { awaiting: Some(r), .. } if r == reference)
    }

    /// A page answered. Returns the next page to ask for, if any.
    pub(crate) fn page(&mut self, history: History, out: &mut Vec<Event>) -> Option<FetchHistory> {
        let Phase::Paging { cursor, target, .. } = &mut self.phase else {
            return None;
        };
        let top = *cursor + PAGE;
        let (low, target) = (*cursor, *target);
        *cursor = top;
        for message in history.messages {
            if message.seq > low && message.seq <= top {
                self.deliver_message(message, out);
            }
        }
        if top < target {
            if let Phase::Paging { awaiting, .. } = &mut self.phase {
                *awaiting = None;
            }
            return Some(self.page_request(top));
        }
        let Phase::Paging { held, .. } = std::mem::replace(&mut self.phase, Phase::Live) else {
            unreachable!("matched above");
        };
        out.push(Event::ChannelRecovered {
            channel_id: self.id,
            last_seq: target,
            paged: true,
        });
        for frame in held {
            self.deliver(frame, out);
        }
        None
    }

    /// `recovered`: the server's replay is complete.
    pub(crate) fn recovered(&mut self, recovered: Recovered, out: &mut Vec<Event>) {
        // Outside a replay it ends one given up on: nothing to do.
        if !self.replaying() {
            return;
        }
        let Phase::Replaying { held } = std::mem::replace(&mut self.phase, Phase::Live) else {
            unreachable!("checked above");
        };
        out.push(Event::ChannelRecovered {
            channel_id: self.id,
            last_seq: recovered.last_seq,
            paged: false,
        });
        for frame in held {
            self.deliver(frame, out);
        }
    }

    /// Whether the server is replaying to this channel.
    pub(crate) fn replaying(&self) -> bool {
        matches!(self.phase, Phase::Replaying { .. })
    }

    /// A push of this channel: held while joining or paging, delivered
    /// otherwise.
    pub(crate) fn push(&mut self, frame: ServerFrame, out: &mut Vec<Event>) {
        match &mut self.phase {
            Phase::Joining { held } | Phase::Paging { held, .. } => held.push(frame),
            Phase::Detached | Phase::Replaying { .. } | Phase::Live => self.deliver(frame, out),
        }
    }

    fn deliver(&mut self, frame: ServerFrame, out: &mut Vec<Event>) {
        match frame {
            ServerFrame::NewMessage(push) => self.deliver_message(push.data, out),
            other => out.extend(Event::from_push(other)),
        }
    }

    fn deliver_message(
        &mut self,
        message: courier_protocol::frames::MessageView,
        out: &mut Vec<Event>,
    ) {
        if self.delivered.is_none_or(|d| message.seq > d) {
            self.delivered = Some(message.seq);
            out.push(Event::Message(message));
        }
    }

    /// The page of the seqs just above `cursor`.
    fn page_request(&self, cursor: u64) -> FetchHistory {
        FetchHistory {
            channel_id: self.id,
            before_seq: Some(cursor + 1 + PAGE),
            limit: Some(HISTORY_LIMIT_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use courier_protocol::frames::{ChannelKindWire, MessagePush, MessageView, Typing};
    use courier_protocol::{MessageId, UserId};

    use super::*;

    fn id() -> ChannelId {
        "c4a1e0f2-6b7d-4e38-a9c5-1d2e3f405060".parse().unwrap()
    }

    fn message(seq: u64) -> MessageView {
        MessageView {
            id: MessageId::new(),
            channel_id: id(),
            seq,
            sender_id: UserId::new(),
            sender: "alice".into(),
            text: format!("m{seq}"),
            timestamp: 0,
            contains_phi: false,
            reply_to: None,
            edited_at: None,
            expires_at: None,
            flagged: None,
            flag_reason: None,
            flagged_by: None,
            flagged_at: None,
            kind: Default::default(),
            attachments: Vec::new(),
            patient_ref: None,
            mentions: Vec::new(),
        }
    }

    fn push(seq: u64) -> ServerFrame {
        ServerFrame::NewMessage(MessagePush { data: message(seq) })
    }

    fn view(last_seq: u64, recovered: bool) -> ChannelView {
        ChannelView {
            id: id(),
            name: "ward-7".into(),
            kind: ChannelKindWire::Public,
            last_seq,
            last_read_seq: 0,
            unread: 0,
            recovered,
            online: Vec::new(),
            archived: false,
            patient_ref: None,
        }
    }

    fn history(seqs: impl IntoIterator<Item = u64>) -> History {
        History {
            reference: None,
            channel_id: id(),
            messages: seqs.into_iter().map(message).collect(),
            has_more: true,
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_first_join_starts_live_at_the_newest_seq() {
        let mut ch = ChannelState::new(id(), None);
        ch.join_sent();
        let mut out = Vec::new();
        assert!(ch.joined(view(41, false), &mut out).is_none());
        ch.push(push(41), &mut out); // not above lastSeq: already history
        ch.push(push(42), &mut out);
        assert_eq!(seqs(&out), [42]);
        assert_eq!(ch.since_seq(), Some(42));
    }

    #[test]
    fn a_replay_and_live_pushes_deliver_each_seq_once() {
        let mut ch = ChannelState::new(id(), Some(10));
        ch.join_sent();
        let mut out = Vec::new();
        assert!(ch.joined(view(13, true), &mut out).is_none());
        for seq in [11, 12, 12, 13] {
            ch.push(push(seq), &mut out);
        }
        ch.recovered(
            Recovered {
                channel_id: id(),
                last_seq: 13,
            },
            &mut out,
        );
        ch.push(push(13), &mut out);
        ch.push(push(14), &mut out);
        assert_eq!(seqs(&out), [11, 12, 13, 14]);
        assert!(out.iter().any(|e| matches!(
            e,
            Event::ChannelRecovered {
                last_seq: 13,
                paged: false,
                ..
            }
        )));
    }

    #[test]
    fn a_gap_past_the_replay_limit_is_paged_forward_with_live_pushes_held() {
        let mut ch = ChannelState::new(id(), Some(10));
        ch.join_sent();
        let mut out = Vec::new();
        let first = ch.joined(view(260, false), &mut out).expect("a page");
        assert_eq!((first.before_seq, first.limit), (Some(111), Some(100)));
        ch.page_sent(7);
        assert!(ch.awaits_page(7) && !ch.awaits_page(8));
        // Live pushes during the paging wait, and are released after it.
        ch.push(push(261), &mut out);
        let typing = ServerFrame::Typing(Typing {
            channel_id: id(),
            user_id: UserId::new(),
            is_typing: true,
        });
        ch.push(typing, &mut out);
        assert!(out.is_empty(), "nothing before the gap is filled");
        // The page below 111 (older ones come too when some were deleted).
        let next = ch.page(history(5..=110), &mut out).expect("a second page");
        assert_eq!(next.before_seq, Some(211));
        ch.page_sent(8);
        // 150 was deleted: not in the page.
        let next = ch
            .page(history((111..=210).filter(|s| *s != 150)), &mut out)
            .expect("a third page");
        assert_eq!(next.before_seq, Some(311));
        ch.page_sent(9);
        // The last page reaches past lastSeq: 261 came live meanwhile.
        assert!(ch.page(history(211..=261), &mut out).is_none());
        ch.push(push(262), &mut out);
        let want: Vec<u64> = (11..=262).filter(|s| *s != 150).collect();
        assert_eq!(seqs(&out), want);
        let recovered = out
            .iter()
            .position(|e| {
                matches!(
                    e,
                    Event::ChannelRecovered {
                        last_seq: 260,
                        paged: true,
                        ..
                    }
                )
            })
            .expect("recovered");
        let typing = out
            .iter()
            .position(|e| matches!(e, Event::Typing(_)))
            .expect("the held typing");
        assert!(recovered < typing, "held pushes come after the gap");
    }

    #[test]
    fn a_lost_socket_drops_what_was_held_and_the_next_join_starts_from_the_delivered_seq() {
        let mut ch = ChannelState::new(id(), Some(10));
        ch.join_sent();
        let mut out = Vec::new();
        ch.joined(view(500, false), &mut out).expect("a page");
        ch.page_sent(1);
        ch.page(history(11..=110), &mut out).expect("next page");
        ch.push(push(501), &mut out);
        ch.detach();
        assert_eq!(ch.since_seq(), Some(110));
        assert!(!ch.awaits_page(1));
        ch.join_sent();
        ch.push(push(502), &mut out); // before the ack: held
        assert!(ch.joined(view(502, true), &mut out).is_none());
        for seq in 111..=502 {
            ch.push(push(seq), &mut out);
        }
        ch.recovered(
            Recovered {
                channel_id: id(),
                last_seq: 502,
            },
            &mut out,
        );
        let want: Vec<u64> = (11..=502).collect();
        assert_eq!(seqs(&out), want);
    }

    #[test]
    fn nothing_missed_is_recovered_at_once() {
        let mut ch = ChannelState::new(id(), Some(20));
        ch.join_sent();
        let mut out = Vec::new();
        assert!(ch.joined(view(20, false), &mut out).is_none());
        assert!(matches!(ch.phase, Phase::Live));
        assert!(matches!(
            out[..],
            [Event::ChannelRecovered { last_seq: 20, .. }]
        ));
    }
}
