"""The MRNet knee-MRI cascade (alanvinuv, transformer-enhanced DDPM) as one MedDiff ``sr`` model.

Each released ``*_checkpoint.pth`` is ``{'epoch', 'model_state_dict'}``, the state dict
of the authors' ``DDPM`` / ``SuperResDDPM`` wrapper: the UNet under ``model.``
(with BatchNorm running statistics and the Swin's integer position index) and the
schedule tables ``betas, alphas, alphas_cumprod, sqrt_alphas_cumprod,
sqrt_one_minus_alphas_cumprod`` beside it. There is no EMA. T is read from the
length of ``betas`` (the pipeline builds the SR stages with T = 1000, but the
128 -> 256 notebook trains with 2000, so a fixed T could be wrong), and the table
is checked to be the authors' linear 0.00085 .. 0.012.

The three stages (64^2 generator, 64 -> 128, 128 -> 256) become one cascade model
(weights prefixed ``base.``, ``sr128.``, ``sr256.``); the single-stage 256^2
generator a cascade of one base stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import ConfigError, ModelError
from ..models import ModelCard
from ..nets.mrnet import MRNetUNet, MRNetUNetConfig, reference_key
from .container import check_tensors, load_container, require_mapping

PAPER = ("Alan Varghese Vinu. High-Quality Medical Image Synthesis Using Transformer-Enhanced Denoising Diffusion "
         "Models (project repository; trained on MRNet, Bien et al., PLoS Medicine 2018)")
CODE = "https://github.com/alanvinuv/High-Quality-Medical-Image-Synthesis-using-Transformer-Enhanced-DDPM- (3eec13b)"
PREFIX = "model."
SCHEDULE_TABLES = ("betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
BETA_START, BETA_END = 0.00085, 0.012

#: ``architecture`` of an MRNet stage network in a card (tasks/sr builds :class:`MRNetUNet` for it).
ARCHITECTURE = "mrnet_unet"

#: The authors' sampler: ancestral over every training step, variance beta_t, no clipping.
AUTHORS_SAMPLER = {"sampler": "ancestral", "variance": "large", "clip": False}
#: The MRNet PNG slices record no pixel size: the 256^2 output is given this nominal pixel (mm).
NOMINAL_PIXEL_MM = 1.0
#: What imported stages sample with by default.
FAST_SAMPLER = {"sampler": "dpmpp_2m", "sampling_steps": 50}


def stage_network(stage: str, size: int, swin: bool) -> MRNetUNetConfig:
    """The authors' network of one stage: the base generator with SAGAN + attention gates (the 64^2 one),
    the SR stages (and the single-stage 256^2 generator) without."""
    gated = stage == "base" and size == 64
    return MRNetUNetConfig(image_size=size, in_channels=1 if stage == "base" else 2, self_attention=gated,
                           attention_gates=gated, swin=swin)


@dataclass(frozen=True)
class MRNetRelease:
    name: str
    description: str
    files: tuple[str, ...]
    stages: tuple[tuple[str, int], ...]  # (stage, size)
    swin: bool


RELEASES: dict[str, MRNetRelease] = {
    "swin": MRNetRelease(
        "sr-mrnet", "MRNet knee MRI cascade 64 -> 128 -> 256 px with Swin bottlenecks (authors' released weights)",
        ("swinddpm64RAW_checkpoint.pth", "cascadedddpm64200epochs_checkpoint.pth",
         "cascadedddpm128(225epoch)_checkpoint.pth"), (("base", 64), ("sr128", 128), ("sr256", 256)), True),
    "noswin": MRNetRelease(
        "sr-mrnet-noswin", "MRNet knee MRI cascade 64 -> 128 -> 256 px without Swin (authors' released weights)",
        ("ddpm64NOSWIN_checkpoint.pth", "cascadedddpm64NOSWIN(100epoch)_checkpoint.pth",
         "cascadedddpm128NOSWIN_checkpoint.pth"), (("base", 64), ("sr128", 128), ("sr256", 256)), False),
    "swin256": MRNetRelease(
        "sr-mrnet-256", "MRNet knee MRI single-stage 256 px generator with a Swin bottleneck (authors' weights)",
        ("DDPM_256x256/swinddpm256_MRNet_checkpoint.pth",), (("base", 256),), True),
}


def guess_variant(paths: list[Path]) -> str | None:
    """The release the file names say: NOSWIN in a name, one 256 file, else the Swin cascade."""
    names = [p.name.lower() for p in paths]
    if any("noswin" in n for n in names):
        return "noswin"
    if len(paths) == 1 and "256" in names[0]:
        return "swin256"
    if len(paths) == 3:
        return "swin"
    return None


def read_schedule(state: Mapping[str, Any], path: str | Path) -> int:
    """T of a stage file's linear 0.00085 .. 0.012 beta table, or a ModelError."""
    betas = state.get("betas")
    if not isinstance(betas, Tensor) or betas.ndim != 1 or betas.numel() < 2:
        raise ModelError(f"'{path}': 'model_state_dict' has no beta table ('betas')",
                         "is this one of the authors' Model_Savepoints/*_checkpoint.pth files?")
    n = betas.numel()
    expect = torch.linspace(BETA_START, BETA_END, n)
    if (betas.float() - expect).abs().max() > 1e-6:
        raise ModelError(f"'{path}': the beta table is not the authors' linear {BETA_START} .. {BETA_END} "
                         f"({float(betas[0]):g} .. {float(betas[-1]):g})", "only the released schedule imports")
    ab = state.get("alphas_cumprod")
    if isinstance(ab, Tensor) and (ab.shape != betas.shape
                                   or (ab.double() - torch.cumprod(1 - expect.double(), 0)).abs().max() > 1e-4):
        raise ModelError(f"'{path}': alphas_cumprod does not follow from the betas",
                         "the file is damaged or was edited; download it again")
    return n


