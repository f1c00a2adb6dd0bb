"""SR training data: items ``{"image": (1, size, size)}`` in [-1, 1]; the stage makes its own low-resolution input."""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BadInputError
from .config import SRDataConfig
from .phantoms import brain_slice


def to_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return ((np.asarray(values, dtype=np.float32) - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def from_unit_range(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return ((np.asarray(values, dtype=np.float32) + 1.0) / 2.0 * (high - low) + low).astype(np.float32)


class PhantomSlices(torch.utils.data.Dataset):
    """Brain-like slices at the stage's size; item ``i`` is always the same slice."""

    def __init__(self, data: SRDataConfig, seed: int = 0) -> None:
        self.data, self.seed = data, seed

    def __len__(self) -> int:
        return self.data.num_items

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = brain_slice(self.data.size, self.seed * 1_000_003 + index)
        return {"image": torch.from_numpy(to_unit_range(image, self.data.intensity_window))[None]}


class FolderSlices(torch.utils.data.Dataset):
    """Axial slices of the volumes in a folder, area-resized to the stage's size (square slices only)."""

    def __init__(self, data: SRDataConfig) -> None:
        from ...io import read_volume, volume_files

        paths = volume_files(data.folder)
        slices = []
        for path in paths:
            array = read_volume(path).array
            if array.shape[1] != array.shape[2] or array.shape[1] % data.size:
                raise BadInputError(f"slices of '{path.name}' are {array.shape[1]}x{array.shape[2]}",
                                    f"use square slices whose side is a multiple of {data.size}")
            tensor = torch.from_numpy(to_unit_range(array, data.intensity_window))[:, None]
            slices.append(F.adaptive_avg_pool2d(tensor, data.size))
        self.images = torch.cat(slices)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def build_dataset(data: SRDataConfig, seed: int) -> torch.utils.data.Dataset:
    return FolderSlices(data) if data.source == "folder" else PhantomSlices(data, seed)
