//! Property tests: the sequence engine running every built-in cell, in `f64` and in `f32`,
//! against the plain `f64` oracle in `fused_rnn::reference`.
//!
//! Every case draws a shape (`T` 1..=6, `B` 1..=17 or 32..=35, `I` 1..=11, `H` 1..=37 or
//! 65..=70, so that 1 and sizes that are not multiples of any SIMD width occur, and both step
//! paths: see the strategy), the flags (bias, initial state,
//! `go_backwards`, `return_sequences`, layout, an upstream gradient on the final state), and
//! random weights, inputs and upstream gradients. The engine's outputs, final states and every
//! gradient of `seq::bptt` are compared with the reference's. For `f32` the reference is fed
//! the very same (rounded) weights and inputs, so only the arithmetic differs.
//!
//! Proptest prints the shrunk failing case; no regression file is written (the test tree is
//! kept free of generated files).

use fused_rnn::cell::{CellKind, Recurrent, RecurrentWeights};
use fused_rnn::prelude::*;
use fused_rnn::real::Real;
use fused_rnn::reference::{self, RefCell, RefKind};
use fused_rnn::{Backend, with_backend};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------------------------
// Tolerances: an element passes when `|got − want| ≤ atol·scale + rtol·|want|`, where `scale` is
// `max(1, max |want|)` over the whole tensor. The `scale` makes `atol` relative to the tensor's
// magnitude: matrix products and sums over time and batch lose accuracy relative to the sum of
// the magnitudes of their terms, not to the (possibly cancelled) result, so an element much
// smaller than its neighbours may carry an absolute error of the order of eps·(largest term).
// ---------------------------------------------------------------------------------------------

/// An `atol + rtol·|want|` tolerance (see above for `atol`'s scale).
#[derive(Debug, Clone, Copy)]
struct Tol {
    atol: f64,
    rtol: f64,
}

/// `f64` engine vs `f64` reference, outputs and states: both evaluate the same expressions in
/// a different order (blocked matrix products, derivatives from outputs instead of from
/// pre-activations), which costs a few ulps per operation, amplified by cancellation in sums
/// of large terms. Over ~3·10⁵ cases the largest error seen was 9% of the bound (gradients
/// with saturating inputs); typical errors are ~1e-14.
const F64_FWD: Tol = Tol {
    atol: 1e-10,
    rtol: 1e-10,
};

/// `f64` gradients: as [`F64_FWD`], per time step — BPTT sums one contribution per step, each
/// carrying the forward error of its step, so the bound is multiplied by `T` (see [`bptt_tol`]).
const F64_BPTT: Tol = F64_FWD;

/// `f32` engine vs `f64` reference, outputs and states: `f32` rounds at 6e-8 relative; a step
/// of `H ≤ 13` units over `I ≤ 11` inputs accumulates a few tens of roundings, and a run of up
/// to 6 steps feeds them forward through the recurrence. 1e-4 (≈ 1700 ulps) covers that with a
/// margin (over ~3·10⁵ cases the largest error seen was 14% of a bound, the gradient one
/// below), and is still far below any error a wrong gate, index or sign would make.
const F32_FWD: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};

/// `f32` gradients: as [`F32_FWD`], per time step (see [`bptt_tol`]). Derivatives in `f32`
/// are taken from rounded outputs (`σ' = y(1−y)`, `tanh' = 1 − y²`), whose absolute error
/// `~eps·|y|` the `atol·scale` term absorbs.
const F32_BPTT: Tol = F32_FWD;

/// Large operands: a pre-activation `Σ_j x_j·W_jg + Σ_j h_j·U_jg + …` whose terms are large
/// (inputs up to 1e3, relu states that grow further) has an absolute rounding error of about
/// `ε·(I·max|x| + H·max|h|)` (`|W|, |U| ≤ 1` here) however small the sum; and a saturated gate
/// derivative computed from a rounded output (`y(1−y)`, `1 − y²`) is off by up to `ε`
/// absolutely, which the weight gradients `Σ x·d_pre`, `Σ h·d_pre` multiply by `|x|` or `|h|`.
/// Both errors are absolute and proportional to the operands' magnitude, not to the result's,
/// so `atol` gets a further `OPERAND_ULPS · ε · (I·max|x| + H·max|h|)` (ε of the engine's type;
/// ~1e-12 in `f64`; in `f32` ~4e-6 for normal cases and up to ~3e-3 with inputs of 1e3 — still
/// far from the O(1) errors of a wrong formula).
const OPERAND_ULPS: f64 = 1.0;

