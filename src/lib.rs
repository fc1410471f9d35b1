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
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod activation;
pub mod cell;
pub(crate) mod cpu;
pub mod dim;
pub mod error;
pub mod gradcheck;
pub mod layout;
pub mod real;
pub mod reference;
pub mod seq;

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
