#!/usr/bin/env python3
"""Peer harness helpers (Debian's python3-numpy and python3-onnx):

  peers.py inputs  DIR N D H SEED      q/k/v.npy [H, N, D] float32, uniform [-1, 1], and ref.npy (float64 attention)
  peers.py model   DIR N D H           mha.onnx: one com.microsoft MultiHeadAttention node, q/k/v [1, N, H*D]
  peers.py numpy   DIR THREADS REPEAT  NumPy/OpenBLAS naive softmax(s Q K^T) V per head, float32; prints JSON
  peers.py check   DIR FILE            max |FILE - ref.npy| / max |ref.npy| and max abs error; prints JSON
  peers.py summary DIR N D H           the table of DIR/results.jsonl: time, GFLOP/s, %-of-peak, ratio to ONNX Runtime
  peers.py sgemm   N THREADS REPEAT    NumPy/OpenBLAS float32 N x N x N matmul, median; prints JSON
"""
import json
import sys
import time

import numpy as np


def inputs(folder, n, d, h, seed):
    rng = np.random.default_rng(seed)
    arrays = {name: rng.uniform(-1, 1, (h, n, d)).astype(np.float32) for name in ("q", "k", "v")}
    for name, array in arrays.items():
        np.save(f"{folder}/{name}.npy", array)
    q, k, v = (arrays[x].astype(np.float64) for x in ("q", "k", "v"))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    np.save(f"{folder}/ref.npy", p @ v)


def model(folder, n, d, h):
    import onnx
    from onnx import TensorProto, helper

    shape = [1, n, h * d]
    node = helper.make_node("MultiHeadAttention", ["query", "key", "value"], ["output"], domain="com.microsoft", num_heads=h)
    graph = helper.make_graph(
        [node], "mha",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape) for x in ("query", "key", "value")],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, f"{folder}/mha.onnx")


def numpy_peer(folder, threads, repeat):
    q, k, v = (np.load(f"{folder}/{x}.npy") for x in ("q", "k", "v"))
    scale = np.float32(1 / np.sqrt(q.shape[-1]))

    def run():
        out = np.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=np.float32)
        for head in range(q.shape[0]):
            s = (q[head] * scale) @ k[head].T
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            out[head] = s @ v[head]
        return out

    out = run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    np.save(f"{folder}/numpy_out.npy", out)
    print(json.dumps({"medianSeconds": float(np.median(times)), "threads": threads, "blas": blas_library()}))


def blas_library():
    """The BLAS library NumPy really loaded (Debian picks it through alternatives at run time)."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
        return ", ".join(sorted(names))
    except OSError:
        return "unknown"


def check(folder, file):
    ref = np.load(f"{folder}/ref.npy")
    out = np.load(file).astype(np.float64).reshape(ref.shape)
    err = float(np.abs(out - ref).max())
    print(json.dumps({"maxAbsError": err, "maxRelativeError": err / float(np.abs(ref).max())}))


def summary(folder, n, d, h):
    rows = [json.loads(line) for line in open(f"{folder}/results.jsonl")]
    flops = 4.0 * h * n * n * d
    ort = {r["threads"]: r["medianSeconds"] for r in rows if r["impl"] == "onnxruntime"}
    print(f"exact attention, h={h} n={n} d={d}, fp32, non-causal; flops 4 h n^2 d = {flops:.3e}")
    print(f"{'implementation':<34} {'thr':>3} {'median ms':>10} {'GFLOP/s':>8} {'vs ORT':>7} {'max rel err':>12}")
    for r in rows:
        t = r["threads"]
        gflops = flops / r["medianSeconds"] / 1e9
        ratio = ort[t] / r["medianSeconds"] if t in ort else float("nan")
        print(f"{r['impl']:<34} {t:>3} {r['medianSeconds'] * 1e3:>10.2f} {gflops:>8.1f} "
              f"{ratio:>6.2f}x {r['maxRelativeError']:>12.1e}")
    # No %-of-peak here: a nominal peak belongs to one CPU; `fastattn bench` measures this machine's.
    print("'vs ORT' = ONNX Runtime's median time / this median time (same run, same inputs);")
    print("error: max |out - float64 reference| / max |reference|.")


def sgemm(n, threads, repeat):
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    a @ b
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    print(json.dumps({"medianSeconds": float(np.median(times)), "threads": threads, "blas": blas_library()}))


if __name__ == "__main__":
    cmd, folder, *rest = sys.argv[1:]
    if cmd == "sgemm":
        sgemm(int(folder), *map(int, rest))
    elif cmd == "inputs":
        inputs(folder, *map(int, rest))
    elif cmd == "model":
        model(folder, *map(int, rest))
    elif cmd == "numpy":
        numpy_peer(folder, *map(int, rest))
    elif cmd == "summary":
        summary(folder, *map(int, rest))
    elif cmd == "check":
        check(folder, rest[0])
    else:
        sys.exit(f"unknown command {cmd}")
