//! Keras, PyTorch and ONNX weight layouts ↔ the internal packed layout.
//!
//! Built-in cells store `kernel [I, G·H]`, `recurrent_kernel [H, G·H]`, `bias [G·H]` and
//! `recurrent_bias [G·H]`, gate blocks of `H` columns in the internal order (see [`crate::cell`]).
//! Each framework differs from that in two ways only, and one generic core handles both:
//!
//! - **orientation**: Keras stores matrices as the internal layout does (`[rows, G·H]`);
//!   PyTorch and ONNX store them transposed (`[G·H, rows]`);
//! - **gate order** along the `G·H` axis, a permutation per cell and framework:
//!
//! | cell | internal (block 0, 1, …) | Keras | PyTorch | ONNX |
//! |---|---|---|---|---|
//! | LSTM | i, f, c, o | i, f, c, o | i, f, g, o (`g` = `c`) | i, o, f, c |
//! | GRU | z, r, h | z, r, h | r, z, n (`n` = `h`) | z, r, h |
//! | SimpleRNN | — | — | — | — |
//!
//! [`LayoutKind::gate_order`] gives the table as data: `order[k]` is the internal block that
//! holds the framework's block `k` (PyTorch GRU: `[1, 0, 2]`, the `r` block is internal
//! block [`gru::RESET`]).
//!
//! # Tensors per framework
//! | framework | type | tensors |
//! |---|---|---|
//! | Keras | [`KerasWeights`] | `kernel [I, G·H]`, `recurrent_kernel [H, G·H]`, `bias [G·H]` — or `[2, G·H]` for GRU `reset_after` (row 0 input, row 1 recurrent) |
//! | PyTorch | [`TorchWeights`] | `weight_ih [G·H, I]`, `weight_hh [G·H, H]`, `bias_ih [G·H]`, `bias_hh [G·H]` |
//! | ONNX | [`OnnxWeights`] | `W [D, G·H, I]`, `R [D, G·H, H]`, `B [D, 2·G·H]` (`Wb` then `Rb`) |
//!
//! # Biases
//! - Keras has one bias (except GRU `reset_after`): it loads into the internal `bias` with a
//!   zero `recurrent_bias`, and export writes `bias + recurrent_bias` — exact, since every
//!   bias enters the same pre-activation. Keras GRU `reset_after` loads both rows.
//! - PyTorch `bias_ih` ↔ internal `bias`, `bias_hh` ↔ `recurrent_bias`; a module built with
//!   `bias=False` has neither. ONNX `Wb` ↔ `bias`, `Rb` ↔ `recurrent_bias`.
//!
//! Round trips are exact (only copies, and one addition on Keras export when the cell has a
//! non-zero `recurrent_bias`): `from_x(to_x(w)) == w` for PyTorch and ONNX, and
//! `to_x(from_x(w)) == w` for all three.
//!
//! # Variants
//! - PyTorch's GRU is the reset-after variant: a GRU with `reset_after = false` has no PyTorch
//!   layout ([`Error::Invalid`] on `kind.reset_after`).
//! - ONNX GRU `linear_before_reset = 1` is `reset_after = true`, `0` is `reset_after = false`;
//!   the attribute travels in the [`GruKind`], not in the weights. ONNX LSTM peepholes (`P`)
//!   are not supported (the built-in LSTM has none).
//! - Activations are not part of any weight layout and are not checked here.
//!
//! # Gradients
//! `*_grads` converts gradients in the order of [`Cell::params`](crate::Cell::params)
//! (`kernel`, `recurrent_kernel`, then `bias`, `recurrent_bias` when present) into a
//! framework's names and layout — what that framework's autograd reports for a cell loaded
//! with `from_*`. For Keras's single bias that is the gradient of the internal `bias` (the
//! Keras bias feeds only it), for GRU `reset_after` the two rows `[∂bias; ∂recurrent_bias]`.
//!
//! # Example
//! ```
//! use fused_rnn::layout::TorchWeights;
//! use fused_rnn::prelude::*;
//!
//! let (i, h) = (2, 3);
//! let torch = TorchWeights {
//!     weight_ih: (0..3 * h * i).map(|v| v as f64).collect(),
//!     weight_hh: vec![0.5; 3 * h * h],
//!     bias_ih: Some(vec![0.1; 3 * h]),
//!     bias_hh: Some(vec![0.2; 3 * h]),
//! };
//! let gru = DynGru::from_torch(Dyn(i), Dyn(h), GruKind::default(), &torch)?;
//! assert_eq!(gru.to_torch()?, torch);
//! # Ok::<(), fused_rnn::Error>(())
//! ```

use crate::cell::{
    BIAS, CellKind, GruKind, KERNEL, LstmKind, RECURRENT_BIAS, RECURRENT_KERNEL, Recurrent,
    RecurrentWeights, SimpleRnnKind, gru, lstm,
};
use crate::dim::Dim;
use crate::error::{Error, Result, check_len, check_nonzero, checked_size};
use crate::real::Real;

/// A framework whose weight layout the crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framework {
    /// Keras 3 (`keras.layers.SimpleRNN`, `LSTM`, `GRU`).
    Keras,
    /// PyTorch (`torch.nn.RNN`, `LSTM`, `GRU`).
    Torch,
    /// ONNX (`RNN`, `LSTM`, `GRU` operators).
    Onnx,
}

impl Framework {
    /// Every framework, in declaration order.
    pub const ALL: [Framework; 3] = [Framework::Keras, Framework::Torch, Framework::Onnx];

