//! The conformance runner for `rnn-fixture-v1` fixtures (see `docs/FIXTURES.md`).
//!
//! Self-contained: shared by `tests/conformance.rs` and `examples/conformance.rs`, each of
//! which includes this file with `#[path]`. It uses only `safetensors` and the public
//! `fused_rnn` API.
//!
//! Every `*.safetensors` file of a directory (sorted by name) is one case:
//! - its metadata is parsed and checked against the format (every key, every value, the
//!   fillers of keys that do not apply); a file that cannot be read or whose metadata is
//!   unknown or invalid FAILS with the reason;
//! - a case using a feature the runner does not implement yet (`num_layers > 1`,
//!   `bidirectional`, `has_mask`) is SKIPPED with the reason, never passed;
//! - otherwise the file's tensors must be exactly the ones the format prescribes (names,
//!   shapes, dtype); the cell is built from the weights in the file's own layout through
//!   `fused_rnn::layout`, run batch-major in the fixture's dtype, and `y`, `h_n`, `c_n` and —
//!   for gradient fixtures — `grad.x`, `grad.h0`, `grad.c0` and every `grad.<weight>` are
//!   compared with the fixture's tolerance.
//!
//! Output: one line per case, `PASS name`, `FAIL name: <reason>` or `SKIP name: <reason>`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fused_rnn::cell::Recurrent;
use fused_rnn::layout::{Framework, KerasWeights, LayoutKind, TorchWeights};
use fused_rnn::prelude::*;
use fused_rnn::{Activation, Real};
use safetensors::{Dtype, SafeTensors};

/// The value of metadata `format` this runner reads.
pub const FORMAT: &str = "rnn-fixture-v1";

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every compared tensor is within tolerance.
    Pass,
    /// A mismatch, or a file that cannot be read or is not a valid fixture; the reason.
    Fail(String),
    /// The case uses features the runner does not implement yet; which ones.
    Skip(String),
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    /// The file name without `.safetensors`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What happened.
    pub outcome: Outcome,
}

impl CaseReport {
    /// The line printed for the case.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Pass => format!("PASS {}", self.name),
            Outcome::Fail(why) => format!("FAIL {}: {why}", self.name),
            Outcome::Skip(why) => format!("SKIP {}: {why}", self.name),
        }
    }
}

/// The counts of a run, and every case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed (including unreadable or invalid files).
    pub failed: usize,
    /// Cases skipped for using later features.
    pub skipped: usize,
    /// Every case, in the order run.
    pub cases: Vec<CaseReport>,
}

impl Summary {
    /// The closing line: `N passed, N failed, N skipped`.
    pub fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Runs every `*.safetensors` file in `dir` (sorted by name), writing one line per case to
/// `out`. Errors (as a message) when `dir` cannot be listed, holds no fixture, or `out`
/// cannot be written; a bad *file* is a failed case, not an error.
pub fn run_dir(dir: &Path, out: &mut dyn Write) -> Result<Summary, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(format!("no *.safetensors fixtures in `{}`", dir.display()));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut summary = Summary::default();
    for path in files {
        let report = run_file(&path);
        writeln!(out, "{}", report.line()).map_err(|e| format!("cannot write output: {e}"))?;
        match report.outcome {
            Outcome::Pass => summary.passed += 1,
            Outcome::Fail(_) => summary.failed += 1,
            Outcome::Skip(_) => summary.skipped += 1,
        }
        summary.cases.push(report);
    }
    Ok(summary)
}

/// Runs one fixture file. Never panics: a panic inside the library is reported as a failure.
pub fn run_file(path: &Path) -> CaseReport {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let outcome = match catch_unwind(AssertUnwindSafe(|| run_case(path))) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(why)) => Outcome::Fail(why),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown payload".to_string());
            Outcome::Fail(format!("panicked: {msg}"))
        }
    };
    CaseReport {
        name,
        path: path.to_path_buf(),
        outcome,
    }
}

// ------------------------------------------------------------------ metadata

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellType {
    SimpleRnn,
    Lstm,
    Gru,
}

