//! Vector activations over [`SimdF32`]: `exp`, `sigmoid`, `tanh`, `hard_sigmoid`, `relu`.
//!
//! Accuracy, measured against `f64` maths rounded to `f32` over a sweep of the whole `f32`
//! range (every 97th bit pattern plus the special values; see the tests), identical for every
//! ISA:
//!
//! | function | maximum error | where |
//! |---|---|---|
//! | `exp` | 1 ULP | results ≥ 2⁻¹²⁶; results below flush to 0 (`x < −87.33`) |
//! | `sigmoid` | 2 ULP | outputs ≥ 2⁻¹²⁶; outputs below flush to 0 (`x < −87.33`) |
//! | `tanh` | 2 ULP | everywhere (one formula through `e^{2|x|} − 1`, small `|x|` included) |
//! | `hard_sigmoid`, `relu` | exact | |
//!
//! NaN propagates through every function; `exp(+∞) = +∞`, `exp(−∞) = 0`, `sigmoid(±∞) = 1, 0`,
//! `tanh(±∞) = ±1`. No function produces a subnormal, so no kernel pays for subnormal
//! arithmetic downstream.

use super::simd::SimdF32;

/// Inputs below this give `e^x < 2⁻¹²⁶·1.006`; they return 0 rather than a subnormal.
const EXP_FLUSH: f32 = -87.33;
/// `ln(f32::MAX)`, rounded up to `f32`: from it up `e^x` overflows.
#[cfg_attr(not(test), allow(dead_code))]
const EXP_OVERFLOW: f32 = 88.722_84;

/// Inputs of tanh from which its `f32` value is 1: `tanh 10 = 1 − 4·10⁻⁹`, under half an ULP.
const TANH_ONE: f32 = 10.0;
/// Inputs of sigmoid from which its `f32` value is 1: `e^-20 = 2·10⁻⁹`, under half an ULP of 1.
const SIGMOID_ONE: f32 = 20.0;

/// `(n, r)` with `x = n·ln 2 + r`, `n` integer-valued and `|r| ≤ ln2/2` (for `|n| ≤ 128`).
#[cfg_attr(not(unoptimized), inline(always))]
fn reduce_ln2<S: SimdF32>(s: S, x: S::V) -> (S::V, S::V) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| ≤ 128 (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let n = s.round(s.mul(x, s.splat(LOG2E)));
    let r = s.fma(n, s.splat(-LN2_HI), x);
    (n, s.fma(n, s.splat(-LN2_LO), r))
}

/// `(e^r − 1 − r) / r²` on `|r| ≤ ln2/2`, by its Taylor series to degree 5 (the truncation
/// is below 2·10⁻⁸ of `e^r − 1`).
#[cfg_attr(not(unoptimized), inline(always))]
fn expm1_tail<S: SimdF32>(s: S, r: S::V) -> S::V {
    let mut p = s.splat(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = s.fma(p, r, s.splat(c));
    }
    p
}

/// `e^x`. The cells' activations use its pieces ([`reduce_ln2`], [`exp_in_range`]) with
/// their own range handling; the whole function is the documented, tested vector `exp`.
#[cfg_attr(not(test), allow(dead_code))]
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn exp<S: SimdF32>(s: S, x: S::V) -> S::V {
    let xc = s.min(s.max(x, s.splat(EXP_FLUSH - 1.0)), s.splat(EXP_OVERFLOW));
    let y = exp_in_range(s, xc);
    let y = s.select_lt(x, s.splat(EXP_FLUSH), s.splat(0.0), y);
    let y = s.select_lt(x, s.splat(EXP_OVERFLOW), y, s.splat(f32::INFINITY));
    s.keep_nan(x, y)
}

/// `e^x` for `x` whose `n` (see [`reduce_ln2`]) keeps `2ⁿ` a normal float: −126 ≤ n ≤ 127.
/// Anything else gives an unspecified value, which callers select away.
#[cfg_attr(not(unoptimized), inline(always))]
fn exp_in_range<S: SimdF32>(s: S, x: S::V) -> S::V {
    let (n, r) = reduce_ln2(s, x);
    // e^r = 1 + r·(1 + r·tail): the Taylor series to degree 7 (truncation below 6·10⁻⁹).
    let one = s.splat(1.0);
    let p = s.fma(s.fma(expm1_tail(s, r), r, one), r, one);
    // p·2ⁿ by adding n to p's exponent field: exact in range. At the clamp of `exp`
    // (n = 128, p just above 1) the sum lands on the NaN encodings, so every x from
    // EXP_OVERFLOW up takes +∞ explicitly there.
    s.scale_pow2(p, n)
}

