#!/usr/bin/env python3
"""Writes the small tensor-file fixtures under data/formats/ with NumPy itself (not with our writer),
so the readers are tested against files real NumPy produces. Every array holds the same values:

    base = (arange(24).reshape(2, 3, 4) - 7.5) * 0.25      (exact in float16 and bfloat16)

Run: /usr/bin/python3 tools/make_format_fixtures.py   (Debian python3-numpy)
"""
import json
import os
import struct

import numpy as np

out = os.path.join(os.path.dirname(__file__), "..", "data", "formats")
os.makedirs(out, exist_ok=True)
base = (np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 7.5) * 0.25


def save(name, array, version=None):
    with open(os.path.join(out, name), "wb") as f:
        np.lib.format.write_array(f, array, version=version, allow_pickle=False)


save("f4.npy", base.astype("<f4"))
save("f8.npy", base.astype("<f8"))
save("f2.npy", base.astype("<f2"))
save("f4_big_endian.npy", base.astype(">f4"))
save("f8_big_endian.npy", base.astype(">f8"))
save("f4_fortran.npy", np.asfortranarray(base.astype("<f4")))
save("f4_v2.npy", base.astype("<f4"), version=(2, 0))
save("f4_v3.npy", base.astype("<f4"), version=(3, 0))
save("i4.npy", np.arange(24, dtype="<i4").reshape(2, 3, 4) - 5)
save("i8.npy", np.arange(24, dtype="<i8").reshape(2, 3, 4) - 5)
save("u1.npy", np.arange(24, dtype="u1").reshape(2, 3, 4))
save("scalar.npy", np.array(2.5, dtype="<f4"))
save("empty.npy", np.zeros((0, 4), dtype="<f4"))
np.savez(os.path.join(out, "stored.npz"), base=base.astype("<f4"), index=np.arange(5, dtype="<i8"))
np.savez_compressed(os.path.join(out, "compressed.npz"), base=base.astype("<f8"), index=np.arange(5, dtype="<i4"))


def safetensors(name, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, offset = [], 0
    for key, (dtype, array, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


f32 = base.astype("<f4")
bf16 = (f32.view("<u4") >> 16).astype("<u2")
safetensors("mixed.safetensors", {
    "f32": ("F32", f32, f32.tobytes()),
    "f64": ("F64", base, base.astype("<f8").tobytes()),
    "f16": ("F16", base, base.astype("<f2").tobytes()),
    "bf16": ("BF16", base, bf16.tobytes()),
    "i64": ("I64", np.arange(5), np.arange(5, dtype="<i8").tobytes()),
}, metadata={"format": "pt", "source": "tools/make_format_fixtures.py"})
print("wrote", sorted(os.listdir(out)))
