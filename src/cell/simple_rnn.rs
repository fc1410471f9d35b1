//! SimpleRNN (Elman): `h = act(x·W + b + h_prev·U + u)`.
//!
//! One gate block. No training record beyond the states: the derivative of the activation is
//! taken from the new state itself.

use super::weights::{CellKind, Recurrent, RecurrentWeights, private::Sealed};
use super::{StepBackward, StepForward};
use crate::activation::Activation;
use crate::cpu;
use crate::dim::{Const, Dim, Dyn};
use crate::error::Result;
use crate::real::Real;

/// A SimpleRNN's activation; the default is Keras's `tanh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SimpleRnnKind {
    /// The output activation (`tanh`, `relu`, `sigmoid`, `linear`, or `hard_sigmoid`).
    pub activation: Activation,
}

/// A SimpleRNN cell with input width `I` and hidden width `H`.
pub type SimpleRnn<T, I, H> = Recurrent<T, SimpleRnnKind, I, H>;
/// A SimpleRNN whose shapes are compile-time constants.
pub type StaticSimpleRnn<T, const I: usize, const H: usize> = SimpleRnn<T, Const<I>, Const<H>>;
/// A SimpleRNN whose shapes are known at run time.
pub type DynSimpleRnn<T> = SimpleRnn<T, Dyn, Dyn>;

impl<T: Real, I: Dim, H: Dim> SimpleRnn<T, I, H> {
    /// A SimpleRNN with deterministic pseudo-random weights (see [`RecurrentWeights::random`]).
    pub fn random(
        input: I,
        hidden: H,
        kind: SimpleRnnKind,
        use_bias: bool,
        seed: u64,
    ) -> Result<Self> {
        Self::from_weights(
            kind,
            RecurrentWeights::random(input, hidden, 1, use_bias, seed)?,
        )
    }
}

impl Sealed for SimpleRnnKind {}

impl CellKind for SimpleRnnKind {
    const GATES: usize = 1;
    const STATES: usize = 1;
    fn tape_width(&self, _h: usize) -> usize {
        0
    }
    fn step_forward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepForward<'_, T>,
    ) {
        cpu::dispatch(cpu::Job::RnnFwd(self, w, step));
    }
    fn step_backward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        d_recurrent_kernel: &mut [T],
        d_recurrent_bias: &mut [T],
    ) {
        cpu::dispatch(cpu::Job::RnnBwd(
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
        cpu::dispatch(cpu::Job::RnnBwdGates(self, w, step, units));
    }
}
