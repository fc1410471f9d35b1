//! Bad numbers and sizes: NaN and ±inf in inputs, states or weights propagate through forward
//! and backward without a crash or a hang; inputs that drive the activations into the
//! subnormal range do not slow a kernel down; a streaming run of 10⁶ steps runs in constant
//! memory; absurd dimensions are rejected with an error before anything is allocated.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell as StdCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, Real, with_backend};

/// Counts this thread's live bytes and their peak since the last reset (per thread, so that
/// the other tests of this binary, running at the same time, do not count), and the largest
/// allocation that succeeded on any thread.
struct Tracking;

thread_local! {
    static LIVE: StdCell<isize> = const { StdCell::new(0) };
    static PEAK: StdCell<isize> = const { StdCell::new(0) };
}
/// The largest allocation that succeeded.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.with(|l| {
        l.set(l.get() + n as isize);
        l.get()
    });
    PEAK.with(|p| p.set(p.get().max(live)));
}

fn shrank(n: usize) {
    LIVE.with(|l| l.set(l.get() - n as isize));
}

// SAFETY: forwards to the system allocator; the counters are an atomic and const-initialised
// thread-locals without destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        shrank(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Builds a fresh cell each call (its weights get poisoned).
type MakeCell<T> = Box<dyn Fn() -> Box<dyn CellBox<T>>>;

fn cells<T: Real>() -> Vec<(&'static str, MakeCell<T>)> {
    vec![
        (
            "lstm",
            Box::new(|| {
                Box::new(
                    DynLstm::<T>::random(Dyn(3), Dyn(17), LstmKind::default(), true, 1).unwrap(),
                )
            }),
        ),
        (
            "gru",
            Box::new(|| {
                Box::new(DynGru::<T>::random(Dyn(3), Dyn(17), GruKind::default(), true, 2).unwrap())
            }),
        ),
        (
            "gru-rb",
            Box::new(|| {
                let kind = GruKind {
                    reset_after: false,
                    ..Default::default()
                };
                Box::new(DynGru::<T>::random(Dyn(3), Dyn(17), kind, true, 3).unwrap())
            }),
        ),
        (
            "rnn",
            Box::new(|| {
                Box::new(
                    DynSimpleRnn::<T>::random(Dyn(3), Dyn(17), SimpleRnnKind::default(), true, 4)
                        .unwrap(),
                )
            }),
        ),
    ]
}

/// A built-in cell behind a trait object, with mutable weights.
trait CellBox<T: Real>: Cell<T> {
    fn as_cell(&self) -> &dyn Cell<T>;
    fn params_of(&mut self) -> Vec<&mut [T]>;
}
impl<T: Real, C: Cell<T>> CellBox<T> for C {
    fn as_cell(&self) -> &dyn Cell<T> {
        self
    }
    fn params_of(&mut self) -> Vec<&mut [T]> {
        self.params_mut()
    }
}

/// Runs forward, training and BPTT; returns whether `y` has a non-finite value, and whether
/// every gradient buffer came back with its length.
fn run<T: Real>(cell: &dyn Cell<T>, x: &[T], h0: &[T], spec: &SeqSpec) -> (bool, bool) {
    let out = seq::forward(cell, spec, x, Some(h0)).unwrap();
    let mut tape = vec![T::ZERO; seq::tape_len(cell, spec).unwrap()];
    let train = seq::forward_train(cell, spec, x, Some(h0), &mut tape).unwrap();
    let same = out
        .y
        .iter()
        .zip(&train.y)
        .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits());
    assert!(same, "training forward differs from inference");
    let dy = vec![T::ONE; out.y.len()];
    let g = seq::bptt(cell, spec, x, Some(h0), &tape, &dy, None).unwrap();
    let bad = out.y.iter().any(|v| !v.to_f64().is_finite());
    (bad, g.dx.len() == x.len())
}

