//! Recurrent weights packed once into the layout of the register-fused step kernels, and
//! those kernels.
//!
//! [`PackedRecurrent`] stores `recurrent_kernel [H, G·H]` as tiles of [`TILE_UNITS`] hidden
//! units: tile `τ` holds, for every input row `k` and every gate `g`, the 16 weights
//! `U[k, g·H + 16τ .. g·H + 16τ + 16]` contiguously (zero-padded past `H`). A step streams
//! one tile front to back, keeps the `G` gate accumulators of its 16 units in registers over
//! all of `k`, and applies bias, input projection, activations and the state update to them
//! before they ever reach memory. Tiles are independent, so a tile range is also the unit of
//! work when a step is split across threads.

use super::math;
use super::simd::SimdF32;
use crate::activation::Activation;
use crate::cell::gru::GruKind;
use crate::cell::lstm::LstmKind;
use crate::cell::simple_rnn::SimpleRnnKind;

/// Hidden units per tile: one AVX-512 register of `f32`, two AVX2 registers.
pub const TILE_UNITS: usize = 16;

/// Recurrent weights and bias in tile order (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRecurrent {
    hidden: usize,
    gates: usize,
    /// `[tiles][H][G][16]`.
    weights: Vec<f32>,
    /// `[tiles][G][16]`, zeros without a recurrent bias.
    bias: Vec<f32>,
}

impl PackedRecurrent {
    /// Packs `recurrent_kernel [H, G·H]` and `recurrent_bias [G·H]` (empty: none).
    pub(crate) fn new(recurrent_kernel: &[f32], recurrent_bias: &[f32], hidden: usize, gates: usize) -> Self {
        let tiles = hidden.div_ceil(TILE_UNITS);
        let gh = gates * hidden;
        let mut weights = vec![0.0; tiles * hidden * gates * TILE_UNITS];
        let mut bias = vec![0.0; tiles * gates * TILE_UNITS];
        for tile in 0..tiles {
            let units = tile * TILE_UNITS..((tile + 1) * TILE_UNITS).min(hidden);
            for g in 0..gates {
                for (u, j) in units.clone().enumerate() {
                    if !recurrent_bias.is_empty() {
                        bias[(tile * gates + g) * TILE_UNITS + u] = recurrent_bias[g * hidden + j];
                    }
                    for k in 0..hidden {
                        let at = ((tile * hidden + k) * gates + g) * TILE_UNITS + u;
                        weights[at] = recurrent_kernel[k * gh + g * hidden + j];
                    }
                }
            }
        }
        Self { hidden, gates, weights, bias }
    }

    /// Number of tiles, `⌈H / 16⌉`.
    pub fn tiles(&self) -> usize {
        self.hidden.div_ceil(TILE_UNITS)
    }

    /// Bytes the packed weights occupy (what one step streams per batch row).
    pub fn weight_bytes(&self) -> usize {
        self.weights.len() * size_of::<f32>()
    }
}

/// `f(x)` on a register.
#[inline(always)]
fn activate<S: SimdF32>(s: S, act: Activation, x: S::V) -> S::V {
    match act {
        Activation::Tanh => math::tanh(s, x),
        Activation::Sigmoid => math::sigmoid(s, x),
        Activation::Relu => math::relu(s, x),
        Activation::HardSigmoid => math::hard_sigmoid(s, x),
        Activation::Linear => x,
    }
}

/// The units `[u0, u0 + n)` of a row, read or written a register at a time through a padded
/// buffer when the tile is partial.
struct Lanes {
    u0: usize,
    n: usize,
}

