//! Whole-stack weights by name: PyTorch `state_dict` names and layouts, Keras-layout names (as
//! the conformance fixtures spell them), safetensors files, and ONNX `W`, `R`, `B`.
//!
//! | framework | names (layer `k`, backward direction) | layouts |
//! |---|---|---|
//! | PyTorch | `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, suffix `_reverse` | `[G·H, I_k]`, `[G·H, H]`, `[G·H]`; gates LSTM `i,f,g,o`, GRU `r,z,n` |
//! | Keras | `l{k}.fwd.kernel`, `l{k}.fwd.recurrent_kernel`, `l{k}.fwd.bias`, `bwd` | `[I_k, G·H]`, `[H, G·H]`, `[G·H]` or `[2, G·H]` (GRU `reset_after`); gates LSTM `i,f,c,o`, GRU `z,r,h` |
//!
//! `I_k` is the input width of layer `k`. A GRU's variant shows in its tensors: PyTorch's GRU
//! is always reset-after, and a Keras reset-after GRU has a two-row bias; loading weights of
//! one variant into a configuration of the other fails with [`Error::GruVariant`] rather than
//! giving silently wrong numbers. (A Keras GRU without biases does not show its variant.)
//!
//! # Example
//! ```
//! use fused_rnn::layer::{io, CellConfig, Merge, Rnn, RnnConfig};
//! use fused_rnn::layout::Framework;
//! use fused_rnn::prelude::*;
//!
//! let config = RnnConfig::new(CellConfig::Gru(GruKind::default()), 3, 4)
//!     .layers(2)
//!     .bidirectional(Merge::Concat);
//! let rnn = Rnn::<f32>::random(config, 1)?;
//! let bytes = io::save_safetensors(&rnn, Framework::Torch)?;
//! let back = io::load_safetensors::<f32>(config, Framework::Torch, &bytes)?;
//! assert_eq!(back, rnn);
//! // The same weights as a reset-before GRU: refused.
//! let mut other = config;
//! other.cell = CellConfig::Gru(GruKind { reset_after: false, ..GruKind::default() });
//! assert!(matches!(
//!     io::load_safetensors::<f32>(other, Framework::Torch, &bytes),
//!     Err(Error::GruVariant { .. })
//! ));
//! # Ok::<(), fused_rnn::Error>(())
//! ```

use std::collections::HashMap;

use super::{AnyCell, CellConfig, Rnn, RnnConfig, RnnGrads};
use crate::cell::Recurrent;
use crate::dim::Dyn;
use crate::error::{Error, Result};
use crate::layout::{Framework, KerasWeights, LayoutKind, OnnxWeights, TorchWeights};
use crate::real::Real;

/// One named tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor<T> {
    /// Its name.
    pub name: String,
    /// Its shape, outermost first.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: Vec<T>,
}

fn check_framework(framework: Framework) -> Result<()> {
    if framework == Framework::Onnx {
        return Err(Error::Invalid {
            arg: "framework",
            reason: "ONNX weights are per layer: use `to_onnx`".into(),
        });
    }
    Ok(())
}

/// Name prefix / suffix of cell `layer`, `dir`.
fn keras_prefix(layer: usize, dir: usize) -> String {
    format!("l{layer}.{}.", if dir == 0 { "fwd" } else { "bwd" })
}
fn torch_suffix(layer: usize, dir: usize) -> String {
    format!("_l{layer}{}", if dir == 0 { "" } else { "_reverse" })
}

/// Every tensor name and shape a stack of `config` has in `framework`'s naming, cell by cell
/// (kernel, recurrent kernel, then biases).
pub fn tensor_names(config: &RnnConfig, framework: Framework) -> Result<Vec<(String, Vec<usize>)>> {
    check_framework(framework)?;
    config.validate()?;
    let (h, gh) = (config.hidden_size, config.cell.gates() * config.hidden_size);
    let mut out = Vec::new();
    for n in 0..config.cell_count() {
        let (l, d) = (n / config.directions(), n % config.directions());
        let i = config.layer_input_size(l);
        match framework {
            Framework::Torch => {
                let s = torch_suffix(l, d);
                out.push((format!("weight_ih{s}"), vec![gh, i]));
                out.push((format!("weight_hh{s}"), vec![gh, h]));
                if config.use_bias {
                    out.push((format!("bias_ih{s}"), vec![gh]));
                    out.push((format!("bias_hh{s}"), vec![gh]));
                }
            }
            _ => {
                let p = keras_prefix(l, d);
                out.push((format!("{p}kernel"), vec![i, gh]));
                out.push((format!("{p}recurrent_kernel"), vec![h, gh]));
                if config.use_bias {
                    let two = matches!(config.cell, CellConfig::Gru(k) if k.reset_after);
                    out.push((format!("{p}bias"), if two { vec![2, gh] } else { vec![gh] }));
                }
            }
        }
    }
    Ok(out)
}

