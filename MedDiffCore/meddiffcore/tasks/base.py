"""What a task provides to the shared training loop.

A task (ctca, ctp, recon, wdm, sr, ...) owns its config dataclass, how to build
its network, its dataset and conditioning, its loss, a preview for the training
log, and the model card it exports. The training loop is the same for all.
Tasks share the diffusion core and the nets; they never import each other.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..models import ModelCard

#: Task name -> "module:attribute" of an object implementing :class:`TrainableTask`.
TRAINABLE_TASKS: dict[str, str] = {
    "wdm": "meddiffcore.tasks.wdm.train:TASK",
    "sr": "meddiffcore.tasks.sr.train:TASK",
    "ctp": "meddiffcore.tasks.ctp.train:TASK",
    "uncond": "meddiffcore.tasks.uncond:TASK",
    "ctca": "meddiffcore.tasks.ctca.train:TASK",
    "recon": "meddiffcore.tasks.recon.train:TASK",
}


class TrainableTask(Protocol):
    """The training-time face of a task."""

    name: str
    config_class: type
    """A dataclass with at least ``name: str`` and ``train: TrainConfig`` fields."""

    def build_network(self, config: Any) -> torch.nn.Module: ...

    def build_dataset(self, config: Any) -> torch.utils.data.Dataset:
        """Items are dicts of tensors (no batch axis); the loop batches them."""

    def training_loss(self, net: torch.nn.Module, batch: dict[str, torch.Tensor], config: Any,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise, and named terms for the metrics log."""

    def preview(self, net: torch.nn.Module, config: Any, device: torch.device) -> np.ndarray:
        """A uint8 image showing what the (EMA) network currently produces."""

    def model_card(self, config: Any) -> ModelCard:
        """The card of an exported model (weights and checksum are filled in on save)."""


def trainable_task(name: str) -> TrainableTask:
    if name not in TRAINABLE_TASKS:
        raise ConfigError(f"unknown task '{name}' in the config", f"known tasks: {', '.join(sorted(TRAINABLE_TASKS))}")
    module_name, attr = TRAINABLE_TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)
