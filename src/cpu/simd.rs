//! Instruction-set tokens and the small vector interface every SIMD kernel is written against.
//!
//! A token (`Scalar`, [`Avx2`], [`Avx512`]) can only be obtained after the CPU has been checked
//! to support its instructions, so holding one is the proof the `unsafe` intrinsic calls below
//! rely on. Kernels are `#[cfg_attr(not(unoptimized), inline(always))]` functions generic over [`SimdF32`]; a thin
//! `#[target_feature]` wrapper per ISA instantiates them so that every intrinsic inlines into
//! code compiled for that ISA.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::{Index, IndexMut};

/// Vectors of `f32` lanes and the operations the kernels need.
pub(crate) trait SimdF32: Copy + Send + Sync + 'static {
    /// A register of `LANES` floats.
    type V: Copy;
    /// Lanes per register.
    const LANES: usize;
    /// The `16 / LANES` registers that hold 16 floats: one tile of the packed kernels. Arrays
    /// of it are exactly as large as the accumulators they stand for, so a kernel's register
    /// block is neither zero-filled nor copied beyond its real width.
    type X16: Copy
        + AsRef<[Self::V]>
        + AsMut<[Self::V]>
        + Index<usize, Output = Self::V>
        + IndexMut<usize>;
    /// Every lane of every register of an [`X16`](Self::X16) `v`.
    fn splat16(self, v: f32) -> Self::X16;
    /// Runs `f` in a function compiled for this ISA, so that the intrinsics `f` reaches are
    /// inlined into a small body rather than left as calls in a large one.
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R;
    /// Every lane `v`.
    fn splat(self, v: f32) -> Self::V;
    /// Loads `LANES` floats from `s[0..LANES]`.
    fn load(self, s: &[f32]) -> Self::V;
    /// Stores `LANES` floats into `s[0..LANES]`.
    fn store(self, s: &mut [f32], v: Self::V);
    /// Loads `LANES` floats from `p`.
    ///
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load_ptr(self, p: *const f32) -> Self::V;
    /// Stores `LANES` floats to `p`.
    ///
    /// # Safety
    /// `p..p + LANES` must be writable.
    unsafe fn store_ptr(self, p: *mut f32, v: Self::V);
    /// Hints that the cache line holding `p` will be read soon (no-op without SIMD). Any
    /// address is allowed: a prefetch never faults.
    #[cfg_attr(not(unoptimized), inline(always))]
    fn prefetch(self, p: *const u8) {
        let _ = p;
    }
    /// Loads `LANES` pairs of bfloat16 values from `p` (`2·LANES` values, pair `i` at
    /// `p[2i], p[2i + 1]`) and widens them exactly: returns (first of each pair, second).
    ///
    /// # Safety
    /// `p..p + 2·LANES` must be readable.
    unsafe fn load_bf16_pairs_ptr(self, p: *const u16) -> (Self::V, Self::V);
    /// The sum of the lanes.
    fn reduce_sum(self, v: Self::V) -> f32;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b` (IEEE division).
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, fused where the ISA has it.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise `if b < a { b } else { a }` — returns `a` when either is NaN.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `if b > a { b } else { a }` — returns `a` when either is NaN.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, a: Self::V) -> Self::V;
    /// `p · 2^n` by adding the integer-valued `n` to `p`'s exponent field (no range checks:
    /// the caller keeps the result's exponent inside `[1, 255]`).
    fn scale_pow2(self, p: Self::V, n: Self::V) -> Self::V;
    /// `|a|`.
    fn abs(self, a: Self::V) -> Self::V;
    /// Copies the sign bit of `s` onto `|a|`.
    fn copysign(self, a: Self::V, s: Self::V) -> Self::V;
    /// Lane-wise `if cond_lhs < cond_rhs { a } else { b }`.
    fn select_lt(self, lhs: Self::V, rhs: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `if x is NaN { x } else { r }`.
    #[cfg_attr(not(test), allow(dead_code))]
    fn keep_nan(self, x: Self::V, r: Self::V) -> Self::V;
}

/// The portable "ISA": one lane, plain Rust arithmetic (the reference instance of the
/// vector maths in tests; the portable kernels themselves use `ops::ScalarOps`).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Scalar;

impl SimdF32 for Scalar {
    type V = f32;
    const LANES: usize = 1;
    type X16 = [f32; 16];
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat16(self, v: f32) -> [f32; 16] {
        [self.splat(v); 16]
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat(self, v: f32) -> f32 {
        v
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn load(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn store(self, s: &mut [f32], v: f32) {
        s[0] = v;
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_ptr(self, p: *const f32) -> f32 {
        // SAFETY: the caller guarantees `p` is readable.
        unsafe { *p }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn store_ptr(self, p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees `p` is writable.
        unsafe { *p = v }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_bf16_pairs_ptr(self, p: *const u16) -> (f32, f32) {
        // SAFETY: the caller guarantees p[0] and p[1] are readable.
        let (a, b) = unsafe { (*p, *p.add(1)) };
        (
            f32::from_bits((a as u32) << 16),
            f32::from_bits((b as u32) << 16),
        )
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn reduce_sum(self, v: f32) -> f32 {
        v
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        // Not `mul_add`: without hardware FMA that is a slow library call.
        a * b + c
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn min(self, a: f32, b: f32) -> f32 {
        if b < a { b } else { a }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn max(self, a: f32, b: f32) -> f32 {
        if b > a { b } else { a }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn round(self, a: f32) -> f32 {
        a.round_ties_even()
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn scale_pow2(self, p: f32, n: f32) -> f32 {
        f32::from_bits((p.to_bits() as i32).wrapping_add((n as i32) << 23) as u32)
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn copysign(self, a: f32, s: f32) -> f32 {
        a.copysign(s)
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn select_lt(self, lhs: f32, rhs: f32, a: f32, b: f32) -> f32 {
        if lhs < rhs { a } else { b }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn keep_nan(self, x: f32, r: f32) -> f32 {
        if x.is_nan() { x } else { r }
    }
}

/// AVX2 + FMA (8 lanes). Only [`Avx2::try_new`] makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub fn try_new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// AVX-512F (16 lanes). Only [`Avx512::try_new`] makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    /// The token, if this CPU has AVX-512F (and AVX2 + FMA, used by shared code).
    pub fn try_new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        .then_some(Avx512(()))
    }
}

// SAFETY (all `unsafe` blocks in this impl): an `Avx2` value exists only after `try_new` found
// AVX2 and FMA on this CPU, so the intrinsics are supported; loads and stores go through
// slices whose length is asserted to cover the 8 lanes.
#[cfg(target_arch = "x86_64")]
impl SimdF32 for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    type X16 = [__m256; 2];
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat16(self, v: f32) -> [__m256; 2] {
        [self.splat(v); 2]
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: see the impl.
        unsafe { run(f) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat(self, v: f32) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_set1_ps(v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn load(self, s: &[f32]) -> __m256 {
        assert!(s.len() >= 8);
        // SAFETY: see the impl; 8 readable floats.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn store(self, s: &mut [f32], v: __m256) {
        assert!(s.len() >= 8);
        // SAFETY: see the impl; 8 writable floats.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn prefetch(self, p: *const u8) {
        // SAFETY: see the impl; a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_ptr(self, p: *const f32) -> __m256 {
        // SAFETY: see the impl; the caller guarantees 8 readable floats.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn store_ptr(self, p: *mut f32, v: __m256) {
        // SAFETY: see the impl; the caller guarantees 8 writable floats.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_bf16_pairs_ptr(self, p: *const u16) -> (__m256, __m256) {
        // SAFETY: see the impl; the caller guarantees 16 readable values. Little-endian: the
        // first of a pair is the low half of its 32-bit lane.
        unsafe {
            let lanes = _mm256_loadu_si256(p.cast());
            let first = _mm256_slli_epi32::<16>(lanes);
            let second = _mm256_and_si256(lanes, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
            (_mm256_castsi256_ps(first), _mm256_castsi256_ps(second))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn reduce_sum(self, v: __m256) -> f32 {
        // SAFETY: see the impl.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // minps returns its second operand when either is NaN: pass `a` second.
        // SAFETY: see the impl.
        unsafe { _mm256_min_ps(b, a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_max_ps(b, a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn round(self, a: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn scale_pow2(self, p: __m256, n: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe {
            let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
            _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn abs(self, a: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn copysign(self, a: __m256, s: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            _mm256_or_ps(_mm256_andnot_ps(sign, a), _mm256_and_ps(sign, s))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn select_lt(self, lhs: __m256, rhs: __m256, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_LT_OQ>(lhs, rhs)) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn keep_nan(self, x: __m256, r: __m256) -> __m256 {
        // SAFETY: see the impl.
        unsafe { _mm256_blendv_ps(r, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) }
    }
}

// SAFETY (all `unsafe` blocks in this impl): an `Avx512` value exists only after `try_new`
// found AVX-512F on this CPU; loads and stores go through slices asserted to cover 16 lanes.
#[cfg(target_arch = "x86_64")]
impl SimdF32 for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    type X16 = [__m512; 1];
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat16(self, v: f32) -> [__m512; 1] {
        [self.splat(v); 1]
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn vectorize<R>(self, f: impl FnOnce() -> R) -> R {
        #[target_feature(enable = "avx512f,avx2,fma")]
        #[inline]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: see the impl.
        unsafe { run(f) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn splat(self, v: f32) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_set1_ps(v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn load(self, s: &[f32]) -> __m512 {
        assert!(s.len() >= 16);
        // SAFETY: see the impl; 16 readable floats.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn store(self, s: &mut [f32], v: __m512) {
        assert!(s.len() >= 16);
        // SAFETY: see the impl; 16 writable floats.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn prefetch(self, p: *const u8) {
        // SAFETY: see the impl; a prefetch reads nothing architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_ptr(self, p: *const f32) -> __m512 {
        // SAFETY: see the impl; the caller guarantees 16 readable floats.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn store_ptr(self, p: *mut f32, v: __m512) {
        // SAFETY: see the impl; the caller guarantees 16 writable floats.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    unsafe fn load_bf16_pairs_ptr(self, p: *const u16) -> (__m512, __m512) {
        // SAFETY: see the impl; the caller guarantees 32 readable values. Little-endian: the
        // first of a pair is the low half of its 32-bit lane.
        unsafe {
            let lanes = _mm512_loadu_si512(p.cast());
            let first = _mm512_slli_epi32::<16>(lanes);
            let second = _mm512_and_si512(lanes, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
            (_mm512_castsi512_ps(first), _mm512_castsi512_ps(second))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn reduce_sum(self, v: __m512) -> f32 {
        // SAFETY: see the impl.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_min_ps(b, a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_max_ps(b, a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn round(self, a: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn scale_pow2(self, p: __m512, n: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe {
            let e = _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n));
            _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn abs(self, a: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_abs_ps(a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn copysign(self, a: __m512, s: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe {
            let sign = _mm512_set1_epi32(i32::MIN);
            let mag = _mm512_andnot_si512(sign, _mm512_castps_si512(a));
            let sg = _mm512_and_si512(sign, _mm512_castps_si512(s));
            _mm512_castsi512_ps(_mm512_or_si512(mag, sg))
        }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn select_lt(self, lhs: __m512, rhs: __m512, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(lhs, rhs), b, a) }
    }
    #[cfg_attr(not(unoptimized), inline(always))]
    fn keep_nan(self, x: __m512, r: __m512) -> __m512 {
        // SAFETY: see the impl.
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), r, x) }
    }
}
