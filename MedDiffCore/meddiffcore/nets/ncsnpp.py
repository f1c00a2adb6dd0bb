"""NCSN++ (Song et al. 2021, score-SDE): the variance-exploding score network of TPDM's priors.

The configuration TPDM released (``configs/ve/BMR_ZSR_256.py``) as one N-d module:
BigGAN-style residual blocks with FIR ([1, 3, 3, 1]) up/down-sampling, Gaussian
Fourier features of ``log sigma``, a residual input pyramid (the input, FIR-conv
down-sampled, added at every level), every residual sum divided by sqrt 2, and the
output divided by sigma, so ``net(x, sigma)`` *is* the score
``grad_x log p_sigma(x)``. Inputs are in [0, 1] (``centered=False``: the network maps
them to [-1, 1] itself).

Fixed, as released: ``resblock_type="biggan"``, ``progressive="none"``,
``progressive_input="residual"``, ``progressive_combine="sum"``,
``embedding_type="fourier"``, ``conditional=True``, GroupNorm with
``min(C // 4, 32)`` groups and eps 1e-6, SiLU.

One difference from the reference on purpose: the reference decides at run time
whether a level has attention from ``h.shape[-1] in attn_resolutions``, so an input
whose level sizes hit 16 (64^2, say) desynchronises its module list and fails.
Here a level has attention when its size *at the configured image_size* is listed,
fixed at construction; at the released 256^2 (and 48^2, 80^2...) both agree, and any
size divisible by :attr:`NCSNppConfig.size_multiple` runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.errors import ConfigError
from meddiffcore.nets.attention import AttentionBlock
from meddiffcore.nets.layers import check_spatial_dims, conv_nd, normalization
from meddiffcore.nets.unet import NetInputError

_CONV = {2: F.conv2d, 3: F.conv3d}
_CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}
_NORM_EPS = 1e-6
_SKIP_SCALE = 1.0 / math.sqrt(2.0)


@dataclass
class NCSNppConfig:
    """Architecture of :class:`NCSNpp`. Defaults are TPDM's released configuration (61.4 M parameters).

    ``base_channels`` is score-SDE's ``nf``; ``attention_resolutions`` are level sizes
    (as score-SDE's ``attn_resolutions``) at ``image_size``.
    """

    spatial_dims: int = 2
    in_channels: int = 1
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attention_resolutions: tuple[int, ...] = (16,)
    image_size: int = 256
    dropout: float = 0.0
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    fourier_scale: float = 16.0
    skip_rescale: bool = True
    scale_by_sigma: bool = True
    centered: bool = False

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_resolutions", "fir_kernel"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field and how to fix it."""
        check_spatial_dims(self.spatial_dims)
        for name in ("in_channels", "base_channels", "num_res_blocks", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"NCSNppConfig.{name} must be a positive integer, got {v!r}")
        if not self.channel_mult or not all(isinstance(m, int) and m > 0 for m in self.channel_mult):
            raise ConfigError(f"NCSNppConfig.channel_mult must be positive integers, got {self.channel_mult!r}",
                              "TPDM: [1, 2, 2, 2]")
        for m in self.channel_mult:
            if (self.base_channels * m) % 4:
                raise ConfigError(f"NCSNppConfig: level width {self.base_channels * m} is not a multiple of 4",
                                  "GroupNorm uses min(C // 4, 32) groups; use base_channels divisible by 4")
        taps = self.fir_kernel
        if len(taps) < 2 or len(taps) % 2 or list(taps) != list(reversed(taps)) or sum(taps) <= 0:
            raise ConfigError(f"NCSNppConfig.fir_kernel must be a symmetric filter of even length, got {taps!r}",
                              "TPDM: [1, 3, 3, 1]")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"NCSNppConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Spatial size of each level at ``image_size``."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be divisible by this (one halving per level transition)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NCSNppConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown NCSN++ config key(s): {', '.join(map(repr, unknown))}",
                              f"known keys: {', '.join(sorted(known))}")
        return cls(**data)


# ------------------------------------------------------------------------------------------ FIR resampling
def _fir_weight(taps: Sequence[int], channels: int, spatial_dims: int, gain: float, like: Tensor) -> Tensor:
    """Depthwise (C, 1, k, ..., k) kernel: the outer product of ``taps`` normalised to sum ``gain``."""
    k = torch.tensor(taps, dtype=torch.float64)
    kernel = k
    for _ in range(spatial_dims - 1):
        kernel = kernel[..., None] * k
    kernel = kernel / kernel.sum() * gain
    return kernel.to(like.dtype).to(like.device).expand(channels, 1, *kernel.shape).contiguous()


