//! LSTM: `i, f, o = σ(·)`, `c̃ = act(·)`, `c = f ⊙ c_prev + i ⊙ c̃`, `h = o ⊙ act(c)`.
//!
//! Gate blocks along the `4·H` axis, in this order (Keras's; PyTorch's `i, f, g, o` is the
//! same order, ONNX's `i, o, f, c` is permuted on import):
//!
//! | block | constant | gate | activation |
//! |---|---|---|---|
//! | 0 | [`INPUT`] | input `i` | `recurrent_activation` |
//! | 1 | [`FORGET`] | forget `f` | `recurrent_activation` |
//! | 2 | [`CELL`] | candidate `c̃` | `activation` |
//! | 3 | [`OUTPUT`] | output `o` | `recurrent_activation` |
//!
//! States: 0 = `h`, 1 = `c`. Training record per row: `i, f, c̃, o, act(c)` (`5·H`).

use super::weights::{CellKind, Recurrent, RecurrentWeights, private::Sealed};
use super::{StepBackward, StepForward};
use crate::activation::Activation;
use crate::cpu;
use crate::dim::{Const, Dim, Dyn};
use crate::error::Result;
use crate::real::Real;

/// Input gate block.
pub const INPUT: usize = 0;
/// Forget gate block.
pub const FORGET: usize = 1;
/// Candidate (cell input) block.
pub const CELL: usize = 2;
/// Output gate block.
pub const OUTPUT: usize = 3;

/// An LSTM's activations; the default is Keras's (`tanh`, `sigmoid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LstmKind {
    /// Activation of the candidate and of the cell state before the output gate.
    pub activation: Activation,
    /// Activation of the input, forget and output gates.
    pub recurrent_activation: Activation,
}

impl Default for LstmKind {
    fn default() -> Self {
        Self {
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
        }
    }
}

/// An LSTM cell with input width `I` and hidden width `H`.
pub type Lstm<T, I, H> = Recurrent<T, LstmKind, I, H>;
/// An LSTM whose shapes are compile-time constants.
pub type StaticLstm<T, const I: usize, const H: usize> = Lstm<T, Const<I>, Const<H>>;
/// An LSTM whose shapes are known at run time.
pub type DynLstm<T> = Lstm<T, Dyn, Dyn>;

impl<T: Real, I: Dim, H: Dim> Lstm<T, I, H> {
    /// An LSTM with deterministic pseudo-random weights (see [`RecurrentWeights::random`]).
    pub fn random(input: I, hidden: H, kind: LstmKind, use_bias: bool, seed: u64) -> Result<Self> {
        Self::from_weights(
            kind,
            RecurrentWeights::random(input, hidden, 4, use_bias, seed)?,
        )
    }
}

impl Sealed for LstmKind {}

impl CellKind for LstmKind {
    const GATES: usize = 4;
    const STATES: usize = 2;
    fn tape_width(&self, h: usize) -> usize {
        5 * h
    }
    fn step_forward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepForward<'_, T>,
    ) {
        cpu::dispatch(cpu::Job::LstmFwd(self, w, step));
    }
    fn step_backward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        d_recurrent_kernel: &mut [T],
        d_recurrent_bias: &mut [T],
    ) {
        cpu::dispatch(cpu::Job::LstmBwd(
            self,
            w,
            step,
            d_recurrent_kernel,
            d_recurrent_bias,
        ));
    }
    fn step_backward_gates<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        units: std::ops::Range<usize>,
    ) {
        cpu::dispatch(cpu::Job::LstmBwdGates(self, w, step, units));
    }
}