fn poison<T: Real>() {
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    let (t, b) = (5, 4);
    for (name, make) in cells::<T>() {
        for &v in &specials {
            for threads in [1, 3] {
                let spec = SeqSpec::new(t, b).threads(threads);
                let base = make();
                let x = vec![T::from_f64(0.25); t * b * 3];
                let h0 = vec![T::ZERO; base.state_count() * b * 17];
                // In the input: the poisoned sequence turns non-finite, and NaN reaches y.
                let mut xp = x.clone();
                xp[3 * 2] = T::from_f64(v); // step 0, batch row 2
                let (bad, ok) = run(base.as_cell(), &xp, &h0, &spec);
                assert!(ok, "{name}: gradient lengths");
                if v.is_nan() {
                    assert!(bad, "{name}: NaN in x did not reach y");
                }
                // In the initial state.
                let mut hp = h0.clone();
                hp[17 + 5] = T::from_f64(v); // batch row 1, unit 5
                let (bad, ok) = run(base.as_cell(), &x, &hp, &spec);
                assert!(ok);
                if v.is_nan() {
                    assert!(bad, "{name}: NaN in h0 did not reach y");
                }
                // In every weight tensor.
                for k in 0..base.params().len() {
                    let mut cell = make();
                    cell.params_of()[k][0] = T::from_f64(v);
                    let (bad, ok) = run(cell.as_cell(), &x, &h0, &spec);
                    assert!(ok);
                    if v.is_nan() {
                        assert!(bad, "{name}: NaN in param {k} did not reach y");
                    }
                }
            }
        }
    }
}

#[test]
fn nan_and_inf_propagate_without_crash_on_every_backend() {
    for backend in Backend::available() {
        with_backend(backend, || {
            poison::<f32>();
            poison::<f64>();
        })
        .unwrap();
    }
}

/// Seconds of the best of `rounds` runs of each closure, interleaved.
fn best_of(rounds: usize, runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; runs.len()];
    for _ in 0..rounds {
        for (k, r) in runs.iter_mut().enumerate() {
            let start = Instant::now();
            r();
            best[k] = best[k].min(start.elapsed().as_secs_f64());
        }
    }
    best
}

/// An LSTM without recurrence whose pre-activations, for inputs of ±1, spread evenly over
/// `±[lo, hi]` across the `4·H` gate columns.
fn saturating_lstm<T: Real>(i: usize, h: usize, lo: f64, hi: f64) -> DynLstm<T> {
    let mut cell = DynLstm::<T>::random(Dyn(i), Dyn(h), LstmKind::default(), false, 5).unwrap();
    let p = cell.params_mut();
    let [kernel, recurrent] = <[&mut [T]; 2]>::try_from(p).ok().unwrap();
    let gh = 4 * h;
    for (k, w) in kernel.iter_mut().enumerate() {
        let col = k % gh;
        *w = T::from_f64((lo + (hi - lo) * col as f64 / (gh - 1) as f64) / i as f64);
    }
    recurrent.fill(T::ZERO);
    cell
}

fn subnormal_ratio<T: Real>(backend: Backend, lo: f64, hi: f64) -> (f64, f64) {
    let (t, b, i, h) = (40, 4, 16, 64);
    let cell = saturating_lstm::<T>(i, h, lo, hi);
    let spec = SeqSpec::new(t, b);
    let plus = vec![T::ONE; t * b * i];
    let minus = vec![-T::ONE; t * b * i];
    let small = vec![T::from_f64(0.01); t * b * i];
    let mut tape = vec![T::ZERO; seq::tape_len(&cell, &spec).unwrap()];
    let go = |x: &[T], tape: &mut [T]| {
        seq::forward_train(&cell, &spec, x, None, tape).unwrap();
        let dy = vec![T::ONE; t * b * h];
        seq::bptt(&cell, &spec, x, None, tape, &dy, None).unwrap();
    };
    let mut tp = tape.clone();
    let mut tm = tape.clone();
    let times = best_of(
        7,
        &mut [
            &mut || go(&small, &mut tape),
            &mut || go(&plus, &mut tp),
            &mut || go(&minus, &mut tm),
        ],
    );
    let (normal, p, m) = (times[0], times[1], times[2]);
    // The inputs really reach the subnormal range: the portable backend (the standard
    // library's `exp`) records subnormal gates; the SIMD activations flush them to zero.
    let smallest_normal = if T::NAME == "f32" {
        f32::MIN_POSITIVE as f64
    } else {
        f64::MIN_POSITIVE
    };
    let subnormals = tp
        .iter()
        .chain(&tm)
        .filter(|v| v.to_f64() != 0.0 && v.to_f64().abs() < smallest_normal)
        .count();
    println!(
        "{backend} {}: {subnormals} subnormal values recorded",
        T::NAME
    );
    if backend == Backend::Scalar {
        assert!(
            subnormals > 0,
            "the inputs do not reach the subnormal range"
        );
    }
    println!(
        "{backend} {}: |a| in [{lo}, {hi}]: normal {:.3} ms, +x {:.3} ms, -x {:.3} ms",
        T::NAME,
        normal * 1e3,
        p * 1e3,
        m * 1e3
    );
    (p.max(m) / p.min(m), p.max(m) / normal)
}

