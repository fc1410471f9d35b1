//! Forward over time, recording, and backpropagation through time.

use std::ops::Range;

use super::{Dims, GradMode, Gradients, Output, SeqSpec, parallel};
use crate::cell::{Cell, Part, StepBackward, StepForward};
use crate::cpu::pool::Scratch;
use crate::error::{Result, check_len, try_filled};
use crate::real::Real;

/// Length of the training record [`forward_train`] writes for `cell` over `spec`:
/// `(T + 1)·S·B·H` state values plus `T·B·tape_width` cell values.
pub fn tape_len<T: Real, C: Cell<T> + ?Sized>(cell: &C, spec: &SeqSpec) -> Result<usize> {
    Dims::new(cell, spec)?.tape_len()
}

/// Runs `cell` over `x` (see the [module docs](super) for shapes) from `initial_state`
/// (`[S, B, H]`, zeros when `None`), for inference.
pub fn forward<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
) -> Result<Output<T>> {
    let d = Dims::new(cell, spec)?;
    d.check_inputs(x, initial_state)?;
    // On a cache line, like the other rows the kernels load and store a register at a time.
    let mut states = Scratch::filled("state", 2 * d.state_len, T::ZERO)?;
    run_forward(
        cell,
        spec,
        &d,
        x,
        initial_state,
        &mut states,
        &mut [],
        false,
    )
}

/// Like [`forward`], and records what [`bptt`] needs into `tape`, which must hold at least
/// [`tape_len`] elements (only that prefix is written).
pub fn forward_train<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
    tape: &mut [T],
) -> Result<Output<T>> {
    let d = Dims::new(cell, spec)?;
    d.check_inputs(x, initial_state)?;
    let need = d.check_tape(tape.len())?;
    let (states, cell_tape) = tape[..need].split_at_mut((d.t + 1) * d.state_len);
    run_forward(cell, spec, &d, x, initial_state, states, cell_tape, true)
}

/// `x` in processing order, time-major: borrowed when it already is.
enum InOrder<'a, T: Copy + 'static> {
    Given(&'a [T]),
    Copied(Scratch<T>),
}

impl<T: Copy + 'static> std::ops::Deref for InOrder<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            InOrder::Given(x) => x,
            InOrder::Copied(x) => x,
        }
    }
}

fn processing_order<'a, T: Real>(spec: &SeqSpec, d: &Dims, x: &'a [T]) -> Result<InOrder<'a, T>> {
    if spec.layout == super::Layout::TimeMajor && !spec.go_backwards {
        return Ok(InOrder::Given(x));
    }
    let mut xs = Scratch::overwritten("x", d.x_len, T::ZERO)?;
    let rows =
        (0..d.t).flat_map(|t| (0..d.b).map(move |b| spec.offset(spec.source_step(t), b, d.i)));
    for (o, row) in rows.zip(xs.chunks_exact_mut(d.i.max(1))) {
        row.copy_from_slice(&x[o..o + d.i]);
    }
    Ok(InOrder::Copied(xs))
}

/// Where each step finds its rows of `x` and of the projection: in processing order
/// (`order` `None`: step `t`'s rows are rows `t·B ..` of both), or where `order` lays out the
/// caller's `x` (the projection then has the same row order).
pub(super) struct StepRows<'a, T> {
    pub xs: &'a [T],
    pub proj: &'a [T],
    pub order: Option<SeqSpec>,
    pub d: Dims,
}

impl<'a, T> StepRows<'a, T> {
    /// Step `t`'s `x` and projection rows for batch rows `batch_rows` (not empty), and how many
    /// rows apart they lie.
    pub fn step(&self, t: usize, batch_rows: Range<usize>) -> (&'a [T], &'a [T], usize) {
        let d = &self.d;
        let (first, stride) = match self.order {
            None => (t * d.b, 1),
            Some(spec) => {
                let src = spec.source_step(t);
                let first = spec.offset(src, 0, 1);
                (first, spec.offset(src, 1, 1) - first)
            }
        };
        let (first, last) = (
            first + batch_rows.start * stride,
            first + (batch_rows.end - 1) * stride,
        );
        let rows = |v: &'a [T], w: usize| &v[first * w..(last + 1) * w];
        (rows(self.xs, d.i), rows(self.proj, d.p), stride)
    }
}

