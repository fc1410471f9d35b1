//! CPU kernels: the input projection over all rows, the recurrent products, the fused gate
//! epilogues, and the dispatch between backends.
//!
//! The big products over all `T·B` rows at once (input projection, and in backward the input
//! and kernel gradients) go through [`gemm`], except the `f32` projection on the SIMD
//! backends, which runs on the input kernel packed once ([`packed::project`], or
//! [`packed::project_bf16`] in bfloat16 inference). On the SIMD backends an `f32` forward step
//! of a built-in cell runs the register-fused kernels over the recurrent weights packed once
//! ([`packed::step_fwd`]); with many rows and few units, the projection kernel over the same
//! packed weights for every row, then the epilogue ([`packed::recurrent_rows`]). Otherwise a
//! recurrent step is two phases: the product of the previous state with the recurrent kernel
//! for every batch row (a row-by-row matrix-vector kernel for small batches, one matrix
//! product otherwise), then the epilogue per row — bias, precomputed input projection, gate
//! activations and state update. Every kernel is generic over [`Dim`](crate::dim::Dim), so
//! compile-time and run-time shapes run the same source, and over [`ops::RowOps`], so every
//! backend runs the same source too.
//!
//! # Backends
//! [`Backend::Scalar`] (portable), [`Backend::Avx2`] (AVX2 + FMA) and [`Backend::Avx512`]
//! (AVX-512F). The best one this CPU supports is detected once; `FUSED_RNN_BACKEND=scalar|avx2|
//! avx512` in the environment, [`set_backend`] for the process, or [`with_backend`] for one
//! thread and one closure force another. `f32` kernels use explicit SIMD on AVX2 and AVX-512;
//! `f64` kernels run the portable code compiled for the selected ISA.

pub(crate) mod aligned;
#[cfg(feature = "openblas")]
pub(crate) mod blas;
pub mod gemm;
pub(crate) mod math;
pub(crate) mod ops;
pub mod packed;
pub(crate) mod pool;
pub(crate) mod simd;
pub(crate) mod step;

use std::cell::{Cell as StdCell, RefCell};
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::cell::gru::GruKind;
use crate::cell::lstm::LstmKind;
use crate::cell::simple_rnn::SimpleRnnKind;
use crate::cell::{RecurrentWeights, StepBackward, StepForward};
use crate::dim::Dim;
use crate::error::{Error, Result, try_filled};
use crate::real::Real;
use ops::{RowOps, ScalarOps};

/// Up to this many rows a product is done row by row: no packing, and no allocation
/// (matrixmultiply allocates packing buffers), which keeps small streaming steps
/// allocation-free.
pub(crate) const SMALL_ROWS: usize = 4;

/// A CPU kernel backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable Rust, no ISA assumptions.
    Scalar,
    /// AVX2 with FMA, 8 `f32` lanes.
    Avx2,
    /// AVX-512F, 16 `f32` lanes.
    Avx512,
}

impl Backend {
    /// Every backend, slowest first.
    pub const ALL: [Backend; 3] = [Backend::Scalar, Backend::Avx2, Backend::Avx512];

    /// `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }

    /// Parses [`Backend::name`].
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| Error::Unknown {
                what: "backend",
                value: name.to_string(),
                expected: "scalar, avx2, avx512",
            })
    }

    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => simd::Avx2::try_new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => simd::Avx512::try_new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The backends this CPU can run, slowest first.
    pub fn available() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_available()).collect()
    }

    /// The fastest backend this CPU can run.
    pub fn detected() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| *Self::available().last().unwrap_or(&Backend::Scalar))
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }
    fn from_code(c: u8) -> Option<Backend> {
        Self::ALL.get((c as usize).checked_sub(1)?).copied()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Process-wide choice: 0 = not set (environment, then detection).
static FORCED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static THREAD_FORCED: StdCell<u8> = const { StdCell::new(0) };
}

fn check_available(b: Backend) -> Result<()> {
    if b.is_available() {
        Ok(())
    } else {
        Err(Error::Invalid {
            arg: "backend",
            reason: format!(
                "{b} is not supported by this CPU (available: {:?})",
                Backend::available()
            ),
        })
    }
}

