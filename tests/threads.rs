//! The forward loop split across threads computes exactly what one thread computes (the same
//! kernels run on the same tiles, or on the same row blocks), for inference and for the
//! recorded training forward, on every backend this CPU has.

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, Real, with_backend};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Counts of shapes whose forward ran split by hidden units and by batch rows.
#[derive(Default)]
struct Splits {
    units: usize,
    rows: usize,
}

fn same_with_threads<C: Cell<f32>>(name: &str, cell: &C, split: &mut Splits) {
    // Up to 31 rows the packed kernels (on SIMD backends), in row blocks; from 32 rows of fewer
    // than 256 units the product-then-epilogue path, except LSTM and GRU of up to 64 units,
    // which stay on the packed kernels. From 13 rows (packed) or 64 (products) small cells
    // split by batch rows.
    for (t, b) in [
        (1, 1),
        (7, 1),
        (5, 3),
        (4, 4),
        (3, 6),
        (2, 9),
        (3, 13),
        (2, 33),
        (2, 64),
        (2, 70),
    ] {
        // The engine splits rows only for runs with work for two threads, `T·B·P·(H + I)` of
        // at least 2·2²¹ multiply-adds: where the cell answers row parts, a sequence long
        // enough for that (up to 512 steps; cells too small for it run unsplit).
        let (h, i) = (cell.hidden_size(), cell.input_size());
        let per_step = b * cell.projection_width().max(h) * (h + i);
        let t_split = (4usize << 20).div_ceil(per_step);
        let by_rows = cell.row_parts(b, 2).is_some() && t_split <= 512;
        let t = if by_rows { t.max(t_split) } else { t };
        if by_rows {
            split.rows += 1;
        } else if cell.max_parts(b) > 1 {
            split.units += 1;
        }
        for (layout, go_backwards, return_sequences) in [
            (Layout::BatchMajor, false, true),
            (Layout::BatchMajor, true, true),
            (Layout::TimeMajor, false, true),
            (Layout::TimeMajor, true, false),
        ] {
            let spec = SeqSpec::new(t, b)
                .layout(layout)
                .go_backwards(go_backwards)
                .return_sequences(return_sequences);
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
        let mut split = Splits::default();
        with_backend(backend, || {
            // Small steps stay on one thread (not worth another); 300 units split into parts;
            // 80 units take the product-then-epilogue path from 32 rows.
            for h in [1, 37, 80, 300] {
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
                if h == 300 {
                    // bfloat16 inference, whose B = 1 SimpleRNN steps run tiles in groups.
                    let (mut lstm, mut gru, mut rnn) = (lstm, gru, rnn);
                    lstm.set_bf16_inference(true);
                    gru.set_bf16_inference(true);
                    rnn.set_bf16_inference(true);
                    same_with_threads(&format!("{backend} lstm bf16 H={h}"), &lstm, &mut split);
                    same_with_threads(&format!("{backend} gru bf16 H={h}"), &gru, &mut split);
                    same_with_threads(&format!("{backend} rnn bf16 H={h}"), &rnn, &mut split);
                }
            }
        })
        .unwrap();
        // Both splits must really have run, or this test proves nothing about them (the
        // scalar backend has no packed kernels, whose blocks the row split must respect).
        println!(
            "{backend}: {} shapes split by units, {} by rows",
            split.units, split.rows
        );
        assert!(split.rows > 0, "{backend}: no run was split by rows");
        assert!(
            backend == Backend::Scalar || split.units > 0,
            "{backend}: no step was split by units"
        );
    }
}

#[test]
fn zero_threads_is_an_error() {
    let cell = DynLstm::<f32>::random(Dyn(2), Dyn(3), LstmKind::default(), true, 1).unwrap();
    let err = seq::forward(&cell, &SeqSpec::new(2, 1).threads(0), &[0.0; 4], None).unwrap_err();
    assert_eq!(err, Error::Zero { arg: "threads" });
}

/// The threads of this process (Linux), or `None`.
fn process_threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line["Threads:".len()..].trim().parse().ok()
}

