"""SPADE normalisation (Park et al. 2019), as used by the semantic diffusion model (seed 000).

``GroupNorm(affine=False)`` followed by a spatially varying affine map predicted from a
semantic map (one-hot labels, plus any extra channels such as a z-position or a
low-resolution reference) resized to the feature map:

    h -> norm(h) * (1 + gamma(s)) + beta(s),   s = act(conv3(resize(segmap)))

The hidden conv ``s`` is shared by the gamma and beta heads of the block.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.nets.layers import conv_nd, interpolation_mode, normalization


class SPADEGroupNorm(nn.Module):
    """Group normalisation modulated by a semantic map.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the normalised features.
        label_channels: channels of the semantic map passed to ``forward``.
        hidden: width of the shared hidden conv.
        norm_groups: GroupNorm groups (clamped to divide ``channels``).
        resize: ``"nearest"`` (label maps, the seed's choice) or ``"linear"``
            (bi/trilinear, for continuous channels such as an image reference).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        label_channels: int,
        hidden: int = 128,
        norm_groups: int = 32,
        resize: str = "nearest",
    ) -> None:
        super().__init__()
        self.mode = interpolation_mode(spatial_dims, resize)
        self.norm = normalization(channels, norm_groups, affine=False)
        self.shared = nn.Sequential(conv_nd(spatial_dims, label_channels, hidden, 3), nn.ReLU())
        self.gamma = conv_nd(spatial_dims, hidden, channels, 3)
        self.beta = conv_nd(spatial_dims, hidden, channels, 3)

    def forward(self, h: Tensor, segmap: Tensor) -> Tensor:
        """``h``: (B, C, *spatial); ``segmap``: (B, label_channels, *any_spatial)."""
        segmap = segmap.to(h.dtype) if segmap.is_floating_point() else segmap.float()  # integer label maps too
        if segmap.shape[2:] != h.shape[2:]:
            kwargs = {} if self.mode == "nearest" else {"align_corners": False}
            segmap = F.interpolate(segmap, size=h.shape[2:], mode=self.mode, **kwargs)
        s = self.shared(segmap)
        return self.norm(h) * (1 + self.gamma(s)) + self.beta(s)
