//! Recurrent weights packed once into the layout of the register-fused step kernels, and
//! those kernels.
//!
//! [`PackedRecurrent`] stores `recurrent_kernel [H, G·H]` as tiles of [`TILE_UNITS`] hidden
//! units: tile `τ` holds, for every input row `k` and every gate `g`, the 16 weights
//! `U[k, g·H + 16τ .. g·H + 16τ + 16]` contiguously (zero-padded past `H`). A step streams
//! one tile front to back for a block of batch rows at a time ([`PanelElem::row_block`]),
//! keeps the `G` gate accumulators of its 16 units for every row of the block in registers over
//! all of `k`, and applies bias, input projection, activations and the state update to them
//! before they ever reach memory. Tiles are independent, so a tile range is also the unit of
//! work when a step is split across threads. BPTT's state gradient runs the same scheme on the
//! transposed kernel ([`recurrent_grad`]).
//!
//! The input projection of a whole sequence runs the same register scheme over the input
//! kernel, packed once into column panels ([`PackedProjection`], [`project`]).
//!
//! Every panel starts on a cache line ([`CacheAligned`]) and its rows are whole multiples of
//! 64 bytes, so no register load of the weights straddles two lines (with the allocator's
//! 16-byte alignment, three in four did: B = 1 GRU and SimpleRNN steps measured up to 1.2x
//! faster aligned).

use std::sync::OnceLock;

use super::aligned::CacheAligned;
use super::math;
use super::simd::SimdF32;
use crate::activation::Activation;
use crate::cell::gru::GruKind;
use crate::cell::lstm::LstmKind;
use crate::cell::simple_rnn::SimpleRnnKind;
use crate::cell::{StepForward, step_row};

/// Hidden units per tile: one AVX-512 register of `f32`, two AVX2 registers.
pub const TILE_UNITS: usize = 16;

/// Tiles a one-row pass runs at once where the panel type groups them
/// ([`PanelElem::groups_tiles`]).
const TILE_GROUP: usize = 3;

/// Recurrent weights and bias in tile order (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct PackedRecurrent {
    hidden: usize,
    /// `[tiles][H][G][16]`.
    weights: CacheAligned<f32>,
    /// The same weights rounded to bfloat16 (to nearest, ties to even), built on first use by
    /// an inference step that asked for them.
    weights_bf16: OnceLock<CacheAligned<u16>>,
    /// `[tiles][G][16]`, zeros without a recurrent bias.
    bias: CacheAligned<f32>,
    /// `recurrent_kernelᵀ` in tiles of 16 of its `H` columns, `[tiles][G·H][16]`, built on first
    /// use by a backward step (see [`recurrent_grad`]).
    transposed: OnceLock<CacheAligned<f32>>,
}

/// An element type of packed panels, with the tile accumulation over its layout: `f32` panels
/// `[tiles][H][G][16]`, or bfloat16 panels `[tiles][⌈H/2⌉][G][16][2]` that pair rows `2m` and
/// `2m + 1` in one 32-bit lane, so one load and two bit operations widen two weights exactly.
pub(crate) trait PanelElem: Copy {
    /// Batch rows one pass over a tile's panel serves on an ISA of `lanes` `f32` lanes, for
    /// `gates` gates: as many as leave the accumulators (`rows · gates · 16 / lanes`
    /// registers), the weights of one step of the reduction and the broadcast states in
    /// registers (32 with AVX-512, 16 with AVX2).
    fn row_block(lanes: usize, gates: usize) -> usize;

    /// `acc[r][g][v] += Σ_k h_prev[r][k] · U[k, g·H + units of register v]` over the panel of
    /// one tile for `R` batch rows, `panel` holding exactly that tile; every row of `h_prev`
    /// has the panel's reduction length. With `prefetch`, the pass asks for the panel
    /// [`PREFETCH_BYTES`] ahead of where it reads (see [`streams_from_memory`]).
    #[cfg_attr(not(unoptimized), inline(always))]
    fn accumulate<S: SimdF32, const G: usize, const R: usize>(
        s: S,
        panel: &[Self],
        h_prev: [&[f32]; R],
        acc: &mut [[S::X16; G]; R],
        prefetch: bool,
    ) {
        // Two instantiations, so that the pass without prefetches carries no trace of them.
        if prefetch {
            Self::pass::<S, G, R, true>(s, panel, h_prev, acc)
        } else {
            Self::pass::<S, G, R, false>(s, panel, h_prev, acc)
        }
    }

    /// [`PanelElem::accumulate`], prefetching when `PF`.
    fn pass<S: SimdF32, const G: usize, const R: usize, const PF: bool>(
        s: S,
        panel: &[Self],
        h_prev: [&[f32]; R],
        acc: &mut [[S::X16; G]; R],
    );

    /// Whether one-row passes on an ISA of `lanes` lanes for `gates` gates serve
    /// [`TILE_GROUP`] tiles at once ([`PanelElem::accumulate_tiles`]).
    #[cfg_attr(not(unoptimized), inline(always))]
    fn groups_tiles(lanes: usize, gates: usize) -> bool {
        // SimpleRNN on AVX-512: three tiles of eight accumulators, 24 of the 32 registers
        // (B = 1, `benches/ab.py`, H = 64, 256, 512: `f32` 1.05x, 1.09x, 1.10x; bfloat16
        // 1.02x, 1.12x, 1.10x). LSTM and GRU, whose passes already run four or three gates'
        // chains, measured 0.89–1.01x grouped by two or three (`f32`, H = 64 to 512); AVX2's
        // 16 registers hold one tile's accumulators.
        lanes == 16 && gates == 1
    }

    /// [`PanelElem::accumulate`] for one batch row over the `NT` tiles of `panels` at once,
    /// `acc[t]` the accumulators of tile `t`, each summed in exactly the order of a pass over
    /// its tile alone (so results do not depend on how tiles are grouped).
    #[cfg_attr(not(unoptimized), inline(always))]
    fn accumulate_tiles<S: SimdF32, const G: usize, const NT: usize>(
        s: S,
        panels: [&[Self]; NT],
        h_prev: &[f32],
        acc: &mut [[[S::X16; G]; 1]; NT],
        prefetch: bool,
    ) {
        if prefetch {
            Self::pass_tiles::<S, G, NT, true>(s, panels, h_prev, acc)
        } else {
            Self::pass_tiles::<S, G, NT, false>(s, panels, h_prev, acc)
        }
    }

    /// [`PanelElem::accumulate_tiles`], prefetching when `PF`: the reduction rows of the `NT`
    /// tiles interleaved, each tile on the accumulator sets of a one-row
    /// [`PanelElem::pass`] over it alone.
    fn pass_tiles<S: SimdF32, const G: usize, const NT: usize, const PF: bool>(
        s: S,
        panels: [&[Self]; NT],
        h_prev: &[f32],
        acc: &mut [[[S::X16; G]; 1]; NT],
    );
}

