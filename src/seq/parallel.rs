//! The forward loop split across threads by hidden units.
//!
//! Each of `p` threads owns a contiguous share of the hidden units ([`Part`]) for the whole
//! sequence, so its share of the recurrent weights stays in its own core's cache. Per step a
//! thread computes its units into a buffer of its own, all threads meet at one barrier, and each
//! then gathers the full new state from the others' buffers. Buffers alternate by step parity, so
//! a thread can start writing step `t + 1` while others still read step `t`: the barrier of step
//! `t + 1` is only passed once every thread has finished reading step `t`.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::run::StepRows;
use super::{Dims, SeqSpec};
use crate::cell::{Cell, Part, StepForward};
use crate::real::Real;

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
    /// Multiply-adds below which starting a thread costs more than it saves.
    const MIN_WORK_PER_THREAD: usize = 1 << 20;
    let rows = d.t * d.b;
    let p = threads
        .min(rows * d.i * d.p / MIN_WORK_PER_THREAD)
        .min(rows)
        .max(1);
    if p == 1 {
        project(xs, proj);
        return;
    }
    let backend = crate::cpu::active_backend();
    let per = rows.div_ceil(p);
    std::thread::scope(|scope| {
        for (x, out) in xs.chunks(per * d.i).zip(proj.chunks_mut(per * d.p)) {
            let project = &project;
            scope.spawn(move || crate::cpu::with_backend(backend, || project(x, out)));
        }
    });
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
/// final state. `initial` is the full `[S, B, H]` start state.
pub(super) fn forward<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    threads: usize,
    rows: &StepRows<'_, T>,
    initial: &[T],
    out: Outputs<'_, T>,
) -> Vec<T> {
    let p = threads.min(cell.max_parts(d.b)).max(1);
    let sl = d.state_len;
    let tw = d.b * d.tw;
    let parts: Vec<Part> = (0..p).map(|index| Part { index, count: p }).collect();
    let units: Vec<_> = parts.iter().map(|&part| cell.part_units(part)).collect();
    // [thread][parity]: that thread's new state, and its record when training.
    let next: Vec<[RwLock<Vec<T>>; 2]> = (0..p)
        .map(|_| {
            [
                RwLock::new(vec![T::ZERO; sl]),
                RwLock::new(vec![T::ZERO; sl]),
            ]
        })
        .collect();
    let tapes: Vec<[RwLock<Vec<T>>; 2]> = (0..p)
        .map(|_| {
            [
                RwLock::new(vec![T::ZERO; tw]),
                RwLock::new(vec![T::ZERO; tw]),
            ]
        })
        .collect();
    let barrier = SpinBarrier::new(p);
    let training = out.training;
    let backend = crate::cpu::active_backend();
    let (s_count, h) = (sl / (d.b * d.h), d.h);

    // Copies units `u` of every state tensor and batch row from `src` into `dst` ([S, B, H]).
    let copy_units = |dst: &mut [T], src: &[T], u: &std::ops::Range<usize>| {
        for row in 0..s_count * d.b {
            dst[row * h + u.start..row * h + u.end]
                .copy_from_slice(&src[row * h + u.start..row * h + u.end]);
        }
    };

    let worker = |q: usize, out: Option<Outputs<'_, T>>| -> Vec<T> {
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
                let (x, proj, row_stride) = rows.step(t);
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
                });
            }
            barrier.wait();
            for (r, u) in units.iter().enumerate() {
                let src = next[r][parity].read().unwrap_or_else(|e| e.into_inner());
                copy_units(&mut state, &src, u);
            }
            if let Some(o) = out.as_mut() {
                collect(o, spec, d, t, &state, &tapes, &units, parity);
            }
        }
        state
    };

    std::thread::scope(|scope| {
        let worker = &worker;
        for q in 1..p {
            scope.spawn(move || {
                crate::cpu::with_backend(backend, || worker(q, None)).unwrap_or_default()
            });
        }
        worker(0, Some(out))
    })
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
        for block in 0..d.b * d.tw / h {
            row[block * h + u.start..block * h + u.end]
                .copy_from_slice(&src[block * h + u.start..block * h + u.end]);
        }
    }
}

/// A barrier that spins briefly before yielding: a step lasts microseconds, far less than it
/// takes to put a thread to sleep and wake it again.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    threads: usize,
}

impl SpinBarrier {
    /// Spins before each yield to the scheduler while waiting.
    const SPINS: u32 = 1 << 10;

    fn new(threads: usize) -> Self {
        Self {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            threads,
        }
    }

    /// Returns once all `threads` threads have called `wait` for this generation. Everything a
    /// thread did before `wait` happens-before everything any thread does after it.
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < Self::SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
                spins = 0;
            }
        }
    }
}
