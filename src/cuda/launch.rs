//! Launch configurations and one launch wrapper per kernel (or per family of kernels with the
//! same signature). Every wrapper checks, before it launches, that each buffer it passes holds
//! at least as many elements as the kernel indexes for the given sizes, so that a wrong size
//! elsewhere in the engine becomes an error instead of an out-of-bounds access.

use std::marker::PhantomData;

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    SyncOnDrop,
};

use super::driver_error;
use super::params::{GemmParams, RnnParams};
use crate::error::{Error, Result};

/// Threads per block of the step and utility kernels.
pub(crate) const STEP_THREADS: u32 = 256;
/// Threads per block of the persistent kernels (`PERSISTENT_THREADS` in persistent.cu).
pub(crate) const PERSISTENT_THREADS: u32 = 256;
/// Warps per block of the persistent kernels (`PERSISTENT_WARPS`).
pub(crate) const PERSISTENT_WARPS: usize = (PERSISTENT_THREADS / 32) as usize;
/// Output tile edge of the matrix-product kernel (`GEMM_TILE` in gemm.cu).
pub(crate) const GEMM_TILE: u32 = 64;
/// Threads per block of the matrix-product kernel (`GEMM_THREADS`).
pub(crate) const GEMM_THREADS: u32 = 256;
/// Largest batch the persistent kernels take: beyond it the per-step matrix products keep the
/// GPU busier than a grid of one block per multiprocessor can.
pub(crate) const PERSISTENT_MAX_BATCH: usize = 16;

/// A device address with the number of `T` elements available from it: what a kernel may touch.
#[derive(Debug)]
pub(crate) struct Raw<T> {
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    marker: PhantomData<*const T>,
}

impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Raw<T> {}

impl<T> Raw<T> {
    /// The null buffer (an absent optional argument).
    pub(crate) const NONE: Raw<T> = Raw {
        ptr: 0,
        len: 0,
        marker: PhantomData,
    };

    /// The buffer from element `offset` on.
    pub(crate) fn offset(self, offset: usize) -> Result<Raw<T>> {
        if offset > self.len {
            return Err(internal(format!(
                "offset {offset} past a buffer of {} elements",
                self.len
            )));
        }
        Ok(Raw {
            ptr: self.ptr + (offset * std::mem::size_of::<T>()) as u64,
            len: self.len - offset,
            marker: PhantomData,
        })
    }
}

/// A borrowed device buffer: its address for kernels, and the guard that records on drop that
/// the stream used it (cudarc's cross-stream tracking). Keep it alive until the work that uses
/// the address is enqueued.
pub(crate) struct Dev<'a, T> {
    raw: Raw<T>,
    _guard: SyncOnDrop<'a>,
}

impl<'a, T> Dev<'a, T> {
    /// Read access to `slice` for work on `stream`.
    pub(crate) fn read(slice: &'a CudaSlice<T>, stream: &'a CudaStream) -> Self {
        let (ptr, guard) = slice.device_ptr(stream);
        Dev {
            raw: Raw {
                ptr,
                len: slice.len(),
                marker: PhantomData,
            },
            _guard: guard,
        }
    }
    /// Write access to `slice` for work on `stream`.
    pub(crate) fn write(slice: &'a mut CudaSlice<T>, stream: &'a CudaStream) -> Self {
        let len = slice.len();
        let (ptr, guard) = slice.device_ptr_mut(stream);
        Dev {
            raw: Raw {
                ptr,
                len,
                marker: PhantomData,
            },
            _guard: guard,
        }
    }
    /// The address and extent.
    pub(crate) fn raw(&self) -> Raw<T> {
        self.raw
    }
}

pub(crate) fn internal(reason: String) -> Error {
    Error::Device {
        reason: format!("internal size check failed: {reason}"),
    }
}

/// Checks that `buf` is present and holds at least `need` elements.
fn need<T>(what: &str, buf: Raw<T>, need: usize) -> Result<()> {
    if buf.ptr == 0 || buf.len < need {
        return Err(internal(format!(
            "`{what}` holds {} elements (address {:#x}), the kernel indexes {need}",
            buf.len, buf.ptr
        )));
    }
    Ok(())
}

