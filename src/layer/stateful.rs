//! State carried across calls (Keras's `stateful=True`) and truncated backpropagation through
//! time with a `(k1, k2)` schedule over a long sequence.
//!
//! # Stateful runs
//! A [`StatefulRnn`] keeps the final states `[S, L·D, B, H]` of its last call and starts the
//! next call from them, as a Keras layer built with `stateful=True` does (its states are
//! variables assigned the final states after every call). Every layer and direction carries
//! its own state, so for a forward stack two calls over the halves of a sequence give the run
//! over the whole sequence. A backward direction (bidirectional layers, `go_backwards`) also
//! carries its own final state into the next call, as Keras's stateful `Bidirectional` does:
//! it is then the state after consuming the *previous* chunk backwards, which is not what a
//! backward run over the concatenated sequence would see — Keras's semantics, kept as they are.
//! With lengths, a sequence's state stops at its last real step, so a chunk in which a sequence
//! has no real step leaves its state unchanged. Gradients do not flow from one call into the
//! previous one (Keras's state variables are not trainable either); [`Rnn::tbptt`] is the
//! schedule that backpropagates across chunk boundaries.
//!
//! # Truncated BPTT(k1, k2)
//! [`Rnn::tbptt`] runs Williams & Peng's truncated BPTT over a sequence of `T` steps, with the
//! weights fixed for the whole call. Every `k1` steps (and at step `T`), at update time `t_e`:
//! - the errors injected are those of the `k1` steps since the previous update,
//!   `[t_e − k1, t_e)` (the last update has the rest, and `d_final_state` if given);
//! - they are backpropagated through the window of the last `k2` steps, `[t_w, t_e)` with
//!   `t_w = max(0, t_e − k2)`, starting from the state at `t_w` taken as a constant: no
//!   gradient reaches anything before `t_w`.
//!
//! So with `k2 >= k1` every error is backpropagated at least `k2 − k1 + 1` steps and at most
//! `k2` steps (Williams & Peng's BPTT(h; h') with `h = k2`, `h' = k1`), and the windows of
//! successive updates overlap by `k2 − k1` steps. With `k2 < k1` the window covers only the
//! last `k2` of the `k1` new steps: the errors of steps `[t_e − k1, t_w)` are dropped (their
//! outputs are still computed and reported, but contribute no gradient), and each injected
//! error travels back at most `k2` steps. `k1 = k2 = T` is full BPTT.
//!
//! Each window is run as its own call of the stack over steps `[t_w, t_e)` from the state at
//! `t_w` (lengths clipped to the window), so everything per call stays per window: with Keras
//! mask semantics a padded step repeats the last real output *of its window* (0 if it has none
//! in the window). Dropout masks depend only on the seed, layer, direction and sequence, so
//! every window sees the same masks — those of a training run over the whole sequence.
//!
//! Cost: one training forward over every step and the windows' recomputation: with `k2 <= k1`
//! each step is run forward once and `min(k2, k1)` of every `k1` backwards; with `k2 > k1` the
//! window's first `k2 − k1` steps are run forward again (up to `k1 − 1` more to reach the
//! window's start from the last stored chunk state). Memory: a tape of `k2` steps (one window)
//! and one state per chunk.

use std::ops::Range;

use super::{Rnn, RnnGrads, RunSpec};
use crate::error::{Error, Result, check_len, check_nonzero, try_filled};
use crate::real::Real;
use crate::seq::{GradMode, Layout};

/// A stack that carries its final states into its next call (Keras's `stateful=True`; see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct StatefulRnn<T> {
    rnn: Rnn<T>,
    batch: usize,
    /// The state the next call starts from, `[S, L·D, B, H]`.
    state: Vec<T>,
    /// The state the last call started from (for its backpropagation).
    previous: Vec<T>,
    /// Where a call writes its final states before they become `state`.
    spare: Vec<T>,
}

