"""Procedural 3D phantoms for training and testing the reconstruction priors.

CT phantoms are in Hounsfield units (air -1000, water 0): random ellipsoid
phantoms (Shepp-Logan-like) and organ-like abdomen/thorax phantoms (body,
fat rim, lungs, liver, kidneys, spine, aorta). MRI phantoms are brain-like
T1-weighted volumes in [0, 1] (scalp, skull, CSF, grey and white matter,
ventricles, deep nuclei). Arrays are (z, y, x), float32, isotropic.
"""

from __future__ import annotations

import numpy as np

KINDS = {"ct": ("ellipsoid", "organ"), "mri": ("brain",)}


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.meshgrid(*axes, indexing="ij")  # z, y, x


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    a, b, c = rng.uniform(-max_angle, max_angle, 3)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def _ellipsoid(grid, center, radii, rot: np.ndarray | None = None) -> np.ndarray:
    z, y, x = (g - c for g, c in zip(grid, center))
    if rot is not None:
        z, y, x = (rot[i, 0] * z + rot[i, 1] * y + rot[i, 2] * x for i in range(3))
    return (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 <= 1.0


def _smooth(volume: np.ndarray, sigma_vox: float) -> np.ndarray:
    if sigma_vox <= 0:
        return volume
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(volume, sigma_vox).astype(np.float32)


def ct_ellipsoid_phantom(shape=(64, 64, 64), seed: int = 0) -> np.ndarray:
    """A 3D Shepp-Logan-like phantom with random ellipsoids, in HU."""
    rng = np.random.default_rng(seed)
    g = _grid(shape)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    head = (rng.uniform(0.75, 0.9), rng.uniform(0.7, 0.88), rng.uniform(0.6, 0.75))
    vol[_ellipsoid(g, (0, 0, 0), head)] = 800.0  # skull-like shell
    inner = tuple(r - rng.uniform(0.05, 0.09) for r in head)
    vol[_ellipsoid(g, (0, 0, 0), inner)] = rng.uniform(20, 40)
    for _ in range(rng.integers(5, 10)):
        c = rng.uniform(-0.45, 0.45, 3) * np.array(inner) / 0.8
        r = rng.uniform(0.06, 0.3, 3)
        m = _ellipsoid(g, c, r, _rotation(rng, np.pi)) & _ellipsoid(g, (0, 0, 0), inner)
        vol[m] = rng.choice([rng.uniform(-100, -20), rng.uniform(50, 120), rng.uniform(200, 400)])
    return _smooth(vol, 0.6)


def ct_organ_phantom(shape=(64, 64, 64), seed: int = 0) -> np.ndarray:
    """An abdomen/thorax-like phantom with body, fat, lungs, liver, kidneys, spine and aorta, in HU."""
    rng = np.random.default_rng(seed)
    g = _grid(shape)
    z, y, x = g
    vol = np.full(shape, -1000.0, dtype=np.float32)
    ry, rx = rng.uniform(0.6, 0.75), rng.uniform(0.8, 0.92)
    body = (y / ry) ** 2 + (x / rx) ** 2 <= 1.0
    vol[body] = -100.0  # fat
    muscle = (y / (ry - 0.07)) ** 2 + (x / (rx - 0.08)) ** 2 <= 1.0
    vol[muscle] = 45.0 + rng.normal(0, 5)
    # lungs in the upper part (z > split), liver and kidneys below
    split = rng.uniform(-0.2, 0.2)
    for side in (-1, 1):
        lung = _ellipsoid(g, (0.6, -0.05, side * 0.4), (0.75, ry * 0.65, rx * 0.38), _rotation(rng, 0.15))
        vol[lung & (z > split) & muscle] = -820.0 + rng.normal(0, 20)
    liver = _ellipsoid(g, (split - 0.3, 0.0, -0.35), (0.5, ry * 0.65, rx * 0.45), _rotation(rng, 0.2))
    vol[liver & muscle & (z <= split + 0.1)] = 60.0 + rng.normal(0, 5)
    for side in (-1, 1):
        kidney = _ellipsoid(g, (split - 0.5, 0.25, side * 0.38), (0.25, 0.12, 0.09), _rotation(rng, 0.3))
        vol[kidney] = 150.0 + rng.normal(0, 10)
    spine_c = (0.0, ry * 0.62, 0.0)
    vert = ((y - spine_c[1]) / 0.13) ** 2 + (x / 0.12) ** 2 <= 1.0
    # vertebrae: bone bodies with discs in between
    period = rng.uniform(0.22, 0.3)
    disc = np.abs(np.mod(z + rng.uniform(0, period), period) - period / 2) < period * 0.12
    vol[vert] = 700.0
    vol[vert & disc] = 80.0
    aorta = ((y - ry * 0.35) / 0.07) ** 2 + ((x - 0.08) / 0.07) ** 2 <= 1.0
    vol[aorta & muscle] = 200.0
    for _ in range(rng.integers(2, 5)):  # lesions
        c = (rng.uniform(-0.8, 0.8), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6))
        m = _ellipsoid(g, c, rng.uniform(0.04, 0.1, 3)) & muscle
        vol[m] = rng.uniform(-20, 120)
    return _smooth(vol, 0.6)


