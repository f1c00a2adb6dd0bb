"""Configs of the CTCA task, and its one intensity window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

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