impl<T: Real> StatefulRnn<T> {
    /// `rnn` over `batch` sequences (the batch is fixed, as for a stateful Keras layer), from
    /// zero states.
    ///
    /// Errors: [`Error::Zero`] for a zero batch; [`Error::Overflow`] or [`Error::Allocation`]
    /// for states too large.
    pub fn new(rnn: Rnn<T>, batch: usize) -> Result<Self> {
        check_nonzero("batch", batch)?;
        let n = rnn.state_len(batch)?;
        Ok(Self {
            rnn,
            batch,
            state: try_filled("state", n, T::ZERO)?,
            previous: try_filled("state", n, T::ZERO)?,
            spare: try_filled("state", n, T::ZERO)?,
        })
    }
    /// The stack.
    pub fn rnn(&self) -> &Rnn<T> {
        &self.rnn
    }
    /// The stack, mutable (for weight updates between calls; the states are kept).
    pub fn rnn_mut(&mut self) -> &mut Rnn<T> {
        &mut self.rnn
    }
    /// The stack, without its states.
    pub fn into_inner(self) -> Rnn<T> {
        self.rnn
    }
    /// The fixed batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The state the next call starts from, `[S, L·D, B, H]`.
    pub fn state(&self) -> &[T] {
        &self.state
    }
    /// The state the last call started from, `[S, L·D, B, H]` (zeros before the first call):
    /// the `initial_state` of that call's backpropagation.
    pub fn previous_state(&self) -> &[T] {
        &self.previous
    }
    /// Sets the state the next call starts from.
    ///
    /// Errors: [`Error::Length`] when `state` is not `[S, L·D, B, H]`.
    pub fn set_state(&mut self, state: &[T]) -> Result<()> {
        check_len("state", state.len(), self.state.len())?;
        self.state.copy_from_slice(state);
        Ok(())
    }
    /// Zero states (Keras's `reset_states`).
    pub fn reset(&mut self) {
        self.state.fill(T::ZERO);
    }

    fn check_batch(&self, spec: &RunSpec<'_>) -> Result<()> {
        if spec.batch != self.batch {
            return Err(Error::Mismatch {
                arg: "spec.batch",
                expected: self.batch,
                actual: spec.batch,
            });
        }
        Ok(())
    }

    /// The new final state (in `spare`) becomes the state; the old state the previous one.
    fn advance(&mut self) {
        std::mem::swap(&mut self.previous, &mut self.state);
        std::mem::swap(&mut self.state, &mut self.spare);
    }

    /// [`Rnn::forward`] from the carried state; the final states are carried into the next
    /// call. On error nothing changes.
    ///
    /// Errors: [`Error::Mismatch`] when `spec.batch` is not the fixed batch; those of
    /// [`Rnn::forward`].
    pub fn forward(&mut self, spec: &RunSpec<'_>, x: &[T], y: &mut [T]) -> Result<()> {
        self.check_batch(spec)?;
        self.rnn
            .forward(spec, x, Some(&self.state), y, &mut self.spare)?;
        self.advance();
        Ok(())
    }

    /// [`Rnn::forward_train`] from the carried state; the final states are carried into the
    /// next call. On error nothing changes.
    ///
    /// Errors: as [`StatefulRnn::forward`], and those of [`Rnn::forward_train`].
    pub fn forward_train(
        &mut self,
        spec: &RunSpec<'_>,
        x: &[T],
        tape: &mut [T],
        y: &mut [T],
    ) -> Result<()> {
        self.check_batch(spec)?;
        self.rnn
            .forward_train(spec, x, Some(&self.state), tape, y, &mut self.spare)?;
        self.advance();
        Ok(())
    }

    /// [`Rnn::bptt`] of the last [`StatefulRnn::forward_train`] (same `spec`, `x` and tape),
    /// from the state it started from. `grads.d_initial_state` is the gradient on that state;
    /// nothing flows into earlier calls.
    ///
    /// Errors: those of [`Rnn::bptt`].
    #[allow(clippy::too_many_arguments)]
    pub fn bptt(
        &self,
        spec: &RunSpec<'_>,
        x: &[T],
        tape: &[T],
        dy: &[T],
        d_final_state: Option<&[T]>,
        grads: &mut RnnGrads<T>,
        mode: GradMode,
    ) -> Result<()> {
        self.check_batch(spec)?;
        self.rnn.bptt(
            spec,
            x,
            Some(&self.previous),
            tape,
            dy,
            d_final_state,
            grads,
            mode,
        )
    }
}

/// A truncated-BPTT schedule: an update every `k1` steps, backpropagating through the last
/// `k2` steps (see the [module docs](self) for exactly what is backpropagated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tbptt {
    /// Steps between updates (at least 1).
    pub k1: usize,
    /// Steps each update backpropagates through (at least 1).
    pub k2: usize,
}

impl Tbptt {
    /// An update every `k1` steps through the last `k2`.
    pub fn new(k1: usize, k2: usize) -> Self {
        Self { k1, k2 }
    }

    /// The updates over `t` steps, in order: for each, the steps since the previous update
    /// and the window it backpropagates through (its injected errors are those of the steps
    /// inside the window).
    pub fn updates(&self, t: usize) -> Vec<TbpttUpdate> {
        let k1 = self.k1.max(1);
        (0..t.div_ceil(k1))
            .map(|j| {
                let start = j * k1;
                let end = (start + k1).min(t);
                TbpttUpdate {
                    steps: start..end,
                    window: end.saturating_sub(self.k2)..end,
                }
            })
            .collect()
    }
}

