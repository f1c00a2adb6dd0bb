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
import math
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import from_dict, to_dict
from .errors import ConfigError, ModelError

CARD_FORMAT_VERSION = 1

#: A model name: a plain file-name stem (letters, digits, '-', '_', '.'; no leading dot, no path), at most 100 long.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: safetensors dtype -> (bytes per element, floating point?)
SAFETENSORS_DTYPES: dict[str, tuple[int, bool]] = {
    "F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True), "F8_E4M3": (1, True), "F8_E5M2": (1, True),
    "I64": (8, False), "I32": (4, False), "I16": (2, False), "I8": (1, False), "U8": (1, False), "BOOL": (1, False),
}
#: Largest JSON header read from a weights file (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000


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
    #: What the training data looked like (spacing, size, intensity), for out-of-domain warnings (see domain.py).
    domain: dict[str, Any] = field(default_factory=dict)
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
            card = from_dict(cls, data, where=path.name)
        except ConfigError as exc:
            raise ModelError(f"model card '{path}' is not valid: {exc.message}", exc.hint) from exc
        check_model_name(card.name, f"model card '{path}'")
        return card


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's card and weights live."""

    card_path: Path
    weights_path: Path


def check_model_name(name: object, where: str) -> str:
    """``name`` as a model name, or a ModelError: it becomes a file name in the model folder, so no paths."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        raise ModelError(f"{where} has the model name {name!r}, which is not a plain name",
                         "a model name is letters, digits, '-', '_' or '.' (not first), at most 100 characters, "
                         "with no folder in it; fix the card's \"name\"")
    return name


def weights_path_for(card: ModelCard, card_path: Path) -> Path:
    """The card's weights file, which must lie in the card's own folder (links followed); ModelError otherwise."""
    relative = card.weights or f"{card_path.stem}.safetensors"
    folder = card_path.parent.resolve()
    candidate = (card_path.parent / relative)
    if Path(relative).is_absolute() or Path(relative).name != relative or candidate.resolve().parent != folder:
        raise ModelError(f"model card '{card_path}' names the weights file {relative!r}, outside the card's folder",
                         "put the .safetensors file beside its card and set \"weights\" to its bare file name")
    return candidate


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
    return ModelFiles(card_path=card_path, weights_path=weights_path_for(card, card_path))


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


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, as its header describes it."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def floating(self) -> bool:
        return SAFETENSORS_DTYPES[self.dtype][1]


def read_safetensors_header(path: Path, what: str = "weights file") -> dict[str, TensorEntry]:
    """Parse and check a safetensors header without loading a tensor; ModelError for anything that is not one.

    Checked: the 8-byte length and the JSON header fit in the file; every entry has a known dtype, a shape of
    non-negative integers and offsets whose length is exactly the shape's; the tensors tile the data area with
    no gap, overlap or trailing bytes (a pickle renamed, a truncated or padded file all fail here).
    """
    fix = "this is not a complete safetensors file; download or export the model again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelError(f"{what} '{path}' is {size} bytes long, too short for a safetensors header", fix)
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise ModelError(f"{what} '{path}' is not a safetensors file (its first 8 bytes announce a "
                                 f"{header_len}-byte header in a {size}-byte file)", fix)
            raw = handle.read(header_len)
    except OSError as exc:
        raise ModelError(f"{what} '{path}' cannot be read: {exc.strerror or exc}", "check the file and its permissions") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{what} '{path}' is not a safetensors file (its header is not JSON)", fix) from None
    if not isinstance(header, dict):
        raise ModelError(f"{what} '{path}' is not a safetensors file (its header is not a JSON object)", fix)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ModelError(f"{what} '{path}' has a malformed __metadata__ entry (strings only)", fix)
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        bad = f"{what} '{path}': tensor '{name}'"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ModelError(f"{bad} is not described by dtype, shape and data_offsets", fix)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise ModelError(f"{bad} has the unknown dtype {dtype!r}", f"model tensors are one of {', '.join(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ModelError(f"{bad} has the invalid shape {shape!r}", fix)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise ModelError(f"{bad} has invalid data_offsets {offsets!r}", fix)
        begin, end = offsets
        if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype][0]:
            raise ModelError(f"{bad} has {end - begin} bytes of data for shape {shape} of {dtype}", fix)
        entries[name] = TensorEntry(dtype, tuple(shape), begin, end)
    data_bytes = size - 8 - header_len
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            problem = "overlaps another" if entry.begin < position else "leaves a gap before it"
            raise ModelError(f"{what} '{path}': tensor '{name}' {problem} (data offset {entry.begin}, expected {position})", fix)
        position = entry.end
    if position > data_bytes:
        raise ModelError(f"{what} '{path}' is truncated: its header describes {position} bytes of data, the file "
                         f"holds {data_bytes}", fix)
    if position < data_bytes:
        raise ModelError(f"{what} '{path}' has {data_bytes - position} bytes after its last tensor", fix)
    return entries


def known_model_tasks() -> list[str]:
    """Tasks a model card may name (the tasks that build networks)."""
    from .tasks.base import TRAINABLE_TASKS

    return sorted(TRAINABLE_TASKS)


def expected_tensors(card: ModelCard) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, floating point?) of every tensor the network of ``card`` holds, from its task's
    ``network_from_card`` built on torch's meta device (no memory, no weights); ModelError when the card's
    task is unknown or its network section cannot be built."""
    import torch

    from .tasks.base import trainable_task

    if card.task not in known_model_tasks():
        raise ModelError(f"model '{card.name}' names the unknown task '{card.task}'",
                         f"a model card's task is one of {', '.join(known_model_tasks())}")
    task = trainable_task(card.task)
    try:
        with torch.device("meta"):
            net = task.network_from_card(card)
    except ModelError:
        raise
    except Exception as exc:  # a malformed network section: the card does not describe a network of this task
        raise ModelError(f"model '{card.name}': its card does not describe a '{card.task}' network "
                         f"({type(exc).__name__}: {exc})", "re-export the model with MedDiff") from exc
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in net.state_dict().items()}


