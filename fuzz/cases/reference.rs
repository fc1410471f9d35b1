//! The sequence engine on arbitrary shapes, cells, activations, flags, thread counts and
//! (bounded) values, checked against the f64 reference: forward outputs and final state, and
//! every gradient of backpropagation through time. Batch-major runs must equal the time-major
//! run transposed, bit for bit, and any thread count must equal one thread.
//!
//! `cargo fuzz run --sanitizer none reference -- -max_total_time=60`

use arbitrary::Unstructured;
use fused_rnn::Real;
use fused_rnn::cell::{Cell, CellKind, Recurrent};
use fused_rnn::prelude::*;
use fused_rnn::reference::{self, RefCell, RefKind};

/// A value in `[-scale, scale]` in steps of `scale / 128`.
fn value(u: &mut Unstructured<'_>, scale: f64) -> arbitrary::Result<f64> {
    Ok(u.arbitrary::<i8>()? as f64 * scale / 128.0)
}

fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// `|got − want| ≤ atol·max(1, max|want|) + rtol·|want|` element-wise.
fn close<T: Real>(what: &str, got: &[T], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|w| w.is_finite())
        .fold(1.0f64, |m, w| m.max(w.abs()));
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f64();
        assert!(
            (g - w).abs() <= atol * scale + rtol * w.abs() || (g.is_nan() && w.is_nan()),
            "{what}[{k}]: got {g}, want {w} (scale {scale})"
        );
    }
}

/// `[T, B, w]` → `[B, T, w]`.
fn to_batch_major<T: Copy>(v: &[T], t: usize, b: usize, w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for n in 0..b {
        for k in 0..t {
            out.extend_from_slice(&v[(k * b + n) * w..][..w]);
        }
    }
    out
}

