//! Safe, bounds-checked wrapper over the large matrix products (for `f32` on the SIMD backends
//! the projection kernel, [`crate::cpu::packed_product`]; otherwise matrixmultiply, or OpenBLAS
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
pub struct Mat<'a, T> {
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
    /// Whether every element lies inside `data` (in arithmetic that cannot wrap).
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1)
                .checked_mul(self.ld)
                .and_then(|start| start.checked_add(self.cols))
                .is_some_and(|end| end <= len)
    }
}

/// How an operand is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
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
    product(a, op_a, b, op_b, beta, c, c_rows, c_cols, ldc, &mut []);
}

/// [`gemm`] with `beta = 1`, also adding `Σ_k op(b)[k, j]` to `sums[j]` (`n` values, summed in
/// order of `k`): on the packed path the sums come from the pass that packs `op(b)`, which
/// reads it anyway (BPTT's bias gradient beside its kernel gradient).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_summing<T: Real>(
    a: Mat<'_, T>,
    op_a: Op,
    b: Mat<'_, T>,
    op_b: Op,
    c: &mut [T],
    c_rows: usize,
    c_cols: usize,
    ldc: usize,
    sums: &mut [T],
) {
    assert!(sums.is_empty() || sums.len() == c_cols, "gemm sums");
    product(a, op_a, b, op_b, T::ONE, c, c_rows, c_cols, ldc, sums);
}

/// `sums[j] += Σ_k op(b)[k, j]` in order of `k` (no-op when `sums` is empty).
pub(crate) fn add_column_sums<T: Real>(sums: &mut [T], b: Mat<'_, T>, op_b: Op) {
    if sums.is_empty() {
        return;
    }
    match op_b {
        Op::N => {
            for r in 0..b.rows {
                for (s, &v) in sums.iter_mut().zip(&b.data[r * b.ld..][..b.cols]) {
                    *s += v;
                }
            }
        }
        Op::T => {
            for (j, s) in sums.iter_mut().enumerate().take(b.rows) {
                for &v in &b.data[j * b.ld..][..b.cols] {
                    *s += v;
                }
            }
        }
    }
}

