//! The row-level operations a step kernel is written against ([`RowOps`]), for the portable
//! backend ([`ScalarOps`], any element type) and the SIMD backends ([`SimdOps`], `f32`).

use super::math;
use super::packed;
use super::simd::SimdF32;
use crate::activation::Activation;
use crate::cell::RecurrentWeights;
use crate::dim::Dim;
use crate::real::Real;

/// Matrix-vector products of one batch row and element-wise activations.
///
/// `w` is row-major with rows `ld` apart; only the first `n` columns of each row are used,
/// `n` being the length of the vector along the columns.
pub trait RowOps<T: Real>: Copy {
    /// `out[j] += Σ_k v[k] · w[k·ld + j]` for `j < out.len()`, `k < rows`.
    fn gemv_acc<K: Dim>(self, rows: K, v: &[T], w: &[T], ld: usize, out: &mut [T]);
    /// `out[k] += Σ_j w[k·ld + j] · d[j]` for `k < rows`, `j < d.len()`.
    fn gemv_t_acc<K: Dim>(self, rows: K, d: &[T], w: &[T], ld: usize, out: &mut [T]);
    /// `w[k·ld + j] += v[k] · d[j]` for `k < rows`, `j < d.len()`.
    fn ger_acc<K: Dim>(self, rows: K, v: &[T], d: &[T], w: &mut [T], ld: usize);
    /// `x[j] = act(x[j])`.
    fn activate(self, act: Activation, x: &mut [T]);
    /// `dh[b, u] += d[b, :] · recurrent_kernel[u, :]ᵀ` over all `G·H` columns for rows
    /// `b < batch` and the state units `u` in `units` (whole tiles of [`packed::TILE_UNITS`]; `d`
    /// rows `G·H` apart, `dh` rows `H` apart) on kernels of this backend's own, returning
    /// `false` when it has none (the caller then runs the product). `step` is the backward
    /// step's [`crate::cell::StepBackward::step`].
    #[cfg_attr(not(unoptimized), inline(always))]
    fn recurrent_grad<I: Dim, H: Dim>(
        self,
        _w: &RecurrentWeights<T, I, H>,
        _batch: usize,
        _d: &[T],
        _dh: &mut [T],
        _units: std::ops::Range<usize>,
        _step: usize,
    ) -> bool {
        false
    }
    /// `out[b, g·H + j] = recurrent_bias + h[b, :] · recurrent_kernel[:, g·H + j]` for every
    /// gate `g`, unit `j` in `units` and row `b < batch` (`h` rows `H` apart, `out` rows `ldo`
    /// apart) on kernels of this backend's own, returning `false` when it has none or `units`
    /// are not whole tiles of [`packed::TILE_UNITS`] (the caller then runs the product).
    #[cfg_attr(not(unoptimized), inline(always))]
    fn recurrent_product<I: Dim, H: Dim>(
        self,
        _w: &RecurrentWeights<T, I, H>,
        _batch: usize,
        _h: &[T],
        _units: std::ops::Range<usize>,
        _out: &mut [T],
        _ldo: usize,
    ) -> bool {
        false
    }
}

/// Checks that `w` holds `rows` rows of `n` columns, `ld` apart.
#[cfg_attr(not(unoptimized), inline(always))]
fn check_matrix<T>(w: &[T], rows: usize, n: usize, ld: usize) {
    assert!(
        rows == 0
            || n == 0
            || (rows - 1)
                .checked_mul(ld)
                .and_then(|start| start.checked_add(n))
                .is_some_and(|end| end <= w.len()),
        "matrix out of bounds"
    );
}

/// Plain loops, written for auto-vectorisation (which the ISA wrappers compile for AVX2 or
/// AVX-512 when those backends run `f64`).
#[derive(Debug, Clone, Copy)]
pub struct ScalarOps;