def read_stage(path: Path, network: MRNetUNetConfig, stage: str) -> tuple[dict[str, Tensor], int, dict[str, Any]]:
    """(MedDiff tensors of one stage, its T, facts for the card) of one checkpoint file."""
    container = require_mapping(load_container(path), "the file", path, ("model_state_dict",))
    state = require_mapping(container["model_state_dict"], "'model_state_dict'", path)
    tensors, steps = convert_stage(state, network, stage, path)
    epoch = container.get("epoch")
    return tensors, steps, {"epoch": int(epoch) if isinstance(epoch, int) else None}


def convert_stage(state: Mapping[str, Any], network: MRNetUNetConfig, stage: str,
                  path: str | Path) -> tuple[dict[str, Tensor], int]:
    """MedDiff tensors of one stage and its T from the wrapper's state dict, after checking every key, shape
    and the Swin's position index."""
    unet = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    unet.update({k: v for k, v in state.items() if not k.startswith(PREFIX) and k not in SCHEDULE_TABLES})
    net = MRNetUNet(network)
    ours = net.state_dict()
    names = {k: reference_key(k) for k in ours}
    floats = {names[k]: tuple(v.shape) for k, v in ours.items() if v.is_floating_point()}
    index_key = "swin_block.attn.relative_position_index"
    ints = [names[k] for k, v in ours.items() if not v.is_floating_point()] + ([index_key] if network.swin else [])
    what = f"this MRNet {stage} UNet ({network.image_size}^2{', Swin' if network.swin else ', no Swin'})"
    check_tensors(floats, {k: v for k, v in unet.items() if k not in ints}, f"{path}: 'model_state_dict'", what)
    for key in ints:
        value = unet.get(key)
        if not isinstance(value, Tensor) or value.is_floating_point():
            raise ModelError(f"'{path}': 'model_state_dict' lacks the integer buffer model.{key} of {what}",
                             "is this the right file for this stage?")
    if network.swin and not torch.equal(unet[index_key], net.swin_block.attn.bias_index.cpu()):
        raise ModelError(f"'{path}': the Swin relative position index is not the standard {network.swin_window}x"
                         f"{network.swin_window} one", "the file was not written by the authors' code")
    tensors = {k: (unet[names[k]].float() if v.is_floating_point() else unet[names[k]]).contiguous()
               for k, v in ours.items()}
    return tensors, read_schedule(state, path)


