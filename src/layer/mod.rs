//! Layers over the cells: stacks of unidirectional or bidirectional recurrent layers, masks and
//! variable lengths, dropout, stateful runs and truncated BPTT — the counterparts of Keras's
//! `Bidirectional`, stacked layers, `Masking`, `dropout` / `recurrent_dropout`, `stateful`, and
//! of PyTorch's `num_layers`, `bidirectional`, `dropout` and packed sequences.
//!
//! # The API in three parts
//! - [`RnnConfig`], a plain descriptor: cell kind and activations (and GRU variant), input and
//!   hidden width, number of layers, directions and merge mode, biases, `go_backwards`,
//!   `return_sequences`, mask semantics and dropout rates. Nothing in it depends on a batch.
//! - [`Rnn`], the config with its weights: one built-in cell per layer and direction
//!   (index `layer·D + direction`, direction 0 forward), loaded from or saved to whole-model
//!   safetensors files by [`io`](mod@io).
//! - Calls over caller-provided buffers, sized by queries: [`Rnn::forward`] (inference),
//!   [`Rnn::forward_train`] (records a tape of [`Rnn::tape_len`] elements), and [`Rnn::bptt`]
//!   (gradients into an [`RnnGrads`]). A [`RunSpec`] carries what changes per call: `T`, `B`,
//!   the layout, the sequence lengths and the dropout seed.
//! - Across calls: [`StatefulRnn`] carries the final states into the next call (Keras's
//!   `stateful=True`), and [`Rnn::tbptt`] runs truncated BPTT with a [`Tbptt`] `(k1, k2)`
//!   schedule over a long sequence (module [`stateful`]).
//!
//! # Shapes
//! With `L` layers, `D` directions (2 when bidirectional), `S` state tensors (2 for LSTM):
//! - `x`: `[T, B, I]` or `[B, T, I]` ([`RunSpec::layout`]).
//! - `y`: with `return_sequences`, `[T, B, W]` / `[B, T, W]`; otherwise `[B, W]`.
//!   `W = D·H` for [`Merge::Concat`], `H` for `Sum`, `Mul`, `Ave`; with [`Merge::None`] the
//!   two directions come back unmerged, direction outermost: `[D, …, H]`.
//! - states (`initial_state`, `final_state`, their gradients): `[S, L·D, B, H]`, state tensor
//!   outermost, then `layer·D + direction` — the fixtures' `h0` followed by `c0`.
//!
//! # Semantics
//! - Bidirectional: the backward direction consumes each sequence from its last (real) step
//!   and its outputs are put back in input time order before merging (Keras and PyTorch agree).
//!   Final states are per direction, unmerged.
//! - Stacking: layer `l + 1` consumes layer `l`'s merged output sequence.
//! - Lengths ([`RunSpec::lengths`], or [`lengths_from_mask`] for a right-padded `[B, T]`
//!   mask): padded steps are never computed and their inputs get gradient exactly 0. States
//!   stop at each sequence's last real step. Outputs at padded steps follow
//!   [`MaskSemantics`].
//! - `go_backwards` (one direction only): Keras's — every layer consumes its input backwards
//!   and returns its outputs in processing order, which the next layer takes as its input
//!   sequence (so layer 1 of a `go_backwards` stack runs in source time order). Stacks of
//!   more than one such layer take no padding: Keras propagates the mask unreversed to the
//!   next layer, whose input *is* reversed, so the next layer would skip real steps and run on
//!   padding — well defined, but not a masking anyone means ([`Error::Invalid`] names
//!   `lengths`). A `Bidirectional` of `go_backwards` layers is refused, as Keras refuses it.
//! - Dropout ([`RnnConfig::dropout`], [`RnnConfig::recurrent_dropout`]), in training only, with
//!   Keras's semantics: one mask per sequence and feature, drawn from [`RunSpec::seed`] and
//!   reused at every step, separately for every layer and direction; the input mask is applied
//!   as the inputs are gathered for the input projection, the recurrent mask as the state
//!   enters the step's recurrent products (LSTM's `c` is not dropped; GRU's update `z ⊙ h`
//!   uses the undropped `h`, as Keras's does). One mask serves all gates (Keras draws one per
//!   gate when `recurrent_dropout > 0`; the distribution of each gate's mask is the same).
//!   [`RnnConfig::inter_layer_dropout`] is PyTorch's: a fresh mask per element of every
//!   layer's merged output but the last's.
//!
//! # Threads
//! The layer path runs on the calling thread: [`RunSpec`] has no thread count, and the
//! tile-split steps of [`crate::seq`] (`SeqSpec::threads`) are not used here, because the
//! active batch shrinks step by step. (The two directions of a bidirectional layer are
//! independent and could run side by side; they do not yet.)
//!
//! # Stateful runs and truncated BPTT
//! A [`StatefulRnn`] starts every call from the final states of the previous one, every
//! layer and direction from its own (Keras's semantics, also for a stateful `Bidirectional`,
//! whose backward direction thus starts each chunk from the state it reached going backwards
//! through the previous chunk). [`Rnn::tbptt`] is Williams & Peng's truncated BPTT: every
//! `k1` steps, the errors of those `k1` steps are backpropagated through the last `k2` steps
//! (errors outside that window are dropped when `k2 < k1`; windows overlap when `k2 > k1`),
//! the state at the window's start taken as a constant; `k1 = k2 = T` is full BPTT.
//!
//! # Example
//! ```
//! use fused_rnn::layer::{CellConfig, Merge, Rnn, RnnConfig, RunSpec, RnnGrads};
//! use fused_rnn::prelude::*;
//!
//! let config = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), 3, 4)
//!     .layers(2)
//!     .bidirectional(Merge::Concat);
//! let rnn = Rnn::<f64>::random(config, 7)?;
//! let lengths = [5, 2];
//! let spec = RunSpec::new(5, 2).lengths(&lengths);
//! let x = vec![0.1; 5 * 2 * 3];
//! let mut y = vec![0.0; rnn.y_len(&spec)?];
//! let mut state = vec![0.0; rnn.state_len(2)?];
//! let mut tape = vec![0.0; rnn.tape_len(&spec)?];
//! rnn.forward_train(&spec, &x, None, &mut tape, &mut y, &mut state)?;
//! let mut grads = RnnGrads::zeros(&rnn, &spec)?;
//! rnn.bptt(&spec, &x, None, &tape, &vec![1.0; y.len()], None, &mut grads, GradMode::Overwrite)?;
//! // Padded inputs get no gradient.
//! assert!(grads.dx[(4 * 2 + 1) * 3..][..3].iter().all(|&g| g == 0.0));
//! # Ok::<(), fused_rnn::Error>(())
//! ```

