"""WDM training data: items ``{"image": (1, D, H, W)}`` and, for cWDM, ``{"condition": (1, D, H, W)}``, in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import BadInputError
from .config import WDMDataConfig
from .phantoms import brain_pair


def to_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map the fixed ``window`` (never per-volume min/max) to [-1, 1]."""
    low, high = window
    return ((np.asarray(values, dtype=np.float32) - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def from_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return ((np.asarray(values, dtype=np.float32) + 1.0) / 2.0 * (high - low) + low).astype(np.float32)


def check_grid(shape: tuple[int, ...], size: tuple[int, int, int], what: str) -> None:
    """A training or condition volume must have exactly the model's (z, y, x) grid."""
    if tuple(shape) != tuple(size):
        raise BadInputError(
            f"the {what} is {'x'.join(map(str, shape))} voxels (z, y, x) but the model works on "
            f"{'x'.join(map(str, size))}",
            "resample or crop the volume to the model's grid (see the model card's task_config.size)",
        )


class PhantomVolumes(torch.utils.data.Dataset):
    """Brain phantoms; item ``i`` is always the same anatomy (seeded by ``seed`` and ``i``)."""

    def __init__(self, data: WDMDataConfig, seed: int = 0) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return self.data.num_items

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        t1, t2 = brain_pair(tuple(self.data.size), self.seed * 1_000_003 + index)
        window = self.data.intensity_window
        if self.data.conditional:
            return {"image": torch.from_numpy(to_unit_range(t2, window))[None],
                    "condition": torch.from_numpy(to_unit_range(t1, window))[None]}
        return {"image": torch.from_numpy(to_unit_range(t1, window))[None]}


class FolderVolumes(torch.utils.data.Dataset):
    """Volumes of a folder already on the model's grid (and, for cWDM, same-named condition volumes)."""

    def __init__(self, data: WDMDataConfig) -> None:
        from ...io import read_volume, volume_files

        paths = volume_files(data.folder)
        self.items = []
        for path in paths:
            volume = read_volume(path)
            check_grid(volume.shape, data.size, f"training volume '{path.name}'")
            item = {"image": torch.from_numpy(to_unit_range(volume.array, data.intensity_window))[None]}
            if data.conditional:
                cond = read_volume(Path(data.condition_folder) / path.name)
                check_grid(cond.shape, data.size, f"condition volume '{path.name}'")
                item["condition"] = torch.from_numpy(to_unit_range(cond.array, data.intensity_window))[None]
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def build_dataset(data: WDMDataConfig, seed: int) -> torch.utils.data.Dataset:
    if data.source == "folder":
        return FolderVolumes(data)
    return PhantomVolumes(data, seed)