/// A thread count far beyond the machine's runs on at most the machine's threads (it used to
/// start one worker per requested thread, and abort when the system ran out of them), with
/// one thread's results.
#[test]
fn more_threads_than_the_machine_has_use_the_machines() {
    let cell = DynLstm::<f32>::random(Dyn(64), Dyn(256), LstmKind::default(), true, 1).unwrap();
    let (t, b) = (16, 64);
    let x: Vec<f32> = (0..t * b * 64).map(|k| (k as f32 * 0.37).sin()).collect();
    let dy: Vec<f32> = (0..t * b * 256).map(|k| (k as f32 * 0.11).cos()).collect();
    let run = |threads: usize| {
        let spec = SeqSpec::new(t, b).threads(threads);
        let mut tape = vec![0.0; seq::tape_len(&cell, &spec).unwrap()];
        let out = seq::forward_train(&cell, &spec, &x, None, &mut tape).unwrap();
        let grads = seq::bptt(&cell, &spec, &x, None, &tape, &dy, None).unwrap();
        (
            bits(&out.y),
            bits(&grads.dx),
            grads
                .params
                .concat()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
        )
    };
    let one = run(1);
    assert!(run(1 << 20) == one, "results changed with the thread count");
    let machine = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(n) = process_threads() {
        // This test's thread, the harness's threads (at most one per CPU) and the workers.
        assert!(
            n <= 3 * machine + 2,
            "{n} threads on a machine of {machine}"
        );
    }
}

/// BPTT with `threads(n)` splits its products over all `T·B` rows, and for LSTM, SimpleRNN and
/// the reset-after GRU its reverse step loop by batch rows, or else by hidden units; every
/// gradient stays bit-identical to one thread's. Returns how many runs split the step loop by
/// rows and by units.
fn bptt_same_with_threads<T: Real, C: Cell<T>>(name: &str, cell: &C) -> (usize, usize) {
    let (mut row_split, mut unit_split) = (0, 0);
    // 32 rows of 64 inputs over 32 steps: the products are large enough to be split, and the
    // steps too for the engine to split rows (SimpleRNN of 48 units included); 36 rows
    // split into parts of 16 and 20 (at the kernels' row blocks), 3 rows and 1 stay whole (one
    // row runs the state gradient's tiles in groups).
    for (b, layout, go_backwards, return_sequences, with_d_final) in [
        (32, Layout::BatchMajor, false, true, false),
        (36, Layout::TimeMajor, true, false, true),
        (3, Layout::BatchMajor, false, true, true),
        (1, Layout::TimeMajor, false, true, true),
    ] {
        let t = 32;
        let spec = SeqSpec::new(t, b)
            .layout(layout)
            .go_backwards(go_backwards)
            .return_sequences(return_sequences);
        let x: Vec<T> = (0..t * b * cell.input_size())
            .map(|k| T::from_f64((k as f64 * 0.37).sin()))
            .collect();
        let mut tape = vec![T::ZERO; seq::tape_len(cell, &spec).unwrap()];
        let out = seq::forward_train(cell, &spec, &x, None, &mut tape).unwrap();
        let dy: Vec<T> = (0..out.y.len())
            .map(|k| T::from_f64((k as f64 * 0.21).cos()))
            .collect();
        let d_final: Vec<T> = (0..out.final_state.len())
            .map(|k| T::from_f64((k as f64 * 0.13).sin()))
            .collect();
        let d_final = with_d_final.then_some(&d_final[..]);
        let bits = |g: &seq::Gradients<T>| {
            let mut v: Vec<u64> = g.dx.iter().map(|x| x.to_f64().to_bits()).collect();
            v.extend(g.d_initial_state.iter().map(|x| x.to_f64().to_bits()));
            for p in &g.params {
                v.extend(p.iter().map(|x| x.to_f64().to_bits()));
            }
            v
        };
        let one = bits(&seq::bptt(cell, &spec, &x, None, &tape, &dy, d_final).unwrap());
        for threads in [2, 3] {
            let by_rows = cell.backward_row_parts(b, threads).is_some();
            row_split += usize::from(by_rows);
            unit_split += usize::from(!by_rows && cell.backward_unit_parts(b, threads) > 1);
            let spec_n = spec.threads(threads);
            let many = seq::bptt(cell, &spec_n, &x, None, &tape, &dy, d_final).unwrap();
            assert!(
                bits(&many) == one,
                "{name} B={b} threads={threads}: gradients"
            );
        }
    }
    (row_split, unit_split)
}

#[test]
fn threaded_bptt_matches_one_thread() {
    for backend in Backend::available() {
        // 48 units: the reverse loop splits by rows where the batch allows, never by units.
        let (rows, _) = with_backend(backend, || bptt_cells(48, 48)).unwrap();
        println!("{backend}: {rows} BPTT runs split by rows");
        assert!(rows > 0, "{backend}: no BPTT run was split by rows");
        // 128 units (SimpleRNN 256): 3 rows are enough work to split by units.
        let (_, units) = with_backend(backend, || bptt_cells(128, 256)).unwrap();
        println!("{backend}: {units} BPTT runs split by units");
        assert!(units > 0, "{backend}: no BPTT run was split by units");
    }
}

