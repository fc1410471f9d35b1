//! The GPU engine (feature `cuda`) against the CPU engine, which `tests/prop_kernels.rs` holds
//! to the f64 reference, and against the shipped conformance fixtures.
//!
//! Every case runs the device forward, training forward and BPTT over both recurrence paths
//! (persistent where it applies, and standard) and compares outputs, final states, the whole
//! training record (same layout on both engines) and every gradient. Shapes as in
//! prop_kernels (`T` 1..=6, `B` 1..=7, `I` 1..=11, `H` 1..=37) plus fixed larger ones where
//! the persistent kernels split the hidden units over many blocks.
//!
//! The GPU tests are `#[ignore]`d, so that a machine without a GPU reports them as ignored
//! (not run) rather than passed; `gpu_presence` prints whether this machine could run them.
//! On a GPU machine run them with
//! `cargo test --features cuda --test cuda -- --include-ignored`; there a missing GPU fails.
#![cfg(feature = "cuda")]

#[path = "conformance/runner.rs"]
mod runner;

use std::sync::Arc;

use fused_rnn::cell::{CellKind, Recurrent};
use fused_rnn::cuda::{self, CudaDevice, CudaPath, CudaStream, DeviceCell};
use fused_rnn::prelude::*;
use fused_rnn::real::Real;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The device and its default stream; a GPU test asked to run without a GPU fails.
fn gpu() -> (CudaDevice, Arc<CudaStream>) {
    match CudaDevice::new(0) {
        Ok(d) => {
            let s = d.default_stream();
            (d, s)
        }
        Err(e) => panic!("a GPU test was asked to run, but: {e}"),
    }
}

#[test]
fn gpu_presence() {
    match CudaDevice::new(0) {
        Ok(d) => eprintln!(
            "GPU present ({}): run the GPU tests with `-- --include-ignored`",
            d.name().unwrap_or_default()
        ),
        Err(e) => eprintln!("NOT RUN: the GPU tests of tests/cuda.rs are ignored here: {e}"),
    }
}

/// `|got − want| ≤ atol·max(1, max|want|) + rtol·|want|` element-wise (the scale as in
/// prop_kernels: products lose accuracy relative to their largest terms).
fn close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} length", what);
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol * scale + rtol * w.abs() || (g.is_nan() && w.is_nan());
        prop_assert!(
            ok,
            "{}[{}]: got {} want {} (scale {})",
            what,
            k,
            g,
            w,
            scale
        );
    }
    Ok(())
}

fn f64s<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

#[derive(Debug, Clone)]
struct Case {
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    bias: bool,
    initial: bool,
    go_backwards: bool,
    return_sequences: bool,
    batch_major: bool,
    d_final: bool,
    seed: u64,
}

fn spec(c: &Case) -> SeqSpec {
    SeqSpec::new(c.t, c.b)
        .layout(if c.batch_major {
            Layout::BatchMajor
        } else {
            Layout::TimeMajor
        })
        .go_backwards(c.go_backwards)
        .return_sequences(c.return_sequences)
}

/// Deterministic values in ±scale.
fn values<T: Real>(n: usize, seed: u64, scale: f64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from_f64(scale * ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0))
        })
        .collect()
}

