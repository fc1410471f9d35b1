//! The oracle: plain, obviously-right `f64` SimpleRNN, LSTM and GRU (both reset variants),
//! forward and backward through time.
//!
//! This is the reference the kernels are tested against: slow, `f64`, written to be read. It
//! shares no code with the kernels — it has its own activation functions and derivatives (the
//! derivatives taken at the *pre-activation*, where the kernels use the output), its own loops,
//! and does its linear algebra with nalgebra column vectors, so that each line reads like the
//! equations in the [`cell`](crate::cell) docs. A gate's pre-activation `x·W_g + b_g +
//! h·U_g + u_g` (row vectors there) is written `W_gᵀx + b_g + U_gᵀh + u_g` here, where
//! `W_g` is the gate's block of `H` columns of `kernel`.
//!
//! Sequences are run one at a time, one step at a time. [`backward`] recomputes the forward
//! pass keeping every state and pre-activation, then walks back with the explicit per-step
//! formulas. Derivatives at kinks are 0 (`relu` at 0, `hard_sigmoid` at ±3), as in the kernels,
//! Keras and PyTorch; [`kink_margin`] says how close a run passes to a kink, which a comparison
//! in lower precision needs to know (a gradient there jumps).
//!
//! # Shapes
//! - `x`, `dx`: time-major `[T, B, I]`, in source (not processing) order.
//! - states (`initial`, [`RefRun::final_state`], `d_final_state`, [`RefGrads::d_initial_state`]):
//!   `[S, B, H]`, state tensor outermost (`S = 2` for LSTM: `h` then `c`).
//! - `y`, `dy`: time-major `[T, B, H]` in *processing order* with `return_sequences` (with
//!   `go_backwards`, `y[k]` follows `x[T-1-k]`, as Keras and [`crate::seq`] do), else `[B, H]`.
//!
//! # Example
//! ```
//! use fused_rnn::prelude::*;
//! use fused_rnn::reference::{self, RefCell};
//!
//! let cell = DynGru::<f64>::random(Dyn(3), Dyn(4), GruKind::default(), true, 1)?;
//! let (t, b) = (5, 2);
//! let x: Vec<f64> = (0..t * b * 3).map(|k| (k as f64 * 0.37).sin()).collect();
//! let got = seq::forward(&cell, &SeqSpec::new(t, b), &x, None)?;
//! let want = reference::forward(&RefCell::from_cell(&cell), &x, t, b, None, false, true)?;
//! for (g, w) in got.y.iter().zip(&want.y) {
//!     assert!((g - w).abs() <= 1e-12 + 1e-12 * w.abs());
//! }
//! # Ok::<(), fused_rnn::Error>(())
//! ```

use nalgebra::{DMatrix, DVector};

use crate::activation::Activation;
use crate::cell::{CellKind, GruKind, LstmKind, Recurrent, SimpleRnnKind};
use crate::dim::Dim;
use crate::error::{Error, Result, check_len, checked_size};
use crate::real::Real;

/// Which cell the reference runs, with its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    /// `h = act(Wᵀx + b + Uᵀh_prev + u)`; one gate block.
    SimpleRnn {
        /// The output activation.
        activation: Activation,
    },
    /// Gate blocks `i, f, c̃, o`; states `h`, `c`.
    Lstm {
        /// Activation of the candidate and of `c` before the output gate.
        activation: Activation,
        /// Activation of the input, forget and output gates.
        recurrent_activation: Activation,
    },
    /// Gate blocks `z, r, h̃`.
    Gru {
        /// Activation of the candidate.
        activation: Activation,
        /// Activation of the update and reset gates.
        recurrent_activation: Activation,
        /// `h̃ = act(W_h̃ᵀx + b_h̃ + r ⊙ (U_h̃ᵀh + u_h̃))` when `true`,
        /// `act(W_h̃ᵀx + b_h̃ + U_h̃ᵀ(r ⊙ h) + u_h̃)` when `false`.
        reset_after: bool,
    },
}

impl RefKind {
    /// Gate blocks `G`: 1, 4 or 3.
    pub fn gates(&self) -> usize {
        match self {
            RefKind::SimpleRnn { .. } => 1,
            RefKind::Lstm { .. } => 4,
            RefKind::Gru { .. } => 3,
        }
    }

    /// State tensors `S`: 2 for LSTM, 1 otherwise.
    pub fn states(&self) -> usize {
        match self {
            RefKind::Lstm { .. } => 2,
            _ => 1,
        }
    }
}

impl From<SimpleRnnKind> for RefKind {
    fn from(k: SimpleRnnKind) -> Self {
        RefKind::SimpleRnn {
            activation: k.activation,
        }
    }
}

impl From<LstmKind> for RefKind {
    fn from(k: LstmKind) -> Self {
        RefKind::Lstm {
            activation: k.activation,
            recurrent_activation: k.recurrent_activation,
        }
    }
}

impl From<GruKind> for RefKind {
    fn from(k: GruKind) -> Self {
        RefKind::Gru {
            activation: k.activation,
            recurrent_activation: k.recurrent_activation,
            reset_after: k.reset_after,
        }
    }
}

/// A cell's weights in `f64`, in the internal (Keras) gate order, with exactly the semantics
/// documented in [`crate::cell`].
#[derive(Debug, Clone, PartialEq)]
pub struct RefCell {
    /// The cell and its activations.
    pub kind: RefKind,
    /// Input width `I`.
    pub input: usize,
    /// Hidden width `H`.
    pub hidden: usize,
    /// `[I, G·H]`; gate `g` is columns `g·H .. (g+1)·H`.
    pub kernel: DMatrix<f64>,
    /// `[H, G·H]`.
    pub recurrent_kernel: DMatrix<f64>,
    /// `[G·H]`, added to the input side of every gate; `None` means zero.
    pub bias: Option<DVector<f64>>,
    /// `[G·H]`, added to the recurrent side of every gate (inside the reset for the GRU
    /// candidate with `reset_after`); `None` means zero.
    pub recurrent_bias: Option<DVector<f64>>,
}

impl RefCell {
    /// A reference cell from row-major buffers in the internal layout: `kernel [I, G·H]`,
    /// `recurrent_kernel [H, G·H]`, and optionally `(bias, recurrent_bias)`, `[G·H]` each.
    pub fn from_row_major(
        kind: RefKind,
        input: usize,
        hidden: usize,
        kernel: &[f64],
        recurrent_kernel: &[f64],
        biases: Option<(&[f64], &[f64])>,
    ) -> Result<Self> {
        let gh = checked_size("hidden", &[kind.gates(), hidden])?;
        check_len(
            "kernel",
            kernel.len(),
            checked_size("kernel", &[input, gh])?,
        )?;
        check_len(
            "recurrent_kernel",
            recurrent_kernel.len(),
            checked_size("recurrent_kernel", &[hidden, gh])?,
        )?;
        let (bias, recurrent_bias) = match biases {
            Some((b, u)) => {
                check_len("bias", b.len(), gh)?;
                check_len("recurrent_bias", u.len(), gh)?;
                (
                    Some(DVector::from_column_slice(b)),
                    Some(DVector::from_column_slice(u)),
                )
            }
            None => (None, None),
        };
        let cell = Self {
            kind,
            input,
            hidden,
            kernel: DMatrix::from_row_slice(input, gh, kernel),
            recurrent_kernel: DMatrix::from_row_slice(hidden, gh, recurrent_kernel),
            bias,
            recurrent_bias,
        };
        cell.validate()?;
        Ok(cell)
    }

