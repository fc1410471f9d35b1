//! tract peer: loads an ONNX file exported by `benches/peers/export_onnx.py` (one real
//! LSTM / GRU / RNN operator, batch-first wrapper), fixes the input fact to `[B, T, I]` f32,
//! optimises it and times `run` on the same deterministic input as fused-rnn's bench.
//! Inference only. `--threads N` (N > 1) installs tract-linalg's N-thread executor.

#[path = "../common.rs"]
mod common;

use tract_onnx::prelude::*;

const VERSION: &str = "0.23";

fn run(a: &common::Args) -> TractResult<(f64, f64, f64)> {
    if a.threads > 1 {
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(a.threads),
        );
    }
    let path = a.onnx.as_ref().ok_or_else(|| tract_onnx::prelude::tract_data::internal::format_err!("--onnx FILE is required"))?;
    let model = tract_onnx::onnx()
        .model_for_path(path)?
        .with_input_fact(0, f32::fact([a.batch, a.seq, a.input]).into())?
        .into_optimized()?
        .into_runnable()?;
    let x = tract_ndarray::Array3::from_shape_vec((a.batch, a.seq, a.input), common::input(a))?
        .into_tensor();
    let x: TValue = x.into();
    Ok(common::measure(a.min_time, || {
        let out = model.run(tvec!(x.clone())).unwrap();
        std::hint::black_box(out);
    }))
}

fn main() -> std::process::ExitCode {
    let a = match common::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer-tract: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if a.mode != "infer" {
        common::print_na("tract", &a, "tract: inference only");
        return std::process::ExitCode::SUCCESS;
    }
    match run(&a) {
        Ok(t) => common::print_ok("tract", VERSION, &a, t),
        Err(e) => {
            eprintln!("peer-tract: {e:?}");
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}
