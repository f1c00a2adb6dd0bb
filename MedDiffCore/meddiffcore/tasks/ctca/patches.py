"""High resolution without seams: overlapping patches denoised together and blended at every step.

:class:`PatchedDenoiser` wraps any denoiser ``D(x, sigma, segmap=...)``. At each
call it cuts the whole-volume sample and its whole-volume SPADE map into
overlapping patches, runs the inner denoiser on them in batches, and blends the
patch estimates (x0 and the learned variance) into one whole-volume estimate
with smooth weights that are normalised to sum to one in every voxel. Any
sampler of :mod:`meddiffcore.diffusion` then runs unchanged on the whole
volume, so neighbouring patches agree at every step and no seam can form
(unlike sampling slabs independently).

Because the patch condition is cut from whole-volume maps (labels, the
low-resolution reference resampled onto the same grid, position channels), a
patch's reference is voxel-aligned with the patch by construction.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ...diffusion import DenoiserOutput, eps_from_x0, predict


def patch_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Start indices of patches of ``patch`` voxels covering ``[0, size)`` with at least ``overlap`` shared voxels."""
    if patch >= size:
        return [0]
    stride = max(1, patch - overlap)
    count = math.ceil((size - patch) / stride) + 1
    return sorted({round(i * (size - patch) / (count - 1)) for i in range(count)})


def patch_grid(shape, patch, overlap) -> list[tuple[slice, ...]]:
    """Regions (one slice per axis) of the patches covering a (z, y, x) grid."""
    axes = [[slice(s, s + min(p, n)) for s in patch_starts(n, p, o)] for n, p, o in zip(shape, patch, overlap)]
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def ramp(length: int, overlap: int) -> Tensor:
    """1-D blending weight: a raised-cosine rise over ``overlap`` voxels at both ends, 1 inside; never 0."""
    w = torch.ones(length, dtype=torch.float64)
    o = min(overlap, length // 2)
    if o > 0:
        r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(o, dtype=torch.float64) + 0.5) / o)
        w[:o] = r
        w[length - o:] = r.flip(0)
    return w


def patch_weight(patch_shape, overlap) -> Tensor:
    """Separable (D, H, W) blending weight of one patch."""
    wz, wy, wx = (ramp(n, o) for n, o in zip(patch_shape, overlap))
    return (wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).float()


class PatchedDenoiser:
    """Run ``denoiser`` on overlapping patches of the whole volume and blend the estimates.

    Args:
        denoiser: ``D(x, sigma, segmap=...)`` on patches (e.g. a guided VPDenoiser).
        patch: patch size (z, y, x); clamped to the volume.
        overlap: voxels shared by neighbouring patches (z, y, x).
        max_batch: patches per network call (memory bound).
        on_chunk: optional ``f(done, total)`` after each chunk (progress, cancellation).
    """

    def __init__(self, denoiser: Callable[..., Tensor], patch, overlap, max_batch: int = 4,
                 on_chunk: Callable[[int, int], None] | None = None) -> None:
        self.denoiser = denoiser
        self.patch, self.overlap = tuple(int(p) for p in patch), tuple(int(o) for o in overlap)
        self.max_batch, self.on_chunk = max(1, int(max_batch)), on_chunk
        self.calls = 0

    def regions(self, shape) -> list[tuple[slice, ...]]:
        return patch_grid(shape, self.patch, self.overlap)

    def predict(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> DenoiserOutput:
        spatial = tuple(x.shape[2:])
        regions = self.regions(spatial)
        b = x.shape[0]
        acc = torch.zeros_like(x)
        acc_var = None
        wsum = torch.zeros(spatial, dtype=x.dtype, device=x.device)
        for start in range(0, len(regions), self.max_batch):
            chunk = regions[start: start + self.max_batch]
            xs = torch.cat([x[(slice(None), slice(None)) + r] for r in chunk])
            cs = {k: torch.cat([v[(slice(None), slice(None)) + r] for r in chunk]) for k, v in cond.items()}
            out = predict(self.denoiser, xs, sigma.repeat(len(chunk)), **cs)
            self.calls += 1
            for n, r in enumerate(chunk):
                w = patch_weight(tuple(s.stop - s.start for s in r), self.overlap).to(x.device, x.dtype)
                acc[(slice(None), slice(None)) + r] += w * out.x0[n * b:(n + 1) * b]
                if out.var_interp is not None:
                    if acc_var is None:
                        acc_var = torch.zeros_like(x)
                    acc_var[(slice(None), slice(None)) + r] += w * out.var_interp[n * b:(n + 1) * b]
                wsum[r] += w
            if self.on_chunk is not None:
                self.on_chunk(min(start + self.max_batch, len(regions)), len(regions))
        x0 = acc / wsum
        var = None if acc_var is None else acc_var / wsum
        return DenoiserOutput(x0=x0, eps=eps_from_x0(x, x0, sigma), var_interp=var)

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Tensor) -> Tensor:
        return self.predict(x, sigma, **cond).x0


def choose_patching(shape, trained_patch, multiple, device, bytes_per_voxel: float, cpu_batch: int = 2) -> tuple[tuple[int, ...], int]:
    """Patch size and patches per call for the free memory of ``device``.

    On a GPU the patch grows (in steps of the trained patch, up to the whole
    volume) while half the free memory holds one patch, and the batch fills half
    the free memory; on the CPU the trained patch size and ``cpu_batch`` are used.
    ``bytes_per_voxel`` is the network's activation memory per voxel of one sample.
    """
    from ...devices import free_gpu_memory_bytes

    def fit(n, p):
        return min(n, max(p, 1))

    patch = tuple(fit(n, p) for n, p in zip(shape, trained_patch))
    free = free_gpu_memory_bytes(device)
    if free is None:
        return patch, cpu_batch
    budget = 0.5 * free
    while True:
        bigger = tuple(min(n, p * 2) for n, p in zip(shape, patch))
        bigger = tuple(max(m, (b // m) * m) for b, m in zip(bigger, multiple))
        if bigger == patch or math.prod(bigger) * bytes_per_voxel > budget:
            break
        patch = bigger
    batch = max(1, int(budget // max(math.prod(patch) * bytes_per_voxel, 1)))
    return patch, batch