impl PanelElem for f32 {
    fn row_block(lanes: usize, gates: usize) -> usize {
        match (lanes, gates) {
            // Four rows of LSTM ran as fast as six (16 and 64 rows of 128 to 1024 units), and
            // split a batch of 16 evenly across two threads (see `cpu::row_parts`).
            (16, 4) => 4,
            (16, _) => 8,
            (8, 4) => 1,
            (8, 3) => 2,
            _ => 4,
        }
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn pass<S: SimdF32, const G: usize, const R: usize, const PF: bool>(
        s: S,
        panel: &[f32],
        h_prev: [&[f32]; R],
        acc: &mut [[S::X16; G]; R],
    ) {
        let len = h_prev[0].len();
        let h_prev = h_prev.map(|r| &r[..len]);
        assert!(panel.len() >= len * G * TILE_UNITS);
        reduce_in_sets(
            len,
            independent_sets(R * G * TILE_UNITS / S::LANES),
            [[s.splat16(0.0); G]; R],
            acc,
            // SAFETY: k < len, every row of `h_prev` holds `len` values and the panel at least
            // `len` reduction rows (asserted above).
            #[cfg_attr(not(unoptimized), inline(always))]
            |k, a| unsafe { fma_row::<S, G, R, PF>(s, panel, k, &h_prev, a) },
            #[cfg_attr(not(unoptimized), inline(always))]
            |a, set| add_set(s, a, set),
        );
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn pass_tiles<S: SimdF32, const G: usize, const NT: usize, const PF: bool>(
        s: S,
        panels: [&[f32]; NT],
        h_prev: &[f32],
        acc: &mut [[[S::X16; G]; 1]; NT],
    ) {
        let len = h_prev.len();
        let h = [h_prev];
        for panel in &panels {
            assert!(panel.len() >= len * G * TILE_UNITS);
        }
        reduce_in_sets(
            len,
            // The sets of a one-row pass over one tile, so that each tile sums in its order.
            independent_sets(G * TILE_UNITS / S::LANES),
            [[[s.splat16(0.0); G]; 1]; NT],
            acc,
            #[cfg_attr(not(unoptimized), inline(always))]
            |k, a| {
                for (panel, a) in panels.iter().zip(a) {
                    // SAFETY: k < len = h_prev.len(), and every panel holds at least `len`
                    // reduction rows (asserted above).
                    unsafe { fma_row::<S, G, 1, PF>(s, panel, k, &h, a) };
                }
            },
            #[cfg_attr(not(unoptimized), inline(always))]
            |a, set| add_tile_sets(s, a, set),
        );
    }
}

/// `acc += Σ_k row k` over the reduction rows `k < len`, `fma(k, a)` adding row `k` into
/// accumulators `a`. With `split` > 1 (2, 4 or 8), row `k` goes to set `k mod split` (the
/// rows past the last whole round to set 0), sets starting at `zero` and added into `acc`
/// in order at the end by `add`: `split` independent chains per accumulator.
#[cfg_attr(not(unoptimized), inline(always))]
fn reduce_in_sets<A: Copy>(
    len: usize,
    split: usize,
    zero: A,
    acc: &mut A,
    mut fma: impl FnMut(usize, &mut A),
    add: impl Fn(&mut A, &A),
) {
    if split == 1 {
        for k in 0..len {
            fma(k, acc);
        }
        return;
    }
    let mut sets = [zero; 8];
    let whole = len / split * split;
    for k0 in (0..whole).step_by(split) {
        for (q, set) in sets.iter_mut().enumerate().take(split) {
            fma(k0 + q, set);
        }
    }
    for k in whole..len {
        fma(k, &mut sets[0]);
    }
    for set in &sets[..split] {
        add(acc, set);
    }
}

/// Accumulator sets a pass over a panel keeps so that at least eight independent FMA chains
/// are in flight (an FMA's latency is four cycles and two issue per cycle on the cores this
/// targets), given the `chains` accumulators of one set: 1, 2, 4 or 8.
const fn independent_sets(chains: usize) -> usize {
    match chains {
        0 | 1 => 8,
        2 | 3 => 4,
        4..=7 => 2,
        _ => 1,
    }
}

/// `acc[r][g][v] += h[r][k] · U[k, gate g, register v]` for reduction row `k` of an `f32` tile
/// panel.
///
/// # Safety
/// The panel holds at least `(k + 1)·G·16` values and every row of `h` at least `k + 1`. The
/// hot loops of the step kernels run through here once per reduction row, so the bounds are
/// the caller's, checked once per panel rather than per row.
#[cfg_attr(not(unoptimized), inline(always))]
unsafe fn fma_row<S: SimdF32, const G: usize, const R: usize, const PF: bool>(
    s: S,
    panel: &[f32],
    k: usize,
    h: &[&[f32]; R],
    acc: &mut [[S::X16; G]; R],
) {
    // SAFETY: k < h[r].len() by the contract.
    let hk: [S::V; R] = std::array::from_fn(|r| s.splat(unsafe { *h[r].get_unchecked(k) }));
    // SAFETY: row k lies inside the panel by the contract.
    let row = unsafe { panel.as_ptr().add(k * G * TILE_UNITS) };
    if PF {
        prefetch_row(s, row.cast(), G * TILE_UNITS * 4);
    }
    // SAFETY: the row holds G·16 values by the contract.
    unsafe { fma_broadcasts::<S, G, R>(s, row, &hk, acc) };
}

/// `acc[r][g][v] += hk[r] · row[g·16 + v·LANES ..]`: one reduction row of a panel times the
/// broadcast values of `R` rows.
///
/// # Safety
/// `row` points to `G·16` readable values.
#[cfg_attr(not(unoptimized), inline(always))]
unsafe fn fma_broadcasts<S: SimdF32, const G: usize, const R: usize>(
    s: S,
    row: *const f32,
    hk: &[S::V; R],
    acc: &mut [[S::X16; G]; R],
) {
    for g in 0..G {
        for v in 0..TILE_UNITS / S::LANES {
            // SAFETY: g·16 + v·LANES + LANES ≤ G·16, readable by the contract.
            let w = unsafe { s.load_ptr(row.add(g * TILE_UNITS + v * S::LANES)) };
            for (a, &h) in acc.iter_mut().zip(hk) {
                a[g][v] = s.fma(h, w, a[g][v]);
            }
        }
    }
}

/// [`fma_row`] with the `R` rows' values of reduction row `k` side by side, at
/// `cols[k·ld .. k·ld + R]` (a transposed left operand, see [`Left`]).
///
/// # Safety
/// The panel holds at least `(k + 1)·G·16` values and `cols` at least `k·ld + R`.
#[cfg_attr(not(unoptimized), inline(always))]
unsafe fn fma_column<S: SimdF32, const G: usize, const R: usize>(
    s: S,
    panel: &[f32],
    k: usize,
    cols: &[f32],
    ld: usize,
    acc: &mut [[S::X16; G]; R],
) {
    // SAFETY: k·ld + r < k·ld + R, inside `cols` by the contract.
    let hk: [S::V; R] =
        std::array::from_fn(|r| s.splat(unsafe { *cols.get_unchecked(k * ld + r) }));
    // SAFETY: row k, G·16 values, lies inside the panel by the contract.
    unsafe { fma_broadcasts::<S, G, R>(s, panel.as_ptr().add(k * G * TILE_UNITS), &hk, acc) };
}

/// How far ahead of the reduction row being multiplied a prefetching panel pass asks for the
/// panel (B = 1, H = 512, f32: 1 KiB and 4 KiB measured 6–9 % slower than 2 KiB on LSTM or
/// GRU; with bfloat16 weights all three within 3 %).
const PREFETCH_BYTES: usize = 2048;

/// Weights a step streams (per thread) past which its panel passes prefetch: beyond the
/// 1 MiB L2 of the cores this targets, the panels come from L3 every step and the hardware
/// prefetchers alone leave the loads waiting (measured with `benches/ab.py`, B = 1, H = 512,
/// one thread: inference LSTM 1.14–1.19x, GRU 1.11–1.27x, training LSTM 1.15x, GRU 1.08x;
/// two threads: inference 1.20x and 1.10x), while below it the prefetches cost up to 9 %
/// (H = 256) for nothing.
const PREFETCH_MIN_STREAM_BYTES: usize = 1 << 20;

/// Whether the panel passes of a step that streams `bytes` of weights prefetch.
fn streams_from_memory(bytes: usize) -> bool {
    bytes > PREFETCH_MIN_STREAM_BYTES
}

/// Prefetches the cache lines of the `len` bytes [`PREFETCH_BYTES`] past `row`.
#[cfg_attr(not(unoptimized), inline(always))]
fn prefetch_row<S: SimdF32>(s: S, row: *const u8, len: usize) {
    // Past the panel's end the hint is merely wasted, so the address may run past it.
    for line in (0..len).step_by(64) {
        s.prefetch(row.wrapping_add(PREFETCH_BYTES + line));
    }
}

/// `acc[t] += set[t]` for every tile `t` of a grouped pass.
#[cfg_attr(not(unoptimized), inline(always))]
fn add_tile_sets<S: SimdF32, const G: usize, const NT: usize>(
    s: S,
    acc: &mut [[[S::X16; G]; 1]; NT],
    set: &[[[S::X16; G]; 1]; NT],
) {
    for (a, set) in acc.iter_mut().zip(set) {
        add_set(s, a, set);
    }
}

/// `acc += set`.
#[cfg_attr(not(unoptimized), inline(always))]
fn add_set<S: SimdF32, const G: usize, const R: usize>(
    s: S,
    acc: &mut [[S::X16; G]; R],
    set: &[[S::X16; G]; R],
) {
    for (a, b) in acc.iter_mut().zip(set) {
        for (ag, bg) in a.iter_mut().zip(b) {
            for (x, &y) in ag.as_mut().iter_mut().zip(bg.as_ref()) {
                *x = s.add(*x, y);
            }
        }
    }
}

impl PanelElem for u16 {
    fn row_block(lanes: usize, gates: usize) -> usize {
        // Two widened weight registers per gate register and two broadcasts per row.
        match (lanes, gates) {
            (16, 4) => 4, // as for `f32`
            (16, 3) => 6,
            (16, _) => 8,
            (8, 1) => 4,
            _ => 1,
        }
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn pass<S: SimdF32, const G: usize, const R: usize, const PF: bool>(
        s: S,
        panel: &[u16],
        h_prev: [&[f32]; R],
        acc: &mut [[S::X16; G]; R],
    ) {
        let len = h_prev[0].len();
        let h_prev = h_prev.map(|r| &r[..len]);
        let pairs = len.div_ceil(2);
        assert!(panel.len() >= pairs * G * TILE_UNITS * 2);
        // SAFETY: m < len / 2, so 2m + 1 < len = h_prev[r].len().
        let pair = |m: usize| -> ([S::V; R], [S::V; R]) {
            unsafe {
                (
                    std::array::from_fn(|r| s.splat(*h_prev[r].get_unchecked(2 * m))),
                    std::array::from_fn(|r| s.splat(*h_prev[r].get_unchecked(2 * m + 1))),
                )
            }
        };
        // An odd length pads the last pair with zero weights; its missing row contributes 0·0.
        let tail = || -> ([S::V; R], [S::V; R]) {
            (
                std::array::from_fn(|r| s.splat(h_prev[r][len - 1])),
                [s.splat(0.0); R],
            )
        };
        reduce_pairs_in_sets(
            len,
            independent_sets(R * G * TILE_UNITS / S::LANES),
            [[s.splat16(0.0); G]; R],
            acc,
            // SAFETY: m < pairs and the panel holds `pairs` pairs (asserted above).
            #[cfg_attr(not(unoptimized), inline(always))]
            |m, padded, a, b| {
                let h = if padded { tail() } else { pair(m) };
                unsafe { fma_pair::<S, G, R, PF>(s, panel, m, h, a, b) }
            },
            #[cfg_attr(not(unoptimized), inline(always))]
            |a, set| add_set(s, a, set),
        );
    }

    #[cfg_attr(not(unoptimized), inline(always))]
    fn pass_tiles<S: SimdF32, const G: usize, const NT: usize, const PF: bool>(
        s: S,
        panels: [&[u16]; NT],
        h_prev: &[f32],
        acc: &mut [[[S::X16; G]; 1]; NT],
    ) {
        let len = h_prev.len();
        let pairs = len.div_ceil(2);
        for panel in &panels {
            assert!(panel.len() >= pairs * G * TILE_UNITS * 2);
        }
        reduce_pairs_in_sets(
            len,
            // The sets of a one-row pass over one tile, so that each tile sums in its order.
            independent_sets(G * TILE_UNITS / S::LANES),
            [[[s.splat16(0.0); G]; 1]; NT],
            acc,
            #[cfg_attr(not(unoptimized), inline(always))]
            |m, padded, a, mut b| {
                // SAFETY: m < len / 2 unless padded, so 2m + 1 < len.
                let h = unsafe {
                    if padded {
                        ([s.splat(h_prev[len - 1])], [s.splat(0.0)])
                    } else {
                        (
                            [s.splat(*h_prev.get_unchecked(2 * m))],
                            [s.splat(*h_prev.get_unchecked(2 * m + 1))],
                        )
                    }
                };
                for (t, (panel, a)) in panels.iter().zip(a).enumerate() {
                    let b = b.as_deref_mut().map(|b| &mut b[t]);
                    // SAFETY: m < pairs and every panel holds `pairs` pairs (asserted above).
                    unsafe { fma_pair::<S, G, 1, PF>(s, panel, m, h, a, b) };
                }
            },
            #[cfg_attr(not(unoptimized), inline(always))]
            |a, set| add_tile_sets(s, a, set),
        );
    }
}

/// [`reduce_in_sets`] for the bfloat16 panels, which pair reduction rows: `fma(m, padded, a,
/// b)` adds pair `m` into accumulators `a`, or its first row into `a` and its second into `b`
/// when given (`padded`: the last, zero-padded pair of an odd `len`). With `split` > 1 the two
/// rows of a pair go to two sets, pair `m` to the sets of number `m mod (split / 2)` (the
/// remaining pairs continuing the alternation).
#[cfg_attr(not(unoptimized), inline(always))]
fn reduce_pairs_in_sets<A: Copy>(
    len: usize,
    split: usize,
    zero: A,
    acc: &mut A,
    mut fma: impl FnMut(usize, bool, &mut A, Option<&mut A>),
    add: impl Fn(&mut A, &A),
) {
    let (whole, pairs) = (len / 2, len.div_ceil(2));
    if split == 1 {
        for m in 0..whole {
            fma(m, false, acc, None);
        }
        if whole < pairs {
            fma(whole, true, acc, None);
        }
        return;
    }
    let half = split / 2;
    let mut sets = [zero; 8];
    let rounds = whole / half * half;
    for m0 in (0..rounds).step_by(half) {
        for (q, two) in sets.chunks_exact_mut(2).enumerate().take(half) {
            let [a, b] = two else { unreachable!() };
            fma(m0 + q, false, a, Some(b));
        }
    }
    for (m, two) in (rounds..pairs).zip(sets.chunks_exact_mut(2)) {
        let [a, b] = two else { unreachable!() };
        fma(m, m == whole, a, Some(b));
    }
    for set in &sets[..split] {
        add(acc, set);
    }
}

/// `acc[r][g][v] += h0[r] · U[2m, …] + h1[r] · U[2m + 1, …]` for pair `m` of a bfloat16 tile
/// panel, `h0` and `h1` the broadcast states of the pair's two rows; with `odd`, the second
/// row's terms go there instead, an independent chain.
///
/// # Safety
/// The panel holds at least `(m + 1)·G·32` values (see [`fma_row`] for why unchecked).
#[cfg_attr(not(unoptimized), inline(always))]
unsafe fn fma_pair<S: SimdF32, const G: usize, const R: usize, const PF: bool>(
    s: S,
    panel: &[u16],
    m: usize,
    (h0, h1): ([S::V; R], [S::V; R]),
    acc: &mut [[S::X16; G]; R],
    mut odd: Option<&mut [[S::X16; G]; R]>,
) {
    // SAFETY: pair m lies inside the panel by the contract.
    let row = unsafe { panel.as_ptr().add(m * G * TILE_UNITS * 2) };
    if PF {
        prefetch_row(s, row.cast(), G * TILE_UNITS * 4);
    }
    for g in 0..G {
        for v in 0..TILE_UNITS / S::LANES {
            // SAFETY: 2·(g·16 + v·LANES + LANES) ≤ 2·G·16, the length of pair m.
            let (w0, w1) =
                unsafe { s.load_bf16_pairs_ptr(row.add(2 * (g * TILE_UNITS + v * S::LANES))) };
            match odd.as_deref_mut() {
                None => {
                    for (a, (&h0, &h1)) in acc.iter_mut().zip(h0.iter().zip(&h1)) {
                        a[g][v] = s.fma(h1, w1, s.fma(h0, w0, a[g][v]));
                    }
                }
                Some(b) => {
                    for (r, (&h0, &h1)) in h0.iter().zip(&h1).enumerate() {
                        acc[r][g][v] = s.fma(h0, w0, acc[r][g][v]);
                        b[r][g][v] = s.fma(h1, w1, b[r][g][v]);
                    }
                }
            }
        }
    }
}

/// Rows that the forward kernels on `lanes`-lane registers for `gates` gates treat alike in
/// `f32` and in bfloat16: every row block starts at a multiple of it, so rows split at such
/// multiples meet the same blocks, and the same accumulation order, as in one sweep.
pub(crate) fn row_unit(lanes: usize, gates: usize) -> usize {
    let (a, b) = (
        <f32 as PanelElem>::row_block(lanes, gates),
        <u16 as PanelElem>::row_block(lanes, gates),
    );
    let gcd = (1..=a.min(b))
        .rev()
        .find(|g| a % g == 0 && b % g == 0)
        .unwrap_or(1);
    a / gcd * b
}

/// `v` rounded to the nearest bfloat16 (ties to even); NaN stays NaN and ±inf stay. A finite
/// `v` beyond the largest finite bfloat16 ([`BF16_MAX`]) saturates to it instead of becoming an
/// infinity: as an infinity, a weight times a zero state, or two such inputs of opposite
/// signs, would give NaN where `f32` gives a number.
pub(crate) fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    let rounded = (bits.wrapping_add(round) >> 16) as u16;
    if rounded & 0x7FFF == 0x7F80 && v.is_finite() {
        rounded - 1
    } else {
        rounded
    }
}

/// The largest finite bfloat16, `(2 − 2⁻⁷)·2¹²⁷`.
pub(crate) const BF16_MAX: f32 = f32::from_bits(0x7F7F_0000);

impl PackedRecurrent {
    /// Packs `recurrent_kernel [H, G·H]` and `recurrent_bias [G·H]` (empty: none).
    pub(crate) fn new(
        recurrent_kernel: &[f32],
        recurrent_bias: &[f32],
        hidden: usize,
        gates: usize,
    ) -> Self {
        let tiles = hidden.div_ceil(TILE_UNITS);
        let gh = gates * hidden;
        let mut weights = CacheAligned::filled(tiles * hidden * gates * TILE_UNITS, 0.0);
        let mut bias = CacheAligned::filled(tiles * gates * TILE_UNITS, 0.0);
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
        Self {
            hidden,
            weights,
            weights_bf16: OnceLock::new(),
            bias,
            transposed: OnceLock::new(),
        }
    }

    /// Gates per unit, `G`.
    fn gates(&self) -> usize {
        self.bias.len() / self.tiles() / TILE_UNITS
    }

    /// The transposed panels (see [`recurrent_grad`]), built from the forward panels on first
    /// use.
    fn transposed(&self) -> &[f32] {
        self.transposed.get_or_init(|| {
            let (h, g, tiles) = (self.hidden, self.gates(), self.tiles());
            let mut out = CacheAligned::filled(tiles * g * h * TILE_UNITS, 0.0);
            // Forward panel element U[k, gate·H + j] → transposed element (k, gate·H + j):
            // tile k / 16, reduction index gate·H + j, lane k % 16.
            for k in 0..h {
                for gate in 0..g {
                    for j in 0..h {
                        let (tile, u) = (j / TILE_UNITS, j % TILE_UNITS);
                        let w = self.weights[((tile * h + k) * g + gate) * TILE_UNITS + u];
                        let at = ((k / TILE_UNITS) * g * h + gate * h + j) * TILE_UNITS;
                        out[at + k % TILE_UNITS] = w;
                    }
                }
            }
            out
        })
    }

    /// The weights as bfloat16 in row-pair layout (see [`PanelElem`]), rounded on first use.
    pub(crate) fn weights_bf16(&self) -> &[u16] {
        self.weights_bf16.get_or_init(|| {
            let (h, tiles, g) = (self.hidden, self.tiles(), self.gates());
            let pairs = h.div_ceil(2);
            let mut out = CacheAligned::filled(tiles * pairs * g * TILE_UNITS * 2, 0u16);
            for tile in 0..tiles {
                for k in 0..h {
                    for gate in 0..g {
                        for u in 0..TILE_UNITS {
                            let w = self.weights[((tile * h + k) * g + gate) * TILE_UNITS + u];
                            let pair = ((tile * pairs + k / 2) * g + gate) * TILE_UNITS + u;
                            out[pair * 2 + k % 2] = to_bf16(w);
                        }
                    }
                }
            }
            out
        })
    }

    /// Number of tiles, `⌈H / 16⌉`.
    pub fn tiles(&self) -> usize {
        self.hidden.div_ceil(TILE_UNITS)
    }

    /// Bytes the packed `f32` weights occupy (what one step streams per batch row; half of it
    /// with bfloat16 weights).
    pub fn weight_bytes(&self) -> usize {
        self.weights.len() * size_of::<f32>()
    }

    /// The `f32` panels.
    pub(crate) fn weights(&self) -> &[f32] {
        &self.weights
    }
}

/// `f(x)` on a register.
#[cfg_attr(not(unoptimized), inline(always))]
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
#[derive(Clone, Copy)]
struct Lanes {
    u0: usize,
    n: usize,
}

impl Lanes {
    #[cfg_attr(not(unoptimized), inline(always))]
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
    #[cfg_attr(not(unoptimized), inline(always))]
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

/// The cells the packed kernels implement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fused<'a> {
    Lstm(&'a LstmKind),
    /// Reset-after only.
    Gru(&'a GruKind),
    Rnn(&'a SimpleRnnKind),
}

/// One forward step of `kind` over the step's tiles.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn step_fwd<S: SimdF32, E: PanelElem>(
    s: S,
    kind: Fused<'_>,
    p: &PackedRecurrent,
    weights: &[E],
    st: PackedStep<'_>,
) {
    match kind {
        Fused::Lstm(k) => lstm_fwd(s, k, p, weights, st),
        Fused::Gru(k) => gru_fwd(s, k, p, weights, st),
        Fused::Rnn(k) => simple_rnn_fwd(s, k, p, weights, st),
    }
}

/// What the packed kernels need of one step, for rows `b < batch` and tiles `tiles`.
///
/// Row-major buffers as in [`crate::cell::StepForward`]: `proj [B, G·H]`, `h_prev`, `h_next`,
/// `c_prev`, `c_next` `[B, H]` (`c` empty except for LSTM), `tape [B, tape_width]` or empty.
pub(crate) struct PackedStep<'a> {
    pub batch: usize,
    pub proj: &'a [f32],
    /// Rows of `proj` apart (see [`StepForward::row_stride`]).
    pub row_stride: usize,
    pub h_prev: &'a [f32],
    pub c_prev: &'a [f32],
    pub h_next: &'a mut [f32],
    pub c_next: &'a mut [f32],
    pub tape: &'a mut [f32],
    pub tiles: std::ops::Range<usize>,
    /// Sweep the tiles last to first (odd steps: see [`sweep`]).
    pub reverse: bool,
}

impl<'a> PackedStep<'a> {
    /// The packed view of an engine step over `tiles` tiles: the state splits into `h` and, when
    /// it holds two tensors (LSTM), `c`; the step's part selects the tiles.
    pub(crate) fn new(st: StepForward<'a, f32>, hidden: usize, tiles: usize) -> Self {
        let bh = st.batch * hidden;
        let (h_prev, c_prev) = st.state.split_at(bh.min(st.state.len()));
        let (h_next, c_next) = st.next.split_at_mut(bh.min(st.next.len()));
        PackedStep {
            batch: st.batch,
            proj: st.proj,
            row_stride: st.row_stride,
            h_prev,
            c_prev,
            h_next,
            c_next,
            tape: st.tape,
            tiles: st.part.range(tiles),
            reverse: st.step % 2 == 1,
        }
    }
}

/// Gate accumulators of one tile for `R` batch rows: `acc[r][g][v] = bias + h_prev[r] · U`
/// over the tile's units, `v` counting registers of the 16 units.
#[cfg_attr(not(unoptimized), inline(always))]
fn accumulate<S: SimdF32, E: PanelElem, const G: usize, const R: usize>(
    s: S,
    p: &PackedRecurrent,
    weights: &[E],
    tile: usize,
    h_prev: [&[f32]; R],
    prefetch: bool,
) -> [[S::X16; G]; R] {
    let mut acc = [bias_row::<S, G>(s, p, tile); R];
    E::accumulate::<S, G, R>(s, panel(p, weights, tile), h_prev, &mut acc, prefetch);
    acc
}

/// The recurrent bias of a tile's units as gate accumulators.
#[cfg_attr(not(unoptimized), inline(always))]
fn bias_row<S: SimdF32, const G: usize>(s: S, p: &PackedRecurrent, tile: usize) -> [S::X16; G] {
    let bias = &p.bias[tile * G * TILE_UNITS..(tile + 1) * G * TILE_UNITS];
    let mut row = [s.splat16(0.0); G];
    for (g, ag) in row.iter_mut().enumerate() {
        for (v, a) in ag.as_mut().iter_mut().enumerate() {
            *a = s.load(&bias[g * TILE_UNITS + v * S::LANES..]);
        }
    }
    row
}

/// A tile's panel of packed weights.
#[cfg_attr(not(unoptimized), inline(always))]
fn panel<'w, E>(p: &PackedRecurrent, weights: &'w [E], tile: usize) -> &'w [E] {
    let per_tile = weights.len() / p.tiles();
    &weights[tile * per_tile..(tile + 1) * per_tile]
}

/// The units of a tile (the last one possibly short at `H`).
#[cfg_attr(not(unoptimized), inline(always))]
fn tile_lanes(hidden: usize, tile: usize) -> Lanes {
    Lanes {
        u0: tile * TILE_UNITS,
        n: (hidden - tile * TILE_UNITS).min(TILE_UNITS),
    }
}

/// Runs `f` for every batch row `b`, tile, and register `v` of the step's tiles, with the
/// row's gate accumulators `acc` (`acc[g][v]`) and the tile's units as `Lanes`.
///
/// Tiles are the outer loop: a tile's panel is read once from memory per step and then serves
/// every batch row from cache, [`PanelElem::row_block`] rows per pass. Every other step sweeps
/// them in reverse, so that it starts on the panels the step before read last, which a cache
/// too small for all of them still holds (B = 1, `benches/ab.py`: H = 256 LSTM 1.17x, H = 512
/// 1.05–1.09x).
#[cfg_attr(not(unoptimized), inline(always))]
fn sweep<S: SimdF32, E: PanelElem, const G: usize>(
    s: S,
    p: &PackedRecurrent,
    weights: &[E],
    st: &mut PackedStep<'_>,
    mut f: impl FnMut(&mut PackedStep<'_>, usize, &Lanes, usize, &[S::X16; G]),
) {
    let h = p.hidden;
    let block = E::row_block(S::LANES, G);
    // Only a tile's first row block reads its panel from beyond L2; the others find it cached.
    let stream = st.tiles.len() * weights.len() / p.tiles() * std::mem::size_of::<E>();
    let prefetch = streams_from_memory(stream);
    if st.batch == 1 && E::groups_tiles(S::LANES, G) {
        return grouped::<S, E, G>(s, p, weights, st, prefetch, &mut f);
    }
    for tile in sweep_order(st.tiles.clone(), st.reverse) {
        let lanes = tile_lanes(h, tile);
        let mut b = 0;
        while b < st.batch {
            // Whole blocks, then the rest in blocks of 4, 2 and 1 rows.
            b += match (st.batch - b).min(block) {
                8 => rows::<S, E, G, 8>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &lanes,
                    b,
                    prefetch && b == 0,
                    &mut f,
                ),
                6 | 7 if block == 6 => rows::<S, E, G, 6>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &lanes,
                    b,
                    prefetch && b == 0,
                    &mut f,
                ),
                4..=7 => rows::<S, E, G, 4>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &lanes,
                    b,
                    prefetch && b == 0,
                    &mut f,
                ),
                2 | 3 => rows::<S, E, G, 2>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &lanes,
                    b,
                    prefetch && b == 0,
                    &mut f,
                ),
                _ => rows::<S, E, G, 1>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &lanes,
                    b,
                    prefetch && b == 0,
                    &mut f,
                ),
            };
        }
    }
}

