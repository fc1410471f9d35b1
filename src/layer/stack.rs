//! The stack: layers and directions run by the engine, merged, and written in the caller's
//! layout; the tape; backpropagation through the whole stack.

use super::dropout::{self, Stream};
use super::engine::{Dir, DropoutFix, Plan, SeqRef, row_offset, tape_parts};
use super::{AnyCell, CellConfig, MaskSemantics, Merge, Rnn, RnnConfig, RunSpec};
use crate::cell::Cell;
use crate::error::{Error, Result, check_len, check_nonzero, checked_size, try_filled};
use crate::real::Real;
use crate::seq::{GradMode, Layout};

/// The dropout masks of one cell: on its inputs and on its recurrent state (`None`: no
/// dropout there).
pub type Masks<T> = (Option<Vec<T>>, Option<Vec<T>>);

/// Gradients of a whole stack, from [`Rnn::bptt`].
#[derive(Debug, Clone, PartialEq)]
pub struct RnnGrads<T> {
    /// `∂L/∂x`, shaped like `x` (exactly 0 at padded steps).
    pub dx: Vec<T>,
    /// `∂L/∂initial_state`, `[S, L·D, B, H]`.
    pub d_initial_state: Vec<T>,
    /// Parameter gradients per cell (index `layer·D + direction`), each in the order of that
    /// cell's [`Cell::params`] (internal layout; see [`super::io`] for the frameworks').
    pub params: Vec<Vec<Vec<T>>>,
}

impl<T: Real> RnnGrads<T> {
    /// Zero gradients for `rnn` over `spec`.
    ///
    /// Errors: those of the spec's sizes, and [`Error::Allocation`] for gradients too large.
    pub fn zeros(rnn: &Rnn<T>, spec: &RunSpec<'_>) -> Result<Self> {
        let d = Sizes::new(rnn, spec)?;
        Ok(Self {
            dx: try_filled("dx", d.x_len, T::ZERO)?,
            d_initial_state: try_filled("d_initial_state", d.state_len, T::ZERO)?,
            params: rnn.cells.iter().map(crate::cell::zero_grads).collect(),
        })
    }
}

/// Sequence lengths from a right-padded `[B, T]` mask (1 = real step, 0 = padding).
///
/// Errors: [`Error::Length`] when `mask` is not `B·T` long; [`Error::Invalid`] naming the
/// sequence whose mask has a value other than 0 or 1, or a real step after padding (only
/// right padding is supported).
pub fn lengths_from_mask<T: Real>(
    mask: &[T],
    batch: usize,
    time_steps: usize,
) -> Result<Vec<usize>> {
    check_len(
        "mask",
        mask.len(),
        checked_size("mask", &[batch, time_steps])?,
    )?;
    let mut lengths = Vec::with_capacity(batch);
    for b in 0..batch {
        let row = &mask[b * time_steps..(b + 1) * time_steps];
        let mut n = 0;
        let mut padded = false;
        for (t, &v) in row.iter().enumerate() {
            let one = v == T::ONE;
            if !one && v != T::ZERO {
                return Err(Error::Invalid {
                    arg: "mask",
                    reason: format!("mask[{b}, {t}] is {v}, expected 0 or 1"),
                });
            }
            if one && padded {
                return Err(Error::Invalid {
                    arg: "mask",
                    reason: format!(
                        "sequence {b} has a real step at {t} after padding; only right-padded \
                         masks are supported"
                    ),
                });
            }
            if one {
                n += 1;
            } else {
                padded = true;
            }
        }
        lengths.push(n);
    }
    Ok(lengths)
}

/// Every size of a call, checked once.
#[derive(Debug, Clone)]
struct Sizes {
    t: usize,
    b: usize,
    h: usize,
    s: usize,
    l: usize,
    d: usize,
    x_len: usize,
    y_len: usize,
    state_len: usize,
    /// Tape part sizes, `l·(5·D + 1) + 5·d + k` (see [`Sizes::part`]).
    parts: Vec<usize>,
}

