#!/usr/bin/env python3
"""One framework's side of the peer comparison, run as a long-lived child of compare.py.

    python peer_worker.py torch|tf|onnxruntime --threads N

Reads one JSON request per line on stdin and answers one JSON line on stdout:

    {"op": "info"}                                   -> versions and settings
    {"op": "export", "cell", "batch", "seq", "input", "hidden", "path"}   (torch only)
    {"op": "measure", "cell", "mode", "shape", "batch", "seq", "input", "hidden",
     "min_time_ms", "onnx"}                          -> {"median_s", "min_s", "max_s", "reps"}
    {"op": "quit"}

A measurement the framework cannot make answers {"na": why}; a failure {"error": text}.
Models are built once per (cell, shape) and kept while the shape stays the same, so
only the timed calls are measured. Timing follows fused-rnn's examples/bench.rs: one
warm-up call, then at least 5 timed calls and at least min_time_ms in all; median.

Everything a framework prints goes to stderr; the answers use a private copy of stdout.
"""

import gc
import json
import os
import sys
import time
import traceback

# The protocol channel: a private duplicate of stdout; fd 1 itself goes to stderr so that
# framework chatter can never corrupt an answer.
_proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def answer(obj):
    _proto.write(json.dumps(obj) + "\n")
    _proto.flush()


def det_input(b, t, i):
    """The same deterministic batch-major input as fused-rnn's bench: ((k % 101) - 50) / 60."""
    import numpy as np

    k = np.arange(b * t * i, dtype=np.int64)
    return (((k % 101) - 50) / 60.0).astype(np.float32).reshape(b, t, i)


def measure(min_time_s, fn):
    fn()  # warm-up (and, for tf.function, tracing on the first call of a shape)
    gc.collect()
    gc.disable()
    try:
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < min_time_s:
            s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - s)
    finally:
        gc.enable()
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "max_s": times[-1], "reps": len(times)}


class Side:
    """Per-framework model cache (current shape only) and the measure dispatch."""

    def __init__(self):
        self.cache = {}
        self.shape_key = None

    def get(self, req):
        shape_key = (req["batch"], req["seq"], req["input"], req["hidden"])
        if shape_key != self.shape_key:
            self.cache.clear()
            gc.collect()
            self.shape_key = shape_key
        key = (req["cell"], req["mode"])
        if key not in self.cache:
            self.cache[key] = self.build(req)
        return self.cache[key]


