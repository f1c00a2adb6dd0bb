"""Installed models and their cards, read from the model folders (plain JSON, no engine process), and model import.

The engine finds models in ``$MEDDIFF_HOME/models`` (default ``~/.meddiff/models``), then among the
demo models inside its package (``meddiffcore/models``); a user model shadows a bundled one of the
same name. Listing reads those card files directly, so opening a module starts no process and
never waits for torch. Import copies a model into the user's folder through the engine, which
checks the weights against the sha256 in the card first (an offline site can bring a model on a
USB stick, and a corrupt copy is refused); it blocks, so the panels run it in the background.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .engine import engine_package, run_engine_command


def model_folders(env: dict[str, str] | None = None) -> list[Path]:
    """Where the engine (with environment ``env``, else this process's) looks for models, in priority order."""
    environment = os.environ if env is None else env
    home = Path(environment.get("MEDDIFF_HOME") or Path.home() / ".meddiff")
    folders = [home / "models"]
    package = engine_package()
    if package is not None:
        folders.append(package / "models")
    return folders


def _read_card(path: Path) -> dict | None:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a card (or unreadable): the engine skips it too
    return card if isinstance(card, dict) and isinstance(card.get("name"), str) and card.get("task") else None


def list_models(task: str | None = None, env: dict[str, str] | None = None) -> list[dict]:
    """Model cards (as dicts) of the installed models, optionally only those of ``task`` (e.g. ``"ctca"``)."""
    seen: dict[str, dict] = {}
    for folder in model_folders(env):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            card = _read_card(path)
            if card is not None:
                seen.setdefault(card["name"], card)
    return [c for c in seen.values() if task is None or c.get("task") == task]


def import_model(path: str | Path, python: Sequence[str] | None = None, env: dict[str, str] | None = None) -> str:
    """Verify (sha256) and copy a model into the user's model folder; returns the engine's confirmation line.

    Blocks while the engine checks the file: run it with :class:`~.background.BackgroundTask` from a panel.
    """
    return run_engine_command(["models", "import", str(path)], python=python, env=env).strip()


def label_table(card: dict) -> dict[str, str]:
    """The card's label table, value (as text) -> name."""
    return dict((card.get("task_config") or {}).get("labels") or {})


def label_names(card: dict) -> dict[str, str]:
    """The card's name table: normalised segment name or synonym -> label name (the engine's
    ``meddiffcore.tasks.ctca.labels.label_names``); older cards without one give their label names only."""
    return dict((card.get("task_config") or {}).get("label_names") or {})


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