/// The backend from `FUSED_RNN_BACKEND`, read once; an unknown or unsupported name falls back
/// to detection.
fn from_environment() -> Option<Backend> {
    static ENV: OnceLock<Option<Backend>> = OnceLock::new();
    *ENV.get_or_init(|| {
        let name = std::env::var("FUSED_RNN_BACKEND").ok()?;
        Backend::from_name(name.trim())
            .ok()
            .filter(|b| b.is_available())
    })
}

/// The backend kernels called from this thread use now: [`with_backend`]'s, else
/// [`set_backend`]'s, else `FUSED_RNN_BACKEND`'s, else [`Backend::detected`].
pub fn active_backend() -> Backend {
    let forced = THREAD_FORCED.with(|c| c.get());
    Backend::from_code(forced)
        .or_else(|| Backend::from_code(FORCED.load(Ordering::Relaxed)))
        .or_else(from_environment)
        .unwrap_or_else(Backend::detected)
}

/// Forces `backend` for the whole process (`None`: back to the environment and detection).
/// Errors when this CPU cannot run it.
pub fn set_backend(backend: Option<Backend>) -> Result<()> {
    if let Some(b) = backend {
        check_available(b)?;
    }
    FORCED.store(backend.map_or(0, Backend::code), Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with `backend` forced on this thread (other threads are unaffected), restoring the
/// previous choice afterwards. Errors when this CPU cannot run it.
pub fn with_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> Result<R> {
    check_available(backend)?;
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_FORCED.with(|c| c.replace(backend.code())));
    Ok(f())
}

/// One kernel invocation, carried through the dispatch so that every kernel is instantiated
/// once per backend inside that backend's `#[target_feature]` wrapper.
pub enum Job<'a, T, I: Dim, H: Dim> {
    /// Input projection of `x` rows: see [`project_rows`].
    Project {
        input: I,
        x: &'a [T],
        kernel: &'a [T],
        bias: &'a [T],
        proj: &'a mut [T],
        p: usize,
        /// The same kernel and bias packed for the `f32` projection kernel (`None` for `f64`).
        packed: Option<&'a packed::PackedProjection>,
    },
    /// SimpleRNN forward step.
    RnnFwd(
        &'a SimpleRnnKind,
        &'a RecurrentWeights<T, I, H>,
        StepForward<'a, T>,
    ),
    /// SimpleRNN backward step, with the recurrent kernel and bias gradients.
    RnnBwd(
        &'a SimpleRnnKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        &'a mut [T],
        &'a mut [T],
    ),
    /// LSTM forward step.
    LstmFwd(
        &'a LstmKind,
        &'a RecurrentWeights<T, I, H>,
        StepForward<'a, T>,
    ),
    /// LSTM backward step.
    LstmBwd(
        &'a LstmKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        &'a mut [T],
        &'a mut [T],
    ),
    /// GRU forward step.
    GruFwd(
        &'a GruKind,
        &'a RecurrentWeights<T, I, H>,
        StepForward<'a, T>,
    ),
    /// GRU backward step; with a [`Carry`] when the update blended another state.
    GruBwd(
        &'a GruKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        &'a mut [T],
        &'a mut [T],
        Option<Carry<'a, T>>,
    ),
    /// The gate halves of backward steps split by hidden units (the units given): see
    /// [`crate::cell::Cell::step_backward_gates`].
    RnnBwdGates(
        &'a SimpleRnnKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        Range<usize>,
    ),
    /// See [`Job::RnnBwdGates`].
    LstmBwdGates(
        &'a LstmKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        Range<usize>,
    ),
    /// See [`Job::RnnBwdGates`].
    GruBwdGates(
        &'a GruKind,
        &'a RecurrentWeights<T, I, H>,
        StepBackward<'a, T>,
        Range<usize>,
    ),
    /// The recurrent half of a backward step split by hidden units: see
    /// [`recurrent_grad_units`].
    RecurrentGrad {
        w: &'a RecurrentWeights<T, I, H>,
        batch: usize,
        d: &'a [T],
        dh: &'a mut [T],
        units: Range<usize>,
        /// The backward step's [`StepBackward::step`].
        step: usize,
    },
}

/// The state a GRU step's update `z ⊙ h + (1 − z) ⊙ h̃` blended, where it differs from the
/// state its gate products saw (Keras's recurrent dropout drops the state in the products
/// only): `h [B, H]`, and `d_h [B, H]`, which the backward step overwrites with the gradient
/// through the update (`d_state` then holds only the gradient through the products).
#[derive(Debug)]
pub struct Carry<'a, T> {
    pub h: &'a [T],
    pub d_h: &'a mut [T],
}

