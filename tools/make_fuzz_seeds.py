#!/usr/bin/python3
"""Writes the fuzzing seed corpus fuzz/seeds/{npy,npz,safetensors}: a few small valid files of each format
(float16/32/64 and int64, plain and compressed .npz, safetensors with and without metadata). Needs NumPy."""
import json
import os
import struct

import numpy as np

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")
for folder in ("npy", "npz", "safetensors"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)

np.save(os.path.join(root, "npy", "f4_2x3.npy"), np.arange(6, dtype="<f4").reshape(2, 3))
np.save(os.path.join(root, "npy", "f8_3.npy"), np.array([1.5, -2, 3], dtype="<f8"))
np.save(os.path.join(root, "npy", "i8_2x2.npy"), np.array([[1, 2], [3, 4]], dtype="<i8"))
np.save(os.path.join(root, "npy", "f2_1x4.npy"), np.ones((1, 4), dtype="<f2"))
np.savez(os.path.join(root, "npz", "two.npz"), q=np.ones((2, 2), "<f4"), k=np.zeros(3, "<f4"))
np.savez_compressed(os.path.join(root, "npz", "compressed.npz"), v=np.arange(4, dtype="<f4"))


def safetensors(name, tensors, metadata=None):
    """The format: an 8-byte little-endian header length, the JSON header (padded with spaces to 8), the data."""
    header, data = {}, b""
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(os.path.join(root, "safetensors", name), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


safetensors("f32.safetensors", {"q": ("F32", [2, 2], np.arange(4, dtype="<f4").tobytes())}, {"format": "pt"})
safetensors("mixed.safetensors", {"a": ("F16", [3], np.ones(3, "<f2").tobytes()), "b": ("I64", [1], np.array([7], "<i8").tobytes())})
