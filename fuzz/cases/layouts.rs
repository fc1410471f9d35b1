//! The weight-layout importers (Keras, PyTorch, ONNX) on arbitrary tensor lengths, sizes,
//! directions and values: each returns a cell or a typed error, never panics, and a cell it
//! returns exports back to exactly the tensors it was given.
//!
//! `cargo fuzz run --sanitizer none layouts -- -max_total_time=60`

use arbitrary::Unstructured;
use fused_rnn::cell::Recurrent;
use fused_rnn::layout::{KerasWeights, LayoutKind, OnnxWeights, TorchWeights};
use fused_rnn::prelude::*;

/// A tensor of the right length for `want` elements, or a skewed one.
fn tensor(u: &mut Unstructured<'_>, want: usize) -> arbitrary::Result<Vec<f32>> {
    let skew: i8 = if u.ratio(1, 4)? { u.arbitrary()? } else { 0 };
    let n = (want as isize + skew as isize).clamp(0, 4096) as usize;
    (0..n).map(|_| u.arbitrary::<f32>()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check<K: LayoutKind + Copy>(u: &mut Unstructured<'_>, kind: K) -> arbitrary::Result<()> {
    // Mostly small sizes, sometimes zero or absurd.
    let size = |u: &mut Unstructured<'_>| -> arbitrary::Result<usize> {
        Ok(match u.int_in_range(0..=20)? {
            0 => 0,
            1 => u.arbitrary::<usize>()?,
            n => n as usize % 9 + 1,
        })
    };
    let (i, h) = (size(u)?, size(u)?);
    let g = K::GATES;
    let gh = g.saturating_mul(h);
    let small = |n: usize| n.min(1 << 16);
    let bias = u.arbitrary::<bool>()?;
    match u.int_in_range(0..=2)? {
        0 => {
            let rows = kind.keras_bias_rows();
            let w = KerasWeights {
                kernel: tensor(u, small(i.saturating_mul(gh)))?,
                recurrent_kernel: tensor(u, small(h.saturating_mul(gh)))?,
                bias: if bias {
                    Some(tensor(u, small(rows.saturating_mul(gh)))?)
                } else {
                    None
                },
            };
            if let Ok(cell) = Recurrent::<f32, K, Dyn, Dyn>::from_keras(Dyn(i), Dyn(h), kind, &w) {
                let back = cell.to_keras();
                assert_eq!(bits(&back.kernel), bits(&w.kernel));
                assert_eq!(bits(&back.recurrent_kernel), bits(&w.recurrent_kernel));
                // A single Keras bias comes back as `bias + 0`, which turns -0 into +0.
                if let (Some(a), Some(b)) = (&back.bias, &w.bias) {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(b) {
                        assert!(
                            x.to_bits() == y.to_bits() || (x == y) || (x.is_nan() && y.is_nan())
                        );
                    }
                }
            }
        }
        1 => {
            let w = TorchWeights {
                weight_ih: tensor(u, small(i.saturating_mul(gh)))?,
                weight_hh: tensor(u, small(h.saturating_mul(gh)))?,
                bias_ih: if bias || u.ratio(1, 8)? {
                    Some(tensor(u, small(gh))?)
                } else {
                    None
                },
                bias_hh: if bias || u.ratio(1, 8)? {
                    Some(tensor(u, small(gh))?)
                } else {
                    None
                },
            };
            if let Ok(cell) = Recurrent::<f32, K, Dyn, Dyn>::from_torch(Dyn(i), Dyn(h), kind, &w) {
                let back = cell
                    .to_torch()
                    .expect("a cell loaded from PyTorch exports to it");
                assert_eq!(bits(&back.weight_ih), bits(&w.weight_ih));
                assert_eq!(bits(&back.weight_hh), bits(&w.weight_hh));
                assert_eq!(
                    back.bias_ih.as_deref().map(bits),
                    w.bias_ih.as_deref().map(bits)
                );
                assert_eq!(
                    back.bias_hh.as_deref().map(bits),
                    w.bias_hh.as_deref().map(bits)
                );
            }
        }
        _ => {
            let d = if u.ratio(1, 8)? {
                u.arbitrary::<usize>()?
            } else {
                u.int_in_range(0..=2)?
            };
            let direction = if u.ratio(1, 8)? {
                u.arbitrary::<usize>()?
            } else {
                u.int_in_range(0..=1)?
            };
            let dd = small(d);
            let w = OnnxWeights {
                num_directions: d,
                w: tensor(u, small(dd.saturating_mul(gh).saturating_mul(i)))?,
                r: tensor(u, small(dd.saturating_mul(gh).saturating_mul(h)))?,
                b: if bias {
                    Some(tensor(u, small(dd.saturating_mul(2 * gh.min(1 << 20))))?)
                } else {
                    None
                },
            };
            if let Ok(cell) =
                Recurrent::<f32, K, Dyn, Dyn>::from_onnx(Dyn(i), Dyn(h), kind, &w, direction)
            {
                let back = cell.to_onnx();
                let slab = |v: &[f32], n: usize| bits(&v[direction * n..(direction + 1) * n]);
                assert_eq!(bits(&back.w), slab(&w.w, back.w.len()));
                assert_eq!(bits(&back.r), slab(&w.r, back.r.len()));
                if let (Some(a), Some(b)) = (&back.b, &w.b) {
                    assert_eq!(bits(a), slab(b, a.len()));
                }
            }
        }
    }
    Ok(())
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = (|| -> arbitrary::Result<()> {
        match u.int_in_range(0..=3)? {
            0 => check(&mut u, LstmKind::default()),
            1 => check(&mut u, GruKind::default()),
            2 => check(
                &mut u,
                GruKind {
                    reset_after: false,
                    ..Default::default()
                },
            ),
            _ => check(&mut u, SimpleRnnKind::default()),
        }
    })();
}
