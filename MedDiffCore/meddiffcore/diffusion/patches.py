"""Volumes larger than a network takes, without seams: overlapping patches denoised together, blended at every step.

:class:`PatchedDenoiser` wraps any denoiser ``D(x, sigma, **cond)``. At each
call it cuts the whole-volume sample and every whole-volume condition (one with
the sample's spatial dims: a SPADE map, known frames) into overlapping patches,
repeats the per-item conditions (context vectors) for each patch, runs the inner
denoiser on the patches in batches, and blends the patch estimates (x0 and the
learned variance) into one whole-volume estimate with smooth weights that are
normalised to sum to one in every voxel. Any sampler of
:mod:`meddiffcore.diffusion` then runs unchanged on the whole volume, so
neighbouring patches agree at every step and no seam can form (unlike sampling
patches independently). CTCA's high-resolution stage and the CTP authors' model
on frames larger than its trained 192 x 192 both run through it.

Because a patch's condition is cut from whole-volume maps (labels, the
low-resolution reference resampled onto the same grid, position channels, the
acquired frames), it is voxel-aligned with the patch by construction.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .denoisers import DenoiserOutput, eps_from_x0, predict


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


def shared_ramp(start: int, length: int, starts: list[int]) -> Tensor:
    """1-D weight of the patch at ``start`` among patches of ``length`` at ``starts``: a raised-cosine fade over
    all it shares with each neighbour (up to half its length), 1 elsewhere, never 0.

    Fading over the whole shared part, not only the least overlap asked for, gives the patch's own edge
    (where the network sees the zero padding of its convolutions) the least weight, and a neighbour's fade
    mirrors it."""
    w = torch.ones(length, dtype=torch.float64)
    before = [t for t in starts if t < start]
    after = [t for t in starts if t > start]
    lo = min(max(before) + length - start, length // 2) if before else 0
    hi = min(start + length - min(after), length // 2) if after else 0
    for o, at_start in ((lo, True), (hi, False)):
        if o > 0:
            r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(o, dtype=torch.float64) + 0.5) / o)
            if at_start:
                w[:o] = r
            else:
                w[length - o:] = r.flip(0)
    return w


def region_weight(region: tuple[slice, ...], regions: list[tuple[slice, ...]]) -> Tensor:
    """Separable (D, H, W) blending weight of ``region`` among the patch ``regions`` of one grid."""
    ws = []
    for axis, s in enumerate(region):
        starts = sorted({r[axis].start for r in regions})
        ws.append(shared_ramp(s.start, s.stop - s.start, starts))
    return (ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]).float()


class PatchedDenoiser:
    """Run ``denoiser`` on overlapping patches of the whole volume and blend the estimates.

    Args:
        denoiser: ``D(x, sigma, **cond)`` on patches (e.g. a guided VPDenoiser). A condition with the
            sample's number of dims is cut like the sample; any other (``(B, C)`` context vectors) is
            repeated for every patch.
        patch: patch size (z, y, x); clamped to the volume.
        overlap: the least voxels neighbouring patches share (z, y, x); the blend fades over all they share
            (:func:`shared_ramp`).
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
            cs = {k: torch.cat([v[(slice(None), slice(None)) + r] for r in chunk]) if v.ndim == x.ndim
                  else v.repeat(len(chunk), *([1] * (v.ndim - 1))) for k, v in cond.items()}
            out = predict(self.denoiser, xs, sigma.repeat(len(chunk)), **cs)
            self.calls += 1
            for n, r in enumerate(chunk):
                w = region_weight(r, regions).to(x.device, x.dtype)
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
