//! The parameter storage shared by the built-in cells and the one `Cell` implementation
//! that runs all of them.

use std::fmt::Debug;
use std::sync::OnceLock;

use super::{Cell, Param, Part, StepBackward, StepForward};
use crate::cpu;
use crate::cpu::packed::{PackedProjection, PackedRecurrent, TILE_UNITS};
use crate::cpu::pool::Scratch;
use crate::dim::Dim;
use crate::error::{Error, Result, check_len, check_nonzero, checked_size, try_filled};
use crate::real::Real;

/// Index of `kernel` in a built-in cell's [`Cell::params`].
pub const KERNEL: usize = 0;
/// Index of `recurrent_kernel`.
pub const RECURRENT_KERNEL: usize = 1;
/// Index of `bias` (present when the cell uses biases).
pub const BIAS: usize = 2;
/// Index of `recurrent_bias` (present when the cell uses biases).
pub const RECURRENT_BIAS: usize = 3;

/// The weights of a built-in cell with `G` gates, in the internal layout (see the
/// [module docs](super)).
#[derive(Debug, Clone)]
pub struct RecurrentWeights<T, I: Dim, H: Dim> {
    pub(crate) input: I,
    pub(crate) hidden: H,
    pub(crate) gates: usize,
    /// `[I, G·H]`.
    pub(crate) kernel: Vec<T>,
    /// `[H, G·H]`.
    pub(crate) recurrent_kernel: Vec<T>,
    /// `[G·H]` each, or both empty when the cell has no bias.
    pub(crate) bias: Vec<T>,
    pub(crate) recurrent_bias: Vec<T>,
    /// The recurrent weights in the register-fused kernels' tile layout (`f32` only), built on
    /// first use and dropped whenever the weights are handed out mutably.
    pub(crate) packed: OnceLock<PackedRecurrent>,
    /// The input kernel and bias in the projection kernel's panel layout (`f32` only), cached
    /// like `packed`.
    pub(crate) packed_input: OnceLock<PackedProjection>,
    /// Packed inference steps stream the recurrent weights as bfloat16.
    pub(crate) bf16_inference: bool,
}

impl<T: PartialEq, I: Dim, H: Dim> PartialEq for RecurrentWeights<T, I, H> {
    /// Equal weights; the packing cache does not take part.
    fn eq(&self, o: &Self) -> bool {
        (self.input, self.hidden, self.gates) == (o.input, o.hidden, o.gates)
            && self.kernel == o.kernel
            && self.recurrent_kernel == o.recurrent_kernel
            && self.bias == o.bias
            && self.recurrent_bias == o.recurrent_bias
    }
}

impl<T: Real, I: Dim, H: Dim> RecurrentWeights<T, I, H> {
    /// Weights from row-major buffers in the internal layout: `kernel [I, G·H]`,
    /// `recurrent_kernel [H, G·H]`, and either both biases (`[G·H]` each) or neither.
    pub fn new(
        input: I,
        hidden: H,
        gates: usize,
        kernel: Vec<T>,
        recurrent_kernel: Vec<T>,
        biases: Option<(Vec<T>, Vec<T>)>,
    ) -> Result<Self> {
        check_nonzero("input_size", input.value())?;
        check_nonzero("hidden_size", hidden.value())?;
        check_nonzero("gates", gates)?;
        let gh = checked_size("hidden_size", &[gates, hidden.value()])?;
        check_len(
            "kernel",
            kernel.len(),
            checked_size("kernel", &[input.value(), gh])?,
        )?;
        check_len(
            "recurrent_kernel",
            recurrent_kernel.len(),
            checked_size("recurrent_kernel", &[hidden.value(), gh])?,
        )?;
        let (bias, recurrent_bias) = biases.unwrap_or_default();
        if !(bias.is_empty() && recurrent_bias.is_empty()) {
            check_len("bias", bias.len(), gh)?;
            check_len("recurrent_bias", recurrent_bias.len(), gh)?;
        }
        Ok(Self {
            input,
            hidden,
            gates,
            kernel,
            recurrent_kernel,
            bias,
            recurrent_bias,
            packed: OnceLock::new(),
            packed_input: OnceLock::new(),
            bf16_inference: false,
        })
    }

