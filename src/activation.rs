//! Scalar activation functions and their derivatives.
//!
//! Derivatives are expressed through the activation's *output* `y = f(a)`, which is what the
//! training record keeps; every function here has a derivative that is a function of `y` alone.
//! At kinks (`relu` at 0, `hard_sigmoid` at ±3) the derivative is 0, as in PyTorch and Keras.

use crate::error::{Error, Result};
use crate::real::Real;

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `tanh(a)`.
    #[default]
    Tanh,
    /// `max(a, 0)`; NaN propagates.
    Relu,
    /// `1 / (1 + e^-a)`.
    Sigmoid,
    /// `a`.
    Linear,
    /// Keras 3's `relu6(a + 3) / 6`, i.e. `clamp(a + 3, 0, 6) / 6`; NaN propagates.
    HardSigmoid,
}

impl Activation {
    /// Every activation, in declaration order.
    pub const ALL: [Activation; 5] = [
        Activation::Tanh,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Linear,
        Activation::HardSigmoid,
    ];

    /// The Keras name (`tanh`, `relu`, `sigmoid`, `linear`, `hard_sigmoid`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Linear => "linear",
            Activation::HardSigmoid => "hard_sigmoid",
        }
    }

    /// Parses a Keras name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::Unknown {
                what: "activation",
                value: name.to_string(),
                expected: "tanh, relu, sigmoid, linear, hard_sigmoid",
            })
    }

    /// `f(a)`.
    #[cfg_attr(not(unoptimized), inline(always))]
    pub fn apply<T: Real>(self, a: T) -> T {
        match self {
            Activation::Tanh => a.tanh(),
            Activation::Relu => {
                if a < T::ZERO {
                    T::ZERO
                } else {
                    a
                }
            }
            Activation::Sigmoid => T::ONE / (T::ONE + (-a).exp()),
            Activation::Linear => a,
            Activation::HardSigmoid => {
                let six = T::from_f64(6.0);
                let t = a + T::from_f64(3.0);
                let clamped = if t < T::ZERO {
                    T::ZERO
                } else if t > six {
                    six
                } else {
                    t
                };
                clamped / six
            }
        }
    }

    /// `f'(a)` written as a function of the output `y = f(a)`.
    #[cfg_attr(not(unoptimized), inline(always))]
    pub fn derivative_from_output<T: Real>(self, y: T) -> T {
        match self {
            Activation::Tanh => T::ONE - y * y,
            Activation::Relu => {
                if y > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Activation::Sigmoid => y * (T::ONE - y),
            Activation::Linear => T::ONE,
            Activation::HardSigmoid => {
                if y > T::ZERO && y < T::ONE {
                    T::ONE / T::from_f64(6.0)
                } else {
                    T::ZERO
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivative_matches_central_difference() {
        for act in Activation::ALL {
            for &a in &[-4.0f64, -2.5, -0.7, -0.1, 0.3, 1.2, 2.9, 5.0] {
                let eps = 1e-6;
                let fd = (act.apply(a + eps) - act.apply(a - eps)) / (2.0 * eps);
                let an = act.derivative_from_output(act.apply(a));
                assert!(
                    (fd - an).abs() < 1e-6,
                    "{act:?} at {a}: fd {fd} analytic {an}"
                );
            }
        }
    }

    #[test]
    fn nan_propagates_and_infinities_saturate() {
        for act in Activation::ALL {
            assert!(act.apply(f32::NAN).is_nan(), "{act:?}");
        }
        assert_eq!(Activation::Sigmoid.apply(f32::INFINITY), 1.0);
        assert_eq!(Activation::Sigmoid.apply(f32::NEG_INFINITY), 0.0);
        assert_eq!(Activation::Tanh.apply(f32::NEG_INFINITY), -1.0);
        assert_eq!(Activation::HardSigmoid.apply(f32::INFINITY), 1.0);
        assert_eq!(Activation::Relu.apply(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn names_round_trip() {
        for act in Activation::ALL {
            assert_eq!(Activation::from_name(act.name()), Ok(act));
        }
        assert!(matches!(
            Activation::from_name("gelu"),
            Err(Error::Unknown {
                what: "activation",
                ..
            })
        ));
    }
}
