//! Any sizes, flags, buffer lengths and values through the public sequence API: the library
//! must return a result or a typed error, never panic, and its outputs must have the
//! documented lengths.
//!
//! `cargo fuzz run --sanitizer none engine -- -max_total_time=60`

use arbitrary::Arbitrary;
use fused_rnn::prelude::*;

#[derive(Debug, Arbitrary)]
struct Case {
    cell: u8,
    t: u8,
    b: u8,
    i: u8,
    h: u8,
    batch_major: bool,
    go_backwards: bool,
    return_sequences: bool,
    use_bias: bool,
    with_state: bool,
    threads: u8,
    /// Deliberately wrong lengths (0 = right).
    x_skew: i8,
    state_skew: i8,
    seed: u64,
    values: Vec<f32>,
}

fn take(values: &[f32], n: usize, skew: i8) -> Vec<f32> {
    let n = (n as isize + skew as isize).max(0) as usize;
    (0..n)
        .map(|k| {
            if values.is_empty() {
                0.5
            } else {
                values[k % values.len()]
            }
        })
        .collect()
}

fn run_cell<C: Cell<f32>>(cell: &C, c: &Case) {
    let (t, b) = (c.t as usize % 9, c.b as usize % 5);
    let spec = SeqSpec::new(t, b)
        .layout(if c.batch_major {
            Layout::BatchMajor
        } else {
            Layout::TimeMajor
        })
        .go_backwards(c.go_backwards)
        .return_sequences(c.return_sequences)
        .threads(c.threads as usize % 4);
    let x = take(&c.values, t * b * cell.input_size(), c.x_skew);
    let s0 = take(
        &c.values,
        cell.state_count() * b * cell.hidden_size(),
        c.state_skew,
    );
    let s0 = c.with_state.then_some(&s0[..]);
    let Ok(out) = seq::forward(cell, &spec, &x, s0) else {
        return;
    };
    assert_eq!(
        out.final_state.len(),
        cell.state_count() * b * cell.hidden_size()
    );
    let Ok(len) = seq::tape_len(cell, &spec) else {
        return;
    };
    let mut tape = vec![0.0; len];
    let train = seq::forward_train(cell, &spec, &x, s0, &mut tape).unwrap();
    // The recorded forward computes exactly what inference computes (NaN compared by bits).
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&train.y), bits(&out.y));
    let dy = take(&c.values, out.y.len(), 0);
    let g = seq::bptt(cell, &spec, &x, s0, &tape, &dy, None).unwrap();
    assert_eq!(g.dx.len(), x.len());
}

/// Runs one input (decoded as libFuzzer's `fuzz_target!` decodes it).
pub fn run(data: &[u8]) {
    let Ok(c) =
        <Case as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return;
    };
    let (i, h) = (c.i as usize % 12, c.h as usize % 12);
    let bias = c.use_bias;
    match c.cell % 4 {
        0 => {
            if let Ok(cell) = DynLstm::random(Dyn(i), Dyn(h), LstmKind::default(), bias, c.seed) {
                run_cell(&cell, &c)
            }
        }
        1 | 2 => {
            let kind = GruKind {
                reset_after: c.cell % 4 == 1,
                ..Default::default()
            };
            if let Ok(cell) = DynGru::random(Dyn(i), Dyn(h), kind, bias, c.seed) {
                run_cell(&cell, &c)
            }
        }
        _ => {
            let kind = SimpleRnnKind {
                activation: Activation::ALL[c.seed as usize % 5],
            };
            if let Ok(cell) = DynSimpleRnn::random(Dyn(i), Dyn(h), kind, bias, c.seed) {
                run_cell(&cell, &c)
            }
        }
    }
}
