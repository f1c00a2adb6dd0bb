"""A 2D prior applied to a 3D volume: the volume's slices along a plane are a batch of 2D images.

The primary prior sees axial slices (batch = number of z slices) and the auxiliary
coronal slices (batch = number of y rows) of the same volume, by default; the
batch is chunked to fit memory, and each slice is padded to the network's size
multiple (reflection) and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...diffusion import predict
from .planes import from_slices, to_slices


@dataclass
class VolumePrior:
    """``denoiser``: a sigma-space 2D denoiser; ``plane``: which slices it was trained on."""

    denoiser: Callable
    plane: str
    size_multiple: int = 1
    chunk: int = 64
    evaluations: int = field(default=0)
    """Volume passes so far (one pass = every slice once)."""

    def _pad(self, s: Tensor) -> tuple[Tensor, tuple[int, int]]:
        h, w = s.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            s = F.pad(s, (0, pw, 0, ph), mode="replicate")
        return s, (h, w)

    def predict(self, x: Tensor, sigma: float, with_grad: bool = False) -> tuple[Tensor, Tensor]:
        """(Z, Y, X) volume at noise ``sigma`` -> (x0_hat, eps_hat) volumes."""
        self.evaluations += 1
        slices = to_slices(x, self.plane)
        x0s, epss = [], []
        for start in range(0, slices.shape[0], self.chunk):
            part, (h, w) = self._pad(slices[start:start + self.chunk][:, None])
            sig = torch.full((part.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
            ctx = torch.enable_grad() if with_grad else torch.no_grad()
            with ctx:
                out = predict(self.denoiser, part, sig)
            x0s.append(out.x0[:, 0, :h, :w])
            epss.append(out.eps[:, 0, :h, :w])
        return from_slices(torch.cat(x0s), self.plane), from_slices(torch.cat(epss), self.plane)


def choose_prior(i: int, K: float, rng: torch.Generator | None) -> str:
    """TPDM's alternation: integer K -> K-1 primary turns then one auxiliary; fractional K -> primary with
    probability 1 - 1/K (K <= 1 means auxiliary only)."""
    if float(K).is_integer():
        k = int(K)
        if k <= 1:
            return "auxiliary"
        return "primary" if i % k < k - 1 else "auxiliary"
    p_primary = 1.0 - 1.0 / K
    u = float(torch.rand((), generator=rng)) if rng is not None else float(torch.rand(()))
    return "primary" if u < p_primary else "auxiliary"
