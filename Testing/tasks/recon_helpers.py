"""Shared helpers for the recon tests: a tiny random-weight prior pair installed in a private MEDDIFF_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def install_tiny_recon_model(home: Path, name: str = "tiny-recon", modality: str = "ct", parameterization: str = "ve") -> str:
    from meddiffcore.models import save_model
    from meddiffcore.nets import UNetConfig
    from meddiffcore.tasks.recon.config import DataConfig, DiffusionConfig, ReconConfig
    from meddiffcore.tasks.recon.model import PriorPair
    from meddiffcore.tasks.recon.train import TASK

    torch.manual_seed(0)
    cfg = ReconConfig(name=name, network=UNetConfig(spatial_dims=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                                   middle_attention=False, norm_groups=4, attention_head_channels=8),
                      diffusion=DiffusionConfig(parameterization=parameterization), data=DataConfig(modality=modality, size=16))
    pair = PriorPair(cfg.network, cfg.diffusion)
    save_model(home / "models", TASK.model_card(cfg), pair.state_dict())
    return name


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A private MEDDIFF_HOME with the tiny CT and MRI prior pairs ``tiny-ct`` and ``tiny-mri``."""
    h = tmp_path / "home"
    monkeypatch.setenv("MEDDIFF_HOME", str(h))
    install_tiny_recon_model(h, "tiny-ct", "ct")
    install_tiny_recon_model(h, "tiny-mri", "mri")
    return h
