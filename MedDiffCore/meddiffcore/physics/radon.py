"""Parallel-beam CT: projector, matched back-projector and filtered back-projection in torch.

The projector is pixel-driven with linear interpolation onto the detector (each
pixel's value goes to the two nearest detector bins at ``u = x cos(theta) + y sin(theta)``),
stored once per geometry as a sparse matrix, so ``forward`` and ``adjoint`` are exact
transposes of each other (the adjoint test holds to float precision), batched over
slices, differentiable, and run wherever the tensors live (CPU or GPU).

Conventions follow scikit-image's ``radon``/``iradon``: image (N, N) with centre
``N // 2``, angles in degrees, detector spacing = pixel spacing, detector centre
``D // 2`` with ``D = ceil(sqrt(2) N)`` (``circle=False``) or ``N`` (``circle=True``).
Sinograms are ``(B, n_angles, D)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import BadInputError

FILTERS = ("ramp", "shepp-logan", "hann", "cosine", "none")


def detector_count(n: int, circle: bool) -> int:
    return n if circle else int(math.ceil(math.sqrt(2) * n))


SYSTEM_BLOCK_ENTRIES = 1 << 20
"""(pixel, angle, slot) weights computed at once while the system matrix is built: 8 MiB of float64."""


def _system_matrix_t(n: int, angles_deg: np.ndarray, det: int, supersample: int = 2, dtype=np.float64,
                     block_entries: int = SYSTEM_BLOCK_ENTRIES):
    """The transposed projection matrix (n * n, n_angles * det) as scipy CSR with values of ``dtype``.

    Each pixel is split into ``supersample^2`` sub-pixels, each spread onto the
    detector with linear-interpolation (hat) weights: a cheap approximation of the
    pixel's footprint that avoids the aliasing of a plain pixel-driven projector.
    A pixel touches at most 4 consecutive bins per angle, so the weights are built
    densely as (pixels, angles, 4) and never need de-duplication, one block of pixels at a
    time (``block_entries`` weights, in float64) straight into the CSR arrays: the build needs
    the matrix itself (values in ``dtype``, int32 indices where they fit) plus a few blocks.
    """
    import scipy.sparse as sp

    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    n_angles = len(theta)
    ct, st = np.cos(theta), np.sin(theta)
    c = n // 2
    index = np.int32 if max(n_angles * det, n * n * n_angles * 4) < 2**31 else np.int64
    subs = (np.arange(supersample) + 0.5) / supersample - 0.5
    slot_cols = (np.arange(n_angles).reshape(1, -1, 1) * det + np.arange(4)).astype(np.int64)  # (1, A, 4)
    rows = max(1, block_entries // (4 * n_angles))
    datas, cols, counts = [], [], np.empty(n * n, np.int64)
    for p0 in range(0, n * n, rows):
        p = np.arange(p0, min(p0 + rows, n * n))
        yy, xx = (p // n - c).astype(np.float64), (p % n - c).astype(np.float64)  # row = y, col = x
        # scikit-image rotates the image, then sums rows: at 0 deg the detector runs along the columns.
        base = xx[:, None] * ct - yy[:, None] * st + det // 2  # (B, A)
        b0 = np.floor(base) - 1
        weights = np.zeros(base.shape + (4,), dtype=np.float64)
        for dy in subs:
            for dx in subs:
                u = base + dx * ct - dy * st - b0  # in [0.6, 2.4): position relative to slot 0
                for slot in range(4):
                    weights[..., slot] += np.clip(1.0 - np.abs(u - slot), 0.0, None)
        weights /= supersample**2
        bins = b0.astype(np.int64)[..., None] + np.arange(4)
        ok = (weights > 0) & (bins >= 0) & (bins < det)
        datas.append(weights[ok].astype(dtype))
        cols.append((slot_cols + b0.astype(np.int64)[..., None])[ok].astype(index))
        counts[p0:p0 + len(p)] = ok.reshape(len(p), -1).sum(1)
        del base, b0, weights, bins, ok
    indptr = np.zeros(n * n + 1, index)
    np.cumsum(counts, out=indptr[1:])
    data = np.concatenate(datas)
    datas.clear()
    indices = np.concatenate(cols)
    cols.clear()
    return sp.csr_matrix((data, indices, indptr), shape=(n * n, n_angles * det), copy=False)


def _to_torch(m, dtype: torch.dtype, device) -> Tensor:
    """scipy CSR -> torch CSR on ``device`` (the arrays shared where dtypes and device allow)."""
    index = torch.int32 if m.indices.dtype == np.int32 and m.indptr.dtype == np.int32 else torch.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).to(index), torch.from_numpy(m.indices).to(index),
                                       torch.from_numpy(m.data).to(dtype), m.shape,
                                       check_invariants=False).to(device)


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2: Tensor, mat: Tensor, mat_t: Tensor) -> Tensor:
        ctx.mats = (mat, mat_t)
        return torch.sparse.mm(mat, x2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mat, mat_t = ctx.mats
        return torch.sparse.mm(mat_t, grad.contiguous()), None, None


@dataclass
class ParallelBeam:
    """A parallel-beam geometry for ``size x size`` slices: ``forward``, ``adjoint`` and ``fbp``."""

    size: int
    angles_deg: tuple[float, ...]
    circle: bool = False
    device: str | torch.device = "cpu"
    _mats: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.angles_deg = tuple(float(a) for a in np.asarray(self.angles_deg, dtype=np.float64).ravel())
        if self.size < 2 or not self.angles_deg:
            raise BadInputError("a CT geometry needs an image of at least 2 pixels and at least one angle",
                                "give the angles of the sinogram rows in degrees")
        if not all(math.isfinite(a) for a in self.angles_deg):
            raise BadInputError("the projection angles contain NaN or infinity", "give finite angles in degrees")

    @classmethod
    def uniform(cls, size: int, views: int, arc_deg: float = 180.0, **kw) -> "ParallelBeam":
        return cls(size, tuple(np.arange(views) * arc_deg / views), **kw)

    @property
    def detectors(self) -> int:
        return detector_count(self.size, self.circle)

    @property
    def n_angles(self) -> int:
        return len(self.angles_deg)

    def _matrices(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(A, A^T) as torch CSR for ``device`` and ``dtype``: built once in ``dtype`` (float64 only for float64
        callers), int32 indices where they fit; on the CPU the tensors share the scipy arrays (no copies)."""
        key = (str(device), dtype)
        if key not in self._mats:
            np_dtype = np.float64 if dtype == torch.float64 else np.float32
            csr_t = _system_matrix_t(self.size, np.asarray(self.angles_deg), self.detectors, dtype=np_dtype)
            mat_t = _to_torch(csr_t, dtype, device)
            mat = _to_torch(csr_t.T.tocsr(), dtype, device)  # the sinogram-side rows: a second matrix, for speed
            self._mats[key] = (mat, mat_t)
        return self._mats[key]

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, N) or (B, 1, N, N) images -> (B, n_angles, D) sinograms (line integrals in pixel units)."""
        squeeze = x.ndim == 4
        img = x[:, 0] if squeeze else x
        b = img.shape[0]
        mat, mat_t = self._matrices(img.device, img.dtype)
        out = _Project.apply(img.reshape(b, -1).t().contiguous(), mat, mat_t)
        sino = out.t().reshape(b, self.n_angles, self.detectors)
        return sino[:, None] if squeeze else sino

    def adjoint(self, y: Tensor) -> Tensor:
        """(B, n_angles, D) -> (B, N, N): the unfiltered back-projection, exactly ``forward``'s transpose."""
        squeeze = y.ndim == 4
        sino = y[:, 0] if squeeze else y
        b = sino.shape[0]
        mat, mat_t = self._matrices(sino.device, sino.dtype)
        out = _Project.apply(sino.reshape(b, -1).t().contiguous(), mat_t, mat)
        img = out.t().reshape(b, self.size, self.size)
        return img[:, None] if squeeze else img

    def fbp(self, y: Tensor, filter_name: str = "ramp") -> Tensor:
        """Filtered back-projection (scikit-image ``iradon``'s scaling, ``pi / (2 n_angles)``)."""
        squeeze = y.ndim == 4
        sino = y[:, 0] if squeeze else y
        img = self.adjoint(filter_sinogram(sino, filter_name)).mul_(math.pi / (2 * self.n_angles))  # adjoint's own
        return img[:, None] if squeeze else img

    def check_sinogram(self, sino_shape: tuple[int, ...]) -> None:
        if tuple(sino_shape[-2:]) != (self.n_angles, self.detectors):
            raise BadInputError(
                f"the sinogram has {sino_shape[-2]} angles x {sino_shape[-1]} detector bins, the geometry expects "
                f"{self.n_angles} x {self.detectors}",
                "give one angle per sinogram row, and a sinogram as wide as the detector (ceil(sqrt(2) N) bins)")