mod dropout;
mod engine;
pub mod io;
mod stack;
pub mod stateful;

pub use stack::{Masks, RnnGrads, lengths_from_mask};
pub use stateful::{StatefulRnn, Tbptt, TbpttUpdate};

use crate::cell::{
    Cell, DynGru, DynLstm, DynSimpleRnn, GruKind, LstmKind, Param, RecurrentWeights, SimpleRnnKind,
    StepBackward, StepForward,
};
use crate::dim::Dyn;
use crate::error::{Error, Result, check_nonzero, checked_size};
use crate::real::Real;
use crate::seq::Layout;

/// The cell of every layer, with its activations (and the GRU variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellConfig {
    /// SimpleRNN (Elman).
    SimpleRnn(SimpleRnnKind),
    /// LSTM.
    Lstm(LstmKind),
    /// GRU, either variant.
    Gru(GruKind),
}

impl CellConfig {
    /// Gates `G`: 1, 4, 3.
    pub fn gates(&self) -> usize {
        match self {
            CellConfig::SimpleRnn(_) => 1,
            CellConfig::Lstm(_) => 4,
            CellConfig::Gru(_) => 3,
        }
    }
    /// State tensors `S`: 2 for LSTM, else 1.
    pub fn states(&self) -> usize {
        match self {
            CellConfig::Lstm(_) => 2,
            _ => 1,
        }
    }
    /// `simple_rnn`, `lstm` or `gru` (the fixtures' names).
    pub fn name(&self) -> &'static str {
        match self {
            CellConfig::SimpleRnn(_) => "simple_rnn",
            CellConfig::Lstm(_) => "lstm",
            CellConfig::Gru(_) => "gru",
        }
    }
}

