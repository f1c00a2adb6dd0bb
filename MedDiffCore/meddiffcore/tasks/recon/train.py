"""The training face of the recon task: one run trains the primary and the auxiliary prior together.

Each batch holds slices along both planes; the loss is the sum of the two priors'
denoising losses (VE: ``||sigma s(x) + eps||^2`` with log-uniform sigma, as
score-SDE trains TPDM's priors; VP: eps-MSE on a cosine schedule). The EMA of the
pair is exported as one safetensors file with ``primary.*`` and ``auxiliary.*`` keys.
"""

from __future__ import annotations


import numpy as np
import torch

from ...config import to_dict
from ...diffusion import training_loss
from ...models import ModelCard
from .config import ReconConfig
from .data import PriorSliceDataset
from .model import PriorPair, card_task_config, denoiser_for, schedule_for


def prior_loss(net: torch.nn.Module, x0: torch.Tensor, config: ReconConfig, generator=None) -> torch.Tensor:
    """One prior's denoising loss through the shared diffusion core (VE: score matching; VP: eps-MSE)."""
    kind = "dsm" if config.diffusion.parameterization == "ve" else "eps_mse"
    loss, _terms = training_loss(kind, net, x0, schedule_for(config.diffusion), generator=generator,
                                 score_scaling="divide_by_sigma")
    return loss


class ReconTask:
    name = "recon"
    config_class = ReconConfig

    def build_network(self, config: ReconConfig) -> torch.nn.Module:
        return PriorPair(config.network, config.diffusion)

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks)."""
        from ...config import from_dict
        from .model import DiffusionConfig, network_config

        return PriorPair(network_config(card.network), from_dict(DiffusionConfig, card.diffusion, "diffusion"))

    def build_dataset(self, config: ReconConfig) -> torch.utils.data.Dataset:
        return PriorSliceDataset(config.data)

    def training_loss(self, net, batch: dict[str, torch.Tensor], config: ReconConfig, generator):
        pair = net.module if hasattr(net, "module") else net
        lp = prior_loss(pair.primary, batch["primary"], config, generator)
        la = prior_loss(pair.auxiliary, batch["auxiliary"], config, generator)
        return lp + la, {"loss_primary": float(lp.detach()), "loss_auxiliary": float(la.detach())}

    @torch.no_grad()
    def preview(self, net, config: ReconConfig, device: torch.device) -> np.ndarray:
        from ...diffusion import sample_ddim

        size = config.data.size
        schedule = schedule_for(config.diffusion)
        sigmas = schedule.sampling_sigmas(20).to(device)
        gen = torch.Generator(device).manual_seed(0)
        images = []
        for prior in (net.primary, net.auxiliary):
            x = float(sigmas[0]) * torch.randn((2, 1, size, size), generator=gen, device=device)
            images.append(sample_ddim(denoiser_for(prior, config.diffusion), x, sigmas.float()))
        tiles = torch.cat([torch.cat(list(img[:, 0]), dim=1) for img in images], dim=0)
        return (tiles.clamp(0, 1) * 255).round().byte().cpu().numpy()

    def model_card(self, config: ReconConfig) -> ModelCard:
        d = config.data
        return ModelCard(
            name=config.name,
            task="recon",
            description=config.description or (
                f"TPDM demo prior pair for {d.modality.upper()}: 2D priors on {d.primary_plane} (primary) and "
                f"{d.auxiliary_plane} (auxiliary) slices of {d.size}^3 phantoms"),
            network=config.network.to_dict(),
            diffusion=to_dict(config.diffusion),
            task_config=card_task_config(config.diffusion, d, config.name),
            training={"data": f"{d.volumes} procedural {d.modality} phantoms (seeds {d.seed}..{d.seed + d.volumes - 1}), "
                              f"{d.size}^3, never the evaluation seeds"},
            requirements={"min_volume_size": 16, "trained_image_size": d.size},
        )


TASK = ReconTask()
