//! The safe layer behind the C functions: a validated descriptor, the weight-space layout, and
//! every operation on checked slices.

use super::raw::{CallError, CallResult};
use super::{FrnnCell, FrnnRnnConfig, FrnnSeqConfig, FrnnWeightFormat};
use crate::activation::Activation;
use crate::cell::{CellKind, GruKind, LstmKind, Recurrent, RecurrentWeights, SimpleRnnKind};
use crate::dim::Dyn;
use crate::error::{Error, Result, check_len, check_nonzero, checked_size, try_filled};
use crate::layer::{AnyCell, CellConfig, Merge, Rnn, RnnConfig, RnnGrads, RunSpec};
use crate::layout::{KerasWeights, LayoutKind, OnnxWeights, TorchWeights};
use crate::real::Real;
use crate::seq::{self, GradMode, Gradients, Layout, SeqSpec};

/// The element type of every buffer a descriptor's calls take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
}

/// A validated RNN description: immutable once built, shared freely between threads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desc {
    pub cell: CellConfig,
    pub dtype: Dtype,
    pub use_bias: bool,
    pub input: usize,
    pub hidden: usize,
    pub layers: usize,
    pub directions: usize,
    /// Elements of one block of the first layer, of one block of a later layer, and of the
    /// whole weight space.
    first_block: usize,
    block: usize,
    total: usize,
}

fn flag(arg: &'static str, v: u32) -> CallResult<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(CallError::bad_value(arg, format!("{v} is not 0 or 1"))),
    }
}

fn activation(arg: &'static str, v: u32) -> CallResult<Activation> {
    Activation::ALL.get(v as usize).copied().ok_or_else(|| {
        CallError::bad_value(
            arg,
            format!(
                "{v} is not an FrnnActivation (0..={})",
                Activation::ALL.len() - 1
            ),
        )
    })
}

/// Lengths of one `(layer, direction)` block's tensors: kernel, recurrent kernel, each bias.
#[derive(Debug, Clone, Copy)]
struct BlockLens {
    kernel: usize,
    recurrent_kernel: usize,
    bias: usize,
}

impl BlockLens {
    fn checked_total(&self) -> Result<usize> {
        self.kernel
            .checked_add(self.recurrent_kernel)
            .and_then(|s| s.checked_add(self.bias.checked_mul(2)?))
            .ok_or(Error::Overflow {
                arg: "weight_space",
            })
    }
    fn total(&self) -> usize {
        // Checked by `checked_total` when the descriptor was built.
        self.kernel + self.recurrent_kernel + 2 * self.bias
    }
}

impl Desc {
    /// Validates a C configuration.
    pub fn new(c: &FrnnRnnConfig) -> CallResult<Self> {
        let act = activation("activation", c.activation)?;
        let rec = activation("recurrent_activation", c.recurrent_activation)?;
        let reset_after = flag("gru_reset_after", c.gru_reset_after)?;
        let cell = match c.cell {
            x if x == FrnnCell::SimpleRnn as u32 => {
                CellConfig::SimpleRnn(SimpleRnnKind { activation: act })
            }
            x if x == FrnnCell::Lstm as u32 => CellConfig::Lstm(LstmKind {
                activation: act,
                recurrent_activation: rec,
            }),
            x if x == FrnnCell::Gru as u32 => CellConfig::Gru(GruKind {
                activation: act,
                recurrent_activation: rec,
                reset_after,
            }),
            v => {
                return Err(CallError::bad_value(
                    "cell",
                    format!("{v} is not an FrnnCell (0 SimpleRNN, 1 LSTM, 2 GRU)"),
                ));
            }
        };
        let dtype = match c.dtype {
            0 => Dtype::F32,
            1 => Dtype::F64,
            v => {
                return Err(CallError::bad_value(
                    "dtype",
                    format!("{v} is not an FrnnDtype (0 f32, 1 f64)"),
                ));
            }
        };
        let use_bias = flag("use_bias", c.use_bias)?;
        check_nonzero("input_size", c.input_size)?;
        check_nonzero("hidden_size", c.hidden_size)?;
        check_nonzero("num_layers", c.num_layers)?;
        if !(1..=2).contains(&c.num_directions) {
            return Err(CallError::bad_value(
                "num_directions",
                format!("{} is not 1 or 2", c.num_directions),
            ));
        }
        let mut desc = Self {
            cell,
            dtype,
            use_bias,
            input: c.input_size,
            hidden: c.hidden_size,
            layers: c.num_layers,
            directions: c.num_directions,
            first_block: 0,
            block: 0,
            total: 0,
        };
        // Every size of the weight space, checked by arithmetic alone (nothing is allocated
        // per layer, however many there are): the first layer's blocks, then `L − 1` layers of
        // equal blocks.
        let first = desc.block_lens(0)?.checked_total()?;
        let rest = if desc.layers > 1 {
            desc.block_lens(1)?.checked_total()?
        } else {
            0
        };
        let total = checked_size("weight_space", &[desc.directions, first])?
            .checked_add(checked_size(
                "weight_space",
                &[desc.layers - 1, desc.directions, rest],
            )?)
            .ok_or(Error::Overflow {
                arg: "weight_space",
            })?;
        (desc.first_block, desc.block, desc.total) = (first, rest, total);
        // The stack's own rules (checked again per call, with the call's flags).
        desc.rnn_config(false, true).validate()?;
        Ok(desc)
    }

