"""The three inverse problems as operators on a whole (Z, Y, X) volume in the prior's [0, 1] units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...physics import ParallelBeam, SliceAverage, iterative_baseline
from ...physics.iterative import normal_norm
from ...physics.mri import RealCartesianMRI


@dataclass
class CTProblem:
    """Sparse-view CT: every axial slice is projected with the same parallel-beam geometry."""

    beam: ParallelBeam

    def forward(self, x: Tensor) -> Tensor:
        return self.beam.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.beam.adjoint(y)

    def baseline(self, y: Tensor, filter_name: str = "ramp") -> Tensor:
        return self.beam.fbp(y, filter_name)

    def iterative(self, y: Tensor, start: Tensor | None = None, outer: int | None = None) -> Tensor:
        """TV-regularised least squares (``physics.ITERATIVE["ct"]``) from ``start`` (default: the FBP image)."""
        return iterative_baseline("ct", self, y, self.baseline(y) if start is None else start, outer)

    start_image = iterative


@dataclass
class MRIProblem:
    """CS-MRI: every axial slice's centred 2D k-space, undersampled by the same (Y, X) mask; real images."""

    mask: Tensor

    def __post_init__(self) -> None:
        self.op = RealCartesianMRI(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        return self.op.normal(x)

    def baseline(self, y: Tensor) -> Tensor:
        """Zero-filled magnitude."""
        return self.op.magnitude(y)

    def iterative(self, y: Tensor, start: Tensor | None = None, outer: int | None = None) -> Tensor:
        """Compressed sensing: TV-regularised least squares (``physics.ITERATIVE["mri"]``) from ``start`` (default:
        the zero-filled image)."""
        return iterative_baseline("mri", self, y, self.baseline(y) if start is None else start, outer)

    start_image = iterative


@dataclass
class ZSRProblem:
    """Z-axis super-resolution: thick slices are averages of ``factor`` thin slices."""

    factor: int
    cg_per_item = False  # averaging couples the z slices: CG over the whole volume

    def __post_init__(self) -> None:
        self.op = SliceAverage(self.factor, axis=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def baseline(self, y: Tensor) -> Tensor:
        """Cubic-spline interpolation along z from thick-slice centres to thin-slice centres."""
        return torch.from_numpy(cubic_z_upsample(y.detach().cpu().double().numpy(), self.factor)).to(y)

    start_image = baseline  # no iterative baseline for z-SR: fast mode refines the cubic interpolation


def cubic_z_upsample(thick: np.ndarray, factor: int) -> np.ndarray:
    from scipy.interpolate import make_interp_spline

    nz = thick.shape[0]
    if nz < 4:
        return np.repeat(thick, factor, axis=0)
    centres = np.arange(nz) * factor + (factor - 1) / 2.0
    spline = make_interp_spline(centres, thick, k=3, axis=0)
    thin = np.arange(nz * factor, dtype=np.float64)
    return spline(thin, extrapolate=True)


def operator_norm(problem, shape: tuple[int, ...], device, iters: int = 12, seed: int = 0) -> float:
    """Largest eigenvalue of ``A^T A`` by power iteration (for step sizes)."""
    return normal_norm(problem, shape, device, iters=iters, seed=seed)
