"""Model grids and resampling with exact geometry (any spacing and orientation).

Everything is measured in physical (RAS, mm) space, never in voxel indices. A
synthesis grid is aligned with the patient axes nearest to the label map's own
(:func:`patient_axes`: the same axes for an axis-aligned map, the nearest ones
for an oblique map, as the training crops are), has the model's spacing,
covers the label map's whole physical box and is centred on it; its shape is
rounded up to what the network can take. Results are resampled back onto the
label map's own grid, so the output has exactly the input's geometry.
"""

from __future__ import annotations

import numpy as np

from ...errors import BadInputError
from ...io.resample import CHUNK_VOXELS, grown_box, lowpass_radius, lowpass_sigma, same_grid, zyx_affine
from ...io.resample import resample as resample_array
from ...io.volume import Volume, geometry_from_spacing
from .labels import CORONARY, label_values

#: A coronary voxel keeps its label on a coarser grid when it fills at least this fraction of the new voxel.
CORONARY_KEEP_FRACTION = 0.25


def centred_grid(direction: np.ndarray, centre_ras, spacing_mm: float, shape_zyx) -> np.ndarray:
    """ijk_to_ras of an isotropic grid of ``shape_zyx`` with axes ``direction`` (columns), centred on ``centre_ras``."""
    n = np.array(shape_zyx[::-1], dtype=np.float64)
    origin = np.asarray(centre_ras, dtype=np.float64) - direction @ ((n - 1) / 2.0 * spacing_mm)
    return geometry_from_spacing([spacing_mm] * 3, origin, direction)


def patient_axes(direction: np.ndarray) -> np.ndarray:
    """The signed permutation of the RAS axes nearest to ``direction`` (columns): for each grid axis, the patient
    axis it is closest to, in the same sense. An axis-aligned direction is returned unchanged."""
    d = np.asarray(direction, dtype=np.float64)
    out = np.zeros((3, 3))
    free = [0, 1, 2]
    for col in sorted(range(3), key=lambda c: -np.max(np.abs(d[:, c]))):  # most clear-cut axis first
        row = max(free, key=lambda r: abs(d[r, col]))
        out[row, col] = 1.0 if d[row, col] >= 0 else -1.0
        free.remove(row)
    return out


def _corners(shape_zyx) -> np.ndarray:
    """The 8 outer corners (i, j, k, edge to edge) of a voxel box."""
    n = np.array(shape_zyx[::-1], dtype=np.float64)
    return np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5) for k in (-0.5, n[2] - 0.5)])