    /// The reference twin of a built-in cell: the same kind and activations, its weights
    /// converted to `f64` (exactly, for `f32` too).
    pub fn from_cell<T, K, I, H>(cell: &Recurrent<T, K, I, H>) -> Self
    where
        T: Real,
        K: CellKind + Into<RefKind>,
        I: Dim,
        H: Dim,
    {
        let w = cell.weights();
        let f = |v: &[T]| v.iter().map(|&a| a.to_f64()).collect::<Vec<f64>>();
        let biases = w.bias().zip(w.recurrent_bias()).map(|(b, u)| (f(b), f(u)));
        Self::from_row_major(
            (*cell.kind()).into(),
            w.input_size(),
            w.hidden_size(),
            &f(w.kernel()),
            &f(w.recurrent_kernel()),
            biases.as_ref().map(|(b, u)| (&b[..], &u[..])),
        )
        .expect("a built-in cell's weights are consistent")
    }

    /// Number of state tensors `S`.
    pub fn states(&self) -> usize {
        self.kind.states()
    }

    /// Checks that every tensor has the shape `kind`, `input` and `hidden` say.
    fn validate(&self) -> Result<()> {
        if self.input == 0 {
            return Err(Error::Zero { arg: "input" });
        }
        if self.hidden == 0 {
            return Err(Error::Zero { arg: "hidden" });
        }
        let gh = checked_size("hidden", &[self.kind.gates(), self.hidden])?;
        let shape = |arg, m: &DMatrix<f64>, rows: usize| {
            expect_dim(arg, m.nrows(), rows)?;
            expect_dim(arg, m.ncols(), gh)
        };
        shape("kernel", &self.kernel, self.input)?;
        shape("recurrent_kernel", &self.recurrent_kernel, self.hidden)?;
        if self.bias.is_some() != self.recurrent_bias.is_some() {
            return Err(Error::Invalid {
                arg: "bias",
                reason: "bias and recurrent_bias must be both present or both absent".into(),
            });
        }
        for (arg, b) in [
            ("bias", &self.bias),
            ("recurrent_bias", &self.recurrent_bias),
        ] {
            if let Some(b) = b {
                check_len(arg, b.len(), gh)?;
            }
        }
        Ok(())
    }

    /// `W_gᵀx + b_g`: the input side of gate block `g`.
    fn input_side(&self, g: usize, x: &DVector<f64>) -> DVector<f64> {
        let h = self.hidden;
        let wx = self.kernel.columns(g * h, h).transpose() * x;
        match &self.bias {
            Some(b) => wx + b.rows(g * h, h),
            None => wx,
        }
    }

    /// `U_gᵀv + u_g`: the recurrent side of gate block `g`, applied to `v`.
    fn recurrent_side(&self, g: usize, v: &DVector<f64>) -> DVector<f64> {
        let h = self.hidden;
        let uv = self.recurrent_kernel.columns(g * h, h).transpose() * v;
        match &self.recurrent_bias {
            Some(u) => uv + u.rows(g * h, h),
            None => uv,
        }
    }
}

/// The result of [`forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct RefRun {
    /// `[T, B, H]` in processing order with `return_sequences`, else `[B, H]`.
    pub y: Vec<f64>,
    /// The state after the last step, `[S, B, H]`.
    pub final_state: Vec<f64>,
}

/// The result of [`backward`]: the gradient of the loss for every input of the sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct RefGrads {
    /// `∂L/∂x`, time-major `[T, B, I]`, source order (like `x`).
    pub dx: Vec<f64>,
    /// `∂L/∂initial_state`, `[S, B, H]` (the zero state when none was given).
    pub d_initial_state: Vec<f64>,
    /// `∂L/∂kernel`, `[I, G·H]`.
    pub kernel: DMatrix<f64>,
    /// `∂L/∂recurrent_kernel`, `[H, G·H]`.
    pub recurrent_kernel: DMatrix<f64>,
    /// `∂L/∂bias`, `[G·H]`, when the cell has biases.
    pub bias: Option<DVector<f64>>,
    /// `∂L/∂recurrent_bias`, `[G·H]`, when the cell has biases.
    pub recurrent_bias: Option<DVector<f64>>,
}

impl RefGrads {
    /// The parameter gradients flattened row-major, in the order of
    /// [`Cell::params`](crate::cell::Cell::params): kernel, recurrent kernel, then the biases
    /// if present — comparable with [`crate::seq::Gradients::params`].
    pub fn params(&self) -> Vec<Vec<f64>> {
        let row_major = |m: &DMatrix<f64>| m.transpose().as_slice().to_vec();
        let mut p = vec![row_major(&self.kernel), row_major(&self.recurrent_kernel)];
        if let (Some(b), Some(u)) = (&self.bias, &self.recurrent_bias) {
            p.push(b.as_slice().to_vec());
            p.push(u.as_slice().to_vec());
        }
        p
    }

    /// `dW[:, g] += x dᵀ`, `db_g += d`; returns `∂L/∂x = W_g d` (the backward of
    /// [`RefCell::input_side`]).
    fn input_side_back(
        &mut self,
        cell: &RefCell,
        g: usize,
        x: &DVector<f64>,
        d: &DVector<f64>,
    ) -> DVector<f64> {
        let h = cell.hidden;
        let mut dw = self.kernel.columns_mut(g * h, h);
        dw += x * d.transpose();
        if let Some(db) = &mut self.bias {
            let mut db = db.rows_mut(g * h, h);
            db += d;
        }
        cell.kernel.columns(g * h, h) * d
    }

    /// `dU[:, g] += v dᵀ`, `du_g += d`; returns `∂L/∂v = U_g d` (the backward of
    /// [`RefCell::recurrent_side`]).
    fn recurrent_side_back(
        &mut self,
        cell: &RefCell,
        g: usize,
        v: &DVector<f64>,
        d: &DVector<f64>,
    ) -> DVector<f64> {
        let h = cell.hidden;
        let mut du = self.recurrent_kernel.columns_mut(g * h, h);
        du += v * d.transpose();
        if let Some(db) = &mut self.recurrent_bias {
            let mut db = db.rows_mut(g * h, h);
            db += d;
        }
        cell.recurrent_kernel.columns(g * h, h) * d
    }
}

/// Runs `cell` over `b` sequences of `t` steps: `x` is time-major `[T, B, I]`, `initial` the
/// state `[S, B, H]` (zeros when `None`). With `go_backwards` each sequence is consumed from
/// its last step to its first. See the [module docs](self) for the shapes of the result.
pub fn forward(
    cell: &RefCell,
    x: &[f64],
    t: usize,
    b: usize,
    initial: Option<&[f64]>,
    go_backwards: bool,
    return_sequences: bool,
) -> Result<RefRun> {
    let seq = Sequences::new(cell, x, t, b, initial, go_backwards)?;
    let (h, s) = (cell.hidden, cell.states());
    let mut y = vec![0.0; if return_sequences { t * b * h } else { b * h }];
    let mut final_state = vec![0.0; s * b * h];
    for n in 0..b {
        let mut state = seq.initial(n);
        for k in 0..t {
            state = step(cell, &seq.x(k, n), &state).0;
            if return_sequences {
                y[(k * b + n) * h..][..h].copy_from_slice(state[0].as_slice());
            }
        }
        if !return_sequences {
            y[n * h..][..h].copy_from_slice(state[0].as_slice());
        }
        for (j, v) in state.iter().enumerate() {
            final_state[(j * b + n) * h..][..h].copy_from_slice(v.as_slice());
        }
    }
    Ok(RefRun { y, final_state })
}

