//! Finite-difference checks of analytic BPTT gradients, for any [`Cell<f64>`].
//!
//! [`gradcheck`] builds the scalar loss `L = Σ y·dy + Σ final_state·d_final` with fixed
//! pseudo-random `dy`, `d_final`, takes the analytic gradients from [`seq::bptt`], and compares
//! every element of `∂L/∂x`, `∂L/∂initial_state` and `∂L/∂θ` (every parameter tensor) with a
//! fourth-order central difference
//! `(−L(θ+2h) + 8L(θ+h) − 8L(θ−h) + L(θ−2h)) / 12h` (truncation error `O(h⁴)`).
//!
//! The error of one element is `|analytic − numeric| / max(|analytic|, |numeric|, floor)`:
//! relative where the gradient is large, and measured against `floor` where it is near zero,
//! so that the rounding of `L` (about `1e-16·|L| / h`) does not masquerade as a wrong gradient.
//! The report gives, per tensor, the worst element with its index.
//!
//! A finite difference taken across a kink (`relu` at 0, `hard_sigmoid` at ±3) measures
//! nothing useful: keep pre-activations at least `2h` away from kinks when checking such cells.
//!
//! ```
//! use fused_rnn::gradcheck::{GradcheckOptions, gradcheck};
//! use fused_rnn::prelude::*;
//!
//! let cell = DynGru::<f64>::random(Dyn(3), Dyn(4), GruKind::default(), true, 1)?;
//! let spec = SeqSpec::new(3, 2);
//! let x: Vec<f64> = (0..3 * 2 * 3).map(|v| (v as f64 * 0.37).sin()).collect();
//! let report = gradcheck(&cell, &spec, &x, None, &GradcheckOptions::default())?;
//! assert!(report.passed(1e-6), "{report}");
//! # Ok::<(), fused_rnn::Error>(())
//! ```

use std::fmt;

use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::seq::{self, SeqSpec};

/// Settings of a gradient check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradcheckOptions {
    /// Finite-difference step `h`.
    pub step: f64,
    /// Denominator floor of the error measure (see the module docs).
    pub floor: f64,
    /// Seed of the upstream gradients `dy` and `d_final`.
    pub seed: u64,
    /// Whether the loss includes the final-state term `Σ final_state·d_final`.
    pub state_loss: bool,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        Self {
            step: 1e-3,
            floor: 1e-3,
            seed: 0x5eed,
            state_loss: true,
        }
    }
}

/// The worst element of one gradient tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorCheck {
    /// `x`, `initial_state`, or the parameter's name.
    pub name: String,
    /// Number of elements checked.
    pub len: usize,
    /// Flat (row-major) index of the worst element.
    pub index: usize,
    /// Its analytic gradient.
    pub analytic: f64,
    /// Its finite-difference gradient.
    pub numeric: f64,
    /// Its error (see the module docs); NaN when either gradient is NaN.
    pub error: f64,
}

/// The result of [`gradcheck`]: one entry per gradient tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckReport {
    /// `x`, `initial_state`, then every parameter in [`Cell::params`] order.
    pub tensors: Vec<TensorCheck>,
}

impl GradcheckReport {
    /// The largest error over all tensors (NaN if any is NaN).
    pub fn worst(&self) -> f64 {
        self.tensors.iter().fold(0.0, |w, t| {
            if w.is_nan() || t.error.is_nan() {
                f64::NAN
            } else {
                w.max(t.error)
            }
        })
    }
    /// Whether every error is below `tolerance` (NaN never passes).
    pub fn passed(&self, tolerance: f64) -> bool {
        self.worst() < tolerance
    }
}

impl fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tensors {
            writeln!(
                f,
                "{:<18} n={:<6} worst error {:.3e} at [{}]: analytic {:.12e}, numeric {:.12e}",
                t.name, t.len, t.error, t.index, t.analytic, t.numeric
            )?;
        }
        Ok(())
    }
}

