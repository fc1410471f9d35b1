//! Forward, training forward and BPTT on the device, over device buffers; the same shapes,
//! layouts and training record as [`crate::seq`] (see its module docs).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream};

use super::launch::{
    self, Dev, Pass, Permutation, PersistentPlan, Raw, RnnExtent, RnnLens, to_i32,
};
use super::module::{DeviceState, Module};
use super::params::{GemmParams, RnnParams};
use super::{CellDesc, CudaPath, CudaReal, DeviceCell, driver_error};
use crate::error::{Error, Result, check_len, check_nonzero, checked_size};
use crate::seq::{GradMode, Layout, SeqSpec};

/// The result of a device forward run (shapes as [`crate::seq::Output`]).
#[derive(Debug)]
pub struct DeviceOutput<T> {
    /// `[T, B, H]` / `[B, T, H]` in processing order, or `[B, H]` without `return_sequences`.
    pub y: CudaSlice<T>,
    /// The state after the last step, `[S, B, H]`.
    pub final_state: CudaSlice<T>,
}

/// Gradients on the device (shapes as [`crate::seq::Gradients`]).
#[derive(Debug)]
pub struct DeviceGradients<T> {
    /// `∂L/∂x`, shaped like `x`.
    pub dx: CudaSlice<T>,
    /// `∂L/∂initial_state`, `[S, B, H]`.
    pub d_initial_state: CudaSlice<T>,
    /// `∂L/∂θ` for every tensor of [`DeviceCell::params`], same order and lengths.
    pub params: Vec<CudaSlice<T>>,
}

impl<T: CudaReal> DeviceGradients<T> {
    /// Zero gradients for `cell` over `spec`, allocated on `stream`.
    pub fn zeros(cell: &DeviceCell<T>, stream: &Arc<CudaStream>, spec: &SeqSpec) -> Result<Self> {
        cell.device.check_stream(stream)?;
        let s = Sizes::new(cell, spec)?;
        let z = |n: usize| {
            stream
                .alloc_zeros::<T>(n)
                .map_err(driver_error("allocating"))
        };
        Ok(Self {
            dx: z(s.x_len)?,
            d_initial_state: z(s.state_len)?,
            params: cell
                .params()
                .iter()
                .map(|p| z(p.len()))
                .collect::<Result<_>>()?,
        })
    }
}

/// Every size of a run, checked once (as the CPU engine's `Dims`), plus the 32-bit limits of
/// the kernels' indices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) t: usize,
    pub(crate) b: usize,
    pub(crate) i: usize,
    pub(crate) h: usize,
    pub(crate) g: usize,
    pub(crate) s: usize,
    /// `G·H`.
    pub(crate) p: usize,
    /// Record width per row.
    pub(crate) tw: usize,
    /// One state snapshot `S·B·H`.
    pub(crate) state_len: usize,
    pub(crate) x_len: usize,
    pub(crate) y_len: usize,
    /// `(T + 1)·S·B·H + T·B·tw`.
    pub(crate) tape_len: usize,
}

impl Sizes {
    pub(crate) fn new<T: CudaReal>(cell: &DeviceCell<T>, spec: &SeqSpec) -> Result<Self> {
        Self::of(cell.desc, cell.input, cell.hidden, spec)
    }

    pub(crate) fn of(desc: CellDesc, i: usize, h: usize, spec: &SeqSpec) -> Result<Self> {
        let (t, b) = (spec.time_steps, spec.batch);
        check_nonzero("time_steps", t)?;
        check_nonzero("batch", b)?;
        check_nonzero("threads", spec.threads)?;
        let (g, s) = (desc.gates(), desc.states());
        let p = checked_size("hidden_size", &[g, h])?;
        let tw = desc.tape_width(h);
        let rows = checked_size("x", &[t, b])?;
        // Row counts, widths and per-step extents are 32-bit in the kernels.
        to_i32("time_steps * batch", rows)?;
        to_i32("gates * hidden_size", p)?;
        to_i32("input_size", i)?;
        to_i32("tape width", tw.max(1))?;
        checked_size("tape", &[rows, p.max(i).max(tw)])?;
        let state_len = checked_size("initial_state", &[s, b, h])?;
        let y_len = if spec.return_sequences {
            checked_size("y", &[t, b, h])?
        } else {
            checked_size("y", &[b, h])?
        };
        let states = checked_size("tape", &[t + 1, state_len])?;
        let records = checked_size("tape", &[rows, tw])?;
        Ok(Self {
            t,
            b,
            i,
            h,
            g,
            s,
            p,
            tw,
            state_len,
            x_len: checked_size("x", &[rows, i])?,
            y_len,
            tape_len: states
                .checked_add(records)
                .ok_or(Error::Overflow { arg: "tape" })?,
        })
    }

    fn rows(&self) -> usize {
        self.t * self.b
    }
}

