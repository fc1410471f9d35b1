//! The floating-point element types the kernels run on (`f32`, `f64`).

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// An element type: `f32` or `f64`.
///
/// Sealed: the kernels, the matrix products and the tolerances are written for IEEE binary32
/// and binary64 only.
pub trait Real:
    Copy
    + Debug
    + Display
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + private::Sealed
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The type's name as the fixtures and the C ABI spell it.
    const NAME: &'static str;
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;

    /// `c = alpha·a·b + beta·c` on strided matrices (`matrixmultiply`'s contract).
    ///
    /// # Safety
    /// Every element addressed through the pointers, dimensions and strides must be valid
    /// (for `c`: writable and not aliased by `a` or `b`).
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

mod private {
    use crate::cell::RecurrentWeights;
    use crate::cpu::gemm::{Mat, Op};
    use crate::cpu::packed::PackedProjection;
    use crate::cpu::{self, Backend, Job};
    use crate::dim::Dim;

    /// Seals [`Real`](super::Real) and routes kernels to the element type's implementation.
    pub trait Sealed: Sized {
        fn run_job<I: Dim, H: Dim>(job: Job<'_, Self, I, H>, backend: Backend);
        fn prepare_weights<I: Dim, H: Dim>(w: &RecurrentWeights<Self, I, H>);
        /// The input kernel packed for this type's projection kernel, where it has one.
        fn packed_projection<I: Dim, H: Dim>(
            w: &RecurrentWeights<Self, I, H>,
        ) -> Option<&PackedProjection>;
        /// The input projection in bfloat16 where this type and the CPU have a kernel for it
        /// (see [`cpu::project_rows_bf16`]); `false` when nothing was written.
        fn project_bf16<I: Dim, H: Dim>(
            w: &RecurrentWeights<Self, I, H>,
            x: &[Self],
            proj: &mut [Self],
        ) -> bool;
        /// A matrix product on this type's own kernel, adding the column sums of `op(b)` to
        /// `sums` (see [`cpu::packed_product`]); `false` when nothing was written.
        #[allow(clippy::too_many_arguments)]
        fn packed_product(
            a: Mat<'_, Self>,
            op_a: Op,
            b: Mat<'_, Self>,
            op_b: Op,
            accumulate: bool,
            c: &mut [Self],
            ldc: usize,
            threads: usize,
            sums: &mut [Self],
        ) -> bool;
    }
    impl Sealed for f32 {
        #[inline]
        fn run_job<I: Dim, H: Dim>(job: Job<'_, Self, I, H>, backend: Backend) {
            cpu::run_f32(job, backend)
        }
        fn prepare_weights<I: Dim, H: Dim>(w: &RecurrentWeights<Self, I, H>) {
            let packed = w.packed();
            let projection = w.packed_projection();
            if w.bf16_inference {
                packed.weights_bf16();
                cpu::packed::prepare_projection_bf16(projection);
            }
        }
        fn packed_projection<I: Dim, H: Dim>(
            w: &RecurrentWeights<Self, I, H>,
        ) -> Option<&PackedProjection> {
            Some(w.packed_projection())
        }
        fn project_bf16<I: Dim, H: Dim>(
            w: &RecurrentWeights<Self, I, H>,
            x: &[Self],
            proj: &mut [Self],
        ) -> bool {
            cpu::project_rows_bf16(w.packed_projection(), x, proj)
        }
        fn packed_product(
            a: Mat<'_, Self>,
            op_a: Op,
            b: Mat<'_, Self>,
            op_b: Op,
            accumulate: bool,
            c: &mut [Self],
            ldc: usize,
            threads: usize,
            sums: &mut [Self],
        ) -> bool {
            cpu::packed_product(a, op_a, b, op_b, accumulate, c, ldc, threads, sums)
        }
    }
    impl Sealed for f64 {
        #[inline]
        fn run_job<I: Dim, H: Dim>(job: Job<'_, Self, I, H>, backend: Backend) {
            cpu::run_f64(job, backend)
        }
        fn prepare_weights<I: Dim, H: Dim>(_: &RecurrentWeights<Self, I, H>) {}
        fn packed_projection<I: Dim, H: Dim>(
            _: &RecurrentWeights<Self, I, H>,
        ) -> Option<&PackedProjection> {
            None
        }
        fn project_bf16<I: Dim, H: Dim>(
            _: &RecurrentWeights<Self, I, H>,
            _: &[Self],
            _: &mut [Self],
        ) -> bool {
            false
        }
        fn packed_product(
            _: Mat<'_, Self>,
            _: Op,
            _: Mat<'_, Self>,
            _: Op,
            _: bool,
            _: &mut [Self],
            _: usize,
            _: usize,
            _: &mut [Self],
        ) -> bool {
            false
        }
    }
}

macro_rules! impl_real {
    ($t:ty, $name:literal, $gemm:path, $blas:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            #[cfg_attr(not(unoptimized), inline(always))]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[cfg_attr(not(unoptimized), inline(always))]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[cfg_attr(not(unoptimized), inline(always))]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[cfg_attr(not(unoptimized), inline(always))]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[cfg_attr(not(unoptimized), inline(always))]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                #[cfg(feature = "openblas")]
                // SAFETY: forwarded contract; the caller guarantees every addressed element is valid.
                if unsafe { $blas(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) } {
                    return;
                }
                // SAFETY: forwarded contract; the caller guarantees every addressed element is valid.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_real!(f32, "f32", matrixmultiply::sgemm, crate::cpu::blas::sgemm);
impl_real!(f64, "f64", matrixmultiply::dgemm, crate::cpu::blas::dgemm);
