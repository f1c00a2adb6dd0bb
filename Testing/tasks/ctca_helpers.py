"""Shared helpers of the CTCA tests: tiny random-weight models saved like real ones."""

from __future__ import annotations

from pathlib import Path

import torch

from meddiffcore.models import save_model
from meddiffcore.nets import UNetConfig
from meddiffcore.tasks.ctca.config import CTCAConfig, DataConfig
from meddiffcore.tasks.ctca.model import build_network, cond_channels, model_card


def tiny_config(name: str = "ctca-tiny", stage: str = "lr", shape=(32, 32, 32), spacing_mm: float = 4.0,
                crop=None) -> CTCAConfig:
    net = UNetConfig(spatial_dims=3, in_channels=1, out_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_levels=(), middle_attention=False, norm_groups=4, spade_channels=cond_channels(stage),
                     spade_hidden=8)
    return CTCAConfig(name=name, stage=stage, network=net,
                      data=DataConfig(shape=shape, spacing_mm=spacing_mm, crop=crop, num_phantoms=4))


def save_tiny_model(folder: Path, name: str = "ctca-tiny", stage: str = "lr", seed: int = 0, **kwargs) -> Path:
    """A random-weight CTCA model (output layer perturbed so it is not all zeros) saved as NAME.safetensors + NAME.json."""
    config = tiny_config(name, stage, **kwargs)
    torch.manual_seed(seed)
    net = build_network(config)
    with torch.no_grad():  # zero-initialised layers would hide the conditioning: give them small random weights
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    files = save_model(folder, model_card(config), net.state_dict())
    return files.card_path
