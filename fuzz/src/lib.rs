//! # courier-fuzz
//!
//! What the fuzz targets share: the byte format of a `connection` input, the
//! fixed ids of the fuzz server's users and channels, and the seed corpus.
//!
//! # Layout
//! - [`ids`]: users, channels and placeholders the seeds refer to.
//! - [`Op`], [`parse`], [`encode`]: a `connection` input is a sequence of
//!   operations on one WebSocket.
//! - [`harness`]: the in-process server and the client that drives it.
//! - [`seeds`]: the seed corpus of both targets.

#![forbid(unsafe_code)]

pub mod harness;
pub mod seeds;

/// Fixed ids: the fuzz server creates its users and channels with these, so
/// that seeds (and the fuzzer) can name them.
pub mod ids {
    use uuid::Uuid;

    /// The user the fuzzed connection authenticates as (role `user`).
    pub const FUZZER: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_f001);
    /// The well-behaved user of the health check (role `user`).
    pub const HEALTHY: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_f002);
    /// Public; the fuzzer may join it.
    pub const PUBLIC: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_c001);
    /// Private; the fuzzer is a member.
    pub const MEMBER: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_c002);
    /// Private to the healthy user, who stays joined: nothing of the
    /// fuzzer's may ever reach it.
    pub const FOREIGN: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_c003);
    /// Broadcast; the fuzzer is a plain member (reads, never posts).
    pub const BROADCAST: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_c004);
    /// Stands for the healthy user's message in [`MEMBER`], whose id the
    /// server assigns at boot: the harness replaces this id's text (36
    /// bytes, so MessagePack length prefixes stay right) with the real one.
    pub const MESSAGE_PLACEHOLDER: Uuid =
        Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_a001);
}

/// Frames larger than this are cut (the server's limit is 64 KiB; see
/// [`Op::Oversize`] for frames over it).
const MAX_BODY: usize = u16::MAX as usize;

/// One thing the fuzzed client does on its WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A binary frame (MessagePack).
    Binary(Vec<u8>),
    /// A text frame (JSON). Not UTF-8: sent anyway, as a raw text frame.
    Text(Vec<u8>),
    /// `authenticate` with the fuzzer's valid token, in MessagePack or
    /// JSON; `corrupt` flips the token's character at that index.
    Authenticate {
        /// A binary MessagePack frame rather than JSON text.
        msgpack: bool,
        /// Which character of the token to change, if any.
        corrupt: Option<u8>,
    },
    /// One message in two fragments (a first frame and a continuation).
    Fragmented {
        /// Text rather than binary.
        text: bool,
        /// The whole message.
        body: Vec<u8>,
    },
    /// A WebSocket Ping control frame with this payload.
    Ping(Vec<u8>),
    /// A WebSocket Pong control frame with this payload.
    Pong(Vec<u8>),
    /// A frame with a header of the fuzzer's choosing: bit 7 FIN, bits 6-4
    /// RSV1-3, bits 3-0 the opcode (reserved ones included).
    Raw {
        /// The header's first byte.
        header: u8,
        /// The payload.
        body: Vec<u8>,
    },
    /// `ping` with a ref of the harness's own, then wait for its `pong` (or
    /// the close): everything sent before has been handled.
    Sync,
    /// A close frame from the client; nothing is sent after it.
    Close,
    /// A binary frame one byte over the server's frame limit, made of this
    /// body repeated (the server closes with 1009).
    Oversize(Vec<u8>),
    /// 10 ms without sending or reading: the server handles what it got
    /// (and may close) while this client still considers the connection
    /// open and goes on sending.
    Pause,
}

/// Operation tags, the low nibble of an op's first byte.
mod tag {
    pub(super) const BINARY: u8 = 0;
    pub(super) const TEXT: u8 = 1;
    pub(super) const AUTHENTICATE: u8 = 2;
    pub(super) const FRAGMENTED: u8 = 3;
    pub(super) const PING: u8 = 4;
    pub(super) const PONG: u8 = 5;
    pub(super) const RAW: u8 = 6;
    pub(super) const SYNC: u8 = 7;
    pub(super) const CLOSE: u8 = 8;
    pub(super) const OVERSIZE: u8 = 9;
    pub(super) const PAUSE: u8 = 10;
    /// Tags are taken modulo this.
    pub(super) const COUNT: u8 = 11;
}

/// Flag bits in the high nibble of an op's first byte.
const FLAG_A: u8 = 0x10;
const FLAG_B: u8 = 0x20;