def mri_brain_phantom(shape=(64, 64, 64), seed: int = 0) -> np.ndarray:
    """A T1-weighted brain-like phantom in [0, 1]: WM bright, GM darker, CSF dark."""
    rng = np.random.default_rng(seed)
    g = _grid(shape)
    z, y, x = g
    vol = np.zeros(shape, dtype=np.float32)
    head = np.array((rng.uniform(0.8, 0.9), rng.uniform(0.82, 0.92), rng.uniform(0.68, 0.78)))
    rot = _rotation(rng, 0.08)
    vol[_ellipsoid(g, (0, 0, 0), head, rot)] = 0.55  # scalp
    vol[_ellipsoid(g, (0, 0, 0), head - 0.05, rot)] = 0.08  # skull
    vol[_ellipsoid(g, (0, 0, 0), head - 0.09, rot)] = 0.15  # CSF
    brain = _ellipsoid(g, (0, 0, 0), head - 0.12, rot)
    vol[brain] = 0.5  # grey matter
    # white matter with gyral folding: a lumpy inner surface
    zz, yy, xx = (rot[i, 0] * z + rot[i, 1] * y + rot[i, 2] * x for i in range(3))
    r = np.sqrt((zz / (head[0] - 0.2)) ** 2 + (yy / (head[1] - 0.2)) ** 2 + (xx / (head[2] - 0.2)) ** 2)
    theta, phi = np.arctan2(yy, xx), np.arccos(np.clip(zz / np.maximum(np.sqrt(zz**2 + yy**2 + xx**2), 1e-6), -1, 1))
    k1, k2 = rng.integers(5, 9), rng.integers(4, 8)
    folds = 0.08 * np.sin(k1 * theta + rng.uniform(0, 6)) * np.sin(k2 * phi + rng.uniform(0, 6))
    wm = (r + folds <= 0.95) & brain
    vol[wm] = 0.8
    # sulci: CSF clefts reaching into grey matter
    vol[brain & (np.abs(folds) > 0.07) & (r > 0.85)] = 0.2
    for side in (-1, 1):  # lateral ventricles
        v = _ellipsoid(g, (0.1, -0.05, side * 0.1), (0.25, 0.3, 0.06), _rotation(rng, 0.1))
        vol[v] = 0.15
        n = _ellipsoid(g, (-0.1, 0.05, side * 0.22), (0.1, 0.12, 0.07))  # deep grey nuclei
        vol[n] = 0.6
    for _ in range(rng.integers(0, 3)):  # white-matter lesions
        c = rng.uniform(-0.4, 0.4, 3)
        vol[_ellipsoid(g, c, rng.uniform(0.03, 0.07, 3)) & wm] = 0.45
    vol = _smooth(vol, 0.7)
    bias = 1.0 + 0.08 * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y)
    return np.clip(vol * bias, 0.0, 1.0).astype(np.float32)


def make_phantom(modality: str, kind: str | None = None, shape=(64, 64, 64), seed: int = 0) -> np.ndarray:
    """A phantom of ``modality`` ('ct' or 'mri') and ``kind`` (default: alternate CT kinds by seed)."""
    if modality == "ct":
        kind = kind or ("ellipsoid", "organ")[seed % 2]
        return (ct_ellipsoid_phantom if kind == "ellipsoid" else ct_organ_phantom)(tuple(shape), seed)
    if modality == "mri":
        return mri_brain_phantom(tuple(shape), seed)
    raise ValueError(f"unknown phantom modality {modality!r}")
