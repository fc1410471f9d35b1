//! libFuzzer entry point of `fuzz/cases/fixtures.rs` (see there).

#![no_main]

#[path = "../cases/fixtures.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
