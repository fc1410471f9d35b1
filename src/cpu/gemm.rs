//! Safe, bounds-checked wrapper over the large matrix products (matrixmultiply).

use crate::real::Real;

/// How a row-major operand is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// `c[m, n] = beta·c + a·b`, every matrix row-major and dense; `a` is `[m, k]` for
/// [`Op::N`] or stored `[k, m]` for [`Op::T`], likewise `b` (`[k, n]` or stored `[n, k]`).
/// With `beta == 0` the previous contents of `c` are ignored (NaN included).
///
/// # Panics
/// When a buffer is shorter than its dimensions say: that is a bug in the caller, which
/// validates user-supplied lengths before reaching here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    op_a: Op,
    b: &[T],
    op_b: Op,
    beta: T,
    c: &mut [T],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in &mut c[..m * n] {
            *v = if beta == T::ZERO { T::ZERO } else { beta * *v };
        }
        return;
    }
    let (rsa, csa) = match op_a {
        Op::N => (k as isize, 1),
        Op::T => (1, m as isize),
    };
    let (rsb, csb) = match op_b {
        Op::N => (n as isize, 1),
        Op::T => (1, k as isize),
    };
    // SAFETY: the assertion above bounds every index the strides address: a and b are dense
    // [m, k] / [k, n] matrices (in either storage order) inside their slices, c is a dense
    // [m, n] matrix inside `c`, which is borrowed mutably and so aliases neither.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            T::ONE,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_operand_orders_match_a_plain_product() {
        let (m, k, n) = (3, 5, 4);
        let a: Vec<f64> = (0..m * k).map(|v| v as f64 * 0.5 - 2.0).collect();
        let b: Vec<f64> = (0..k * n).map(|v| 1.0 - v as f64 * 0.25).collect();
        let at: Vec<f64> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f64> = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect();
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        for (aa, oa) in [(&a, Op::N), (&at, Op::T)] {
            for (bb, ob) in [(&b, Op::N), (&bt, Op::T)] {
                let mut c = vec![f64::NAN; m * n];
                gemm(m, k, n, aa, oa, bb, ob, 0.0, &mut c);
                assert_eq!(c, want, "{oa:?} {ob:?}");
            }
        }
    }
}
