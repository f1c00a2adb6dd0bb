"""Configuration of a WDM model: network, diffusion, data and training sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...diffusion import NoiseSchedule, linear_schedule
from ...nets import UNetConfig
from ...train import TrainConfig

NAME = "wdm"


def wdm_network(volume_size: int, conditional_volumes: int = 0, base_channels: int = 64,
                skip_mode: str = "add") -> UNetConfig:
    """The seed's UNet (guided-diffusion's ``UNetModel`` with WDM's flags) for a cubic volume of
    ``volume_size`` voxels per side.

    8 subband channels in and out at half resolution, 2 res blocks per level, no
    attention, residual blocks that down-sample by average pooling and up-sample by
    nearest neighbour (``resblock_updown``), the time embedding added (no scale-shift);
    channel multipliers (1, 2, 2, 4, 4) at 128^3 and (1, 2, 2, 4, 4, 4) at 256^3
    (64^3: (1, 2, 2, 4)), so the bottleneck is 4^3 subband voxels in every preset.
    WDM merges skips additively, ``(h + skip) / 2``; cWDM concatenates them
    (``skip_mode="concat"``) and uses the 128 preset for its 224x224x160 volumes.
    ``conditional_volumes`` condition volumes (cWDM: 3) add 8 channels each.
    """
    mults = {64: (1, 2, 2, 4), 128: (1, 2, 2, 4, 4), 256: (1, 2, 2, 4, 4, 4)}
    if volume_size not in mults:
        from ...errors import ConfigError

        raise ConfigError(f"no WDM preset for {volume_size}^3", "presets exist for 64, 128 and 256")
    return UNetConfig(spatial_dims=3, in_channels=8, out_channels=8, cond_channels=8 * conditional_volumes,
                      base_channels=base_channels, channel_mult=mults[volume_size], num_res_blocks=2,
                      attention_levels=(), middle_attention=False, skip_mode=skip_mode, resblock_updown=True,
                      use_scale_shift_norm=False)


@dataclass
class WDMDiffusionConfig:
    """The seed's diffusion: linear betas over 1000 steps, x0 prediction, fixed (posterior) variance."""

    num_timesteps: int = 1000
    lll_scale: float = 1.0 / 3.0
    """The LLL subband is divided by 3 (multiplied by this) so all subbands lie in about [-1, 1]."""
    clip: bool = True
    """Clip each x0 estimate in image space: IDWT -> clamp to ``clip_range`` -> DWT."""
    clip_range: tuple[float, float] = (-1.0, 1.0)
    """Image range of the model (the seed's WDM: [-1, 1]; cWDM: [0, 1])."""
    sampler: str = "ancestral"
    sampling_steps: int = 100
    spacing: str | None = None
    """Sigma spacing of the sampling steps (``NoiseSchedule.sampling_sigmas``); None: the default."""
    variance: str = "small"
    """Ancestral sampler's fixed variance: "small" (posterior) or "large" (beta_t, as the seed samples)."""

    def noise_schedule(self) -> NoiseSchedule:
        return linear_schedule(self.num_timesteps)


@dataclass
class WDMDataConfig:
    """Training volumes: procedural brain phantoms, or a folder of volumes (fixed intensity window)."""

    source: Literal["phantom", "folder"] = "phantom"
    folder: str = ""
    condition_folder: str = ""
    """cWDM with a folder: condition volumes with the same file names as in ``folder``."""
    size: tuple[int, int, int] = (32, 32, 32)
    """Full-resolution (D, H, W) of the generated volumes; each even (the subbands are half that)."""
    num_items: int = 64
    intensity_window: tuple[float, float] = (0.0, 1.0)
    """Input range mapped to [-1, 1]; phantoms are in [0, 1]."""
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    """Voxel size (x, y, z) written into generated volumes unless the job gives one."""
    conditional: bool = False
    """cWDM: learn target contrast (phantom T2-like) given a condition contrast (phantom T1-like)."""


@dataclass
class WDMConfig:
    name: str = "wdm-model"
    network: UNetConfig = field(default_factory=lambda: UNetConfig(
        spatial_dims=3, in_channels=8, out_channels=8, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_levels=(), middle_attention=False, skip_mode="add", norm_groups=8))
    diffusion: WDMDiffusionConfig = field(default_factory=WDMDiffusionConfig)
    data: WDMDataConfig = field(default_factory=WDMDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
