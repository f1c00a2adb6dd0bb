"""Configuration of the CTP inpainting model: network, diffusion, training data, and the one HU window."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddiffcore.diffusion import NoiseSchedule, sr3_linear_schedule
from meddiffcore.nets import UNetConfig
from meddiffcore.train import TrainConfig

NAME = "ctp"

#: The fixed intensity window of the seed (WL 40 / WW 80 HU -> [0, 80] HU), mapped to [-1, 1].
#: One place for this fact; the model card records it and inference reads it from the card.
WINDOW_LEVEL_HU = 40.0
WINDOW_WIDTH_HU = 80.0

#: Slices per slab (the seed's 8-slice volumes).
SLAB_SLICES = 8
#: Widest gap (s) between two known frames the model is trained for.
MAX_GAP_S = 8.0
#: Local context scale: distances d (s) enter as (d - 1) / 6, as in the seed.
LOCAL_CONTEXT_SCALE_S = 6.0
#: Global context classes (one-hot): target time before, around or after the bolus peak.
PHASES = ("rising", "peak", "falling")


def window_bounds(level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def hu_to_model(hu: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> np.ndarray:
    """HU -> [-1, 1] through the fixed window (values outside are clipped)."""
    lo, hi = window_bounds(level, width)
    return (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def model_to_hu(x: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> np.ndarray:
    lo, hi = window_bounds(level, width)
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


def default_network() -> UNetConfig:
    """The seed's layout, shrunk: input [noisy target] + concat [left, right]; 2 local + 3 global context values."""
    return UNetConfig(spatial_dims=3, in_channels=1, out_channels=1, cond_channels=2, base_channels=16,
                      channel_mult=(1, 2, 2), num_res_blocks=1, down_strides=((1, 2, 2), (1, 2, 2)),
                      attention_levels=(), middle_attention=False, norm_groups=8, embedding_channels=2 + len(PHASES))


@dataclass
class CTPDiffusionConfig:
    """SR3 continuous noise-level conditioning (the step count is chosen at sampling)."""

    schedule: dict = field(default_factory=lambda: sr3_linear_schedule().to_dict())
    sampler: str = "dpmpp_2m"
    sampling_steps: int = 20
    peak_margin_s: float = 2.0
    """A target within this many seconds of the (estimated) bolus peak is in the 'peak' phase."""

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)


@dataclass
class CTPDataConfig:
    """Training tuples from 1 s phantom sequences: start i, gap tr in min_gap..max_gap, target i + p."""

    phantoms: int = 32
    phantom_seed: int = 100_000
    slices: int = SLAB_SLICES
    size: int = 64
    crop: int = 32
    min_gap: int = 2
    max_gap: int = int(MAX_GAP_S)
    items: int = 1_000_000
    hflip: bool = True


@dataclass
class CTPConfig:
    name: str = "ctp-model"
    network: UNetConfig = field(default_factory=default_network)
    diffusion: CTPDiffusionConfig = field(default_factory=CTPDiffusionConfig)
    data: CTPDataConfig = field(default_factory=CTPDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def tissue_mask(baseline_hu: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU) -> np.ndarray:
    """Voxels whose unenhanced value lies inside the window (brain and CSF; not air or bone).

    The network is trained and applied there; outside, the window clips everything anyway.
    """
    lo, hi = window_bounds(level, width)
    return (baseline_hu > lo) & (baseline_hu < hi)