    /// All-zero weights.
    pub fn zeros(input: I, hidden: H, gates: usize, use_bias: bool) -> Result<Self> {
        let (i, h) = (input.value(), hidden.value());
        let gh = checked_size("hidden_size", &[gates, h])?;
        let biases = match use_bias {
            true => Some((
                try_filled("bias", gh, T::ZERO)?,
                try_filled("recurrent_bias", gh, T::ZERO)?,
            )),
            false => None,
        };
        Self::new(
            input,
            hidden,
            gates,
            try_filled("kernel", checked_size("kernel", &[i, gh])?, T::ZERO)?,
            try_filled(
                "recurrent_kernel",
                checked_size("recurrent_kernel", &[h, gh])?,
                T::ZERO,
            )?,
            biases,
        )
    }

    /// Deterministic pseudo-random weights, uniform in `±sqrt(6 / (I + H))` (Glorot's scale) for
    /// the kernels and `±0.1` for the biases; the same `seed` gives the same weights everywhere.
    pub fn random(input: I, hidden: H, gates: usize, use_bias: bool, seed: u64) -> Result<Self> {
        let mut w = Self::zeros(input, hidden, gates, use_bias)?;
        let mut rng = SplitMix64(seed);
        let scale = (6.0 / (input.value() + hidden.value()) as f64).sqrt();
        for v in w.kernel.iter_mut().chain(w.recurrent_kernel.iter_mut()) {
            *v = T::from_f64(scale * rng.symmetric());
        }
        for v in w.bias.iter_mut().chain(w.recurrent_bias.iter_mut()) {
            *v = T::from_f64(0.1 * rng.symmetric());
        }
        Ok(w)
    }

    /// Input width `I`.
    pub fn input_size(&self) -> usize {
        self.input.value()
    }
    /// Hidden width `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden.value()
    }
    /// Number of gates `G`.
    pub fn gates(&self) -> usize {
        self.gates
    }
    /// Whether the cell has biases.
    pub fn has_bias(&self) -> bool {
        !self.bias.is_empty()
    }
    /// `kernel [I, G·H]`, row-major.
    pub fn kernel(&self) -> &[T] {
        &self.kernel
    }
    /// The recurrent weights packed for the register-fused `f32` kernels (built on first use,
    /// then reused by every step until the weights change).
    pub fn packed(&self) -> &PackedRecurrent
    where
        T: Real,
    {
        self.packed.get_or_init(|| {
            PackedRecurrent::new(
                &as_f32(&self.recurrent_kernel),
                &as_f32(&self.recurrent_bias),
                self.hidden.value(),
                self.gates,
            )
        })
    }

    /// The input kernel and bias packed for the `f32` projection kernel; built on first use
    /// like [`Self::packed`].
    pub(crate) fn packed_projection(&self) -> &PackedProjection
    where
        T: Real,
    {
        self.packed_input.get_or_init(|| {
            let n = self.gates * self.hidden.value();
            PackedProjection::new(
                &as_f32(&self.kernel),
                &as_f32(&self.bias),
                self.input.value(),
                n,
            )
        })
    }

    /// `recurrent_kernel [H, G·H]`, row-major.
    pub fn recurrent_kernel(&self) -> &[T] {
        &self.recurrent_kernel
    }
    /// `bias [G·H]` (input side), `None` without biases.
    pub fn bias(&self) -> Option<&[T]> {
        self.has_bias().then_some(&self.bias[..])
    }
    /// `recurrent_bias [G·H]`, `None` without biases.
    pub fn recurrent_bias(&self) -> Option<&[T]> {
        self.has_bias().then_some(&self.recurrent_bias[..])
    }
}

