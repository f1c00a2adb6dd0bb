"""N-d building blocks shared by the networks: convolutions, normalisation, timestep
embedding, down/up-sampling and the residual block.

Every layer takes ``spatial_dims`` (2 or 3) and picks the matching ``torch.nn``
class, so 2D and 3D networks run through one code path. Spatial axes are in
``(D, H, W)`` order for 3D and ``(H, W)`` for 2D; a per-axis stride such as
``(1, 2, 2)`` halves H and W and keeps D (z).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from meddiffcore.errors import ConfigError

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}

#: Axis names used in error messages, in tensor order.
AXIS_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in _CONV:
        raise ConfigError(
            f"spatial_dims must be 2 or 3, got {spatial_dims!r}",
            "use 2 for slices (B, C, H, W) or 3 for volumes (B, C, D, H, W)",
        )
    return spatial_dims


def conv_nd(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int | Sequence[int] = 1,
) -> nn.Module:
    """``Conv2d``/``Conv3d`` with 'same' padding for odd kernels (before striding)."""
    return _CONV[check_spatial_dims(spatial_dims)](
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )


def avg_pool_nd(spatial_dims: int, stride: Sequence[int]) -> nn.Module:
    """Average pooling with kernel = stride (per axis)."""
    return _AVG_POOL[check_spatial_dims(spatial_dims)](kernel_size=tuple(stride), stride=tuple(stride))


def interpolation_mode(spatial_dims: int, resize: str) -> str:
    """``"nearest"`` or the N-d linear mode (``bilinear``/``trilinear``) for ``resize="linear"``."""
    if resize == "nearest":
        return "nearest"
    if resize == "linear":
        return _LINEAR_MODE[check_spatial_dims(spatial_dims)]
    raise ConfigError(f"resize mode must be 'nearest' or 'linear', got {resize!r}")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (guided-diffusion init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_count(channels: int, groups: int) -> int:
    """The largest group count ``<= groups`` that divides ``channels``.

    ``norm_groups=32`` with 48 channels gives 24 groups rather than failing.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"norm_groups must be a positive integer, got {groups!r}")
    if channels < 1:
        raise ConfigError(f"a normalised layer needs at least one channel, got {channels}")
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so fp16/bf16 autocast stays stable."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def normalization(channels: int, groups: int = 32, affine: bool = True, eps: float = 1e-5) -> GroupNorm32:
    """fp32 GroupNorm with the group count clamped to divide ``channels`` (``eps``: NCSN++ uses 1e-6)."""
    return GroupNorm32(group_count(channels, groups), channels, eps=eps, affine=affine)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``(B,) -> (B, dim)`` of float timesteps or noise levels.

    Works for discrete steps in ``[0, T)`` and for continuous values alike; callers
    scale continuous levels (e.g. ``1000 * gamma``) as they need. Computed in float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def maybe_checkpoint(enabled: bool, fn: Callable[..., Tensor], *args) -> Tensor:
    """Run ``fn(*args)``, through non-reentrant gradient checkpointing when training."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class Downsample(nn.Module):
    """Per-axis down-sampling by ``stride``: a strided 3-conv, or average pooling."""

    def __init__(self, spatial_dims: int, channels: int, stride: Sequence[int], use_conv: bool = True) -> None:
        super().__init__()
        self.stride = tuple(stride)
        self.op = conv_nd(spatial_dims, channels, channels, 3, stride=self.stride) if use_conv else avg_pool_nd(
            spatial_dims, self.stride
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Per-axis nearest up-sampling by ``stride``, optionally followed by a 3-conv."""

    def __init__(self, spatial_dims: int, channels: int, stride: Sequence[int], use_conv: bool = True) -> None:
        super().__init__()
        self.stride = tuple(stride)
        self.conv = conv_nd(spatial_dims, channels, channels, 3) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        size = [n * s for n, s in zip(x.shape[2:], self.stride)]
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (guided-diffusion layout).

    ``norm1 -> SiLU -> [up/down] -> conv3 -> norm2 -> FiLM(emb) -> SiLU -> dropout -> conv3 (zero init)``
    plus a skip (identity, or 1x1 conv when the width changes). With
    ``use_scale_shift_norm`` the embedding gives ``(scale, shift)`` applied as
    ``norm2(h) * (1 + scale) + shift``; otherwise it is added before ``norm2``.
    With ``spade_channels > 0`` both norms are :class:`~meddiffcore.nets.spade.SPADEGroupNorm`
    and ``forward`` needs the semantic map. ``norm_eps`` is the GroupNorms' epsilon (the CTP authors' 1e-6).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        norm_groups: int = 32,
        norm_eps: float = 1e-5,
        use_scale_shift_norm: bool = True,
        up: Sequence[int] | None = None,
        down: Sequence[int] | None = None,
        spade_channels: int = 0,
        spade_hidden: int = 128,
        spade_resize: str = "nearest",
    ) -> None:
        super().__init__()
        from meddiffcore.nets.spade import SPADEGroupNorm  # spade imports this module

        out_channels = out_channels or in_channels
        if up is not None and down is not None:
            raise ValueError("a ResBlock samples either up or down, not both")
        self.use_scale_shift_norm = use_scale_shift_norm
        self.uses_segmap = spade_channels > 0

        def norm(ch: int) -> nn.Module:
            if self.uses_segmap:
                return SPADEGroupNorm(spatial_dims, ch, spade_channels, spade_hidden, norm_groups, spade_resize)
            return normalization(ch, norm_groups, eps=norm_eps)

        self.norm1 = norm(in_channels)
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels, 3)
        if up is not None:
            self.h_upd, self.x_upd = (Upsample(spatial_dims, in_channels, up, use_conv=False) for _ in range(2))
        elif down is not None:
            self.h_upd, self.x_upd = (Downsample(spatial_dims, in_channels, down, use_conv=False) for _ in range(2))
        else:
            self.h_upd = self.x_upd = None
        self.emb = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.norm2 = norm(out_channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_module(conv_nd(spatial_dims, out_channels, out_channels, 3))
        self.skip = (
            nn.Identity() if out_channels == in_channels else conv_nd(spatial_dims, in_channels, out_channels, 1)
        )

    def _norm(self, norm: nn.Module, h: Tensor, segmap: Tensor | None) -> Tensor:
        return norm(h, segmap) if self.uses_segmap else norm(h)

    def forward(self, x: Tensor, emb: Tensor, segmap: Tensor | None = None) -> Tensor:
        h = F.silu(self._norm(self.norm1, x, segmap))
        if self.h_upd is not None:
            h, x = self.h_upd(h), self.x_upd(x)
        h = self.conv1(h)
        e = self.emb(emb).to(h.dtype)
        e = e.reshape(*e.shape, *([1] * (h.ndim - 2)))
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self._norm(self.norm2, h, segmap) * (1 + scale) + shift
        else:
            h = self._norm(self.norm2, h + e, segmap)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h
