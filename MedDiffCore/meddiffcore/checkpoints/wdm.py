"""WDM and cWDM checkpoints (Friedrich et al., DGM4MICCAI 2024 / cWDM 2024) as MedDiff ``wdm`` models.

The released files are ``torch.save(model.state_dict())`` of guided-diffusion's
``UNetModel`` with WDM's flags: a flat dict of fp32 tensors, no prefix, no EMA (the
release is the raw weights at 1.2 M iterations). MedDiff's :class:`~meddiffcore.nets.UNet`
has the same layout under other names, so importing renames every key
(:func:`reference_key`) after checking that the file holds exactly the tensors of
the configured network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..config import to_dict
from ..errors import ConfigError
from ..models import ModelCard
from ..nets import UNet, UNetConfig
from ..tasks.wdm.config import WDMDiffusionConfig, wdm_network
from .container import check_tensors, load_container, require_mapping

WDM_PAPER = ("Friedrich, Wolleb, Bieder, Durrer, Cattin. WDM: 3D Wavelet Diffusion Models for High-Resolution "
             "Medical Image Synthesis. MICCAI Workshop on Deep Generative Models 2024 (arXiv:2402.19043)")
CWDM_PAPER = ("Friedrich, Durrer, Wolleb, Cattin. cWDM: Conditional Wavelet Diffusion Models for Cross-Modality "
              "3D Medical Image Synthesis. arXiv:2411.17203 (2024)")
WDM_CODE = "https://github.com/pfriedri/wdm-3d (a93a7ef)"
CWDM_CODE = "https://github.com/pfriedri/cwdm (1e4a1e5)"

#: cWDM's contrasts; a model synthesises one from the other three, given in this order.
BRATS_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")

#: The seed's sampler: 1000 ancestral steps over every training step, variance beta_t (guided-diffusion's
#: "fixedlarge"), x0 clipped through the image. ``meddiff generate --sampler authors`` runs it.
AUTHORS_SAMPLER = {"sampler": "ancestral", "steps": 1000, "spacing": "uniform", "variance": "large"}

#: What imported models sample with by default: DPM-Solver++(2M) in 50 network evaluations.
FAST_SAMPLER = {"sampler": "dpmpp_2m", "steps": 50}


@dataclass(frozen=True)
class WDMRelease:
    """One released WDM/cWDM model: what it was trained on and the conventions it needs."""

    name: str
    conditional: bool
    description: str
    file_name: str
    task_config: dict[str, Any]


def _brats_cwdm(target: str) -> WDMRelease:
    sources = [c for c in BRATS_CONTRASTS if c != target]
    return WDMRelease(
        name=f"cwdm-{target}", conditional=True, file_name=f"the {target} generator of huggingface.co/pfriedri/cwdm",
        description=f"cWDM BraTS 2023: synthesises the missing {target} from {', '.join(sources)} "
                    "(224x224x160 at 1 mm; authors' released weights)",
        task_config={
            "size": [160, 224, 224],
            "spacing_mm": [1.0, 1.0, 1.0],
            "conditional": True,
            "conditions": sources,
            "target": target,
            "intensity_window": [0.0, 1.0],
            "network_axes": "xyz",
            "input": {"normalise": "quantile_minmax", "quantiles": [0.001, 0.999]},
            "placement": {"z": "start", "y": "centre", "x": "centre"},
            "output": {"zero_below": 0.04, "unit": "normalised [0, 1] (per-volume min-max of the target contrast)"},
        })


def _unconditional(name: str, file_name: str, data: str, preparation: str) -> WDMRelease:
    return WDMRelease(
        name=name, conditional=False, file_name=file_name,
        description=f"WDM {data}, unconditional 128^3 at 2 mm (authors' released weights, 1.2 M iterations)",
        task_config={"size": [128, 128, 128], "spacing_mm": [2.0, 2.0, 2.0], "conditional": False,
                     "intensity_window": [0.0, 1.0], "network_axes": "xyz",
                     "output": {"unit": f"normalised [0, 1]: {preparation}"}})


#: Released models by format and variant.
RELEASES: dict[str, dict[str, WDMRelease]] = {
    "wdm": {
        "brats": _unconditional("wdm-brats", "brats_unet_128_1200k.pt", "BraTS 2023 T1 (t1n)",
                                "the authors' per-volume clip to the 0.1-99.9 % quantiles and min-max; 240x240x155 "
                                "BraTS volumes zero-padded to 256^3 and average-pooled 2x"),
        "lidc": _unconditional("wdm-lidc", "lidc-idri_unet_128_1200k.pt", "LIDC-IDRI chest CT",
                               "HU clipped to [-1000, 99.9th percentile of each volume] and min-max scaled, so not "
                               "HU; 1 mm resampled, centre-cropped 256^3, average-pooled 2x"),
    },
    "cwdm": {c: _brats_cwdm(c) for c in BRATS_CONTRASTS},
}


def released_network(conditional: bool) -> UNetConfig:
    """WDM's ``ours_unet_128`` (57.9 M parameters) or cWDM's generator (concatenated skips, 3 condition
    volumes; 81.5 M)."""
    if conditional:
        return wdm_network(128, conditional_volumes=3, skip_mode="concat")
    return wdm_network(128)


_RES_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb.1": "emb_layers.1", "norm2": "out_layers.0",
              "conv2": "out_layers.3", "skip": "skip_connection"}
_BLOCK = re.compile(r"(down_blocks|middle|up_blocks)\.(\d+)\.(?:(\d+)\.)?(.*)")


def reference_key(key: str) -> str:
    """guided-diffusion's name of :class:`~meddiffcore.nets.UNet` state key ``key``
    (``down_blocks.3.0.conv1.weight`` -> ``input_blocks.4.0.in_layers.2.weight``)."""
    if key.startswith("input_conv."):
        return "input_blocks.0.0." + key[len("input_conv."):]
    match = _BLOCK.fullmatch(key)
    if not match:
        return key  # time_embed.*, out.*
    group, index, inner, rest = match.groups()
    for ours, theirs in _RES_NAMES.items():
        if rest.startswith(ours + "."):
            rest = theirs + rest[len(ours):]
            break
    if group == "middle":  # middle is one sequence: middle.<j>.<rest>
        return f"middle_block.{index}.{rest}" if inner is None else f"middle_block.{index}.{inner}.{rest}"
    if group == "down_blocks":
        return f"input_blocks.{int(index) + 1}.{inner}.{rest}"
    return f"output_blocks.{index}.{inner}.{rest}"


def convert_state(state: Mapping[str, Any], network: UNetConfig, path: str | Path) -> dict[str, Tensor]:
    """MedDiff UNet tensors from a guided-diffusion state dict, after checking every key and shape."""
    if network.attention_levels or network.middle_attention:
        raise ConfigError("importing guided-diffusion attention layers is not supported",
                          "WDM and cWDM have none: leave attention_levels empty and middle_attention false")
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        ours = {k: tuple(v.shape) for k, v in UNet(network).state_dict().items()}
    names = {k: reference_key(k) for k in ours}
    check_tensors({names[k]: shape for k, shape in ours.items()}, state, path, "this WDM UNet")
    return {k: state[names[k]].float().contiguous() for k in ours}


def build_card(release: WDMRelease, network: UNetConfig, name: str, source: dict[str, Any]) -> ModelCard:
    """The model card of an imported release (its sha256 is filled in when the model is written)."""
    diffusion = WDMDiffusionConfig(
        num_timesteps=1000, lll_scale=1.0 / 3.0, clip=True,
        clip_range=(0.0, 1.0) if release.conditional else (-1.0, 1.0),
        sampler=FAST_SAMPLER["sampler"], sampling_steps=FAST_SAMPLER["steps"], variance=AUTHORS_SAMPLER["variance"])
    conventions = {
        "parameterisation": "x0 (the network predicts the clean subbands)",
        "time_input": "integer training step t in [0, 999]",
        "schedule": "linear betas 1e-4 .. 0.02, T = 1000",
        "wavelet": "orthonormal 3D Haar, subbands LLL..HHH as channels, LLL divided by 3",
        "clipping": "each x0 estimate: inverse DWT, clamp to [0, 1] (cWDM) or [-1, 1] (WDM), DWT",
        "model_range": list(diffusion.clip_range),
        "axes": "network (D, H, W) = NIfTI voxel axes (i, j, k) = MedDiff (x, y, z)",
    }
    return ModelCard(
        name=name, task="wdm", description=release.description,
        network=network.to_dict(), diffusion=to_dict(diffusion),
        task_config={**release.task_config, "schedule": diffusion.noise_schedule().to_dict(),
                     "conventions": conventions, "authors_sampler": dict(AUTHORS_SAMPLER)},
        training={"paper": CWDM_PAPER if release.conditional else WDM_PAPER,
                  "code": CWDM_CODE if release.conditional else WDM_CODE, "released_as": release.file_name,
                  "iterations": 1_200_000, "weights": "raw (the release has no EMA)", **source},
        requirements={} if release.conditional else {"gpu_memory_reported": "2.55 GB for sampling at 128^3 (paper)"},
    )


def import_files(fmt: str, paths: list[Path], variant: str, name: str | None, overrides: Mapping[str, Any],
                 source: dict[str, Any]) -> tuple[ModelCard, dict[str, Tensor]]:
    """(card, tensors) of one WDM (``fmt="wdm"``) or cWDM (``"cwdm"``) checkpoint file."""
    if len(paths) != 1:
        raise ConfigError(f"a {fmt} model is one file, got {len(paths)}", "give the one .pt file")
    release = RELEASES[fmt][variant]
    network = UNetConfig.from_dict({**released_network(release.conditional).to_dict(), **overrides})
    state = require_mapping(load_container(paths[0]), "the file", paths[0])
    tensors = convert_state(state, network, paths[0])
    return build_card(release, network, name or release.name, source), tensors
