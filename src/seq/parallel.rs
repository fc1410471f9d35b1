//! The forward loop split across threads by hidden units.
//!
//! Each of `p` threads owns a contiguous share of the hidden units ([`Part`]) for the whole
//! sequence, so its share of the recurrent weights stays in its own core's cache. Per step a
//! thread computes its units into a buffer of its own, all threads meet at one barrier, and each
//! then gathers the full new state from the others' buffers. Buffers alternate by step parity, so
//! a thread can start writing step `t + 1` while others still read step `t`: the barrier of step
//! `t + 1` is only passed once every thread has finished reading step `t`.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::run::{StepRows, add_output_gradient, follow_from_zero};
use super::{Dims, SeqSpec};
use crate::cell::{Cell, Part, StepBackward, StepForward};
use crate::real::Real;
use crate::workers;

/// The input projection of all `T·B` rows, split by rows across up to `threads` threads
/// (each share one matrix product) when there is enough work to pay for a thread; through
/// [`Cell::project_inputs_inference`] unless `training`.
pub(super) fn project<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    threads: usize,
    d: &Dims,
    xs: &[T],
    proj: &mut [T],
    training: bool,
) {
    let project = |x: &[T], out: &mut [T]| {
        if training {
            cell.project_inputs(x, out)
        } else {
            cell.project_inputs_inference(x, out)
        }
    };
    /// Multiply-adds below which starting a thread costs more than it saves (a SimpleRNN
    /// projecting 100 rows of 256 inputs to 256 units, 6.6 million, ran 0.93x on two threads).
    const MIN_WORK_PER_THREAD: usize = 1 << 22;
    let rows = d.t * d.b;
    let p = threads
        .min(rows * d.i * d.p / MIN_WORK_PER_THREAD)
        .min(rows)
        .max(1);
    if p == 1 {
        project(xs, proj);
        return;
    }
    let per = rows.div_ceil(p);
    let shares = xs.chunks(per * d.i).zip(proj.chunks_mut(per * d.p));
    workers::map(shares, |(x, out)| project(x, out));
}

/// Where the results go: `y`, and when training the state snapshots `1..=T` (slot 0 holds the
/// initial state already) and the cell's record.
pub(super) struct Outputs<'a, T> {
    pub states: &'a mut [T],
    pub cell_tape: &'a mut [T],
    pub y: &'a mut [T],
    pub training: bool,
}

/// Runs the forward loop on `threads` threads (at most the cell's `max_parts`); returns the
/// final state, or `None`, with nothing written, when the system refuses a thread or the
/// cell's part units cannot be used ([`unit_parts`]). `initial` is the full `[S, B, H]` start
/// state.
pub(super) fn forward<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    threads: usize,
    rows: &StepRows<'_, T>,
    initial: &[T],
    out: Outputs<'_, T>,
) -> Option<Vec<T>> {
    let p = threads.min(cell.max_parts(d.b)).max(1);
    let sl = d.state_len;
    let tw = d.b * d.tw;
    let (parts, units) = unit_parts(cell, p, d.h)?;
    // [thread][parity]: that thread's new state, and its record when training.
    let next = parity_buffers(p, sl);
    let tapes = parity_buffers(p, tw);
    let barrier = SpinBarrier::new(p);
    let training = out.training;

    let worker = |q: usize, out: Option<Outputs<'_, T>>| -> Vec<T> {
        let _panics = barrier.broken_by_panic();
        let mut state = initial.to_vec();
        let mut scratch = vec![T::ZERO; d.b * d.sw];
        let mut out = out;
        for t in 0..d.t {
            let parity = t % 2;
            {
                let mut next_q = next[q][parity].write().unwrap_or_else(|e| e.into_inner());
                let mut tape_q = tapes[q][parity].write().unwrap_or_else(|e| e.into_inner());
                let tape: &mut [T] = if d.tw > 0 && training {
                    &mut tape_q
                } else {
                    &mut []
                };
                let (x, proj, row_stride) = rows.step(t, 0..d.b);
                cell.step_forward(StepForward {
                    batch: d.b,
                    x,
                    proj,
                    row_stride,
                    state: &state,
                    next: &mut next_q,
                    scratch: &mut scratch,
                    tape,
                    part: parts[q],
                    step: t,
                });
            }
            barrier.wait();
            for (r, u) in units.iter().enumerate() {
                let src = next[r][parity].read().unwrap_or_else(|e| e.into_inner());
                copy_units(&mut state, &src, d.h, u);
            }
            if let Some(o) = out.as_mut() {
                collect(o, spec, d, t, &state, &tapes, &units, parity);
            }
        }
        state
    };

    let mut out = Some(out);
    let jobs = (0..p).map(|q| (q, if q == 0 { out.take() } else { None }));
    let mut finals = workers::map_together(jobs, |(q, out)| worker(q, out))?;
    Some(finals.swap_remove(0))
}