/// The oneDNN pitfall: flipping the sign of an LSTM's input drove its activations into the
/// subnormal range and made it 20× slower. Here the gates' pre-activations spread over
/// `±[80, 95]` (f32: `e^-a` and `σ(-a)` are subnormal from 87.3) or `±[700, 712]` (f64, from
/// 708.4), forward and backward, on every backend; neither sign may be more than 2× slower
/// than the other, or than the same run on small inputs.
#[test]
fn subnormal_range_does_not_slow_kernels() {
    for backend in Backend::available() {
        with_backend(backend, || {
            for (flip, slow) in [
                subnormal_ratio::<f32>(backend, 80.0, 95.0),
                subnormal_ratio::<f64>(backend, 700.0, 712.0),
            ] {
                println!("{backend}: sign-flip ratio {flip:.2}, slowest vs normal {slow:.2}");
                assert!(
                    flip <= 2.0,
                    "{backend}: sign flip changes the time by {flip:.2}×"
                );
                assert!(
                    slow <= 2.0,
                    "{backend}: saturated inputs are {slow:.2}× slower"
                );
            }
        })
        .unwrap();
    }
}

/// 10⁶ streaming steps (batch 1, the allocation-free path; and batch 6, whose input projection
/// goes through the matrix product and its per-call buffers) hold no more memory at the end
/// than after the first thousand steps.
#[test]
fn a_million_streaming_steps_run_in_constant_memory() {
    let lstm = DynLstm::<f32>::random(Dyn(4), Dyn(8), LstmKind::default(), true, 9).unwrap();
    for (batch, steps) in [(1usize, 1_000_000usize), (6, 200_000)] {
        let mut stream = Stream::new(&lstm, batch).unwrap();
        let x: Vec<f32> = (0..batch * 4).map(|k| (k as f32 * 0.3).sin()).collect();
        for _ in 0..1000 {
            stream.step(&x).unwrap();
        }
        let live = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(live));
        let mut last = 0.0;
        for _ in 1000..steps {
            last = stream.step(&x).unwrap()[0];
        }
        let (after, peak) = (LIVE.with(|l| l.get()), PEAK.with(|p| p.get()));
        println!(
            "batch {batch}: {steps} steps, live bytes {live} -> {after}, peak growth {}",
            peak - live
        );
        assert!(last.is_finite());
        assert!(
            after <= live,
            "batch {batch}: memory grew from {live} to {after} bytes"
        );
        // Batch 6 allocates (and frees) the matrix product's packing buffers per step.
        assert!(
            peak - live < 1 << 16,
            "batch {batch}: peak grew by {} bytes",
            peak - live
        );
    }
}