/// Length of the training record [`forward_train`] writes: the same as
/// [`crate::seq::tape_len`] for the CPU cell, and laid out the same way.
pub fn tape_len<T: CudaReal>(cell: &DeviceCell<T>, spec: &SeqSpec) -> Result<usize> {
    Ok(Sizes::new(cell, spec)?.tape_len)
}

/// Runs `cell` over `x` (`[T, B, I]` / `[B, T, I]` per `spec.layout`) from `initial_state`
/// (`[S, B, H]`, zeros when `None`), for inference; enqueued on `stream`. `spec.threads` is
/// ignored on the device.
pub fn forward<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &CudaSlice<T>,
    initial_state: Option<&CudaSlice<T>>,
) -> Result<DeviceOutput<T>> {
    run_forward(cell, stream, spec, x, initial_state, None)
}

/// Like [`forward`], and records what [`bptt`] needs into `tape` (at least [`tape_len`]
/// elements; only that prefix is written), in the CPU engine's layout: a record written here
/// can be copied to the host and used by [`crate::seq::bptt`], and the other way round.
pub fn forward_train<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &CudaSlice<T>,
    initial_state: Option<&CudaSlice<T>>,
    tape: &mut CudaSlice<T>,
) -> Result<DeviceOutput<T>> {
    run_forward(cell, stream, spec, x, initial_state, Some(tape))
}

/// Allocates `n` zeroed elements on `stream` (at least one, so that every buffer has an
/// address).
fn zeros<T: CudaReal>(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>> {
    stream
        .alloc_zeros::<T>(n.max(1))
        .map_err(driver_error("allocating device memory"))
}

/// The kernels one run uses, looked up once.
struct Kernels {
    gemm: CudaFunction,
    permute: CudaFunction,
    gather: CudaFunction,
    sum_rows: CudaFunction,
}

impl Kernels {
    fn new<T: CudaReal>(dev: &DeviceState) -> Result<Self> {
        let f = |base: &str| dev.function(Module::Gemm, &format!("{base}{}", T::SUFFIX));
        Ok(Self {
            gemm: f("gemm")?,
            permute: f("permute_rows")?,
            gather: f("gather_blocks")?,
            sum_rows: f("sum_rows")?,
        })
    }
}

/// The device-side helpers of one run.
struct Run<'a, T: CudaReal> {
    stream: &'a Arc<CudaStream>,
    dev: &'a DeviceState,
    desc: CellDesc,
    sz: Sizes,
    k: Kernels,
    marker: std::marker::PhantomData<T>,
}

impl<'a, T: CudaReal> Run<'a, T> {
    fn cell_kernel(&self, module: Module, pass_name: &str) -> Result<CudaFunction> {
        let name = format!("{}_{pass_name}{}", self.desc.prefix(), T::SUFFIX);
        self.dev.function(module, &name)
    }

    /// `c = alpha·op(a)·op(b) + beta·c` over row-major `[m, k]`·`[k, n]` (before transposition).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        (a, lda, trans_a): (Raw<T>, usize, bool),
        (b, ldb, trans_b): (Raw<T>, usize, bool),
        (c, ldc): (Raw<T>, usize),
        beta: f64,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let p = GemmParams {
            m: to_i32("m", m)?,
            n: to_i32("n", n)?,
            k: to_i32("k", k)?,
            lda: to_i32("lda", lda)?,
            ldb: to_i32("ldb", ldb)?,
            ldc: to_i32("ldc", ldc)?,
            trans_a: trans_a as i32,
            trans_b: trans_b as i32,
            alpha: 1.0,
            beta,
            a: a.ptr,
            b: b.ptr,
            c: c.ptr,
        };
        launch::launch_gemm(self.stream, &self.k.gemm, &p, a, b, c)
    }

    /// `dst[..len] = src[..len]`.
    fn copy(&self, src: Raw<T>, dst: Raw<T>, len: usize) -> Result<()> {
        launch::launch_gather_blocks(self.stream, &self.k.gather, 1, len, 0, src, dst)
    }

    /// Zeroes `dst[..len]`.
    fn zero(&self, dst: Raw<T>, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if dst.ptr == 0 || dst.len < len {
            return Err(launch::internal(format!("zeroing {len} of {}", dst.len)));
        }
        // SAFETY: `dst` addresses at least `len` elements of T (checked above) that this run
        // holds a write guard for; the memset is enqueued on the run's stream, ordered with
        // every other access of the run.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                dst.ptr,
                0,
                len * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(driver_error("zeroing device memory"))
    }

    fn permute(&self, perm: Permutation, src: Raw<T>, dst: Raw<T>) -> Result<()> {
        launch::launch_permute_rows(self.stream, &self.k.permute, perm, src, dst)
    }

    fn extent(&self) -> RnnExtent {
        RnnExtent {
            gates: self.sz.g,
            states: self.sz.s,
        }
    }

    /// The persistent plan for `pass`, if the cell's path allows and the shapes fit.
    fn plan(&self, path: CudaPath, pass: Pass) -> Result<Option<PersistentPlan>> {
        resolve_plan::<T>(self.dev, path, pass, self.sz.g, self.sz.b, self.sz.h)
    }
}