/// `base` plus the operand-magnitude term of [`OPERAND_ULPS`] for the engine type `T`, from
/// the inputs `x` and every state `h` (initial, and each step's output).
fn with_operands<T: Real>(base: Tol, c: &Case, x: &[f64], h: &[f64]) -> Tol {
    let eps = if T::NAME == "f32" {
        f64::from(f32::EPSILON)
    } else {
        f64::EPSILON
    };
    let max = |v: &[f64]| v.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Tol {
        atol: base.atol + OPERAND_ULPS * eps * (c.i as f64 * max(x) + c.h as f64 * max(h)),
        rtol: base.rtol,
    }
}

/// The gradient tolerance for a run of `t` steps: BPTT sums one contribution per step, each
/// carrying its step's error (and feeds the error of later steps into earlier ones), so the
/// bound grows linearly with `T`.
fn bptt_tol(per_step: Tol, t: usize) -> Tol {
    Tol {
        atol: per_step.atol * t as f64,
        rtol: per_step.rtol * t as f64,
    }
}

/// Kinks: `relu` at 0 and `hard_sigmoid` at ±3 have derivatives that jump (0 at the kink, as
/// in Keras and PyTorch). A pre-activation within rounding distance of a kink may fall on the
/// other side in the engine than in the reference; the outputs still agree (the functions are
/// continuous) but a gradient differs by O(1), which no tolerance can absorb. Gradients are
/// therefore not compared for a run whose [`reference::kink_margin`] is below
/// `KINK_ULPS · ε · (I + H + 2) · T` relatively (rounding of a sum of `I + H + 2` terms, fed
/// through `T` steps) or below [`UNDERFLOW`] absolutely (in `f32`, `σ(a)` is exactly 0 below
/// `a ≈ −88`, so an LSTM cell state `i·c̃ ≈ 1e-90 > 0` in `f64` is exactly 0 — relu's kink —
/// in `f32`). This skips the `f32` gradients of 0.5–3% of the relu / hard_sigmoid cases —
/// but of ~90% of the saturating relu-LSTM cases, whose gates underflow — and the `f64`
/// gradients of ~20% of the saturating relu-LSTM cases (σ below 1e-300) and of no other.
const KINK_ULPS: f64 = 8.0;

/// The absolute kink margin below which values may have underflowed (see [`KINK_ULPS`]):
/// `1e8` times the smallest normal number of the type.
const UNDERFLOW: f64 = 1e8;

fn near_kink<T: Real>(m: reference::KinkMargin, c: &Case) -> bool {
    let (eps, min_normal) = if T::NAME == "f32" {
        (f64::from(f32::EPSILON), f64::from(f32::MIN_POSITIVE))
    } else {
        (f64::EPSILON, f64::MIN_POSITIVE)
    };
    m.relative < KINK_ULPS * eps * (c.i + c.h + 2) as f64 * c.t as f64
        || m.absolute < UNDERFLOW * min_normal
}

