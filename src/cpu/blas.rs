//! The large products through the system's OpenBLAS (feature `openblas`).
//!
//! Debian's OpenBLAS picks its kernels by CPU detection at load time and takes some AVX-512
//! CPUs for much older ones (about 5× slower products); `OPENBLAS_CORETYPE=SkylakeX` in the
//! environment overrides it. OpenBLAS also runs its own thread pool: `OPENBLAS_NUM_THREADS`
//! sets its size independently of this library's thread count.

// Only linked for their libraries.
use blas_src as _;
use openblas_src as _;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

unsafe extern "C" {
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn cblas_dgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f64,
        a: *const f64,
        lda: i32,
        b: *const f64,
        ldb: i32,
        beta: f64,
        c: *mut f64,
        ldc: i32,
    );
}

/// The CBLAS form of an `rows × cols` operand with matrixmultiply's strides: transpose flag
/// and leading dimension, when one stride is 1 and the leading dimension is legal.
fn operand(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(i32, i32)> {
    let (trans, ld, min_ld) = if cs == 1 {
        (NO_TRANS, rs, cols)
    } else if rs == 1 {
        (TRANS, cs, rows)
    } else {
        return None;
    };
    let ld = i32::try_from(ld).ok()?;
    (ld >= 1 && ld as usize >= min_ld).then_some((trans, ld))
}

macro_rules! cblas_gemm {
    ($name:ident, $t:ty, $cblas:ident) => {
        /// `c = alpha·a·b + beta·c` (`a` `m × k`, `b` `k × n`, `c` `m × n`) with
        /// matrixmultiply's stride arguments, through CBLAS; `false` (nothing done) when the
        /// strides or sizes have no CBLAS form.
        ///
        /// # Safety
        /// As `matrixmultiply`'s: every element the strides address is valid, `c` aliases
        /// neither `a` nor `b`.
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $name(
            m: usize,
            k: usize,
            n: usize,
            alpha: $t,
            a: *const $t,
            rsa: isize,
            csa: isize,
            b: *const $t,
            rsb: isize,
            csb: isize,
            beta: $t,
            c: *mut $t,
            rsc: isize,
            csc: isize,
        ) -> bool {
            let dims = (i32::try_from(m), i32::try_from(k), i32::try_from(n));
            let (Ok(m32), Ok(k32), Ok(n32)) = dims else {
                return false;
            };
            let (Some((ta, lda)), Some((tb, ldb)), Some((NO_TRANS, ldc))) = (
                operand(m, k, rsa, csa),
                operand(k, n, rsb, csb),
                operand(m, n, rsc, csc),
            ) else {
                return false;
            };
            // SAFETY: the same elements as the caller's contract, described to CBLAS by
            // row-major layout, transpose flags and leading dimensions checked above.
            unsafe {
                $cblas(
                    ROW_MAJOR, ta, tb, m32, n32, k32, alpha, a, lda, b, ldb, beta, c, ldc,
                )
            };
            true
        }
    };
}

cblas_gemm!(sgemm, f32, cblas_sgemm);
cblas_gemm!(dgemm, f64, cblas_dgemm);
