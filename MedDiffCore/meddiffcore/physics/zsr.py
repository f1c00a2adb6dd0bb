"""MRI z-axis super-resolution: a thick slice is the average of ``factor`` consecutive thin slices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..errors import BadInputError


@dataclass
class SliceAverage:
    """``forward``: (..., Z, Y, X) -> (..., Z / factor, Y, X) by averaging; ``adjoint``: spread each thick
    slice over its ``factor`` thin slices, divided by ``factor`` (the exact transpose)."""

    factor: int
    axis: int = -3

    def __post_init__(self) -> None:
        if int(self.factor) != self.factor or self.factor < 1:
            raise BadInputError(f"the z factor must be a positive integer, got {self.factor}", "use e.g. 2 or 4")
        self.factor = int(self.factor)

    def check_thin(self, nz: int) -> None:
        if nz % self.factor:
            raise BadInputError(f"{nz} thin slices cannot be averaged in groups of {self.factor}",
                                f"use a factor that divides the number of slices ({nz})")

    def forward(self, x: Tensor) -> Tensor:
        ax = self.axis % x.ndim
        self.check_thin(x.shape[ax])
        shape = x.shape[:ax] + (x.shape[ax] // self.factor, self.factor) + x.shape[ax + 1:]
        return x.reshape(shape).mean(dim=ax + 1)

    def adjoint(self, y: Tensor) -> Tensor:
        ax = self.axis % y.ndim
        return y.repeat_interleave(self.factor, dim=ax) / self.factor

    @staticmethod
    def thin_geometry(ijk_to_ras: np.ndarray, factor: int) -> np.ndarray:
        """IJK-to-RAS of the thin grid: K spacing / factor, origin moved so thin slices tile each thick slice."""
        m = np.array(ijk_to_ras, dtype=np.float64)
        out = m.copy()
        out[:3, 2] = m[:3, 2] / factor
        # thick slice k covers thin slices k*f .. k*f+f-1, whose mean centre is the thick centre
        out[:3, 3] = m[:3, 3] - out[:3, 2] * (factor - 1) / 2.0
        return out
