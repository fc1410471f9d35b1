//! The GPU backend (feature `cuda`): the built-in cells forward and backward through time on
//! NVIDIA GPUs, with the same shapes, layouts, tape and results as the CPU engine in
//! [`crate::seq`].
//!
//! # What runs where
//! - The input projection of the whole sequence (`x·kernel + bias` over all `T·B` rows), the
//!   input gradient and the weight gradients are single matrix products on the device.
//! - The recurrence takes one of two paths ([`CudaPath`]):
//!   - **persistent** (batches of up to 16 whose recurrent weights fit in the shared memory of
//!     one block per multiprocessor): one cooperative launch per sequence; each block keeps its
//!     hidden units' share of `recurrent_kernel` on chip for every step and the blocks meet at
//!     a grid-wide barrier once per step (twice for GRU reset-before). Forward and backward.
//!   - **standard**: per step a matrix product `h·recurrent_kernel` and one fused element-wise
//!     kernel for the gate maths (two of each for GRU reset-before).
//! - The kernels are CUDA C++ in `kernels/`, compiled to PTX (ISA 8.4, `compute_80`) by
//!   `kernels/build_ptx.py` and embedded in the library; each module is loaded once per device
//!   through the driver API. Running needs only the NVIDIA driver (release 550 or newer) and a
//!   GPU of compute capability 8.0 or newer; building needs nothing from CUDA.
//! - All work of a call is enqueued on the stream the caller passes; the functions return once
//!   it is enqueued ([`host`] functions wait for it).
//!
//! # No GPU
//! Every entry point first checks that the driver library can be loaded and returns
//! [`Error::Device`] if not (or if the device is missing or too old), never panicking.
//!
//! # Example
//! ```no_run
//! use fused_rnn::cuda::{self, CudaDevice, DeviceCell};
//! use fused_rnn::prelude::*;
//!
//! let device = CudaDevice::new(0)?; // Err(Error::Device { .. }) without a GPU
//! let stream = device.default_stream();
//! let cell = DynLstm::<f32>::random(Dyn(16), Dyn(32), LstmKind::default(), true, 1)?;
//! let gpu_cell = DeviceCell::new(&device, &stream, &cell)?;
//! let spec = SeqSpec::new(10, 2);
//! let x = vec![0.5f32; 10 * 2 * 16];
//! let out = cuda::host::forward(&gpu_cell, &stream, &spec, &x, None)?;
//! assert_eq!(out.y.len(), 10 * 2 * 32);
//! # Ok::<(), fused_rnn::Error>(())
//! ```

pub mod host;
mod launch;
mod module;
mod params;
mod run;

use std::any::Any;
use std::sync::Arc;

pub use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::driver::{DeviceRepr, DriverError, ValidAsZeroBits};
pub use run::{DeviceGradients, DeviceOutput, bptt, bptt_into, forward, forward_train, tape_len};

use crate::activation::Activation;
use crate::cell::{CellKind, GruKind, LstmKind, Recurrent, SimpleRnnKind};
use crate::dim::Dim;
use crate::error::{Error, Result};
use crate::real::Real;
use module::DeviceState;

/// The element types the GPU kernels exist for: `f32` and `f64`.
pub trait CudaReal: Real + DeviceRepr + ValidAsZeroBits + private::Sealed {
    /// The suffix of the kernels' names for this type (`_f32`, `_f64`).
    const SUFFIX: &'static str;
}

