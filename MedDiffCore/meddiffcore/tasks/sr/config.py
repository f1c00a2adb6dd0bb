"""Configuration of one stage of the super-resolution cascade."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...diffusion import NoiseSchedule, linear_schedule
from ...nets import UNetConfig
from ...train import TrainConfig

NAME = "sr"

#: Stage slots of a cascade, in order: the base generator, then each 2x super-resolution stage.
STAGES = ("base", "sr128", "sr256")


@dataclass
class SwinConfig:
    """The Swin block pair at the UNet bottleneck (window 4 as the seed; shifted every second block)."""

    enabled: bool = True
    window: int = 4
    heads: int = 4
    depth: int = 2
    relative_position_bias: bool = True


@dataclass
class SRDiffusionConfig:
    """The seed's schedule: linear betas 0.00085 .. 0.012 over T = 2000, eps prediction."""

    num_timesteps: int = 2000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: Literal["eps", "v", "x0"] = "eps"
    sampler: str = "dpmpp_2m"
    sampling_steps: int = 50
    noise_augmentation: float = 0.0
    """Super-resolution stages: during training the upsampled condition gets Gaussian noise of a
    level drawn from U(0, this) (the level is given to the network), which makes a stage robust to
    the errors of the stage below (Ho et al. 2021, cascaded diffusion). 0 disables it (the seed)."""
    sampling_augmentation: float = 0.0
    """The noise level added to the condition at sampling time (when noise_augmentation > 0)."""

    def noise_schedule(self) -> NoiseSchedule:
        return linear_schedule(self.num_timesteps, self.beta_start, self.beta_end)


@dataclass
class SRDataConfig:
    """2D training slices: procedural brain-like phantoms, or slices of the volumes in a folder."""

    source: Literal["phantom", "folder"] = "phantom"
    folder: str = ""
    size: int = 64
    """Output (high-resolution) side length of this stage, in pixels."""
    num_items: int = 512
    intensity_window: tuple[float, float] = (0.0, 1.0)
    """Input range mapped to [-1, 1] (fixed, never per-image min/max)."""
    pixel_mm: float = 1.0
    """Pixel size of generated base-stage slices (mm); each 2x stage halves it."""


@dataclass
class SRConfig:
    name: str = "sr-stage"
    stage: Literal["base", "sr128", "sr256"] = "base"
    network: UNetConfig = field(default_factory=lambda: UNetConfig(
        spatial_dims=2, in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
        attention_levels=(), middle_attention=False, norm_groups=8))
    swin: SwinConfig = field(default_factory=SwinConfig)
    diffusion: SRDiffusionConfig = field(default_factory=SRDiffusionConfig)
    data: SRDataConfig = field(default_factory=SRDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def low_size(self) -> int:
        """Side length of the lower-resolution input (0 for the base generator)."""
        return 0 if self.stage == "base" else self.data.size // 2