/// [`sweep`] for a single batch row, [`TILE_GROUP`] tiles per pass
/// ([`PanelElem::accumulate_tiles`]): one row's pass over one tile is a chain of dependent
/// steps (reduction, sum of the sets, activation) that the core overlaps poorly with the next
/// tile's, while tiles interleaved in one pass keep that much more independent work in flight.
#[cfg_attr(not(unoptimized), inline(always))]
fn grouped<S: SimdF32, E: PanelElem, const G: usize>(
    s: S,
    p: &PackedRecurrent,
    weights: &[E],
    st: &mut PackedStep<'_>,
    prefetch: bool,
    f: &mut impl FnMut(&mut PackedStep<'_>, usize, &Lanes, usize, &[S::X16; G]),
) {
    const NT: usize = TILE_GROUP;
    let h = p.hidden;
    for group in groups::<NT>(sweep_order(st.tiles.clone(), st.reverse)) {
        let tiles = match group {
            Group::Whole(tiles) => tiles,
            Group::Single(tile) => {
                rows::<S, E, G, 1>(
                    s,
                    p,
                    weights,
                    st,
                    tile,
                    &tile_lanes(h, tile),
                    0,
                    prefetch,
                    f,
                );
                continue;
            }
        };
        let mut acc = tiles.map(|tile| [bias_row::<S, G>(s, p, tile)]);
        let panels = tiles.map(|tile| panel(p, weights, tile));
        E::accumulate_tiles::<S, G, NT>(s, panels, &st.h_prev[..h], &mut acc, prefetch);
        for (&tile, [acc]) in tiles.iter().zip(&acc) {
            let lanes = tile_lanes(h, tile);
            for v in (0..TILE_UNITS / S::LANES).take_while(|v| v * S::LANES < lanes.n) {
                f(st, 0, &lanes, v, acc);
            }
        }
    }
}

/// A step of [`groups`].
enum Group<const NT: usize> {
    Whole([usize; NT]),
    /// One of the last tiles, which make no whole group: it runs alone (and sums in the same
    /// order as in a group, see [`PanelElem::accumulate_tiles`]).
    Single(usize),
}

/// The tiles of `order`, `NT` at a time.
#[cfg_attr(not(unoptimized), inline(always))]
fn groups<const NT: usize>(
    mut order: impl Iterator<Item = usize>,
) -> impl Iterator<Item = Group<NT>> {
    let (mut rest, mut next_rest, mut rest_len) = ([0; NT], 0, 0);
    std::iter::from_fn(move || {
        if next_rest == rest_len {
            let mut tiles = [0; NT];
            let n = tiles
                .iter_mut()
                .map_while(|t| order.next().map(|next| *t = next))
                .count();
            if n == NT {
                return Some(Group::Whole(tiles));
            }
            (rest, next_rest, rest_len) = (tiles, 0, n);
        }
        let tile = *rest[..rest_len].get(next_rest)?;
        next_rest += 1;
        Some(Group::Single(tile))
    })
}

/// `tiles` first to last, or last to first with `reverse`.
#[cfg_attr(not(unoptimized), inline(always))]
fn sweep_order(tiles: std::ops::Range<usize>, reverse: bool) -> impl Iterator<Item = usize> {
    (0..tiles.len()).map(move |i| {
        if reverse {
            tiles.end - 1 - i
        } else {
            tiles.start + i
        }
    })
}

/// One pass of [`sweep`] over a tile for the `R` rows from `b0`; returns `R`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn rows<S: SimdF32, E: PanelElem, const G: usize, const R: usize>(
    s: S,
    p: &PackedRecurrent,
    weights: &[E],
    st: &mut PackedStep<'_>,
    tile: usize,
    lanes: &Lanes,
    b0: usize,
    prefetch: bool,
    f: &mut impl FnMut(&mut PackedStep<'_>, usize, &Lanes, usize, &[S::X16; G]),
) -> usize {
    let h = p.hidden;
    let h_prev = st.h_prev;
    let acc = accumulate::<S, E, G, R>(
        s,
        p,
        weights,
        tile,
        std::array::from_fn(|r| &h_prev[(b0 + r) * h..(b0 + r + 1) * h]),
        prefetch,
    );
    for (r, acc) in acc.iter().enumerate() {
        for v in (0..TILE_UNITS / S::LANES).take_while(|v| v * S::LANES < lanes.n) {
            f(st, b0 + r, lanes, v, acc);
        }
    }
    R
}

/// LSTM forward over the step's tiles (see [`crate::cell::lstm`] for the maths and the record).
#[cfg_attr(not(unoptimized), inline(always))]
fn lstm_fwd<S: SimdF32, E: PanelElem>(
    s: S,
    kind: &LstmKind,
    p: &PackedRecurrent,
    weights: &[E],
    mut st: PackedStep<'_>,
) {
    let h = p.hidden;
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    sweep::<S, E, 4>(
        s,
        p,
        weights,
        &mut st,
        #[cfg_attr(not(unoptimized), inline(always))]
        |st, b, lanes, v, acc| {
            let (px, rows) = (
                step_row(st.proj, b, 4 * h, st.row_stride),
                b * h..(b + 1) * h,
            );
            // No helper closure here: closures do not inherit the ISA of the kernel they sit
            // in, and one the inliner leaves out of line calls the vector intrinsics.
            let i = activate(s, ra, s.add(acc[0][v], lanes.load(s, px, v)));
            let f = activate(s, ra, s.add(acc[1][v], lanes.load(s, &px[h..], v)));
            let g = activate(s, act, s.add(acc[2][v], lanes.load(s, &px[2 * h..], v)));
            let o = activate(s, ra, s.add(acc[3][v], lanes.load(s, &px[3 * h..], v)));
            let c = s.fma(f, lanes.load(s, &st.c_prev[rows.clone()], v), s.mul(i, g));
            let act_c = activate(s, act, c);
            lanes.store(s, &mut st.c_next[rows.clone()], v, c);
            lanes.store(s, &mut st.h_next[rows], v, s.mul(o, act_c));
            if !st.tape.is_empty() {
                let t = &mut st.tape[b * 5 * h..(b + 1) * 5 * h];
                for (k, x) in [i, f, g, o, act_c].into_iter().enumerate() {
                    lanes.store(s, &mut t[k * h..], v, x);
                }
            }
        },
    );
}

/// Reset-after GRU forward over the step's tiles.
#[cfg_attr(not(unoptimized), inline(always))]
fn gru_fwd<S: SimdF32, E: PanelElem>(
    s: S,
    kind: &GruKind,
    p: &PackedRecurrent,
    weights: &[E],
    mut st: PackedStep<'_>,
) {
    debug_assert!(kind.reset_after);
    let h = p.hidden;
    let (ra, act) = (kind.recurrent_activation, kind.activation);
    sweep::<S, E, 3>(
        s,
        p,
        weights,
        &mut st,
        #[cfg_attr(not(unoptimized), inline(always))]
        |st, b, lanes, v, acc| {
            let (px, rows) = (
                step_row(st.proj, b, 3 * h, st.row_stride),
                b * h..(b + 1) * h,
            );
            let z = activate(s, ra, s.add(acc[0][v], lanes.load(s, px, v)));
            let r = activate(s, ra, s.add(acc[1][v], lanes.load(s, &px[h..], v)));
            let cand = activate(s, act, s.fma(r, acc[2][v], lanes.load(s, &px[2 * h..], v)));
            let hp = lanes.load(s, &st.h_prev[rows.clone()], v);
            // z·h_prev + (1 − z)·h̃ = h̃ + z·(h_prev − h̃)
            lanes.store(s, &mut st.h_next[rows], v, s.fma(z, s.sub(hp, cand), cand));
            if !st.tape.is_empty() {
                let t = &mut st.tape[b * 4 * h..(b + 1) * 4 * h];
                for (k, x) in [z, r, cand, acc[2][v]].into_iter().enumerate() {
                    lanes.store(s, &mut t[k * h..], v, x);
                }
            }
        },
    );
}

/// SimpleRNN forward over the step's tiles.
#[cfg_attr(not(unoptimized), inline(always))]
fn simple_rnn_fwd<S: SimdF32, E: PanelElem>(
    s: S,
    kind: &SimpleRnnKind,
    p: &PackedRecurrent,
    weights: &[E],
    mut st: PackedStep<'_>,
) {
    let h = p.hidden;
    sweep::<S, E, 1>(
        s,
        p,
        weights,
        &mut st,
        #[cfg_attr(not(unoptimized), inline(always))]
        |st, b, lanes, v, acc| {
            let (px, rows) = (step_row(st.proj, b, h, st.row_stride), b * h..(b + 1) * h);
            let pre = s.add(acc[0][v], lanes.load(s, px, v));
            lanes.store(
                s,
                &mut st.h_next[rows],
                v,
                activate(s, kind.activation, pre),
            );
        },
    );
}

/// The recurrent part of a backward step: `dh[b, u] += d[b, :] · recurrent_kernel[u, :]ᵀ` for
/// rows `b < batch` and state units `u` in `units` (whole tiles, the last one possibly short
/// at `H`), `d [B, G·H]` holding the gradients of the recurrent pre-activations and `dh
/// [B, H]` the state gradients.
///
/// The transposed kernel is packed like the forward one, with the `G·H` columns as the
/// reduction: tiles of 16 state units outer, row blocks inner, as in the forward step, and
/// with `reverse` (odd steps) swept last tile to first as [`sweep`] does (B = 1 training,
/// `benches/ab.py`: SimpleRNN H = 512 1.10x, LSTM H = 256 1.03x, the rest within noise).
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn recurrent_grad<S: SimdF32>(
    s: S,
    p: &PackedRecurrent,
    batch: usize,
    d: &[f32],
    dh: &mut [f32],
    units: std::ops::Range<usize>,
    reverse: bool,
) {
    let (h, gh) = (p.hidden, p.gates() * p.hidden);
    assert!(d.len() >= batch * gh && dh.len() >= batch * h);
    assert!(
        units.start.is_multiple_of(TILE_UNITS) && units.end <= h,
        "units not whole tiles"
    );
    let panels = p.transposed();
    let block = grad_row_block(S::LANES);
    let prefetch = streams_from_memory(units.len() * gh * std::mem::size_of::<f32>());
    let tiles = units.start / TILE_UNITS..units.end.div_ceil(TILE_UNITS);
    let panel = |tile: usize| &panels[tile * gh * TILE_UNITS..(tile + 1) * gh * TILE_UNITS];
    if batch == 1 && f32::groups_tiles(S::LANES, 1) {
        // One row: the tiles in groups, as the SimpleRNN forward step runs them.
        const NT: usize = TILE_GROUP;
        for group in groups::<NT>(sweep_order(tiles, reverse)) {
            match group {
                Group::Whole(tiles) => {
                    let mut acc = [[[s.splat16(0.0)]]; NT];
                    let panels = tiles.map(panel);
                    f32::accumulate_tiles::<S, 1, NT>(s, panels, &d[..gh], &mut acc, prefetch);
                    for (&tile, [[acc]]) in tiles.iter().zip(&acc) {
                        add_state_grad(s, &mut dh[..h], &tile_lanes(h, tile), acc);
                    }
                }
                Group::Single(tile) => {
                    let lanes = tile_lanes(h, tile);
                    grad_rows::<S, 1>(s, panel(tile), d, gh, dh, h, &lanes, 0, prefetch);
                }
            }
        }
        return;
    }
    for tile in sweep_order(tiles, reverse) {
        let panel = panel(tile);
        let lanes = tile_lanes(h, tile);
        let mut b = 0;
        while b < batch {
            b += match (batch - b).min(block) {
                8 => grad_rows::<S, 8>(s, panel, d, gh, dh, h, &lanes, b, prefetch && b == 0),
                4..=7 => grad_rows::<S, 4>(s, panel, d, gh, dh, h, &lanes, b, prefetch && b == 0),
                2 | 3 => grad_rows::<S, 2>(s, panel, d, gh, dh, h, &lanes, b, prefetch && b == 0),
                _ => grad_rows::<S, 1>(s, panel, d, gh, dh, h, &lanes, b, prefetch && b == 0),
            };
        }
    }
}

/// Rows per pass of [`recurrent_grad`] on `lanes`-lane registers: its row blocks start at
/// multiples of it.
pub(crate) fn grad_row_block(lanes: usize) -> usize {
    f32::row_block(lanes, 1)
}

/// One pass of [`recurrent_grad`] over a tile for the `R` rows from `b0`; returns `R`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn grad_rows<S: SimdF32, const R: usize>(
    s: S,
    panel: &[f32],
    d: &[f32],
    gh: usize,
    dh: &mut [f32],
    h: usize,
    lanes: &Lanes,
    b0: usize,
    prefetch: bool,
) -> usize {
    let mut acc = [[s.splat16(0.0); 1]; R];
    f32::accumulate::<S, 1, R>(
        s,
        panel,
        std::array::from_fn(|r| &d[(b0 + r) * gh..(b0 + r + 1) * gh]),
        &mut acc,
        prefetch,
    );
    for (r, [acc]) in acc.iter().enumerate() {
        add_state_grad(s, &mut dh[(b0 + r) * h..(b0 + r + 1) * h], lanes, acc);
    }
    R
}

