"""The WDM :class:`~meddiffcore.tasks.base.TrainableTask`."""

from __future__ import annotations

import numpy as np
import torch

from ...config import to_dict
from ...errors import ConfigError
from ...models import ModelCard
from ...nets.wavelet import check_even_size
from . import data as wdm_data
from . import model as wdm_model
from .config import NAME, WDMConfig


class WDMTask:
    name = NAME
    config_class = WDMConfig

    def build_network(self, config: WDMConfig) -> torch.nn.Module:
        check_even_size(tuple(config.data.size), "training volume size")
        half = tuple(n // 2 for n in config.data.size)
        net = config.network
        if net.spatial_dims != 3 or net.in_channels != 8 or net.out_channels != 8:
            raise ConfigError("a WDM network works on 8 Haar subbands of a 3D volume",
                              "set network.spatial_dims = 3, in_channels = 8, out_channels = 8")
        want_cond = 8 if config.data.conditional else 0
        if net.cond_channels != want_cond:
            raise ConfigError(f"network.cond_channels is {net.cond_channels}, data.conditional needs {want_cond}",
                              "8 condition channels (the subbands of one condition volume) for cWDM, else 0")
        for n, m in zip(half, net.size_multiple):
            if n % m:
                raise ConfigError(f"subband grid {'x'.join(map(str, half))} is not divisible by {m}",
                                  "use fewer UNet levels or a larger data.size")
        return wdm_model.build_network(net)

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks)."""
        from ...nets import UNetConfig

        return wdm_model.build_network(UNetConfig.from_dict(card.network))

    def build_dataset(self, config: WDMConfig) -> torch.utils.data.Dataset:
        return wdm_data.build_dataset(config.data, config.train.seed)

    def training_loss(self, net, batch, config: WDMConfig, generator):
        loss = wdm_model.training_loss(net, config.diffusion, batch["image"], batch.get("condition"), generator)
        return loss, {"mse_subbands": float(loss.detach())}

    def preview(self, net, config: WDMConfig, device) -> np.ndarray:
        from ...preview import Window, preview_array

        gen = torch.Generator(device=device).manual_seed(0)
        condition = None
        if config.data.conditional:
            condition = wdm_data.PhantomVolumes(config.data, seed=12345)[0]["condition"][None].to(device)
        volume = wdm_model.generate(net, config.diffusion, tuple(config.data.size), 1, condition=condition,
                                    steps=min(20, config.diffusion.sampling_steps), generator=gen)
        return preview_array(volume[0, 0].float().cpu().numpy(), Window(level=0.0, width=2.0), min_height=96)

    def model_card(self, config: WDMConfig) -> ModelCard:
        kind = "conditional (cWDM, image-to-image)" if config.data.conditional else "unconditional"
        return ModelCard(
            name=config.name,
            task=NAME,
            description=f"WDM {kind} 3D wavelet diffusion at {'x'.join(map(str, config.data.size))} on {config.data.source}",
            network=to_dict(config.network),
            diffusion=to_dict(config.diffusion),
            task_config={"size": list(config.data.size), "intensity_window": list(config.data.intensity_window),
                         "spacing_mm": list(config.data.spacing_mm), "conditional": config.data.conditional,
                         "schedule": config.diffusion.noise_schedule().to_dict()},
            training={"steps": config.train.steps, "batch_size": config.train.batch_size, "lr": config.train.lr,
                      "data": to_dict(config.data)},
        )


TASK = WDMTask()
