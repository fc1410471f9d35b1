//! Finite-difference gradient checks of every built-in cell and variant (f64), of the custom
//! cells in the example, and proof that `gradcheck` catches a wrong gradient.

#[path = "../examples/custom_cell/cells.rs"]
#[allow(dead_code)]
mod cells;

use fused_rnn::cell::{Cell, Param, StepBackward, StepForward};
use fused_rnn::gradcheck::{GradcheckOptions, GradcheckReport, gradcheck};
use fused_rnn::prelude::*;

/// The bar the issue sets for every built-in cell in f64.
const TOLERANCE: f64 = 1e-6;

fn inputs(n: usize, seed: f64) -> Vec<f64> {
    (0..n)
        .map(|k| (k as f64 * 0.7310 + seed).sin() * 0.9)
        .collect()
}

fn check<C: Cell<f64> + Clone>(
    label: &str,
    cell: &C,
    spec: SeqSpec,
    with_state: bool,
) -> GradcheckReport {
    check_with(label, cell, spec, with_state, GradcheckOptions::default())
}

fn check_with<C: Cell<f64> + Clone>(
    label: &str,
    cell: &C,
    spec: SeqSpec,
    with_state: bool,
    options: GradcheckOptions,
) -> GradcheckReport {
    let x = inputs(spec.time_steps * spec.batch * cell.input_size(), 0.3);
    let s0 = inputs(cell.state_count() * spec.batch * cell.hidden_size(), 1.1);
    let report = gradcheck(cell, &spec, &x, with_state.then_some(&s0[..]), &options).unwrap();
    println!("{label}: worst {:.3e}\n{report}", report.worst());
    assert!(report.passed(TOLERANCE), "{label}\n{report}");
    report
}

/// Batches above 4 rows take the matrix-product path of the recurrent step, smaller ones the
/// row-by-row kernel: both are covered.
fn specs() -> [(SeqSpec, bool); 5] {
    [
        (SeqSpec::new(3, 6), true),
        (SeqSpec::new(5, 3), true),
        (SeqSpec::new(1, 1), false),
        (
            SeqSpec::new(4, 2)
                .layout(Layout::BatchMajor)
                .go_backwards(true),
            true,
        ),
        (SeqSpec::new(6, 2).return_sequences(false), false),
    ]
}

#[test]
fn lstm_every_variant() {
    let kinds = [
        LstmKind::default(),
        LstmKind {
            recurrent_activation: Activation::HardSigmoid,
            ..Default::default()
        },
        LstmKind {
            activation: Activation::Sigmoid,
            ..Default::default()
        },
    ];
    for (k, kind) in kinds.into_iter().enumerate() {
        for use_bias in [true, false] {
            for (s, (spec, st)) in specs().into_iter().enumerate() {
                let cell =
                    DynLstm::<f64>::random(Dyn(3), Dyn(4), kind, use_bias, (k * 10 + s) as u64)
                        .unwrap();
                check(
                    &format!("lstm {kind:?} bias={use_bias} {spec:?}"),
                    &cell,
                    spec,
                    st,
                );
            }
        }
    }
}

#[test]
fn gru_both_variants() {
    for reset_after in [true, false] {
        for ra in [Activation::Sigmoid, Activation::HardSigmoid] {
            let kind = GruKind {
                reset_after,
                recurrent_activation: ra,
                ..Default::default()
            };
            for use_bias in [true, false] {
                for (s, (spec, st)) in specs().into_iter().enumerate() {
                    let cell =
                        DynGru::<f64>::random(Dyn(4), Dyn(3), kind, use_bias, s as u64).unwrap();
                    check(
                        &format!("gru {kind:?} bias={use_bias} {spec:?}"),
                        &cell,
                        spec,
                        st,
                    );
                }
            }
        }
    }
}

#[test]
fn simple_rnn_every_activation() {
    // relu has a kink at 0: a finite-difference stencil straddling it (within 2h) reports a
    // false error. A step of 1e-5 makes that a hundred times less likely than the default 1e-3,
    // while rounding (about 1e-16·|L|/h) stays far below the tolerance; with these fixed seeds
    // no stencil straddles a kink, and a failure would name the element.
    for act in [
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Linear,
        Activation::Relu,
    ] {
        for use_bias in [true, false] {
            for (s, (spec, st)) in specs().into_iter().enumerate() {
                let cell = DynSimpleRnn::<f64>::random(
                    Dyn(3),
                    Dyn(5),
                    SimpleRnnKind { activation: act },
                    use_bias,
                    s as u64 + 40,
                )
                .unwrap();
                let options = GradcheckOptions {
                    step: if act == Activation::Relu { 1e-5 } else { 1e-3 },
                    ..Default::default()
                };
                let label = format!("simple_rnn {act:?} bias={use_bias} {spec:?}");
                check_with(&label, &cell, spec, st, options);
            }
        }
    }
}