impl<T: Real, I: Dim, H: Dim> Job<'_, T, I, H> {
    /// Runs the job with `ops`.
    #[cfg_attr(not(unoptimized), inline(always))]
    pub(crate) fn run<O: RowOps<T>>(self, ops: O) {
        match self {
            Job::Project {
                input,
                x,
                kernel,
                bias,
                proj,
                p,
                packed: _,
            } => {
                let i = input.value();
                step::product_rows(
                    ops,
                    input,
                    x.len() / i,
                    x,
                    i,
                    kernel,
                    p,
                    0,
                    p,
                    bias,
                    proj,
                    p,
                );
            }
            Job::RnnFwd(k, w, s) => step::simple_rnn_fwd(ops, k, w, s),
            Job::RnnBwd(k, w, s, rk, rb) => step::simple_rnn_bwd(ops, k, w, s, rk, rb),
            Job::LstmFwd(k, w, s) => step::lstm_fwd(ops, k, w, s),
            Job::LstmBwd(k, w, s, rk, rb) => step::lstm_bwd(ops, k, w, s, rk, rb),
            Job::GruFwd(k, w, s) => step::gru_fwd(ops, k, w, s),
            Job::GruBwd(k, w, s, rk, rb, c) => step::gru_bwd(ops, k, w, s, rk, rb, c),
            Job::RnnBwdGates(k, w, mut s, u) => step::simple_rnn_bwd_gates(k, w, &mut s, u),
            Job::LstmBwdGates(k, w, mut s, u) => step::lstm_bwd_gates(k, w, &mut s, u),
            Job::GruBwdGates(k, w, mut s, u) => step::gru_bwd_gates(k, w, &mut s, u, &mut None),
            Job::RecurrentGrad {
                w,
                batch,
                d,
                dh,
                units,
                step,
            } => step::recurrent_grad_units(ops, w, batch, d, dh, units, step),
        }
    }
}

/// Runs `job` under the active backend.
#[inline]
pub(crate) fn dispatch<T: Real, I: Dim, H: Dim>(job: Job<'_, T, I, H>) {
    T::run_job(job, active_backend());
}

/// Per element type: which operations each backend uses. `f32` has explicit SIMD, and
/// forward steps run the register-fused kernels over packed weights (see [`run_packed`]).
pub(crate) fn run_f32<I: Dim, H: Dim>(job: Job<'_, f32, I, H>, backend: Backend) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            let t = simd::Avx512::try_new().expect("dispatch checked availability");
            if let Some(job) = run_packed(t, job) {
                // SAFETY: the token proves AVX-512F, AVX2 and FMA are present.
                unsafe { isa::run_avx512(t, job, ops::SimdOps(t)) }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            let t = simd::Avx2::try_new().expect("dispatch checked availability");
            if let Some(job) = run_packed(t, job) {
                // SAFETY: the token proves AVX2 and FMA are present.
                unsafe { isa::run_avx2(t, job, ops::SimdOps(t)) }
            }
        }
        _ => job.run(ScalarOps),
    }
}

/// The hidden units a [`Part`](crate::cell::Part) of a built-in cell's step covers: its share
/// of the tiles of [`packed::TILE_UNITS`] units.
pub(crate) fn part_units(part: crate::cell::Part, hidden: usize) -> std::ops::Range<usize> {
    let tiles = part.range(hidden.div_ceil(packed::TILE_UNITS));
    (tiles.start * packed::TILE_UNITS).min(hidden)..(tiles.end * packed::TILE_UNITS).min(hidden)
}

/// Forward steps of at least this many rows and fewer than [`PACKED_MIN_UNITS`] hidden units run
/// the product for all rows first ([`packed::recurrent_rows`] on the SIMD backends) and the
/// epilogue after it, instead of the register-fused kernels: measured faster with
/// `examples/bench` on LSTM, GRU and SimpleRNN at B = 32 and 64, H = 32 to 1024 (SimpleRNN at
/// B = 32, H = 32: the fused kernels at 0.70x; LSTM 0.89x).
const PACKED_MAX_ROWS: usize = 32;
/// See [`PACKED_MAX_ROWS`].
const PACKED_MIN_UNITS: usize = 256;
/// LSTM and GRU steps of up to this many hidden units run the register-fused kernels at any
/// row count: there the product-then-epilogue path pays a pass over scratch memory for little
/// product (measured with `benches/ab.py`, B = 32 to 256: LSTM with 32 units 1.09-1.44x, GRU
/// with 32 and 64 units 1.13-1.16x; with 128 units and more the fused kernels measured
/// 0.93-1.04x, and SimpleRNN with 64 units 0.88x, so those keep the threshold).
const FUSED_MAX_UNITS_ANY_ROWS: usize = 64;