    /// Offset of block `(layer, direction)` in the weight space (both in range).
    fn offset(&self, layer: usize, direction: usize) -> usize {
        // In range, so no larger than `total`, which was checked.
        if layer == 0 {
            direction * self.first_block
        } else {
            self.directions * self.first_block
                + ((layer - 1) * self.directions + direction) * self.block
        }
    }

    /// Whether calls run through the layer engine (stacks, two directions) rather than the
    /// sequence engine, which alone splits a step across threads.
    fn stacked(&self) -> bool {
        self.layers > 1 || self.directions > 1
    }

    /// The layer engine's configuration: bidirectional outputs concatenated (`D·H` columns,
    /// forward direction first), no dropout.
    fn rnn_config(&self, go_backwards: bool, return_sequences: bool) -> RnnConfig {
        let mut c = RnnConfig::new(self.cell, self.input, self.hidden)
            .layers(self.layers)
            .use_bias(self.use_bias)
            .go_backwards(go_backwards)
            .return_sequences(return_sequences);
        if self.directions == 2 {
            c = c.bidirectional(Merge::Concat);
        }
        c
    }

    /// The stack over the weight space `ws` (its length already checked).
    fn rnn<T: Real>(&self, ws: &[T], spec: &SeqSpec) -> CallResult<Rnn<T>> {
        let mut cells = Vec::new();
        cells
            .try_reserve_exact(self.layers * self.directions)
            .map_err(|_| Error::Allocation {
                arg: "cells",
                elements: self.layers * self.directions,
            })?;
        for layer in 0..self.layers {
            for direction in 0..self.directions {
                cells.push(self.cell(ws, layer, direction)?);
            }
        }
        let config = self.rnn_config(spec.go_backwards, spec.return_sequences);
        Ok(Rnn::new(config, cells)?)
    }

    /// Input width of `layer`: `I` for the first, `D·H` after.
    fn layer_input(&self, layer: usize) -> Result<usize> {
        if layer == 0 {
            Ok(self.input)
        } else {
            checked_size("hidden_size", &[self.directions, self.hidden])
        }
    }

    fn block_lens(&self, layer: usize) -> Result<BlockLens> {
        let gh = checked_size("hidden_size", &[self.cell.gates(), self.hidden])?;
        Ok(BlockLens {
            kernel: checked_size("kernel", &[self.layer_input(layer)?, gh])?,
            recurrent_kernel: checked_size("recurrent_kernel", &[self.hidden, gh])?,
            bias: if self.use_bias { gh } else { 0 },
        })
    }

    /// Elements of the weight space.
    pub fn weight_space_len(&self) -> usize {
        self.total
    }

    fn check_block(&self, layer: usize, direction: usize) -> CallResult<()> {
        if layer >= self.layers {
            return Err(CallError::bad_value(
                "layer",
                format!("{layer} is out of range for {} layer(s)", self.layers),
            ));
        }
        if direction >= self.directions {
            return Err(CallError::bad_value(
                "direction",
                format!(
                    "{direction} is out of range for {} direction(s)",
                    self.directions
                ),
            ));
        }
        Ok(())
    }