/// A small, fast, reproducible generator (SplitMix64) for weight initialisation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    fn symmetric(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// The cell-specific part of a built-in cell: gate count, activations and the fused step.
///
/// Implemented by [`super::SimpleRnnKind`], [`super::LstmKind`] and [`super::GruKind`]; sealed.
pub trait CellKind: Copy + Debug + Send + Sync + 'static + private::Sealed {
    /// Gates `G` (1, 4, 3).
    const GATES: usize;
    /// State tensors `S` (LSTM 2, others 1).
    const STATES: usize;
    /// Per-row record width for hidden width `h`.
    fn tape_width(&self, h: usize) -> usize;
    /// Whether the forward step is local to each hidden unit once the previous state is known,
    /// so that it can run tile by tile: on the packed, register-fused kernels, and split
    /// across threads.
    fn splittable(&self) -> bool {
        true
    }
    /// Whether the recurrent kernel's and bias's gradients follow from the projection
    /// gradients, the previous outputs and the records alone (`∂L/∂U = Σ_t h_{t−1}ᵀ · d_rec_t`,
    /// `d_rec` the projection gradient with [`CellKind::recurrent_gate_scale`] applied): then
    /// BPTT computes them once for the whole sequence, as products over all `T·B` rows, instead
    /// of step by step. True for LSTM, SimpleRNN and the reset-after GRU; not for the
    /// reset-before GRU, whose candidate product reads `r ⊙ h_{t−1}`.
    fn recurrent_grad_in_sequence(&self) -> bool {
        true
    }
    /// A gate block whose recurrent term enters the pre-activation scaled by a recorded gate
    /// (the reset-after GRU's candidate, `r ⊙ (h·U_n + b_n)`): `(block, offset of the scale in
    /// a row's record)`, for hidden width `h`. The recurrent gradient of that block is the
    /// projection gradient times the scale. `None` for the others.
    fn recurrent_gate_scale(&self, h: usize) -> Option<(usize, usize)> {
        let _ = h;
        None
    }
    /// Per-row scratch width for hidden width `h`.
    fn scratch_width(&self, h: usize) -> usize {
        Self::GATES * h
    }
    /// The fused forward step.
    fn step_forward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepForward<'_, T>,
    );
    /// The fused backward step: writes `d_state`, `d_proj`; accumulates the recurrent
    /// parameter gradients into `d_recurrent_kernel` and `d_recurrent_bias` (empty without bias).
    fn step_backward<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        d_recurrent_kernel: &mut [T],
        d_recurrent_bias: &mut [T],
    );
    /// The gate half of a backward step for the hidden units `units`: see
    /// [`Cell::step_backward_gates`].
    fn step_backward_gates<T: Real, I: Dim, H: Dim>(
        &self,
        w: &RecurrentWeights<T, I, H>,
        step: StepBackward<'_, T>,
        units: std::ops::Range<usize>,
    );
}

/// `v` as `f32`, for the packed `f32` kernels' copies of the weights.
fn as_f32<T: Real>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f64() as f32).collect()
}

/// The recurrent kernel's and recurrent bias's gradient buffers among a built-in cell's
/// parameter gradients (the bias's empty when the cell has none).
pub(crate) fn recurrent_grads<T>(grads: &mut [Vec<T>]) -> (&mut [T], &mut [T]) {
    let (head, tail) = grads.split_at_mut(BIAS.min(grads.len()));
    let d_rb: &mut [T] = match tail.get_mut(RECURRENT_BIAS - BIAS) {
        Some(v) => v,
        None => &mut [],
    };
    (&mut head[RECURRENT_KERNEL], d_rb)
}

pub(crate) mod private {
    pub trait Sealed {}
}

/// A built-in cell: weights plus the cell kind. Use the aliases [`super::Lstm`],
/// [`super::Gru`] and [`super::SimpleRnn`].
#[derive(Debug, Clone, PartialEq)]
pub struct Recurrent<T, K, I: Dim, H: Dim> {
    pub(crate) weights: RecurrentWeights<T, I, H>,
    pub(crate) kind: K,
}

