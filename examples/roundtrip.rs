//! PyTorch weights in, PyTorch weights out: the library's side of the round trip
//! PyTorch → safetensors → fused-rnn → safetensors → PyTorch (driven by
//! `tests/fixtures/generate.py --roundtrip`).
//!
//! ```text
//! cargo run --release --example roundtrip -- WEIGHTS INPUT OUT_WEIGHTS OUT_Y
//! ```
//!
//! - `WEIGHTS`: a PyTorch `state_dict` of an `nn.RNN` / `nn.LSTM` / `nn.GRU` as safetensors
//!   (`weight_ih_l0`, …, `_reverse`), F32 or F64, whose metadata describes the module:
//!   `cell` (`simple_rnn`, `lstm`, `gru`), `nonlinearity` (`tanh`, `relu`; SimpleRNN),
//!   `input_size`, `hidden_size`, `num_layers`, `bidirectional`, `bias` (`true` / `false`).
//!   The stack runs in the weights' dtype.
//! - `INPUT`: `x` `[B, T, I]` (batch first) and optionally `h0` (and `c0` for LSTM)
//!   `[L·D, B, H]`.
//! - `OUT_WEIGHTS`: the loaded stack's weights saved back in PyTorch's names and layouts.
//! - `OUT_Y`: the stack's outputs `y` `[B, T, D·H]`, `h_n` (and `c_n`) `[L·D, B, H]`, and
//!   every layer `k`'s weights in ONNX's layout ([`io::to_onnx`]): `onnx.l{k}.W`,
//!   `onnx.l{k}.R` and (with biases) `onnx.l{k}.B`.

use std::collections::HashMap;
use std::process::ExitCode;

use fused_rnn::layer::io::{self, NamedTensor};
use fused_rnn::layer::{CellConfig, MaskSemantics, Merge, Rnn, RnnConfig, RunSpec};
use fused_rnn::layout::Framework;
use fused_rnn::prelude::*;
use fused_rnn::real::Real;
use safetensors::SafeTensors;

type Res<T> = std::result::Result<T, String>;
/// Tensors by name: shape and values.
type Tensors<T> = HashMap<String, (Vec<usize>, Vec<T>)>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: roundtrip WEIGHTS INPUT OUT_WEIGHTS OUT_Y");
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1], &args[2], &args[3]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &str) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn run(weights: &str, input: &str, out_weights: &str, out_y: &str) -> Res<()> {
    let wbytes = read(weights)?;
    let (_, meta) = SafeTensors::read_metadata(&wbytes).map_err(|e| format!("{weights}: {e}"))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| format!("{weights}: metadata `{k}` missing"))
    };
    let num = |k: &str| -> Res<usize> { get(k)?.parse().map_err(|e| format!("`{k}`: {e}")) };
    let flag = |k: &str| -> Res<bool> {
        match get(k)?.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(format!("`{k}` is `{v}`, expected true or false")),
        }
    };
    let cell = match get("cell")?.as_str() {
        "simple_rnn" => CellConfig::SimpleRnn(SimpleRnnKind {
            activation: Activation::from_name(&get("nonlinearity")?).map_err(|e| e.to_string())?,
        }),
        "lstm" => CellConfig::Lstm(LstmKind::default()),
        // PyTorch's GRU is the reset-after variant.
        "gru" => CellConfig::Gru(GruKind::default()),
        v => return Err(format!("unknown cell `{v}`")),
    };
    let mut config = RnnConfig::new(cell, num("input_size")?, num("hidden_size")?)
        .layers(num("num_layers")?)
        .use_bias(flag("bias")?)
        .mask_semantics(MaskSemantics::Packed);
    if flag("bidirectional")? {
        config = config.bidirectional(Merge::Concat);
    }
    let st = SafeTensors::deserialize(&wbytes).map_err(|e| format!("{weights}: {e}"))?;
    let dtype = st
        .tensors()
        .first()
        .map(|(_, v)| v.dtype())
        .ok_or("no tensors")?;
    let ibytes = read(input)?;
    match dtype {
        safetensors::Dtype::F32 => go::<f32>(config, &wbytes, &ibytes, out_weights, out_y),
        safetensors::Dtype::F64 => go::<f64>(config, &wbytes, &ibytes, out_weights, out_y),
        d => Err(format!("dtype {d:?}, expected F32 or F64")),
    }
}

