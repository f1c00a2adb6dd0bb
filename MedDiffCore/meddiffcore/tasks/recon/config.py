"""Configuration of a recon prior pair (the ``[network]``, ``[diffusion]``, ``[data]`` and ``[train]`` sections)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...nets import UNetConfig
from ...train import TrainConfig

PLANES = ("axial", "coronal", "sagittal")
MODALITIES = ("ct", "mri")


@dataclass
class DiffusionConfig:
    """``parameterization = "ve"`` (score-SDE VE, as TPDM) or ``"vp"`` (cosine VP, eps prediction)."""

    parameterization: str = "ve"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.parameterization not in ("ve", "vp"):
            raise ValueError("diffusion.parameterization must be 've' or 'vp'")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("diffusion needs 0 < sigma_min < sigma_max")


@dataclass
class DataConfig:
    """Phantom volumes sliced along the primary and auxiliary planes."""

    modality: str = "ct"
    volumes: int = 24
    size: int = 64
    seed: int = 1000
    primary_plane: str = "axial"
    auxiliary_plane: str = "coronal"
    hu_min: float = -1000.0
    hu_max: float = 1000.0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"data.modality must be one of {MODALITIES}")
        if self.primary_plane not in PLANES or self.auxiliary_plane not in PLANES or self.primary_plane == self.auxiliary_plane:
            raise ValueError(f"data.primary_plane and data.auxiliary_plane must be two different planes of {PLANES}")
        if self.hu_max <= self.hu_min:
            raise ValueError("data.hu_max must exceed data.hu_min")


def default_network() -> UNetConfig:
    return UNetConfig(spatial_dims=2, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_levels=(), middle_attention=False, norm_groups=8, attention_head_channels=16)


@dataclass
class ReconConfig:
    name: str = "recon-ct-demo"
    train: TrainConfig = field(default_factory=TrainConfig)
    network: UNetConfig = field(default_factory=default_network)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    description: str = ""
