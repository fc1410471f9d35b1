//! The crate's one error type.

/// Every way a call into the library can fail.
///
/// Variants name the offending argument and carry what was expected and what was given, so
/// that a message such as ``initial_state has length 12, expected 24`` can be acted upon
/// without reading the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer has the wrong number of elements.
    #[error("`{arg}` has length {actual}, expected {expected}")]
    Length {
        /// The argument.
        arg: &'static str,
        /// The number of elements the call needs.
        expected: usize,
        /// The number of elements given.
        actual: usize,
    },
    /// A dimension disagrees with another one it must match.
    #[error("`{arg}` is {actual}, expected {expected}")]
    Mismatch {
        /// The argument or dimension.
        arg: &'static str,
        /// The value it must have.
        expected: usize,
        /// The value given.
        actual: usize,
    },
    /// A size that must be at least one is zero.
    #[error("`{arg}` must be at least 1, got 0")]
    Zero {
        /// The argument.
        arg: &'static str,
    },
    /// A name (layout, activation, cell kind, metadata value) that the library does not know.
    #[error("unknown {what} `{value}`, expected one of: {expected}")]
    Unknown {
        /// What kind of name it is.
        what: &'static str,
        /// The name given.
        value: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// A combination of arguments the call does not support.
    #[error("`{arg}`: {reason}")]
    Invalid {
        /// The argument.
        arg: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The GPU backend cannot run: no driver, no such device, or a driver call failed.
    #[error("CUDA device: {reason}")]
    Device {
        /// What failed, with the driver's message.
        reason: String,
    },
    /// Weights of one GRU variant given for the other: `reset_after` (Keras default, PyTorch,
    /// cuDNN) and reset-before GRUs have the same tensors but different maths, so loading one
    /// as the other would silently give wrong numbers.
    #[error(
        "GRU variant mismatch: `{tensor}` holds {source_kind} weights of a GRU with \
         reset_after = {found}, the configuration says reset_after = {expected}"
    )]
    GruVariant {
        /// The tensor that shows the variant.
        tensor: String,
        /// Whose layout the weights are in (`keras`, `torch`).
        source_kind: &'static str,
        /// The configuration's `reset_after`.
        expected: bool,
        /// The weights' `reset_after`.
        found: bool,
    },
    /// A product of sizes overflows `usize`.
    #[error("`{arg}`: size overflows usize")]
    Overflow {
        /// The argument whose size overflowed.
        arg: &'static str,
    },
    /// A buffer the call needs cannot be allocated (reported instead of aborting the process).
    #[error("`{arg}`: cannot allocate {elements} elements")]
    Allocation {
        /// The buffer.
        arg: &'static str,
        /// Its number of elements.
        elements: usize,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that `buf` holds exactly `expected` elements.
pub(crate) fn check_len(arg: &'static str, actual: usize, expected: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Length {
            arg,
            expected,
            actual,
        })
    }
}

/// Checks that a size is not zero.
pub(crate) fn check_nonzero(arg: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        Err(Error::Zero { arg })
    } else {
        Ok(())
    }
}

/// Multiplies sizes, reporting overflow against `arg`.
pub(crate) fn checked_size(arg: &'static str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or(Error::Overflow { arg })
}

/// A vector of `len` copies of `value`, or [`Error::Allocation`] when the memory cannot be had
/// (absurd sizes must be an error, not an abort).
pub(crate) fn try_filled<T: Clone>(arg: &'static str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(arg, len)?;
    v.resize(len, value);
    Ok(v)
}

/// An empty vector with room for `len` elements, or [`Error::Allocation`] as [`try_filled`].
pub(crate) fn try_with_capacity<T>(arg: &'static str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::Allocation { arg, elements: len })?;
    Ok(v)
}
