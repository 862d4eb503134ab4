//! Server-to-client WebSocket frames, built once as the bytes that go on
//! the wire.
//!
//! Frames from a server are never masked (RFC 6455 section 5.1), so a
//! push's complete frame, header and payload, is the same for every
//! recipient: it is built here once and each connection's queue holds a
//! reference to it. Only unfragmented frames are built.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// The longest header: 2 bytes plus an 8-byte extended length.
const MAX_HEADER: usize = 10;

/// One final, unmasked frame carrying `payload`.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(MAX_HEADER + payload.len());
    buf.put_u8(0x80 | opcode as u8);
    match payload.len() {
        n @ 0..=125 => buf.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            buf.put_u8(126);
            buf.put_u16(n as u16);
        }
        n => {
            buf.put_u8(127);
            buf.put_u64(n as u64);
        }
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with `code` and a reason cut to the 123 bytes a control
/// frame leaves for it (at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// An empty ping.
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | Opcode::Ping as u8, 0])
}

/// Whether `frame` is a close frame.
pub fn is_close(frame: &[u8]) -> bool {
    frame
        .first()
        .is_some_and(|b| b & 0x0F == Opcode::Close as u8)
}

/// The close code of `bytes` when they start with a close frame.
pub fn close_code(bytes: &[u8]) -> Option<u16> {
    if bytes.first()? & 0x0F != Opcode::Close as u8 {
        return None;
    }
    match bytes.get(1)? & 0x7F {
        0 => Some(1005),
        n if n < 126 => Some(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Parses our bytes with tungstenite's own frame reader.
    fn parse(bytes: &[u8]) -> (FrameHeader, usize) {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("header parses")
            .expect("header complete");
        assert_eq!(
            cursor.position() as usize + len as usize,
            bytes.len(),
            "length matches"
        );
        (header, len as usize)
    }

    #[test]
    fn every_length_class_parses() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload = vec![7u8; len];
            let bytes = frame(Opcode::Binary, &payload);
            let (header, parsed) = parse(&bytes);
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert_eq!(header.mask, None);
            assert_eq!(parsed, len);
            assert_eq!(&bytes[bytes.len() - len..], &payload[..]);
        }
    }

    #[test]
    fn close_frames_carry_their_code() {
        let bytes = close(4009, "slow consumer");
        assert_eq!(close_code(&bytes), Some(4009));
        let long = "é".repeat(100);
        let bytes = close(1001, &long);
        let (_, len) = parse(&bytes);
        assert!(len <= 125);
        assert!(std::str::from_utf8(&bytes[4..]).is_ok());
        assert_eq!(close_code(&frame(Opcode::Binary, b"x")), None);
        assert_eq!(close_code(&ping()), None);
        assert!(is_close(&close(1000, "")));
        assert!(!is_close(&ping()) && !is_close(&[]));
    }
}
