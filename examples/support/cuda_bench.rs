//! `bench --backend cuda`: the GPU engine on the same shapes and modes as the CPU bench.
//! Inputs, weights, record and gradients stay on the device; each timed run is the enqueued
//! work plus a stream synchronisation (no host transfers). One JSON object (or table row) per
//! measurement, with `"backend":"cuda"` and the recurrence path that ran.
//!
//! `FUSED_RNN_CUDA_PATH=auto|persistent|standard` forces a path (default auto).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use fused_rnn::cell::{CellKind, Recurrent};
use fused_rnn::cuda::{self, CudaDevice, CudaPath, CudaStream, DeviceCell};
use fused_rnn::prelude::*;

use super::Args;

pub fn run(a: &Args) -> ExitCode {
    let device = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("bench: --backend cuda: {e}");
            return ExitCode::from(2);
        }
    };
    let path = match std::env::var("FUSED_RNN_CUDA_PATH").as_deref() {
        Ok("persistent") => CudaPath::Persistent,
        Ok("standard") => CudaPath::Standard,
        Ok("auto") | Err(_) => CudaPath::Auto,
        Ok(other) => {
            eprintln!(
                "bench: FUSED_RNN_CUDA_PATH=`{other}`, expected auto, persistent or standard"
            );
            return ExitCode::from(2);
        }
    };
    let name = device.name().unwrap_or_default();
    if !a.json {
        println!("device: {name}");
    }
    let stream = device.default_stream();
    for shape in &a.shapes {
        let (_, _, _, i, h) = *shape;
        for cell in &a.cells {
            let result = match cell.as_str() {
                "lstm" => DynLstm::<f32>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1)
                    .and_then(|c| bench(&device, &stream, &c, 4, "lstm", shape, a, path)),
                "gru" => DynGru::<f32>::random(Dyn(i), Dyn(h), GruKind::default(), true, 1)
                    .and_then(|c| bench(&device, &stream, &c, 3, "gru", shape, a, path)),
                _ => DynSimpleRnn::<f32>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 1)
                    .and_then(|c| bench(&device, &stream, &c, 1, "rnn", shape, a, path)),
            };
            if let Err(e) = result {
                eprintln!("bench: {cell} {}: {e}", shape.0);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

#[allow(clippy::too_many_arguments)]
fn bench<K: CellKind>(
    device: &CudaDevice,
    stream: &Arc<CudaStream>,
    cpu_cell: &Recurrent<f32, K, Dyn, Dyn>,
    gates: usize,
    name: &str,
    shape: &(String, usize, usize, usize, usize),
    a: &Args,
    path: CudaPath,
) -> Result<()> {
    let (ref label, t, b, i, h) = *shape;
    let mut cell = DeviceCell::new(device, stream, cpu_cell)?;
    cell.set_path(path);
    let spec = SeqSpec::new(t, b).layout(Layout::BatchMajor);
    let x: Vec<f32> = (0..t * b * i)
        .map(|k| a.input_scale * ((k % 101) as f32 - 50.0) / 60.0)
        .collect();
    let dev_err = |e: cudarc::driver::DriverError| Error::Device {
        reason: e.to_string(),
    };
    let xd = stream.clone_htod(&x).map_err(dev_err)?;
    let dy = stream
        .clone_htod(&vec![1e-2f32; t * b * h])
        .map_err(dev_err)?;
    let mut tape = stream
        .alloc_zeros::<f32>(cuda::tape_len(&cell, &spec)?)
        .map_err(dev_err)?;
    let fwd_flops = 2.0 * (b * (i + h) * gates * h * t) as f64;
    for mode in &a.modes {
        let mut once = || -> Result<()> {
            if mode == "infer" {
                std::hint::black_box(cuda::forward(&cell, stream, &spec, &xd, None)?);
            } else {
                cuda::forward_train(&cell, stream, &spec, &xd, None, &mut tape)?;
                std::hint::black_box(cuda::bptt(
                    &cell, stream, &spec, &xd, None, &tape, &dy, None,
                )?);
            }
            stream.synchronize().map_err(dev_err)
        };
        once()?; // warm-up: module load, JIT of the PTX, allocator pools
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 5 || start.elapsed() < a.min_time {
            let s = Instant::now();
            once()?;
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let (median, min) = (times[times.len() / 2], times[0]);
        let flops = if mode == "infer" {
            fwd_flops
        } else {
            3.0 * fwd_flops
        };
        let gflops = flops / median * 1e-9;
        let (fwd_path, bwd_path) = cell.paths(b)?;
        let ran = if mode == "infer" || fwd_path == bwd_path {
            format!("{fwd_path:?}")
        } else {
            format!("{fwd_path:?}+{bwd_path:?}")
        };
        let path_name = ran.to_lowercase();
        if a.json {
            println!(
                "{{\"cell\":\"{name}\",\"mode\":\"{mode}\",\"shape\":\"{label}\",\"batch\":{b},\"seq\":{t},\"input\":{i},\"hidden\":{h},\"backend\":\"cuda\",\"path\":\"{path_name}\",\"dtype\":\"f32\",\"median_s\":{median:.9},\"min_s\":{min:.9},\"gflops\":{gflops:.3}}}"
            );
        } else {
            println!(
                "{name:<6} {mode:<5} {label:<6} T={t:<4} B={b:<3} I={i:<5} H={h:<5} cuda/{path_name:<10} median {:>10.3} ms  min {:>10.3} ms  {gflops:>7.1} GFLOP/s",
                median * 1e3,
                min * 1e3
            );
        }
    }
    Ok(())
}