/// Checks the BPTT gradients of `cell` over `x` (shaped by `spec`) from `initial_state`
/// (`[S, B, H]`; zeros when `None`, and the gradient is still checked at the zero state).
///
/// Errors: [`Error::Invalid`] for a step or floor that is not a finite number above 0; those of
/// [`seq::forward`] and [`seq::bptt`].
pub fn gradcheck<C: Cell<f64> + Clone>(
    cell: &C,
    spec: &SeqSpec,
    x: &[f64],
    initial_state: Option<&[f64]>,
    options: &GradcheckOptions,
) -> Result<GradcheckReport> {
    for (arg, v) in [
        ("options.step", options.step),
        ("options.floor", options.floor),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::Invalid {
                arg,
                reason: format!("{v}, expected a finite number above 0"),
            });
        }
    }
    let out = seq::forward(cell, spec, x, initial_state)?;
    let mut rng = options.seed;
    let dy: Vec<f64> = (0..out.y.len()).map(|_| symmetric(&mut rng)).collect();
    let d_final: Vec<f64> = (0..out.final_state.len())
        .map(|_| {
            if options.state_loss {
                symmetric(&mut rng)
            } else {
                0.0
            }
        })
        .collect();
    let loss = |cell: &C, x: &[f64], s0: &[f64]| -> Result<f64> {
        let o = seq::forward(cell, spec, x, Some(s0))?;
        Ok(dot(&o.y, &dy) + dot(&o.final_state, &d_final))
    };

    let s0 = initial_state
        .map(<[f64]>::to_vec)
        .unwrap_or_else(|| vec![0.0; out.final_state.len()]);
    let mut tape = vec![0.0; seq::tape_len(cell, spec)?];
    seq::forward_train(cell, spec, x, Some(&s0), &mut tape)?;
    let grads = seq::bptt(cell, spec, x, Some(&s0), &tape, &dy, Some(&d_final))?;

    let h = options.step;
    let mut tensors = Vec::new();
    let mut xv = x.to_vec();
    tensors.push(check_tensor("x", &grads.dx, options, |i| {
        central(h, xv[i], |v| {
            xv[i] = v;
            loss(cell, &xv, &s0)
        })
    })?);
    let mut sv = s0.clone();
    tensors.push(check_tensor(
        "initial_state",
        &grads.d_initial_state,
        options,
        |i| {
            central(h, sv[i], |v| {
                sv[i] = v;
                loss(cell, x, &sv)
            })
        },
    )?);
    let names: Vec<String> = cell.params().iter().map(|p| p.name.to_string()).collect();
    let mut probe = cell.clone();
    for (k, name) in names.iter().enumerate() {
        tensors.push(check_tensor(name, &grads.params[k], options, |i| {
            let orig = probe.params_mut()[k][i];
            let r = central(h, orig, |v| {
                probe.params_mut()[k][i] = v;
                loss(&probe, x, &s0)
            });
            probe.params_mut()[k][i] = orig;
            r
        })?);
    }
    Ok(GradcheckReport { tensors })
}

/// The fourth-order central difference of `f` at `v`; `f` leaves its argument set to
/// the last value it was called with, so the caller restores it.
fn central(h: f64, v: f64, mut f: impl FnMut(f64) -> Result<f64>) -> Result<f64> {
    let (p2, p1, m1, m2) = (f(v + 2.0 * h)?, f(v + h)?, f(v - h)?, f(v - 2.0 * h)?);
    f(v)?;
    Ok((-p2 + 8.0 * p1 - 8.0 * m1 + m2) / (12.0 * h))
}

fn check_tensor(
    name: &str,
    analytic: &[f64],
    options: &GradcheckOptions,
    mut numeric: impl FnMut(usize) -> Result<f64>,
) -> Result<TensorCheck> {
    let mut worst = TensorCheck {
        name: name.to_string(),
        len: analytic.len(),
        index: 0,
        analytic: analytic.first().copied().unwrap_or(0.0),
        numeric: 0.0,
        error: 0.0,
    };
    for (i, &a) in analytic.iter().enumerate() {
        let n = numeric(i)?;
        let err = (a - n).abs() / a.abs().max(n.abs()).max(options.floor);
        let err = if a.is_nan() || n.is_nan() {
            f64::NAN
        } else {
            err
        };
        if i == 0 || err.is_nan() || (!worst.error.is_nan() && err > worst.error) {
            worst = TensorCheck {
                index: i,
                analytic: a,
                numeric: n,
                error: err,
                ..worst
            };
        }
    }
    Ok(worst)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Uniform in `[-1, 1)` (SplitMix64).
fn symmetric(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}
