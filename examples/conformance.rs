//! Runs the conformance fixtures of a directory (format: `docs/FIXTURES.md`) against the crate.
//!
//! ```text
//! cargo run --release --example conformance -- DIR
//! ```
//!
//! Prints one line per case (`PASS name`, `FAIL name: …`, `SKIP name: …`) and closes with
//! `N passed, N failed, N skipped`. Exits with 1 when a case failed, 2 on a usage error or a
//! directory that is missing or holds no `*.safetensors` fixture.

#[path = "../tests/conformance/runner.rs"]
mod runner;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo run --release --example conformance -- DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [dir] => dir,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Which kernels are checked (FUSED_RNN_BACKEND selects another).
    if writeln!(out, "backend: {}", fused_rnn::active_backend()).is_err() {
        return ExitCode::from(2);
    }
    let summary = match runner::run_dir(Path::new(dir), &mut out) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("conformance: {why}");
            return ExitCode::from(2);
        }
    };
    if writeln!(out, "{}", summary.line()).is_err() {
        return ExitCode::from(2);
    }
    if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