impl CellType {
    fn gates(self) -> usize {
        match self {
            CellType::SimpleRnn => 1,
            CellType::Lstm => 4,
            CellType::Gru => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32,
    F64,
}

/// A fixture's parsed metadata.
#[derive(Debug, Clone)]
struct Meta {
    source: Framework,
    cell: CellType,
    dtype: DType,
    input_size: usize,
    units: usize,
    batch: usize,
    time_steps: usize,
    num_layers: usize,
    bidirectional: bool,
    return_sequences: bool,
    go_backwards: bool,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    reset_after: bool,
    has_initial_state: bool,
    has_mask: bool,
    has_grads: bool,
}

/// Every metadata key of the format.
const KEYS: [&str; 21] = [
    "format",
    "source",
    "framework_version",
    "cell",
    "dtype",
    "input_size",
    "units",
    "batch",
    "time_steps",
    "num_layers",
    "bidirectional",
    "merge_mode",
    "return_sequences",
    "go_backwards",
    "activation",
    "recurrent_activation",
    "use_bias",
    "reset_after",
    "has_initial_state",
    "has_mask",
    "has_grads",
];

struct MetaReader<'m>(&'m HashMap<String, String>);

impl MetaReader<'_> {
    fn get(&self, key: &str) -> Result<&str, String> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("invalid metadata: key `{key}` is missing"))
    }

    /// The value of `key`, which must be one of `allowed`.
    fn one_of<'a>(&self, key: &str, allowed: &[&'a str]) -> Result<&'a str, String> {
        let v = self.get(key)?;
        allowed.iter().copied().find(|a| *a == v).ok_or_else(|| {
            format!(
                "invalid metadata: unknown {key} `{v}`, expected one of: {}",
                allowed.join(", ")
            )
        })
    }

    fn boolean(&self, key: &str) -> Result<bool, String> {
        Ok(self.one_of(key, &["true", "false"])? == "true")
    }

    /// A decimal integer of at least 1.
    fn size(&self, key: &str) -> Result<usize, String> {
        let v = self.get(key)?;
        match v.parse::<usize>() {
            Ok(n) if n >= 1 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!(
                "invalid metadata: {key} `{v}` is not an integer of at least 1"
            )),
        }
    }
}

/// A filler or constraint violation.
fn expect_value(key: &str, actual: &str, expected: &str, why: &str) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "invalid metadata: {key} is `{actual}`, expected `{expected}` {why}"
        ))
    }
}