/// How a bidirectional layer combines its two directions' outputs (Keras's `merge_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Merge {
    /// Forward then backward along the feature axis (`2·H`); PyTorch's only mode.
    #[default]
    Concat,
    /// Element-wise sum.
    Sum,
    /// Element-wise product.
    Mul,
    /// Element-wise mean.
    Ave,
    /// Not merged: both outputs are returned, direction outermost (last layer only).
    None,
}

impl Merge {
    /// Parses Keras's names: `concat`, `sum`, `mul`, `ave`, `none`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "concat" => Merge::Concat,
            "sum" => Merge::Sum,
            "mul" => Merge::Mul,
            "ave" => Merge::Ave,
            "none" => Merge::None,
            _ => {
                return Err(Error::Unknown {
                    what: "merge mode",
                    value: name.to_string(),
                    expected: "concat, sum, mul, ave, none",
                });
            }
        })
    }
}

/// What the outputs at padded steps are. States are the same in both: they stop at each
/// sequence's last real step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MaskSemantics {
    /// Keras masking: a masked step carries the state over; a plain forward layer repeats its
    /// previous output (0 before any real step), a backward one (padding consumed first)
    /// outputs 0, and inside a bidirectional layer that returns sequences both directions
    /// output 0. Without `return_sequences` the output is the last real step's.
    #[default]
    Keras,
    /// PyTorch packed sequences: every padded output is 0, in every direction and layer.
    Packed,
}

/// A stack of recurrent layers, as a plain descriptor (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RnnConfig {
    /// Cell kind and activations.
    pub cell: CellConfig,
    /// Input width `I` of the first layer.
    pub input_size: usize,
    /// Hidden width `H` of every layer and direction.
    pub hidden_size: usize,
    /// Layers `L` (at least 1).
    pub num_layers: usize,
    /// Two directions per layer.
    pub bidirectional: bool,
    /// How the directions are merged (ignored with one direction).
    pub merge: Merge,
    /// Whether the cells have biases.
    pub use_bias: bool,
    /// Keras `go_backwards` (one direction only), on every layer: each layer consumes its
    /// input sequence backwards and returns its outputs in processing order (so the next
    /// layer's input is in reverse time). A stack of several such layers takes no padding
    /// (see [`Rnn::forward`]).
    pub go_backwards: bool,
    /// Return every step's output, or the last one.
    pub return_sequences: bool,
    /// Outputs at padded steps.
    pub mask_semantics: MaskSemantics,
    /// Keras `dropout`, in `[0, 1)`: on every layer's inputs, in training.
    pub dropout: f64,
    /// Keras `recurrent_dropout`, in `[0, 1)`: on the state entering the recurrent products.
    pub recurrent_dropout: f64,
    /// PyTorch's `dropout`, in `[0, 1)`: on every layer's output but the last.
    pub inter_layer_dropout: f64,
}

