//! The C ABI with arbitrary configurations, enum values, sizes, null pointers, short, long,
//! misaligned and overlapping buffers: every call returns a status (a panic aborts the
//! fuzzer), a failure leaves a message, and a successful forward is repeatable bit for bit.
//!
//! Buffers always honour the one contract the library cannot check — a non-null pointer is
//! valid for the length passed with it — everything else is arbitrary.
//!
//! `cargo fuzz run --sanitizer none capi -- -max_total_time=60`

use std::ffi::CStr;
use std::ptr;

use arbitrary::Unstructured;
use fused_rnn::capi::*;

/// Backing store for the buffers of one call (8-byte aligned, zero-filled).
struct Arena {
    blocks: Vec<Vec<u64>>,
}

impl Arena {
    /// A buffer for `len` elements of `el` bytes, or null / misaligned / an alias of an
    /// earlier buffer, as the fuzzer decides. Returns the pointer and the length to pass.
    fn buffer(
        &mut self,
        u: &mut Unstructured<'_>,
        want: usize,
        el: usize,
    ) -> arbitrary::Result<(*mut u8, usize)> {
        const MAX: usize = 1 << 16;
        let len = match u.int_in_range(0..=15)? {
            0 => return Ok((ptr::null_mut(), 0)),
            1 => return Ok((ptr::null_mut(), u.arbitrary()?)),
            2 => want.saturating_add(u.int_in_range(1..=3)?),
            3 => want.saturating_sub(u.int_in_range(1..=3)?),
            4 => u.int_in_range(0..=64)?,
            _ => want,
        };
        if len > MAX {
            // Too large to back with memory: pass it with a null pointer (must be rejected).
            return Ok((ptr::null_mut(), len));
        }
        let bytes = len * el;
        if !self.blocks.is_empty() && u.ratio(1, 16)? {
            // An alias into an earlier buffer, when it is long enough.
            let k = u.int_in_range(0..=self.blocks.len() - 1)?;
            let b = &mut self.blocks[k];
            if b.len() * 8 >= bytes {
                return Ok((b.as_mut_ptr().cast(), len));
            }
        }
        let misalign = u.ratio(1, 16)?;
        let mut block = vec![0u64; (bytes + 1).div_ceil(8) + 1];
        let fill: u8 = u.arbitrary()?;
        let p: *mut u8 = block.as_mut_ptr().cast();
        // SAFETY: the block has at least `bytes + 1` bytes.
        unsafe { ptr::write_bytes(p, fill % 4 * 16, bytes + 1) };
        self.blocks.push(block);
        // SAFETY: one byte in is still inside the block, which holds `bytes + 1` bytes.
        Ok((if misalign { unsafe { p.add(1) } } else { p }, len))
    }
    fn input(
        &mut self,
        u: &mut Unstructured<'_>,
        want: usize,
        el: usize,
    ) -> arbitrary::Result<FrnnTensor> {
        let (p, len) = self.buffer(u, want, el)?;
        Ok(FrnnTensor {
            data: p.cast_const().cast(),
            len,
        })
    }
    fn output(
        &mut self,
        u: &mut Unstructured<'_>,
        want: usize,
        el: usize,
    ) -> arbitrary::Result<FrnnTensorMut> {
        let (p, len) = self.buffer(u, want, el)?;
        Ok(FrnnTensorMut {
            data: p.cast(),
            len,
        })
    }
}

fn checked(status: FrnnStatus) -> FrnnStatus {
    if status != FrnnStatus::Ok {
        // SAFETY: the library returns a NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(frnn_last_error_message()) };
        assert!(!msg.to_bytes().is_empty(), "{status:?} without a message");
    }
    status
}

fn size(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(match u.int_in_range(0..=12)? {
        0 => 0,
        1 => u.arbitrary()?,
        2 => 1 << u.int_in_range(20..=40)?,
        n => n as usize,
    })
}

fn small_enum(u: &mut Unstructured<'_>, n: u32) -> arbitrary::Result<u32> {
    Ok(if u.ratio(1, 16)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0..=n - 1)?
    })
}

fn run_config(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let config = FrnnRnnConfig {
        cell: small_enum(u, 3)?,
        activation: small_enum(u, 5)?,
        recurrent_activation: small_enum(u, 5)?,
        gru_reset_after: small_enum(u, 2)?,
        dtype: small_enum(u, 2)?,
        use_bias: small_enum(u, 2)?,
        input_size: size(u)?,
        hidden_size: size(u)?,
        num_layers: if u.ratio(1, 8)? { size(u)? } else { 1 },
        num_directions: if u.ratio(1, 8)? { size(u)? } else { 1 },
    };
    let mut desc = ptr::null_mut();
    let config_ptr: *const FrnnRnnConfig = if u.ratio(1, 32)? {
        ptr::null()
    } else {
        &config
    };
    // SAFETY: valid or null pointers.
    if checked(unsafe { frnn_rnn_desc_create(config_ptr, &mut desc) }) != FrnnStatus::Ok {
        assert!(desc.is_null());
        return Ok(());
    }
    let el = if config.dtype == 0 { 4 } else { 8 };
    let result = calls(u, desc, el);
    // SAFETY: created above, destroyed once.
    unsafe { frnn_rnn_desc_destroy(desc) };
    result
}

