//! Benchmark CLI: times one shape, or the standard table, and prints one JSON object per
//! measurement, plus a same-run single-thread sgemm measurement as the machine's ceiling.
//!
//! ```text
//! cargo run --release --example bench -- --cell lstm --batch 1 --seq 100 --input 256 --hidden 256 \
//!     --mode infer [--threads N] [--backend auto|scalar|avx2|avx512|cuda] [--dtype f32|bf16] [--json]
//! cargo run --release --example bench -- --preset standard [--mode infer|train|both] [--json]
//! cargo run --release --features cuda --example bench -- --backend cuda --preset standard --mode both
//! ```
//!
//! `--backend cuda` times the GPU engine (`examples/support/cuda_bench.rs`; exit 2 with the
//! reason when there is no GPU).
//!
//! `--dropout P` / `--recurrent-dropout P` (train mode) run through `fused_rnn::layer` with
//! Keras dropout; compare with rate 0 (also the layer path) for the cost of the fused masks.
//!
//! `--input-scale F` multiplies every input by `F`: comparing `F` with `−F` (e.g. ±60, which
//! drives gates to 0 and 1 and, without flushing, their derivatives and products towards
//! subnormal numbers) shows whether a sign flip slows a kernel down.
//!
//! `--no-ceiling` skips the sgemm measurement (so that a profile shows only the kernels).
//!
//! FLOPs per step are `2·B·(I+H)·G·H` (G = 1, 3, 4 for rnn, gru, lstm); training (forward with
//! recording, then BPTT with every gradient) counts 3× the forward. Without `--json` a table
//! is printed instead.

#[cfg(feature = "cuda")]
#[path = "support/cuda_bench.rs"]
mod cuda_bench;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, with_backend};

/// The standard shapes `(name, T, B, I, H)`, batch-major input.
const STANDARD: [(&str, usize, usize, usize, usize); 8] = [
    ("S1", 100, 1, 64, 64),
    ("S2", 100, 1, 256, 256),
    ("S3", 100, 1, 512, 512),
    ("S4", 50, 16, 128, 128),
    ("S5", 50, 16, 512, 512),
    ("S6", 256, 32, 256, 32),
    ("S7", 28, 64, 28, 128),
    ("S8", 25, 64, 1024, 1024),
];

