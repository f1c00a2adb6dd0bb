"""Cartesian MRI: centred orthonormal 2D FFT, undersampling masks and the masked-Fourier operator.

Images are (..., H, W); k-space is centred (DC at ``(H // 2, W // 2)``). Masks are
(H, W) boolean arrays with a fully sampled centre: ``uniform`` (random phase-encode
lines, the rows), ``equispaced`` (every R-th line) and ``poisson`` (2D Poisson-disc
points). The acceleration is ``H * W / sampled``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import BadInputError

MASK_KINDS = ("uniform", "equispaced", "poisson")


def fft2c(x: Tensor) -> Tensor:
    """Centred, orthonormal 2D FFT over the last two axes."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: Tensor) -> Tensor:
    """Inverse of :func:`fft2c`."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


def mask_acceleration(mask: np.ndarray) -> float:
    m = np.asarray(mask, dtype=bool)
    return m.size / max(int(m.sum()), 1)


def _center_box(shape: tuple[int, int], frac: float) -> tuple[slice, slice]:
    h, w = shape
    ch, cw = max(2, int(round(h * frac))), max(2, int(round(w * frac)))
    return slice(h // 2 - ch // 2, h // 2 - ch // 2 + ch), slice(w // 2 - cw // 2, w // 2 - cw // 2 + cw)


def _poisson_disc(shape: tuple[int, int], radius: float, rng: np.random.Generator, k: int = 20) -> np.ndarray:
    """Bridson's Poisson-disc sampling on the (H, W) grid; returns a boolean mask."""
    h, w = shape
    cell = radius / math.sqrt(2)
    gh, gw = int(math.ceil(h / cell)), int(math.ceil(w / cell))
    grid = -np.ones((gh, gw), dtype=np.int64)
    pts: list[tuple[float, float]] = []
    first = (rng.uniform(0, h), rng.uniform(0, w))
    pts.append(first)
    grid[int(first[0] / cell), int(first[1] / cell)] = 0
    active = [0]
    r2 = radius * radius
    while active:
        j = rng.integers(len(active))
        py, px = pts[active[j]]
        found = False
        ang = rng.uniform(0, 2 * math.pi, k)
        rad = radius * np.sqrt(rng.uniform(1, 4, k))
        for a, r in zip(ang, rad):
            qy, qx = py + r * math.sin(a), px + r * math.cos(a)
            if not (0 <= qy < h and 0 <= qx < w):
                continue
            gy, gx = int(qy / cell), int(qx / cell)
            ok = True
            for yy in range(max(gy - 2, 0), min(gy + 3, gh)):
                for xx in range(max(gx - 2, 0), min(gx + 3, gw)):
                    i = grid[yy, xx]
                    if i >= 0 and (pts[i][0] - qy) ** 2 + (pts[i][1] - qx) ** 2 < r2:
                        ok = False
                        break
                if not ok:
                    break
            if ok:
                grid[gy, gx] = len(pts)
                active.append(len(pts))
                pts.append((qy, qx))
                found = True
                break
        if not found:
            active.pop(j)
    mask = np.zeros(shape, dtype=bool)
    p = np.asarray(pts)
    mask[np.clip(p[:, 0].astype(int), 0, h - 1), np.clip(p[:, 1].astype(int), 0, w - 1)] = True
    return mask