impl RnnConfig {
    /// One forward layer of `cell` from `input_size` to `hidden_size`, with biases, returning
    /// sequences, Keras mask semantics, no dropout.
    pub fn new(cell: CellConfig, input_size: usize, hidden_size: usize) -> Self {
        Self {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
            bidirectional: false,
            merge: Merge::Concat,
            use_bias: true,
            go_backwards: false,
            return_sequences: true,
            mask_semantics: MaskSemantics::Keras,
            dropout: 0.0,
            recurrent_dropout: 0.0,
            inter_layer_dropout: 0.0,
        }
    }
    /// With `n` layers.
    pub fn layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }
    /// Bidirectional, merged by `merge`.
    pub fn bidirectional(mut self, merge: Merge) -> Self {
        self.bidirectional = true;
        self.merge = merge;
        self
    }
    /// With or without biases.
    pub fn use_bias(mut self, on: bool) -> Self {
        self.use_bias = on;
        self
    }
    /// Keras `go_backwards`.
    pub fn go_backwards(mut self, on: bool) -> Self {
        self.go_backwards = on;
        self
    }
    /// Every output or the last.
    pub fn return_sequences(mut self, on: bool) -> Self {
        self.return_sequences = on;
        self
    }
    /// Outputs at padded steps.
    pub fn mask_semantics(mut self, m: MaskSemantics) -> Self {
        self.mask_semantics = m;
        self
    }
    /// Keras `dropout` and `recurrent_dropout`.
    pub fn dropout(mut self, dropout: f64, recurrent_dropout: f64) -> Self {
        self.dropout = dropout;
        self.recurrent_dropout = recurrent_dropout;
        self
    }
    /// PyTorch's inter-layer dropout.
    pub fn inter_layer_dropout(mut self, p: f64) -> Self {
        self.inter_layer_dropout = p;
        self
    }

    /// Directions `D`.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }
    /// Cells in the stack, `L·D`.
    pub fn cell_count(&self) -> usize {
        self.num_layers.saturating_mul(self.directions())
    }
    /// Width of a merged output row of any layer: `D·H` for concat, `H` otherwise (per
    /// direction for [`Merge::None`]).
    pub fn merged_width(&self) -> usize {
        if self.bidirectional && self.merge == Merge::Concat {
            2 * self.hidden_size
        } else {
            self.hidden_size
        }
    }
    /// Input width of layer `l`.
    pub fn layer_input_size(&self, l: usize) -> usize {
        if l == 0 {
            self.input_size
        } else {
            self.merged_width()
        }
    }
    /// Planes of `y`: `D` for an unmerged bidirectional layer, else 1.
    pub fn output_planes(&self) -> usize {
        if self.bidirectional && self.merge == Merge::None {
            2
        } else {
            1
        }
    }

    /// Checks the descriptor.
    ///
    /// Errors: [`Error::Zero`] for a zero size; [`Error::Invalid`] for a dropout rate outside
    /// `[0, 1)`, `go_backwards` with two directions, or [`Merge::None`] below the last layer.
    pub fn validate(&self) -> Result<()> {
        check_nonzero("input_size", self.input_size)?;
        check_nonzero("hidden_size", self.hidden_size)?;
        check_nonzero("num_layers", self.num_layers)?;
        for (arg, p) in [
            ("dropout", self.dropout),
            ("recurrent_dropout", self.recurrent_dropout),
            ("inter_layer_dropout", self.inter_layer_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::Invalid {
                    arg,
                    reason: format!("must be in [0, 1), got {p}"),
                });
            }
        }
        if self.bidirectional && self.go_backwards {
            return Err(Error::Invalid {
                arg: "go_backwards",
                reason: "a bidirectional layer already runs both ways (Keras refuses a \
                         Bidirectional wrapper of a go_backwards layer too)"
                    .into(),
            });
        }
        if self.bidirectional && self.merge == Merge::None && self.num_layers > 1 {
            return Err(Error::Invalid {
                arg: "merge",
                reason: "an unmerged bidirectional output cannot feed another layer \
                         (num_layers > 1)"
                    .into(),
            });
        }
        checked_size("hidden_size", &[self.cell.gates(), self.hidden_size, 2])?;
        Ok(())
    }
}

/// What changes from call to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpec<'a> {
    /// Time steps `T` (at least 1).
    pub time_steps: usize,
    /// Sequences `B` (at least 1).
    pub batch: usize,
    /// Memory order of `x`, `dx` and a sequence `y`.
    pub layout: Layout,
    /// Real steps of each sequence (`B` values, each `<= T`; the rest is padding at the end);
    /// `None`: all `T`.
    pub lengths: Option<&'a [usize]>,
    /// Seed of the dropout masks (training only); the same seed gives the same masks.
    pub seed: u64,
}

impl<'a> RunSpec<'a> {
    /// `T` steps of `B` sequences, time-major, no padding, seed 0.
    pub fn new(time_steps: usize, batch: usize) -> Self {
        Self {
            time_steps,
            batch,
            layout: Layout::TimeMajor,
            lengths: None,
            seed: 0,
        }
    }
    /// With another layout.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// With sequence lengths.
    pub fn lengths(mut self, lengths: &'a [usize]) -> Self {
        self.lengths = Some(lengths);
        self
    }
    /// With a dropout seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A built-in cell of run-time shape: what every layer and direction of an [`Rnn`] holds.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyCell<T> {
    /// SimpleRNN.
    SimpleRnn(DynSimpleRnn<T>),
    /// LSTM.
    Lstm(DynLstm<T>),
    /// GRU.
    Gru(DynGru<T>),
}

