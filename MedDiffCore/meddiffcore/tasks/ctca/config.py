"""Configs of the CTCA task, and its one intensity window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ...errors import ConfigError
from ...nets import UNetConfig
from ...train import TrainConfig

#: THE HU window of the task: [-1024, 1024] HU maps linearly to [-1, 1] (never per-volume min/max).
#: Recorded in every model card as ``task_config.hu_window``.
HU_WINDOW: tuple[float, float] = (-1024.0, 1024.0)


def hu_to_model(hu, window=HU_WINDOW):
    """HU -> [-1, 1] (values outside the window are clipped)."""
    lo, hi = window
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)


def model_to_hu(x, window=HU_WINDOW, out: np.ndarray | None = None):
    """[-1, 1] -> HU (float32); ``out`` (may be ``x`` itself) receives it without temporary copies."""
    lo, hi = window
    out = np.add(np.asarray(x, dtype=np.float32), 1.0, out=out)
    np.divide(out, 2.0, out=out)
    np.multiply(out, hi - lo, out=out)
    return np.add(out, lo, out=out)


@dataclass
class DiffusionConfig:
    """How the network is trained and sampled (defaults recorded in the card)."""

    schedule: Literal["cosine", "linear"] = "cosine"
    num_timesteps: int = 1000
    cond_drop_prob: float = 0.2
    """Probability of zeroing the condition (labels and reference) in training, for classifier-free guidance."""
    vb_weight: float = 1.0
    """Weight of the variational bound of the hybrid loss, relative to improved DDPM's lambda = 0.001 (1 = the paper's)."""
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 1.0
    """Default guidance scale: 1 = the conditional model alone, 0 = unconditional, > 1 stronger."""
    target: Literal["image", "residual"] = "image"
    """What the network denoises: the CT itself ("image"), or, for the patch stage only, the scaled residual
    ``residual_scale * (CT - low-resolution reference)`` ("residual"): the reference carries the anatomy at
    every noise level and the network adds only the 1 mm detail (a small network trained briefly cannot
    reproduce the reference from the noise by itself; see the ctca-hr-demo card)."""
    residual_scale: float = 8.0
    """target = "residual": the residual (~0.04 of the window in standard deviation for 2 mm -> 1 mm) times this
    is about the spread the noise schedule was designed for."""

    start_sigma: float | None = None
    """Sampling starts at this noise level (sigma space; Karras spacing down to the smallest training sigma) instead
    of the top of the schedule. For a residual model: its variable (scaled residual, ~0.3 in standard deviation) is
    almost pure noise already at sigma 1, and the estimates of a small network above it are no more than clamped
    noise that the few steps left cannot wash out (measured on the ctca-hr-demo card). None: the whole schedule."""

    def __post_init__(self) -> None:
        if self.start_sigma is not None and not (isinstance(self.start_sigma, (int, float)) and self.start_sigma > 0):
            raise ConfigError(f"start_sigma must be > 0 or left out, got {self.start_sigma!r}", "1.0 suits a residual model")
        if self.target not in ("image", "residual"):
            raise ConfigError(f"unknown diffusion target {self.target!r}", "use 'image' or 'residual'")
        if not (isinstance(self.residual_scale, (int, float)) and self.residual_scale > 0):
            raise ConfigError(f"residual_scale must be > 0, got {self.residual_scale!r}", "8 suits 2 mm -> 1 mm")


@dataclass
class DataConfig:
    """Training volumes: procedural phantoms (cached on disk) or a folder written by ``meddiff prepare ctca``."""

    source: Literal["phantoms", "folder"] = "phantoms"
    folder: str = ""
    """Prepared folder (source = "folder"), or the phantom cache (source = "phantoms"; empty: no disk cache)."""
    num_phantoms: int = 300
    first_seed: int = 0
    """Phantom seeds first_seed .. first_seed + num_phantoms - 1 (evaluation uses seeds from 100000)."""
    shape: tuple[int, int, int] = (64, 64, 64)
    """Model grid (z, y, x) of the low-resolution stage, or the full high-resolution grid of the patch stage."""
    spacing_mm: float = 2.0
    crop: tuple[int, int, int] | None = (32, 32, 32)
    """Random training crop (z, y, x) (the network is fully convolutional); None trains on whole volumes."""
    reference_spacing_mm: float = 2.0
    """Patch stage: spacing of the low-resolution reference."""


@dataclass
class CTCAConfig:
    """A training run of the CTCA task (``task = "ctca"`` in the TOML file)."""

    name: str = "ctca-model"
    stage: Literal["lr", "patch"] = "lr"
    """lr: whole volume from labels; patch: high-resolution patches from labels + LR reference + position."""
    train: TrainConfig = field(default_factory=TrainConfig)
    network: UNetConfig = field(default_factory=lambda: UNetConfig(
        spatial_dims=3, in_channels=1, out_channels=2, base_channels=8, channel_mult=(1, 2, 4, 8), num_res_blocks=1,
        attention_levels=(3,), middle_attention=True, attention_head_channels=32, norm_groups=4, spade_channels=9,
        spade_hidden=8))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.diffusion.target == "residual" and self.stage != "patch":
            raise ConfigError("diffusion.target = 'residual' needs a reference: it is for the patch stage only",
                              "use target = 'image' for a low-resolution model")