impl Sizes {
    fn new<T: Real>(rnn: &Rnn<T>, spec: &RunSpec<'_>) -> Result<Self> {
        let c = &rnn.config;
        let (t, b) = (spec.time_steps, spec.batch);
        check_nonzero("time_steps", t)?;
        check_nonzero("batch", b)?;
        if c.go_backwards
            && c.num_layers > 1
            && let Some(&n) = spec.lengths.into_iter().flatten().find(|&&n| n != t)
        {
            return Err(Error::Invalid {
                arg: "lengths",
                reason: format!(
                    "a stack of go_backwards layers takes no padding (a length is {n}, \
                     time_steps is {t}): Keras passes the mask unreversed to the next layer, \
                     whose input is reversed"
                ),
            });
        }
        let (h, s, l, d) = (c.hidden_size, c.cell.states(), c.num_layers, c.directions());
        let w = c.merged_width();
        let planes = c.output_planes();
        let y_len = if c.return_sequences {
            checked_size("y", &[planes, t, b, w])?
        } else {
            checked_size("y", &[planes, b, w])?
        };
        let tb = checked_size("time_steps", &[t, b])?;
        let mut parts = Vec::with_capacity(l * (5 * d + 1));
        for layer in 0..l {
            for dir in 0..d {
                let tw = rnn.cells[layer * d + dir].tape_width();
                checked_size("tape", &[s, h, tb])?;
                checked_size("tape", &[tb, tw.max(h)])?;
                parts.extend(tape_parts(s, b, h, tb, tw));
                parts.push(tb * h);
                parts.push(s * b * h);
            }
            parts.push(if layer + 1 < l {
                checked_size("tape", &[tb, w])?
            } else {
                0
            });
        }
        parts
            .iter()
            .try_fold(0usize, |a, &p| a.checked_add(p))
            .ok_or(Error::Overflow { arg: "tape" })?;
        Ok(Self {
            t,
            b,
            h,
            s,
            l,
            d,
            x_len: checked_size("x", &[tb, c.input_size])?,
            y_len,
            state_len: checked_size("initial_state", &[s, l, d, b, h])?,
            parts,
        })
    }

    fn part(&self, layer: usize, dir: usize, k: usize) -> usize {
        layer * (5 * self.d + 1) + 5 * dir + k
    }
    fn merged_part(&self, layer: usize) -> usize {
        layer * (5 * self.d + 1) + 5 * self.d
    }
    fn tape_len(&self) -> usize {
        self.parts.iter().sum()
    }
}

/// `buf` cut into consecutive parts of `sizes`.
fn split_mut<'a, T>(mut buf: &'a mut [T], sizes: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let (a, rest) = buf.split_at_mut(n);
        out.push(a);
        buf = rest;
    }
    out
}

fn split_ref<'a, T>(mut buf: &'a [T], sizes: &[usize]) -> Vec<&'a [T]> {
    let mut out = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let (a, rest) = buf.split_at(n);
        out.push(a);
        buf = rest;
    }
    out
}

/// `out = merge(a, b)` for one row (`b` is `None` with one direction).
#[inline]
fn merge_row<T: Real>(merge: Merge, a: &[T], b: Option<&[T]>, out: &mut [T]) {
    let Some(b) = b else {
        out.copy_from_slice(a);
        return;
    };
    let h = a.len();
    match merge {
        Merge::Concat | Merge::None => {
            out[..h].copy_from_slice(a);
            out[h..2 * h].copy_from_slice(b);
        }
        Merge::Sum => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (&p, &q))| *o = p + q),
        Merge::Mul => out
            .iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (&p, &q))| *o = p * q),
        Merge::Ave => {
            let half = T::from_f64(0.5);
            out.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&p, &q))| *o = (p + q) * half)
        }
    }
}

