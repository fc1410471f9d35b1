#!/usr/bin/env python3
"""Peer comparison for fused-rnn: times this library and its peers on the same shapes and
cells in the same run, interleaved shape by shape, and writes docs/PERFORMANCE.md.

Run by hand, not in CI (see benches/peers/README.md, or benches/peers/run.sh which builds
everything first):

    python benches/peers/compare.py [--threads 1] [--shapes S1,S2] [--cells lstm,gru,rnn]
        [--modes infer,train] [--peers torch,onnxruntime,tf,candle,tract] [--rounds 3]
        [--min-time-ms 300] [--slow-s 20] [--backend auto] [--doc docs/PERFORMANCE.md]
    python benches/peers/compare.py --report-from benches/peers/out/results-threads1.json

Sides, in the order they run within a round (a round visits every side once per mode):
  ours         target/release/examples/bench (one process per measurement, prints JSON)
  torch        torch.nn.LSTM/GRU/RNN, batch_first, CPU        (peer_worker.py, long-lived)
  onnxruntime  the torch modules exported to ONNX, CPU EP      (peer_worker.py, long-lived)
  tf           keras.layers.LSTM/GRU/SimpleRNN in tf.function  (peer_worker.py, long-lived)
  candle       candle-nn LSTM/GRU                              (rust/peer-candle)
  tract        tract-onnx on the same ONNX files               (rust/peer-tract)

Each measurement is the median of >= 5 timed calls (and >= --min-time-ms) after a warm-up;
each side keeps its best median over the rounds. Ratios are peer time / our time: > 1 means
fused-rnn is faster.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import select
import signal
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# name: (T, B, I, H)
SHAPES = {
    "S1": (100, 1, 64, 64),
    "S2": (100, 1, 256, 256),
    "S3": (100, 1, 512, 512),
    "S4": (50, 16, 128, 128),
    "S5": (50, 16, 512, 512),
    "S6": (256, 32, 256, 32),
    "S7": (28, 64, 28, 128),
    "S8": (25, 64, 1024, 1024),
}
CELLS = ["lstm", "gru", "rnn"]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
MODES = ["infer", "train"]
PEERS = ["torch", "onnxruntime", "tf", "candle", "tract"]
LABEL = {
    "ours": "fused-rnn",
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "tf": "TF/Keras",
    "candle": "candle",
    "tract": "tract",
}
SHORT = {"torch": "pt", "onnxruntime": "ort", "tf": "tf", "candle": "cdl", "tract": "tr"}
# What each peer can measure at all (the rest is "n/a" without asking it).
CAN = {
    "torch": {"cells": CELLS, "modes": MODES},
    "onnxruntime": {"cells": CELLS, "modes": ["infer"]},
    "tf": {"cells": CELLS, "modes": MODES},
    "candle": {"cells": ["lstm", "gru"], "modes": ["infer"]},
    "tract": {"cells": CELLS, "modes": ["infer"]},
}
NA_WHY = {
    ("onnxruntime", "mode"): "inference only",
    ("candle", "mode"): "inference only (candle-nn has no BPTT to compare with)",
    ("candle", "cell"): "candle-nn has no SimpleRNN",
    ("tract", "mode"): "inference only",
}


def fwd_flops(cell, t, b, i, h):
    """2·B·(I+H)·G·H per step, T steps."""
    return 2.0 * b * (i + h) * GATES[cell] * h * t


def flops(cell, mode, t, b, i, h):
    return fwd_flops(cell, t, b, i, h) * (3.0 if mode == "train" else 1.0)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception:
        return ""


def child_env(threads):
    env = dict(os.environ)
    n = str(threads)
    for k in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "RAYON_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
    ):
        env[k] = n
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# ------------------------------------------------------------------------------ sides
class Unavailable(Exception):
    """This side cannot make this measurement (recorded as n/a, not as a failure)."""


class OursSide:
    name = "ours"

    def __init__(self, args):
        self.bin = args.bench_bin
        self.args = args
        if not os.path.exists(self.bin):
            raise Unavailable(f"{self.bin} not built (cargo build --release --example bench)")
        # A private copy, so that a rebuild of target/ during the run cannot mix two versions.
        os.makedirs(args.out_dir, exist_ok=True)
        snap = os.path.join(args.out_dir, "bench-under-test")
        shutil.copy2(self.bin, snap)
        self.bin = snap

    def measure(self, cell, mode, shape, onnx, dtype="f32"):
        t, b, i, h = SHAPES[shape]
        cmd = [self.bin, "--cell", cell, "--batch", str(b), "--seq", str(t), "--input", str(i),
               "--hidden", str(h), "--mode", mode, "--json", "--threads", str(self.args.threads),
               "--min-time-ms", str(self.args.min_time_ms), "--dtype", dtype]
        if self.args.backend != "auto":
            cmd += ["--backend", self.args.backend]
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(self.args.threads),
                           timeout=self.args.timeout_s)
        if p.returncode != 0:
            why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[0]
            raise Unavailable(f"not available: {why}")
        out = {}
        for line in p.stdout.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("cell") == "sgemm":
                out["sgemm_gflops"] = j["gflops"]
            elif j.get("cell") == cell and j.get("mode") == mode:
                out.update(median_s=j["median_s"], min_s=j["min_s"], max_s=j["max_s"],
                           backend=j.get("backend"), threads=j.get("threads"))
        if "median_s" not in out:
            raise RuntimeError(f"no result line in: {p.stdout[-300:]!r}")
        return out

    def close(self):
        pass


def only_running(sides, name):
    """Lets only side `name`'s worker process run (see `WorkerSide.hold`)."""
    for other, side in sides.items():
        if isinstance(side, WorkerSide):
            side.hold(other != name)


