"""2D slices of phantom volumes along the primary and auxiliary planes, scaled to [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from .config import DataConfig
from .phantoms import make_phantom
from .planes import to_slices


def scale_volume(volume: np.ndarray, data: DataConfig) -> np.ndarray:
    """Fixed intensity scaling recorded in the card: CT ``(HU - hu_min)/(hu_max - hu_min)``, MRI as is."""
    if data.modality == "ct":
        return ((volume - data.hu_min) / (data.hu_max - data.hu_min)).astype(np.float32)
    return volume.astype(np.float32)


class PriorSliceDataset(torch.utils.data.Dataset):
    """Item ``i``: slice ``i`` of the primary plane and slice ``i`` of the auxiliary plane (shuffled per volume)."""

    def __init__(self, data: DataConfig) -> None:
        shape = (data.size,) * 3
        vols = [scale_volume(make_phantom(data.modality, shape=shape, seed=data.seed + k), data) for k in range(data.volumes)]
        stack = torch.from_numpy(np.stack(vols))  # (V, Z, Y, X)
        self.primary = torch.cat([to_slices(v, data.primary_plane) for v in stack])  # (V*N, H, W)
        aux = torch.cat([to_slices(v, data.auxiliary_plane) for v in stack])
        perm = torch.randperm(aux.shape[0], generator=torch.Generator().manual_seed(data.seed))
        self.auxiliary = aux[perm]

    def __len__(self) -> int:
        return self.primary.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"primary": self.primary[i][None], "auxiliary": self.auxiliary[i][None]}
