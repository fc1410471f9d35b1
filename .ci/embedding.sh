#!/usr/bin/env bash
# CI for the embedding surface (called by .ci/run): the C header is current, a C program
# runs the C ABI against numbers from the Rust API, every fuzz target runs for a bounded
# time, and the unsafe kernels' tests run under AddressSanitizer.
# Installs cbindgen and cargo-fuzz from crates.io when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-25}
section() { echo "== $1 ($(date +%s))"; }

section "C header (cbindgen 0.29)"
if ! cbindgen --version 2>/dev/null | grep -q '^cbindgen 0\.29\.'; then
    cargo install cbindgen --locked --version '^0.29'
fi
cbindgen -q --config cbindgen.toml --crate fused-rnn --output include/fused_rnn.h --verify || {
    echo "include/fused_rnn.h is stale: run" \
        "cbindgen --config cbindgen.toml --crate fused-rnn --output include/fused_rnn.h"
    exit 1
}

section "C program against the static and the shared library"
# The test profile (optimised) that `cargo test` already built, so nothing compiles twice.
cargo build --profile test --lib
cargo run --profile test --example capi_expected -- target/capi_expected.txt
CFLAGS="-std=c99 -O2 -Wall -Wextra -Werror -pedantic -Iinclude"
cc $CFLAGS examples/c/rnn_check.c target/debug/libfused_rnn.a -lm -lpthread -ldl \
    -o target/rnn_check_static
target/rnn_check_static target/capi_expected.txt
cc $CFLAGS examples/c/rnn_check.c -Ltarget/debug -lfused_rnn -lm -o target/rnn_check_shared
LD_LIBRARY_PATH=target/debug target/rnn_check_shared target/capi_expected.txt

section "fuzz targets, ${FUZZ_SECONDS}s each"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# All targets in one build (they compile in parallel); each run below then finds its binary built.
cargo fuzz build --fuzz-dir fuzz --sanitizer none
mkdir -p target/fuzz-logs
for target in $(cargo fuzz list --fuzz-dir fuzz); do
    echo "-- fuzz $target"
    mkdir -p "fuzz/corpus/$target"
    seeds=()
    # The fixture loader starts from the shipped fixtures (read-only seeds).
    if [ "$target" = fixtures ]; then seeds=(tests/fixtures/v1); fi
    # Inputs that once crashed a target run first (they also replay in tests/fuzz_regressions.rs).
    if [ -d "fuzz/regressions/$target" ]; then seeds+=("fuzz/regressions/$target"); fi
    log="target/fuzz-logs/$target.log"
    if ! cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" "fuzz/corpus/$target" \
        "${seeds[@]}" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed (input under fuzz/artifacts/$target)"
        exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec' "$log"
done

section "AddressSanitizer: kernel tests"
# The test profile (optimisation level 1); the C ABI's pointer handling runs under ASan
# through the kept fuzz inputs (fuzz_regressions).
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    PROPTEST_CASES=${ASAN_PROPTEST_CASES:-16} \
    cargo test --target x86_64-unknown-linux-gnu --target-dir target/asan \
    --lib --test prop_kernels --test backends --test fuzz_regressions
section "done"
