#!/usr/bin/env bash
# Peer comparison, run by hand (not in CI): builds this library's bench binary and the Rust
# peers, runs benches/peers/compare.py (all sides interleaved shape by shape) and rewrites
# docs/PERFORMANCE.md and docs/performance.svg.
#
#   benches/peers/run.sh [--setup-venv DIR] [--python PY] [compare.py options ...]
#
#   --setup-venv DIR   create DIR as a venv (if missing) and
#                      `pip install torch tensorflow-cpu onnx onnxruntime matplotlib` into it
#   --python PY        interpreter that has those packages (default: $PYTHON or python3)
#   anything else goes to compare.py: --threads N, --shapes S1,S2, --cells lstm,
#   --modes infer,train, --peers torch,onnxruntime,tf,candle,tract, --rounds R,
#   --min-time-ms MS, --doc PATH (see `python benches/peers/compare.py --help`)
set -euo pipefail
cd "$(dirname "$0")/../.."

PY="${PYTHON:-}"
VENV=""
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --setup-venv) VENV="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [[ -n "$VENV" ]]; then
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install torch tensorflow-cpu onnx onnxruntime matplotlib
    PY="$VENV/bin/python"
fi
PY="${PY:-python3}"

echo "== building fused-rnn's bench binary" >&2
cargo build --release --example bench

echo "== building the Rust peers (candle-nn, tract-onnx); the first tract build is slow" >&2
if ! (cd benches/peers/rust && cargo build --release); then
    echo "run.sh: candle + tract failed to build; trying candle alone" >&2
    (cd benches/peers/rust && cargo build --release --no-default-features --features candle) ||
        echo "run.sh: the Rust peers did not build; they are reported as not built" >&2
fi

echo "== running the comparison with $PY" >&2
exec "$PY" benches/peers/compare.py --python "$PY" "${args[@]}"
