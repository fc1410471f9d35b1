//! The portable fused step kernels.
//!
//! One pass per batch row: the recurrent product `h_prev · recurrent_kernel + recurrent_bias`
//! into a scratch row, then the gate activations and the state update unit by unit, reading the
//! precomputed input projection. Loops run to [`Dim`] bounds so that compile-time shapes
//! unroll; the inner loops are contiguous and written for auto-vectorisation.

use super::init_with_bias;
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

/// `acc += d` element-wise (bias gradients; no-op when `acc` is empty).
#[inline(always)]
fn add_into<T: Real>(acc: &mut [T], d: &[T]) {
    for (a, &v) in acc.iter_mut().zip(d) {
        *a += v;
    }
}

/// `out = h_prev · recurrent_kernel[:, cols] + recurrent_bias[cols]` for one row.
#[inline(always)]
fn recurrent_row<T: Real, I: Dim, H: Dim>(
    w: &RecurrentWeights<T, I, H>,
    h_prev: &[T],
    cols: std::ops::Range<usize>,
    out: &mut [T],
) {
    let bias = if w.recurrent_bias.is_empty() {
        &[][..]
    } else {
        &w.recurrent_bias[cols.clone()]
    };
    init_with_bias(out, bias);
    gemv_acc(
        w.hidden,
        h_prev,
        &w.recurrent_kernel[cols.start..],
        w.gates * w.hidden.value(),
        out,
    );
}

pub(crate) fn simple_rnn_fwd<T: Real, I: Dim, H: Dim>(
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    for b in 0..s.batch {
        let rows = b * h..(b + 1) * h;
        let rec = &mut s.scratch[rows.clone()];
        recurrent_row(w, &s.state[rows.clone()], 0..h, rec);
        for ((out, &r), &p) in s.next[rows.clone()]
            .iter_mut()
            .zip(rec.iter())
            .zip(&s.proj[rows])
        {
            *out = kind.activation.apply(p + r);
        }
    }
}

pub(crate) fn simple_rnn_bwd<T: Real, I: Dim, H: Dim>(
    kind: &SimpleRnnKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepBackward<'_, T>,
    d_rk: &mut [T],
    d_rb: &mut [T],
) {
    let h = w.hidden.value();
    for b in 0..s.batch {
        let rows = b * h..(b + 1) * h;
        let da = &mut s.d_proj[rows.clone()];
        for ((d, &dh), &y) in da
            .iter_mut()
            .zip(&s.d_next[rows.clone()])
            .zip(&s.next[rows.clone()])
        {
            *d = dh * kind.activation.derivative_from_output(y);
        }
        let dh_prev = &mut s.d_state[rows.clone()];
        dh_prev.fill(T::ZERO);
        gemv_t_acc(w.hidden, da, &w.recurrent_kernel, h, dh_prev);
        ger_acc(w.hidden, &s.state[rows], da, d_rk, h);
        add_into(d_rb, da);
    }
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
    let record = !s.tape.is_empty();
    for b in 0..s.batch {
        let rec = &mut s.scratch[b * gh..(b + 1) * gh];
        recurrent_row(w, &h_prev[b * h..(b + 1) * h], 0..gh, rec);
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
        let dh = &mut dh_prev[b * h..(b + 1) * h];
        dh.fill(T::ZERO);
        gemv_t_acc(w.hidden, da, &w.recurrent_kernel, gh, dh);
        ger_acc(w.hidden, &h_prev[b * h..(b + 1) * h], da, d_rk, gh);
        add_into(d_rb, da);
    }
}