def fir_upsample(x: Tensor, taps: Sequence[int]) -> Tensor:
    """x2 along every spatial axis: zero insertion, then the FIR filter (StyleGAN2's ``upsample_2d``)."""
    sd, c, k = x.ndim - 2, x.shape[1], len(taps)
    weight = _fir_weight(taps, c, sd, 2.0**sd, x)
    return _CONV_T[sd](x, weight, stride=2, padding=k // 2 - 1, groups=c)


def fir_downsample(x: Tensor, taps: Sequence[int]) -> Tensor:
    """/2 along every spatial axis: the FIR filter, then every second sample (``downsample_2d``)."""
    sd, c, k = x.ndim - 2, x.shape[1], len(taps)
    weight = _fir_weight(taps, c, sd, 1.0, x)
    return _CONV[sd](x, weight, stride=2, padding=k // 2 - 1, groups=c)


class FIRConvDownsample(nn.Module):
    """FIR filter then a stride-2 3-conv without padding (StyleGAN2's fused ``conv_downsample_2d``):
    the input pyramid's path from one level to the next."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, taps: Sequence[int]) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.conv = _CONV[spatial_dims]
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *([3] * spatial_dims)))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        sd = x.ndim - 2
        filtered = self.conv(x, _fir_weight(self.taps, x.shape[1], sd, 1.0, x), padding=len(self.taps) // 2,
                             groups=x.shape[1])
        return self.conv(filtered, self.weight, self.bias, stride=2)


# ------------------------------------------------------------------------------------------ blocks
def _norm(channels: int) -> nn.Module:
    return normalization(channels, min(channels // 4, 32), eps=_NORM_EPS)


class FourierEmbedding(nn.Module):
    """Gaussian Fourier features of ``log sigma``: ``[sin(2 pi W l), cos(2 pi W l)]``, W fixed (a buffer)."""

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(size) * scale)

    def forward(self, log_sigma: Tensor) -> Tensor:
        proj = log_sigma[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class ResBlockPP(nn.Module):
    """NCSN++'s BigGAN residual block: ``(skip(x) + h) / sqrt 2`` with
    ``h = conv(drop(act(norm(conv(resample(act(norm(x)))) + dense(act(emb))))))``;
    ``skip`` is a 1x1 conv when the width changes or the block resamples."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, emb_channels: int, *,
                 resample: str | None = None, taps: Sequence[int] = (1, 3, 3, 1), dropout: float = 0.0,
                 skip_rescale: bool = True) -> None:
        super().__init__()
        self.resample, self.taps = resample, tuple(taps)
        self.out_scale = _SKIP_SCALE if skip_rescale else 1.0
        self.norm1 = _norm(in_channels)
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels, 3)
        self.emb = nn.Linear(emb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = conv_nd(spatial_dims, out_channels, out_channels, 3)
        self.skip = (conv_nd(spatial_dims, in_channels, out_channels, 1)
                     if in_channels != out_channels or resample else None)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return fir_upsample(x, self.taps)
        if self.resample == "down":
            return fir_downsample(x, self.taps)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        e = self.emb(F.silu(emb)).to(h.dtype)
        h = h + e.reshape(*e.shape, *([1] * (h.ndim - 2)))
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * self.out_scale


class _DownLevel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.down: ResBlockPP | None = None
        self.pyramid: FIRConvDownsample | None = None


class _UpLevel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn: AttentionBlock | None = None
        self.up: ResBlockPP | None = None


class NCSNpp(nn.Module):
    """``forward(x, sigma) -> score``: x (B, in_channels, *spatial) in [0, 1] (or [-1, 1] with
    ``centered``), sigma (B,) positive noise levels; returns the score, shaped like x."""

    def __init__(self, config: NCSNppConfig) -> None:
        super().__init__()
        if not isinstance(config, NCSNppConfig):
            raise ConfigError(f"NCSNpp needs an NCSNppConfig, got {type(config).__name__}",
                              "use NCSNppConfig.from_dict(card.network)")
        config.validate()
        self.config = c = config
        sd, nf = c.spatial_dims, c.base_channels
        emb_ch = 4 * nf
        self.fourier = FourierEmbedding(nf, c.fourier_scale)
        self.time_embed = nn.Sequential(nn.Linear(2 * nf, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def res(cin: int, cout: int | None = None, resample: str | None = None) -> ResBlockPP:
            return ResBlockPP(sd, cin, cout or cin, emb_ch, resample=resample, taps=c.fir_kernel,
                              dropout=c.dropout, skip_rescale=c.skip_rescale)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, ch, min(ch // 4, 32), norm_eps=_NORM_EPS, skip_rescale=c.skip_rescale)

        self.input_conv = conv_nd(sd, c.in_channels, nf, 3)
        ch, pyramid_ch, skip_chans = nf, c.in_channels, [nf]
        last = len(c.channel_mult) - 1
        self.down_levels = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            lv = _DownLevel()
            for _ in range(c.num_res_blocks):
                lv.res.append(res(ch, nf * mult))
                ch = nf * mult
                if c.level_sizes[level] in c.attention_resolutions:
                    lv.attn.append(attn(ch))
                skip_chans.append(ch)
            if level != last:
                lv.down = res(ch, resample="down")
                lv.pyramid = FIRConvDownsample(sd, pyramid_ch, ch, c.fir_kernel)
                pyramid_ch = ch
                skip_chans.append(ch)
            self.down_levels.append(lv)

        self.middle = nn.ModuleList([res(ch), attn(ch), res(ch)])

        self.up_levels = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            lv = _UpLevel()
            for _ in range(c.num_res_blocks + 1):
                lv.res.append(res(ch + skip_chans.pop(), nf * mult))
                ch = nf * mult
            if c.level_sizes[level] in c.attention_resolutions:
                lv.attn = attn(ch)
            if level != 0:
                lv.up = res(ch, resample="up")
            self.up_levels.append(lv)

        self.out_norm = _norm(ch)
        self.out_conv = conv_nd(sd, ch, c.in_channels, 3)

    def reference_modules(self) -> list[nn.Module]:
        """This network's modules in the order of score-SDE's flat ``all_modules`` list (for importing)."""
        order: list[nn.Module] = [self.fourier, self.time_embed[0], self.time_embed[2], self.input_conv]
        for lv in self.down_levels:
            for i, block in enumerate(lv.res):
                order.append(block)
                if len(lv.attn):
                    order.append(lv.attn[i])
            if lv.down is not None:
                order += [lv.down, lv.pyramid]
        order += list(self.middle)
        for lv in self.up_levels:
            order += list(lv.res)
            if lv.attn is not None:
                order.append(lv.attn)
            if lv.up is not None:
                order.append(lv.up)
        return order + [self.out_norm, self.out_conv]

    def _check(self, x: Tensor, sigma: Tensor) -> Tensor:
        c = self.config
        layout = "(B, C, H, W)" if c.spatial_dims == 2 else "(B, C, D, H, W)"
        if x.ndim != c.spatial_dims + 2 or x.shape[1] != c.in_channels:
            raise NetInputError(f"x must be {layout} with C = {c.in_channels}, got shape {tuple(x.shape)}",
                                "pass a batch of slices with a channel axis: x[:, None]")
        bad = [n for n in x.shape[2:] if n % c.size_multiple]
        if bad:
            raise NetInputError(f"spatial size {tuple(x.shape[2:])} is not divisible by {c.size_multiple}",
                                f"pad each axis to a multiple of {c.size_multiple}")
        sigma = sigma.reshape(-1) if torch.is_tensor(sigma) else torch.tensor([float(sigma)])
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if sigma.numel() != x.shape[0]:
            raise NetInputError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}",
                                "give one noise level per item (or one for all)")
        return sigma.to(device=x.device, dtype=torch.float32)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = self._check(x, sigma)
        emb = self.time_embed(self.fourier(torch.log(sigma)))
        if not self.config.centered:
            x = 2 * x - 1.0
        pyramid = x
        hs = [self.input_conv(x)]
        for lv in self.down_levels:
            for i, block in enumerate(lv.res):
                h = block(hs[-1], emb)
                if len(lv.attn):
                    h = lv.attn[i](h)
                hs.append(h)
            if lv.down is not None:
                h = lv.down(hs[-1], emb)
                pyramid = lv.pyramid(pyramid)
                pyramid = (pyramid + h) * _SKIP_SCALE if self.config.skip_rescale else pyramid + h
                h = pyramid
                hs.append(h)
        h = self.middle[0](hs[-1], emb)
        h = self.middle[2](self.middle[1](h), emb)
        for lv in self.up_levels:
            for block in lv.res:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if lv.attn is not None:
                h = lv.attn(h)
            if lv.up is not None:
                h = lv.up(h, emb)
        h = self.out_conv(F.silu(self.out_norm(h)))
        if self.config.scale_by_sigma:
            h = h / sigma.to(h.dtype).reshape(-1, *([1] * (h.ndim - 1)))
        return h


__all__ = ["FIRConvDownsample", "FourierEmbedding", "NCSNpp", "NCSNppConfig", "ResBlockPP", "fir_downsample",
           "fir_upsample"]
