//! The connection state machine, end to end: the input is a sequence of
//! WebSocket operations ([`courier_fuzz::parse`]) played on a fresh
//! connection to a real in-process Courier server (booted once per process,
//! SQLite in a temporary directory); then a separate, well-behaved client
//! must still be able to send and receive. See `courier_fuzz::harness` for
//! every check.

#![no_main]

use courier_fuzz::harness::Harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ops = courier_fuzz::parse(data);
    Harness::get().run(&ops);
});