/// One update of a [`Tbptt`] schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TbpttUpdate {
    /// The steps since the previous update, `[t_e − k1, t_e)`: their outputs are reported to
    /// the loss callback, and their errors inside `window` are backpropagated.
    pub steps: Range<usize>,
    /// The steps backpropagated through, `[max(0, t_e − k2), t_e)`.
    pub window: Range<usize>,
}

/// Steps `range` of a time-major `[T, B, w]` buffer.
fn rows<'a, T>(v: &'a [T], range: &Range<usize>, bw: usize) -> &'a [T] {
    &v[range.start * bw..range.end * bw]
}

impl<T: Real> Rnn<T> {
    /// Truncated BPTT(`k1`, `k2`) over the whole sequence `x` (see the [module
    /// docs](self)), the weights fixed for the call.
    ///
    /// After the forward run of each update's steps, `loss_grad(steps, y, dy)` is called
    /// with the update's steps (`[t_e − k1, t_e)`), their outputs `y` (time-major
    /// `[n, B, H]`, training mode: with dropout) and `dy` (same shape, zeroed) to fill with
    /// `∂L/∂y` of those steps. `d_final_state` (`[S, L, B, H]`) is injected at the last
    /// update. Writes the final states into `final_state`; overwrites `grads.dx` (`[T, B,
    /// I]`) and `grads.d_initial_state` (nonzero only through windows that start at step 0),
    /// and sums every update's parameter gradients into `grads.params` (zeroed first with
    /// [`GradMode::Overwrite`]).
    ///
    /// Needs a stack that runs forward in time and returns sequences.
    ///
    /// Errors: [`Error::Zero`] for `k1` or `k2` zero; [`Error::Invalid`] for a bidirectional
    /// or `go_backwards` stack (a chunk's backward pass is not the sequence's), one without
    /// `return_sequences`, inter-layer dropout (its masks are drawn per call, so a window
    /// would not recompute the steps it shares with the previous one), or a batch-major
    /// `spec.layout`; [`Error::Length`] for wrong buffer lengths; those of
    /// [`Rnn::forward_train`] and [`Rnn::bptt`].
    #[allow(clippy::too_many_arguments)]
    pub fn tbptt<F>(
        &self,
        schedule: Tbptt,
        spec: &RunSpec<'_>,
        x: &[T],
        initial_state: Option<&[T]>,
        d_final_state: Option<&[T]>,
        final_state: &mut [T],
        grads: &mut RnnGrads<T>,
        mode: GradMode,
        mut loss_grad: F,
    ) -> Result<()>
    where
        F: FnMut(Range<usize>, &[T], &mut [T]),
    {
        check_nonzero("schedule.k1", schedule.k1)?;
        check_nonzero("schedule.k2", schedule.k2)?;
        let c = self.config();
        let invalid = |arg: &'static str, reason: &str| {
            Err(Error::Invalid {
                arg,
                reason: reason.into(),
            })
        };
        if c.bidirectional {
            return invalid(
                "bidirectional",
                "truncated BPTT needs a stack that runs forward in time",
            );
        }
        if c.go_backwards {
            return invalid(
                "go_backwards",
                "truncated BPTT needs a stack that runs forward in time",
            );
        }
        if !c.return_sequences {
            return invalid(
                "return_sequences",
                "truncated BPTT injects the error of every step: return_sequences must be true",
            );
        }
        if c.inter_layer_dropout > 0.0 {
            return invalid(
                "inter_layer_dropout",
                "its masks are drawn per call: a window could not recompute the steps it \
                 shares with the previous one",
            );
        }
        if spec.layout != Layout::TimeMajor {
            return invalid("spec.layout", "truncated BPTT takes time-major x");
        }
        let (t, b) = (spec.time_steps, spec.batch);
        let (i, h) = (c.input_size, c.hidden_size);
        let state_len = self.state_len(b)?;
        check_len("x", x.len(), self.x_len(spec)?)?;
        if let Some(s) = initial_state {
            check_len("initial_state", s.len(), state_len)?;
        }
        if let Some(g) = d_final_state {
            check_len("d_final_state", g.len(), state_len)?;
        }
        check_len("final_state", final_state.len(), state_len)?;
        check_len("grads.dx", grads.dx.len(), x.len())?;
        check_len(
            "grads.d_initial_state",
            grads.d_initial_state.len(),
            state_len,
        )?;
        check_len("grads.params", grads.params.len(), self.cells().len())?;
        for (g, cell) in grads.params.iter_mut().zip(self.cells()) {
            let params = crate::cell::Cell::params(cell);
            check_len("grads.params[k]", g.len(), params.len())?;
            for (gi, p) in g.iter_mut().zip(&params) {
                check_len("grads.params[k][j]", gi.len(), p.data.len())?;
                if mode == GradMode::Overwrite {
                    gi.fill(T::ZERO);
                }
            }
        }
        if let Some(l) = spec.lengths {
            super::engine::check_lengths(l, t, b)?;
        }
        grads.dx.fill(T::ZERO);
        grads.d_initial_state.fill(T::ZERO);

