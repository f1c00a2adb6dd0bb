"""Networks: one N-d diffusion UNet (2D and 3D) with SPADE, concatenation and
embedding conditioning, and the layers it is built from.

Room is left for ``nets/swin.py`` (a Swin bottleneck, passed as ``UNet(config,
middle=...)``) and ``nets/wavelet.py``.
"""

from meddiffcore.nets.attention import AttentionBlock
from meddiffcore.nets.layers import (
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    conv_nd,
    normalization,
    timestep_embedding,
    zero_module,
)
from meddiffcore.nets.spade import SPADEGroupNorm
from meddiffcore.nets.unet import NetInputError, UNet, UNetConfig, build_unet, count_parameters

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "NetInputError",
    "ResBlock",
    "SPADEGroupNorm",
    "UNet",
    "UNetConfig",
    "Upsample",
    "build_unet",
    "conv_nd",
    "count_parameters",
    "normalization",
    "timestep_embedding",
    "zero_module",
]
