"""A cascade as one model: stage weights in one safetensors file with ``<stage>.`` key prefixes,
every stage's configuration in the card (``task_config["stages"]``).

A model exported by training holds one stage (unprefixed keys, ``task_config["stage"]``);
:func:`bundle_cascade` joins such stage models into one cascade model, and
:func:`load_stages` reads either kind.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...config import from_dict, to_dict
from ...errors import ModelError
from ...models import ModelCard, ModelFiles, load_model, save_model
from ...nets import UNet, UNetConfig
from .config import NAME, STAGES, SRDiffusionConfig, SwinConfig
from .model import StageSpec, build_stage_network


def stage_entry(spec: StageSpec) -> dict:
    """The card entry of one stage."""
    return {"size": spec.size, "low_size": spec.low_size, "network": to_dict(spec.network),
            "swin": to_dict(spec.swin), "diffusion": to_dict(spec.diffusion),
            "schedule": spec.diffusion.noise_schedule().to_dict()}


def spec_from_entry(stage: str, entry: dict) -> StageSpec:
    from ...checkpoints.mrnet import ARCHITECTURE as MRNET
    from ...nets.mrnet import MRNetUNetConfig

    network = entry["network"]
    config = MRNetUNetConfig.from_dict(network) if network.get("architecture") == MRNET else UNetConfig.from_dict(network)
    return StageSpec(stage=stage, size=int(entry["size"]), low_size=int(entry["low_size"]), network=config,
                     swin=from_dict(SwinConfig, entry["swin"], where=f"{stage}.swin"),
                     diffusion=from_dict(SRDiffusionConfig, entry["diffusion"], where=f"{stage}.diffusion"),
                     model_range=tuple(entry.get("model_range", (-1.0, 1.0))),
                     authors_sampler=entry.get("authors_sampler"))


def _card_stages(card: ModelCard) -> dict[str, dict]:
    stages = card.task_config.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ModelError(f"model '{card.name}' has no stage table in its card", "re-export it with MedDiff")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ModelError(f"model '{card.name}' names unknown stages {unknown}", f"stages are {', '.join(STAGES)}")
    return stages


def load_stages(ref: str | os.PathLike, device: torch.device) -> tuple[ModelCard, dict[str, tuple[StageSpec, UNet]]]:
    """All stages of an ``sr`` model, ordered base -> highest resolution, networks in eval mode on ``device``."""
    card, tensors = load_model(ref, task=NAME)
    stages = _card_stages(card)
    prefixed = card.task_config.get("bundled", False)
    out: dict[str, tuple[StageSpec, UNet]] = {}
    for stage in sorted(stages, key=STAGES.index):
        spec = spec_from_entry(stage, stages[stage])
        net = build_stage_network(spec)
        own = {k[len(stage) + 1:]: v for k, v in tensors.items() if k.startswith(stage + ".")} if prefixed else tensors
        try:
            net.load_state_dict(own)
        except RuntimeError as exc:
            raise ModelError(f"weights of stage '{stage}' of model '{card.name}' do not fit its network: {exc}",
                             "the card and weights belong to different models; export the model again") from exc
        out[stage] = (spec, net.to(device).eval())
    return card, out


def bundle_cascade(stage_models: list[str | os.PathLike], name: str, folder: str | os.PathLike,
                   description: str = "", metrics: dict | None = None,
                   sampling: dict | None = None) -> ModelFiles:
    """Join single-stage models (names or paths) into one cascade model ``folder/name.*``.

    Keys become ``<stage>.<key>``; the card keeps each stage's configuration and training record.
    ``sampling`` (e.g. ``{"sampler": "ancestral", "sampling_steps": 50}``) replaces the sampling
    defaults of every stage (they do not affect the weights).
    """
    tensors: dict[str, torch.Tensor] = {}
    stages: dict[str, dict] = {}
    training: dict[str, dict] = {}
    window = None
    pixel_mm = None
    for ref in stage_models:
        card, weights = load_model(ref, task=NAME)
        for stage, entry in _card_stages(card).items():
            if stage in stages:
                raise ModelError(f"stage '{stage}' appears twice", "pass one model per stage")
            if sampling:
                entry = {**entry, "diffusion": {**entry["diffusion"], **sampling}}
                from_dict(SRDiffusionConfig, entry["diffusion"], where=f"{stage}.diffusion")
            stages[stage] = entry
            training[stage] = card.training
            prefix = "" if card.task_config.get("bundled", False) else f"{stage}."
            tensors.update({prefix + k: v for k, v in weights.items()})
        window = window or card.task_config["intensity_window"]
        if "pixel_mm" in card.task_config and card.task_config.get("stage") == "base":
            pixel_mm = card.task_config["pixel_mm"]
    order = sorted(stages, key=STAGES.index)
    sizes = [stages[s]["size"] for s in order]
    for below, above in zip(order, order[1:]):
        if stages[above]["low_size"] != stages[below]["size"]:
            raise ModelError(f"stage '{above}' expects {stages[above]['low_size']} px input but '{below}' makes "
                             f"{stages[below]['size']} px", "bundle stages trained for consecutive sizes")
    card = ModelCard(
        name=name, task=NAME,
        description=description or f"SR cascade {' -> '.join(map(str, sizes))} px ({', '.join(order)})",
        network={s: stages[s]["network"] for s in order},
        diffusion={s: stages[s]["diffusion"] for s in order},
        task_config={"bundled": True, "stages": {s: stages[s] for s in order}, "intensity_window": window,
                     "pixel_mm": pixel_mm or 1.0},
        training=training, metrics=metrics or {},
    )
    return save_model(Path(folder), card, tensors)