#[test]
fn compile_time_shapes() {
    let cell = StaticLstm::<f64, 2, 3>::random(Const, Const, LstmKind::default(), true, 9).unwrap();
    check("static lstm", &cell, SeqSpec::new(3, 2), true);
    let cell = StaticGru::<f64, 3, 1>::random(Const, Const, GruKind::default(), true, 9).unwrap();
    check("static gru H=1", &cell, SeqSpec::new(3, 2), true);
}

#[test]
fn custom_cells() {
    check(
        "accumulator",
        &cells::Accumulator { size: 3 },
        SeqSpec::new(4, 2),
        true,
    );
    check(
        "minimal rnn",
        &cells::MinimalRnn::new(3, 4),
        SeqSpec::new(5, 2).go_backwards(true),
        true,
    );
}

/// A built-in LSTM whose backward adds a small error to one element of the recurrent kernel's
/// gradient.
#[derive(Debug, Clone)]
struct WrongGradient(DynLstm<f64>);

impl Cell<f64> for WrongGradient {
    fn input_size(&self) -> usize {
        self.0.input_size()
    }
    fn hidden_size(&self) -> usize {
        self.0.hidden_size()
    }
    fn state_count(&self) -> usize {
        self.0.state_count()
    }
    fn tape_width(&self) -> usize {
        self.0.tape_width()
    }
    fn scratch_width(&self) -> usize {
        self.0.scratch_width()
    }
    fn projection_width(&self) -> usize {
        self.0.projection_width()
    }
    fn project_inputs(&self, x: &[f64], proj: &mut [f64]) {
        self.0.project_inputs(x, proj)
    }
    fn step_forward(&self, step: StepForward<'_, f64>) {
        self.0.step_forward(step)
    }
    fn step_backward(&self, step: StepBackward<'_, f64>, grads: &mut [Vec<f64>]) {
        self.0.step_backward(step, grads);
        grads[1][5] += 1e-4;
    }
    fn sequence_backward(
        &self,
        batch: usize,
        states: &[f64],
        tape: &[f64],
        d_proj: &[f64],
        grads: &mut [Vec<f64>],
    ) {
        self.0.sequence_backward(batch, states, tape, d_proj, grads)
    }
    fn project_backward(&self, x: &[f64], d_proj: &[f64], dx: &mut [f64], grads: &mut [Vec<f64>]) {
        self.0.project_backward(x, d_proj, dx, grads)
    }
    fn params(&self) -> Vec<Param<'_, f64>> {
        self.0.params()
    }
    fn params_mut(&mut self) -> Vec<&mut [f64]> {
        self.0.params_mut()
    }
}

#[test]
fn catches_a_wrong_gradient() {
    let cell =
        WrongGradient(DynLstm::random(Dyn(3), Dyn(4), LstmKind::default(), true, 3).unwrap());
    let spec = SeqSpec::new(4, 2);
    let x = inputs(4 * 2 * 3, 0.5);
    let report = gradcheck(&cell, &spec, &x, None, &GradcheckOptions::default()).unwrap();
    println!("{report}");
    assert!(!report.passed(TOLERANCE));
    let bad: Vec<_> = report
        .tensors
        .iter()
        .filter(|t| t.error >= TOLERANCE)
        .collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(
        (bad[0].name.as_str(), bad[0].index),
        ("recurrent_kernel", 5)
    );
}

/// A step or floor that is not a finite number above 0 is refused by name (a zero step used to
/// give a report whose errors were NaN).
#[test]
fn unusable_steps_and_floors_are_errors() {
    let cell = DynLstm::<f64>::random(Dyn(2), Dyn(3), LstmKind::default(), true, 1).unwrap();
    let spec = SeqSpec::new(2, 1);
    let x = inputs(4, 0.3);
    for v in [0.0, -1e-3, f64::NAN, f64::INFINITY] {
        for (arg, options) in [
            (
                "options.step",
                GradcheckOptions {
                    step: v,
                    ..GradcheckOptions::default()
                },
            ),
            (
                "options.floor",
                GradcheckOptions {
                    floor: v,
                    ..GradcheckOptions::default()
                },
            ),
        ] {
            let e = gradcheck(&cell, &spec, &x, None, &options).unwrap_err();
            assert!(
                matches!(e, Error::Invalid { arg: a, .. } if a == arg),
                "{v}: {e}"
            );
        }
    }
}