/// A stack of `config` from named tensors in `framework`'s names and layouts (`tensors`: name
/// → (shape, values)). Every tensor [`tensor_names`] lists must be present with its shape;
/// other names are an error too.
///
/// Errors: [`Error::GruVariant`] when the tensors are of the other GRU variant;
/// [`Error::Invalid`] naming a missing, unexpected or misshapen tensor.
pub fn from_tensors<T: Real>(
    config: RnnConfig,
    framework: Framework,
    tensors: &HashMap<String, (Vec<usize>, Vec<T>)>,
) -> Result<Rnn<T>> {
    let names = tensor_names(&config, framework)?;
    if let CellConfig::Gru(k) = config.cell {
        if framework == Framework::Torch && !k.reset_after {
            return Err(Error::GruVariant {
                tensor: names[0].0.clone(),
                source_kind: "torch",
                expected: false,
                found: true,
            });
        }
        if framework == Framework::Keras && config.use_bias {
            // The bias shape tells the variant.
            let bias = &names[2].0;
            if let Some((shape, _)) = tensors.get(bias) {
                let found = shape.len() == 2 && shape[0] == 2;
                if found != k.reset_after {
                    return Err(Error::GruVariant {
                        tensor: bias.clone(),
                        source_kind: "keras",
                        expected: k.reset_after,
                        found,
                    });
                }
            }
        }
    }
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !names.iter().any(|(n, _)| n == *k))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(Error::Invalid {
            arg: "tensors",
            reason: format!("unexpected tensor `{}`", unexpected[0]),
        });
    }
    let get = |name: &str, shape: &[usize]| -> Result<Vec<T>> {
        let (s, v) = tensors.get(name).ok_or_else(|| Error::Invalid {
            arg: "tensors",
            reason: format!("missing tensor `{name}`"),
        })?;
        if s != shape || Some(v.len()) != shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
            return Err(Error::Invalid {
                arg: "tensors",
                reason: format!(
                    "tensor `{name}` has shape {s:?} ({} values), expected {shape:?}",
                    v.len()
                ),
            });
        }
        Ok(v.clone())
    };
    let per_cell = if config.use_bias { 4 } else { 2 };
    let per_cell = if framework == Framework::Keras && config.use_bias {
        3
    } else {
        per_cell
    };
    let mut cells = Vec::with_capacity(config.cell_count());
    for (n, chunk) in names.chunks(per_cell).enumerate() {
        let l = n / config.directions();
        let mut v = Vec::with_capacity(per_cell);
        for (name, shape) in chunk {
            v.push(get(name, shape)?);
        }
        let mut v = v.into_iter();
        let input = Dyn(config.layer_input_size(l));
        let hidden = Dyn(config.hidden_size);
        let cell = match framework {
            Framework::Torch => {
                let w = TorchWeights {
                    weight_ih: v.next().expect("listed"),
                    weight_hh: v.next().expect("listed"),
                    bias_ih: v.next(),
                    bias_hh: v.next(),
                };
                build(config.cell, |k| k.build_torch(input, hidden, &w))?
            }
            _ => {
                let w = KerasWeights {
                    kernel: v.next().expect("listed"),
                    recurrent_kernel: v.next().expect("listed"),
                    bias: v.next(),
                };
                build(config.cell, |k| k.build_keras(input, hidden, &w))?
            }
        };
        cells.push(cell);
    }
    Rnn::new(config, cells)
}