impl<T: Real, K: CellKind, I: Dim, H: Dim> Recurrent<T, K, I, H> {
    /// A cell of kind `kind` over `weights`, which must have `K::GATES` gates.
    pub fn from_weights(kind: K, weights: RecurrentWeights<T, I, H>) -> Result<Self> {
        if weights.gates != K::GATES {
            return Err(Error::Mismatch {
                arg: "weights.gates",
                expected: K::GATES,
                actual: weights.gates,
            });
        }
        Ok(Self { weights, kind })
    }

    /// Whether inference with `f32` on the AVX2 / AVX-512 backends uses bfloat16 weights
    /// (rounded to nearest even once, when first needed):
    ///
    /// - the recurrent weights are streamed as bfloat16 and widened exactly in the kernel: half
    ///   the bytes per packed forward step (see the crate docs), the state stays `f32`;
    /// - on the AVX-512 backend of a CPU with AVX-512 BF16, the input projection also runs in
    ///   bfloat16: inputs are rounded to bfloat16 too and `vdpbf16ps` sums their products in
    ///   `f32`, twice the multiply-adds per instruction of the `f32` kernel. Elsewhere the
    ///   projection stays `f32`.
    ///
    /// Over 100 steps with Glorot-scaled weights and inputs in ±1, the outputs stay within
    /// 4.5e-4 (LSTM), 8.5e-4 (GRU) and 5.3e-3 (SimpleRNN, H = 256) of the `f32`-weight outputs
    /// with the `f32` projection, and within 2.9e-3, 4.6e-3 and 1.3e-2 with the bfloat16 one,
    /// measured by `tests/bf16.rs`, which asserts 2e-2 (LSTM and GRU also with 5 inputs and 65
    /// or 130 units). Rounding the weights is a perturbation, and a recurrence that amplifies
    /// perturbations amplifies it: a SimpleRNN of 5 inputs and 130 units from
    /// [`Recurrent::random`] moved by up to 2.6e-1 over 100 steps (6.9e-2 with 65 units).
    /// Finite weights and inputs past the largest finite bfloat16 saturate to it. Training
    /// forward and backward always use the `f32` weights. Off by default.
    pub fn set_bf16_inference(&mut self, on: bool) {
        self.weights.bf16_inference = on;
    }

    /// See [`Recurrent::set_bf16_inference`].
    pub fn bf16_inference(&self) -> bool {
        self.weights.bf16_inference
    }

    /// The cell's weights.
    pub fn weights(&self) -> &RecurrentWeights<T, I, H> {
        &self.weights
    }
    /// The cell kind with its activations.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// Multiplies the gate block that enters scaled (`(block, offset)`, see
    /// [`CellKind::recurrent_gate_scale`]) of every row of `d [N, G·H]` by its scale in the
    /// row's record (`tape [N, tape_width]`).
    fn scale_recurrent_block(&self, (block, at): (usize, usize), d: &mut [T], tape: &[T]) {
        let h = self.hidden_size();
        let tw = self.kind.tape_width(h);
        for (row, t_row) in d.chunks_exact_mut(K::GATES * h).zip(tape.chunks_exact(tw)) {
            for (v, &s) in row[block * h..(block + 1) * h]
                .iter_mut()
                .zip(&t_row[at..at + h])
            {
                *v *= s;
            }
        }
    }
}

impl<T: Real, K: CellKind, I: Dim, H: Dim> Cell<T> for Recurrent<T, K, I, H> {
    fn input_size(&self) -> usize {
        self.weights.input.value()
    }
    fn hidden_size(&self) -> usize {
        self.weights.hidden.value()
    }
    fn state_count(&self) -> usize {
        K::STATES
    }
    fn tape_width(&self) -> usize {
        self.kind.tape_width(self.hidden_size())
    }
    fn scratch_width(&self) -> usize {
        self.kind.scratch_width(self.hidden_size())
    }
    fn projection_width(&self) -> usize {
        K::GATES * self.hidden_size()
    }