fn calls(u: &mut Unstructured<'_>, desc: *mut FrnnRnnDesc, el: usize) -> arbitrary::Result<()> {
    let seq = FrnnSeqConfig {
        time_steps: size(u)?,
        batch: size(u)?,
        layout: small_enum(u, 2)?,
        go_backwards: small_enum(u, 2)?,
        return_sequences: small_enum(u, 2)?,
        threads: if u.ratio(1, 8)? {
            size(u)?
        } else {
            u.int_in_range(1..=3)?
        },
    };
    let mut n = FrnnSizes::default();
    // SAFETY: valid pointers.
    let have_sizes = checked(unsafe { frnn_get_sizes(desc, &seq, &mut n) }) == FrnnStatus::Ok;
    if !have_sizes {
        // SAFETY: valid pointer.
        checked(unsafe { frnn_get_weight_space_size(desc, &mut n.weight_space) });
    }
    let mut arena = Arena { blocks: Vec::new() };
    let format = small_enum(u, 4)?;
    let mut lens = [0usize; 4];
    // SAFETY: `lens` holds 4 elements.
    checked(unsafe { frnn_get_weight_tensor_lens(desc, format, 0, lens.as_mut_ptr()) });
    let src = FrnnWeightTensors {
        input_weights: arena.input(u, lens[0], el)?,
        recurrent_weights: arena.input(u, lens[1], el)?,
        input_bias: arena.input(u, lens[2], el)?,
        recurrent_bias: arena.input(u, lens[3], el)?,
    };
    let ws = arena.output(u, n.weight_space, el)?;
    let (layer, direction) = (small_enum(u, 1)? as usize, small_enum(u, 1)? as usize);
    // SAFETY: every non-null pointer is valid for its length.
    checked(unsafe { frnn_set_weights(desc, format, layer, direction, &src, ws) });
    let dst = FrnnWeightTensorsMut {
        input_weights: arena.output(u, lens[0], el)?,
        recurrent_weights: arena.output(u, lens[1], el)?,
        input_bias: arena.output(u, lens[2], el)?,
        recurrent_bias: arena.output(u, lens[3], el)?,
    };
    let ws_in = FrnnTensor {
        data: ws.data.cast_const(),
        len: ws.len,
    };
    // SAFETY: as above.
    checked(unsafe { frnn_get_weights(desc, format, layer, direction, ws_in, &dst) });
    // SAFETY: as above.
    checked(unsafe { frnn_get_weight_grads(desc, format, layer, direction, ws_in, &dst) });
    if !have_sizes {
        return Ok(());
    }
    let x = arena.input(u, n.x, el)?;
    let hx = arena.input(u, n.state, el)?;
    let y = arena.output(u, n.y, el)?;
    let hy = arena.output(u, n.state, el)?;
    let work = arena.output(u, n.workspace, el)?;
    let reserve = arena.output(u, n.reserve, el)?;
    let seq_ptr: *const FrnnSeqConfig = if u.ratio(1, 32)? { ptr::null() } else { &seq };
    // SAFETY: as above.
    let st = checked(unsafe {
        frnn_forward_training(desc, seq_ptr, ws_in, x, hx, y, hy, work, reserve)
    });
    if st == FrnnStatus::Ok && !y.data.is_null() {
        // The same call again gives the same bits.
        let first: Vec<u8> = {
            // SAFETY: `y` is valid for `y.len` elements of `el` bytes.
            unsafe { std::slice::from_raw_parts(y.data.cast::<u8>(), y.len * el) }.to_vec()
        };
        // SAFETY: as above.
        let again = unsafe { frnn_forward_inference(desc, seq_ptr, ws_in, x, hx, y, hy, work) };
        assert_eq!(again, FrnnStatus::Ok);
        // SAFETY: as above.
        let second = unsafe { std::slice::from_raw_parts(y.data.cast::<u8>(), y.len * el) };
        assert!(first == second, "inference differs from training forward");
    }
    let r_in = FrnnTensor {
        data: reserve.data.cast_const(),
        len: reserve.len,
    };
    let dy = arena.input(u, n.y, el)?;
    let dhy = arena.input(u, n.state, el)?;
    let dx = arena.output(u, n.x, el)?;
    let dhx = arena.output(u, n.state, el)?;
    let dw = arena.output(u, n.weight_space, el)?;
    let mode = small_enum(u, 2)?;
    // SAFETY: as above.
    unsafe {
        match u.int_in_range(0..=2)? {
            0 => checked(frnn_backward(
                desc, seq_ptr, ws_in, x, hx, r_in, dy, dhy, dx, dhx, dw, mode, work,
            )),
            1 => checked(frnn_backward_data(
                desc, seq_ptr, ws_in, x, hx, r_in, dy, dhy, dx, dhx, work,
            )),
            _ => checked(frnn_backward_weights(
                desc, seq_ptr, ws_in, x, hx, r_in, dy, dhy, dw, mode, work,
            )),
        };
    }
    Ok(())
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run_config(&mut u);
}