    /// The framework's name: `keras`, `torch` or `onnx`.
    pub fn name(self) -> &'static str {
        match self {
            Framework::Keras => "keras",
            Framework::Torch => "torch",
            Framework::Onnx => "onnx",
        }
    }

    /// Parses `keras`, `torch` or `onnx`; anything else is [`Error::Unknown`].
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| Error::Unknown {
                what: "framework",
                value: name.to_string(),
                expected: "keras, torch, onnx",
            })
    }

    /// Whether the framework stores matrices gate axis first (`[G·H, rows]`).
    fn transposed(self) -> bool {
        !matches!(self, Framework::Keras)
    }
}

impl std::fmt::Display for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::cell::SimpleRnnKind {}
    impl Sealed for crate::cell::LstmKind {}
    impl Sealed for crate::cell::GruKind {}
}

/// What a cell kind needs to be converted from and to the framework layouts: its gate order
/// per framework and its bias shape. Implemented by the built-in kinds; sealed.
pub trait LayoutKind: CellKind + sealed::Sealed {
    /// `order[k]` = the internal gate block holding `framework`'s gate block `k`
    /// (`K::GATES` entries, a permutation).
    fn gate_order(framework: Framework) -> &'static [usize];

    /// Rows of the Keras `bias`: 2 for GRU `reset_after`, otherwise 1.
    fn keras_bias_rows(&self) -> usize {
        1
    }

    /// Checks that `framework` has a layer of this kind ([`Error::Invalid`] otherwise).
    fn check_framework(&self, framework: Framework) -> Result<()> {
        let _ = framework;
        Ok(())
    }
}

/// PyTorch LSTM `i, f, g, o`.
const LSTM_TORCH: [usize; 4] = [lstm::INPUT, lstm::FORGET, lstm::CELL, lstm::OUTPUT];
/// ONNX LSTM `i, o, f, c`.
const LSTM_ONNX: [usize; 4] = [lstm::INPUT, lstm::OUTPUT, lstm::FORGET, lstm::CELL];
/// Keras LSTM `i, f, c, o` (the internal order).
const LSTM_KERAS: [usize; 4] = [lstm::INPUT, lstm::FORGET, lstm::CELL, lstm::OUTPUT];
/// Keras and ONNX GRU `z, r, h` (the internal order).
const GRU_KERAS_ONNX: [usize; 3] = [gru::UPDATE, gru::RESET, gru::CANDIDATE];
/// PyTorch GRU `r, z, n`.
const GRU_TORCH: [usize; 3] = [gru::RESET, gru::UPDATE, gru::CANDIDATE];

impl LayoutKind for SimpleRnnKind {
    fn gate_order(_framework: Framework) -> &'static [usize] {
        &[0]
    }
}

impl LayoutKind for LstmKind {
    fn gate_order(framework: Framework) -> &'static [usize] {
        match framework {
            Framework::Keras => &LSTM_KERAS,
            Framework::Torch => &LSTM_TORCH,
            Framework::Onnx => &LSTM_ONNX,
        }
    }
}

impl LayoutKind for GruKind {
    fn gate_order(framework: Framework) -> &'static [usize] {
        match framework {
            Framework::Keras | Framework::Onnx => &GRU_KERAS_ONNX,
            Framework::Torch => &GRU_TORCH,
        }
    }

    fn keras_bias_rows(&self) -> usize {
        if self.reset_after { 2 } else { 1 }
    }

    fn check_framework(&self, framework: Framework) -> Result<()> {
        if framework == Framework::Torch && !self.reset_after {
            return Err(Error::Invalid {
                arg: "kind.reset_after",
                reason: "PyTorch's GRU is the reset-after variant; a GRU with \
                         reset_after = false has no PyTorch layout"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// Keras weights of one layer (one direction), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasWeights<T> {
    /// `kernel [I, G·H]`.
    pub kernel: Vec<T>,
    /// `recurrent_kernel [H, G·H]`.
    pub recurrent_kernel: Vec<T>,
    /// `bias [G·H]`, or `[2, G·H]` for GRU `reset_after`; `None` for `use_bias=False`.
    pub bias: Option<Vec<T>>,
}

/// PyTorch weights of one layer and direction (`weight_ih_l{k}` …), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchWeights<T> {
    /// `weight_ih [G·H, I]`.
    pub weight_ih: Vec<T>,
    /// `weight_hh [G·H, H]`.
    pub weight_hh: Vec<T>,
    /// `bias_ih [G·H]`; `None` (together with `bias_hh`) for `bias=False`.
    pub bias_ih: Option<Vec<T>>,
    /// `bias_hh [G·H]`; `None` (together with `bias_ih`) for `bias=False`.
    pub bias_hh: Option<Vec<T>>,
}

/// ONNX `RNN` / `LSTM` / `GRU` weight inputs, row-major, for `num_directions` directions
/// (`D`; 1 forward or reverse, 2 bidirectional).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxWeights<T> {
    /// `D`, the leading dimension of every tensor.
    pub num_directions: usize,
    /// `W [D, G·H, I]`.
    pub w: Vec<T>,
    /// `R [D, G·H, H]`.
    pub r: Vec<T>,
    /// `B [D, 2·G·H]`: `Wb` then `Rb` per direction; `None` when the node has no `B` input.
    pub b: Option<Vec<T>>,
}

/// How one framework stores gate-blocked tensors of a cell: its gate order and orientation.
#[derive(Debug, Clone, Copy)]
struct BlockMap {
    /// `order[k]` = internal block of the framework's block `k`.
    order: &'static [usize],
    /// `H`.
    h: usize,
    /// Matrices stored `[G·H, rows]` rather than `[rows, G·H]`.
    transposed: bool,
}

impl BlockMap {
    fn new<K: LayoutKind>(framework: Framework, hidden: usize) -> Self {
        let order = K::gate_order(framework);
        debug_assert_eq!(order.len(), K::GATES);
        Self {
            order,
            h: hidden,
            transposed: framework.transposed(),
        }
    }

    /// `G·H`.
    fn width(&self) -> usize {
        self.order.len() * self.h
    }

    /// Calls `f(internal_index, framework_index)` for every element of a `rows`-row tensor
    /// (a bias is one row; orientation does not matter for it).
    fn for_each(&self, rows: usize, mut f: impl FnMut(usize, usize)) {
        let (h, gh) = (self.h, self.width());
        for r in 0..rows {
            for (k, &g) in self.order.iter().enumerate() {
                for u in 0..h {
                    let col = k * h + u;
                    let fw = if self.transposed {
                        col * rows + r
                    } else {
                        r * gh + col
                    };
                    f(r * gh + g * h + u, fw);
                }
            }
        }
    }

    /// A framework tensor of `rows` rows in the internal layout; checks its length.
    fn import<T: Real>(&self, arg: &'static str, src: &[T], rows: usize) -> Result<Vec<T>> {
        let len = checked_size(arg, &[rows, self.width()])?;
        check_len(arg, src.len(), len)?;
        let mut out = vec![T::ZERO; len];
        self.for_each(rows, |i, f| out[i] = src[f]);
        Ok(out)
    }

    /// An internal tensor of `rows` rows (length already known to be right) in the framework's
    /// layout.
    fn export<T: Real>(&self, src: &[T], rows: usize) -> Vec<T> {
        let mut out = vec![T::ZERO; src.len()];
        self.for_each(rows, |i, f| out[f] = src[i]);
        out
    }
}

/// The four internal tensors of a cell (its weights or gradients shaped like them).
#[derive(Debug, Clone, Copy)]
struct Tensors<'a, T> {
    kernel: &'a [T],
    recurrent_kernel: &'a [T],
    /// `(bias, recurrent_bias)`.
    biases: Option<(&'a [T], &'a [T])>,
}