/// Whether a forward step of `rows` rows of a packed cell of `hidden` units and `gates` gates
/// runs the register-fused kernels rather than the product for all rows and then the epilogue:
/// see [`PACKED_MAX_ROWS`] and [`FUSED_MAX_UNITS_ANY_ROWS`].
fn fuses(rows: usize, hidden: usize, gates: usize) -> bool {
    rows < PACKED_MAX_ROWS
        || hidden >= PACKED_MIN_UNITS
        || (gates > 1 && hidden <= FUSED_MAX_UNITS_ANY_ROWS)
}

/// Contiguous row ranges, up to `parts` of them, that can each run a whole sequence of forward
/// steps on their own while every row comes out bit-identical to a step over all `batch` rows,
/// for a cell of `hidden` units and `gates` gates whose steps run the packed kernels where they
/// apply (`packable`: an `f32` cell the packed kernels implement); `None` when no split of at
/// least two parts keeps that.
///
/// A part keeps a row's results when it takes the same path as the whole batch (packed kernels,
/// or a matrix product rather than row-by-row products: see [`PACKED_MAX_ROWS`] and
/// [`SMALL_ROWS`]) and, on the packed kernels, starts at a multiple of their row blocks.
pub(crate) fn row_parts(
    batch: usize,
    parts: usize,
    hidden: usize,
    gates: usize,
    packable: bool,
) -> Option<Vec<std::ops::Range<usize>>> {
    let backend = active_backend();
    let simd = packable && backend != Backend::Scalar;
    let packs = |rows: usize| simd && fuses(rows, hidden, gates);
    let path = |rows: usize| (packs(rows), rows <= SMALL_ROWS);
    // Steps without packed kernels run their products through matrixmultiply, which packs the
    // recurrent kernel into a buffer it allocates on every step; from this size a worker
    // thread's glibc arena hands it back to the system after each step and faults it in again
    // (measured: LSTM with 128 units, 64 rows, 0.78x the split by units).
    const MAX_PACKED_PER_STEP_BYTES: usize = 256 << 10;
    let gemm = !simd && batch > SMALL_ROWS;
    if gemm && hidden * gates * hidden * size_of::<f32>() >= MAX_PACKED_PER_STEP_BYTES {
        return None;
    }
    let unit = if packs(batch) {
        packed::row_unit(lanes(backend), gates)
    } else {
        1
    };
    split_rows(batch, parts, unit, path)
}

/// `f32` lanes of a backend's registers.
fn lanes(backend: Backend) -> usize {
    if backend == Backend::Avx512 { 16 } else { 8 }
}

/// [`row_parts`] for the backward steps of a cell whose recurrent product in backward runs on
/// the packed kernels on SIMD backends (`packable`, see [`ops::RowOps::recurrent_grad`]), in
/// row blocks; otherwise as a matrix product, or row by row for few rows.
pub(crate) fn backward_row_parts(
    batch: usize,
    parts: usize,
    packable: bool,
) -> Option<Vec<std::ops::Range<usize>>> {
    /// Parts of 8 rows of an LSTM of 128 units once ran at 0.87x of one thread, with the
    /// backward kernels of the time; measured again against the split by units that such a
    /// batch otherwise takes (T = 50, B = 16, two threads, training), they now run LSTM of 128
    /// units 1.05-1.10x, GRU 1.08x, SimpleRNN 1.05x, and 512 units 1.00x.
    const MIN_PART_ROWS: usize = 8;
    let parts = parts.min(batch / MIN_PART_ROWS);
    let backend = active_backend();
    if packable && backend != Backend::Scalar {
        let unit = packed::grad_row_block(lanes(backend));
        split_rows(batch, parts, unit, |_| ())
    } else {
        split_rows(batch, parts, 1, |rows| rows <= SMALL_ROWS)
    }
}

