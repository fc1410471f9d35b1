//! Runs the shipped conformance fixtures (`tests/fixtures/v1`, format `docs/FIXTURES.md`)
//! through the runner shared with `examples/conformance.rs`, and checks that the runner
//! reports bad files as failures.

#[path = "conformance/runner.rs"]
mod runner;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use runner::Summary;
use safetensors::SafeTensors;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Runs `dir`, echoing the per-case lines (shown by `cargo test -- --nocapture` or on failure).
fn run(dir: &Path) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = runner::run_dir(dir, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8(out).expect("the runner writes UTF-8");
    print!("{text}");
    println!("{}", summary.line());
    (summary, text)
}

/// The metadata of a fixture, read independently of the runner.
fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone().unwrap()
}

#[test]
fn shipped_fixtures_conform() {
    // Every backend this CPU has must pass every applicable case.
    for backend in fused_rnn::Backend::available() {
        println!("backend {backend}");
        let (summary, text) = fused_rnn::with_backend(backend, || run(&fixtures_dir())).unwrap();
        assert_eq!(
            summary.failed, 0,
            "backend {backend}, failed cases:\n{text}"
        );
    }
    let (summary, text) = run(&fixtures_dir());
    assert_eq!(summary.failed, 0, "failed cases:\n{text}");
    assert!(summary.passed > 0, "no case passed:\n{text}");
    assert_eq!(
        summary.passed + summary.failed + summary.skipped,
        summary.cases.len()
    );
    // Every case of the format runs: nothing may be skipped.
    assert_eq!(summary.skipped, 0, "skipped cases:\n{text}");
}

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fused-rnn-conformance-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped one-layer, one-direction, unmasked `f64` gradient fixture of `source` and `cell`
/// with the most hidden units, with its bytes.
fn a_fixture(source: &str, cell: &str) -> (PathBuf, Vec<u8>) {
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let m = metadata(&path);
        let wanted = [
            ("source", source),
            ("cell", cell),
            ("dtype", "f64"),
            ("num_layers", "1"),
            ("bidirectional", "false"),
            ("has_mask", "false"),
            ("has_grads", "true"),
        ];
        if wanted
            .iter()
            .all(|(k, v)| m.get(*k).is_some_and(|x| x == v))
        {
            let units: usize = m["units"].parse().unwrap();
            if best.as_ref().is_none_or(|(u, _)| units > *u) {
                best = Some((units, path));
            }
        }
    }
    let (_, path) = best.expect("a shipped fixture of that kind");
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Rewrites a fixture with `edit` applied to its metadata and tensors (f64 fixtures only).
fn rewrite(
    bytes: &[u8],
    edit: impl FnOnce(&mut HashMap<String, String>, &mut HashMap<String, (Vec<usize>, Vec<u8>)>),
) -> Vec<u8> {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: HashMap<String, (Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (shape, data))| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, shape.clone(), data)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn bad_files_fail_without_panicking() {
    let dir = temp_dir("bad");
    let (_, good) = a_fixture("torch", "lstm");
    // Garbage, a truncated copy, and an empty file.
    std::fs::write(
        dir.join("a_garbage.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    std::fs::write(dir.join("b_truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.join("c_empty.safetensors"), b"").unwrap();
    // Valid safetensors, invalid fixtures.
    let unknown_cell = rewrite(&good, |m, _| {
        m.insert("cell".into(), "transformer".into());
    });
    std::fs::write(dir.join("d_unknown_cell.safetensors"), unknown_cell).unwrap();
    let missing_key = rewrite(&good, |m, _| {
        m.remove("dtype");
    });
    std::fs::write(dir.join("e_missing_key.safetensors"), missing_key).unwrap();
    let missing_tensor = rewrite(&good, |_, t| {
        t.remove("h_n");
    });
    std::fs::write(dir.join("f_missing_tensor.safetensors"), missing_tensor).unwrap();
    let wrong_shape = rewrite(&good, |m, _| {
        let b: usize = m["batch"].parse().unwrap();
        m.insert("batch".into(), (b + 1).to_string());
    });
    std::fs::write(dir.join("g_wrong_shape.safetensors"), wrong_shape).unwrap();
    // Not a fixture: ignored.
    std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();

    let (summary, text) = run(&dir);
    assert_eq!(summary.cases.len(), 7, "{text}");
    assert_eq!(summary.failed, 7, "{text}");
    assert!(text.lines().all(|l| l.starts_with("FAIL ")), "{text}");
    assert!(text.contains("FAIL d_unknown_cell: invalid metadata: unknown cell `transformer`"));
    assert!(text.contains("FAIL e_missing_key: invalid metadata: key `dtype` is missing"));
    assert!(text.contains("FAIL f_missing_tensor: missing tensor `h_n`"));
    assert!(text.contains("FAIL g_wrong_shape: tensor `"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_value_is_reported_where_it_is() {
    let dir = temp_dir("value");
    let (path, good) = a_fixture("torch", "gru");
    std::fs::copy(&path, dir.join("a_good.safetensors")).unwrap();
    // Flip one element of the expected output, and one of a weight gradient.
    let bad_y = rewrite(&good, |_, t| {
        let data = &mut t.get_mut("y").unwrap().1;
        let v = f64::from_le_bytes(data[8..16].try_into().unwrap()) + 0.5;
        data[8..16].copy_from_slice(&v.to_le_bytes());
    });
    std::fs::write(dir.join("b_bad_y.safetensors"), bad_y).unwrap();
    let nan_grad = rewrite(&good, |_, t| {
        let data = &mut t.get_mut("grad.weight_hh_l0").unwrap().1;
        data[..8].copy_from_slice(&f64::NAN.to_le_bytes());
    });
    std::fs::write(dir.join("c_nan_grad.safetensors"), nan_grad).unwrap();

    let (summary, text) = run(&dir);
    assert_eq!((summary.passed, summary.failed), (1, 2), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "PASS a_good");
    assert!(
        lines[1].starts_with("FAIL b_bad_y: y worst |err| 5.000e-1 at index [0, 0, 1]"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("FAIL c_nan_grad: grad.weight_hh_l0 worst |err| NaN at index [0, 0]"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_or_empty_directory_is_an_error() {
    let dir = temp_dir("empty");
    let mut out = Vec::new();
    assert!(runner::run_dir(&dir, &mut out).is_err());
    assert!(runner::run_dir(&dir.join("nope"), &mut out).is_err());
    assert!(out.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