impl Lanes {
    #[inline(always)]
    fn load<S: SimdF32>(&self, s: S, row: &[f32], v: usize) -> S::V {
        let (at, l) = (self.u0 + v * S::LANES, S::LANES);
        if self.n == TILE_UNITS {
            return s.load(&row[at..at + l]);
        }
        let mut buf = [0.0f32; TILE_UNITS];
        let take = self.n.saturating_sub(v * l).min(l);
        buf[..take].copy_from_slice(&row[at..at + take]);
        s.load(&buf[..l])
    }
    #[inline(always)]
    fn store<S: SimdF32>(&self, s: S, row: &mut [f32], v: usize, x: S::V) {
        let (at, l) = (self.u0 + v * S::LANES, S::LANES);
        if self.n == TILE_UNITS {
            return s.store(&mut row[at..at + l], x);
        }
        let mut buf = [0.0f32; TILE_UNITS];
        s.store(&mut buf[..l], x);
        let take = self.n.saturating_sub(v * l).min(l);
        row[at..at + take].copy_from_slice(&buf[..take]);
    }
}

/// What the packed kernels need of one step, for rows `b < batch` and tiles `tiles`.
///
/// Row-major buffers as in [`crate::cell::StepForward`]: `proj [B, G·H]`, `h_prev`, `h_next`,
/// `c_prev`, `c_next` `[B, H]` (`c` empty except for LSTM), `tape [B, tape_width]` or empty.
pub(crate) struct PackedStep<'a> {
    pub batch: usize,
    pub proj: &'a [f32],
    pub h_prev: &'a [f32],
    pub c_prev: &'a [f32],
    pub h_next: &'a mut [f32],
    pub c_next: &'a mut [f32],
    pub tape: &'a mut [f32],
    pub tiles: std::ops::Range<usize>,
}

/// Gate accumulators of one tile and row: `acc[g][v] = bias + h_prev · U` over the tile's
/// units, `v` counting registers of the 16 units.
#[inline(always)]
fn accumulate<S: SimdF32, const G: usize>(s: S, p: &PackedRecurrent, tile: usize, h_prev: &[f32]) -> [[S::V; 16]; G] {
    let regs = TILE_UNITS / S::LANES;
    let h = p.hidden;
    let mut acc = [[s.splat(0.0); 16]; G];
    let bias = &p.bias[tile * G * TILE_UNITS..(tile + 1) * G * TILE_UNITS];
    for (g, ag) in acc.iter_mut().enumerate() {
        for (v, a) in ag.iter_mut().enumerate().take(regs) {
            *a = s.load(&bias[g * TILE_UNITS + v * S::LANES..]);
        }
    }
    let panel = &p.weights[tile * h * G * TILE_UNITS..(tile + 1) * h * G * TILE_UNITS];
    for (k, &hk) in h_prev[..h].iter().enumerate() {
        let hk = s.splat(hk);
        let row = &panel[k * G * TILE_UNITS..(k + 1) * G * TILE_UNITS];
        for (g, ag) in acc.iter_mut().enumerate() {
            for (v, a) in ag.iter_mut().enumerate().take(regs) {
                // SAFETY: g·16 + v·LANES + LANES ≤ G·16 = row.len().
                *a = s.fma(hk, unsafe { s.load_ptr(row.as_ptr().add(g * TILE_UNITS + v * S::LANES)) }, *a);
            }
        }
    }
    acc
}