fn parse_meta(map: &HashMap<String, String>) -> Result<Meta, String> {
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !KEYS.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(format!(
            "invalid metadata: unknown key(s) {}",
            unknown.join(", ")
        ));
    }
    let r = MetaReader(map);
    r.one_of("format", &[FORMAT])?;
    let source = match r.one_of("source", &["keras", "torch"])? {
        "keras" => Framework::Keras,
        _ => Framework::Torch,
    };
    if r.get("framework_version")?.is_empty() {
        return Err("invalid metadata: framework_version is empty".into());
    }
    let cell = match r.one_of("cell", &["simple_rnn", "lstm", "gru"])? {
        "simple_rnn" => CellType::SimpleRnn,
        "lstm" => CellType::Lstm,
        _ => CellType::Gru,
    };
    let dtype = match r.one_of("dtype", &["f32", "f64"])? {
        "f32" => DType::F32,
        _ => DType::F64,
    };
    let activation = r.one_of("activation", &["tanh", "relu", "sigmoid", "linear"])?;
    let recurrent_activation = r.one_of("recurrent_activation", &["sigmoid", "hard_sigmoid"])?;
    let merge_mode = r.one_of("merge_mode", &["concat", "sum", "mul", "ave"])?;
    let m = Meta {
        source,
        cell,
        dtype,
        input_size: r.size("input_size")?,
        units: r.size("units")?,
        batch: r.size("batch")?,
        time_steps: r.size("time_steps")?,
        num_layers: r.size("num_layers")?,
        bidirectional: r.boolean("bidirectional")?,
        return_sequences: r.boolean("return_sequences")?,
        go_backwards: r.boolean("go_backwards")?,
        activation: Activation::from_name(activation).map_err(|e| e.to_string())?,
        recurrent_activation: Activation::from_name(recurrent_activation)
            .map_err(|e| e.to_string())?,
        use_bias: r.boolean("use_bias")?,
        reset_after: r.boolean("reset_after")?,
        has_initial_state: r.boolean("has_initial_state")?,
        has_mask: r.boolean("has_mask")?,
        has_grads: r.boolean("has_grads")?,
    };
    // Fillers of keys that do not apply, and what each framework can express.
    let cell_name = r.get("cell")?;
    if m.cell != CellType::Gru {
        expect_value(
            "reset_after",
            r.get("reset_after")?,
            "false",
            &format!("for cell {cell_name}"),
        )?;
    }
    if m.cell == CellType::SimpleRnn {
        expect_value(
            "recurrent_activation",
            recurrent_activation,
            "sigmoid",
            "for cell simple_rnn",
        )?;
    }
    if !m.bidirectional || source == Framework::Torch {
        let why = if m.bidirectional {
            "for source torch"
        } else {
            "when not bidirectional"
        };
        expect_value("merge_mode", merge_mode, "concat", why)?;
    }
    if source == Framework::Torch {
        let why = "for source torch";
        expect_value("return_sequences", r.get("return_sequences")?, "true", why)?;
        expect_value("go_backwards", r.get("go_backwards")?, "false", why)?;
        expect_value("recurrent_activation", recurrent_activation, "sigmoid", why)?;
        match m.cell {
            CellType::SimpleRnn if !matches!(activation, "tanh" | "relu") => {
                return Err(format!(
                    "invalid metadata: activation `{activation}` does not exist for a torch \
                     simple_rnn (tanh, relu)"
                ));
            }
            CellType::SimpleRnn => {}
            _ => expect_value("activation", activation, "tanh", why)?,
        }
        if m.cell == CellType::Gru {
            expect_value(
                "reset_after",
                r.get("reset_after")?,
                "true",
                "for a torch gru",
            )?;
        }
    }
    Ok(m)
}

/// Features of `m` the runner does not implement yet.
fn later_features(m: &Meta) -> Vec<String> {
    let mut v = Vec::new();
    if m.num_layers > 1 {
        v.push(format!("num_layers = {} (stacked layers)", m.num_layers));
    }
    if m.bidirectional {
        v.push("bidirectional = true".to_string());
    }
    if m.has_mask {
        v.push("has_mask = true (masking / packed sequences)".to_string());
    }
    v
}

// ------------------------------------------------------------------ tensors

/// What the format prescribes for one tensor.
#[derive(Debug, Clone)]
struct Expected {
    shape: Vec<usize>,
    required: bool,
}

