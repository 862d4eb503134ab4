//! Compact pushes: the short form of `new_message` a MessagePack client may
//! ask for at `authenticate`.
//!
//! A standard `new_message` repeats every field name in full, carries each
//! id as a 36-character UUID string and the sender's username: about 320
//! bytes of MessagePack for a 100-byte text and a short name, written once
//! per recipient of a fan-out. A client that sends
//! `{"type": "authenticate", "token": …, "frames": "compact"}` over a binary
//! frame gets its `new_message` pushes as [`CompactMessage`] instead
//! (`type` `"m"`, one- or two-letter keys, ids as 16-byte binaries, no
//! username: about 190 bytes for the same message); every other frame
//! stays as it is. The `authentication_response` says which form the
//! connection got (`frames`); a JSON connection always gets the standard
//! one.
//!
//! | key | field | MessagePack type |
//! |---|---|---|
//! | `type` | `"m"` | str |
//! | `c` | channelId | bin 16 |
//! | `q` | seq | uint |
//! | `i` | messageId | bin 16 |
//! | `u` | senderId | bin 16 |
//! | `ts` | timestamp (ms) | int |
//! | `x` | text | str |
//! | `p` | containsPHI, only when true | bool |
//! | `r` | replyTo, when set | bin 16 |
//! | `ed` | editedAt, when set | int |
//! | `e` | expiresAt, when set | int |

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::frames::{MessageView, Redacted};
use crate::ids::{ChannelId, MessageId, UserId};

/// Which form a connection's `new_message` pushes take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameStyle {
    /// The frames of PROTOCOL.md (the default).
    #[default]
    Standard,
    /// [`CompactMessage`] for `new_message` (MessagePack connections only).
    Compact,
}

impl FrameStyle {
    /// Whether it is the default, which `authenticate` need not name.
    pub fn is_standard(&self) -> bool {
        *self == FrameStyle::Standard
    }
}

