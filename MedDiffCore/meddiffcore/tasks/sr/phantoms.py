"""Procedural 2D brain-like MRI slices in [0, 1], (H, W) float32, for the SR cascade.

Rendered at 4x the requested size and area-averaged, so fine structure (a thin
cortex ribbon, sulci, small lesions) exists at every stage's resolution: the
super-resolution stages have real detail to recover.
"""

from __future__ import annotations

import numpy as np


def brain_slice(size: int, seed: int) -> np.ndarray:
    """One random slice at ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    fine = 4 * size
    y, x = np.meshgrid(np.linspace(-1, 1, fine), np.linspace(-1, 1, fine), indexing="ij")
    cy, cx = rng.uniform(-0.05, 0.05, 2)
    ry, rx = rng.uniform(0.78, 0.92), rng.uniform(0.65, 0.8)
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1.0 + 0.04 * np.sin(rng.integers(8, 14) * angle + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) / wobble
    image = np.zeros((fine, fine), dtype=np.float32)
    image[r <= 1.0] = 0.55   # scalp
    image[r <= 0.93] = 0.1   # skull
    image[r <= 0.87] = 0.25  # CSF
    image[r <= 0.84] = 0.55  # grey matter
    image[r <= 0.70] = 0.8   # white matter
    sulci = (np.abs(np.sin(rng.integers(14, 22) * angle + 3 * r)) < 0.12) & (r > 0.7) & (r < 0.84)
    image[sulci] = 0.25
    for side in (-1, 1):
        vy, vx = cy + rng.uniform(-0.1, 0.05), cx + side * rng.uniform(0.08, 0.14)
        image[((y - vy) / 0.22) ** 2 + ((x - vx) / 0.06) ** 2 <= 1.0] = 0.2
    for _ in range(rng.integers(0, 3)):
        ly, lx = rng.uniform(-0.45, 0.45, 2)
        rad = rng.uniform(0.03, 0.1)
        image[((y - ly) ** 2 + (x - lx) ** 2 <= rad ** 2) & (r < 0.8)] = rng.uniform(0.35, 0.95)
    return image.reshape(size, 4, size, 4).mean(axis=(1, 3)).astype(np.float32)