/// Compares one tensor; NaN only matches NaN.
fn check(what: &str, got: &[f64], want: &[f64], tol: Tol) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: length", what);
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() || g.is_nan() {
            prop_assert!(
                w.is_nan() && g.is_nan(),
                "{}[{}]: got {}, want {}",
                what,
                k,
                g,
                w
            );
            continue;
        }
        let allowed = tol.atol * scale + tol.rtol * w.abs();
        prop_assert!(
            (g - w).abs() <= allowed,
            "{}[{}]: got {:e}, want {:e}, |diff| {:e} > allowed {:e} ({:?}, scale {:e})",
            what,
            k,
            g,
            w,
            (g - w).abs(),
            allowed,
            tol,
            scale
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The kinds under test.
// ---------------------------------------------------------------------------------------------

use Activation::{HardSigmoid, Linear, Relu, Sigmoid, Tanh};

const fn simple(activation: Activation) -> RefKind {
    RefKind::SimpleRnn { activation }
}
const fn lstm(activation: Activation, recurrent_activation: Activation) -> RefKind {
    RefKind::Lstm {
        activation,
        recurrent_activation,
    }
}
const fn gru(activation: Activation, recurrent_activation: Activation, ra: bool) -> RefKind {
    RefKind::Gru {
        activation,
        recurrent_activation,
        reset_after: ra,
    }
}

/// Every cell variant the property tests cover.
const KINDS: [RefKind; 12] = [
    simple(Tanh),
    simple(Relu),
    simple(Sigmoid),
    simple(Linear),
    simple(HardSigmoid),
    lstm(Tanh, Sigmoid),
    lstm(Tanh, HardSigmoid),
    lstm(Relu, Sigmoid),
    gru(Tanh, Sigmoid, true),
    gru(Tanh, Sigmoid, false),
    gru(Tanh, HardSigmoid, true),
    gru(Tanh, HardSigmoid, false),
];

// ---------------------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------------------

/// Magnitudes of the drawn inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magnitude {
    /// Inputs in ±2, weights in ±1: gates mostly in their sensitive range.
    Normal,
    /// Inputs drawn from ±2, ±30 or ±1e3 per element: gates saturate, relu grows large.
    Saturating,
}

/// One drawn problem, in `f64`; the `f32` run rounds it.
#[derive(Debug, Clone)]
struct Case {
    kind: RefKind,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    layout: Layout,
    go_backwards: bool,
    return_sequences: bool,
    /// Only read through `Debug`, when proptest prints a failing case.
    #[allow(dead_code)]
    magnitude: Magnitude,
    kernel: Vec<f64>,
    recurrent_kernel: Vec<f64>,
    biases: Option<(Vec<f64>, Vec<f64>)>,
    /// In `layout`.
    x: Vec<f64>,
    initial: Option<Vec<f64>>,
    /// Shaped like `y`, in `layout`.
    dy: Vec<f64>,
    d_final: Option<Vec<f64>>,
}

impl Case {
    fn spec(&self) -> SeqSpec {
        SeqSpec::new(self.t, self.b)
            .layout(self.layout)
            .go_backwards(self.go_backwards)
            .return_sequences(self.return_sequences)
    }
}

fn maybe<S: Strategy + 'static>(on: bool, s: S) -> BoxedStrategy<Option<S::Value>>
where
    S::Value: Clone,
{
    if on {
        s.prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    }
}

fn case(kind: RefKind, magnitude: Magnitude) -> impl Strategy<Value = Case> {
    (
        1..=6usize,
        // Up to 31 rows the forward step runs the packed kernels, in row blocks of 8, 6, 4, 2
        // and 1; from 32 rows the matrix-product path (SimpleRNN, and gated cells past 64
        // units: see `cpu::fuses`).
        prop_oneof![3 => 1..=17usize, 1 => 32..=35usize],
        1..=11usize,
        // Past 2·16 so that full AVX-512 registers, register tiles and tails all occur; past
        // 64 for the matrix-product path of the gated cells.
        prop_oneof![5 => 1..=37usize, 1 => 65..=70usize],
        any::<[bool; 6]>(),
    )
        .prop_flat_map(move |(t, b, i, h, flags)| {
            let [
                bias,
                init,
                go_backwards,
                return_sequences,
                batch_major,
                d_final,
            ] = flags;
            let (g, s) = (kind.gates(), kind.states());
            let x = match magnitude {
                Magnitude::Normal => vec(-2.0..2.0f64, t * b * i).boxed(),
                Magnitude::Saturating => vec(
                    prop_oneof![-2.0..2.0f64, -30.0..30.0f64, -1e3..1e3f64],
                    t * b * i,
                )
                .boxed(),
            };
            let y_len = if return_sequences { t * b * h } else { b * h };
            (
                vec(-1.0..1.0f64, i * g * h),
                vec(-1.0..1.0f64, h * g * h),
                maybe(bias, (vec(-0.5..0.5f64, g * h), vec(-0.5..0.5f64, g * h))),
                x,
                maybe(init, vec(-1.0..1.0f64, s * b * h)),
                vec(-1.0..1.0f64, y_len),
                maybe(d_final, vec(-1.0..1.0f64, s * b * h)),
            )
                .prop_map(
                    move |(kernel, recurrent_kernel, biases, x, initial, dy, d_final)| Case {
                        kind,
                        t,
                        b,
                        i,
                        h,
                        layout: if batch_major {
                            Layout::BatchMajor
                        } else {
                            Layout::TimeMajor
                        },
                        go_backwards,
                        return_sequences,
                        magnitude,
                        kernel,
                        recurrent_kernel,
                        biases,
                        x,
                        initial,
                        dy,
                        d_final,
                    },
                )
        })
}

