"""CTP sequence layouts beyond what :func:`meddiffcore.io.read_sequence` reads.

* ``.seq.nrrd`` / 4D NIfTI: :func:`meddiffcore.io.read_sequence` (times from the
  index values or the NIfTI time step); ``times`` overrides them.
* a folder holding a DICOM perfusion series (slice positions repeating once per
  time point) or one DICOM series per time point: :func:`meddiffcore.io.read_dicom_sequence`
  (times from the acquisition times; ``times`` overrides them);
* a folder of 3D volumes (sorted by file name), times from ``times`` or from a
  ``times.txt`` in the folder (one number per frame, or one number = the interval);
* the seed's ``.npy`` layout ``[slices, H, W, T]`` (1 mm voxels unless ``spacing_mm``
  is given), times from ``times`` (required).

``times`` is a comma-separated list of seconds, one per frame, or a single
number: the interval, frames at ``0, dt, 2 dt, ...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddiffcore.errors import BadInputError
from meddiffcore.io import (SEQUENCE_EXTENSIONS, VOLUME_EXTENSIONS, Sequence, Volume, atomic_output, is_dicom_folder,
                            read_dicom_sequence, read_sequence, read_volume, write_sequence)
from meddiffcore.io.atomic import split_extension

NPY_EXTENSION = ".npy"
TIMES_FILE = "times.txt"


def parse_times(value, n_frames: int) -> np.ndarray:
    """Times (s) from ``"0,2,4.5"`` (one per frame) or ``"2"`` (the interval) or a list of numbers."""
    if isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, str):
        items = [v for v in value.replace(";", ",").replace("\n", ",").replace(" ", ",").split(",") if v.strip()]
    else:
        items = list(value)
    try:
        values = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(f"cannot read frame times from {value!r}",
                            "give seconds separated by commas (0,2,4,...) or one interval such as 2") from None
    if values.size == 1 and n_frames != 1:
        if not np.isfinite(values[0]) or values[0] <= 0:
            raise BadInputError(f"the frame interval must be positive, got {values[0]:g}", "give e.g. --times 2")
        return values[0] * np.arange(n_frames, dtype=np.float64)
    if values.size != n_frames:
        raise BadInputError(f"{values.size} frame times given for {n_frames} frames", "give exactly one time per frame")
    return values


def _ext(path: Path) -> str:
    return split_extension(path.name)[1].lower()


def read_ctp_sequence(path, times=None, spacing_mm=None) -> Sequence:
    """Read any supported CTP input layout as a Sequence (t, z, y, x) with times in seconds."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"input '{p}' does not exist", "check the path")
    dicom = p.is_dir() and is_dicom_folder(p)  # a DICOM perfusion series (or one series per time point)
    if p.is_dir() and not dicom:
        return _read_folder(p, times)
    if _ext(p) == NPY_EXTENSION:
        return _read_npy(p, times, spacing_mm)
    seq = read_dicom_sequence(p) if dicom else read_sequence(p)
    if times is not None:
        return Sequence(seq.array, seq.ijk_to_ras, parse_times(times, len(seq)), seq.metadata)
    if seq.metadata.get("time_step_missing"):
        raise BadInputError(f"'{p.name}' does not record its time step "
                            f"({'its DICOM files have no acquisition times' if dicom else 'NIfTI pixdim[4] is 0'})",
                            "give the frame times with --times (e.g. --times 2 for 2 s sampling)")
    if len(seq) > 1 and seq.metadata.get("times_unknown"):  # never guess 0, 1, 2... s: a 2 s scan would become 1 s
        raise BadInputError(f"'{p.name}' does not give its frame times: {seq.metadata['times_unknown']}",
                            "give the frame times in seconds with --times (e.g. --times 0,2,4,... or --times 2 for "
                            "2 s sampling), or save the sequence with numeric time index values")
    if len(seq) > 1 and seq.metadata.get("index_values_unit"):
        raise BadInputError(f"'{p.name}' gives its frame times in '{seq.metadata['index_values_unit']}', which is not a "
                            "time unit MedDiff knows (s, ms, us, min)",
                            "give the frame times in seconds with --times, or save the sequence with a time unit")
    return seq


