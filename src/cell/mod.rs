//! Cells: the [`Cell`] trait the sequence engine runs, and the built-in SimpleRNN, LSTM and
//! GRU cells.
//!
//! # The cell contract
//! A cell maps an input row `x_t` (`I` values) and a state (`S` tensors of `H` values: one
//! for SimpleRNN and GRU, two — `h` then `c` — for LSTM) to the next state. State 0 is the
//! cell's output. The engine calls a cell on a whole batch at a time; every buffer it hands over
//! is row-major with the lengths given below and has been checked against the sizes the cell
//! reports.
//!
//! Built-in cells additionally use the *input projection*: before the recurrence the engine asks
//! the cell to map every input row of the sequence at once (one matrix product over all `T·B`
//! rows), and each step then reads its rows of that projection. In backward the engine
//! collects the gradient of every projection row and hands the whole sequence back to
//! [`Cell::project_backward`] — again one product over all rows. A user cell that does not need
//! this keeps the defaults (`projection_width() == 0`) and reads `x` in its step.
//!
//! # Built-in weights and gate order
//! Built-in cells store `kernel [I, G·H]`, `recurrent_kernel [H, G·H]`, `bias [G·H]` and
//! `recurrent_bias [G·H]`, row-major, gate blocks of `H` columns along the `G·H` axis in the
//! order of the constants in [`lstm`] (i, f, c, o) and [`gru`] (z, r, h) — the Keras order.
//! Pre-activations are `x·kernel + bias + h·recurrent_kernel + recurrent_bias`, except the GRU
//! candidate: `x·kernel + bias + r ⊙ (h·recurrent_kernel + recurrent_bias)` when
//! `reset_after`, `x·kernel + bias + (r ⊙ h)·recurrent_kernel + recurrent_bias` otherwise.
//! Keeping both biases makes PyTorch and ONNX weights (which have both) round-trip exactly;
//! Keras weights load into `bias` with a zero `recurrent_bias` (GRU `reset_after` loads both).

pub mod gru;
pub mod lstm;
pub mod simple_rnn;
mod weights;

pub use gru::{DynGru, Gru, GruKind, StaticGru};
pub use lstm::{DynLstm, Lstm, LstmKind, StaticLstm};
pub use simple_rnn::{DynSimpleRnn, SimpleRnn, SimpleRnnKind, StaticSimpleRnn};
pub use weights::{
    BIAS, CellKind, KERNEL, RECURRENT_BIAS, RECURRENT_KERNEL, Recurrent, RecurrentWeights,
};

use crate::real::Real;

/// One named parameter tensor of a cell, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a, T> {
    /// The tensor's name (`kernel`, `recurrent_kernel`, … for built-in cells).
    pub name: &'static str,
    /// Its shape, outermost first.
    pub shape: [usize; 2],
    /// Its values; `shape[0] * shape[1]` of them.
    pub data: &'a [T],
}

/// A share of a step's hidden units: the `index`-th of `count` parts (see
/// [`Cell::max_parts`]). [`Part::WHOLE`] is the whole step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Which part, `< count`.
    pub index: usize,
    /// Into how many parts the step is split.
    pub count: usize,
}

impl Part {
    /// The whole step.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// This part's share of `n` items split evenly in order: `n·index/count .. n·(index+1)/count`.
    pub fn range(self, n: usize) -> std::ops::Range<usize> {
        n * self.index / self.count..n * (self.index + 1) / self.count
    }
}

/// What one forward step reads and writes. All buffers are row-major over the batch.
#[derive(Debug)]
pub struct StepForward<'a, T> {
    /// Number of batch rows `B` in this step.
    pub batch: usize,
    /// Inputs: row `b` is `x[b·row_stride·I ..][.. I]`.
    pub x: &'a [T],
    /// This step's rows of the input projection (`P = projection_width()`; empty when 0): row
    /// `b` is `proj[b·row_stride·P ..][.. P]`.
    pub proj: &'a [T],
    /// How many rows apart the step's rows of `x` and `proj` lie: 1 when they are contiguous
    /// (`[B, I]`, `[B, P]`), which the engine guarantees to cells without a projection. With a
    /// projection the engine reads `x` where the caller laid it out, so a batch-major sequence
    /// of `T` steps gives `T`.
    pub row_stride: usize,
    /// The state before the step, `[S, B, H]`.
    pub state: &'a [T],
    /// The state after the step, `[S, B, H]`; the cell overwrites all of it.
    pub next: &'a mut [T],
    /// Scratch `[B, scratch_width()]`, contents unspecified on entry.
    pub scratch: &'a mut [T],
    /// The step's training record `[B, tape_width()]`, or empty when not training: the cell
    /// writes what its backward needs (besides `x`, `state` and `next`, which the engine keeps).
    pub tape: &'a mut [T],
    /// The share of the hidden units to compute ([`Part::WHOLE`] unless the cell reports
    /// [`Cell::max_parts`] above 1); the cell then writes only those units of `next` and `tape`.
    pub part: Part,
    /// How many steps of the same run came before this one (processing order). Results must
    /// not depend on it; kernels use its parity to alternate the order in which they stream
    /// their weights, so that what the previous step read last is still cached.
    pub step: usize,
}