def stage_entry(stage: str, size: int, network: MRNetUNetConfig, steps: int) -> dict[str, Any]:
    """The card entry of one imported stage (the layout tasks/sr reads)."""
    from ..config import to_dict
    from ..tasks.sr.config import SRDiffusionConfig, SwinConfig

    diffusion = SRDiffusionConfig(num_timesteps=steps, beta_start=BETA_START, beta_end=BETA_END, prediction="eps",
                                  **FAST_SAMPLER)
    return {"size": size, "low_size": 0 if stage == "base" else size // 2,
            "network": {"architecture": ARCHITECTURE, **network.to_dict()},
            "swin": to_dict(SwinConfig(enabled=network.swin, window=network.swin_window, heads=network.swin_heads,
                                       depth=1)),
            "diffusion": to_dict(diffusion), "schedule": diffusion.noise_schedule().to_dict(),
            "model_range": [0.0, 1.0], "authors_sampler": {**AUTHORS_SAMPLER, "steps": steps}}


def import_files(fmt: str, paths: list[Path], variant: str, name: str | None, overrides: Mapping[str, Any],
                 source: dict[str, Any]) -> tuple[ModelCard, dict[str, Tensor]]:
    """(card, tensors) of an MRNet release: ``paths`` = the base, 64->128 and 128->256 checkpoints (one file
    for ``swin256``)."""
    release = RELEASES[variant]
    if len(paths) != len(release.stages):
        raise ConfigError(f"the MRNet '{variant}' release is {len(release.stages)} file(s), got {len(paths)}",
                          f"give, in this order: {' '.join(release.files)}")
    tensors: dict[str, Tensor] = {}
    stages: dict[str, dict] = {}
    facts: dict[str, Any] = {}
    for path, (stage, size) in zip(paths, release.stages):
        network = MRNetUNetConfig.from_dict({**stage_network(stage, size, release.swin).to_dict(), **overrides})
        own, steps, info = read_stage(path, network, stage)
        tensors.update({f"{stage}.{k}": v for k, v in own.items()})
        stages[stage] = stage_entry(stage, size, network, steps)
        facts[stage] = {"num_timesteps": steps, **info}
    conventions = {
        "parameterisation": "eps, DDPM linear betas 0.00085 .. 0.012 (torch.linspace, float32), T read per file",
        "time_input": "integer step t as 128 sinusoidal channels tiled over the image (sin first, 1e4^(-i/63))",
        "data_range": "[0, 1] (PNG slices per-slice min-max to 8 bit, ToTensor); no [-1, 1] mapping, no clipping",
        "conditioning": "SR stages: input [z_t, bilinear x2 of the low-resolution image (align_corners False)]",
        "swin": "the authors' token layout (bottleneck viewed as (B, H*W, C) without permuting), kept because the "
                "weights were trained with it",
        "sizes": "native only: " + ", ".join(f"{s} {n}^2" for s, n in release.stages),
        "pixel": f"nominal {NOMINAL_PIXEL_MM:g} mm at 256^2 (the PNG slices record none)",
        "sampling": "MedDiff's fast samplers clamp each x0 estimate to [0, 1]; --sampler authors does not",
    }
    card = ModelCard(
        name=name or release.name, task="sr", description=release.description,
        network={s: stages[s]["network"] for s in stages}, diffusion={s: stages[s]["diffusion"] for s in stages},
        task_config={"bundled": True, "stages": stages, "intensity_window": [0.0, 1.0], "model_range": [0.0, 1.0],
                     "native_sizes": True, "pixel_mm": 256.0 / release.stages[0][1] * NOMINAL_PIXEL_MM,
                     "conventions": conventions},
        training={"paper": PAPER, "code": CODE, "released_as": list(release.files),
                  "weights": "raw (the code keeps no EMA)", "stages": facts, **source},
    )
    return card, tensors
