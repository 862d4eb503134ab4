//! The frame decoders on arbitrary bytes, in both encodings: nothing
//! panics; a client frame that decodes re-encodes, in either encoding, to
//! bytes that decode to the same frame; an error is short and answerable;
//! the server-frame decoder (the Rust client's) never panics either.

#![no_main]

use courier_protocol::codec::{
    decode_client, decode_server, encode_client, encode_server, Encoding,
};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [Encoding; 2] = [Encoding::MessagePack, Encoding::Json];

fuzz_target!(|data: &[u8]| {
    for encoding in ENCODINGS {
        match decode_client(data, encoding) {
            Ok(frame) => {
                for again in ENCODINGS {
                    let bytes = encode_client(&frame, again);
                    let decoded = decode_client(&bytes, again);
                    assert_eq!(
                        decoded.as_ref(),
                        Ok(&frame),
                        "{encoding:?} frame re-encoded as {again:?}: {:?}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
            Err(e) => {
                assert!(e.reason().len() <= 163, "long reason: {}", e.reason());
                assert!(e.frame_type().is_none_or(|t| t.len() <= 64));
                let answer = e.to_error_frame();
                for again in ENCODINGS {
                    let bytes = encode_server(&answer, again);
                    assert_eq!(decode_server(&bytes, again).as_ref(), Ok(&answer));
                }
            }
        }
        if let Ok(frame) = decode_server(data, encoding) {
            // Floats in `data` may not survive JSON exactly; the frame must
            // still re-encode and decode.
            for again in ENCODINGS {
                let bytes = encode_server(&frame, again);
                assert!(
                    decode_server(&bytes, again).is_ok(),
                    "{encoding:?} server frame re-encoded as {again:?} does not decode: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
});
