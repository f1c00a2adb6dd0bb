"""One N-d diffusion UNet (guided-diffusion layout) for 2D and 3D, with every
conditioning hook the tasks need.

Conditioning hooks:

* ``concat``: extra channels concatenated to the noisy input (``cond_channels``).
* ``segmap``: a semantic map driving SPADE normalisation (``spade_channels``) in the
  middle and decoder blocks (and the encoder with ``spade_in_encoder``); any spatial
  size, resized inside to every feature map.
* ``embedding``: a vector (``embedding_channels``) mapped by an MLP and added to the
  timestep embedding (context, class one-hot, ...).

Extending: the middle (bottleneck) block can be replaced by any module passed as
``UNet(config, middle=...)``; it is called as ``middle(h, emb)`` with
``h``: (B, ``unet.bottleneck_channels``, *bottleneck_spatial) and ``emb``: (B,
``unet.time_embed_channels``) and must return a tensor shaped like ``h`` (a Swin
bottleneck, say). Other variants (a wavelet UNet) wrap this one or reuse its blocks
from :mod:`meddiffcore.nets.layers`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from meddiffcore.errors import BadInputError, ConfigError
from meddiffcore.nets.attention import AttentionBlock
from meddiffcore.nets.layers import (
    AXIS_NAMES,
    Downsample,
    ResBlock,
    Upsample,
    check_spatial_dims,
    conv_nd,
    maybe_checkpoint,
    normalization,
    timestep_embedding,
    zero_module,
)

_SKIP_MODES = ("concat", "add")
_SPADE_RESIZE = ("nearest", "linear")


class NetInputError(BadInputError, ValueError):
    """A tensor passed to a network has the wrong shape or conditioning is missing.

    Both a :class:`~meddiffcore.errors.BadInputError` (for the CLI and worker) and a
    ``ValueError`` (for plain Python callers). Reads as one sentence: "problem; fix".
    """

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet`; round-trips through JSON via :meth:`to_dict` / :meth:`from_dict`.

    Spatial axes and per-axis strides are in ``(D, H, W)`` order for 3D, ``(H, W)`` for 2D.
    """

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1
    cond_channels: int = 0
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    down_strides: tuple[tuple[int, ...], ...] | None = None
    attention_levels: tuple[int, ...] = ()
    middle_attention: bool = True
    attention_head_channels: int = 64
    dropout: float = 0.0
    norm_groups: int = 32
    resblock_updown: bool = False
    skip_mode: str = "concat"
    spade_channels: int = 0
    spade_hidden: int = 128
    spade_in_encoder: bool = False
    spade_resize: str = "nearest"
    embedding_channels: int = 0
    time_embed_channels: int | None = None
    use_checkpoint: bool = False
    use_scale_shift_norm: bool = True

    def __post_init__(self) -> None:
        # JSON gives lists: store tuples so configs compare equal after a round-trip.
        if isinstance(self.channel_mult, (list, tuple)):
            self.channel_mult = tuple(self.channel_mult)
        if isinstance(self.attention_levels, (list, tuple)):
            self.attention_levels = tuple(self.attention_levels)
        if isinstance(self.down_strides, (list, tuple)):
            self.down_strides = tuple(tuple(s) if isinstance(s, (list, tuple)) else s for s in self.down_strides)
        self.validate()

    # -- validation ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field and how to fix it."""
        check_spatial_dims(self.spatial_dims)
        for name in ("in_channels", "out_channels", "base_channels", "attention_head_channels", "norm_groups",
                     "spade_hidden"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"UNetConfig.{name} must be a positive integer, got {v!r}")
        for name in ("cond_channels", "num_res_blocks", "spade_channels", "embedding_channels"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ConfigError(f"UNetConfig.{name} must be a non-negative integer, got {v!r}")
        if self.time_embed_channels is not None and (
            not _is_int(self.time_embed_channels) or self.time_embed_channels < 1
        ):
            raise ConfigError(
                f"UNetConfig.time_embed_channels must be a positive integer or None, got {self.time_embed_channels!r}",
                "leave it None for 4 * base_channels",
            )
        for name in ("middle_attention", "resblock_updown", "spade_in_encoder", "use_checkpoint",
                     "use_scale_shift_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"UNetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"UNetConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult or not all(
            _is_int(m) and m > 0 for m in self.channel_mult
        ):
            raise ConfigError(
                f"UNetConfig.channel_mult must be a non-empty list of positive integers, got {self.channel_mult!r}",
                "e.g. [1, 2, 4]: one entry per resolution level",
            )
        n_levels = len(self.channel_mult)
        if self.down_strides is not None:
            if not isinstance(self.down_strides, tuple) or len(self.down_strides) != n_levels - 1:
                raise ConfigError(
                    f"UNetConfig.down_strides needs one stride per level transition ({n_levels - 1} for "
                    f"channel_mult {list(self.channel_mult)}), got {self.down_strides!r}",
                    "e.g. [[1, 2, 2], [1, 2, 2]] keeps z, or null for 2 along every axis",
                )
            for s in self.down_strides:
                if not isinstance(s, tuple) or len(s) != self.spatial_dims or not all(_is_int(a) and a > 0 for a in s):
                    raise ConfigError(
                        f"UNetConfig.down_strides entries must be {self.spatial_dims} positive integers "
                        f"(one per spatial axis, {'/'.join(AXIS_NAMES[self.spatial_dims])}), got {s!r}"
                    )
        if not isinstance(self.attention_levels, tuple) or not all(
            _is_int(a) and 0 <= a < n_levels for a in self.attention_levels
        ):
            raise ConfigError(
                f"UNetConfig.attention_levels must be level indices in [0, {n_levels - 1}], got {self.attention_levels!r}",
                "level 0 is full resolution",
            )
        if self.skip_mode not in _SKIP_MODES:
            raise ConfigError(f"UNetConfig.skip_mode must be one of {_SKIP_MODES}, got {self.skip_mode!r}")
        if self.spade_resize not in _SPADE_RESIZE:
            raise ConfigError(f"UNetConfig.spade_resize must be one of {_SPADE_RESIZE}, got {self.spade_resize!r}")
        if self.spade_in_encoder and self.spade_channels == 0:
            raise ConfigError(
                "UNetConfig.spade_in_encoder is set but spade_channels is 0", "set spade_channels to the segmap channels"
            )

    # -- derived -----------------------------------------------------------------------
    @property
    def strides(self) -> tuple[tuple[int, ...], ...]:
        """Per-transition, per-axis strides with the ``None`` default filled in."""
        if self.down_strides is not None:
            return self.down_strides
        return tuple((2,) * self.spatial_dims for _ in range(len(self.channel_mult) - 1))

    @property
    def size_multiple(self) -> tuple[int, ...]:
        """What every spatial size must be divisible by, per axis (product of the strides)."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(self.spatial_dims))

    @property
    def embed_channels(self) -> int:
        return self.time_embed_channels or 4 * self.base_channels

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists in JSON and come back as tuples)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        """Build from a dict; an unknown key raises :class:`ConfigError` naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a UNet config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown UNet config key(s): {', '.join(map(repr, unknown))}",
                f"known keys: {', '.join(sorted(known))}",
            )
        try:
            return cls(**data)
        except TypeError as e:  # pragma: no cover - unknown keys are caught above
            raise ConfigError(f"bad UNet config: {e}") from e