/// Backpropagation through time of [`forward`] with the same arguments, for the loss
/// `L = Σ dy ⊙ y + Σ d_final_state ⊙ final_state`: `dy` is shaped like `y`, `d_final_state`
/// like the state (zero when `None`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    cell: &RefCell,
    x: &[f64],
    t: usize,
    b: usize,
    initial: Option<&[f64]>,
    go_backwards: bool,
    return_sequences: bool,
    dy: &[f64],
    d_final_state: Option<&[f64]>,
) -> Result<RefGrads> {
    let seq = Sequences::new(cell, x, t, b, initial, go_backwards)?;
    let (i, h, s) = (cell.input, cell.hidden, cell.states());
    let y_shape: &[usize] = if return_sequences {
        &[t, b, h]
    } else {
        &[b, h]
    };
    check_len("dy", dy.len(), checked_size("dy", y_shape)?)?;
    if let Some(d) = d_final_state {
        check_len(
            "d_final_state",
            d.len(),
            checked_size("d_final_state", &[s, b, h])?,
        )?;
    }
    let mut grads = RefGrads {
        dx: vec![0.0; t * b * i],
        d_initial_state: vec![0.0; s * b * h],
        kernel: DMatrix::zeros(cell.kernel.nrows(), cell.kernel.ncols()),
        recurrent_kernel: DMatrix::zeros(
            cell.recurrent_kernel.nrows(),
            cell.recurrent_kernel.ncols(),
        ),
        bias: cell.bias.as_ref().map(|v| DVector::zeros(v.len())),
        recurrent_bias: cell
            .recurrent_bias
            .as_ref()
            .map(|v| DVector::zeros(v.len())),
    };
    for n in 0..b {
        // Forward again, keeping the state before every step and every step's trace.
        let mut states = vec![seq.initial(n)];
        let mut traces = Vec::with_capacity(t);
        for k in 0..t {
            let (next, trace) = step(cell, &seq.x(k, n), &states[k]);
            states.push(next);
            traces.push(trace);
        }
        // Backward: `d_next` is ∂L/∂(state after step k).
        let mut d_next: Vec<DVector<f64>> = (0..s)
            .map(|j| match d_final_state {
                Some(d) => DVector::from_column_slice(&d[(j * b + n) * h..][..h]),
                None => DVector::zeros(h),
            })
            .collect();
        for k in (0..t).rev() {
            if return_sequences {
                d_next[0] += DVector::from_column_slice(&dy[(k * b + n) * h..][..h]);
            } else if k + 1 == t {
                d_next[0] += DVector::from_column_slice(&dy[n * h..][..h]);
            }
            let (dx, d_state) = step_back(
                cell,
                &seq.x(k, n),
                &states[k],
                &traces[k],
                &d_next,
                &mut grads,
            );
            grads.dx[seq.x_offset(k, n)..][..i].copy_from_slice(dx.as_slice());
            d_next = d_state;
        }
        for (j, v) in d_next.iter().enumerate() {
            grads.d_initial_state[(j * b + n) * h..][..h].copy_from_slice(v.as_slice());
        }
    }
    Ok(grads)
}

/// How close a run comes to the kinks of its non-smooth activations, where the derivative
/// jumps (`relu` at 0, `hard_sigmoid` at ±3). See [`kink_margin`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KinkMargin {
    /// The smallest `|v − k| / m` over every pre-activation `v` entering a kink `k`, where `m`
    /// is the sum of the magnitudes of the terms that make up `v`. Rounding moves `v` by a few
    /// `ε·m`, so a margin of the order of `ε·(I + H)` means that a run in precision `ε` may
    /// land on the other side of the kink.
    pub relative: f64,
    /// The smallest `|v − k|`. Values that underflow in a lower precision (a gate `σ(a)` of
    /// `1e-90` is exactly 0 in `f32`) can cross a kink however large the relative margin.
    pub absolute: f64,
}

/// How close the run of [`forward`] with the same arguments comes to a kink: both margins are
/// `+inf` when the cell has no `relu` or `hard_sigmoid`. A pre-activation whose terms are all
/// exactly zero (`m = 0`, so `v = 0` in every precision) does not count. Used by tests that
/// compare a lower-precision run with the reference to tell rounding from a jump.
pub fn kink_margin(
    cell: &RefCell,
    x: &[f64],
    t: usize,
    b: usize,
    initial: Option<&[f64]>,
    go_backwards: bool,
) -> Result<KinkMargin> {
    let seq = Sequences::new(cell, x, t, b, initial, go_backwards)?;
    // The cell with every weight replaced by its magnitude: fed with magnitudes, it computes
    // `m`, the sum of the magnitudes of the terms of each pre-activation.
    let abs = RefCell {
        kernel: cell.kernel.abs(),
        recurrent_kernel: cell.recurrent_kernel.abs(),
        bias: cell.bias.as_ref().map(|v| v.abs()),
        recurrent_bias: cell.recurrent_bias.as_ref().map(|v| v.abs()),
        ..cell.clone()
    };
    let mut margin = KinkMargin {
        relative: f64::INFINITY,
        absolute: f64::INFINITY,
    };
    let mut see = |act: Activation, v: &DVector<f64>, m: &DVector<f64>| {
        for (&v, &m) in v.iter().zip(m.iter()) {
            let d = match act {
                Activation::Relu => v.abs(),
                Activation::HardSigmoid => (v - 3.0).abs().min((v + 3.0).abs()),
                _ => return,
            };
            if m > 0.0 {
                margin.relative = margin.relative.min(d / m);
                margin.absolute = margin.absolute.min(d);
            }
        }
    };
    for n in 0..b {
        let mut state = seq.initial(n);
        for k in 0..t {
            let x = seq.x(k, n);
            let (next, trace) = step(cell, &x, &state);
            let (x_m, h_m) = (x.abs(), state[0].abs());
            let gate_m = |g| abs.input_side(g, &x_m) + abs.recurrent_side(g, &h_m);
            match (cell.kind, &trace) {
                (RefKind::SimpleRnn { activation }, Trace::SimpleRnn { a }) => {
                    see(activation, a, &gate_m(0));
                }
                (
                    RefKind::Lstm {
                        activation,
                        recurrent_activation,
                    },
                    Trace::Lstm { a, c },
                ) => {
                    let acts = [
                        recurrent_activation,
                        recurrent_activation,
                        activation,
                        recurrent_activation,
                    ];
                    for (g, act) in acts.into_iter().enumerate() {
                        see(act, &a[g], &gate_m(g));
                    }
                    // c = f ⊙ c_prev + i ⊙ c̃
                    let gate = |g: usize| apply(acts[g], &a[g]).abs();
                    let c_m =
                        gate(1).component_mul(&state[1].abs()) + gate(0).component_mul(&gate(2));
                    see(activation, c, &c_m);
                }
                (
                    RefKind::Gru {
                        activation,
                        recurrent_activation,
                        reset_after,
                    },
                    Trace::Gru {
                        a_z, a_r, a_cand, ..
                    },
                ) => {
                    see(recurrent_activation, a_z, &gate_m(0));
                    see(recurrent_activation, a_r, &gate_m(1));
                    let r_m = apply(recurrent_activation, a_r).abs();
                    let cand_m = if reset_after {
                        abs.input_side(2, &x_m) + r_m.component_mul(&abs.recurrent_side(2, &h_m))
                    } else {
                        abs.input_side(2, &x_m) + abs.recurrent_side(2, &r_m.component_mul(&h_m))
                    };
                    see(activation, a_cand, &cand_m);
                }
                _ => unreachable!("a trace always comes from the same cell's step"),
            }
            state = next;
        }
    }
    Ok(margin)
}

