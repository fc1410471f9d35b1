//! candle-nn peer: `candle_nn::rnn::{LSTM, GRU}` on the CPU device, f32, biases on,
//! batch-major input; the timed call runs the whole sequence from a zero state and stacks
//! the hidden states into the `[B, T, H]` output. candle-nn has no SimpleRNN and no
//! training path comparable to BPTT with every gradient here, so those rows are "n/a".
//!
//! `--threads N` sets RAYON_NUM_THREADS (candle's CPU matmul reads it) before any candle call.

#[path = "../common.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::rnn::{GRUConfig, LSTMConfig, RNN};
use candle_nn::{VarBuilder, VarMap};

const VERSION: &str = "0.11";

fn run(a: &common::Args) -> candle_core::Result<Option<(f64, f64, f64)>> {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let x = Tensor::from_vec(common::input(a), (a.batch, a.seq, a.input), &dev)?;
    let t = match a.cell.as_str() {
        "lstm" => {
            let m = candle_nn::rnn::lstm(a.input, a.hidden, LSTMConfig::default(), vb)?;
            common::measure(a.min_time, || {
                let states = m.seq(&x).unwrap();
                let hs: Vec<Tensor> = states.iter().map(|s| s.h.clone()).collect();
                std::hint::black_box(Tensor::stack(&hs, 1).unwrap());
            })
        }
        "gru" => {
            let m = candle_nn::rnn::gru(a.input, a.hidden, GRUConfig::default(), vb)?;
            common::measure(a.min_time, || {
                let states = m.seq(&x).unwrap();
                let hs: Vec<Tensor> = states.iter().map(|s| s.h.clone()).collect();
                std::hint::black_box(Tensor::stack(&hs, 1).unwrap());
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(t))
}

fn main() -> std::process::ExitCode {
    let a = match common::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer-candle: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before any candle call: its CPU backend reads this once.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    if a.mode != "infer" {
        common::print_na("candle", &a, "candle-nn: no training benchmark (inference only)");
        return std::process::ExitCode::SUCCESS;
    }
    match run(&a) {
        Ok(Some(t)) => common::print_ok("candle", VERSION, &a, t),
        Ok(None) => common::print_na("candle", &a, "candle-nn has no such cell"),
        Err(e) => {
            eprintln!("peer-candle: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}
