//! The fused step kernels, written once over [`RowOps`] and instantiated per backend.
//!
//! A step is the recurrent product for every batch row (row by row for small batches, one
//! matrix product otherwise) into a scratch row, then per row one pass that adds the
//! precomputed input projection, applies the gate activations (vectorised by the backend) and
//! updates the state. Loops run to [`Dim`] bounds so that compile-time shapes unroll.

use super::gemm::{self, Mat, Op};
use super::ops::RowOps;
use super::part_units;
use super::{Carry, SMALL_ROWS, init_with_bias, sum_rows_into};
use crate::activation::Activation;
use crate::cell::gru::{CANDIDATE, GruKind, RESET, UPDATE};
use crate::cell::lstm::LstmKind;
use crate::cell::simple_rnn::SimpleRnnKind;
use crate::cell::{RecurrentWeights, StepBackward, StepForward, step_row};
use crate::dim::{Dim, Dyn};
use crate::real::Real;
use std::ops::Range;

/// `out[r, :n] = bias + x[r, :K] · w[:, col0..col0 + n]` for every row `r < rows`.
///
/// `x` rows are `ldx` apart, `w` rows `ldw`, `out` rows `ldo`; `bias` has `n` values or is
/// empty (none).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn product_rows<T: Real, O: RowOps<T>, K: Dim>(
    ops: O,
    k: K,
    rows: usize,
    x: &[T],
    ldx: usize,
    w: &[T],
    ldw: usize,
    col0: usize,
    n: usize,
    bias: &[T],
    out: &mut [T],
    ldo: usize,
) {
    if rows <= SMALL_ROWS {
        for r in 0..rows {
            let o = &mut out[r * ldo..r * ldo + n];
            init_with_bias(o, bias);
            ops.gemv_acc(k, &x[r * ldx..], &w[col0..], ldw, o);
        }
        return;
    }
    let kv = k.value();
    gemm::gemm(
        Mat {
            data: x,
            rows,
            cols: kv,
            ld: ldx,
        },
        Op::N,
        Mat {
            data: &w[col0..],
            rows: kv,
            cols: n,
            ld: ldw,
        },
        Op::N,
        T::ZERO,
        out,
        rows,
        n,
        ldo,
    );
    if !bias.is_empty() {
        for r in 0..rows {
            for (o, &b) in out[r * ldo..r * ldo + n].iter_mut().zip(bias) {
                *o += b;
            }
        }
    }
}

/// Backward of [`product_rows`] with respect to `x` and `w` (accumulating):
/// `dx[r, :K] += d[r, :n] · w[:, cols]ᵀ` and `dw[:, cols] += x[:rows, :K]ᵀ · d`.
/// `dx` and `dw` may be empty to skip that gradient.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn product_rows_backward<T: Real, O: RowOps<T>, K: Dim>(
    ops: O,
    k: K,
    rows: usize,
    x: &[T],
    ldx: usize,
    w: &[T],
    ldw: usize,
    col0: usize,
    d: &[T],
    ldd: usize,
    n: usize,
    dx: &mut [T],
    dw: &mut [T],
) {
    let kv = k.value();
    if rows <= SMALL_ROWS {
        for r in 0..rows {
            let dr = &d[r * ldd..r * ldd + n];
            if !dx.is_empty() {
                ops.gemv_t_acc(k, dr, &w[col0..], ldw, &mut dx[r * ldx..]);
            }
            if !dw.is_empty() {
                ops.ger_acc(k, &x[r * ldx..], dr, &mut dw[col0..], ldw);
            }
        }
        return;
    }
    let dm = Mat {
        data: d,
        rows,
        cols: n,
        ld: ldd,
    };
    if !dx.is_empty() {
        let wm = Mat {
            data: &w[col0..],
            rows: kv,
            cols: n,
            ld: ldw,
        };
        gemm::gemm(dm, Op::N, wm, Op::T, T::ONE, dx, rows, kv, ldx);
    }
    if !dw.is_empty() {
        let xm = Mat {
            data: x,
            rows,
            cols: kv,
            ld: ldx,
        };
        gemm::gemm(xm, Op::T, dm, Op::N, T::ONE, &mut dw[col0..], kv, n, ldw);
    }
}