/// Names of the weight tensors of a one-layer, one-direction fixture, in the order
/// kernel, recurrent kernel, biases.
fn weight_names(m: &Meta) -> Vec<String> {
    let names: &[&str] = match (m.source, m.use_bias) {
        (Framework::Torch, true) => &["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"],
        (Framework::Torch, false) => &["weight_ih_l0", "weight_hh_l0"],
        (_, true) => &["l0.fwd.kernel", "l0.fwd.recurrent_kernel", "l0.fwd.bias"],
        (_, false) => &["l0.fwd.kernel", "l0.fwd.recurrent_kernel"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// Every tensor a one-layer, one-direction fixture holds, with its shape.
fn expected_tensors(m: &Meta) -> BTreeMap<String, Expected> {
    let (b, t, i, h) = (m.batch, m.time_steps, m.input_size, m.units);
    let gh = m.cell.gates() * h;
    let lstm = m.cell == CellType::Lstm;
    let mut e = BTreeMap::new();
    let mut add = |name: &str, shape: Vec<usize>, required: bool| {
        e.insert(name.to_string(), Expected { shape, required });
    };
    let state = vec![1, b, h];
    let y = if m.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    add("x", vec![b, t, i], true);
    if m.has_initial_state {
        add("h0", state.clone(), true);
        if lstm {
            add("c0", state.clone(), true);
        }
    }
    let weights = weight_names(m);
    let shapes: Vec<Vec<usize>> = match m.source {
        Framework::Torch => vec![vec![gh, i], vec![gh, h], vec![gh], vec![gh]],
        _ => {
            let bias = if m.cell == CellType::Gru && m.reset_after {
                vec![2, gh]
            } else {
                vec![gh]
            };
            vec![vec![i, gh], vec![h, gh], bias]
        }
    };
    for (name, shape) in weights.iter().zip(&shapes) {
        add(name, shape.clone(), true);
    }
    add("y", y.clone(), true);
    add("h_n", state.clone(), true);
    if lstm {
        add("c_n", state.clone(), true);
    }
    if m.has_grads {
        add("dy", y, true);
        add("dh_n", state.clone(), false);
        if lstm {
            add("dc_n", state.clone(), false);
        }
        add("grad.x", vec![b, t, i], true);
        if m.has_initial_state {
            add("grad.h0", state.clone(), true);
            if lstm {
                add("grad.c0", state, true);
            }
        }
        for (name, shape) in weights.iter().zip(&shapes) {
            add(&format!("grad.{name}"), shape.clone(), true);
        }
    }
    e
}

/// Every tensor of the file as `f64` (exact for both dtypes), after checking the set of
/// names, every shape and every dtype against the format.
fn load_tensors(m: &Meta, st: &SafeTensors<'_>) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let expected = expected_tensors(m);
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    if let Some(extra) = names.iter().find(|n| !expected.contains_key(*n)) {
        return Err(format!("unexpected tensor `{extra}`"));
    }
    if let Some((missing, _)) = expected
        .iter()
        .find(|(n, e)| e.required && !names.contains(n))
    {
        return Err(format!("missing tensor `{missing}`"));
    }
    let want_dtype = match m.dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    };
    let mut out = BTreeMap::new();
    for name in names {
        let view = st
            .tensor(&name)
            .map_err(|e| format!("cannot read tensor `{name}`: {e}"))?;
        if view.dtype() != want_dtype {
            return Err(format!(
                "tensor `{name}` is {:?}, the metadata says dtype {:?}",
                view.dtype(),
                want_dtype
            ));
        }
        let shape = &expected[&name].shape;
        if view.shape() != &shape[..] {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                view.shape(),
                shape
            ));
        }
        let data = view.data();
        let values: Vec<f64> = match m.dtype {
            DType::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        };
        out.insert(name, values);
    }
    Ok(out)
}

// ------------------------------------------------------------------ comparison

/// `|got - want| <= atol + rtol * |want|`, element-wise.
#[derive(Debug, Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

/// The fixture's tolerances: (outputs and states, gradients).
fn tolerances(dtype: DType) -> (Tol, Tol) {
    match dtype {
        DType::F32 => (
            Tol {
                rtol: 1e-4,
                atol: 1e-5,
            },
            Tol {
                rtol: 1e-3,
                atol: 1e-4,
            },
        ),
        DType::F64 => {
            let t = Tol {
                rtol: 1e-9,
                atol: 1e-11,
            };
            (t, t)
        }
    }
}

/// Row-major multi-index of flat index `flat` in `shape`.
fn multi_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            idx[d] = flat % n;
            flat /= n;
        }
    }
    idx
}

