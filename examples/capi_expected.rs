//! Writes the cases `examples/c/rnn_check.c` runs through the C ABI: an LSTM (`f32`, PyTorch
//! weights), a GRU (`f64`, Keras weights) and a two-layer bidirectional GRU (`f32`, PyTorch
//! weights per layer and direction): the weights, inputs and upstream gradients, and the
//! outputs and gradients the Rust API (`seq`, `layer::Rnn`) computes from them.
//!
//! `cargo run --release --example capi_expected -- OUT.txt`
//!
//! Format, one item per line: `case NAME CELL DTYPE FORMAT RESET_AFTER LAYOUT I H T B L D`
//! (the C enum values), then sections `NAME COUNT v1 v2 …` in a fixed order: for each layer
//! and direction the four weight tensors `w0`..`w3`; `x`, `hx`, `dy`, `dhy`; the expected `y`,
//! `hy`, `dx`, `dhx`; and for each layer and direction the weight gradients `g0`..`g3` in the
//! same framework layout. Values are printed in full (shortest round-trip decimal of the `f64`
//! value), so the C side reads them exactly.

use std::fmt::Write as _;

use fused_rnn::Real;
use fused_rnn::cell::Recurrent;
use fused_rnn::layer::{AnyCell, CellConfig, Merge, Rnn, RnnConfig, RnnGrads, RunSpec};
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
        "case {name} {cell_code} {dtype} {} {} {layout} {i} {h} {} {} 1 1",
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

/// A stack through `layer::Rnn`, every cell's tensors in PyTorch's layout.
fn stack_case(out: &mut String, name: &str, rnn: &Rnn<f32>, spec: &RunSpec<'_>) -> Result<()> {
    let c = rnn.config();
    let (l, d) = (c.num_layers, c.directions());
    let (cell_code, reset_after) = match c.cell {
        CellConfig::SimpleRnn(_) => (0, 1),
        CellConfig::Lstm(_) => (1, 1),
        CellConfig::Gru(k) => (2, k.reset_after as u32),
    };
    let layout = (spec.layout == Layout::BatchMajor) as u32;
    writeln!(
        out,
        "case {name} {cell_code} 0 {} {reset_after} {layout} {} {} {} {} {l} {d}",
        Format::Torch as u32,
        c.input_size,
        c.hidden_size,
        spec.time_steps,
        spec.batch
    )
    .unwrap();
    let torch = |cell: &AnyCell<f32>, grads: Option<&[Vec<f32>]>| -> Result<[Vec<f32>; 4]> {
        match cell {
            AnyCell::SimpleRnn(x) => tensors(x, Format::Torch, grads),
            AnyCell::Lstm(x) => tensors(x, Format::Torch, grads),
            AnyCell::Gru(x) => tensors(x, Format::Torch, grads),
        }
    };
    for cell in rnn.cells() {
        for (k, t) in torch(cell, None)?.iter().enumerate() {
            section(out, &format!("w{k}"), t);
        }
    }
    let x = values::<f32>(rnn.x_len(spec)?, 1);
    let hx = values::<f32>(rnn.state_len(spec.batch)?, 2);
    let dy = values::<f32>(rnn.y_len(spec)?, 3);
    let dhy = values::<f32>(rnn.state_len(spec.batch)?, 4);
    section(out, "x", &x);
    section(out, "hx", &hx);
    section(out, "dy", &dy);
    section(out, "dhy", &dhy);
    let (mut y, mut hy) = (vec![0.0; dy.len()], vec![0.0; hx.len()]);
    let mut tape = vec![0.0; rnn.tape_len(spec)?];
    rnn.forward_train(spec, &x, Some(&hx), &mut tape, &mut y, &mut hy)?;
    let mut g = RnnGrads::zeros(rnn, spec)?;
    rnn.bptt(
        spec,
        &x,
        Some(&hx),
        &tape,
        &dy,
        Some(&dhy),
        &mut g,
        GradMode::Overwrite,
    )?;
    section(out, "y", &y);
    section(out, "hy", &hy);
    section(out, "dx", &g.dx);
    section(out, "dhx", &g.d_initial_state);
    for (cell, grads) in rnn.cells().iter().zip(&g.params) {
        for (k, t) in torch(cell, Some(grads))?.iter().enumerate() {
            section(out, &format!("g{k}"), t);
        }
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
    let config = RnnConfig::new(CellConfig::Gru(GruKind::default()), 3, 4)
        .layers(2)
        .bidirectional(Merge::Concat);
    let rnn = Rnn::<f32>::random(config, 23)?;
    stack_case(
        &mut out,
        "bigru2_f32_torch",
        &rnn,
        &RunSpec::new(5, 2).layout(Layout::BatchMajor),
    )?;
    std::fs::write(&path, out).map_err(|e| Error::Invalid {
        arg: "path",
        reason: e.to_string(),
    })?;
    println!("wrote {path}");
    Ok(())
}
