//! The fuzz targets' bodies (`fuzz/cases/*.rs`) as ordinary tests: every input kept under
//! `fuzz/regressions/<target>/` (inputs that once crashed a target, kept after the fix) runs
//! again, followed by a few hundred pseudo-random inputs per target so that the cases also run
//! where cargo-fuzz is not installed (and under AddressSanitizer in CI).

#[allow(dead_code)]
#[path = "../fuzz/cases/capi.rs"]
mod capi;
#[allow(dead_code)]
#[path = "../fuzz/cases/engine.rs"]
mod engine;
#[allow(dead_code)]
#[path = "../fuzz/cases/fixtures.rs"]
mod fixtures;
#[allow(dead_code)]
#[path = "../fuzz/cases/layouts.rs"]
mod layouts;
#[allow(dead_code)]
#[path = "../fuzz/cases/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "../fuzz/cases/reference.rs"]
mod reference;

use std::path::Path;

/// Every kept input of `target`, then `random` pseudo-random inputs of up to 256 bytes.
fn replay(target: &str, run: fn(&[u8]), random: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut kept = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            println!("{target}: {}", path.display());
            run(&std::fs::read(&path).unwrap());
            kept += 1;
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ target.len() as u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..random {
        let len = (next() % 257) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        run(&data);
    }
    println!("{target}: {kept} kept input(s), {random} random");
}

#[test]
fn capi_cases() {
    replay("capi", capi::run, 400);
}

#[test]
fn engine_cases() {
    replay("engine", engine::run, 200);
}

#[test]
fn fixtures_cases() {
    replay("fixtures", fixtures::run, 50);
    // The shipped fixtures themselves go through the same case (they must pass or skip).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files.iter().take(8) {
        fixtures::run(&std::fs::read(path).unwrap());
    }
}

#[test]
fn layouts_cases() {
    replay("layouts", layouts::run, 400);
}

#[test]
fn reference_cases() {
    replay("reference", reference::run, 200);
}

#[test]
fn model_cases() {
    replay("model", model::run, 300);
}