/// `row[units] += acc`, a tile's share of one row's state gradient.
#[cfg_attr(not(unoptimized), inline(always))]
fn add_state_grad<S: SimdF32>(s: S, row: &mut [f32], lanes: &Lanes, acc: &S::X16) {
    for v in (0..TILE_UNITS / S::LANES).take_while(|v| v * S::LANES < lanes.n) {
        let sum = s.add(lanes.load(s, row, v), acc.as_ref()[v]);
        lanes.store(s, row, v, sum);
    }
}

/// Input values (`f32`) of the rows one projection chunk keeps in cache while every panel
/// streams past them once (256 KiB, half of the smallest L2 the chunking aims at).
const PROJECTION_CHUNK_FLOATS: usize = 64 * 1024;

/// An input projection's `kernel [K, N]` and `bias [N]` in panels of `16·G` columns (`G`, the
/// column groups: up to 4, or 3 where that pads fewer columns): panel `c` holds, for every
/// reduction row `k`, the weights `W[k, 16Gc .. 16G(c + 1)]` contiguously (`[panels][K][16·G]`,
/// zero-padded past `N`), so that [`project`] streams a panel front to back for a block of rows
/// with the block's outputs in registers.
#[derive(Debug, Clone)]
pub struct PackedProjection {
    k: usize,
    n: usize,
    groups: usize,
    weights: CacheAligned<f32>,
    /// The weights as bfloat16 pairs of consecutive reduction rows, `[panels][⌈K/2⌉][16·G]`
    /// (see [`PackedProjection::weights_bf16`]), built on first use by a bf16 projection.
    weights_bf16: OnceLock<CacheAligned<u32>>,
    /// `[panels][16·G]`, zeros without a bias.
    bias: CacheAligned<f32>,
}