/// `1 / (1 + e^-x)`.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn sigmoid<S: SimdF32>(s: S, x: S::V) -> S::V {
    // From x = SIGMOID_ONE up the result is 1; clamping there keeps 2ⁿ in range. Below
    // EXP_FLUSH the value computed is unspecified and replaced. NaN passes through `max`.
    let z = s.max(s.sub(s.splat(0.0), x), s.splat(-SIGMOID_ONE));
    let one = s.splat(1.0);
    let y = s.div(one, s.add(one, exp_in_range(s, z)));
    // 1/(1 + e^87.33) is the last normal output; below it the division would be subnormal.
    s.select_lt(x, s.splat(EXP_FLUSH), s.splat(0.0), y)
}

/// `tanh(x)`.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn tanh<S: SimdF32>(s: S, x: S::V) -> S::V {
    // tanh|x| = q / (q + 2) with q = e^{2|x|} − 1 = 2ⁿ·(e^r − 1) + (2ⁿ − 1): e^r − 1 comes from
    // a series without its constant term and 2ⁿ − 1 is exact, so small |x| (n = 0) keeps full
    // relative precision with no second formula. NaN passes through `min`.
    let a = s.min(s.abs(x), s.splat(TANH_ONE));
    let (n, r) = reduce_ln2(s, s.add(a, a));
    let em1 = s.fma(s.mul(r, r), expm1_tail(s, r), r);
    let two_n = s.scale_pow2(s.splat(1.0), n);
    let q = s.fma(two_n, em1, s.sub(two_n, s.splat(1.0)));
    // Computed on |x|, signed last: tanh is odd, and −0 stays −0.
    s.copysign(s.div(q, s.add(q, s.splat(2.0))), x)
}

/// Keras 3's `hard_sigmoid`: `clamp(x + 3, 0, 6) / 6`; NaN propagates.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn hard_sigmoid<S: SimdF32>(s: S, x: S::V) -> S::V {
    let t = s.min(s.max(s.add(x, s.splat(3.0)), s.splat(0.0)), s.splat(6.0));
    s.div(t, s.splat(6.0))
}