/// `None` when every element of `got` is within `tol` of `want` (NaN never is); otherwise
/// the worst element.
fn compare(name: &str, shape: &[usize], got: &[f64], want: &[f64], tol: Tol) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!(
            "{name} has {} values, the fixture {}",
            got.len(),
            want.len()
        ));
    }
    let mut bad = 0usize;
    // (excess over the tolerance, index); NaN counts as infinitely bad.
    let mut worst: Option<(f64, usize)> = None;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let ok = err <= tol.atol + tol.rtol * w.abs(); // false for NaN
        if !ok {
            bad += 1;
            let excess = if err.is_nan() {
                f64::INFINITY
            } else {
                err - (tol.atol + tol.rtol * w.abs())
            };
            if worst.is_none_or(|(e, _)| excess > e) {
                worst = Some((excess, k));
            }
        }
    }
    worst.map(|(_, k)| {
        format!(
            "{name} worst |err| {:.3e} at index {:?} got {:e} want {:e} \
             ({bad} of {} values out of tolerance, rtol {:e} atol {:e})",
            (got[k] - want[k]).abs(),
            multi_index(k, shape),
            got[k],
            want[k],
            got.len(),
            tol.rtol,
            tol.atol
        )
    })
}

// ------------------------------------------------------------------ running

/// Reads, validates and runs one file: `Err` is a failure with its reason.
fn run_case(path: &Path) -> Result<Outcome, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let map = header
        .metadata()
        .as_ref()
        .ok_or("invalid metadata: the file has no __metadata__")?;
    let meta = parse_meta(map)?;
    let later = later_features(&meta);
    if !later.is_empty() {
        return Ok(Outcome::Skip(format!(
            "uses features not implemented yet: {}",
            later.join(", ")
        )));
    }
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let tensors = load_tensors(&meta, &st)?;
    let failures = match meta.dtype {
        DType::F32 => run_typed::<f32>(&meta, &tensors)?,
        DType::F64 => run_typed::<f64>(&meta, &tensors)?,
    };
    if failures.is_empty() {
        Ok(Outcome::Pass)
    } else {
        Ok(Outcome::Fail(failures.join("; ")))
    }
}

