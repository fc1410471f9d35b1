//! Writes the cases `examples/c/rnn_check.c` runs through the C ABI: for an LSTM (`f32`,
//! PyTorch weights) and a GRU (`f64`, Keras weights), the weights, inputs and upstream
//! gradients, and the outputs and gradients the Rust API computes from them.
//!
//! `cargo run --release --example capi_expected -- OUT.txt`
//!
//! Format, one item per line: `case NAME CELL DTYPE FORMAT RESET_AFTER LAYOUT I H T B`
//! (the C enum values), then sections `NAME COUNT v1 v2 …` in a fixed order: the four weight
//! tensors `w0`..`w3`, `x`, `hx`, `dy`, `dhy`, then the expected `y`, `hy`, `dx`, `dhx` and
//! the weight gradients `g0`..`g3` in the same framework layout. Values are printed in full
//! (shortest round-trip decimal of the `f64` value), so the C side reads them exactly.

use std::fmt::Write as _;

use fused_rnn::Real;
use fused_rnn::cell::Recurrent;
use fused_rnn::layout::LayoutKind;
use fused_rnn::prelude::*;

fn values<T: Real>(n: usize, seed: usize) -> Vec<T> {
    (0..n)
        .map(|k| T::from_f64((((k * 7919 + seed * 104_729) % 2001) as f64 - 1000.0) / 1100.0))
        .collect()
}

fn section<T: Real>(out: &mut String, name: &str, v: &[T]) {
    write!(out, "{name} {}", v.len()).unwrap();
    for x in v {
        write!(out, " {:e}", x.to_f64()).unwrap();
    }
    out.push('\n');
}

/// Which framework layout a case uses (the C enum value and the conversion).
#[derive(Clone, Copy)]
enum Format {
    Keras = 1,
    Torch = 2,
}

fn tensors<T: Real, K: LayoutKind>(
    cell: &Recurrent<T, K, Dyn, Dyn>,
    format: Format,
    grads: Option<&[Vec<T>]>,
) -> Result<[Vec<T>; 4]> {
    Ok(match format {
        Format::Keras => {
            let k = match grads {
                Some(g) => cell.keras_grads(g)?,
                None => cell.to_keras(),
            };
            [
                k.kernel,
                k.recurrent_kernel,
                k.bias.unwrap_or_default(),
                vec![],
            ]
        }
        Format::Torch => {
            let k = match grads {
                Some(g) => cell.torch_grads(g)?,
                None => cell.to_torch()?,
            };
            [
                k.weight_ih,
                k.weight_hh,
                k.bias_ih.unwrap_or_default(),
                k.bias_hh.unwrap_or_default(),
            ]
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn case<T: Real, K: LayoutKind>(
    out: &mut String,
    name: &str,
    cell_code: u32,
    reset_after: bool,
    format: Format,
    cell: &Recurrent<T, K, Dyn, Dyn>,
    spec: &SeqSpec,
    with_state: bool,
) -> Result<()> {
    let (i, h) = (cell.weights().input_size(), cell.weights().hidden_size());
    let dtype = if T::NAME == "f32" { 0 } else { 1 };
    let layout = (spec.layout == Layout::BatchMajor) as u32;
    writeln!(
        out,
        "case {name} {cell_code} {dtype} {} {} {layout} {i} {h} {} {}",
        format as u32, reset_after as u32, spec.time_steps, spec.batch
    )
    .unwrap();
    let s = if cell_code == 1 { 2 } else { 1 };
    let (x, dy) = (
        values::<T>(spec.time_steps * spec.batch * i, 1),
        values::<T>(spec.time_steps * spec.batch * h, 3),
    );
    let (hx, dhy) = if with_state {
        (
            values::<T>(s * spec.batch * h, 2),
            values::<T>(s * spec.batch * h, 4),
        )
    } else {
        (vec![], vec![])
    };
    let w = tensors(cell, format, None)?;
    for (k, t) in w.iter().enumerate() {
        section(out, &format!("w{k}"), t);
    }
    section(out, "x", &x);
    section(out, "hx", &hx);
    section(out, "dy", &dy);
    section(out, "dhy", &dhy);
    let opt = |v: &[T]| (!v.is_empty()).then_some(v.to_vec());
    let (hx_o, dhy_o) = (opt(&hx), opt(&dhy));
    let run = seq::forward(cell, spec, &x, hx_o.as_deref())?;
    let mut tape = vec![T::ZERO; seq::tape_len(cell, spec)?];
    seq::forward_train(cell, spec, &x, hx_o.as_deref(), &mut tape)?;
    let g = seq::bptt(
        cell,
        spec,
        &x,
        hx_o.as_deref(),
        &tape,
        &dy,
        dhy_o.as_deref(),
    )?;
    section(out, "y", &run.y);
    section(out, "hy", &run.final_state);
    section(out, "dx", &g.dx);
    section(out, "dhx", &g.d_initial_state);
    for (k, t) in tensors(cell, format, Some(&g.params))?.iter().enumerate() {
        section(out, &format!("g{k}"), t);
    }
    Ok(())
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "capi_expected.txt".to_string());
    let mut out = String::new();
    let lstm = DynLstm::<f32>::random(Dyn(3), Dyn(5), LstmKind::default(), true, 21)?;
    case(
        &mut out,
        "lstm_f32_torch",
        1,
        true,
        Format::Torch,
        &lstm,
        &SeqSpec::new(6, 2),
        true,
    )?;
    let gru = DynGru::<f64>::random(Dyn(4), Dyn(6), GruKind::default(), true, 22)?;
    case(
        &mut out,
        "gru_f64_keras",
        2,
        true,
        Format::Keras,
        &gru,
        &SeqSpec::new(5, 3).layout(Layout::BatchMajor),
        false,
    )?;
    std::fs::write(&path, out).map_err(|e| Error::Invalid {
        arg: "path",
        reason: e.to_string(),
    })?;
    println!("wrote {path}");
    Ok(())
}