/// Recurrent product for every row: `out[b, :n] = h[b] · recurrent_kernel[:, col0..col0+n]
/// + recurrent_bias[col0..col0+n]`, `h` rows `ldh` apart, `out` rows `ldo` apart.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn recurrent<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    w: &RecurrentWeights<T, I, H>,
    batch: usize,
    h: &[T],
    ldh: usize,
    col0: usize,
    n: usize,
    out: &mut [T],
    ldo: usize,
) {
    let bias = if w.recurrent_bias.is_empty() {
        &[][..]
    } else {
        &w.recurrent_bias[col0..col0 + n]
    };
    let gh = w.gates * w.hidden.value();
    product_rows(
        ops,
        w.hidden,
        batch,
        h,
        ldh,
        &w.recurrent_kernel,
        gh,
        col0,
        n,
        bias,
        out,
        ldo,
    );
}

/// Backward of [`recurrent`]: `dh[b] += d[b] · U[:, cols]ᵀ`, `dU[:, cols] += hᵀ · d`,
/// `du[cols] += Σ_b d[b]` (bias gradient skipped when `d_rb` is empty).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn recurrent_backward<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    w: &RecurrentWeights<T, I, H>,
    batch: usize,
    h: &[T],
    ldh: usize,
    col0: usize,
    n: usize,
    d: &[T],
    ldd: usize,
    dh: &mut [T],
    d_rk: &mut [T],
    d_rb: &mut [T],
    step: usize,
) {
    let gh = w.gates * w.hidden.value();
    let rk = &w.recurrent_kernel;
    let whole = col0 == 0 && n == gh && ldd == gh && ldh == w.hidden.value();
    let dh = if whole && !dh.is_empty() && ops.recurrent_grad(w, batch, d, dh, 0..ldh, step) {
        &mut []
    } else {
        dh
    };
    product_rows_backward(
        ops, w.hidden, batch, h, ldh, rk, gh, col0, d, ldd, n, dh, d_rk,
    );
    if !d_rb.is_empty() {
        sum_rows_into(&mut d_rb[col0..col0 + n], &d[..(batch - 1) * ldd + n], ldd);
    }
}

/// The recurrent half of a backward step split by hidden units: `dh[b, u] += d[b, :] ·
/// recurrent_kernel[u, :]ᵀ` for every row `b < batch` and state unit `u` in `units`
/// (`d [B, G·H]` the gradients of the recurrent terms, `dh [B, H]`).
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn recurrent_grad_units<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    w: &RecurrentWeights<T, I, H>,
    batch: usize,
    d: &[T],
    dh: &mut [T],
    units: Range<usize>,
    step: usize,
) {
    let (h, gh) = (w.hidden.value(), w.gates * w.hidden.value());
    if ops.recurrent_grad(w, batch, d, dh, units.clone(), step) {
        return;
    }
    // Rows `units` of the kernel, as a kernel of `units.len()` inputs.
    product_rows_backward(
        ops,
        Dyn(units.len()),
        batch,
        &[],
        h,
        &w.recurrent_kernel[units.start * gh..],
        gh,
        0,
        d,
        gh,
        gh,
        &mut dh[units.start..],
        &mut [],
    );
}