    /// The engine's sequence spec for a C sequence configuration.
    pub fn seq_spec(&self, s: &FrnnSeqConfig) -> CallResult<SeqSpec> {
        let layout = match s.layout {
            0 => Layout::TimeMajor,
            1 => Layout::BatchMajor,
            v => {
                return Err(CallError::bad_value(
                    "layout",
                    format!("{v} is not an FrnnLayout (0 time-major, 1 batch-major)"),
                ));
            }
        };
        check_nonzero("time_steps", s.time_steps)?;
        check_nonzero("batch", s.batch)?;
        check_nonzero("threads", s.threads)?;
        Ok(SeqSpec {
            time_steps: s.time_steps,
            batch: s.batch,
            layout,
            go_backwards: flag("go_backwards", s.go_backwards)?,
            return_sequences: flag("return_sequences", s.return_sequences)?,
            threads: s.threads,
        })
    }

    /// Every buffer length of a call over `spec`.
    pub fn io_sizes(&self, spec: &SeqSpec) -> Result<IoSizes> {
        let (t, b, h) = (spec.time_steps, spec.batch, self.hidden);
        let dh = checked_size("y", &[self.directions, h])?;
        let blocks = checked_size("hx", &[self.layers, self.directions])?;
        let (s_, tb) = (self.cell.states(), checked_size("reserve", &[t, b])?);
        // Every built-in record is at most `5·H` wide; checking that product first makes the
        // kind's own (unchecked) width safe to call.
        checked_size("reserve", &[5, h])?;
        let tape_width = match self.cell {
            CellConfig::SimpleRnn(k) => k.tape_width(h),
            CellConfig::Lstm(k) => k.tape_width(h),
            CellConfig::Gru(k) => k.tape_width(h),
        };
        let overflow = Error::Overflow { arg: "reserve" };
        let reserve = if !self.stacked() {
            // The sequence engine's tape: `T + 1` state snapshots, then `T·B` cell records.
            let snapshots = t.checked_add(1).ok_or(overflow.clone())?;
            checked_size("reserve", &[snapshots, s_, b, h])?
                .checked_add(checked_size("reserve", &[tb, tape_width])?)
                .ok_or(overflow)?
        } else {
            // The layer engine's tape (`Rnn::tape_len`, which needs weights; tested equal):
            // per layer and direction the sorted initial state and the final state
            // (`S·B·H` each), every row's new state (`S·H`), cell record and output (`H`);
            // per layer but the last, its merged output `[T·B, D·H]`.
            let per_row = checked_size("reserve", &[s_, h])?
                .checked_add(tape_width)
                .and_then(|v| v.checked_add(h))
                .ok_or(overflow.clone())?;
            let per_cell = checked_size("reserve", &[2, s_, b, h])?
                .checked_add(checked_size("reserve", &[tb, per_row])?)
                .ok_or(overflow.clone())?;
            checked_size("reserve", &[self.layers, self.directions, per_cell])?
                .checked_add(checked_size(
                    "reserve",
                    &[self.layers - 1, tb, self.directions, h],
                )?)
                .ok_or(overflow)?
        };
        Ok(IoSizes {
            x: checked_size("x", &[t, b, self.input])?,
            y: if spec.return_sequences {
                checked_size("y", &[t, b, dh])?
            } else {
                checked_size("y", &[b, dh])?
            },
            state: checked_size("hx", &[self.cell.states(), blocks, b, h])?,
            reserve,
            workspace: 0,
        })
    }
}

/// Buffer lengths (elements) of the calls over one sequence configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoSizes {
    pub x: usize,
    pub y: usize,
    pub state: usize,
    pub reserve: usize,
    pub workspace: usize,
}

/// One block of the weight space, split into its tensors.
struct Block<'a, T> {
    kernel: &'a [T],
    recurrent_kernel: &'a [T],
    biases: Option<(&'a [T], &'a [T])>,
}

