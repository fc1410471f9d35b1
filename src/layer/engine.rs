//! One direction of one layer over a batch of variable-length sequences.
//!
//! Sequences are sorted by length, longest first (stable), so that at every step the sequences
//! still running are a prefix of the sorted batch: step `t` runs the cell on its first
//! `active[t]` rows and nothing else — no per-row test in any kernel, and no work on padding.
//! Inputs are gathered once into this *packed* order (step by step, the active rows of each
//! step; PyTorch's packed-sequence layout), with the direction's input dropout mask applied in
//! the same copy, and projected by one matrix product over the real rows only.
//!
//! A reverse direction runs every sequence from its own last real step back to its first
//! (PyTorch's packed reverse direction; equally Keras's `go_backwards` with a mask, where the
//! padding is consumed first and leaves the state untouched).
//!
//! Recurrent dropout multiplies state 0 (`h`) by the direction's `[B, H]` mask as the state
//! enters the step: the cell sees the dropped state in its recurrent products. Built-in GRU
//! cells additionally need the undropped state in their update `z ⊙ h`: forward adds the
//! difference `z ⊙ (h − h ⊙ m)` after the step, and backward hands the undropped state to the
//! GRU's backward step as its [`Carry`], so that the update's gradients come out of the same
//! fused pass ([`DropoutFix`]).

use crate::cell::{Cell, DynGru, Part, StepBackward, StepForward};
use crate::cpu::Carry;
use crate::error::{Error, Result, try_filled, try_with_capacity};
use crate::real::Real;
use crate::seq::Layout;

/// The batch sorted by length and the active rows of every step.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub t: usize,
    pub b: usize,
    /// `order[k]`: the caller's row at sorted position `k`.
    pub order: Vec<usize>,
    /// Sorted lengths, longest first.
    pub lens: Vec<usize>,
    /// Rows still running at step `t` (`T + 1` entries, the last 0).
    pub active: Vec<usize>,
    /// Packed row of the first row of step `t` (`T + 1` entries, the last is the total).
    pub offsets: Vec<usize>,
    /// Whether every length is `T`.
    pub full: bool,
}

/// Checks sequence lengths: one per sequence of the `b`, each at most `t`.
pub(crate) fn check_lengths(lengths: &[usize], t: usize, b: usize) -> Result<()> {
    crate::error::check_len("lengths", lengths.len(), b)?;
    match lengths.iter().find(|&&n| n > t) {
        Some(&bad) => Err(Error::Invalid {
            arg: "lengths",
            reason: format!("a length is {bad}, more than time_steps = {t}"),
        }),
        None => Ok(()),
    }
}

impl Plan {
    /// `lengths`: one per sequence, each at most `t` (0 is allowed: the sequence never
    /// steps); `None`: every sequence has `t` steps.
    pub fn new(t: usize, b: usize, lengths: Option<&[usize]>) -> Result<Self> {
        let lens_in: Vec<usize> = match lengths {
            Some(l) => {
                check_lengths(l, t, b)?;
                l.to_vec()
            }
            None => vec![t; b],
        };
        let mut order: Vec<usize> = (0..b).collect();
        order.sort_by(|&p, &q| lens_in[q].cmp(&lens_in[p]));
        let lens: Vec<usize> = order.iter().map(|&r| lens_in[r]).collect();
        let mut active = vec![0; t + 1];
        let mut offsets = vec![0; t + 1];
        for s in 0..t {
            active[s] = lens.iter().take_while(|&&n| n > s).count();
            offsets[s + 1] = offsets[s] + active[s];
        }
        Ok(Self {
            t,
            b,
            full: lens.iter().all(|&n| n == t),
            order,
            lens,
            active,
            offsets,
        })
    }

    /// Packed rows in all.
    pub fn total(&self) -> usize {
        self.offsets[self.t]
    }

    /// Source time index of step `s` of sorted row `k`.
    #[inline]
    pub fn source(&self, reverse: bool, s: usize, k: usize) -> usize {
        if reverse { self.lens[k] - 1 - s } else { s }
    }
}

