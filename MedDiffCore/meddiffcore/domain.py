"""Out-of-domain warnings: compare a job's input files with what its model was trained on.

A model card's ``domain`` section describes the training data::

    "domain": {
      "inputs": ["labels"],            # the job inputs it describes
      "spacing_mm": [2.0, 2.0, 2.0],   # x, y, z (file axes i, j, k); null: not checked
      "size": [null, null, null],      # voxels along x, y, z; null: any
      "resampled": true,               # the task resamples the input to spacing_mm (else it runs on the input's grid)
      "intensity": {"of": "input", "unit": "HU", "window": [-1000.0, 1000.0]},
      "data": "...", "comment": "what is taken from the card, what is inferred ([inf])"
    }

:func:`warn_out_of_domain` reads only the headers of those inputs (size and spacing, no voxel data) and sends
one ``reporter.warning`` per finding that says what it means for the result, before the task starts its work.
It never fails a job: an input it cannot read cheaply is left to the task, which reports it properly.

Thresholds (one table, :data:`THRESHOLDS`): a finding is reported when some checked axis of the input is
finer or coarser than the training spacing by more than ``spacing_ratio`` (2x), or has more or fewer voxels
than the training size by more than ``size_ratio`` (4x). Intensities need the voxel data, so they are not
checked here; the card's window is named in the warnings' hints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from .errors import MedDiffError

#: When an input counts as out of the model's domain (ratios along any checked axis, both directions).
THRESHOLDS: dict[str, float] = {
    "spacing_ratio": 2.0,  # input spacing vs training spacing
    "size_ratio": 4.0,  # input voxels vs training voxels (models that run on the input's own grid)
}

#: At most this many files of a folder (a batch) are looked at; their findings are merged.
MAX_FOLDER_FILES = 64

AXES = ("x", "y", "z")


def header_geometry(path: str | Path) -> list[tuple[str, tuple[int, ...], tuple[float, ...]]]:
    """``[(name, size_xyz, spacing_xyz_mm)]`` of the volume(s) at ``path`` from their headers alone.

    A file gives one entry, a DICOM series folder one, a folder of volume files one per file (up to
    :data:`MAX_FOLDER_FILES`). Non-spatial axes (a sequence's time) are left out. Returns ``[]`` for what
    cannot be read cheaply (an unknown format, a damaged header): the task reads it and says what is wrong.
    """
    p = Path(path)
    try:
        if p.is_dir():
            series = _dicom_series(p, None) if _holds_dicom(p) else None
            if series is not None:
                return [series]
            from .io import volume_files

            found = []
            for f in volume_files(p)[:MAX_FOLDER_FILES]:
                found += header_geometry(f)
            return found
        if not p.is_file():
            return []
        one = _file_geometry(p)
        return [one] if one is not None else []
    except Exception:  # noqa: BLE001 - nibabel, ITK and our NRRD parser raise many types for damaged headers
        return []


def _holds_dicom(folder: Path, look_at: int = 16) -> bool:
    """Whether one of the first files in ``folder`` is DICOM (so GDCM is asked only then, and stays quiet)."""
    from .io.formats import _is_dicom_file

    files = sorted(f for f in folder.iterdir() if f.is_file())[:look_at]
    return any(f.suffix.lower() in (".dcm", ".ima", ".dicom") or _is_dicom_file(f) for f in files)


def _file_geometry(p: Path) -> tuple[str, tuple[int, ...], tuple[float, ...]] | None:
    import numpy as np

    from .io import nrrd as _nrrd
    from .io.formats import _nrrd_geometry, volume_format

    try:
        fmt = volume_format(p)
    except MedDiffError:
        return None
    if fmt == "nifti":
        import nibabel as nib

        img = nib.load(str(p))  # header only: the data stay on disk until asked for
        affine = np.asarray(img.affine, dtype=np.float64)
        size = tuple(int(s) for s in img.shape[:3])
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))[: len(size)]
        return p.name, size, spacing
    if fmt == "nrrd":
        header = _nrrd.read_nrrd(p, read_data=False)
        m, spatial, _ = _nrrd_geometry(header)
        if len(spatial) != 3:
            return None
        sizes = header.sizes
        return p.name, tuple(sizes[a] for a in spatial), tuple(float(s) for s in np.linalg.norm(m[:3, :3], axis=0))
    if fmt == "dicom":
        return _dicom_series(p.parent, p)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    return p.name, tuple(int(s) for s in reader.GetSize()[:3]), tuple(float(s) for s in reader.GetSpacing()[:3])


def _dicom_series(folder: Path, one_file: Path | None):
    """Size and spacing of the one DICOM series in ``folder`` (or the series of ``one_file``) from two file headers."""
    import numpy as np
    import SimpleITK as sitk

    def info(name: str):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        return reader

    uid = None
    if one_file is not None:
        first = info(str(one_file))
        uid = first.GetMetaData("0020|000e").strip() if first.HasMetaDataKey("0020|000e") else None
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if uid is None:
        if len(uids) != 1:
            return None  # none, or several series: the reader asks which one
        uid = uids[0]
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    if not files:
        return None
    first = info(files[0])
    size = tuple(int(s) for s in first.GetSize()[:2])
    spacing = tuple(float(s) for s in first.GetSpacing()[:2])
    if len(files) > 1:
        dz = float(np.linalg.norm(np.subtract(info(files[1]).GetOrigin(), first.GetOrigin())))
    else:
        dz = float(first.GetSpacing()[2]) if first.GetDimension() > 2 else 1.0
    return (one_file or folder).name, size + (len(files),), spacing + (dz if dz > 0 else 1.0,)


# ------------------------------------------------------------------------------------------------ checks


def _fmt(values: Iterable[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def _worst(ratios: list[float], limit: float, prefer_small: bool) -> float | None:
    """The ratio beyond ``limit`` (either way) that matters most, or None if all are within it: the smallest one
    when ``prefer_small`` (finer spacing), else the largest (more voxels), else the one furthest from 1."""
    low, high = min(ratios), max(ratios)
    beyond_low, beyond_high = low < 1.0 / limit, high > limit
    if beyond_low and (prefer_small or not beyond_high):
        return low
    return high if beyond_high else None


def _window_text(domain: dict[str, Any]) -> str:
    intensity = domain.get("intensity") or {}
    window = intensity.get("window")
    if intensity.get("of") != "input" or not window:
        return ""
    return f"; it expects intensities in {window[0]:g} to {window[1]:g} {intensity.get('unit', '')}".rstrip()


def findings(domain: dict[str, Any], model_name: str, name: str, size: tuple[int, ...],
             spacing: tuple[float, ...]) -> list[tuple[str, str, str]]:
    """``[(kind, message, hint)]`` (kind 'spacing' or 'size') for one input of ``size`` voxels at ``spacing`` mm against ``domain``."""
    out: list[tuple[str, str, str]] = []
    resampled = bool(domain.get("resampled"))
    grid = _window_text(domain)
    train_sp = list(domain.get("spacing_mm") or [])
    axes = [a for a in range(min(len(train_sp), len(spacing))) if train_sp[a] and spacing[a] > 0]
    if axes:
        ratios = [spacing[a] / float(train_sp[a]) for a in axes]
        worst = _worst(ratios, THRESHOLDS["spacing_ratio"], prefer_small=True)
        if worst is not None:
            finer = worst < 1.0
            factor = 1.0 / worst if finer else worst
            have = _fmt(spacing[a] for a in axes)
            want = _fmt(float(train_sp[a]) for a in axes)
            message = (f"input '{name}' has spacing {have} mm ({', '.join(AXES[a] for a in axes)}), "
                       f"{factor:.1f}x {'finer' if finer else 'coarser'} than the {want} mm model '{model_name}' "
                       "was trained at")
            if resampled and finer:
                hint = f"the input is resampled to {want} mm before the model runs: detail finer than that is lost"
            elif resampled:
                hint = (f"the input is interpolated to {want} mm before the model runs: the result has no more "
                        "detail than the input")
            else:
                hint = (f"the model runs on the input's own grid, so anatomy spans {factor:.1f}x "
                        f"{'more' if finer else 'fewer'} voxels than in training: out of the model's domain, "
                        f"expect it to help little (resample the input to about {want} mm to stay in it){grid}")
            out.append(("spacing", message, hint))
    train_size = list(domain.get("size") or [])
    axes = [a for a in range(min(len(train_size), len(size))) if train_size[a] and size[a] > 0]
    if axes and not resampled:
        ratios = [size[a] / float(train_size[a]) for a in axes]
        worst = _worst(ratios, THRESHOLDS["size_ratio"], prefer_small=False)
        if worst is not None:
            larger = worst > 1.0
            factor = worst if larger else 1.0 / worst
            have = "x".join(str(size[a]) for a in axes)
            want = "x".join(str(int(train_size[a])) for a in axes)
            message = (f"input '{name}' is {have} voxels ({', '.join(AXES[a] for a in axes)}), {factor:.0f}x "
                       f"{'more' if larger else 'fewer'} than the {want} the model '{model_name}' was trained on")
            hint = ("out of the model's domain: expect it to help little over the classical result"
                    + (", and a run far longer than on in-domain inputs" if larger else "") + grid)
            out.append(("size", message, hint))
    return out


def default_model(job, runner) -> str | None:
    """The model the runner uses when the job names none: its module's ``DEFAULT_MODEL``, or
    ``DEFAULT_MODELS[kind]`` for the job's kind (the part of the task after the dot)."""
    module = sys.modules.get(getattr(runner, "__module__", ""), None)
    if module is None:
        return None
    if isinstance(getattr(module, "DEFAULT_MODEL", None), str):
        return module.DEFAULT_MODEL
    table = getattr(module, "DEFAULT_MODELS", None)
    if isinstance(table, dict):
        return table.get(job.task.split(".")[-1])
    return None


def warn_out_of_domain(job, reporter, runner=None) -> int:
    """Warn (``reporter.warning``) about every input of ``job`` outside its model card's domain; return how many
    warnings were sent. Reads the card (no checksum: the task verifies the weights) and the inputs' headers."""
    from .models import ModelCard, find_model

    ref = job.model or default_model(job, runner)
    if not ref:
        return 0
    try:
        card = ModelCard.from_json_file(find_model(ref).card_path)
    except MedDiffError:
        return 0  # the task reports a missing or broken model
    domain = card.domain or {}
    sent = 0
    for key in domain.get("inputs") or ():
        path = job.inputs.get(key)
        if not path:
            continue
        first: dict[str, tuple[str, str]] = {}
        count: dict[str, int] = {}
        for name, size, spacing in header_geometry(path):
            for kind, message, hint in findings(domain, card.name, name, size, spacing):
                first.setdefault(kind, (message, hint))
                count[kind] = count.get(kind, 0) + 1
        for kind, (message, hint) in first.items():  # a batch folder: one warning per kind, not one per file
            more = count[kind] - 1
            reporter.warning(message + (f" (and {more} more file{'s' if more > 1 else ''} in '{Path(path).name}')"
                                        if more else ""), hint)
            sent += 1
    return sent