#[derive(Debug, Clone)]
struct Args {
    cells: Vec<String>,
    shapes: Vec<(String, usize, usize, usize, usize)>,
    modes: Vec<String>,
    threads: usize,
    backend: Option<Backend>,
    bf16: bool,
    json: bool,
    min_time: Duration,
    /// Factor on every input (a negative one flips the sign: the subnormal check).
    input_scale: f32,
    /// `--backend cuda`: the GPU engine.
    cuda: bool,
    /// `(dropout, recurrent_dropout)`: train through `fused_rnn::layer` with Keras dropout
    /// (either flag switches to the layer path, also at rate 0, so that the two compare).
    layer_dropout: Option<(f64, f64)>,
    /// Whether to measure the sgemm ceiling first (`--no-ceiling` skips it, for profilers).
    ceiling: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        cells: vec!["lstm".into()],
        shapes: Vec::new(),
        modes: vec!["infer".into()],
        threads: 1,
        backend: None,
        bf16: false,
        json: false,
        min_time: Duration::from_millis(300),
        input_scale: 1.0,
        cuda: false,
        layer_dropout: None,
        ceiling: true,
    };
    let (mut t, mut b, mut i, mut h) = (None, None, None, None);
    let mut cell_given = false;
    let mut it = std::env::args().skip(1);
    let count = |v: Option<String>, name: &str| -> Result<usize, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{name}: `{v}` is not a non-negative integer"))
    };
    let num = |v: Option<String>, name: &str| -> Result<usize, String> {
        match count(v, name)? {
            0 => Err(format!("{name}: 0 is not a positive integer")),
            n => Ok(n),
        }
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--cell" => {
                let c = it.next().ok_or("--cell needs a value")?;
                if !["lstm", "gru", "rnn"].contains(&c.as_str()) {
                    return Err(format!("--cell: unknown `{c}`, expected lstm, gru or rnn"));
                }
                a.cells = vec![c];
                cell_given = true;
            }
            "--batch" => b = Some(num(it.next(), "--batch")?),
            "--seq" => t = Some(num(it.next(), "--seq")?),
            "--input" => i = Some(num(it.next(), "--input")?),
            "--hidden" => h = Some(num(it.next(), "--hidden")?),
            "--mode" => {
                a.modes = match it.next().as_deref() {
                    Some("infer") => vec!["infer".into()],
                    Some("train") => vec!["train".into()],
                    Some("both") => vec!["infer".into(), "train".into()],
                    other => {
                        return Err(format!(
                            "--mode: `{other:?}`, expected infer, train or both"
                        ));
                    }
                }
            }
            "--threads" => a.threads = num(it.next(), "--threads")?,
            "--backend" => {
                let v = it.next().ok_or("--backend needs a value")?;
                a.cuda = v == "cuda";
                a.backend = if v == "auto" || v == "cuda" {
                    None
                } else {
                    Some(Backend::from_name(&v).map_err(|e| e.to_string())?)
                };
            }
            "--dtype" => {
                a.bf16 = match it.next().as_deref() {
                    Some("f32") => false,
                    Some("bf16") => true,
                    other => return Err(format!("--dtype: `{other:?}`, expected f32 or bf16")),
                };
            }
            "--preset" => {
                let v = it.next().ok_or("--preset needs a value")?;
                if v != "standard" {
                    return Err(format!("--preset: unknown `{v}`, expected standard"));
                }
                a.shapes = STANDARD
                    .iter()
                    .map(|&(n, t, b, i, h)| (n.to_string(), t, b, i, h))
                    .collect();
                if !cell_given {
                    a.cells = vec!["lstm".into(), "gru".into(), "rnn".into()];
                }
            }
            "--input-scale" => {
                let v = it.next().ok_or("--input-scale needs a value")?;
                a.input_scale = v
                    .parse()
                    .map_err(|_| format!("--input-scale: `{v}` is not a number"))?;
            }
            "--min-time-ms" => {
                a.min_time = Duration::from_millis(count(it.next(), "--min-time-ms")? as u64)
            }
            "--dropout" | "--recurrent-dropout" => {
                let v = it.next().ok_or(format!("{flag} needs a value"))?;
                let p: f64 = v
                    .parse()
                    .ok()
                    .filter(|p| (0.0..1.0).contains(p))
                    .ok_or_else(|| format!("{flag}: `{v}` is not a rate in [0, 1)"))?;
                let (d, r) = a.layer_dropout.unwrap_or((0.0, 0.0));
                a.layer_dropout = Some(if flag == "--dropout" { (p, r) } else { (d, p) });
            }
            "--json" => a.json = true,
            "--no-ceiling" => a.ceiling = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.bf16 && a.modes.iter().any(|m| m != "infer") {
        return Err(
            "--dtype bf16 applies to inference only (training uses the f32 weights)".into(),
        );
    }
    if a.shapes.is_empty() {
        match (t, b, i, h) {
            (Some(t), Some(b), Some(i), Some(h)) => a.shapes.push(("custom".into(), t, b, i, h)),
            _ => {
                return Err(
                    "give --seq, --batch, --input and --hidden (all ≥ 1), or --preset standard"
                        .into(),
                );
            }
        }
    }
    Ok(a)
}

/// Median, min and max of repeated runs of `f` (at least 5 runs and `min_time` in all), or
/// the first error `f` returns.
fn measure<E: std::fmt::Display>(
    min_time: Duration,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<(f64, f64, f64), String> {
    let mut run = || f().map_err(|e| e.to_string());
    run()?; // warm-up: caches, page faults, lazy detection
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed() < min_time {
        let s = Instant::now();
        run()?;
        times.push(s.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], times[times.len() - 1]))
}

struct Row<'a> {
    cell: &'a str,
    mode: &'a str,
    shape: &'a str,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    backend: Backend,
    dtype: &'a str,
    times: (f64, f64, f64),
    flops: f64,
}

