//! The only calls to the codecs: MessagePack (binary WebSocket frames) and
//! JSON (text frames), in both directions.
//!
//! # Decoding
//! A frame is decoded in two passes over the same bytes, with no
//! intermediate tree:
//!
//! 1. **Scan.** A bounded walk checks the structure and reads the envelope
//!    (`type` and `ref`). For MessagePack it is a hand-written walker
//!    that never allocates from a length prefix (a prefix longer than the
//!    bytes left fails at once), rejects ext types, the reserved byte `0xc1`,
//!    NaN and infinities, map keys that are not UTF-8 strings, and trailing
//!    bytes. For JSON it is a serde visitor over `serde_json` (which already
//!    rejects everything that is not JSON). Both cap nesting at
//!    [`MAX_DEPTH`] and reject a key that appears twice in one map.
//! 2. **Typed decode.** The payload struct that `type` names is decoded
//!    directly from the frame; `type`, `ref` and unknown keys are skipped.
//!
//! Whatever `ref` the scan read before a failure is kept in the
//! [`DecodeError`], so the server can answer `invalid_frame` with it.
//!
//! # Encoding
//! MessagePack maps with string keys (`rmp_serde`'s named form), JSON
//! objects; one [`Bytes`] per frame, cheap to clone for every recipient.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};

use bytes::Bytes;
use rmp::Marker;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use crate::error::ErrorCode;
use crate::frames::{ClientFrame, ClientRequest, Ref, ServerFrame, INVALID_REF};

/// Deepest nesting of maps and arrays accepted, the frame's own map
/// counting as 1. Real frames nest at most 4 deep.
pub const MAX_DEPTH: usize = 32;

/// Longest `reason` in a [`DecodeError`]; longer ones are cut.
const MAX_REASON_BYTES: usize = 160;

/// Longest `type` kept in a [`DecodeError`].
const MAX_TYPE_BYTES: usize = 64;

/// How a frame is encoded: by the WebSocket frame kind it travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Binary frames: one MessagePack map with string keys.
    MessagePack,
    /// Text frames: one JSON object.
    Json,
}

/// What kind of problem made a frame undecodable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// Not one well-formed MessagePack value or JSON document: truncated,
    /// trailing bytes, ext types, `0xc1`, NaN, non-string keys, duplicate
    /// keys, or not a map.
    Malformed,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// `type` names no frame this side knows.
    UnknownType,
    /// Well-formed, but a field is missing, has the wrong type or is out
    /// of range (including `type` and `ref` themselves).
    Invalid,
}

/// A frame that could not be decoded. The server answers it with `error`
/// `invalid_frame` ([`DecodeError::to_error_frame`]) and keeps the
/// connection open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid frame: {reason}")]
pub struct DecodeError {
    kind: DecodeErrorKind,
    reference: Option<Ref>,
    frame_type: Option<String>,
    reason: String,
}

impl DecodeError {
    fn new(kind: DecodeErrorKind, header: Header<'_>, reason: String) -> Self {
        let frame_type = header
            .ty
            .filter(|t| t.len() <= MAX_TYPE_BYTES)
            .map(Cow::into_owned);
        Self {
            kind,
            reference: header.reference,
            frame_type,
            reason,
        }
    }

    /// What kind of problem it was.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// The frame's `ref`, when it could still be read.
    pub fn reference(&self) -> Option<&Ref> {
        self.reference.as_ref()
    }

    /// The frame's `type`, when it could be read (and is at most 64 bytes).
    pub fn frame_type(&self) -> Option<&str> {
        self.frame_type.as_deref()
    }

    /// A short reason for people; never more than about 160 bytes, so it
    /// never echoes a large input.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The `error` frame that answers it: code `invalid_frame`, the
    /// recovered `ref`, the reason as `message`.
    pub fn to_error_frame(&self) -> ServerFrame {
        ServerFrame::error(
            self.reference.clone(),
            ErrorCode::InvalidFrame,
            self.reason.clone(),
        )
    }
}