/// Up to `parts` contiguous, non-empty row ranges of `0..batch`, split at multiples of `unit`
/// rows, each as long as `path` gives the same answer for its length as for `batch`; the most
/// parts that allow it, or `None` below two.
fn split_rows<P: PartialEq>(
    batch: usize,
    parts: usize,
    unit: usize,
    path: impl Fn(usize) -> P,
) -> Option<Vec<std::ops::Range<usize>>> {
    (2..=parts.min(batch)).rev().find_map(|q| {
        let cut = |k: usize| match k {
            _ if k == q => batch,
            _ => ((batch * k / q + unit / 2) / unit * unit).min(batch),
        };
        let ranges: Vec<_> = (0..q).map(|k| cut(k)..cut(k + 1)).collect();
        ranges
            .iter()
            .all(|r| !r.is_empty() && path(r.len()) == path(batch))
            .then_some(ranges)
    })
}

/// Runs `job` on the packed, register-fused kernels when they apply (an input projection with
/// packed weights; a forward step, GRU reset-after only, where [`fuses`] says so); otherwise
/// hands it back.
#[cfg_attr(not(unoptimized), inline(always))]
fn run_packed<'a, S: simd::SimdF32, I: Dim, H: Dim>(
    s: S,
    job: Job<'a, f32, I, H>,
) -> Option<Job<'a, f32, I, H>> {
    use packed::{Fused, PackedStep};
    let packs =
        |batch: usize, w: &RecurrentWeights<f32, I, H>| fuses(batch, w.hidden.value(), w.gates);
    let (kind, w, st) = match job {
        Job::Project {
            x,
            proj,
            packed: Some(pp),
            ..
        } => {
            s.vectorize(
                #[cfg_attr(not(unoptimized), inline(always))]
                || packed::project(s, pp, x, proj),
            );
            return None;
        }
        Job::LstmFwd(k, w, st) if packs(st.batch, w) => (Fused::Lstm(k), w, st),
        Job::GruFwd(k, w, st) if k.reset_after && packs(st.batch, w) => (Fused::Gru(k), w, st),
        Job::RnnFwd(k, w, st) if packs(st.batch, w) => (Fused::Rnn(k), w, st),
        other => return Some(other),
    };
    let p = w.packed();
    let step = PackedStep::new(st, w.hidden.value(), p.tiles());
    if w.bf16_inference && step.tape.is_empty() {
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || packed::step_fwd(s, kind, p, p.weights_bf16(), step),
        );
    } else {
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || packed::step_fwd(s, kind, p, p.weights(), step),
        );
    }
    None
}

/// `f64` runs the portable operations, compiled for the selected ISA.
pub(crate) fn run_f64<I: Dim, H: Dim>(job: Job<'_, f64, I, H>, backend: Backend) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            let t = simd::Avx512::try_new().expect("dispatch checked availability");
            // SAFETY: the token proves AVX-512F, AVX2 and FMA are present.
            unsafe { isa::run_avx512(t, job, ScalarOps) }
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            let t = simd::Avx2::try_new().expect("dispatch checked availability");
            // SAFETY: the token proves AVX2 and FMA are present.
            unsafe { isa::run_avx2(t, job, ScalarOps) }
        }
        _ => job.run(ScalarOps),
    }
}

/// The `#[target_feature]` wrappers: the only place the ISA is switched on.
#[cfg(target_arch = "x86_64")]
mod isa {
    use super::Job;
    use super::ops::RowOps;
    use super::simd::{Avx2, Avx512};
    use crate::dim::Dim;
    use crate::real::Real;

    /// # Safety
    /// The CPU must support AVX2 and FMA (the token is the proof).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
        _proof: Avx2,
        job: Job<'_, T, I, H>,
        ops: O,
    ) {
        job.run(ops)
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA (the token is the proof).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<T: Real, O: RowOps<T>, I: Dim, H: Dim>(
        _proof: Avx512,
        job: Job<'_, T, I, H>,
        ops: O,
    ) {
        job.run(ops)
    }
}

/// `proj [N, P] = x [N, I] · kernel [I, P] + bias` (`bias` empty: none), `N = x.len() / I`;
/// `packed`: the same kernel and bias for the `f32` projection kernel, which then runs instead
/// of the matrix product on the SIMD backends.
pub(crate) fn project_rows<T: Real, I: Dim>(
    input: I,
    x: &[T],
    kernel: &[T],
    bias: &[T],
    proj: &mut [T],
    p: usize,
    packed: Option<&packed::PackedProjection>,
) {
    dispatch::<T, I, I>(Job::Project {
        input,
        x,
        kernel,
        bias,
        proj,
        p,
        packed,
    });
}

