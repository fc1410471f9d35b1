//! The portable kernels: row-level matrix-vector loops and the fused gate epilogues.
//!
//! A step is the recurrent product for every batch row (see [`super::product_rows`]) into a
//! scratch row, then one pass per row that adds the precomputed input projection, applies the
//! gate activations and updates the state. Loops run to [`Dim`] bounds so that compile-time
//! shapes unroll; inner loops are contiguous and written for auto-vectorisation.

use super::{product_rows, product_rows_backward, sum_rows_into};
use crate::cell::gru::{self, CANDIDATE, GruKind, RESET, UPDATE};
use crate::cell::lstm::{self, LstmKind};
use crate::cell::simple_rnn::SimpleRnnKind;
use crate::cell::{RecurrentWeights, StepBackward, StepForward};
use crate::dim::Dim;
use crate::real::Real;

/// `out[j] += Σ_k v[k] · w[k·ld + j]` for `j < out.len()`, `k < rows`.
#[inline(always)]
pub(crate) fn gemv_acc<T: Real, K: Dim>(rows: K, v: &[T], w: &[T], ld: usize, out: &mut [T]) {
    let n = out.len();
    for (k, &vk) in v[..rows.value()].iter().enumerate() {
        let row = &w[k * ld..k * ld + n];
        for (o, &wv) in out.iter_mut().zip(row) {
            *o += vk * wv;
        }
    }
}

/// `out[k] += Σ_j w[k·ld + j] · d[j]` for `k < rows`, `j < d.len()`.
#[inline(always)]
pub(crate) fn gemv_t_acc<T: Real, K: Dim>(rows: K, d: &[T], w: &[T], ld: usize, out: &mut [T]) {
    let n = d.len();
    for (k, o) in out[..rows.value()].iter_mut().enumerate() {
        let row = &w[k * ld..k * ld + n];
        let mut acc = T::ZERO;
        for (&wv, &dv) in row.iter().zip(d) {
            acc += wv * dv;
        }
        *o += acc;
    }
}

/// `w[k·ld + j] += v[k] · d[j]` for `k < rows`, `j < d.len()`.
#[inline(always)]
pub(crate) fn ger_acc<T: Real, K: Dim>(rows: K, v: &[T], d: &[T], w: &mut [T], ld: usize) {
    let n = d.len();
    for (k, &vk) in v[..rows.value()].iter().enumerate() {
        let row = &mut w[k * ld..k * ld + n];
        for (wv, &dv) in row.iter_mut().zip(d) {
            *wv += vk * dv;
        }
    }
}

/// Recurrent product for every row: `out[b, :n] = h[b] · recurrent_kernel[:, col0..col0+n]
/// + recurrent_bias[col0..col0+n]`, `h` rows `ldh` apart, `out` rows `ldo` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn recurrent<T: Real, I: Dim, H: Dim>(
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
#[inline(always)]
fn recurrent_backward<T: Real, I: Dim, H: Dim>(
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
) {
    let gh = w.gates * w.hidden.value();
    let rk = &w.recurrent_kernel;
    product_rows_backward(w.hidden, batch, h, ldh, rk, gh, col0, d, ldd, n, dh, d_rk);
    if !d_rb.is_empty() {
        sum_rows_into(&mut d_rb[col0..col0 + n], &d[..(batch - 1) * ldd + n], ldd);
    }
}

pub(crate) fn simple_rnn_fwd<T: Real, I: Dim, H: Dim>(
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let (h, b) = (w.hidden.value(), s.batch);
    recurrent(w, b, s.state, h, 0, h, s.scratch, h);
    for ((out, &r), &p) in s.next[..b * h]
        .iter_mut()
        .zip(&s.scratch[..b * h])
        .zip(&s.proj[..b * h])
    {
        *out = kind.activation.apply(p + r);
    }
}

pub(crate) fn simple_rnn_bwd<T: Real, I: Dim, H: Dim>(
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let (h, b) = (w.hidden.value(), s.batch);
    for ((d, &dh), &y) in s.d_proj[..b * h].iter_mut().zip(s.d_next).zip(s.next) {
        *d = dh * kind.activation.derivative_from_output(y);
    }
    s.d_state.fill(T::ZERO);
    recurrent_backward(w, b, s.state, h, 0, h, s.d_proj, h, s.d_state, d_rk, d_rb);
}

pub(crate) fn lstm_fwd<T: Real, I: Dim, H: Dim>(
    kind: &LstmKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    let gh = 4 * h;
    let bh = s.batch * h;
    let (h_prev, c_prev) = s.state.split_at(bh);
    let (h_next, c_next) = s.next.split_at_mut(bh);
    recurrent(w, s.batch, h_prev, h, 0, gh, s.scratch, gh);
    let record = !s.tape.is_empty();
    for b in 0..s.batch {
        let rec = &s.scratch[b * gh..(b + 1) * gh];
        let px = &s.proj[b * gh..(b + 1) * gh];
        for j in 0..h {
            let pre = [0, 1, 2, 3].map(|g| px[g * h + j] + rec[g * h + j]);
            let u = lstm::unit_forward(kind, pre, c_prev[b * h + j]);
            h_next[b * h + j] = u.h;
            c_next[b * h + j] = u.c;
            if record {
                let t = &mut s.tape[b * 5 * h..(b + 1) * 5 * h];
                for g in 0..4 {
                    t[g * h + j] = u.gates[g];
                }
                t[4 * h + j] = u.act_c;
            }
        }
    }
}