/// Decodes one client frame (server side).
pub fn decode_client(bytes: &[u8], encoding: Encoding) -> Result<ClientFrame, DecodeError> {
    let (reference, ty) = scan(bytes, encoding)?;
    let body = Body { bytes, encoding };
    let request = match &*ty {
        "authenticate" => body.parse().map(ClientRequest::Authenticate),
        "join_channel" => body.parse().map(ClientRequest::JoinChannel),
        "leave_channel" => body.parse().map(ClientRequest::LeaveChannel),
        "send_message" => body.parse().map(ClientRequest::SendMessage),
        "edit_message" => body.parse().map(ClientRequest::EditMessage),
        "delete_message" => body.parse().map(ClientRequest::DeleteMessage),
        "typing_indicator" => body.parse().map(ClientRequest::TypingIndicator),
        "read_receipt" => body.parse().map(ClientRequest::ReadReceipt),
        "fetch_history" => body.parse().map(ClientRequest::FetchHistory),
        "add_reaction" => body.parse().map(ClientRequest::AddReaction),
        "remove_reaction" => body.parse().map(ClientRequest::RemoveReaction),
        "open_direct" => body.parse().map(ClientRequest::OpenDirect),
        "set_status" => body.parse().map(ClientRequest::SetStatus),
        "flag_message" => body.parse().map(ClientRequest::FlagMessage),
        "unflag_message" => body.parse().map(ClientRequest::UnflagMessage),
        "ping" => Ok(ClientRequest::Ping),
        "heartbeat" => Ok(ClientRequest::Heartbeat),
        other => Err(unknown_type(other)),
    };
    match request {
        Ok(request) => Ok(ClientFrame { reference, request }),
        Err(e) => Err(body_error(reference, ty, e)),
    }
}

/// Decodes one server frame (client side).
pub fn decode_server(bytes: &[u8], encoding: Encoding) -> Result<ServerFrame, DecodeError> {
    let (reference, ty) = scan(bytes, encoding)?;
    let body = Body { bytes, encoding };
    let frame = match &*ty {
        "ack" => body.parse().map(ServerFrame::Ack),
        "error" => body.parse().map(ServerFrame::Error),
        "authentication_response" => body.parse().map(ServerFrame::AuthenticationResponse),
        "pong" => body.parse().map(ServerFrame::Pong),
        "history" => body.parse().map(ServerFrame::History),
        "new_message" => body.parse().map(ServerFrame::NewMessage),
        "m" => body.parse().map(ServerFrame::CompactMessage),
        "message_updated" => body.parse().map(ServerFrame::MessageUpdated),
        "message_deleted" => body.parse().map(ServerFrame::MessageDeleted),
        "typing" => body.parse().map(ServerFrame::Typing),
        "read_receipt" => body.parse().map(ServerFrame::ReadReceipt),
        "reaction_updated" => body.parse().map(ServerFrame::ReactionUpdated),
        "presence" => body.parse().map(ServerFrame::Presence),
        "system_event" => body.parse().map(ServerFrame::SystemEvent),
        "notification" => body.parse().map(ServerFrame::Notification),
        "recovered" => body.parse().map(ServerFrame::Recovered),
        "message_status" => body.parse().map(ServerFrame::MessageStatus),
        "message_flagged" => body.parse().map(ServerFrame::MessageFlagged),
        other => Err(unknown_type(other)),
    };
    frame.map_err(|e| body_error(reference, ty, e))
}

/// Encodes one server frame. Encode a push once and clone the `Bytes` for
/// every recipient.
pub fn encode_server(frame: &ServerFrame, encoding: Encoding) -> Bytes {
    let hint = match frame {
        ServerFrame::NewMessage(m) | ServerFrame::MessageUpdated(m) => 256 + m.data.text.len(),
        ServerFrame::History(h) => {
            128 + h.messages.iter().map(|m| 256 + m.text.len()).sum::<usize>()
        }
        _ => 192,
    };
    encode(frame, encoding, hint)
}

