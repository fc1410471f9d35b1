//! libFuzzer entry point of `fuzz/cases/capi.rs` (see there).

#![no_main]

#[path = "../cases/capi.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