/// [`bptt_same_with_threads`] on LSTM (`f32` and `f64`), both GRU variants and SimpleRNN of
/// `h` units (SimpleRNN `h_rnn`); the summed split counts.
fn bptt_cells(h: usize, h_rnn: usize) -> (usize, usize) {
    let mut split = (0, 0);
    let mut add = |(r, u): (usize, usize)| {
        split.0 += r;
        split.1 += u;
    };
    let lstm = DynLstm::<f32>::random(Dyn(64), Dyn(h), LstmKind::default(), true, 1).unwrap();
    add(bptt_same_with_threads("lstm f32", &lstm));
    let lstm = DynLstm::<f64>::random(Dyn(64), Dyn(h), LstmKind::default(), true, 1).unwrap();
    add(bptt_same_with_threads("lstm f64", &lstm));
    let gru = DynGru::<f32>::random(Dyn(64), Dyn(h), GruKind::default(), true, 2).unwrap();
    add(bptt_same_with_threads("gru f32", &gru));
    let kind = GruKind {
        reset_after: false,
        ..GruKind::default()
    };
    let gru_rb = DynGru::<f32>::random(Dyn(64), Dyn(h), kind, true, 2).unwrap();
    add(bptt_same_with_threads("gru reset-before f32", &gru_rb));
    let kind = SimpleRnnKind::default();
    let rnn = DynSimpleRnn::<f32>::random(Dyn(64), Dyn(h_rnn), kind, true, 3).unwrap();
    add(bptt_same_with_threads("rnn f32", &rnn));
    split
}

/// A cell that delegates to an LSTM but answers `row_parts` and `backward_row_parts` with
/// ranges the engine cannot use (overlapping, short of the batch, or empty).
struct BadParts(DynLstm<f32>, Vec<std::ops::Range<usize>>);

impl Cell<f32> for BadParts {
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
    fn prepare(&self) {
        self.0.prepare()
    }
    fn row_parts(&self, _: usize, _: usize) -> Option<Vec<std::ops::Range<usize>>> {
        Some(self.1.clone())
    }
    fn backward_row_parts(&self, _: usize, _: usize) -> Option<Vec<std::ops::Range<usize>>> {
        Some(self.1.clone())
    }
    fn projection_width(&self) -> usize {
        self.0.projection_width()
    }
    fn project_inputs(&self, x: &[f32], proj: &mut [f32]) {
        self.0.project_inputs(x, proj)
    }
    fn step_forward(&self, step: fused_rnn::cell::StepForward<'_, f32>) {
        self.0.step_forward(step)
    }
    fn step_backward(&self, step: fused_rnn::cell::StepBackward<'_, f32>, grads: &mut [Vec<f32>]) {
        self.0.step_backward(step, grads)
    }
    fn project_backward(&self, x: &[f32], d_proj: &[f32], dx: &mut [f32], grads: &mut [Vec<f32>]) {
        self.0.project_backward(x, d_proj, dx, grads)
    }
    fn sequence_backward(
        &self,
        batch: usize,
        states: &[f32],
        tape: &[f32],
        d_proj: &[f32],
        grads: &mut [Vec<f32>],
    ) {
        self.0.sequence_backward(batch, states, tape, d_proj, grads)
    }
    fn params(&self) -> Vec<fused_rnn::cell::Param<'_, f32>> {
        self.0.params()
    }
    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.0.params_mut()
    }
}

/// Row parts that do not tile the batch are not used: the run stays on one thread and computes
/// what the wrapped cell computes, instead of failing or leaving rows out.
#[test]
fn unusable_row_parts_run_unsplit() {
    let (t, b) = (4, 20);
    let lstm = DynLstm::<f32>::random(Dyn(5), Dyn(8), LstmKind::default(), true, 1).unwrap();
    let spec = SeqSpec::new(t, b);
    let x: Vec<f32> = (0..t * b * 5).map(|k| (k as f32 * 0.37).sin()).collect();
    let mut tape = vec![0.0; seq::tape_len(&lstm, &spec).unwrap()];
    let want = seq::forward_train(&lstm, &spec, &x, None, &mut tape).unwrap();
    let dy = vec![0.5; want.y.len()];
    let want_grads = seq::bptt(&lstm, &spec, &x, None, &tape, &dy, None).unwrap();
    for parts in [
        vec![0..12, 8..20],
        std::iter::once(0..10).collect(),
        vec![0..10, 10..10, 10..20],
        vec![0..10, 10..30],
    ] {
        let cell = BadParts(lstm.clone(), parts.clone());
        let spec = spec.threads(2);
        let mut tape = vec![0.0; tape.len()];
        let got = seq::forward_train(&cell, &spec, &x, None, &mut tape).unwrap();
        assert_eq!(bits(&got.y), bits(&want.y), "{parts:?}: y");
        let grads = seq::bptt(&cell, &spec, &x, None, &tape, &dy, None).unwrap();
        assert_eq!(bits(&grads.dx), bits(&want_grads.dx), "{parts:?}: dx");
    }
}