        // The state at every chunk start j·k1.
        let mut chunk_states: Vec<Vec<T>> =
            vec![initial_state.map_or_else(|| vec![T::ZERO; state_len], <[T]>::to_vec)];
        let k1 = schedule.k1;
        let (bi, bh) = (b * i, b * h);
        // A window or lead-in run over `range` from `state`: y, final state, tape.
        let run = |range: &Range<usize>, state: &[T]| -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
            let lengths = clip_lengths(spec.lengths, range);
            let mut sp = RunSpec::new(range.len(), b).seed(spec.seed);
            if let Some(l) = &lengths {
                sp = sp.lengths(l);
            }
            let mut y = try_filled("y", self.y_len(&sp)?, T::ZERO)?;
            let mut fin = try_filled("final_state", state_len, T::ZERO)?;
            let mut tape = try_filled("tape", self.tape_len(&sp)?, T::ZERO)?;
            self.forward_train(
                &sp,
                rows(x, range, bi),
                Some(state),
                &mut tape,
                &mut y,
                &mut fin,
            )?;
            Ok((y, fin, tape))
        };
        let updates = schedule.updates(t);
        let last = updates.len() - 1;
        let mut window_grads: Option<RnnGrads<T>> = None;
        for (j, u) in updates.into_iter().enumerate() {
            let (steps, window) = (u.steps, u.window);
            // The state at the window's start: a stored chunk state, then a lead-in run.
            let base = window.start / k1;
            let lead = base * k1..window.start;
            let (lead_y, window_state) = if lead.is_empty() {
                (Vec::new(), chunk_states[base].clone())
            } else {
                let (y, fin, _) = run(&lead, &chunk_states[base])?;
                (y, fin)
            };
            let (wy, wfin, tape) = run(&window, &window_state)?;
            chunk_states.push(wfin);
            // The update's outputs: the lead-in's part (k2 < k1), then the window's.
            let n = steps.len();
            let mut y = Vec::with_capacity(n * bh);
            if window.start > steps.start {
                y.extend_from_slice(&lead_y[(steps.start - lead.start) * bh..]);
            }
            let from = window.start.max(steps.start);
            y.extend_from_slice(&wy[(from - window.start) * bh..]);
            let mut dy = vec![T::ZERO; n * bh];
            loss_grad(steps.clone(), &y, &mut dy);
            // Only the errors inside the window are backpropagated.
            let mut wdy = vec![T::ZERO; wy.len()];
            wdy[(from - window.start) * bh..].copy_from_slice(&dy[(from - steps.start) * bh..]);
            let lengths = clip_lengths(spec.lengths, &window);
            let mut sp = RunSpec::new(window.len(), b).seed(spec.seed);
            if let Some(l) = &lengths {
                sp = sp.lengths(l);
            }
            let wg = match &mut window_grads {
                Some(g) if g.dx.len() == window.len() * bi => g,
                slot => slot.insert(RnnGrads::zeros(self, &sp)?),
            };
            self.bptt(
                &sp,
                rows(x, &window, bi),
                Some(&window_state),
                &tape,
                &wdy,
                if j == last { d_final_state } else { None },
                wg,
                GradMode::Overwrite,
            )?;
            for (acc, g) in grads.dx[window.start * bi..window.end * bi]
                .iter_mut()
                .zip(&wg.dx)
            {
                *acc += *g;
            }
            if window.start == 0 {
                for (acc, g) in grads.d_initial_state.iter_mut().zip(&wg.d_initial_state) {
                    *acc += *g;
                }
            }
            for (acc, g) in grads.params.iter_mut().zip(&wg.params) {
                for (a, p) in acc.iter_mut().zip(g) {
                    for (v, &w) in a.iter_mut().zip(p) {
                        *v += w;
                    }
                }
            }
        }
        final_state.copy_from_slice(chunk_states.last().expect("at least the initial state"));
        Ok(())
    }
}

/// The lengths of `range`'s steps, `min(max(len − start, 0), range.len())`.
fn clip_lengths(lengths: Option<&[usize]>, range: &Range<usize>) -> Option<Vec<usize>> {
    lengths.map(|l| {
        l.iter()
            .map(|&n| n.saturating_sub(range.start).min(range.len()))
            .collect()
    })
}