/// [`project_rows`] with the packed kernel in bfloat16 (see [`packed::project_bf16`]) on the
/// AVX-512 backend of a CPU with AVX-512 BF16; `false`, writing nothing, elsewhere (the
/// `f32` kernel is then the faster one: rounding alone saves no arithmetic).
pub(crate) fn project_rows_bf16(
    packed: &packed::PackedProjection,
    x: &[f32],
    proj: &mut [f32],
) -> bool {
    active_backend() == Backend::Avx512 && packed::project_bf16(packed, x, proj)
}

/// `c [m, n] = op(a) · op(b)`, plus the values `c` held with `accumulate` (`c` rows `ldc`
/// apart), on the projection kernel ([`packed::product`]) on the SIMD backends, split by rows
/// across `threads` threads; `false`, writing nothing, on the scalar one, with the `openblas`
/// feature (which asks for the system's OpenBLAS), for an empty product, or when its packed
/// operand cannot be allocated.
///
/// `op(b)` is packed into panels once per call, or once for all the products of a
/// [`share_packing`] scope that read it (`k·n` values, against `m·k·n` multiply-adds, the
/// panels shared among the threads); `a` is read in place, transposed or not. The packing
/// also adds the column sums of `op(b)` to `sums` (empty: none; see [`packed::Panels::pack`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn packed_product(
    a: gemm::Mat<'_, f32>,
    op_a: gemm::Op,
    b: gemm::Mat<'_, f32>,
    op_b: gemm::Op,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
    sums: &mut [f32],
) -> bool {
    if cfg!(feature = "openblas") {
        return false;
    }
    match active_backend() {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            let s = simd::Avx512::try_new().expect("dispatch checked availability");
            product_on(s, a, op_a, b, op_b, accumulate, c, ldc, threads, sums)
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            let s = simd::Avx2::try_new().expect("dispatch checked availability");
            product_on(s, a, op_a, b, op_b, accumulate, c, ldc, threads, sums)
        }
        _ => false,
    }
}

/// [`packed_product`] with the backend's token `s`.
#[allow(clippy::too_many_arguments)]
fn product_on<S: simd::SimdF32>(
    s: S,
    a: gemm::Mat<'_, f32>,
    op_a: gemm::Op,
    b: gemm::Mat<'_, f32>,
    op_b: gemm::Op,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
    sums: &mut [f32],
) -> bool {
    use gemm::{Mat, Op};
    let (m, k) = match op_a {
        Op::N => (a.rows, a.cols),
        Op::T => (a.cols, a.rows),
    };
    let n = if op_b == Op::N { b.cols } else { b.rows };
    if m == 0 || n == 0 {
        return false;
    }
    let parts = threads.clamp(1, m);
    let shape = PackedShape {
        ld: b.ld,
        transposed: op_b == Op::T,
        k,
        n,
    };
    // In a `share_packing` scope for `b`, the first product keeps the column sums apart from
    // the caller's, for the later ones to add to theirs.
    let (mut packed, mut column_sums, fresh) = match take_shared(b.data, shape) {
        Sharing::Packed(packed, column_sums) => (packed, Some(column_sums), false),
        sharing => {
            let column_sums = matches!(sharing, Sharing::Unpacked).then(|| try_filled("b", n, 0.0));
            let layout = packed::Panels::layout(k, n).1;
            let (Ok(column_sums), Ok(packed)) = (
                column_sums.transpose(),
                pool::Scratch::overwritten("b", layout, 0.0),
            ) else {
                return false;
            };
            (packed, column_sums, true)
        }
    };
    let panels = if fresh {
        let into = match &mut column_sums {
            Some(v) => &mut v[..],
            None => &mut *sums,
        };
        packed::Panels::pack(
            &mut packed,
            b.data,
            b.ld,
            shape.transposed,
            k,
            n,
            parts,
            into,
        )
    } else {
        packed::Panels::packed(&packed, k, n)
    };
    if let Some(column_sums) = &column_sums {
        for (s, &v) in sums.iter_mut().zip(column_sums) {
            *s += v;
        }
    }
    // One block of whole rows of `c`: a transposed `a` is read in place, a line per reduction
    // row for a few of its rows; with many output columns to share it, a copy to rows costs
    // less than those reads (`m·k` copies against `m·k·n` multiply-adds). `Xᵀ·D` with X rows
    // 1024 apart and 4096 columns ran at 0.92x matrixmultiply in place, 1.05x copied; with
    // 128 columns the copy cost 40 %.
    let run = |a: Mat<'_, f32>, rows: usize, c: &mut [f32]| {
        let copy = match op_a {
            Op::T if n >= TRANSPOSE_MIN_COLUMNS => pool::Scratch::overwritten("a", rows * k, 0.0)
                .ok()
                .map(|mut t| {
                    transpose(a.data, a.ld, k, rows, &mut t);
                    t
                }),
            _ => None,
        };
        let left = match &copy {
            Some(t) => packed::Left::rows(t, k),
            None => packed::Left {
                data: a.data,
                ld: a.ld,
                transposed: op_a == Op::T,
            },
        };
        s.vectorize(
            #[cfg_attr(not(unoptimized), inline(always))]
            || packed::product(s, left, rows, &panels, accumulate, c, ldc),
        );
    };
    if parts == 1 {
        run(a, m, c);
    } else {
        // Blocks of whole rows, so that each thread's share of `c` is a slice of its own.
        let mut blocks = Vec::with_capacity(parts);
        let mut rest = &mut c[..(m - 1) * ldc + n];
        for i in 0..parts {
            let rows = i * m / parts..(i + 1) * m / parts;
            let len = if i + 1 == parts {
                rest.len()
            } else {
                rows.len() * ldc
            };
            let (block, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            let a_rows = match op_a {
                Op::N => Mat {
                    data: &a.data[rows.start * a.ld..],
                    rows: rows.len(),
                    ..a
                },
                Op::T => Mat {
                    data: &a.data[rows.start..],
                    cols: rows.len(),
                    ..a
                },
            };
            blocks.push((a_rows, rows.len(), block));
        }
        crate::workers::map(blocks, |(a, rows, block)| run(a, rows, block));
    }
    if let Some(column_sums) = column_sums {
        keep_shared(shape, packed, column_sums);
    }
    true
}

