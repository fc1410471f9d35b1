//! Runs the conformance fixtures of a directory (format: `docs/FIXTURES.md`) against the crate.
//!
//! ```text
//! cargo run --release --example conformance -- DIR
//! cargo run --release --features cuda --example conformance -- --backend cuda DIR
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

const USAGE: &str = "usage: cargo run --release --example conformance -- [--backend cuda] DIR";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--backend cuda`: the GPU engine (exit 2 with the reason when there is no GPU).
    if let Some(at) = args.iter().position(|a| a == "--backend") {
        let name = args.get(at + 1).cloned().unwrap_or_default();
        args.drain(at..(at + 2).min(args.len()));
        if let Err(why) = select_backend(&name) {
            eprintln!("conformance: {why}");
            return ExitCode::from(2);
        }
    }
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

/// Selects the engine named by `--backend` (only `cuda`; the CPU kernels are chosen with
/// `FUSED_RNN_BACKEND`).
fn select_backend(name: &str) -> Result<(), String> {
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => {
            let device = runner::engine::use_cuda().map_err(|e| format!("--backend cuda: {e}"))?;
            println!("backend: cuda ({device})");
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err("--backend cuda: built without the `cuda` feature".into()),
        other => Err(format!("unknown --backend `{other}`, expected: cuda")),
    }
}