def check_tensors(card: ModelCard, entries: dict[str, TensorEntry]) -> None:
    """The file's tensors are exactly the network's: same names, shapes, and float where the network has floats."""
    expected = expected_tensors(card)
    fix = "the card and the weights belong to different models; export or download the pair again"
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    if missing or extra:
        parts = ([f"{len(missing)} missing (first: {', '.join(missing[:3])})"] if missing else []) + \
                ([f"{len(extra)} unexpected (first: {', '.join(extra[:3])})"] if extra else [])
        raise ModelError(f"weights of model '{card.name}' do not fit its '{card.task}' network: tensors "
                         f"{'; '.join(parts)}", fix)
    for name, (shape, floating) in expected.items():
        entry = entries[name]
        if entry.shape != shape:
            raise ModelError(f"weights of model '{card.name}': tensor '{name}' has shape {list(entry.shape)}, its "
                             f"network needs {list(shape)}", fix)
        if entry.floating != floating:
            raise ModelError(f"weights of model '{card.name}': tensor '{name}' is {entry.dtype}, its network needs "
                             f"{'a floating-point' if floating else 'an integer'} tensor", fix)


def check_model(files: ModelFiles) -> ModelCard:
    """Everything checked before a model is used or installed: card, checksum, safetensors structure, tensors."""
    card = verify_model(files)
    check_tensors(card, read_safetensors_header(files.weights_path, f"weights file of model '{card.name}'"))
    return card


def load_model(ref: str | os.PathLike, task: str | None = None, device: str = "cpu") -> tuple[ModelCard, dict]:
    """Verify and load a model: its card and its tensors (safetensors only, never a pickle)."""
    from safetensors.torch import load_file

    files = find_model(ref)
    card = check_model(files)
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
    """Check a model given by path (:func:`check_model`: name, weights beside the card, checksum, safetensors
    structure, tensors that fit the task's network) and only then copy it into the user's model folder; the
    two files appear together or not at all."""
    from .io.atomic import atomic_outputs

    files = find_model(Path(path).expanduser().resolve())
    card = check_model(files)
    target = user_model_dir()
    new_weights = target / f"{card.name}.safetensors"
    new_card = target / f"{card.name}.json"
    if new_weights.exists() and new_weights.resolve() == files.weights_path.resolve():
        return ModelFiles(new_card, new_weights)  # already installed: nothing to copy
    target.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([new_weights, new_card]) as tmp:
        shutil.copyfile(files.weights_path, tmp / new_weights.name)
        (tmp / new_card.name).write_text(dataclasses.replace(card, weights=new_weights.name).to_json(), encoding="utf-8")
        if sha256_file(tmp / new_weights.name) != card.sha256:
            raise ModelError(f"the copy of model '{card.name}' does not match its card", "the source file changed "
                             "while it was copied; import it again")
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