impl PackedProjection {
    /// Packs `kernel [k, n]` and `bias [n]` (empty: none).
    pub(crate) fn new(kernel: &[f32], bias: &[f32], k: usize, n: usize) -> Self {
        let (groups, len) = Panels::layout(k, n);
        let width = groups * TILE_UNITS;
        let mut weights = CacheAligned::filled(len, 0.0);
        Panels::pack(&mut weights, kernel, n, false, k, n, 1, &mut []);
        let mut packed_bias = CacheAligned::filled(n.div_ceil(width) * width, 0.0);
        packed_bias[..bias.len()].copy_from_slice(bias);
        Self {
            k,
            n,
            groups,
            weights,
            weights_bf16: OnceLock::new(),
            bias: packed_bias,
        }
    }

    /// Lane `j` of pair row `m` of panel `c` holds `W[2m, 16Gc + j]` in its low half and
    /// `W[2m + 1, 16Gc + j]` in its high half (0 past `K`), each rounded to nearest even: the
    /// operand layout of `vdpbf16ps`, which multiplies the halves pairwise.
    fn weights_bf16(&self) -> &[u32] {
        self.weights_bf16.get_or_init(|| {
            let (k, width) = (self.k, self.groups * TILE_UNITS);
            let (pairs, panels) = (k.div_ceil(2), self.n.div_ceil(width));
            let mut out = CacheAligned::filled(panels * pairs * width, 0u32);
            for c in 0..panels {
                let w = |kk: usize, j: usize| {
                    if kk < k {
                        self.weights[(c * k + kk) * width + j]
                    } else {
                        0.0
                    }
                };
                for m in 0..pairs {
                    for j in 0..width {
                        out[(c * pairs + m) * width + j] = bf16_pair(w(2 * m, j), w(2 * m + 1, j));
                    }
                }
            }
            out
        })
    }
}

/// A `[K, N]` matrix in the projection kernel's panels (the layout [`PackedProjection`]
/// describes), over a borrowed buffer: the right operand of [`product`], packed per product.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panels<'a> {
    k: usize,
    n: usize,
    groups: usize,
    weights: &'a [f32],
}

