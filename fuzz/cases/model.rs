//! Whole-model safetensors loading (`layer::io::load_safetensors`) on arbitrary bytes, for a
//! configuration drawn from the first bytes: a stack or a typed error, never a panic; a stack
//! that loads saves to a file that loads back to the same weights.
//!
//! Valid files are rare in random bytes: when the input asks for it, the case writes a valid
//! file of its configuration itself and overwrites some of its bytes with the input's.

use arbitrary::Unstructured;
use fused_rnn::layer::io::{load_safetensors, save_safetensors};
use fused_rnn::layer::{CellConfig, Merge, Rnn, RnnConfig};
use fused_rnn::layout::Framework;
use fused_rnn::prelude::*;

fn config(u: &mut Unstructured<'_>) -> arbitrary::Result<RnnConfig> {
    let cell = match u.int_in_range(0..=3)? {
        0 => CellConfig::Lstm(LstmKind::default()),
        1 => CellConfig::Gru(GruKind::default()),
        2 => CellConfig::Gru(GruKind {
            reset_after: false,
            ..Default::default()
        }),
        _ => CellConfig::SimpleRnn(SimpleRnnKind::default()),
    };
    let mut c = RnnConfig::new(cell, u.int_in_range(1..=4)?, u.int_in_range(1..=4)?)
        .layers(u.int_in_range(1..=2)?)
        .use_bias(u.arbitrary()?);
    if u.arbitrary()? {
        c = c.bidirectional(Merge::Concat);
    }
    Ok(c)
}

/// The weights as bits, every NaN as one canonical NaN: converting a signalling NaN (f32 →
/// f64 → f32, as loading does) quiets it, which changes its bits but not its meaning.
fn weights(rnn: &Rnn<f32>) -> Vec<Vec<u32>> {
    let b = |x: &f32| {
        if x.is_nan() {
            f32::NAN.to_bits()
        } else {
            x.to_bits()
        }
    };
    rnn.cells()
        .iter()
        .map(|c| {
            let w = c.weights();
            let mut v: Vec<u32> = w.kernel().iter().map(b).collect();
            v.extend(w.recurrent_kernel().iter().map(b));
            v.extend(w.bias().unwrap_or(&[]).iter().map(b));
            v.extend(
                w.recurrent_bias()
                    .unwrap_or(&[])
                    .iter()
                    .map(|x| x.to_bits()),
            );
            v
        })
        .collect()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = config(&mut u) else { return };
    let framework = if u.arbitrary().unwrap_or(false) {
        Framework::Torch
    } else {
        Framework::Keras
    };
    // Either the remaining bytes as the file, or a valid file of the configuration with some
    // of its bytes overwritten by the remaining ones.
    let bytes: Vec<u8> = if u.arbitrary().unwrap_or(false) {
        let seed = u.arbitrary().unwrap_or(0);
        let Ok(rnn) = Rnn::<f32>::random(config, seed) else {
            return;
        };
        let Ok(mut file) = save_safetensors(&rnn, framework) else {
            return;
        };
        // (`arbitrary` keeps answering with zeros once the input is used up: stop there.)
        while !u.is_empty() && !file.is_empty() {
            let (Ok(at), Ok(byte)) = (u.arbitrary::<u16>(), u.arbitrary::<u8>()) else {
                break;
            };
            let k = at as usize % file.len();
            file[k] = byte;
        }
        file
    } else {
        u.take_rest().to_vec()
    };
    if let Ok(rnn) = load_safetensors::<f32>(config, framework, &bytes) {
        let saved = save_safetensors(&rnn, framework).expect("a loaded stack saves");
        let again = load_safetensors::<f32>(config, framework, &saved).expect("and loads back");
        assert_eq!(
            weights(&rnn),
            weights(&again),
            "save → load changed the weights"
        );
    }
}