/// The checked inputs of a run, read one sequence at a time.
struct Sequences<'a> {
    x: &'a [f64],
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    s: usize,
    initial: Option<&'a [f64]>,
    go_backwards: bool,
}

impl<'a> Sequences<'a> {
    fn new(
        cell: &RefCell,
        x: &'a [f64],
        t: usize,
        b: usize,
        initial: Option<&'a [f64]>,
        go_backwards: bool,
    ) -> Result<Self> {
        cell.validate()?;
        if t == 0 {
            return Err(Error::Zero { arg: "time_steps" });
        }
        if b == 0 {
            return Err(Error::Zero { arg: "batch" });
        }
        let (i, h, s) = (cell.input, cell.hidden, cell.states());
        check_len("x", x.len(), checked_size("x", &[t, b, i])?)?;
        if let Some(init) = initial {
            check_len(
                "initial_state",
                init.len(),
                checked_size("initial_state", &[s, b, h])?,
            )?;
        }
        Ok(Self {
            x,
            t,
            b,
            i,
            h,
            s,
            initial,
            go_backwards,
        })
    }

    /// Offset in `x` of the row processed at step `k` by sequence `n`.
    fn x_offset(&self, k: usize, n: usize) -> usize {
        let src = if self.go_backwards { self.t - 1 - k } else { k };
        (src * self.b + n) * self.i
    }

    /// The input processed at step `k` by sequence `n`.
    fn x(&self, k: usize, n: usize) -> DVector<f64> {
        DVector::from_column_slice(&self.x[self.x_offset(k, n)..][..self.i])
    }

    /// Sequence `n`'s initial state, one vector per state tensor.
    fn initial(&self, n: usize) -> Vec<DVector<f64>> {
        (0..self.s)
            .map(|j| match self.initial {
                Some(init) => {
                    DVector::from_column_slice(&init[(j * self.b + n) * self.h..][..self.h])
                }
                None => DVector::zeros(self.h),
            })
            .collect()
    }
}

/// What one step of one sequence computed, kept for its backward.
enum Trace {
    SimpleRnn {
        /// Pre-activation.
        a: DVector<f64>,
    },
    Lstm {
        /// Pre-activations of `i, f, c̃, o`.
        a: [DVector<f64>; 4],
        /// The new cell state.
        c: DVector<f64>,
    },
    Gru {
        /// Pre-activations of `z` and `r`.
        a_z: DVector<f64>,
        a_r: DVector<f64>,
        /// Pre-activation of the candidate.
        a_cand: DVector<f64>,
        /// `U_h̃ᵀh + u_h̃` (used with `reset_after` only).
        rec_cand: DVector<f64>,
    },
}

/// One step of one sequence: from `x` and the state (`[h]` or `[h, c]`) to the next state.
fn step(cell: &RefCell, x: &DVector<f64>, state: &[DVector<f64>]) -> (Vec<DVector<f64>>, Trace) {
    step_dropped(cell, x, state, &state[0])
}

/// [`step`] with `h_prod` (the state after recurrent dropout) in the recurrent products and
/// the undropped `state` everywhere else (GRU's update `z ⊙ h`), as Keras does.
fn step_dropped(
    cell: &RefCell,
    x: &DVector<f64>,
    state: &[DVector<f64>],
    h_prod: &DVector<f64>,
) -> (Vec<DVector<f64>>, Trace) {
    let h = h_prod;
    let h_undropped = &state[0];
    match cell.kind {
        RefKind::SimpleRnn { activation } => {
            let a = cell.input_side(0, x) + cell.recurrent_side(0, h);
            (vec![apply(activation, &a)], Trace::SimpleRnn { a })
        }
        RefKind::Lstm {
            activation,
            recurrent_activation,
        } => {
            let c_prev = &state[1];
            let a = [0, 1, 2, 3].map(|g| cell.input_side(g, x) + cell.recurrent_side(g, h));
            let i = apply(recurrent_activation, &a[0]);
            let f = apply(recurrent_activation, &a[1]);
            let c_cand = apply(activation, &a[2]);
            let o = apply(recurrent_activation, &a[3]);
            let c = f.component_mul(c_prev) + i.component_mul(&c_cand);
            let h_next = o.component_mul(&apply(activation, &c));
            (vec![h_next, c.clone()], Trace::Lstm { a, c })
        }
        RefKind::Gru {
            activation,
            recurrent_activation,
            reset_after,
        } => {
            let a_z = cell.input_side(0, x) + cell.recurrent_side(0, h);
            let a_r = cell.input_side(1, x) + cell.recurrent_side(1, h);
            let z = apply(recurrent_activation, &a_z);
            let r = apply(recurrent_activation, &a_r);
            let rec_cand = cell.recurrent_side(2, h);
            let a_cand = if reset_after {
                cell.input_side(2, x) + r.component_mul(&rec_cand)
            } else {
                cell.input_side(2, x) + cell.recurrent_side(2, &r.component_mul(h))
            };
            let cand = apply(activation, &a_cand);
            // h_next = z ⊙ h + (1 − z) ⊙ h̃
            let h_next = z.component_mul(h_undropped) + z.map(|v| 1.0 - v).component_mul(&cand);
            let trace = Trace::Gru {
                a_z,
                a_r,
                a_cand,
                rec_cand,
            };
            (vec![h_next], trace)
        }
    }
}

