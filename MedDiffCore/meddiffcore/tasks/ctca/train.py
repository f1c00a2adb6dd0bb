"""The trainable CTCA task: network, dataset, hybrid loss with condition dropout, preview, card."""

from __future__ import annotations

import numpy as np
import torch

from ...diffusion import training_loss
from ...models import ModelCard
from ...nets import UNet
from .config import CTCAConfig
from .data import CTCADataset
from .model import build_network, drop_condition, model_card, schedule_of


class CTCATask:
    name = "ctca"
    config_class = CTCAConfig

    def build_network(self, config: CTCAConfig) -> UNet:
        return build_network(config)

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks)."""
        from ...nets import UNetConfig

        return UNet(UNetConfig.from_dict(card.network))

    def build_dataset(self, config: CTCAConfig) -> CTCADataset:
        return CTCADataset(config)

    def training_loss(self, net, batch, config: CTCAConfig, generator):
        segmap = batch["segmap"]
        p = config.diffusion.cond_drop_prob
        if p > 0:
            drop = torch.rand(segmap.shape[0], device=segmap.device, generator=generator) < p
            if drop.any():
                segmap = torch.where(drop.view(-1, *([1] * (segmap.ndim - 1))), drop_condition(segmap, config.stage), segmap)
        # improved-DDPM hybrid loss (eps MSE + VLB for the learned-range variance), lambda = 0.001 * vb_weight
        return training_loss("hybrid", net, batch["x"], schedule_of(config), {"segmap": segmap}, generator,
                             vlb_weight=0.001 * config.diffusion.vb_weight)

    def preview(self, net, config: CTCAConfig, device) -> np.ndarray:
        """Mid-slices of the training item 0 (top) and a 10-step sample from its labels (bottom)."""
        from ...diffusion import ClassifierFreeGuidance, VPDenoiser, clip_x0, get_sampler, initial_noise
        from ...preview import CT_ANGIO, preview_array
        from .config import model_to_hu

        dataset = CTCADataset(config)
        item = dataset[0]
        segmap = item["segmap"][None].to(device)
        den = clip_x0(ClassifierFreeGuidance(VPDenoiser(net, schedule_of(config), "eps", learned_variance=True), 1.0, {}))
        sigmas = schedule_of(config).sampling_sigmas(10)
        x = initial_noise(item["x"][None].shape, sigmas, torch.Generator().manual_seed(0)).to(device)
        sample = get_sampler("dpmpp_2m")(den, x, sigmas.to(device), cond={"segmap": segmap})
        rows = [preview_array(model_to_hu(v[0, 0].cpu().numpy()), CT_ANGIO) for v in (item["x"][None], sample)]
        width = max(r.shape[1] for r in rows)
        return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]))) for r in rows])

    def model_card(self, config: CTCAConfig) -> ModelCard:
        return model_card(config)


TASK = CTCATask()