impl Desc {
    fn block<'a, T>(
        &self,
        ws: &'a [T],
        layer: usize,
        direction: usize,
    ) -> CallResult<Block<'a, T>> {
        check_len("weight_space", ws.len(), self.weight_space_len())?;
        self.check_block(layer, direction)?;
        let lens = self.block_lens(layer)?;
        let at = self.offset(layer, direction);
        let all = &ws[at..at + lens.total()];
        let (kernel, rest) = all.split_at(lens.kernel);
        let (recurrent_kernel, rest) = rest.split_at(lens.recurrent_kernel);
        let biases = self.use_bias.then(|| rest.split_at(lens.bias));
        Ok(Block {
            kernel,
            recurrent_kernel,
            biases,
        })
    }

    /// The cell of block `(layer, direction)` of the weight space `ws`.
    pub fn cell<T: Real>(
        &self,
        ws: &[T],
        layer: usize,
        direction: usize,
    ) -> CallResult<AnyCell<T>> {
        let b = self.block(ws, layer, direction)?;
        let w = RecurrentWeights::new(
            Dyn(self.layer_input(layer)?),
            Dyn(self.hidden),
            self.cell.gates(),
            b.kernel.to_vec(),
            b.recurrent_kernel.to_vec(),
            b.biases.map(|(x, y)| (x.to_vec(), y.to_vec())),
        )?;
        Ok(AnyCell::from_weights(self.cell, w)?)
    }

    /// Lengths of the four framework tensors of `layer` in `format` (0 for a tensor the format
    /// does not have or the descriptor has no bias for).
    pub fn tensor_lens(&self, format: FrnnWeightFormat, layer: usize) -> CallResult<[usize; 4]> {
        self.check_block(layer, 0)?;
        let lens = self.block_lens(layer)?;
        let (k, rk, b) = (lens.kernel, lens.recurrent_kernel, lens.bias);
        Ok(match format {
            FrnnWeightFormat::Internal | FrnnWeightFormat::Torch => [k, rk, b, b],
            FrnnWeightFormat::Keras => {
                let rows = match self.cell {
                    CellConfig::Gru(g) if g.reset_after => 2,
                    _ => 1,
                };
                [k, rk, rows * b, 0]
            }
            FrnnWeightFormat::Onnx => [k, rk, 2 * b, 0],
        })
    }
}

/// Framework tensors handed in by a caller (`None`: absent).
pub(crate) struct SrcTensors<'a, T> {
    pub tensors: [Option<&'a [T]>; 4],
}

/// Framework tensors a caller wants filled (`None`: not wanted).
pub(crate) struct DstTensors<'a, T> {
    pub tensors: [Option<&'a mut [T]>; 4],
}

/// The internal tensors of one block, owned.
struct Internal<T> {
    kernel: Vec<T>,
    recurrent_kernel: Vec<T>,
    biases: Option<(Vec<T>, Vec<T>)>,
}

const TENSOR_ARGS: [[&str; 4]; 4] = [
    ["kernel", "recurrent_kernel", "bias", "recurrent_bias"],
    ["kernel", "recurrent_kernel", "bias", "(unused)"],
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
    ["W", "R", "B", "(unused)"],
];

fn import_kind<T: Real, K: LayoutKind>(
    kind: K,
    i: usize,
    h: usize,
    format: FrnnWeightFormat,
    src: &SrcTensors<'_, T>,
) -> Result<Internal<T>> {
    let [a, b, c, d] = src.tensors;
    let req = |arg: &'static str, t: Option<&[T]>| -> Result<Vec<T>> {
        t.map(<[T]>::to_vec).ok_or(Error::Invalid {
            arg,
            reason: "required tensor is missing (null)".to_string(),
        })
    };
    let names = TENSOR_ARGS[format as usize];
    let w = match format {
        FrnnWeightFormat::Internal => unreachable!("internal tensors are copied directly"),
        FrnnWeightFormat::Keras => Recurrent::from_keras(
            Dyn(i),
            Dyn(h),
            kind,
            &KerasWeights {
                kernel: req(names[0], a)?,
                recurrent_kernel: req(names[1], b)?,
                bias: c.map(<[T]>::to_vec),
            },
        )?,
        FrnnWeightFormat::Torch => Recurrent::from_torch(
            Dyn(i),
            Dyn(h),
            kind,
            &TorchWeights {
                weight_ih: req(names[0], a)?,
                weight_hh: req(names[1], b)?,
                bias_ih: c.map(<[T]>::to_vec),
                bias_hh: d.map(<[T]>::to_vec),
            },
        )?,
        FrnnWeightFormat::Onnx => Recurrent::from_onnx(
            Dyn(i),
            Dyn(h),
            kind,
            &OnnxWeights {
                num_directions: 1,
                w: req(names[0], a)?,
                r: req(names[1], b)?,
                b: c.map(<[T]>::to_vec),
            },
            0,
        )?,
    };
    let w = w.weights();
    Ok(Internal {
        kernel: w.kernel().to_vec(),
        recurrent_kernel: w.recurrent_kernel().to_vec(),
        biases: w
            .bias()
            .zip(w.recurrent_bias())
            .map(|(x, y)| (x.to_vec(), y.to_vec())),
    })
}

