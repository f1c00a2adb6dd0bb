"""SR training data: items ``{"image": (1, size, size)}`` in [-1, 1]; the stage makes its own low-resolution input."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class IntensityMapping:
    """An input's units to the model's [-1, 1] and back: ``input_low``/``input_high`` (input units) become
    ``model_low``/``model_high`` (units of the card's intensity window), linearly; nothing is clipped on the
    way back, so the output is in the input's units (HU stays HU, scanner units stay scanner units)."""

    input_low: float
    input_high: float
    model_low: float
    model_high: float
    window: tuple[float, float]

    def to_model(self, values: np.ndarray) -> np.ndarray:
        scale = (self.model_high - self.model_low) / (self.input_high - self.input_low)
        return to_unit_range((np.asarray(values, np.float32) - self.input_low) * scale + self.model_low, self.window)

    def from_model(self, values: np.ndarray) -> np.ndarray:
        scale = (self.input_high - self.input_low) / (self.model_high - self.model_low)
        return ((from_unit_range(values, self.window) - self.model_low) * scale + self.input_low).astype(np.float32)


def intensity_mapping(task_config: dict, values: np.ndarray) -> IntensityMapping:
    """The mapping the card prescribes for ``values`` (the whole input volume, all slices together).

    ``task_config["intensity"] = {"normalize": "percentile", "percentiles": [lo, hi], "values": [a, b]}``: the
    volume's lo-th and hi-th percentiles become a and b (the demo, trained on phantom slices in arbitrary
    units: 0.5 and 99.5 -> background 0 and white matter 0.8, as the MRI recon priors); no "intensity"
    entry: the input is in the units of the card's fixed ``intensity_window`` (a model trained on a folder
    of volumes in, e.g., HU).
    """
    window = tuple(float(v) for v in task_config["intensity_window"])
    spec = task_config.get("intensity") or {}
    if spec.get("normalize") != "percentile":
        return IntensityMapping(window[0], window[1], window[0], window[1], window)
    lo_pct, hi_pct = (float(v) for v in spec["percentiles"])
    model_low, model_high = (float(v) for v in spec["values"])
    input_low, input_high = (float(v) for v in np.percentile(np.asarray(values, np.float32), [lo_pct, hi_pct]))
    if not input_high > input_low:
        raise BadInputError(f"the input has no contrast to normalise (its {lo_pct:g}th and {hi_pct:g}th percentiles "
                            f"are both {input_low:g})", "give an image with anatomy in it, not a constant one")
    return IntensityMapping(input_low, input_high, model_low, model_high, window)


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