/// Runs `cell` on the CPU and on the GPU (`path`) and compares everything.
fn check<T: cuda::CudaReal, K: CellKind>(
    gpu: &(CudaDevice, Arc<CudaStream>),
    cell: &Recurrent<T, K, Dyn, Dyn>,
    c: &Case,
    path: CudaPath,
    tol: f64,
) -> Result<(), TestCaseError> {
    let (device, stream) = gpu;
    let sp = spec(c);
    let s = cell.state_count();
    let x: Vec<T> = values(c.t * c.b * c.i, c.seed, 1.0);
    let init: Option<Vec<T>> = c.initial.then(|| values(s * c.b * c.h, c.seed + 1, 0.5));
    let y_len = if c.return_sequences {
        c.t * c.b * c.h
    } else {
        c.b * c.h
    };
    let dy: Vec<T> = values(y_len, c.seed + 2, 1.0);
    let dfs: Option<Vec<T>> = c.d_final.then(|| values(s * c.b * c.h, c.seed + 3, 1.0));

    let mut dcell =
        DeviceCell::new(device, stream, cell).map_err(|e| TestCaseError::fail(e.to_string()))?;
    dcell.set_path(path);
    let fail = |e: Error| TestCaseError::fail(format!("{path:?}: {e}"));

    let want = seq::forward(cell, &sp, &x, init.as_deref()).map_err(fail)?;
    let got = cuda::host::forward(&dcell, stream, &sp, &x, init.as_deref()).map_err(fail)?;
    close("y", &f64s(&got.y), &f64s(&want.y), tol, tol)?;
    close(
        "final_state",
        &f64s(&got.final_state),
        &f64s(&want.final_state),
        tol,
        tol,
    )?;

    let n = seq::tape_len(cell, &sp).map_err(fail)?;
    prop_assert_eq!(cuda::tape_len(&dcell, &sp).map_err(fail)?, n);
    let mut tape_cpu = vec![T::ZERO; n];
    let mut tape_gpu = vec![T::ZERO; n];
    let want = seq::forward_train(cell, &sp, &x, init.as_deref(), &mut tape_cpu).map_err(fail)?;
    let got = cuda::host::forward_train(&dcell, stream, &sp, &x, init.as_deref(), &mut tape_gpu)
        .map_err(fail)?;
    close("train y", &f64s(&got.y), &f64s(&want.y), tol, tol)?;
    close("tape", &f64s(&tape_gpu), &f64s(&tape_cpu), tol, tol)?;

    let want = seq::bptt(
        cell,
        &sp,
        &x,
        init.as_deref(),
        &tape_cpu,
        &dy,
        dfs.as_deref(),
    )
    .map_err(fail)?;
    let bptt_tol = tol * c.t as f64;
    // The GPU's own record, and the CPU's: both layouts are the same.
    for (name, tape) in [("gpu tape", &tape_gpu), ("cpu tape", &tape_cpu)] {
        let got = cuda::host::bptt(
            &dcell,
            stream,
            &sp,
            &x,
            init.as_deref(),
            tape,
            &dy,
            dfs.as_deref(),
        )
        .map_err(fail)?;
        close(
            &format!("dx ({name})"),
            &f64s(&got.dx),
            &f64s(&want.dx),
            bptt_tol,
            bptt_tol,
        )?;
        close(
            &format!("d_initial_state ({name})"),
            &f64s(&got.d_initial_state),
            &f64s(&want.d_initial_state),
            bptt_tol,
            bptt_tol,
        )?;
        prop_assert_eq!(got.params.len(), want.params.len());
        for (k, (g, w)) in got.params.iter().zip(&want.params).enumerate() {
            close(
                &format!("param {k} ({name})"),
                &f64s(g),
                &f64s(w),
                bptt_tol,
                bptt_tol,
            )?;
        }
    }
    Ok(())
}

const ACTS: [Activation; 5] = Activation::ALL;

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        (1usize..=6, 1usize..=7, 1usize..=11, 1usize..=37),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        any::<u64>(),
    )
        .prop_map(
            |((t, b, i, h), (bias, initial, gb, rs, bm, df), seed)| Case {
                t,
                b,
                i,
                h,
                bias,
                initial,
                go_backwards: gb,
                return_sequences: rs,
                batch_major: bm,
                d_final: df,
                seed,
            },
        )
}