# ---------------------------------------------------------------- PyTorch
class TorchSide(Side):
    def __init__(self, threads):
        super().__init__()
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        torch.manual_seed(0)

    def info(self):
        t = self.torch
        return {
            "torch": t.__version__,
            "torch_threads": t.get_num_threads(),
            "torch_interop_threads": t.get_num_interop_threads(),
            "torch_mkldnn": bool(t.backends.mkldnn.is_available()),
            "torch_cpu_capability": getattr(t.backends.cpu, "get_cpu_capability", lambda: "?")(),
        }

    def module(self, cell, i, h):
        nn = self.torch.nn
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        kw = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        return cls(i, h, num_layers=1, bias=True, batch_first=True, **kw).float()

    def build(self, req):
        torch = self.torch
        b, t, i, h = req["batch"], req["seq"], req["input"], req["hidden"]
        m = self.module(req["cell"], i, h)
        x = torch.from_numpy(det_input(b, t, i))
        if req["mode"] == "infer":
            m.eval()

            def run():
                with torch.inference_mode():
                    y, _ = m(x)
                return y

            return run
        m.train()
        x = x.clone().requires_grad_(True)
        h0 = torch.zeros(1, b, h, requires_grad=True)
        c0 = torch.zeros(1, b, h, requires_grad=True)
        dy = torch.full((b, t, h), 1e-2)
        params = list(m.parameters())

        def run():
            for p in params:
                p.grad = None
            x.grad = h0.grad = c0.grad = None
            y, _ = m(x, (h0, c0)) if req["cell"] == "lstm" else m(x, h0)
            (y * dy).sum().backward()

        return run

    def export(self, req):
        torch = self.torch
        b, t, i, h = req["batch"], req["seq"], req["input"], req["hidden"]
        m = self.module(req["cell"], i, h).eval()

        class OnlyY(torch.nn.Module):
            def __init__(self, rnn):
                super().__init__()
                self.rnn = rnn

            def forward(self, x):
                return self.rnn(x)[0]

        x = torch.from_numpy(det_input(b, t, i))
        path = req["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        # dynamo=False: the TorchScript exporter emits real LSTM / GRU / RNN operators.
        torch.onnx.export(OnlyY(m), (x,), tmp, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
        os.replace(tmp, path)
        import onnx

        ops = sorted({n.op_type for n in onnx.load(path).graph.node})
        return {"path": path, "ops": ops}


# ---------------------------------------------------------------- TensorFlow / Keras
class TfSide(Side):
    def __init__(self, threads):
        super().__init__()
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        # Before any TF op: intra- and inter-op pools both N threads.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        import keras

        self.tf, self.keras = tf, keras
        keras.utils.set_random_seed(0)

    def info(self):
        tf = self.tf
        return {
            "tensorflow": tf.__version__,
            "keras": self.keras.__version__,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        }

    def build(self, req):
        tf, keras = self.tf, self.keras
        b, t, i, h = req["batch"], req["seq"], req["input"], req["hidden"]
        cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}[req["cell"]]
        kw = {"reset_after": True} if req["cell"] == "gru" else {}
        layer = cls(h, return_sequences=True, use_bias=True, **kw)
        layer.build((b, t, i))
        x = tf.constant(det_input(b, t, i))
        if req["mode"] == "infer":
            fn = tf.function(lambda x: layer(x, training=False))
            return lambda: fn(x)
        nstate = 2 if req["cell"] == "lstm" else 1
        h0 = [tf.zeros((b, h)) for _ in range(nstate)]
        dy = tf.fill((b, t, h), 1e-2)
        weights = list(layer.trainable_weights)

        @tf.function
        def step(x, h0, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                tape.watch(h0)
                y = layer(x, initial_state=h0 if nstate == 2 else h0[0], training=True)
                loss = tf.reduce_sum(y * dy)
            return tape.gradient(loss, [x, h0] + weights)

        return lambda: step(x, h0, dy)


# ---------------------------------------------------------------- ONNX Runtime
class OrtSide(Side):
    def __init__(self, threads):
        super().__init__()
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads

    def info(self):
        return {"onnxruntime": self.ort.__version__, "ort_providers": self.ort.get_available_providers()}

    def build(self, req):
        ort = self.ort
        if req["mode"] != "infer":
            return None
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(req["onnx"], so, providers=["CPUExecutionProvider"])
        x = det_input(req["batch"], req["seq"], req["input"])
        feed = {"x": x}
        return lambda: sess.run(["y"], feed)


SIDES = {"torch": TorchSide, "tf": TfSide, "onnxruntime": OrtSide}


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("framework", choices=sorted(SIDES))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    try:
        side = SIDES[a.framework](a.threads)
    except Exception:
        answer({"error": "startup failed: " + traceback.format_exc(limit=3)})
        return
    answer({"ready": a.framework})
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        op = req.get("op")
        try:
            if op == "quit":
                answer({"bye": True})
                return
            if op == "info":
                answer(side.info())
            elif op == "export":
                if not hasattr(side, "export"):
                    answer({"error": f"{a.framework} cannot export"})
                else:
                    answer(side.export(req))
            elif op == "measure":
                if a.framework == "onnxruntime" and req["mode"] != "infer":
                    answer({"na": "ONNX Runtime: inference only"})
                    continue
                fn = side.get(req)
                answer(measure(req["min_time_ms"] / 1e3, fn))
            else:
                answer({"error": f"unknown op {op!r}"})
        except Exception:
            answer({"error": traceback.format_exc(limit=4)})


if __name__ == "__main__":
    main()