/// Encodes one client frame.
pub fn encode_client(frame: &ClientFrame, encoding: Encoding) -> Bytes {
    let hint = match &frame.request {
        ClientRequest::SendMessage(m) => 160 + m.text.len(),
        ClientRequest::EditMessage(m) => 96 + m.text.len(),
        _ => 128,
    };
    encode(frame, encoding, hint)
}

fn encode<T: Serialize>(value: &T, encoding: Encoding, capacity: usize) -> Bytes {
    let mut buf = Vec::with_capacity(capacity);
    let written = match encoding {
        Encoding::MessagePack => {
            rmp_serde::encode::write_named(&mut buf, value).map_err(|e| e.to_string())
        }
        Encoding::Json => serde_json::to_writer(&mut buf, value).map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        // Writing to a Vec cannot fail, every map key in the frame types is
        // a string, and no Serialize impl in them returns an error: this is
        // a broken invariant, not bad input.
        panic!("encoding a frame failed: {e}");
    }
    Bytes::from(buf)
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// The envelope, as far as the scan read it.
#[derive(Default)]
struct Header<'de> {
    ty: Option<Cow<'de, str>>,
    reference: Option<Ref>,
}

/// Why the scan stopped.
struct Fail {
    kind: DecodeErrorKind,
    reason: Cow<'static, str>,
}

impl Fail {
    fn malformed(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: DecodeErrorKind::Malformed,
            reason: reason.into(),
        }
    }

    fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: DecodeErrorKind::Invalid,
            reason: reason.into(),
        }
    }

    fn too_deep() -> Self {
        Self {
            kind: DecodeErrorKind::TooDeep,
            reason: format!("nested deeper than {MAX_DEPTH} levels").into(),
        }
    }

    fn duplicate(key: &str) -> Self {
        Self::malformed(short(format_args!("duplicate key `{}`", key)))
    }
}

/// Scans the frame and returns its `ref` and `type`.
fn scan(bytes: &[u8], encoding: Encoding) -> Result<(Option<Ref>, Cow<'_, str>), DecodeError> {
    let mut header = Header::default();
    let scanned = match encoding {
        Encoding::MessagePack => scan_msgpack(bytes, &mut header),
        Encoding::Json => scan_json(bytes, &mut header),
    };
    if let Err(fail) = scanned {
        return Err(DecodeError::new(
            fail.kind,
            header,
            fail.reason.into_owned(),
        ));
    }
    match header.ty {
        Some(ty) => Ok((header.reference, ty)),
        None => Err(DecodeError::new(
            DecodeErrorKind::Invalid,
            header,
            "missing field `type`".to_owned(),
        )),
    }
}

/// The error for a frame whose typed pass failed.
fn body_error(
    reference: Option<Ref>,
    ty: Cow<'_, str>,
    (kind, reason): (DecodeErrorKind, String),
) -> DecodeError {
    DecodeError::new(
        kind,
        Header {
            ty: Some(ty),
            reference,
        },
        reason,
    )
}

fn unknown_type(ty: &str) -> (DecodeErrorKind, String) {
    (
        DecodeErrorKind::UnknownType,
        short(format_args!("unknown type `{}`", ty)),
    )
}

/// The frame's bytes, for the typed pass.
struct Body<'a> {
    bytes: &'a [u8],
    encoding: Encoding,
}

impl Body<'_> {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, (DecodeErrorKind, String)> {
        let parsed = match self.encoding {
            Encoding::MessagePack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(self.bytes);
                // The scan already enforced MAX_DEPTH; this is a backstop.
                de.set_max_depth(MAX_DEPTH + 1);
                T::deserialize(&mut de).map_err(short)
            }
            Encoding::Json => serde_json::from_slice(self.bytes).map_err(short),
        };
        parsed.map_err(|reason| (DecodeErrorKind::Invalid, reason))
    }
}