/// `a[j] += b[j]`.
#[cfg_attr(not(unoptimized), inline(always))]
fn add_assign<T: Real>(a: &mut [T], b: &[T]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `out[j] = a[j] + b[j]`.
#[cfg_attr(not(unoptimized), inline(always))]
fn add_into<T: Real>(out: &mut [T], a: &[T], b: &[T]) {
    for (o, (&x, &y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x + y;
    }
}

/// Recurrent products of gate blocks `gates` restricted to `units`, for every row, into `out`
/// (rows `ldo` apart, gate block `g` at `g·H`): one product over all columns for a whole step,
/// one per gate block for a part.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn recurrent_units<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    w: &RecurrentWeights<T, I, H>,
    batch: usize,
    h_prev: &[T],
    gates: Range<usize>,
    units: &Range<usize>,
    out: &mut [T],
    ldo: usize,
) {
    let h = w.hidden.value();
    // Many rows of every gate run on the backend's kernel over the weights packed once, where it
    // has one: no packing and no allocation per step.
    if gates.len() == w.gates
        && batch > SMALL_ROWS
        && ops.recurrent_product(w, batch, h_prev, units.clone(), out, ldo)
    {
        return;
    }
    if units.len() == h {
        let (col0, n) = (gates.start * h, gates.len() * h);
        recurrent(ops, w, batch, h_prev, h, col0, n, &mut out[col0..], ldo);
        return;
    }
    for g in gates {
        let col0 = g * h + units.start;
        recurrent(
            ops,
            w,
            batch,
            h_prev,
            h,
            col0,
            units.len(),
            &mut out[col0..],
            ldo,
        );
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn simple_rnn_fwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let (h, u) = (w.hidden.value(), part_units(s.part, w.hidden.value()));
    recurrent_units(ops, w, s.batch, s.state, 0..1, &u, s.next, h);
    for b in 0..s.batch {
        let rows = b * h + u.start..b * h + u.end;
        let px = step_row(s.proj, b, h, s.row_stride);
        add_assign(&mut s.next[rows.clone()], &px[u.clone()]);
        ops.activate(kind.activation, &mut s.next[rows]);
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn simple_rnn_bwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    mut s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let (h, b) = (w.hidden.value(), s.batch);
    simple_rnn_bwd_gates(kind, w, &mut s, 0..h);
    recurrent_backward(
        ops, w, b, s.state, h, 0, h, s.d_proj, h, s.d_state, d_rk, d_rb, s.step,
    );
}

/// The gate half of a SimpleRNN backward step for the hidden units `u`: their columns of
/// `d_proj`, and zeros at them in `d_state` (which only the recurrent product feeds).
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn simple_rnn_bwd_gates<T: Real, I: Dim, H: Dim>(
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: &mut StepBackward<'_, T>,
    u: Range<usize>,
) {
    let h = w.hidden.value();
    for b in 0..s.batch {
        let cols = b * h + u.start..b * h + u.end;
        let (dy, y, d) = (
            &s.d_next[cols.clone()],
            &s.next[cols.clone()],
            &mut s.d_proj[cols.clone()],
        );
        // tanh gets a copy of the loop with its derivative inlined, which the compiler
        // vectorises.
        if kind.activation == Activation::Tanh {
            scale_by_derivative(|y: T| T::ONE - y * y, dy, y, d);
        } else {
            scale_by_derivative(|y| kind.activation.derivative_from_output(y), dy, y, d);
        }
        s.d_state[cols].fill(T::ZERO);
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn lstm_fwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &LstmKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    let (gh, bh, u) = (4 * h, s.batch * h, part_units(s.part, h));
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    let (h_prev, c_prev) = s.state.split_at(bh);
    let (h_next, c_next) = s.next.split_at_mut(bh);
    recurrent_units(ops, w, s.batch, h_prev, 0..4, &u, s.scratch, gh);
    let gate_cols = |gate: usize| gate * h + u.start..gate * h + u.end;
    for b in 0..s.batch {
        let px = step_row(s.proj, b, gh, s.row_stride);
        let rec = &mut s.scratch[b * gh..(b + 1) * gh];
        // The gates i, f, c̃, o of this part's units: in place over the recurrent terms, or with
        // a record straight into it (`[i, f, c̃, o, act(c)]` per row) rather than through a copy.
        let (g, act_c) = if s.tape.is_empty() {
            for gate in 0..4 {
                add_assign(&mut rec[gate_cols(gate)], &px[gate_cols(gate)]);
            }
            (rec, None)
        } else {
            let (g, act_c) = s.tape[b * 5 * h..(b + 1) * 5 * h].split_at_mut(gh);
            for gate in 0..4 {
                let cols = gate_cols(gate);
                add_into(&mut g[cols.clone()], &rec[cols.clone()], &px[cols]);
            }
            (g, Some(&mut act_c[u.clone()]))
        };
        for (gate, a) in [ra, ra, act, ra].into_iter().enumerate() {
            ops.activate(a, &mut g[gate_cols(gate)]);
        }
        let rows = b * h + u.start..b * h + u.end;
        let (hn, cn, cp) = (
            &mut h_next[rows.clone()],
            &mut c_next[rows.clone()],
            &c_prev[rows],
        );
        for (k, j) in u.clone().enumerate() {
            cn[k] = g[h + j] * cp[k] + g[j] * g[2 * h + j];
        }
        let o = &g[gate_cols(3)];
        match act_c {
            Some(act_c) => {
                act_c.copy_from_slice(cn);
                ops.activate(act, act_c);
                for ((hv, &ov), &a) in hn.iter_mut().zip(o).zip(&*act_c) {
                    *hv = ov * a;
                }
            }
            None => {
                // h holds act(c) until the output gate multiplies it.
                hn.copy_from_slice(cn);
                ops.activate(act, hn);
                for (hv, &ov) in hn.iter_mut().zip(o) {
                    *hv *= ov;
                }
            }
        }
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn lstm_bwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &LstmKind,
    w: &RecurrentWeights<T, I, H>,
    mut s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let h = w.hidden.value();
    lstm_bwd_gates(kind, w, &mut s, 0..h);
    let bh = s.batch * h;
    recurrent_backward(
        ops,
        w,
        s.batch,
        &s.state[..bh],
        h,
        0,
        4 * h,
        s.d_proj,
        4 * h,
        &mut s.d_state[..bh],
        d_rk,
        d_rb,
        s.step,
    );
}

/// How many batch rows ahead of the one they work on the backward gate loops prefetch their
/// record and previous state. Those rows come from L3 or memory as a few short runs per row
/// (one per gate block), which the hardware prefetchers do not pick up in time. Measured on
/// one thread, LSTM T = 28, B = 64, I = 28, H = 128: BPTT alone 1.02–1.07x (the gate loops
/// fell from about 13 % of its samples to 8 %), training end to end about 1.02x (its forward
/// pass leaves the last steps' records in cache); one row ahead measured within noise of two,
/// and prefetching the `d_proj` rows being written was slower.
const GATE_PREFETCH_ROWS: usize = 2;

/// Prefetches the units `u` of each of the `blocks` blocks of `h` values that start at
/// `start` in `v` (nothing where they lie past its end).
#[cfg_attr(not(unoptimized), inline(always))]
fn prefetch_units<T>(v: &[T], start: usize, blocks: usize, h: usize, u: &Range<usize>) {
    for k in 0..blocks {
        if let Some(run) = v.get(start + k * h + u.start..start + k * h + u.end) {
            crate::cpu::prefetch_lines(run);
        }
    }
}

/// The gate half of an LSTM backward step for the hidden units `u`: their columns of every
/// gate block of `d_proj`, their `dc_prev`, and zeros at them in `dh_prev` (which only the
/// recurrent product feeds).
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn lstm_bwd_gates<T: Real, I: Dim, H: Dim>(
    kind: &LstmKind,
    w: &RecurrentWeights<T, I, H>,
    s: &mut StepBackward<'_, T>,
    u: Range<usize>,
) {
    let h = w.hidden.value();
    let gh = 4 * h;
    let bh = s.batch * h;
    let (ra, a) = (kind.recurrent_activation, kind.activation);
    let c_prev = &s.state[bh..];
    let (dh_next, dc_next) = s.d_next.split_at(bh);
    let (dh_prev, dc_prev) = s.d_state.split_at_mut(bh);
    for b in 0..s.batch {
        let rows = b * h..(b + 1) * h;
        let ahead = b + GATE_PREFETCH_ROWS;
        prefetch_units(s.tape, ahead * 5 * h, 5, h, &u);
        prefetch_units(c_prev, ahead * h, 1, h, &u);
        let (tape, dh, dc, cp) = (
            &s.tape[b * 5 * h..(b + 1) * 5 * h],
            &dh_next[rows.clone()],
            &dc_next[rows.clone()],
            &c_prev[rows.clone()],
        );
        let (da, dcp) = (
            &mut s.d_proj[b * gh..(b + 1) * gh],
            &mut dc_prev[rows.clone()],
        );
        // The default activations get a copy of the loop with their derivatives inlined, which
        // the compiler vectorises; the others keep the per-element match.
        if (ra, a) == (Activation::Sigmoid, Activation::Tanh) {
            let (d_sig, d_tanh) = (|y: T| y * (T::ONE - y), |y: T| T::ONE - y * y);
            lstm_grad_row(d_sig, d_tanh, &u, tape, dh, dc, cp, da, dcp);
        } else {
            let (d_ra, d_act) = (
                |y| ra.derivative_from_output(y),
                |y| a.derivative_from_output(y),
            );
            lstm_grad_row(d_ra, d_act, &u, tape, dh, dc, cp, da, dcp);
        }
        dh_prev[rows.start + u.start..rows.start + u.end].fill(T::ZERO);
    }
}

/// One batch row of the GRU backward gate step, the part both variants share: from the
/// record's `z` and candidate `cand`, the previous state and the state gradient `dh`, the
/// update and candidate pre-activation gradients `da_z`, `da_n` and the direct part of the
/// previous state's gradient `d_state = dh · z`; `d_ra`, `d_act` the derivatives of the gate and
/// candidate activations from their outputs. Rows arrive as separate arguments so that the
/// compiler knows they do not overlap and vectorises the loop.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn gru_grad_row<T: Real>(
    d_ra: impl Fn(T) -> T,
    d_act: impl Fn(T) -> T,
    z: &[T],
    cand: &[T],
    h_prev: &[T],
    dh: &[T],
    da_z: &mut [T],
    da_n: &mut [T],
    d_state: &mut [T],
) {
    let h = dh.len();
    let (z, cand, h_prev) = (&z[..h], &cand[..h], &h_prev[..h]);
    let (da_z, da_n, d_state) = (&mut da_z[..h], &mut da_n[..h], &mut d_state[..h]);
    for j in 0..h {
        let (zj, cj, dhj) = (z[j], cand[j], dh[j]);
        da_z[j] = dhj * (h_prev[j] - cj) * d_ra(zj);
        da_n[j] = dhj * (T::ONE - zj) * d_act(cj);
        d_state[j] = dhj * zj;
    }
}

/// The reset-after GRU's reset gradient `da_r = dn · rec_n · r'` and the recurrent candidate
/// term's gradient `d_rec_n = dn · r`, for one batch row (`rec_n` the recorded recurrent term).
#[cfg_attr(not(unoptimized), inline(always))]
fn gru_reset_after_row<T: Real>(
    d_ra: impl Fn(T) -> T,
    r: &[T],
    rec_n: &[T],
    dn: &[T],
    da_r: &mut [T],
    d_rec_n: &mut [T],
) {
    let h = da_r.len();
    let (r, rec_n, dn, d_rec_n) = (&r[..h], &rec_n[..h], &dn[..h], &mut d_rec_n[..h]);
    for j in 0..h {
        da_r[j] = dn[j] * rec_n[j] * d_ra(r[j]);
        d_rec_n[j] = dn[j] * r[j];
    }
}

/// `d[j] = dy[j] · act'(y[j])` with `d_act` the derivative from the output.
#[cfg_attr(not(unoptimized), inline(always))]
fn scale_by_derivative<T: Real>(d_act: impl Fn(T) -> T, dy: &[T], y: &[T], d: &mut [T]) {
    for ((d, &dy), &y) in d.iter_mut().zip(dy).zip(y) {
        *d = dy * d_act(y);
    }
}

/// One batch row of the LSTM backward gate step at the hidden units `u`: `tape` the row's
/// record `[i, f, c̃, o, act(c)]` (`5·H`), `dh`, `dc`, `c_prev`, `dc_prev` `[H]`, `da` the
/// pre-activation gradients `[4·H]`; `d_ra` and `d_act` the derivatives of the gate and cell
/// activations from their outputs.
///
/// The rows arrive as separate arguments so that the compiler knows they do not overlap and
/// vectorises the loop.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn lstm_grad_row<T: Real>(
    d_ra: impl Fn(T) -> T,
    d_act: impl Fn(T) -> T,
    u: &Range<usize>,
    tape: &[T],
    dh: &[T],
    dc: &[T],
    c_prev: &[T],
    da: &mut [T],
    dc_prev: &mut [T],
) {
    let h = dh.len();
    let dh = &dh[u.start..u.end];
    // Every slice cut to `n` as seen by the compiler: no bounds checks in the loop, which
    // would keep it scalar.
    let n = dh.len();
    let t = |k: usize| &tape[k * h + u.start..][..n];
    let (ti, tf, tg, to, tc) = (t(0), t(1), t(2), t(3), t(4));
    let (dai, rest) = da.split_at_mut(h);
    let (daf, rest) = rest.split_at_mut(h);
    let (dag, dao) = rest.split_at_mut(h);
    let [dai, daf, dag, dao] = [dai, daf, dag, dao].map(|v| &mut v[u.start..][..n]);
    let (dc, cp, dcp) = (
        &dc[u.start..][..n],
        &c_prev[u.start..][..n],
        &mut dc_prev[u.start..][..n],
    );
    for j in 0..n {
        let (i, f, g, o, act_c) = (ti[j], tf[j], tg[j], to[j], tc[j]);
        let dc = dc[j] + dh[j] * o * d_act(act_c);
        dai[j] = dc * g * d_ra(i);
        daf[j] = dc * cp[j] * d_ra(f);
        dag[j] = dc * i * d_act(g);
        dao[j] = dh[j] * act_c * d_ra(o);
        dcp[j] = dc * f;
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn gru_fwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    let (gh, tw, u) = (3 * h, kind.tape_width_rows(h), part_units(s.part, h));
    // Reset-before needs every unit's r before the candidate product: never split.
    debug_assert!(kind.reset_after || u.len() == h);
    // Scratch: rows [B, 3H] of recurrent terms (z, r, candidate) — z and r replaced in place
    // by the gates — then rows [B, H] holding r ⊙ h_prev and later the candidate.
    let (rec, aux) = s.scratch.split_at_mut(s.batch * gh);
    let rec_gates = if kind.reset_after { 0..3 } else { 0..2 };
    recurrent_units(ops, w, s.batch, s.state, rec_gates, &u, rec, gh);
    for b in 0..s.batch {
        let px = step_row(s.proj, b, gh, s.row_stride);
        for gate in [UPDATE, RESET] {
            let cols = gate * h + u.start..gate * h + u.end;
            let row = &mut rec[b * gh..(b + 1) * gh];
            add_assign(&mut row[cols.clone()], &px[cols.clone()]);
            ops.activate(kind.recurrent_activation, &mut row[cols]);
        }
        for j in u.clone() {
            aux[b * h + j] = rec[b * gh + RESET * h + j] * s.state[b * h + j];
        }
    }
    if !kind.reset_after {
        // The reset-before candidate: (r ⊙ h_prev) · U_h̃.
        recurrent(ops, w, s.batch, aux, h, 2 * h, h, &mut rec[2 * h..], gh);
    }
    for b in 0..s.batch {
        let (g, px) = (
            &rec[b * gh..(b + 1) * gh],
            step_row(s.proj, b, gh, s.row_stride),
        );
        let cand = &mut aux[b * h + u.start..b * h + u.end];
        for (k, j) in u.clone().enumerate() {
            let rec_n = g[CANDIDATE * h + j];
            let gated = if kind.reset_after {
                g[RESET * h + j] * rec_n
            } else {
                rec_n
            };
            cand[k] = px[CANDIDATE * h + j] + gated;
        }
        ops.activate(kind.activation, cand);
        let rows = b * h + u.start..b * h + u.end;
        let (next, prev) = (&mut s.next[rows.clone()], &s.state[rows]);
        for (k, j) in u.clone().enumerate() {
            let z = g[UPDATE * h + j];
            next[k] = z * prev[k] + (T::ONE - z) * cand[k];
        }
        if s.tape.is_empty() {
            continue;
        }
        let t = &mut s.tape[b * tw..(b + 1) * tw];
        for gate in [UPDATE, RESET] {
            let cols = gate * h + u.start..gate * h + u.end;
            t[cols.clone()].copy_from_slice(&g[cols]);
        }
        t[2 * h + u.start..2 * h + u.end].copy_from_slice(cand);
        if kind.reset_after {
            t[gh + u.start..gh + u.end].copy_from_slice(&g[2 * h + u.start..2 * h + u.end]);
        }
    }
}

/// The gate half of a GRU backward step for the hidden units `u` (all of them for
/// reset-before): their columns of the update and candidate blocks of `d_proj`, and for
/// reset-after of the reset block and of the candidate block of the recurrent terms' gradients
/// (scratch rows `[B, 3H]`); their `d_state` through the update (`carry`: see [`gru_bwd`]).
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn gru_bwd_gates<T: Real, I: Dim, H: Dim>(
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    s: &mut StepBackward<'_, T>,
    u: Range<usize>,
    carry: &mut Option<Carry<'_, T>>,
) {
    let h = w.hidden.value();
    let (gh, tw, n) = (3 * h, kind.tape_width_rows(h), u.len());
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    let d_rec = &mut s.scratch[..s.batch * gh];
    let da = &mut *s.d_proj;
    // The default activations get copies of the loops with their derivatives inlined, which
    // the compiler vectorises; the others keep the per-element match.
    let default = (ra, act) == (Activation::Sigmoid, Activation::Tanh);
    let (d_sig, d_tanh) = (|y: T| y * (T::ONE - y), |y: T| T::ONE - y * y);
    let (d_ra, d_act) = (
        |y| ra.derivative_from_output(y),
        |y| act.derivative_from_output(y),
    );
    // Offset `k·H` of a row, at the units.
    let at = |k: usize| k * h + u.start;
    for b in 0..s.batch {
        let ahead = b + GATE_PREFETCH_ROWS;
        prefetch_units(s.tape, ahead * tw, tw / h, h, &u);
        match carry {
            Some(c) => prefetch_units(c.h, ahead * h, 1, h, &u),
            None => prefetch_units(s.state, ahead * h, 1, h, &u),
        }
        let t = &s.tape[b * tw..(b + 1) * tw];
        let rows = b * h + u.start..b * h + u.end;
        let dh = &s.d_next[rows.clone()];
        // The update's previous state, and where its gradient goes: with a carry, d_state
        // collects only the products' share (added by the caller).
        let (h_prev, ds): (&[T], &mut [T]) = match carry {
            Some(c) => {
                s.d_state[rows.clone()].fill(T::ZERO);
                (&c.h[rows.clone()], &mut c.d_h[rows])
            }
            None => (&s.state[rows.clone()], &mut s.d_state[rows]),
        };
        let row = &mut da[b * gh..(b + 1) * gh];
        let (da_zr, da_n) = row.split_at_mut(CANDIDATE * h);
        let da_z = &mut da_zr[at(UPDATE)..][..n];
        let da_n = &mut da_n[u.start..u.end];
        let (z, cand) = (&t[at(UPDATE)..][..n], &t[at(CANDIDATE)..][..n]);
        if default {
            gru_grad_row(d_sig, d_tanh, z, cand, h_prev, dh, da_z, da_n, ds);
        } else {
            gru_grad_row(d_ra, d_act, z, cand, h_prev, dh, da_z, da_n, ds);
        }
        if kind.reset_after {
            let (r, rec_n) = (&t[at(RESET)..][..n], &t[3 * h + u.start..][..n]);
            let (da_zr, dn) = row.split_at_mut(CANDIDATE * h);
            let (da_r, dn) = (&mut da_zr[at(RESET)..][..n], &dn[u.start..u.end]);
            let d_rec_n = &mut d_rec[b * gh + at(CANDIDATE)..][..n];
            if default {
                gru_reset_after_row(d_sig, r, rec_n, dn, da_r, d_rec_n);
            } else {
                gru_reset_after_row(d_ra, r, rec_n, dn, da_r, d_rec_n);
            }
        }
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn gru_bwd<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
    ops: O,
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    mut s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
    mut carry: Option<Carry<'_, T>>,
) {
    let h = w.hidden.value();
    let gh = 3 * h;
    gru_bwd_gates(kind, w, &mut s, 0..h, &mut carry);
    // Scratch: rows [B, 3H] of gradients of the recurrent terms (the candidate block written
    // by the gate half when reset-after), then rows [B, H] for r ⊙ h_prev and its gradient.
    let (d_rec, rh) = s.scratch.split_at_mut(s.batch * gh);
    let da = &mut *s.d_proj;
    if !kind.reset_after {
        let (ra, tw) = (kind.recurrent_activation, kind.tape_width_rows(h));
        // d(r ⊙ h_prev) = dn · U_h̃ᵀ, then into r and h_prev.
        let d_rh = &mut *rh;
        d_rh.fill(T::ZERO);
        let rk = &w.recurrent_kernel;
        product_rows_backward(
            ops,
            w.hidden,
            s.batch,
            &[],
            h,
            rk,
            gh,
            2 * h,
            &da[2 * h..],
            gh,
            h,
            d_rh,
            &mut [],
        );
        for b in 0..s.batch {
            let t = &s.tape[b * tw..(b + 1) * tw];
            for j in 0..h {
                let (r, i) = (t[RESET * h + j], b * h + j);
                da[b * gh + RESET * h + j] = d_rh[i] * s.state[i] * ra.derivative_from_output(r);
                s.d_state[i] += d_rh[i] * r;
                // From here on the block holds r ⊙ h_prev, the candidate kernel's input.
                d_rh[i] = r * s.state[i];
            }
        }
        recurrent_backward(
            ops,
            w,
            s.batch,
            d_rh,
            h,
            2 * h,
            h,
            &da[2 * h..],
            gh,
            &mut [],
            d_rk,
            d_rb,
            s.step,
        );
    }
    for b in 0..s.batch {
        d_rec[b * gh..b * gh + 2 * h].copy_from_slice(&da[b * gh..b * gh + 2 * h]);
    }
    let rec_cols = if kind.reset_after { gh } else { 2 * h };
    recurrent_backward(
        ops, w, s.batch, s.state, h, 0, rec_cols, d_rec, gh, s.d_state, d_rk, d_rb, s.step,
    );
}