def make_mask(shape: tuple[int, int], acceleration: float, kind: str = "uniform", center_fraction: float = 0.08,
              seed: int = 0) -> np.ndarray:
    """An (H, W) boolean undersampling mask with about ``acceleration`` times fewer samples and a fully sampled centre.

    ``uniform`` and ``equispaced`` sample whole rows (phase-encode lines; the centre is
    ``center_fraction`` of the rows); ``poisson`` samples 2D Poisson-disc points plus a
    ``center_fraction`` square.
    """
    h, w = (int(s) for s in shape)
    if kind not in MASK_KINDS:
        raise BadInputError(f"unknown mask kind '{kind}'", f"use one of {', '.join(MASK_KINDS)}")
    if not (1.0 <= acceleration <= h * w / 4):
        raise BadInputError(f"acceleration {acceleration} is out of range", "use an acceleration from 1 (fully sampled) to e.g. 16")
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=bool)
    if kind in ("uniform", "equispaced"):
        lines = np.zeros(h, dtype=bool)
        nc = max(2, int(round(h * center_fraction)))
        c0 = h // 2 - nc // 2
        lines[c0:c0 + nc] = True
        target = max(int(round(h / acceleration)), nc)
        extra = target - nc
        if extra > 0:
            if kind == "uniform":
                rest = np.flatnonzero(~lines)
                lines[rng.choice(rest, size=min(extra, rest.size), replace=False)] = True
            else:
                # every step-th line outside the centre, step chosen to reach the target count
                rest = np.flatnonzero(~lines)
                step = rest.size / extra
                offset = rng.uniform(0, step)
                pick = np.unique(np.floor(offset + np.arange(extra) * step).astype(int).clip(0, rest.size - 1))
                lines[rest[pick]] = True
        mask[lines, :] = True
        return mask
    cy, cx = _center_box((h, w), center_fraction)
    center = np.zeros((h, w), dtype=bool)
    center[cy, cx] = True
    target = h * w / acceleration
    lo, hi = 0.5, max(h, w) / 2.0
    radius = math.sqrt(h * w / max(target - center.sum(), 1) / 1.9)  # dense-packing estimate
    best = None
    for _ in range(8):
        m = _poisson_disc((h, w), radius, rng) | center
        err = m.sum() / target - 1
        if best is None or abs(err) < abs(best[0]):
            best = (err, m)
        if abs(err) < 0.05:
            break
        if err > 0:
            lo = radius
        else:
            hi = radius
        radius = radius * (1 + err) ** 0.5 if lo < radius * (1 + err) ** 0.5 < hi else (lo + hi) / 2
    return best[1]


BLOCK_ELEMENTS = 1 << 22
"""Images are transformed a block of slices at a time, about this many pixels per block (32 MiB of complex64): the
volume-sized complex temporaries of the centred FFT (shifted copies, spectra) stay one block's."""


def _blocks(x: Tensor):
    """(flat (N, H, W) view or copy of ``x``, slice ranges of at most :data:`BLOCK_ELEMENTS` pixels)."""
    flat = x.reshape((-1,) + tuple(x.shape[-2:]))
    step = max(1, BLOCK_ELEMENTS // max(1, flat.shape[-2] * flat.shape[-1]))
    return flat, [slice(i, i + step) for i in range(0, flat.shape[0], step)]


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_complex else torch.complex128 if dtype == torch.float64 else torch.complex64


@dataclass
class CartesianMRI:
    """``A x = mask * fft2c(x)`` on (B, H, W) images (real or complex); ``A^T k = ifft2c(mask * k)``.

    Both run a block of slices at a time into their result (per-slice transforms: the same values as one call)."""

    mask: Tensor

    def _forward_block(self, x: Tensor) -> Tensor:
        return fft2c(x.to(_complex_of(x.dtype))) * self.mask.to(x.device)

    def _adjoint_block(self, y: Tensor) -> Tensor:
        return ifft2c(y * self.mask.to(y.device))

    def _blocked(self, fn, x: Tensor, dtype: torch.dtype) -> Tensor:
        flat, blocks = _blocks(x)
        if len(blocks) == 1:
            return fn(x)
        out = torch.empty(flat.shape, dtype=dtype, device=x.device)
        for b in blocks:
            out[b] = fn(flat[b])
        return out.reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self._blocked(self._forward_block, x, _complex_of(x.dtype))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._blocked(self._adjoint_block, y, _complex_of(y.dtype))

    def zero_filled(self, y: Tensor) -> Tensor:
        return self.adjoint(y)

    def magnitude(self, y: Tensor) -> Tensor:
        """``|ifft2c(mask * y)|``, the zero-filled magnitude image, a block at a time."""
        return self._blocked(lambda b: CartesianMRI._adjoint_block(self, b).abs(), y, y.real.dtype)


class RealCartesianMRI(CartesianMRI):
    """The same on real images, with the real part of the adjoint (the real-space normal operator)."""

    def _adjoint_block(self, y: Tensor) -> Tensor:
        return ifft2c(y * self.mask.to(y.device)).real

    def adjoint(self, y: Tensor) -> Tensor:
        return self._blocked(self._adjoint_block, y, y.real.dtype)

    def normal(self, x: Tensor) -> Tensor:
        """``A^T A x`` (the same values as ``adjoint(forward(x))``) a block at a time: no k-space of the volume."""
        real = x.real.dtype if x.is_complex() else x.dtype
        return self._blocked(lambda b: self._adjoint_block(self._forward_block(b)), x, real)