/// The persistent plan for `pass` over `b` rows of a cell with `g` gates and `h` units, if
/// `path` allows it and the shapes fit the device; an error when `path` demands it and it
/// does not apply.
pub(crate) fn resolve_plan<T: CudaReal>(
    dev: &DeviceState,
    path: CudaPath,
    pass: Pass,
    g: usize,
    b: usize,
    h: usize,
) -> Result<Option<PersistentPlan>> {
    {
        let plan = if dev.cooperative {
            launch::persistent_plan(
                pass,
                g,
                b,
                h,
                std::mem::size_of::<T>(),
                dev.sm_count,
                dev.max_smem_optin,
            )
        } else {
            None
        };
        match path {
            CudaPath::Auto => Ok(plan),
            CudaPath::Standard => Ok(None),
            CudaPath::Persistent => plan.map(Some).ok_or_else(|| Error::Invalid {
                arg: "path",
                reason: format!(
                    "the persistent kernels do not apply to batch {b} and hidden size {h} on \
                     this device (batch at most {}, weights within one block's shared memory \
                     per multiprocessor, cooperative launch)",
                    launch::PERSISTENT_MAX_BATCH
                ),
            }),
        }
    }
}

/// The base [`RnnParams`] of a run (pointers filled by the caller).
fn base_params(desc: CellDesc, sz: &Sizes) -> Result<RnnParams> {
    let (act, ract) = desc.activation_codes();
    Ok(RnnParams {
        batch: to_i32("batch", sz.b)?,
        hidden: to_i32("hidden_size", sz.h)?,
        time_steps: to_i32("time_steps", sz.t)?,
        step: 0,
        activation: act,
        recurrent_activation: ract,
        reset_after: match desc {
            CellDesc::Gru(k) => k.reset_after as i32,
            _ => 0,
        },
        state_slots: 1,
        tape_width: to_i32("tape width", sz.tw)?,
        ..Default::default()
    })
}

/// Makes the stream's context current on this thread: the raw driver calls of a run (memsets,
/// function attributes, occupancy) act on the current context.
fn bind(stream: &CudaStream) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(driver_error("making the context current"))
}

fn needs_permute(spec: &SeqSpec) -> bool {
    spec.layout == Layout::BatchMajor || spec.go_backwards
}