impl CudaReal for f32 {
    const SUFFIX: &'static str = "_f32";
}
impl CudaReal for f64 {
    const SUFFIX: &'static str = "_f64";
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Converts a driver error into the crate's error, saying what was being done.
pub(crate) fn driver_error(what: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Device {
        reason: format!("{what}: {e}"),
    }
}

/// Whether the NVIDIA driver library (`libcuda.so`) can be loaded on this machine. Says nothing
/// about whether a GPU is present; [`device_count`] does.
pub fn driver_available() -> bool {
    // SAFETY: tries to open the driver library by its usual names and closes it again; no
    // symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn check_driver() -> Result<()> {
    if driver_available() {
        Ok(())
    } else {
        Err(Error::Device {
            reason: "the NVIDIA driver library (libcuda.so) cannot be loaded: no GPU driver on \
                     this machine"
                .into(),
        })
    }
}

/// Number of CUDA devices; [`Error::Device`] when the driver is missing or fails.
pub fn device_count() -> Result<usize> {
    check_driver()?;
    let n =
        cudarc::driver::CudaContext::device_count().map_err(driver_error("counting devices"))?;
    Ok(n.max(0) as usize)
}

/// Oldest compute capability the embedded PTX (`.target sm_80`) runs on.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// One GPU: its context, with the library's kernels loaded on first use (once per process).
#[derive(Debug, Clone)]
pub struct CudaDevice {
    state: Arc<DeviceState>,
}

impl CudaDevice {
    /// The device with this ordinal. [`Error::Device`] without a driver, without that device,
    /// or for a device older than [`MIN_COMPUTE_CAPABILITY`].
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Device {
                reason: format!("device {ordinal} requested, {count} present"),
            });
        }
        let state = DeviceState::get(ordinal)?;
        let cc = state
            .ctx
            .compute_capability()
            .map_err(driver_error("reading the compute capability"))?;
        if cc < MIN_COMPUTE_CAPABILITY {
            return Err(Error::Device {
                reason: format!(
                    "device {ordinal} has compute capability {}.{}, the kernels need {}.{}",
                    cc.0, cc.1, MIN_COMPUTE_CAPABILITY.0, MIN_COMPUTE_CAPABILITY.1
                ),
            });
        }
        Ok(Self { state })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.state.ctx.ordinal()
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> Result<String> {
        self.state
            .ctx
            .name()
            .map_err(driver_error("reading the device name"))
    }

    /// The context's default stream.
    pub fn default_stream(&self) -> Arc<CudaStream> {
        self.state.ctx.default_stream()
    }

    /// A new stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.state
            .ctx
            .new_stream()
            .map_err(driver_error("creating a stream"))
    }

    /// Checks that `stream` belongs to this device's context.
    fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if Arc::ptr_eq(stream.context(), &self.state.ctx) {
            Ok(())
        } else {
            Err(Error::Invalid {
                arg: "stream",
                reason: format!(
                    "belongs to device {}, the cell lives on device {}",
                    stream.context().ordinal(),
                    self.ordinal()
                ),
            })
        }
    }
}

/// Which recurrence kernels a [`DeviceCell`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaPath {
    /// Persistent where it applies (batch up to 16, weights fit on chip), standard otherwise.
    #[default]
    Auto,
    /// Always the persistent kernels; [`Error::Invalid`] where they do not apply.
    Persistent,
    /// Always a matrix product and a fused element-wise kernel per step.
    Standard,
}

/// The cell types the GPU kernels implement, with their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CellDesc {
    SimpleRnn(SimpleRnnKind),
    Lstm(LstmKind),
    Gru(GruKind),
}

impl CellDesc {
    fn of<K: CellKind>(kind: &K) -> Result<Self> {
        let any = kind as &dyn Any;
        if let Some(k) = any.downcast_ref::<LstmKind>() {
            Ok(CellDesc::Lstm(*k))
        } else if let Some(k) = any.downcast_ref::<GruKind>() {
            Ok(CellDesc::Gru(*k))
        } else if let Some(k) = any.downcast_ref::<SimpleRnnKind>() {
            Ok(CellDesc::SimpleRnn(*k))
        } else {
            Err(Error::Invalid {
                arg: "cell",
                reason: format!("no GPU kernels for cell kind {kind:?}"),
            })
        }
    }

    pub(crate) fn gates(self) -> usize {
        match self {
            CellDesc::SimpleRnn(_) => 1,
            CellDesc::Lstm(_) => 4,
            CellDesc::Gru(_) => 3,
        }
    }