/// The argument names of gradient buffers, indexed like [`crate::Cell::params`].
const GRAD_ARGS: [&str; 4] = [
    "grads[kernel]",
    "grads[recurrent_kernel]",
    "grads[bias]",
    "grads[recurrent_bias]",
];

/// Checks what every import checks first: the kind exists in `framework`, sizes are non-zero
/// and `G·H` fits in `usize`.
fn check_dims<K: LayoutKind>(kind: &K, framework: Framework, i: usize, h: usize) -> Result<()> {
    kind.check_framework(framework)?;
    check_nonzero("input_size", i)?;
    check_nonzero("hidden_size", h)?;
    checked_size("hidden_size", &[K::GATES, h])?;
    Ok(())
}

impl<T: Real, K: LayoutKind, I: Dim, H: Dim> Recurrent<T, K, I, H> {
    fn sizes(&self) -> (usize, usize) {
        (self.weights.input_size(), self.weights.hidden_size())
    }

    fn block_map(&self, framework: Framework) -> BlockMap {
        BlockMap::new::<K>(framework, self.weights.hidden_size())
    }

    /// The cell's own weights as [`Tensors`].
    fn weight_tensors(&self) -> Tensors<'_, T> {
        let w = &self.weights;
        Tensors {
            kernel: w.kernel(),
            recurrent_kernel: w.recurrent_kernel(),
            biases: w.bias().zip(w.recurrent_bias()),
        }
    }

    /// Gradients in [`crate::Cell::params`] order as [`Tensors`], every length checked.
    fn grad_tensors<'a>(&self, grads: &'a [Vec<T>]) -> Result<Tensors<'a, T>> {
        let w = &self.weights;
        let expected = if w.has_bias() { 4 } else { 2 };
        check_len("grads", grads.len(), expected)?;
        let lens = [
            w.kernel().len(),
            w.recurrent_kernel().len(),
            w.bias().map_or(0, <[T]>::len),
            w.recurrent_bias().map_or(0, <[T]>::len),
        ];
        for (idx, g) in grads.iter().enumerate() {
            check_len(GRAD_ARGS[idx], g.len(), lens[idx])?;
        }
        Ok(Tensors {
            kernel: &grads[KERNEL],
            recurrent_kernel: &grads[RECURRENT_KERNEL],
            biases: w
                .has_bias()
                .then(|| (&grads[BIAS][..], &grads[RECURRENT_BIAS][..])),
        })
    }

    /// Builds the cell from internal tensors.
    fn assemble(
        input: I,
        hidden: H,
        kind: K,
        kernel: Vec<T>,
        recurrent_kernel: Vec<T>,
        biases: Option<(Vec<T>, Vec<T>)>,
    ) -> Result<Self> {
        let w = RecurrentWeights::new(input, hidden, K::GATES, kernel, recurrent_kernel, biases)?;
        Self::from_weights(kind, w)
    }

    // ---------------------------------------------------------------- Keras

    /// A cell from Keras weights (see the [module docs](self) for shapes and biases).
    ///
    /// Errors: [`Error::Zero`] for a zero size, [`Error::Length`] naming the tensor whose
    /// length is not its shape's.
    pub fn from_keras(input: I, hidden: H, kind: K, w: &KerasWeights<T>) -> Result<Self> {
        let (i, h) = (input.value(), hidden.value());
        check_dims(&kind, Framework::Keras, i, h)?;
        let map = BlockMap::new::<K>(Framework::Keras, h);
        let kernel = map.import("kernel", &w.kernel, i)?;
        let recurrent_kernel = map.import("recurrent_kernel", &w.recurrent_kernel, h)?;
        let biases = match &w.bias {
            None => None,
            Some(b) => {
                let gh = map.width();
                let rows = kind.keras_bias_rows();
                check_len("bias", b.len(), checked_size("bias", &[rows, gh])?)?;
                let input_bias = map.import("bias", &b[..gh], 1)?;
                let recurrent_bias = if rows == 2 {
                    map.import("bias", &b[gh..], 1)?
                } else {
                    vec![T::ZERO; gh]
                };
                Some((input_bias, recurrent_bias))
            }
        };
        Self::assemble(input, hidden, kind, kernel, recurrent_kernel, biases)
    }

    /// The cell's weights in Keras's layout. A single Keras bias is `bias + recurrent_bias`.
    pub fn to_keras(&self) -> KerasWeights<T> {
        self.keras_from(self.weight_tensors(), true)
    }

    /// Parameter gradients (in [`crate::Cell::params`] order) in Keras's layout: the gradient
    /// Keras reports for each of its tensors when the cell was loaded with
    /// [`from_keras`](Self::from_keras).
    ///
    /// Errors: [`Error::Length`] when `grads` does not match the cell's parameters.
    pub fn keras_grads(&self, grads: &[Vec<T>]) -> Result<KerasWeights<T>> {
        Ok(self.keras_from(self.grad_tensors(grads)?, false))
    }

    /// Keras tensors from internal ones; a single bias row sums both biases when `sum_biases`
    /// (weights) and takes the input-side one otherwise (gradients).
    fn keras_from(&self, t: Tensors<'_, T>, sum_biases: bool) -> KerasWeights<T> {
        let (i, h) = self.sizes();
        let map = self.block_map(Framework::Keras);
        let bias = t.biases.map(|(b, rb)| {
            let mut out = Vec::with_capacity(2 * b.len());
            if self.kind.keras_bias_rows() == 2 {
                out.extend(map.export(b, 1));
                out.extend(map.export(rb, 1));
            } else if sum_biases {
                let sum: Vec<T> = b.iter().zip(rb).map(|(&x, &y)| x + y).collect();
                out.extend(map.export(&sum, 1));
            } else {
                out.extend(map.export(b, 1));
            }
            out
        });
        KerasWeights {
            kernel: map.export(t.kernel, i),
            recurrent_kernel: map.export(t.recurrent_kernel, h),
            bias,
        }
    }

    // ---------------------------------------------------------------- PyTorch

    /// A cell from PyTorch weights (see the [module docs](self) for shapes and biases).
    ///
    /// Errors: [`Error::Invalid`] for a GRU kind with `reset_after = false` or only one of the
    /// two biases, [`Error::Zero`] for a zero size, [`Error::Length`] naming the tensor whose
    /// length is not its shape's.
    pub fn from_torch(input: I, hidden: H, kind: K, w: &TorchWeights<T>) -> Result<Self> {
        let (i, h) = (input.value(), hidden.value());
        check_dims(&kind, Framework::Torch, i, h)?;
        let map = BlockMap::new::<K>(Framework::Torch, h);
        let kernel = map.import("weight_ih", &w.weight_ih, i)?;
        let recurrent_kernel = map.import("weight_hh", &w.weight_hh, h)?;
        let biases = match (&w.bias_ih, &w.bias_hh) {
            (None, None) => None,
            (Some(bi), Some(bh)) => {
                Some((map.import("bias_ih", bi, 1)?, map.import("bias_hh", bh, 1)?))
            }
            (Some(_), None) => return Err(missing_torch_bias("bias_hh", "bias_ih")),
            (None, Some(_)) => return Err(missing_torch_bias("bias_ih", "bias_hh")),
        };
        Self::assemble(input, hidden, kind, kernel, recurrent_kernel, biases)
    }

    /// The cell's weights in PyTorch's layout.
    ///
    /// Errors: [`Error::Invalid`] for a GRU with `reset_after = false`.
    pub fn to_torch(&self) -> Result<TorchWeights<T>> {
        self.kind.check_framework(Framework::Torch)?;
        Ok(self.torch_from(self.weight_tensors()))
    }

    /// Parameter gradients (in [`crate::Cell::params`] order) in PyTorch's layout
    /// (`grad.bias_ih` = `∂bias`, `grad.bias_hh` = `∂recurrent_bias`).
    ///
    /// Errors: as [`to_torch`](Self::to_torch), and [`Error::Length`] when `grads` does not
    /// match the cell's parameters.
    pub fn torch_grads(&self, grads: &[Vec<T>]) -> Result<TorchWeights<T>> {
        self.kind.check_framework(Framework::Torch)?;
        Ok(self.torch_from(self.grad_tensors(grads)?))
    }

    fn torch_from(&self, t: Tensors<'_, T>) -> TorchWeights<T> {
        let (i, h) = self.sizes();
        let map = self.block_map(Framework::Torch);
        TorchWeights {
            weight_ih: map.export(t.kernel, i),
            weight_hh: map.export(t.recurrent_kernel, h),
            bias_ih: t.biases.map(|(b, _)| map.export(b, 1)),
            bias_hh: t.biases.map(|(_, rb)| map.export(rb, 1)),
        }
    }

    // ---------------------------------------------------------------- ONNX

    /// A cell from direction `direction` (0-based, `< w.num_directions`) of ONNX weights
    /// (see the [module docs](self) for shapes). For a GRU, `kind.reset_after` is the node's
    /// `linear_before_reset`.
    ///
    /// Errors: [`Error::Zero`] for a zero size, [`Error::Invalid`] for a direction out of
    /// range, [`Error::Length`] naming the tensor (`W`, `R`, `B`) whose length is not its
    /// shape's.
    pub fn from_onnx(
        input: I,
        hidden: H,
        kind: K,
        w: &OnnxWeights<T>,
        direction: usize,
    ) -> Result<Self> {
        let (i, h) = (input.value(), hidden.value());
        check_dims(&kind, Framework::Onnx, i, h)?;
        let d = w.num_directions;
        check_nonzero("num_directions", d)?;
        if direction >= d {
            return Err(Error::Invalid {
                arg: "direction",
                reason: format!("direction {direction} is out of range for {d} direction(s)"),
            });
        }
        let map = BlockMap::new::<K>(Framework::Onnx, h);
        let gh = map.width();
        // The slab of `direction` in a `[D, len]` tensor, after checking the whole length.
        fn slab<'s, T>(
            arg: &'static str,
            src: &'s [T],
            d: usize,
            direction: usize,
            len: usize,
        ) -> Result<&'s [T]> {
            check_len(arg, src.len(), checked_size(arg, &[d, len])?)?;
            Ok(&src[direction * len..(direction + 1) * len])
        }
        let kernel = map.import(
            "W",
            slab("W", &w.w, d, direction, checked_size("W", &[gh, i])?)?,
            i,
        )?;
        let recurrent_kernel = map.import(
            "R",
            slab("R", &w.r, d, direction, checked_size("R", &[gh, h])?)?,
            h,
        )?;
        let biases = match &w.b {
            None => None,
            Some(b) => {
                let b = slab("B", b, d, direction, checked_size("B", &[2, gh])?)?;
                Some((map.import("B", &b[..gh], 1)?, map.import("B", &b[gh..], 1)?))
            }
        };
        Self::assemble(input, hidden, kind, kernel, recurrent_kernel, biases)
    }

    /// The cell's weights as a one-direction (`D = 1`) ONNX node's `W`, `R` and `B`.
    pub fn to_onnx(&self) -> OnnxWeights<T> {
        self.onnx_from(self.weight_tensors())
    }

    /// Parameter gradients (in [`crate::Cell::params`] order) as one-direction ONNX tensors.
    ///
    /// Errors: [`Error::Length`] when `grads` does not match the cell's parameters.
    pub fn onnx_grads(&self, grads: &[Vec<T>]) -> Result<OnnxWeights<T>> {
        Ok(self.onnx_from(self.grad_tensors(grads)?))
    }

    fn onnx_from(&self, t: Tensors<'_, T>) -> OnnxWeights<T> {
        let (i, h) = self.sizes();
        let map = self.block_map(Framework::Onnx);
        OnnxWeights {
            num_directions: 1,
            w: map.export(t.kernel, i),
            r: map.export(t.recurrent_kernel, h),
            b: t.biases.map(|(b, rb)| {
                let mut out = map.export(b, 1);
                out.extend(map.export(rb, 1));
                out
            }),
        }
    }
}