/// Every cell kind with drawn activations, both paths, in type `T`.
fn run_props<T: cuda::CudaReal>(tol: f64, cases: u32) {
    let g = gpu();
    // FUSED_RNN_GPU_CASES overrides the case count (the CPU emulation is slow).
    let cases = std::env::var("FUSED_RNN_GPU_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (case_strategy(), 0usize..4, 0usize..5, 0usize..5);
    runner
        .run(&strategy, |(c, which, a1, a2)| {
            let (act, ract) = (ACTS[a1], ACTS[a2]);
            let (i, h) = (Dyn(c.i), Dyn(c.h));
            for path in [CudaPath::Auto, CudaPath::Standard] {
                match which {
                    0 => {
                        let kind = LstmKind {
                            activation: act,
                            recurrent_activation: ract,
                        };
                        let cell = DynLstm::<T>::random(i, h, kind, c.bias, c.seed).unwrap();
                        check(&g, &cell, &c, path, tol)?;
                    }
                    1 | 2 => {
                        let kind = GruKind {
                            activation: act,
                            recurrent_activation: ract,
                            reset_after: which == 1,
                        };
                        let cell = DynGru::<T>::random(i, h, kind, c.bias, c.seed).unwrap();
                        check(&g, &cell, &c, path, tol)?;
                    }
                    _ => {
                        let kind = SimpleRnnKind { activation: act };
                        let cell = DynSimpleRnn::<T>::random(i, h, kind, c.bias, c.seed).unwrap();
                        check(&g, &cell, &c, path, tol)?;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_matches_cpu_f64() {
    // Both engines in f64: only the order of operations differs (see prop_kernels' F64_FWD).
    run_props::<f64>(1e-9, 96);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_matches_cpu_f32() {
    // f32 on both sides, each within ~1e-4 of the f64 reference (prop_kernels' F32_FWD).
    run_props::<f32>(2e-4, 96);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn persistent_kernels_on_many_blocks() {
    // Hidden sizes that spread units over many blocks (and leave the last block partly
    // idle), batches up to the persistent limit: both paths against the CPU.
    let g = gpu();
    for &(t, b, i, h) in &[
        (5usize, 1usize, 16usize, 200usize),
        (4, 8, 33, 300),
        (3, 16, 8, 129),
        (3, 2, 64, 1024),
    ] {
        let c = Case {
            t,
            b,
            i,
            h,
            bias: true,
            initial: true,
            go_backwards: false,
            return_sequences: true,
            batch_major: true,
            d_final: true,
            seed: (t * 1000 + h) as u64,
        };
        let lstm = DynLstm::<f32>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 3).unwrap();
        let before = GruKind {
            reset_after: false,
            ..GruKind::default()
        };
        let gru_b = DynGru::<f32>::random(Dyn(i), Dyn(h), before, true, 4).unwrap();
        let gru_a = DynGru::<f32>::random(Dyn(i), Dyn(h), GruKind::default(), true, 5).unwrap();
        let rnn =
            DynSimpleRnn::<f32>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 6).unwrap();
        for path in [CudaPath::Auto, CudaPath::Standard] {
            check(&g, &lstm, &c, path, 5e-4).unwrap();
            check(&g, &gru_b, &c, path, 5e-4).unwrap();
            check(&g, &gru_a, &c, path, 5e-4).unwrap();
            check(&g, &rnn, &c, path, 5e-4).unwrap();
        }
        let dl = DeviceCell::new(&g.0, &g.1, &lstm).unwrap();
        eprintln!("T={t} B={b} H={h}: LSTM paths {:?}", dl.paths(b).unwrap());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn forced_persistent_path_runs_or_says_why_not() {
    let g = gpu();
    let cell = DynLstm::<f32>::random(Dyn(4), Dyn(16), LstmKind::default(), true, 1).unwrap();
    let mut d = DeviceCell::new(&g.0, &g.1, &cell).unwrap();
    d.set_path(CudaPath::Persistent);
    assert_eq!(
        d.paths(2).unwrap(),
        (CudaPath::Persistent, CudaPath::Persistent)
    );
    // Beyond the batch limit a forced persistent path is an error, not a silent fallback.
    assert!(matches!(
        d.paths(64),
        Err(Error::Invalid { arg: "path", .. })
    ));
    let spec = SeqSpec::new(2, 64);
    let x = vec![0.1f32; 2 * 64 * 4];
    assert!(cuda::host::forward(&d, &g.1, &spec, &x, None).is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn bad_lengths_are_typed_errors_on_the_device() {
    let g = gpu();
    let cell = DynGru::<f64>::random(Dyn(3), Dyn(5), GruKind::default(), true, 1).unwrap();
    let d = DeviceCell::new(&g.0, &g.1, &cell).unwrap();
    let spec = SeqSpec::new(2, 2);
    let e = cuda::host::forward(&d, &g.1, &spec, &[0.0; 11], None).unwrap_err();
    assert_eq!(
        e,
        Error::Length {
            arg: "x",
            expected: 12,
            actual: 11
        }
    );
    let mut tape = vec![0.0; 3];
    let e = cuda::host::forward_train(&d, &g.1, &spec, &[0.0; 12], None, &mut tape).unwrap_err();
    assert!(matches!(e, Error::Length { arg: "tape", .. }));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn conformance_fixtures_on_the_gpu() {
    let _ = gpu();
    runner::engine::use_cuda().unwrap();
    // The build's checkout, or (a test binary carried to a GPU machine and run from the root
    // of a checkout there) the working directory's.
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let dir = if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("tests/fixtures/v1")
    };
    let mut out = Vec::new();
    let summary = runner::run_dir(&dir, &mut out).unwrap();
    print!("{}", String::from_utf8_lossy(&out));
    println!("{}", summary.line());
    assert_eq!(summary.failed, 0, "{}", summary.line());
    assert!(summary.passed > 0);
}