/// Multiply-adds per thread of a run's steps, `T·B·P·(H + I)` (`P` the projection width, `H`
/// for a cell without one), below which it keeps its rows on one thread: waking another costs
/// more than it saves (training on two threads against one, T = 50, B = 16: SimpleRNN of 32
/// units and LSTM of 16, 1.6 M, 0.89x; GRU of 32 units, 4.9 M, 1.13x; LSTM of 32, 1.20x).
const MIN_ROW_SPLIT_WORK: usize = 1 << 21;

/// The row parts a cell answers through `ask` for up to `spec.threads` threads (its
/// [`Cell::row_parts`] or [`Cell::backward_row_parts`]), when the run has work for several
/// (see [`MIN_ROW_SPLIT_WORK`]) and the parts can be used: at least two non-empty ranges that
/// follow each other from 0 to `batch`. Any other answer runs unsplit.
fn row_split(
    spec: &SeqSpec,
    d: &Dims,
    ask: impl FnOnce(usize) -> Option<Vec<Range<usize>>>,
) -> Option<Vec<Range<usize>>> {
    let work = [d.t, d.b, d.p.max(d.h), d.h + d.i]
        .into_iter()
        .fold(1usize, usize::saturating_mul);
    match spec.threads.min(work / MIN_ROW_SPLIT_WORK) {
        0 | 1 => None,
        threads => ask(threads).filter(|p| tiles_batch(p, d.b)),
    }
}

/// Whether `parts` are at least two non-empty ranges that follow each other from 0 to `batch`.
fn tiles_batch(parts: &[Range<usize>], batch: usize) -> bool {
    parts.len() > 1 && parts.iter().all(|r| r.start < r.end) && follow_from_zero(parts, batch)
}

/// Whether `parts` follow each other, in order and without gaps or overlaps, from 0 to `end`
/// (empty ranges allowed).
pub(super) fn follow_from_zero(parts: &[Range<usize>], end: usize) -> bool {
    parts.first().is_some_and(|r| r.start == 0)
        && parts.last().is_some_and(|r| r.end == end)
        && parts.iter().all(|r| r.start <= r.end)
        && parts.windows(2).all(|w| w[0].end == w[1].start)
}