// ---------------------------------------------------------------------------------------------
// Running the engine and the reference.
// ---------------------------------------------------------------------------------------------

/// What the engine produced, in `f64`, and the reference twin of the cell it ran.
struct EngineRun {
    y: Vec<f64>,
    final_state: Vec<f64>,
    dx: Vec<f64>,
    d_initial_state: Vec<f64>,
    params: Vec<Vec<f64>>,
    twin: RefCell,
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&a| T::from_f64(a)).collect()
}

fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|a| a.to_f64()).collect()
}

/// The weights of `c` in `T`, with run-time shapes.
fn weights<T: Real>(c: &Case) -> RecurrentWeights<T, Dyn, Dyn> {
    RecurrentWeights::new(
        Dyn(c.i),
        Dyn(c.h),
        c.kind.gates(),
        to_t(&c.kernel),
        to_t(&c.recurrent_kernel),
        c.biases.as_ref().map(|(b, u)| (to_t(b), to_t(u))),
    )
    .unwrap()
}

fn run_engine<T: Real>(c: &Case) -> Result<EngineRun, TestCaseError> {
    let w = weights::<T>(c);
    match c.kind {
        RefKind::SimpleRnn { activation } => run_cell(
            &SimpleRnn::from_weights(SimpleRnnKind { activation }, w).unwrap(),
            c,
        ),
        RefKind::Lstm {
            activation,
            recurrent_activation,
        } => run_cell(
            &Lstm::from_weights(
                LstmKind {
                    activation,
                    recurrent_activation,
                },
                w,
            )
            .unwrap(),
            c,
        ),
        RefKind::Gru {
            activation,
            recurrent_activation,
            reset_after,
        } => run_cell(
            &Gru::from_weights(
                GruKind {
                    activation,
                    recurrent_activation,
                    reset_after,
                },
                w,
            )
            .unwrap(),
            c,
        ),
    }
}

fn run_cell<T: Real, K: CellKind + Into<RefKind>>(
    cell: &Recurrent<T, K, Dyn, Dyn>,
    c: &Case,
) -> Result<EngineRun, TestCaseError> {
    let spec = c.spec();
    let x = to_t::<T>(&c.x);
    let initial = c.initial.as_deref().map(to_t::<T>);
    let dy = to_t::<T>(&c.dy);
    let d_final = c.d_final.as_deref().map(to_t::<T>);
    let mut tape = vec![T::ZERO; seq::tape_len(cell, &spec).unwrap()];
    let out = seq::forward_train(cell, &spec, &x, initial.as_deref(), &mut tape).unwrap();
    // Inference and training forward run the same steps: identical results.
    let inference = seq::forward(cell, &spec, &x, initial.as_deref()).unwrap();
    prop_assert_eq!(&inference, &out, "seq::forward vs seq::forward_train");
    let g = seq::bptt(
        cell,
        &spec,
        &x,
        initial.as_deref(),
        &tape,
        &dy,
        d_final.as_deref(),
    )
    .unwrap();
    Ok(EngineRun {
        y: to_f64(&out.y),
        final_state: to_f64(&out.final_state),
        dx: to_f64(&g.dx),
        d_initial_state: to_f64(&g.d_initial_state),
        params: g.params.iter().map(|p| to_f64(p)).collect(),
        twin: RefCell::from_cell(cell),
    })
}

/// `[T, B, w]` from `layout` to time-major.
fn time_major(v: &[f64], layout: Layout, t: usize, b: usize, w: usize) -> Vec<f64> {
    match layout {
        Layout::TimeMajor => v.to_vec(),
        Layout::BatchMajor => (0..t)
            .flat_map(|k| (0..b).flat_map(move |n| (0..w).map(move |j| (k, n, j))))
            .map(|(k, n, j)| v[(n * t + k) * w + j])
            .collect(),
    }
}

