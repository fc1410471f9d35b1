//! Parameter blocks passed by value to the CUDA kernels, mirrored field for field by the
//! structs of the same names in `kernels/rnn.cuh` and `kernels/gemm.cu`.

use cudarc::driver::DeviceRepr;

/// The parameter block of every cell kernel (`kernels/rnn.cuh`, `struct RnnParams`): sizes and
/// activation codes as `i32`, device pointers as `u64` (0 for none). Shapes are documented in
/// the header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RnnParams {
    pub batch: i32,
    pub hidden: i32,
    pub time_steps: i32,
    pub step: i32,
    pub activation: i32,
    pub recurrent_activation: i32,
    pub reset_after: i32,
    pub state_slots: i32,
    pub tape_width: i32,
    pub dy_every_step: i32,
    pub units_per_block: i32,
    pub pad0: i32,
    pub proj: u64,
    pub recurrent_kernel: u64,
    pub recurrent_bias: u64,
    pub states: u64,
    pub tape: u64,
    pub rec: u64,
    pub aux: u64,
    pub dy: u64,
    pub d_state: u64,
    pub d_proj: u64,
    pub d_rec: u64,
    pub rh_all: u64,
    pub barrier: u64,
}

/// `C = alpha·op(A)·op(B) + beta·C`, row-major (`kernels/gemm.cu`, `struct GemmParams`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GemmParams {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub trans_a: i32,
    pub trans_b: i32,
    pub alpha: f64,
    pub beta: f64,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

// SAFETY: plain `#[repr(C)]` data (integers, floats, device addresses as integers) with the
// layout of the CUDA structs; no references or host pointers.
unsafe impl DeviceRepr for RnnParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for GemmParams {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_cuda_structs() {
        // Sizes as stated in the headers and as the PTX declares them (see module.rs tests).
        assert_eq!(size_of::<RnnParams>(), 152);
        assert_eq!(offset_of!(RnnParams, proj), 48);
        assert_eq!(offset_of!(RnnParams, barrier), 144);
        assert_eq!(size_of::<GemmParams>(), 72);
        assert_eq!(offset_of!(GemmParams, alpha), 32);
        assert_eq!(offset_of!(GemmParams, a), 48);
    }
}