/// The forward loop. `states` holds two snapshots used in turn (inference) or all `T + 1`
/// (`training`); `cell_tape` is empty for inference.
#[allow(clippy::too_many_arguments)]
fn run_forward<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    x: &[T],
    initial_state: Option<&[T]>,
    states: &mut [T],
    cell_tape: &mut [T],
    training: bool,
) -> Result<Output<T>> {
    cell.prepare();
    let spec = &spec.threads(crate::workers::usable_threads(spec.threads));
    // A cell with a projection reads `x` only through it, which runs on the caller's rows in
    // their own order: no copy of `x`. Others get `x` in processing order.
    let xs = if d.p > 0 {
        InOrder::Given(x)
    } else {
        processing_order(spec, d, x)?
    };
    // Cell::project_inputs overwrites every element. The whole projection runs before the
    // steps, even where a step only streams its weights (B = 1): interleaving projection
    // multiply-adds into such a step's loop, for the cores' idle FMA units, measured no
    // overlap (a 4 MiB stream from L3 plus the projection's work took 0.96-0.98x their sum).
    let mut proj = Scratch::overwritten("projection", d.t * d.b * d.p, T::ZERO)?;
    if d.p > 0 {
        parallel::project(cell, spec.threads, d, &xs, &mut proj, training);
    }
    let rows = StepRows {
        xs: &xs,
        proj: &proj,
        order: if d.p > 0 { Some(*spec) } else { None },
        d: *d,
    };
    let sl = d.state_len;
    match initial_state {
        Some(s) => states[..sl].copy_from_slice(s),
        None => states[..sl].fill(T::ZERO),
    }
    let mut y = try_filled("y", d.y_len, T::ZERO)?;
    if let Some(parts) = row_split(spec, d, |n| cell.row_parts(d.b, n)) {
        let out = parallel::Outputs {
            states,
            cell_tape,
            y: &mut y,
            training,
        };
        let final_state = parallel::forward_by_rows(cell, spec, d, &parts, &rows, out);
        return Ok(Output { y, final_state });
    }
    if spec.threads > 1 && cell.max_parts(d.b) > 1 {
        let initial = states[..sl].to_vec();
        let out = parallel::Outputs {
            states: &mut *states,
            cell_tape: &mut *cell_tape,
            y: &mut y,
            training,
        };
        // Without the threads, the loop below runs it on this one.
        if let Some(final_state) =
            parallel::forward(cell, spec, d, spec.threads, &rows, &initial, out)
        {
            return Ok(Output { y, final_state });
        }
    }
    let mut scratch = try_filled("scratch", d.b * d.sw, T::ZERO)?;
    let bh = d.b * d.h;
    for t in 0..d.t {
        // Snapshot t is read, t + 1 written (training); inference alternates two slots.
        let (cur, nxt) = if training {
            (t, t + 1)
        } else {
            (t % 2, 1 - t % 2)
        };
        let (lo, hi) = states.split_at_mut(cur.max(nxt) * sl);
        let (state, next) = if cur < nxt {
            (&lo[cur * sl..], &mut hi[..sl])
        } else {
            (&hi[..sl], &mut lo[nxt * sl..])
        };
        let tape = if cell_tape.is_empty() {
            &mut [][..]
        } else {
            &mut cell_tape[t * d.b * d.tw..(t + 1) * d.b * d.tw]
        };
        let (x, proj, row_stride) = rows.step(t, 0..d.b);
        cell.step_forward(StepForward {
            batch: d.b,
            x,
            proj,
            row_stride,
            state,
            next,
            scratch: &mut scratch,
            tape,
            part: Part::WHOLE,
            step: t,
        });
        if spec.return_sequences {
            for b in 0..d.b {
                let o = spec.offset(t, b, d.h);
                y[o..o + d.h].copy_from_slice(&next[b * d.h..(b + 1) * d.h]);
            }
        } else if t + 1 == d.t {
            y.copy_from_slice(&next[..bh]);
        }
    }
    let last = if training { d.t } else { d.t % 2 };
    Ok(Output {
        y,
        final_state: states[last * sl..(last + 1) * sl].to_vec(),
    })
}

/// Backpropagation through time over a record written by [`forward_train`] with the same
/// `cell`, `spec`, `x` and `initial_state`.
///
/// `dy` is the upstream gradient on `y` (shaped like it: every step with
/// `return_sequences`, else `[B, H]`); `d_final_state` (`[S, B, H]`) the upstream gradient on
/// the final state, if the loss depends on it. Returns fresh gradients (parameter gradients
/// *overwritten*); [`bptt_into`] can accumulate instead.
#[allow(clippy::too_many_arguments)]
pub fn bptt<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
    tape: &[T],
    dy: &[T],
    d_final_state: Option<&[T]>,
) -> Result<Gradients<T>> {
    let mut grads = Gradients::zeros(cell, spec)?;
    bptt_into(
        cell,
        spec,
        x,
        initial_state,
        tape,
        dy,
        d_final_state,
        &mut grads,
        GradMode::Accumulate,
    )?;
    Ok(grads)
}