impl<'a> Panels<'a> {
    /// Column groups per panel and packed length for a `[k, n]` matrix: panels of 3 groups
    /// where they pad fewer columns than panels of 4 (6 groups as two panels of 3, not a full
    /// panel of 4 and a half-empty one); narrower panels would leave the kernel bound by loads
    /// rather than multiply-adds.
    pub(crate) fn layout(k: usize, n: usize) -> (usize, usize) {
        let total = n.div_ceil(TILE_UNITS);
        let padding = |g: usize| total.div_ceil(g) * g - total;
        let groups = match total {
            0..=4 => total.max(1),
            _ if padding(3) < padding(4) => 3,
            _ => 4,
        };
        let width = groups * TILE_UNITS;
        (groups, n.div_ceil(width) * k * width)
    }

    /// Packs `B [k, n]` into `dst` (at least [`Panels::layout`]'s length): `B[kk, j]` is
    /// `b[kk·ldb + j]`, or with `transposed` `b[j·ldb + kk]`, the panels shared among up to
    /// `threads` threads. Columns past `n` are zeroed, so that the lanes no output keeps hold
    /// no NaN or subnormal to slow the kernel. Adds `Σ_kk B[kk, j]` to `sums[j]` in order of
    /// `kk` (`sums` empty: none), from the values the packing reads anyway.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pack(
        dst: &'a mut [f32],
        b: &[f32],
        ldb: usize,
        transposed: bool,
        k: usize,
        n: usize,
        threads: usize,
        sums: &mut [f32],
    ) -> Self {
        let (groups, len) = Self::layout(k, n);
        assert!(sums.is_empty() || sums.len() == n);
        let width = groups * TILE_UNITS;
        let dst = &mut dst[..len];
        let panel_len = (k * width).max(1);
        // Panel `c`, and the sums of its columns.
        let pack_panel = |c: usize, panel: &mut [f32], sums: &mut [f32]| {
            let cols = c * width..((c + 1) * width).min(n);
            let w = cols.len();
            for (kk, row) in panel.chunks_exact_mut(width).enumerate() {
                if !transposed {
                    let src = &b[kk * ldb + cols.start..][..w];
                    row[..w].copy_from_slice(src);
                    for (s, &v) in sums.iter_mut().zip(src) {
                        *s += v;
                    }
                }
                row[w..].fill(0.0);
            }
            if transposed {
                // Column by column: each reads one contiguous row of `b`.
                for (jj, j) in cols.enumerate() {
                    let src = &b[j * ldb..][..k];
                    for (kk, &v) in src.iter().enumerate() {
                        panel[kk * width + jj] = v;
                    }
                    if let Some(s) = sums.get_mut(jj) {
                        for &v in src {
                            *s += v;
                        }
                    }
                }
            }
        };
        let panels = len / panel_len;
        let per = panels.div_ceil(threads.clamp(1, panels.max(1))).max(1);
        // Each share of panels with its columns' sums (none when `sums` is empty).
        let sum_shares = sums
            .chunks_mut(per * width)
            .map(Some)
            .chain(std::iter::repeat_with(|| None));
        let shares = dst.chunks_mut(per * panel_len).enumerate().zip(sum_shares);
        let pack_share = |((i, share), sums): ((usize, &mut [f32]), Option<&mut [f32]>)| {
            let mut sums = sums.unwrap_or_default();
            for (j, panel) in share.chunks_exact_mut(panel_len).enumerate() {
                let take = width.min(sums.len());
                let (here, rest) = std::mem::take(&mut sums).split_at_mut(take);
                sums = rest;
                pack_panel(i * per + j, panel, here);
            }
        };
        if per < panels {
            crate::workers::map(shares, pack_share);
        } else {
            shares.for_each(pack_share);
        }
        Self::packed(dst, k, n)
    }

    /// The panels [`Panels::pack`] wrote into `packed` for a `[k, n]` matrix.
    pub(crate) fn packed(packed: &'a [f32], k: usize, n: usize) -> Self {
        let (groups, len) = Self::layout(k, n);
        Self {
            k,
            n,
            groups,
            weights: &packed[..len],
        }
    }
}

/// Two values rounded to bfloat16 in one 32-bit lane, `first` in the low half.
fn bf16_pair(first: f32, second: f32) -> u32 {
    to_bf16(first) as u32 | (to_bf16(second) as u32) << 16
}

/// Builds the bfloat16 copy of the projection weights now, where [`project_bf16`] would use
/// it, rather than in the first projection (a stream's step must not allocate).
pub(crate) fn prepare_projection_bf16(p: &PackedProjection) {
    #[cfg(target_arch = "x86_64")]
    if dot_bf16::available() {
        p.weights_bf16();
    }
    let _ = p;
}

/// [`project`] in bfloat16: `out = bf16(x) · bf16(kernel) + bias`, every input and weight
/// rounded to nearest even and the products summed in `f32` by AVX-512 BF16's `vdpbf16ps`
/// (two reduction rows per instruction, twice the multiply-adds of an `f32` FMA), in order of
/// the reduction within each output, so splitting rows across threads changes no bit.
/// Returns `false`, writing nothing, where the CPU lacks AVX-512 BF16.
pub(crate) fn project_bf16(p: &PackedProjection, x: &[f32], out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if dot_bf16::available() {
        let rows = x.len() / p.k;
        assert!(x.len() == rows * p.k && out.len() >= rows * p.n);
        let w = p.weights_bf16();
        // SAFETY: `available` found AVX-512F and AVX-512 BF16 on this CPU.
        unsafe { dot_bf16::project(p, w, x, out) };
        return true;
    }
    let _ = (p, x, out);
    false
}

/// The AVX-512 BF16 projection kernel.
#[cfg(target_arch = "x86_64")]
mod dot_bf16 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{BF16_MAX, PROJECTION_CHUNK_FLOATS, PackedProjection, TILE_UNITS};
    use crate::cpu::pool::Scratch;

    /// Input pairs of the rows kept on the stack: 4 rows of up to 512 inputs.
    const STACK_PAIRS: usize = 1024;

    /// Whether this CPU has AVX-512F and AVX-512 BF16 (detected once).
    pub(super) fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        })
    }

    /// See [`super::project_bf16`]; `w` is `p.weights_bf16()`, `x [rows, K]`, `out [rows, N]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn project(p: &PackedProjection, w: &[u32], x: &[f32], out: &mut [f32]) {
        match p.groups {
            4 => groups::<4>(p, w, x, out),
            3 => groups::<3>(p, w, x, out),
            2 => groups::<2>(p, w, x, out),
            _ => groups::<1>(p, w, x, out),
        }
    }

    /// [`project`] for panels of `G` column groups: rows in chunks as in the `f32` kernel,
    /// each chunk's inputs rounded to pairs once, then every panel streamed past them.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn groups<const G: usize>(p: &PackedProjection, w: &[u32], x: &[f32], out: &mut [f32]) {
        let (k, n, width) = (p.k, p.n, G * TILE_UNITS);
        let pairs = k.div_ceil(2);
        let rows = x.len() / k;
        // Four rows of four groups: 16 accumulators, G weight registers, one broadcast.
        let block = if G > 2 { 4 } else { 8 };
        let chunk = (PROJECTION_CHUNK_FLOATS / k).max(block);
        // A streaming step's few rows fit on the stack (no allocation per step); larger runs
        // take a buffer of this thread's pool.
        let need = chunk.min(rows) * pairs;
        let mut on_stack = [0u32; STACK_PAIRS];
        let mut pooled;
        let xp: &mut [u32] = if need <= STACK_PAIRS {
            &mut on_stack[..need]
        } else {
            pooled = Scratch::overwritten_or_abort(need, 0u32);
            &mut pooled
        };
        for r0 in (0..rows).step_by(chunk) {
            let end = (r0 + chunk).min(rows);
            for (r, dst) in (r0..end).zip(xp.chunks_exact_mut(pairs)) {
                round_row(&x[r * k..(r + 1) * k], dst);
            }
            for c in 0..n.div_ceil(width) {
                let panel = Panel {
                    weights: &w[c * pairs * width..(c + 1) * pairs * width],
                    bias: &p.bias[c * width..(c + 1) * width],
                    col0: c * width,
                    n,
                };
                let mut r = r0;
                while r < end {
                    let xr = &xp[(r - r0) * pairs..];
                    let o = &mut out[r * n..];
                    r += match (end - r).min(block) {
                        8 => panel.rows::<G, 8>(xr, pairs, o),
                        4..=7 => panel.rows::<G, 4>(xr, pairs, o),
                        2 | 3 => panel.rows::<G, 2>(xr, pairs, o),
                        _ => panel.rows::<G, 1>(xr, pairs, o),
                    };
                }
            }
        }
    }

    /// `dst[m] = (bf16(x[2m]), bf16(x[2m + 1]))`, 0 past the row, rounded as
    /// [`to_bf16`](super::to_bf16) rounds (finite values saturating at `BF16_MAX`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn round_row(x: &[f32], dst: &mut [u32]) {
        assert!(dst.len() >= x.len().div_ceil(2));
        // Finite values clamped to ±BF16_MAX (which the conversion keeps); `max` and `min`
        // return their second operand for NaN, so NaN passes; ±inf are put back after.
        let saturate = |v: __m512| {
            let (max, inf) = (_mm512_set1_ps(BF16_MAX), _mm512_set1_ps(f32::INFINITY));
            let clamped = _mm512_min_ps(
                max,
                _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), max), v),
            );
            let infinite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v), inf);
            _mm512_mask_blend_ps(infinite, clamped, v)
        };
        for (m0, xs) in (0..).step_by(16).zip(x.chunks(32)) {
            let lo_n = xs.len().min(16);
            let hi_n = xs.len() - lo_n;
            let mask = |c: usize| ((1u32 << c) - 1) as u16;
            // SAFETY: the masks cover exactly the `xs.len()` readable floats of `xs` and the
            // `⌈xs.len()/2⌉` writable lanes of `dst` from `m0`; masked-off lanes are not accessed.
            unsafe {
                let lo = saturate(_mm512_maskz_loadu_ps(mask(lo_n), xs.as_ptr()));
                let hi = saturate(_mm512_maskz_loadu_ps(
                    mask(hi_n),
                    xs.as_ptr().wrapping_add(16),
                ));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                let out = dst.as_mut_ptr().add(m0).cast::<i32>();
                _mm512_mask_storeu_epi32(out, mask(xs.len().div_ceil(2)), pairs);
            }
        }
    }

    /// One bf16 projection panel: its weight pairs `[⌈K/2⌉][16·G]`, its bias, its first
    /// column, and the output width.
    struct Panel<'a> {
        weights: &'a [u32],
        bias: &'a [f32],
        col0: usize,
        n: usize,
    }

    impl Panel<'_> {
        /// `out[r] = bias + Σ_m x[r][m] · w[m]` over the panel's columns for `R` rows, `x`
        /// holding rows of `pairs` input pairs and `out` rows of `n` outputs; returns `R`.
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn rows<const G: usize, const R: usize>(
            &self,
            x: &[u32],
            pairs: usize,
            out: &mut [f32],
        ) -> usize {
            let xs: [&[u32]; R] = std::array::from_fn(|r| &x[r * pairs..(r + 1) * pairs]);
            assert!(self.weights.len() >= pairs * G * TILE_UNITS && self.bias.len() >= G * 16);
            // SAFETY: AVX-512 BF16 is enabled on this function; every load reads 16 lanes of
            // `bias` or of one `G·16`-lane weight row, both asserted long enough above.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); G]; R];
                for g in 0..G {
                    let b = _mm512_loadu_ps(self.bias.as_ptr().add(g * TILE_UNITS));
                    for a in acc.iter_mut() {
                        a[g] = b;
                    }
                }
                for m in 0..pairs {
                    let row = self.weights.as_ptr().add(m * G * TILE_UNITS);
                    let ws: [__m512bh; G] = std::array::from_fn(|g| {
                        std::mem::transmute(_mm512_loadu_si512(row.add(g * TILE_UNITS).cast()))
                    });
                    for (a, xr) in acc.iter_mut().zip(&xs) {
                        let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(xr[m] as i32));
                        for (ag, &wg) in a.iter_mut().zip(&ws) {
                            *ag = _mm512_dpbf16_ps(*ag, xv, wg);
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    let row = &mut out[r * self.n..(r + 1) * self.n];
                    for (g, &v) in a.iter().enumerate() {
                        let u0 = self.col0 + g * TILE_UNITS;
                        let lanes = self.n.saturating_sub(u0).min(TILE_UNITS);
                        // SAFETY: the mask covers the `lanes` columns from `u0` inside `row`.
                        _mm512_mask_storeu_ps(
                            row.as_mut_ptr().wrapping_add(u0),
                            ((1u32 << lanes) - 1) as u16,
                            v,
                        );
                    }
                }
            }
            R
        }
    }
}