/// Backward of [`merge_row`]: adds `∂L/∂a` into `da` (and `∂L/∂b` into `db`).
#[inline]
fn merge_row_back<T: Real>(
    merge: Merge,
    dout: &[T],
    a: &[T],
    b: Option<&[T]>,
    da: &mut [T],
    db: Option<&mut [T]>,
) {
    let (Some(b), Some(db)) = (b, db) else {
        da.iter_mut().zip(dout).for_each(|(g, &v)| *g += v);
        return;
    };
    let h = a.len();
    match merge {
        Merge::Concat | Merge::None => {
            da.iter_mut().zip(&dout[..h]).for_each(|(g, &v)| *g += v);
            db.iter_mut()
                .zip(&dout[h..2 * h])
                .for_each(|(g, &v)| *g += v);
        }
        Merge::Sum => {
            da.iter_mut().zip(dout).for_each(|(g, &v)| *g += v);
            db.iter_mut().zip(dout).for_each(|(g, &v)| *g += v);
        }
        Merge::Mul => {
            for u in 0..h {
                da[u] += dout[u] * b[u];
                db[u] += dout[u] * a[u];
            }
        }
        Merge::Ave => {
            let half = T::from_f64(0.5);
            da.iter_mut().zip(dout).for_each(|(g, &v)| *g += v * half);
            db.iter_mut().zip(dout).for_each(|(g, &v)| *g += v * half);
        }
    }
}

/// Whether the forward direction of `layer` runs backwards over the layer's input as the
/// stack stores it (source time order). In a `go_backwards` stack, a layer's outputs are
/// stored in source order of *its* input, while the next layer consumes them in processing
/// order, that is reversed: so layers 0, 2, 4, … run backwards over what they read, and
/// layers 1, 3, … forwards over it (and their outputs already are in the order Keras returns).
fn reverses(c: &RnnConfig, layer: usize) -> bool {
    c.go_backwards && layer.is_multiple_of(2)
}

/// Multiplies layer `layer`'s stored merged output `[T, B·W]` (or its gradient) by the
/// inter-layer dropout mask, which is indexed in the order the next layer consumes the steps
/// ([`Rnn::between_mask`]): reversed for a layer stored in reverse (see [`reverses`]).
fn between_dropout<T: Real>(
    c: &RnnConfig,
    seed: u64,
    layer: usize,
    t: usize,
    row: usize,
    v: &mut [T],
) {
    let stream = Stream::Between { layer };
    for (s, chunk) in v.chunks_exact_mut(row).enumerate() {
        let step = if reverses(c, layer) { t - 1 - s } else { s };
        for (u, x) in chunk.iter_mut().enumerate() {
            let k = (step * row + u) as u64;
            *x *= dropout::keep::<T>(seed, stream, k, c.inter_layer_dropout);
        }
    }
}

/// Whether direction `dir` of a layer repeats its last real output at padded steps (Keras: a
/// forward direction outside a sequence-returning bidirectional layer).
fn carries_output(c: &RnnConfig, dir: usize, layer_returns_sequences: bool) -> bool {
    c.mask_semantics == MaskSemantics::Keras
        && dir == 0
        && !c.go_backwards
        && !(c.bidirectional && layer_returns_sequences)
}

impl<T: Real> Rnn<T> {
    /// Elements of `y` for `spec` (see the [module docs](super) for its shape).
    pub fn y_len(&self, spec: &RunSpec<'_>) -> Result<usize> {
        Ok(Sizes::new(self, spec)?.y_len)
    }
    /// Elements of `x` for `spec`.
    pub fn x_len(&self, spec: &RunSpec<'_>) -> Result<usize> {
        Ok(Sizes::new(self, spec)?.x_len)
    }
    /// Elements of a state buffer `[S, L·D, B, H]` for `batch` sequences.
    pub fn state_len(&self, batch: usize) -> Result<usize> {
        let c = &self.config;
        checked_size(
            "initial_state",
            &[c.cell.states(), c.cell_count(), batch, c.hidden_size],
        )
    }
    /// Elements of the training record [`Rnn::forward_train`] writes for `spec` (independent
    /// of the lengths: sized for `T·B` real rows).
    pub fn tape_len(&self, spec: &RunSpec<'_>) -> Result<usize> {
        Ok(Sizes::new(self, spec)?.tape_len())
    }