/// One row part's share of the outputs: `y` row by row, and when training its rows of every
/// state snapshot after the first and of every step's record.
struct RowsOut<'a, T> {
    /// `y[t][j]`: the output row of step `t` (only the last step without `return_sequences`)
    /// for the part's row `j`.
    y: Vec<Vec<&'a mut [T]>>,
    /// `snapshots[t][s]`: the part's rows of state tensor `s` after step `t`.
    snapshots: Vec<Vec<&'a mut [T]>>,
    /// `tapes[t]`: the part's rows of step `t`'s record.
    tapes: Vec<&'a mut [T]>,
}

/// Splits `buf`, blocks of `d.b` rows of `width` each, into every block's rows of each part:
/// `[part][block]`.
fn rows_of_parts<'a, T>(
    buf: &'a mut [T],
    d: &Dims,
    width: usize,
    parts: &[std::ops::Range<usize>],
) -> Vec<Vec<&'a mut [T]>> {
    let mut out: Vec<Vec<&'a mut [T]>> = parts.iter().map(|_| Vec::new()).collect();
    if width == 0 {
        return out;
    }
    for block in buf.chunks_mut(d.b * width) {
        let mut rest = block;
        for (q, r) in parts.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut(r.len() * width);
            out[q].push(mine);
            rest = tail;
        }
    }
    out
}

/// The forward loop split by batch rows ([`Cell::row_parts`]): each part runs its rows through
/// the whole sequence on a thread of its own, with its own state, and meets the others only at
/// the end; returns the final state `[S, B, H]`.
pub(super) fn forward_by_rows<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    parts: &[std::ops::Range<usize>],
    rows: &StepRows<'_, T>,
    out: Outputs<'_, T>,
) -> Vec<T> {
    let (h, sl) = (d.h, d.state_len);
    let s_count = sl / (d.b * h);
    let (initial, snapshots) = out.states.split_at_mut(sl);
    let initial: &[T] = initial;
    // y rows of every (step, batch row), in processing order, handed to the parts.
    let mut y_rows: Vec<Option<&mut [T]>> = out.y.chunks_mut(h).map(Some).collect();
    let mut part_out: Vec<RowsOut<'_, T>> = parts
        .iter()
        .map(|r| RowsOut {
            y: (0..d.t)
                .filter(|&t| spec.return_sequences || t + 1 == d.t)
                .map(|t| {
                    r.clone()
                        .map(|b| {
                            let at = if spec.return_sequences {
                                spec.offset(t, b, 1)
                            } else {
                                b
                            };
                            y_rows[at].take().unwrap_or_default()
                        })
                        .collect()
                })
                .collect(),
            snapshots: Vec::new(),
            tapes: Vec::new(),
        })
        .collect();
    if out.training {
        let tensors = rows_of_parts(snapshots, d, h, parts);
        let tapes = rows_of_parts(out.cell_tape, d, d.tw, parts);
        for ((o, tensors), tapes) in part_out.iter_mut().zip(tensors).zip(tapes) {
            let mut tensors = tensors.into_iter();
            o.snapshots = (0..d.t)
                .map(|_| tensors.by_ref().take(s_count).collect())
                .collect();
            o.tapes = tapes;
        }
    }

    let worker = |r: std::ops::Range<usize>, mut o: RowsOut<'_, T>| -> Vec<T> {
        let n = r.len();
        let part_len = s_count * n * h;
        // [S, n, H]: the part's rows of each state tensor.
        let mut state: Vec<T> = (0..s_count)
            .flat_map(|s| &initial[(s * d.b + r.start) * h..(s * d.b + r.end) * h])
            .copied()
            .collect();
        let mut next = vec![T::ZERO; part_len];
        let mut scratch = vec![T::ZERO; n * d.sw];
        for t in 0..d.t {
            let (x, proj, row_stride) = rows.step(t, r.clone());
            cell.step_forward(StepForward {
                batch: n,
                x,
                proj,
                row_stride,
                state: &state,
                next: &mut next,
                scratch: &mut scratch,
                tape: o.tapes.get_mut(t).map_or(&mut [][..], |tape| &mut **tape),
                part: Part::WHOLE,
                step: t,
            });
            if spec.return_sequences || t + 1 == d.t {
                let at = if spec.return_sequences { t } else { 0 };
                for (j, row) in o.y[at].iter_mut().enumerate() {
                    row.copy_from_slice(&next[j * h..(j + 1) * h]);
                }
            }
            if let Some(tensors) = o.snapshots.get_mut(t) {
                for (s, dst) in tensors.iter_mut().enumerate() {
                    dst.copy_from_slice(&next[s * n * h..(s + 1) * n * h]);
                }
            }
            std::mem::swap(&mut state, &mut next);
        }
        state
    };

    let finals = workers::map(parts.iter().cloned().zip(part_out), |(r, o)| worker(r, o));
    scatter_parts(d, parts, &finals)
}