/// Formats at most [`MAX_REASON_BYTES`], so an error that quotes the input
/// never copies much of it.
fn short(text: impl fmt::Display) -> String {
    struct Bounded(String);

    impl fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = MAX_REASON_BYTES - self.0.len();
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            self.0.push('…');
            Err(fmt::Error)
        }
    }

    let mut out = Bounded(String::new());
    // An Err only means the text was cut.
    let _ = write!(out, "{text}");
    out.0
}

/// Keys of one map kept inline before [`KeySet`] spills to a hash set.
const INLINE_KEYS: usize = 16;

/// The keys seen in one map, to reject duplicates. The first 16 are kept
/// inline (no allocation for real frames); beyond that a hash set.
struct KeySet<'de> {
    inline: [Cow<'de, str>; INLINE_KEYS],
    len: usize,
    spilled: HashSet<Cow<'de, str>>,
}

impl<'de> KeySet<'de> {
    fn new() -> Self {
        Self {
            inline: [const { Cow::Borrowed("") }; INLINE_KEYS],
            len: 0,
            spilled: HashSet::new(),
        }
    }

    fn insert(&mut self, key: Cow<'de, str>) -> Result<(), Fail> {
        if self.inline[..self.len].contains(&key) {
            return Err(Fail::duplicate(&key));
        }
        if self.len < INLINE_KEYS {
            self.inline[self.len] = key;
            self.len += 1;
            return Ok(());
        }
        if self.spilled.contains(&key) {
            return Err(Fail::duplicate(&key));
        }
        self.spilled.insert(key);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// MessagePack scan
// ---------------------------------------------------------------------------

fn scan_msgpack<'de>(bytes: &'de [u8], header: &mut Header<'de>) -> Result<(), Fail> {
    let mut walk = Walk { buf: bytes, pos: 0 };
    // The frame map's entry count is not checked against the bytes left up
    // front, so that a truncated frame still yields the `ref` read before
    // the cut; the walk stops at the first missing byte all the same.
    let len = match Marker::from_u8(walk.byte()?) {
        Marker::FixMap(n) => n.into(),
        Marker::Map16 => walk.u16_len()?,
        Marker::Map32 => walk.u32_len()?,
        _ => return Err(Fail::malformed("a frame must be a map")),
    };
    walk.map(len, 1, Some(header))?;
    if walk.pos != bytes.len() {
        return Err(Fail::malformed("trailing bytes after the frame"));
    }
    Ok(())
}

/// A bounds-checked cursor over one MessagePack value.
struct Walk<'de> {
    buf: &'de [u8],
    pos: usize,
}

fn truncated() -> Fail {
    Fail::malformed("truncated MessagePack")
}

