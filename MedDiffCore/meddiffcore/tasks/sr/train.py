"""The SR :class:`~meddiffcore.tasks.base.TrainableTask`: trains one stage of the cascade per config."""

from __future__ import annotations

import numpy as np
import torch

from ...config import to_dict
from ...errors import ConfigError
from ...models import ModelCard
from . import data as sr_data
from .cascade import stage_entry
from .config import NAME, SRConfig
from .model import StageSpec, build_stage_network, sample_stage, training_loss
from .resample import downsample_area


def spec_of(config: SRConfig) -> StageSpec:
    if config.stage != "base" and config.data.size % 2:
        raise ConfigError(f"data.size {config.data.size} of a 2x stage must be even", "use e.g. 128 or 256")
    return StageSpec(stage=config.stage, size=config.data.size, low_size=config.low_size, network=config.network,
                     swin=config.swin, diffusion=config.diffusion)


class SRTask:
    name = NAME
    config_class = SRConfig

    def build_network(self, config: SRConfig) -> torch.nn.Module:
        return build_stage_network(spec_of(config))

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks): a bundled
        cascade holds ``<stage>.<key>`` tensors of every stage, a single-stage model its own."""
        from .cascade import _card_stages, spec_from_entry

        nets = {stage: build_stage_network(spec_from_entry(stage, entry)) for stage, entry in _card_stages(card).items()}
        if not card.task_config.get("bundled", False) and len(nets) == 1:
            return next(iter(nets.values()))
        return torch.nn.ModuleDict(nets)

    def build_dataset(self, config: SRConfig) -> torch.utils.data.Dataset:
        return sr_data.build_dataset(config.data, config.train.seed)

    def training_loss(self, net, batch, config: SRConfig, generator):
        loss = training_loss(net, spec_of(config), batch["image"], generator)
        return loss, {"mse": float(loss.detach())}

    def preview(self, net, config: SRConfig, device) -> np.ndarray:
        """Base: four samples; SR stage: held-out slices as low-resolution input | output | truth."""
        from ...preview import Window

        spec = spec_of(config)
        gen = torch.Generator(device=device).manual_seed(0)
        steps = min(20, spec.diffusion.sampling_steps)
        window = Window(level=0.0, width=2.0)
        if not spec.is_super_resolution:
            images = sample_stage(net, spec, 4, steps=steps, generator=gen)[:, 0].cpu().numpy()
            return window.to_uint8(np.concatenate(list(images), axis=1))
        truth = torch.stack([sr_data.PhantomSlices(config.data, seed=999)[i]["image"] for i in range(2)]).to(device)
        low = downsample_area(truth, 2)
        out = sample_stage(net, spec, 2, low=low, steps=steps, generator=gen)
        nearest = low.repeat_interleave(2, -1).repeat_interleave(2, -2)
        rows = [np.concatenate([nearest[i, 0].cpu().numpy(), out[i, 0].cpu().numpy(), truth[i, 0].cpu().numpy()], 1)
                for i in range(2)]
        return window.to_uint8(np.concatenate(rows, axis=0))

    def model_card(self, config: SRConfig) -> ModelCard:
        spec = spec_of(config)
        what = "base generator" if config.stage == "base" else f"{spec.low_size} -> {spec.size} px super-resolution"
        return ModelCard(
            name=config.name, task=NAME,
            description=f"SR cascade stage '{config.stage}': {what}, Swin bottleneck {'on' if config.swin.enabled else 'off'}",
            network=to_dict(config.network), diffusion=to_dict(config.diffusion),
            task_config={"stage": config.stage, "stages": {config.stage: stage_entry(spec)},
                         "intensity_window": list(config.data.intensity_window),
                         "pixel_mm": config.data.pixel_mm},
            training={"steps": config.train.steps, "batch_size": config.train.batch_size, "lr": config.train.lr,
                      "data": to_dict(config.data)},
        )


TASK = SRTask()