def synthesis_grid(volume: Volume, spacing_mm: float, multiple=(1, 1, 1)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(ijk_to_ras, shape zyx) of a grid at ``spacing_mm`` on the patient axes nearest to ``volume``'s, covering
    its whole physical box (edge to edge), each size a multiple of ``multiple`` (zyx)."""
    axes = patient_axes(volume.direction)
    corners = axes.T @ volume.ijk_to_ras_points(_corners(volume.shape)).T  # mm along the grid's axes (i, j, k)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    mult = np.array(multiple[::-1])
    n = np.maximum(np.ceil((hi - lo) / spacing_mm - 1e-6).astype(int), 1)
    n = (np.ceil(n / mult) * mult).astype(int)
    shape = tuple(int(v) for v in n[::-1])
    return centred_grid(axes, axes @ ((lo + hi) / 2.0), spacing_mm, shape), shape


def labelled_box(volume: Volume, labels: np.ndarray, axes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) in mm along ``axes`` (columns; default the patient axes nearest to the volume's) of the labelled
    voxels' outer edges: the physical extent of the labelled structures, whatever the grid's orientation.
    Works slice by slice, so memory stays bounded for clinical label maps."""
    axes = patient_axes(volume.direction) if axes is None else np.asarray(axes, dtype=np.float64)
    lin = axes.T @ volume.ijk_to_ras[:3, :3]  # (i, j, k) index -> mm along the axes
    half = 0.5 * np.abs(lin).sum(axis=1)  # a voxel's half-extent along each axis
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for k in np.nonzero(np.any(labels > 0, axis=(1, 2)))[0]:
        j, i = np.nonzero(labels[k] > 0)
        pts = lin @ np.stack([i, j, np.full(i.shape, k)]).astype(np.float64)
        lo, hi = np.minimum(lo, pts.min(axis=1)), np.maximum(hi, pts.max(axis=1))
    if not np.all(np.isfinite(lo)):
        raise BadInputError("the label map is empty (every voxel is background)", "draw the heart labels first")
    offset = axes.T @ volume.ijk_to_ras[:3, 3]
    return lo + offset - half, hi + offset + half


def resample(array: np.ndarray, src_ijk_to_ras: np.ndarray, dst_ijk_to_ras: np.ndarray, dst_shape, order: int = 1,
             mode: str = "nearest", cval: float = 0.0, **chunking) -> np.ndarray:
    """Resample a (z, y, x) array onto another grid (float32 unless ``dtype``; exact copy when the grids are the
    same), in bounded slabs: :func:`meddiffcore.io.resample.resample` (``dtype``, ``convert``, ``prepare``, ``out``)."""
    return resample_array(array, src_ijk_to_ras, dst_ijk_to_ras, dst_shape, order, mode, cval, **chunking)


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Each value present in ``labels`` -> the box (one slice per axis) of its voxels, found slice by slice."""
    found: dict[int, list[int]] = {}  # value -> [z0, z1, y0, y1, x0, x1]
    for z in range(labels.shape[0]):
        plane = labels[z]
        for value in np.unique(plane):
            mask = plane == value
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            b = found.setdefault(int(value), [z, z + 1, rows[0], rows[-1] + 1, cols[0], cols[-1] + 1])
            b[1], b[2], b[3] = z + 1, min(b[2], rows[0]), max(b[3], rows[-1] + 1)
            b[4], b[5] = min(b[4], cols[0]), max(b[5], cols[-1] + 1)
    return {v: (slice(b[0], b[1]), slice(int(b[2]), int(b[3])), slice(int(b[4]), int(b[5]))) for v, b in found.items()}


def resample_labels(labels: np.ndarray, src_ijk_to_ras, dst_ijk_to_ras, dst_shape,
                    chunk_voxels: int = CHUNK_VOXELS) -> np.ndarray:
    """Labels onto another grid: the class with the largest (smoothed, linear) fraction wins, and coronaries
    win wherever they fill at least :data:`CORONARY_KEEP_FRACTION`, so thin vessels stay connected.

    One class at a time, each read as ``labels == value`` only box by box (:func:`resample`'s ``prepare``), with
    a running arg-max (ties go to the lower label, as ``argmax`` does): memory is the output's few arrays, never
    one float array per class at full size.

    Where the map is downsampled (low-pass first), each class is filtered only in the box of its voxels grown by
    the kernel's radius (outside it its fraction is exactly zero), and the background only around the other
    classes' boxes (it decides a voxel only where another class's fraction is above zero, i.e. within one voxel of
    such a box grown by the radius; the background is filtered in their union grown by twice the radius and two
    voxels, exact there): the labels are bit for bit those of whole-volume filtering, at a fraction of the work
    for a clinical map, where each structure fills a small part of the field of view."""
    dst_shape = tuple(int(n) for n in dst_shape)
    if same_grid(src_ijk_to_ras, labels.shape, dst_ijk_to_ras, dst_shape):
        return np.asarray(labels, dtype=np.uint8).copy()
    lowpass: dict[int, tuple] = {}  # value -> (box filtered, value elsewhere) where the map is low-passed
    sigma = lowpass_sigma(zyx_affine(src_ijk_to_ras, dst_ijk_to_ras)[0], 1)
    if sigma > 0:
        radius = lowpass_radius(sigma)
        boxes = label_boxes(labels)
        present = sorted(boxes)
        others = [boxes[v] for v in present if v]
        lowpass = {v: (grown_box(boxes[v], radius, labels.shape), 0.0) for v in present if v}
        if others and 0 in present:
            union = tuple(slice(min(b[a].start for b in others), max(b[a].stop for b in others)) for a in range(3))
            lowpass[0] = (grown_box(union, 2 * radius + 2, labels.shape), 1.0)
    else:
        present = [int(v) for v in label_values(labels)]
    out = np.zeros(dst_shape, np.uint8)
    best = np.zeros(dst_shape, np.float32)  # absent classes have fraction 0 everywhere: they never win a voxel
    fraction = np.empty(dst_shape, np.float32)
    for value in present:
        box, fill = lowpass.get(value, (None, 0.0))
        resample(labels, src_ijk_to_ras, dst_ijk_to_ras, dst_shape, order=1, mode="constant",
                 cval=1.0 if value == 0 else 0.0, prepare=lambda block, v=value: block == v, out=fraction,
                 chunk_voxels=chunk_voxels, lowpass_box=box, lowpass_fill=fill)
        wins = fraction > best if value else np.ones(dst_shape, bool)
        out[wins] = value
        np.maximum(best, fraction, out=best)
        if value == CORONARY:
            out[fraction >= CORONARY_KEEP_FRACTION] = CORONARY
    return out


#: Labelled structures wider than this are not a heart in millimetres (the voxel spacing is in other units).
MAX_LABELLED_SPAN_MM = 600.0


def check_field_of_view(volume: Volume, labels: np.ndarray, fov_mm: np.ndarray, what: str = "label map") -> np.ndarray:
    """Refuse a label map whose labelled structures cannot be a heart in mm (wrong units, a tiny crop); return
    their physical span (mm along the patient axes, i j k). Any span larger than the model's field of view is
    synthesised by overlapping windows (:func:`.synthesis.low_resolution`)."""
    lo, hi = labelled_box(volume, labels)
    span = hi - lo
    heart_mm = float(np.max(span))
    if heart_mm < 0.25 * float(np.min(fov_mm)):
        raise BadInputError(
            f"the labelled heart in the {what} is only {heart_mm:.1f} mm across; the model expects a heart of about "
            f"{0.6 * float(np.min(fov_mm)):.0f} mm in a {float(np.min(fov_mm)):.0f} mm field of view",
            "check the voxel spacing of the file (mm, not cm or m)")
    if heart_mm > MAX_LABELLED_SPAN_MM:
        raise BadInputError(
            f"the labelled structures in the {what} span {' x '.join(f'{e:.0f}' for e in span)} mm (patient axes), "
            f"more than any heart and its great vessels ({MAX_LABELLED_SPAN_MM:.0f} mm)",
            "check the voxel spacing of the file (mm, not 0.1 mm), or label only the heart and coronaries")
    return span