impl<T: Real> AnyCell<T> {
    /// The cell of kind `cell` over `weights` (internal layout).
    pub fn from_weights(cell: CellConfig, weights: RecurrentWeights<T, Dyn, Dyn>) -> Result<Self> {
        Ok(match cell {
            CellConfig::SimpleRnn(k) => AnyCell::SimpleRnn(DynSimpleRnn::from_weights(k, weights)?),
            CellConfig::Lstm(k) => AnyCell::Lstm(DynLstm::from_weights(k, weights)?),
            CellConfig::Gru(k) => AnyCell::Gru(DynGru::from_weights(k, weights)?),
        })
    }
    /// The weights, internal layout.
    pub fn weights(&self) -> &RecurrentWeights<T, Dyn, Dyn> {
        match self {
            AnyCell::SimpleRnn(c) => c.weights(),
            AnyCell::Lstm(c) => c.weights(),
            AnyCell::Gru(c) => c.weights(),
        }
    }
    /// The kind with its activations.
    pub fn config(&self) -> CellConfig {
        match self {
            AnyCell::SimpleRnn(c) => CellConfig::SimpleRnn(*c.kind()),
            AnyCell::Lstm(c) => CellConfig::Lstm(*c.kind()),
            AnyCell::Gru(c) => CellConfig::Gru(*c.kind()),
        }
    }
    /// The cell as a trait object.
    pub fn as_cell(&self) -> &dyn Cell<T> {
        match self {
            AnyCell::SimpleRnn(c) => c,
            AnyCell::Lstm(c) => c,
            AnyCell::Gru(c) => c,
        }
    }
    /// The cell as a mutable trait object.
    pub fn as_cell_mut(&mut self) -> &mut dyn Cell<T> {
        match self {
            AnyCell::SimpleRnn(c) => c,
            AnyCell::Lstm(c) => c,
            AnyCell::Gru(c) => c,
        }
    }
}

impl<T: Real> Cell<T> for AnyCell<T> {
    fn input_size(&self) -> usize {
        self.as_cell().input_size()
    }
    fn hidden_size(&self) -> usize {
        self.as_cell().hidden_size()
    }
    fn state_count(&self) -> usize {
        self.as_cell().state_count()
    }
    fn tape_width(&self) -> usize {
        self.as_cell().tape_width()
    }
    fn scratch_width(&self) -> usize {
        self.as_cell().scratch_width()
    }
    fn prepare(&self) {
        self.as_cell().prepare()
    }
    fn max_parts(&self, batch: usize) -> usize {
        self.as_cell().max_parts(batch)
    }
    fn part_units(&self, part: crate::cell::Part) -> std::ops::Range<usize> {
        self.as_cell().part_units(part)
    }
    fn row_parts(&self, batch: usize, parts: usize) -> Option<Vec<std::ops::Range<usize>>> {
        self.as_cell().row_parts(batch, parts)
    }
    fn backward_row_parts(
        &self,
        batch: usize,
        parts: usize,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        self.as_cell().backward_row_parts(batch, parts)
    }
    fn projection_width(&self) -> usize {
        self.as_cell().projection_width()
    }
    fn project_inputs(&self, x: &[T], proj: &mut [T]) {
        self.as_cell().project_inputs(x, proj)
    }
    fn project_inputs_inference(&self, x: &[T], proj: &mut [T]) {
        self.as_cell().project_inputs_inference(x, proj)
    }
    fn step_forward(&self, step: StepForward<'_, T>) {
        self.as_cell().step_forward(step)
    }
    fn step_backward(&self, step: StepBackward<'_, T>, grads: &mut [Vec<T>]) {
        self.as_cell().step_backward(step, grads)
    }
    fn project_backward(&self, x: &[T], d_proj: &[T], dx: &mut [T], grads: &mut [Vec<T>]) {
        self.as_cell().project_backward(x, d_proj, dx, grads)
    }
    fn sequence_backward(
        &self,
        batch: usize,
        states: &[T],
        tape: &[T],
        d_proj: &[T],
        grads: &mut [Vec<T>],
    ) {
        self.as_cell()
            .sequence_backward(batch, states, tape, d_proj, grads)
    }
    fn params(&self) -> Vec<Param<'_, T>> {
        self.as_cell().params()
    }
    fn params_mut(&mut self) -> Vec<&mut [T]> {
        self.as_cell_mut().params_mut()
    }
}