pub(crate) fn lstm_bwd<T: Real, I: Dim, H: Dim>(
    kind: &LstmKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let h = w.hidden.value();
    let gh = 4 * h;
    let bh = s.batch * h;
    let (h_prev, c_prev) = s.state.split_at(bh);
    let (dh_next, dc_next) = s.d_next.split_at(bh);
    let (dh_prev, dc_prev) = s.d_state.split_at_mut(bh);
    for b in 0..s.batch {
        let t = &s.tape[b * 5 * h..(b + 1) * 5 * h];
        let da = &mut s.d_proj[b * gh..(b + 1) * gh];
        for j in 0..h {
            let gates = [0, 1, 2, 3].map(|g| t[g * h + j]);
            let i = b * h + j;
            let (d_pre, dc) =
                lstm::unit_backward(kind, gates, t[4 * h + j], c_prev[i], dh_next[i], dc_next[i]);
            for g in 0..4 {
                da[g * h + j] = d_pre[g];
            }
            dc_prev[i] = dc;
        }
    }
    dh_prev.fill(T::ZERO);
    recurrent_backward(
        w, s.batch, h_prev, h, 0, gh, s.d_proj, gh, dh_prev, d_rk, d_rb,
    );
}

pub(crate) fn gru_fwd<T: Real, I: Dim, H: Dim>(
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    let (gh, tw) = (3 * h, kind.tape_width_rows(h));
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    // Scratch: rows [B, 3H] of recurrent terms (z, r, candidate), then rows [B, H] of r ⊙ h_prev.
    let (rec, rh) = s.scratch.split_at_mut(s.batch * gh);
    let rec_cols = if kind.reset_after { gh } else { 2 * h };
    recurrent(w, s.batch, s.state, h, 0, rec_cols, rec, gh);
    for b in 0..s.batch {
        let (rec, px) = (
            &mut rec[b * gh..(b + 1) * gh],
            &s.proj[b * gh..(b + 1) * gh],
        );
        for j in 0..h {
            rec[UPDATE * h + j] = ra.apply(px[UPDATE * h + j] + rec[UPDATE * h + j]);
            rec[RESET * h + j] = ra.apply(px[RESET * h + j] + rec[RESET * h + j]);
            rh[b * h + j] = rec[RESET * h + j] * s.state[b * h + j];
        }
    }
    if !kind.reset_after {
        // The reset-before candidate needs r before its product: (r ⊙ h_prev) · U_h̃.
        recurrent(w, s.batch, rh, h, 2 * h, h, &mut rec[2 * h..], gh);
    }
    let record = !s.tape.is_empty();
    for b in 0..s.batch {
        let (rec, px) = (&rec[b * gh..(b + 1) * gh], &s.proj[b * gh..(b + 1) * gh]);
        for j in 0..h {
            let (z, r, rec_n) = (
                rec[UPDATE * h + j],
                rec[RESET * h + j],
                rec[CANDIDATE * h + j],
            );
            let pre = if kind.reset_after {
                px[CANDIDATE * h + j] + r * rec_n
            } else {
                px[CANDIDATE * h + j] + rec_n
            };
            let cand = act.apply(pre);
            s.next[b * h + j] = gru::blend(z, s.state[b * h + j], cand);
            if record {
                let t = &mut s.tape[b * tw..(b + 1) * tw];
                t[UPDATE * h + j] = z;
                t[RESET * h + j] = r;
                t[CANDIDATE * h + j] = cand;
                if kind.reset_after {
                    t[3 * h + j] = rec_n;
                }
            }
        }
    }
}

pub(crate) fn gru_bwd<T: Real, I: Dim, H: Dim>(
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let h = w.hidden.value();
    let (gh, tw) = (3 * h, kind.tape_width_rows(h));
    let ra = kind.recurrent_activation;
    // Scratch: rows [B, 3H] of gradients of the recurrent terms, then rows [B, H] for r ⊙ h_prev
    // and its gradient.
    let (d_rec, rh) = s.scratch.split_at_mut(s.batch * gh);
    let da = &mut *s.d_proj;
    for b in 0..s.batch {
        let t = &s.tape[b * tw..(b + 1) * tw];
        for j in 0..h {
            let (z, cand) = (t[UPDATE * h + j], t[CANDIDATE * h + j]);
            let i = b * h + j;
            let (dz, dn, dh_direct) = gru::blend_backward(kind, z, cand, s.state[i], s.d_next[i]);
            da[b * gh + UPDATE * h + j] = dz;
            da[b * gh + CANDIDATE * h + j] = dn;
            s.d_state[i] = dh_direct;
        }
    }
    if kind.reset_after {
        for b in 0..s.batch {
            let t = &s.tape[b * tw..(b + 1) * tw];
            for j in 0..h {
                let (r, rec_n, dn) = (
                    t[RESET * h + j],
                    t[3 * h + j],
                    da[b * gh + CANDIDATE * h + j],
                );
                da[b * gh + RESET * h + j] = dn * rec_n * ra.derivative_from_output(r);
                d_rec[b * gh + CANDIDATE * h + j] = dn * r;
            }
        }
    } else {
        // d(r ⊙ h_prev) = dn · U_h̃ᵀ, then into r and h_prev.
        let d_rh = &mut *rh;
        d_rh.fill(T::ZERO);
        product_rows_backward(
            w.hidden,
            s.batch,
            &[],
            h,
            &w.recurrent_kernel,
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
        );
    }
    for b in 0..s.batch {
        d_rec[b * gh..b * gh + 2 * h].copy_from_slice(&da[b * gh..b * gh + 2 * h]);
    }
    let rec_cols = if kind.reset_after { gh } else { 2 * h };
    recurrent_backward(
        w, s.batch, s.state, h, 0, rec_cols, d_rec, gh, s.d_state, d_rk, d_rb,
    );
}