/// A read-only sequence `[T, B, W]` or `[B, T, W]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqRef<'a, T> {
    pub data: &'a [T],
    pub layout: Layout,
    pub t: usize,
    pub b: usize,
    pub w: usize,
}

/// Offset of row (`t`, `b`) of a `[T, B, w]` / `[B, T, w]` tensor.
#[inline]
pub(crate) fn row_offset(
    layout: Layout,
    t: usize,
    b: usize,
    nt: usize,
    nb: usize,
    w: usize,
) -> usize {
    match layout {
        Layout::TimeMajor => (t * nb + b) * w,
        Layout::BatchMajor => (b * nt + t) * w,
    }
}

impl<T> SeqRef<'_, T> {
    #[inline]
    fn row(&self, t: usize, b: usize) -> &[T] {
        let o = row_offset(self.layout, t, b, self.t, self.b, self.w);
        &self.data[o..o + self.w]
    }
}

/// What a built-in GRU needs under recurrent dropout (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropoutFix<'a, T> {
    /// The direction's cell, as a GRU.
    pub gru: &'a DynGru<T>,
    /// Offset of `z` in a row of the cell's record.
    pub z_offset: usize,
}

/// What one direction runs on.
pub(crate) struct Dir<'a, T, C: ?Sized> {
    pub cell: &'a C,
    pub plan: &'a Plan,
    pub reverse: bool,
    /// `[B, I]` input dropout mask in the caller's row order.
    pub in_mask: Option<&'a [T]>,
    /// `[B, H]` recurrent dropout mask in the caller's row order.
    pub rec_mask: Option<&'a [T]>,
    pub fix: Option<DropoutFix<'a, T>>,
}

/// Lengths of the three parts of a direction's record: sorted initial state `[S, B, H]`,
/// every step's new state (`S·H` per packed row), every step's cell record.
pub(crate) fn tape_parts(s: usize, b: usize, h: usize, rows: usize, tw: usize) -> [usize; 3] {
    [s * b * h, s * h * rows, rows * tw]
}