fn print_row(r: &Row<'_>, threads: usize, json: bool) {
    let (median, min, max) = r.times;
    let gflops = r.flops / median * 1e-9;
    if json {
        emit(format_args!(
            "{{\"cell\":\"{}\",\"mode\":\"{}\",\"shape\":\"{}\",\"batch\":{},\"seq\":{},\"input\":{},\"hidden\":{},\"threads\":{threads},\"backend\":\"{}\",\"dtype\":\"{}\",\"median_s\":{median:.9},\"min_s\":{min:.9},\"max_s\":{max:.9},\"gflops\":{gflops:.3}}}",
            r.cell, r.mode, r.shape, r.b, r.t, r.i, r.h, r.backend, r.dtype
        ));
    } else {
        emit(format_args!(
            "{:<6} {:<5} {:<6} T={:<4} B={:<3} I={:<5} H={:<5} {:<7} {:<4} median {:>10.3} ms  min {:>10.3} ms  {:>7.1} GFLOP/s",
            r.cell,
            r.mode,
            r.shape,
            r.t,
            r.b,
            r.i,
            r.h,
            r.backend,
            r.dtype,
            median * 1e3,
            min * 1e3,
            gflops
        ));
    }
}

/// Writes one line to standard output; a reader that has gone away (`bench ... | head`) ends
/// the run quietly rather than with a panic.
fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("bench: writing the results: {e}");
        std::process::exit(1);
    }
}

fn bench_cell<C: Cell<f32>>(
    cell: &C,
    gates: usize,
    name: &str,
    shape: &(String, usize, usize, usize, usize),
    a: &Args,
) -> Result<(), String> {
    let (ref label, t, b, i, h) = *shape;
    let spec = SeqSpec::new(t, b)
        .layout(Layout::BatchMajor)
        .threads(a.threads);
    let e = |e: fused_rnn::Error| e.to_string();
    let x_len = [t, b, i]
        .into_iter()
        .try_fold(1usize, usize::checked_mul)
        .ok_or("--seq × --batch × --input overflows")?;
    let mut x: Vec<f32> = Vec::new();
    x.try_reserve_exact(x_len)
        .map_err(|_| format!("cannot allocate an input of {x_len} values"))?;
    x.extend((0..x_len).map(|k| a.input_scale * ((k % 101) as f32 - 50.0) / 60.0));
    let fwd_flops = 2.0 * b as f64 * (i as f64 + h as f64) * (gates * h) as f64 * t as f64;
    let backend = fused_rnn::active_backend();
    for mode in &a.modes {
        let times = if mode == "infer" {
            measure(a.min_time, || {
                std::hint::black_box(seq::forward(cell, &spec, &x, None)?);
                Ok::<_, fused_rnn::Error>(())
            })?
        } else if let Some((p, rp)) = a.layer_dropout {
            use fused_rnn::layer::{CellConfig, Rnn, RnnConfig, RnnGrads, RunSpec};
            let kind = match name {
                "lstm" => CellConfig::Lstm(LstmKind::default()),
                "gru" => CellConfig::Gru(GruKind::default()),
                _ => CellConfig::SimpleRnn(SimpleRnnKind::default()),
            };
            let rnn =
                Rnn::<f32>::random(RnnConfig::new(kind, i, h).dropout(p, rp), 1).map_err(e)?;
            let rs = RunSpec::new(t, b).layout(Layout::BatchMajor).seed(7);
            let mut tape = vec![0.0; rnn.tape_len(&rs).map_err(e)?];
            let mut y = vec![0.0; rnn.y_len(&rs).map_err(e)?];
            let mut fin = vec![0.0; rnn.state_len(b).map_err(e)?];
            let dy = vec![1e-2f32; y.len()];
            let mut g = RnnGrads::zeros(&rnn, &rs).map_err(e)?;
            measure(a.min_time, || {
                rnn.forward_train(&rs, &x, None, &mut tape, &mut y, &mut fin)?;
                rnn.bptt(&rs, &x, None, &tape, &dy, None, &mut g, GradMode::Overwrite)?;
                std::hint::black_box(&g);
                Ok::<_, fused_rnn::Error>(())
            })?
        } else {
            let mut tape = vec![0.0; seq::tape_len(cell, &spec).map_err(e)?];
            let dy = vec![1e-2f32; t * b * h];
            measure(a.min_time, || {
                seq::forward_train(cell, &spec, &x, None, &mut tape)?;
                std::hint::black_box(seq::bptt(cell, &spec, &x, None, &tape, &dy, None)?);
                Ok::<_, fused_rnn::Error>(())
            })?
        };
        let flops = if mode == "infer" {
            fwd_flops
        } else {
            3.0 * fwd_flops
        };
        let row = Row {
            cell: name,
            mode,
            shape: label,
            t,
            b,
            i,
            h,
            backend,
            dtype: if a.bf16 { "bf16" } else { "f32" },
            times,
            flops,
        };
        print_row(&row, a.threads, a.json);
    }
    Ok(())
}