/// `[T, B, w]` from time-major to `layout`.
fn from_time_major(v: &[f64], layout: Layout, t: usize, b: usize, w: usize) -> Vec<f64> {
    match layout {
        Layout::TimeMajor => v.to_vec(),
        Layout::BatchMajor => (0..b)
            .flat_map(|n| (0..t).flat_map(move |k| (0..w).map(move |j| (k, n, j))))
            .map(|(k, n, j)| v[(k * b + n) * w + j])
            .collect(),
    }
}

/// Runs the engine in `T` and the reference on the same (rounded) data, and compares the
/// outputs and states, and the gradients unless the run passes too close to a kink (see
/// [`near_kink`]).
fn compare<T: Real>(c: &Case, fwd: Tol, bptt: Tol) -> Result<(), TestCaseError> {
    let got = run_engine::<T>(c)?;
    // The reference sees exactly what the engine saw.
    let round = |v: &[f64]| to_f64(&to_t::<T>(v));
    let (t, b, i, h) = (c.t, c.b, c.i, c.h);
    let x = time_major(&round(&c.x), c.layout, t, b, i);
    let initial = c.initial.as_deref().map(round);
    let dy = if c.return_sequences {
        time_major(&round(&c.dy), c.layout, t, b, h)
    } else {
        round(&c.dy)
    };
    let d_final = c.d_final.as_deref().map(round);
    let (gb, rs) = (c.go_backwards, c.return_sequences);
    let want = reference::forward(&got.twin, &x, t, b, initial.as_deref(), gb, rs).unwrap();
    let want_g = reference::backward(
        &got.twin,
        &x,
        t,
        b,
        initial.as_deref(),
        gb,
        rs,
        &dy,
        d_final.as_deref(),
    )
    .unwrap();

    let name = T::NAME;
    let want_y = if rs {
        from_time_major(&want.y, c.layout, t, b, h)
    } else {
        want.y
    };
    // Every state the run goes through (for the operand term of the tolerance).
    let mut states = reference::forward(&got.twin, &x, t, b, initial.as_deref(), gb, true)
        .unwrap()
        .y;
    states.extend(initial.iter().flatten());
    let fwd = with_operands::<T>(fwd, c, &x, &states);
    check(&format!("{name} y"), &got.y, &want_y, fwd)?;
    check(
        &format!("{name} final_state"),
        &got.final_state,
        &want.final_state,
        fwd,
    )?;
    let margin = reference::kink_margin(&got.twin, &x, t, b, initial.as_deref(), gb).unwrap();
    if near_kink::<T>(margin, c) {
        return Ok(());
    }
    let gt = bptt_tol(with_operands::<T>(bptt, c, &x, &states), t);
    let want_dx = from_time_major(&want_g.dx, c.layout, t, b, i);
    check(&format!("{name} dx"), &got.dx, &want_dx, gt)?;
    check(
        &format!("{name} d_initial_state"),
        &got.d_initial_state,
        &want_g.d_initial_state,
        gt,
    )?;
    let want_p = want_g.params();
    prop_assert_eq!(
        got.params.len(),
        want_p.len(),
        "number of parameter tensors"
    );
    let names = ["kernel", "recurrent_kernel", "bias", "recurrent_bias"];
    for ((g, w), n) in got.params.iter().zip(&want_p).zip(names) {
        check(&format!("{name} d_{n}"), g, w, gt)?;
    }
    Ok(())
}