def fbp_filter(det: int, filter_name: str = "ramp", device=None, dtype=torch.float32) -> Tensor:
    """The frequency response (length ``P``, zero-padded size) of an FBP filter, as scikit-image builds it."""
    if filter_name not in FILTERS:
        raise BadInputError(f"unknown FBP filter '{filter_name}'", f"use one of {', '.join(FILTERS)}")
    size = max(64, int(2 ** math.ceil(math.log2(2 * det))))
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    ramp = 2 * np.real(np.fft.fft(f))  # Kak & Slaney's band-limited ramp
    omega = np.pi * np.fft.fftfreq(size)[1:]
    resp = ramp.copy()
    if filter_name == "shepp-logan":
        resp[1:] *= np.sin(omega / 2) / (omega / 2)
    elif filter_name == "cosine":
        resp *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif filter_name == "hann":
        resp *= np.fft.fftshift(np.hanning(size))
    elif filter_name == "none":
        resp[:] = 1
    return torch.as_tensor(resp, dtype=dtype, device=device)


def filter_sinogram(sino: Tensor, filter_name: str = "ramp") -> Tensor:
    """Filter (B, n_angles, D) sinograms along the detector axis (zero-padded FFT)."""
    det = sino.shape[-1]
    resp = fbp_filter(det, filter_name, device=sino.device, dtype=sino.dtype)
    spec = torch.fft.fft(sino, n=resp.shape[0], dim=-1) * resp
    return torch.fft.ifft(spec, dim=-1).real[..., :det]
