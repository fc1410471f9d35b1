//! libFuzzer entry point of `fuzz/cases/reference.rs` (see there).

#![no_main]

#[path = "../cases/reference.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