/// Dispatches on the cell kind.
fn run_typed<T: engine::EngineReal>(
    m: &Meta,
    t: &BTreeMap<String, Vec<f64>>,
) -> Result<Vec<String>, String> {
    match m.cell {
        CellType::SimpleRnn => run_cell::<T, _>(
            m,
            t,
            SimpleRnnKind {
                activation: m.activation,
            },
        ),
        CellType::Lstm => run_cell::<T, _>(
            m,
            t,
            LstmKind {
                activation: m.activation,
                recurrent_activation: m.recurrent_activation,
            },
        ),
        CellType::Gru => run_cell::<T, _>(
            m,
            t,
            GruKind {
                activation: m.activation,
                recurrent_activation: m.recurrent_activation,
                reset_after: m.reset_after,
            },
        ),
    }
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Builds the cell from the file's weights, runs it, and returns one message per tensor out
/// of tolerance.
fn run_cell<T: engine::EngineReal, K: LayoutKind>(
    m: &Meta,
    t: &BTreeMap<String, Vec<f64>>,
    kind: K,
) -> Result<Vec<String>, String> {
    let (b, h) = (m.batch, m.units);
    let bh = b * h;
    let lstm = m.cell == CellType::Lstm;
    let get = |name: &str| -> &[f64] { &t[name] };
    let opt = |name: &str| -> Option<Vec<T>> { t.get(name).map(|v| to_t(v)) };
    let weights = weight_names(m);
    let (input, hidden) = (Dyn(m.input_size), Dyn(h));
    let cell: Recurrent<T, K, Dyn, Dyn> = match m.source {
        Framework::Torch => Recurrent::from_torch(
            input,
            hidden,
            kind,
            &TorchWeights {
                weight_ih: to_t(get(&weights[0])),
                weight_hh: to_t(get(&weights[1])),
                bias_ih: weights.get(2).and_then(|n| opt(n)),
                bias_hh: weights.get(3).and_then(|n| opt(n)),
            },
        ),
        _ => Recurrent::from_keras(
            input,
            hidden,
            kind,
            &KerasWeights {
                kernel: to_t(get(&weights[0])),
                recurrent_kernel: to_t(get(&weights[1])),
                bias: weights.get(2).and_then(|n| opt(n)),
            },
        ),
    }
    .map_err(|e| format!("cannot build the cell from the fixture's weights: {e}"))?;

    let spec = SeqSpec::new(m.time_steps, b)
        .layout(Layout::BatchMajor)
        .go_backwards(m.go_backwards)
        .return_sequences(m.return_sequences);
    let x: Vec<T> = to_t(get("x"));
    // [S, B, H]: h then c; for one layer and direction that is `h0` and `c0` stacked.
    let initial: Option<Vec<T>> = m.has_initial_state.then(|| {
        let mut s = to_t(get("h0"));
        if lstm {
            s.extend(to_t::<T>(get("c0")));
        }
        s
    });
    let engine = |e: fused_rnn::Error| format!("the engine rejected the case: {e}");

    let (out, grads) = if m.has_grads {
        let mut tape = vec![T::ZERO; seq::tape_len(&cell, &spec).map_err(engine)?];
        let out = engine::forward_train(&cell, &spec, &x, initial.as_deref(), &mut tape)
            .map_err(engine)?;
        let dy: Vec<T> = to_t(get("dy"));
        let (dh, dc) = (t.get("dh_n"), t.get("dc_n"));
        // The loss has a state term only when the fixture gives one.
        let d_final: Option<Vec<T>> = (dh.is_some() || dc.is_some()).then(|| {
            let zeros = vec![0.0; bh];
            let mut s = to_t(dh.unwrap_or(&zeros));
            if lstm {
                s.extend(to_t::<T>(dc.unwrap_or(&zeros)));
            }
            s
        });
        let g = engine::bptt(
            &cell,
            &spec,
            &x,
            initial.as_deref(),
            &tape,
            &dy,
            d_final.as_deref(),
        )
        .map_err(engine)?;
        (out, Some(g))
    } else {
        (
            engine::forward(&cell, &spec, &x, initial.as_deref()).map_err(engine)?,
            None,
        )
    };

    let (tol_out, tol_grad) = tolerances(m.dtype);
    let expected = expected_tensors(m);
    let mut checks: Vec<(String, Vec<f64>, Tol)> = vec![
        ("y".into(), to_f64(&out.y), tol_out),
        ("h_n".into(), to_f64(&out.final_state[..bh]), tol_out),
    ];
    if lstm {
        checks.push(("c_n".into(), to_f64(&out.final_state[bh..2 * bh]), tol_out));
    }
    if let Some(g) = grads {
        checks.push(("grad.x".into(), to_f64(&g.dx), tol_grad));
        if m.has_initial_state {
            checks.push(("grad.h0".into(), to_f64(&g.d_initial_state[..bh]), tol_grad));
            if lstm {
                checks.push((
                    "grad.c0".into(),
                    to_f64(&g.d_initial_state[bh..2 * bh]),
                    tol_grad,
                ));
            }
        }
        let fw: Vec<Vec<T>> = match m.source {
            Framework::Torch => {
                let w = cell
                    .torch_grads(&g.params)
                    .map_err(|e| format!("cannot convert the gradients: {e}"))?;
                [Some(w.weight_ih), Some(w.weight_hh), w.bias_ih, w.bias_hh]
                    .into_iter()
                    .flatten()
                    .collect()
            }
            _ => {
                let w = cell
                    .keras_grads(&g.params)
                    .map_err(|e| format!("cannot convert the gradients: {e}"))?;
                [Some(w.kernel), Some(w.recurrent_kernel), w.bias]
                    .into_iter()
                    .flatten()
                    .collect()
            }
        };
        if fw.len() != weights.len() {
            return Err(format!(
                "the cell has {} parameter tensors, the fixture {}",
                fw.len(),
                weights.len()
            ));
        }
        for (name, v) in weights.iter().zip(fw) {
            checks.push((format!("grad.{name}"), to_f64(&v), tol_grad));
        }
    }
    Ok(checks
        .iter()
        .filter_map(|(name, got, tol)| compare(name, &expected[name].shape, got, get(name), *tol))
        .collect())
}

/// Where the runner runs the cells: the CPU engine (`fused_rnn::seq`, the default) or, with
/// the `cuda` feature and after [`engine::use_cuda`], the GPU engine (`fused_rnn::cuda::host`),
/// which has the same signatures.
pub mod engine {
    use fused_rnn::cell::{CellKind, Recurrent};
    use fused_rnn::prelude::*;

    /// The element types the runner instantiates (f32, f64), with what the GPU engine needs.
    #[cfg(feature = "cuda")]
    pub trait EngineReal: fused_rnn::cuda::CudaReal {}
    #[cfg(feature = "cuda")]
    impl<T: fused_rnn::cuda::CudaReal> EngineReal for T {}
    /// The element types the runner instantiates (f32, f64).
    #[cfg(not(feature = "cuda"))]
    pub trait EngineReal: fused_rnn::Real {}
    #[cfg(not(feature = "cuda"))]
    impl<T: fused_rnn::Real> EngineReal for T {}

    #[cfg(feature = "cuda")]
    mod gpu {
        use std::sync::{Arc, OnceLock};

        use fused_rnn::cuda::{CudaDevice, CudaStream};

        pub static DEVICE: OnceLock<(CudaDevice, Arc<CudaStream>)> = OnceLock::new();
    }

    /// Runs every later case on GPU 0; the error says why that is impossible (no driver, no
    /// device).
    #[cfg(feature = "cuda")]
    pub fn use_cuda() -> Result<String> {
        let device = fused_rnn::cuda::CudaDevice::new(0)?;
        let name = device.name()?;
        let stream = device.default_stream();
        let _ = gpu::DEVICE.set((device, stream));
        Ok(name)
    }

    #[cfg(feature = "cuda")]
    fn on_gpu<T: EngineReal, K: CellKind, R>(
        cell: &Recurrent<T, K, Dyn, Dyn>,
        run: impl FnOnce(
            &fused_rnn::cuda::DeviceCell<T>,
            &std::sync::Arc<fused_rnn::cuda::CudaStream>,
        ) -> Result<R>,
    ) -> Option<Result<R>> {
        let (device, stream) = gpu::DEVICE.get()?;
        Some(fused_rnn::cuda::DeviceCell::new(device, stream, cell).and_then(|c| run(&c, stream)))
    }

    /// `seq::forward`, on the selected engine.
    pub fn forward<T: EngineReal, K: CellKind>(
        cell: &Recurrent<T, K, Dyn, Dyn>,
        spec: &SeqSpec,
        x: &[T],
        initial: Option<&[T]>,
    ) -> Result<Output<T>> {
        #[cfg(feature = "cuda")]
        if let Some(r) = on_gpu(cell, |c, s| {
            fused_rnn::cuda::host::forward(c, s, spec, x, initial)
        }) {
            return r;
        }
        seq::forward(cell, spec, x, initial)
    }

    /// `seq::forward_train`, on the selected engine.
    pub fn forward_train<T: EngineReal, K: CellKind>(
        cell: &Recurrent<T, K, Dyn, Dyn>,
        spec: &SeqSpec,
        x: &[T],
        initial: Option<&[T]>,
        tape: &mut [T],
    ) -> Result<Output<T>> {
        #[cfg(feature = "cuda")]
        if let Some(r) = on_gpu(cell, |c, s| {
            fused_rnn::cuda::host::forward_train(c, s, spec, x, initial, tape)
        }) {
            return r;
        }
        seq::forward_train(cell, spec, x, initial, tape)
    }

    /// `seq::bptt`, on the selected engine.
    #[allow(clippy::too_many_arguments)]
    pub fn bptt<T: EngineReal, K: CellKind>(
        cell: &Recurrent<T, K, Dyn, Dyn>,
        spec: &SeqSpec,
        x: &[T],
        initial: Option<&[T]>,
        tape: &[T],
        dy: &[T],
        d_final: Option<&[T]>,
    ) -> Result<Gradients<T>> {
        #[cfg(feature = "cuda")]
        if let Some(r) = on_gpu(cell, |c, s| {
            fused_rnn::cuda::host::bptt(c, s, spec, x, initial, tape, dy, d_final)
        }) {
            return r;
        }
        seq::bptt(cell, spec, x, initial, tape, dy, d_final)
    }
}