/// `value` as the `i32` the kernels take.
pub(crate) fn to_i32(arg: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Invalid {
        arg,
        reason: format!("{value} exceeds the CUDA kernels' 32-bit index range"),
    })
}

/// One thread per element for `n` elements in blocks of [`STEP_THREADS`].
pub(crate) fn elementwise_config(n: usize) -> Result<LaunchConfig> {
    let blocks = n.div_ceil(STEP_THREADS as usize).max(1);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| internal(format!("{n} elements exceed one launch")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (STEP_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Grid-stride kernels: enough blocks to cover `n` elements, at most 65535 of them.
pub(crate) fn strided_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(STEP_THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (STEP_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The matrix product's grid: x over row tiles, y over column tiles.
pub(crate) fn gemm_config(m: usize, n: usize) -> Result<LaunchConfig> {
    let x = m.div_ceil(GEMM_TILE as usize);
    let y = n.div_ceil(GEMM_TILE as usize);
    if x == 0 || y == 0 || x > i32::MAX as usize || y > 65_535 {
        return Err(internal(format!("no grid for a {m} x {n} product")));
    }
    Ok(LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (GEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Which way a persistent kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Forward,
    Backward,
}

/// How a persistent kernel covers the hidden units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PersistentPlan {
    /// Blocks in the grid, at most one per multiprocessor.
    pub(crate) blocks: u32,
    /// Hidden units per block.
    pub(crate) units_per_block: u32,
    /// Dynamic shared memory per block, bytes.
    pub(crate) smem_bytes: u32,
}

/// Dynamic shared memory of a persistent kernel in bytes, as laid out in persistent.cu:
/// forward `G·UPB·H` weights + `B·H` state + `B·G·UPB` products + one partial sum per warp;
/// backward `UPB·G·H` weights + `B·UPB` products + one partial per warp.
pub(crate) fn persistent_smem_bytes(
    pass: Pass,
    gates: usize,
    batch: usize,
    hidden: usize,
    units_per_block: usize,
    elem_bytes: usize,
) -> Option<usize> {
    let (g, b, h, u) = (gates, batch, hidden, units_per_block);
    let elems = match pass {
        Pass::Forward => g
            .checked_mul(u)?
            .checked_mul(h)?
            .checked_add(b.checked_mul(h)?)?
            .checked_add(b.checked_mul(g)?.checked_mul(u)?)?,
        Pass::Backward => u
            .checked_mul(g)?
            .checked_mul(h)?
            .checked_add(b.checked_mul(u)?)?,
    };
    elems.checked_add(PERSISTENT_WARPS)?.checked_mul(elem_bytes)
}

/// The persistent plan for a sequence, or `None` when the recurrent weights do not fit in
/// the shared memory of one block per multiprocessor (or the batch is too large): then the
/// standard path runs. Blocks own `ceil(H / sm_count)` units each, so every multiprocessor
/// holds at most one block and the whole grid is resident, as a cooperative launch requires.
pub(crate) fn persistent_plan(
    pass: Pass,
    gates: usize,
    batch: usize,
    hidden: usize,
    elem_bytes: usize,
    sm_count: u32,
    max_smem_optin: u32,
) -> Option<PersistentPlan> {
    if batch == 0 || hidden == 0 || batch > PERSISTENT_MAX_BATCH || sm_count == 0 {
        return None;
    }
    let units_per_block = hidden.div_ceil(sm_count as usize);
    let blocks = hidden.div_ceil(units_per_block);
    let smem = persistent_smem_bytes(pass, gates, batch, hidden, units_per_block, elem_bytes)?;
    if smem > max_smem_optin as usize || blocks > sm_count as usize {
        return None;
    }
    Some(PersistentPlan {
        blocks: blocks as u32,
        units_per_block: units_per_block as u32,
        smem_bytes: smem as u32,
    })
}

/// Sizes that fix how far a cell kernel indexes each buffer of [`RnnParams`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RnnExtent {
    pub(crate) gates: usize,
    pub(crate) states: usize,
}

/// Checks the buffers of an [`RnnParams`] against the extents its kernels index (see
/// kernels/rnn.cuh): every non-null buffer must be long enough; `required` names the buffers
/// this kernel reads or writes, which must be non-null.
pub(crate) fn check_rnn_params(
    p: &RnnParams,
    e: RnnExtent,
    lens: &RnnLens,
    required: &[&str],
) -> Result<()> {
    let (t, b, h) = (p.time_steps as usize, p.batch as usize, p.hidden as usize);
    let pw = e.gates * h;
    if p.batch < 1 || p.hidden < 1 || p.time_steps < 1 || p.state_slots < 1 {
        return Err(internal(format!("bad sizes {p:?}")));
    }
    if p.step < 0 || p.step as usize >= t {
        return Err(internal(format!("step {} of {t}", p.step)));
    }
    let dy_len = if p.dy_every_step != 0 {
        t * b * h
    } else {
        b * h
    };
    let table: [(&str, u64, usize, usize); 13] = [
        ("proj", p.proj, lens.proj, t * b * pw),
        (
            "recurrent_kernel",
            p.recurrent_kernel,
            lens.recurrent_kernel,
            h * pw,
        ),
        ("recurrent_bias", p.recurrent_bias, lens.recurrent_bias, pw),
        (
            "states",
            p.states,
            lens.states,
            p.state_slots as usize * e.states * b * h,
        ),
        ("tape", p.tape, lens.tape, t * b * p.tape_width as usize),
        ("rec", p.rec, lens.rec, b * pw),
        ("aux", p.aux, lens.aux, b * h),
        ("dy", p.dy, lens.dy, dy_len),
        ("d_state", p.d_state, lens.d_state, e.states * b * h),
        ("d_proj", p.d_proj, lens.d_proj, t * b * pw),
        ("d_rec", p.d_rec, lens.d_rec, t * b * pw),
        ("rh_all", p.rh_all, lens.rh_all, t * b * h),
        ("barrier", p.barrier, lens.barrier, 2),
    ];
    for (name, ptr, len, want) in table {
        if required.contains(&name) && ptr == 0 {
            return Err(internal(format!("`{name}` missing")));
        }
        if ptr != 0 && len < want {
            return Err(internal(format!(
                "`{name}` holds {len} elements, the kernel indexes {want}"
            )));
        }
    }
    Ok(())
}

/// Element counts of the buffers behind an [`RnnParams`] (barrier: 32-bit words).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RnnLens {
    pub(crate) proj: usize,
    pub(crate) recurrent_kernel: usize,
    pub(crate) recurrent_bias: usize,
    pub(crate) states: usize,
    pub(crate) tape: usize,
    pub(crate) rec: usize,
    pub(crate) aux: usize,
    pub(crate) dy: usize,
    pub(crate) d_state: usize,
    pub(crate) d_proj: usize,
    pub(crate) d_rec: usize,
    pub(crate) rh_all: usize,
    pub(crate) barrier: usize,
}

/// Launches one of the fused step kernels (`kernels/step.cu`, all taking `RnnParams` by value)
/// over `batch · hidden` threads, after [`check_rnn_params`].
pub(crate) fn launch_step(
    stream: &CudaStream,
    f: &CudaFunction,
    p: &RnnParams,
    e: RnnExtent,
    lens: &RnnLens,
    required: &[&str],
) -> Result<()> {
    check_rnn_params(p, e, lens, required)?;
    let cfg = elementwise_config(p.batch as usize * p.hidden as usize)?;
    let mut args = stream.launch_builder(f);
    args.arg(p);
    // SAFETY: every step kernel's one parameter is `const RnnParams` (152 bytes, checked against
    // the PTX by module::tests), `p` mirrors it field for field, and check_rnn_params verified
    // that every buffer the kernel indexes for these sizes is non-null and long enough. The
    // grid covers batch·hidden threads; surplus threads return before touching memory.
    unsafe { args.launch(cfg) }.map_err(driver_error("launching a step kernel"))?;
    Ok(())
}

/// Launches a persistent kernel (`kernels/persistent.cu`) cooperatively with `plan`, after
/// [`check_rnn_params`]; the caller has zeroed the two barrier words on `stream`.
pub(crate) fn launch_persistent(
    stream: &CudaStream,
    f: &CudaFunction,
    p: &RnnParams,
    e: RnnExtent,
    lens: &RnnLens,
    required: &[&str],
    plan: PersistentPlan,
) -> Result<()> {
    check_rnn_params(p, e, lens, required)?;
    if p.units_per_block as u32 != plan.units_per_block
        || (plan.blocks as usize) * (plan.units_per_block as usize) < p.hidden as usize
    {
        return Err(internal(format!("plan {plan:?} does not cover {p:?}")));
    }
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        plan.smem_bytes as i32,
    )
    .map_err(driver_error("setting the shared-memory size"))?;
    let resident = f
        .occupancy_max_active_blocks_per_multiprocessor(
            PERSISTENT_THREADS,
            plan.smem_bytes as usize,
            None,
        )
        .map_err(driver_error("querying occupancy"))?;
    if resident == 0 {
        return Err(Error::Device {
            reason: format!(
                "persistent kernel with {} bytes of shared memory cannot be resident",
                plan.smem_bytes
            ),
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (plan.blocks, 1, 1),
        block_dim: (PERSISTENT_THREADS, 1, 1),
        shared_mem_bytes: plan.smem_bytes,
    };
    let mut args = stream.launch_builder(f);
    args.arg(p);
    // SAFETY: the persistent kernels take one `const RnnParams` (checked against the PTX);
    // buffers were checked by check_rnn_params. The block count is at most the number of
    // multiprocessors and at least one block fits per multiprocessor (occupancy above), and the
    // launch is cooperative, which the driver refuses unless the whole grid is resident: so the
    // kernel's spinning grid barrier cannot deadlock. Dynamic shared memory is the plan's size,
    // computed from the kernel's layout (persistent_smem_bytes), and was opted into above.
    unsafe { args.launch_cooperative(cfg) }
        .map_err(driver_error("launching a persistent kernel"))?;
    Ok(())
}

/// Checks the extents of a [`GemmParams`] against its buffers.
pub(crate) fn check_gemm(p: &GemmParams, a: usize, b: usize, c: usize) -> Result<()> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if p.m < 1 || p.n < 1 || p.k < 1 || p.lda < 1 || p.ldb < 1 || p.ldc < 1 {
        return Err(internal(format!("bad product {p:?}")));
    }
    let (lda, ldb, ldc) = (p.lda as usize, p.ldb as usize, p.ldc as usize);
    // (outer extent, inner extent) of each operand as stored.
    let (a_rows, a_cols) = if p.trans_a != 0 { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if p.trans_b != 0 { (n, k) } else { (k, n) };
    let fits = |rows: usize, cols: usize, ld: usize, len: usize| {
        cols <= ld && (rows - 1) * ld + cols <= len
    };
    if !fits(a_rows, a_cols, lda, a) || !fits(b_rows, b_cols, ldb, b) || !fits(m, n, ldc, c) {
        return Err(internal(format!(
            "product {p:?} does not fit buffers of {a}, {b}, {c} elements"
        )));
    }
    if p.a == 0 || p.b == 0 || p.c == 0 {
        return Err(internal("null operand".into()));
    }
    Ok(())
}

/// Launches `gemm_{f32,f64}` after [`check_gemm`].
pub(crate) fn launch_gemm<T>(
    stream: &CudaStream,
    f: &CudaFunction,
    p: &GemmParams,
    a: Raw<T>,
    b: Raw<T>,
    c: Raw<T>,
) -> Result<()> {
    debug_assert!(p.a == a.ptr && p.b == b.ptr && p.c == c.ptr);
    check_gemm(p, a.len, b.len, c.len)?;
    let cfg = gemm_config(p.m as usize, p.n as usize)?;
    let mut args = stream.launch_builder(f);
    args.arg(p);
    // SAFETY: `gemm_*` takes one `const GemmParams` (72 bytes, checked against the PTX); `p`
    // mirrors it, and check_gemm verified that every element the product indexes lies inside
    // a, b and c. The grid has one block per 64 x 64 output tile; out-of-range rows and columns
    // are masked in the kernel.
    unsafe { args.launch(cfg) }.map_err(driver_error("launching a matrix product"))?;
    Ok(())
}

/// Launches `sum_rows_*`: `dst[c] += Σ_r src[r·ld + c]` for `c < cols`, `r < rows`.
pub(crate) fn launch_sum_rows<T>(
    stream: &CudaStream,
    f: &CudaFunction,
    rows: usize,
    cols: usize,
    ld: usize,
    src: Raw<T>,
    dst: Raw<T>,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    need("src", src, (rows - 1) * ld + cols)?;
    need("dst", dst, cols)?;
    if cols > ld {
        return Err(internal(format!("{cols} columns in rows {ld} apart")));
    }
    let (r, c, l) = (
        to_i32("rows", rows)?,
        to_i32("cols", cols)?,
        to_i32("ld", ld)?,
    );
    let cfg = elementwise_config(cols)?;
    let mut args = stream.launch_builder(f);
    args.arg(&r).arg(&c).arg(&l).arg(&src.ptr).arg(&dst.ptr);
    // SAFETY: `sum_rows_*(int rows, int cols, int ld, u64 src, u64 dst)`: arguments pushed in
    // that order with those types (checked against the PTX); src holds (rows−1)·ld + cols
    // elements and dst cols, as checked above. One thread per column.
    unsafe { args.launch(cfg) }.map_err(driver_error("launching sum_rows"))?;
    Ok(())
}

/// How [`launch_permute_rows`] maps processing order to the caller's layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Permutation {
    pub(crate) time_steps: usize,
    pub(crate) batch: usize,
    pub(crate) width: usize,
    pub(crate) batch_major: bool,
    pub(crate) go_backwards: bool,
    /// `true`: processing order → caller's layout; `false`: the reverse.
    pub(crate) to_caller: bool,
}

/// Launches `permute_rows_*` (see kernels/gemm.cu).
pub(crate) fn launch_permute_rows<T>(
    stream: &CudaStream,
    f: &CudaFunction,
    perm: Permutation,
    src: Raw<T>,
    dst: Raw<T>,
) -> Result<()> {
    let total = perm.time_steps * perm.batch * perm.width;
    if total == 0 {
        return Ok(());
    }
    need("src", src, total)?;
    need("dst", dst, total)?;
    let t = to_i32("time_steps", perm.time_steps)?;
    let b = to_i32("batch", perm.batch)?;
    let w = to_i32("width", perm.width)?;
    let (bm, gb, tc) = (
        perm.batch_major as i32,
        perm.go_backwards as i32,
        perm.to_caller as i32,
    );
    let cfg = strided_config(total);
    let mut args = stream.launch_builder(f);
    args.arg(&t)
        .arg(&b)
        .arg(&w)
        .arg(&bm)
        .arg(&gb)
        .arg(&tc)
        .arg(&src.ptr)
        .arg(&dst.ptr);
    // SAFETY: `permute_rows_*(int ×6, u64 src, u64 dst)` in this order (checked against the
    // PTX); the kernel reads and writes exactly T·B·width elements of each buffer, a bijection
    // between the two layouts, and both hold that many (checked above).
    unsafe { args.launch(cfg) }.map_err(driver_error("launching permute_rows"))?;
    Ok(())
}

/// Launches `gather_blocks_*`: `dst[n·len + e] = src[n·stride + e]`, `n < count`, `e < len`.
pub(crate) fn launch_gather_blocks<T>(
    stream: &CudaStream,
    f: &CudaFunction,
    count: usize,
    len: usize,
    stride: usize,
    src: Raw<T>,
    dst: Raw<T>,
) -> Result<()> {
    if count == 0 || len == 0 {
        return Ok(());
    }
    need("src", src, (count - 1) * stride + len)?;
    need("dst", dst, count * len)?;
    let c = to_i32("count", count)?;
    let (l, s) = (len as i64, stride as i64);
    let cfg = strided_config(count * len);
    let mut args = stream.launch_builder(f);
    args.arg(&c).arg(&l).arg(&s).arg(&src.ptr).arg(&dst.ptr);
    // SAFETY: `gather_blocks_*(int count, long long len, long long stride, u64 src, u64 dst)`
    // in this order (checked against the PTX); the largest source index is
    // (count−1)·stride + len − 1 and the largest destination index count·len − 1, both inside
    // the buffers (checked above).
    unsafe { args.launch(cfg) }.map_err(driver_error("launching gather_blocks"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_grid_covers_every_element_once() {
        for n in [1usize, 255, 256, 257, 1 << 20, 3 * 1024 + 1] {
            let c = elementwise_config(n).unwrap();
            let threads = c.grid_dim.0 as usize * c.block_dim.0 as usize;
            assert!(threads >= n && threads < n + STEP_THREADS as usize, "{n}");
        }
    }

    #[test]
    fn gemm_grid_covers_the_output() {
        for (m, n) in [(1, 1), (64, 64), (65, 1), (1000, 4096), (4_000_000, 256)] {
            let c = gemm_config(m, n).unwrap();
            assert!(c.grid_dim.0 as usize * 64 >= m && (c.grid_dim.0 as usize - 1) * 64 < m);
            assert!(c.grid_dim.1 as usize * 64 >= n && (c.grid_dim.1 as usize - 1) * 64 < n);
        }
        assert!(gemm_config(0, 5).is_err());
        assert!(gemm_config(5, 65_536 * 64).is_err());
    }

    #[test]
    fn persistent_plan_covers_units_and_fits_the_device() {
        // An H100-like device: 132 multiprocessors, 227 KiB opt-in shared memory.
        let (sms, smem) = (132, 232_448);
        for gates in [1usize, 3, 4] {
            for h in [1usize, 7, 64, 131, 132, 133, 256, 512, 1024] {
                for b in [1usize, 2, 8, 16] {
                    for pass in [Pass::Forward, Pass::Backward] {
                        if let Some(p) = persistent_plan(pass, gates, b, h, 4, sms, smem) {
                            let upb = p.units_per_block as usize;
                            assert!(p.blocks as usize * upb >= h);
                            assert!((p.blocks as usize - 1) * upb < h, "no idle block");
                            assert!(p.blocks <= sms);
                            assert!(p.smem_bytes <= smem);
                            assert_eq!(
                                p.smem_bytes as usize,
                                persistent_smem_bytes(pass, gates, b, h, upb, 4).unwrap()
                            );
                        }
                    }
                }
            }
        }
        // LSTM H = 1024 f32 holds 16 MiB of recurrent weights: 8 units per block, 128 KiB
        // of weights per block, which fits.
        let p = persistent_plan(Pass::Forward, 4, 8, 1024, 4, sms, smem).unwrap();
        assert_eq!((p.blocks, p.units_per_block), (128, 8));
        assert_eq!(
            p.smem_bytes as usize,
            (4 * 8 * 1024 + 8 * 1024 + 8 * 4 * 8 + 8) * 4
        );
        // f64 LSTM H = 1024 does not (256 KiB per block): the standard path runs.
        assert_eq!(
            persistent_plan(Pass::Forward, 4, 1, 1024, 8, sms, smem),
            None
        );
        // Nor do batches above the limit, or a device without multiprocessors.
        assert_eq!(
            persistent_plan(Pass::Forward, 4, 17, 64, 4, sms, smem),
            None
        );
        assert_eq!(persistent_plan(Pass::Forward, 4, 1, 64, 4, 0, smem), None);
    }

    #[test]
    fn persistent_smem_matches_the_kernel_layout() {
        // Forward, LSTM, B = 2, H = 10, 3 units per block, f64: 4·3·10 + 2·10 + 2·4·3 + 8.
        assert_eq!(
            persistent_smem_bytes(Pass::Forward, 4, 2, 10, 3, 8),
            Some((120 + 20 + 24 + 8) * 8)
        );
        // Backward: 3·4·10 + 2·3 + 8.
        assert_eq!(
            persistent_smem_bytes(Pass::Backward, 4, 2, 10, 3, 8),
            Some((120 + 6 + 8) * 8)
        );
        assert_eq!(
            persistent_smem_bytes(Pass::Forward, 4, 2, usize::MAX, 3, 8),
            None
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: i32,
        n: i32,
        k: i32,
        lda: i32,
        ldb: i32,
        ldc: i32,
        ta: bool,
        tb: bool,
    ) -> GemmParams {
        GemmParams {
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
            trans_a: ta as i32,
            trans_b: tb as i32,
            alpha: 1.0,
            beta: 0.0,
            a: 1,
            b: 1,
            c: 1,
        }
    }

    #[test]
    fn gemm_extents_are_checked_per_transposition() {
        // A [3, 5], B [5, 4], C [3, 4].
        assert!(check_gemm(&gemm(3, 4, 5, 5, 4, 4, false, false), 15, 20, 12).is_ok());
        assert!(check_gemm(&gemm(3, 4, 5, 5, 4, 4, false, false), 14, 20, 12).is_err());
        assert!(check_gemm(&gemm(3, 4, 5, 5, 4, 4, false, false), 15, 20, 11).is_err());
        // Aᵀ stored [5, 3]; Bᵀ stored [4, 5].
        assert!(check_gemm(&gemm(3, 4, 5, 3, 5, 4, true, true), 15, 20, 12).is_ok());
        assert!(check_gemm(&gemm(3, 4, 5, 5, 4, 4, true, true), 15, 20, 12).is_err());
        // A column block of a wider matrix: 2 columns starting inside rows of 6.
        assert!(
            check_gemm(
                &gemm(3, 2, 5, 5, 6, 6, false, false),
                15,
                4 * 6 + 2,
                2 * 6 + 2
            )
            .is_ok()
        );
        assert!(check_gemm(&gemm(3, 2, 5, 5, 1, 6, false, false), 15, 30, 14).is_err());
        let mut null = gemm(1, 1, 1, 1, 1, 1, false, false);
        null.c = 0;
        assert!(check_gemm(&null, 1, 1, 1).is_err());
    }

    #[test]
    fn rnn_params_are_checked_against_every_buffer() {
        let e = RnnExtent {
            gates: 4,
            states: 2,
        };
        let p = RnnParams {
            batch: 2,
            hidden: 3,
            time_steps: 5,
            step: 4,
            state_slots: 6,
            tape_width: 15,
            proj: 1,
            recurrent_kernel: 1,
            states: 1,
            tape: 1,
            rec: 1,
            ..Default::default()
        };
        let lens = RnnLens {
            proj: 5 * 2 * 12,
            recurrent_kernel: 3 * 12,
            states: 6 * 2 * 2 * 3,
            tape: 5 * 2 * 15,
            rec: 2 * 12,
            ..Default::default()
        };
        let req = ["proj", "recurrent_kernel", "states", "rec"];
        assert!(check_rnn_params(&p, e, &lens, &req).is_ok());
        assert!(check_rnn_params(&p, e, &RnnLens { tape: 149, ..lens }, &req).is_err());
        assert!(check_rnn_params(&p, e, &RnnLens { states: 71, ..lens }, &req).is_err());
        assert!(check_rnn_params(&p, e, &lens, &["aux"]).is_err());
        assert!(check_rnn_params(&RnnParams { step: 5, ..p }, e, &lens, &req).is_err());
        // A one-step dy is B·H; every-step dy is T·B·H.
        let with_dy = RnnParams { dy: 1, ..p };
        assert!(check_rnn_params(&with_dy, e, &RnnLens { dy: 6, ..lens }, &req).is_ok());
        let every = RnnParams {
            dy_every_step: 1,
            ..with_dy
        };
        assert!(check_rnn_params(&every, e, &RnnLens { dy: 6, ..lens }, &req).is_err());
    }

    #[test]
    fn offsets_stay_inside_the_buffer() {
        let r = Raw::<f64> {
            ptr: 0x1000,
            len: 10,
            marker: PhantomData,
        };
        let o = r.offset(4).unwrap();
        assert_eq!((o.ptr, o.len), (0x1000 + 32, 6));
        assert!(r.offset(11).is_err());
    }
}