impl<'de> Walk<'de> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, Fail> {
        let b = *self.buf.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], Fail> {
        if n > self.left() {
            return Err(truncated());
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8_len(&mut self) -> Result<usize, Fail> {
        Ok(self.byte()?.into())
    }

    fn u16_len(&mut self) -> Result<usize, Fail> {
        Ok(u16::from_be_bytes(self.array()?).into())
    }

    fn u32_len(&mut self) -> Result<usize, Fail> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| truncated())
    }

    /// The byte length of a str or bin.
    fn data_len(&mut self, marker: Marker) -> Result<usize, Fail> {
        match marker {
            Marker::FixStr(n) => Ok(n.into()),
            Marker::Str8 | Marker::Bin8 => self.u8_len(),
            Marker::Str16 | Marker::Bin16 => self.u16_len(),
            _ => self.u32_len(),
        }
    }

    /// The element count of an array or map, checked against the bytes
    /// left (every element takes at least one byte) before anything else.
    fn count(&mut self, marker: Marker) -> Result<usize, Fail> {
        let (n, per_entry) = match marker {
            Marker::FixArray(n) => (n.into(), 1),
            Marker::FixMap(n) => (n.into(), 2),
            Marker::Array16 => (self.u16_len()?, 1),
            Marker::Map16 => (self.u16_len()?, 2),
            Marker::Array32 => (self.u32_len()?, 1),
            _ => (self.u32_len()?, 2),
        };
        if n.saturating_mul(per_entry) > self.left() {
            return Err(Fail::malformed("length prefix longer than the frame"));
        }
        Ok(n)
    }

    fn str_data(&mut self, marker: Marker) -> Result<&'de str, Fail> {
        let len = self.data_len(marker)?;
        std::str::from_utf8(self.take(len)?).map_err(|_| Fail::malformed("string is not UTF-8"))
    }

    /// Skips one value at `depth` (the frame's own map is depth 1).
    fn value(&mut self, depth: usize) -> Result<(), Fail> {
        let marker = Marker::from_u8(self.byte()?);
        match marker {
            Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => {
                Ok(())
            }
            Marker::U8 | Marker::I8 => self.take(1).map(drop),
            Marker::U16 | Marker::I16 => self.take(2).map(drop),
            Marker::U32 | Marker::I32 => self.take(4).map(drop),
            Marker::U64 | Marker::I64 => self.take(8).map(drop),
            Marker::F32 => finite(f32::from_be_bytes(self.array()?).is_finite()),
            Marker::F64 => finite(f64::from_be_bytes(self.array()?).is_finite()),
            Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => {
                let len = self.data_len(marker)?;
                self.take(len).map(drop)
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                let len = self.count(marker)?;
                if depth > MAX_DEPTH {
                    return Err(Fail::too_deep());
                }
                (0..len).try_for_each(|_| self.value(depth + 1))
            }
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let len = self.count(marker)?;
                self.map(len, depth, None)
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => Err(Fail::malformed("MessagePack ext types are not allowed")),
            Marker::Reserved => Err(Fail::malformed("reserved MessagePack byte 0xc1")),
        }
    }

    /// Walks a map's `len` entries; the frame's own map also fills `header`.
    fn map(
        &mut self,
        len: usize,
        depth: usize,
        mut header: Option<&mut Header<'de>>,
    ) -> Result<(), Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::too_deep());
        }
        let mut keys = KeySet::new();
        for _ in 0..len {
            let marker = Marker::from_u8(self.byte()?);
            let key = match marker {
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                    self.str_data(marker)?
                }
                _ => return Err(Fail::malformed("map keys must be strings")),
            };
            keys.insert(Cow::Borrowed(key))?;
            match (header.as_deref_mut(), key) {
                (Some(h), "type") => h.ty = Some(Cow::Borrowed(self.type_value()?)),
                (Some(h), "ref") => h.reference = Some(self.ref_value()?),
                _ => self.value(depth + 1)?,
            }
        }
        Ok(())
    }

    fn type_value(&mut self) -> Result<&'de str, Fail> {
        let marker = Marker::from_u8(self.byte()?);
        match marker {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                self.str_data(marker)
            }
            _ => Err(Fail::invalid("`type` must be a string")),
        }
    }

    fn ref_value(&mut self) -> Result<Ref, Fail> {
        let marker = Marker::from_u8(self.byte()?);
        let reference = match marker {
            Marker::FixPos(n) => Ref::from_u64(n.into()),
            Marker::U8 => Ref::from_u64(self.byte()?.into()),
            Marker::U16 => Ref::from_u64(u16::from_be_bytes(self.array()?).into()),
            Marker::U32 => Ref::from_u64(u32::from_be_bytes(self.array()?).into()),
            Marker::U64 => Ref::from_u64(u64::from_be_bytes(self.array()?)),
            Marker::FixNeg(n) => Ref::from_i64(n.into()),
            Marker::I8 => Ref::from_i64(i8::from_be_bytes(self.array()?).into()),
            Marker::I16 => Ref::from_i64(i16::from_be_bytes(self.array()?).into()),
            Marker::I32 => Ref::from_i64(i32::from_be_bytes(self.array()?).into()),
            Marker::I64 => Ref::from_i64(i64::from_be_bytes(self.array()?)),
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                Ref::from_string(self.str_data(marker)?)
            }
            _ => None,
        };
        reference.ok_or_else(|| Fail::invalid(INVALID_REF))
    }
}