/// What the reverse step loop reads: `x` in processing order, the training record (state
/// snapshots `[T + 1, S, B, H]` and the cell's records `[T, B, tape_width]`) and the upstream
/// gradients.
#[derive(Clone, Copy)]
pub(super) struct BackwardInputs<'a, T> {
    pub xs: &'a [T],
    pub states: &'a [T],
    pub cell_tape: &'a [T],
    pub dy: &'a [T],
    pub d_final_state: Option<&'a [T]>,
}

/// The reverse step loop split by batch rows ([`Cell::backward_row_parts`]): each part runs its
/// rows backward through the whole sequence on a thread of its own, writing its rows of every
/// step of `dxs` and `d_proj` (processing order); returns the gradient on the initial state
/// `[S, B, H]`.
pub(super) fn backward_by_rows<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    parts: &[std::ops::Range<usize>],
    input: BackwardInputs<'_, T>,
    dxs: &mut [T],
    d_proj: &mut [T],
) -> Vec<T> {
    let (h, sl) = (d.h, d.state_len);
    let s_count = sl / (d.b * h);
    let part_dxs = rows_of_parts(dxs, d, d.i, parts);
    let part_d_proj = rows_of_parts(d_proj, d, d.p, parts);
    let input = &input;

    let worker =
        |r: std::ops::Range<usize>, mut dxs: Vec<&mut [T]>, mut d_proj: Vec<&mut [T]>| -> Vec<T> {
            let n = r.len();
            // The part's rows of every state tensor of snapshot `t` of `v`, as `[S, n, H]`.
            let gather = |v: &[T], t: usize, dst: &mut Vec<T>| {
                dst.clear();
                for s in 0..s_count {
                    let at = t * sl + (s * d.b + r.start) * h;
                    dst.extend_from_slice(&v[at..at + n * h]);
                }
            };
            let mut d_next = Vec::with_capacity(s_count * n * h);
            match input.d_final_state {
                Some(g) => gather(g, 0, &mut d_next),
                None => d_next.resize(s_count * n * h, T::ZERO),
            }
            let mut d_state = vec![T::ZERO; s_count * n * h];
            let (mut state, mut next) = (Vec::new(), Vec::new());
            let mut scratch = vec![T::ZERO; n * d.sw];
            for t in (0..d.t).rev() {
                add_output_gradient(spec, d, t, r.clone(), input.dy, &mut d_next);
                gather(input.states, t, &mut state);
                gather(input.states, t + 1, &mut next);
                let rows = t * d.b + r.start..t * d.b + r.end;
                cell.step_backward(
                    StepBackward {
                        batch: n,
                        x: &input.xs[rows.start * d.i..rows.end * d.i],
                        state: &state,
                        next: &next,
                        tape: &input.cell_tape[rows.start * d.tw..rows.end * d.tw],
                        d_next: &d_next,
                        d_state: &mut d_state,
                        d_proj: d_proj.get_mut(t).map_or(&mut [][..], |v| &mut **v),
                        dx: dxs.get_mut(t).map_or(&mut [][..], |v| &mut **v),
                        scratch: &mut scratch,
                        step: t,
                    },
                    &mut [],
                );
                std::mem::swap(&mut d_next, &mut d_state);
            }
            d_next
        };

    let jobs = parts.iter().cloned().zip(part_dxs).zip(part_d_proj);
    let finals = workers::map(jobs, |((r, x), p)| worker(r, x, p));
    scatter_parts(d, parts, &finals)
}