impl<T: Real> RowOps<T> for ScalarOps {
    #[cfg_attr(not(unoptimized), inline(always))]
    fn gemv_acc<K: Dim>(self, rows: K, v: &[T], w: &[T], ld: usize, out: &mut [T]) {
        let n = out.len();
        for (k, &vk) in v[..rows.value()].iter().enumerate() {
            for (o, &wv) in out.iter_mut().zip(&w[k * ld..k * ld + n]) {
                *o += vk * wv;
            }
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn gemv_t_acc<K: Dim>(self, rows: K, d: &[T], w: &[T], ld: usize, out: &mut [T]) {
        let n = d.len();
        for (k, o) in out[..rows.value()].iter_mut().enumerate() {
            let mut acc = T::ZERO;
            for (&wv, &dv) in w[k * ld..k * ld + n].iter().zip(d) {
                acc += wv * dv;
            }
            *o += acc;
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn ger_acc<K: Dim>(self, rows: K, v: &[T], d: &[T], w: &mut [T], ld: usize) {
        let n = d.len();
        for (k, &vk) in v[..rows.value()].iter().enumerate() {
            for (wv, &dv) in w[k * ld..k * ld + n].iter_mut().zip(d) {
                *wv += vk * dv;
            }
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn activate(self, act: Activation, x: &mut [T]) {
        for v in x {
            *v = act.apply(*v);
        }
    }
}

/// Explicit SIMD under ISA `S`, for `f32`.
#[derive(Debug, Clone, Copy)]
pub struct SimdOps<S>(pub S);

/// Registers of accumulators per column tile of the products.
const TILE: usize = 4;
/// Rows of the matrix consumed per sweep of the columns in [`RowOps::gemv_acc`].
const ROW_BLOCK: usize = 8;

impl<S: SimdF32> RowOps<f32> for SimdOps<S> {
    #[cfg_attr(not(unoptimized), inline(always))]
    fn gemv_acc<K: Dim>(self, rows: K, v: &[f32], w: &[f32], ld: usize, out: &mut [f32]) {
        let s = self.0;
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || simd_gemv_acc(s, rows, v, w, ld, out),
        )
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn gemv_t_acc<K: Dim>(self, rows: K, d: &[f32], w: &[f32], ld: usize, out: &mut [f32]) {
        let s = self.0;
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || simd_gemv_t_acc(s, rows, d, w, ld, out),
        )
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn ger_acc<K: Dim>(self, rows: K, v: &[f32], d: &[f32], w: &mut [f32], ld: usize) {
        let s = self.0;
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || simd_ger_acc(s, rows, v, d, w, ld),
        )
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn recurrent_product<I: Dim, H: Dim>(
        self,
        w: &RecurrentWeights<f32, I, H>,
        batch: usize,
        h: &[f32],
        units: std::ops::Range<usize>,
        out: &mut [f32],
        ldo: usize,
    ) -> bool {
        let hidden = w.hidden.value();
        let tile = packed::TILE_UNITS;
        if !units.start.is_multiple_of(tile)
            || (!units.end.is_multiple_of(tile) && units.end != hidden)
        {
            return false;
        }
        let s = self.0;
        let (p, tiles) = (w.packed(), units.start / tile..units.end.div_ceil(tile));
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || packed::recurrent_rows(s, p, batch, h, tiles, out, ldo),
        );
        true
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn recurrent_grad<I: Dim, H: Dim>(
        self,
        w: &RecurrentWeights<f32, I, H>,
        batch: usize,
        d: &[f32],
        dh: &mut [f32],
        units: std::ops::Range<usize>,
        step: usize,
    ) -> bool {
        let s = self.0;
        let p = w.packed();
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || packed::recurrent_grad(s, p, batch, d, dh, units, step % 2 == 1),
        );
        true
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn activate(self, act: Activation, x: &mut [f32]) {
        let s = self.0;
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || match act {
                Activation::Tanh => map(
                    s,
                    x,
                    #[cfg_attr(not(unoptimized), inline(always))]
                    |s, v| math::tanh(s, v),
                ),
                Activation::Sigmoid => map(
                    s,
                    x,
                    #[cfg_attr(not(unoptimized), inline(always))]
                    |s, v| math::sigmoid(s, v),
                ),
                Activation::Relu => map(
                    s,
                    x,
                    #[cfg_attr(not(unoptimized), inline(always))]
                    |s, v| math::relu(s, v),
                ),
                Activation::HardSigmoid => map(
                    s,
                    x,
                    #[cfg_attr(not(unoptimized), inline(always))]
                    |s, v| math::hard_sigmoid(s, v),
                ),
                Activation::Linear => {}
            },
        )
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
fn simd_gemv_acc<S: SimdF32, K: Dim>(
    s: S,
    rows: K,
    v: &[f32],
    w: &[f32],
    ld: usize,
    out: &mut [f32],
) {
    let (l, n, rows) = (S::LANES, out.len(), rows.value());
    check_matrix(w, rows, n, ld);
    let (wp, op) = (w.as_ptr(), out.as_mut_ptr());
    // Blocks of ROW_BLOCK rows sweep the columns: each of those rows is read front to back
    // (a handful of sequential streams the prefetcher follows, even when `ld` is a power of
    // two that would alias every row onto the same cache sets if one column tile ran down
    // all rows), and each accumulator register takes ROW_BLOCK FMAs per load of `out`.
    let mut k0 = 0;
    while k0 < rows {
        let kb = ROW_BLOCK.min(rows - k0);
        let mut vs = [s.splat(0.0); ROW_BLOCK];
        for (r, vr) in vs.iter_mut().enumerate().take(kb) {
            *vr = s.splat(v[k0 + r]);
        }
        let mut j = 0;
        while j + TILE * l <= n {
            // SAFETY: j + 4l ≤ n = out.len(), and check_matrix bounds every row read:
            // (k0 + r)·ld + j + 4l ≤ (rows − 1)·ld + n ≤ w.len().
            unsafe {
                let mut acc = [s.splat(0.0); TILE];
                for (t, a) in acc.iter_mut().enumerate() {
                    *a = s.load_ptr(op.add(j + t * l));
                }
                for (r, &vr) in vs.iter().enumerate().take(kb) {
                    let row = wp.add((k0 + r) * ld + j);
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = s.fma(vr, s.load_ptr(row.add(t * l)), *a);
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    s.store_ptr(op.add(j + t * l), *a);
                }
            }
            j += TILE * l;
        }
        while j + l <= n {
            // SAFETY: as above, for one register.
            unsafe {
                let mut a = s.load_ptr(op.add(j));
                for (r, &vr) in vs.iter().enumerate().take(kb) {
                    a = s.fma(vr, s.load_ptr(wp.add((k0 + r) * ld + j)), a);
                }
                s.store_ptr(op.add(j), a);
            }
            j += l;
        }
        for (jj, o) in out.iter_mut().enumerate().skip(j) {
            for r in 0..kb {
                *o += v[k0 + r] * w[(k0 + r) * ld + jj];
            }
        }
        k0 += kb;
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
fn simd_gemv_t_acc<S: SimdF32, K: Dim>(
    s: S,
    rows: K,
    d: &[f32],
    w: &[f32],
    ld: usize,
    out: &mut [f32],
) {
    let (l, n, rows) = (S::LANES, d.len(), rows.value());
    check_matrix(w, rows, n, ld);
    for (k, o) in out[..rows].iter_mut().enumerate() {
        let row = &w[k * ld..k * ld + n];
        let mut acc = [0; TILE].map(|_| s.splat(0.0));
        let mut j = 0;
        while j + TILE * l <= n {
            for (t, a) in acc.iter_mut().enumerate() {
                let at = j + t * l;
                // SAFETY: at + l ≤ n = row.len() = d.len().
                *a = unsafe {
                    s.fma(
                        s.load_ptr(row.as_ptr().add(at)),
                        s.load_ptr(d.as_ptr().add(at)),
                        *a,
                    )
                };
            }
            j += TILE * l;
        }
        while j + l <= n {
            // SAFETY: j + l ≤ n = row.len() = d.len().
            acc[0] = unsafe {
                s.fma(
                    s.load_ptr(row.as_ptr().add(j)),
                    s.load_ptr(d.as_ptr().add(j)),
                    acc[0],
                )
            };
            j += l;
        }
        let sum = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
        let mut total = s.reduce_sum(sum);
        for (&wv, &dv) in row[j..].iter().zip(&d[j..]) {
            total += wv * dv;
        }
        *o += total;
    }
}

#[cfg_attr(not(unoptimized), inline(always))]
fn simd_ger_acc<S: SimdF32, K: Dim>(s: S, rows: K, v: &[f32], d: &[f32], w: &mut [f32], ld: usize) {
    let (l, n, rows) = (S::LANES, d.len(), rows.value());
    check_matrix(w, rows, n, ld);
    for (k, &vk) in v[..rows].iter().enumerate() {
        let row = &mut w[k * ld..k * ld + n];
        let vs = s.splat(vk);
        let mut j = 0;
        while j + l <= n {
            // SAFETY: j + l ≤ n = row.len() = d.len().
            unsafe {
                let p = row.as_mut_ptr().add(j);
                s.store_ptr(p, s.fma(vs, s.load_ptr(d.as_ptr().add(j)), s.load_ptr(p)));
            }
            j += l;
        }
        for (wv, &dv) in row[j..].iter_mut().zip(&d[j..]) {
            *wv += vk * dv;
        }
    }
}

/// `x[j] = f(x[j])`, a register at a time; the tail goes through a zero-padded register so
/// every element sees the same arithmetic.
#[cfg_attr(not(unoptimized), inline(always))]
fn map<S: SimdF32>(s: S, x: &mut [f32], f: impl Fn(S, S::V) -> S::V) {
    let l = S::LANES;
    let mut chunks = x.chunks_exact_mut(l);
    for c in &mut chunks {
        let v = f(s, s.load(c));
        s.store(c, v);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0.0f32; 16];
        buf[..tail.len()].copy_from_slice(tail);
        let v = f(s, s.load(&buf[..l]));
        s.store(&mut buf[..l], v);
        let len = tail.len();
        tail.copy_from_slice(&buf[..len]);
    }
}