/// Backward of [`step`]: from `d_next = ∂L/∂(next state)` to `(∂L/∂x, ∂L/∂state)`, adding
/// the parameter gradients into `grads`.
fn step_back(
    cell: &RefCell,
    x: &DVector<f64>,
    state: &[DVector<f64>],
    trace: &Trace,
    d_next: &[DVector<f64>],
    grads: &mut RefGrads,
) -> (DVector<f64>, Vec<DVector<f64>>) {
    let h = &state[0];
    let dh_next = &d_next[0];
    match (cell.kind, trace) {
        (RefKind::SimpleRnn { activation }, Trace::SimpleRnn { a }) => {
            let da = dh_next.component_mul(&derivative(activation, a));
            let dx = grads.input_side_back(cell, 0, x, &da);
            let dh = grads.recurrent_side_back(cell, 0, h, &da);
            (dx, vec![dh])
        }
        (
            RefKind::Lstm {
                activation,
                recurrent_activation,
            },
            Trace::Lstm { a, c },
        ) => {
            let c_prev = &state[1];
            let i = apply(recurrent_activation, &a[0]);
            let f = apply(recurrent_activation, &a[1]);
            let c_cand = apply(activation, &a[2]);
            let o = apply(recurrent_activation, &a[3]);
            // h_next = o ⊙ act(c): the total gradient on c adds the path through h_next.
            let dc = &d_next[1]
                + dh_next
                    .component_mul(&o)
                    .component_mul(&derivative(activation, c));
            let d_o = dh_next.component_mul(&apply(activation, c));
            // c = f ⊙ c_prev + i ⊙ c̃
            let d_i = dc.component_mul(&c_cand);
            let d_f = dc.component_mul(c_prev);
            let d_cand = dc.component_mul(&i);
            let dc_prev = dc.component_mul(&f);
            let da = [
                d_i.component_mul(&derivative(recurrent_activation, &a[0])),
                d_f.component_mul(&derivative(recurrent_activation, &a[1])),
                d_cand.component_mul(&derivative(activation, &a[2])),
                d_o.component_mul(&derivative(recurrent_activation, &a[3])),
            ];
            let mut dx = DVector::zeros(cell.input);
            let mut dh = DVector::zeros(cell.hidden);
            for (g, d) in da.iter().enumerate() {
                dx += grads.input_side_back(cell, g, x, d);
                dh += grads.recurrent_side_back(cell, g, h, d);
            }
            (dx, vec![dh, dc_prev])
        }
        (
            RefKind::Gru {
                activation,
                recurrent_activation,
                reset_after,
            },
            Trace::Gru {
                a_z,
                a_r,
                a_cand,
                rec_cand,
            },
        ) => {
            let z = apply(recurrent_activation, a_z);
            let r = apply(recurrent_activation, a_r);
            let cand = apply(activation, a_cand);
            // h_next = z ⊙ h + (1 − z) ⊙ h̃
            let d_z = dh_next.component_mul(&(h - &cand));
            let d_cand = dh_next.component_mul(&z.map(|v| 1.0 - v));
            let mut dh = dh_next.component_mul(&z);
            let da_cand = d_cand.component_mul(&derivative(activation, a_cand));
            let mut dx = grads.input_side_back(cell, 2, x, &da_cand);
            let d_r = if reset_after {
                // a_cand = W_h̃ᵀx + b_h̃ + r ⊙ (U_h̃ᵀh + u_h̃)
                dh += grads.recurrent_side_back(cell, 2, h, &da_cand.component_mul(&r));
                da_cand.component_mul(rec_cand)
            } else {
                // a_cand = W_h̃ᵀx + b_h̃ + U_h̃ᵀ(r ⊙ h) + u_h̃
                let d_rh = grads.recurrent_side_back(cell, 2, &r.component_mul(h), &da_cand);
                dh += d_rh.component_mul(&r);
                d_rh.component_mul(h)
            };
            let da_z = d_z.component_mul(&derivative(recurrent_activation, a_z));
            let da_r = d_r.component_mul(&derivative(recurrent_activation, a_r));
            for (g, d) in [(0, &da_z), (1, &da_r)] {
                dx += grads.input_side_back(cell, g, x, d);
                dh += grads.recurrent_side_back(cell, g, h, d);
            }
            (dx, vec![dh])
        }
        _ => unreachable!("a trace always comes from the same cell's step"),
    }
}

/// `f(a)` element-wise.
fn apply(act: Activation, a: &DVector<f64>) -> DVector<f64> {
    a.map(|v| activate(act, v))
}

/// `f'(a)` element-wise, at the pre-activation `a`.
fn derivative(act: Activation, a: &DVector<f64>) -> DVector<f64> {
    a.map(|v| activate_derivative(act, v))
}