/// A stack's descriptor and weights (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct Rnn<T> {
    config: RnnConfig,
    cells: Vec<AnyCell<T>>,
}

impl<T: Real> Rnn<T> {
    /// A stack from its cells, index `layer·D + direction`.
    ///
    /// Errors: the config's ([`RnnConfig::validate`]); [`Error::Length`] for the wrong number
    /// of cells; [`Error::Mismatch`] / [`Error::Invalid`] naming the first cell whose kind,
    /// widths or biases disagree with the config.
    pub fn new(config: RnnConfig, cells: Vec<AnyCell<T>>) -> Result<Self> {
        config.validate()?;
        crate::error::check_len("cells", cells.len(), config.cell_count())?;
        for (n, c) in cells.iter().enumerate() {
            check_cell(&config, n, c)?;
        }
        Ok(Self { config, cells })
    }

    /// Deterministic pseudo-random weights ([`RecurrentWeights::random`] with seed
    /// `seed + cell index`).
    pub fn random(config: RnnConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut cells = crate::error::try_with_capacity("config.layers", config.cell_count())?;
        for n in 0..config.cell_count() {
            let l = n / config.directions();
            let w = RecurrentWeights::random(
                Dyn(config.layer_input_size(l)),
                Dyn(config.hidden_size),
                config.cell.gates(),
                config.use_bias,
                seed.wrapping_add(n as u64),
            )?;
            cells.push(AnyCell::from_weights(config.cell, w)?);
        }
        Self::new(config, cells)
    }

    /// The descriptor.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }
    /// Every cell, index `layer·D + direction`.
    pub fn cells(&self) -> &[AnyCell<T>] {
        &self.cells
    }
    /// Every cell's parameters, mutable, for weight updates: index `layer·D + direction`, each
    /// cell's in the order of its [`Cell::params`]. Their values change; the cells' kinds and
    /// sizes cannot (see [`Rnn::set_cell`]).
    pub fn params_mut(&mut self) -> Vec<Vec<&mut [T]>> {
        self.cells.iter_mut().map(Cell::params_mut).collect()
    }
    /// Replaces cell `n` (`layer·D + direction`), checked against the config as [`Rnn::new`]
    /// checks its cells.
    ///
    /// Errors: [`Error::Invalid`] for `n` beyond the stack's cells, a cell of another kind, or
    /// biases the config does not have (or lacks ones it has); [`Error::Mismatch`] for other
    /// sizes.
    pub fn set_cell(&mut self, n: usize, cell: AnyCell<T>) -> Result<()> {
        self.check_cell_index(n)?;
        check_cell(&self.config, n, &cell)?;
        self.cells[n] = cell;
        Ok(())
    }
    /// [`Error::Invalid`] naming `n` unless it indexes one of the stack's cells.
    pub(crate) fn check_cell_index(&self, n: usize) -> Result<()> {
        let count = self.cells.len();
        if n < count {
            return Ok(());
        }
        Err(Error::Invalid {
            arg: "n",
            reason: format!("cell {n}, expected below {count} (the stack's cells)"),
        })
    }
    /// The cell of `layer` and `direction`.
    pub fn cell(&self, layer: usize, direction: usize) -> Option<&AnyCell<T>> {
        if direction >= self.config.directions() {
            return None;
        }
        self.cells.get(layer * self.config.directions() + direction)
    }
    /// Changes the training-time settings that do not touch the weights' shapes (dropout
    /// rates, mask semantics, `return_sequences`).
    pub fn set_training_options(
        &mut self,
        dropout: f64,
        recurrent_dropout: f64,
        inter_layer_dropout: f64,
    ) -> Result<()> {
        let c = RnnConfig {
            dropout,
            recurrent_dropout,
            inter_layer_dropout,
            ..self.config
        };
        c.validate()?;
        self.config = c;
        Ok(())
    }
    /// Changes the outputs at padded steps.
    pub fn set_mask_semantics(&mut self, m: MaskSemantics) {
        self.config.mask_semantics = m;
    }
}

