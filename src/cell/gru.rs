//! GRU: `z, r = σ(·)`, `h̃ = act(·)`, `h = z ⊙ h_prev + (1 − z) ⊙ h̃`, in both variants:
//!
//! - `reset_after = true` (Keras default, PyTorch, cuDNN, ONNX `linear_before_reset = 1`):
//!   `h̃ = act(x·W_h̃ + b_h̃ + r ⊙ (h_prev·U_h̃ + u_h̃))`;
//! - `reset_after = false` (the original GRU, ONNX default):
//!   `h̃ = act(x·W_h̃ + b_h̃ + (r ⊙ h_prev)·U_h̃ + u_h̃)`.
//!
//! Gate blocks along the `3·H` axis, in this order (Keras's; PyTorch's `r, z, n` is permuted
//! on import):
//!
//! | block | constant | gate | activation |
//! |---|---|---|---|
//! | 0 | [`UPDATE`] | update `z` | `recurrent_activation` |
//! | 1 | [`RESET`] | reset `r` | `recurrent_activation` |
//! | 2 | [`CANDIDATE`] | candidate `h̃` | `activation` |
//!
//! Training record per row: `z, r, h̃` and, for `reset_after`, `h_prev·U_h̃ + u_h̃` (`4·H`);
//! `3·H` otherwise (`r ⊙ h_prev` is recomputed in backward).

use super::weights::{CellKind, Recurrent, RecurrentWeights, private::Sealed};
use super::{StepBackward, StepForward};
use crate::activation::Activation;
use crate::cpu;
use crate::dim::{Const, Dim, Dyn};
use crate::error::Result;
use crate::real::Real;

/// Update gate block.
pub const UPDATE: usize = 0;
/// Reset gate block.
pub const RESET: usize = 1;
/// Candidate block.
pub const CANDIDATE: usize = 2;

/// A GRU's activations and variant; the default is Keras's (`tanh`, `sigmoid`, reset after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GruKind {
    /// Activation of the candidate.
    pub activation: Activation,
    /// Activation of the update and reset gates.
    pub recurrent_activation: Activation,
    /// Whether the reset gate multiplies the recurrent product (`true`) or the previous
    /// state before the product (`false`).
    pub reset_after: bool,
}

impl Default for GruKind {
    fn default() -> Self {
        Self {
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            reset_after: true,
        }
    }
}

/// A GRU cell with input width `I` and hidden width `H`.
pub type Gru<T, I, H> = Recurrent<T, GruKind, I, H>;
/// A GRU whose shapes are compile-time constants.
pub type StaticGru<T, const I: usize, const H: usize> = Gru<T, Const<I>, Const<H>>;
/// A GRU whose shapes are known at run time.
pub type DynGru<T> = Gru<T, Dyn, Dyn>;

impl<T: Real, I: Dim, H: Dim> Gru<T, I, H> {
    /// A GRU with deterministic pseudo-random weights (see [`RecurrentWeights::random`]).
    pub fn random(input: I, hidden: H, kind: GruKind, use_bias: bool, seed: u64) -> Result<Self> {
        Self::from_weights(
            kind,
            RecurrentWeights::random(input, hidden, 3, use_bias, seed)?,
        )
    }
}

impl<T: Real, I: Dim, H: Dim> Gru<T, I, H> {
    /// [`crate::cell::Cell::step_backward`] of a step whose update blended `carry.h` rather
    /// than the state its gate products saw (see [`cpu::Carry`]).
    pub(crate) fn step_backward_blended(
        &self,
        step: StepBackward<'_, T>,
        carry: cpu::Carry<'_, T>,
        grads: &mut [Vec<T>],
    ) {
        // As in `step_backward`: the recurrent gradients may come in `sequence_backward`.
        let (d_rk, d_rb) = if self.kind.recurrent_grad_in_sequence() {
            (&mut [][..], &mut [][..])
        } else {
            super::weights::recurrent_grads(grads)
        };
        cpu::dispatch(cpu::Job::GruBwd(
            &self.kind,
            &self.weights,
            step,
            d_rk,
            d_rb,
            Some(carry),
        ));
    }
}

impl GruKind {
    /// Per-row record width (see the module docs).
    pub(crate) fn tape_width_rows(&self, h: usize) -> usize {
        if self.reset_after { 4 * h } else { 3 * h }
    }
}

impl Sealed for GruKind {}

impl CellKind for GruKind {
    const GATES: usize = 3;
    const STATES: usize = 1;
    fn tape_width(&self, h: usize) -> usize {
        self.tape_width_rows(h)
    }
    fn scratch_width(&self, h: usize) -> usize {
        4 * h
    }
    fn splittable(&self) -> bool {
        // Reset-before needs every unit's r before any candidate product: not tile-local.
        self.reset_after
    }
    fn recurrent_grad_in_sequence(&self) -> bool {
        self.reset_after
    }
    fn recurrent_gate_scale(&self, h: usize) -> Option<(usize, usize)> {
        self.reset_after.then_some((CANDIDATE, RESET * h))
    }
    fn step_forward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepForward<'_, T>,
    ) {
        cpu::dispatch(cpu::Job::GruFwd(self, w, step));
    }
    fn step_backward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        d_recurrent_kernel: &mut [T],
        d_recurrent_bias: &mut [T],
    ) {
        cpu::dispatch(cpu::Job::GruBwd(
            self,
            w,
            step,
            d_recurrent_kernel,
            d_recurrent_bias,
            None,
        ));
    }
    fn step_backward_gates<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        units: std::ops::Range<usize>,
    ) {
        cpu::dispatch(cpu::Job::GruBwdGates(self, w, step, units));
    }
}