/// Single-thread sgemm 1024³ through matrixmultiply: the machine's ceiling in this run.
fn sgemm_ceiling(a: &Args) {
    let n = 1024;
    let x = vec![0.5f32; n * n];
    let y = vec![0.25f32; n * n];
    let mut z = vec![0.0f32; n * n];
    let times = measure(a.min_time, || {
        // SAFETY: three dense n×n row-major matrices in their own vectors.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                x.as_ptr(),
                n as isize,
                1,
                y.as_ptr(),
                n as isize,
                1,
                0.0,
                z.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        std::hint::black_box(&z);
        Ok::<_, std::convert::Infallible>(())
    })
    .expect("sgemm cannot fail");
    let row = Row {
        cell: "sgemm",
        mode: "ceiling",
        shape: "1024^3",
        t: 1,
        b: n,
        i: n,
        h: n,
        backend: fused_rnn::active_backend(),
        dtype: "f32",
        times,
        flops: 2.0 * (n * n * n) as f64,
    };
    print_row(&row, 1, a.json);
}

fn run(a: &Args) -> Result<(), String> {
    if a.ceiling {
        sgemm_ceiling(a);
    }
    // Shape by shape, every cell in turn, so that drift in the machine's speed spreads evenly.
    for shape in &a.shapes {
        let (_, _, _, i, h) = *shape;
        for cell in &a.cells {
            match cell.as_str() {
                "lstm" => {
                    let mut c =
                        DynLstm::<f32>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1)
                            .map_err(|e| e.to_string())?;
                    c.set_bf16_inference(a.bf16);
                    bench_cell(&c, 4, "lstm", shape, a)?
                }
                "gru" => {
                    let mut c = DynGru::<f32>::random(Dyn(i), Dyn(h), GruKind::default(), true, 1)
                        .map_err(|e| e.to_string())?;
                    c.set_bf16_inference(a.bf16);
                    bench_cell(&c, 3, "gru", shape, a)?
                }
                _ => {
                    let kind = SimpleRnnKind::default();
                    let mut c = DynSimpleRnn::<f32>::random(Dyn(i), Dyn(h), kind, true, 1)
                        .map_err(|e| e.to_string())?;
                    c.set_bf16_inference(a.bf16);
                    bench_cell(&c, 1, "rnn", shape, a)?
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("bench: {why}");
            }
            eprintln!(
                "usage: bench --cell lstm|gru|rnn --batch B --seq T --input I --hidden H --mode infer|train|both \
                 [--threads N] [--backend auto|scalar|avx2|avx512|cuda] [--dtype f32|bf16] [--json] [--min-time-ms MS] [--input-scale F] [--dropout P] [--recurrent-dropout P] [--no-ceiling]\n       \
                 bench --preset standard [--cell C] [--mode M] [--json]"
            );
            return if why.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if a.cuda {
        #[cfg(feature = "cuda")]
        return cuda_bench::run(&a);
        #[cfg(not(feature = "cuda"))]
        {
            eprintln!("bench: --backend cuda: built without the `cuda` feature");
            return ExitCode::from(2);
        }
    }
    let ran = match a.backend {
        Some(b) => match with_backend(b, || run(&a)) {
            Ok(ran) => ran,
            Err(e) => {
                eprintln!("bench: {e}");
                return ExitCode::from(2);
            }
        },
        None => run(&a),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