    pub(crate) fn states(self) -> usize {
        match self {
            CellDesc::Lstm(_) => 2,
            _ => 1,
        }
    }

    /// Per-row training record width, as the CPU cells define it.
    pub(crate) fn tape_width(self, h: usize) -> usize {
        match self {
            CellDesc::SimpleRnn(_) => 0,
            CellDesc::Lstm(_) => 5 * h,
            CellDesc::Gru(k) => k.tape_width_rows(h),
        }
    }

    /// Kernel name prefix (`rnn`, `lstm`, `gru`).
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            CellDesc::SimpleRnn(_) => "rnn",
            CellDesc::Lstm(_) => "lstm",
            CellDesc::Gru(_) => "gru",
        }
    }

    /// (activation, recurrent_activation) codes of the kernels (`ACT_*` in kernels/rnn.cuh).
    pub(crate) fn activation_codes(self) -> (i32, i32) {
        match self {
            CellDesc::SimpleRnn(k) => (act_code(k.activation), act_code(k.activation)),
            CellDesc::Lstm(k) => (act_code(k.activation), act_code(k.recurrent_activation)),
            CellDesc::Gru(k) => (act_code(k.activation), act_code(k.recurrent_activation)),
        }
    }

    /// Whether this is a GRU with the reset gate before the recurrent product.
    pub(crate) fn reset_before(self) -> bool {
        matches!(self, CellDesc::Gru(k) if !k.reset_after)
    }
}

/// The kernels' code for an activation (`ACT_*` in kernels/rnn.cuh).
pub(crate) fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Tanh => 0,
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Linear => 3,
        Activation::HardSigmoid => 4,
    }
}

/// A built-in cell's weights on a device, in the internal layout (`kernel [I, G·H]`,
/// `recurrent_kernel [H, G·H]`, `bias`, `recurrent_bias` `[G·H]`, row-major), ready for
/// [`forward`], [`forward_train`] and [`bptt`]. The persistent kernels stage their share of
/// `recurrent_kernel` into shared memory at the start of each sequence.
#[derive(Debug)]
pub struct DeviceCell<T: CudaReal> {
    device: CudaDevice,
    desc: CellDesc,
    input: usize,
    hidden: usize,
    kernel: CudaSlice<T>,
    recurrent_kernel: CudaSlice<T>,
    biases: Option<(CudaSlice<T>, CudaSlice<T>)>,
    path: CudaPath,
}

impl<T: CudaReal> DeviceCell<T> {
    /// Copies the weights of `cell` (an LSTM, GRU or SimpleRNN) to `device`, enqueued on
    /// `stream`.
    pub fn new<K: CellKind, I: Dim, H: Dim>(
        device: &CudaDevice,
        stream: &Arc<CudaStream>,
        cell: &Recurrent<T, K, I, H>,
    ) -> Result<Self> {
        device.check_stream(stream)?;
        let desc = CellDesc::of(cell.kind())?;
        let w = cell.weights();
        let up = |v: &[T]| {
            stream
                .clone_htod(v)
                .map_err(driver_error("copying weights"))
        };
        let biases = match (w.bias(), w.recurrent_bias()) {
            (Some(b), Some(rb)) => Some((up(b)?, up(rb)?)),
            _ => None,
        };
        Ok(Self {
            device: device.clone(),
            desc,
            input: w.input_size(),
            hidden: w.hidden_size(),
            kernel: up(w.kernel())?,
            recurrent_kernel: up(w.recurrent_kernel())?,
            biases,
            path: CudaPath::Auto,
        })
    }