pub(crate) fn gru_fwd<T: Real, I: Dim, H: Dim>(
    kind: &GruKind,
    w: &RecurrentWeights<T, I, H>,
    s: StepForward<'_, T>,
) {
    let h = w.hidden.value();
    let (gh, sw, tw) = (3 * h, 4 * h, kind.tape_width_rows(h));
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    let record = !s.tape.is_empty();
    for b in 0..s.batch {
        let h_prev = &s.state[b * h..(b + 1) * h];
        let px = &s.proj[b * gh..(b + 1) * gh];
        let (rec, rh) = s.scratch[b * sw..(b + 1) * sw].split_at_mut(gh);
        let out = &mut s.next[b * h..(b + 1) * h];
        if kind.reset_after {
            recurrent_row(w, h_prev, 0..gh, rec);
        } else {
            recurrent_row(w, h_prev, 0..2 * h, &mut rec[..2 * h]);
        }
        // Gates z and r first: the reset-before candidate needs r before its product.
        for j in 0..h {
            rec[UPDATE * h + j] = ra.apply(px[UPDATE * h + j] + rec[UPDATE * h + j]);
            rec[RESET * h + j] = ra.apply(px[RESET * h + j] + rec[RESET * h + j]);
        }
        if !kind.reset_after {
            for j in 0..h {
                rh[j] = rec[RESET * h + j] * h_prev[j];
            }
            recurrent_row(w, rh, 2 * h..gh, &mut rec[2 * h..]);
        }
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
            out[j] = gru::blend(z, h_prev[j], cand);
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
    let (gh, sw, tw) = (3 * h, 4 * h, kind.tape_width_rows(h));
    let ra = kind.recurrent_activation;
    for b in 0..s.batch {
        let t = &s.tape[b * tw..(b + 1) * tw];
        let h_prev = &s.state[b * h..(b + 1) * h];
        let dh_next = &s.d_next[b * h..(b + 1) * h];
        let dh_prev = &mut s.d_state[b * h..(b + 1) * h];
        let da = &mut s.d_proj[b * gh..(b + 1) * gh];
        // d_rec: gradient of the recurrent product's output (bias included); rh: r ⊙ h_prev.
        let (d_rec, rh) = s.scratch[b * sw..(b + 1) * sw].split_at_mut(gh);
        for j in 0..h {
            let (z, cand) = (t[UPDATE * h + j], t[CANDIDATE * h + j]);
            let (dz, dn, dh_direct) = gru::blend_backward(kind, z, cand, h_prev[j], dh_next[j]);
            da[UPDATE * h + j] = dz;
            da[CANDIDATE * h + j] = dn;
            dh_prev[j] = dh_direct;
        }
        if kind.reset_after {
            for j in 0..h {
                let (r, rec_n, dn) = (t[RESET * h + j], t[3 * h + j], da[CANDIDATE * h + j]);
                da[RESET * h + j] = dn * rec_n * ra.derivative_from_output(r);
                d_rec[CANDIDATE * h + j] = dn * r;
            }
        } else {
            // d(r ⊙ h_prev) = U_h̃ · dn, then into r and h_prev.
            let d_rh = &mut rh[..h];
            d_rh.fill(T::ZERO);
            gemv_t_acc(
                w.hidden,
                &da[2 * h..],
                &w.recurrent_kernel[2 * h..],
                gh,
                d_rh,
            );
            for j in 0..h {
                let r = t[RESET * h + j];
                da[RESET * h + j] = d_rh[j] * h_prev[j] * ra.derivative_from_output(r);
                dh_prev[j] += d_rh[j] * r;
                d_rec[CANDIDATE * h + j] = da[CANDIDATE * h + j];
            }
            // The candidate's kernel gradient is taken against r ⊙ h_prev.
            for j in 0..h {
                rh[j] = t[RESET * h + j] * h_prev[j];
            }
            ger_acc(w.hidden, &rh[..h], &da[2 * h..], &mut d_rk[2 * h..], gh);
        }
        d_rec[..2 * h].copy_from_slice(&da[..2 * h]);
        let rec_cols = if kind.reset_after { gh } else { 2 * h };
        gemv_t_acc(
            w.hidden,
            &d_rec[..rec_cols],
            &w.recurrent_kernel,
            gh,
            dh_prev,
        );
        ger_acc(w.hidden, h_prev, &d_rec[..rec_cols], d_rk, gh);
        add_into(d_rb, d_rec);
    }
}