    fn prepare(&self) {
        T::prepare_weights(&self.weights);
    }

    fn max_parts(&self, batch: usize) -> usize {
        /// Multiply-adds per step below which another thread costs more (a barrier and the
        /// exchange of the new state) than it saves.
        const MIN_WORK_PER_PART: usize = 1 << 16;
        if !self.kind.splittable() {
            return 1;
        }
        let h = self.hidden_size();
        let work = batch * h * K::GATES * h;
        // At least two tiles per part: one tile each (an LSTM step of 32 rows and 32 units)
        // ran 1.4-1.6x slower on two threads than on one.
        (h.div_ceil(TILE_UNITS) / 2)
            .min(work / MIN_WORK_PER_PART)
            .max(1)
    }

    fn part_units(&self, part: Part) -> std::ops::Range<usize> {
        cpu::part_units(part, self.hidden_size())
    }

    fn row_parts(&self, batch: usize, parts: usize) -> Option<Vec<std::ops::Range<usize>>> {
        /// Recurrent weights up to this size run as row parts, each thread holding all of them
        /// in its core's cache; larger ones are split by hidden units, each thread holding its
        /// share.
        const MAX_SHARED_BYTES: usize = 1 << 20;
        let h = self.hidden_size();
        if h * K::GATES * h * size_of::<T>() > MAX_SHARED_BYTES {
            return None;
        }
        let packable = T::packed_projection(&self.weights).is_some() && self.kind.splittable();
        cpu::row_parts(batch, parts, h, K::GATES, packable)
    }

    fn backward_row_parts(
        &self,
        batch: usize,
        parts: usize,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        if !self.kind.recurrent_grad_in_sequence() {
            return None;
        }
        cpu::backward_row_parts(batch, parts, T::packed_projection(&self.weights).is_some())
    }

    fn backward_unit_parts(&self, batch: usize, parts: usize) -> usize {
        if !self.kind.recurrent_grad_in_sequence() {
            return 1;
        }
        self.max_parts(batch).min(parts).max(1)
    }

    fn step_backward_gates(&self, step: StepBackward<'_, T>, part: Part) {
        self.kind
            .step_backward_gates(&self.weights, step, self.part_units(part));
    }

    fn step_backward_recurrent(&self, step: StepBackward<'_, T>, part: Part) {
        let (h, b) = (self.hidden_size(), step.batch);
        let gh = K::GATES * h;
        let d_rec: &[T] = match self.kind.recurrent_gate_scale(h) {
            None => step.d_proj,
            Some(scale) => {
                let d_rec = &mut step.scratch[..b * gh];
                d_rec.copy_from_slice(&step.d_proj[..b * gh]);
                self.scale_recurrent_block(scale, d_rec, step.tape);
                d_rec
            }
        };
        cpu::recurrent_grad_units(
            &self.weights,
            b,
            d_rec,
            &mut step.d_state[..b * h],
            self.part_units(part),
            step.step,
        );
    }

    fn project_inputs(&self, x: &[T], proj: &mut [T]) {
        let w = &self.weights;
        cpu::project_rows(
            w.input,
            x,
            &w.kernel,
            w.bias().unwrap_or(&[]),
            proj,
            K::GATES * self.hidden_size(),
            T::packed_projection(w),
        );
    }

    fn project_inputs_inference(&self, x: &[T], proj: &mut [T]) {
        if !(self.weights.bf16_inference && T::project_bf16(&self.weights, x, proj)) {
            self.project_inputs(x, proj);
        }
    }

    fn step_forward(&self, step: StepForward<'_, T>) {
        self.kind.step_forward(&self.weights, step);
    }

