#!/usr/bin/env python3
"""Interleaved A/B timing with `examples/bench`, for changes too small for the peer comparison.

    python3 benches/ab.py ROUNDS MODE SHAPE... -- BIN...     # builds against each other
    python3 benches/ab.py ROUNDS MODE SHAPE... --threads 1,2  # thread counts, one build

MODE is infer or train; a SHAPE is cell:T:B:I:H (e.g. lstm:28:64:28:128). BIN are copies of
`target/release/examples/bench` built from the versions to compare (default: the current build).
Every round runs every shape on every side, in alternating order, and each side keeps its best
median over the rounds: the machine drifts, so only sides measured side by side compare. Prints
each side's time and its speed-up over the first side. THREADS in the environment sets the
thread count of a build comparison (default 1), DTYPE the weight type (f32 or bf16; default f32).

On this host a copy of a binary can run a kernel up to 20 % slower than another copy of the same
file, consistently for that copy (measured: S1 LSTM inference 0.060 ms against 0.050 ms, identical
md5). So every side runs from COPIES fresh copies of its binary (environment; default 2), round by
round in turn, and keeps its best over all of them.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile


def measure(binary, shape, mode, threads):
    cell, t, b, i, h = shape.split(":")
    cmd = [binary, "--cell", cell, "--seq", t, "--batch", b, "--input", i, "--hidden", h,
           "--mode", mode, "--threads", str(threads), "--json", "--no-ceiling",
           "--dtype", os.environ.get("DTYPE", "f32"),
           "--min-time-ms", "200"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return next(json.loads(line) for line in out.splitlines() if line.startswith("{"))["median_s"]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    rounds, mode, rest = int(argv[0]), argv[1], argv[2:]
    if "--threads" in rest:
        at = rest.index("--threads")
        shapes = rest[:at]
        binary = "target/release/examples/bench"
        sides = [(f"{n} thr", binary, int(n)) for n in rest[at + 1].split(",")]
    else:
        at = rest.index("--") if "--" in rest else len(rest)
        shapes = rest[:at]
        binaries = rest[at + 1:] or ["target/release/examples/bench"]
        threads = int(os.environ.get("THREADS", "1"))
        sides = [(os.path.basename(b), b, threads) for b in binaries]
    copies = int(os.environ.get("COPIES", "2"))
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for k, (name, binary, _) in enumerate(sides):
            runs[name] = []
            for c in range(copies):
                path = os.path.join(tmp, f"{k}-{c}")
                shutil.copy2(binary, path)
                runs[name].append(path)
        for r in range(rounds):
            for shape in shapes:
                for name, _, threads in sides if r % 2 == 0 else sides[::-1]:
                    t = measure(runs[name][r % copies], shape, mode, threads)
                    best[shape, name] = min(best.get((shape, name), t), t)
    for shape in shapes:
        base = best[shape, sides[0][0]]
        cols = (f"{name} {best[shape, name] * 1e3:9.3f} ms ({base / best[shape, name]:.2f}x)"
                for name, _, _ in sides)
        print(f"{shape:22}", "  ".join(cols))


if __name__ == "__main__":
    main(sys.argv[1:])
