#!/usr/bin/env python3
"""fused-rnn's GPU engine against PyTorch's cuDNN-backed nn.LSTM / nn.GRU / nn.RNN, on the
same shapes, in the same run, on one GPU.

    python benches/peers/cuda_peer.py --bench target/release/examples/bench [--out FILE.md]

For every shape of the standard table (examples/bench.rs) and every cell and mode, the sides
alternate for --rounds rounds (fused-rnn, then PyTorch), each keeping its best median, so
drift in the GPU's clocks reaches both alike. fused-rnn is timed by its own bench binary
(`--backend cuda --json`: device-resident inputs, enqueued work plus a stream
synchronisation); PyTorch the same way: one warm-up call, then at least 5 timed calls and at
least --min-time-ms, each followed by torch.cuda.synchronize(); the median.

Inputs: batch-major [B, T, I] f32, values ((k mod 101) − 50) / 60, zero initial state,
biases on, LSTM sigmoid/tanh, GRU reset-after (PyTorch's), RNN tanh; every output returned.
Training: forward with recording + BPTT with every gradient (fused-rnn); forward + backward
of (y·dy).sum() with gradients for x, h0 (c0) and all weights (PyTorch).

Prints a Markdown table (also written to --out) with the ratio PyTorch time / fused-rnn
time and the issue's targets: inference B ≤ 8, H ≤ 1024: ≥ 2×; training B ≤ 8: ≥ 1.5×;
training B ≥ 64: ≥ 1×.

`--device cpu` runs PyTorch on the CPU and reads fused-rnn's numbers from --ours-json: only
for trying the script out without a GPU; such a table compares nothing.
"""

import argparse
import json
import subprocess
import sys
import time

STANDARD = [
    ("S1", 100, 1, 64, 64),
    ("S2", 100, 1, 256, 256),
    ("S3", 100, 1, 512, 512),
    ("S4", 50, 16, 128, 128),
    ("S5", 50, 16, 512, 512),
    ("S6", 256, 32, 256, 32),
    ("S7", 28, 64, 28, 128),
    ("S8", 25, 64, 1024, 1024),
]


def det_input(b, t, i):
    import numpy as np

    k = np.arange(b * t * i, dtype=np.int64)
    return (((k % 101) - 50) / 60.0).astype(np.float32).reshape(b, t, i)


def torch_side(device):
    import torch

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def measure(min_time_s, fn):
        fn()
        sync()
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < min_time_s:
            s = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - s)
        times.sort()
        return times[len(times) // 2]

    def run(cell, mode, t, b, i, h, min_time_s):
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        m = cls(i, h, batch_first=True).to(device)
        x = torch.from_numpy(det_input(b, t, i)).to(device)
        if mode == "infer":

            def fn():
                with torch.inference_mode():
                    m(x)

        else:
            x.requires_grad_(True)
            h0 = torch.zeros(1, b, h, device=device, requires_grad=True)
            c0 = torch.zeros(1, b, h, device=device, requires_grad=True)
            dy = torch.full((b, t, h), 1e-2, device=device)

            def fn():
                state = (h0, c0) if cell == "lstm" else h0
                y, _ = m(x, state)
                (y * dy).sum().backward()

        return measure(min_time_s, fn)

    info = {"torch": torch.__version__}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
    return run, info


def ours(bench, cell, mode, t, b, i, h, min_time_ms):
    cmd = [bench, "--backend", "cuda", "--cell", cell, "--mode", mode, "--seq", str(t),
           "--batch", str(b), "--input", str(i), "--hidden", str(h), "--json",
           "--min-time-ms", str(min_time_ms)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    row = [r for r in rows if r.get("backend") == "cuda"][-1]
    return row["median_s"], row.get("path", "?")


def target(mode, b, h):
    if mode == "infer" and b <= 8 and h <= 1024:
        return 2.0
    if mode == "train" and b <= 8:
        return 1.5
    if mode == "train" and b >= 64:
        return 1.0
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="target/release/examples/bench")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--ours-json", help="fused-rnn results (bench --json lines) instead of running --bench")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--shapes", default=",".join(s[0] for s in STANDARD))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time-ms", type=int, default=300)
    ap.add_argument("--out")
    a = ap.parse_args()

    given = {}
    if a.ours_json:
        with open(a.ours_json) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    given[(r["cell"], r["mode"], r["seq"], r["batch"], r["input"], r["hidden"])] = r
    run_torch, info = torch_side(a.device)
    shapes = [s for s in STANDARD if s[0] in a.shapes.split(",")]
    rows = []
    for name, t, b, i, h in shapes:
        for cell in a.cells.split(","):
            for mode in a.modes.split(","):
                best_ours, best_torch, path = float("inf"), float("inf"), "?"
                for _ in range(a.rounds):
                    if a.ours_json:
                        r = given.get((cell, mode, t, b, i, h))
                        mo, path = (r["median_s"], r.get("path", "?")) if r else (float("nan"), "-")
                    else:
                        mo, path = ours(a.bench, cell, mode, t, b, i, h, a.min_time_ms)
                    best_ours = min(best_ours, mo)
                    best_torch = min(best_torch, run_torch(cell, mode, t, b, i, h, a.min_time_ms / 1e3))
                ratio = best_torch / best_ours if best_ours < float("inf") else float("nan")
                want = target(mode, b, h)
                met = "—" if want is None or ratio != ratio else ("yes" if ratio >= want else "no")
                rows.append((cell, mode, name, t, b, i, h, best_ours, path, best_torch, ratio, want, met))
                print(f"{cell} {mode} {name}: ours {best_ours*1e3:.3f} ms ({path}), torch {best_torch*1e3:.3f} ms, ratio {ratio:.2f}", file=sys.stderr)

    lines = [
        f"PyTorch {info.get('torch')}, device {a.device}" + (f" ({info['gpu']}, cuDNN {info['cudnn']})" if "gpu" in info else ""),
        "",
        "| cell | mode | shape | T | B | I | H | fused-rnn ms | path | PyTorch ms | PyTorch / fused-rnn | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, mode, name, t, b, i, h, mo, path, mt, ratio, want, met in rows:
        lines.append(
            f"| {cell} | {mode} | {name} | {t} | {b} | {i} | {h} | {mo*1e3:.3f} | {path} | {mt*1e3:.3f} | {ratio:.2f} | "
            + ("—" if want is None else f"≥ {want:g}") + f" | {met} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
