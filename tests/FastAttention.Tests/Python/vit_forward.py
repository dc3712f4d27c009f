"""Reads a FastAttention ViT checkpoint with the standard library and NumPy only, runs the ViT forward in NumPy
(float64) on the first N test digits (image i is a test image when i mod 5 == 4) and prints the logits as JSON.
usage: vit_forward.py CHECKPOINT MNIST_NPZ N"""
import json
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        assert entry["dtype"] == "F32", (name, entry["dtype"])
        start, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(entry["shape"]).astype(np.float64)
    return tensors, meta


def erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf, and torch's GELU is the exact one.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return sign * y


def layer_norm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w + b


def main():
    path, npz, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p, meta = load_safetensors(path)
    model = json.loads(meta["options"])["model"]
    patch, heads, depth = model["patch"], model["heads"], model["depth"]
    archive = np.load(npz)
    test = [i for i in range(archive["images"].shape[0]) if i % 5 == 4][:count]
    x = (archive["images"][test].astype(np.float64) / 255.0 - 0.1307) / 0.3081    # [B, 28, 28]
    b, side = x.shape[0], 28 // patch
    w = p["patch_embed.proj.weight"]                                            # [dim, 1, p, p]
    dim = w.shape[0]
    patches = x.reshape(b, side, patch, side, patch).transpose(0, 1, 3, 2, 4).reshape(b, side * side, patch * patch)
    tokens = patches @ w.reshape(dim, -1).T + p["patch_embed.proj.bias"]
    tokens = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, dim)), tokens], axis=1) + p["pos_embed"]
    n, hd = tokens.shape[1], dim // heads
    for i in range(depth):
        pre = f"blocks.{i}."
        h = layer_norm(tokens, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
        qkv = (h @ p[pre + "attn.qkv.weight"].T + p[pre + "attn.qkv.bias"]).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        attended = (s / s.sum(-1, keepdims=True)) @ v                            # softmax attention
        tokens = tokens + attended.transpose(0, 2, 1, 3).reshape(b, n, dim) @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
        h = layer_norm(tokens, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
        h = h @ p[pre + "mlp.fc1.weight"].T + p[pre + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        tokens = tokens + h @ p[pre + "mlp.fc2.weight"].T + p[pre + "mlp.fc2.bias"]
    cls = layer_norm(tokens, p["norm.weight"], p["norm.bias"])[:, 0]
    logits = cls @ p["head.weight"].T + p["head.bias"]
    print(json.dumps(logits.tolist()))


main()
