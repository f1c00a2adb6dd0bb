"""2D resampling for the cascade: area downsampling (how low-resolution inputs are made),
bilinear upsampling (the condition a stage sees), and the bicubic and Lanczos-3
interpolation baselines the evaluation compares against. Arrays and tensors are
(..., H, W); 2x factors keep pixel centres aligned (half-pixel convention).
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor


def downsample_area(image: Tensor, factor: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, C, H/factor, W/factor): mean of each factor x factor block (a detector's pixel)."""
    return F.avg_pool2d(image, factor)


def upsample_bilinear(image: Tensor, size: int) -> Tensor:
    """(B, C, h, w) -> (B, C, size, size), bilinear with half-pixel centres (the seed's condition)."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


def _resample_axis(array: np.ndarray, axis: int, size: int, kernel, support: int) -> np.ndarray:
    """Interpolate one axis to ``size`` samples (upsampling), edge-replicated, weights normalised."""
    n = array.shape[axis]
    centres = (np.arange(size) + 0.5) * n / size - 0.5  # output pixel centres in input coordinates
    base = np.floor(centres).astype(int)
    taps = np.arange(-support + 1, support + 1)
    index = base[:, None] + taps[None, :]
    weights = kernel(centres[:, None] - index)
    weights = weights / weights.sum(axis=1, keepdims=True)
    index = np.clip(index, 0, n - 1)
    moved = np.moveaxis(array, axis, -1)
    out = (moved[..., index] * weights).sum(axis=-1)
    return np.moveaxis(out, -1, axis)


def upsample_interpolate(image: np.ndarray, size: int, method: str) -> np.ndarray:
    """(..., h, w) -> (..., size, size) by ``"bicubic"`` (Keys, a = -0.5) or ``"lanczos"`` (Lanczos-3)."""
    kernel, support = {"bicubic": (_keys_cubic, 2), "lanczos": (_lanczos3, 3)}[method]
    out = _resample_axis(np.asarray(image, dtype=np.float64), -2, size, kernel, support)
    return _resample_axis(out, -1, size, kernel, support).astype(np.float32)
