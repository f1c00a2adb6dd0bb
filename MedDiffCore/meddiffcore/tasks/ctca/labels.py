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
import re
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

#: Other names of our labels (compared as :func:`normalised_name`): TotalSegmentator ``heartchambers_highres``,
#: ImageCAS, the names Slicer's terminology gives segments, and the usual abbreviations. With the names of
#: :data:`LABELS` this is THE name table: segments of a Slicer segmentation are matched to labels through it, by
#: the engine (``.seg.nrrd`` input) and by the Slicer module (it reads the table from the model card).
SYNONYMS: dict[str, int] = {
    **dict.fromkeys(("heart_myocardium", "myocardium_of_left_ventricle", "left_ventricular_myocardium",
                     "left_ventricle_myocardium", "lv_myocardium", "myo", "lvm", "heart_muscle"), 1),
    **dict.fromkeys(("heart_atrium_left", "left_heart_atrium", "heart_left_atrium", "la", "left_atrial_cavity",
                     "left_atrium_blood_pool", "la_blood_pool"), 2),
    **dict.fromkeys(("heart_ventricle_left", "left_heart_ventricle", "heart_left_ventricle", "lv",
                     "left_ventricular_cavity", "left_ventricle_blood_pool", "left_ventricular_blood_pool",
                     "lv_blood_pool"), 3),
    **dict.fromkeys(("heart_atrium_right", "right_heart_atrium", "heart_right_atrium", "ra", "right_atrial_cavity",
                     "right_atrium_blood_pool", "ra_blood_pool"), 4),
    **dict.fromkeys(("heart_ventricle_right", "right_heart_ventricle", "heart_right_ventricle", "rv",
                     "right_ventricular_cavity", "right_ventricle_blood_pool", "right_ventricular_blood_pool",
                     "rv_blood_pool"), 5),
    **dict.fromkeys(("ao", "ascending_aorta", "thoracic_aorta", "aortic_root", "aortic_arch"), 6),
    **dict.fromkeys(("pa", "pulmonary_trunk", "main_pulmonary_artery", "pulmonary_arteries",
                     "pulmonary_artery_trunk"), 7),
    **dict.fromkeys(("coronary_artery", "coronary", "coronaries", "coronary_tree", "coronary_vessels",
                     "left_coronary_artery", "right_coronary_artery", "lca", "rca", "lad", "lcx"), 8),
}


def normalised_name(name: str) -> str:
    """``"Left Ventricle"`` -> ``"left_ventricle"``: how names are compared (the Slicer module does the same)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def label_names() -> dict[str, str]:
    """Normalised name or synonym -> our label name: the name table stored in model cards (``label_names``)."""
    table = {normalised_name(v): v for v in LABELS.values()}
    table.update({normalised_name(k): LABELS[v] for k, v in SYNONYMS.items()})
    return table


def label_of_name(name: str) -> int | None:
    """Our value for a segment or label name (any case and spacing, synonyms included); None if unknown."""
    target = label_names().get(normalised_name(name))
    return None if target is None else {v: k for k, v in LABELS.items()}[target]


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
        value = label_of_name(text)
        if value is not None:
            return value
    raise ConfigError(
        f"mapping target {target!r} is not one of our labels",
        "use a value or name from: " + ", ".join(f"{k} {v}" for k, v in LABELS.items()),
    )


def load_mapping(path: str | Path) -> dict[int | str, int]:
    """Read a JSON or CSV mapping file: source value (or segment name, normalised) -> our label value."""
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
        text = str(source).strip()
        key: int | str = int(text) if text.lstrip("-").isdigit() else normalised_name(text)
        if key == "":
            raise ConfigError(f"mapping source {source!r} in '{path}' is empty",
                              "keys are the label values of your label map, or segment names of a .seg.nrrd")
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
    can_be_huge = arr.dtype.kind == "f" or arr.dtype.itemsize > 4 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 4)
    huge = arr[np.abs(arr) > np.iinfo(np.int32).max] if can_be_huge else arr[:0]
    if huge.size:  # a cast to int64 would wrap (1e300 -> -9223372036854775808): name the real values
        shown = ", ".join(f"{v:g}" for v in np.unique(huge)[:5].astype(np.float64))
        raise BadInputError(f"{what} holds values far too large for labels ({shown})",
                            "a label map holds small whole numbers (ours 0-8); pass a label map, not an image")
    values = label_values(arr).astype(np.int64)
    if mapping is not None:
        mapping = {k: v for k, v in mapping.items() if isinstance(k, int)}  # segment-name keys apply to .seg.nrrd only
        unmapped = [int(v) for v in values if int(v) not in mapping]
        if unmapped:
            raise BadInputError(f"{what} holds values {_list(unmapped)} that the mapping file does not name",
                                "add them to the mapping file (map to 0 to drop them)")
        lut_keys = np.array(sorted(mapping), dtype=np.int64)
        lut_vals = np.array([mapping[k] for k in lut_keys], dtype=np.uint8)
        out = np.empty(arr.shape, np.uint8)
        for z in range(arr.shape[0]):  # slice by slice: no int64 copy of the whole map
            out[z] = lut_vals[np.searchsorted(lut_keys, arr[z].astype(np.int64))]
    else:
        unknown = [int(v) for v in values if int(v) not in LABELS]
        if unknown:
            raise BadInputError(
                f"{what} holds unknown label values {_list(unknown)}; known: "
                + ", ".join(f"{k} {v}" for k, v in LABELS.items()),
                "pass --label-mapping FILE.json to translate your label set",
            )
        out = arr.astype(np.uint8, copy=False)
    if not out.any():
        raise BadInputError(f"{what} is empty (every voxel is background)", "draw the heart labels first")
    return out


def label_values(labels: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label array, slice by slice (never a sorted copy of the whole map)."""
    arr = np.asarray(labels)
    if arr.ndim < 2 or arr.shape[0] == 0:
        return np.unique(arr)
    return np.unique(np.concatenate([np.unique(arr[z]) for z in range(arr.shape[0])]))


