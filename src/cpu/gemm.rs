//! Safe, bounds-checked wrapper over the large matrix products (matrixmultiply, or OpenBLAS
//! with the `openblas` feature), split across threads inside [`with_threads`].

use std::cell::Cell as StdCell;

use crate::real::Real;

thread_local! {
    static THREADS: StdCell<usize> = const { StdCell::new(1) };
}

/// Products smaller than this many multiply-adds stay on the calling thread.
const SPLIT_MIN_FMAS: usize = 1 << 21;

/// Runs `f` with the products it issues from this thread split across `threads` threads.
///
/// A product is split along the longer side of its result into contiguous blocks, one per
/// thread. Every element is still computed by one thread through the same reduction over the
/// inner dimension, so results are bit-identical to one thread's.
pub(crate) fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREADS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREADS.with(|c| c.replace(threads.max(1))));
    f()
}

/// Raw pointers that may cross to worker threads.
#[derive(Clone, Copy)]
struct SendPtrs<T>(*const T, *const T, *mut T);
// SAFETY: only used to hand the read-only operands and disjoint blocks of one output of a
// product to the jobs of one `workers::run`, which all end before it returns (see `gemm`).
unsafe impl<T> Send for SendPtrs<T> {}
// SAFETY: as above; shared copies only read the pointers themselves.
unsafe impl<T> Sync for SendPtrs<T> {}

impl<T> SendPtrs<T> {
    /// The pointers (a method, so that closures capture the whole wrapper, not its fields).
    fn get(self) -> (*const T, *const T, *mut T) {
        (self.0, self.1, self.2)
    }
}

/// A row-major matrix view: `rows × cols`, row `r` starting at `data[r · ld]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A dense `rows × cols` matrix.
    #[cfg(test)]
    pub fn dense(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            ld: cols,
        }
    }
    /// Whether every element lies inside `data`.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.ld + self.cols <= len
    }
}

/// How an operand is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// `c = beta·c + op(a)·op(b)` where `c` is `m × n` (`m = c_rows`, `n = c_cols`), row `r` of `c`
/// at `c[r · ldc]`. With `beta == 0` the previous contents of `c` are ignored (NaN included).
///
/// # Panics
/// When a view does not fit its buffer or the shapes disagree: a bug in the caller, which
/// validates user-supplied lengths before reaching here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Real>(
    a: Mat<'_, T>,
    op_a: Op,
    b: Mat<'_, T>,
    op_b: Op,
    beta: T,
    c: &mut [T],
    c_rows: usize,
    c_cols: usize,
    ldc: usize,
) {
    let (m, k) = if op_a == Op::N {
        (a.rows, a.cols)
    } else {
        (a.cols, a.rows)
    };
    let (kb, n) = if op_b == Op::N {
        (b.rows, b.cols)
    } else {
        (b.cols, b.rows)
    };
    let cv: Mat<'_, T> = Mat {
        data: &[],
        rows: c_rows,
        cols: c_cols,
        ld: ldc,
    };
    assert!(m == c_rows && n == c_cols && k == kb, "gemm shapes");
    assert!(
        a.fits(a.data.len()) && b.fits(b.data.len()) && cv.fits(c.len()),
        "gemm bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            for v in &mut c[r * ldc..r * ldc + n] {
                *v = if beta == T::ZERO { T::ZERO } else { beta * *v };
            }
        }
        return;
    }
    let strides = |op: Op, ld: usize| match op {
        Op::N => (ld as isize, 1),
        Op::T => (1, ld as isize),
    };
    let (rsa, csa) = strides(op_a, a.ld);
    let (rsb, csb) = strides(op_b, b.ld);
    let ptrs = SendPtrs(a.data.as_ptr(), b.data.as_ptr(), c.as_mut_ptr());
    // The block of result rows `rows` and columns `cols`.
    let block = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let (pa, pb, pc) = ptrs.get();
        // SAFETY: the assertions above bound every index the strides address inside the three
        // slices, and the block's offsets stay inside them (`rows` ⊆ 0..m, `cols` ⊆ 0..n); `c`
        // is borrowed mutably, so it aliases neither `a` nor `b`.
        unsafe {
            T::gemm_raw(
                rows.len(),
                k,
                cols.len(),
                T::ONE,
                pa.offset(rows.start as isize * rsa),
                rsa,
                csa,
                pb.offset(cols.start as isize * csb),
                rsb,
                csb,
                beta,
                pc.add(rows.start * ldc + cols.start),
                ldc as isize,
                1,
            );
        }
    };
    let threads = THREADS.with(|t| t.get()).min(m.max(n));
    if threads <= 1 || m.saturating_mul(n).saturating_mul(k) < SPLIT_MIN_FMAS {
        return block(0..m, 0..n);
    }
    let (long, split_rows) = if m >= n { (m, true) } else { (n, false) };
    let part = |i: usize| i * long / threads..(i + 1) * long / threads;
    let run = |i: usize| {
        if split_rows {
            block(part(i), 0..n)
        } else {
            block(0..m, part(i))
        }
    };
    // The blocks are disjoint parts of `c`, and `a`, `b` are only read.
    crate::workers::run(threads, &run);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_operand_orders_and_strides_match_a_plain_product() {
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
        for (aa, oa) in [
            (Mat::dense(&a, m, k), Op::N),
            (Mat::dense(&at, k, m), Op::T),
        ] {
            for (bb, ob) in [
                (Mat::dense(&b, k, n), Op::N),
                (Mat::dense(&bt, n, k), Op::T),
            ] {
                let mut c = vec![f64::NAN; m * n];
                gemm(aa, oa, bb, ob, 0.0, &mut c, m, n, n);
                assert_eq!(c, want, "{oa:?} {ob:?}");
            }
        }
        // c with a leading dimension wider than n leaves the gaps alone.
        let mut c = vec![7.0; m * (n + 2)];
        gemm(
            Mat::dense(&a, m, k),
            Op::N,
            Mat::dense(&b, k, n),
            Op::N,
            0.0,
            &mut c,
            m,
            n,
            n + 2,
        );
        for i in 0..m {
            assert_eq!(&c[i * (n + 2)..i * (n + 2) + n], &want[i * n..(i + 1) * n]);
            assert_eq!(c[i * (n + 2) + n], 7.0);
        }
    }
}
