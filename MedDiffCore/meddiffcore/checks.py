"""What every job and command checks before any work: values in range, and no output written onto an input.

One table, :data:`VALUE_RANGES`, gives the documented range of every number a
user can pass (a CLI option or a job file's ``params``/``seed``); the CLI shows
each range in its ``--help`` and checks it before a handler runs, and
:func:`meddiffcore.jobs.run_job` checks a job's values the same way, so a job
file from the Slicer module or a user gets the same answer as the terminal. A
value outside its range is a BAD_CONFIG error that names the value, the range
and the option.

:func:`check_outputs_not_inputs` refuses a job or command whose output is one
of its inputs: the same path, or the same file reached through a link.

Imports nothing heavy: the CLI calls it before torch is loaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError

#: Largest seed accepted: torch and numpy generators take 64-bit seeds; a larger number would overflow.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ValueRange:
    """A number's kind and closed range; ``low_open`` makes the lower bound exclusive (a positive number)."""

    kind: type
    low: float
    high: float
    what: str
    low_open: bool = False

    def describe(self) -> str:
        low, high = (int(self.low), int(self.high)) if self.kind is int else (f"{self.low:g}", f"{self.high:g}")
        return f"above {low} up to {high}" if self.low_open else f"{low} to {high}"


#: Job parameter / CLI option (its ``dest``) -> the range of values it accepts.
VALUE_RANGES: dict[str, ValueRange] = {
    "steps": ValueRange(int, 1, 100_000, "sampling steps"),
    "tpdm_steps": ValueRange(int, 1, 100_000, "tpdm-mode steps"),
    "samples": ValueRange(int, 1, 1000, "samples"),
    "seed": ValueRange(int, 0, MAX_SEED, "random seed"),
    "guidance": ValueRange(float, 0.0, 100.0, "guidance scale"),
    "batch_size": ValueRange(int, 1, 4096, "batch size"),
    "threads": ValueRange(int, 1, 1024, "CPU threads"),
    "stages": ValueRange(int, 1, 16, "super-resolution stages"),
    "interval": ValueRange(float, 0.0, 3600.0, "frame interval (s)", low_open=True),
    "svd_threshold": ValueRange(float, 0.0, 1.0, "relative SVD threshold", low_open=True),
    "views": ValueRange(int, 1, 10_000, "projection views"),
    "acceleration": ValueRange(float, 1.0, 64.0, "MRI acceleration"),
    "factor": ValueRange(int, 1, 64, "slice factor"),
    "K": ValueRange(float, 1.0, 1000.0, "prior alternation K"),
    "lambda": ValueRange(float, 0.0, 1000.0, "DPS weight"),
    "cg_iters": ValueRange(int, 0, 1000, "CG iterations"),
    "chunk": ValueRange(int, 1, 100_000, "slices per network call"),
    "phantoms": ValueRange(int, 1, 10_000, "phantoms"),
    "train_phantoms": ValueRange(int, 1, 1_000_000, "training phantoms"),
    "slices": ValueRange(int, 1, 4096, "slices"),
    "frames": ValueRange(int, 2, 10_000, "frames"),
    "noise_hu": ValueRange(float, 0.0, 1000.0, "noise (HU)"),
    "spacing": ValueRange(float, 0.0, 1000.0, "voxel size (mm)", low_open=True),
    "size": ValueRange(int, 2, 2048, "voxels per axis"),
    "shape": ValueRange(int, 2, 2048, "voxels per axis"),
}

#: CLI option dests that are spelled differently from their job parameter.
DEST_ALIASES = {"lam": "lambda"}


def value_range(name: str) -> ValueRange | None:
    return VALUE_RANGES.get(DEST_ALIASES.get(name, name))


def check_value(name: str, value: Any, option: str | None = None) -> Any:
    """``value`` if it is a number of the right kind within ``name``'s range (None passes); ConfigError otherwise."""
    spec = value_range(name)
    if spec is None or value is None:
        return value
    label = option or name
    if isinstance(value, (list, tuple)):  # a per-axis value (spacing, size): each element in range
        for item in value:
            check_value(name, item, label)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{label} must be a number, got {value!r}", f"give a value from {spec.describe()} ({spec.what})")
    if spec.kind is int and (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{label} must be a whole number, got {value!r}", f"give a value from {spec.describe()} ({spec.what})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {value!r}", f"give a value from {spec.describe()} ({spec.what})")
    too_low = value <= spec.low if spec.low_open else value < spec.low
    if too_low or value > spec.high:
        shown = f"{value:.6g}" if isinstance(value, float) else (str(value) if abs(value) < 10**12 else f"{value:.3g}")
        raise ConfigError(f"{label} is {shown}, out of range ({spec.describe()})",
                          f"give a value from {spec.describe()} ({spec.what})")
    return value


def check_values(values: Mapping[str, Any], options: Mapping[str, str] | None = None, *, skip_text: bool = False) -> None:
    """Check every entry of ``values`` that has a range (``options`` maps a name to how the user spelled it).

    ``skip_text``: leave strings alone (command-line lists such as ``--views 8,16,32`` that their command parses)."""
    for name, value in values.items():
        if skip_text and isinstance(value, str):
            continue
        check_value(name, value, (options or {}).get(name))


def range_help(name: str) -> str:
    """`` [range ...]`` for a help text, or ''."""
    spec = value_range(name)
    return f" [{spec.describe()}]" if spec else ""


# ---- outputs never written onto inputs

def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also hard links
        return a.resolve() == b.resolve()  # a symlink to a file not yet there, or plain equal paths
    except OSError:
        return False


def check_outputs_not_inputs(inputs: Iterable[tuple[str, str | os.PathLike]],
                             outputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """ConfigError when an output is one of the inputs (or another output): same path or same file via a link.

    ``inputs`` and ``outputs`` are ``(label, path)`` pairs; the labels name them in the message.
    """
    inputs = [(label, Path(p).expanduser()) for label, p in inputs if p]
    outputs = [(label, Path(p).expanduser()) for label, p in outputs if p]
    for i, (out_label, out) in enumerate(outputs):
        for in_label, source in inputs:
            if _same_file(out, source):
                raise ConfigError(f"the output {out_label} '{out}' is the input {in_label} '{source}'",
                                  "write the result to a new path: MedDiff never replaces an input")
        for other_label, other in outputs[:i]:
            if _same_file(out, other):
                raise ConfigError(f"the outputs {other_label} and {out_label} are the same path '{out}'",
                                  "give each output its own path")
