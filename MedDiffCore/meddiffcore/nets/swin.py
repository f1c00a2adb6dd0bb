"""A 2D Swin transformer block (Liu et al. 2021) and a UNet bottleneck built from it.

Windowed self-attention costs O(N * w^2) instead of O(N^2) and the shifted
windows of every second block let information cross window borders. The MRNet
cascade (REFERENCE 004) put a Swin block at the bottleneck of every stage, but
viewed the (B, C, H, W) feature map as tokens without permuting, so a "token"
mixed channels of different pixels; here the map is permuted to (B, H, W, C)
first, so each token is one pixel's channel vector and a window is a w x w patch.

Shapes: token maps are (B, H, W, C); windows are (B * nW, w * w, C) with tokens
in row-major order inside the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.errors import ConfigError
from meddiffcore.nets.layers import ResBlock, zero_module


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W divisible by ``window`` -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """(nW, w*w, w*w) boolean mask, True where two tokens of a shifted window may attend.

    After the cyclic shift by ``-shift`` a window at the border holds pixels that
    were far apart in the image; tokens only attend to tokens from the same
    original region (Swin's three-band labelling per axis).
    """
    region = torch.zeros(height, width, dtype=torch.long, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[rows, cols] = label
            label += 1
    ids = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, w*w)
    return ids[:, :, None] == ids[:, None, :]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with an optional learned relative position bias."""

    def __init__(self, channels: int, heads: int, window: int, relative_position_bias: bool = True) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"Swin: {channels} channels do not split into {heads} heads", "pick heads dividing channels")
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.bias_table = None
        if relative_position_bias:
            self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
            coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
            rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, w*w, w*w) in [0, 2w-2]
            self.register_buffer("bias_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def forward(self, windows: Tensor, allowed: Tensor | None = None) -> Tensor:
        """windows: (B * nW, N, C); allowed: (nW, N, N) boolean or None."""
        bn, n, c = windows.shape
        q, k, v = self.qkv(windows).reshape(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = None
        if self.bias_table is not None:
            bias = self.bias_table[self.bias_index].permute(2, 0, 1)[None].to(q.dtype)  # (1, heads, N, N)
        if allowed is not None:
            n_windows = allowed.shape[0]
            masked = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
            masked = masked[:, None]  # (nW, 1, N, N)
            bias = masked if bias is None else bias + masked
            bias = bias.repeat(bn // n_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(bn, n, c))


class SwinBlock(nn.Module):
    """Pre-norm Swin block on a (B, H, W, C) token map: (shifted) window attention, then an MLP, both residual.

    ``shift`` is 0 for a plain block and usually ``window // 2`` for the shifted one.
    H and W must be multiples of ``window`` (:class:`SwinBottleneck` pads to that).
    """

    def __init__(self, channels: int, heads: int, window: int, shift: int = 0, mlp_ratio: float = 4.0,
                 relative_position_bias: bool = True) -> None:
        super().__init__()
        if window < 1 or not 0 <= shift < window:
            raise ConfigError(f"Swin: need window >= 1 and 0 <= shift < window, got window={window}, shift={shift}",
                              "use shift = window // 2 for a shifted block")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(channels)
        self.attn = WindowAttention(channels, heads, window, relative_position_bias)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        if h % self.window or w % self.window:
            raise ConfigError(f"Swin block: token map {h}x{w} is not a multiple of the window {self.window}",
                              "pad the map or pick a window that divides it")
        shifted = self.shift > 0 and self.window < min(h, w)
        y = self.norm1(x)
        if shifted:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        allowed = shifted_window_mask(h, w, self.window, self.shift, x.device) if shifted else None
        y = self.attn(window_partition(y, self.window), allowed)
        y = window_reverse(y, self.window, h, w)
        if shifted:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinBottleneck(nn.Module):
    """A UNet middle block: ResBlock, a pair of Swin blocks (plain + shifted), ResBlock.

    Plugs into :class:`meddiffcore.nets.UNet` as ``UNet(config, middle=SwinBottleneck(...))``;
    called as ``middle(h, emb)`` with ``h`` (B, C, H, W) and ``emb`` (B, emb_channels).
    The feature map is permuted to (B, H, W, C) tokens (one token per pixel), padded
    at the far edge up to a multiple of the window, attended, cropped and permuted back.
    """

    def __init__(self, channels: int, emb_channels: int, *, window: int = 4, heads: int = 4, depth: int = 2,
                 norm_groups: int = 32, dropout: float = 0.0, relative_position_bias: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"Swin bottleneck depth must be at least 1, got {depth}")
        self.window = window
        self.res_in = ResBlock(2, channels, emb_channels, channels, dropout=dropout, norm_groups=norm_groups)
        self.blocks = nn.ModuleList(
            SwinBlock(channels, heads, window, shift=(window // 2 if i % 2 else 0),
                      relative_position_bias=relative_position_bias)
            for i in range(depth)
        )
        self.out_proj = zero_module(nn.Linear(channels, channels))
        self.res_out = ResBlock(2, channels, emb_channels, channels, dropout=dropout, norm_groups=norm_groups)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.res_in(h, emb)
        b, c, height, width = h.shape
        tokens = h.permute(0, 2, 3, 1)  # (B, H, W, C): one token per pixel
        pad_h, pad_w = -height % self.window, -width % self.window
        if pad_h or pad_w:
            tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
        t = tokens
        for block in self.blocks:
            t = block(t)
        delta = self.out_proj(t - tokens)[:, :height, :width]  # zero at init: the block starts as the identity
        h = h + delta.permute(0, 3, 1, 2)
        return self.res_out(h, emb)


__all__ = ["SwinBlock", "SwinBottleneck", "WindowAttention", "shifted_window_mask", "window_partition", "window_reverse"]