/// `out [N_rows, n] = x [N_rows, k] · kernel + bias` over the packed kernel `p`.
///
/// Rows go in chunks whose inputs stay in cache; within a chunk every panel streams once, for
/// a block of rows per pass. Every output is `bias + Σ_k x·w` added in order of `k`, whatever
/// block, chunk or thread computes its row, so splitting the rows across threads changes no
/// bit.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn project<S: SimdF32>(s: S, p: &PackedProjection, x: &[f32], out: &mut [f32]) {
    let b = Panels {
        k: p.k,
        n: p.n,
        groups: p.groups,
        weights: &p.weights,
    };
    let rows = x.len() / p.k;
    assert!(x.len() == rows * p.k);
    let width = p.groups * TILE_UNITS;
    let start = |c: usize| Start::Bias(&p.bias[c * width..(c + 1) * width]);
    run_panels(s, &b, start, Left::rows(x, p.k), rows, out, p.n);
}

/// `c [m, n] = a [m, k] · b`, plus the values `c` held with `accumulate`: `c` rows `ldc`
/// apart, `b [k, n]` packed by [`Panels::pack`]. The projection's kernel as a general product:
/// every output is its start plus `Σ_k a·b` in order of `k`, so any split of the rows changes
/// no bit.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn product<S: SimdF32>(
    s: S,
    a: Left<'_>,
    m: usize,
    b: &Panels<'_>,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
) {
    let start = if accumulate { Start::Out } else { Start::Zero };
    run_panels(s, b, |_| start, a, m, c, ldc);
}

/// The left operand of a panel pass, `[rows, k]`: row `r` at `data[r·ld..]`, or with
/// `transposed` column `r` of a matrix whose rows lie `ld` apart (`a[r, kk]` at
/// `data[kk·ld + r]`), which the pass reads in place, `R` neighbouring values per reduction
/// row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Left<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub transposed: bool,
}

impl<'a> Left<'a> {
    /// Rows `ld` apart.
    pub(crate) fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            ld,
            transposed: false,
        }
    }

    /// The operand from reduction index `k0` on.
    fn skip_k(self, k0: usize) -> Self {
        let at = if self.transposed { k0 * self.ld } else { k0 };
        Self {
            data: &self.data[at.min(self.data.len())..],
            ..self
        }
    }

    /// Whether `rows` rows of `k` values lie inside `data`.
    fn holds(&self, rows: usize, k: usize) -> bool {
        let (outer, inner) = if self.transposed {
            (k, rows)
        } else {
            (rows, k)
        };
        outer == 0
            || inner == 0
            || (self.ld >= inner && self.data.len() >= (outer - 1) * self.ld + inner)
    }
}

/// What a panel pass's accumulators start from.
#[derive(Debug, Clone, Copy)]
enum Start<'a> {
    /// The panel's `16·G` bias values.
    Bias(&'a [f32]),
    Zero,
    /// The outputs' own values: the pass adds into them.
    Out,
}

/// [`project`] and [`product`]: `out[r] = start + x[r] · b` for rows `r < rows`, `out` rows
/// `ldo` apart, `start(c)` the start of panel `c`.
#[cfg_attr(not(unoptimized), inline(always))]
#[allow(clippy::too_many_arguments)]
fn run_panels<'s, S: SimdF32>(
    s: S,
    b: &Panels<'_>,
    start: impl Fn(usize) -> Start<'s>,
    x: Left<'_>,
    rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    match b.groups {
        4 => panel_groups::<S, 4>(s, b, start, x, rows, out, ldo),
        3 => panel_groups::<S, 3>(s, b, start, x, rows, out, ldo),
        2 => panel_groups::<S, 2>(s, b, start, x, rows, out, ldo),
        _ => panel_groups::<S, 1>(s, b, start, x, rows, out, ldo),
    }
}

/// [`run_panels`] for panels of `G` column groups.
#[cfg_attr(not(unoptimized), inline(always))]
#[allow(clippy::too_many_arguments)]
fn panel_groups<'s, S: SimdF32, const G: usize>(
    s: S,
    b: &Panels<'_>,
    start: impl Fn(usize) -> Start<'s>,
    x: Left<'_>,
    rows: usize,
    out: &mut [f32],
    ldo: usize,
) {
    let (k, n, width) = (b.k, b.n, G * TILE_UNITS);
    if rows == 0 || n == 0 {
        return;
    }
    assert!(x.holds(rows, k) && ldo >= n && out.len() >= (rows - 1) * ldo + n);
    let panel_len = k * width;
    // A reduction longer than a panel block goes in blocks, each adding to the outputs the
    // one before wrote: every sum stays in order of `k`, bit for bit, and a block's share of a
    // panel stays in L2 for all the row blocks of a chunk (a 2 MiB panel streamed from L3 for
    // every 4 rows ran BPTT's products at a third of the speed).
    let kc = match x.transposed {
        false => k.min(PANEL_BLOCK_FLOATS / width),
        true => k.min(TRANSPOSED_BLOCK_ROWS),
    }
    .max(1);
    for k0 in (0..k).step_by(kc) {
        let k1 = (k0 + kc).min(k);
        let chunk = (PROJECTION_CHUNK_FLOATS / (k1 - k0)).max(8);
        for r0 in (0..rows).step_by(chunk) {
            let end = (r0 + chunk).min(rows);
            for c in 0..n.div_ceil(width) {
                let panel = Panel {
                    weights: &b.weights[c * panel_len + k0 * width..c * panel_len + k1 * width],
                    start: if k0 == 0 { start(c) } else { Start::Out },
                    groups: std::array::from_fn(|g| {
                        let u0 = c * width + g * TILE_UNITS;
                        Lanes {
                            u0,
                            n: n.saturating_sub(u0).min(TILE_UNITS),
                        }
                    }),
                };
                panel_rows::<S, G>(s, &panel, x.skip_k(k0), k1 - k0, r0..end, out, ldo);
            }
        }
    }
}

/// Floats of a panel one reduction block of [`run_panels`] streams (256 KiB: with a chunk of
/// inputs, half the 1 MiB L2 of the cores this targets).
const PANEL_BLOCK_FLOATS: usize = 64 * 1024;
/// Reduction rows per block of [`run_panels`] with a transposed left operand ([`Left`]), whose
/// pass reads one line per reduction row for `R` of its rows: few enough that the lines stay
/// cached for the next row blocks. Measured on BPTT's weight-gradient shapes (`Xᵀ·D`, `D` of
/// 128 to 512 columns): 128 rows ran 1.0–1.6x faster than 1024, and 1.0–1.1x than 64 or 256.
const TRANSPOSED_BLOCK_ROWS: usize = 128;

/// `out[r, columns of the panel] = start + x[r] · panel` for rows `rows` (`x` rows `k` long,
/// `out` rows `ldo` apart), a block of rows per pass.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn panel_rows<S: SimdF32, const G: usize>(
    s: S,
    panel: &Panel<'_>,
    x: Left<'_>,
    k: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
) {
    // Rows per pass: 16 accumulators or so, with the weight registers and the broadcasts
    // (six rows of four groups spill here next to the chunk's pointers).
    let block = match (S::LANES, G) {
        (16, 3 | 4) => 4,
        (16, _) => 8,
        (_, 1) => 4,
        (_, 2) => 2,
        _ => 1,
    };
    let mut r = rows.start;
    while r < rows.end {
        r += match (rows.end - r).min(block) {
            8 => project_rows::<S, G, 8>(s, panel, x, k, out, ldo, r),
            4..=7 => project_rows::<S, G, 4>(s, panel, x, k, out, ldo, r),
            2 | 3 => project_rows::<S, G, 2>(s, panel, x, k, out, ldo, r),
            _ => project_rows::<S, G, 1>(s, panel, x, k, out, ldo, r),
        };
    }
}

/// `out[b, g·H + j] = recurrent_bias + h_prev[b] · recurrent_kernel[:, g·H + j]` for every
/// gate `g`, unit `j` of tiles `tiles` and row `b < batch` (`h_prev` rows `H` apart, `out`
/// rows `ldo` apart): [`project`]'s kernel over the packed tiles, each tile a panel whose
/// column groups are its units of each gate. Allocates nothing and packs nothing per step;
/// every output is one chain in order of `k`, so any split of the rows or tiles gives the same
/// bits.
#[cfg_attr(not(unoptimized), inline(always))]
pub(crate) fn recurrent_rows<S: SimdF32>(
    s: S,
    p: &PackedRecurrent,
    batch: usize,
    h_prev: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
) {
    match p.gates() {
        4 => recurrent_groups::<S, 4>(s, p, batch, h_prev, tiles, out, ldo),
        3 => recurrent_groups::<S, 3>(s, p, batch, h_prev, tiles, out, ldo),
        2 => recurrent_groups::<S, 2>(s, p, batch, h_prev, tiles, out, ldo),
        _ => recurrent_groups::<S, 1>(s, p, batch, h_prev, tiles, out, ldo),
    }
}