/// Row `b` of a step's `x` or `proj` ([`StepForward::row_stride`] rows apart), `width` values.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn step_row<T>(rows: &[T], b: usize, width: usize, row_stride: usize) -> &[T] {
    &rows[b * row_stride * width..][..width]
}

/// What one backward step reads and writes. All buffers are row-major over the batch.
#[derive(Debug)]
pub struct StepBackward<'a, T> {
    /// Number of batch rows `B` in this step.
    pub batch: usize,
    /// Inputs `[B, I]` of the step. (The projection is not kept: a cell that needs it in
    /// backward copies it into its tape.)
    pub x: &'a [T],
    /// The state before the step, `[S, B, H]`.
    pub state: &'a [T],
    /// The state the step produced, `[S, B, H]`.
    pub next: &'a [T],
    /// The record the forward step wrote, `[B, tape_width()]`.
    pub tape: &'a [T],
    /// Gradient of the loss with respect to `next`, `[S, B, H]` (the output gradient of this
    /// step is already added into state 0).
    pub d_next: &'a [T],
    /// Gradient with respect to `state`, `[S, B, H]`; the cell overwrites all of it.
    pub d_state: &'a mut [T],
    /// Gradient with respect to the projection rows `[B, P]`; the cell overwrites all of it.
    pub d_proj: &'a mut [T],
    /// Gradient with respect to `x`, `[B, I]`; the cell *adds* its direct contribution.
    pub dx: &'a mut [T],
    /// Scratch `[B, scratch_width()]`, contents unspecified on entry.
    pub scratch: &'a mut [T],
    /// The step's index in processing order (the reverse loop counts down from `T − 1`).
    /// Results must not depend on it; kernels use its parity as in [`StepForward::step`].
    pub step: usize,
}

