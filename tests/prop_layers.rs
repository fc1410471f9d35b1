//! Property tests of the layers (`fused_rnn::layer`) against the reference
//! (`reference::stack_forward`): stacks, both directions with every merge mode, lengths with
//! both mask semantics, dropout, on every backend this CPU has.
//!
//! Outputs and final states are compared with the reference's directly; every gradient
//! (inputs, initial states, every weight) with central finite differences of the reference's
//! loss `Σ y ⊙ dy + Σ final ⊙ d_final` in f64 — so the reference is the oracle of the
//! gradients too, and the check is a gradient check of the layers at the same time.

use fused_rnn::layer::{
    AnyCell, CellConfig, MaskSemantics, Merge, Rnn, RnnConfig, RnnGrads, RunSpec,
};
use fused_rnn::prelude::*;
use fused_rnn::real::Real;
use fused_rnn::reference::{self, RefCell, RefDropout, RefStack};
use fused_rnn::{Backend, with_backend};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

#[derive(Debug, Clone)]
struct Case {
    cell: CellConfig,
    layers: usize,
    bidir: bool,
    merge: Merge,
    go_backwards: bool,
    return_sequences: bool,
    semantics: MaskSemantics,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    lengths: Vec<usize>,
    batch_major: bool,
    h0: bool,
    dropout: f64,
    recurrent_dropout: f64,
    between: f64,
    seed: u64,
}

fn cell_strategy(smooth: bool) -> impl Strategy<Value = CellConfig> {
    let acts = if smooth {
        vec![Activation::Tanh]
    } else {
        vec![Activation::Tanh, Activation::Relu, Activation::Sigmoid]
    };
    let ract = if smooth {
        vec![Activation::Sigmoid]
    } else {
        vec![Activation::Sigmoid, Activation::HardSigmoid]
    };
    (
        0..4usize,
        proptest::sample::select(acts),
        proptest::sample::select(ract),
    )
        .prop_map(|(k, activation, recurrent_activation)| match k {
            0 => CellConfig::SimpleRnn(SimpleRnnKind { activation }),
            1 => CellConfig::Lstm(LstmKind {
                activation,
                recurrent_activation,
            }),
            _ => CellConfig::Gru(GruKind {
                activation,
                recurrent_activation,
                reset_after: k == 2,
            }),
        })
}

fn case_strategy(smooth: bool, max_h: usize) -> impl Strategy<Value = Case> {
    (
        cell_strategy(smooth),
        1..=3usize,
        any::<bool>(),
        0..5usize,
        any::<(bool, bool, bool, bool, bool)>(),
        (1..=6usize, 1..=5usize, 1..=5usize, 1..=max_h),
        proptest::collection::vec(0..=100usize, 5),
        (0..3usize, 0..3usize, 0..2usize, any::<u64>()),
    )
        .prop_map(
            move |(
                cell,
                layers,
                bidir,
                m,
                (gb, rs, packed, bm, h0),
                (t, b, i, h),
                raw_len,
                drop,
            )| {
                let merge = [
                    Merge::Concat,
                    Merge::Sum,
                    Merge::Mul,
                    Merge::Ave,
                    Merge::None,
                ][m];
                let merge = if merge == Merge::None && layers > 1 {
                    Merge::Ave
                } else {
                    merge
                };
                // Lengths 0..=T, about a third of them full.
                let go_backwards = gb && !bidir;
                let lengths = raw_len[..b]
                    .iter()
                    .map(|&r| {
                        // A go_backwards stack takes no padding.
                        if r % 3 == 0 || (go_backwards && layers > 1) {
                            t
                        } else {
                            r % (t + 1)
                        }
                    })
                    .collect();
                let rates = [0.0, 0.3, 0.5];
                Case {
                    cell,
                    layers,
                    bidir,
                    merge,
                    go_backwards,
                    return_sequences: rs,
                    semantics: if packed {
                        MaskSemantics::Packed
                    } else {
                        MaskSemantics::Keras
                    },
                    t,
                    b,
                    i,
                    h,
                    lengths,
                    batch_major: bm,
                    h0,
                    dropout: rates[drop.0],
                    recurrent_dropout: rates[drop.1],
                    between: rates[drop.2],
                    seed: drop.3,
                }
            },
        )
}

