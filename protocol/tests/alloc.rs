//! Decoding never allocates from a length prefix whose bytes are not there.
//! Its own test binary: the counting allocator sees the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use courier_protocol::codec::{decode_client, decode_server, Encoding};

/// Records the largest single allocation.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn huge_length_prefixes_allocate_nothing_large() {
    let ff = [0xff, 0xff, 0xff, 0xff];
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for marker in [0xdb, 0xc6, 0xdd, 0xdf, 0xc9] {
        // As the whole frame.
        cases.push([&[marker][..], &ff].concat());
        // As the value of `text` in a send_message, after the ref and type.
        let mut frame = vec![
            0x84, 0xa3, b'r', b'e', b'f', 0x07, 0xa4, b't', b'y', b'p', b'e',
        ];
        frame.extend_from_slice(
            b"\xacsend_message\xa9channelId\xd9\x2400000000-0000-0000-0000-000000000001\xa4text",
        );
        frame.push(marker);
        frame.extend_from_slice(&ff);
        cases.push(frame);
    }
    // The typed pass of the server side: history with messages as array32.
    let mut history = b"\x83\xa4type\xa7history\xa9channelId\xd9\x2400000000-0000-0000-0000-000000000001\xa8messages".to_vec();
    history.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    cases.push(history);

    LARGEST.store(0, Ordering::Relaxed);
    for bytes in &cases {
        assert!(
            decode_client(bytes, Encoding::MessagePack).is_err(),
            "{bytes:02x?}"
        );
        assert!(
            decode_server(bytes, Encoding::MessagePack).is_err(),
            "{bytes:02x?}"
        );
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest > 0, "the allocator is counting");
    assert!(
        largest < 64 * 1024,
        "largest allocation while decoding: {largest} bytes"
    );
}