/// How a right operand is read for packing: rows `ld` apart, transposed or not, `[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedShape {
    ld: usize,
    transposed: bool,
    k: usize,
    n: usize,
}

/// The operand of a [`share_packing`] scope, by address and byte length, and once a product
/// has packed it: the shape it was read as, its panels and its column sums.
struct SharedOperand {
    at: (usize, usize),
    packed: Option<(PackedShape, pool::Scratch<f32>, Vec<f32>)>,
}

thread_local! {
    /// The innermost [`share_packing`] scope of this thread.
    static SHARED: RefCell<Option<SharedOperand>> = const { RefCell::new(None) };
}

/// Address and byte length of a slice.
fn address<T>(v: &[T]) -> (usize, usize) {
    (v.as_ptr() as usize, std::mem::size_of_val(v))
}

/// Runs `f` with the `f32` products it issues on this thread whose right operand is exactly
/// `b` (the same slice, read as the same shape) sharing one packing of it: the first product
/// packs it and keeps the panels and column sums for the others. BPTT's kernel gradients
/// `H_prevᵀ · dZ` and `Xᵀ · dZ` share `dZ` so. `b` stays borrowed for the whole of `f`, so it
/// cannot change in between.
pub(crate) fn share_packing<T, R>(b: &[T], f: impl FnOnce() -> R) -> R {
    struct Restore(Option<SharedOperand>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            // The scope's panels go back to the pool once the borrow has ended.
            let _ended = SHARED.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
        }
    }
    let scope = SharedOperand {
        at: address(b),
        packed: None,
    };
    let _restore = Restore(SHARED.with(|s| s.borrow_mut().replace(scope)));
    f()
}

/// What the current scope holds for `b` read as `shape`.
enum Sharing {
    /// `b` is not the scope's operand, or was packed as another shape.
    Unshared,
    /// `b` is the scope's operand, not packed yet.
    Unpacked,
    /// Its panels and column sums, taken out until [`keep_shared`] puts them back.
    Packed(pool::Scratch<f32>, Vec<f32>),
}

