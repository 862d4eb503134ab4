//! Server frames read lightly: the few fields the tester records, borrowed
//! from the frame's bytes, every other value skipped without decoding.
//!
//! At hundreds of thousands of deliveries per second on one core, decoding
//! whole typed frames (every id parsed, every string copied and checked for
//! UTF-8) took most of the tester's time and made the tester, not the server
//! under test, the limit of the fanout runs. Every target's frames go
//! through this same reader, so their costs on the tester are alike.
//!
//! The frames are MessagePack maps: Courier's (`type`, `ref`, `code`,
//! `data.text`, or `x` of a compact `m`, see docs/protocol.md) and the
//! peers' (`type`, `text`).

use rmp::Marker;

/// What the tester needs of one frame.
#[derive(Debug, Default, PartialEq)]
pub struct Light<'a> {
    pub kind: &'a [u8],
    /// An integer `ref` (a string `ref` is not one of the tester's).
    pub reference: Option<u64>,
    /// The raw MessagePack value of `code` (an error frame's).
    pub code: Option<&'a [u8]>,
    /// `text`, or `data.text` (the bytes of the string, not checked).
    pub text: Option<&'a [u8]>,
}

/// Reads a frame; `None` when it is not a MessagePack map of that shape.
pub fn read(bytes: &[u8]) -> Option<Light<'_>> {
    let mut c = Cursor(bytes);
    let mut light = Light::default();
    for _ in 0..c.map_len()? {
        match c.str()? {
            b"type" => light.kind = c.str()?,
            b"ref" => light.reference = c.int(),
            b"code" => {
                let start = c.0;
                c.skip()?;
                light.code = Some(&start[..start.len() - c.0.len()]);
            }
            // `text`: the peers' frames; `x`: Courier's compact `m`.
            b"text" | b"x" => light.text = Some(c.str()?),
            b"data" if c.peek_map() => {
                for _ in 0..c.map_len()? {
                    match c.str()? {
                        b"text" => light.text = Some(c.str()?),
                        _ => c.skip()?,
                    }
                }
            }
            _ => c.skip()?,
        }
    }
    Some(light)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A big-endian unsigned integer of `n` bytes.
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |v, b| v << 8 | u64::from(*b)))
    }

    fn marker(&mut self) -> Option<Marker> {
        Some(Marker::from_u8(self.take(1)?[0]))
    }

    fn peek_map(&self) -> bool {
        matches!(
            self.0.first().map(|b| Marker::from_u8(*b)),
            Some(Marker::FixMap(_) | Marker::Map16 | Marker::Map32)
        )
    }

    fn map_len(&mut self) -> Option<u64> {
        match self.marker()? {
            Marker::FixMap(n) => Some(n.into()),
            Marker::Map16 => self.be(2),
            Marker::Map32 => self.be(4),
            _ => None,
        }
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.marker()? {
            Marker::FixStr(n) => n.into(),
            Marker::Str8 => self.be(1)?,
            Marker::Str16 => self.be(2)?,
            Marker::Str32 => self.be(4)?,
            _ => return None,
        };
        self.take(len as usize)
    }

    /// A non-negative integer; anything else is skipped and gives `None`.
    fn int(&mut self) -> Option<u64> {
        let (width, signed) = match Marker::from_u8(*self.0.first()?) {
            Marker::FixPos(n) => {
                self.take(1);
                return Some(n.into());
            }
            Marker::U8 => (1, false),
            Marker::U16 => (2, false),
            Marker::U32 => (4, false),
            Marker::U64 => (8, false),
            Marker::I8 => (1, true),
            Marker::I16 => (2, true),
            Marker::I32 => (4, true),
            Marker::I64 => (8, true),
            _ => {
                self.skip();
                return None;
            }
        };
        self.take(1);
        let v = self.be(width)?;
        let negative = signed && v >> (8 * width - 1) & 1 == 1;
        (!negative).then_some(v)
    }

    /// Skips one value of any type.
    fn skip(&mut self) -> Option<()> {
        let (bytes, items) = match self.marker()? {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n.into(), 0),
            Marker::Str8 | Marker::Bin8 => (self.be(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (self.be(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (self.be(4)?, 0),
            Marker::FixArray(n) => (0, n.into()),
            Marker::Array16 => (0, self.be(2)?),
            Marker::Array32 => (0, self.be(4)?),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Map16 => (0, 2 * self.be(2)?),
            Marker::Map32 => (0, 2 * self.be(4)?),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.be(1)? + 1, 0),
            Marker::Ext16 => (self.be(2)? + 1, 0),
            Marker::Ext32 => (self.be(4)? + 1, 0),
            Marker::Reserved => return None,
        };
        self.take(bytes as usize)?;
        for _ in 0..items {
            self.skip()?;
        }
        Some(())
    }
}