/// Reads a `connection` input: a sequence of ops, each a tag byte (low
/// nibble: which op, modulo 11; high nibble: flags) and, for ops with a
/// body, a little-endian `u16` length and that many bytes (fewer when the
/// input ends first). Every byte string is a valid input.
///
/// | tag | op | flags | after the tag |
/// |---|---|---|---|
/// | 0 | binary frame | | len, body |
/// | 1 | text frame | | len, body |
/// | 2 | authenticate (valid token) | A: MessagePack; B: corrupt the token | with B: one byte, the index |
/// | 3 | fragmented message | A: text | len, body |
/// | 4 | Ping control frame | | len, body |
/// | 5 | Pong control frame | | len, body |
/// | 6 | raw frame | | header byte, len, body |
/// | 7 | sync (`ping`, await `pong`) | | |
/// | 8 | close | | |
/// | 9 | oversize binary frame | | len, body |
/// | 10 | pause 10 ms | | |
pub fn parse(mut data: &[u8]) -> Vec<Op> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
        let n = n.min(data.len());
        let (head, rest) = data.split_at(n);
        *data = rest;
        head
    }
    fn body(data: &mut &[u8]) -> Vec<u8> {
        let len = match take(data, 2) {
            [lo, hi] => usize::from(u16::from_le_bytes([*lo, *hi])),
            [lo] => usize::from(*lo),
            _ => 0,
        };
        take(data, len.min(MAX_BODY)).to_vec()
    }

    let mut ops = Vec::new();
    while let Some((&first, rest)) = data.split_first() {
        data = rest;
        let (a, b) = (first & FLAG_A != 0, first & FLAG_B != 0);
        let op = match (first & 0x0f) % tag::COUNT {
            tag::BINARY => Op::Binary(body(&mut data)),
            tag::TEXT => Op::Text(body(&mut data)),
            tag::AUTHENTICATE => Op::Authenticate {
                msgpack: a,
                corrupt: if b {
                    Some(take(&mut data, 1).first().copied().unwrap_or(0))
                } else {
                    None
                },
            },
            tag::FRAGMENTED => Op::Fragmented {
                text: a,
                body: body(&mut data),
            },
            tag::PING => Op::Ping(body(&mut data)),
            tag::PONG => Op::Pong(body(&mut data)),
            tag::RAW => Op::Raw {
                header: take(&mut data, 1).first().copied().unwrap_or(0),
                body: body(&mut data),
            },
            tag::SYNC => Op::Sync,
            tag::CLOSE => Op::Close,
            tag::OVERSIZE => Op::Oversize(body(&mut data)),
            _ => Op::Pause,
        };
        ops.push(op);
    }
    ops
}

/// Writes ops in the format [`parse`] reads (bodies over 64 KiB are cut).
pub fn encode(ops: &[Op]) -> Vec<u8> {
    fn body(out: &mut Vec<u8>, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(MAX_BODY)];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Binary(b) => {
                out.push(tag::BINARY);
                body(&mut out, b);
            }
            Op::Text(b) => {
                out.push(tag::TEXT);
                body(&mut out, b);
            }
            Op::Authenticate { msgpack, corrupt } => {
                let a = if *msgpack { FLAG_A } else { 0 };
                match corrupt {
                    None => out.push(tag::AUTHENTICATE | a),
                    Some(i) => out.extend_from_slice(&[tag::AUTHENTICATE | a | FLAG_B, *i]),
                }
            }
            Op::Fragmented { text, body: b } => {
                out.push(tag::FRAGMENTED | if *text { FLAG_A } else { 0 });
                body(&mut out, b);
            }
            Op::Ping(b) => {
                out.push(tag::PING);
                body(&mut out, b);
            }
            Op::Pong(b) => {
                out.push(tag::PONG);
                body(&mut out, b);
            }
            Op::Raw { header, body: b } => {
                out.extend_from_slice(&[tag::RAW, *header]);
                body(&mut out, b);
            }
            Op::Sync => out.push(tag::SYNC),
            Op::Close => out.push(tag::CLOSE),
            Op::Oversize(b) => {
                out.push(tag::OVERSIZE);
                body(&mut out, b);
            }
            Op::Pause => out.push(tag::PAUSE),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_is_the_identity() {
        let ops = vec![
            Op::Authenticate {
                msgpack: true,
                corrupt: None,
            },
            Op::Authenticate {
                msgpack: false,
                corrupt: Some(9),
            },
            Op::Binary(vec![0x80]),
            Op::Text(b"{}".to_vec()),
            Op::Fragmented {
                text: true,
                body: b"{\"type\":\"ping\"}".to_vec(),
            },
            Op::Ping(vec![1, 2]),
            Op::Pong(vec![]),
            Op::Raw {
                header: 0x83,
                body: vec![0; 3],
            },
            Op::Sync,
            Op::Oversize(b"x".to_vec()),
            Op::Pause,
            Op::Close,
        ];
        assert_eq!(parse(&encode(&ops)), ops);
    }

    #[test]
    fn any_bytes_parse() {
        for input in [&[][..], &[0], &[0, 5], &[6], &[0xff; 7], &[2 | FLAG_B]] {
            let _ = parse(input);
        }
    }
}