/// LSTM forward over the step's tiles (see [`crate::cell::lstm`] for the maths and the record).
#[inline(always)]
pub(crate) fn lstm_fwd<S: SimdF32>(s: S, kind: &LstmKind, p: &PackedRecurrent, st: PackedStep<'_>) {
    let (h, regs) = (p.hidden, TILE_UNITS / S::LANES);
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    for b in 0..st.batch {
        let px = &st.proj[b * 4 * h..(b + 1) * 4 * h];
        let rows = b * h..(b + 1) * h;
        for tile in st.tiles.clone() {
            let acc = accumulate::<S, 4>(s, p, tile, &st.h_prev[rows.clone()]);
            let lanes = Lanes { u0: tile * TILE_UNITS, n: (h - tile * TILE_UNITS).min(TILE_UNITS) };
            for v in 0..regs {
                if v * S::LANES >= lanes.n {
                    break;
                }
                let pre = |g: usize| s.add(acc[g][v], lanes.load(s, &px[g * h..], v));
                let (i, f) = (activate(s, ra, pre(0)), activate(s, ra, pre(1)));
                let (g, o) = (activate(s, act, pre(2)), activate(s, ra, pre(3)));
                let c = s.fma(f, lanes.load(s, &st.c_prev[rows.clone()], v), s.mul(i, g));
                let act_c = activate(s, act, c);
                lanes.store(s, &mut st.c_next[rows.clone()], v, c);
                lanes.store(s, &mut st.h_next[rows.clone()], v, s.mul(o, act_c));
                if !st.tape.is_empty() {
                    let t = &mut st.tape[b * 5 * h..(b + 1) * 5 * h];
                    for (k, x) in [i, f, g, o, act_c].into_iter().enumerate() {
                        lanes.store(s, &mut t[k * h..], v, x);
                    }
                }
            }
        }
    }
}

/// Reset-after GRU forward over the step's tiles.
#[inline(always)]
pub(crate) fn gru_fwd<S: SimdF32>(s: S, kind: &GruKind, p: &PackedRecurrent, st: PackedStep<'_>) {
    debug_assert!(kind.reset_after);
    let (h, regs) = (p.hidden, TILE_UNITS / S::LANES);
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    for b in 0..st.batch {
        let px = &st.proj[b * 3 * h..(b + 1) * 3 * h];
        let rows = b * h..(b + 1) * h;
        for tile in st.tiles.clone() {
            let acc = accumulate::<S, 3>(s, p, tile, &st.h_prev[rows.clone()]);
            let lanes = Lanes { u0: tile * TILE_UNITS, n: (h - tile * TILE_UNITS).min(TILE_UNITS) };
            for v in 0..regs {
                if v * S::LANES >= lanes.n {
                    break;
                }
                let z = activate(s, ra, s.add(acc[0][v], lanes.load(s, &px[..], v)));
                let r = activate(s, ra, s.add(acc[1][v], lanes.load(s, &px[h..], v)));
                let cand = activate(s, act, s.fma(r, acc[2][v], lanes.load(s, &px[2 * h..], v)));
                let hp = lanes.load(s, &st.h_prev[rows.clone()], v);
                // z·h_prev + (1 − z)·h̃ = h̃ + z·(h_prev − h̃)
                lanes.store(s, &mut st.h_next[rows.clone()], v, s.fma(z, s.sub(hp, cand), cand));
                if !st.tape.is_empty() {
                    let t = &mut st.tape[b * 4 * h..(b + 1) * 4 * h];
                    for (k, x) in [z, r, cand, acc[2][v]].into_iter().enumerate() {
                        lanes.store(s, &mut t[k * h..], v, x);
                    }
                }
            }
        }
    }
}

/// SimpleRNN forward over the step's tiles.
#[inline(always)]
pub(crate) fn simple_rnn_fwd<S: SimdF32>(s: S, kind: &SimpleRnnKind, p: &PackedRecurrent, st: PackedStep<'_>) {
    let (h, regs) = (p.hidden, TILE_UNITS / S::LANES);
    for b in 0..st.batch {
        let rows = b * h..(b + 1) * h;
        for tile in st.tiles.clone() {
            let acc = accumulate::<S, 1>(s, p, tile, &st.h_prev[rows.clone()]);
            let lanes = Lanes { u0: tile * TILE_UNITS, n: (h - tile * TILE_UNITS).min(TILE_UNITS) };
            for v in 0..regs {
                if v * S::LANES >= lanes.n {
                    break;
                }
                let y = activate(s, kind.activation, s.add(acc[0][v], lanes.load(s, &st.proj[rows.clone()], v)));
                lanes.store(s, &mut st.h_next[rows.clone()], v, y);
            }
        }
    }
}
