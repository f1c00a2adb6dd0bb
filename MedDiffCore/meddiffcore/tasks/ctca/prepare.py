"""``meddiff prepare ctca``: ImageCAS-style pairs + TotalSegmentator heart labels -> a training folder.

For every case (matched by the file name up to its first dot: ``12.img.nii.gz``,
``12.label.nii.gz`` and ``12.nii.gz`` are case ``12``) the heart labels (1-7,
TotalSegmentator ``heartchambers_highres`` order, or mapped with a mapping file)
and the coronary label (any non-zero value -> 8) are joined on the image grid,
then image and labels are resampled to a fixed isotropic spacing on a fixed
shape on the patient axes, centred on the labelled heart's physical box (crop or pad; padding is -1024 HU and
background). Images stay in HU (int16); the fixed window of
:data:`.config.HU_WINDOW` is applied at training time and recorded in the card.

Output: ``images/<case>.nii.gz``, ``labels/<case>.nii.gz``, ``dataset.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import BadInputError
from ...io import VOLUME_EXTENSIONS, Volume, read_volume, write_volume
from .config import HU_WINDOW
from .grid import centred_grid, labelled_box, patient_axes, resample, resample_labels
from .labels import CORONARY, label_table, load_mapping, to_label_array


def case_id(path: Path) -> str:
    return path.name.split(".")[0]


def _by_case(folder: str | Path, what: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{what} folder '{folder}' does not exist", "check the path")
    return {case_id(p): p for p in sorted(folder.iterdir()) if p.name.lower().endswith(VOLUME_EXTENSIONS)}


def join_labels(heart: Volume, coronary: Volume, image: Volume, heart_mapping: dict[int, int] | None) -> np.ndarray:
    """Heart labels (1-7) and coronaries (8) on the image grid; coronaries win where they overlap."""
    heart_arr = to_label_array(heart.array, heart_mapping, what="heart label map")
    if np.any(heart_arr == CORONARY) and heart_mapping is None:
        raise BadInputError("the heart label map already holds label 8", "pass --heart-mapping to say what its values mean")
    heart_arr = resample_labels(heart_arr, heart.ijk_to_ras, image.ijk_to_ras, image.shape)
    cor = resample((coronary.array > 0).astype(np.float32), coronary.ijk_to_ras, image.ijk_to_ras, image.shape,
                   order=1, mode="constant") >= 0.5
    out = heart_arr.copy()
    out[cor] = CORONARY
    return out


def prepare(images: str | Path, coronary: str | Path, heart: str | Path, out: str | Path, *, spacing_mm: float = 2.0,
            shape=(64, 64, 64), heart_mapping: str | Path | None = None) -> int:
    """Write the training folder; returns the number of cases."""
    image_files, cor_files, heart_files = _by_case(images, "image"), _by_case(coronary, "coronary label"), _by_case(heart, "heart label")
    cases = sorted(set(image_files) & set(cor_files) & set(heart_files))
    if not cases:
        raise BadInputError("no case has an image, a coronary label and a heart label",
                            "name files <case>.<anything>.nii.gz with the same <case> in the three folders")
    mapping = load_mapping(heart_mapping) if heart_mapping else None
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in shape)
    written = []
    for case in cases:
        image = read_volume(image_files[case])
        labels = join_labels(read_volume(heart_files[case]), read_volume(cor_files[case]), image, mapping)
        axes = patient_axes(image.direction)  # the crop is on patient axes, centred in physical space
        lo, hi = labelled_box(image, labels, axes)
        grid = centred_grid(axes, axes @ ((lo + hi) / 2.0), spacing_mm, shape)
        ct = resample(image.array.astype(np.float32), image.ijk_to_ras, grid, shape, order=1, mode="constant", cval=-1024.0)
        lab = resample_labels(labels, image.ijk_to_ras, grid, shape)
        write_volume(Volume(np.clip(np.round(ct), -1024, 3071).astype(np.int16), grid), out / "images" / f"{case}.nii.gz")
        write_volume(Volume(lab, grid), out / "labels" / f"{case}.nii.gz")
        written.append(case)
    (out / "dataset.json").write_text(json.dumps({
        "task": "ctca", "cases": written, "spacing_mm": spacing_mm, "shape": list(shape), "hu_window": list(HU_WINDOW),
        "labels": label_table(), "sources": {"images": str(images), "coronary": str(coronary), "heart": str(heart)},
    }, indent=2), encoding="utf-8")
    return len(written)