    fn step_backward(&self, step: StepBackward<'_, T>, grads: &mut [Vec<T>]) {
        if self.kind.recurrent_grad_in_sequence() {
            // The recurrent gradients come in `sequence_backward`; the step only propagates.
            self.kind
                .step_backward(&self.weights, step, &mut [], &mut []);
            return;
        }
        let (d_rk, d_rb) = recurrent_grads(grads);
        self.kind.step_backward(&self.weights, step, d_rk, d_rb);
    }

    fn sequence_backward(
        &self,
        batch: usize,
        states: &[T],
        tape: &[T],
        d_proj: &[T],
        grads: &mut [Vec<T>],
    ) {
        if !self.kind.recurrent_grad_in_sequence() {
            return;
        }
        let (h, p) = (self.hidden_size(), K::GATES * self.hidden_size());
        let rows = d_proj.len() / p;
        // h_{t−1} of every step and row, [T·B, H]: state 0 of each snapshot, which are those
        // rows already where a snapshot holds nothing else.
        let snapshot = K::STATES * batch * h;
        let gathered;
        let h_prev = if snapshot == batch * h {
            &states[..rows * h]
        } else {
            let mut v = Scratch::overwritten_or_abort(rows * h, T::ZERO);
            for (t, dst) in v.chunks_exact_mut((batch * h).max(1)).enumerate() {
                dst.copy_from_slice(&states[t * snapshot..][..batch * h]);
            }
            gathered = v;
            &gathered[..]
        };
        let (d_rk, d_rb) = recurrent_grads(grads);
        // The recurrent gradients of every row: `d_proj`, with the scaled block multiplied in
        // where there is one.
        let scaled;
        let d_rec = match self.kind.recurrent_gate_scale(h) {
            None => d_proj,
            Some(scale) => {
                let mut v = Scratch::overwritten_or_abort(d_proj.len(), T::ZERO);
                v.copy_from_slice(d_proj);
                self.scale_recurrent_block(scale, &mut v, tape);
                scaled = v;
                &scaled[..]
            }
        };
        cpu::project_rows_backward(
            self.weights.hidden,
            h_prev,
            &self.weights.recurrent_kernel,
            d_rec,
            p,
            &mut [],
            d_rk,
            d_rb,
        );
    }

    fn project_backward(&self, x: &[T], d_proj: &[T], dx: &mut [T], grads: &mut [Vec<T>]) {
        let w = &self.weights;
        let (d_kernel, rest) = grads.split_at_mut(1);
        let d_bias: &mut [T] = match rest.get_mut(BIAS - 1) {
            Some(v) => v,
            None => &mut [],
        };
        cpu::project_rows_backward(
            w.input,
            x,
            &w.kernel,
            d_proj,
            K::GATES * self.hidden_size(),
            dx,
            &mut d_kernel[0],
            d_bias,
        );
    }

    fn params(&self) -> Vec<Param<'_, T>> {
        let w = &self.weights;
        let (i, h, gh) = (w.input_size(), w.hidden_size(), K::GATES * w.hidden_size());
        let mut p = vec![
            Param {
                name: "kernel",
                shape: [i, gh],
                data: &w.kernel,
            },
            Param {
                name: "recurrent_kernel",
                shape: [h, gh],
                data: &w.recurrent_kernel,
            },
        ];
        if w.has_bias() {
            p.push(Param {
                name: "bias",
                shape: [1, gh],
                data: &w.bias,
            });
            p.push(Param {
                name: "recurrent_bias",
                shape: [1, gh],
                data: &w.recurrent_bias,
            });
        }
        p
    }

    fn params_mut(&mut self) -> Vec<&mut [T]> {
        let w = &mut self.weights;
        // The caller may change the weights: the packed copy would go stale.
        w.packed = OnceLock::new();
        w.packed_input = OnceLock::new();
        let mut p: Vec<&mut [T]> = vec![&mut w.kernel, &mut w.recurrent_kernel];
        if !w.bias.is_empty() {
            p.push(&mut w.bias);
            p.push(&mut w.recurrent_bias);
        }
        p
    }
}
