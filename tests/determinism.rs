//! Bitwise determinism: the same call gives the same bits every time and for any thread count
//! (`SeqSpec::threads`), forward, training record and every gradient, on every backend this
//! CPU has — including shapes large enough that the step and the input projection really are
//! split across threads.

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, Real, with_backend};

fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// Everything one training step produces, as bits.
fn train_bits<T: Real, C: Cell<T>>(cell: &C, spec: &SeqSpec, x: &[T], h0: &[T]) -> Vec<Vec<u64>> {
    let out = seq::forward(cell, spec, x, Some(h0)).unwrap();
    let mut tape = vec![T::ZERO; seq::tape_len(cell, spec).unwrap()];
    let train = seq::forward_train(cell, spec, x, Some(h0), &mut tape).unwrap();
    let dy: Vec<T> = (0..out.y.len())
        .map(|k| T::from_f64(((k * 37 % 101) as f64 - 50.0) / 60.0))
        .collect();
    let g = seq::bptt(cell, spec, x, Some(h0), &tape, &dy, Some(h0)).unwrap();
    let mut all = vec![
        bits(&out.y),
        bits(&out.final_state),
        bits(&train.y),
        bits(&tape),
        bits(&g.dx),
        bits(&g.d_initial_state),
    ];
    all.extend(g.params.iter().map(|p| bits(p)));
    all
}

fn same_for_any_threads<T: Real, C: Cell<T>>(name: &str, cell: &C, t: usize, b: usize) -> bool {
    let spec = SeqSpec::new(t, b).layout(Layout::BatchMajor);
    let x: Vec<T> = (0..t * b * cell.input_size())
        .map(|k| T::from_f64(((k * 7919 % 2001) as f64 - 1000.0) / 900.0))
        .collect();
    let h0: Vec<T> = (0..cell.state_count() * b * cell.hidden_size())
        .map(|k| T::from_f64(((k * 104_729 % 1001) as f64 - 500.0) / 700.0))
        .collect();
    let one = train_bits(cell, &spec, &x, &h0);
    assert_eq!(one, train_bits(cell, &spec, &x, &h0), "{name}: run to run");
    for threads in [2, 3, 4, 7] {
        let many = train_bits(cell, &spec.threads(threads), &x, &h0);
        for (k, (a, b)) in many.iter().zip(&one).enumerate() {
            assert!(a == b, "{name}: threads = {threads}: output {k} differs");
        }
    }
    cell.max_parts(b) > 1
}

fn cells<T: Real>(backend: Backend, h: usize, t: usize, b: usize, i: usize) -> usize {
    let mut split = 0;
    let tag = format!("{backend} {} H={h} T={t} B={b} I={i}", T::NAME);
    let lstm = DynLstm::<T>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1).unwrap();
    split += same_for_any_threads(&format!("lstm {tag}"), &lstm, t, b) as usize;
    for reset_after in [true, false] {
        let kind = GruKind {
            reset_after,
            ..Default::default()
        };
        let gru = DynGru::<T>::random(Dyn(i), Dyn(h), kind, true, 2).unwrap();
        split += same_for_any_threads(&format!("gru ra={reset_after} {tag}"), &gru, t, b) as usize;
    }
    let rnn = DynSimpleRnn::<T>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 3).unwrap();
    split += same_for_any_threads(&format!("rnn {tag}"), &rnn, t, b) as usize;
    split
}

#[test]
fn bitwise_identical_for_any_thread_count() {
    for backend in Backend::available() {
        with_backend(backend, || {
            // Small (one thread in practice), row-kernel batches, and matrix-product batches
            // with a projection large enough to be split by rows.
            let mut split = 0;
            for (h, t, b, i) in [
                (7, 3, 1, 2),
                (300, 4, 2, 5),
                (260, 3, 9, 40),
                (96, 40, 16, 96),
            ] {
                split += cells::<f32>(backend, h, t, b, i);
                split += cells::<f64>(backend, h, t, b, i);
            }
            assert!(split > 0, "{backend}: no step was split across threads");
        })
        .unwrap();
    }
}

/// Stacks and bidirectional layers (`layer::Rnn`, one thread per call): the same bits from
/// call to call and from several threads sharing one `Rnn` at once.
#[test]
fn stacks_are_bitwise_repeatable_across_threads() {
    use fused_rnn::layer::{CellConfig, Merge, Rnn, RnnConfig, RnnGrads, RunSpec};
    for cell in [
        CellConfig::Lstm(LstmKind::default()),
        CellConfig::Gru(GruKind::default()),
    ] {
        let config = RnnConfig::new(cell, 6, 40)
            .layers(2)
            .bidirectional(Merge::Concat);
        let rnn = Rnn::<f32>::random(config, 3).unwrap();
        let spec = RunSpec::new(7, 3);
        let x: Vec<f32> = (0..rnn.x_len(&spec).unwrap())
            .map(|k| (k as f32 * 0.37).sin())
            .collect();
        let run = || {
            let mut y = vec![0.0; rnn.y_len(&spec).unwrap()];
            let mut hy = vec![0.0; rnn.state_len(3).unwrap()];
            let mut tape = vec![0.0; rnn.tape_len(&spec).unwrap()];
            rnn.forward_train(&spec, &x, None, &mut tape, &mut y, &mut hy)
                .unwrap();
            let mut g = RnnGrads::zeros(&rnn, &spec).unwrap();
            let dy = vec![0.5; y.len()];
            rnn.bptt(
                &spec,
                &x,
                None,
                &tape,
                &dy,
                None,
                &mut g,
                GradMode::Overwrite,
            )
            .unwrap();
            let mut all = vec![bits(&y), bits(&hy), bits(&tape), bits(&g.dx)];
            all.extend(g.params.iter().flatten().map(|p| bits(p)));
            all
        };
        let one = run();
        assert!(run() == one, "{cell:?}: run to run");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(run)).collect();
            for h in handles {
                assert!(
                    h.join().unwrap() == one,
                    "{cell:?}: concurrent call differs"
                );
            }
        });
    }
}