    /// Inference: runs the stack over `x` from `initial_state` (zeros when `None`), writing
    /// `y` ([`Rnn::y_len`]) and `final_state` ([`Rnn::state_len`]). No dropout.
    pub fn forward(
        &self,
        spec: &RunSpec<'_>,
        x: &[T],
        initial_state: Option<&[T]>,
        y: &mut [T],
        final_state: &mut [T],
    ) -> Result<()> {
        self.run(spec, x, initial_state, None, y, final_state)
    }

    /// Training forward: like [`Rnn::forward`] with dropout, recording into `tape` (at least
    /// [`Rnn::tape_len`] elements) what [`Rnn::bptt`] needs.
    pub fn forward_train(
        &self,
        spec: &RunSpec<'_>,
        x: &[T],
        initial_state: Option<&[T]>,
        tape: &mut [T],
        y: &mut [T],
        final_state: &mut [T],
    ) -> Result<()> {
        self.run(spec, x, initial_state, Some(tape), y, final_state)
    }

    fn check_io(
        &self,
        z: &Sizes,
        x: &[T],
        initial_state: Option<&[T]>,
        tape_len: Option<usize>,
    ) -> Result<()> {
        check_len("x", x.len(), z.x_len)?;
        if let Some(s) = initial_state {
            check_len("initial_state", s.len(), z.state_len)?;
        }
        if let Some(n) = tape_len.filter(|&n| n < z.tape_len()) {
            return Err(Error::Length {
                arg: "tape",
                expected: z.tape_len(),
                actual: n,
            });
        }
        Ok(())
    }

