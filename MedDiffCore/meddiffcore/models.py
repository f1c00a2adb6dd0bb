"""Models on disk: a safetensors file plus a JSON model card, verified before use.

A model named ``NAME`` is the pair ``NAME.safetensors`` and ``NAME.json`` in one
folder. The card says what the weights are for (task, network config, noise
schedule, intensity window, label table), how they were made (training command,
data) and how good they are (metrics), and carries the sha256 of the weights.
Weights are only ever read with safetensors, after the checksum matched, so a
downloaded model can never run code.

Models are looked up, in order, as an explicit path, in the user's folder
(``$MEDDIFF_HOME/models``, default ``~/.meddiff/models``) and among the demo
models bundled in the package.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import from_dict, to_dict
from .errors import ConfigError, ModelError

CARD_FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to rebuild, trust and judge a set of weights."""

    name: str
    task: str
    description: str = ""
    network: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    requirements: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    sha256: str = ""
    format_version: int = CARD_FORMAT_VERSION
    meddiffcore_version: str = __version__
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=False) + "\n"

    def below_baseline(self) -> dict[str, str]:
        """Where the card says this model loses to its classical baseline: ``metrics["below_baseline"]``, a
        table from what (a stage, an input kind such as ``real_images``) to the measured figures, in words.
        Runners do not run such a part by default and say so whenever it runs."""
        table = self.metrics.get("below_baseline") or {}
        return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}

    @classmethod
    def from_json_file(cls, path: Path) -> "ModelCard":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"model card '{path}' cannot be read: {exc}", "re-import the model or re-export it from training") from exc
        try:
            return from_dict(cls, data, where=path.name)
        except ConfigError as exc:
            raise ModelError(f"model card '{path}' is not valid: {exc.message}", exc.hint) from exc


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's card and weights live."""

    card_path: Path
    weights_path: Path


def meddiff_home() -> Path:
    """The user's MedDiff folder: ``$MEDDIFF_HOME`` or ``~/.meddiff``."""
    return Path(os.environ.get("MEDDIFF_HOME") or Path.home() / ".meddiff")


def user_model_dir() -> Path:
    return meddiff_home() / "models"


def bundled_model_dir() -> Path:
    return Path(__file__).resolve().parent / "models"


def model_dirs() -> list[Path]:
    """Folders searched for models, in priority order."""
    return [user_model_dir(), bundled_model_dir()]


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _files_for(card_path: Path) -> ModelFiles:
    card = ModelCard.from_json_file(card_path)
    weights = card_path.parent / (card.weights or card_path.with_suffix(".safetensors").name)
    return ModelFiles(card_path=card_path, weights_path=weights)


def find_model(ref: str | os.PathLike) -> ModelFiles:
    """Resolve a model name or a path (card ``.json`` or ``.safetensors``) to its files."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.suffix in (".json", ".safetensors") or os.sep in text:
        card_path = path.with_suffix(".json") if path.suffix != ".json" else path
        if not card_path.is_file():
            raise ModelError(
                f"model card '{card_path}' not found",
                "a model is a NAME.safetensors file with its NAME.json card beside it; copy both",
            )
        return _files_for(card_path)
    for folder in model_dirs():
        candidate = folder / f"{text}.json"
        if candidate.is_file():
            return _files_for(candidate)
    known = ", ".join(c.name for c in list_models()) or "none"
    raise ModelError(f"no model named '{text}'", f"installed models: {known}; `meddiff models import PATH` adds one")


def list_models() -> list[ModelCard]:
    """Cards of all installed models; a user model shadows a bundled one of the same name."""
    seen: dict[str, ModelCard] = {}
    for folder in model_dirs():
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            try:
                card = ModelCard.from_json_file(card_path)
            except ModelError:
                continue
            seen.setdefault(card.name, card)
    return list(seen.values())


def verify_model(files: ModelFiles) -> ModelCard:
    """Check that the weights exist and match the card's sha256; return the card."""
    card = ModelCard.from_json_file(files.card_path)
    if not files.weights_path.is_file():
        raise ModelError(f"weights file '{files.weights_path}' of model '{card.name}' is missing", "copy the .safetensors file next to its card")
    if not card.sha256:
        raise ModelError(f"model card '{files.card_path}' has no sha256", "re-export the model with MedDiff so its card records the checksum")
    actual = sha256_file(files.weights_path)
    if actual != card.sha256:
        raise ModelError(
            f"weights of model '{card.name}' do not match their card (sha256 {actual[:12]}... != {card.sha256[:12]}...)",
            "the file is corrupt, truncated or was replaced; download or copy it again",
        )
    return card