/// `m`: a `new_message` push in the compact form (see the module doc).
/// Everything but the sender's username is there; a client that shows
/// names keeps its own map of user ids (from `presence`, the REST user
/// list or its own directory).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactMessage {
    /// The channel.
    #[serde(rename = "c", with = "bin16")]
    pub channel_id: ChannelId,
    /// The message's seq in the channel.
    #[serde(rename = "q")]
    pub seq: u64,
    /// The message's id.
    #[serde(rename = "i", with = "bin16")]
    pub id: MessageId,
    /// Who sent it.
    #[serde(rename = "u", with = "bin16")]
    pub sender_id: UserId,
    /// When it was accepted (ms since the epoch).
    #[serde(rename = "ts")]
    pub timestamp: i64,
    /// The (decrypted) text.
    #[serde(rename = "x")]
    pub text: String,
    /// Flagged as PHI.
    #[serde(rename = "p", default, skip_serializing_if = "is_false")]
    pub contains_phi: bool,
    /// The message it answers.
    #[serde(
        rename = "r",
        default,
        with = "bin16_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_to: Option<MessageId>,
    /// When it was last edited (ms since the epoch).
    #[serde(rename = "ed", default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// When it expires (ms since the epoch).
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl fmt::Debug for CompactMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompactMessage")
            .field("channel_id", &self.channel_id)
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("sender_id", &self.sender_id)
            .field("timestamp", &self.timestamp)
            .field("text", &Redacted(self.text.len()))
            .field("contains_phi", &self.contains_phi)
            .field("reply_to", &self.reply_to)
            .field("edited_at", &self.edited_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl From<&MessageView> for CompactMessage {
    fn from(m: &MessageView) -> Self {
        Self {
            channel_id: m.channel_id,
            seq: m.seq,
            id: m.id,
            sender_id: m.sender_id,
            timestamp: m.timestamp,
            text: m.text.clone(),
            contains_phi: m.contains_phi,
            reply_to: m.reply_to,
            edited_at: m.edited_at,
            expires_at: m.expires_at,
        }
    }
}

impl CompactMessage {
    /// The standard message view, with `sender` (which the compact form
    /// leaves out) given by the caller.
    pub fn into_view(self, sender: String) -> MessageView {
        MessageView {
            id: self.id,
            channel_id: self.channel_id,
            seq: self.seq,
            sender_id: self.sender_id,
            sender,
            text: self.text,
            timestamp: self.timestamp,
            contains_phi: self.contains_phi,
            reply_to: self.reply_to,
            edited_at: self.edited_at,
            expires_at: self.expires_at,
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
}

/// An id that is a UUID underneath.
trait Raw: Copy {
    fn raw(self) -> Uuid;
    fn from_raw(raw: Uuid) -> Self;
}

macro_rules! raw {
    ($($id:ty),*) => {$(
        impl Raw for $id {
            fn raw(self) -> Uuid {
                self.0
            }
            fn from_raw(raw: Uuid) -> Self {
                Self(raw)
            }
        }
    )*};
}
raw!(ChannelId, MessageId, UserId);

/// Ids as 16 raw bytes (MessagePack `bin 8` of length 16).
mod bin16 {
    use super::*;

    pub(super) fn serialize<S: Serializer, T: Raw>(id: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(id.raw().as_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Raw>(d: D) -> Result<T, D::Error> {
        d.deserialize_bytes(Bin16).map(T::from_raw)
    }

    struct Bin16;

    impl<'de> Visitor<'de> for Bin16 {
        type Value = Uuid;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("16 bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Uuid, E> {
            Uuid::from_slice(v).map_err(|_| E::invalid_length(v.len(), &self))
        }

        /// JSON has no binaries: the bytes come as an array of numbers.
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Uuid, A::Error> {
            let mut bytes = [0u8; 16];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(de::Error::invalid_length(17, &self));
            }
            Ok(Uuid::from_bytes(bytes))
        }
    }
}

/// Optional ids as 16 raw bytes, or nil.
mod bin16_opt {
    use super::*;

    pub(super) fn serialize<S: Serializer, T: Raw>(
        id: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_bytes(id.raw().as_bytes()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Raw>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::bin16")] AnyId);
        // Deserialized through `Option` so that nil reads as `None`.
        Option::<Wrapped>::deserialize(d).map(|w| w.map(|Wrapped(raw)| T::from_raw(raw.0)))
    }

    /// A bare UUID for the shared visitor.
    #[derive(Clone, Copy)]
    struct AnyId(Uuid);

    impl Raw for AnyId {
        fn raw(self) -> Uuid {
            self.0
        }
        fn from_raw(raw: Uuid) -> Self {
            Self(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_server, encode_server, Encoding};
    use crate::frames::{MessagePush, ServerFrame};

    fn view(text: &str) -> MessageView {
        MessageView {
            id: MessageId::new(),
            channel_id: ChannelId::new(),
            seq: 42,
            sender_id: UserId::new(),
            sender: "alice".into(),
            text: text.into(),
            timestamp: 1_760_000_000_123,
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

    /// Ids go out as `bin 8` of 16 bytes, the message decodes back to the
    /// same fields, and a 100-byte text's frame is about 190 bytes where
    /// the standard one is about 340.
    #[test]
    fn compact_messages_round_trip_with_binary_ids() {
        let mut full = view(&"x".repeat(100));
        let compact = ServerFrame::CompactMessage(CompactMessage::from(&full));
        let bytes = encode_server(&compact, Encoding::MessagePack);
        let id = full.channel_id.0.as_bytes();
        let needle: Vec<u8> = [&[0xc4, 16][..], &id[..]].concat();
        assert!(
            bytes.windows(18).any(|w| w == needle),
            "channel id as bin 16"
        );
        assert_eq!(decode_server(&bytes, Encoding::MessagePack), Ok(compact));
        let standard = encode_server(
            &ServerFrame::NewMessage(MessagePush { data: full.clone() }),
            Encoding::MessagePack,
        );
        assert!(
            bytes.len() <= 190 && standard.len() >= 310,
            "{} vs {}",
            bytes.len(),
            standard.len()
        );

        full.contains_phi = true;
        full.reply_to = Some(MessageId::new());
        full.edited_at = Some(1);
        full.expires_at = Some(2);
        let back = match decode_server(
            &encode_server(
                &ServerFrame::CompactMessage(CompactMessage::from(&full)),
                Encoding::MessagePack,
            ),
            Encoding::MessagePack,
        ) {
            Ok(ServerFrame::CompactMessage(m)) => m,
            other => panic!("expected m, got {other:?}"),
        };
        assert_eq!(back.into_view("alice".into()), full);
    }

    /// A 15-byte id is refused, not read as something else.
    #[test]
    fn a_short_binary_id_is_refused() {
        let mut bytes = encode_server(
            &ServerFrame::CompactMessage(CompactMessage::from(&view("hi"))),
            Encoding::MessagePack,
        )
        .to_vec();
        let at = bytes
            .windows(2)
            .position(|w| w == [0xc4, 16])
            .expect("an id");
        bytes[at + 1] = 15;
        bytes.remove(at + 2);
        assert!(decode_server(&bytes, Encoding::MessagePack).is_err());
    }
}