def _read_folder(folder: Path, times) -> Sequence:
    files = sorted(f for f in folder.iterdir() if f.is_file() and _ext(f) in VOLUME_EXTENSIONS and f.name != TIMES_FILE)
    if not files:
        raise BadInputError(f"folder '{folder}' holds no 3D volumes", f"put one volume per frame there ({', '.join(VOLUME_EXTENSIONS)})")
    if times is None:
        tf = folder / TIMES_FILE
        if not tf.is_file():
            raise BadInputError(f"folder '{folder}' has no {TIMES_FILE} and no --times was given",
                                f"write the frame times (s), one per line, to {TIMES_FILE} or pass --times")
        times = tf.read_text(encoding="utf-8")
    vols = [read_volume(f) for f in files]
    return Sequence.from_volumes(vols, parse_times(times, len(vols)), {"format": "folder", "path": str(folder)})


def _read_npy(path: Path, times, spacing_mm) -> Sequence:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read '{path.name}' as a numpy array: {exc}", "give a .npy file saved by numpy.save") from None
    if arr.ndim != 4:
        raise BadInputError(f"'{path.name}' has shape {arr.shape}; the seed layout is [slices, H, W, T]",
                            "save the sequence as a 4D array [slices, H, W, T]")
    if times is None:
        raise BadInputError(f"'{path.name}' does not record frame times", "give them with --times (e.g. --times 4)")
    data = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    vol = Volume.from_spacing(np.zeros(data.shape[1:], np.uint8), spacing_mm or (1.0, 1.0, 1.0))
    return Sequence(data, vol.ijk_to_ras, parse_times(times, data.shape[0]), {"format": "npy", "path": str(path)})


def check_output_path(path, input_path=None, even_times: bool = True) -> Path:
    """Validate an output path before any work: known extension, not the input, NIfTI only for even times."""
    p = Path(path)
    ext = _ext(p)
    if ext not in SEQUENCE_EXTENSIONS + (NPY_EXTENSION,):
        raise BadInputError(f"cannot write a sequence as '{p.name}'",
                            f"use one of {', '.join(SEQUENCE_EXTENSIONS + (NPY_EXTENSION,))}")
    if input_path is not None and Path(input_path).exists() and p.exists() and p.resolve() == Path(input_path).resolve():
        raise BadInputError("the output would overwrite the input", "write the result to a new file")
    if ext in (".nii", ".nii.gz", NPY_EXTENSION) and not even_times:
        raise BadInputError(f"'{p.name}' cannot store unevenly spaced frame times",
                            "write a .seq.nrrd, which stores every frame's time")
    if not p.parent.exists():
        raise BadInputError(f"output folder '{p.parent}' does not exist", "create it first")
    return p


def write_ctp_sequence(seq: Sequence, path) -> Path:
    """Write as .seq.nrrd/NRRD/NIfTI (times kept), or .npy in the seed's [slices, H, W, T] layout, atomically."""
    p = Path(path)
    if _ext(p) == NPY_EXTENSION:
        with atomic_output(p) as tmp:
            with open(tmp, "wb") as handle:
                _save_seed_layout(handle, seq.array)
        return p
    return write_sequence(seq, p)


def _save_seed_layout(handle, array: np.ndarray) -> None:
    """``np.save`` of ``array`` (t, z, y, x) moved to the seed's [slices, H, W, T], written one slice at a time
    (the file is the same byte for byte; the moved array is never held whole)."""
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False,
                                                  "shape": array.shape[1:] + array.shape[:1]})
    for z in range(array.shape[1]):
        handle.write(np.ascontiguousarray(np.moveaxis(array[:, z], 0, -1)).data)
