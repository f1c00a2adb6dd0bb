"""Multi-head self-attention over all voxels of a feature map, through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.nets.layers import normalization, zero_module


def head_count(channels: int, head_channels: int) -> int:
    """``channels // head_channels`` heads (at least 1), lowered until it divides ``channels``."""
    if head_channels < 1:
        raise ValueError(f"attention_head_channels must be positive, got {head_channels}")
    heads = max(1, channels // head_channels)
    while channels % heads:
        heads -= 1
    return heads


class AttentionBlock(nn.Module):
    """Residual self-attention: ``x + proj(SDPA(qkv(norm(x))))`` with a zero-initialised ``proj``.

    Works for (B, C, H, W) and (B, C, D, H, W) alike: the spatial axes are flattened to
    a token axis of length H*W (or D*H*W).
    """

    def __init__(self, channels: int, head_channels: int = 64, norm_groups: int = 32) -> None:
        super().__init__()
        self.heads = head_count(channels, head_channels)
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))
        return x + out.transpose(1, 2).reshape(b, c, *spatial).to(x.dtype)