/// `max(x, 0)`; NaN propagates.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn relu<S: SimdF32>(s: S, x: S::V) -> S::V {
    s.max(x, s.splat(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::Scalar;
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::simd::{Avx2, Avx512};

    /// Applies `f` lane-wise to `xs` under ISA `s`, padding the tail to a full register.
    fn map<S: SimdF32>(s: S, xs: &[f32], f: impl Fn(S, S::V) -> S::V) -> Vec<f32> {
        let mut out = vec![0.0; xs.len()];
        let mut buf = vec![0.0f32; S::LANES];
        for (xc, oc) in xs.chunks(S::LANES).zip(out.chunks_mut(S::LANES)) {
            buf[..xc.len()].copy_from_slice(xc);
            let v = f(s, s.load(&buf));
            s.store(&mut buf, v);
            oc.copy_from_slice(&buf[..xc.len()]);
        }
        out
    }

    /// Distance in units in the last place (0 for equal values, including equal NaNs).
    fn ulps(a: f32, b: f32) -> u32 {
        if a.is_nan() && b.is_nan() || a == b {
            return 0;
        }
        if a.is_nan() || b.is_nan() {
            return u32::MAX;
        }
        // Maps bit patterns to a monotonic integer line (negative floats mirrored).
        let key = |v: f32| -> i64 {
            let i = v.to_bits() as i32;
            (if i < 0 { i32::MIN - i } else { i }) as i64
        };
        (key(a) - key(b)).unsigned_abs().min(u32::MAX as u64) as u32
    }

    /// A sweep of the whole f32 range: every 97th bit pattern of both signs, every value
    /// within 64 ULP of a threshold of the functions (and of half of one, where tanh's
    /// `e^{2|x|}` crosses it), and specials.
    fn sweep() -> Vec<f32> {
        let mut v: Vec<f32> = (0..u32::MAX / 97).map(|k| f32::from_bits(k * 97)).collect();
        for t in [
            EXP_OVERFLOW,
            EXP_FLUSH,
            EXP_FLUSH - 1.0,
            TANH_ONE,
            SIGMOID_ONE,
        ] {
            for c in [t, -t, t / 2.0, -t / 2.0] {
                v.extend((0..129).map(|d| f32::from_bits(c.to_bits() + d - 64)));
            }
        }
        v.extend([
            0.0, -0.0, 1.0, -1.0, 0.4, -0.4, 88.72, 88.73, -87.33, -87.34, 1e-30, -1e-30,
        ]);
        v.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
        ]);
        v
    }

    /// The documented flush: inputs below `EXP_FLUSH` give 0.
    fn flushed(x: f32, v: f64) -> f32 {
        if x < EXP_FLUSH { 0.0 } else { v as f32 }
    }

    /// Worst ULP error of `f` against `want` over the sweep, per available ISA.
    fn worst<S: SimdF32>(
        s: S,
        xs: &[f32],
        f: impl Fn(S, S::V) -> S::V,
        want: impl Fn(f32) -> f32,
    ) -> (u32, f32) {
        let got = map(s, xs, f);
        xs.iter()
            .zip(&got)
            .map(|(&x, &g)| (ulps(g, want(x)), x))
            .max_by_key(|&(u, _)| u)
            .unwrap()
    }

    fn check_all(
        name: &str,
        bound: u32,
        want: impl Fn(f32) -> f32 + Copy,
        scalar: impl Fn(Scalar, f32) -> f32,
        #[cfg(target_arch = "x86_64")] avx2: impl Fn(
            Avx2,
            std::arch::x86_64::__m256,
        ) -> std::arch::x86_64::__m256,
        #[cfg(target_arch = "x86_64")] avx512: impl Fn(
            Avx512,
            std::arch::x86_64::__m512,
        ) -> std::arch::x86_64::__m512,
    ) {
        let xs = sweep();
        let (u, x) = worst(Scalar, &xs, scalar, want);
        assert!(u <= bound, "{name} scalar: {u} ULP at {x:e}");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(t) = Avx2::try_new() {
                let (u, x) = worst(t, &xs, avx2, want);
                assert!(u <= bound, "{name} avx2: {u} ULP at {x:e}");
            }
            if let Some(t) = Avx512::try_new() {
                let (u, x) = worst(t, &xs, avx512, want);
                assert!(u <= bound, "{name} avx512: {u} ULP at {x:e}");
            }
        }
    }

    #[test]
    fn exp_within_1_ulp() {
        check_all(
            "exp",
            1,
            |x| flushed(x, (x as f64).exp()),
            exp,
            #[cfg(target_arch = "x86_64")]
            exp,
            #[cfg(target_arch = "x86_64")]
            exp,
        );
    }

    #[test]
    fn sigmoid_within_2_ulp() {
        check_all(
            "sigmoid",
            2,
            |x| flushed(x, 1.0 / (1.0 + (-(x as f64)).exp())),
            sigmoid,
            #[cfg(target_arch = "x86_64")]
            sigmoid,
            #[cfg(target_arch = "x86_64")]
            sigmoid,
        );
    }

    #[test]
    fn tanh_within_2_ulp() {
        check_all(
            "tanh",
            2,
            |x| (x as f64).tanh() as f32,
            tanh,
            #[cfg(target_arch = "x86_64")]
            tanh,
            #[cfg(target_arch = "x86_64")]
            tanh,
        );
    }

    #[test]
    fn hard_sigmoid_and_relu_exact() {
        let hs = |x: f32| (x + 3.0).clamp(0.0, 6.0) / 6.0;
        check_all(
            "hard_sigmoid",
            0,
            |x| if x.is_nan() { x } else { hs(x) },
            hard_sigmoid,
            #[cfg(target_arch = "x86_64")]
            hard_sigmoid,
            #[cfg(target_arch = "x86_64")]
            hard_sigmoid,
        );
        check_all(
            "relu",
            0,
            |x| if x < 0.0 { 0.0 } else { x },
            relu,
            #[cfg(target_arch = "x86_64")]
            relu,
            #[cfg(target_arch = "x86_64")]
            relu,
        );
    }

    /// No finite input gives NaN, checked on every `f32` with `2⁵ ≤ |x| < 2⁷`: the binades
    /// where `exp` and `sigmoid` overflow or flush and where tanh's `e^{2|x|}` overflows.
    #[test]
    fn no_nan_from_finite_inputs_near_the_thresholds() {
        fn check<S: SimdF32>(s: S, isa: &str) {
            let (lo, hi) = (32.0f32.to_bits(), 128.0f32.to_bits());
            let mut xs = Vec::with_capacity(1 << 16);
            for start in (lo..hi).step_by(1 << 15) {
                xs.clear();
                for bits in start..(start + (1 << 15)).min(hi) {
                    let x = f32::from_bits(bits);
                    xs.extend([x, -x]);
                }
                for (name, f) in [
                    ("exp", exp::<S> as fn(S, S::V) -> S::V),
                    ("sigmoid", sigmoid::<S>),
                    ("tanh", tanh::<S>),
                ] {
                    let ys = map(s, &xs, f);
                    if let Some(i) = ys.iter().position(|y| y.is_nan()) {
                        panic!("{name} {isa}: NaN at {:e}", xs[i]);
                    }
                }
            }
        }
        check(Scalar, "scalar");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(t) = Avx2::try_new() {
                check(t, "avx2");
            }
            if let Some(t) = Avx512::try_new() {
                check(t, "avx512");
            }
        }
    }

    #[test]
    fn special_values() {
        let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        let e = map(Scalar, &xs, exp);
        assert!(e[0].is_nan());
        assert_eq!(&e[1..], &[f32::INFINITY, 0.0, 1.0, 1.0]);
        let g = map(Scalar, &xs, sigmoid);
        assert!(g[0].is_nan());
        assert_eq!(&g[1..], &[1.0, 0.0, 0.5, 0.5]);
        let t = map(Scalar, &xs, tanh);
        assert!(t[0].is_nan());
        assert_eq!(&t[1..3], &[1.0, -1.0]);
        assert_eq!(t[4].to_bits(), (-0.0f32).to_bits());
    }
}