fn finite(is_finite: bool) -> Result<(), Fail> {
    if is_finite {
        Ok(())
    } else {
        Err(Fail::malformed("NaN and infinities are not allowed"))
    }
}

// ---------------------------------------------------------------------------
// JSON scan
// ---------------------------------------------------------------------------

fn scan_json<'de>(bytes: &'de [u8], header: &mut Header<'de>) -> Result<(), Fail> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut side = Side { header, fail: None };
    let scanned =
        de::Deserializer::deserialize_any(&mut de, JsonFrame(&mut side)).and_then(|()| de.end());
    match scanned {
        Ok(()) => Ok(()),
        // A precise reason from the visitor, unless the JSON itself broke.
        Err(e) if e.is_data() => Err(side.fail.unwrap_or_else(|| Fail::malformed(short(e)))),
        Err(e) => Err(Fail::malformed(short(e))),
    }
}

/// What the JSON visitors share: the envelope and the precise failure.
struct Side<'h, 'de> {
    header: &'h mut Header<'de>,
    fail: Option<Fail>,
}

impl Side<'_, '_> {
    /// Records `fail` and returns the error that stops serde_json.
    fn stop<E: de::Error>(&mut self, fail: Fail) -> E {
        let e = E::custom(&fail.reason);
        self.fail = Some(fail);
        e
    }
}

/// The frame's own map.
struct JsonFrame<'s, 'h, 'de>(&'s mut Side<'h, 'de>);

impl<'de> Visitor<'de> for JsonFrame<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a frame (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        json_map(map, 1, self.0, true)
    }
}

/// Any value below the frame's map.
struct JsonValue<'s, 'h, 'de> {
    depth: usize,
    side: &'s mut Side<'h, 'de>,
}

impl<'de> DeserializeSeed<'de> for JsonValue<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonValue<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        finite(v.is_finite()).map_err(|fail| self.side.stop(fail))
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.side.stop(Fail::too_deep()));
        }
        while seq
            .next_element_seed(JsonValue {
                depth: self.depth + 1,
                side: &mut *self.side,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        json_map(map, self.depth, self.side, false)
    }
}

fn json_map<'de, A: MapAccess<'de>>(
    mut map: A,
    depth: usize,
    side: &mut Side<'_, 'de>,
    top: bool,
) -> Result<(), A::Error> {
    if depth > MAX_DEPTH {
        return Err(side.stop(Fail::too_deep()));
    }
    let mut keys = KeySet::new();
    while let Some(key) = map.next_key_seed(JsonKey)? {
        let (is_type, is_ref) = (top && key == "type", top && key == "ref");
        if let Err(fail) = keys.insert(key) {
            return Err(side.stop(fail));
        }
        if is_type {
            match map.next_value_seed(JsonKey) {
                Ok(ty) => side.header.ty = Some(ty),
                Err(e) => return Err(side.stop_if_data(e, "`type` must be a string")),
            }
        } else if is_ref {
            match map.next_value::<Ref>() {
                Ok(r) => side.header.reference = Some(r),
                Err(e) => return Err(side.stop_if_data(e, INVALID_REF)),
            }
        } else {
            map.next_value_seed(JsonValue {
                depth: depth + 1,
                side: &mut *side,
            })?;
        }
    }
    Ok(())
}

impl Side<'_, '_> {
    /// Records an `Invalid` reason for `e`. If `e` was really a syntax
    /// error, [`scan_json`] ignores the record (it is not a data error).
    fn stop_if_data<E: de::Error>(&mut self, e: E, reason: &'static str) -> E {
        self.fail = Some(Fail::invalid(reason));
        e
    }
}

/// A map key, or the value of `type`: a string, borrowed when it has no
/// escapes.
struct JsonKey;

impl<'de> DeserializeSeed<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}
