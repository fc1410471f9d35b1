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
//! - every case of the format runs (stacked, bidirectional with every merge mode, masked with
//!   Keras or PyTorch semantics by `source`); nothing is skipped;
//! - the file's tensors must be exactly the ones the format prescribes (names, shapes,
//!   dtype); the stack is built from the weights in the file's own names and layout through
//!   `fused_rnn::layer::io`, run batch-major in the fixture's dtype, and `y`, `h_n`, `c_n` and —
//!   for gradient fixtures — `grad.x`, `grad.h0`, `grad.c0` and every `grad.<weight>` are
//!   compared with the fixture's tolerance.
//!
//! Output: one line per case, `PASS name`, `FAIL name: <reason>` or `SKIP name: <reason>`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fused_rnn::layer::{
    CellConfig, MaskSemantics, Merge, Rnn, RnnConfig, RnnGrads, RunSpec, io, lengths_from_mask,
};
use fused_rnn::layout::Framework;
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
    merge: Merge,
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
        merge: Merge::from_name(merge_mode).map_err(|e| e.to_string())?,
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

/// The layer descriptor of a fixture.
fn config(m: &Meta) -> Result<RnnConfig, String> {
    let cell = match m.cell {
        CellType::SimpleRnn => CellConfig::SimpleRnn(SimpleRnnKind {
            activation: m.activation,
        }),
        CellType::Lstm => CellConfig::Lstm(LstmKind {
            activation: m.activation,
            recurrent_activation: m.recurrent_activation,
        }),
        CellType::Gru => CellConfig::Gru(GruKind {
            activation: m.activation,
            recurrent_activation: m.recurrent_activation,
            reset_after: m.reset_after,
        }),
    };
    let mut c = RnnConfig::new(cell, m.input_size, m.units)
        .layers(m.num_layers)
        .use_bias(m.use_bias)
        .go_backwards(m.go_backwards)
        .return_sequences(m.return_sequences)
        .mask_semantics(match m.source {
            Framework::Torch => MaskSemantics::Packed,
            _ => MaskSemantics::Keras,
        });
    if m.bidirectional {
        c = c.bidirectional(m.merge);
    }
    c.validate()
        .map_err(|e| format!("unsupported configuration: {e}"))?;
    Ok(c)
}

// ------------------------------------------------------------------ tensors

/// What the format prescribes for one tensor.
#[derive(Debug, Clone)]
struct Expected {
    shape: Vec<usize>,
    required: bool,
}

/// Names and shapes of the weight tensors, layer by layer and direction by direction.
fn weight_names(m: &Meta, c: &RnnConfig) -> Result<Vec<(String, Vec<usize>)>, String> {
    io::tensor_names(c, m.source).map_err(|e| format!("unsupported configuration: {e}"))
}

/// Every tensor the fixture holds, with its shape.
fn expected_tensors(m: &Meta, c: &RnnConfig) -> Result<BTreeMap<String, Expected>, String> {
    let (b, t, i, h) = (m.batch, m.time_steps, m.input_size, m.units);
    let lstm = m.cell == CellType::Lstm;
    let mut e = BTreeMap::new();
    let mut add = |name: &str, shape: Vec<usize>, required: bool| {
        e.insert(name.to_string(), Expected { shape, required });
    };
    let state = vec![c.cell_count(), b, h];
    let w = c.merged_width();
    let y = if m.return_sequences {
        vec![b, t, w]
    } else {
        vec![b, w]
    };
    add("x", vec![b, t, i], true);
    if m.has_mask {
        add("mask", vec![b, t], true);
    }
    if m.has_initial_state {
        add("h0", state.clone(), true);
        if lstm {
            add("c0", state.clone(), true);
        }
    }
    let weights = weight_names(m, c)?;
    for (name, shape) in &weights {
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
        for (name, shape) in &weights {
            add(&format!("grad.{name}"), shape.clone(), true);
        }
    }
    Ok(e)
}

