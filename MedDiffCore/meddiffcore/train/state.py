"""Saving and resuming a training run without pickles.

The run state (network, EMA, optimiser moments, grad scaler, step) is split into
tensors, stored with safetensors, and a JSON file for the small structured rest
(optimiser hyper-parameters, step, config), so a resume never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state as flat tensors plus JSON-safe structure."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(folder: Path, *, net: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler_state: dict[str, Any] | None, step: int, extra: dict[str, Any]) -> None:
    """Write the run state atomically (tensors first, then the JSON that points at them)."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()})
    with atomic_output(folder / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    meta = {"step": step, "optimizer": opt_meta, "grad_scaler": scaler_state, **extra}
    with atomic_output(folder / STATE_JSON) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_state(folder: Path, *, net: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device) -> dict[str, Any]:
    """Restore a run state written by :func:`save_state`; returns the JSON part (step, scaler, ...)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / STATE_TENSORS), device=str(device))
    meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    return meta


def has_state(folder: Path) -> bool:
    return (folder / STATE_TENSORS).is_file() and (folder / STATE_JSON).is_file()
