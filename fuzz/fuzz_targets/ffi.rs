//! libFuzzer driver for `entry/ffi.rs`; the same entry function replays the
//! committed corpus on stable (see `fuzz/README.md`).
#![no_main]

#[path = "../entry/ffi.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::run(data));