    /// The engine's view of cell `n` for this call.
    fn dir<'a>(
        &'a self,
        n: usize,
        plan: &'a Plan,
        masks: &'a (Option<Vec<T>>, Option<Vec<T>>),
    ) -> Dir<'a, T, AnyCell<T>> {
        let c = &self.config;
        let (layer, dir) = (n / c.directions(), n % c.directions());
        let cell = &self.cells[n];
        let fix = match (cell, &masks.1) {
            (AnyCell::Gru(gru), Some(_)) => Some(DropoutFix {
                gru,
                z_offset: crate::cell::gru::UPDATE * gru.hidden_size(),
            }),
            _ => None,
        };
        Dir {
            cell,
            plan,
            reverse: dir == 1 || reverses(c, layer),
            in_mask: masks.0.as_deref(),
            rec_mask: masks.1.as_deref(),
            fix,
        }
    }

    /// The dropout masks of cell `n` (training only).
    fn masks(&self, n: usize, b: usize, seed: u64, training: bool) -> Result<Masks<T>> {
        let c = &self.config;
        if !training {
            return Ok((None, None));
        }
        let (layer, dir) = (n / c.directions(), n % c.directions());
        Ok((
            dropout::mask(
                "input mask",
                seed,
                Stream::Input { layer, dir },
                checked_size("input mask", &[b, c.layer_input_size(layer)])?,
                c.dropout,
            )?,
            dropout::mask(
                "recurrent mask",
                seed,
                Stream::Recurrent { layer, dir },
                checked_size("recurrent mask", &[b, c.hidden_size])?,
                c.recurrent_dropout,
            )?,
        ))
    }

    /// The dropout masks a training run with `seed` over `batch` sequences uses for cell `n`
    /// (`layer·D + direction`): `[B, I_layer]` on the inputs and `[B, H]` on the recurrent
    /// state, already scaled (`0` or `1 / (1 − p)`); `None` where the rate is 0.
    ///
    /// Errors: [`Error::Invalid`] for a cell index `n` beyond the stack's; [`Error::Overflow`]
    /// or [`Error::Allocation`] for masks too large.
    pub fn dropout_masks(&self, seed: u64, batch: usize, n: usize) -> Result<Masks<T>> {
        self.check_cell_index(n)?;
        self.masks(n, batch, seed, true)
    }

    /// The inter-layer dropout mask on layer `layer`'s merged output `[T, B, W]` in a training
    /// run with `seed` (`None` when the rate is 0), in the order the next layer consumes the
    /// steps (processing order of a `go_backwards` layer).
    ///
    /// Errors: [`Error::Allocation`] for a mask too large.
    pub fn between_mask(&self, seed: u64, layer: usize, len: usize) -> Result<Option<Vec<T>>> {
        let p = self.config.inter_layer_dropout;
        dropout::mask("len", seed, Stream::Between { layer }, len, p)
    }

    /// `[S, B, H]` of cell `n` from a `[S, L·D, B, H]` buffer.
    fn state_of(&self, all: &[T], n: usize, b: usize) -> Vec<T> {
        let c = &self.config;
        let (h, ld) = (c.hidden_size, c.cell_count());
        let mut out = Vec::with_capacity(c.cell.states() * b * h);
        for j in 0..c.cell.states() {
            out.extend_from_slice(&all[(j * ld + n) * b * h..][..b * h]);
        }
        out
    }

    fn put_state(&self, all: &mut [T], n: usize, b: usize, one: &[T]) {
        let c = &self.config;
        let (h, ld) = (c.hidden_size, c.cell_count());
        for j in 0..c.cell.states() {
            all[(j * ld + n) * b * h..][..b * h].copy_from_slice(&one[j * b * h..][..b * h]);
        }
    }

    fn run(
        &self,
        spec: &RunSpec<'_>,
        x: &[T],
        initial_state: Option<&[T]>,
        tape: Option<&mut [T]>,
        y: &mut [T],
        final_state: &mut [T],
    ) -> Result<()> {
        let z = Sizes::new(self, spec)?;
        self.check_io(&z, x, initial_state, tape.as_ref().map(|t| t.len()))?;
        check_len("y", y.len(), z.y_len)?;
        check_len("final_state", final_state.len(), z.state_len)?;
        let c = &self.config;
        let plan = Plan::new(z.t, z.b, spec.lengths)?;
        let (t, b, h, dn) = (z.t, z.b, z.h, z.d);
        let training = tape.is_some();
        let w = c.merged_width();
        let zeros = try_filled("initial_state", z.state_len, T::ZERO)?;
        let initial = initial_state.unwrap_or(&zeros);
        // Training: every buffer lives in the tape. Inference: per-layer buffers.
        let mut local: Vec<Vec<T>> = if tape.is_some() {
            Vec::new()
        } else {
            z.parts
                .iter()
                .enumerate()
                .map(|(k, &n)| {
                    // Only outputs, final states and merged sequences are needed.
                    let kk = k % (5 * dn + 1);
                    if kk == 5 * dn || kk % 5 >= 3 {
                        try_filled("y", n, T::ZERO)
                    } else {
                        Ok(Vec::new())
                    }
                })
                .collect::<Result<_>>()?
        };
        let mut parts: Vec<&mut [T]> = match tape {
            Some(tp) => split_mut(&mut tp[..z.tape_len()], &z.parts),
            None => local.iter_mut().map(|v| &mut v[..]).collect(),
        };
        for l in 0..z.l {
            let rs_l = l + 1 < z.l || c.return_sequences;
            let first_part = z.part(l, 0, 0);
            let (before, from_layer) = parts.split_at_mut(first_part);
            let input = if l == 0 {
                SeqRef {
                    data: x,
                    layout: spec.layout,
                    t,
                    b,
                    w: c.input_size,
                }
            } else {
                SeqRef {
                    data: &*before[z.merged_part(l - 1)],
                    layout: Layout::TimeMajor,
                    t,
                    b,
                    w,
                }
            };
            let mut ydirs: Vec<&[T]> = Vec::with_capacity(dn);
            let mut fins: Vec<&[T]> = Vec::with_capacity(dn);
            let (layer_parts, after) = from_layer.split_at_mut(5 * dn);
            for (dir, chunk) in layer_parts.chunks_mut(5).enumerate() {
                let n = l * dn + dir;
                let masks = self.masks(n, b, spec.seed, training)?;
                let engine = self.dir(n, &plan, &masks);
                let init = self.state_of(initial, n, b);
                let [p0, p1, p2, p3, p4] = chunk else {
                    unreachable!("chunks of 5")
                };
                if !plan.full {
                    p3.fill(T::ZERO);
                }
                let rec = if training {
                    Some([&mut **p0, &mut **p1, &mut **p2])
                } else {
                    None
                };
                engine.forward(&input, &init, p3, p4, rec)?;
                if !plan.full && carries_output(c, dir, rs_l) {
                    for k in 0..b {
                        let (bb, len) = (plan.order[k], plan.lens[k]);
                        if len == 0 {
                            continue;
                        }
                        for s in len..t {
                            let (dst, src) = ((s * b + bb) * h, (len - 1) * b + bb);
                            p3.copy_within(src * h..src * h + h, dst);
                        }
                    }
                }
                self.put_state(final_state, n, b, p4);
            }
            for chunk in layer_parts.chunks(5) {
                ydirs.push(&*chunk[3]);
                fins.push(&*chunk[4]);
            }
            let merge = c.merge;
            if l + 1 < z.l {
                let merged = &mut *after[0];
                for s in 0..t {
                    for bb in 0..b {
                        let o = (s * b + bb) * h;
                        let out = &mut merged[(s * b + bb) * w..][..w];
                        merge_row(merge, &ydirs[0][o..o + h], second(&ydirs, o, h), out);
                    }
                }
                if training && c.inter_layer_dropout > 0.0 {
                    between_dropout(c, spec.seed, l, t, b * w, merged);
                }
                continue;
            }
            // The last layer: the caller's layout, direction and merge.
            let planes = c.output_planes();
            let wo = if planes == 2 { h } else { w };
            if rs_l {
                for p in 0..t {
                    let s = if reverses(c, z.l - 1) { t - 1 - p } else { p };
                    for bb in 0..b {
                        let o = (s * b + bb) * h;
                        if planes == 2 {
                            for (dir, yd) in ydirs.iter().enumerate() {
                                let dst = dir * t * b * h + row_offset(spec.layout, p, bb, t, b, h);
                                y[dst..dst + h].copy_from_slice(&yd[o..o + h]);
                            }
                        } else {
                            let dst = row_offset(spec.layout, p, bb, t, b, wo);
                            merge_row(
                                merge,
                                &ydirs[0][o..o + h],
                                second(&ydirs, o, h),
                                &mut y[dst..dst + wo],
                            );
                        }
                    }
                }
            } else {
                let lens = lengths_by_row(&plan);
                let zero_row = vec![T::ZERO; h];
                for bb in 0..b {
                    let last = |dir: usize| -> &[T] {
                        if lens[bb] == 0 {
                            &zero_row
                        } else {
                            &fins[dir][bb * h..(bb + 1) * h]
                        }
                    };
                    if planes == 2 {
                        for dir in 0..2 {
                            y[(dir * b + bb) * h..][..h].copy_from_slice(last(dir));
                        }
                    } else {
                        let b2 = (dn == 2).then(|| last(1));
                        merge_row(merge, last(0), b2, &mut y[bb * wo..(bb + 1) * wo]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Backpropagation through the stack over a record written by [`Rnn::forward_train`] with
    /// the same `spec` (lengths and seed included), `x` and `initial_state`.
    ///
    /// `dy` is shaped like `y`; `d_final_state` (`[S, L·D, B, H]`) is the upstream gradient on
    /// the final states, if the loss depends on them. `grads.dx` and `grads.d_initial_state`
    /// are overwritten; `grads.params` overwritten or accumulated into according to `mode`.
    #[allow(clippy::too_many_arguments)]
    pub fn bptt(
        &self,
        spec: &RunSpec<'_>,
        x: &[T],
        initial_state: Option<&[T]>,
        tape: &[T],
        dy: &[T],
        d_final_state: Option<&[T]>,
        grads: &mut RnnGrads<T>,
        mode: GradMode,
    ) -> Result<()> {
        let z = Sizes::new(self, spec)?;
        self.check_io(&z, x, initial_state, Some(tape.len()))?;
        check_len("dy", dy.len(), z.y_len)?;
        if let Some(g) = d_final_state {
            check_len("d_final_state", g.len(), z.state_len)?;
        }
        check_len("grads.dx", grads.dx.len(), z.x_len)?;
        check_len(
            "grads.d_initial_state",
            grads.d_initial_state.len(),
            z.state_len,
        )?;
        check_len("grads.params", grads.params.len(), self.cells.len())?;
        for (g, cell) in grads.params.iter_mut().zip(&self.cells) {
            let params = cell.params();
            check_len("grads.params[k]", g.len(), params.len())?;
            for (gi, p) in g.iter_mut().zip(&params) {
                check_len("grads.params[k][j]", gi.len(), p.data.len())?;
                if mode == GradMode::Overwrite {
                    gi.fill(T::ZERO);
                }
            }
        }
        let c = &self.config;
        let plan = Plan::new(z.t, z.b, spec.lengths)?;
        let (t, b, h, dn, s_count) = (z.t, z.b, z.h, z.d, z.s);
        let w = c.merged_width();
        let parts = split_ref(&tape[..z.tape_len()], &z.parts);
        let zeros = try_filled("initial_state", z.state_len, T::ZERO)?;
        let initial = initial_state.unwrap_or(&zeros);
        let lens = lengths_by_row(&plan);
        grads.dx.fill(T::ZERO);

        // ∂L/∂(merged output) of the current layer, time-major [T, B, W]; for the last layer
        // without return_sequences, ∂L/∂(last output) per direction instead.
        let last = z.l - 1;
        let planes = c.output_planes();
        let wo = if planes == 2 { h } else { w };
        // Row width of d_merged: both planes side by side for an unmerged last layer.
        let mut wcur = if planes == 2 { 2 * h } else { w };
        let mut d_merged = try_filled("dy", t * b * wcur, T::ZERO)?;
        let mut d_last: Vec<Vec<T>> = vec![vec![T::ZERO; b * h]; dn];
        {
            let fins: Vec<&[T]> = (0..dn).map(|d| parts[z.part(last, d, 4)]).collect();
            if c.return_sequences {
                for p in 0..t {
                    let s = if reverses(c, z.l - 1) { t - 1 - p } else { p };
                    for bb in 0..b {
                        if planes == 2 {
                            for dir in 0..2 {
                                let src = dir * t * b * h + row_offset(spec.layout, p, bb, t, b, h);
                                // Kept per direction: split below.
                                d_merged[(s * b + bb) * wcur + dir * h..][..h]
                                    .copy_from_slice(&dy[src..src + h]);
                            }
                        } else {
                            let src = row_offset(spec.layout, p, bb, t, b, wo);
                            d_merged[(s * b + bb) * w..][..w].copy_from_slice(&dy[src..src + wo]);
                        }
                    }
                }
            } else {
                let zero_row = vec![T::ZERO; h];
                for bb in 0..b {
                    if lens[bb] == 0 {
                        continue; // the output is a constant 0
                    }
                    if planes == 2 {
                        for (dir, dl) in d_last.iter_mut().enumerate() {
                            dl[bb * h..][..h].copy_from_slice(&dy[(dir * b + bb) * h..][..h]);
                        }
                    } else {
                        let a = &fins[0][bb * h..(bb + 1) * h];
                        let bsec = (dn == 2).then(|| &fins[1][bb * h..(bb + 1) * h]);
                        let (d0, d1) = d_last.split_at_mut(1);
                        let db = d1.first_mut().map(|v| &mut v[bb * h..(bb + 1) * h]);
                        let _ = &zero_row;
                        merge_row_back(
                            c.merge,
                            &dy[bb * wo..(bb + 1) * wo],
                            a,
                            bsec,
                            &mut d0[0][bb * h..(bb + 1) * h],
                            db,
                        );
                    }
                }
            }
        }
        let merge_back = if planes == 2 { Merge::Concat } else { c.merge };
        for l in (0..z.l).rev() {
            let rs_l = l + 1 < z.l || c.return_sequences;
            let il = c.layer_input_size(l);
            // ∂L/∂ each direction's output sequence.
            let mut dydirs: Vec<Vec<T>> = (0..dn)
                .map(|_| try_filled("dy", t * b * h, T::ZERO))
                .collect::<Result<_>>()?;
            if rs_l {
                let ydirs: Vec<&[T]> = (0..dn).map(|d| parts[z.part(l, d, 3)]).collect();
                for s in 0..t {
                    for bb in 0..b {
                        let o = (s * b + bb) * h;
                        let dout = &d_merged[(s * b + bb) * wcur..][..wcur];
                        let (d0, d1) = dydirs.split_at_mut(1);
                        let db = d1.first_mut().map(|v| &mut v[o..o + h]);
                        let bsec = (dn == 2).then(|| &ydirs[1][o..o + h]);
                        merge_row_back(
                            merge_back,
                            dout,
                            &ydirs[0][o..o + h],
                            bsec,
                            &mut d0[0][o..o + h],
                            db,
                        );
                    }
                }
            }
            let mut d_input = if l == 0 {
                Vec::new()
            } else {
                try_filled("dx", t * b * il, T::ZERO)?
            };
            for dir in 0..dn {
                let n = l * dn + dir;
                let masks = self.masks(n, b, spec.seed, true)?;
                let engine = self.dir(n, &plan, &masks);
                let mut d_fin = match d_final_state {
                    Some(g) => self.state_of(g, n, b),
                    None => vec![T::ZERO; s_count * b * h],
                };
                if !rs_l {
                    for (g, &v) in d_fin[..b * h].iter_mut().zip(&d_last[dir]) {
                        *g += v;
                    }
                }
                if rs_l && !plan.full && carries_output(c, dir, rs_l) {
                    // Padded outputs repeat the last real one: their gradient goes there.
                    let dyd = &mut dydirs[dir];
                    for bb in 0..b {
                        if lens[bb] == 0 {
                            continue;
                        }
                        for s in lens[bb]..t {
                            let o = (s * b + bb) * h;
                            for u in 0..h {
                                d_fin[bb * h + u] += dyd[o + u];
                                dyd[o + u] = T::ZERO;
                            }
                        }
                    }
                }
                let input = if l == 0 {
                    SeqRef {
                        data: x,
                        layout: spec.layout,
                        t,
                        b,
                        w: c.input_size,
                    }
                } else {
                    SeqRef {
                        data: parts[z.merged_part(l - 1)],
                        layout: Layout::TimeMajor,
                        t,
                        b,
                        w,
                    }
                };
                let rec = [
                    parts[z.part(l, dir, 0)],
                    parts[z.part(l, dir, 1)],
                    parts[z.part(l, dir, 2)],
                ];
                let mut d_init = vec![T::ZERO; s_count * b * h];
                let dx: &mut [T] = if l == 0 { &mut grads.dx } else { &mut d_input };
                engine.backward(
                    &input,
                    rec,
                    &dydirs[dir],
                    &d_fin,
                    dx,
                    &mut d_init,
                    &mut grads.params[n],
                )?;
                self.put_state(&mut grads.d_initial_state, n, b, &d_init);
            }
            if l > 0 {
                if c.inter_layer_dropout > 0.0 {
                    between_dropout(c, spec.seed, l - 1, t, b * w, &mut d_input);
                }
                d_merged = d_input;
                wcur = w;
            }
        }
        let _ = (initial, CellConfig::gates);
        Ok(())
    }
}

/// Direction 1's row at `o`, if there are two directions.
fn second<'a, T>(v: &[&'a [T]], o: usize, h: usize) -> Option<&'a [T]> {
    v.get(1).map(|d| &d[o..o + h])
}

/// Each caller row's length.
fn lengths_by_row(plan: &Plan) -> Vec<usize> {
    let mut lens = vec![0; plan.b];
    for (k, &r) in plan.order.iter().enumerate() {
        lens[r] = plan.lens[k];
    }
    lens
}