/// Copies `src` into `dst` after checking its length.
fn put<T: Copy>(arg: &'static str, dst: Option<&mut [T]>, src: &[T]) -> Result<()> {
    if let Some(dst) = dst {
        check_len(arg, dst.len(), src.len())?;
        dst.copy_from_slice(src);
    }
    Ok(())
}

impl Desc {
    /// Converts framework tensors into block `(layer, direction)` of the weight space `ws`.
    pub fn set_weights<T: Real>(
        &self,
        format: FrnnWeightFormat,
        layer: usize,
        direction: usize,
        src: &SrcTensors<'_, T>,
        ws: &mut [T],
    ) -> CallResult<()> {
        check_len("weight_space", ws.len(), self.weight_space_len())?;
        self.check_block(layer, direction)?;
        let names = TENSOR_ARGS[format as usize];
        let expected = self.tensor_lens(format, layer)?;
        // A tensor the format (or a descriptor without bias) does not have may be passed as
        // null or empty; every other tensor is required.
        let mut tensors = src.tensors;
        for (n, (t, &len)) in tensors.iter_mut().zip(&expected).enumerate() {
            match *t {
                Some(v) if len == 0 && !v.is_empty() => {
                    return Err(CallError::bad_value(
                        names[n],
                        "this tensor does not exist for the descriptor and format: pass a null \
                         pointer",
                    ));
                }
                Some(_) if len == 0 => *t = None,
                None if len > 0 => return Err(CallError::null(names[n])),
                _ => {}
            }
        }
        let src = &SrcTensors { tensors };
        let i = self.layer_input(layer)?;
        let internal = match (format, self.cell) {
            (FrnnWeightFormat::Internal, _) => {
                let [a, b, c, d] = src.tensors;
                check_len(names[0], a.map_or(0, <[T]>::len), expected[0])?;
                check_len(names[1], b.map_or(0, <[T]>::len), expected[1])?;
                check_len(names[2], c.map_or(0, <[T]>::len), expected[2])?;
                check_len(names[3], d.map_or(0, <[T]>::len), expected[3])?;
                Internal {
                    kernel: a.unwrap_or(&[]).to_vec(),
                    recurrent_kernel: b.unwrap_or(&[]).to_vec(),
                    biases: c.zip(d).map(|(x, y)| (x.to_vec(), y.to_vec())),
                }
            }
            (_, CellConfig::SimpleRnn(kind)) => import_kind(kind, i, self.hidden, format, src)?,
            (_, CellConfig::Lstm(kind)) => import_kind(kind, i, self.hidden, format, src)?,
            (_, CellConfig::Gru(kind)) => import_kind(kind, i, self.hidden, format, src)?,
        };
        let lens = self.block_lens(layer)?;
        let at = self.offset(layer, direction);
        let block = &mut ws[at..at + lens.total()];
        let (kernel, rest) = block.split_at_mut(lens.kernel);
        let (recurrent_kernel, rest) = rest.split_at_mut(lens.recurrent_kernel);
        kernel.copy_from_slice(&internal.kernel);
        recurrent_kernel.copy_from_slice(&internal.recurrent_kernel);
        if let Some((b, rb)) = &internal.biases {
            let (bias, recurrent_bias) = rest.split_at_mut(lens.bias);
            bias.copy_from_slice(b);
            recurrent_bias.copy_from_slice(rb);
        }
        Ok(())
    }

