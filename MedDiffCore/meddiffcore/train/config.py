"""The training settings every task shares (the ``[train]`` section of a config file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Optimiser, precision, EMA and bookkeeping for one training run."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    """Use decay min(ema_decay, (1 + n) / (10 + n)) so short runs still get a useful EMA."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float = 1.0
    log_every: int = 10
    preview_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    out_dir: str = "runs/model"
    num_workers: int = 0
    device: str = "auto"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("train.steps must be at least 1")
        if self.batch_size < 1:
            raise ValueError("train.batch_size must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("train.ema_decay must be in [0, 1)")
