"""Configuration of the CTP inpainting model: network, diffusion, training data, and the one HU window."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddiffcore.diffusion import NoiseSchedule, sr3_linear_schedule
from meddiffcore.errors import ConfigError
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


def hu_to_model(hu: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU,
                margin: float = 0.0) -> np.ndarray:
    """HU -> [-1, 1] through the fixed window. Values outside it are clipped to its edges (air and bone, as in
    training: the seed's clipping), except those within ``margin`` x width of an edge, which are kept (noise
    around a tissue near an edge, which clipping would bias; see ``inpaint.KNOWN_MARGIN``)."""
    lo, hi = (float(v) for v in window_bounds(level, width))  # Python scalars: float32 arithmetic throughout
    m = margin * width
    hu = np.asarray(hu, dtype=np.float32)
    near = (hu >= lo - m) & (hu <= hi + m)
    out = np.where(near, hu, clip(hu, lo, hi))
    out -= lo
    out /= hi - lo
    out *= 2.0
    out -= 1.0
    return out


def model_to_hu(x: np.ndarray, level: float = WINDOW_LEVEL_HU, width: float = WINDOW_WIDTH_HU,
                margin: float = 0.0) -> np.ndarray:
    lo, hi = (float(v) for v in window_bounds(level, width))
    m = 2.0 * float(margin)
    out = clip(np.asarray(x, dtype=np.float32), -1.0 - m, 1.0 + m)
    out += 1.0
    out /= 2.0
    out *= hi - lo
    out += lo
    return out


def clip(x: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """``np.clip(x, lo, hi)`` bit for bit (into ``out``, a new array by default) as a maximum and a minimum: for a
    float32 frame with scalar bounds about 3x faster than ``np.clip`` here, which matters once per frame at 512²."""
    out = np.maximum(x, lo, out=out)
    return np.minimum(out, hi, out=out) if isinstance(out, np.ndarray) else np.minimum(out, hi)


def default_network() -> UNetConfig:
    """The seed's layout, shrunk: input [noisy target] + concat [left, right]; 2 local + 3 global context values."""
    return UNetConfig(spatial_dims=3, in_channels=1, out_channels=1, cond_channels=2, base_channels=16,
                      channel_mult=(1, 2, 2), num_res_blocks=1, down_strides=((1, 2, 2), (1, 2, 2)),
                      attention_levels=(), middle_attention=False, norm_groups=8, embedding_channels=2 + len(PHASES))


#: How a missing frame is produced: the posterior mean (one network evaluation) or a sample (the sampler).
ESTIMATES = ("mean", "sample")

#: What the diffusion variable is: the scaled residual from the linear interpolation, or the frame itself.
DIFFUSION_TARGETS = ("residual", "frame")


@dataclass
class CTPDiffusionConfig:
    """SR3 continuous noise-level conditioning (the step count is chosen at sampling).

    The diffusion variable is the scaled residual ``residual_scale * (frame -
    linear interpolation of the two known frames)`` in window units: most of a
    frame is the interpolation, so the network spends itself on what the line
    misses (the curvature of the bolus and the noise). ``residual_scale`` brings
    that residual (a few HU, a few hundredths of the window) to about unit size.

    ``estimate = "mean"`` gives the posterior mean of the frame given its two
    known frames: the denoiser's output at the top of the schedule, where the
    noisy input carries no information, in one network evaluation. It is the
    minimum-squared-error frame (noise-free, since the frame's own noise cannot
    be predicted) and gives the best PSNR and perfusion maps. ``"sample"`` draws a
    frame with ``sampler`` and ``sampling_steps``: realistic noise texture,
    higher error.

    ``target`` says what the diffusion variable is: ``"residual"`` (above; MedDiff's
    models) or ``"frame"`` (the frame itself in window units, as the CTP authors'
    released network was trained; ``residual_scale`` is then unused). ``clip_x0``
    clamps every x0 estimate to [-1, 1] as the authors' sampler does.
    """

    schedule: dict = field(default_factory=lambda: sr3_linear_schedule().to_dict())
    prediction: str = "v"
    loss: str = "v_mse"
    residual_scale: float = 10.0
    estimate: str = "mean"
    mean_fraction: float = 0.5
    sampler: str = "dpmpp_2m"
    sampling_steps: int = 20
    target: str = "residual"
    clip_x0: bool = False
    peak_margin_s: float = 2.0
    """A target within this many seconds of the (estimated) bolus peak is in the 'peak' phase."""

    def __post_init__(self) -> None:
        if self.estimate not in ESTIMATES:
            raise ConfigError(f"unknown estimate {self.estimate!r}", f"use one of {', '.join(ESTIMATES)}")
        if self.target not in DIFFUSION_TARGETS:
            raise ConfigError(f"unknown diffusion target {self.target!r}", f"use one of {', '.join(DIFFUSION_TARGETS)}")
        if not 0.0 <= self.mean_fraction < 1.0:
            raise ConfigError(f"mean_fraction must be in [0, 1), got {self.mean_fraction}", "use e.g. 0.5")
        if not self.residual_scale > 0:
            raise ConfigError(f"residual_scale must be positive, got {self.residual_scale}", "use e.g. 10")

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.schedule)


#: Which phantom frames a training target is cut from (see :class:`CTPDataConfig`).
TARGET_FRAMES = ("noise_free", "acquired")


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
    target_frames: str = "noise_free"
    """Which phantom frames the network learns to produce: ``"noise_free"`` (the phantom before the scanner
    noise) or ``"acquired"`` (with it, as real data would be). The known frames are always the acquired ones.
    Both have the same posterior mean, since the target's own noise is independent of everything the network
    sees; the noise-free target only removes that noise from the gradient, which on phantoms at a few HU of
    noise is the difference between learning the mean in a CPU-sized run and not learning it at all."""

    def __post_init__(self) -> None:
        if self.target_frames not in TARGET_FRAMES:
            raise ConfigError(f"unknown target_frames {self.target_frames!r}", f"use one of {', '.join(TARGET_FRAMES)}")


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
