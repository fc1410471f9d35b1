//! Criterion benchmarks: inference and training (forward + BPTT) of every built-in cell over
//! the standard shape table, f32, one thread, on every backend this CPU has.
//!
//! Ids: `{backend}/{cell}/{pass}/B{b}-T{t}-I{i}-H{h}`; throughput in elements of `x`.
//! `cargo bench --bench cells` (add `-- --quick` for a fast pass, or a filter such as
//! `avx512/lstm/infer`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;
use fused_rnn::{Backend, with_backend};

/// The standard shapes `(T, B, I, H)`, batch-major input.
const SHAPES: [(usize, usize, usize, usize); 8] = [
    (100, 1, 64, 64),
    (100, 1, 256, 256),
    (100, 1, 512, 512),
    (50, 16, 128, 128),
    (50, 16, 512, 512),
    (256, 32, 256, 32),
    (28, 64, 28, 128),
    (25, 64, 1024, 1024),
];

fn bench_cell<C: Cell<f32>>(
    c: &mut Criterion,
    backend: Backend,
    name: &str,
    make: impl Fn(usize, usize) -> C,
) {
    let mut group = c.benchmark_group(backend.name());
    group.sample_size(10);
    for (t, b, i, h) in SHAPES {
        let cell = make(i, h);
        let spec = SeqSpec::new(t, b).layout(Layout::BatchMajor);
        let x: Vec<f32> = (0..t * b * i)
            .map(|k| ((k % 97) as f32 - 48.0) / 64.0)
            .collect();
        let shape = format!("B{b}-T{t}-I{i}-H{h}");
        group.throughput(Throughput::Elements(x.len() as u64));
        group.bench_function(BenchmarkId::new(format!("{name}/infer"), &shape), |bench| {
            bench.iter(|| seq::forward(&cell, &spec, &x, None).unwrap())
        });
        let mut tape = vec![0.0; seq::tape_len(&cell, &spec).unwrap()];
        let dy = vec![1e-2f32; t * b * h];
        group.bench_function(BenchmarkId::new(format!("{name}/train"), &shape), |bench| {
            bench.iter(|| {
                seq::forward_train(&cell, &spec, &x, None, &mut tape).unwrap();
                seq::bptt(&cell, &spec, &x, None, &tape, &dy, None).unwrap()
            })
        });
    }
    group.finish();
}

fn cells(c: &mut Criterion) {
    for backend in Backend::available() {
        with_backend(backend, || {
            bench_cell(c, backend, "lstm", |i, h| {
                DynLstm::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1).unwrap()
            });
            bench_cell(c, backend, "gru", |i, h| {
                DynGru::random(Dyn(i), Dyn(h), GruKind::default(), true, 1).unwrap()
            });
            bench_cell(c, backend, "rnn", |i, h| {
                DynSimpleRnn::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 1).unwrap()
            });
        })
        .unwrap();
    }
}

criterion_group!(benches, cells);
criterion_main!(benches);
