"""Orthonormal single-level 3D Haar wavelet transform as pure torch functions.

WDM (Friedrich et al. 2024) runs diffusion on the eight half-resolution Haar
subbands of a volume stacked as channels, so a 128^3 volume becomes an
8-channel 64^3 tensor: the network sees 8x fewer voxels, the transform is exact
and invertible, and no learned autoencoder stands between the model and the image.

Layout: ``haar_dwt3d`` maps (B, C, D, H, W) to (B, 8C, D/2, H/2, W/2). For each
input channel ``c`` the eight subbands occupy channels ``8c .. 8c+7`` in the order
``LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH`` where the letters are the filters along
D, H, W (L = low pass (a+b)/sqrt2, H = high pass (a-b)/sqrt2). This is the order
of PyWavelets' ``dwtn(x, 'haar')`` keys ``aaa, aad, ada, add, daa, dad, dda, ddd``
(its detail filter is (a - b)/sqrt2 as well), so the transforms agree to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meddiffcore.errors import BadInputError

#: Subband names in channel order; letters are the filter along D, H, W.
SUBBANDS = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def check_even_size(shape: tuple[int, ...], what: str = "volume") -> None:
    """Raise :class:`BadInputError` unless every spatial size (the last three axes) is even."""
    odd = [n for n in shape[-3:] if n % 2]
    if odd:
        raise BadInputError(
            f"the {what} is {'x'.join(map(str, shape[-3:]))} voxels; the Haar wavelet transform halves each axis "
            "and needs even sizes",
            "pad or crop the volume to even sizes (pad_to_even does this), or pick a grid such as 64^3 or 128^3",
        )


def _split(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Low and high pass along ``dim`` (pairs of neighbours), each half as long."""
    even = x.narrow(dim, 0, x.shape[dim] // 2 * 2)
    pairs = even.unflatten(dim, (x.shape[dim] // 2, 2))
    a, b = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return (a + b) * _INV_SQRT2, (a - b) * _INV_SQRT2


def _merge(low: Tensor, high: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`_split`: interleave ``(l + h)/sqrt2`` and ``(l - h)/sqrt2`` along ``dim``."""
    a = (low + high) * _INV_SQRT2
    b = (low - high) * _INV_SQRT2
    return torch.stack([a, b], dim=dim + 1).flatten(dim, dim + 1)


def haar_dwt3d(x: Tensor) -> Tensor:
    """(B, C, D, H, W) with even D, H, W -> (B, 8C, D/2, H/2, W/2) subbands (see module docstring)."""
    if x.ndim != 5:
        raise BadInputError(f"haar_dwt3d needs a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}",
                            "add batch and channel axes: x[None, None]")
    check_even_size(tuple(x.shape))
    bands = [x]
    for dim in (2, 3, 4):  # D, then H, then W: band order L..., H... per axis gives LLL..HHH
        bands = [part for band in bands for part in _split(band, dim)]
    b, c = x.shape[:2]
    return torch.stack(bands, dim=2).reshape(b, 8 * c, *bands[0].shape[2:])


def haar_idwt3d(coeffs: Tensor) -> Tensor:
    """Exact inverse of :func:`haar_dwt3d`: (B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w)."""
    if coeffs.ndim != 5 or coeffs.shape[1] % 8:
        raise BadInputError(f"haar_idwt3d needs (B, 8C, d, h, w) subbands, got shape {tuple(coeffs.shape)}",
                            "pass the output of haar_dwt3d (8 subbands per channel)")
    b, c8 = coeffs.shape[:2]
    bands = list(coeffs.reshape(b, c8 // 8, 8, *coeffs.shape[2:]).unbind(2))
    for dim in (4, 3, 2):  # undo W, then H, then D
        bands = [_merge(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
    return bands[0]


def pad_to_even(x: Tensor, value: float) -> tuple[Tensor, tuple[int, int, int]]:
    """Pad D, H, W at the far end by one voxel where odd; returns the padded tensor and the pad per axis."""
    pads = tuple(n % 2 for n in x.shape[-3:])
    if not any(pads):
        return x, pads
    padded = torch.nn.functional.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), value=value)
    return padded, pads


class WaveletScaling(nn.Module):
    """DWT/IDWT with WDM's scaling of the low-pass band.

    The LLL band of an orthonormal 3D Haar transform is the local mean times
    ``2^(3/2) ~ 2.83``, so data in [-1, 1] gives LLL in about [-2.83, 2.83]; WDM
    divides LLL by 3 so all subbands lie in roughly [-1, 1] like the noise.
    """

    def __init__(self, lll_scale: float = 1.0 / 3.0) -> None:
        super().__init__()
        self.lll_scale = float(lll_scale)

    def _scale_lll(self, coeffs: Tensor, factor: float) -> Tensor:
        b, c8 = coeffs.shape[:2]
        grouped = coeffs.reshape(b, c8 // 8, 8, *coeffs.shape[2:])
        weights = torch.ones(8, dtype=coeffs.dtype, device=coeffs.device)
        weights[0] = factor
        return (grouped * weights.view(1, 1, 8, 1, 1, 1)).reshape(coeffs.shape)

    def forward(self, x: Tensor) -> Tensor:
        """Image (B, C, D, H, W) -> scaled subbands (B, 8C, D/2, H/2, W/2)."""
        return self._scale_lll(haar_dwt3d(x), self.lll_scale)

    def inverse(self, coeffs: Tensor) -> Tensor:
        """Scaled subbands -> image."""
        return haar_idwt3d(self._scale_lll(coeffs, 1.0 / self.lll_scale))


__all__ = ["SUBBANDS", "WaveletScaling", "check_even_size", "haar_dwt3d", "haar_idwt3d", "pad_to_even"]