/// The reverse step loop split by hidden units ([`Cell::backward_unit_parts`]) on `p` threads,
/// each owning a [`Part`] for the whole sequence, writing every step of `d_proj` (processing
/// order); returns the gradient on the initial state `[S, B, H]`, or `None`, with nothing
/// written, when the system refuses a thread or the cell's part units cannot be used
/// ([`unit_parts`]).
///
/// Per step a thread runs the gate half for its units into a buffer of its own, all threads
/// meet at one barrier, then each gathers the step's whole `d_proj` from the others' buffers
/// and runs the recurrent half for its units, with its share of the recurrent weights. The
/// gate half of the next step needs only the thread's own units, so the barrier is the only
/// one per step; buffers alternate by step parity as in [`forward`].
pub(super) fn backward_by_units<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    p: usize,
    input: BackwardInputs<'_, T>,
    d_proj: &mut [T],
) -> Option<Vec<T>> {
    let sl = d.state_len;
    let bp = d.b * d.p;
    let (parts, units) = unit_parts(cell, p, d.h)?;
    // [thread][parity]: the gate gradients of that thread's units, `[B, P]`.
    let mine = parity_buffers(p, bp);
    let barrier = SpinBarrier::new(p);
    let input = &input;

    let worker = |q: usize, mut d_proj_out: Option<&mut [T]>| -> Vec<T> {
        let _panics = barrier.broken_by_panic();
        let mut d_next = match input.d_final_state {
            Some(g) => g.to_vec(),
            None => vec![T::ZERO; sl],
        };
        let mut d_state = vec![T::ZERO; sl];
        let mut whole = vec![T::ZERO; bp];
        let mut scratch = vec![T::ZERO; d.b * d.sw];
        for t in (0..d.t).rev() {
            let parity = t % 2;
            add_output_gradient(spec, d, t, 0..d.b, input.dy, &mut d_next);
            {
                let mut own = mine[q][parity].write().unwrap_or_else(|e| e.into_inner());
                let s = unit_step(d, input, t, &d_next, &mut d_state, &mut own, &mut scratch);
                cell.step_backward_gates(s, parts[q]);
            }
            barrier.wait();
            for (r, u) in units.iter().enumerate() {
                let src = mine[r][parity].read().unwrap_or_else(|e| e.into_inner());
                copy_units(&mut whole, &src, d.h, u);
            }
            if let Some(out) = d_proj_out.as_deref_mut() {
                out[t * bp..(t + 1) * bp].copy_from_slice(&whole);
            }
            let s = unit_step(d, input, t, &d_next, &mut d_state, &mut whole, &mut scratch);
            cell.step_backward_recurrent(s, parts[q]);
            std::mem::swap(&mut d_next, &mut d_state);
        }
        d_next
    };

    let mut d_proj = Some(d_proj);
    let jobs = (0..p).map(|q| (q, if q == 0 { d_proj.take() } else { None }));
    let finals = workers::map_together(jobs, |(q, out)| worker(q, out))?;
    // Each thread's units of every state tensor and row.
    let mut full = vec![T::ZERO; sl];
    for (u, part) in units.iter().zip(&finals) {
        copy_units(&mut full, part, d.h, u);
    }
    Some(full)
}

/// Copies the units `u` of every block of `h` values (a row of a state tensor, or of a gate
/// block) from `src` into `dst`.
/// The `p` parts of a split by units and the units of each ([`Cell::part_units`]), when
/// those follow each other from 0 to `h`; `None` for any other answer (a cell's units with
/// gaps, overlaps or past `h`), and the loop then runs on one thread.
fn unit_parts<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    p: usize,
    h: usize,
) -> Option<(Vec<Part>, Vec<std::ops::Range<usize>>)> {
    let parts: Vec<Part> = (0..p).map(|index| Part { index, count: p }).collect();
    let units: Vec<_> = parts.iter().map(|&part| cell.part_units(part)).collect();
    follow_from_zero(&units, h).then_some((parts, units))
}

fn copy_units<T: Copy>(dst: &mut [T], src: &[T], h: usize, u: &std::ops::Range<usize>) {
    for (dst, src) in dst.chunks_exact_mut(h).zip(src.chunks_exact(h)) {
        dst[u.clone()].copy_from_slice(&src[u.clone()]);
    }
}

/// `[thread][parity]`: two zeroed buffers of `len` values for each of `p` threads.
fn parity_buffers<T: Real>(p: usize, len: usize) -> Vec<[RwLock<Vec<T>>; 2]> {
    (0..p)
        .map(|_| {
            [
                RwLock::new(vec![T::ZERO; len]),
                RwLock::new(vec![T::ZERO; len]),
            ]
        })
        .collect()
}