class WorkerSide:
    """A long-lived peer_worker.py process for one Python framework."""

    def __init__(self, name, args):
        self.name = name
        self.args = args
        os.makedirs(os.path.join(args.out_dir, "logs"), exist_ok=True)
        self.log_path = os.path.join(args.out_dir, "logs", f"{name}.log")
        self.logf = open(self.log_path, "w")
        cmd = [args.python, os.path.join(HERE, "peer_worker.py"), name, "--threads", str(args.threads)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logf,
                                  text=True, bufsize=1, env=child_env(args.threads))
        first = self._read(300)
        if "ready" not in first:
            self.close()
            raise Unavailable(f"{name} worker did not start: {first.get('error', first)}"[:400])
        self.info = self.request({"op": "info"})

    def _read(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            self.p.kill()
            return {"error": f"no answer in {timeout} s (killed)"}
        line = self.p.stdout.readline()
        if not line:
            return {"error": f"worker exited (see {self.log_path})"}
        return json.loads(line)

    def request(self, req):
        if self.p.poll() is not None:
            return {"error": f"worker exited (see {self.log_path})"}
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return self._read(self.args.timeout_s)

    def measure(self, cell, mode, shape, onnx):
        t, b, i, h = SHAPES[shape]
        ans = self.request({"op": "measure", "cell": cell, "mode": mode, "shape": shape, "batch": b,
                            "seq": t, "input": i, "hidden": h, "min_time_ms": self.args.min_time_ms,
                            "onnx": onnx})
        if "na" in ans:
            raise Unavailable(ans["na"])
        if "error" in ans:
            raise RuntimeError(ans["error"].strip().splitlines()[-1][:300])
        return ans

    def hold(self, paused):
        """Stops (SIGSTOP) or continues the worker: an idle framework may keep threads
        spinning, which measured up to 20 % off the side timed meanwhile on this 2-vCPU host."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def close(self):
        self.hold(False)
        try:
            if self.p.poll() is None:
                self.p.stdin.write('{"op":"quit"}\n')
                self.p.stdin.flush()
                self.p.wait(timeout=30)
        except Exception:
            self.p.kill()
        self.logf.close()


class RustPeerSide:
    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.bin = os.path.join(args.rust_peers_dir, f"peer-{name}")
        if not os.path.exists(self.bin):
            raise Unavailable(f"not built: {self.bin} missing (cd benches/peers/rust && cargo build --release)")

    def measure(self, cell, mode, shape, onnx):
        t, b, i, h = SHAPES[shape]
        cmd = [self.bin, "--cell", cell, "--mode", mode, "--batch", str(b), "--seq", str(t), "--input", str(i),
               "--hidden", str(h), "--threads", str(self.args.threads), "--min-time-ms", str(self.args.min_time_ms)]
        if self.name == "tract":
            if not onnx:
                raise Unavailable("no ONNX file (the torch exporter is unavailable)")
            cmd += ["--onnx", onnx]
        p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(self.args.threads),
                           timeout=self.args.timeout_s)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])
            raise RuntimeError(" | ".join(why[:3])[:300])
        j = json.loads(lines[-1])
        if "na" in j:
            raise Unavailable(j["na"])
        self.version = j.get("version")
        return j

    def close(self):
        pass


# ------------------------------------------------------------------------------ machine
def cache_per_core(level):
    """The size of one cache of `level` (sysfs, e.g. "1024K"), or None where sysfs does not say."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            if open(os.path.join(d, "level")).read().strip() == str(level) and \
                    open(os.path.join(d, "type")).read().strip() in ("Unified", "Data"):
                return open(os.path.join(d, "size")).read().strip()
    except OSError:
        pass
    return None


def machine_info(args):
    lscpu = {}
    for line in sh("LC_ALL=C lscpu").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    flags = set(lscpu.get("Flags", "").split())
    wanted = ["fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16", "f16c"]
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    os_name = ""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    dirty = bool(sh(f"git -C {shlex.quote(ROOT)} status --porcelain --untracked-files=no"))
    lock = os.path.join(args.rust_peers_dir, "..", "..", "Cargo.lock")
    crates = {}
    try:
        txt = open(lock).read()
        for m in re.finditer(r'name = "([^"]+)"\nversion = "([^"]+)"', txt):
            if m.group(1) in ("candle-core", "candle-nn", "tract-onnx", "tract-linalg"):
                crates[m.group(1)] = m.group(2)
    except OSError:
        pass
    return {
        "cpu_model": lscpu.get("Model name", platform.processor()),
        "cpus": lscpu.get("CPU(s)"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "sockets": lscpu.get("Socket(s)"),
        "hypervisor": lscpu.get("Hypervisor vendor", "none reported"),
        "l2": lscpu.get("L2 cache"),
        "l2_each": cache_per_core(2),
        "l3": lscpu.get("L3 cache"),
        "flags": {f: (f in flags) for f in wanted},
        "nproc": sh("nproc"),
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "rustc": sh("rustc -V"),
        "python": platform.python_version(),
        "commit": sh(f"git -C {shlex.quote(ROOT)} rev-parse --short HEAD") or "?",
        "dirty": dirty,
        "rust_peer_crates": crates,
    }


# ------------------------------------------------------------------------------ run
def run(args):
    shapes = [s.strip().upper() for s in args.shapes.split(",") if s.strip()]
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
    peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"unknown shape {s}; known: {', '.join(SHAPES)}")
    for c in cells:
        if c not in CELLS:
            sys.exit(f"unknown cell {c}; known: {', '.join(CELLS)}")
    for m in modes:
        if m not in MODES:
            sys.exit(f"unknown mode {m}; known: {', '.join(MODES)}")
    for p in peers:
        if p not in PEERS:
            sys.exit(f"unknown peer {p}; known: {', '.join(PEERS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.time()
    res = {
        "settings": {
            "threads": args.threads, "rounds": args.rounds, "min_time_ms": args.min_time_ms,
            "slow_s": args.slow_s, "backend": args.backend, "shapes": shapes, "cells": cells,
            "modes": modes, "peers": peers,
            "partial": shapes != list(SHAPES) or cells != CELLS or modes != MODES or peers != PEERS,
            "argv": sys.argv[1:],
        },
        "machine": machine_info(args),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg(),
        "side_status": {},
        "versions": {},
        "records": [],
    }

    sides = {}
    for name in ["ours"] + peers:
        log(f"[setup] {name}")
        try:
            if name == "ours":
                sides[name] = OursSide(args)
            elif name in ("torch", "onnxruntime", "tf"):
                sides[name] = WorkerSide(name, args)
                res["versions"].update(sides[name].info)
            else:
                sides[name] = RustPeerSide(name, args)
            res["side_status"][name] = "ok"
        except Unavailable as e:
            res["side_status"][name] = str(e)
            log(f"[setup] {name}: {e}")
    crates = res["machine"]["rust_peer_crates"]
    if "candle-nn" in crates:
        res["versions"]["candle-nn"] = crates["candle-nn"]
    if "tract-onnx" in crates:
        res["versions"]["tract-onnx"] = crates["tract-onnx"]

    json_path = os.path.join(args.out_dir, f"results-threads{args.threads}.json")
    need_onnx = any(p in sides for p in ("onnxruntime", "tract")) and ("infer" in modes)
    try:
        for shape in shapes:
            t, b, i, h = SHAPES[shape]
            for cell in cells:
                onnx = None
                if need_onnx and "torch" in sides:
                    path = os.path.join(args.out_dir, "onnx", f"{cell}_{shape}_T{t}_B{b}_I{i}_H{h}.onnx")
                    only_running(sides, "torch")
                    ans = sides["torch"].request({"op": "export", "cell": cell, "batch": b, "seq": t, "input": i,
                                                  "hidden": h, "path": path})
                    if "error" in ans:
                        log(f"[export] {cell} {shape}: {ans['error'][-300:]}")
                    else:
                        onnx = path
                        res.setdefault("onnx_ops", {})[f"{cell}"] = ans.get("ops")
                stop = set()  # (side, mode) that were too slow for another round
                for rnd in range(args.rounds):
                    for mode in modes:
                        for name in ["ours"] + peers:
                            rec = {"shape": shape, "cell": cell, "mode": mode, "side": name, "round": rnd}
                            if name not in sides:
                                rec["na"] = res["side_status"][name]
                            elif name != "ours" and mode not in CAN[name]["modes"]:
                                rec["na"] = NA_WHY[(name, "mode")]
                            elif name != "ours" and cell not in CAN[name]["cells"]:
                                rec["na"] = NA_WHY[(name, "cell")]
                            elif (name, mode) in stop:
                                continue
                            if "na" in rec:
                                if rnd == 0:
                                    res["records"].append(rec)
                                continue
                            only_running(sides, name)
                            t0 = time.time()
                            try:
                                rec.update(sides[name].measure(cell, mode, shape, onnx))
                            except Unavailable as e:
                                rec["na"] = str(e)
                            except Exception as e:  # noqa: BLE001 - a failed side must not stop the run
                                rec["error"] = f"{type(e).__name__}: {e}"[:400]
                            rec["wall_s"] = round(time.time() - t0, 3)
                            res["records"].append(rec)
                            if name == "ours" and mode == "infer" and shape in args.bf16_shapes:
                                # Our bfloat16-weight inference, right after the f32 one.
                                bf = {"shape": shape, "cell": cell, "mode": mode, "side": "ours-bf16",
                                      "round": rnd}
                                try:
                                    bf.update(sides[name].measure(cell, mode, shape, onnx, "bf16"))
                                except Exception as e:  # noqa: BLE001 - recorded, not fatal
                                    bf["error"] = f"{type(e).__name__}: {e}"[:400]
                                res["records"].append(bf)
                            if "median_s" in rec:
                                log(f"{shape} {cell:4} {mode:5} r{rnd} {name:12} {rec['median_s'] * 1e3:10.3f} ms"
                                    f"  ({rec['wall_s']:.1f} s)")
                                if rec["wall_s"] > args.slow_s:
                                    stop.add((name, mode))
                            else:
                                log(f"{shape} {cell:4} {mode:5} r{rnd} {name:12} {rec.get('na') or rec.get('error')}")
                                stop.add((name, mode))  # n/a or failed: no point in asking again
            res["elapsed_s"] = round(time.time() - started, 1)
            save(res, json_path)
    finally:
        for s in sides.values():
            s.close()
    res["elapsed_s"] = round(time.time() - started, 1)
    res["loadavg_end"] = os.getloadavg()
    save(res, json_path)
    log(f"[done] {res['elapsed_s']:.0f} s; results in {json_path}")
    return res, json_path


def save(res, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ report
def aggregate(res):
    """rows[(shape, cell, mode)][side] = {best, rounds, na/error, sgemm}"""
    rows = {}
    for r in res["records"]:
        key = (r["shape"], r["cell"], r["mode"])
        d = rows.setdefault(key, {}).setdefault(r["side"], {"medians": [], "sgemm": [], "na": None, "error": None})
        if "median_s" in r:
            d["medians"].append(r["median_s"])
            if "sgemm_gflops" in r:
                d["sgemm"].append(r["sgemm_gflops"])
            if r.get("backend"):
                d["backend"] = r["backend"]
        elif "na" in r:
            d["na"] = r["na"]
        elif "error" in r:
            d["error"] = r["error"]
    for key, sides in rows.items():
        for d in sides.values():
            d["best"] = min(d["medians"]) if d["medians"] else None
    return rows


def fmt_ms(s):
    ms = s * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(x):
    return f"×{x:.2f}" if x < 10 else f"×{x:.1f}"


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def row_summary(sides, peers):
    ours = sides.get("ours", {}).get("best")
    ratios = {}
    for p in peers:
        best = sides.get(p, {}).get("best")
        if best and ours:
            ratios[p] = best / ours
    fastest = None
    have = [(sides[p]["best"], p) for p in peers if sides.get(p, {}).get("best")]
    if have:
        fastest = min(have)[1]
    return ours, ratios, fastest


def plot(res, rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("[plot] matplotlib missing: no plot")
        return False
    peers = res["settings"]["peers"]
    shapes = res["settings"]["shapes"]
    cells = res["settings"]["cells"]
    modes = res["settings"]["modes"]
    plt.rcParams["svg.fonttype"] = "none"
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.4), sharey=True, squeeze=False)
    markers = {"lstm": "o", "gru": "s", "rnn": "^"}
    colors = {"lstm": "#1f77b4", "gru": "#d62728", "rnn": "#2ca02c"}
    allv = []
    for ax, mode in zip(axes[0], modes):
        for ci, cell in enumerate(cells):
            xs, ys, who = [], [], []
            for si, shape in enumerate(shapes):
                sides = rows.get((shape, cell, mode))
                if not sides:
                    continue
                ours, ratios, fastest = row_summary(sides, peers)
                if fastest is None or fastest not in ratios:
                    continue
                xs.append(si + (ci - (len(cells) - 1) / 2) * 0.22)
                ys.append(ratios[fastest])
                who.append(SHORT[fastest])
            allv += ys
            for x, y, s in zip(xs, ys, who):  # which peer was the fastest
                ax.annotate(s, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=6,
                            color="#555555")
            ax.plot(xs, ys, linestyle="none", marker=markers.get(cell, "o"), color=colors.get(cell),
                    markersize=7, label=cell.upper() if cell != "rnn" else "SimpleRNN")
        ax.axhline(1.0, color="black", linewidth=1)
        ax.axhline(1.5, color="gray", linewidth=1, linestyle="--")
        ax.text(len(shapes) - 0.5, 1.5, " 1.5× target", va="bottom", ha="right", fontsize=8, color="gray")
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes)
        ax.set_xlim(-0.6, len(shapes) - 0.4)
        ax.set_title(f"{'inference' if mode == 'infer' else 'training (forward + BPTT)'}")
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.set_xlabel("shape (label: fastest peer — pt PyTorch, ort ONNX Runtime, tf TF/Keras, cdl candle, tr tract)",
                      fontsize=8)
    axes[0][0].set_ylabel("speed-up vs fastest peer (peer time / ours)")
    if allv:
        lo, hi = min(allv + [1.0]), max(allv + [1.5])
        axes[0][0].set_ylim(lo / 1.4, hi * 1.4)
    from matplotlib.ticker import FuncFormatter, LogLocator

    for ax in axes[0]:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.suptitle(f"fused-rnn vs fastest peer, threads = {res['settings']['threads']}, "
                 f"commit {res['machine']['commit']}, {res['started']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def report(res, json_path, args):
    rows = aggregate(res)
    st = res["settings"]
    peers = st["peers"]
    m = res["machine"]
    v = res.get("versions", {})
    doc = args.doc
    plot_path = os.path.splitext(doc)[0].replace("PERFORMANCE", "performance") + ".svg"
    if args.plot:
        plot_path = args.plot
    have_plot = plot(res, rows, plot_path)
    def rel(p):
        p = os.path.abspath(p)
        return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p
    L = []
    w = L.append
    w("# Performance: fused-rnn against its peers")
    w("")
    w(f"Generated by `benches/peers/compare.py` on {res['started']}; the whole file is rewritten "
      "each run, so do not edit it by hand.")
    if st.get("partial"):
        w("")
        w(f"**Partial run**: shapes {','.join(st['shapes'])}, cells {','.join(st['cells'])}, "
          f"modes {','.join(st['modes'])}, peers {','.join(peers)}.")
    w("")
    w("## How it was produced")
    w("")
    w("Everything, from a fresh checkout (add `--setup-venv DIR` to create a Python environment "
      "first, with `pip install torch tensorflow-cpu onnx onnxruntime matplotlib`):")
    w("")
    # run.sh takes compare.py's own arguments (and `--python PY`, which it passes on), so the
    # run's arguments reproduce it, `--doc` included: without it a run writes docs/PERFORMANCE.md.
    run_argv = list(st["argv"])
    if not any(a == "--threads" or a.startswith("--threads=") for a in run_argv):
        run_argv = ["--threads", str(st["threads"])] + run_argv
    w("```sh")
    w(f"benches/peers/run.sh {' '.join(shlex.quote(a) for a in run_argv)}")
    w("```")
    w("")
    w("which amounts to:")
    w("")
    w("```sh")
    w("cargo build --release --example bench                     # this library's side")
    w("(cd benches/peers/rust && cargo build --release)          # candle and tract peers")
    w(f"python benches/peers/compare.py {' '.join(shlex.quote(a) for a in st['argv'])}".rstrip())
    w("```")
    w("")
    el = res.get("elapsed_s", 0)
    rebuild = ["--report-from", rel(json_path)]
    if os.path.abspath(doc) != os.path.join(ROOT, "docs", "PERFORMANCE.md"):
        rebuild += ["--doc", rel(doc)]
    if args.plot:
        rebuild += ["--plot", rel(args.plot)]
    w(f"This run took {el / 60:.1f} min. Raw results (every round of every side): "
      f"`{rel(json_path)}` (not committed). The document alone can be rebuilt from them with "
      f"`python benches/peers/compare.py {' '.join(shlex.quote(a) for a in rebuild)}`.")
    w("")
    w("## Method")
    w("")
    w(f"- Threads: {st['threads']} for every side (our `--threads`, `torch.set_num_threads`, ONNX Runtime "
      "`intra_op_num_threads` with `inter_op_num_threads=1` and sequential execution, TF intra- and inter-op "
      "pools, `RAYON_NUM_THREADS` for candle, tract's executor; `OMP_NUM_THREADS`/`MKL_NUM_THREADS` set too).")
    w(f"- Per shape and cell, {st['rounds']} rounds; each round visits, for each mode, the sides in the order "
      f"{', '.join(LABEL[s] for s in ['ours'] + peers)}, so every side sees the same drift of the machine. "
      "Each side keeps its **best median** over the rounds.")
    w("- The Python frameworks run in long-lived worker processes; while one side is measured, every other "
      "worker is stopped (`SIGSTOP`, continued before its own turn). Idle TensorFlow and ONNX Runtime workers "
      "kept threads busy: with them running, our S1 LSTM inference measured 0.060 ms instead of 0.051 ms.")
    w(f"- One measurement: one warm-up call, then at least 5 timed calls and at least {st['min_time_ms']} ms; "
      "the median. A (side, mode) whose measurement took longer than "
      f"{st['slow_s']:g} s in wall time gets no further rounds for that row (the big shapes).")
    w("- Same input for every side: batch-major `[B, T, I]` f32, values `((k mod 101) − 50) / 60`; zero initial "
      "state; biases on; LSTM sigmoid/tanh, GRU reset-after (PyTorch's, Keras `reset_after=True`, ONNX "
      "`linear_before_reset=1`), SimpleRNN tanh; the full output sequence `[B, T, H]` is produced.")
    w("- Inference: fused-rnn `seq::forward`; PyTorch `nn.LSTM/GRU/RNN(batch_first=True)` under "
      "`torch.inference_mode()`; ONNX Runtime on the module exported by `torch.onnx.export(dynamo=False)` "
      "(real `LSTM`/`GRU`/`RNN` operators), CPU execution provider; Keras `LSTM/GRU/SimpleRNN"
      "(return_sequences=True)` called in a `tf.function`; candle-nn `rnn::lstm/gru` `seq` + stacking the "
      "hidden states; tract-onnx on the same ONNX file, optimised, input fixed to `[B, T, I]`.")
    w("- Training: fused-rnn `seq::forward_train` + `seq::bptt` (every gradient); PyTorch forward + "
      "`backward()` of `(y·dy).sum()` with gradients for x, h0 (and c0) and all weights; Keras the same "
      "loss under `tf.GradientTape` over x, the initial state and the weights, in a `tf.function`.")
    w("- FLOPs: forward `2·B·(I+H)·G·H` per step (G = 1 SimpleRNN, 3 GRU, 4 LSTM), training 3× forward. "
      "Ratios are **peer time / our time**: above 1 fused-rnn is faster. \"fastest peer\" is the peer "
      "with the lowest time in that row; \"% sgemm\" is our GFLOP/s over the best single-thread sgemm "
      "1024³ (matrixmultiply) that our own bench processes measured for that row, in the same run; above "
      "100% our kernel ran at more GFLOP/s than that sgemm.")
    w("")
    w("## Machine")
    w("")
    fl = ", ".join(f"{k} {'yes' if on else 'no'}" for k, on in m["flags"].items())
    sg = [r["sgemm_gflops"] for r in res["records"] if r.get("sgemm_gflops")]
    backends = sorted({r.get("backend") for r in res["records"] if r.get("side") == "ours" and r.get("backend")})
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {m['cpu_model']} ({m['hypervisor']} guest) |")
    # lscpu gives the sum over all instances; the size of each is what a core's share must fit.
    l2 = f"L2 {m['l2']}" + (f", {m['l2_each']} each" if m.get("l2_each") else "")
    w(f"| cores | {m['cpus']} CPUs: {m['sockets']} socket × {m['cores_per_socket']} cores × "
      f"{m['threads_per_core']} thread(s); `nproc` = {m['nproc']}; {l2}, L3 {m['l3']} |")
    w(f"| ISA flags | {fl} |")
    w(f"| memory | {m['mem_gib']} GiB |")
    w(f"| OS | {m['os']}, Linux {m['kernel']} |")
    w(f"| load average | {res['loadavg_start'][0]:.2f} at start, "
      f"{res.get('loadavg_end', [float('nan')])[0]:.2f} at end (1 min; above {st['threads']} means other "
      "processes competed for the CPUs during the run) |")
    w(f"| fused-rnn | commit `{m['commit']}`{' + uncommitted changes in the working tree' if m['dirty'] else ''}; "
      f"{m['rustc']}; backend {', '.join(backends) or '?'} |")
    if sg:
        sgs = sorted(sg)
        w(f"| sgemm ceiling | 1024³, 1 thread: median {sgs[len(sgs) // 2]:.1f} GFLOP/s over {len(sgs)} "
          f"measurements (min {sgs[0]:.1f}, max {sgs[-1]:.1f}) |")
    pv = []
    if "torch" in v:
        pv.append(f"PyTorch {v['torch']} (CPU capability {v.get('torch_cpu_capability', '?')}, "
                  f"oneDNN {'on' if v.get('torch_mkldnn') else 'off'})")
    if "onnxruntime" in v:
        pv.append(f"ONNX Runtime {v['onnxruntime']}")
    if "tensorflow" in v:
        pv.append(f"TensorFlow {v['tensorflow']} + Keras {v.get('keras')}")
    if "candle-nn" in v:
        pv.append(f"candle-nn {v['candle-nn']}")
    if "tract-onnx" in v:
        pv.append(f"tract-onnx {v['tract-onnx']}")
    w(f"| peers | {'; '.join(pv) or 'none'}; Python {m['python']} |")
    w("")
    down = {s: why for s, why in res["side_status"].items() if why != "ok"}
    if down:
        w("Sides that could not run at all: " + "; ".join(f"**{LABEL[s]}**: {why}" for s, why in down.items()))
        w("")

    w(f"## Results (threads = {st['threads']})")
    w("")
    w("Times are the best median in milliseconds; in brackets the ratio peer / fused-rnn (above 1: we are "
      "faster). n/a: the peer has no such cell or mode (or could not run); failed: see the notes below.")
    w("")
    hdr = ["shape (T,B,I,H)", "cell", "mode", "fused-rnn ms", "GFLOP/s", "% sgemm"] + \
          [LABEL[p] for p in peers] + ["fastest peer", "vs fastest"]
    w("| " + " | ".join(hdr) + " |")
    w("|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|")
    summary = {mode: [] for mode in st["modes"]}
    per_peer = {mode: {p: [] for p in peers} for mode in st["modes"]}
    failures = []
    nas = {}
    pct = []
    for shape in st["shapes"]:
        t, b, i, h = SHAPES[shape]
        for cell in st["cells"]:
            for mode in st["modes"]:
                sides = rows.get((shape, cell, mode))
                if not sides:
                    continue
                ours, ratios, fastest = row_summary(sides, peers)
                o = sides.get("ours", {})
                if ours:
                    gf = flops(cell, mode, t, b, i, h) / ours * 1e-9
                    ceiling = max(o["sgemm"]) if o.get("sgemm") else None
                    cols = [fmt_ms(ours), f"{gf:.1f}", f"{100 * gf / ceiling:.0f}%" if ceiling else "–"]
                    if ceiling:
                        pct.append((100 * gf / ceiling, shape, cell, mode))
                else:
                    cols = ["n/a" if o.get("na") else "failed", "–", "–"]
                    if o.get("error"):
                        failures.append(f"{shape} {cell} {mode} fused-rnn: {o['error']}")
                    elif o.get("na"):
                        nas.setdefault("ours", set()).add(o["na"])
                for p in peers:
                    d = sides.get(p, {})
                    if d.get("best"):
                        cols.append(f"{fmt_ms(d['best'])} ({fmt_ratio(ratios[p])})" if p in ratios
                                    else fmt_ms(d["best"]))
                        if p in ratios:
                            per_peer[mode][p].append((ratios[p], shape, cell))
                    elif d.get("error"):
                        cols.append("failed")
                        failures.append(f"{shape} {cell} {mode} {LABEL[p]}: {d['error']}")
                    else:
                        cols.append("n/a")
                        if d.get("na"):
                            nas.setdefault(p, set()).add(d["na"])
                if fastest:
                    cols.append(LABEL[fastest])
                    if fastest in ratios:
                        r = ratios[fastest]
                        cols.append(f"**{fmt_ratio(r)}**")
                        summary[mode].append((r, shape, cell, fastest))
                    else:
                        cols.append("–")
                else:
                    cols += ["–", "–"]
                w(f"| {shape} ({t},{b},{i},{h}) | {cell} | {mode} | " + " | ".join(cols) + " |")
    w("")
    if have_plot:
        w("## Plot")
        w("")
        w("Speed-up of fused-rnn over the fastest peer of each row (log scale; solid line: parity, "
          "dashed: the 1.5× target; the small label names the fastest peer).")
        w("")
        w(f"![speed-up vs fastest peer per shape]({os.path.relpath(plot_path, os.path.dirname(doc))})")
        w("")

    bf16 = [(key, s) for key, s in sorted(rows.items()) if s.get("ours-bf16", {}).get("best")
            and s.get("ours", {}).get("best")]
    if bf16:
        w("## bfloat16 weights")
        w("")
        w("Our inference with `set_bf16_inference(true)` (`--dtype bf16`: recurrent weights in "
          "bfloat16, and the input projection on AVX-512 BF16 where the CPU has it) against our "
          "`f32` inference, measured right after it in every round; target ≥ 1.8× on S3.")
        w("")
        w("| shape (T,B,I,H) | cell | f32 | bf16 | speed-up |")
        w("|---|---|---|---|---|")
        for (shape, cell, _), s in bf16:
            t, b, i, h = SHAPES[shape]
            f, g = s["ours"]["best"], s["ours-bf16"]["best"]
            w(f"| {shape} ({t},{b},{i},{h}) | {cell} | {fmt_ms(f)} | {fmt_ms(g)} | **{fmt_ratio(f / g)}** |")
        w("")

    w("## Summary")
    w("")
    w("Computed from the table above (this run only).")
    w("")
    for mode in st["modes"]:
        xs = summary[mode]
        name = "Inference" if mode == "infer" else "Training"
        if not xs:
            w(f"- **{name}**: no row with both our time and a peer's time.")
            continue
        faster = sum(1 for r, *_ in xs if r > 1)
        target = sum(1 for r, *_ in xs if r >= 1.5)
        gm = geomean([r for r, *_ in xs])
        lo = min(xs)
        hi = max(xs)
        w(f"- **{name}**: faster than the fastest peer in {faster} of {len(xs)} rows, at least 1.5× in "
          f"{target}; geometric mean {fmt_ratio(gm)}; lowest {fmt_ratio(lo[0])} ({lo[1]} {lo[2]}, vs "
          f"{LABEL[lo[3]]}), highest {fmt_ratio(hi[0])} ({hi[1]} {hi[2]}, vs {LABEL[hi[3]]}).")
        slower = sorted(x for x in xs if x[0] < 1)
        if slower:
            w("  Slower than the fastest peer: " + ", ".join(
                f"{s} {c} ({fmt_ratio(r)} vs {LABEL[p]})" for r, s, c, p in slower) + ".")
        parts = []
        for p in peers:
            ys = per_peer[mode][p]
            if ys:
                parts.append(f"{LABEL[p]} {fmt_ratio(geomean([r for r, *_ in ys]))} "
                             f"(faster in {sum(1 for r, *_ in ys if r > 1)}/{len(ys)})")
        if parts:
            w("  Geometric-mean ratio per peer: " + "; ".join(parts) + ".")
        # which peer is most often the fastest
        counts = {}
        for _, _, _, p in xs:
            counts[p] = counts.get(p, 0) + 1
        w("  Fastest peer: " + ", ".join(f"{LABEL[p]} in {n} rows" for p, n in
                                           sorted(counts.items(), key=lambda kv: -kv[1])) + ".")
    if pct:
        lo, hi = min(pct), max(pct)
        w(f"- Our share of the same-run sgemm ceiling ranges from {lo[0]:.0f}% ({lo[1]} {lo[2]} {lo[3]}) to "
          f"{hi[0]:.0f}% ({hi[1]} {hi[2]} {hi[3]}).")
    w(f"- The machine is a shared 2-vCPU virtual machine whose speed drifts; best-of-rounds medians damp "
      f"but do not remove that noise, so differences under ~10% between two sides are not significant.")
    w("")
    if nas or failures:
        w("## Not available and failures")
        w("")
        for p, whys in nas.items():
            w(f"- {LABEL[p]}: " + "; ".join(sorted(whys)))
        for f in failures:
            w(f"- failed: {f}")
        w("")
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    with open(doc, "w") as f:
        f.write("\n".join(L))
    log(f"[report] wrote {doc}" + (f" and {plot_path}" if have_plot else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time-ms", type=int, default=300)
    ap.add_argument("--slow-s", type=float, default=20.0,
                    help="no further rounds for a (side, mode) whose measurement took longer than this")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per measurement")
    ap.add_argument("--backend", default="auto", help="our --backend: auto|scalar|avx2|avx512")
    ap.add_argument("--bf16-shapes", default="S3", type=lambda s: [x.strip().upper() for x in s.split(",") if x],
                    help="shapes on which our bf16-weight inference is measured too (empty: none)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python peers")
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "target", "release", "examples", "bench"))
    ap.add_argument("--rust-peers-dir", default=os.path.join(HERE, "rust", "target", "release"))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    ap.add_argument("--plot", default=None, help="default: performance.svg beside the doc")
    ap.add_argument("--report-from", default=None, help="only rewrite the doc from a results JSON")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            res = json.load(f)
        report(res, args.report_from, args)
        return
    res, json_path = run(args)
    report(res, json_path, args)


if __name__ == "__main__":
    main()
