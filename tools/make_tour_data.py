"""Writes data/tour/{q,k,v}.npy: the README tour's input, one head with bounded entries.

n = 16384 tokens, d = 4, entries uniform in [-1, 1] (NumPy's default_rng, seed 0), float32. Bounded entries
and a small head: the regime where the polynomial method of Alman & Song beats exact attention.
Run from the repository root: /usr/bin/python3 tools/make_tour_data.py
"""
import os

import numpy as np

out = os.path.join("data", "tour")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
for name in ("q", "k", "v"):
    np.save(os.path.join(out, name + ".npy"), rng.uniform(-1, 1, size=(16384, 4)).astype("<f4"))