    /// Converts block `(layer, direction)` of `ws` — weights, or parameter gradients when
    /// `grads` — into framework tensors.
    pub fn get_weights<T: Real>(
        &self,
        format: FrnnWeightFormat,
        layer: usize,
        direction: usize,
        ws: &[T],
        grads: bool,
        dst: DstTensors<'_, T>,
    ) -> CallResult<()> {
        let names = TENSOR_ARGS[format as usize];
        let expected = self.tensor_lens(format, layer)?;
        for (n, (t, &len)) in dst.tensors.iter().zip(&expected).enumerate() {
            if let Some(t) = t {
                check_len(names[n], t.len(), len)?;
            }
        }
        let cell = self.cell(ws, layer, direction)?;
        let [a, b, c, d] = dst.tensors;
        if format == FrnnWeightFormat::Internal {
            let blk = self.block(ws, layer, direction)?;
            put(names[0], a, blk.kernel)?;
            put(names[1], b, blk.recurrent_kernel)?;
            if let Some((x, y)) = blk.biases {
                put(names[2], c, x)?;
                put(names[3], d, y)?;
            }
            return Ok(());
        }
        // In gradient mode the block *is* the gradient, in `Cell::params` order.
        let params: Vec<Vec<T>> = if grads {
            let blk = self.block(ws, layer, direction)?;
            let mut p = vec![blk.kernel.to_vec(), blk.recurrent_kernel.to_vec()];
            if let Some((x, y)) = blk.biases {
                p.push(x.to_vec());
                p.push(y.to_vec());
            }
            p
        } else {
            Vec::new()
        };
        macro_rules! export {
            ($c:expr) => {
                match format {
                    FrnnWeightFormat::Keras => {
                        let k = if grads {
                            $c.keras_grads(&params)?
                        } else {
                            $c.to_keras()
                        };
                        put(names[0], a, &k.kernel)?;
                        put(names[1], b, &k.recurrent_kernel)?;
                        if let Some(bias) = &k.bias {
                            put(names[2], c, bias)?;
                        }
                    }
                    FrnnWeightFormat::Torch => {
                        let k = if grads {
                            $c.torch_grads(&params)?
                        } else {
                            $c.to_torch()?
                        };
                        put(names[0], a, &k.weight_ih)?;
                        put(names[1], b, &k.weight_hh)?;
                        if let (Some(x), Some(y)) = (&k.bias_ih, &k.bias_hh) {
                            put(names[2], c, x)?;
                            put(names[3], d, y)?;
                        }
                    }
                    FrnnWeightFormat::Onnx => {
                        let k = if grads {
                            $c.onnx_grads(&params)?
                        } else {
                            $c.to_onnx()
                        };
                        put(names[0], a, &k.w)?;
                        put(names[1], b, &k.r)?;
                        if let Some(bias) = &k.b {
                            put(names[2], c, bias)?;
                        }
                    }
                    FrnnWeightFormat::Internal => unreachable!("handled above"),
                }
            };
        }
        match &cell {
            AnyCell::SimpleRnn(x) => export!(x),
            AnyCell::Lstm(x) => export!(x),
            AnyCell::Gru(x) => export!(x),
        }
        Ok(())
    }
}

/// The buffers of a forward call, checked against each other by the caller of [`forward`].
pub(crate) struct ForwardBuffers<'a, T> {
    pub weights: &'a [T],
    pub x: &'a [T],
    pub hx: Option<&'a [T]>,
    pub y: &'a mut [T],
    pub hy: Option<&'a mut [T]>,
    pub reserve: Option<&'a mut [T]>,
}

/// The buffers of a backward call.
pub(crate) struct BackwardBuffers<'a, T> {
    pub weights: &'a [T],
    pub x: &'a [T],
    pub hx: Option<&'a [T]>,
    pub reserve: &'a [T],
    pub dy: &'a [T],
    pub dhy: Option<&'a [T]>,
    pub dx: Option<&'a mut [T]>,
    pub dhx: Option<&'a mut [T]>,
    pub dw: Option<&'a mut [T]>,
    pub mode: GradMode,
}

fn check_min(arg: &'static str, actual: usize, need: usize) -> Result<()> {
    if actual < need {
        return Err(Error::Length {
            arg,
            expected: need,
            actual,
        });
    }
    Ok(())
}

