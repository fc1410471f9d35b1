//! The sequence engine: a [`Cell`] run over a batch of sequences, forward, recorded for
//! training, and backward through time.
//!
//! # Shapes
//! - `x`: `[T, B, I]` ([`Layout::TimeMajor`]) or `[B, T, I]` ([`Layout::BatchMajor`]).
//! - states (`initial_state`, [`Output::final_state`], `d_final_state`): `[S, B, H]`, state
//!   tensor outermost (`S = 2` for LSTM: `h` then `c`).
//! - `y`: with `return_sequences`, `[T, B, H]` or `[B, T, H]` in the input's layout; otherwise
//!   `[B, H]` (the last step's output).
//!
//! With `go_backwards` the engine consumes `x` from the last step to the first and returns the
//! outputs in *processing order* (`y[k]` follows `x[T-1-k]`), as Keras does.
//!
//! # Training
//! [`forward_train`] writes everything backward needs into a caller-provided record of
//! [`tape_len`] elements (the analogue of cuDNN's reserve space): every state of the sequence,
//! then the cell's per-step record. [`bptt`] takes the same cell, spec, `x` and record, the
//! upstream gradients on `y` and optionally on the final state, and returns the gradients for
//! `x`, the initial state and every parameter.
//!
//! # Example
//! ```
//! use fused_rnn::prelude::*;
//!
//! let cell = DynLstm::<f64>::random(Dyn(3), Dyn(5), LstmKind::default(), true, 7)?;
//! let spec = SeqSpec::new(4, 2); // T = 4, B = 2, time-major, all outputs
//! let x = vec![0.1; 4 * 2 * 3];
//! let mut tape = vec![0.0; seq::tape_len(&cell, &spec)?];
//! let out = seq::forward_train(&cell, &spec, &x, None, &mut tape)?;
//! let dy = vec![1.0; out.y.len()];
//! let grads = seq::bptt(&cell, &spec, &x, None, &tape, &dy, None)?;
//! assert_eq!(grads.dx.len(), x.len());
//! assert_eq!(grads.params.len(), 4); // kernel, recurrent_kernel, bias, recurrent_bias
//! # Ok::<(), fused_rnn::Error>(())
//! ```

mod parallel;
mod run;
mod stream;

pub use run::{bptt, bptt_into, forward, forward_train, tape_len};
pub use stream::Stream;

use crate::cell::Cell;
use crate::error::{Result, check_len, check_nonzero, checked_size, try_filled};
use crate::real::Real;

/// Memory order of `x`, `dx` and a sequence `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[T, B, ·]`.
    #[default]
    TimeMajor,
    /// `[B, T, ·]`.
    BatchMajor,
}

/// How a sequence is run: its extent, layout, direction and which outputs come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpec {
    /// Time steps `T` (at least 1).
    pub time_steps: usize,
    /// Sequences in the batch `B` (at least 1).
    pub batch: usize,
    /// Memory order of `x`, `dx` and `y`.
    pub layout: Layout,
    /// Consume time from last to first (Keras `go_backwards`).
    pub go_backwards: bool,
    /// Return every step's output (`true`) or only the last one.
    pub return_sequences: bool,
    /// Threads the forward loop may use (at least 1). Used where the cell can split its batch
    /// ([`Cell::row_parts`]) or its steps ([`Cell::max_parts`]): built-in cells whose recurrent
    /// weights fit a core's cache run contiguous blocks of batch rows through the whole sequence
    /// on separate threads, with no synchronisation per step; otherwise the built-in LSTM,
    /// SimpleRNN and reset-after GRU split steps by 16-unit tiles once a step is large enough to
    /// pay for a thread, each thread keeping its share of the recurrent weights in its own
    /// cache. The input projection is split by rows.
    /// In backpropagation the products over all `T·B` rows are split by blocks of their result,
    /// and the reverse step loop by blocks of batch rows where the cell allows it
    /// ([`Cell::backward_row_parts`]: built-in LSTM, SimpleRNN and reset-after GRU, blocks of at
    /// least 8 rows), otherwise each step by 16-unit tiles ([`Cell::backward_unit_parts`], the
    /// same cells). Results do not depend on the thread count. A call uses at most the
    /// machine's available parallelism ([`std::thread::available_parallelism`]), whatever this
    /// asks for: more threads would only wait for each other. The extra threads are workers
    /// kept between calls, which spin for 200 µs after each job before they sleep.
    pub threads: usize,
}

impl SeqSpec {
    /// `T` steps of `B` sequences, time-major, forward in time, every output returned.
    pub fn new(time_steps: usize, batch: usize) -> Self {
        Self {
            time_steps,
            batch,
            layout: Layout::TimeMajor,
            go_backwards: false,
            return_sequences: true,
            threads: 1,
        }
    }
    /// The same spec with another thread count (see [`SeqSpec::threads`]).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
    /// The same spec with another layout.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// The same spec consuming time backwards (or not).
    pub fn go_backwards(mut self, on: bool) -> Self {
        self.go_backwards = on;
        self
    }
    /// The same spec returning every output (or only the last).
    pub fn return_sequences(mut self, on: bool) -> Self {
        self.return_sequences = on;
        self
    }