impl<T: Real, C: Cell<T> + ?Sized> Dir<'_, T, C> {
    fn dims(&self) -> (usize, usize, usize) {
        (
            self.cell.state_count(),
            self.cell.input_size(),
            self.cell.hidden_size(),
        )
    }

    /// The inputs in packed order, input dropout applied.
    fn gather(&self, input: &SeqRef<'_, T>) -> Result<Vec<T>> {
        let plan = self.plan;
        let i = input.w;
        let mut xs = try_with_capacity("x", plan.total() * i)?;
        for s in 0..plan.t {
            for k in 0..plan.active[s] {
                let b = plan.order[k];
                let row = input.row(plan.source(self.reverse, s, k), b);
                match self.in_mask {
                    Some(m) => {
                        xs.extend(row.iter().zip(&m[b * i..(b + 1) * i]).map(|(&v, &q)| v * q))
                    }
                    None => xs.extend_from_slice(row),
                }
            }
        }
        Ok(xs)
    }

    /// The state step `s` consumes, `[S, a, H]` with `a = active[s]`: borrowed from `prev`
    /// (`[S, a_prev, H]`) when it already is that, otherwise compacted (and dropped) into `work`.
    fn step_input<'w>(
        &self,
        prev: &'w [T],
        a_prev: usize,
        a: usize,
        work: &'w mut Vec<T>,
    ) -> &'w [T] {
        let (s_count, _, h) = self.dims();
        if self.rec_mask.is_none() && (s_count == 1 || a == a_prev) {
            return &prev[..s_count * a * h];
        }
        work.clear();
        for j in 0..s_count {
            let block = &prev[j * a_prev * h..j * a_prev * h + a * h];
            match (j, self.rec_mask) {
                (0, Some(m)) => {
                    for k in 0..a {
                        let b = self.plan.order[k];
                        let mr = &m[b * h..(b + 1) * h];
                        work.extend(
                            block[k * h..(k + 1) * h]
                                .iter()
                                .zip(mr)
                                .map(|(&v, &q)| v * q),
                        );
                    }
                }
                _ => work.extend_from_slice(block),
            }
        }
        work
    }

    /// Runs the direction forward. `initial` `[S, B, H]` (caller's row order); writes the output
    /// of every real step into `out` (`[T, B, H]` time-major, source time order; other rows
    /// untouched) and the final states into `final_state` (`[S, B, H]`). `tape`: the three
    /// record parts of [`tape_parts`] when training.
    pub fn forward(
        &self,
        input: &SeqRef<'_, T>,
        initial: &[T],
        out: &mut [T],
        final_state: &mut [T],
        tape: Option<[&mut [T]; 3]>,
    ) -> Result<()> {
        let plan = self.plan;
        let (sc, _, h) = self.dims();
        let (b, p, tw, sw) = (
            plan.b,
            self.cell.projection_width(),
            self.cell.tape_width(),
            self.cell.scratch_width(),
        );
        self.cell.prepare();
        let xs = self.gather(input)?;
        let i = input.w;
        let mut proj = try_filled("projection", plan.total() * p, T::ZERO)?;
        if p > 0 && plan.total() > 0 {
            if tape.is_some() {
                self.cell.project_inputs(&xs, &mut proj);
            } else {
                self.cell.project_inputs_inference(&xs, &mut proj);
            }
        }
        let mut scratch = try_filled("scratch", b * sw, T::ZERO)?;
        let mut work = try_with_capacity("state", sc * b * h)?;
        let mut local_init = Vec::new();
        let mut ping = Vec::new();
        let mut pong = Vec::new();
        let training = tape.is_some();
        let (init_sorted, states, cell_tape): (&mut [T], &mut [T], &mut [T]) = match tape {
            Some([a, s, c]) => (a, s, c),
            None => {
                local_init.resize(sc * b * h, T::ZERO);
                ping.resize(sc * b * h, T::ZERO);
                pong.resize(sc * b * h, T::ZERO);
                (&mut local_init[..], &mut [][..], &mut [][..])
            }
        };
        for j in 0..sc {
            for k in 0..b {
                let src = (j * b + plan.order[k]) * h;
                init_sorted[(j * b + k) * h..][..h].copy_from_slice(&initial[src..src + h]);
            }
        }
        // Sequences that never step keep their initial state.
        for k in plan.active[0]..b {
            for j in 0..sc {
                let dst = (j * b + plan.order[k]) * h;
                final_state[dst..dst + h].copy_from_slice(&init_sorted[(j * b + k) * h..][..h]);
            }
        }
        for s in 0..plan.t {
            let a = plan.active[s];
            if a == 0 {
                break;
            }
            let a_next = plan.active[s + 1];
            let rows = plan.offsets[s]..plan.offsets[s] + a;
            let (state, next): (&[T], &mut [T]) = if training {
                let (done, rest) = states.split_at_mut(sc * h * plan.offsets[s]);
                let prev: &[T] = if s == 0 {
                    init_sorted
                } else {
                    &done[sc * h * plan.offsets[s - 1]..]
                };
                let a_prev = if s == 0 { b } else { plan.active[s - 1] };
                (
                    self.step_input(prev, a_prev, a, &mut work),
                    &mut rest[..sc * a * h],
                )
            } else {
                let (prev, a_prev): (&[T], usize) = if s == 0 {
                    (init_sorted, b)
                } else {
                    (&ping, plan.active[s - 1])
                };
                (
                    self.step_input(prev, a_prev, a, &mut work),
                    &mut pong[..sc * a * h],
                )
            };
            let step_tape: &mut [T] = if training {
                &mut cell_tape[rows.start * tw..rows.end * tw]
            } else {
                &mut []
            };
            self.cell.step_forward(StepForward {
                batch: a,
                x: &xs[rows.start * i..rows.end * i],
                proj: &proj[rows.start * p..rows.end * p],
                row_stride: 1,
                state,
                next,
                scratch: &mut scratch[..a * sw],
                tape: step_tape,
                part: Part::WHOLE,
                step: s,
            });
            if let (Some(fix), Some(m)) = (&self.fix, self.rec_mask) {
                // next += z ⊙ (h − h ⊙ m): the update blends the undropped state (state 0 is
                // the whole state of a GRU, so the previous rows are a prefix).
                let tape_rows = &cell_tape[rows.start * tw..rows.end * tw];
                let (prev_h, next): (&[T], &mut [T]) = if training {
                    let (done, rest) = states.split_at_mut(sc * h * plan.offsets[s]);
                    let prev: &[T] = if s == 0 {
                        init_sorted
                    } else {
                        &done[sc * h * plan.offsets[s - 1]..]
                    };
                    (prev, &mut rest[..a * h])
                } else if s == 0 {
                    (init_sorted, &mut pong[..a * h])
                } else {
                    (&ping, &mut pong[..a * h])
                };
                for k in 0..a {
                    let mr = &m[plan.order[k] * h..][..h];
                    let z = &tape_rows[k * tw + fix.z_offset..][..h];
                    for u in 0..h {
                        let hp = prev_h[k * h + u];
                        next[k * h + u] += z[u] * (hp - hp * mr[u]);
                    }
                }
            }
            let next: &[T] = if training {
                &states[sc * h * plan.offsets[s]..][..sc * a * h]
            } else {
                &pong[..sc * a * h]
            };
            for k in 0..a {
                let src = plan.source(self.reverse, s, k);
                let o = (src * b + plan.order[k]) * h;
                out[o..o + h].copy_from_slice(&next[k * h..(k + 1) * h]);
            }
            for k in a_next..a {
                for j in 0..sc {
                    let dst = (j * b + plan.order[k]) * h;
                    final_state[dst..dst + h].copy_from_slice(&next[(j * a + k) * h..][..h]);
                }
            }
            if !training {
                std::mem::swap(&mut ping, &mut pong);
            }
        }
        Ok(())
    }

    /// Backpropagation through time of [`Dir::forward`] over its record `tape`.
    ///
    /// `dy` `[T, B, H]` (time-major, source order; only real rows are read) and `d_final`
    /// `[S, B, H]` are the upstream gradients; adds `∂L/∂input` into `dx` (shaped like
    /// `input`), writes `∂L/∂initial` into `d_initial` (`[S, B, H]`), and accumulates the
    /// parameter gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        input: &SeqRef<'_, T>,
        tape: [&[T]; 3],
        dy: &[T],
        d_final: &[T],
        dx: &mut [T],
        d_initial: &mut [T],
        grads: &mut [Vec<T>],
    ) -> Result<()> {
        let plan = self.plan;
        let (sc, i, h) = self.dims();
        let (b, p, tw, sw) = (
            plan.b,
            self.cell.projection_width(),
            self.cell.tape_width(),
            self.cell.scratch_width(),
        );
        let [init_sorted, states, cell_tape] = tape;
        let total = plan.total();
        let xs = self.gather(input)?;
        let mut dxs = try_filled("dx", total * i, T::ZERO)?;
        let mut d_proj = try_filled("projection", total * p, T::ZERO)?;
        let mut scratch = try_filled("scratch", b * sw, T::ZERO)?;
        let mut work = try_with_capacity("state", sc * b * h)?;
        // The state each packed row's step consumed, for Cell::sequence_backward ([rows + 1, S, 1, H]).
        let mut prev_rows = try_filled("tape", (total + 1) * sc * h, T::ZERO)?;
        let mut d_next = try_filled("state", sc * b * h, T::ZERO)?;
        let mut d_state = try_filled("state", sc * b * h, T::ZERO)?;
        let mut d_carry = try_filled("state", if self.fix.is_some() { b * h } else { 0 }, T::ZERO)?;
        let mut a_after = 0; // rows of d_state (the step after the current one)
        let d_final_sorted = |j: usize, k: usize| &d_final[(j * b + plan.order[k]) * h..][..h];
        for s in (0..plan.t).rev() {
            let a = plan.active[s];
            if a == 0 {
                continue;
            }
            // d_next [S, a, H]: rows still running after this step come from that step's
            // d_state; rows ending here from d_final.
            for j in 0..sc {
                for k in 0..a {
                    let dst = (j * a + k) * h;
                    if k < a_after {
                        d_next[dst..dst + h]
                            .copy_from_slice(&d_state[(j * a_after + k) * h..][..h]);
                    } else {
                        d_next[dst..dst + h].copy_from_slice(d_final_sorted(j, k));
                    }
                }
            }
            for k in 0..a {
                let o = (plan.source(self.reverse, s, k) * b + plan.order[k]) * h;
                for (g, &v) in d_next[k * h..(k + 1) * h].iter_mut().zip(&dy[o..o + h]) {
                    *g += v;
                }
            }
            let rows = plan.offsets[s]..plan.offsets[s] + a;
            let (prev, a_prev): (&[T], usize) = if s == 0 {
                (init_sorted, b)
            } else {
                (&states[sc * h * plan.offsets[s - 1]..], plan.active[s - 1])
            };
            let state = self.step_input(prev, a_prev, a, &mut work);
            for k in 0..a {
                for j in 0..sc {
                    prev_rows[((rows.start + k) * sc + j) * h..][..h]
                        .copy_from_slice(&state[(j * a + k) * h..][..h]);
                }
            }
            let next = &states[sc * h * plan.offsets[s]..][..sc * a * h];
            let step = StepBackward {
                batch: a,
                x: &xs[rows.start * i..rows.end * i],
                state,
                next,
                tape: &cell_tape[rows.start * tw..rows.end * tw],
                d_next: &d_next[..sc * a * h],
                d_state: &mut d_state[..sc * a * h],
                d_proj: &mut d_proj[rows.start * p..rows.end * p],
                dx: &mut dxs[rows.start * i..rows.end * i],
                scratch: &mut scratch[..a * sw],
                step: s,
            };
            match &self.fix {
                // The GRU's update blended the undropped state (state 0 is the whole state
                // of a GRU, so the previous step's rows are a prefix).
                Some(fix) => {
                    let carry = Carry {
                        h: &prev[..a * h],
                        d_h: &mut d_carry[..a * h],
                    };
                    fix.gru.step_backward_blended(step, carry, grads);
                }
                None => self.cell.step_backward(step, grads),
            }
            // The products saw the dropped state h ⊙ m; the update (with a fix) the state itself.
            if let Some(m) = self.rec_mask {
                for k in 0..a {
                    let mr = &m[plan.order[k] * h..][..h];
                    let ds = &mut d_state[k * h..(k + 1) * h];
                    match self.fix {
                        Some(_) => {
                            for ((g, &q), &dc) in ds.iter_mut().zip(mr).zip(&d_carry[k * h..]) {
                                *g = *g * q + dc;
                            }
                        }
                        None => {
                            for (g, &q) in ds.iter_mut().zip(mr) {
                                *g *= q;
                            }
                        }
                    }
                }
            }
            a_after = a;
        }
        // ∂initial: from the first step's d_state, or d_final for sequences that never step.
        for j in 0..sc {
            for k in 0..b {
                let dst = (j * b + plan.order[k]) * h;
                if k < a_after {
                    d_initial[dst..dst + h].copy_from_slice(&d_state[(j * a_after + k) * h..][..h]);
                } else {
                    d_initial[dst..dst + h].copy_from_slice(d_final_sorted(j, k));
                }
            }
        }
        if total > 0 {
            crate::cpu::share_packing(&d_proj, || {
                let tape = &cell_tape[..total * tw];
                self.cell
                    .sequence_backward(1, &prev_rows, tape, &d_proj, grads);
                if p > 0 {
                    self.cell.project_backward(&xs, &d_proj, &mut dxs, grads);
                }
            });
        }
        // Back to the caller's layout, through the input dropout mask.
        for s in 0..plan.t {
            for k in 0..plan.active[s] {
                let bb = plan.order[k];
                let o = row_offset(
                    input.layout,
                    plan.source(self.reverse, s, k),
                    bb,
                    plan.t,
                    b,
                    i,
                );
                let r = (plan.offsets[s] + k) * i;
                match self.in_mask {
                    Some(m) => {
                        for ((g, &v), &q) in dx[o..o + i]
                            .iter_mut()
                            .zip(&dxs[r..r + i])
                            .zip(&m[bb * i..(bb + 1) * i])
                        {
                            *g += v * q;
                        }
                    }
                    None => {
                        for (g, &v) in dx[o..o + i].iter_mut().zip(&dxs[r..r + i]) {
                            *g += v;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