fn run_forward<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &CudaSlice<T>,
    initial_state: Option<&CudaSlice<T>>,
    tape: Option<&mut CudaSlice<T>>,
) -> Result<DeviceOutput<T>> {
    cell.device.check_stream(stream)?;
    bind(stream)?;
    let sz = Sizes::new(cell, spec)?;
    check_len("x", x.len(), sz.x_len)?;
    if let Some(s) = initial_state {
        check_len("initial_state", s.len(), sz.state_len)?;
    }
    if let Some(t) = &tape
        && t.len() < sz.tape_len
    {
        return Err(Error::Length {
            arg: "tape",
            expected: sz.tape_len,
            actual: t.len(),
        });
    }
    let dev = &*cell.device.state;
    let run = Run::<T> {
        stream,
        dev,
        desc: cell.desc,
        sz,
        k: Kernels::new::<T>(dev)?,
        marker: std::marker::PhantomData,
    };
    let training = tape.is_some();
    let slots = if training || spec.return_sequences {
        sz.t + 1
    } else {
        2
    };
    let (rows, p, h, bh) = (sz.rows(), sz.p, sz.h, sz.b * sz.h);
    let plan = run.plan(cell.path, Pass::Forward)?;

    // Outputs and temporaries, allocated before any borrow of them for the kernels.
    let mut y = zeros::<T>(stream, sz.y_len)?;
    let mut final_state = zeros::<T>(stream, sz.state_len)?;
    let mut xs_buf = zeros::<T>(stream, if needs_permute(spec) { sz.x_len } else { 0 })?;
    let mut proj = zeros::<T>(stream, rows * p)?;
    let mut own_states = zeros::<T>(stream, if training { 0 } else { slots * sz.state_len })?;
    let mut rec = zeros::<T>(stream, if plan.is_some() { 0 } else { sz.b * p })?;
    let mut aux = zeros::<T>(stream, if cell.desc.reset_before() { bh } else { 0 })?;
    let mut y_proc = zeros::<T>(
        stream,
        if spec.return_sequences && spec.layout == Layout::BatchMajor {
            sz.y_len
        } else {
            0
        },
    )?;
    let mut barrier = stream
        .alloc_zeros::<u32>(2)
        .map_err(driver_error("allocating"))?;
    {
        let x_dev = Dev::read(x, stream);
        let init_dev = initial_state.map(|s| Dev::read(s, stream));
        let w = Dev::read(&cell.kernel, stream);
        let rk = Dev::read(&cell.recurrent_kernel, stream);
        let biases = cell
            .biases
            .as_ref()
            .map(|(b, rb)| (Dev::read(b, stream), Dev::read(rb, stream)));
        let tape_dev = tape.map(|t| Dev::write(t, stream));
        let y_dev = Dev::write(&mut y, stream);
        let fs_dev = Dev::write(&mut final_state, stream);
        let xs_dev = Dev::write(&mut xs_buf, stream);
        let proj_dev = Dev::write(&mut proj, stream);
        let own_states_dev = Dev::write(&mut own_states, stream);
        let rec_dev = Dev::write(&mut rec, stream);
        let aux_dev = Dev::write(&mut aux, stream);
        let y_proc_dev = Dev::write(&mut y_proc, stream);
        let barrier_dev = Dev::write(&mut barrier, stream);

        // 1. Inputs in processing order (time-major, direction applied).
        let xs = if needs_permute(spec) {
            let perm = Permutation {
                time_steps: sz.t,
                batch: sz.b,
                width: sz.i,
                batch_major: spec.layout == Layout::BatchMajor,
                go_backwards: spec.go_backwards,
                to_caller: false,
            };
            run.permute(perm, x_dev.raw(), xs_dev.raw())?;
            xs_dev.raw()
        } else {
            x_dev.raw()
        };
        // 2. The input projection of every row: proj = bias (broadcast) + xs·kernel.
        let beta = match &biases {
            Some((b, _)) => {
                launch::launch_gather_blocks(
                    stream,
                    &run.k.gather,
                    rows,
                    p,
                    0,
                    b.raw(),
                    proj_dev.raw(),
                )?;
                1.0
            }
            None => 0.0,
        };
        run.gemm(
            (rows, p, sz.i),
            (xs, sz.i, false),
            (w.raw(), p, false),
            (proj_dev.raw(), p),
            beta,
        )?;
        // 3. States: every snapshot into the record (training), else own slots.
        let (states, cell_tape) = match &tape_dev {
            Some(t) => {
                let all = t.raw();
                (all, all.offset((sz.t + 1) * sz.state_len)?)
            }
            None => (own_states_dev.raw(), Raw::NONE),
        };
        match &init_dev {
            Some(s) => run.copy(s.raw(), states, sz.state_len)?,
            None => run.zero(states, sz.state_len)?,
        }
        let mut params = base_params(cell.desc, &sz)?;
        params.state_slots = to_i32("time_steps", slots)?;
        params.proj = proj_dev.raw().ptr;
        params.recurrent_kernel = rk.raw().ptr;
        params.recurrent_bias = biases.as_ref().map_or(0, |(_, rb)| rb.raw().ptr);
        params.states = states.ptr;
        params.tape = if training { cell_tape.ptr } else { 0 };
        params.aux = if cell.desc.reset_before() {
            aux_dev.raw().ptr
        } else {
            0
        };
        params.rec = if plan.is_none() { rec_dev.raw().ptr } else { 0 };
        let lens = RnnLens {
            proj: rows * p,
            recurrent_kernel: h * p,
            recurrent_bias: if cell.biases.is_some() { p } else { 0 },
            states: states.len.min(slots * sz.state_len),
            tape: cell_tape.len,
            rec: rec_dev.raw().len,
            aux: aux_dev.raw().len,
            barrier: 2,
            ..Default::default()
        };
        // 4. The recurrence.
        match plan {
            Some(plan) => {
                run_persistent_forward(&run, &mut params, &lens, plan, barrier_dev.raw())?
            }
            None => run_standard_forward(
                &run,
                &mut params,
                &lens,
                states,
                rk.raw(),
                rec_dev.raw(),
                aux_dev.raw(),
            )?,
        }
        // 5. Outputs: y from the snapshots, the final state from the last slot.
        let last = states.offset((sz.t % slots) * sz.state_len)?;
        run.copy(last, fs_dev.raw(), sz.state_len)?;
        if spec.return_sequences {
            // h of snapshots 1..=T, [T, B, H] in processing order.
            let dst = if spec.layout == Layout::BatchMajor {
                y_proc_dev.raw()
            } else {
                y_dev.raw()
            };
            launch::launch_gather_blocks(
                stream,
                &run.k.gather,
                sz.t,
                bh,
                sz.state_len,
                states.offset(sz.state_len)?,
                dst,
            )?;
            if spec.layout == Layout::BatchMajor {
                let perm = Permutation {
                    time_steps: sz.t,
                    batch: sz.b,
                    width: h,
                    batch_major: true,
                    go_backwards: false,
                    to_caller: true,
                };
                run.permute(perm, y_proc_dev.raw(), y_dev.raw())?;
            }
        } else {
            run.copy(last, y_dev.raw(), bh)?;
        }
    }
    Ok(DeviceOutput { y, final_state })
}

