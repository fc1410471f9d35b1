//! Reproducible dropout masks from a counter-based generator: every mask element is a pure
//! function of `(seed, stream, index)`, so forward and backward draw the same mask without
//! storing it, and the same seed gives the same masks on every machine and backend.

use crate::error::{Result, try_filled};
use crate::real::Real;

/// A mask stream: which layer, direction and use a mask belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// Keras `dropout`: one `[B, I]` mask on the inputs of layer `l`, direction `d`.
    Input { layer: usize, dir: usize },
    /// Keras `recurrent_dropout`: one `[B, H]` mask on the state entering the recurrent
    /// products of layer `l`, direction `d`.
    Recurrent { layer: usize, dir: usize },
    /// PyTorch's inter-layer dropout on the merged output `[T, B, W]` of layer `l`.
    Between { layer: usize },
}

impl Stream {
    fn id(self) -> u64 {
        let (l, k) = match self {
            Stream::Input { layer, dir } => (layer, dir),
            Stream::Recurrent { layer, dir } => (layer, 2 + dir),
            Stream::Between { layer } => (layer, 4),
        };
        (l as u64) * 8 + k as u64
    }
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` for element `index` of `stream` under `seed`.
pub(crate) fn uniform(seed: u64, stream: Stream, index: u64) -> f64 {
    let key = mix(seed ^ mix(stream.id().wrapping_add(0x9E37_79B9_7F4A_7C15)));
    let u = mix(key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (u >> 11) as f64 / (1u64 << 53) as f64
}

/// The scaled keep mask value of element `index`: `1 / (1 − p)` with probability `1 − p`,
/// else 0 (inverted dropout, as Keras and PyTorch do).
pub(crate) fn keep<T: Real>(seed: u64, stream: Stream, index: u64, p: f64) -> T {
    if uniform(seed, stream, index) >= p {
        T::from_f64(1.0 / (1.0 - p))
    } else {
        T::ZERO
    }
}

/// `n` mask values of `stream`, or `None` when `p == 0` (no dropout); [`Error::Allocation`]
/// naming `arg` when `n` values cannot be had.
pub(crate) fn mask<T: Real>(
    arg: &'static str,
    seed: u64,
    stream: Stream,
    n: usize,
    p: f64,
) -> Result<Option<Vec<T>>> {
    if p <= 0.0 {
        return Ok(None);
    }
    let mut m = try_filled(arg, n, T::ZERO)?;
    for (k, v) in m.iter_mut().enumerate() {
        *v = keep(seed, stream, k as u64, p);
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_reproducible_and_have_the_rate() {
        let s = Stream::Recurrent { layer: 1, dir: 0 };
        let a: Vec<f64> = mask("m", 7, s, 20_000, 0.3).unwrap().unwrap();
        let b: Vec<f64> = mask("m", 7, s, 20_000, 0.3).unwrap().unwrap();
        assert_eq!(a, b);
        let c: Vec<f64> = mask("m", 8, s, 20_000, 0.3).unwrap().unwrap();
        assert_ne!(a, c);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.3).abs() < 0.02, "{dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-15));
        assert!(mask::<f64>("m", 7, s, 5, 0.0).unwrap().is_none());
    }
}
