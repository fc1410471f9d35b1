//! CPU kernels: the input projection over all rows, the recurrent products, the fused gate
//! epilogues, and the dispatch between them.
//!
//! The big products (input projection, and in backward the input and kernel gradients) go
//! through [`gemm`] over all `T·B` rows at once. A recurrent step is two phases: the product of
//! the previous state with the recurrent kernel for every batch row (a row-by-row
//! matrix-vector kernel for small batches, one matrix product otherwise), then the fused
//! epilogue per row — bias, precomputed input projection, gate activations and state update in
//! one pass. Every kernel is generic over [`Dim`](crate::dim::Dim), so compile-time and
//! run-time shapes run the same source.

pub(crate) mod gemm;
pub(crate) mod math;
pub(crate) mod scalar;
pub(crate) mod simd;

use crate::dim::Dim;
use crate::real::Real;
use gemm::{Mat, Op};

/// Up to this many rows a product is done row by row: no packing, and no allocation
/// (matrixmultiply allocates packing buffers), which keeps small streaming steps
/// allocation-free.
pub(crate) const SMALL_ROWS: usize = 4;

/// `out[r, :n] = bias + x[r, :K] · w[:, col0..col0 + n]` for every row `r < rows`.
///
/// `x` rows are `ldx` apart, `w` rows `ldw`, `out` rows `ldo`; `bias` has `n` values or is
/// empty (none). `K` is a [`Dim`] so compile-time shapes unroll the row kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_rows<T: Real, K: Dim>(
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
            scalar::gemv_acc(k, &x[r * ldx..], &w[col0..], ldw, o);
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
pub(crate) fn product_rows_backward<T: Real, K: Dim>(
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
                scalar::gemv_t_acc(k, dr, &w[col0..], ldw, &mut dx[r * ldx..]);
            }
            if !dw.is_empty() {
                scalar::ger_acc(k, &x[r * ldx..], dr, &mut dw[col0..], ldw);
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

/// `proj [N, P] = x [N, I] · kernel [I, P] + bias` (`bias` empty: none), `N = x.len() / I`.
pub(crate) fn project_rows<T: Real, I: Dim>(
    input: I,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    proj: &mut [T],
    p: usize,
) {
    let i = input.value();
    product_rows(input, x.len() / i, x, i, kernel, p, 0, p, bias, proj, p);
}

/// Backward of [`project_rows`]: `dx += d_proj · kernelᵀ`, `d_kernel += xᵀ · d_proj`,
/// `d_bias += Σ_rows d_proj` (skipped when `d_bias` is empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_rows_backward<T: Real, I: Dim>(
    input: I,
    x: &[T],
    kernel: &[T],
    d_proj: &[T],
    p: usize,
    dx: &mut [T],
    d_kernel: &mut [T],
    d_bias: &mut [T],
) {
    let i = input.value();
    product_rows_backward(
        input,
        x.len() / i,
        x,
        i,
        kernel,
        p,
        0,
        d_proj,
        p,
        p,
        dx,
        d_kernel,
    );
    sum_rows_into(d_bias, d_proj, p);
}

/// `acc[j] += Σ_r d[r·ld + j]` (no-op when `acc` is empty).
pub(crate) fn sum_rows_into<T: Real>(acc: &mut [T], d: &[T], ld: usize) {
    if acc.is_empty() {
        return;
    }
    for row in d.chunks(ld) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Fills `out` with `bias`, or zeros when `bias` is empty.
#[inline(always)]
pub(crate) fn init_with_bias<T: Real>(out: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        out.fill(T::ZERO);
    } else {
        out.copy_from_slice(&bias[..out.len()]);
    }
}