fn run_kind<T: Real, K: CellKind + Into<RefKind> + Copy>(
    u: &mut Unstructured<'_>,
    kind: K,
) -> arbitrary::Result<()> {
    let (t, b) = (u.int_in_range(1..=7)?, u.int_in_range(1..=6)?);
    let (i, h) = (u.int_in_range(1..=9)?, u.int_in_range(1..=19)?);
    let use_bias = u.arbitrary::<bool>()?;
    let go_backwards = u.arbitrary::<bool>()?;
    let return_sequences = u.arbitrary::<bool>()?;
    let threads = u.int_in_range(1..=4)?;
    let seed = u.arbitrary::<u64>()?;
    let mut cell = Recurrent::<T, K, Dyn, Dyn>::from_weights(
        kind,
        fused_rnn::cell::RecurrentWeights::random(Dyn(i), Dyn(h), K::GATES, use_bias, seed)
            .expect("small sizes"),
    )
    .expect("gates match");
    // Overwrite a prefix of the weights with fuzzed values (bounded: the comparison needs
    // finite numbers).
    for p in cell.params_mut() {
        for v in p.iter_mut() {
            if u.is_empty() {
                break;
            }
            *v = T::from_f64(value(u, 1.0)?);
        }
    }
    let s = cell.state_count();
    let x: Vec<T> = (0..t * b * i)
        .map(|_| value(u, 2.0).map(T::from_f64))
        .collect::<Result<_, _>>()?;
    let h0: Vec<T> = (0..s * b * h)
        .map(|_| value(u, 1.0).map(T::from_f64))
        .collect::<Result<_, _>>()?;
    let with_state = u.arbitrary::<bool>()?;
    let h0 = with_state.then_some(&h0[..]);
    let spec = SeqSpec::new(t, b)
        .go_backwards(go_backwards)
        .return_sequences(return_sequences);

    let out = seq::forward(&cell, &spec, &x, h0).expect("valid sizes");
    let twin = RefCell::from_cell(&cell);
    let f = |v: &[T]| v.iter().map(|a| a.to_f64()).collect::<Vec<f64>>();
    let (xf, h0f) = (f(&x), h0.map(f));
    let want = reference::forward(
        &twin,
        &xf,
        t,
        b,
        h0f.as_deref(),
        go_backwards,
        return_sequences,
    )
    .expect("valid sizes");
    // The activations may grow without bound (relu, linear); compare what f32 can hold.
    let big = want
        .y
        .iter()
        .chain(&want.final_state)
        // Not `> 1e6`: an unbounded activation can overflow to ±inf and then NaN, in both.
        .any(|v| !v.is_finite() || v.abs() > 1e6);
    let (atol, rtol) = if T::NAME == "f32" {
        (2e-4, 2e-4)
    } else {
        (1e-9, 1e-9)
    };
    // Rounding errors grow through the steps of a recurrence that amplifies (relu, linear):
    // the outputs are held to the bound scaled by the steps, as the gradients below are. The
    // case fuzz/regressions/reference/crash-e064fa… has an output of 188.64 in f64, and of
    // 188.48 (AVX2, AVX-512) and 188.56 (scalar) in f32, each backend summing in its own
    // order: 8.6e-4 relative, beyond the unscaled 2e-4 + 2e-4.
    let (fa, fr) = (atol * t as f64 * 4.0, rtol * t as f64 * 4.0);
    if !big {
        close("y", &out.y, &want.y, fa, fr);
        close("final_state", &out.final_state, &want.final_state, fa, fr);
    }

    // Any thread count and the batch-major layout compute the same bits.
    let many = seq::forward(&cell, &spec.threads(threads), &x, h0).expect("valid sizes");
    assert_eq!(bits(&many.y), bits(&out.y), "threads = {threads}");
    let bm = spec.layout(Layout::BatchMajor);
    let xb = to_batch_major(&x, t, b, i);
    let outb = seq::forward(&cell, &bm, &xb, h0).expect("valid sizes");
    let yb = if return_sequences {
        to_batch_major(&out.y, t, b, h)
    } else {
        out.y.clone()
    };
    assert_eq!(bits(&outb.y), bits(&yb), "batch-major");

    // Gradients, unless the run passes close to a kink of relu / hard_sigmoid, where the
    // derivative jumps and no tolerance applies.
    let margin = reference::kink_margin(&twin, &xf, t, b, h0f.as_deref(), go_backwards)
        .expect("valid sizes");
    let eps = if T::NAME == "f32" { 1e-3 } else { 1e-9 };
    if big || margin.relative < eps || margin.absolute < eps {
        return Ok(());
    }
    let mut tape = vec![T::ZERO; seq::tape_len(&cell, &spec).expect("valid sizes")];
    seq::forward_train(&cell, &spec, &x, h0, &mut tape).expect("valid sizes");
    let dy: Vec<T> = (0..out.y.len())
        .map(|_| value(u, 1.0).map(T::from_f64))
        .collect::<Result<_, _>>()?;
    let g = seq::bptt(&cell, &spec, &x, h0, &tape, &dy, None).expect("valid sizes");
    let wg = reference::backward(
        &twin,
        &xf,
        t,
        b,
        h0f.as_deref(),
        go_backwards,
        return_sequences,
        &f(&dy),
        None,
    )
    .expect("valid sizes");
    let (ga, gr) = (atol * t as f64 * 4.0, rtol * t as f64 * 4.0);
    close("dx", &g.dx, &wg.dx, ga, gr);
    close(
        "d_initial_state",
        &g.d_initial_state,
        &wg.d_initial_state,
        ga,
        gr,
    );
    for (k, (got, want)) in g.params.iter().zip(wg.params()).enumerate() {
        close(&format!("params[{k}]"), got, &want, ga, gr);
    }
    Ok(())
}

fn activation(u: &mut Unstructured<'_>) -> arbitrary::Result<Activation> {
    Ok(Activation::ALL[u.int_in_range(0..=Activation::ALL.len() - 1)?])
}

fn pick<T: Real>(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let (a, r) = (activation(u)?, activation(u)?);
    match u.int_in_range(0..=2)? {
        0 => run_kind::<T, _>(
            u,
            LstmKind {
                activation: a,
                recurrent_activation: r,
            },
        ),
        1 => {
            let reset_after = u.arbitrary()?;
            run_kind::<T, _>(
                u,
                GruKind {
                    activation: a,
                    recurrent_activation: r,
                    reset_after,
                },
            )
        }
        _ => run_kind::<T, _>(u, SimpleRnnKind { activation: a }),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = if u.arbitrary::<bool>().unwrap_or(false) {
        pick::<f64>(&mut u)
    } else {
        pick::<f32>(&mut u)
    };
}
