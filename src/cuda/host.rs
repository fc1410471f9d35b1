//! The device engine over host buffers: uploads the inputs, runs [`super::forward`],
//! [`super::forward_train`] or [`super::bptt`] on the given stream, waits for it and copies
//! the results back. Signatures and results mirror [`crate::seq`], so the two backends can be
//! swapped (and compared) line for line; the training record has the CPU engine's layout.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::{CudaReal, DeviceCell, driver_error};
use crate::error::{Error, Result, check_len};
use crate::seq::{Gradients, Output, SeqSpec};

fn upload<T: CudaReal>(stream: &Arc<CudaStream>, v: &[T]) -> Result<CudaSlice<T>> {
    // A zero-length allocation has no address: keep one element at least.
    if v.is_empty() {
        return stream
            .alloc_zeros::<T>(1)
            .map_err(driver_error("allocating device memory"));
    }
    stream
        .clone_htod(v)
        .map_err(driver_error("copying to the device"))
}

fn download<T: CudaReal>(stream: &Arc<CudaStream>, v: &CudaSlice<T>) -> Result<Vec<T>> {
    stream
        .clone_dtoh(v)
        .map_err(driver_error("copying from the device"))
}

fn wait(stream: &CudaStream) -> Result<()> {
    stream
        .synchronize()
        .map_err(driver_error("waiting for the stream"))
}

/// [`crate::seq::forward`] on the device.
pub fn forward<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
) -> Result<Output<T>> {
    let sz = super::run::Sizes::new(cell, spec)?;
    check_len("x", x.len(), sz.x_len)?;
    if let Some(s) = initial_state {
        check_len("initial_state", s.len(), sz.state_len)?;
    }
    cell.device.check_stream(stream)?;
    let xd = upload(stream, x)?;
    let init = initial_state.map(|s| upload(stream, s)).transpose()?;
    let out = super::forward(cell, stream, spec, &xd, init.as_ref())?;
    let result = Output {
        y: download(stream, &out.y)?,
        final_state: download(stream, &out.final_state)?,
    };
    wait(stream)?;
    Ok(result)
}

/// [`crate::seq::forward_train`] on the device: the record is computed on the device and
/// copied into the first [`super::tape_len`] elements of `tape`.
pub fn forward_train<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
    tape: &mut [T],
) -> Result<Output<T>> {
    let sz = super::run::Sizes::new(cell, spec)?;
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
    cell.device.check_stream(stream)?;
    let xd = upload(stream, x)?;
    let init = initial_state.map(|s| upload(stream, s)).transpose()?;
    let mut tape_d = stream
        .alloc_zeros::<T>(sz.tape_len)
        .map_err(driver_error("allocating device memory"))?;
    let out = super::forward_train(cell, stream, spec, &xd, init.as_ref(), &mut tape_d)?;
    let result = Output {
        y: download(stream, &out.y)?,
        final_state: download(stream, &out.final_state)?,
    };
    let record = download(stream, &tape_d)?;
    wait(stream)?;
    tape[..sz.tape_len].copy_from_slice(&record);
    Ok(result)
}

/// [`crate::seq::bptt`] on the device, over a record in the CPU engine's layout (written by
/// [`forward_train`] here or by [`crate::seq::forward_train`]).
#[allow(clippy::too_many_arguments)]
pub fn bptt<T: CudaReal>(
    cell: &DeviceCell<T>,
    stream: &Arc<CudaStream>,
    spec: &SeqSpec,
    x: &[T],
    initial_state: Option<&[T]>,
    tape: &[T],
    dy: &[T],
    d_final_state: Option<&[T]>,
) -> Result<Gradients<T>> {
    let sz = super::run::Sizes::new(cell, spec)?;
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
    cell.device.check_stream(stream)?;
    let xd = upload(stream, x)?;
    let init = initial_state.map(|s| upload(stream, s)).transpose()?;
    let tape_d = upload(stream, &tape[..sz.tape_len])?;
    let dyd = upload(stream, dy)?;
    let dfs = d_final_state.map(|s| upload(stream, s)).transpose()?;
    let g = super::bptt(
        cell,
        stream,
        spec,
        &xd,
        init.as_ref(),
        &tape_d,
        &dyd,
        dfs.as_ref(),
    )?;
    let result = Gradients {
        dx: download(stream, &g.dx)?,
        d_initial_state: download(stream, &g.d_initial_state)?,
        params: g
            .params
            .iter()
            .map(|p| download(stream, p))
            .collect::<Result<_>>()?,
    };
    wait(stream)?;
    Ok(result)
}