/// Sizes of 10¹² elements and more: an error, never an abort, and no allocation of that size
/// succeeds. Sizes whose product overflows are rejected by arithmetic alone; representable
/// ones that no allocator can serve are asked for fallibly and reported as
/// [`Error::Allocation`]; sequence sizes are checked against the caller's buffers first.
#[test]
fn absurd_dimensions_are_rejected_before_allocation() {
    let huge = 1usize << 40; // 1.1·10¹² elements
    // Weights: overflow, or too much memory to allocate.
    assert!(matches!(
        DynLstm::<f32>::random(Dyn(usize::MAX / 2), Dyn(8), LstmKind::default(), true, 1),
        Err(Error::Overflow { .. })
    ));
    assert!(DynLstm::<f32>::random(Dyn(huge), Dyn(huge), LstmKind::default(), true, 1).is_err());
    assert!(DynGru::<f32>::random(Dyn(8), Dyn(huge), GruKind::default(), true, 1).is_err());
    // Sequences: the buffers are checked against the sizes before anything is allocated.
    let cell = DynLstm::<f32>::random(Dyn(4), Dyn(8), LstmKind::default(), true, 1).unwrap();
    let x = vec![0.0f32; 64];
    for spec in [
        SeqSpec::new(huge, huge),
        SeqSpec::new(usize::MAX, 1),
        SeqSpec::new(1, huge),
    ] {
        let e = seq::forward(&cell, &spec, &x, None).unwrap_err();
        assert!(
            matches!(e, Error::Length { .. } | Error::Overflow { .. }),
            "{e}"
        );
        assert!(seq::tape_len(&cell, &spec).is_err() || spec.time_steps != usize::MAX);
        let mut tape = vec![0.0f32; 64];
        assert!(seq::forward_train(&cell, &spec, &x, None, &mut tape).is_err());
        assert!(Gradients::zeros(&cell, &spec).is_err() || spec.batch < huge);
    }
    assert!(Stream::new(&cell, huge).is_err());
    assert!(Stream::new(&cell, usize::MAX).is_err());
    assert!(matches!(
        Stream::new(&cell, huge),
        Err(Error::Allocation { arg: "state", .. })
    ));
    // Layers: gradients, states and dropout masks of absurd sizes.
    use fused_rnn::layer::{CellConfig, Rnn, RnnConfig, RnnGrads, RunSpec, StatefulRnn};
    let config = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 4)
        .layers(2)
        .dropout(0.5, 0.5)
        .inter_layer_dropout(0.5);
    let rnn = Rnn::<f32>::random(config, 1).unwrap();
    assert!(matches!(
        RnnGrads::zeros(&rnn, &RunSpec::new(1 << 20, 1 << 20)),
        Err(Error::Allocation { .. })
    ));
    assert!(matches!(
        StatefulRnn::new(rnn.clone(), huge),
        Err(Error::Allocation { arg: "state", .. })
    ));
    assert!(matches!(
        rnn.between_mask(0, 0, usize::MAX),
        Err(Error::Allocation { arg: "len", .. })
    ));
    assert!(matches!(
        rnn.dropout_masks(0, usize::MAX / 2, 0),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        rnn.dropout_masks(0, huge, 0),
        Err(Error::Allocation { .. })
    ));
    assert!(matches!(
        rnn.dropout_masks(0, 2, 2),
        Err(Error::Invalid { arg: "n", .. })
    ));
    // The reference implementation: sizes whose products overflow.
    use fused_rnn::reference::{self, RefCell, RefKind};
    let lstm = RefKind::Lstm {
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
    };
    assert!(matches!(
        RefCell::from_row_major(lstm, 1, 1 << 62, &[], &[], None),
        Err(Error::Overflow { .. })
    ));
    let small = RefCell::from_row_major(lstm, 1, 1, &[0.0; 4], &[0.0; 4], None).unwrap();
    assert!(matches!(
        reference::forward(&small, &[], 1 << 62, 4, None, false, true),
        Err(Error::Overflow { arg: "x" })
    ));
    let largest = LARGEST.load(Ordering::Relaxed);
    println!("largest successful allocation: {largest} bytes");
    assert!(
        largest < 1 << 30,
        "an allocation of {largest} bytes succeeded"
    );
}