/// [`recurrent_rows`] for `G` gates.
#[cfg_attr(not(unoptimized), inline(always))]
fn recurrent_groups<S: SimdF32, const G: usize>(
    s: S,
    p: &PackedRecurrent,
    batch: usize,
    h_prev: &[f32],
    tiles: std::ops::Range<usize>,
    out: &mut [f32],
    ldo: usize,
) {
    let h = p.hidden;
    let per_tile = h * G * TILE_UNITS;
    assert!(h_prev.len() >= batch * h && p.weights.len() >= tiles.end * per_tile);
    for tile in tiles {
        let panel = Panel {
            weights: &p.weights[tile * per_tile..(tile + 1) * per_tile],
            start: Start::Bias(&p.bias[tile * G * TILE_UNITS..(tile + 1) * G * TILE_UNITS]),
            groups: std::array::from_fn(|g| Lanes {
                u0: g * h + tile * TILE_UNITS,
                n: if g < G {
                    (h - tile * TILE_UNITS).min(TILE_UNITS)
                } else {
                    0
                },
            }),
        };
        panel_rows::<S, G>(s, &panel, Left::rows(h_prev, h), h, 0..batch, out, ldo);
    }
}

/// One projection panel: its weights, what its accumulators start from, and the output
/// columns of each group.
struct Panel<'a> {
    weights: &'a [f32],
    start: Start<'a>,
    groups: [Lanes; 4],
}

/// One pass of [`panel_rows`] over a panel for the `R` rows from `r0`; returns `R`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(unoptimized), inline(always))]
fn project_rows<S: SimdF32, const G: usize, const R: usize>(
    s: S,
    panel: &Panel<'_>,
    x: Left<'_>,
    k: usize,
    out: &mut [f32],
    ldo: usize,
    r0: usize,
) -> usize {
    let mut acc = [[s.splat16(0.0); G]; R];
    match panel.start {
        Start::Bias(bias) => {
            for (g, ag) in acc[0].iter_mut().enumerate() {
                for (v, a) in ag.as_mut().iter_mut().enumerate() {
                    *a = s.load(&bias[g * TILE_UNITS + v * S::LANES..]);
                }
            }
            acc = [acc[0]; R];
        }
        Start::Zero => {}
        Start::Out => {
            for (r, acc) in acc.iter_mut().enumerate() {
                let out_row = &out[(r0 + r) * ldo..];
                for (&lanes, acc) in panel.groups.iter().zip(acc) {
                    for (v, a) in acc.as_mut().iter_mut().enumerate() {
                        if v * S::LANES < lanes.n {
                            *a = lanes.load(s, out_row, v);
                        }
                    }
                }
            }
        }
    }
    assert!(panel.weights.len() >= k * G * TILE_UNITS);
    // One chain per accumulator, in order of k (no independent sets: see `project`).
    if x.transposed {
        let cols = &x.data[r0.min(x.data.len())..];
        assert!(k == 0 || cols.len() >= (k - 1) * x.ld + R);
        for kk in 0..k {
            // SAFETY: kk < k; asserted above, the panel's reduction rows and, for row kk, the
            // R values from kk·ld.
            unsafe { fma_column::<S, G, R>(s, panel.weights, kk, cols, x.ld, &mut acc) };
        }
    } else {
        let xs: [&[f32]; R] = std::array::from_fn(|r| &x.data[(r0 + r) * x.ld..][..k]);
        for kk in 0..k {
            // SAFETY: kk < k, the length of every row of `xs` and, asserted above, the
            // panel's reduction rows.
            unsafe { fma_row::<S, G, R, false>(s, panel.weights, kk, &xs, &mut acc) };
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let out_row = &mut out[(r0 + r) * ldo..];
        for (&lanes, acc) in panel.groups.iter().zip(acc) {
            for (v, &a) in acc.as_ref().iter().enumerate() {
                if v * S::LANES < lanes.n {
                    lanes.store(s, out_row, v, a);
                }
            }
        }
    }
    R
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{BF16_MAX, PackedProjection, to_bf16};
    use crate::cpu::{Backend, project_rows, with_backend};
    use crate::dim::Dyn;

    /// The packed projection against a plain sum, on every backend, for partial panels, one
    /// reduction row, one output row and row counts that leave every block size as a rest.
    #[test]
    fn packed_projection_matches_a_plain_product() {
        for (k, n, rows) in [
            (1, 64, 1),
            (3, 60, 5),
            (70, 130, 9),
            (64, 192, 4),
            (17, 128, 33),
            (5, 96, 7),
            (9, 72, 3),
        ] {
            let value = |i: usize, salt: usize| (((i * 37 + salt) % 97) as f32 - 48.0) / 50.0;
            let x: Vec<f32> = (0..rows * k).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i, 3)).collect();
            let packed = PackedProjection::new(&w, &bias, k, n);
            for backend in Backend::available() {
                let mut out = vec![f32::NAN; rows * n];
                with_backend(backend, || {
                    project_rows(Dyn(k), &x, &w, &bias, &mut out, n, Some(&packed))
                })
                .unwrap();
                for r in 0..rows {
                    for j in 0..n {
                        let want = bias[j] as f64
                            + (0..k)
                                .map(|q| x[r * k + q] as f64 * w[q * n + j] as f64)
                                .sum::<f64>();
                        let got = out[r * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{backend:?} k={k} n={n} rows={rows} ({r}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Panels of up to 4 groups, of 3 where that pads fewer columns.
    #[test]
    fn projection_panels_of_three_groups_where_they_pad_less() {
        for (n, groups) in [
            (16, 1),
            (48, 3),
            (64, 4),
            (72, 3),
            (96, 3),
            (112, 4),
            (208, 3),
            (384, 4),
        ] {
            let p = PackedProjection::new(&vec![0.0; 2 * n], &[], 2, n);
            assert_eq!(p.groups, groups, "n = {n}");
        }
    }

    /// `bias + Σ x·w` in `f64` over the operands as given, and the sum of the terms' magnitudes.
    fn reference(x: &[f32], w: &[f32], bias: f32, k: usize, n: usize, j: usize) -> (f64, f64) {
        let terms = (0..k).map(|q| x[q] as f64 * w[q * n + j] as f64);
        let scale = bias.abs() as f64 + terms.clone().map(f64::abs).sum::<f64>();
        (bias as f64 + terms.sum::<f64>(), scale)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(64)
        })]

        /// The bf16 projection against the `f64` sum of the rounded operands, where the CPU
        /// has AVX-512 BF16, on random shapes (partial panels and row blocks, odd reductions)
        /// and values from ±1e-3 to ±1e3 with some NaN and ±∞: a special value rounds to
        /// itself and propagates as in `f32` arithmetic.
        #[test]
        fn bf16_projection_matches_the_rounded_reference(
            (k, n, rows, x, w, bias) in (1..80usize, 1..150usize, 1..20usize).prop_flat_map(|(k, n, rows)| {
                let value = prop_oneof![
                    20 => -1.0f32..1.0,
                    4 => -1e3f32..1e3,
                    2 => -1e-3f32..1e-3,
                    1 => Just(f32::NAN),
                    1 => Just(f32::INFINITY),
                    1 => Just(f32::NEG_INFINITY),
                ];
                (
                    Just(k),
                    Just(n),
                    Just(rows),
                    proptest::collection::vec(value.clone(), rows * k),
                    proptest::collection::vec(-1.0f32..1.0, k * n),
                    proptest::collection::vec(-1.0f32..1.0, n),
                )
            })
        ) {
            let round = |v: &[f32]| -> Vec<f32> {
                v.iter().map(|&a| f32::from_bits((to_bf16(a) as u32) << 16)).collect()
            };
            let packed = PackedProjection::new(&w, &bias, k, n);
            let mut out = vec![0.0; rows * n];
            if super::project_bf16(&packed, &x, &mut out) {
                let (xr, wr) = (round(&x), round(&w));
                for r in 0..rows {
                    for j in 0..n {
                        let (want, scale) = reference(&xr[r * k..(r + 1) * k], &wr, bias[j], k, n, j);
                        let got = out[r * n + j] as f64;
                        if want.is_nan() || want.is_infinite() {
                            prop_assert!(
                                got.is_nan() && want.is_nan() || got == want,
                                "({r}, {j}): {got} vs {want}"
                            );
                        } else {
                            prop_assert!(
                                (got - want).abs() <= 1e-6 * (1.0 + scale),
                                "({r}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Inputs past the largest finite bfloat16 saturate in the AVX-512 BF16 projection as in
    /// `to_bf16`: `f32::MAX` and `−f32::MAX` against equal weights cancel (as infinities they
    /// gave NaN).
    #[test]
    fn bf16_projection_saturates_finite_inputs() {
        let (k, n) = (2, 16);
        let w = vec![1e-3f32; k * n];
        let packed = PackedProjection::new(&w, &[], k, n);
        let mut out = vec![1.0; n];
        if super::project_bf16(&packed, &[f32::MAX, -f32::MAX], &mut out) {
            assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
        }
        let mut out = vec![0.0; n];
        if super::project_bf16(&packed, &[f32::INFINITY, 1.0], &mut out) {
            assert!(out.iter().all(|&v| v == f32::INFINITY), "{out:?}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let widen = |b: u16| f32::from_bits((b as u32) << 16);
        assert_eq!(widen(to_bf16(1.0)), 1.0);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties to the even mantissa, 1.
        assert_eq!(widen(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(
            widen(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2.0 * 2f32.powi(-7)
        );
        assert_eq!(widen(to_bf16(-2.5)), -2.5);
        assert_eq!(widen(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(widen(to_bf16(f32::NEG_INFINITY)), f32::NEG_INFINITY);
        assert!(widen(to_bf16(f32::NAN)).is_nan());
        // Finite values past the largest finite bfloat16 saturate to it.
        assert_eq!(widen(to_bf16(f32::MAX)), BF16_MAX);
        assert_eq!(widen(to_bf16(-f32::MAX)), -BF16_MAX);
        assert_eq!(widen(to_bf16(BF16_MAX)), BF16_MAX);
        for v in [0.1f32, -3.7, 1e-20, 6.5e4, 1e30] {
            let r = widen(to_bf16(v));
            assert!(((r - v) / v).abs() <= 2f32.powi(-9), "{v} -> {r}");
        }
    }
}
