//! User-defined cells run by the library's sequence engine, forward and backward, and checked
//! with `gradcheck`.
//!
//! `cargo run --release --example custom_cell`

mod cells;

use cells::{Accumulator, MinimalRnn};
use fused_rnn::gradcheck::{GradcheckOptions, gradcheck};
use fused_rnn::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Accumulator: the output after t steps is the running sum of the inputs.
    let acc = Accumulator { size: 2 };
    let spec = SeqSpec::new(4, 1);
    let x = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0];
    let out = seq::forward(&acc, &spec, &x, None)?;
    println!("accumulator outputs (T=4, B=1, H=2): {:?}", out.y);
    assert_eq!(out.final_state, vec![10.0, 100.0]);

    // MinimalRnn, batch-major, backwards in time, last output only.
    let cell = MinimalRnn::new(3, 5);
    let spec = SeqSpec::new(6, 2)
        .layout(Layout::BatchMajor)
        .go_backwards(true)
        .return_sequences(false);
    let x: Vec<f64> = (0..6 * 2 * 3).map(|k| (k as f64 * 0.31).cos()).collect();
    let mut tape = vec![0.0; seq::tape_len(&cell, &spec)?];
    let out = seq::forward_train(&cell, &spec, &x, None, &mut tape)?;
    let dy = vec![1.0; out.y.len()];
    let grads = seq::bptt(&cell, &spec, &x, None, &tape, &dy, None)?;
    println!("minimal rnn last output: {:?}", out.y);
    println!("d kernel[0..5]: {:?}", &grads.params[0][..5]);

    for (name, report) in [
        (
            "accumulator",
            gradcheck(
                &acc,
                &SeqSpec::new(4, 1),
                &x[..8],
                None,
                &GradcheckOptions::default(),
            )?,
        ),
        (
            "minimal rnn",
            gradcheck(&cell, &spec, &x, None, &GradcheckOptions::default())?,
        ),
    ] {
        println!(
            "gradcheck {name}: worst error {:.2e}\n{report}",
            report.worst()
        );
        assert!(report.passed(1e-6));
    }
    Ok(())
}
