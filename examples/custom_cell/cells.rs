//! Two user-defined cells, written against the public `Cell` trait only.

use fused_rnn::cell::{Cell, Param, StepBackward, StepForward};

/// The cell from the Keras RNN documentation: `new_state = inputs + state`, output = state.
/// Needs `input_size == hidden_size`; no parameters.
#[derive(Debug, Clone)]
pub struct Accumulator {
    pub size: usize,
}

impl Cell<f64> for Accumulator {
    fn input_size(&self) -> usize {
        self.size
    }
    fn hidden_size(&self) -> usize {
        self.size
    }
    fn step_forward(&self, s: StepForward<'_, f64>) {
        for ((n, &x), &h) in s.next.iter_mut().zip(s.x).zip(s.state) {
            *n = x + h;
        }
    }
    fn step_backward(&self, s: StepBackward<'_, f64>, _grads: &mut [Vec<f64>]) {
        s.d_state.copy_from_slice(s.d_next);
        for (dx, &d) in s.dx.iter_mut().zip(s.d_next) {
            *dx += d;
        }
    }
    fn params(&self) -> Vec<Param<'_, f64>> {
        Vec::new()
    }
    fn params_mut(&mut self) -> Vec<&mut [f64]> {
        Vec::new()
    }
}

/// Keras's `MinimalRNNCell` with a `tanh`: `h = tanh(x·kernel + h_prev·recurrent_kernel)`.
///
/// It uses the engine's input projection: `x·kernel` for every step of the sequence is one
/// batched call to `project_inputs`, and its gradient one call to `project_backward`.
#[derive(Debug, Clone)]
pub struct MinimalRnn {
    pub input: usize,
    pub hidden: usize,
    /// `[I, H]`, row-major.
    pub kernel: Vec<f64>,
    /// `[H, H]`, row-major.
    pub recurrent_kernel: Vec<f64>,
}

impl MinimalRnn {
    pub fn new(input: usize, hidden: usize) -> Self {
        let w = |k: usize, scale: f64| (k as f64 * 0.618_034).sin() * scale;
        Self {
            input,
            hidden,
            kernel: (0..input * hidden).map(|k| w(k, 0.5)).collect(),
            recurrent_kernel: (0..hidden * hidden).map(|k| w(k + 7, 0.4)).collect(),
        }
    }
}

impl Cell<f64> for MinimalRnn {
    fn input_size(&self) -> usize {
        self.input
    }
    fn hidden_size(&self) -> usize {
        self.hidden
    }
    fn projection_width(&self) -> usize {
        self.hidden
    }
    fn project_inputs(&self, x: &[f64], proj: &mut [f64]) {
        for (xr, pr) in x.chunks(self.input).zip(proj.chunks_mut(self.hidden)) {
            for (j, p) in pr.iter_mut().enumerate() {
                *p = (0..self.input)
                    .map(|k| xr[k] * self.kernel[k * self.hidden + j])
                    .sum();
            }
        }
    }
    fn step_forward(&self, s: StepForward<'_, f64>) {
        let h = self.hidden;
        for b in 0..s.batch {
            let prev = &s.state[b * h..(b + 1) * h];
            for j in 0..h {
                let rec: f64 = (0..h)
                    .map(|k| prev[k] * self.recurrent_kernel[k * h + j])
                    .sum();
                s.next[b * h + j] = (s.proj[b * h + j] + rec).tanh();
            }
        }
    }
    fn step_backward(&self, s: StepBackward<'_, f64>, grads: &mut [Vec<f64>]) {
        let h = self.hidden;
        for b in 0..s.batch {
            let rows = b * h..(b + 1) * h;
            for j in rows.clone() {
                s.d_proj[j] = s.d_next[j] * (1.0 - s.next[j] * s.next[j]);
            }
            let (d_pre, prev) = (&s.d_proj[rows.clone()], &s.state[rows.clone()]);
            for k in 0..h {
                s.d_state[b * h + k] = (0..h)
                    .map(|j| self.recurrent_kernel[k * h + j] * d_pre[j])
                    .sum();
                for j in 0..h {
                    grads[1][k * h + j] += prev[k] * d_pre[j];
                }
            }
        }
    }
    fn project_backward(&self, x: &[f64], d_proj: &[f64], dx: &mut [f64], grads: &mut [Vec<f64>]) {
        let (i, h) = (self.input, self.hidden);
        for ((xr, dp), dxr) in x.chunks(i).zip(d_proj.chunks(h)).zip(dx.chunks_mut(i)) {
            for k in 0..i {
                dxr[k] += (0..h).map(|j| self.kernel[k * h + j] * dp[j]).sum::<f64>();
                for j in 0..h {
                    grads[0][k * h + j] += xr[k] * dp[j];
                }
            }
        }
    }
    fn params(&self) -> Vec<Param<'_, f64>> {
        vec![
            Param {
                name: "kernel",
                shape: [self.input, self.hidden],
                data: &self.kernel,
            },
            Param {
                name: "recurrent_kernel",
                shape: [self.hidden, self.hidden],
                data: &self.recurrent_kernel,
            },
        ]
    }
    fn params_mut(&mut self) -> Vec<&mut [f64]> {
        vec![&mut self.kernel, &mut self.recurrent_kernel]
    }
}
