"""The MRNet cascade's UNets (alanvinuv, "Transformer-enhanced DDPM" knee-MRI synthesis), for their weights.

One class covers the three released stage networks and the variants without Swin:

* a 4-level 2D UNet without normalisation (conv3-ReLU twice per level, widths 64,
  128, 256 and 512 at the bottleneck), max-pool down, 2x2 transposed-conv up,
  concatenated skips, a 1x1 output conv;
* the time step as 128 *input channels*: ``[sin, cos]`` features of the integer
  step (frequencies ``1e4^(-i/63)``) tiled over the image and concatenated after
  the image channels (the SR stages' image channels are ``[z_t, bilinear x2 of the
  low-resolution image]``);
* the base generator adds SAGAN self-attention after each encoder level and
  additive attention gates (1x1 convs with BatchNorm, a sigmoid map) on the skips;
* a Swin block at the bottleneck (512 channels, 8 heads, window 4, no shift), built
  from MedDiff's :class:`~meddiffcore.nets.swin.SwinBlock`. The authors fed it the
  (B, C, H, W) map *viewed* as (B, H*W, C) without permuting and partitioned windows
  of a (B, H, W, C) tensor as if it were (B, C, H, W); their weights were trained on
  that token scrambling, so ``swin_token_layout="authors"`` (the default here)
  reproduces it bit for bit. ``"pixel"`` runs the same weights through MedDiff's
  correct layout (one token per pixel), as the cascades MedDiff trains do.

The Swin block's fixed input resolution makes every stage run at its native size
only (``image_size``: 64, 128 or 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.config import from_dict, to_dict
from meddiffcore.errors import ConfigError
from meddiffcore.nets.swin import SwinBlock
from meddiffcore.nets.unet import NetInputError

SWIN_TOKEN_LAYOUTS = ("authors", "pixel")


@dataclass
class MRNetUNetConfig:
    """Architecture of :class:`MRNetUNet`."""

    image_size: int = 64
    in_channels: int = 1
    out_channels: int = 1
    time_channels: int = 128
    widths: tuple[int, ...] = (64, 128, 256, 512)
    self_attention: bool = True
    attention_gates: bool = True
    swin: bool = True
    swin_heads: int = 8
    swin_window: int = 4
    swin_token_layout: str = "authors"

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if len(self.widths) != 4:
            raise ConfigError(f"MRNetUNetConfig.widths must have 4 entries (3 levels + bottleneck), got {self.widths}")
        if self.swin_token_layout not in SWIN_TOKEN_LAYOUTS:
            raise ConfigError(f"unknown swin_token_layout {self.swin_token_layout!r}",
                              f"use one of {', '.join(SWIN_TOKEN_LAYOUTS)}")
        if self.image_size % 8 or self.image_size < 8:
            raise ConfigError(f"MRNet image_size must be a multiple of 8, got {self.image_size}")

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 8

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MRNetUNetConfig":
        """From a card's ``network`` section (its ``architecture`` key is the card's, not a field)."""
        return from_dict(cls, {k: v for k, v in data.items() if k != "architecture"}, where="MRNet UNet")


def time_channels(t: Tensor, dim: int) -> Tensor:
    """(B, dim) ``[sin(t f), cos(t f)]`` with ``f_i = 1e4^(-i / (dim/2 - 1))`` (the authors' embedding)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(1e4) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class SelfAttention2d(nn.Module):
    """SAGAN self-attention: queries and keys at C/8 channels, ``x + gamma * attended values``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).reshape(b, -1, h * w)
        k = self.key_conv(x).reshape(b, -1, h * w)
        weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N queries, N keys)
        attended = self.value_conv(x).reshape(b, c, h * w) @ weights.transpose(1, 2)
        return x + self.gamma * attended.reshape(b, c, h, w)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip: ``skip * sigmoid(BN(conv(ReLU(BN(conv g) + BN(conv skip)))))``."""

    def __init__(self, gate_channels: int, skip_channels: int, inner: int) -> None:
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(gate_channels, inner, 1), nn.BatchNorm2d(inner))
        self.W_x = nn.Sequential(nn.Conv2d(skip_channels, inner, 1), nn.BatchNorm2d(inner))
        self.psi = nn.Sequential(nn.Conv2d(inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, gate: Tensor, skip: Tensor) -> Tensor:
        return skip * self.psi(F.relu(self.W_g(gate) + self.W_x(skip)))


def authors_swin(block: SwinBlock, h: Tensor) -> Tensor:
    """The MRNet authors' Swin pass over a (B, C, H, W) map, token scrambling included.

    Their tokens are the map's memory read as (B, H*W, C); after the first norm the
    tokens are read as (B, H, W, C) and windows cut from it as if it were (B, C, H, W)
    (rows of W, columns of C); the attended windows are put back as a (B, C, H, W) map
    and read again as (B, H*W, C). Residuals and the MLP then act on those tokens.
    """
    b, c, height, width = h.shape
    ws = block.window
    if width % ws or c % ws or (height * width) % (ws * ws):
        raise NetInputError(f"MRNet Swin: a {c}x{height}x{width} bottleneck does not split into {ws}x{ws} windows "
                            "in the authors' layout", "run the stage at its native size")
    tokens = h.reshape(b, height * width, c)
    y = block.norm1(tokens).reshape(b, height, width // ws, ws, c // ws, ws)
    windows = y.permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)
    attended = block.attn(windows)
    y = attended.reshape(b, height // ws, width // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    tokens = tokens + y.reshape(b, height * width, c)
    tokens = tokens + block.mlp(block.norm2(tokens))
    return tokens.reshape(b, c, height, width)


class MRNetUNet(nn.Module):
    """``net(x, t, concat=None) -> eps``: x (B, 1, S, S) noisy image, t (B,) integer steps, ``concat``
    (B, in_channels - 1, S, S) the upsampled low-resolution image of an SR stage."""

    def __init__(self, config: MRNetUNetConfig) -> None:
        super().__init__()
        self.config = c = config
        w1, w2, w3, w4 = c.widths
        self.encoder1 = _double_conv(c.in_channels + c.time_channels, w1)
        self.encoder2 = _double_conv(w1, w2)
        self.encoder3 = _double_conv(w2, w3)
        if c.self_attention:
            self.self_attention1, self.self_attention2, self.self_attention3 = (
                SelfAttention2d(w) for w in (w1, w2, w3))
        self.bottleneck = _double_conv(w3, w4)
        if c.swin:
            self.swin_block = SwinBlock(w4, c.swin_heads, c.swin_window, shift=0)
        self.upconv3 = nn.ConvTranspose2d(w4, w3, 2, stride=2)
        self.upconv2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.upconv1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        if c.attention_gates:
            self.cross_attention3 = AttentionGate(w3, w3, w3 // 2)
            self.cross_attention2 = AttentionGate(w2, w2, w2 // 2)
            self.cross_attention1 = AttentionGate(w1, w1, w1 // 2)
        self.decoder3 = _double_conv(2 * w3, w3)
        self.decoder2 = _double_conv(2 * w2, w2)
        self.decoder1 = _double_conv(2 * w1, w1)
        self.final_conv = nn.Conv2d(w1, c.out_channels, 1)

    def check_input(self, x: Tensor, concat: Tensor | None) -> None:
        c = self.config
        size = c.image_size
        if x.ndim != 4 or tuple(x.shape[2:]) != (size, size):
            raise NetInputError(f"this MRNet stage takes {size}x{size} images, got {'x'.join(map(str, x.shape[2:]))}",
                                f"its Swin bottleneck was built for {size // 8}x{size // 8}: resample the input to "
                                f"{size}x{size}")
        channels = x.shape[1] + (concat.shape[1] if concat is not None else 0)
        if channels != c.in_channels:
            raise NetInputError(f"this MRNet stage takes {c.in_channels} image channels, got {channels}",
                                "an SR stage needs concat= the bilinearly upsampled low-resolution image")

    def _skip(self, name: str, gate: Tensor, skip: Tensor) -> Tensor:
        return getattr(self, name)(gate, skip) if self.config.attention_gates else skip

    def forward(self, x: Tensor, t: Tensor, concat: Tensor | None = None) -> Tensor:
        c = self.config
        self.check_input(x, concat)
        image = x if concat is None else torch.cat([x, concat.to(x.dtype)], dim=1)
        temb = time_channels(t.reshape(-1).expand(x.shape[0]), c.time_channels).to(x.dtype)
        h = torch.cat([image, temb[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        skips = []
        for level in (1, 2, 3):
            h = getattr(self, f"encoder{level}")(h)
            if c.self_attention:
                h = getattr(self, f"self_attention{level}")(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottleneck(h)
        if c.swin:
            if c.swin_token_layout == "authors":
                h = authors_swin(self.swin_block, h)
            else:
                h = self.swin_block(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for level in (3, 2, 1):
            h = getattr(self, f"upconv{level}")(h)
            skip = self._skip(f"cross_attention{level}", h, skips.pop())
            h = getattr(self, f"decoder{level}")(torch.cat([h, skip], dim=1))
        return self.final_conv(h)


#: MedDiff SwinBlock names -> the authors' (timm-style) names.
_SWIN = {"swin_block.attn.bias_table": "swin_block.attn.relative_position_bias_table",
         "swin_block.mlp.0.": "swin_block.mlp.fc1.", "swin_block.mlp.2.": "swin_block.mlp.fc2."}


def reference_key(key: str) -> str:
    """The authors' name of a :class:`MRNetUNet` state key (only the Swin block's differ)."""
    for ours, theirs in _SWIN.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


__all__ = ["AttentionGate", "MRNetUNet", "MRNetUNetConfig", "SelfAttention2d", "authors_swin", "reference_key",
           "time_channels"]