fn missing_torch_bias(missing: &'static str, given: &str) -> Error {
    Error::Invalid {
        arg: missing,
        reason: format!(
            "`{given}` is given without `{missing}`; PyTorch has both biases or neither"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::cell::{Cell, DynGru, DynLstm, DynSimpleRnn, StaticLstm};
    use crate::dim::{Const, Dyn};

    /// Distinct, exactly representable values `start, start + 1, …` (scaled to stay small).
    fn ramp<T: Real>(n: usize, start: usize) -> Vec<T> {
        (0..n)
            .map(|v| T::from_f64((start + v) as f64 / 64.0))
            .collect()
    }

    fn gru(reset_after: bool) -> GruKind {
        GruKind {
            reset_after,
            ..GruKind::default()
        }
    }

    /// Runs `f` for every built-in kind (every GRU variant), with and without bias.
    fn for_each_cell(mut f: impl FnMut(&str, &dyn Fn(bool, u64) -> AnyCell)) {
        let simple = |b: bool, s: u64| {
            AnyCell::Simple(
                DynSimpleRnn::random(Dyn(3), Dyn(5), SimpleRnnKind::default(), b, s).unwrap(),
            )
        };
        let lstm = |b: bool, s: u64| {
            AnyCell::Lstm(DynLstm::random(Dyn(3), Dyn(5), LstmKind::default(), b, s).unwrap())
        };
        let gru_ra = |b: bool, s: u64| {
            AnyCell::Gru(DynGru::random(Dyn(3), Dyn(5), gru(true), b, s).unwrap())
        };
        let gru_rb = |b: bool, s: u64| {
            AnyCell::Gru(DynGru::random(Dyn(3), Dyn(5), gru(false), b, s).unwrap())
        };
        f("simple_rnn", &simple);
        f("lstm", &lstm);
        f("gru reset_after", &gru_ra);
        f("gru reset_before", &gru_rb);
    }

    #[derive(Debug, Clone, PartialEq)]
    enum AnyCell {
        Simple(DynSimpleRnn<f64>),
        Lstm(DynLstm<f64>),
        Gru(DynGru<f64>),
    }

    /// Applies a generic check to whichever cell `c` is.
    macro_rules! with_cell {
        ($c:expr, $f:ident) => {
            match $c {
                AnyCell::Simple(c) => $f(c),
                AnyCell::Lstm(c) => $f(c),
                AnyCell::Gru(c) => $f(c),
            }
        };
    }

    fn torch_round_trip<K: LayoutKind + PartialEq>(c: &Recurrent<f64, K, Dyn, Dyn>) {
        let (i, h) = (Dyn(c.input_size()), Dyn(c.hidden_size()));
        if c.kind().check_framework(Framework::Torch).is_err() {
            assert!(matches!(c.to_torch(), Err(Error::Invalid { .. })));
            return;
        }
        let t = c.to_torch().unwrap();
        let back = Recurrent::from_torch(i, h, *c.kind(), &t).unwrap();
        assert_eq!(&back, c);
        assert_eq!(back.to_torch().unwrap(), t);
    }

    fn onnx_round_trip<K: LayoutKind + PartialEq>(c: &Recurrent<f64, K, Dyn, Dyn>) {
        let (i, h) = (Dyn(c.input_size()), Dyn(c.hidden_size()));
        let o = c.to_onnx();
        assert_eq!(o.num_directions, 1);
        let back = Recurrent::from_onnx(i, h, *c.kind(), &o, 0).unwrap();
        assert_eq!(&back, c);
        assert_eq!(back.to_onnx(), o);
    }

    fn keras_round_trip<K: LayoutKind + PartialEq>(c: &Recurrent<f64, K, Dyn, Dyn>) {
        let (i, h) = (Dyn(c.input_size()), Dyn(c.hidden_size()));
        // Keras → internal → Keras is exact for every kind.
        let k = c.to_keras();
        let back = Recurrent::from_keras(i, h, *c.kind(), &k).unwrap();
        assert_eq!(back.to_keras(), k);
        assert_eq!(back.weights().kernel(), c.weights().kernel());
        assert_eq!(
            back.weights().recurrent_kernel(),
            c.weights().recurrent_kernel()
        );
        if c.kind().keras_bias_rows() == 2 || !c.weights().has_bias() {
            // Both biases survive: the cell itself round-trips.
            assert_eq!(&back, c);
        } else {
            // One Keras bias: the sum lands in `bias`, `recurrent_bias` is zero.
            let (b, rb) = (
                c.weights().bias().unwrap(),
                c.weights().recurrent_bias().unwrap(),
            );
            let sum: Vec<f64> = b.iter().zip(rb).map(|(x, y)| x + y).collect();
            assert_eq!(back.weights().bias().unwrap(), &sum[..]);
            assert!(
                back.weights()
                    .recurrent_bias()
                    .unwrap()
                    .iter()
                    .all(|&v| v == 0.0)
            );
        }
    }

    #[test]
    fn round_trips_every_cell_and_framework() {
        for_each_cell(|name, make| {
            for bias in [true, false] {
                let c = make(bias, 11);
                eprintln!("{name}, bias {bias}");
                with_cell!(&c, torch_round_trip);
                with_cell!(&c, onnx_round_trip);
                with_cell!(&c, keras_round_trip);
            }
        });
    }

    #[test]
    fn framework_tensors_round_trip_exactly() {
        let (i, h) = (3, 2);
        // Keras LSTM, single bias.
        let k = KerasWeights {
            kernel: ramp::<f32>(i * 8, 0),
            recurrent_kernel: ramp(h * 8, 100),
            bias: Some(ramp(8, 200)),
        };
        let c = DynLstm::from_keras(Dyn(i), Dyn(h), LstmKind::default(), &k).unwrap();
        assert_eq!(c.to_keras(), k);
        // Keras GRU reset_after, two bias rows.
        let k = KerasWeights {
            kernel: ramp::<f64>(i * 6, 0),
            recurrent_kernel: ramp(h * 6, 100),
            bias: Some(ramp(12, 200)),
        };
        let c = DynGru::from_keras(Dyn(i), Dyn(h), gru(true), &k).unwrap();
        assert_eq!(c.to_keras(), k);
        // Keras GRU reset_before, one row.
        let k = KerasWeights {
            bias: Some(ramp(6, 300)),
            ..k
        };
        let c = DynGru::from_keras(Dyn(i), Dyn(h), gru(false), &k).unwrap();
        assert_eq!(c.to_keras(), k);
        // PyTorch LSTM, no bias.
        let t = TorchWeights {
            weight_ih: ramp::<f64>(8 * i, 0),
            weight_hh: ramp(8 * h, 100),
            bias_ih: None,
            bias_hh: None,
        };
        let c = DynLstm::from_torch(Dyn(i), Dyn(h), LstmKind::default(), &t).unwrap();
        assert_eq!(c.to_torch().unwrap(), t);
        // ONNX GRU, both directions of a bidirectional node.
        let o = OnnxWeights {
            num_directions: 2,
            w: ramp::<f64>(2 * 6 * i, 0),
            r: ramp(2 * 6 * h, 100),
            b: Some(ramp(2 * 12, 200)),
        };
        for d in 0..2 {
            let c = DynGru::from_onnx(Dyn(i), Dyn(h), gru(false), &o, d).unwrap();
            let back = c.to_onnx();
            assert_eq!(back.w, o.w[d * 6 * i..(d + 1) * 6 * i]);
            assert_eq!(back.r, o.r[d * 6 * h..(d + 1) * 6 * h]);
            assert_eq!(back.b.unwrap(), o.b.as_ref().unwrap()[d * 12..(d + 1) * 12]);
        }
    }

    #[test]
    fn torch_gru_blocks_by_hand() {
        // H = 1, I = 2: weight_ih [3, 2] rows are the r, z, n blocks.
        let t = TorchWeights {
            weight_ih: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], // r: (1,2), z: (3,4), n: (5,6)
            weight_hh: vec![10.0, 20.0, 30.0],
            bias_ih: Some(vec![0.1, 0.2, 0.3]),
            bias_hh: Some(vec![0.4, 0.5, 0.6]),
        };
        let c = DynGru::from_torch(Dyn(2), Dyn(1), GruKind::default(), &t).unwrap();
        let w = c.weights();
        // Internal kernel [I = 2, 3]: columns z, r, h; row = input index.
        assert_eq!(w.kernel(), &[3.0, 1.0, 5.0, 4.0, 2.0, 6.0]);
        assert_eq!(w.recurrent_kernel(), &[20.0, 10.0, 30.0]);
        // The r block (PyTorch block 0) is internal block 1.
        assert_eq!(w.bias().unwrap()[gru::RESET], 0.1);
        assert_eq!(w.bias().unwrap(), &[0.2, 0.1, 0.3]);
        assert_eq!(w.recurrent_bias().unwrap(), &[0.5, 0.4, 0.6]);
    }

    #[test]
    fn onnx_lstm_blocks_by_hand() {
        // H = 1, I = 1: W [1, 4, 1] holds i, o, f, c.
        let o = OnnxWeights {
            num_directions: 1,
            w: vec![1.0, 2.0, 3.0, 4.0],
            r: vec![5.0, 6.0, 7.0, 8.0],
            b: Some(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
        };
        let c =
            StaticLstm::<f64, 1, 1>::from_onnx(Const, Const, LstmKind::default(), &o, 0).unwrap();
        let w = c.weights();
        // Internal i, f, c, o.
        assert_eq!(w.kernel(), &[1.0, 3.0, 4.0, 2.0]);
        assert_eq!(w.recurrent_kernel(), &[5.0, 7.0, 8.0, 6.0]);
        assert_eq!(w.bias().unwrap(), &[1.0, 3.0, 4.0, 2.0]);
        assert_eq!(w.recurrent_bias().unwrap(), &[5.0, 7.0, 8.0, 6.0]);
        assert_eq!(w.kernel()[lstm::OUTPUT], 2.0);
    }

    #[test]
    fn keras_is_the_internal_layout() {
        let k = KerasWeights {
            kernel: ramp::<f64>(2 * 4, 0),
            recurrent_kernel: ramp(4, 10),
            bias: Some(ramp(4, 20)),
        };
        let c = DynLstm::from_keras(Dyn(2), Dyn(1), LstmKind::default(), &k).unwrap();
        assert_eq!(c.weights().kernel(), &k.kernel[..]);
        assert_eq!(c.weights().recurrent_kernel(), &k.recurrent_kernel[..]);
        assert_eq!(c.weights().bias().unwrap(), &k.bias.unwrap()[..]);
        assert_eq!(c.weights().recurrent_bias().unwrap(), &[0.0; 4]);
    }

    #[test]
    fn torch_and_keras_lstm_agree() {
        // Same model written in both layouts; PyTorch's two biases sum into Keras's one.
        let c = DynLstm::<f64>::random(Dyn(3), Dyn(4), LstmKind::default(), true, 5).unwrap();
        let k = c.to_keras();
        let from_k = DynLstm::from_keras(Dyn(3), Dyn(4), LstmKind::default(), &k).unwrap();
        let t = from_k.to_torch().unwrap();
        // i, f, g, o = i, f, c, o: only the transpose differs.
        for r in 0..3 {
            for col in 0..16 {
                assert_eq!(t.weight_ih[col * 3 + r], k.kernel[r * 16 + col]);
            }
        }
        assert_eq!(t.bias_ih.as_ref().unwrap(), k.bias.as_ref().unwrap());
        assert!(t.bias_hh.unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn gradients_convert_like_weights() {
        for_each_cell(|_, make| {
            for bias in [true, false] {
                let c = make(bias, 3);
                with_cell!(&c, check_grads);
            }
        });

        fn check_grads<K: LayoutKind>(c: &Recurrent<f64, K, Dyn, Dyn>) {
            // Gradients shaped like the params, with distinct values.
            let grads: Vec<Vec<f64>> = c
                .params()
                .iter()
                .enumerate()
                .map(|(n, p)| ramp(p.data.len(), 1000 * n))
                .collect();
            let as_cell = Recurrent::from_weights(
                *c.kind(),
                RecurrentWeights::new(
                    Dyn(c.input_size()),
                    Dyn(c.hidden_size()),
                    K::GATES,
                    grads[KERNEL].clone(),
                    grads[RECURRENT_KERNEL].clone(),
                    (grads.len() == 4)
                        .then(|| (grads[BIAS].clone(), grads[RECURRENT_BIAS].clone())),
                )
                .unwrap(),
            )
            .unwrap();
            // PyTorch and ONNX gradients are permuted exactly like weights.
            if c.kind().check_framework(Framework::Torch).is_ok() {
                assert_eq!(c.torch_grads(&grads).unwrap(), as_cell.to_torch().unwrap());
            } else {
                assert!(matches!(c.torch_grads(&grads), Err(Error::Invalid { .. })));
            }
            assert_eq!(c.onnx_grads(&grads).unwrap(), as_cell.to_onnx());
            // Keras: kernels like weights; the bias is ∂bias (one row) or [∂bias; ∂rbias].
            let k = c.keras_grads(&grads).unwrap();
            let kw = as_cell.to_keras();
            assert_eq!(k.kernel, kw.kernel);
            assert_eq!(k.recurrent_kernel, kw.recurrent_kernel);
            match (k.bias, c.kind().keras_bias_rows()) {
                (None, _) => assert_eq!(grads.len(), 2),
                (Some(b), 2) => assert_eq!(Some(b), kw.bias),
                (Some(b), _) => assert_eq!(b, grads[BIAS]),
            }
        }
    }

    #[test]
    fn keras_reset_after_bias_rows_by_hand() {
        let c = DynGru::<f64>::random(Dyn(2), Dyn(3), gru(true), true, 1).unwrap();
        let g: Vec<Vec<f64>> = vec![vec![0.0; 18], vec![0.0; 27], vec![1.0; 9], vec![2.0; 9]];
        let b = c.keras_grads(&g).unwrap().bias.unwrap();
        assert_eq!(b[..9], [1.0; 9]);
        assert_eq!(b[9..], [2.0; 9]);
        // Reset-before: one row, the input-side gradient (not the sum).
        let c = DynGru::<f64>::random(Dyn(2), Dyn(3), gru(false), true, 1).unwrap();
        assert_eq!(c.keras_grads(&g).unwrap().bias.unwrap(), vec![1.0; 9]);
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        let kind = LstmKind::default();
        let t = TorchWeights {
            weight_ih: vec![0.0f32; 4 * 2 * 3],
            weight_hh: vec![0.0; 4 * 2 * 2 - 1],
            bias_ih: None,
            bias_hh: None,
        };
        assert_eq!(
            DynLstm::from_torch(Dyn(3), Dyn(2), kind, &t),
            Err(Error::Length {
                arg: "weight_hh",
                expected: 16,
                actual: 15
            })
        );
        let t = TorchWeights {
            weight_hh: vec![0.0; 16],
            bias_ih: Some(vec![0.0; 8]),
            ..t
        };
        assert!(matches!(
            DynLstm::from_torch(Dyn(3), Dyn(2), kind, &t),
            Err(Error::Invalid { arg: "bias_hh", .. })
        ));
        let t = TorchWeights {
            bias_hh: Some(vec![0.0; 7]),
            ..t
        };
        assert_eq!(
            DynLstm::from_torch(Dyn(3), Dyn(2), kind, &t),
            Err(Error::Length {
                arg: "bias_hh",
                expected: 8,
                actual: 7
            })
        );
        // Keras GRU reset_after needs two bias rows.
        let k = KerasWeights {
            kernel: vec![0.0f64; 3 * 6],
            recurrent_kernel: vec![0.0; 2 * 6],
            bias: Some(vec![0.0; 6]),
        };
        assert_eq!(
            DynGru::from_keras(Dyn(3), Dyn(2), gru(true), &k),
            Err(Error::Length {
                arg: "bias",
                expected: 12,
                actual: 6
            })
        );
        assert!(DynGru::from_keras(Dyn(3), Dyn(2), gru(false), &k).is_ok());
        let k = KerasWeights {
            kernel: vec![0.0; 17],
            ..k
        };
        assert_eq!(
            DynGru::from_keras(Dyn(3), Dyn(2), gru(false), &k),
            Err(Error::Length {
                arg: "kernel",
                expected: 18,
                actual: 17
            })
        );
        // ONNX: the whole [D, …] tensor is checked, and the direction.
        let o = OnnxWeights {
            num_directions: 2,
            w: vec![0.0f64; 2 * 3 * 3],
            r: vec![0.0; 2 * 3 * 2],
            b: Some(vec![0.0; 2 * 6]),
        };
        assert_eq!(
            DynSimpleRnn::from_onnx(Dyn(3), Dyn(2), SimpleRnnKind::default(), &o, 0),
            Err(Error::Length {
                arg: "W",
                expected: 12,
                actual: 18
            })
        );
        let o = OnnxWeights {
            w: vec![0.0; 12],
            r: vec![0.0; 8],
            b: Some(vec![0.0; 8]),
            ..o
        };
        assert!(DynSimpleRnn::from_onnx(Dyn(3), Dyn(2), SimpleRnnKind::default(), &o, 1).is_ok());
        assert!(matches!(
            DynSimpleRnn::from_onnx(Dyn(3), Dyn(2), SimpleRnnKind::default(), &o, 2),
            Err(Error::Invalid {
                arg: "direction",
                ..
            })
        ));
        // Zero sizes are Zero, not Length.
        assert_eq!(
            DynSimpleRnn::from_onnx(Dyn(0), Dyn(2), SimpleRnnKind::default(), &o, 0),
            Err(Error::Zero { arg: "input_size" })
        );
        // Gradient buffers are checked too.
        let c = DynLstm::<f32>::random(Dyn(3), Dyn(2), kind, true, 0).unwrap();
        assert_eq!(
            c.torch_grads(&[vec![0.0; 24], vec![0.0; 16]]),
            Err(Error::Length {
                arg: "grads",
                expected: 4,
                actual: 2
            })
        );
        assert_eq!(
            c.keras_grads(&[vec![0.0; 24], vec![0.0; 16], vec![0.0; 8], vec![0.0; 9]]),
            Err(Error::Length {
                arg: "grads[recurrent_bias]",
                expected: 8,
                actual: 9
            })
        );
    }

    #[test]
    fn torch_has_no_reset_before_gru() {
        let t = TorchWeights {
            weight_ih: vec![0.0f64; 6],
            weight_hh: vec![0.0; 6],
            bias_ih: None,
            bias_hh: None,
        };
        assert!(matches!(
            DynGru::from_torch(Dyn(1), Dyn(2), gru(false), &t),
            Err(Error::Invalid {
                arg: "kind.reset_after",
                ..
            })
        ));
    }

    #[test]
    fn framework_names() {
        for f in Framework::ALL {
            assert_eq!(Framework::from_name(f.name()), Ok(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert!(matches!(
            Framework::from_name("pytorch"),
            Err(Error::Unknown {
                what: "framework",
                ..
            })
        ));
        assert!(Framework::from_name("Keras").is_err());
    }

    #[test]
    fn activations_are_not_part_of_the_layout() {
        let kind = LstmKind {
            activation: Activation::Relu,
            recurrent_activation: Activation::HardSigmoid,
        };
        let c = DynLstm::<f64>::random(Dyn(2), Dyn(2), kind, true, 9).unwrap();
        let back = DynLstm::from_torch(Dyn(2), Dyn(2), kind, &c.to_torch().unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