/// Every tensor of the file as `f64` (exact for both dtypes), after checking the set of
/// names, every shape and every dtype against the format.
fn load_tensors(
    m: &Meta,
    c: &RnnConfig,
    st: &SafeTensors<'_>,
) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let expected = expected_tensors(m, c)?;
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
    let config = config(&meta)?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let tensors = load_tensors(&meta, &config, &st)?;
    let failures = match meta.dtype {
        DType::F32 => run_typed::<f32>(&meta, &config, &tensors)?,
        DType::F64 => run_typed::<f64>(&meta, &config, &tensors)?,
    };
    if failures.is_empty() {
        Ok(Outcome::Pass)
    } else {
        Ok(Outcome::Fail(failures.join("; ")))
    }
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn to_f64<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Builds the stack from the file's weights, runs it, and returns one message per tensor out
/// of tolerance.
fn run_typed<T: Real>(
    m: &Meta,
    c: &RnnConfig,
    t: &BTreeMap<String, Vec<f64>>,
) -> Result<Vec<String>, String> {
    let expected = expected_tensors(m, c)?;
    let get = |name: &str| -> &[f64] { &t[name] };
    let weights = weight_names(m, c)?;
    let named: HashMap<String, (Vec<usize>, Vec<T>)> = weights
        .iter()
        .map(|(n, shape)| (n.clone(), (shape.clone(), to_t(get(n)))))
        .collect();
    let rnn: Rnn<T> = io::from_tensors(*c, m.source, &named)
        .map_err(|e| format!("cannot build the layers from the fixture's weights: {e}"))?;
    let lengths = match t.get("mask") {
        Some(mask) => Some(
            lengths_from_mask(mask, m.batch, m.time_steps)
                .map_err(|e| format!("invalid mask: {e}"))?,
        ),
        None => None,
    };
    let mut spec = RunSpec::new(m.time_steps, m.batch).layout(Layout::BatchMajor);
    if let Some(l) = &lengths {
        spec = spec.lengths(l);
    }
    let lstm = m.cell == CellType::Lstm;
    let sl = c.cell_count() * m.batch * m.units;
    let x: Vec<T> = to_t(get("x"));
    // [S, L·D, B, H]: `h0` then `c0`.
    let initial: Option<Vec<T>> = m.has_initial_state.then(|| {
        let mut s = to_t(get("h0"));
        if lstm {
            s.extend(to_t::<T>(get("c0")));
        }
        s
    });
    let engine = |e: fused_rnn::Error| format!("the layers rejected the case: {e}");
    let mut y = vec![T::ZERO; rnn.y_len(&spec).map_err(engine)?];
    let mut fin = vec![T::ZERO; rnn.state_len(m.batch).map_err(engine)?];

    let grads = if m.has_grads {
        let mut tape = vec![T::ZERO; rnn.tape_len(&spec).map_err(engine)?];
        rnn.forward_train(&spec, &x, initial.as_deref(), &mut tape, &mut y, &mut fin)
            .map_err(engine)?;
        let dy: Vec<T> = to_t(get("dy"));
        let (dh, dc) = (t.get("dh_n"), t.get("dc_n"));
        // The loss has a state term only when the fixture gives one.
        let d_final: Option<Vec<T>> = (dh.is_some() || dc.is_some()).then(|| {
            let zeros = vec![0.0; sl];
            let mut s = to_t(dh.unwrap_or(&zeros));
            if lstm {
                s.extend(to_t::<T>(dc.unwrap_or(&zeros)));
            }
            s
        });
        let mut g = RnnGrads::zeros(&rnn, &spec).map_err(engine)?;
        rnn.bptt(
            &spec,
            &x,
            initial.as_deref(),
            &tape,
            &dy,
            d_final.as_deref(),
            &mut g,
            GradMode::Overwrite,
        )
        .map_err(engine)?;
        Some(g)
    } else {
        rnn.forward(&spec, &x, initial.as_deref(), &mut y, &mut fin)
            .map_err(engine)?;
        None
    };

    let (tol_out, tol_grad) = tolerances(m.dtype);
    let mut checks: Vec<(String, Vec<f64>, Tol)> = vec![
        ("y".into(), to_f64(&y), tol_out),
        ("h_n".into(), to_f64(&fin[..sl]), tol_out),
    ];
    if lstm {
        checks.push(("c_n".into(), to_f64(&fin[sl..2 * sl]), tol_out));
    }
    if let Some(g) = grads {
        checks.push(("grad.x".into(), to_f64(&g.dx), tol_grad));
        if m.has_initial_state {
            checks.push(("grad.h0".into(), to_f64(&g.d_initial_state[..sl]), tol_grad));
            if lstm {
                checks.push((
                    "grad.c0".into(),
                    to_f64(&g.d_initial_state[sl..2 * sl]),
                    tol_grad,
                ));
            }
        }
        let named = io::grads_to_tensors(&rnn, m.source, &g)
            .map_err(|e| format!("cannot convert the gradients: {e}"))?;
        if named.len() != weights.len() {
            return Err(format!(
                "the layers have {} parameter tensors, the fixture {}",
                named.len(),
                weights.len()
            ));
        }
        for nt in named {
            checks.push((nt.name, to_f64(&nt.data), tol_grad));
        }
    }
    Ok(checks
        .iter()
        .filter_map(|(name, got, tol)| {
            let shape = expected
                .get(name)
                .map(|e| e.shape.clone())
                .unwrap_or_default();
            match t.get(name) {
                Some(want) => compare(name, &shape, got, want, *tol),
                None => Some(format!("the fixture has no `{name}`")),
            }
        })
        .collect())
}