/// Runs `f` with the cell kind of `cell` as a [`KindOps`].
fn build<T: Real>(
    cell: CellConfig,
    f: impl FnOnce(&dyn KindOps<T>) -> Result<AnyCell<T>>,
) -> Result<AnyCell<T>> {
    match cell {
        CellConfig::SimpleRnn(k) => f(&k),
        CellConfig::Lstm(k) => f(&k),
        CellConfig::Gru(k) => f(&k),
    }
}

/// The layout conversions of one cell kind, object-safe.
trait KindOps<T: Real> {
    fn build_torch(&self, i: Dyn, h: Dyn, w: &TorchWeights<T>) -> Result<AnyCell<T>>;
    fn build_keras(&self, i: Dyn, h: Dyn, w: &KerasWeights<T>) -> Result<AnyCell<T>>;
}

macro_rules! kind_ops {
    ($kind:ty, $variant:ident) => {
        impl<T: Real> KindOps<T> for $kind {
            fn build_torch(&self, i: Dyn, h: Dyn, w: &TorchWeights<T>) -> Result<AnyCell<T>> {
                Ok(AnyCell::$variant(Recurrent::from_torch(i, h, *self, w)?))
            }
            fn build_keras(&self, i: Dyn, h: Dyn, w: &KerasWeights<T>) -> Result<AnyCell<T>> {
                Ok(AnyCell::$variant(Recurrent::from_keras(i, h, *self, w)?))
            }
        }
    };
}
kind_ops!(crate::cell::SimpleRnnKind, SimpleRnn);
kind_ops!(crate::cell::LstmKind, Lstm);
kind_ops!(crate::cell::GruKind, Gru);

/// One cell's tensors (weights, or gradients when `grads` is given) in `framework`'s layout,
/// in the order of [`tensor_names`].
fn cell_tensors<T: Real, K: LayoutKind>(
    c: &Recurrent<T, K, Dyn, Dyn>,
    framework: Framework,
    grads: Option<&[Vec<T>]>,
) -> Result<Vec<Vec<T>>> {
    Ok(match framework {
        Framework::Torch => {
            let w = match grads {
                Some(g) => c.torch_grads(g)?,
                None => c.to_torch()?,
            };
            [Some(w.weight_ih), Some(w.weight_hh), w.bias_ih, w.bias_hh]
                .into_iter()
                .flatten()
                .collect()
        }
        _ => {
            let w = match grads {
                Some(g) => c.keras_grads(g)?,
                None => c.to_keras(),
            };
            [Some(w.kernel), Some(w.recurrent_kernel), w.bias]
                .into_iter()
                .flatten()
                .collect()
        }
    })
}

fn named<T: Real>(
    rnn: &Rnn<T>,
    framework: Framework,
    grads: Option<&RnnGrads<T>>,
    prefix: &str,
) -> Result<Vec<NamedTensor<T>>> {
    let names = tensor_names(rnn.config(), framework)?;
    if let Some(g) = grads {
        crate::error::check_len("grads.params", g.params.len(), rnn.cells().len())?;
    }
    let mut values = Vec::with_capacity(names.len());
    for (n, cell) in rnn.cells().iter().enumerate() {
        let g = grads.map(|g| &g.params[n][..]);
        values.extend(match cell {
            AnyCell::SimpleRnn(c) => cell_tensors(c, framework, g)?,
            AnyCell::Lstm(c) => cell_tensors(c, framework, g)?,
            AnyCell::Gru(c) => cell_tensors(c, framework, g)?,
        });
    }
    Ok(names
        .into_iter()
        .zip(values)
        .map(|((name, shape), data)| NamedTensor {
            name: format!("{prefix}{name}"),
            shape,
            data,
        })
        .collect())
}

/// The stack's weights in `framework`'s names and layouts.
///
/// Errors: [`Error::Invalid`] for a reset-before GRU in PyTorch's layout (it has none).
pub fn to_tensors<T: Real>(rnn: &Rnn<T>, framework: Framework) -> Result<Vec<NamedTensor<T>>> {
    named(rnn, framework, None, "")
}

/// Parameter gradients in `framework`'s names and layouts, each named `grad.<weight name>`
/// (the fixtures' convention).
pub fn grads_to_tensors<T: Real>(
    rnn: &Rnn<T>,
    framework: Framework,
    grads: &RnnGrads<T>,
) -> Result<Vec<NamedTensor<T>>> {
    named(rnn, framework, Some(grads), "grad.")
}

