"""The training face of the CTP task (``python -m meddiffcore.train CONFIG.toml`` with ``task = "ctp"``)."""

from __future__ import annotations

import numpy as np
import torch

from meddiffcore.config import to_dict
from meddiffcore.models import ModelCard
from meddiffcore.nets import UNet

from .config import (LOCAL_CONTEXT_SCALE_S, MAX_GAP_S, NAME, PHASES, SLAB_SLICES, WINDOW_LEVEL_HU, WINDOW_WIDTH_HU,
                     CTPConfig)
from .data import CTPTupleDataset
from .model import build_network, check_network, residual_loss


class CTPTask:
    """:class:`~meddiffcore.tasks.base.TrainableTask` of CTP temporal inpainting."""

    name = NAME
    config_class = CTPConfig

    def build_network(self, config: CTPConfig) -> torch.nn.Module:
        check_network(config.network)
        return UNet(config.network)

    def network_from_card(self, card: ModelCard) -> torch.nn.Module:
        """The network whose tensors a model of this task holds, from its card (for the model checks): the same
        builder inference uses, so an imported release (the authors' UNet) is checked against its own layout."""
        return build_network(card.network)

    def build_dataset(self, config: CTPConfig) -> torch.utils.data.Dataset:
        return CTPTupleDataset(config.data, config.diffusion.peak_margin_s, seed=config.train.seed)

    def training_loss(self, net, batch, config: CTPConfig, generator):
        return residual_loss(net, batch, config.diffusion, generator)

    def preview(self, net, config: CTPConfig, device) -> np.ndarray:
        """Middle slice of [left, truth, mean, sample, right] for four fixed training tuples."""
        from meddiffcore.preview import Window, montage

        from .inpaint import estimate_frames

        data = CTPTupleDataset(config.data.__class__(**{**to_dict(config.data), "phantoms": 1}),
                               config.diffusion.peak_margin_s, seed=12345)
        items = [data[k] for k in range(4)]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        d = config.diffusion
        with torch.no_grad():
            frames = [estimate_frames(net, d, batch["known"], batch["context"], batch["weight"], estimate=estimate,
                                      sampler=d.sampler, steps=d.sampling_steps,
                                      generator=torch.Generator(device=device).manual_seed(0))
                      for estimate in ("mean", "sample")]
        z = batch["target"].shape[2] // 2
        window = Window(level=0.0, width=2.0)
        rows = []
        for b in range(4):
            tiles = [batch["known"][b, 0, z], batch["target"][b, 0, z], frames[0][b, 0, z], frames[1][b, 0, z],
                     batch["known"][b, 1, z]]
            rows.append(np.concatenate([window.to_uint8(np.kron(t.float().cpu().numpy(), np.ones((2, 2)))) for t in tiles], axis=1))
        return montage(rows)

    def model_card(self, config: CTPConfig) -> ModelCard:
        return ModelCard(
            name=config.name,
            task=NAME,
            description=("CTP temporal inpainting (conditional diffusion over 8-slice slabs): synthesizes a frame between "
                         "two known frames up to 8 s apart; trained on procedural brain perfusion phantoms"),
            network=to_dict(config.network),
            diffusion=to_dict(config.diffusion),
            task_config={
                "window_level_hu": WINDOW_LEVEL_HU,
                "window_width_hu": WINDOW_WIDTH_HU,
                "slab_slices": SLAB_SLICES,
                "max_gap_s": MAX_GAP_S,
                "local_context": f"((t - t_left - 1) / {LOCAL_CONTEXT_SCALE_S:g}, (t_right - t - 1) / {LOCAL_CONTEXT_SCALE_S:g})",
                "global_context": f"one-hot {list(PHASES)} relative to the bolus peak (argmax of the mean tissue "
                                  f"intensity of the known frames), peak = within {config.diffusion.peak_margin_s:g} s",
                "tissue_mask": "voxels whose first known frame lies inside the window (at inference: within a quarter of "
                               "its width of it); elsewhere linear interpolation",
                "diffusion_variable": f"{config.diffusion.residual_scale:g} x (frame - linear interpolation of the known "
                                      "frames), in window units",
                "training_data": to_dict(config.data),
            },
        )


TASK = CTPTask()