def load_model(ref: str | os.PathLike, task: str | None = None, device: str = "cpu") -> tuple[ModelCard, dict]:
    """Verify and load a model: its card and its tensors (safetensors only, never a pickle)."""
    from safetensors.torch import load_file

    files = find_model(ref)
    card = verify_model(files)
    if task is not None and card.task != task:
        raise ModelError(f"model '{card.name}' is a '{card.task}' model, not a '{task}' model", f"choose a {task} model (`meddiff models list`)")
    try:
        tensors = load_file(str(files.weights_path), device=device)
    except Exception as exc:
        raise ModelError(f"weights of model '{card.name}' cannot be read: {exc}", "download or copy the model again") from exc
    return card, tensors


def save_model(folder: str | os.PathLike, card: ModelCard, tensors: dict) -> ModelFiles:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically; the card gets the weights' sha256."""
    from safetensors.torch import save_file

    from .io.atomic import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / f"{card.name}.safetensors"
    card_path = folder / f"{card.name}.json"
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_output(weights_path) as tmp:
        save_file(contiguous, str(tmp), metadata={"name": card.name, "task": card.task})
    card = dataclasses.replace(
        card,
        weights=weights_path.name,
        sha256=sha256_file(weights_path),
        created=card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        meddiffcore_version=__version__,
    )
    with atomic_output(card_path) as tmp:
        Path(tmp).write_text(card.to_json(), encoding="utf-8")
    return ModelFiles(card_path=card_path, weights_path=weights_path)


def import_model(path: str | os.PathLike) -> ModelFiles:
    """Verify a model given by path and copy it into the user's model folder."""
    files = find_model(Path(path).expanduser().resolve())
    card = verify_model(files)
    target = user_model_dir()
    target.mkdir(parents=True, exist_ok=True)
    from .io.atomic import atomic_output

    new_weights = target / f"{card.name}.safetensors"
    new_card = target / f"{card.name}.json"
    with atomic_output(new_weights) as tmp:
        shutil.copyfile(files.weights_path, tmp)
    with atomic_output(new_card) as tmp:
        Path(tmp).write_text(dataclasses.replace(card, weights=new_weights.name).to_json(), encoding="utf-8")
    verify_model(ModelFiles(new_card, new_weights))
    return ModelFiles(new_card, new_weights)


def save_model_together(folder: str | os.PathLike, card: ModelCard, tensors: dict, *,
                        replace: bool = False) -> ModelFiles:
    """Like :func:`save_model`, but the two files appear together or not at all (one folder move), and an
    existing model of the same name is kept unless ``replace``: for imports, where a failure half-way
    must leave nothing behind and an earlier import must not be overwritten by accident."""
    from safetensors.torch import save_file

    from .io.atomic import atomic_outputs

    folder = Path(folder)
    weights_path, card_path = folder / f"{card.name}.safetensors", folder / f"{card.name}.json"
    existing = [p for p in (weights_path, card_path) if p.exists()]
    if existing and not replace:
        raise ModelError(f"a model named '{card.name}' already exists in '{folder}'",
                         "give another --name, or --replace to overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([weights_path, card_path]) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / weights_path.name),
                  metadata={"name": card.name, "task": card.task})
        card = dataclasses.replace(
            card, weights=weights_path.name, sha256=sha256_file(tmp / weights_path.name),
            created=card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            meddiffcore_version=__version__)
        (tmp / card_path.name).write_text(card.to_json(), encoding="utf-8")
    return ModelFiles(card_path=card_path, weights_path=weights_path)