def segmentation_labels(segmentation, mapping: dict[int | str, int] | None = None, what: str = "segmentation") -> np.ndarray:
    """A Slicer segmentation's segments as one uint8 label array of our table, each segment mapped BY ITS NAME.

    A segment's label is its name in ``mapping`` (a mapping file keyed by segment names), else the name table
    (:func:`label_of_name`). Segments that cannot be mapped are an error that names them; so are segments of
    different labels that overlap (they can, in different layers), with where and how much.
    """
    names = {s.name: (mapping or {}).get(normalised_name(s.name), label_of_name(s.name)) for s in segmentation.segments}
    unmapped = [n for n, v in names.items() if v is None]
    if unmapped:
        raise BadInputError(
            f"{what}: segment(s) {', '.join(repr(n) for n in unmapped)} match no label of the model "
            f"(segments are matched by name; known: {', '.join(v for k, v in LABELS.items() if k)})",
            "rename them in Slicer's Segment Editor (e.g. 'left ventricle', 'LV', 'heart_ventricle_left'), or pass "
            '--label-mapping FILE.json with {"segment name": "left_ventricle", ...} (map to "background" to drop one)')
    out = np.zeros(segmentation.shape, dtype=np.uint8)
    owner = np.full(segmentation.shape, -1, dtype=np.int16)  # index of the segment that set each voxel
    overlaps: dict[tuple[int, int], np.ndarray] = {}
    for index, segment in enumerate(segmentation.segments):
        value = names[segment.name]
        mask = segmentation.mask(segment)
        if not mask.any() or not value:  # a segment mapped to background is dropped: it cannot clash
            continue
        clash = mask & (owner >= 0) & (out != value)
        if clash.any():
            for other in np.unique(owner[clash]):
                both = clash & (owner == other)
                overlaps[(int(other), index)] = np.argwhere(both)
        free = mask & (owner < 0)
        out[free] = value
        owner[free] = index
    if overlaps:
        lines = []
        for (a, b), idx in overlaps.items():
            lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]  # i, j, k
            centre = segmentation.ijk_to_ras[:3, :3] @ ((lo + hi) / 2.0) + segmentation.ijk_to_ras[:3, 3]
            lines.append(f"'{segmentation.segments[a].name}' and '{segmentation.segments[b].name}' share {len(idx)} "
                         f"voxel(s) in i {lo[0]}-{hi[0]}, j {lo[1]}-{hi[1]}, k {lo[2]}-{hi[2]} (around RAS "
                         f"{' '.join(f'{c:.1f}' for c in centre)} mm)")
        raise BadInputError(f"{what}: segments of different labels overlap: " + "; ".join(lines),
                            "remove the overlap in Slicer's Segment Editor (e.g. Logical operators > Subtract, or "
                            "paint with masking 'Overwrite other segments'), then save the segmentation again")
    if not out.any():
        raise BadInputError(f"{what} is empty (no segment has a voxel of a heart label)", "draw the heart labels first")
    return out


def one_hot(labels, num_classes: int = NUM_CLASSES):
    """(z, y, x) integer labels -> (num_classes, z, y, x) float32 torch one-hot."""
    import torch

    arr = np.asarray(labels)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
        raise ValueError(f"label values must be in 0..{num_classes - 1}, got {int(arr.min())}..{int(arr.max())}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))
    out = torch.empty((num_classes,) + tuple(t.shape), dtype=torch.float32)
    for value in range(num_classes):  # one channel at a time: no int64 copy, no (z, y, x, classes) array
        out[value] = t == value
    return out


def _list(values: list[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")
