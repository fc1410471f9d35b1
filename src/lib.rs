//! # fused-rnn
//!
//! Recurrent-network kernels — SimpleRNN, LSTM and GRU (both reset variants) — with the gate
//! maths, the recurrent product and the state update fused per step, the input projection of a
//! whole sequence done as one matrix product, and explicit backpropagation through time.
//!
//! - [`cell`]: the [`Cell`] trait and the built-in cells, generic over compile-time
//!   ([`Const`]) and run-time ([`Dyn`]) shapes that run the same kernels.
//! - [`seq`]: the sequence engine — forward, training forward with a caller-sized record,
//!   [`seq::bptt`], and a streaming [`seq::Stream`].
//! - [`reference`](mod@reference): plain, obviously-right f64 loops; the oracle the kernels are tested
//!   against, public for users who check their own work.
//! - [`gradcheck`](mod@gradcheck): central finite differences for any [`Cell`].
//! - [`layout`]: Keras, PyTorch and ONNX weight layouts.
//! - [`layer`]: stacked and bidirectional layers over the cells — masks and variable lengths,
//!   dropout, stateful runs, truncated BPTT — and whole-model safetensors I/O ([`layer::io`]).
//! - [`capi`]: the C ABI (`include/fused_rnn.h`, `docs/C_API.md`); the crate also builds as
//!   `cdylib` and `staticlib`.
//!
//! ## Gate layouts
//!
//! | cell | internal / Keras | PyTorch | ONNX |
//! |---|---|---|---|
//! | LSTM | i, f, c, o | i, f, g, o | i, o, f, c |
//! | GRU | z, r, h | r, z, n | z, r, h |
//! | SimpleRNN | — | — | — |
//!
//! Internal tensors are Keras-shaped: `kernel [I, G·H]`, `recurrent_kernel [H, G·H]`, plus
//! `bias [G·H]` and `recurrent_bias [G·H]` (see [`cell`] for how each enters the gates).
//!
//! ## CPU backends
//!
//! Kernels run on one of three [`Backend`]s: `scalar` (portable), `avx2` (AVX2 + FMA) and
//! `avx512` (AVX-512F). The best one the CPU has is detected once at first use; set
//! `FUSED_RNN_BACKEND=scalar|avx2|avx512` in the environment, call [`set_backend`] for the
//! process or [`with_backend`] for one thread to force another. In `f32` the SIMD backends
//! use explicit vector code: products with register tiles, vector activations, and a
//! register-fused forward step over recurrent weights packed once into 16-unit tiles, a block of
//! batch rows per pass (optionally in bfloat16, [`cell::Recurrent::set_bf16_inference`]), or
//! for many rows of few units the product of all rows over the same packed weights, then the
//! epilogue; [`seq::SeqSpec::threads`] splits either across threads by batch rows or by tiles.
//! BPTT's state gradient runs on the
//! transposed weights packed the same way. `f64` runs the portable code compiled
//! for the selected instruction set. The `f32` input projection over all `T·B` rows runs on
//! the input kernel packed once the same way (on AVX-512 BF16 in bfloat16 inference), and on
//! the SIMD backends the other large `f32` products over all `T·B` rows (BPTT's input, kernel
//! and recurrent-kernel gradients) run on the same product kernel, their right operand packed
//! once per product. Those products in `f64`, and all of them on the `scalar` backend, go
//! through `matrixmultiply`, which dispatches on the CPU itself. With the opt-in `openblas`
//! feature the system's OpenBLAS runs the products that would go through `matrixmultiply` or
//! the `f32` product kernel; the packed `f32` projection stays.
//!
//! ## GPU backend
//!
//! With the `cuda` feature, `fused_rnn::cuda` runs the built-in cells forward and backward
//! through time on NVIDIA GPUs from PTX embedded in the library (needs only the driver at run
//! time; `Error::Device` without one). See `docs/CUDA.md`.
//!
//! ## Determinism
//!
//! Results are bitwise identical from run to run, for any [`seq::SeqSpec::threads`], and when
//! many threads share one cell: a step split across threads computes every unit with the same
//! kernel and operation order as one thread, and products split across threads (by rows or by
//! blocks of their result) keep each element's order of operations (`tests/determinism.rs`,
//! `tests/threads.rs`). They can differ between backends and with the opt-in `openblas`
//! feature.
//!
//! ## Accuracy
//!
//! The `f32` vector activations are within 1 ULP (`exp`), 2 ULP (`sigmoid`, `tanh`) of the
//! correctly rounded result over the whole `f32` range, and flush results below `2⁻¹²⁶` to 0;
//! the portable backend uses the standard library's functions. Property tests hold every
//! backend to the f64 reference within `1e-4` relative (f32) and `1e-10` (f64), with BPTT
//! tolerances growing with the sequence length; see `tests/prop_kernels.rs`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod activation;
pub mod capi;
pub mod cell;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dim;
pub mod error;
pub mod gradcheck;
pub mod layer;
pub mod layout;
pub mod real;
pub mod reference;
pub mod seq;
mod workers;

pub use activation::Activation;
pub use cell::Cell;
pub use cpu::{Backend, active_backend, set_backend, with_backend};
pub use dim::{Const, Dim, Dyn};
pub use error::{Error, Result};
pub use real::Real;

/// The names most programs use.
pub mod prelude {
    pub use crate::activation::Activation;
    pub use crate::cell::{
        Cell, DynGru, DynLstm, DynSimpleRnn, Gru, GruKind, Lstm, LstmKind, SimpleRnn,
        SimpleRnnKind, StaticGru, StaticLstm, StaticSimpleRnn,
    };
    pub use crate::dim::{Const, Dim, Dyn};
    pub use crate::error::{Error, Result};
    pub use crate::seq::{self, GradMode, Gradients, Layout, Output, SeqSpec, Stream};
}

/// The README's code, compiled and run as a doctest so that it cannot go stale.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
