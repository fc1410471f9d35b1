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
    // Up to four tensors a cell: a stack of absurdly many layers is an error, not an abort.
    let names = crate::error::checked_size("config.layers", &[config.cell_count(), 4])?;
    let mut out = crate::error::try_with_capacity("config.layers", names)?;
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
    // Every cell has at least two tensors: a count the file cannot hold is refused before
    // the names of that many cells are listed.
    let cells = config.cell_count();
    if tensors.len() / 2 < cells {
        return Err(Error::Invalid {
            arg: "tensors",
            reason: format!(
                "{} tensors, too few for the {cells} cells the config describes",
                tensors.len()
            ),
        });
    }
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
            // The bias shape tells the variant, cell by cell.
            for (bias, _) in names.iter().filter(|(name, _)| name.ends_with(".bias")) {
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
    let mut cells = crate::error::try_with_capacity("config.layers", config.cell_count())?;
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
/// Errors: [`Error::Invalid`] for a file that is not safetensors, holds another dtype, or holds
/// a finite F64 value beyond `T`'s range (it would load as an infinity), and those of
/// [`from_tensors`].
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
                    let v = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    let t = T::from_f64(v);
                    // A finite value `T` cannot hold would load as an infinity.
                    if v.is_finite() && !t.to_f64().is_finite() {
                        return Err(Error::Invalid {
                            arg: "bytes",
                            reason: format!(
                                "tensor `{name}` holds {v:e}, beyond the range of {}",
                                T::NAME
                            ),
                        });
                    }
                    Ok(t)
                })
                .collect::<Result<_>>()?,
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
    let file = safetensors::serialize(views, None).map_err(|e| Error::Invalid {
        arg: "tensors",
        reason: format!("cannot serialise: {e}"),
    })?;
    with_metadata(&file, &[("cell", cell), ("framework", framework.name())])
}

/// `file` (a safetensors file without metadata) with `entries` as its `__metadata__`, in the
/// order given. The crate writes metadata from a `HashMap`, whose order changes from call to
/// call; written here, the same weights always give the same bytes.
fn with_metadata(file: &[u8], entries: &[(&str, &str)]) -> Result<Vec<u8>> {
    let malformed = || Error::Invalid {
        arg: "tensors",
        reason: "the serialised header is malformed".into(),
    };
    let (len, rest) = file.split_first_chunk::<8>().ok_or_else(malformed)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| malformed())?;
    let (header, data) = rest.split_at_checked(len).ok_or_else(malformed)?;
    let header = std::str::from_utf8(header)
        .map_err(|_| malformed())?
        .trim_end();
    let tensors = header.strip_prefix('{').ok_or_else(malformed)?;
    let meta: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    let separator = if tensors == "}" { "" } else { "," };
    let mut out = format!(
        "{{\"__metadata__\":{{{}}}{separator}{tensors}",
        meta.join(",")
    );
    // The data that follows starts 8-byte aligned, as the format asks.
    while out.len() % 8 != 0 {
        out.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + out.len() + data.len());
    bytes.extend_from_slice(&(out.len() as u64).to_le_bytes());
    bytes.extend_from_slice(out.as_bytes());
    bytes.extend_from_slice(data);
    Ok(bytes)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::LstmKind;
    use crate::layer::CellConfig;

    /// The same weights give the same bytes on every call, with both metadata entries, and
    /// load back (to the same stack from PyTorch's layout).
    #[test]
    fn saved_files_are_reproducible_and_load_back() {
        let config = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 4)
            .layers(2)
            .bidirectional(crate::layer::Merge::Concat);
        let rnn = Rnn::<f32>::random(config, 1).unwrap();
        for framework in [Framework::Keras, Framework::Torch] {
            let first = save_safetensors(&rnn, framework).unwrap();
            for _ in 0..20 {
                assert!(save_safetensors(&rnn, framework).unwrap() == first);
            }
            let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
            let meta = meta.metadata().clone().unwrap();
            assert_eq!(
                meta.get("framework").map(String::as_str),
                Some(framework.name())
            );
            assert_eq!(meta.get("cell").map(String::as_str), Some("lstm"));
            let loaded = load_safetensors::<f32>(config, framework, &first).unwrap();
            // Keras keeps one bias where the stack has two (their sum): exact for PyTorch.
            assert!(
                framework == Framework::Keras || loaded == rnn,
                "{framework:?}: the loaded stack differs"
            );
        }
    }

    /// A Keras GRU file is checked for its variant in every cell, not only the first; an F64
    /// value past `f32`'s range is refused rather than loaded as an infinity.
    #[test]
    fn every_cell_is_checked_and_values_must_fit() {
        let config =
            RnnConfig::new(CellConfig::Gru(crate::cell::GruKind::default()), 3, 5).layers(2);
        let rnn = Rnn::<f64>::random(config, 1).unwrap();
        let mut tensors: Vec<NamedTensor<f64>> = to_tensors(&rnn, Framework::Keras).unwrap();
        let bias = tensors
            .iter_mut()
            .find(|t| t.name == "l1.fwd.bias")
            .unwrap();
        bias.shape = vec![2 * 3 * 5];
        let file = save_named(&tensors, Framework::Keras, "gru").unwrap();
        assert!(matches!(
            load_safetensors::<f64>(config, Framework::Keras, &file),
            Err(Error::GruVariant { ref tensor, .. }) if tensor == "l1.fwd.bias"
        ));
        let mut tensors = to_tensors(&rnn, Framework::Keras).unwrap();
        tensors[0].data[0] = 1e300;
        let file = save_named(&tensors, Framework::Keras, "gru").unwrap();
        assert!(load_safetensors::<f64>(config, Framework::Keras, &file).is_ok());
        assert!(matches!(
            load_safetensors::<f32>(config, Framework::Keras, &file),
            Err(Error::Invalid { arg: "bytes", .. })
        ));
    }

    /// A config of absurdly many layers is an error before anything that size is listed.
    #[test]
    fn absurd_layer_counts_are_errors() {
        let one = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 4);
        let rnn = Rnn::<f32>::random(one, 1).unwrap();
        let tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = to_tensors(&rnn, Framework::Torch)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, (t.shape, t.data)))
            .collect();
        for layers in [1usize << 40, usize::MAX] {
            let huge = one.layers(layers);
            assert!(matches!(
                from_tensors(huge, Framework::Torch, &tensors),
                Err(Error::Invalid { arg: "tensors", .. })
            ));
            assert!(matches!(
                tensor_names(&huge, Framework::Keras),
                Err(Error::Allocation { .. } | Error::Overflow { .. })
            ));
            assert!(matches!(
                Rnn::<f32>::random(huge, 1),
                Err(Error::Allocation { .. })
            ));
        }
    }

    /// Metadata values are JSON-escaped; a file of no tensors is still a file.
    #[test]
    fn metadata_strings_are_escaped() {
        let cell = "a \"quoted\" \\ name\n";
        let file = save_named::<f64>(&[], Framework::Keras, cell).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        assert_eq!(meta.metadata().clone().unwrap()["cell"], cell);
    }
}
