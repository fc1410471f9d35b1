//! The conformance-fixture loader (the runner shared by `tests/conformance.rs` and
//! `examples/conformance.rs`) on arbitrary bytes: every file is reported as PASS, FAIL or
//! SKIP with a reason, and nothing inside the library panics (the runner turns a panic into
//! a failure whose reason starts with "panicked", which this target rejects).
//!
//! Seed it with the shipped fixtures to get past the header:
//! `cargo fuzz run --sanitizer none fixtures fuzz/corpus/fixtures tests/fixtures/v1 --
//! -max_total_time=60`

#[path = "../../tests/conformance/runner.rs"]
mod runner;

/// Runs one input.
pub fn run(data: &[u8]) {
    // The runner reads files: one per fuzzing thread and process.
    thread_local! {
        static PATH: std::path::PathBuf = std::env::temp_dir().join(format!(
            "fused-rnn-fuzz-{}-{:?}.safetensors",
            std::process::id(),
            std::thread::current().id()
        ));
    }
    PATH.with(|path| {
        std::fs::write(path, data).expect("the temporary directory is writable");
        let report = runner::run_file(path);
        if let runner::Outcome::Fail(why) = &report.outcome {
            assert!(!why.starts_with("panicked"), "{why}");
        }
    });
}
