//! One step at a time, keeping the state between calls (real-time use).

use crate::cell::{Cell, Part, StepForward};
use crate::error::{Result, check_len, check_nonzero, checked_size, try_filled};
use crate::real::Real;

/// A batch of `B` sequences advanced one step per call.
///
/// Every buffer is allocated by [`Stream::new`]; [`Stream::step`] allocates nothing for
/// batches of up to 4 rows (larger batches project their inputs through the matrix product,
/// whose packing buffers are allocated per call).
#[derive(Debug, Clone)]
pub struct Stream<'c, T, C: ?Sized> {
    cell: &'c C,
    batch: usize,
    state: Vec<T>,
    next: Vec<T>,
    proj: Vec<T>,
    scratch: Vec<T>,
    /// Steps taken so far (see [`StepForward::step`]).
    steps: usize,
}

impl<'c, T: Real, C: Cell<T> + ?Sized> Stream<'c, T, C> {
    /// A stream of `batch` sequences starting from the zero state.
    pub fn new(cell: &'c C, batch: usize) -> Result<Self> {
        check_nonzero("batch", batch)?;
        // Backend detection reads the environment once and the cell may pack its weights (both
        // allocate): do it here, not in `step`.
        crate::cpu::active_backend();
        cell.prepare();
        check_nonzero("input_size", cell.input_size())?;
        check_nonzero("hidden_size", cell.hidden_size())?;
        let state_len = checked_size("state", &[cell.state_count(), batch, cell.hidden_size()])?;
        Ok(Self {
            cell,
            batch,
            state: try_filled("state", state_len, T::ZERO)?,
            next: try_filled("state", state_len, T::ZERO)?,
            proj: try_filled(
                "proj",
                checked_size("proj", &[batch, cell.projection_width()])?,
                T::ZERO,
            )?,
            scratch: try_filled(
                "scratch",
                checked_size("scratch", &[batch, cell.scratch_width()])?,
                T::ZERO,
            )?,
            steps: 0,
        })
    }

    /// Advances every sequence by one step: `x` is `[B, I]`; returns the outputs `[B, H]`.
    pub fn step(&mut self, x: &[T]) -> Result<&[T]> {
        check_len("x", x.len(), self.batch * self.cell.input_size())?;
        if !self.proj.is_empty() {
            self.cell.project_inputs_inference(x, &mut self.proj);
        }
        self.cell.step_forward(StepForward {
            batch: self.batch,
            x,
            proj: &self.proj,
            row_stride: 1,
            state: &self.state,
            next: &mut self.next,
            scratch: &mut self.scratch,
            tape: &mut [],
            part: Part::WHOLE,
            step: self.steps,
        });
        self.steps = self.steps.wrapping_add(1);
        std::mem::swap(&mut self.state, &mut self.next);
        Ok(&self.state[..self.batch * self.cell.hidden_size()])
    }

    /// The current state `[S, B, H]`.
    pub fn state(&self) -> &[T] {
        &self.state
    }

    /// Replaces the current state (`[S, B, H]`).
    pub fn set_state(&mut self, state: &[T]) -> Result<()> {
        check_len("state", state.len(), self.state.len())?;
        self.state.copy_from_slice(state);
        Ok(())
    }

    /// Back to the zero state.
    pub fn reset(&mut self) {
        self.state.fill(T::ZERO);
    }
}
