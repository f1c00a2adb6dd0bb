"""Imaging physics as torch linear operators: parallel-beam CT, Cartesian MRI, z-axis slice averaging.

Every operator has ``forward(x)`` and a matched ``adjoint(y)`` (``<A x, y> = <x, A^T y>``),
works on batches on any device and is differentiable, so the same object serves
DPS gradients and conjugate-gradient data consistency (:func:`conjugate_gradient`).
"""

from .operator import LinearOperator, adjoint_mismatch, conjugate_gradient, data_consistency_cg
from .iterative import ITERATIVE, iterative_baseline, tv_least_squares
from .mri import CartesianMRI, fft2c, ifft2c, make_mask, mask_acceleration
from .radon import FILTERS, ParallelBeam, fbp_filter, filter_sinogram
from .zsr import SliceAverage

__all__ = [
    "CartesianMRI",
    "FILTERS",
    "ITERATIVE",
    "LinearOperator",
    "ParallelBeam",
    "SliceAverage",
    "adjoint_mismatch",
    "conjugate_gradient",
    "data_consistency_cg",
    "fbp_filter",
    "fft2c",
    "filter_sinogram",
    "ifft2c",
    "iterative_baseline",
    "make_mask",
    "mask_acceleration",
    "tv_least_squares",
]