/// A cell whose step panics in one part of a split step: the panic reaches the caller, and
/// the other part, waiting for it at the step's barrier, does not wait forever.
#[test]
fn a_panic_in_one_part_of_a_split_step_reaches_the_caller() {
    use fused_rnn::cell::{Param, StepBackward, StepForward};
    struct PanicsInPartOne;
    impl Cell<f32> for PanicsInPartOne {
        fn input_size(&self) -> usize {
            1
        }
        fn hidden_size(&self) -> usize {
            32
        }
        fn max_parts(&self, _batch: usize) -> usize {
            2
        }
        fn step_forward(&self, s: StepForward<'_, f32>) {
            assert!(s.part.index != 1, "a bug in part 1");
            s.next.fill(0.0);
        }
        fn step_backward(&self, _s: StepBackward<'_, f32>, _grads: &mut [Vec<f32>]) {}
        fn params(&self) -> Vec<Param<'_, f32>> {
            Vec::new()
        }
        fn params_mut(&mut self) -> Vec<&mut [f32]> {
            Vec::new()
        }
    }
    let (sent, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let spec = SeqSpec::new(3, 1).threads(2);
        let run =
            std::panic::catch_unwind(|| seq::forward(&PanicsInPartOne, &spec, &[0.0; 3], None));
        let _ = sent.send(run.is_err());
    });
    let panicked = received
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the call returned or panicked within a minute");
    // One CPU: the step runs unsplit, as part 0, and nothing panics.
    let split = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    assert_eq!(panicked, split, "the part's panic reached the caller");
}

/// A cell whose part units do not tile `0..H` (a gap, an overlap, units past `H`) cannot be
/// split by units: the engine runs it on one thread, with one thread's results (it used to
/// return wrong outputs, or panic, without a word).
#[test]
fn unusable_part_units_run_unsplit() {
    use fused_rnn::cell::{Param, Part, StepBackward, StepForward};
    /// `h' = tanh(x₀ + 0.5·h)` per unit, over the units of its step's part; `units` says
    /// which units it claims a part computes.
    struct Claims(fn(Part, usize) -> std::ops::Range<usize>);
    const H: usize = 8;
    impl Cell<f64> for Claims {
        fn input_size(&self) -> usize {
            1
        }
        fn hidden_size(&self) -> usize {
            H
        }
        fn max_parts(&self, _batch: usize) -> usize {
            2
        }
        fn part_units(&self, part: Part) -> std::ops::Range<usize> {
            (self.0)(part, H)
        }
        fn step_forward(&self, s: StepForward<'_, f64>) {
            for b in 0..s.batch {
                for u in s.part.range(H) {
                    s.next[b * H + u] = (s.x[b] + 0.5 * s.state[b * H + u] + u as f64).tanh();
                }
            }
        }
        fn step_backward(&self, _s: StepBackward<'_, f64>, _grads: &mut [Vec<f64>]) {}
        fn params(&self) -> Vec<Param<'_, f64>> {
            Vec::new()
        }
        fn params_mut(&mut self) -> Vec<&mut [f64]> {
            Vec::new()
        }
    }
    let x: Vec<f64> = (0..5 * 2).map(|k| (k as f64 * 0.3).sin()).collect();
    let run = |cell: &Claims, threads: usize| {
        let out = seq::forward(cell, &SeqSpec::new(5, 2).threads(threads), &x, None).unwrap();
        (out.y, out.final_state)
    };
    let one = run(&Claims(|part, h| part.range(h)), 1);
    let claims: [fn(Part, usize) -> std::ops::Range<usize>; 4] = [
        |part, h| part.range(h), // the real split: the same bits
        |_, h| 0..h / 2,         // a gap
        |part, h| if part.index == 1 { 0..h } else { part.range(h) }, // an overlap
        |part, h| part.range(h + 1), // past H
    ];
    for (k, claim) in claims.into_iter().enumerate() {
        assert!(
            run(&Claims(claim), 2) == one,
            "claim {k}: the results changed"
        );
    }
}
