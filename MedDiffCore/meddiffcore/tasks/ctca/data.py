"""Training sets of the CTCA task: items are ``{"x": (1, D, H, W), "segmap": (C, D, H, W)}`` tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError
from ...io.volume import geometry_from_spacing
from .config import CTCAConfig, hu_to_model
from .model import condition


def low_resolution_reference(ct_hu: np.ndarray, factor: float) -> np.ndarray:
    """What the patch stage is given of a CT at inference, in [-1, 1]: a perfect low-resolution result (the mean
    of every ``factor``-cubed block: the voxels of the coarse grid that :func:`.grid.synthesis_grid` puts over the
    same box) resampled back linearly exactly as :func:`.synthesis.high_resolution` resamples the LR stage's
    result, so training and inference see the reference at the same place (coarse voxel ``j``'s centre is fine
    index ``factor * j + (factor - 1) / 2``)."""
    if factor <= 1.0:
        return hu_to_model(ct_hu)
    f = int(round(factor))
    if abs(f - factor) > 1e-6 or any(n % f for n in ct_hu.shape):
        raise ConfigError(f"the patch stage's reference needs a whole spacing ratio dividing the training grid, got "
                          f"ratio {factor:g} for grid {'x'.join(map(str, ct_hu.shape))}",
                          "pick reference_spacing_mm a whole multiple of spacing_mm and a shape divisible by it")
    from .grid import resample

    coarse_shape = tuple(n // f for n in ct_hu.shape)
    blocks = ct_hu.astype(np.float32).reshape(coarse_shape[0], f, coarse_shape[1], f, coarse_shape[2], f)
    coarse = hu_to_model(blocks.mean(axis=(1, 3, 5)))
    fine_grid = geometry_from_spacing((1.0, 1.0, 1.0))
    coarse_grid = geometry_from_spacing((float(f),) * 3, ((f - 1) / 2.0,) * 3)
    return resample(coarse, coarse_grid, fine_grid, ct_hu.shape, order=1, mode="nearest")


class CTCADataset(torch.utils.data.Dataset):
    """Phantoms (cached as .npz when ``data.folder`` is set) or a prepared folder, with random crops."""

    def __init__(self, config: CTCAConfig) -> None:
        self.config = config
        data = config.data
        if data.source == "folder":
            folder = Path(data.folder)
            self.items = sorted((folder / "labels").glob("*.nii*"))
            if not self.items:
                raise ConfigError(f"training folder '{folder}' has no labels/*.nii.gz", "write it with `meddiff prepare ctca`")
        else:
            self.items = list(range(data.first_seed, data.first_seed + data.num_phantoms))
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._reference: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def volume(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels uint8, ct int16 HU) of item ``index`` on the training grid."""
        if index in self._memory:
            return self._memory[index]
        data = self.config.data
        if data.source == "folder":
            from ...io import read_volume

            label_path = self.items[index]
            image_path = label_path.parent.parent / "images" / label_path.name
            labels, ct = read_volume(label_path).array.astype(np.uint8), read_volume(image_path).array.astype(np.int16)
        else:
            seed = self.items[index]
            cache = Path(data.folder) / f"phantom_{seed:06d}_{'x'.join(map(str, data.shape))}_{data.spacing_mm:g}mm.npz" \
                if data.folder else None
            if cache is not None and cache.is_file():
                with np.load(cache) as f:
                    labels, ct = f["labels"], f["ct"]
            else:
                from .phantom import make_phantom

                ph = make_phantom(seed, data.shape, data.spacing_mm)
                labels, ct = ph.labels.array, ph.ct.array
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache.with_suffix(".tmp.npz")
                    np.savez_compressed(tmp, labels=labels, ct=ct)
                    tmp.replace(cache)
        self._memory[index] = (labels, ct)
        return labels, ct

    def reference(self, index: int) -> np.ndarray:
        """Patch stage: the low-resolution reference of item ``index`` (computed once per volume)."""
        if index not in self._reference:
            factor = self.config.data.reference_spacing_mm / self.config.data.spacing_mm
            self._reference[index] = low_resolution_reference(self.volume(index)[1], factor)
        return self._reference[index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        labels, ct = self.volume(index)
        reference = self.reference(index) if cfg.stage == "patch" else None
        region = (slice(None),) * 3
        if cfg.data.crop is not None:  # crop first: the condition is built for the crop only
            starts = [int(torch.randint(0, n - c + 1, ()).item()) for n, c in zip(ct.shape, cfg.data.crop)]
            region = tuple(slice(s, s + c) for s, c in zip(starts, cfg.data.crop))
        segmap = condition(labels, cfg.stage, reference, region)
        x = hu_to_model(ct[region])
        if cfg.diffusion.target == "residual":
            x = cfg.diffusion.residual_scale * (x - reference[region])
        x = torch.as_tensor(x)[None]
        return {"x": x.contiguous(), "segmap": segmap.contiguous()}
