"""The recon model: a primary and an auxiliary 2D prior (same UNet architecture) as one module.

One safetensors file holds both (keys ``primary.*`` and ``auxiliary.*``); the card
holds the network config, the diffusion settings, the planes and the intensity
scaling. Each prior becomes a sigma-space denoiser through the one denoiser
interface (:class:`VEDenoiser` or :class:`VPDenoiser`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...diffusion import NoiseSchedule, VEDenoiser, VPDenoiser, cosine_schedule, ve_geometric_schedule
from ...errors import ConfigError, ModelError
from ...models import ModelCard
from ...nets import UNet, UNetConfig
from ...nets.ncsnpp import NCSNpp, NCSNppConfig
from .config import DiffusionConfig


class VENet(nn.Module):
    """A UNet as an NCSN++-style VE network ``net(x, sigma) = sigma * score``.

    The input is scaled by ``1/sqrt(sigma_data^2 + sigma^2)`` and the time input is
    ``log sigma`` mapped onto ``[0, 1000]``, so one small UNet covers the whole VE range.
    """

    def __init__(self, unet: UNet, sigma_min: float, sigma_max: float, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.unet = unet
        self.log_min, self.log_max, self.sigma_data = math.log(sigma_min), math.log(sigma_max), sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        t = 1000.0 * (sigma.to(x.dtype).log() - self.log_min) / (self.log_max - self.log_min)
        return self.unet(x * (self.sigma_data**2 + s**2).rsqrt(), t)


#: ``card.network["architecture"]`` of a pair of NCSN++ score networks (imported TPDM priors); cards
#: without the key hold a UNet config.
NCSNPP_ARCHITECTURE = "ncsnpp"


def network_config(network: dict[str, Any]) -> UNetConfig | NCSNppConfig:
    """The priors' architecture from a card's ``network`` section: a UNet, or NCSN++ for imported TPDM models."""
    from ...config import from_dict

    if network.get("architecture") == NCSNPP_ARCHITECTURE:
        return NCSNppConfig.from_dict({k: v for k, v in network.items() if k != "architecture"})
    return from_dict(UNetConfig, network, "network")


class PriorPair(nn.Module):
    """``primary`` and ``auxiliary`` networks; each maps ``(x, t) -> out`` for its denoiser."""

    def __init__(self, network: UNetConfig | NCSNppConfig, diffusion: DiffusionConfig) -> None:
        super().__init__()
        self.diffusion = diffusion
        if isinstance(network, NCSNppConfig):
            if diffusion.parameterization != "ve":
                raise ConfigError("NCSN++ priors are VE score networks", "set diffusion.parameterization = 've'")
            self.primary, self.auxiliary = NCSNpp(network), NCSNpp(network)
        elif diffusion.parameterization == "ve":
            self.primary = VENet(UNet(network), diffusion.sigma_min, diffusion.sigma_max)
            self.auxiliary = VENet(UNet(network), diffusion.sigma_min, diffusion.sigma_max)
        else:
            self.primary = UNet(network)
            self.auxiliary = UNet(network)


def schedule_for(diffusion: DiffusionConfig) -> NoiseSchedule:
    if diffusion.parameterization == "ve":
        return ve_geometric_schedule(diffusion.sigma_min, diffusion.sigma_max, diffusion.num_timesteps)
    return cosine_schedule(diffusion.num_timesteps)


def denoiser_for(net: nn.Module, diffusion: DiffusionConfig):
    """The sigma-space denoiser ``D(x, sigma) -> x0`` of one prior."""
    if isinstance(net, NCSNpp):  # its output is the score itself
        return VEDenoiser(net, score_scaling="direct")
    if diffusion.parameterization == "ve":
        return VEDenoiser(net, score_scaling="divide_by_sigma")
    return VPDenoiser(net, schedule_for(diffusion), prediction="eps")


@dataclass
class ReconModel:
    """A loaded prior pair with everything the samplers need."""

    card: ModelCard
    pair: PriorPair
    diffusion: DiffusionConfig
    primary_plane: str
    auxiliary_plane: str
    modality: str
    intensity: dict[str, Any]
    image_size: int

    @property
    def schedule(self) -> NoiseSchedule:
        return schedule_for(self.diffusion)

    @property
    def primary(self):
        return denoiser_for(self.pair.primary, self.diffusion)

    @property
    def auxiliary(self):
        return denoiser_for(self.pair.auxiliary, self.diffusion)

    @property
    def size_multiple(self) -> int:
        multiple = network_config(self.card.network).size_multiple
        return max(multiple) if isinstance(multiple, tuple) else multiple

    @property
    def call_pixels(self) -> int:
        """Padded pixels per network call for these priors' width (:func:`~.priors.call_pixels`)."""
        from .priors import call_pixels

        return call_pixels(network_config(self.card.network))

    def prior_pair(self, chunk: int | None = None):
        """(primary, auxiliary) :class:`~.priors.VolumePrior` for a job, ``chunk``: its cap on slices per call."""
        from .priors import VolumePrior

        return (VolumePrior(self.primary, self.primary_plane, self.size_multiple, chunk, self.call_pixels),
                VolumePrior(self.auxiliary, self.auxiliary_plane, self.size_multiple, chunk, self.call_pixels))

    def sigma_range(self) -> tuple[float, float]:
        s = self.schedule
        return float(s.train_sigmas[0]), float(s.train_sigmas[-1])


def card_task_config(diffusion: DiffusionConfig, data, name: str) -> dict[str, Any]:
    if data.modality == "ct":
        intensity = {"unit": "HU", "offset": data.hu_min, "scale": data.hu_max - data.hu_min}
    else:
        intensity = {"unit": "a.u.", "offset": 0.0, "scale": 1.0, "normalize": "percentile99.5"}
    return {"modality": data.modality, "primary_plane": data.primary_plane, "auxiliary_plane": data.auxiliary_plane,
            "intensity": intensity, "image_size": data.size, "min_size": 16,
            "defaults": {"tpdm": {"steps": 1000, "K": 2.7, "lambda": 1.0, "snr": 0.16},
                         "fast": {"steps": 50, "cg_iters": 5, "eta": 0.85, "gamma": 1.0}}}


def load_recon_model(ref: str, device: torch.device | str = "cpu") -> ReconModel:
    """Verify and load a recon model (one safetensors with ``primary.*`` and ``auxiliary.*``)."""
    from ...config import from_dict
    from ...models import load_model

    card, tensors = load_model(ref, task="recon", device="cpu")
    try:
        network = network_config(card.network)
        diffusion = from_dict(DiffusionConfig, card.diffusion, "diffusion")
        tc = card.task_config
        pair = PriorPair(network, diffusion)
        pair.load_state_dict(tensors, strict=True)
    except Exception as exc:  # config or key mismatch: the model does not fit this code
        raise ModelError(f"model '{card.name}' is not a valid recon prior pair: {exc}",
                         "re-export it with `meddiff train` from a recon config, or re-import a published pair "
                         "with `meddiff models import-checkpoint --format tpdm`") from exc
    pair = pair.to(device).eval().requires_grad_(False)
    return ReconModel(card=card, pair=pair, diffusion=diffusion, primary_plane=tc["primary_plane"],
                      auxiliary_plane=tc["auxiliary_plane"], modality=tc["modality"], intensity=tc["intensity"],
                      image_size=int(tc.get("image_size", 64)))