    /// Source time index of processing step `t`.
    fn source_step(&self, t: usize) -> usize {
        if self.go_backwards {
            self.time_steps - 1 - t
        } else {
            t
        }
    }

    /// Offset of row (`step`, `b`) of a `[T, B, w]` / `[B, T, w]` tensor in this layout.
    fn offset(&self, step: usize, b: usize, w: usize) -> usize {
        match self.layout {
            Layout::TimeMajor => (step * self.batch + b) * w,
            Layout::BatchMajor => (b * self.time_steps + step) * w,
        }
    }
}

/// The result of a forward run.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<T> {
    /// Outputs: `[T, B, H]` / `[B, T, H]` (processing order), or `[B, H]` without
    /// `return_sequences`.
    pub y: Vec<T>,
    /// The state after the last step, `[S, B, H]`.
    pub final_state: Vec<T>,
}

/// Gradients returned by backpropagation through time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T> {
    /// `∂L/∂x`, shaped like `x`.
    pub dx: Vec<T>,
    /// `∂L/∂initial_state`, `[S, B, H]` (also when no initial state was given: the gradient
    /// with respect to the zero state).
    pub d_initial_state: Vec<T>,
    /// `∂L/∂θ` for every tensor of [`Cell::params`], same order and lengths.
    pub params: Vec<Vec<T>>,
}

impl<T: Real> Gradients<T> {
    /// Zero gradients for `cell` over `spec`.
    pub fn zeros<C: Cell<T> + ?Sized>(cell: &C, spec: &SeqSpec) -> Result<Self> {
        let d = Dims::new(cell, spec)?;
        Ok(Self {
            dx: try_filled("dx", d.x_len, T::ZERO)?,
            d_initial_state: try_filled("d_initial_state", d.state_len, T::ZERO)?,
            params: cell
                .params()
                .iter()
                .map(|p| try_filled("params", p.data.len(), T::ZERO))
                .collect::<Result<_>>()?,
        })
    }
}

/// Whether [`bptt_into`] replaces or adds to the parameter gradients it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradMode {
    /// Parameter gradients are set to this sequence's gradient.
    Overwrite,
    /// This sequence's gradient is added to the parameter gradients (accumulation over
    /// mini-batches or truncated-BPTT windows).
    Accumulate,
}

/// Every size the engine derives from a cell and a spec, checked once.
#[derive(Debug, Clone, Copy)]
struct Dims {
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    /// One state snapshot `S·B·H`.
    state_len: usize,
    /// Projection width `P`.
    p: usize,
    /// Cell record width per row.
    tw: usize,
    /// Scratch width per row.
    sw: usize,
    x_len: usize,
    y_len: usize,
}

impl Dims {
    fn new<T: Real, C: Cell<T> + ?Sized>(cell: &C, spec: &SeqSpec) -> Result<Self> {
        let (t, b) = (spec.time_steps, spec.batch);
        check_nonzero("time_steps", t)?;
        check_nonzero("batch", b)?;
        check_nonzero("threads", spec.threads)?;
        let (i, h, s) = (cell.input_size(), cell.hidden_size(), cell.state_count());
        check_nonzero("input_size", i)?;
        check_nonzero("hidden_size", h)?;
        check_nonzero("state_count", s)?;
        let y_len = if spec.return_sequences {
            checked_size("y", &[t, b, h])?
        } else {
            checked_size("y", &[b, h])?
        };
        // The largest per-sequence buffers, checked here so later products cannot overflow.
        let snapshots = t
            .checked_add(1)
            .ok_or(crate::Error::Overflow { arg: "tape" })?;
        checked_size("tape", &[snapshots, s, b, h])?;
        checked_size("scratch", &[b, cell.scratch_width()])?;
        checked_size(
            "tape",
            &[t, b, cell.tape_width().max(cell.projection_width())],
        )?;
        Ok(Self {
            t,
            b,
            i,
            h,
            state_len: checked_size("initial_state", &[s, b, h])?,
            p: cell.projection_width(),
            tw: cell.tape_width(),
            sw: cell.scratch_width(),
            x_len: checked_size("x", &[t, b, i])?,
            y_len,
        })
    }

    /// Length of the training record: `T + 1` state snapshots, then `T` cell records.
    fn tape_len(&self) -> Result<usize> {
        let snapshots = self
            .t
            .checked_add(1)
            .ok_or(crate::Error::Overflow { arg: "tape" })?;
        let states = checked_size("tape", &[snapshots, self.state_len])?;
        let cell = checked_size("tape", &[self.t, self.b, self.tw])?;
        states
            .checked_add(cell)
            .ok_or(crate::Error::Overflow { arg: "tape" })
    }

    /// Checks the lengths of `x` and of the initial state, if any.
    fn check_inputs<T>(&self, x: &[T], initial: Option<&[T]>) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        match initial {
            Some(s) => check_len("initial_state", s.len(), self.state_len),
            None => Ok(()),
        }
    }

    /// Checks that a record of `len` elements is large enough; returns the length used.
    fn check_tape(&self, len: usize) -> Result<usize> {
        let need = self.tape_len()?;
        if len < need {
            return Err(crate::Error::Length {
                arg: "tape",
                expected: need,
                actual: len,
            });
        }
        Ok(need)
    }
}