/// See [`Sharing`].
fn take_shared(b: &[f32], shape: PackedShape) -> Sharing {
    SHARED.with(|s| match &mut *s.borrow_mut() {
        Some(scope) if scope.at == address(b) => match scope.packed.take() {
            None => Sharing::Unpacked,
            Some((packed_as, packed, sums)) if packed_as == shape => Sharing::Packed(packed, sums),
            other => {
                scope.packed = other;
                Sharing::Unshared
            }
        },
        _ => Sharing::Unshared,
    })
}

/// Keeps the panels and column sums of the current scope's operand for its later products.
fn keep_shared(shape: PackedShape, packed: pool::Scratch<f32>, column_sums: Vec<f32>) {
    SHARED.with(|s| {
        if let Some(scope) = &mut *s.borrow_mut() {
            scope.packed = Some((shape, packed, column_sums));
        }
    });
}

/// Output columns from which [`packed_product`] copies a transposed left operand to rows.
const TRANSPOSE_MIN_COLUMNS: usize = 1024;

/// `dst [cols, rows] = src [rows, cols]ᵀ`, `src` rows `ld` apart, in square tiles whose rows
/// of `src` and of `dst` stay in L1 while it moves.
fn transpose(src: &[f32], ld: usize, rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..(r0 + TILE).min(rows) {
                for (c, &v) in (c0..c1).zip(&src[r * ld + c0..r * ld + c1]) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// `dh[b, u] += d[b, :] · recurrent_kernel[u, :]ᵀ` for every row `b < batch` and state unit
/// `u` in `units` (a [`part_units`] range): the recurrent half of a backward step split by
/// hidden units, `d [B, G·H]` the gradients of the recurrent terms, `dh [B, H]`, `step` the
/// backward step's [`StepBackward::step`].
pub(crate) fn recurrent_grad_units<T: Real, I: Dim, H: Dim>(
    w: &RecurrentWeights<T, I, H>,
    batch: usize,
    d: &[T],
    dh: &mut [T],
    units: std::ops::Range<usize>,
    step: usize,
) {
    dispatch(Job::RecurrentGrad {
        w,
        batch,
        d,
        dh,
        units,
        step,
    });
}

/// Backward of [`project_rows`]: `dx += d_proj · kernelᵀ`, `d_kernel += xᵀ · d_proj`,
/// `d_bias += Σ_rows d_proj` (skipped when `d_bias` is empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_rows_backward<T: Real, I: Dim>(
    input: I,
    x: &[T],
    kernel: &[T],
    d_proj: &[T],
    p: usize,
    dx: &mut [T],
    d_kernel: &mut [T],
    d_bias: &mut [T],
) {
    // All T·B rows at once: the matrix-product path, which needs no ISA dispatch.
    let i = input.value();
    let rows = x.len() / i;
    // With a matrix product for the kernel gradient, the bias gradient comes from the pass
    // that packs `d_proj` for it.
    let fused = rows > SMALL_ROWS && !d_kernel.is_empty();
    let dw: &mut [T] = if fused { &mut [] } else { &mut *d_kernel };
    step::product_rows_backward(
        ScalarOps, input, rows, x, i, kernel, p, 0, d_proj, p, p, dx, dw,
    );
    if !fused {
        sum_rows_into(d_bias, d_proj, p);
        return;
    }
    gemm::gemm_summing(
        gemm::Mat {
            data: x,
            rows,
            cols: i,
            ld: i,
        },
        gemm::Op::T,
        gemm::Mat {
            data: d_proj,
            rows,
            cols: p,
            ld: p,
        },
        gemm::Op::N,
        d_kernel,
        i,
        p,
        p,
        d_bias,
    );
}

/// Asks the caches for every line of `v` ahead of a pass that reads it.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn prefetch_lines<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for k in (0..std::mem::size_of_val(v)).step_by(64) {
        // SAFETY: a prefetch reads nothing architecturally and never faults; SSE is part of
        // the x86_64 baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                v.as_ptr().cast::<i8>().wrapping_add(k),
            )
        };
    }
}

/// `acc[j] += Σ_r d[r·ld + j]` (no-op when `acc` is empty).
pub(crate) fn sum_rows_into<T: Real>(acc: &mut [T], d: &[T], ld: usize) {
    if acc.is_empty() {
        return;
    }
    for row in d.chunks(ld) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Fills `out` with `bias`, or zeros when `bias` is empty.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn init_with_bias<T: Real>(out: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        out.fill(T::ZERO);
    } else {
        out.copy_from_slice(&bias[..out.len()]);
    }
}
