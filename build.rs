//! Sets `cfg(unoptimized)` for builds at opt-level 0.
//!
//! The kernels mark their helpers `#[inline(always)]` so that, optimised, every helper is
//! compiled inside the `#[target_feature]` function that runs it. Unoptimised, forced inlining
//! gives each inlined call its own stack slots, none shared: the forward-step dispatch grew
//! frames of 2-3 MiB, past the 2 MiB stack of a spawned thread (a test harness thread, say).
//! Under `cfg(unoptimized)` the helpers stay ordinary functions.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(unoptimized)");
    println!("cargo::rerun-if-env-changed=OPT_LEVEL");
    if std::env::var("OPT_LEVEL").is_ok_and(|l| l == "0") {
        println!("cargo::rustc-cfg=unoptimized");
    }
}
