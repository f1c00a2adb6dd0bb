"""The CTP temporal-inpainting 3D UNet of Bae et al. (MICCAI 2024), for their released weights.

It is not a configuration of :class:`~meddiffcore.nets.UNet`: the authors' network
differs in ways their weights depend on, so it has its own module built from the
shared layers (:class:`~meddiffcore.nets.layers.ResBlock`, the attention block,
the strided-conv down-sampling):

* three input frames ``[left known, noisy target, right known]`` as channels;
* three embeddings of 4 x ``base_channels`` each, concatenated (768 wide for the
  release) and added in every residual block: the SR3 noise level ``gamma =
  sqrt(alpha_bar)`` as ``[sin, cos]`` features (sin first, gamma used as is), the
  2-value local context through an MLP, and the 3-class phase one-hot times a
  learned (3, 256) matrix;
* down-sampling by a 3-conv of stride 2 on all three axes (8 slices become 4, 2,
  1, 1, 1), up-sampling trilinear x2 on all axes *except* where the map has one
  slice and fewer than 24 rows, where only rows and columns double;
* GroupNorm(32) with epsilon 1e-6; single-head attention at the levels whose
  *design* size (``design_size`` halved per level, 192 -> 24 at level 3) is listed
  in ``attention_sizes`` and in the middle block, whatever the input's size.

The released configuration (103,987,457 parameters) is :func:`released_config`.
Only inputs whose down and up paths meet again run (8 x 192..352 x any multiple
of 32 for the release); :meth:`CTPUNet.check_input` names the problem otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddiffcore.config import from_dict, to_dict
from meddiffcore.errors import ConfigError
from meddiffcore.nets.attention import AttentionBlock
from meddiffcore.nets.layers import Downsample, ResBlock, conv_nd, normalization, timestep_embedding
from meddiffcore.nets.unet import NetInputError

#: The one in-plane size below which (on a one-slice map) the authors' up-sampling keeps the slice count.
SLICE_KEEPING_BELOW = 24


@dataclass
class CTPUNetConfig:
    """Architecture of :class:`CTPUNet` (the authors' ``create_model`` arguments under MedDiff names)."""

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 3
    design_size: int = 192
    attention_sizes: tuple[int, ...] = (24,)
    context_channels: int = 2
    phases: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_sizes = tuple(self.attention_sizes)
        for name in ("in_channels", "out_channels", "base_channels", "design_size", "context_channels", "phases",
                     "norm_groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"CTPUNetConfig.{name} must be a positive integer, got {v!r}")
        if self.in_channels != 3:
            raise ConfigError(f"CTPUNetConfig.in_channels must be 3 (left, noisy, right), got {self.in_channels}")
        if not self.channel_mult or not all(isinstance(m, int) and m > 0 for m in self.channel_mult):
            raise ConfigError(f"CTPUNetConfig.channel_mult must be positive integers, got {self.channel_mult!r}")
        widths = [self.base_channels * m for m in self.channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ConfigError(f"CTP UNet widths {widths} must be multiples of norm_groups={self.norm_groups}",
                              "the authors' GroupNorm has 32 groups: use base_channels a multiple of 32")

    @property
    def embed_channels(self) -> int:
        """Width of each of the three embeddings (4 x base); the blocks see three times this."""
        return 4 * self.base_channels

    def level_sizes(self) -> list[int]:
        """The design size at each level (the authors' ``ds``), which decides where attention sits."""
        sizes, ds = [], self.design_size
        for _ in self.channel_mult:
            sizes.append(ds)
            ds //= 2
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CTPUNetConfig":
        """From a card's ``network`` section (its ``architecture`` key is the card's, not a field)."""
        return from_dict(cls, {k: v for k, v in data.items() if k != "architecture"}, where="CTP UNet")


def released_config() -> CTPUNetConfig:
    """The released network: 64 base channels, mult (1,1,2,2,4,4), 3 res blocks, attention at 24 (of 192)."""
    return CTPUNetConfig()


def noise_level_features(gamma: Tensor, dim: int) -> Tensor:
    """``[sin(gamma f), cos(gamma f)]`` with ``f = 1e4^(-k / (dim/2))`` (the authors' order: sine first)."""
    cos_sin = timestep_embedding(gamma, dim)
    half = dim // 2
    return torch.cat([cos_sin[:, half:], cos_sin[:, :half]], dim=1)


def _upsampled_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    d, h, w = shape
    if d == 1 and h < SLICE_KEEPING_BELOW:
        return d, 2 * h, 2 * w
    return 2 * d, 2 * h, 2 * w


class CTPUpsample(nn.Module):
    """Trilinear x2 (slices kept where the map has one slice and fewer than 24 rows), then a 3-conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(3, channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = _upsampled_shape(tuple(x.shape[2:]))
        return self.conv(F.interpolate(x, size=size, mode="trilinear", align_corners=False))


class _Stage(nn.ModuleList):
    """One entry of the authors' block lists: layers applied in turn, residual blocks given the embedding."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class CTPUNet(nn.Module):
    """``net(x, gamma, concat=known, embedding=context) -> eps`` on (B, 1, D, H, W) noisy target frames.

    ``known`` (B, 2, D, H, W) holds the left and right acquired frames; ``context``
    (B, 2 + phases) the local context followed by the phase one-hot; ``gamma`` (B,)
    the SR3 noise level. The call signature is the one :class:`~meddiffcore.diffusion.VPDenoiser`
    uses with ``time_input="noise_level"``.
    """

    def __init__(self, config: CTPUNetConfig) -> None:
        super().__init__()
        self.config = c = config
        emb = c.embed_channels
        self.time_embed = nn.Sequential(nn.Identity(), nn.Linear(c.base_channels, emb), nn.SiLU(),
                                        nn.Linear(emb, emb))
        self.local_context_embed = nn.Sequential(nn.Linear(c.context_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.global_context_embed_matrix = nn.Parameter(torch.randn(c.phases, emb))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(3, cin, 3 * emb, cout, dropout=c.dropout, norm_groups=c.norm_groups, norm_eps=c.norm_eps,
                            use_scale_shift_norm=False)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, head_channels=ch, norm_groups=c.norm_groups, norm_eps=c.norm_eps)

        sizes = c.level_sizes()
        ch = c.base_channels * c.channel_mult[0]
        self.input_blocks = nn.ModuleList([_Stage([conv_nd(3, c.in_channels, ch, 3)])])
        skips = [ch]
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, c.base_channels * mult)]
                ch = c.base_channels * mult
                if sizes[level] in c.attention_sizes:
                    layers.append(attn(ch))
                self.input_blocks.append(_Stage(layers))
                skips.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(_Stage([Downsample(3, ch, (2, 2, 2), use_conv=True)]))
                skips.append(ch)
        self.middle_block = _Stage([res(ch, ch), attn(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), c.base_channels * mult)]
                ch = c.base_channels * mult
                if sizes[level] in c.attention_sizes:
                    layers.append(attn(ch))
                if level and i == c.num_res_blocks:
                    layers.append(CTPUpsample(ch))
                self.output_blocks.append(_Stage(layers))
        self.out = nn.Sequential(normalization(ch, c.norm_groups, eps=c.norm_eps), nn.SiLU(),
                                 conv_nd(3, ch, c.out_channels, 3))

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`NetInputError` unless a (D, H, W) map's down and up paths meet at every level."""
        spatial = tuple(int(n) for n in shape[-3:])
        encoder = [spatial]
        for _ in self.config.channel_mult[1:]:
            encoder.append(tuple((n + 1) // 2 for n in encoder[-1]))
        for level in range(len(encoder) - 1, 0, -1):
            up = _upsampled_shape(encoder[level])
            if up != encoder[level - 1]:
                raise NetInputError(
                    f"the CTP network cannot take a {spatial[0]}x{spatial[1]}x{spatial[2]} slab: at level {level} its "
                    f"up-sampling gives {up[0]}x{up[1]}x{up[2]} where the encoder had "
                    f"{encoder[level - 1][0]}x{encoder[level - 1][1]}x{encoder[level - 1][2]}",
                    "the released network takes 8 slices of 192-352 rows and columns that are multiples of 32 "
                    "(it was trained on 8x192x192)")

    def embedding(self, gamma: Tensor, context: Tensor) -> Tensor:
        """The (B, 3 x embed) embedding: noise level, local context, phase."""
        c = self.config
        time = self.time_embed(noise_level_features(gamma.float(), c.base_channels))
        local = self.local_context_embed(context[:, :c.context_channels])
        phase = context[:, c.context_channels:c.context_channels + c.phases] @ self.global_context_embed_matrix
        return torch.cat([time, local, phase], dim=1)

    def forward(self, x: Tensor, gamma: Tensor, concat: Tensor | None = None,
                embedding: Tensor | None = None) -> Tensor:
        c = self.config
        if concat is None or embedding is None:
            raise NetInputError("the CTP network needs the two known frames (concat) and the context (embedding)",
                                "pass concat=(B, 2, D, H, W) and embedding=(B, 2 + phases)")
        if concat.shape[1] != 2 or embedding.shape[1] != c.context_channels + c.phases:
            raise NetInputError(f"CTP network: concat has {concat.shape[1]} channels and embedding "
                                f"{embedding.shape[1]} values", f"need 2 and {c.context_channels + c.phases}")
        self.check_input(tuple(x.shape))
        emb = self.embedding(gamma.reshape(-1).expand(x.shape[0]), embedding.to(x.dtype))
        h = torch.cat([concat[:, :1], x, concat[:, 1:2]], dim=1)
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


_RES = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "emb.1.", "out_layers.0.": "norm2.",
        "out_layers.3.": "conv2.", "skip_connection.": "skip."}


def reference_key(key: str) -> str:
    """The authors' name of a :class:`CTPUNet` state key (``input_blocks.1.0.conv1.weight`` ->
    ``input_blocks.1.0.in_layers.2.weight``; attention ``proj`` -> ``proj_out``)."""
    for theirs, ours in _RES.items():
        if f".{ours}" in key:
            return key.replace(f".{ours}", f".{theirs}", 1)
    if key.endswith((".proj.weight", ".proj.bias")):
        return key.replace(".proj.", ".proj_out.")
    return key


def from_reference(net: CTPUNet, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MedDiff tensors of ``net`` from the authors' state dict (names per :func:`reference_key`); the
    attention's 1-D convolutions (C_out, C_in, 1) become linear layers (C_out, C_in)."""
    out = {}
    for key, value in net.state_dict().items():
        ref = state[reference_key(key)]
        if ref.ndim == value.ndim + 1 and ref.shape[-1] == 1:
            ref = ref[..., 0]
        out[key] = ref.float().contiguous()
    return out


def reference_shapes(net: CTPUNet) -> dict[str, tuple[int, ...]]:
    """The authors' key -> shape for ``net``'s configuration (what a checkpoint must hold)."""
    shapes = {}
    for key, value in net.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith(("qkv.weight", "proj.weight")) and len(shape) == 2:
            shape = shape + (1,)
        shapes[reference_key(key)] = shape
    return shapes


__all__ = ["CTPUNet", "CTPUNetConfig", "from_reference", "noise_level_features", "reference_key",
           "reference_shapes", "released_config"]
