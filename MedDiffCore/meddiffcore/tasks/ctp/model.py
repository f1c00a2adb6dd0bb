"""Building and loading the CTP network, its denoiser and its training loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meddiffcore.config import from_dict
from meddiffcore.diffusion import VPDenoiser, training_loss
from meddiffcore.errors import ModelError
from meddiffcore.models import ModelCard, load_model
from meddiffcore.nets import UNet, UNetConfig

from .config import NAME, PHASES, CTPDiffusionConfig


def check_network(config: UNetConfig) -> None:
    """The CTP layout: 1 noisy channel, 2 known frames concatenated, 2 + 3 context values, 3D."""
    want = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "cond_channels": 2,
            "embedding_channels": 2 + len(PHASES)}
    bad = {k: getattr(config, k) for k, v in want.items() if getattr(config, k) != v}
    if bad:
        raise ModelError(f"not a CTP inpainting network: {bad} (expected {want})",
                         "use a network config with these values (see meddiffcore/configs/ctp-demo.toml)")


def denoiser_for(net: torch.nn.Module, diffusion: CTPDiffusionConfig) -> VPDenoiser:
    """eps prediction with SR3 continuous noise-level input (the seed's parameterisation)."""
    return VPDenoiser(net, diffusion.noise_schedule(), prediction="eps", time_input="noise_level")


def eps_l1_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], diffusion: CTPDiffusionConfig,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The seed's loss: L1 between the true and the predicted noise, at a continuous SR3 noise level."""
    return training_loss("eps_l1", net, batch["target"], diffusion.noise_schedule(),
                         {"concat": batch["known"], "embedding": batch["context"]}, generator=generator)


@dataclass
class LoadedModel:
    card: ModelCard
    net: UNet
    diffusion: CTPDiffusionConfig
    window_level_hu: float
    window_width_hu: float
    slab_slices: int
    max_gap_s: float


def load_for_inference(ref: str, device: torch.device) -> LoadedModel:
    """A verified CTP model from its card (network, schedule, window, slab size, gap limit)."""
    card, tensors = load_model(ref, task=NAME)
    config = UNetConfig.from_dict(card.network)
    check_network(config)
    net = UNet(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ModelError(f"weights of model '{card.name}' do not fit its network config: {exc}",
                         "re-export the model from training") from exc
    tc = card.task_config
    try:
        return LoadedModel(card, net.to(device).eval(), from_dict(CTPDiffusionConfig, card.diffusion, where="diffusion"),
                           float(tc["window_level_hu"]), float(tc["window_width_hu"]), int(tc["slab_slices"]),
                           float(tc["max_gap_s"]))
    except KeyError as exc:
        raise ModelError(f"model card of '{card.name}' lacks {exc}", "re-export the model with this version of MedDiff") from exc