/// [`bptt`] into caller-owned gradients: `grads.dx` and `grads.d_initial_state` are always
/// overwritten; `grads.params` are overwritten or accumulated into according to `mode`.
#[allow(clippy::too_many_arguments)]
pub fn bptt_into<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
    tape: &[T],
    dy: &[T],
    d_final_state: Option<&[T]>,
    grads: &mut Gradients<T>,
    mode: GradMode,
) -> Result<()> {
    let d = Dims::new(cell, spec)?;
    d.check_inputs(x, initial_state)?;
    let need = d.check_tape(tape.len())?;
    check_len("dy", dy.len(), d.y_len)?;
    if let Some(g) = d_final_state {
        check_len("d_final_state", g.len(), d.state_len)?;
    }
    check_len("grads.dx", grads.dx.len(), d.x_len)?;
    check_len(
        "grads.d_initial_state",
        grads.d_initial_state.len(),
        d.state_len,
    )?;
    let params = cell.params();
    check_len("grads.params", grads.params.len(), params.len())?;
    for (g, p) in grads.params.iter_mut().zip(&params) {
        check_len("grads.params[k]", g.len(), p.data.len())?;
        if mode == GradMode::Overwrite {
            g.fill(T::ZERO);
        }
    }
    drop(params);

    let spec = &spec.threads(crate::workers::usable_threads(spec.threads));
    let sl = d.state_len;
    let (states, cell_tape) = tape[..need].split_at((d.t + 1) * sl);
    let xs = processing_order(spec, &d, x)?;
    let mut dxs = Scratch::filled("dx", d.x_len, T::ZERO)?;
    // Every backward step overwrites its rows of `d_proj` (the `StepBackward` contract).
    let mut d_proj = Scratch::overwritten("projection", d.t * d.b * d.p, T::ZERO)?;
    let input = parallel::BackwardInputs {
        xs: &xs,
        states,
        cell_tape,
        dy,
        d_final_state,
    };
    let d_initial = match row_split(spec, &d, |n| cell.backward_row_parts(d.b, n)) {
        Some(parts) => {
            parallel::backward_by_rows(cell, spec, &d, &parts, input, &mut dxs, &mut d_proj)
        }
        None => {
            let p = cell
                .backward_unit_parts(d.b, spec.threads)
                .min(spec.threads);
            let by_units = match p {
                // `None` too when the system refuses a thread: then this thread runs it.
                p if p > 1 => parallel::backward_by_units(cell, spec, &d, p, input, &mut d_proj),
                _ => None,
            };
            match by_units {
                Some(d_initial) => d_initial,
                None => backward_steps(
                    cell,
                    spec,
                    &d,
                    input,
                    &mut try_filled("scratch", d.b * d.sw, T::ZERO)?,
                    &mut dxs,
                    &mut d_proj,
                    &mut grads.params,
                ),
            }
        }
    };
    grads.d_initial_state.copy_from_slice(&d_initial);
    // The products over all T·B rows split across the spec's threads; those of both hooks
    // whose right operand is `d_proj` pack it once.
    crate::cpu::gemm::with_threads(spec.threads, || {
        crate::cpu::share_packing(&d_proj, || {
            cell.sequence_backward(d.b, states, cell_tape, &d_proj, &mut grads.params);
            if d.p > 0 {
                cell.project_backward(&xs, &d_proj, &mut dxs, &mut grads.params);
            }
        })
    });
    // Back from processing order to the caller's layout and direction.
    for t in 0..d.t {
        let src = spec.source_step(t);
        for b in 0..d.b {
            let o = spec.offset(src, b, d.i);
            let r = (t * d.b + b) * d.i;
            grads.dx[o..o + d.i].copy_from_slice(&dxs[r..r + d.i]);
        }
    }
    Ok(())
}