/// Reads a safetensors file holding exactly the stack's weights in `framework`'s names
/// (tensors of dtype F32 or F64, converted to `T`; metadata ignored).
///
/// Errors: [`Error::Invalid`] for a file that is not safetensors or holds another dtype, and
/// those of [`from_tensors`].
pub fn load_safetensors<T: Real>(
    config: RnnConfig,
    framework: Framework,
    bytes: &[u8],
) -> Result<Rnn<T>> {
    let bad = |e: safetensors::SafeTensorError| Error::Invalid {
        arg: "bytes",
        reason: format!("not a safetensors file: {e}"),
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(bad)?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<T> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| T::from_f64(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| {
                    T::from_f64(f64::from_le_bytes([
                        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                    ]))
                })
                .collect(),
            other => {
                return Err(Error::Invalid {
                    arg: "bytes",
                    reason: format!("tensor `{name}` has dtype {other:?}, expected F32 or F64"),
                });
            }
        };
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    from_tensors(config, framework, &tensors)
}

/// The stack's weights as a safetensors file in `framework`'s names and layouts, in `T`'s
/// dtype (metadata: `framework` and `cell`).
pub fn save_safetensors<T: Real>(rnn: &Rnn<T>, framework: Framework) -> Result<Vec<u8>> {
    save_named(
        &to_tensors(rnn, framework)?,
        framework,
        rnn.config().cell.name(),
    )
}

/// Named tensors as a safetensors file.
pub fn save_named<T: Real>(
    tensors: &[NamedTensor<T>],
    framework: Framework,
    cell: &str,
) -> Result<Vec<u8>> {
    let dtype = if T::NAME == "f32" {
        safetensors::Dtype::F32
    } else {
        safetensors::Dtype::F64
    };
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            t.data
                .iter()
                .flat_map(|v| {
                    if T::NAME == "f32" {
                        (v.to_f64() as f32).to_le_bytes().to_vec()
                    } else {
                        v.to_f64().to_le_bytes().to_vec()
                    }
                })
                .collect()
        })
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        let view =
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), b).map_err(|e| {
                Error::Invalid {
                    arg: "tensors",
                    reason: format!("tensor `{}`: {e}", t.name),
                }
            })?;
        views.push((t.name.clone(), view));
    }
    let meta = HashMap::from([
        ("framework".to_string(), framework.name().to_string()),
        ("cell".to_string(), cell.to_string()),
    ]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid {
        arg: "tensors",
        reason: format!("cannot serialise: {e}"),
    })
}

/// Layer `layer`'s weights as one ONNX `LSTM` / `GRU` / `RNN` node's inputs `W [D, G·H, I]`,
/// `R [D, G·H, H]` and `B [D, 2·G·H]` (gate orders: LSTM `i,o,f,c`, GRU `z,r,h`; a GRU's
/// `linear_before_reset` is its `reset_after`), directions forward then reverse.
///
/// Errors: [`Error::Invalid`] for a layer out of range.
pub fn to_onnx<T: Real>(rnn: &Rnn<T>, layer: usize) -> Result<OnnxWeights<T>> {
    let c = rnn.config();
    if layer >= c.num_layers {
        return Err(Error::Invalid {
            arg: "layer",
            reason: format!(
                "{layer} is out of range: the stack has {} layers",
                c.num_layers
            ),
        });
    }
    let d = c.directions();
    let mut out = OnnxWeights {
        num_directions: d,
        w: Vec::new(),
        r: Vec::new(),
        b: c.use_bias.then(Vec::new),
    };
    for dir in 0..d {
        let o = match &rnn.cells()[layer * d + dir] {
            AnyCell::SimpleRnn(x) => x.to_onnx(),
            AnyCell::Lstm(x) => x.to_onnx(),
            AnyCell::Gru(x) => x.to_onnx(),
        };
        out.w.extend(o.w);
        out.r.extend(o.r);
        if let (Some(b), Some(ob)) = (&mut out.b, o.b) {
            b.extend(ob);
        }
    }
    Ok(out)
}
