//! Every built-in cell's forward pass (`f32` weights and bfloat16), training record and BPTT,
//! in `f32` and `f64`, on every backend this CPU has, run on one thread and on two from a
//! thread with a 1 MiB stack: half of what `std` gives a spawned thread (the test harness's
//! threads, a caller's own workers), so that a call needs no frames near that size.
//!
//! CI also runs this file unoptimised (`CARGO_PROFILE_TEST_OPT_LEVEL=0`): there the kernels'
//! forced inlining once gave the forward-step dispatch frames of 2-3 MiB, and every call from
//! such a thread overflowed its stack (see `build.rs`).

use fused_rnn::prelude::*;
use fused_rnn::{Backend, Real, with_backend};

/// Half of what `std::thread::spawn` gives a thread unless `RUST_MIN_STACK` says otherwise.
const SMALL_STACK: usize = 1 << 20;

/// Forward, forward with a record, and BPTT of `cell` over a few steps; true when all three
/// returned results of the expected lengths.
fn runs<T: Real, C: Cell<T>>(cell: &C, threads: usize) -> bool {
    let (t, b) = (3, 5);
    let spec = SeqSpec::new(t, b).threads(threads);
    let (i, h) = (cell.input_size(), cell.hidden_size());
    let x: Vec<T> = (0..t * b * i)
        .map(|k| T::from_f64(((k % 7) as f64 - 3.0) / 4.0))
        .collect();
    let Ok(inference) = seq::forward(cell, &spec, &x, None) else {
        return false;
    };
    let Ok(len) = seq::tape_len(cell, &spec) else {
        return false;
    };
    let mut tape = vec![T::ZERO; len];
    let Ok(train) = seq::forward_train(cell, &spec, &x, None, &mut tape) else {
        return false;
    };
    let dy = vec![T::ONE; train.y.len()];
    let Ok(grads) = seq::bptt(cell, &spec, &x, None, &tape, &dy, None) else {
        return false;
    };
    inference.y.len() == t * b * h && grads.dx.len() == x.len()
}

/// Every cell kind in `T`, with sizes that take the register-fused step kernels (few rows,
/// units that are not a multiple of the SIMD width).
fn all_cells_run<T: Real>(threads: usize) -> bool {
    let (i, h) = (6, 37);
    let lstm = DynLstm::<T>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1).unwrap();
    let gru_after = DynGru::<T>::random(Dyn(i), Dyn(h), GruKind::default(), true, 2).unwrap();
    let before = GruKind {
        reset_after: false,
        ..GruKind::default()
    };
    let gru_before = DynGru::<T>::random(Dyn(i), Dyn(h), before, true, 3).unwrap();
    let rnn = DynSimpleRnn::<T>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 4).unwrap();
    runs(&lstm, threads)
        && runs(&gru_after, threads)
        && runs(&gru_before, threads)
        && runs(&rnn, threads)
}

/// Inference with bfloat16 recurrent weights, which has step kernels of its own.
fn bf16_cells_run(threads: usize) -> bool {
    let (t, b, i, h) = (3, 5, 6, 37);
    let spec = SeqSpec::new(t, b).threads(threads);
    let x = vec![0.25f32; t * b * i];
    let mut lstm = DynLstm::<f32>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1).unwrap();
    let mut gru = DynGru::<f32>::random(Dyn(i), Dyn(h), GruKind::default(), true, 2).unwrap();
    let mut rnn =
        DynSimpleRnn::<f32>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 4).unwrap();
    lstm.set_bf16_inference(true);
    gru.set_bf16_inference(true);
    rnn.set_bf16_inference(true);
    let ok = |y: Result<Output<f32>>| y.is_ok_and(|o| o.y.len() == t * b * h);
    ok(seq::forward(&lstm, &spec, &x, None))
        && ok(seq::forward(&gru, &spec, &x, None))
        && ok(seq::forward(&rnn, &spec, &x, None))
}

#[test]
fn every_cell_runs_on_a_spawned_threads_stack() {
    for backend in Backend::available() {
        for threads in [1, 2] {
            let ran = std::thread::Builder::new()
                .stack_size(SMALL_STACK)
                .spawn(move || {
                    with_backend(backend, || {
                        all_cells_run::<f32>(threads)
                            && all_cells_run::<f64>(threads)
                            && bf16_cells_run(threads)
                    })
                })
                .expect("a thread")
                .join();
            assert!(
                matches!(ran, Ok(Ok(true))),
                "{backend:?}, {threads} thread(s): {ran:?}"
            );
        }
    }
}