/// The activation functions, from their definitions.
fn activate(act: Activation, v: f64) -> f64 {
    match act {
        Activation::Tanh => v.tanh(),
        // NaN is neither > 0 nor <= 0: it passes through.
        Activation::Relu => {
            if v <= 0.0 {
                0.0
            } else {
                v
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Activation::Linear => v,
        // Keras 3: relu6(v + 3) / 6. `clamp` keeps NaN.
        Activation::HardSigmoid => (v + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

/// The derivatives at the pre-activation `v`, 0 at kinks.
fn activate_derivative(act: Activation, v: f64) -> f64 {
    match act {
        // tanh' = sech², 0 once cosh overflows.
        Activation::Tanh => {
            let c = v.cosh();
            1.0 / (c * c)
        }
        Activation::Relu => {
            if v > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        // σ' = e^{-|v|} / (1 + e^{-|v|})², symmetric and exact in the tails.
        Activation::Sigmoid => {
            let e = (-v.abs()).exp();
            e / ((1.0 + e) * (1.0 + e))
        }
        Activation::Linear => 1.0,
        Activation::HardSigmoid => {
            if v > -3.0 && v < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
    }
}

fn expect_dim(arg: &'static str, actual: usize, expected: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Mismatch {
            arg,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TANH_SIGMOID: (Activation, Activation) = (Activation::Tanh, Activation::Sigmoid);

    /// Every kind the reference knows, with a few activation choices.
    fn kinds() -> Vec<RefKind> {
        let mut k: Vec<RefKind> = Activation::ALL
            .into_iter()
            .map(|activation| RefKind::SimpleRnn { activation })
            .collect();
        for (activation, recurrent_activation) in [
            TANH_SIGMOID,
            (Activation::Tanh, Activation::HardSigmoid),
            (Activation::Relu, Activation::Sigmoid),
        ] {
            k.push(RefKind::Lstm {
                activation,
                recurrent_activation,
            });
            for reset_after in [true, false] {
                k.push(RefKind::Gru {
                    activation,
                    recurrent_activation,
                    reset_after,
                });
            }
        }
        k
    }

    /// Deterministic values in `±scale`, different for every `seed`.
    fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|k| {
                let v = ((k as f64 + 1.0) * 12.9898 + seed as f64 * 78.233).sin() * 43758.5453;
                scale * (2.0 * (v - v.floor()) - 1.0)
            })
            .collect()
    }

    fn cell(kind: RefKind, i: usize, h: usize, bias: bool, seed: u64) -> RefCell {
        let gh = kind.gates() * h;
        let (b, u) = (values(gh, seed + 2, 0.3), values(gh, seed + 3, 0.3));
        RefCell::from_row_major(
            kind,
            i,
            h,
            &values(i * gh, seed, 0.8),
            &values(h * gh, seed + 1, 0.8),
            bias.then_some((&b[..], &u[..])),
        )
        .unwrap()
    }

    #[test]
    fn activations_and_kinks() {
        for act in Activation::ALL {
            assert!(activate(act, f64::NAN).is_nan(), "{act:?}");
            for v in [-4.0, -2.5, -0.7, -0.1, 0.3, 1.2, 2.9, 5.0] {
                let eps = 1e-6;
                let fd = (activate(act, v + eps) - activate(act, v - eps)) / (2.0 * eps);
                let an = activate_derivative(act, v);
                assert!(
                    (fd - an).abs() < 1e-8,
                    "{act:?} at {v}: fd {fd}, analytic {an}"
                );
            }
        }
        assert_eq!(activate_derivative(Activation::Relu, 0.0), 0.0);
        assert_eq!(activate_derivative(Activation::HardSigmoid, 3.0), 0.0);
        assert_eq!(activate_derivative(Activation::HardSigmoid, -3.0), 0.0);
        assert_eq!(activate(Activation::HardSigmoid, 3.0), 1.0);
        assert_eq!(activate(Activation::HardSigmoid, -3.0), 0.0);
        assert_eq!(activate(Activation::Sigmoid, -1e3), 0.0);
        assert_eq!(activate_derivative(Activation::Tanh, 1e3), 0.0);
    }

    /// One LSTM unit, one step, against values computed by hand (Python's `math`).
    #[test]
    fn lstm_one_unit_by_hand() {
        let (activation, recurrent_activation) = TANH_SIGMOID;
        let kind = RefKind::Lstm {
            activation,
            recurrent_activation,
        };
        // Gates i, f, c̃, o: W = [0.5, -0.5, 1, 2], U = [0.25, 0.75, -1, 0.5], no bias.
        let cell = RefCell::from_row_major(
            kind,
            1,
            1,
            &[0.5, -0.5, 1.0, 2.0],
            &[0.25, 0.75, -1.0, 0.5],
            None,
        )
        .unwrap();
        // x = 1, h0 = 0.5, c0 = -1:
        // i = σ(0.625) = 0.6513548646660542, f = σ(-0.125) = 0.46879062662624377,
        // c̃ = tanh(0.5) = 0.46211715726000974, o = σ(2.25) = 0.9046505351008906,
        // c = f·c0 + i·c̃ = -0.16778836819928844, h = o·tanh(c) = -0.1503812540358776.
        let run = forward(&cell, &[1.0], 1, 1, Some(&[0.5, -1.0]), false, true).unwrap();
        let (h, c) = (-0.1503812540358776, -0.16778836819928844);
        assert!((run.y[0] - h).abs() < 1e-15, "{}", run.y[0]);
        assert!((run.final_state[0] - h).abs() < 1e-15);
        assert!((run.final_state[1] - c).abs() < 1e-15);
    }

    /// The two GRU variants agree while the state is zero and `u_h̃ = 0`, and differ after.
    #[test]
    fn gru_variants() {
        let (i, h, t, b) = (3, 4, 3, 2);
        let x = values(t * b * i, 9, 1.0);
        let run = |reset_after: bool, recurrent_bias: bool, initial: Option<&[f64]>| {
            let kind = RefKind::Gru {
                activation: Activation::Tanh,
                recurrent_activation: Activation::Sigmoid,
                reset_after,
            };
            let mut c = cell(kind, i, h, true, 5);
            if !recurrent_bias {
                c.recurrent_bias = Some(DVector::zeros(3 * h));
            }
            forward(&c, &x, t, b, initial, false, true).unwrap().y
        };
        let (after, before) = (run(true, false, None), run(false, false, None));
        let first = b * h;
        for k in 0..first {
            assert!((after[k] - before[k]).abs() < 1e-15);
        }
        let later = (first..after.len()).map(|k| (after[k] - before[k]).abs());
        assert!(later.fold(0.0, f64::max) > 1e-3);
        // With a non-zero recurrent bias the first step differs too.
        let (after, before) = (run(true, true, None), run(false, true, None));
        assert!((0..first).any(|k| (after[k] - before[k]).abs() > 1e-3));
        // And with a non-zero initial state.
        let h0 = values(b * h, 11, 1.0);
        let (after, before) = (run(true, false, Some(&h0)), run(false, false, Some(&h0)));
        assert!((0..first).any(|k| (after[k] - before[k]).abs() > 1e-3));
    }

    /// `go_backwards` is the forward run over the reversed sequence.
    #[test]
    fn go_backwards_is_reversed_input() {
        let (i, h, t, b) = (2, 3, 4, 2);
        let c = cell(
            RefKind::Lstm {
                activation: Activation::Tanh,
                recurrent_activation: Activation::Sigmoid,
            },
            i,
            h,
            true,
            1,
        );
        let x = values(t * b * i, 3, 1.0);
        let reversed: Vec<f64> = (0..t)
            .rev()
            .flat_map(|k| x[k * b * i..(k + 1) * b * i].to_vec())
            .collect();
        let bwd = forward(&c, &x, t, b, None, true, true).unwrap();
        let fwd = forward(&c, &reversed, t, b, None, false, true).unwrap();
        assert_eq!(bwd, fwd);
    }

    /// Every gradient against central differences of the reference's own forward pass, for
    /// every kind, with and without bias, initial state, `go_backwards`, `return_sequences`.
    #[test]
    fn gradients_match_finite_differences() {
        let (i, h, t, b) = (2, 3, 3, 2);
        let mut seed = 0;
        for kind in kinds() {
            for flags in 0..16u32 {
                let [bias, init, gobwd, rs] = [0, 1, 2, 3].map(|k| flags >> k & 1 == 1);
                seed += 1;
                let s = kind.states();
                let mut c = cell(kind, i, h, bias, seed);
                let mut x = values(t * b * i, seed + 10, 1.0);
                let mut h0 = values(s * b * h, seed + 11, 0.7);
                let y_len = if rs { t * b * h } else { b * h };
                let dy = values(y_len, seed + 12, 1.0);
                let dfin = values(s * b * h, seed + 13, 1.0);
                let g = backward(
                    &c,
                    &x,
                    t,
                    b,
                    init.then_some(&h0[..]),
                    gobwd,
                    rs,
                    &dy,
                    Some(&dfin),
                )
                .unwrap();
                let want_params = g.params();

                let loss = |c: &RefCell, x: &[f64], h0: &[f64]| {
                    let r = forward(c, x, t, b, init.then_some(h0), gobwd, rs).unwrap();
                    let dot =
                        |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
                    dot(&r.y, &dy) + dot(&r.final_state, &dfin)
                };
                let eps = 1e-6;
                let check = |what: &str, k: usize, fd: f64, an: f64| {
                    assert!(
                        (fd - an).abs() <= 1e-7 + 1e-6 * an.abs(),
                        "{kind:?} flags {flags:04b}: {what}[{k}]: fd {fd}, analytic {an}"
                    );
                };
                for k in 0..x.len() {
                    let v = x[k];
                    x[k] = v + eps;
                    let up = loss(&c, &x, &h0);
                    x[k] = v - eps;
                    let down = loss(&c, &x, &h0);
                    x[k] = v;
                    check("dx", k, (up - down) / (2.0 * eps), g.dx[k]);
                }
                if init {
                    for k in 0..h0.len() {
                        let v = h0[k];
                        h0[k] = v + eps;
                        let up = loss(&c, &x, &h0);
                        h0[k] = v - eps;
                        let down = loss(&c, &x, &h0);
                        h0[k] = v;
                        check(
                            "d_initial_state",
                            k,
                            (up - down) / (2.0 * eps),
                            g.d_initial_state[k],
                        );
                    }
                }
                // Parameters, perturbed through the row-major view the gradients use.
                for (p, want) in want_params.iter().enumerate() {
                    for (k, &an) in want.iter().enumerate() {
                        let v = *param_mut(&mut c, p, k);
                        *param_mut(&mut c, p, k) = v + eps;
                        let up = loss(&c, &x, &h0);
                        *param_mut(&mut c, p, k) = v - eps;
                        let down = loss(&c, &x, &h0);
                        *param_mut(&mut c, p, k) = v;
                        check(&format!("param {p}"), k, (up - down) / (2.0 * eps), an);
                    }
                }
            }
        }
    }

    /// Element `k` (row-major) of parameter `p` in [`RefGrads::params`] order.
    fn param_mut(c: &mut RefCell, p: usize, k: usize) -> &mut f64 {
        match p {
            0 => {
                let n = c.kernel.ncols();
                &mut c.kernel[(k / n, k % n)]
            }
            1 => {
                let n = c.recurrent_kernel.ncols();
                &mut c.recurrent_kernel[(k / n, k % n)]
            }
            2 => &mut c.bias.as_mut().unwrap()[k],
            _ => &mut c.recurrent_bias.as_mut().unwrap()[k],
        }
    }

    #[test]
    fn kink_margins() {
        // relu(x·w) with x = 1, w = 0.25: distance 0.25 from the kink, all of one term.
        let relu = RefKind::SimpleRnn {
            activation: Activation::Relu,
        };
        let c = RefCell::from_row_major(relu, 2, 1, &[0.25, -0.5], &[1.0], None).unwrap();
        let m = kink_margin(&c, &[1.0, 0.0], 1, 1, None, false).unwrap();
        assert_eq!(
            m,
            KinkMargin {
                relative: 1.0,
                absolute: 0.25
            }
        );
        // 1·0.25 + 0.5·(−0.5) = 0 exactly, from terms of magnitude 0.5: on the kink.
        let m = kink_margin(&c, &[1.0, 0.5], 1, 1, None, false).unwrap();
        assert_eq!(
            m,
            KinkMargin {
                relative: 0.0,
                absolute: 0.0
            }
        );
        // All terms zero: exactly 0 in every precision, not counted.
        let m = kink_margin(&c, &[0.0, 0.0], 1, 1, None, false).unwrap();
        assert_eq!(m.relative, f64::INFINITY);
        // Smooth activations have no kinks.
        let tanh = RefKind::SimpleRnn {
            activation: Activation::Tanh,
        };
        let c = RefCell::from_row_major(tanh, 2, 1, &[0.25, -0.5], &[1.0], None).unwrap();
        let m = kink_margin(&c, &[1.0, 0.5], 1, 1, None, false).unwrap();
        assert_eq!(m.absolute, f64::INFINITY);
    }

    #[test]
    fn shapes_are_checked() {
        let c = cell(
            RefKind::SimpleRnn {
                activation: Activation::Tanh,
            },
            2,
            3,
            true,
            1,
        );
        assert!(matches!(
            forward(&c, &[0.0; 5], 1, 2, None, false, true),
            Err(Error::Length {
                arg: "x",
                expected: 4,
                actual: 5
            })
        ));
        assert!(matches!(
            forward(&c, &[0.0; 4], 1, 2, Some(&[0.0; 5]), false, true),
            Err(Error::Length {
                arg: "initial_state",
                ..
            })
        ));
        assert!(matches!(
            backward(&c, &[0.0; 4], 1, 2, None, false, true, &[0.0; 5], None),
            Err(Error::Length { arg: "dy", .. })
        ));
        let mut bad = c.clone();
        bad.kernel = DMatrix::zeros(2, 4);
        assert!(matches!(
            forward(&bad, &[0.0; 4], 1, 2, None, false, true),
            Err(Error::Mismatch { arg: "kernel", .. })
        ));
    }
}

// ------------------------------------------------------------------ layers

/// How outputs at padded steps look (see [`crate::layer::MaskSemantics`]).
pub use crate::layer::MaskSemantics as RefMaskSemantics;
pub use crate::layer::Merge as RefMerge;

/// A stack of layers for [`stack_forward`]: cells `layer·D + direction`, each with its own
/// input width, and the stack's options, with exactly the semantics documented in
/// [`crate::layer`].
#[derive(Debug, Clone)]
pub struct RefStack {
    /// `L·D` cells.
    pub cells: Vec<RefCell>,
    /// Layers `L`.
    pub layers: usize,
    /// Two directions per layer.
    pub bidirectional: bool,
    /// Merge of the two directions.
    pub merge: RefMerge,
    /// Keras `go_backwards` on every layer (one direction; no padding with several layers).
    pub go_backwards: bool,
    /// Every output, or the last.
    pub return_sequences: bool,
    /// Outputs at padded steps.
    pub mask_semantics: RefMaskSemantics,
}

/// Dropout masks for [`stack_forward`], already scaled (`0` or `1 / (1 − p)`).
#[derive(Debug, Clone, Default)]
pub struct RefDropout {
    /// Per cell, `[B, I_layer]` on the layer's inputs.
    pub input: Vec<Option<Vec<f64>>>,
    /// Per cell, `[B, H]` on the state entering the recurrent products.
    pub recurrent: Vec<Option<Vec<f64>>>,
    /// Per layer but the last, `[T, B, W]` on its merged output.
    pub between: Vec<Option<Vec<f64>>>,
}

/// Runs a whole stack, one sequence, layer, direction and step at a time: `x` time-major
/// `[T, B, I]`, `lengths` one per sequence (`<= T`), `initial` `[S, L·D, B, H]`. Returns `y`
/// time-major (`[T, B, W]`, processing order with `go_backwards`; `[B, W]` without
/// `return_sequences`; `[D, …]` for an unmerged pair) and the final states `[S, L·D, B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn stack_forward(
    stack: &RefStack,
    x: &[f64],
    t: usize,
    b: usize,
    lengths: &[usize],
    initial: Option<&[f64]>,
    dropout: Option<&RefDropout>,
) -> Result<RefRun> {
    let d_count = if stack.bidirectional { 2 } else { 1 };
    let ld = checked_size("layers", &[stack.layers, d_count])?;
    check_len("cells", stack.cells.len(), ld)?;
    check_len("lengths", lengths.len(), b)?;
    for c in &stack.cells {
        c.validate()?;
    }
    let (h, s) = (stack.cells[0].hidden, stack.cells[0].states());
    check_len(
        "x",
        x.len(),
        checked_size("x", &[t, b, stack.cells[0].input])?,
    )?;
    if let Some(init) = initial {
        check_len(
            "initial_state",
            init.len(),
            checked_size("initial_state", &[s, ld, b, h])?,
        )?;
    }
    if stack.go_backwards && stack.layers > 1 && lengths.iter().any(|&n| n != t) {
        return Err(Error::Invalid {
            arg: "lengths",
            reason: "a stack of go_backwards layers takes no padding".into(),
        });
    }
    let keras = stack.mask_semantics == RefMaskSemantics::Keras;
    let mut final_state = vec![0.0; s * ld * b * h];
    // The current layer's input per sequence: [T] vectors.
    let mut inputs: Vec<Vec<DVector<f64>>> = (0..b)
        .map(|n| {
            let i = stack.cells[0].input;
            (0..t)
                .map(|k| DVector::from_column_slice(&x[(k * b + n) * i..][..i]))
                .collect()
        })
        .collect();
    let merge = |m: RefMerge, a: &DVector<f64>, c: Option<&DVector<f64>>| -> DVector<f64> {
        match c {
            None => a.clone(),
            Some(c) => match m {
                RefMerge::Concat | RefMerge::None => {
                    DVector::from_iterator(2 * h, a.iter().chain(c.iter()).copied())
                }
                RefMerge::Sum => a + c,
                RefMerge::Mul => a.component_mul(c),
                RefMerge::Ave => (a + c) * 0.5,
            },
        }
    };
    let mut y = Vec::new();
    for layer in 0..stack.layers {
        let last_layer = layer + 1 == stack.layers;
        let rs = !last_layer || stack.return_sequences;
        // outs[d][n][k]: direction d's output at source step k; lasts[d][n]: its last output.
        let mut outs = vec![vec![vec![DVector::zeros(h); t]; b]; d_count];
        let mut lasts = vec![vec![DVector::zeros(h); b]; d_count];
        for dir in 0..d_count {
            let ci = layer * d_count + dir;
            let cell = &stack.cells[ci];
            let reverse = dir == 1 || stack.go_backwards;
            let carries = keras && dir == 0 && !stack.go_backwards && !(stack.bidirectional && rs);
            for n in 0..b {
                let mut state: Vec<DVector<f64>> = (0..s)
                    .map(|j| match initial {
                        Some(init) => {
                            DVector::from_column_slice(&init[((j * ld + ci) * b + n) * h..][..h])
                        }
                        None => DVector::zeros(h),
                    })
                    .collect();
                let len = lengths[n];
                let steps: Vec<usize> = if reverse {
                    (0..len).rev().collect()
                } else {
                    (0..len).collect()
                };
                for &k in &steps {
                    let mut xin = inputs[n][k].clone();
                    if let Some(m) = dropout.and_then(|d| d.input.get(ci)?.as_ref()) {
                        let i = cell.input;
                        xin.component_mul_assign(&DVector::from_column_slice(&m[n * i..][..i]));
                    }
                    let h_prod = match dropout.and_then(|d| d.recurrent.get(ci)?.as_ref()) {
                        Some(m) => {
                            state[0].component_mul(&DVector::from_column_slice(&m[n * h..][..h]))
                        }
                        None => state[0].clone(),
                    };
                    state = step_dropped(cell, &xin, &state, &h_prod).0;
                    outs[dir][n][k] = state[0].clone();
                }
                if carries && len > 0 {
                    for out in &mut outs[dir][n][len..t] {
                        *out = state[0].clone();
                    }
                }
                if len > 0 {
                    lasts[dir][n] = state[0].clone();
                }
                for (j, v) in state.iter().enumerate() {
                    final_state[((j * ld + ci) * b + n) * h..][..h].copy_from_slice(v.as_slice());
                }
            }
        }
        if !last_layer {
            for n in 0..b {
                for k in 0..t {
                    // A go_backwards layer returns its outputs in processing order: the
                    // next layer's input step k is the output after consuming step T-1-k.
                    let src = if stack.go_backwards { t - 1 - k } else { k };
                    let mut v = merge(
                        stack.merge,
                        &outs[0][n][src],
                        outs.get(1).map(|o| &o[n][src]),
                    );
                    if let Some(m) = dropout.and_then(|d| d.between.get(layer)?.as_ref()) {
                        let w = v.len();
                        v.component_mul_assign(&DVector::from_column_slice(
                            &m[(k * b + n) * w..][..w],
                        ));
                    }
                    inputs[n][k] = v;
                }
            }
            continue;
        }
        let planes = if stack.bidirectional && stack.merge == RefMerge::None {
            2
        } else {
            1
        };
        if stack.return_sequences {
            for plane in 0..planes {
                for p in 0..t {
                    let k = if stack.go_backwards { t - 1 - p } else { p };
                    for n in 0..b {
                        let v = if planes == 2 {
                            outs[plane][n][k].clone()
                        } else {
                            merge(stack.merge, &outs[0][n][k], outs.get(1).map(|o| &o[n][k]))
                        };
                        y.extend_from_slice(v.as_slice());
                    }
                }
            }
        } else {
            for plane in 0..planes {
                for n in 0..b {
                    let v = if planes == 2 {
                        lasts[plane][n].clone()
                    } else {
                        merge(stack.merge, &lasts[0][n], lasts.get(1).map(|o| &o[n]))
                    };
                    y.extend_from_slice(v.as_slice());
                }
            }
        }
    }
    Ok(RefRun { y, final_state })
}

/// One side of [`stack_tbptt_objective`]: a stack, its input `[T, B, I]` and initial state
/// `[S, L, B, H]` (zeros when `None`).
#[derive(Debug, Clone, Copy)]
pub struct RefTbpttSide<'a> {
    /// The stack.
    pub stack: &'a RefStack,
    /// Time-major input.
    pub x: &'a [f64],
    /// Initial state.
    pub initial: Option<&'a [f64]>,
}

/// The objective whose gradient truncated BPTT(`k1`, `k2`) computes (see
/// [`crate::layer::Tbptt`]), written out update by update: for every update ending at
/// `t_e` (each multiple of `k1`, and `T`), with `t_w = max(0, t_e − k2)`,
///
/// `Σ_{s ∈ [max(t_e − k1, t_w), t_e)} dy[s] · y_w[s]` (`+ d_final · final_w` at the last),
///
/// where `y_w` and `final_w` are the run of `live` over the window's steps `[t_w, t_e)`
/// (lengths clipped to it) from the state at `t_w`. That state is `live`'s initial state when
/// `t_w = 0`, and otherwise the final state of a run of `frozen` over the first `t_w` steps:
/// a constant of the differentiation, so the derivative of this objective with respect to
/// `live`'s weights, input and initial state is the truncated gradient (`frozen` is `live`
/// unperturbed). The stack must run forward in time and return sequences; `dy` is time-major
/// `[T, B, H]`, `d_final` `[S, L, B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn stack_tbptt_objective(
    frozen: RefTbpttSide<'_>,
    live: RefTbpttSide<'_>,
    t: usize,
    b: usize,
    lengths: &[usize],
    dropout: Option<&RefDropout>,
    (k1, k2): (usize, usize),
    dy: &[f64],
    d_final: Option<&[f64]>,
) -> Result<f64> {
    crate::error::check_nonzero("k1", k1)?;
    crate::error::check_nonzero("k2", k2)?;
    let i = live.stack.cells[0].input;
    let h = live.stack.cells[0].hidden;
    check_len("dy", dy.len(), checked_size("dy", &[t, b, h])?)?;
    let clip = |from: usize, to: usize| -> Vec<usize> {
        lengths
            .iter()
            .map(|&n| n.saturating_sub(from).min(to - from))
            .collect()
    };
    let mut objective = 0.0;
    let mut end = 0;
    while end < t {
        let start = end;
        end = (end + k1).min(t);
        let window = end.saturating_sub(k2);
        let state = if window == 0 {
            live.initial.map(<[f64]>::to_vec)
        } else {
            let run = stack_forward(
                frozen.stack,
                &frozen.x[..window * b * i],
                window,
                b,
                &clip(0, window),
                frozen.initial,
                dropout,
            )?;
            Some(run.final_state)
        };
        let run = stack_forward(
            live.stack,
            &live.x[window * b * i..end * b * i],
            end - window,
            b,
            &clip(window, end),
            state.as_deref(),
            dropout,
        )?;
        for s in start.max(window)..end {
            let y = &run.y[(s - window) * b * h..][..b * h];
            let g = &dy[s * b * h..][..b * h];
            objective += y.iter().zip(g).map(|(p, q)| p * q).sum::<f64>();
        }
        if end == t
            && let Some(g) = d_final
        {
            objective += run
                .final_state
                .iter()
                .zip(g)
                .map(|(p, q)| p * q)
                .sum::<f64>();
        }
    }
    Ok(objective)
}
