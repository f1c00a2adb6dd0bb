"""THE label table of the CTCA task (one place), and mapping files for other label sets.

Labels 1-7 are TotalSegmentator's heart chambers (task ``heartchambers_highres``,
in the same order), label 8 the coronary arteries of ImageCAS. The table is
stored in every CTCA model card, so a model always says what its labels mean.

A mapping file adapts another label set: JSON ``{"source value": target}`` or a
two-column CSV ``source,target``; ``target`` is one of our values (0-8) or one of
our names (``"left_ventricle"``) or a TotalSegmentator name
(``"heart_ventricle_left"``). Source values not named in the file are an error,
so nothing is silently dropped (map them to 0 to drop them on purpose).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ...errors import BadInputError, ConfigError

#: value -> name. Background must stay 0; the order is TotalSegmentator's heart chambers, then ImageCAS.
LABELS: dict[int, str] = {
    0: "background",
    1: "myocardium",
    2: "left_atrium",
    3: "left_ventricle",
    4: "right_atrium",
    5: "right_ventricle",
    6: "aorta",
    7: "pulmonary_artery",
    8: "coronary_arteries",
}
NUM_CLASSES = len(LABELS)
CORONARY = 8

#: TotalSegmentator (heartchambers_highres) and ImageCAS names, accepted as targets in mapping files.
SYNONYMS: dict[str, int] = {
    "heart_myocardium": 1,
    "heart_atrium_left": 2,
    "heart_ventricle_left": 3,
    "heart_atrium_right": 4,
    "heart_ventricle_right": 5,
    "coronary_artery": 8,
    "coronary": 8,
}


def label_table() -> dict[str, str]:
    """The table as stored in model cards (JSON keys are strings)."""
    return {str(k): v for k, v in LABELS.items()}


def label_value(target) -> int:
    """Our value for a mapping target: a number 0-8 or a name."""
    if isinstance(target, bool):
        raise ConfigError(f"mapping target {target!r} is not a label", f"use a value 0-{NUM_CLASSES - 1} or a name")
    if isinstance(target, (int, float)) and float(target).is_integer() and int(target) in LABELS:
        return int(target)
    if isinstance(target, str):
        text = target.strip()
        if text.lstrip("-").isdigit() and int(text) in LABELS:
            return int(text)
        names = {v: k for k, v in LABELS.items()} | SYNONYMS
        if text.lower() in names:
            return names[text.lower()]
    raise ConfigError(
        f"mapping target {target!r} is not one of our labels",
        "use a value or name from: " + ", ".join(f"{k} {v}" for k, v in LABELS.items()),
    )


def load_mapping(path: str | Path) -> dict[int, int]:
    """Read a JSON or CSV mapping file: source value -> our label value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label mapping file '{path}' does not exist", "check the path given to --label-map")
    text = path.read_text(encoding="utf-8")
    pairs: list[tuple[str, object]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label mapping file '{path}' is not valid JSON: {exc}", 'write {"205": 1, ...}') from exc
        if not isinstance(data, dict):
            raise ConfigError(f"label mapping file '{path}' must hold one JSON object", 'write {"205": 1, ...}')
        pairs = list(data.items())
    elif path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].strip().startswith("#")]
        if rows and not rows[0][0].strip().lstrip("-").isdigit():
            rows = rows[1:]  # header
        for row in rows:
            if len(row) < 2:
                raise ConfigError(f"label mapping file '{path}' has a row with one column: {row}", "write source,target")
            pairs.append((row[0], row[1]))
    else:
        raise ConfigError(f"label mapping file '{path}' must be .json or .csv", "see the label mapping format in the README")
    mapping: dict[int, int] = {}
    for source, target in pairs:
        try:
            key = int(str(source).strip())
        except ValueError:
            raise ConfigError(f"mapping source {source!r} in '{path}' is not an integer label value",
                              "keys are the label values found in your label map") from None
        mapping[key] = label_value(target)
    if not mapping:
        raise ConfigError(f"label mapping file '{path}' maps nothing", "add one line per source label")
    return mapping


def to_label_array(array: np.ndarray, mapping: dict[int, int] | None = None, what: str = "label map") -> np.ndarray:
    """Validate a label array and return it as uint8 values of our table.

    Raises :class:`BadInputError` naming NaNs, non-integer values, unknown values
    (after ``mapping``, when given) and an empty map.
    """
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise BadInputError(f"{what} contains NaN or infinite values", "a label map holds whole numbers only; fix the file")
        frac = arr[arr != np.round(arr)]
        if frac.size:
            shown = ", ".join(f"{v:g}" for v in np.unique(frac)[:5])
            raise BadInputError(f"{what} holds non-integer values ({shown}{', ...' if np.unique(frac).size > 5 else ''})",
                                "pass a label map (nearest-neighbour resampled), not an image")
    elif arr.dtype.kind not in "biu":
        raise BadInputError(f"{what} has dtype {arr.dtype}, not whole-number labels", "pass an integer label map")
    huge = arr[np.abs(arr) > np.iinfo(np.int32).max] if arr.dtype.kind in "fu" or arr.dtype.itemsize > 4 else arr[:0]
    if huge.size:  # a cast to int64 would wrap (1e300 -> -9223372036854775808): name the real values
        shown = ", ".join(f"{v:g}" for v in np.unique(huge)[:5].astype(np.float64))
        raise BadInputError(f"{what} holds values far too large for labels ({shown})",
                            "a label map holds small whole numbers (ours 0-8); pass a label map, not an image")
    values = np.unique(arr).astype(np.int64)
    if mapping is not None:
        unmapped = [int(v) for v in values if int(v) not in mapping]
        if unmapped:
            raise BadInputError(f"{what} holds values {_list(unmapped)} that the mapping file does not name",
                                "add them to the mapping file (map to 0 to drop them)")
        lut_keys = np.array(sorted(mapping), dtype=np.int64)
        lut_vals = np.array([mapping[k] for k in lut_keys], dtype=np.uint8)
        out = lut_vals[np.searchsorted(lut_keys, arr.astype(np.int64))]
    else:
        unknown = [int(v) for v in values if int(v) not in LABELS]
        if unknown:
            raise BadInputError(
                f"{what} holds unknown label values {_list(unknown)}; known: "
                + ", ".join(f"{k} {v}" for k, v in LABELS.items()),
                "pass --label-mapping FILE.json to translate your label set",
            )
        out = arr.astype(np.uint8)
    if not out.any():
        raise BadInputError(f"{what} is empty (every voxel is background)", "draw the heart labels first")
    return out


def one_hot(labels, num_classes: int = NUM_CLASSES):
    """(z, y, x) integer labels -> (num_classes, z, y, x) float32 torch one-hot."""
    import torch

    t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(t, num_classes).permute(3, 0, 1, 2).float()


def _list(values: list[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")