impl Desc {
    /// Forward inference (no `reserve`) or training (with it).
    pub fn forward<T: Real>(&self, spec: &SeqSpec, b: ForwardBuffers<'_, T>) -> CallResult<()> {
        let n = self.io_sizes(spec)?;
        check_len("weight_space", b.weights.len(), self.weight_space_len())?;
        check_len("x", b.x.len(), n.x)?;
        if let Some(hx) = b.hx {
            check_len("hx", hx.len(), n.state)?;
        }
        check_len("y", b.y.len(), n.y)?;
        if let Some(hy) = &b.hy {
            check_len("hy", hy.len(), n.state)?;
        }
        if let Some(r) = &b.reserve {
            check_min("reserve", r.len(), n.reserve)?;
        }
        if self.stacked() {
            let rnn = self.rnn(b.weights, spec)?;
            let run = RunSpec::new(spec.time_steps, spec.batch).layout(spec.layout);
            let mut unused;
            let hy = match b.hy {
                Some(hy) => hy,
                None => {
                    unused = try_filled("hy", n.state, T::ZERO)?;
                    &mut unused[..]
                }
            };
            match b.reserve {
                Some(r) => rnn.forward_train(&run, b.x, b.hx, r, b.y, hy)?,
                None => rnn.forward(&run, b.x, b.hx, b.y, hy)?,
            }
            return Ok(());
        }
        let cell = self.cell(b.weights, 0, 0)?;
        let cell = cell.as_cell();
        let out = match b.reserve {
            Some(r) => seq::forward_train(cell, spec, b.x, b.hx, r)?,
            None => seq::forward(cell, spec, b.x, b.hx)?,
        };
        b.y.copy_from_slice(&out.y);
        if let Some(hy) = b.hy {
            hy.copy_from_slice(&out.final_state);
        }
        Ok(())
    }

    /// Backward through time: any of `dx`, `dhx`, `dw` that is given is written (`dw`
    /// overwritten or accumulated into according to `mode`).
    pub fn backward<T: Real>(&self, spec: &SeqSpec, b: BackwardBuffers<'_, T>) -> CallResult<()> {
        let n = self.io_sizes(spec)?;
        check_len("weight_space", b.weights.len(), self.weight_space_len())?;
        check_len("x", b.x.len(), n.x)?;
        if let Some(hx) = b.hx {
            check_len("hx", hx.len(), n.state)?;
        }
        check_min("reserve", b.reserve.len(), n.reserve)?;
        check_len("dy", b.dy.len(), n.y)?;
        if let Some(g) = b.dhy {
            check_len("dhy", g.len(), n.state)?;
        }
        if let Some(g) = &b.dx {
            check_len("dx", g.len(), n.x)?;
        }
        if let Some(g) = &b.dhx {
            check_len("dhx", g.len(), n.state)?;
        }
        if let Some(g) = &b.dw {
            check_len("dw", g.len(), self.weight_space_len())?;
        }
        // Parameter gradients per cell (`layer·D + direction`), in `Cell::params` order: the
        // weight-space layout, block after block.
        let start = match (&b.dw, b.mode) {
            (Some(dw), GradMode::Accumulate) => Some(&dw[..]),
            _ => None,
        };
        let (dx, dhx, params) = if self.stacked() {
            let rnn = self.rnn(b.weights, spec)?;
            let run = RunSpec::new(spec.time_steps, spec.batch).layout(spec.layout);
            let mut grads = RnnGrads::zeros(&rnn, &run)?;
            if let Some(start) = start {
                fill_params(grads.params.iter_mut().flatten(), start);
            }
            rnn.bptt(
                &run,
                b.x,
                b.hx,
                b.reserve,
                b.dy,
                b.dhy,
                &mut grads,
                GradMode::Accumulate,
            )?;
            let params = grads.params.into_iter().flatten().collect();
            (grads.dx, grads.d_initial_state, params)
        } else {
            let any = self.cell(b.weights, 0, 0)?;
            let cell = any.as_cell();
            let mut grads = Gradients::zeros(cell, spec)?;
            if let Some(start) = start {
                fill_params(grads.params.iter_mut(), start);
            }
            seq::bptt_into(
                cell,
                spec,
                b.x,
                b.hx,
                b.reserve,
                b.dy,
                b.dhy,
                &mut grads,
                GradMode::Accumulate,
            )?;
            (grads.dx, grads.d_initial_state, grads.params)
        };
        if let Some(out) = b.dx {
            out.copy_from_slice(&dx);
        }
        if let Some(out) = b.dhx {
            out.copy_from_slice(&dhx);
        }
        if let Some(dw) = b.dw {
            let mut at = 0;
            for p in &params {
                dw[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        }
        Ok(())
    }
}

/// Copies consecutive runs of `from` into each parameter buffer in turn (the weight-space
/// layout is every cell's parameters, in order, back to back).
fn fill_params<'a, T: Copy + 'a>(params: impl Iterator<Item = &'a mut Vec<T>>, from: &[T]) {
    let mut at = 0;
    for p in params {
        let len = p.len();
        p.copy_from_slice(&from[at..at + len]);
        at += len;
    }
}