/// Whether `c` can be cell `n` of a stack described by `config`: its kind, sizes and biases.
fn check_cell<T: Real>(config: &RnnConfig, n: usize, c: &AnyCell<T>) -> Result<()> {
    let l = n / config.directions();
    if c.config() != config.cell {
        return Err(Error::Invalid {
            arg: "cells",
            reason: format!(
                "cell {n} is {:?}, the config says {:?}",
                c.config(),
                config.cell
            ),
        });
    }
    let w = c.weights();
    for (arg, actual, expected) in [
        (
            "cells[k].input_size",
            w.input_size(),
            config.layer_input_size(l),
        ),
        ("cells[k].hidden_size", w.hidden_size(), config.hidden_size),
    ] {
        if actual != expected {
            return Err(Error::Mismatch {
                arg,
                expected,
                actual,
            });
        }
    }
    if w.has_bias() != config.use_bias {
        return Err(Error::Invalid {
            arg: "cells",
            reason: format!(
                "cell {n} {} biases, the config says use_bias = {}",
                if w.has_bias() { "has" } else { "has no" },
                config.use_bias
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lstm(i: usize, h: usize, bias: bool, seed: u64) -> Rnn<f32> {
        let config = RnnConfig::new(CellConfig::Lstm(LstmKind::default()), i, h).use_bias(bias);
        Rnn::random(config, seed).unwrap()
    }

    /// A replacement cell is checked as `Rnn::new` checks its cells; a refused one leaves the
    /// stack as it was.
    #[test]
    fn set_cell_keeps_the_stack_consistent() {
        let mut rnn = lstm(3, 4, true, 0);
        let before = rnn.clone();
        let other_size = lstm(5, 7, true, 1).cells()[0].clone();
        assert!(matches!(
            rnn.set_cell(0, other_size),
            Err(Error::Mismatch {
                arg: "cells[k].input_size",
                expected: 3,
                actual: 5
            })
        ));
        let gru = Rnn::<f32>::random(RnnConfig::new(CellConfig::Gru(GruKind::default()), 3, 4), 2)
            .unwrap()
            .cells()[0]
            .clone();
        assert!(matches!(
            rnn.set_cell(0, gru),
            Err(Error::Invalid { arg: "cells", .. })
        ));
        let no_bias = lstm(3, 4, false, 3).cells()[0].clone();
        assert!(matches!(
            rnn.set_cell(0, no_bias),
            Err(Error::Invalid { arg: "cells", .. })
        ));
        let same_shape = lstm(3, 4, true, 4).cells()[0].clone();
        assert!(matches!(
            rnn.set_cell(1, same_shape.clone()),
            Err(Error::Invalid { arg: "n", .. })
        ));
        assert!(rnn == before, "a refused cell changed the stack");
        rnn.set_cell(0, same_shape.clone()).unwrap();
        assert!(rnn.cells()[0] == same_shape);
    }

    /// `params_mut` reaches every cell's parameters, in `Cell::params` order.
    #[test]
    fn params_mut_updates_the_weights_in_place() {
        let mut rnn = lstm(3, 4, true, 0);
        let lens: Vec<Vec<usize>> = rnn
            .cells()
            .iter()
            .map(|c| c.params().iter().map(|p| p.data.len()).collect())
            .collect();
        for cell in rnn.params_mut() {
            for p in cell {
                p.fill(0.5);
            }
        }
        for (cell, lens) in rnn.cells().iter().zip(&lens) {
            let params = cell.params();
            assert_eq!(
                &params.iter().map(|p| p.data.len()).collect::<Vec<_>>(),
                lens
            );
            assert!(params.iter().all(|p| p.data.iter().all(|&v| v == 0.5)));
        }
    }
}
