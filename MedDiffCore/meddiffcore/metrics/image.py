"""PSNR, SSIM, MS-SSIM (2D and 3D) and Dice on numpy arrays.

SSIM follows Wang et al. (2004): Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, computed over the whole array with reflected borders. MS-SSIM
follows Wang et al. (2003) with the usual five scale weights, 2x average
pooling between scales, contrast-structure terms at every scale and luminance
at the coarsest; scales that the array is too small for are dropped and the
remaining weights renormalised (so 64^3 volumes work). ``data_range`` is always
explicit: images are compared in fixed units (HU windows), never rescaled per
image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    mse = float(np.mean((reference - test) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel luminance and contrast-structure maps."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    blur = lambda a: ndimage.gaussian_filter(a, sigma=sigma, mode="reflect", truncate=3.5)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance, contrast_structure


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float, sigma: float = 1.5) -> float:
    """Mean structural similarity over a 2D or 3D array."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(test, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    luminance, cs = _ssim_terms(x, y, data_range, sigma)
    return float(np.mean(luminance * cs))


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x average pooling along every axis (odd trailing voxels dropped)."""
    trimmed = a[tuple(slice(0, (n // 2) * 2) for n in a.shape)]
    shape = []
    for n in trimmed.shape:
        shape += [n // 2, 2]
    return trimmed.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def ms_ssim(reference: np.ndarray, test: np.ndarray, data_range: float, sigma: float = 1.5,
            min_size: int = 8) -> float:
    """Multi-scale SSIM; scales whose smallest side would fall below ``min_size`` are dropped."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(test, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and min(x.shape) // 2**scales >= min_size:
        scales += 1
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    values = []
    for level in range(scales):
        luminance, cs = _ssim_terms(x, y, data_range, sigma)
        if level == scales - 1:
            values.append(np.mean(luminance * cs))
        else:
            values.append(np.mean(cs))
            x, y = _downsample(x), _downsample(y)
    values = np.clip(np.array(values), 1e-8, None)
    return float(np.prod(values**weights))


def ssim_by_orientation(reference: np.ndarray, test: np.ndarray, data_range: float) -> dict[str, float]:
    """Mean 2D SSIM over all axial, coronal and sagittal slices of (z, y, x) volumes (TPDM's protocol)."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(test, dtype=np.float64)
    out = {}
    for name, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        values = [ssim(np.take(x, i, axis=axis), np.take(y, i, axis=axis), data_range) for i in range(x.shape[axis])]
        out[name] = float(np.mean(values))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
