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
    a token axis of length H*W (or D*H*W). ``norm_eps`` and ``skip_rescale`` (the sum
    divided by sqrt 2) give NCSN++'s variant of the block.
    """

    def __init__(self, channels: int, head_channels: int = 64, norm_groups: int = 32, *, norm_eps: float = 1e-5,
                 skip_rescale: bool = False) -> None:
        super().__init__()
        self.heads = head_count(channels, head_channels)
        self.norm = normalization(channels, norm_groups, eps=norm_eps)
        self.out_scale = 2.0 ** -0.5 if skip_rescale else 1.0
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))
        out = x + out.transpose(1, 2).reshape(b, c, *spatial).to(x.dtype)
        return out * self.out_scale if self.out_scale != 1.0 else out