/// The tensors of a safetensors file as `T`, by name.
fn tensors<T: Real>(bytes: &[u8]) -> Res<Tensors<T>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let d = v.data();
        let vals: Vec<T> = match v.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| T::from_f64(f32::from_le_bytes(c.try_into().unwrap()) as f64))
                .collect(),
            safetensors::Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| T::from_f64(f64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            other => return Err(format!("`{name}` has dtype {other:?}")),
        };
        out.insert(name, (v.shape().to_vec(), vals));
    }
    Ok(out)
}

fn go<T: Real>(
    config: RnnConfig,
    wbytes: &[u8],
    ibytes: &[u8],
    out_weights: &str,
    out_y: &str,
) -> Res<()> {
    let rnn: Rnn<T> =
        io::load_safetensors(config, Framework::Torch, wbytes).map_err(|e| e.to_string())?;
    let inputs = tensors::<T>(ibytes)?;
    let (xshape, x) = inputs.get("x").ok_or("input `x` missing")?;
    let [b, t, _] = xshape[..] else {
        return Err(format!("`x` has shape {xshape:?}, expected [B, T, I]"));
    };
    let spec = RunSpec::new(t, b).layout(Layout::BatchMajor);
    // The outputs are sized from `x`'s declared shape: check `x` first, so that a small file
    // declaring a huge shape is an error rather than an allocation of that size.
    let x_len = rnn.x_len(&spec).map_err(|e| e.to_string())?;
    if x.len() != x_len {
        return Err(format!(
            "`x` holds {} values, its shape {xshape:?} with input size {} needs {x_len}",
            x.len(),
            config.input_size
        ));
    }
    let state_len = rnn.state_len(b).map_err(|e| e.to_string())?;
    // [S, L·D, B, H]: h0 then c0.
    let initial: Option<Vec<T>> = inputs.get("h0").map(|(_, h0)| {
        let mut s = h0.clone();
        if let Some((_, c0)) = inputs.get("c0") {
            s.extend_from_slice(c0);
        }
        s
    });
    let mut y = vec![T::ZERO; rnn.y_len(&spec).map_err(|e| e.to_string())?];
    let mut fin = vec![T::ZERO; state_len];
    rnn.forward(&spec, x, initial.as_deref(), &mut y, &mut fin)
        .map_err(|e| e.to_string())?;
    let saved = io::save_safetensors(&rnn, Framework::Torch).map_err(|e| e.to_string())?;
    std::fs::write(out_weights, saved).map_err(|e| format!("{out_weights}: {e}"))?;

    let (ld, h) = (config.cell_count(), config.hidden_size);
    let one = ld * b * h;
    let mut outs = vec![NamedTensor {
        name: "y".into(),
        shape: vec![b, t, config.merged_width()],
        data: y,
    }];
    for (k, name) in ["h_n", "c_n"]
        .into_iter()
        .enumerate()
        .take(config.cell.states())
    {
        outs.push(NamedTensor {
            name: name.into(),
            shape: vec![ld, b, h],
            data: fin[k * one..(k + 1) * one].to_vec(),
        });
    }
    // Every layer's weights in ONNX's layout, for a check against an ONNX runtime.
    let (g, d) = (config.cell.gates(), config.directions());
    for layer in 0..config.num_layers {
        let o = io::to_onnx(&rnn, layer).map_err(|e| e.to_string())?;
        let i = config.layer_input_size(layer);
        outs.push(NamedTensor {
            name: format!("onnx.l{layer}.W"),
            shape: vec![d, g * h, i],
            data: o.w,
        });
        outs.push(NamedTensor {
            name: format!("onnx.l{layer}.R"),
            shape: vec![d, g * h, h],
            data: o.r,
        });
        if let Some(b) = o.b {
            outs.push(NamedTensor {
                name: format!("onnx.l{layer}.B"),
                shape: vec![d, 2 * g * h],
                data: b,
            });
        }
    }
    let bytes =
        io::save_named(&outs, Framework::Torch, config.cell.name()).map_err(|e| e.to_string())?;
    std::fs::write(out_y, bytes).map_err(|e| format!("{out_y}: {e}"))?;
    Ok(())
}