fn run_persistent_forward<T: CudaReal>(
    run: &Run<'_, T>,
    params: &mut RnnParams,
    lens: &RnnLens,
    plan: PersistentPlan,
    barrier: Raw<u32>,
) -> Result<()> {
    zero_barrier(run.stream, barrier)?;
    params.barrier = barrier.ptr;
    params.units_per_block = plan.units_per_block as i32;
    params.step = 0;
    let f = run.cell_kernel(Module::Persistent, "fwd_persistent")?;
    let mut required = vec!["proj", "recurrent_kernel", "states", "barrier"];
    if run.desc.reset_before() {
        required.push("aux");
    }
    launch::launch_persistent(run.stream, &f, params, run.extent(), lens, &required, plan)
}

fn zero_barrier(stream: &CudaStream, barrier: Raw<u32>) -> Result<()> {
    if barrier.ptr == 0 || barrier.len < 2 {
        return Err(launch::internal("barrier words missing".into()));
    }
    // SAFETY: `barrier` addresses two u32 words of a buffer this run holds a write guard for;
    // the memset is enqueued on the run's stream before the kernel that uses them.
    unsafe { cudarc::driver::result::memset_d8_async(barrier.ptr, 0, 8, stream.cu_stream()) }
        .map_err(driver_error("zeroing the grid barrier"))
}

#[allow(clippy::too_many_arguments)]
fn run_standard_forward<T: CudaReal>(
    run: &Run<'_, T>,
    params: &mut RnnParams,
    lens: &RnnLens,
    states: Raw<T>,
    rk: Raw<T>,
    rec: Raw<T>,
    aux: Raw<T>,
) -> Result<()> {
    let sz = run.sz;
    let (b, h, p) = (sz.b, sz.h, sz.p);
    let slots = params.state_slots as usize;
    let step = run.cell_kernel(Module::Step, "fwd_step")?;
    let gates = if run.desc.reset_before() {
        Some(run.cell_kernel(Module::Step, "fwd_gates")?)
    } else {
        None
    };
    let ext = run.extent();
    let mut required = vec!["proj", "recurrent_kernel", "states", "rec"];
    if run.desc.reset_before() {
        required.push("aux");
    }
    // Reset-before computes the candidate's recurrent product separately, from r ⊙ h_prev.
    let rec_cols = if run.desc.reset_before() { 2 * h } else { p };
    for t in 0..sz.t {
        let h_prev = states.offset((t % slots) * sz.state_len)?;
        run.gemm(
            (b, rec_cols, h),
            (h_prev, h, false),
            (rk, p, false),
            (rec, p),
            0.0,
        )?;
        params.step = t as i32;
        if let Some(gates) = &gates {
            launch::launch_step(run.stream, gates, params, ext, lens, &required)?;
            run.gemm(
                (b, h, h),
                (aux, h, false),
                (rk.offset(2 * h)?, p, false),
                (rec.offset(2 * h)?, p),
                0.0,
            )?;
        }
        launch::launch_step(run.stream, &step, params, ext, lens, &required)?;
    }
    Ok(())
}

/// Backpropagation through time over a record written by [`forward_train`] with the same
/// cell, spec, `x` and initial state; returns fresh gradients (as [`crate::seq::bptt`]).
#[allow(clippy::too_many_arguments)]
pub fn bptt<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &CudaSlice<T>,
    initial_state: Option<&CudaSlice<T>>,
    tape: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    d_final_state: Option<&CudaSlice<T>>,
) -> Result<DeviceGradients<T>> {
    let mut grads = DeviceGradients::zeros(cell, stream, spec)?;
    bptt_into(
        cell,
        stream,
        spec,
        x,
        initial_state,
        tape,
        dy,
        d_final_state,
        &mut grads,
        GradMode::Accumulate,
    )?;
    Ok(grads)
}

