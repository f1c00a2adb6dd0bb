"""CTCA's patch size and batch for the free memory; the patched denoiser itself is shared
(:mod:`meddiffcore.diffusion.patches`) and re-exported here."""

from __future__ import annotations

import math

from ...diffusion.patches import PatchedDenoiser, patch_grid, patch_starts, region_weight

__all__ = ["PatchedDenoiser", "choose_patching", "patch_grid", "patch_starts", "region_weight"]


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
