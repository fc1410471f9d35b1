//! The forward loop split across threads computes exactly what one thread computes (the same
//! kernels run on the same tiles), for inference and for the recorded training forward, on
//! every backend this CPU has.

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, with_backend};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn same_with_threads<C: Cell<f32>>(name: &str, cell: &C, split: &mut usize) {
    // Up to 31 rows the packed kernels (on SIMD backends), in row blocks; 33 rows of fewer than
    // 256 units the matrix-product path.
    for (t, b) in [(1, 1), (7, 1), (5, 3), (4, 4), (3, 6), (2, 9), (2, 33)] {
        if cell.max_parts(b) > 1 {
            *split += 1;
        }
        for go_backwards in [false, true] {
            let spec = SeqSpec::new(t, b)
                .layout(Layout::BatchMajor)
                .go_backwards(go_backwards);
            let x: Vec<f32> = (0..t * b * cell.input_size())
                .map(|k| (k as f32 * 0.37).sin())
                .collect();
            let h0: Vec<f32> = (0..cell.state_count() * b * cell.hidden_size())
                .map(|k| (k as f32 * 0.11).cos() * 0.5)
                .collect();
            let one = seq::forward(cell, &spec, &x, Some(&h0)).unwrap();
            let mut tape1 = vec![0.0; seq::tape_len(cell, &spec).unwrap()];
            let train1 = seq::forward_train(cell, &spec, &x, Some(&h0), &mut tape1).unwrap();
            for threads in [2, 3, 8] {
                let spec_n = spec.threads(threads);
                let many = seq::forward(cell, &spec_n, &x, Some(&h0)).unwrap();
                assert_eq!(
                    bits(&many.y),
                    bits(&one.y),
                    "{name} T={t} B={b} threads={threads}: y"
                );
                assert_eq!(
                    bits(&many.final_state),
                    bits(&one.final_state),
                    "{name}: final state"
                );
                let mut tape_n = vec![0.0; tape1.len()];
                let train_n =
                    seq::forward_train(cell, &spec_n, &x, Some(&h0), &mut tape_n).unwrap();
                assert_eq!(
                    bits(&train_n.y),
                    bits(&train1.y),
                    "{name} T={t} B={b} threads={threads}: train y"
                );
                assert_eq!(
                    bits(&tape_n),
                    bits(&tape1),
                    "{name} T={t} B={b} threads={threads}: record"
                );
            }
        }
    }
}

#[test]
fn threaded_forward_matches_one_thread() {
    for backend in Backend::available() {
        let mut split = 0;
        with_backend(backend, || {
            // Small steps stay on one thread (not worth another); 300 units split into parts.
            for h in [1, 37, 300] {
                let lstm =
                    DynLstm::<f32>::random(Dyn(5), Dyn(h), LstmKind::default(), true, 1).unwrap();
                same_with_threads(&format!("{backend} lstm H={h}"), &lstm, &mut split);
                let gru =
                    DynGru::<f32>::random(Dyn(5), Dyn(h), GruKind::default(), true, 2).unwrap();
                same_with_threads(&format!("{backend} gru H={h}"), &gru, &mut split);
                let kind = GruKind {
                    reset_after: false,
                    ..Default::default()
                };
                let gru_rb = DynGru::<f32>::random(Dyn(5), Dyn(h), kind, true, 2).unwrap();
                same_with_threads(
                    &format!("{backend} gru reset-before H={h}"),
                    &gru_rb,
                    &mut split,
                );
                let rnn =
                    DynSimpleRnn::<f32>::random(Dyn(5), Dyn(h), SimpleRnnKind::default(), false, 3)
                        .unwrap();
                same_with_threads(&format!("{backend} rnn H={h}"), &rnn, &mut split);
            }
        })
        .unwrap();
        // The SIMD backends must really have split steps, or this test proves nothing there.
        println!("{backend}: {split} shapes split across threads");
        assert!(
            backend == Backend::Scalar || split > 0,
            "{backend}: no step was split"
        );
    }
}

#[test]
fn zero_threads_is_an_error() {
    let cell = DynLstm::<f32>::random(Dyn(2), Dyn(3), LstmKind::default(), true, 1).unwrap();
    let err = seq::forward(&cell, &SeqSpec::new(2, 1).threads(0), &[0.0; 4], None).unwrap_err();
    assert_eq!(err, Error::Zero { arg: "threads" });
}
