"""Training tuples from 1 s phantom sequences, as the seed draws them.

Item: a phantom, a start frame ``i``, a gap ``tr`` in ``min_gap..max_gap`` frames
and a target ``i + p`` (``0 < p < tr``, noise-free or acquired as configured);
the left and right acquired frames ``i`` and ``i + tr`` are the condition, the
distances and the phase relative to the bolus peak the context. A random
in-plane crop and left-right flip. Everything through the fixed HU window to
[-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from .config import CTPDataConfig, hu_to_model, tissue_mask
from .phantom import make_ctp_phantom
from .plan import context_vector, estimate_peak, phase_of


class PhantomSequence:
    """One windowed phantom sequence (T, Z, H, W) in [-1, 1], its noise-free frames and its bolus peak time."""

    def __init__(self, seed: int, slices: int, size: int) -> None:
        phantom = make_ctp_phantom(seed, slices=slices, size=size)
        hu = phantom.sequence.array
        self.frames = hu_to_model(hu).astype(np.float16)
        self.noise_free = hu_to_model(phantom.noise_free).astype(np.float16)
        self.times_s = phantom.sequence.times_s
        mask = tissue_mask(hu[0])
        self.peak_s = estimate_peak(self.times_s, self.frames[:, mask].astype(np.float32).mean(axis=1))


class CTPTupleDataset(torch.utils.data.Dataset):
    """Items ``{"target": (1, Z, c, c), "known": (2, Z, c, c), "context": (5,), "weight": ()}`` (weight: the
    target's fraction of the gap, for the linear interpolation); item ``k`` is always the same."""

    def __init__(self, data: CTPDataConfig, peak_margin_s: float, seed: int = 0) -> None:
        self.data, self.margin, self.seed = data, peak_margin_s, seed
        self.sequences = [PhantomSequence(data.phantom_seed + k, data.slices, data.size) for k in range(data.phantoms)]

    def __len__(self) -> int:
        return self.data.items

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d = self.data
        rng = np.random.default_rng([self.seed, int(index)])
        seq = self.sequences[int(rng.integers(len(self.sequences)))]
        n = seq.frames.shape[0]
        tr = int(rng.integers(d.min_gap, min(d.max_gap, n - 1) + 1))
        i = int(rng.integers(0, n - tr))
        p = int(rng.integers(1, tr))
        c = min(d.crop, d.size)
        y0, x0 = (int(rng.integers(0, d.size - c + 1)) for _ in range(2))
        sl = (slice(None), slice(y0, y0 + c), slice(x0, x0 + c))
        targets = seq.noise_free if d.target_frames == "noise_free" else seq.frames
        left, right = (seq.frames[k][sl].astype(np.float32) for k in (i, i + tr))
        target = targets[i + p][sl].astype(np.float32)
        if d.hflip and rng.random() < 0.5:
            left, target, right = (np.ascontiguousarray(a[..., ::-1]) for a in (left, target, right))
        t_left, t_target, t_right = seq.times_s[i], seq.times_s[i + p], seq.times_s[i + tr]
        ctx = context_vector(t_target - t_left, t_right - t_target, phase_of(t_target, seq.peak_s, self.margin))
        return {"target": torch.from_numpy(target)[None], "known": torch.from_numpy(np.stack([left, right])),
                "context": torch.from_numpy(ctx),
                "weight": torch.tensor(p / tr, dtype=torch.float32)}