/// A recurrent cell the sequence engine can run forward and backward, the counterpart of a
/// Keras `RNN(cell)` cell.
///
/// Cells are `Sync`: the engine may run parts of one step on several threads
/// ([`Cell::max_parts`]). Sizes are per batch row and must not change while the engine holds
/// the cell. Parameter gradients are always *accumulated* (`+=`) into `grads`, which has one
/// buffer per entry of [`Cell::params`], same order and length.
///
/// The step, projection and gradient methods are hooks the engine ([`crate::seq`],
/// [`crate::layer`]) calls with buffers it has sized and a [`Part`] it has formed from the
/// cell's own answers; they return nothing, so they cannot report bad arguments. Called
/// directly with buffers of other lengths, or a `Part` with `count == 0`, the built-in cells
/// panic (every access is bounds-checked: never undefined behaviour). Programs run cells
/// through the engine, which checks every length and returns typed errors.
pub trait Cell<T: Real>: Sync {
    /// Input width `I`.
    fn input_size(&self) -> usize;
    /// Hidden width `H` of every state tensor and of the output.
    fn hidden_size(&self) -> usize;
    /// Number `S` of state tensors (1, or 2 for LSTM's `h` and `c`). State 0 is the output.
    fn state_count(&self) -> usize {
        1
    }
    /// Width of the per-row training record of one step.
    fn tape_width(&self) -> usize {
        0
    }
    /// Width of the per-row scratch buffer a step may use.
    fn scratch_width(&self) -> usize {
        0
    }
    /// Called once before a run (and by [`crate::seq::Stream::new`]), outside the steps: a
    /// cell prepares whatever its steps reuse (built-in `f32` cells pack their recurrent
    /// weights here, so that no step allocates).
    fn prepare(&self) {}
    /// Into how many parts a forward step over `batch` rows can usefully be split, to run on as
    /// many threads (1: not at all, the default; built-in cells also answer 1 when a step is
    /// too small for another thread to pay off). A cell that reports more than 1 computes, for a
    /// [`Part`], only the hidden units [`Cell::part_units`] names, in `next` (every state
    /// tensor) and in `tape`, whose width must then be a multiple of `H` with unit `j`'s values
    /// at `j + k·H`.
    fn max_parts(&self, batch: usize) -> usize {
        let _ = batch;
        1
    }
    /// Contiguous ranges of batch rows, up to `parts` of them, that the engine may run through
    /// the whole sequence on separate threads, each as a batch of its own, instead of splitting
    /// steps by [`Cell::max_parts`]; `None` (the default) to never do so. A cell that answers
    /// promises that every row's results are bit-identical to those of a step over all `batch`
    /// rows (built-in cells answer where their recurrent weights fit a core's cache, so that each
    /// thread can keep all of them).
    fn row_parts(&self, batch: usize, parts: usize) -> Option<Vec<std::ops::Range<usize>>> {
        let _ = (batch, parts);
        None
    }
    /// Like [`Cell::row_parts`], for the reverse step loop of backpropagation: contiguous ranges
    /// of batch rows that may each run every backward step on a thread of their own, with every
    /// row's results bit-identical to a step over all `batch` rows; `None` (the default) to never
    /// do so. A cell that answers also promises that its [`Cell::step_backward`] accumulates no
    /// parameter gradient (the engine then hands it an empty `grads`), leaving them all to
    /// [`Cell::sequence_backward`] and [`Cell::project_backward`].
    fn backward_row_parts(
        &self,
        batch: usize,
        parts: usize,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        let _ = (batch, parts);
        None
    }
    /// How many parts by hidden units, up to `parts`, the reverse step loop of backpropagation
    /// may split each step of `batch` rows into, when [`Cell::backward_row_parts`] gives no
    /// rows: per step, every part runs [`Cell::step_backward_gates`], the parts meet at one
    /// barrier, then every part runs [`Cell::step_backward_recurrent`]. 1 (the default) to never
    /// split. A cell that answers more promises what [`Cell::backward_row_parts`] does of its
    /// backward steps (no parameter gradient per step), that it reads `x` only through its
    /// projection (the split steps get an empty `dx`), and that every result is bit-identical
    /// to [`Cell::step_backward`]'s.
    fn backward_unit_parts(&self, batch: usize, parts: usize) -> usize {
        let _ = (batch, parts);
        1
    }
    /// The gate half of a backward step split by hidden units (see
    /// [`Cell::backward_unit_parts`]): from `step.d_next` at the units of `part`
    /// ([`Cell::part_units`]; the others hold unspecified values), writes those units' columns
    /// of every gate block of `step.d_proj` and those units of `step.d_state` but for the
    /// recurrent product's share, which [`Cell::step_backward_recurrent`] adds.
    fn step_backward_gates(&self, step: StepBackward<'_, T>, part: Part) {
        let _ = (step, part);
    }
    /// The recurrent half of a backward step split by hidden units: with `step.d_proj`
    /// complete (every part's gate half written), adds the recurrent product's share of the
    /// state gradient into `step.d_state` at the units of `part`.
    fn step_backward_recurrent(&self, step: StepBackward<'_, T>, part: Part) {
        let _ = (step, part);
    }
    /// The hidden units a [`Part`] computes (all `0..H` for [`Part::WHOLE`]).
    fn part_units(&self, part: Part) -> std::ops::Range<usize> {
        part.range(self.hidden_size())
    }
    /// Width `P` of the per-row input projection; 0 when the cell reads `x` directly.
    fn projection_width(&self) -> usize {
        0
    }
    /// Projects `N` input rows at once: `x [N, I]` → `proj [N, P]` (overwritten).
    fn project_inputs(&self, x: &[T], proj: &mut [T]) {
        let _ = (x, proj);
    }
    /// [`Cell::project_inputs`] for a run that records nothing (inference), where a cell may
    /// trade precision for speed as its inference steps do (built-in `f32` cells with bfloat16
    /// inference on). Defaults to [`Cell::project_inputs`].
    fn project_inputs_inference(&self, x: &[T], proj: &mut [T]) {
        self.project_inputs(x, proj)
    }
    /// One forward step over a batch.
    fn step_forward(&self, step: StepForward<'_, T>);
    /// One backward step over a batch; parameter gradients accumulate into `grads`.
    fn step_backward(&self, step: StepBackward<'_, T>, grads: &mut [Vec<T>]);
    /// Backward of [`Cell::project_inputs`] over all `N` rows: adds `∂L/∂x` into `dx [N, I]` and
    /// the projection's parameter gradients into `grads`.
    fn project_backward(&self, x: &[T], d_proj: &[T], dx: &mut [T], grads: &mut [Vec<T>]) {
        let _ = (x, d_proj, dx, grads);
    }
    /// Called once after the reverse sweep of BPTT, before [`Cell::project_backward`], with
    /// every state snapshot `states [T + 1, S, B, H]` (snapshot `t` is the state before step
    /// `t`, in processing order), every step's record `tape [T, B, W]` (as
    /// [`Cell::step_forward`] wrote it, `W` = [`Cell::tape_width`]) and every step's projection
    /// gradient `d_proj [T, B, P]`: lets a cell compute parameter gradients of the whole
    /// sequence as single matrix products rather than one small update per step. Accumulates
    /// into `grads`.
    fn sequence_backward(
        &self,
        batch: usize,
        states: &[T],
        tape: &[T],
        d_proj: &[T],
        grads: &mut [Vec<T>],
    ) {
        let _ = (batch, states, tape, d_proj, grads);
    }
    /// The parameter tensors, in a fixed order.
    fn params(&self) -> Vec<Param<'_, T>>;
    /// The same tensors, mutable, same order (used by [`crate::gradcheck`] to perturb them).
    fn params_mut(&mut self) -> Vec<&mut [T]>;
}

/// Zero-filled gradient buffers shaped like `cell.params()`.
pub fn zero_grads<T: Real, C: Cell<T> + ?Sized>(cell: &C) -> Vec<Vec<T>> {
    cell.params()
        .iter()
        .map(|p| vec![T::ZERO; p.data.len()])
        .collect()
}