    /// Input width `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }
    /// Hidden width `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
    /// State tensors `S` (2 for LSTM, else 1).
    pub fn state_count(&self) -> usize {
        self.desc.states()
    }
    /// Per-row training-record width (as [`crate::Cell::tape_width`]).
    pub fn tape_width(&self) -> usize {
        self.desc.tape_width(self.hidden)
    }
    /// The device the weights live on.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }
    /// Selects the recurrence kernels (default [`CudaPath::Auto`]).
    pub fn set_path(&mut self, path: CudaPath) {
        self.path = path;
    }
    /// The selected recurrence kernels.
    pub fn path(&self) -> CudaPath {
        self.path
    }
    /// The recurrence kernels a run over `batch` rows uses on this device, forward and
    /// backward: [`CudaPath::Persistent`] or [`CudaPath::Standard`] ([`Error::Invalid`] when
    /// the path is forced to persistent and does not apply).
    pub fn paths(&self, batch: usize) -> Result<(CudaPath, CudaPath)> {
        let (g, h) = (self.desc.gates(), self.hidden);
        let pick = |pass| {
            run::resolve_plan::<T>(&self.device.state, self.path, pass, g, batch, h).map(|p| {
                if p.is_some() {
                    CudaPath::Persistent
                } else {
                    CudaPath::Standard
                }
            })
        };
        Ok((pick(launch::Pass::Forward)?, pick(launch::Pass::Backward)?))
    }
    /// The parameter tensors in the order of [`crate::Cell::params`]: `kernel`,
    /// `recurrent_kernel`, then `bias` and `recurrent_bias` when the cell has biases.
    pub fn params(&self) -> Vec<&CudaSlice<T>> {
        let mut p = vec![&self.kernel, &self.recurrent_kernel];
        if let Some((b, rb)) = &self.biases {
            p.push(b);
            p.push(rb);
        }
        p
    }
    /// The parameters copied back to the host, same order as [`DeviceCell::params`].
    pub fn params_to_host(&self, stream: &Arc<CudaStream>) -> Result<Vec<Vec<T>>> {
        self.device.check_stream(stream)?;
        let out = self
            .params()
            .into_iter()
            .map(|p| {
                stream
                    .clone_dtoh(p)
                    .map_err(driver_error("copying weights back"))
            })
            .collect::<Result<Vec<_>>>()?;
        stream
            .synchronize()
            .map_err(driver_error("waiting for the stream"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[test]
    fn activation_codes_match_the_header() {
        let header = include_str!("../../kernels/rnn.cuh");
        for a in Activation::ALL {
            let define = format!("#define ACT_{} {}", a.name().to_uppercase(), act_code(a));
            assert!(header.contains(&define), "missing `{define}`");
        }
    }

    #[test]
    fn descriptions_match_the_cpu_cells() {
        let lstm = DynLstm::<f32>::random(Dyn(3), Dyn(5), LstmKind::default(), true, 1).unwrap();
        let gru_b = DynGru::<f64>::random(
            Dyn(3),
            Dyn(5),
            GruKind {
                reset_after: false,
                ..GruKind::default()
            },
            false,
            1,
        )
        .unwrap();
        let rnn =
            DynSimpleRnn::<f32>::random(Dyn(2), Dyn(7), SimpleRnnKind::default(), true, 1).unwrap();
        let d = CellDesc::of(lstm.kind()).unwrap();
        assert_eq!(
            (d.gates(), d.states(), d.tape_width(5)),
            (4, 2, lstm.tape_width())
        );
        assert_eq!(d.prefix(), "lstm");
        let d = CellDesc::of(gru_b.kind()).unwrap();
        assert_eq!(
            (d.gates(), d.states(), d.tape_width(5)),
            (3, 1, gru_b.tape_width())
        );
        assert!(d.reset_before());
        let d = CellDesc::of(rnn.kind()).unwrap();
        assert_eq!(
            (d.gates(), d.states(), d.tape_width(7)),
            (1, 1, rnn.tape_width())
        );
        assert_eq!(d.activation_codes(), (0, 0));
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        // On a machine with a GPU this checks nothing; without one it is the contract.
        if driver_available() {
            eprintln!("driver present: the no-driver path is not exercised here");
            return;
        }
        assert!(matches!(device_count(), Err(Error::Device { .. })));
        let err = CudaDevice::new(0).unwrap_err();
        assert!(err.to_string().contains("libcuda"), "{err}");
    }
}
