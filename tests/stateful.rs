//! Stateful runs ([`StatefulRnn`]) and truncated BPTT ([`Rnn::tbptt`]).
//!
//! - A stateful run over the two parts of a sequence gives the run over the whole sequence
//!   (forward stacks; both directions of a bidirectional stack carry their own states, as
//!   Keras's stateful `Bidirectional` does).
//! - TBPTT with `k1 = k2 = T` is full BPTT, bit for bit.
//! - TBPTT for any `(k1, k2)`, `k2 < k1` and `k2 > k1` included, against the reference: the
//!   gradients are central finite differences of `reference::stack_tbptt_objective`, which
//!   writes the truncated objective out update by update, in f64.

use fused_rnn::layer::{
    AnyCell, CellConfig, MaskSemantics, Merge, Rnn, RnnConfig, RnnGrads, RunSpec, StatefulRnn,
    Tbptt,
};
use fused_rnn::prelude::*;
use fused_rnn::real::Real;
use fused_rnn::reference::{self, RefCell, RefDropout, RefStack, RefTbpttSide};
use fused_rnn::{Backend, with_backend};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Deterministic values in about ±1 from `seed`.
fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|k| ((k as f64 + 1.0) * 0.7548776662 + seed as f64 * 0.5698402910).fract() * 2.0 - 1.0)
        .collect()
}

fn cell_config(k: usize) -> CellConfig {
    match k % 4 {
        0 => CellConfig::SimpleRnn(SimpleRnnKind::default()),
        1 => CellConfig::Lstm(LstmKind::default()),
        2 => CellConfig::Gru(GruKind::default()),
        _ => CellConfig::Gru(GruKind {
            reset_after: false,
            ..GruKind::default()
        }),
    }
}

fn ref_cell<T: Real>(c: &AnyCell<T>) -> RefCell {
    match c {
        AnyCell::SimpleRnn(x) => RefCell::from_cell(x),
        AnyCell::Lstm(x) => RefCell::from_cell(x),
        AnyCell::Gru(x) => RefCell::from_cell(x),
    }
}

fn cast<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

#[derive(Debug, Clone)]
struct Split {
    cell: usize,
    layers: usize,
    t: usize,
    split: usize,
    b: usize,
    i: usize,
    h: usize,
    lengths: Option<Vec<usize>>,
    dropout: (f64, f64),
    seed: u64,
}

fn split_strategy() -> impl Strategy<Value = Split> {
    (
        (
            0..4usize,
            1..=3usize,
            2..=8usize,
            1..=4usize,
            1..=4usize,
            1..=9usize,
        ),
        any::<(u16, bool, bool, u64)>(),
        proptest::collection::vec(0..=8usize, 4),
    )
        .prop_map(
            |((cell, layers, t, b, i, h), (cut, masked, drop, seed), raw)| Split {
                cell,
                layers,
                t,
                split: 1 + cut as usize % (t - 1),
                b,
                i,
                h,
                lengths: masked.then(|| raw[..b].iter().map(|&n| n.min(t)).collect()),
                dropout: if drop { (0.3, 0.4) } else { (0.0, 0.0) },
                seed,
            },
        )
}

/// Equal up to the rounding of the input projection, whose matrix product over `T·B` rows
/// may take another path (or blocking) for fewer rows: a few ulps.
fn close<T: Real>(what: &str, got: &[T], want: &[T]) -> Result<(), TestCaseError> {
    let tol = if T::from_f64(1e-10).to_f64() == 1e-10 {
        1e-12
    } else {
        2e-5
    };
    prop_assert_eq!(got.len(), want.len());
    for (k, (p, q)) in got.iter().zip(want).enumerate() {
        let (p, q) = (p.to_f64(), q.to_f64());
        prop_assert!(
            (p - q).abs() <= tol * (1.0 + q.abs()),
            "{}[{}]: {} vs {}",
            what,
            k,
            p,
            q
        );
    }
    Ok(())
}

