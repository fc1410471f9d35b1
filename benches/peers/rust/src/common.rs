//! Argument parsing and timing shared by the Rust peers. The timing rule is the one of
//! fused-rnn's `examples/bench.rs`: one warm-up call, then at least 5 timed calls and at
//! least `--min-time-ms` in all; the median, min and max are reported.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Args {
    pub cell: String,
    pub mode: String,
    pub batch: usize,
    pub seq: usize,
    pub input: usize,
    pub hidden: usize,
    pub threads: usize,
    pub min_time: Duration,
    pub onnx: Option<String>,
}

pub fn parse() -> Result<Args, String> {
    let mut a = Args {
        cell: "lstm".into(),
        mode: "infer".into(),
        batch: 0,
        seq: 0,
        input: 0,
        hidden: 0,
        threads: 1,
        min_time: Duration::from_millis(300),
        onnx: None,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<usize, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("{name}: `{v}` is not an integer"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--cell" => a.cell = it.next().ok_or("--cell needs a value")?,
            "--mode" => a.mode = it.next().ok_or("--mode needs a value")?,
            "--batch" => a.batch = num(it.next(), "--batch")?,
            "--seq" => a.seq = num(it.next(), "--seq")?,
            "--input" => a.input = num(it.next(), "--input")?,
            "--hidden" => a.hidden = num(it.next(), "--hidden")?,
            "--threads" => a.threads = num(it.next(), "--threads")?,
            "--min-time-ms" => {
                a.min_time = Duration::from_millis(num(it.next(), "--min-time-ms")? as u64)
            }
            "--onnx" => a.onnx = Some(it.next().ok_or("--onnx needs a value")?),
            "--json" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if a.batch * a.seq * a.input * a.hidden == 0 || a.threads == 0 {
        return Err("give --batch, --seq, --input, --hidden (and --threads) all >= 1".into());
    }
    Ok(a)
}

/// The same deterministic input as fused-rnn's bench, batch-major `[B, T, I]`.
pub fn input(a: &Args) -> Vec<f32> {
    (0..a.seq * a.batch * a.input)
        .map(|k| ((k % 101) as f32 - 50.0) / 60.0)
        .collect()
}

pub fn measure(min_time: Duration, mut f: impl FnMut()) -> (f64, f64, f64) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed() < min_time {
        let s = Instant::now();
        f();
        times.push(s.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

pub fn print_ok(peer: &str, version: &str, a: &Args, t: (f64, f64, f64)) {
    println!(
        "{{\"peer\":\"{peer}\",\"version\":\"{version}\",\"cell\":\"{}\",\"mode\":\"{}\",\"batch\":{},\"seq\":{},\"input\":{},\"hidden\":{},\"threads\":{},\"median_s\":{:.9},\"min_s\":{:.9},\"max_s\":{:.9}}}",
        a.cell, a.mode, a.batch, a.seq, a.input, a.hidden, a.threads, t.0, t.1, t.2
    );
}

/// A row that says the peer cannot do this measurement (not an error of the harness).
pub fn print_na(peer: &str, a: &Args, why: &str) {
    println!(
        "{{\"peer\":\"{peer}\",\"cell\":\"{}\",\"mode\":\"{}\",\"na\":\"{}\"}}",
        a.cell,
        a.mode,
        why.replace('\\', "\\\\").replace('"', "'")
    );
}
