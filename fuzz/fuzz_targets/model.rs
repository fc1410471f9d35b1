//! libFuzzer entry point of `fuzz/cases/model.rs` (see there).

#![no_main]

#[path = "../cases/model.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
