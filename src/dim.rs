//! Dimensions known at compile time ([`Const`]) or at run time ([`Dyn`]).
//!
//! Kernels are written once, generic over [`Dim`]. Instantiated with `Const<N>` every loop
//! bound is a constant the compiler unrolls and vectorises without tail code; with `Dyn` the
//! same source handles shapes read from a file or a framework.

use std::fmt::Debug;

/// A dimension: a compile-time constant or a run-time value.
pub trait Dim: Copy + Debug + PartialEq + Send + Sync + 'static {
    /// The dimension's value.
    fn value(self) -> usize;
    /// Builds the dimension from a run-time value, or `None` when a compile-time dimension
    /// does not have that value.
    fn try_from_usize(n: usize) -> Option<Self>;
}

/// A dimension fixed at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Const<const N: usize>;

/// A dimension known only at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dyn(pub usize);

impl<const N: usize> Dim for Const<N> {
    #[cfg_attr(not(unoptimized), inline(always))]
    fn value(self) -> usize {
        N
    }
    fn try_from_usize(n: usize) -> Option<Self> {
        (n == N).then_some(Const)
    }
}

impl Dim for Dyn {
    #[cfg_attr(not(unoptimized), inline(always))]
    fn value(self) -> usize {
        self.0
    }
    fn try_from_usize(n: usize) -> Option<Self> {
        Some(Dyn(n))
    }
}
