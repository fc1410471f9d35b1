//! The library at work: PyTorch-layout LSTM weights recorded from a real `torch.nn.LSTM` are
//! loaded, run over a batch of sequences, trained through BPTT, compared with PyTorch's own
//! outputs and gradients, gradient-checked, and then timed on larger shapes.
//!
//! `cargo run --release --example demo [-- FIXTURE.safetensors]`

use std::error::Error;
use std::time::Instant;

use fused_rnn::cell::Cell;
use fused_rnn::gradcheck::{GradcheckOptions, gradcheck};
use fused_rnn::layout::TorchWeights;
use fused_rnn::prelude::*;
use safetensors::SafeTensors;

const DEFAULT_FIXTURE: &str =
    "tests/fixtures/v1/torch_lstm_f64_T5_B3_I7_H9_seq_h0_grad_dstate.safetensors";

/// One f64 tensor of a fixture, with its shape.
fn tensor(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<f64>, Vec<usize>), Box<dyn Error>> {
    let t = st.tensor(name)?;
    let data = t
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Ok((data, t.shape().to_vec()))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_FIXTURE.to_string());
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let get = |n: &str| tensor(&st, n);

    // 1. PyTorch state_dict tensors -> an LSTM in the library's layout.
    let (x, xs) = get("x")?;
    let (b, t, i) = (xs[0], xs[1], xs[2]);
    let (weight_hh, whs) = get("weight_hh_l0")?;
    let h = whs[1];
    let torch = TorchWeights {
        weight_ih: get("weight_ih_l0")?.0,
        weight_hh,
        bias_ih: Some(get("bias_ih_l0")?.0),
        bias_hh: Some(get("bias_hh_l0")?.0),
    };
    let cell = DynLstm::<f64>::from_torch(Dyn(i), Dyn(h), LstmKind::default(), &torch)?;
    println!("loaded {path}\n  LSTM I={i} H={h}, batch B={b}, T={t} (PyTorch gate order i,f,g,o)");

    // 2. Recorded forward and BPTT, batch-major like torch's batch_first.
    let spec = SeqSpec::new(t, b).layout(Layout::BatchMajor);
    let s0 = [get("h0")?.0, get("c0")?.0].concat();
    let mut tape = vec![0.0; seq::tape_len(&cell, &spec)?];
    let out = seq::forward_train(&cell, &spec, &x, Some(&s0), &mut tape)?;
    let d_final = [get("dh_n")?.0, get("dc_n")?.0].concat();
    let grads = seq::bptt(
        &cell,
        &spec,
        &x,
        Some(&s0),
        &tape,
        &get("dy")?.0,
        Some(&d_final),
    )?;

    // 3. Against what PyTorch computed.
    let torch_grads = cell.torch_grads(&grads.params)?;
    let final_state = [get("h_n")?.0, get("c_n")?.0].concat();
    let d_s0 = [get("grad.h0")?.0, get("grad.c0")?.0].concat();
    println!("  max |ours - PyTorch|:");
    for (name, ours, theirs) in [
        ("y", out.y.clone(), get("y")?.0),
        ("h_n, c_n", out.final_state.clone(), final_state),
        ("grad x", grads.dx.clone(), get("grad.x")?.0),
        ("grad h0, c0", grads.d_initial_state.clone(), d_s0),
        (
            "grad weight_ih",
            torch_grads.weight_ih,
            get("grad.weight_ih_l0")?.0,
        ),
        (
            "grad weight_hh",
            torch_grads.weight_hh,
            get("grad.weight_hh_l0")?.0,
        ),
        (
            "grad bias_ih",
            torch_grads.bias_ih.unwrap_or_default(),
            get("grad.bias_ih_l0")?.0,
        ),
        (
            "grad bias_hh",
            torch_grads.bias_hh.unwrap_or_default(),
            get("grad.bias_hh_l0")?.0,
        ),
    ] {
        let diff = max_abs_diff(&ours, &theirs);
        println!("    {name:<15} {diff:.2e}");
        if diff.is_nan() || diff >= 1e-9 {
            return Err(format!("{name} differs from PyTorch by {diff:e}").into());
        }
    }

    // 4. Finite differences over every input, state and weight.
    let started = Instant::now();
    let report = gradcheck(&cell, &spec, &x, Some(&s0), &GradcheckOptions::default())?;
    println!(
        "  gradcheck ({:.2} s): worst error {:.2e}\n{report}",
        started.elapsed().as_secs_f64(),
        report.worst()
    );
    if !report.passed(1e-6) {
        return Err("gradcheck failed".into());
    }

    // 5. Timings, f32, one thread: best of 5 runs.
    println!("timings (f32, 1 thread, best of 5; FLOPs as 2·B·(I+H)·G·H per step, training 3×):");
    for (t, b, i, h) in [(100, 1, 256, 256), (50, 16, 512, 512)] {
        time_cell(
            "lstm",
            &DynLstm::<f32>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1)?,
            4,
            t,
            b,
        )?;
        time_cell(
            "gru",
            &DynGru::<f32>::random(Dyn(i), Dyn(h), GruKind::default(), true, 1)?,
            3,
            t,
            b,
        )?;
    }
    Ok(())
}

fn time_cell<C: Cell<f32>>(
    name: &str,
    cell: &C,
    gates: usize,
    t: usize,
    b: usize,
) -> Result<(), Box<dyn Error>> {
    let (i, h) = (cell.input_size(), cell.hidden_size());
    let spec = SeqSpec::new(t, b).layout(Layout::BatchMajor);
    let x: Vec<f32> = (0..t * b * i)
        .map(|k| ((k % 101) as f32 - 50.0) / 60.0)
        .collect();
    let dy = vec![1e-2f32; t * b * h];
    let mut tape = vec![0.0; seq::tape_len(cell, &spec)?];
    let best =
        |f: &mut dyn FnMut() -> Result<(), fused_rnn::Error>| -> Result<f64, fused_rnn::Error> {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let s = Instant::now();
                f()?;
                best = best.min(s.elapsed().as_secs_f64());
            }
            Ok(best)
        };
    let infer = best(&mut || seq::forward(cell, &spec, &x, None).map(drop))?;
    let train = best(&mut || {
        seq::forward_train(cell, &spec, &x, None, &mut tape)?;
        seq::bptt(cell, &spec, &x, None, &tape, &dy, None).map(drop)
    })?;
    let flops = 2.0 * (b * (i + h) * gates * h * t) as f64;
    println!(
        "  {name:<4} T={t:<3} B={b:<2} I={i:<3} H={h:<3}  infer {:>8.3} ms ({:>5.1} GFLOP/s)   train {:>8.3} ms ({:>5.1} GFLOP/s)",
        infer * 1e3,
        flops / infer * 1e-9,
        train * 1e3,
        3.0 * flops / train * 1e-9
    );
    Ok(())
}
