"""The data conventions of the published WDM / cWDM models, applied in and out.

An imported model's card says how the authors prepared their volumes
(``task_config``): the voxel size (``spacing_mm``, x y z), the network's axis order
(``network_axes``: ``"xyz"`` means the network's (D, H, W) are NIfTI's voxel axes
i, j, k, i.e. MedDiff's x, y, z), the per-volume input normalisation (cWDM: clip to
the 0.1 / 99.9 % quantiles, min-max to [0, 1]), how a volume is placed on the
model's grid (``placement`` per axis: ``"start"`` pads/crops at the far end only,
``"centre"`` on both sides; BraTS' 240x240x155 becomes 224x224x160 exactly as the
authors crop and pad it) and what is done to the output (values below
``zero_below`` set to 0). Here those steps run forwards on a user's volume and
backwards on the result, so the result lies on the input's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import BadInputError, ConfigError

_AXIS_INDEX = {"z": 0, "y": 1, "x": 2}


def network_permutation(task_config: dict[str, Any]) -> tuple[int, int, int]:
    """Permutation of a MedDiff (z, y, x) array that gives the network's (D, H, W) order."""
    axes = task_config.get("network_axes", "zyx")
    if sorted(axes) != ["x", "y", "z"]:
        raise ConfigError(f"model card: network_axes {axes!r} is not an ordering of x, y, z", "e.g. \"xyz\" or \"zyx\"")
    return tuple(_AXIS_INDEX[a] for a in axes)


def to_network(array: Tensor, task_config: dict[str, Any]) -> Tensor:
    """(..., Z, Y, X) -> (..., D, H, W) in the network's axis order."""
    lead = array.ndim - 3
    return array.permute(*range(lead), *(lead + p for p in network_permutation(task_config)))


def from_network(array: Tensor, task_config: dict[str, Any]) -> Tensor:
    """Inverse of :func:`to_network`."""
    lead = array.ndim - 3
    perm = network_permutation(task_config)
    inverse = sorted(range(3), key=lambda i: perm[i])
    return array.permute(*range(lead), *(lead + p for p in inverse))


def quantile_minmax(array: np.ndarray, low: float, high: float, what: str) -> np.ndarray:
    """Clip to the ``low``/``high`` quantiles of the volume, then min-max to [0, 1] (the cWDM authors' loader)."""
    lo, hi = np.quantile(array, [low, high])
    if not hi > lo:
        raise BadInputError(f"the {what} is constant between its {low:.1%} and {high:.1%} quantiles",
                            "give a real image volume (is it empty or a label map?)")
    clipped = np.clip(array, lo, hi)
    return ((clipped - clipped.min()) / (clipped.max() - clipped.min())).astype(np.float32)


@dataclass(frozen=True)
class Placement:
    """Where a source array sits on the model's grid: per axis, the source start and the grid start of the
    overlap and its length (the rest of the grid is 0; the rest of the source is cropped away)."""

    source_shape: tuple[int, int, int]
    grid_shape: tuple[int, int, int]
    source_start: tuple[int, int, int]
    grid_start: tuple[int, int, int]
    length: tuple[int, int, int]

    @classmethod
    def fit(cls, source_shape: tuple[int, ...], grid_shape: tuple[int, ...], modes: dict[str, str]) -> "Placement":
        src, grid, g0, s0, n = [], [], [], [], []
        for axis, (s, g) in zip("zyx", zip(source_shape, grid_shape)):
            mode = modes.get(axis, "centre")
            if mode not in ("start", "centre"):
                raise ConfigError(f"model card: placement {mode!r} for axis {axis}", "use 'start' or 'centre'")
            offset = 0 if mode == "start" else (g - s) // 2  # grid index of source index 0 (negative: cropped)
            src.append(s), grid.append(g), g0.append(max(offset, 0)), s0.append(max(-offset, 0))
            n.append(min(s - max(-offset, 0), g - max(offset, 0)))
        return cls(tuple(src), tuple(grid), tuple(s0), tuple(g0), tuple(n))

    def _slices(self, starts: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(starts, self.length))

    def to_grid(self, array: np.ndarray) -> np.ndarray:
        out = np.zeros(self.grid_shape, dtype=np.float32)
        out[self._slices(self.grid_start)] = array[self._slices(self.source_start)]
        return out

    def from_grid(self, array: np.ndarray) -> np.ndarray:
        out = np.zeros(self.source_shape, dtype=np.float32)
        out[self._slices(self.source_start)] = array[self._slices(self.grid_start)]
        return out


def resample_factor(spacing_xyz: tuple[float, ...], model_spacing_xyz: tuple[float, ...]) -> tuple[float, ...] | None:
    """Per-axis (z, y, x) zoom from the volume's voxel size to the model's, or None when they agree within 1 %."""
    factors = tuple(float(s) / float(m) for s, m in zip(reversed(spacing_xyz), reversed(model_spacing_xyz)))
    return None if all(abs(f - 1.0) < 0.01 for f in factors) else factors


def zoom(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of a (Z, Y, X) array to ``shape`` (same extent)."""
    from scipy import ndimage

    factors = [n / s for n, s in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=1, grid_mode=True, mode="nearest")
    return out[tuple(slice(0, n) for n in shape)].astype(np.float32)


def prepare_conditions(volumes: list, task_config: dict[str, Any]) -> tuple[Tensor, Placement, tuple[int, ...] | None]:
    """cWDM condition volumes (MedDiff ``Volume``s on one grid, in the card's order) -> the network's
    (1, K, D, H, W) input in [0, 1], the placement on the model grid, and the resampled shape (or None)."""
    first = volumes[0]
    for volume, name in zip(volumes[1:], task_config["conditions"][1:]):
        if not first.same_grid(volume):
            raise BadInputError(f"condition '{name}' is not on the grid of '{task_config['conditions'][0]}'",
                                "register and resample the contrasts onto one grid first (as BraTS provides them)")
    factors = resample_factor(tuple(first.spacing), tuple(task_config["spacing_mm"]))
    resampled = None if factors is None else tuple(max(1, round(n * f)) for n, f in zip(first.shape, factors))
    q = task_config["input"]["quantiles"]
    placement = None
    arrays = []
    for volume, name in zip(volumes, task_config["conditions"]):
        array = np.asarray(volume.array, dtype=np.float32)
        if resampled is not None:
            array = zoom(array, resampled)
        array = quantile_minmax(array, q[0], q[1], f"condition volume '{name}'")
        placement = placement or Placement.fit(array.shape, tuple(task_config["size"]), task_config["placement"])
        arrays.append(placement.to_grid(array))
    stacked = torch.from_numpy(np.stack(arrays))[None]
    return to_network(stacked, task_config), placement, resampled


def finish_translation(image: Tensor, placement: Placement, resampled: tuple[int, ...] | None,
                       input_shape: tuple[int, ...], task_config: dict[str, Any]) -> np.ndarray:
    """A generated (1, D, H, W) network-order volume in [0, 1] -> a (Z, Y, X) array on the input's grid."""
    array = from_network(image, task_config)[0].float().cpu().numpy()
    array[array <= float(task_config.get("output", {}).get("zero_below", 0.0))] = 0.0
    array = placement.from_grid(array)
    if resampled is not None:
        array = zoom(array, tuple(input_shape))
    return array