class _Sequential(nn.ModuleList):
    """Runs its children in order, giving each what it needs: res blocks get
    ``(h, emb, segmap)``, the rest get ``h``. Optionally checkpoints each child."""

    def __init__(self, *modules: nn.Module, use_checkpoint: bool = False) -> None:
        super().__init__(modules)
        self.use_checkpoint = use_checkpoint

    def forward(self, h: Tensor, emb: Tensor, segmap: Tensor | None) -> Tensor:
        for m in self:
            ckpt = self.use_checkpoint and isinstance(m, (ResBlock, AttentionBlock))
            if isinstance(m, ResBlock):
                h = maybe_checkpoint(ckpt, m, h, emb, segmap if m.uses_segmap else None)
            else:
                h = maybe_checkpoint(ckpt, m, h)
        return h


class UNet(nn.Module):
    """Diffusion UNet: ``forward(x, t, *, concat=None, segmap=None, embedding=None)``.

    Args:
        config: the architecture.
        middle: optional replacement for the middle block, called as ``middle(h, emb)``
            (see the module docstring).
    """

    def __init__(self, config: UNetConfig, middle: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ConfigError(f"UNet needs a UNetConfig, got {type(config).__name__}", "use build_unet(dict)")
        config.validate()
        self.config = c = config
        sd, base = c.spatial_dims, c.base_channels
        emb_ch = self.time_embed_channels = c.embed_channels
        strides = c.strides

        self.time_embed = nn.Sequential(nn.Linear(base, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.extra_embed = (
            nn.Sequential(nn.Linear(c.embedding_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
            if c.embedding_channels
            else None
        )

        def res(cin: int, cout: int, spade: bool, **updown) -> ResBlock:
            return ResBlock(
                sd, cin, emb_ch, cout, dropout=c.dropout, norm_groups=c.norm_groups,
                use_scale_shift_norm=c.use_scale_shift_norm, spade_channels=c.spade_channels if spade else 0,
                spade_hidden=c.spade_hidden, spade_resize=c.spade_resize, **updown,
            )

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, c.attention_head_channels, c.norm_groups)

        def seq(*m: nn.Module) -> _Sequential:
            return _Sequential(*m, use_checkpoint=c.use_checkpoint)

        ch = base * c.channel_mult[0]
        self.input_conv = conv_nd(sd, c.in_channels + c.cond_channels, ch, 3)
        skip_chans = [ch]
        self.down_blocks = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, base * mult, c.spade_in_encoder)]
                ch = base * mult
                if level in c.attention_levels:
                    layers.append(attn(ch))
                self.down_blocks.append(seq(*layers))
                skip_chans.append(ch)
            if level < len(c.channel_mult) - 1:
                stride = strides[level]
                self.down_blocks.append(
                    seq(res(ch, ch, c.spade_in_encoder, down=stride))
                    if c.resblock_updown
                    else seq(Downsample(sd, ch, stride))
                )
                skip_chans.append(ch)

        self.bottleneck_channels = ch
        spade_mid = c.spade_channels > 0
        self.custom_middle = middle is not None
        if middle is not None:
            self.middle = middle
        else:
            self.middle = seq(
                res(ch, ch, spade_mid), *([attn(ch)] if c.middle_attention else []), res(ch, ch, spade_mid)
            )

        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                if c.skip_mode == "concat":
                    cin, cout = ch + skip_ch, base * mult
                else:  # "add": (h + skip) / 2 needs equal widths, so each block outputs the next skip's width
                    if skip_ch != ch:  # pragma: no cover - guaranteed by construction
                        raise AssertionError("additive skip width mismatch")
                    cin, cout = ch, (skip_chans[-1] if skip_chans else base * mult)
                layers = [res(cin, cout, spade_mid)]
                ch = cout
                if level in c.attention_levels:
                    layers.append(attn(ch))
                if level > 0 and i == c.num_res_blocks:
                    stride = strides[level - 1]
                    layers.append(
                        res(ch, ch, spade_mid, up=stride) if c.resblock_updown else Upsample(sd, ch, stride)
                    )
                self.up_blocks.append(seq(*layers))

        self.out = nn.Sequential(normalization(ch, c.norm_groups), nn.SiLU(), zero_module(conv_nd(sd, ch, c.out_channels, 3)))

    # -- input checks ------------------------------------------------------------------
    def _check_inputs(
        self, x: Tensor, t: Tensor, concat: Tensor | None, segmap: Tensor | None, embedding: Tensor | None
    ) -> Tensor:
        c = self.config
        sd = c.spatial_dims
        layout = "(B, C, D, H, W)" if sd == 3 else "(B, C, H, W)"
        if x.ndim != sd + 2:
            raise NetInputError(f"x must be {layout} for a {sd}D UNet, got shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise NetInputError(f"x has {x.shape[1]} channels, the UNet expects in_channels={c.in_channels}")
        spatial = tuple(x.shape[2:])
        for axis, (n, m) in enumerate(zip(spatial, c.size_multiple)):
            if n % m:
                raise NetInputError(
                    f"input {'x'.join(map(str, spatial))} is not divisible by {m} along {AXIS_NAMES[sd][axis]}",
                    f"pad or crop to a multiple of {m}",
                )
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise NetInputError(f"t must be a scalar or shape ({b},), got shape {tuple(t.shape)}")

        def check(name: str, value: Tensor | None, channels: int, key: str, same_spatial: bool) -> None:
            if channels == 0:
                if value is not None:
                    raise NetInputError(f"{name}= was given but the UNet was built with {key}=0",
                                        f"set {key} in the config or drop {name}=")
                return
            if value is None:
                raise NetInputError(f"this UNet needs {name}= with {channels} channels ({key}={channels})")
            want_ndim = sd + 2 if name != "embedding" else 2
            if value.ndim != want_ndim or value.shape[0] != b or value.shape[1] != channels:
                raise NetInputError(f"{name} must have shape ({b}, {channels}{', ...' if want_ndim > 2 else ''}) "
                                    f"with {want_ndim} dims, got {tuple(value.shape)}")
            if same_spatial and tuple(value.shape[2:]) != spatial:
                raise NetInputError(f"{name} spatial size {tuple(value.shape[2:])} differs from x's {spatial}")

        check("concat", concat, c.cond_channels, "cond_channels", True)
        check("segmap", segmap, c.spade_channels, "spade_channels", False)
        check("embedding", embedding, c.embedding_channels, "embedding_channels", False)
        return t

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        concat: Tensor | None = None,
        segmap: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: (B, in_channels, *spatial) noisy image; each spatial size divisible by
                ``config.size_multiple``.
            t: (B,) float timesteps or noise levels (or a scalar for the whole batch).
            concat: (B, cond_channels, *spatial), concatenated to ``x``.
            segmap: (B, spade_channels, *any_spatial), resized inside for SPADE.
            embedding: (B, embedding_channels), added to the time embedding via an MLP.

        Returns:
            (B, out_channels, *spatial).
        """
        t = self._check_inputs(x, t, concat, segmap, embedding)
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        if self.extra_embed is not None:
            emb = emb + self.extra_embed(embedding.float())
        h = x if concat is None else torch.cat([x, concat.to(x.dtype)], dim=1)
        h = self.input_conv(h)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, segmap)
            skips.append(h)
        h = self.middle(h, emb) if self.custom_middle else self.middle(h, emb, segmap)
        for block in self.up_blocks:
            skip = skips.pop()
            h = torch.cat([h, skip], dim=1) if self.config.skip_mode == "concat" else (h + skip) / 2
            h = block(h, emb, segmap)
        return self.out(h)


def build_unet(config: UNetConfig | Mapping[str, Any], middle: nn.Module | None = None) -> UNet:
    """A :class:`UNet` from a :class:`UNetConfig` or its dict form (e.g. a model card's JSON)."""
    if not isinstance(config, UNetConfig):
        config = UNetConfig.from_dict(config)
    return UNet(config, middle=middle)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["NetInputError", "UNet", "UNetConfig", "build_unet", "count_parameters"]