fn config(c: &Case) -> RnnConfig {
    let mut cfg = RnnConfig::new(c.cell, c.i, c.h)
        .layers(c.layers)
        .go_backwards(c.go_backwards)
        .return_sequences(c.return_sequences)
        .mask_semantics(c.semantics)
        .dropout(c.dropout, c.recurrent_dropout)
        .inter_layer_dropout(c.between);
    if c.bidir {
        cfg = cfg.bidirectional(c.merge);
    }
    cfg
}

fn ref_cell<T: Real>(c: &AnyCell<T>) -> RefCell {
    match c {
        AnyCell::SimpleRnn(x) => RefCell::from_cell(x),
        AnyCell::Lstm(x) => RefCell::from_cell(x),
        AnyCell::Gru(x) => RefCell::from_cell(x),
    }
}

/// Deterministic values in about ±1 from `seed`.
fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|k| ((k as f64 + 1.0) * 0.7548776662 + seed as f64 * 0.5698402910).fract() * 2.0 - 1.0)
        .collect()
}

/// Time-major `[T, B, w]` from the caller's layout.
fn to_time_major(v: &[f64], t: usize, b: usize, w: usize, batch_major: bool) -> Vec<f64> {
    if !batch_major {
        return v.to_vec();
    }
    let mut out = vec![0.0; v.len()];
    for k in 0..t {
        for n in 0..b {
            out[(k * b + n) * w..][..w].copy_from_slice(&v[(n * t + k) * w..][..w]);
        }
    }
    out
}

struct Setup<T> {
    rnn: Rnn<T>,
    x: Vec<f64>,
    initial: Option<Vec<f64>>,
    stack: RefStack,
    drop: RefDropout,
}

fn setup<T: Real>(c: &Case) -> Setup<T> {
    let cfg = config(c);
    let rnn = Rnn::<T>::random(cfg, c.seed % 1000).unwrap();
    let spec_len = c.t * c.b;
    let x = values(spec_len * c.i, c.seed);
    let initial = c.h0.then(|| {
        values(rnn.state_len(c.b).unwrap(), c.seed ^ 5)
            .iter()
            .map(|v| v * 0.5)
            .collect()
    });
    let ld = cfg.cell_count();
    let f = |v: Option<Vec<T>>| v.map(|m| m.iter().map(|x| x.to_f64()).collect());
    let mut drop = RefDropout::default();
    for n in 0..ld {
        let (a, r) = rnn.dropout_masks(c.seed, c.b, n).unwrap();
        drop.input.push(f(a));
        drop.recurrent.push(f(r));
    }
    for l in 0..c.layers.saturating_sub(1) {
        drop.between.push(f(rnn
            .between_mask(c.seed, l, c.t * c.b * cfg.merged_width())
            .unwrap()));
    }
    let stack = RefStack {
        cells: rnn.cells().iter().map(ref_cell).collect(),
        layers: c.layers,
        bidirectional: c.bidir,
        merge: c.merge,
        go_backwards: c.go_backwards,
        return_sequences: c.return_sequences,
        mask_semantics: c.semantics,
    };
    Setup {
        rnn,
        x,
        initial,
        stack,
        drop,
    }
}

/// The reference's outputs in the layer's layout (`y` time-major → batch-major when asked).
fn reference_run(
    c: &Case,
    s: &Setup<impl Real>,
    stack: &RefStack,
    x: &[f64],
    initial: Option<&[f64]>,
    train: bool,
) -> (Vec<f64>, Vec<f64>) {
    let xt = to_time_major(x, c.t, c.b, c.i, c.batch_major);
    let r = reference::stack_forward(
        stack,
        &xt,
        c.t,
        c.b,
        &c.lengths,
        initial,
        train.then_some(&s.drop),
    )
    .unwrap();
    let mut y = r.y;
    if c.return_sequences && c.batch_major {
        let planes = if c.bidir && c.merge == Merge::None {
            2
        } else {
            1
        };
        let w = y.len() / (planes * c.t * c.b);
        let mut out = vec![0.0; y.len()];
        let plane = c.t * c.b * w;
        for p in 0..planes {
            for k in 0..c.t {
                for n in 0..c.b {
                    out[p * plane + (n * c.t + k) * w..][..w]
                        .copy_from_slice(&y[p * plane + (k * c.b + n) * w..][..w]);
                }
            }
        }
        y = out;
    }
    (y, r.final_state)
}

