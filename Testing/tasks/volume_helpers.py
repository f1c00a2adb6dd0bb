"""Shared helpers for the WDM and SR-cascade tests: tiny random-weight models in a private MEDDIFF_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def wdm_config(name: str = "tiny-wdm", size=(16, 16, 16), conditional: bool = False):
    from meddiffcore.nets import UNetConfig
    from meddiffcore.tasks.wdm.config import WDMConfig, WDMDataConfig, WDMDiffusionConfig

    network = UNetConfig(spatial_dims=3, in_channels=8, out_channels=8, cond_channels=8 if conditional else 0,
                         base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                         middle_attention=False, skip_mode="add", norm_groups=4)
    return WDMConfig(name=name, network=network, diffusion=WDMDiffusionConfig(sampling_steps=3),
                     data=WDMDataConfig(size=tuple(size), num_items=4, conditional=conditional,
                                        spacing_mm=(2.0, 2.0, 2.0)))


def install_tiny_wdm(home: Path, name: str = "tiny-wdm", conditional: bool = False, loud: bool = True) -> str:
    """A random-weight WDM model; ``loud`` gives the output conv random weights so x0 estimates are far out of range."""
    from meddiffcore.models import save_model
    from meddiffcore.tasks.wdm.train import TASK

    torch.manual_seed(0)
    config = wdm_config(name, conditional=conditional)
    net = TASK.build_network(config)
    if loud:
        torch.nn.init.normal_(net.out[-1].weight, std=2.0)
    save_model(home / "models", TASK.model_card(config), net.state_dict())
    return name


def sr_stage_config(stage: str, size: int, noise_augmentation: float = 0.0):
    from meddiffcore.nets import UNetConfig
    from meddiffcore.tasks.sr.config import SRConfig, SRDataConfig, SRDiffusionConfig, SwinConfig

    sr = stage != "base"
    network = UNetConfig(spatial_dims=2, in_channels=1, out_channels=1, cond_channels=1 if sr else 0,
                         embedding_channels=1 if sr and noise_augmentation > 0 else 0, base_channels=8,
                         channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), middle_attention=False,
                         norm_groups=4)
    return SRConfig(name=f"tiny-sr-{stage}", stage=stage, network=network, swin=SwinConfig(window=4, heads=2),
                    diffusion=SRDiffusionConfig(sampling_steps=2, noise_augmentation=noise_augmentation),
                    data=SRDataConfig(size=size, num_items=4, pixel_mm=2.0))


def install_tiny_sr_cascade(home: Path, name: str = "tiny-sr", sizes=(8, 16, 32)) -> str:
    """Random-weight base (sizes[0]) and two 2x stages bundled as one cascade model."""
    from meddiffcore.models import save_model
    from meddiffcore.tasks.sr.cascade import bundle_cascade
    from meddiffcore.tasks.sr.train import TASK

    torch.manual_seed(0)
    stage_dir = home / "stages"
    refs = []
    for stage, size, aug in zip(("base", "sr128", "sr256"), sizes, (0.0, 0.0, 0.1)):
        config = sr_stage_config(stage, size, aug)
        files = save_model(stage_dir, TASK.model_card(config), TASK.build_network(config).state_dict())
        refs.append(str(files.card_path))
    bundle_cascade(refs, name, home / "models")
    return name


def run_cli(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m meddiffcore.cli ARGS`` as a real process with MEDDIFF_HOME=home, one thread."""
    env = dict(os.environ, MEDDIFF_HOME=str(home), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "meddiffcore.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
