//! CPU kernels: the input projection over all rows, the fused recurrent steps, and the
//! dispatch between them.
//!
//! The big products (input projection, and in backward the input and kernel gradients) go
//! through [`gemm`] over all `T·B` rows at once. The recurrent step — the product of the
//! previous state with the recurrent kernel, the bias, the gate activations and the state
//! update — is one fused pass per batch row in [`scalar`]. Every kernel is generic over
//! [`Dim`](crate::dim::Dim), so compile-time and run-time shapes run the same source.

pub(crate) mod gemm;
pub(crate) mod scalar;

use crate::dim::Dim;
use crate::real::Real;
use gemm::Op;

/// Below this many rows the projection is done row by row: no packing, and no allocation
/// (matrixmultiply allocates packing buffers), which keeps the streaming step allocation-free.
const SMALL_ROWS: usize = 4;

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
    let rows = x.len() / i;
    debug_assert_eq!(proj.len(), rows * p);
    if rows <= SMALL_ROWS {
        for (xr, out) in x.chunks_exact(i).zip(proj.chunks_exact_mut(p)) {
            init_with_bias(out, bias);
            scalar::gemv_acc(input, xr, kernel, p, out);
        }
        return;
    }
    gemm::gemm(rows, i, p, x, Op::N, kernel, Op::N, T::ZERO, proj);
    if !bias.is_empty() {
        for out in proj.chunks_exact_mut(p) {
            for (o, &b) in out.iter_mut().zip(bias) {
                *o += b;
            }
        }
    }
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
    let rows = x.len() / i;
    gemm::gemm(rows, p, i, d_proj, Op::N, kernel, Op::T, T::ONE, dx);
    gemm::gemm(i, rows, p, x, Op::T, d_proj, Op::N, T::ONE, d_kernel);
    if !d_bias.is_empty() {
        for row in d_proj.chunks_exact(p) {
            for (d, &g) in d_bias.iter_mut().zip(row) {
                *d += g;
            }
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
