"""Paired brain-like phantoms in two MRI contrasts, for training and testing WDM/cWDM.

One random tissue label map (background, scalp, skull, CSF, grey matter, white
matter, ventricles, a lesion) rendered with two intensity tables gives a T1-like
and a T2-like volume of the same anatomy: the unconditional model learns the
T1-like volumes, cWDM learns T2-like given T1-like. Arrays are (z, y, x) float32
in [0, 1], smoothed by half a voxel so edges are not aliased.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

LABELS = ("background", "scalp", "skull", "csf", "grey", "white", "ventricle", "lesion")
T1_INTENSITY = np.array([0.0, 0.55, 0.1, 0.2, 0.55, 0.8, 0.2, 0.35], dtype=np.float32)
T2_INTENSITY = np.array([0.0, 0.45, 0.05, 0.95, 0.6, 0.4, 0.95, 0.85], dtype=np.float32)


def _inside(grid, centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def brain_labels(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """(z, y, x) uint8 label map (indices into :data:`LABELS`) of one random head."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.05, 0.05, 3)
    head = rng.uniform(0.78, 0.92, 3)
    labels = np.zeros(shape, dtype=np.uint8)
    for label, shrink in ((1, 1.0), (2, 0.92), (3, 0.85), (4, 0.80), (5, 0.62)):
        labels[_inside(grid, centre, head * shrink)] = label
    for side in (-1, 1):
        vent_centre = centre + np.array([0.0, rng.uniform(-0.1, 0.05), side * rng.uniform(0.08, 0.14)])
        labels[_inside(grid, vent_centre, np.array([0.25, 0.12, 0.06]) * rng.uniform(0.8, 1.2))] = 6
    if rng.random() < 0.7:
        lesion_centre = centre + rng.uniform(-0.35, 0.35, 3)
        labels[_inside(grid, lesion_centre, rng.uniform(0.06, 0.15, 3)) & (labels >= 4)] = 7
    return labels


def render(labels: np.ndarray, table: np.ndarray, smooth_vox: float = 0.5) -> np.ndarray:
    """Intensities of a label map, lightly smoothed, in [0, 1]."""
    image = table[labels]
    if smooth_vox > 0:
        image = gaussian_filter(image, smooth_vox)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def brain_pair(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T1-like, T2-like) volumes of the same random anatomy."""
    labels = brain_labels(shape, seed)
    return render(labels, T1_INTENSITY), render(labels, T2_INTENSITY)
