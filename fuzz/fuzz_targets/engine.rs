//! libFuzzer entry point of `fuzz/cases/engine.rs` (see there).

#![no_main]

#[path = "../cases/engine.rs"]
mod case;

libfuzzer_sys::fuzz_target!(|data: &[u8]| case::run(data));
