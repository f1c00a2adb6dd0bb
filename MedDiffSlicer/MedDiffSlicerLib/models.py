"""Installed models and their cards, asked of the engine (``meddiff models list --json``), and model import.

Import copies a model file into the user's model folder through the engine,
which checks the weights against the sha256 in the card first, so an offline
site can bring a model on a USB stick and a corrupt copy is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .engine import EngineCommandError, run_engine_command


def list_models(task: str | None = None, python: Sequence[str] | None = None,
                env: dict[str, str] | None = None) -> list[dict]:
    """Model cards (as dicts) of the installed models, optionally only those of ``task`` (e.g. ``"ctca"``)."""
    text = run_engine_command(["models", "list", "--json"], python=python, env=env)
    try:
        cards = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineCommandError(f"the engine's model list is not JSON: {exc}") from exc
    return [c for c in cards if task is None or c.get("task") == task]


def import_model(path: str | Path, python: Sequence[str] | None = None, env: dict[str, str] | None = None) -> str:
    """Verify (sha256) and copy a model into the user's model folder; returns the engine's confirmation line."""
    return run_engine_command(["models", "import", str(path)], python=python, env=env).strip()


def label_table(card: dict) -> dict[str, str]:
    """The card's label table, value (as text) -> name."""
    return dict((card.get("task_config") or {}).get("labels") or {})


def card_summary(card: dict) -> str:
    """A few lines for the module panel: task, grid, training data and measured metrics."""
    tc = card.get("task_config") or {}
    lines = [f"{card.get('name', '?')} ({card.get('task', '?')})"]
    if card.get("description"):
        lines.append(str(card["description"]))
    if tc.get("shape"):
        spacing = f" at {tc['spacing_mm']} mm" if tc.get("spacing_mm") else ""
        lines.append(f"Grid: {'x'.join(str(s) for s in tc['shape'])} voxels{spacing}")
    training = card.get("training") or {}
    data = training.get("data") or tc.get("data")
    if data:
        lines.append("Training data: " + (data if isinstance(data, str) else _compact(data)))
    metrics = card.get("metrics") or {}
    if metrics:
        lines.append("Metrics: " + _compact(metrics))
    else:
        lines.append("Metrics: none recorded in the card")
    if card.get("sha256"):
        lines.append(f"sha256 {card['sha256'][:16]}...")
    return "\n".join(lines)


def _compact(value, depth: int = 0) -> str:
    """Nested dicts as ``key: value`` text, floats rounded, cut short so it fits a panel."""
    if isinstance(value, dict):
        if depth >= 2:
            return "{...}"
        return ", ".join(f"{k}: {_compact(v, depth + 1)}" for k, v in list(value.items())[:8])
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v, depth + 1) for v in value[:6]) + (", ...]" if len(value) > 6 else "]")
    return str(value)
