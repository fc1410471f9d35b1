//! libFuzzer entry point of `fuzz/cases/layouts.rs` (see there).

#![no_main]

#[path = "../cases/layouts.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