/// [`bptt`] into caller-owned device gradients: `dx` and `d_initial_state` are overwritten,
/// parameter gradients overwritten or accumulated into according to `mode`.
#[allow(clippy::too_many_arguments)]
pub fn bptt_into<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &CudaSlice<T>,
    initial_state: Option<&CudaSlice<T>>,
    tape: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    d_final_state: Option<&CudaSlice<T>>,
    grads: &mut DeviceGradients<T>,
    mode: GradMode,
) -> Result<()> {
    cell.device.check_stream(stream)?;
    bind(stream)?;
    let sz = Sizes::new(cell, spec)?;
    check_len("x", x.len(), sz.x_len)?;
    if let Some(s) = initial_state {
        check_len("initial_state", s.len(), sz.state_len)?;
    }
    if tape.len() < sz.tape_len {
        return Err(Error::Length {
            arg: "tape",
            expected: sz.tape_len,
            actual: tape.len(),
        });
    }
    check_len("dy", dy.len(), sz.y_len)?;
    if let Some(g) = d_final_state {
        check_len("d_final_state", g.len(), sz.state_len)?;
    }
    check_len("grads.dx", grads.dx.len(), sz.x_len)?;
    check_len(
        "grads.d_initial_state",
        grads.d_initial_state.len(),
        sz.state_len,
    )?;
    let params = cell.params();
    check_len("grads.params", grads.params.len(), params.len())?;
    for (g, p) in grads.params.iter().zip(&params) {
        check_len("grads.params[k]", g.len(), p.len())?;
    }
    drop(params);

    let dev = &*cell.device.state;
    let run = Run::<T> {
        stream,
        dev,
        desc: cell.desc,
        sz,
        k: Kernels::new::<T>(dev)?,
        marker: std::marker::PhantomData,
    };
    let (rows, p, h, i, bh) = (sz.rows(), sz.p, sz.h, sz.i, sz.b * sz.h);
    let plan = run.plan(cell.path, Pass::Backward)?;
    let is_gru = matches!(cell.desc, CellDesc::Gru(_));
    let reset_before = cell.desc.reset_before();
    let permute_x = needs_permute(spec);
    let permute_dy = spec.return_sequences && spec.layout == Layout::BatchMajor;

    let mut xs_buf = zeros::<T>(stream, if permute_x { sz.x_len } else { 0 })?;
    let mut dxs_buf = zeros::<T>(stream, if permute_x { sz.x_len } else { 0 })?;
    let mut dy_buf = zeros::<T>(stream, if permute_dy { sz.y_len } else { 0 })?;
    let mut d_proj = zeros::<T>(stream, rows * p)?;
    let mut d_rec = zeros::<T>(stream, if is_gru { rows * p } else { 0 })?;
    let mut rh_all = zeros::<T>(stream, if reset_before { rows * h } else { 0 })?;
    let mut aux = zeros::<T>(stream, if reset_before { bh } else { 0 })?;
    let mut d_state = zeros::<T>(stream, sz.state_len)?;
    let mut h_prev_all = zeros::<T>(stream, rows * h)?;
    let mut barrier = stream
        .alloc_zeros::<u32>(2)
        .map_err(driver_error("allocating"))?;
    {
        let x_dev = Dev::read(x, stream);
        // (The initial state is not read: the record holds it as snapshot 0.)
        let tape_dev = Dev::read(tape, stream);
        let dy_dev = Dev::read(dy, stream);
        let dfs_dev = d_final_state.map(|s| Dev::read(s, stream));
        let w = Dev::read(&cell.kernel, stream);
        let rk = Dev::read(&cell.recurrent_kernel, stream);
        let rb_present = cell.biases.is_some();
        let DeviceGradients {
            dx,
            d_initial_state,
            params: gparams,
        } = grads;
        let dx_dev = Dev::write(dx, stream);
        let dis_dev = Dev::write(d_initial_state, stream);
        let g_devs: Vec<Dev<'_, T>> = gparams.iter_mut().map(|g| Dev::write(g, stream)).collect();
        let xs_dev = Dev::write(&mut xs_buf, stream);
        let dxs_dev = Dev::write(&mut dxs_buf, stream);
        let dy_buf_dev = Dev::write(&mut dy_buf, stream);
        let d_proj_dev = Dev::write(&mut d_proj, stream);
        let d_rec_dev = Dev::write(&mut d_rec, stream);
        let rh_dev = Dev::write(&mut rh_all, stream);
        let aux_dev = Dev::write(&mut aux, stream);
        let d_state_dev = Dev::write(&mut d_state, stream);
        let hp_dev = Dev::write(&mut h_prev_all, stream);
        let barrier_dev = Dev::write(&mut barrier, stream);

        if mode == GradMode::Overwrite {
            for g in &g_devs {
                run.zero(g.raw(), g.raw().len)?;
            }
        }
        let xs = if permute_x {
            let perm = Permutation {
                time_steps: sz.t,
                batch: sz.b,
                width: i,
                batch_major: spec.layout == Layout::BatchMajor,
                go_backwards: spec.go_backwards,
                to_caller: false,
            };
            run.permute(perm, x_dev.raw(), xs_dev.raw())?;
            xs_dev.raw()
        } else {
            x_dev.raw()
        };
        let dy_proc = if permute_dy {
            let perm = Permutation {
                time_steps: sz.t,
                batch: sz.b,
                width: h,
                batch_major: true,
                go_backwards: false,
                to_caller: false,
            };
            run.permute(perm, dy_dev.raw(), dy_buf_dev.raw())?;
            dy_buf_dev.raw()
        } else {
            dy_dev.raw()
        };
        match &dfs_dev {
            Some(g) => run.copy(g.raw(), d_state_dev.raw(), sz.state_len)?,
            None => run.zero(d_state_dev.raw(), sz.state_len)?,
        }
        let states = tape_dev.raw();
        let cell_tape = states.offset((sz.t + 1) * sz.state_len)?;
        let d_rec_raw = if is_gru {
            d_rec_dev.raw()
        } else {
            d_proj_dev.raw()
        };

        let mut params = base_params(cell.desc, &sz)?;
        params.state_slots = to_i32("time_steps", sz.t + 1)?;
        params.recurrent_kernel = rk.raw().ptr;
        params.states = states.ptr;
        params.tape = cell_tape.ptr;
        params.dy = dy_proc.ptr;
        params.dy_every_step = spec.return_sequences as i32;
        params.d_state = d_state_dev.raw().ptr;
        params.d_proj = d_proj_dev.raw().ptr;
        params.d_rec = if is_gru { d_rec_dev.raw().ptr } else { 0 };
        params.rh_all = if reset_before { rh_dev.raw().ptr } else { 0 };
        params.aux = if reset_before { aux_dev.raw().ptr } else { 0 };
        let lens = RnnLens {
            recurrent_kernel: h * p,
            states: (sz.t + 1) * sz.state_len,
            tape: cell_tape.len,
            dy: sz.y_len,
            d_state: sz.state_len,
            d_proj: rows * p,
            d_rec: if is_gru { rows * p } else { 0 },
            rh_all: if reset_before { rows * h } else { 0 },
            aux: if reset_before { bh } else { 0 },
            barrier: 2,
            ..Default::default()
        };
        let mut required = vec!["recurrent_kernel", "states", "dy", "d_state", "d_proj"];
        if is_gru {
            required.push("d_rec");
        }
        if reset_before {
            required.extend(["rh_all", "aux"]);
        }
        if sz.tw > 0 {
            required.push("tape");
        }

        match plan {
            Some(plan) => {
                zero_barrier(stream, barrier_dev.raw())?;
                params.barrier = barrier_dev.raw().ptr;
                params.units_per_block = plan.units_per_block as i32;
                required.push("barrier");
                let f = run.cell_kernel(Module::Persistent, "bwd_persistent")?;
                launch::launch_persistent(
                    stream,
                    &f,
                    &params,
                    run.extent(),
                    &lens,
                    &required,
                    plan,
                )?;
            }
            None => {
                let step = run.cell_kernel(Module::Step, "bwd_step")?;
                let gates = if reset_before {
                    Some(run.cell_kernel(Module::Step, "bwd_gates")?)
                } else {
                    None
                };
                let ext = run.extent();
                let (d_state_h, rk_raw) = (d_state_dev.raw(), rk.raw());
                for t in (0..sz.t).rev() {
                    params.step = t as i32;
                    launch::launch_step(stream, &step, &params, ext, &lens, &required)?;
                    let d_proj_t = d_proj_dev.raw().offset(t * sz.b * p)?;
                    let d_rec_t = d_rec_raw.offset(t * sz.b * p)?;
                    match cell.desc {
                        CellDesc::SimpleRnn(_) | CellDesc::Lstm(_) => {
                            // d h_prev = d_pre · Uᵀ (LSTM's dc_prev is already in place).
                            run.gemm(
                                (sz.b, h, p),
                                (d_proj_t, p, false),
                                (rk_raw, p, true),
                                (d_state_h, h),
                                0.0,
                            )?;
                        }
                        CellDesc::Gru(k) if k.reset_after => {
                            run.gemm(
                                (sz.b, h, p),
                                (d_rec_t, p, false),
                                (rk_raw, p, true),
                                (d_state_h, h),
                                1.0,
                            )?;
                        }
                        CellDesc::Gru(_) => {
                            // d(r ⊙ h_prev) = dn · U_h̃ᵀ, then the reset gate, then the z and r
                            // products' share of d h_prev.
                            run.gemm(
                                (sz.b, h, h),
                                (d_proj_t.offset(2 * h)?, p, false),
                                (rk_raw.offset(2 * h)?, p, true),
                                (aux_dev.raw(), h),
                                0.0,
                            )?;
                            if let Some(gates) = &gates {
                                launch::launch_step(stream, gates, &params, ext, &lens, &required)?;
                            }
                            run.gemm(
                                (sz.b, h, 2 * h),
                                (d_rec_t, p, false),
                                (rk_raw, p, true),
                                (d_state_h, h),
                                1.0,
                            )?;
                        }
                    }
                }
            }
        }

        // Parameter gradients of the whole sequence as single products over all T·B rows.
        // h_prev of every step: state 0 of snapshots 0..T, stacked [T·B, H].
        launch::launch_gather_blocks(
            stream,
            &run.k.gather,
            sz.t,
            bh,
            sz.state_len,
            states,
            hp_dev.raw(),
        )?;
        let d_rk = g_devs[crate::cell::RECURRENT_KERNEL].raw();
        if reset_before {
            run.gemm(
                (h, 2 * h, rows),
                (hp_dev.raw(), h, true),
                (d_rec_raw, p, false),
                (d_rk, p),
                1.0,
            )?;
            run.gemm(
                (h, h, rows),
                (rh_dev.raw(), h, true),
                (d_rec_raw.offset(2 * h)?, p, false),
                (d_rk.offset(2 * h)?, p),
                1.0,
            )?;
        } else {
            run.gemm(
                (h, p, rows),
                (hp_dev.raw(), h, true),
                (d_rec_raw, p, false),
                (d_rk, p),
                1.0,
            )?;
        }
        if rb_present {
            let d_b = g_devs[crate::cell::BIAS].raw();
            let d_rb = g_devs[crate::cell::RECURRENT_BIAS].raw();
            launch::launch_sum_rows(stream, &run.k.sum_rows, rows, p, p, d_proj_dev.raw(), d_b)?;
            launch::launch_sum_rows(stream, &run.k.sum_rows, rows, p, p, d_rec_raw, d_rb)?;
        }
        let d_w = g_devs[crate::cell::KERNEL].raw();
        run.gemm(
            (i, p, rows),
            (xs, i, true),
            (d_proj_dev.raw(), p, false),
            (d_w, p),
            1.0,
        )?;
        // dx = d_proj · kernelᵀ, then back to the caller's layout and direction.
        let dxs = if permute_x {
            dxs_dev.raw()
        } else {
            dx_dev.raw()
        };
        run.gemm(
            (rows, i, p),
            (d_proj_dev.raw(), p, false),
            (w.raw(), p, true),
            (dxs, i),
            0.0,
        )?;
        if permute_x {
            let perm = Permutation {
                time_steps: sz.t,
                batch: sz.b,
                width: i,
                batch_major: spec.layout == Layout::BatchMajor,
                go_backwards: spec.go_backwards,
                to_caller: true,
            };
            run.permute(perm, dxs, dx_dev.raw())?;
        }
        run.copy(d_state_dev.raw(), dis_dev.raw(), sz.state_len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{GruKind, LstmKind, SimpleRnnKind};
    use crate::prelude::*;

    fn cpu_tape_len<C: crate::Cell<f64>>(cell: &C, spec: &SeqSpec) -> usize {
        crate::seq::tape_len(cell, spec).unwrap()
    }

    #[test]
    fn sizes_agree_with_the_cpu_engine() {
        for (t, b, i, h) in [
            (1usize, 1usize, 1usize, 1usize),
            (7, 3, 5, 9),
            (2, 16, 33, 64),
        ] {
            for rs in [false, true] {
                let spec = SeqSpec::new(t, b).return_sequences(rs);
                let lstm =
                    DynLstm::<f64>::random(Dyn(i), Dyn(h), LstmKind::default(), true, 1).unwrap();
                let s = Sizes::of(CellDesc::Lstm(LstmKind::default()), i, h, &spec).unwrap();
                assert_eq!(s.tape_len, cpu_tape_len(&lstm, &spec));
                for reset_after in [false, true] {
                    let kind = GruKind {
                        reset_after,
                        ..GruKind::default()
                    };
                    let gru = DynGru::<f64>::random(Dyn(i), Dyn(h), kind, false, 1).unwrap();
                    let s = Sizes::of(CellDesc::Gru(kind), i, h, &spec).unwrap();
                    assert_eq!(s.tape_len, cpu_tape_len(&gru, &spec));
                }
                let rnn =
                    DynSimpleRnn::<f64>::random(Dyn(i), Dyn(h), SimpleRnnKind::default(), true, 1)
                        .unwrap();
                let s =
                    Sizes::of(CellDesc::SimpleRnn(SimpleRnnKind::default()), i, h, &spec).unwrap();
                assert_eq!(s.tape_len, cpu_tape_len(&rnn, &spec));
                assert_eq!(s.y_len, if rs { t * b * h } else { b * h });
                assert_eq!(s.x_len, t * b * i);
            }
        }
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        let d = CellDesc::Lstm(LstmKind::default());
        assert_eq!(
            Sizes::of(d, 3, 4, &SeqSpec::new(0, 1)).unwrap_err(),
            Error::Zero { arg: "time_steps" }
        );
        assert!(matches!(
            Sizes::of(d, 3, 4, &SeqSpec::new(1 << 20, 1 << 12)),
            Err(Error::Invalid {
                arg: "time_steps * batch",
                ..
            })
        ));
        assert!(matches!(
            Sizes::of(d, 3, 1 << 30, &SeqSpec::new(1, 1)),
            Err(Error::Invalid {
                arg: "gates * hidden_size",
                ..
            })
        ));
    }
}
