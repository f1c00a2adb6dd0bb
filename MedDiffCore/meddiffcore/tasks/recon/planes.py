"""Viewing a (z, y, x) volume as a batch of 2D slices along a plane, and back.

A plane is a name or an axis string. axial: images (y, x), one per z; coronal:
images (z, x), one per y; sagittal: images (z, y), one per x. An axis string names
the slice axis, then the image rows, then the image columns, from ``z``, ``y``,
``x``: ``"zyx"`` is axial, ``"yxz"`` is one image (x, z) per y (a transposed
coronal view, as TPDM's CT auxiliary model was trained on).
"""

from __future__ import annotations

import torch

from ...errors import ConfigError

PLANE_AXES = {"axial": "zyx", "coronal": "yzx", "sagittal": "xzy"}
_AXIS = {"z": 0, "y": 1, "x": 2}


def plane_permutation(plane: str) -> tuple[int, int, int]:
    """The permutation of a (Z, Y, X) volume that gives (N, H, W) slices along ``plane``."""
    axes = PLANE_AXES.get(plane, plane)
    if not isinstance(axes, str) or sorted(axes) != ["x", "y", "z"]:
        raise ConfigError(f"unknown plane {plane!r}",
                          f"use {', '.join(PLANE_AXES)} or an axis string of z, y, x (slice axis, rows, columns)")
    return tuple(_AXIS[a] for a in axes)


def to_slices(volume: torch.Tensor, plane: str) -> torch.Tensor:
    """(Z, Y, X) -> (N, H, W) slices along ``plane``."""
    return volume.permute(*plane_permutation(plane))


def from_slices(slices: torch.Tensor, plane: str) -> torch.Tensor:
    """Inverse of :func:`to_slices`."""
    perm = plane_permutation(plane)
    return slices.permute(*sorted(range(3), key=lambda i: perm[i]))