/// Whole run and the two halves through a [`StatefulRnn`], on every backend, inference and
/// training: the same outputs and final states.
fn check_halves<T: Real>(c: &Split) -> Result<(), TestCaseError> {
    // Packed semantics with lengths: a part in which a sequence has no real step outputs 0
    // there, as the whole run does at padding (Keras's would repeat the last output of the
    // call, which the second part never saw).
    let cfg = RnnConfig::new(cell_config(c.cell), c.i, c.h)
        .layers(c.layers)
        .mask_semantics(MaskSemantics::Packed)
        .dropout(c.dropout.0, c.dropout.1);
    let rnn = Rnn::<T>::random(cfg, c.seed % 97).unwrap();
    let (t, b, s) = (c.t, c.b, c.split);
    let x: Vec<T> = cast(&values(t * b * c.i, c.seed));
    let init: Vec<T> = cast(&values(rnn.state_len(b).unwrap(), c.seed ^ 3));
    let whole_spec = RunSpec::new(t, b).seed(c.seed);
    let whole_spec = match &c.lengths {
        Some(l) => whole_spec.lengths(l),
        None => whole_spec,
    };
    let parts: Vec<(usize, usize, Option<Vec<usize>>)> = [(0, s), (s, t)]
        .into_iter()
        .map(|(a, e)| {
            let l = c.lengths.as_ref().map(|l| {
                l.iter()
                    .map(|&n| n.saturating_sub(a).min(e - a))
                    .collect::<Vec<_>>()
            });
            (a, e, l)
        })
        .collect();
    for backend in Backend::available() {
        for training in [false, true] {
            let mut y = vec![T::ZERO; rnn.y_len(&whole_spec).unwrap()];
            let mut fin = vec![T::ZERO; init.len()];
            let mut tape = vec![T::ZERO; rnn.tape_len(&whole_spec).unwrap()];
            with_backend(backend, || {
                if training {
                    rnn.forward_train(&whole_spec, &x, Some(&init), &mut tape, &mut y, &mut fin)
                } else {
                    rnn.forward(&whole_spec, &x, Some(&init), &mut y, &mut fin)
                }
            })
            .unwrap()
            .unwrap();
            let mut st = StatefulRnn::new(rnn.clone(), b).unwrap();
            st.set_state(&init).unwrap();
            let mut ys = Vec::new();
            for (a, e, l) in &parts {
                let sp = RunSpec::new(e - a, b).seed(c.seed);
                let sp = match l {
                    Some(l) => sp.lengths(l),
                    None => sp,
                };
                let mut yp = vec![T::ZERO; rnn.y_len(&sp).unwrap()];
                let mut tp = vec![T::ZERO; rnn.tape_len(&sp).unwrap()];
                let xp = &x[a * b * c.i..e * b * c.i];
                with_backend(backend, || {
                    if training {
                        st.forward_train(&sp, xp, &mut tp, &mut yp)
                    } else {
                        st.forward(&sp, xp, &mut yp)
                    }
                })
                .unwrap()
                .unwrap();
                ys.extend(yp);
            }
            close(&format!("{backend} training={training} y"), &ys, &y)?;
            close(
                &format!("{backend} training={training} state"),
                st.state(),
                &fin,
            )?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn stateful_halves_equal_one_run_f64(c in split_strategy()) {
        check_halves::<f64>(&c)?;
    }

    #[test]
    fn stateful_halves_equal_one_run_f32(c in split_strategy()) {
        check_halves::<f32>(&c)?;
    }
}

/// Every layer and direction carries its own final state, as Keras's stateful
/// `Bidirectional` does: the second call is the stateless run from the first call's final
/// states; `reset` goes back to zeros; backpropagation starts from the state the call
/// started from.
#[test]
fn stateful_bidirectional_carries_each_direction() {
    let cfg = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 4)
        .layers(2)
        .bidirectional(Merge::Sum);
    let rnn = Rnn::<f64>::random(cfg, 5).unwrap();
    let (t, b) = (4, 2);
    let sp = RunSpec::new(t, b);
    let x1 = values(t * b * 3, 1);
    let x2 = values(t * b * 3, 2);
    let mut st = StatefulRnn::new(rnn.clone(), b).unwrap();
    let mut y1 = vec![0.0; rnn.y_len(&sp).unwrap()];
    st.forward(&sp, &x1, &mut y1).unwrap();
    let mut want1 = vec![0.0; y1.len()];
    let mut fin1 = vec![0.0; rnn.state_len(b).unwrap()];
    rnn.forward(&sp, &x1, None, &mut want1, &mut fin1).unwrap();
    assert_eq!(y1, want1);
    assert_eq!(st.state(), &fin1[..]);
    assert!(st.previous_state().iter().all(|&v| v == 0.0));

    let mut tape = vec![0.0; rnn.tape_len(&sp).unwrap()];
    let mut y2 = vec![0.0; y1.len()];
    st.forward_train(&sp, &x2, &mut tape, &mut y2).unwrap();
    let mut want2 = vec![0.0; y1.len()];
    let mut fin2 = vec![0.0; fin1.len()];
    rnn.forward(&sp, &x2, Some(&fin1), &mut want2, &mut fin2)
        .unwrap();
    assert_eq!(y2, want2);
    assert_eq!(st.state(), &fin2[..]);
    assert_eq!(st.previous_state(), &fin1[..]);

    let dy = values(y2.len(), 7);
    let mut g = RnnGrads::zeros(&rnn, &sp).unwrap();
    st.bptt(&sp, &x2, &tape, &dy, None, &mut g, GradMode::Overwrite)
        .unwrap();
    let mut tape2 = vec![0.0; tape.len()];
    rnn.forward_train(&sp, &x2, Some(&fin1), &mut tape2, &mut want2, &mut fin2)
        .unwrap();
    let mut want_g = RnnGrads::zeros(&rnn, &sp).unwrap();
    rnn.bptt(
        &sp,
        &x2,
        Some(&fin1),
        &tape2,
        &dy,
        None,
        &mut want_g,
        GradMode::Overwrite,
    )
    .unwrap();
    assert_eq!(g, want_g);
    assert!(g.d_initial_state.iter().any(|&v| v != 0.0));

    st.reset();
    assert!(st.state().iter().all(|&v| v == 0.0));
    st.forward(&sp, &x1, &mut y1).unwrap();
    assert_eq!(y1, want1);
}

/// A call with another batch is refused and changes nothing.
#[test]
fn stateful_refuses_another_batch() {
    let cfg = RnnConfig::new(CellConfig::Gru(GruKind::default()), 2, 3);
    let rnn = Rnn::<f32>::random(cfg, 1).unwrap();
    let mut st = StatefulRnn::new(rnn, 2).unwrap();
    let sp = RunSpec::new(3, 2);
    let mut y = vec![0.0; 3 * 2 * 3];
    st.forward(&sp, &[0.5; 12], &mut y).unwrap();
    let before = st.state().to_vec();
    let sp3 = RunSpec::new(3, 3);
    let mut y3 = vec![0.0; 3 * 3 * 3];
    assert_eq!(
        st.forward(&sp3, &[0.5; 18], &mut y3),
        Err(Error::Mismatch {
            arg: "spec.batch",
            expected: 2,
            actual: 3
        })
    );
    // A bad x: refused by the stack, the state untouched.
    assert!(matches!(
        st.forward(&sp, &[0.5; 11], &mut y),
        Err(Error::Length { arg: "x", .. })
    ));
    assert_eq!(st.state(), &before[..]);
    assert!(matches!(
        st.set_state(&[0.0; 5]),
        Err(Error::Length { arg: "state", .. })
    ));
    assert!(matches!(
        StatefulRnn::new(st.into_inner(), 0),
        Err(Error::Zero { arg: "batch" })
    ));
}

/// A TBPTT run collecting every reported output.
fn run_tbptt(
    rnn: &Rnn<f64>,
    sched: Tbptt,
    sp: &RunSpec<'_>,
    x: &[f64],
    init: Option<&[f64]>,
    dy: &[f64],
    dfin: Option<&[f64]>,
) -> (RnnGrads<f64>, Vec<f64>, Vec<f64>) {
    let mut g = RnnGrads::zeros(rnn, sp).unwrap();
    let mut fin = vec![0.0; rnn.state_len(sp.batch).unwrap()];
    let bw = sp.batch * rnn.config().hidden_size;
    let mut ys = vec![f64::NAN; dy.len()];
    let mut next = 0;
    rnn.tbptt(
        sched,
        sp,
        x,
        init,
        dfin,
        &mut fin,
        &mut g,
        GradMode::Overwrite,
        |steps, y, d| {
            assert_eq!(steps.start, next, "updates in order, without gaps");
            next = steps.end;
            assert_eq!(y.len(), steps.len() * bw);
            ys[steps.start * bw..steps.end * bw].copy_from_slice(y);
            d.copy_from_slice(&dy[steps.start * bw..steps.end * bw]);
        },
    )
    .unwrap();
    assert_eq!(next, sp.time_steps);
    (g, fin, ys)
}

/// `k1 = k2 = T` (or more) is full BPTT, bit for bit; any schedule reports the outputs of a
/// whole training run and ends in its final state.
#[test]
fn tbptt_with_whole_window_is_bptt() {
    for cell in 0..4 {
        let cfg = RnnConfig::new(cell_config(cell), 3, 5)
            .layers(2)
            .dropout(0.25, 0.5);
        let rnn = Rnn::<f64>::random(cfg, 11).unwrap();
        let (t, b) = (7, 3);
        let sp = RunSpec::new(t, b).seed(9);
        let x = values(t * b * 3, 4);
        let init = values(rnn.state_len(b).unwrap(), 5);
        let mut y = vec![0.0; rnn.y_len(&sp).unwrap()];
        let mut fin = vec![0.0; init.len()];
        let mut tape = vec![0.0; rnn.tape_len(&sp).unwrap()];
        rnn.forward_train(&sp, &x, Some(&init), &mut tape, &mut y, &mut fin)
            .unwrap();
        let dy = values(y.len(), 6);
        let dfin = values(init.len(), 8);
        let mut want = RnnGrads::zeros(&rnn, &sp).unwrap();
        rnn.bptt(
            &sp,
            &x,
            Some(&init),
            &tape,
            &dy,
            Some(&dfin),
            &mut want,
            GradMode::Overwrite,
        )
        .unwrap();
        for (k1, k2) in [(t, t), (t + 3, t), (t, 50), (100, 100)] {
            let (g, f, ys) = run_tbptt(
                &rnn,
                Tbptt::new(k1, k2),
                &sp,
                &x,
                Some(&init),
                &dy,
                Some(&dfin),
            );
            assert_eq!(g, want, "cell {cell} ({k1}, {k2})");
            assert_eq!(f, fin);
            assert_eq!(ys, y);
        }
        for (k1, k2) in [(1, 1), (2, 5), (3, 2), (4, 1), (3, 3), (2, 7)] {
            let (g, f, ys) = run_tbptt(&rnn, Tbptt::new(k1, k2), &sp, &x, Some(&init), &dy, None);
            for (p, q) in ys.iter().zip(&y).chain(f.iter().zip(&fin)) {
                assert!(
                    (p - q).abs() <= 1e-13,
                    "cell {cell} ({k1}, {k2}): {p} vs {q}"
                );
            }
            // A truncated gradient differs from the full one.
            assert_ne!(g.params, want.params, "cell {cell} ({k1}, {k2})");
        }
    }
}

#[derive(Debug, Clone)]
struct TbpttCase {
    cell: usize,
    layers: usize,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    k1: usize,
    k2: usize,
    lengths: Vec<usize>,
    packed: bool,
    h0: bool,
    dfin: bool,
    dropout: bool,
    seed: u64,
}

fn tbptt_strategy() -> impl Strategy<Value = TbpttCase> {
    (
        (
            0..4usize,
            1..=2usize,
            2..=7usize,
            1..=3usize,
            1..=3usize,
            1..=4usize,
        ),
        (1..=8usize, 1..=8usize),
        proptest::collection::vec(0..=10usize, 3),
        any::<(bool, bool, bool, bool, u64)>(),
    )
        .prop_map(
            |((cell, layers, t, b, i, h), (k1, k2), raw, (packed, h0, dfin, dropout, seed))| {
                TbpttCase {
                    cell,
                    layers,
                    t,
                    b,
                    i,
                    h,
                    k1,
                    k2,
                    // About half full.
                    lengths: raw[..b]
                        .iter()
                        .map(|&r| if r % 2 == 0 { t } else { r % (t + 1) })
                        .collect(),
                    packed,
                    h0,
                    dfin,
                    dropout,
                    seed,
                }
            },
        )
}

/// The layers' truncated gradient against central differences of the reference's truncated
/// objective, for every input, initial-state element and a spread of every weight tensor.
fn check_tbptt(c: &TbpttCase) -> Result<(), TestCaseError> {
    let semantics = if c.packed {
        MaskSemantics::Packed
    } else {
        MaskSemantics::Keras
    };
    let drop = if c.dropout { (0.3, 0.5) } else { (0.0, 0.0) };
    let cfg = RnnConfig::new(cell_config(c.cell), c.i, c.h)
        .layers(c.layers)
        .mask_semantics(semantics)
        .dropout(drop.0, drop.1);
    let rnn = Rnn::<f64>::random(cfg, c.seed % 89).unwrap();
    let (t, b) = (c.t, c.b);
    let sp = RunSpec::new(t, b).lengths(&c.lengths).seed(c.seed);
    let x = values(t * b * c.i, c.seed);
    let init = if c.h0 {
        values(rnn.state_len(b).unwrap(), c.seed ^ 1)
    } else {
        vec![0.0; rnn.state_len(b).unwrap()]
    };
    let dy = values(t * b * c.h, c.seed ^ 2);
    let dfin = c.dfin.then(|| values(init.len(), c.seed ^ 3));
    let stack = RefStack {
        cells: rnn.cells().iter().map(ref_cell).collect(),
        layers: c.layers,
        bidirectional: false,
        merge: Merge::Concat,
        go_backwards: false,
        return_sequences: true,
        mask_semantics: semantics,
    };
    let mut masks = RefDropout::default();
    for n in 0..c.layers {
        let (a, r) = rnn.dropout_masks(c.seed, b, n).unwrap();
        masks.input.push(a);
        masks.recurrent.push(r);
    }
    let objective = |st: &RefStack, xs: &[f64], i0: &[f64]| {
        reference::stack_tbptt_objective(
            RefTbpttSide {
                stack: &stack,
                x: &x,
                initial: Some(&init),
            },
            RefTbpttSide {
                stack: st,
                x: xs,
                initial: Some(i0),
            },
            t,
            b,
            &c.lengths,
            Some(&masks),
            (c.k1, c.k2),
            &dy,
            dfin.as_deref(),
        )
        .unwrap()
    };
    let eps = 1e-6;
    let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
    let close = |what: String, got: f64, want: f64| -> Result<(), TestCaseError> {
        prop_assert!(
            (got - want).abs() <= 1e-6 + 1e-5 * want.abs(),
            "{}: got {} want {} ({:?})",
            what,
            got,
            want,
            c
        );
        Ok(())
    };
    for backend in Backend::available() {
        let (g, _, _) = with_backend(backend, || {
            run_tbptt(
                &rnn,
                Tbptt::new(c.k1, c.k2),
                &sp,
                &x,
                Some(&init),
                &dy,
                dfin.as_deref(),
            )
        })
        .unwrap();
        for k in 0..x.len() {
            let want = fd(&|e| {
                let mut xs = x.clone();
                xs[k] += e;
                objective(&stack, &xs, &init)
            });
            close(format!("{backend} dx[{k}]"), g.dx[k], want)?;
        }
        for k in 0..init.len() {
            let want = fd(&|e| {
                let mut i0 = init.clone();
                i0[k] += e;
                objective(&stack, &x, &i0)
            });
            close(
                format!("{backend} d_initial[{k}]"),
                g.d_initial_state[k],
                want,
            )?;
        }
        for (n, cell_grads) in g.params.iter().enumerate() {
            for (p, grad) in cell_grads.iter().enumerate() {
                let stride = (grad.len() / 5).max(1);
                for k in (0..grad.len()).step_by(stride) {
                    let want = fd(&|e| {
                        let mut st = stack.clone();
                        let rc = &mut st.cells[n];
                        let gh = rc.kernel.ncols();
                        match p {
                            0 => rc.kernel[(k / gh, k % gh)] += e,
                            1 => rc.recurrent_kernel[(k / gh, k % gh)] += e,
                            2 => rc.bias.as_mut().unwrap()[k] += e,
                            _ => rc.recurrent_bias.as_mut().unwrap()[k] += e,
                        }
                        objective(&st, &x, &init)
                    });
                    close(format!("{backend} cell {n} param {p}[{k}]"), grad[k], want)?;
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn tbptt_matches_the_reference(c in tbptt_strategy()) {
        check_tbptt(&c)?;
    }
}

/// Fixed cases on either side of `k2 = k1`, so that both are always covered.
#[test]
fn tbptt_k2_below_and_above_k1_match_the_reference() {
    for (k1, k2) in [(3, 1), (4, 2), (2, 3), (1, 4), (2, 5), (3, 3)] {
        for cell in 0..4 {
            let c = TbpttCase {
                cell,
                layers: 2,
                t: 7,
                b: 3,
                i: 2,
                h: 3,
                k1,
                k2,
                lengths: vec![7, 4, 6],
                packed: cell % 2 == 0,
                h0: true,
                dfin: true,
                dropout: cell % 2 == 1,
                seed: 40 + cell as u64,
            };
            check_tbptt(&c).unwrap();
        }
    }
}

/// What truncated BPTT cannot run, refused by name.
#[test]
fn tbptt_refuses_what_it_cannot_run() {
    let base = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 2, 3);
    let sp = RunSpec::new(4, 2);
    let x = vec![0.1; 16];
    let arg_of = |cfg: RnnConfig, sched: Tbptt, sp: &RunSpec<'_>| {
        let rnn = Rnn::<f64>::random(cfg, 1).unwrap();
        let mut g = RnnGrads::zeros(&rnn, sp).unwrap();
        let mut fin = vec![0.0; rnn.state_len(2).unwrap()];
        match rnn.tbptt(
            sched,
            sp,
            &x,
            None,
            None,
            &mut fin,
            &mut g,
            GradMode::Overwrite,
            |_, _, _| {},
        ) {
            Err(Error::Invalid { arg, .. }) | Err(Error::Zero { arg }) => arg,
            other => panic!("{other:?}"),
        }
    };
    let s = Tbptt::new(2, 2);
    assert_eq!(
        arg_of(base.bidirectional(Merge::Concat), s, &sp),
        "bidirectional"
    );
    assert_eq!(arg_of(base.go_backwards(true), s, &sp), "go_backwards");
    assert_eq!(
        arg_of(base.return_sequences(false), s, &sp),
        "return_sequences"
    );
    assert_eq!(
        arg_of(base.layers(2).inter_layer_dropout(0.5), s, &sp),
        "inter_layer_dropout"
    );
    assert_eq!(
        arg_of(base, s, &sp.layout(Layout::BatchMajor)),
        "spec.layout"
    );
    assert_eq!(arg_of(base, Tbptt::new(0, 2), &sp), "schedule.k1");
    assert_eq!(arg_of(base, Tbptt::new(2, 0), &sp), "schedule.k2");
    // A length past T, as `Rnn::forward` refuses it (it ran clipped to T).
    assert_eq!(arg_of(base, s, &sp.lengths(&[100, 4])), "lengths");
}