/// Adds the gradient on step `t`'s output rows `rows` (from `dy`, shaped like `y`) into
/// `d_next`, whose state 0 holds those rows, `[S, rows, H]`.
pub(super) fn add_output_gradient<T: Real>(
    spec: &SeqSpec,
    d: &Dims,
    t: usize,
    rows: Range<usize>,
    dy: &[T],
    d_next: &mut [T],
) {
    if !spec.return_sequences && t + 1 != d.t {
        return;
    }
    let h = d.h;
    for (j, b) in rows.enumerate() {
        let o = if spec.return_sequences {
            spec.offset(t, b, h)
        } else {
            b * h
        };
        for (g, &v) in d_next[j * h..(j + 1) * h].iter_mut().zip(&dy[o..o + h]) {
            *g += v;
        }
    }
}

/// The reverse step loop of [`bptt_into`] on this thread: fills `dxs` and `d_proj` (processing
/// order), accumulates the steps' parameter gradients into `params`; returns the gradient on
/// the initial state.
#[allow(clippy::too_many_arguments)]
fn backward_steps<T: Real, C: Cell<T> + ?Sized>(
    cell: &C,
    spec: &SeqSpec,
    d: &Dims,
    inputs: parallel::BackwardInputs<'_, T>,
    scratch: &mut [T],
    dxs: &mut [T],
    d_proj: &mut [T],
    params: &mut [Vec<T>],
) -> Vec<T> {
    let parallel::BackwardInputs {
        xs,
        states,
        cell_tape,
        dy,
        d_final_state,
    } = inputs;
    let sl = d.state_len;
    let mut d_next = match d_final_state {
        Some(g) => g.to_vec(),
        None => vec![T::ZERO; sl],
    };
    let mut d_state = vec![T::ZERO; sl];
    for t in (0..d.t).rev() {
        add_output_gradient(spec, d, t, 0..d.b, dy, &mut d_next);
        cell.step_backward(
            StepBackward {
                batch: d.b,
                x: &xs[t * d.b * d.i..(t + 1) * d.b * d.i],
                state: &states[t * sl..(t + 1) * sl],
                next: &states[(t + 1) * sl..(t + 2) * sl],
                tape: &cell_tape[t * d.b * d.tw..(t + 1) * d.b * d.tw],
                d_next: &d_next,
                d_state: &mut d_state,
                d_proj: &mut d_proj[t * d.b * d.p..(t + 1) * d.b * d.p],
                dx: &mut dxs[t * d.b * d.i..(t + 1) * d.b * d.i],
                scratch,
                step: t,
            },
            params,
        );
        std::mem::swap(&mut d_next, &mut d_state);
    }
    d_next
}

#[cfg(test)]
mod tests {
    use crate::cell::Cell;
    use crate::prelude::*;
    use crate::workers::tests::refusing_threads;

    /// A split by hidden units needs its threads all at once; refused, the sequence runs on
    /// the calling thread and gives what one thread gives.
    #[test]
    fn refused_threads_run_the_split_by_units_here() {
        let cell = DynLstm::<f32>::random(Dyn(5), Dyn(300), LstmKind::default(), true, 1).unwrap();
        assert!(cell.max_parts(1) > 1 && cell.backward_unit_parts(1, 2) > 1);
        let (t, b) = (4, 1);
        let spec = SeqSpec::new(t, b);
        let x: Vec<f32> = (0..t * b * 5).map(|k| (k as f32 * 0.37).sin()).collect();
        let dy: Vec<f32> = (0..t * b * 300).map(|k| (k as f32 * 0.11).cos()).collect();
        let run = |spec: &SeqSpec| {
            let inference = seq::forward(&cell, spec, &x, None).unwrap();
            let mut tape = vec![0.0; seq::tape_len(&cell, spec).unwrap()];
            let train = seq::forward_train(&cell, spec, &x, None, &mut tape).unwrap();
            let grads = seq::bptt(&cell, spec, &x, None, &tape, &dy, None).unwrap();
            (inference.y, train.final_state, grads.dx, grads.params)
        };
        let one = run(&spec);
        let refused = refusing_threads(|| run(&spec.threads(2)));
        assert!(one == refused, "refused threads changed the results");
    }
}