/// Reverse step `t` of [`backward_by_units`] over every row.
fn unit_step<'a, T: Real>(
    d: &Dims,
    input: &BackwardInputs<'a, T>,
    t: usize,
    d_next: &'a [T],
    d_state: &'a mut [T],
    d_proj: &'a mut [T],
    scratch: &'a mut [T],
) -> StepBackward<'a, T> {
    let sl = d.state_len;
    StepBackward {
        batch: d.b,
        x: &[],
        state: &input.states[t * sl..(t + 1) * sl],
        next: &input.states[(t + 1) * sl..(t + 2) * sl],
        tape: &input.cell_tape[t * d.b * d.tw..(t + 1) * d.b * d.tw],
        d_next,
        d_state,
        d_proj,
        dx: &mut [],
        scratch,
        step: t,
    }
}

/// The full `[S, B, H]` state from each part's `[S, n, H]` rows.
fn scatter_parts<T: Real>(d: &Dims, parts: &[std::ops::Range<usize>], finals: &[Vec<T>]) -> Vec<T> {
    let (h, sl) = (d.h, d.state_len);
    let s_count = sl / (d.b * h);
    let mut full = vec![T::ZERO; sl];
    for (r, part) in parts.iter().zip(finals) {
        let n = r.len();
        for s in 0..s_count {
            full[(s * d.b + r.start) * h..(s * d.b + r.end) * h]
                .copy_from_slice(&part[s * n * h..(s + 1) * n * h]);
        }
    }
    full
}

/// Thread 0, after step `t`: the output row, the state snapshot and the merged record.
#[allow(clippy::too_many_arguments)]
fn collect<T: Real>(
    o: &mut Outputs<'_, T>,
    spec: &SeqSpec,
    d: &Dims,
    t: usize,
    state: &[T],
    tapes: &[[RwLock<Vec<T>>; 2]],
    units: &[std::ops::Range<usize>],
    parity: usize,
) {
    let (h, sl) = (d.h, d.state_len);
    if spec.return_sequences {
        for b in 0..d.b {
            let at = spec.offset(t, b, h);
            o.y[at..at + h].copy_from_slice(&state[b * h..(b + 1) * h]);
        }
    } else if t + 1 == d.t {
        o.y.copy_from_slice(&state[..d.b * h]);
    }
    if !o.training {
        return;
    }
    o.states[(t + 1) * sl..(t + 2) * sl].copy_from_slice(state);
    if d.tw == 0 {
        return;
    }
    let row = &mut o.cell_tape[t * d.b * d.tw..(t + 1) * d.b * d.tw];
    for (r, u) in units.iter().enumerate() {
        let src = tapes[r][parity].read().unwrap_or_else(|e| e.into_inner());
        copy_units(row, &src, h, u);
    }
}

/// A barrier that spins briefly before yielding: a step lasts microseconds, far less than it
/// takes to put a thread to sleep and wake it again. A thread that panics breaks it (see
/// [`SpinBarrier::broken_by_panic`]), so that the others panic too instead of waiting for it
/// forever.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    threads: usize,
    broken: AtomicBool,
}

/// Breaks its barrier when dropped during a panic.
struct BreakOnPanic<'a>(&'a SpinBarrier);

impl Drop for BreakOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.broken.store(true, Ordering::Release);
        }
    }
}

impl SpinBarrier {
    /// Checks of the generation per yield to the scheduler while waiting.
    const CHECKS_PER_YIELD: u32 = 1 << 10;

    fn new(threads: usize) -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            threads,
            broken: AtomicBool::new(false),
        }
    }

    /// A guard for the whole of one thread's work: should that thread panic (a cell's step,
    /// say), the threads waiting at the barrier, and any that come to it later, panic too.
    fn broken_by_panic(&self) -> BreakOnPanic<'_> {
        BreakOnPanic(self)
    }

    /// Returns once all `threads` threads have called `wait` for this generation. Everything a
    /// thread did before `wait` happens-before everything any thread does after it.
    ///
    /// # Panics
    /// When another thread panicked while holding [`SpinBarrier::broken_by_panic`].
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        workers::spin_until(
            || {
                self.generation.load(Ordering::Acquire) != generation
                    || self.broken.load(Ordering::Acquire)
            },
            Self::CHECKS_PER_YIELD,
            std::thread::yield_now,
        );
        if self.generation.load(Ordering::Acquire) == generation {
            panic!("another thread of this split loop panicked");
        }
    }
}
