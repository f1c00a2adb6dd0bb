"""Viewing a (z, y, x) volume as a batch of 2D slices along a plane, and back.

axial: images (y, x), one per z; coronal: images (z, x), one per y;
sagittal: images (z, y), one per x.
"""

from __future__ import annotations

import torch

_PERM = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
_INV = {k: tuple(sorted(range(3), key=lambda i: v[i])) for k, v in _PERM.items()}


def to_slices(volume: torch.Tensor, plane: str) -> torch.Tensor:
    """(Z, Y, X) -> (N, H, W) slices along ``plane``."""
    return volume.permute(*_PERM[plane])


def from_slices(slices: torch.Tensor, plane: str) -> torch.Tensor:
    """Inverse of :func:`to_slices`."""
    return slices.permute(*_INV[plane])
