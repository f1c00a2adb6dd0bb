"""Reading an author's checkpoint file safely, and checking its tensors against a network.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers
(dicts, lists, numbers, strings); a file that needs anything else (a pickled
class, a function) is refused before any of its code could run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import BadInputError, ModelError

#: How many mismatching keys an error message names.
SHOWN_MISMATCHES = 5


def load_container(path: str | Path) -> Any:
    """The object stored in ``path``, loaded with ``torch.load(weights_only=True)`` on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadInputError(f"checkpoint '{path}' does not exist", "give the path of the file you downloaded")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"checkpoint '{path}' is not a plain tensor file: loading it would run code it names "
            f"({str(exc).splitlines()[0][:200]})",
            "MedDiff only reads checkpoints that torch.load(weights_only=True) accepts; use the file exactly as "
            "the authors released it, not one re-saved with extra Python objects",
        ) from exc
    except Exception as exc:  # not a torch file at all, truncated, corrupt zip...
        raise ModelError(f"checkpoint '{path}' cannot be read as a PyTorch file: {type(exc).__name__}: {exc}",
                         "the download may be incomplete; download it again and compare its sha256") from exc


def require_mapping(value: Any, what: str, path: str | Path, keys: Iterable[str] = ()) -> Mapping[str, Any]:
    """``value`` as a mapping holding ``keys``, or a :class:`ModelError` naming what is there instead."""
    if not isinstance(value, Mapping):
        raise ModelError(f"'{path}': {what} is a {type(value).__name__}, not a dictionary of tensors",
                         "is this the right file for the --format given?")
    missing = [k for k in keys if k not in value]
    if missing:
        present = ", ".join(map(repr, list(value)[:8]))
        raise ModelError(f"'{path}': {what} has no {', '.join(map(repr, missing))} (it holds {present})",
                         "is this the right file for the --format given?")
    return value


def check_tensors(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Any], path: str | Path,
                  what: str = "the network") -> None:
    """Refuse ``found`` unless it has exactly ``expected``'s keys, each a floating tensor of that shape.

    The message names the first mismatches (missing, unexpected, wrong shape), so a
    file for another configuration is told apart from a damaged one.
    """
    if not any(key in found for key in expected):
        keys = ", ".join(map(repr, list(found)[:6])) + (", ..." if len(found) > 6 else "")
        from . import FORMATS

        raise ModelError(f"'{path}' holds none of the tensors of {what} (its keys: {keys})",
                         f"is this the right file for the --format given ({', '.join(FORMATS)})?")
    problems: list[str] = []
    for key, shape in expected.items():
        value = found.get(key)
        if value is None:
            problems.append(f"missing {key}")
        elif not isinstance(value, Tensor) or not value.is_floating_point():
            problems.append(f"{key} is {type(value).__name__}, not a floating-point tensor")
        elif tuple(value.shape) != tuple(shape):
            problems.append(f"{key} has shape {list(value.shape)}, {what} needs {list(shape)}")
    problems += [f"unexpected {key}" for key in found if key not in expected]
    if problems:
        shown = "; ".join(problems[:SHOWN_MISMATCHES])
        more = f" (and {len(problems) - SHOWN_MISMATCHES} more)" if len(problems) > SHOWN_MISMATCHES else ""
        raise ModelError(
            f"'{path}' does not fit {what}: {shown}{more}",
            "check --format and --variant; a checkpoint of another configuration needs --set KEY=VALUE for the "
            "network fields that differ",
        )