/// [`gemm`] and [`gemm_summing`].
#[allow(clippy::too_many_arguments)]
fn product<T: Real>(
    a: Mat<'_, T>,
    op_a: Op,
    b: Mat<'_, T>,
    op_b: Op,
    beta: T,
    c: &mut [T],
    c_rows: usize,
    c_cols: usize,
    ldc: usize,
    sums: &mut [T],
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
    // Rows of `c` that do not overlap: the threads below write blocks of them at once.
    assert!(c_rows <= 1 || ldc >= c_cols, "gemm ldc");
    if m == 0 || n == 0 {
        return add_column_sums(sums, b, op_b);
    }
    if k == 0 {
        for r in 0..m {
            for v in &mut c[r * ldc..r * ldc + n] {
                *v = if beta == T::ZERO { T::ZERO } else { beta * *v };
            }
        }
        return;
    }
    let threads = THREADS.with(|t| t.get());
    let split = threads > 1 && m.saturating_mul(n).saturating_mul(k) >= SPLIT_MIN_FMAS;
    if (beta == T::ZERO || beta == T::ONE)
        && T::packed_product(
            a,
            op_a,
            b,
            op_b,
            beta == T::ONE,
            c,
            ldc,
            if split { threads } else { 1 },
            sums,
        )
    {
        return;
    }
    add_column_sums(sums, b, op_b);
    let threads = threads.min(m.max(n));
    if threads <= 1 || !split {
        return product_raw(a, op_a, b, op_b, beta, c, m, n, ldc);
    }
    let (rsa, csa) = strides(op_a, a.ld);
    let (rsb, csb) = strides(op_b, b.ld);
    let ptrs = SendPtrs(a.data.as_ptr(), b.data.as_ptr(), c.as_mut_ptr());
    // The block of result rows `rows` and columns `cols`.
    let block = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let (pa, pb, pc) = ptrs.get();
        // SAFETY: the assertions above bound every index the strides address inside the three
        // slices, and the block's offsets stay inside them (`rows` ⊆ 0..m, `cols` ⊆ 0..n); `c`
        // is borrowed mutably, so it aliases neither `a` nor `b`; with `ldc ≥ n` (asserted)
        // the blocks of different threads share no element of `c`.
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

/// Row and column strides of an operand read as `op`, rows `ld` apart.
fn strides(op: Op, ld: usize) -> (isize, isize) {
    match op {
        Op::N => (ld as isize, 1),
        Op::T => (1, ld as isize),
    }
}

/// [`gemm`]'s product on `T::gemm_raw` (matrixmultiply, or OpenBLAS) on this thread, for
/// operands whose views fit their buffers.
#[allow(clippy::too_many_arguments)]
fn product_raw<T: Real>(
    a: Mat<'_, T>,
    op_a: Op,
    b: Mat<'_, T>,
    op_b: Op,
    beta: T,
    c: &mut [T],
    m: usize,
    n: usize,
    ldc: usize,
) {
    let k = if op_a == Op::N { a.cols } else { a.rows };
    let cv: Mat<'_, T> = Mat {
        data: &[],
        rows: m,
        cols: n,
        ld: ldc,
    };
    assert!(a.fits(a.data.len()) && b.fits(b.data.len()) && cv.fits(c.len()));
    let (rsa, csa) = strides(op_a, a.ld);
    let (rsb, csb) = strides(op_b, b.ld);
    // SAFETY: the assertion bounds every element the strides address inside the three
    // slices; `c` is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            T::ONE,
            a.data.as_ptr(),
            rsa,
            csa,
            b.data.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Backend, with_backend};
    use proptest::prelude::*;

    /// Deterministic values in [−2, 2).
    fn val(i: usize) -> f32 {
        ((i * 7919 % 1000) as f32 - 500.0) / 250.0
    }

    /// A dense view of `data` that `op` reads as `rows × cols`.
    fn read_as(data: &[f32], rows: usize, cols: usize, op: Op) -> Mat<'_, f32> {
        match op {
            Op::N => Mat::dense(data, rows, cols),
            Op::T => Mat::dense(data, cols, rows),
        }
    }

    /// An `f32` product case: `op(a) [m, k] · op(b) [k, n]` with leading dimensions padded by
    /// `pad`, `beta` 0 or 1.
    #[derive(Debug, Clone)]
    struct Case {
        m: usize,
        k: usize,
        n: usize,
        pad: usize,
        op_a: Op,
        op_b: Op,
        beta: f32,
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
    }

    fn case() -> impl Strategy<Value = Case> {
        let op = prop_oneof![Just(Op::N), Just(Op::T)];
        (
            1..70usize,
            1..90usize,
            1..150usize,
            0..3usize,
            op.clone(),
            op,
            any::<bool>(),
        )
            .prop_flat_map(|(m, k, n, pad, op_a, op_b, acc)| {
                let value = prop_oneof![
                    40 => -1.0f32..1.0,
                    4 => -1e4f32..1e4,
                    1 => Just(f32::NAN),
                    1 => Just(f32::INFINITY),
                    1 => Just(f32::NEG_INFINITY),
                ];
                let (ar, ac) = if op_a == Op::N { (m, k) } else { (k, m) };
                let (br, bc) = if op_b == Op::N { (k, n) } else { (n, k) };
                (
                    proptest::collection::vec(value.clone(), ar * (ac + pad)),
                    proptest::collection::vec(value, br * (bc + pad)),
                    proptest::collection::vec(-1.0f32..1.0, m * (n + pad)),
                )
                    .prop_map(move |(a, b, c)| Case {
                        m,
                        k,
                        n,
                        pad,
                        op_a,
                        op_b,
                        beta: if acc { 1.0 } else { 0.0 },
                        a,
                        b,
                        c,
                    })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(48)
        })]

        /// `f32` products (the packed kernel on the SIMD backends, matrixmultiply on the
        /// scalar one) against an `f64` sum, on every backend this CPU runs: shapes off the
        /// register and panel widths, transposed and strided operands, NaN and ±∞ propagating
        /// as in `f32` arithmetic, the gaps between the rows of `c` untouched.
        #[test]
        fn f32_products_match_an_f64_sum(case in case()) {
            let Case { m, k, n, pad, op_a, op_b, beta, ref a, ref b, ref c } = case;
            let (lda, ldb, ldc) = (
                if op_a == Op::N { k + pad } else { m + pad },
                if op_b == Op::N { n + pad } else { k + pad },
                n + pad,
            );
            let at = |i: usize, q: usize| if op_a == Op::N { a[i * lda + q] } else { a[q * lda + i] };
            let bt = |q: usize, j: usize| if op_b == Op::N { b[q * ldb + j] } else { b[j * ldb + q] };
            let am = Mat { data: a, rows: if op_a == Op::N { m } else { k }, cols: if op_a == Op::N { k } else { m }, ld: lda };
            let bm = Mat { data: b, rows: if op_b == Op::N { k } else { n }, cols: if op_b == Op::N { n } else { k }, ld: ldb };
            for backend in Backend::available() {
                let mut got = c.clone();
                with_backend(backend, || gemm(am, op_a, bm, op_b, beta, &mut got, m, n, ldc)).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|q| at(i, q) as f64 * bt(q, j) as f64);
                        let start = beta as f64 * c[i * ldc + j] as f64;
                        let scale = start.abs() + terms.clone().map(f64::abs).sum::<f64>();
                        let want = start + terms.sum::<f64>();
                        let g = got[i * ldc + j] as f64;
                        if want.is_nan() || scale.is_infinite() {
                            // An ∞ among the terms: f32 sums may meet ∞ − ∞ in another order
                            // than f64; only a NaN in `want` must come out NaN.
                            prop_assert!(!want.is_nan() || g.is_nan(), "{backend:?} ({i}, {j}): {g} vs {want}");
                        } else {
                            prop_assert!((g - want).abs() <= 1e-5 * (1.0 + scale), "{backend:?} ({i}, {j}): {g} vs {want}");
                        }
                    }
                    prop_assert_eq!(&got[i * ldc + n..i * ldc + ldc], &c[i * ldc + n..i * ldc + ldc]);
                }
            }
        }
    }

    /// A product large enough to split gives the same bits on two threads as on one, on every
    /// backend, with both operand orders.
    #[test]
    fn two_threads_give_the_bits_of_one() {
        let (m, k, n) = (203, 97, 131);
        assert!(m * k * n >= SPLIT_MIN_FMAS);
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 17)).collect();
        for backend in Backend::available() {
            for op_a in [Op::N, Op::T] {
                let am = read_as(&a, m, k, op_a);
                let run = |threads| {
                    let mut c: Vec<f32> = (0..m * n).map(|i| val(i + 3)).collect();
                    with_backend(backend, || {
                        with_threads(threads, || {
                            gemm(am, op_a, Mat::dense(&b, k, n), Op::N, 1.0, &mut c, m, n, n)
                        })
                    })
                    .unwrap();
                    c
                };
                let (one, two) = (run(1), run(2));
                assert!(
                    one.iter()
                        .zip(&two)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{backend:?} {op_a:?}"
                );
            }
        }
    }

    /// The paths the random shapes above are too small for: reductions long enough to go in
    /// blocks (transposed and not), and a transposed left operand copied to rows for a wide
    /// output; against an `f64` sum, on every backend.
    #[test]
    fn blocked_reductions_and_copied_operands_match_an_f64_sum() {
        for (m, k, n, op_a) in [
            (9, 1400, 70, Op::N),
            (13, 300, 40, Op::T),
            (5, 40, 1030, Op::T),
        ] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 11)).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| val(i + 5)).collect();
            let am = read_as(&a, m, k, op_a);
            let at = |i: usize, q: usize| match op_a {
                Op::N => a[i * k + q],
                Op::T => a[q * m + i],
            };
            for backend in Backend::available() {
                let mut c = c0.clone();
                with_backend(backend, || {
                    gemm(am, op_a, Mat::dense(&b, k, n), Op::N, 1.0, &mut c, m, n, n)
                })
                .unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|q| at(i, q) as f64 * b[q * n + j] as f64);
                        let scale = 1.0 + terms.clone().map(f64::abs).sum::<f64>();
                        let want = c0[i * n + j] as f64 + terms.sum::<f64>();
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale,
                            "{backend:?} {m}x{k}x{n} {op_a:?} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `gemm_summing` adds the column sums of `op(b)` in order of `k`, the bits of a plain
    /// running sum, on every backend and on one and two threads (whose packing splits the
    /// columns), with the product unchanged.
    #[test]
    fn summing_adds_the_column_sums_of_b() {
        for (m, k, n, op_b) in [
            (3, 5, 7, Op::N),
            (64, 300, 200, Op::N),
            (64, 300, 200, Op::T),
        ] {
            let a: Vec<f32> = (0..m * k).map(val).collect();
            let b: Vec<f32> = (0..k * n).map(|i| val(i + 7)).collect();
            let bm = read_as(&b, k, n, op_b);
            let bt = |q: usize, j: usize| match op_b {
                Op::N => b[q * n + j],
                Op::T => b[j * k + q],
            };
            let start: Vec<f32> = (0..n).map(|j| val(j + 3)).collect();
            let mut want = start.clone();
            for q in 0..k {
                for (j, w) in want.iter_mut().enumerate() {
                    *w += bt(q, j);
                }
            }
            for backend in Backend::available() {
                for threads in [1, 2] {
                    let (mut c, mut c_plain) = (vec![1.0f32; m * n], vec![1.0f32; m * n]);
                    let mut sums = start.clone();
                    with_backend(backend, || {
                        with_threads(threads, || {
                            let am = Mat::dense(&a, m, k);
                            gemm_summing(am, Op::N, bm, op_b, &mut c, m, n, n, &mut sums);
                            gemm(am, Op::N, bm, op_b, 1.0, &mut c_plain, m, n, n);
                        })
                    })
                    .unwrap();
                    assert_eq!(c, c_plain, "{backend:?} {threads}");
                    assert!(
                        sums.iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{backend:?} {threads} {op_b:?}"
                    );
                }
            }
        }
    }

    /// Products inside a `share_packing` scope for `b` give the bits they give outside it, on
    /// every backend and on one and two threads: two left operands against `b` (the second
    /// reusing the first's panels and column sums), `b` read as another shape (its first
    /// rows, transposed) and another operand, between them.
    #[test]
    fn shared_packing_gives_the_bits_of_separate_products() {
        let (k, n) = (300, 70);
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 7)).collect();
        let other: Vec<f32> = (0..k * n).map(|i| val(i + 29)).collect();
        let lefts: Vec<Vec<f32>> = (0..4)
            .map(|s| (0..k * 40).map(|i| val(i + 13 * s)).collect())
            .collect();
        // (left, its op, rows of c, the right operand as read) for each product, in order.
        let products = || {
            let shaped = Mat::dense(&b, k, n);
            [
                (Mat::dense(&lefts[0], k, 40), Op::T, 40, shaped, Op::N),
                (
                    Mat::dense(&lefts[1], 40, k),
                    Op::N,
                    40,
                    Mat::dense(&other, k, n),
                    Op::N,
                ),
                (
                    Mat::dense(&lefts[2], 40, 30),
                    Op::N,
                    40,
                    Mat::dense(&b, 30, 30),
                    Op::T,
                ),
                (Mat::dense(&lefts[3], 40, k), Op::N, 40, shaped, Op::N),
            ]
        };
        for backend in Backend::available() {
            for threads in [1, 2] {
                let run = |shared: bool| {
                    let mut out = Vec::new();
                    with_backend(backend, || {
                        with_threads(threads, || {
                            let mut all = || {
                                for (a, op_a, m, bm, op_b) in products() {
                                    let cols = if op_b == Op::N { bm.cols } else { bm.rows };
                                    let (mut c, mut sums) =
                                        (vec![0.5f32; m * cols], vec![0.0; cols]);
                                    gemm_summing(
                                        a, op_a, bm, op_b, &mut c, m, cols, cols, &mut sums,
                                    );
                                    out.push((c, sums));
                                }
                            };
                            if shared {
                                crate::cpu::share_packing(&b, all)
                            } else {
                                all()
                            }
                        })
                    })
                    .unwrap();
                    out
                };
                let bits = |v: &[(Vec<f32>, Vec<f32>)]| -> Vec<Vec<u32>> {
                    v.iter()
                        .map(|(c, s)| c.iter().chain(s).map(|x| x.to_bits()).collect())
                        .collect()
                };
                assert_eq!(bits(&run(true)), bits(&run(false)), "{backend:?} {threads}");
            }
        }
    }

    /// `beta = 0` ignores what `c` held, NaN included, on every backend.
    #[test]
    fn overwriting_ignores_nan_in_c() {
        let (m, k, n) = (5, 7, 33);
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        for backend in Backend::available() {
            let mut c = vec![f32::NAN; m * n];
            with_backend(backend, || {
                gemm(
                    Mat::dense(&a, m, k),
                    Op::N,
                    Mat::dense(&b, k, n),
                    Op::N,
                    0.0,
                    &mut c,
                    m,
                    n,
                    n,
                )
            })
            .unwrap();
            assert!(c.iter().all(|&v| v == 0.875), "{backend:?}");
        }
    }

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
