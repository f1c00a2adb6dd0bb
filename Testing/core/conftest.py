"""Fixtures shared by the engine tests: a private MEDDIFF_HOME and a tiny real model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture()
def meddiff_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "meddiff_home"
    monkeypatch.setenv("MEDDIFF_HOME", str(home))
    return home


@pytest.fixture()
def tiny_uncond_model(meddiff_home) -> str:
    """A random-weight 3D ``uncond`` model installed in the private MEDDIFF_HOME; returns its name."""
    from meddiffcore.config import to_dict
    from meddiffcore.models import ModelCard, save_model, user_model_dir
    from meddiffcore.nets import UNet, UNetConfig
    from meddiffcore.tasks.uncond import DiffusionConfig

    torch.manual_seed(0)
    config = UNetConfig(spatial_dims=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                        attention_levels=(), middle_attention=False)
    net = UNet(config)
    card = ModelCard(name="tiny-uncond", task="uncond", network=config.to_dict(),
                     diffusion=to_dict(DiffusionConfig(sampling_steps=4)),
                     task_config={"size": [8, 16, 16], "intensity_window": [-1000.0, 1000.0]})
    save_model(user_model_dir(), card, net.state_dict())
    return "tiny-uncond"


def run_module(module: str, *args: str, env_home: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a real process with the test's MEDDIFF_HOME."""
    env = dict(os.environ)
    if env_home is not None:
        env["MEDDIFF_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=env)