/// The engine in `f64` and in `f32` against the reference, under every backend this CPU has.
fn check_case(c: &Case) -> Result<(), TestCaseError> {
    for backend in Backend::available() {
        with_backend(backend, || {
            compare::<f64>(c, F64_FWD, F64_BPTT)?;
            compare::<f32>(c, F32_FWD, F32_BPTT)
        })
        .unwrap()
        .map_err(|e| TestCaseError::fail(format!("backend {backend}: {e}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The properties. Case counts keep the whole file well under a minute in the test profile.
// ---------------------------------------------------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // Report the shrunk case; write no regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Cases per cell variant with normal magnitudes.
const CASES: u32 = 256;

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn simple_rnn_tanh(c in case(KINDS[0], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn simple_rnn_relu(c in case(KINDS[1], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn simple_rnn_sigmoid(c in case(KINDS[2], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn simple_rnn_linear(c in case(KINDS[3], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn simple_rnn_hard_sigmoid(c in case(KINDS[4], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn lstm_default(c in case(KINDS[5], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn lstm_hard_sigmoid_gates(c in case(KINDS[6], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn lstm_relu(c in case(KINDS[7], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn gru_reset_after(c in case(KINDS[8], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn gru_reset_before(c in case(KINDS[9], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn gru_reset_after_hard_sigmoid(c in case(KINDS[10], Magnitude::Normal)) { check_case(&c)?; }
    #[test]
    fn gru_reset_before_hard_sigmoid(c in case(KINDS[11], Magnitude::Normal)) { check_case(&c)?; }
}

proptest! {
    #![proptest_config(config(4 * CASES))]

    /// Every variant with inputs up to ±30 and ±1e3: saturated gates, large relu states.
    #[test]
    fn saturating_inputs(
        c in (0..KINDS.len()).prop_flat_map(|k| case(KINDS[k], Magnitude::Saturating))
    ) {
        check_case(&c)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Special values.
// ---------------------------------------------------------------------------------------------

/// A cell of `kind` with seeded random weights, run forward over `x`.
fn forward_kind<T: Real>(kind: RefKind, i: usize, h: usize, spec: &SeqSpec, x: &[T]) -> Output<T> {
    let seed = 17;
    match kind {
        RefKind::SimpleRnn { activation } => {
            let cell =
                DynSimpleRnn::<T>::random(Dyn(i), Dyn(h), SimpleRnnKind { activation }, true, seed)
                    .unwrap();
            seq::forward(&cell, spec, x, None).unwrap()
        }
        RefKind::Lstm {
            activation,
            recurrent_activation,
        } => {
            let k = LstmKind {
                activation,
                recurrent_activation,
            };
            let cell = DynLstm::<T>::random(Dyn(i), Dyn(h), k, true, seed).unwrap();
            seq::forward(&cell, spec, x, None).unwrap()
        }
        RefKind::Gru {
            activation,
            recurrent_activation,
            reset_after,
        } => {
            let k = GruKind {
                activation,
                recurrent_activation,
                reset_after,
            };
            let cell = DynGru::<T>::random(Dyn(i), Dyn(h), k, true, seed).unwrap();
            seq::forward(&cell, spec, x, None).unwrap()
        }
    }
}

/// Deterministic inputs in ±1.
fn inputs<T: Real>(n: usize) -> Vec<T> {
    (0..n)
        .map(|k| T::from_f64(((k as f64 + 0.5) * 0.618).sin()))
        .collect()
}

/// Every layout and direction, sequences returned.
fn specs(t: usize, b: usize) -> Vec<SeqSpec> {
    let mut v = Vec::new();
    for layout in [Layout::TimeMajor, Layout::BatchMajor] {
        for gb in [false, true] {
            v.push(SeqSpec::new(t, b).layout(layout).go_backwards(gb));
        }
    }
    v
}

fn nan_propagates<T: Real>() {
    let (t, b, i, h) = (5, 3, 4, 6);
    let (t0, b0, i0) = (2, 1, 3);
    for kind in KINDS {
        for spec in specs(t, b) {
            let mut x = inputs::<T>(t * b * i);
            let at = match spec.layout {
                Layout::TimeMajor => (t0 * b + b0) * i + i0,
                Layout::BatchMajor => (b0 * t + t0) * i + i0,
            };
            x[at] = T::from_f64(f64::NAN);
            let out = forward_kind(kind, i, h, &spec, &x);
            // Processing step at which the NaN is consumed.
            let k0 = if spec.go_backwards { t - 1 - t0 } else { t0 };
            for k in 0..t {
                for n in 0..b {
                    let o = match spec.layout {
                        Layout::TimeMajor => (k * b + n) * h,
                        Layout::BatchMajor => (n * t + k) * h,
                    };
                    let row = &out.y[o..o + h];
                    if n == b0 && k >= k0 {
                        assert!(
                            row.iter().all(|v| v.is_nan()),
                            "{} {kind:?} {spec:?}: step {k} row {n} should be NaN: {row:?}",
                            T::NAME
                        );
                    } else {
                        assert!(
                            row.iter().all(|v| v.to_f64().is_finite()),
                            "{} {kind:?} {spec:?}: step {k} row {n} should be finite: {row:?}",
                            T::NAME
                        );
                    }
                }
            }
            for (j, v) in out.final_state.iter().enumerate() {
                let n = (j / h) % b;
                assert_eq!(v.is_nan(), n == b0, "{} {kind:?} final_state[{j}]", T::NAME);
            }
        }
    }
}

/// A NaN input makes its sequence's output NaN from that step on, and leaves every other
/// sequence and every earlier step finite.
#[test]
fn nan_input_propagates() {
    for backend in Backend::available() {
        with_backend(backend, || {
            nan_propagates::<f64>();
            nan_propagates::<f32>();
        })
        .unwrap();
    }
}

fn infinities_saturate<T: Real>() {
    let (t, b, i, h) = (5, 2, 3, 7);
    let (t0, b0, i0) = (1, 1, 0);
    // tanh candidates and sigmoid / hard_sigmoid gates: every output is bounded by 1.
    let kinds = KINDS.into_iter().filter(|k| {
        matches!(
            k,
            RefKind::Lstm {
                activation: Tanh,
                ..
            } | RefKind::Gru { .. }
        )
    });
    for kind in kinds {
        for spec in specs(t, b) {
            for inf in [f64::INFINITY, f64::NEG_INFINITY] {
                let mut x = inputs::<T>(t * b * i);
                let at = match spec.layout {
                    Layout::TimeMajor => (t0 * b + b0) * i + i0,
                    Layout::BatchMajor => (b0 * t + t0) * i + i0,
                };
                x[at] = T::from_f64(inf);
                let out = forward_kind(kind, i, h, &spec, &x);
                for (k, v) in out.y.iter().enumerate() {
                    let v = v.to_f64();
                    assert!(
                        v.is_finite() && v.abs() <= 1.0,
                        "{} {kind:?} {spec:?} x = {inf}: y[{k}] = {v}",
                        T::NAME
                    );
                }
                for (k, v) in out.final_state.iter().enumerate() {
                    assert!(
                        v.to_f64().is_finite(),
                        "{} {kind:?} {spec:?} x = {inf}: final_state[{k}] = {v}",
                        T::NAME
                    );
                }
            }
        }
    }
}

/// ±inf in an input saturates the LSTM / GRU gates instead of poisoning the state.
#[test]
fn infinite_input_saturates() {
    for backend in Backend::available() {
        with_backend(backend, || {
            infinities_saturate::<f64>();
            infinities_saturate::<f32>();
        })
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Compile-time shapes and gradient modes.
// ---------------------------------------------------------------------------------------------

fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|a| a.to_f64().to_bits()).collect()
}

/// Forward output and all gradients of `cell` over `spec`, as bit patterns.
fn run_bits<T: Real, C: Cell<T>>(cell: &C, spec: &SeqSpec, x: &[T], h0: &[T]) -> Vec<Vec<u64>> {
    let mut tape = vec![T::ZERO; seq::tape_len(cell, spec).unwrap()];
    let out = seq::forward_train(cell, spec, x, Some(h0), &mut tape).unwrap();
    let dy = inputs::<T>(out.y.len());
    let dfin = inputs::<T>(out.final_state.len());
    let g = seq::bptt(cell, spec, x, Some(h0), &tape, &dy, Some(&dfin)).unwrap();
    let mut v = vec![
        bits(&out.y),
        bits(&out.final_state),
        bits(&g.dx),
        bits(&g.d_initial_state),
    ];
    v.extend(g.params.iter().map(|p| bits(p)));
    v
}

fn const_matches_dyn<T: Real>() {
    const I: usize = 3;
    const H: usize = 5;
    let (t, b) = (4, 3);
    let x = inputs::<T>(t * b * I);
    for (g, s) in [(4, 2), (3, 1), (1, 1)] {
        for bias in [false, true] {
            let dw = RecurrentWeights::<T, Dyn, Dyn>::random(Dyn(I), Dyn(H), g, bias, 3).unwrap();
            let cw = RecurrentWeights::<T, Const<I>, Const<H>>::new(
                Const,
                Const,
                g,
                dw.kernel().to_vec(),
                dw.recurrent_kernel().to_vec(),
                dw.bias()
                    .zip(dw.recurrent_bias())
                    .map(|(a, u)| (a.to_vec(), u.to_vec())),
            )
            .unwrap();
            let h0 = inputs::<T>(s * b * H);
            for spec in specs(t, b) {
                for spec in [spec, spec.return_sequences(false)] {
                    let (d, c) = match g {
                        4 => (
                            run_bits(
                                &DynLstm::from_weights(LstmKind::default(), dw.clone()).unwrap(),
                                &spec,
                                &x,
                                &h0,
                            ),
                            run_bits(
                                &StaticLstm::<T, I, H>::from_weights(
                                    LstmKind::default(),
                                    cw.clone(),
                                )
                                .unwrap(),
                                &spec,
                                &x,
                                &h0,
                            ),
                        ),
                        3 => {
                            let k = GruKind {
                                reset_after: bias,
                                ..GruKind::default()
                            };
                            (
                                run_bits(
                                    &DynGru::from_weights(k, dw.clone()).unwrap(),
                                    &spec,
                                    &x,
                                    &h0,
                                ),
                                run_bits(
                                    &StaticGru::<T, I, H>::from_weights(k, cw.clone()).unwrap(),
                                    &spec,
                                    &x,
                                    &h0,
                                ),
                            )
                        }
                        _ => (
                            run_bits(
                                &DynSimpleRnn::from_weights(SimpleRnnKind::default(), dw.clone())
                                    .unwrap(),
                                &spec,
                                &x,
                                &h0,
                            ),
                            run_bits(
                                &StaticSimpleRnn::<T, I, H>::from_weights(
                                    SimpleRnnKind::default(),
                                    cw.clone(),
                                )
                                .unwrap(),
                                &spec,
                                &x,
                                &h0,
                            ),
                        ),
                    };
                    assert_eq!(d, c, "{} G={g} bias={bias} {spec:?}", T::NAME);
                }
            }
        }
    }
}

/// `StaticLstm::<T, 3, 5>` (and the GRU and SimpleRNN twins) give bit-identical outputs and
/// gradients to the `Dyn` form with the same weights.
#[test]
fn const_dims_are_bit_identical_to_dyn() {
    for backend in Backend::available() {
        with_backend(backend, || {
            const_matches_dyn::<f64>();
            const_matches_dyn::<f32>();
        })
        .unwrap();
    }
}

/// `bptt_into` with `GradMode::Accumulate` adds to the parameter gradients (twice from zero
/// gives twice the gradient); `Overwrite` replaces them (twice gives the gradient, bit for
/// bit); `dx` and `d_initial_state` are overwritten in both modes.
#[test]
fn grad_modes() {
    let (t, b, i, h) = (4, 3, 5, 6);
    let cell = DynGru::<f64>::random(Dyn(i), Dyn(h), GruKind::default(), true, 9).unwrap();
    for spec in specs(t, b) {
        let x = inputs::<f64>(t * b * i);
        let mut tape = vec![0.0; seq::tape_len(&cell, &spec).unwrap()];
        let out = seq::forward_train(&cell, &spec, &x, None, &mut tape).unwrap();
        let dy = inputs::<f64>(out.y.len());
        let once = seq::bptt(&cell, &spec, &x, None, &tape, &dy, None).unwrap();
        let twice = |mode| {
            let mut g = Gradients::zeros(&cell, &spec).unwrap();
            for _ in 0..2 {
                seq::bptt_into(&cell, &spec, &x, None, &tape, &dy, None, &mut g, mode).unwrap();
            }
            g
        };
        let acc = twice(GradMode::Accumulate);
        assert_eq!(acc.dx, once.dx);
        assert_eq!(acc.d_initial_state, once.d_initial_state);
        for (a, o) in acc.params.iter().zip(&once.params) {
            for (&a, &o) in a.iter().zip(o) {
                // Summation order differs between `0 + g` and `g + g`, so not bit-exact.
                assert!(
                    (a - 2.0 * o).abs() <= 1e-12 * (1.0 + o.abs()),
                    "{a} vs 2·{o}"
                );
            }
        }
        assert_eq!(twice(GradMode::Overwrite), once);
    }
}