fn spec<'a>(c: &'a Case) -> RunSpec<'a> {
    RunSpec::new(c.t, c.b)
        .layout(if c.batch_major {
            Layout::BatchMajor
        } else {
            Layout::TimeMajor
        })
        .lengths(&c.lengths)
        .seed(c.seed)
}

fn close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} length", what);
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{} [{}]: got {} want {}",
            what,
            k,
            g,
            w
        );
    }
    Ok(())
}

fn check_forward<T: Real>(c: &Case, rtol: f64, atol: f64) -> Result<(), TestCaseError> {
    let s = setup::<T>(c);
    let sp = spec(c);
    let x: Vec<T> = s.x.iter().map(|&v| T::from_f64(v)).collect();
    let init: Option<Vec<T>> = s
        .initial
        .as_ref()
        .map(|v| v.iter().map(|&x| T::from_f64(x)).collect());
    let mut y = vec![T::ZERO; s.rnn.y_len(&sp).unwrap()];
    let mut fin = vec![T::ZERO; s.rnn.state_len(c.b).unwrap()];
    for backend in Backend::available() {
        // Inference: no dropout.
        with_backend(backend, || {
            s.rnn.forward(&sp, &x, init.as_deref(), &mut y, &mut fin)
        })
        .unwrap()
        .unwrap();
        let (wy, wf) = reference_run(c, &s, &s.stack, &s.x, s.initial.as_deref(), false);
        let f = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
        close(&format!("{backend} y"), &f(&y), &wy, rtol, atol)?;
        close(&format!("{backend} final"), &f(&fin), &wf, rtol, atol)?;
        // Training: dropout on.
        let mut tape = vec![T::ZERO; s.rnn.tape_len(&sp).unwrap()];
        with_backend(backend, || {
            s.rnn
                .forward_train(&sp, &x, init.as_deref(), &mut tape, &mut y, &mut fin)
        })
        .unwrap()
        .unwrap();
        let (wy, wf) = reference_run(c, &s, &s.stack, &s.x, s.initial.as_deref(), true);
        close(&format!("{backend} train y"), &f(&y), &wy, rtol, atol)?;
        close(&format!("{backend} train final"), &f(&fin), &wf, rtol, atol)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn layers_forward_match_the_reference_f64(c in case_strategy(false, 20)) {
        check_forward::<f64>(&c, 1e-10, 1e-12)?;
    }

    #[test]
    fn layers_forward_match_the_reference_f32(c in case_strategy(true, 20)) {
        check_forward::<f32>(&c, 2e-4, 2e-5)?;
    }
}

/// Loss of the reference: `Σ y ⊙ dy + Σ final ⊙ d_final`.
fn ref_loss(
    c: &Case,
    s: &Setup<f64>,
    stack: &RefStack,
    x: &[f64],
    init: &[f64],
    dy: &[f64],
    dfin: &[f64],
) -> f64 {
    let (y, f) = reference_run(c, s, stack, x, Some(init), true);
    y.iter().zip(dy).map(|(a, b)| a * b).sum::<f64>()
        + f.iter().zip(dfin).map(|(a, b)| a * b).sum::<f64>()
}

fn check_gradients(c: &Case) -> Result<(), TestCaseError> {
    let s = setup::<f64>(c);
    let sp = spec(c);
    let init = s
        .initial
        .clone()
        .unwrap_or_else(|| vec![0.0; s.rnn.state_len(c.b).unwrap()]);
    let dy = values(s.rnn.y_len(&sp).unwrap(), c.seed ^ 9);
    let dfin = values(init.len(), c.seed ^ 11);
    let eps = 1e-6;
    let (tol_r, tol_a) = (1e-5, 1e-6);
    for backend in Backend::available() {
        let mut y = vec![0.0; dy.len()];
        let mut fin = vec![0.0; init.len()];
        let mut tape = vec![0.0; s.rnn.tape_len(&sp).unwrap()];
        let mut g = RnnGrads::zeros(&s.rnn, &sp).unwrap();
        with_backend(backend, || -> fused_rnn::Result<()> {
            s.rnn
                .forward_train(&sp, &s.x, Some(&init), &mut tape, &mut y, &mut fin)?;
            s.rnn.bptt(
                &sp,
                &s.x,
                Some(&init),
                &tape,
                &dy,
                Some(&dfin),
                &mut g,
                GradMode::Overwrite,
            )
        })
        .unwrap()
        .unwrap();
        // Padded inputs: exactly zero.
        for n in 0..c.b {
            for k in c.lengths[n]..c.t {
                let o = if c.batch_major {
                    (n * c.t + k) * c.i
                } else {
                    (k * c.b + n) * c.i
                };
                prop_assert!(
                    g.dx[o..o + c.i].iter().all(|&v| v == 0.0),
                    "{} padded dx",
                    backend
                );
            }
        }
        let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
        // Every input and initial-state element.
        for k in 0..s.x.len() {
            let want = fd(&|e| {
                let mut x = s.x.clone();
                x[k] += e;
                ref_loss(c, &s, &s.stack, &x, &init, &dy, &dfin)
            });
            close(
                &format!("{backend} dx[{k}]"),
                &[g.dx[k]],
                &[want],
                tol_r,
                tol_a,
            )?;
        }
        for k in 0..init.len() {
            let want = fd(&|e| {
                let mut i0 = init.clone();
                i0[k] += e;
                ref_loss(c, &s, &s.stack, &s.x, &i0, &dy, &dfin)
            });
            close(
                &format!("{backend} d_initial[{k}]"),
                &[g.d_initial_state[k]],
                &[want],
                tol_r,
                tol_a,
            )?;
        }
        // A spread of elements of every weight tensor of every cell.
        for (n, cell_grads) in g.params.iter().enumerate() {
            for (p, grad) in cell_grads.iter().enumerate() {
                let stride = (grad.len() / 7).max(1);
                for k in (0..grad.len()).step_by(stride) {
                    let want = fd(&|e| {
                        let mut st = s.stack.clone();
                        let rc = &mut st.cells[n];
                        let gh = rc.kernel.ncols();
                        match p {
                            0 => rc.kernel[(k / gh, k % gh)] += e,
                            1 => rc.recurrent_kernel[(k / gh, k % gh)] += e,
                            2 => rc.bias.as_mut().unwrap()[k] += e,
                            _ => rc.recurrent_bias.as_mut().unwrap()[k] += e,
                        }
                        ref_loss(c, &s, &st, &s.x, &init, &dy, &dfin)
                    });
                    close(
                        &format!("{backend} cell {n} param {p}[{k}]"),
                        &[grad[k]],
                        &[want],
                        tol_r,
                        tol_a,
                    )?;
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Gradient check of stacked, bidirectional, masked and dropout layers against the
    /// reference (smooth activations: finite differences across a kink are meaningless).
    #[test]
    fn layers_gradients_match_the_reference(c in case_strategy(true, 6)) {
        check_gradients(&c)?;
    }
}

/// The same seed gives the same dropout; another seed another one; no dropout in inference.
#[test]
fn dropout_is_seeded_and_training_only() {
    let cfg = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 5)
        .layers(2)
        .bidirectional(Merge::Sum)
        .dropout(0.5, 0.5);
    let rnn = Rnn::<f64>::random(cfg, 3).unwrap();
    let x = values(4 * 2 * 3, 1);
    let run = |seed: u64| {
        let sp = RunSpec::new(4, 2).seed(seed);
        let mut y = vec![0.0; rnn.y_len(&sp).unwrap()];
        let mut f = vec![0.0; rnn.state_len(2).unwrap()];
        let mut tape = vec![0.0; rnn.tape_len(&sp).unwrap()];
        rnn.forward_train(&sp, &x, None, &mut tape, &mut y, &mut f)
            .unwrap();
        let mut yi = vec![0.0; y.len()];
        rnn.forward(&sp, &x, None, &mut yi, &mut f).unwrap();
        (y, yi)
    };
    let (a, ai) = run(1);
    let (b, bi) = run(1);
    let (c, ci) = run(2);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(ai, bi);
    assert_eq!(ai, ci);
    assert_ne!(a, ai);
}
