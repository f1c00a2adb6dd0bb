"""Model grids and resampling with exact geometry (any spacing and orientation).

A synthesis grid has the label map's orientation, the model's spacing, covers
the label map's whole physical extent and is centred on it; its shape is
rounded up to what the network can take. Results are resampled back onto the
label map's own grid, so the output has exactly the input's geometry.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ...errors import BadInputError
from ...io.volume import Volume, geometry_from_spacing
from .labels import CORONARY, NUM_CLASSES

#: A coronary voxel keeps its label on a coarser grid when it fills at least this fraction of the new voxel.
CORONARY_KEEP_FRACTION = 0.25


def centred_grid(direction: np.ndarray, centre_ras, spacing_mm: float, shape_zyx) -> np.ndarray:
    """ijk_to_ras of an isotropic grid of ``shape_zyx`` with axes ``direction`` (columns), centred on ``centre_ras``."""
    n = np.array(shape_zyx[::-1], dtype=np.float64)
    origin = np.asarray(centre_ras, dtype=np.float64) - direction @ ((n - 1) / 2.0 * spacing_mm)
    return geometry_from_spacing([spacing_mm] * 3, origin, direction)


def synthesis_grid(volume: Volume, spacing_mm: float, multiple=(1, 1, 1)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(ijk_to_ras, shape zyx) of a grid at ``spacing_mm`` covering ``volume``, each size a multiple of ``multiple`` (zyx)."""
    extent = np.array(volume.shape[::-1], dtype=np.float64) * volume.spacing  # i, j, k edge to edge, mm
    mult = np.array(multiple[::-1])
    n = np.maximum(np.ceil(extent / spacing_mm - 1e-6).astype(int), 1)
    n = (np.ceil(n / mult) * mult).astype(int)
    centre = volume.ijk_to_ras_points([(np.array(volume.shape[::-1]) - 1) / 2.0])[0]
    shape = tuple(int(v) for v in n[::-1])
    return centred_grid(volume.direction, centre, spacing_mm, shape), shape


def _zyx_affine(src_ijk_to_ras: np.ndarray, dst_ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset mapping a destination (z, y, x) index to a source (z, y, x) index."""
    a = np.linalg.inv(src_ijk_to_ras) @ dst_ijk_to_ras
    perm = np.eye(4)[[2, 1, 0, 3]]
    b = perm @ a @ perm
    return b[:3, :3], b[:3, 3]


def same_grid(src_ijk_to_ras, src_shape, dst_ijk_to_ras, dst_shape, atol: float = 1e-4) -> bool:
    return tuple(src_shape) == tuple(dst_shape) and np.allclose(src_ijk_to_ras, dst_ijk_to_ras, atol=atol, rtol=0)


def resample(array: np.ndarray, src_ijk_to_ras: np.ndarray, dst_ijk_to_ras: np.ndarray, dst_shape, order: int = 1,
             mode: str = "nearest", cval: float = 0.0) -> np.ndarray:
    """Resample a (z, y, x) array onto another grid (float32; exact copy when the grids are the same)."""
    if same_grid(src_ijk_to_ras, array.shape, dst_ijk_to_ras, dst_shape):
        return np.asarray(array, dtype=np.float32).copy()
    matrix, offset = _zyx_affine(src_ijk_to_ras, dst_ijk_to_ras)
    src = np.asarray(array, dtype=np.float32)
    step = np.linalg.norm(matrix, axis=0)  # source voxels per destination voxel, per axis
    if order > 0 and np.any(step > 1.5):  # downsampling: low-pass first so small structures are averaged, not skipped
        src = ndimage.gaussian_filter(src, sigma=np.maximum(step.max() / 2.0 - 0.5, 0.0))
    return ndimage.affine_transform(src, matrix, offset, output_shape=tuple(dst_shape), order=order, mode=mode, cval=cval)


def resample_labels(labels: np.ndarray, src_ijk_to_ras, dst_ijk_to_ras, dst_shape) -> np.ndarray:
    """Labels onto another grid: the class with the largest (smoothed, linear) fraction wins, and coronaries
    win wherever they fill at least :data:`CORONARY_KEEP_FRACTION`, so thin vessels stay connected."""
    if same_grid(src_ijk_to_ras, labels.shape, dst_ijk_to_ras, dst_shape):
        return np.asarray(labels, dtype=np.uint8).copy()
    present = [int(v) for v in np.unique(labels)]
    fractions = np.zeros((NUM_CLASSES,) + tuple(dst_shape), dtype=np.float32)
    for value in present:
        fractions[value] = resample((labels == value).astype(np.float32), src_ijk_to_ras, dst_ijk_to_ras, dst_shape,
                                    order=1, mode="constant", cval=1.0 if value == 0 else 0.0)
    out = fractions.argmax(axis=0).astype(np.uint8)
    out[fractions[CORONARY] >= CORONARY_KEEP_FRACTION] = CORONARY
    return out


def check_field_of_view(volume: Volume, labels: np.ndarray, fov_mm: np.ndarray, what: str = "label map") -> None:
    """Refuse a label map far from the model's field of view (wrong units, a whole-body map, a tiny crop)."""
    extent = np.array(volume.shape[::-1]) * volume.spacing
    limit = 2.0 * float(np.max(fov_mm))
    if np.any(extent > limit):
        raise BadInputError(
            f"the {what} covers {' x '.join(f'{e:.0f}' for e in extent)} mm, far more than the model's field of view "
            f"({' x '.join(f'{f:.0f}' for f in fov_mm)} mm)", f"crop it around the heart (at most {limit:.0f} mm per axis)")
    idx = np.argwhere(labels > 0)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[i, j, k] for i in (lo[2], hi[2]) for j in (lo[1], hi[1]) for k in (lo[0], hi[0])], dtype=float)
    ras = volume.ijk_to_ras_points(corners)
    heart_mm = float(np.max(ras.max(axis=0) - ras.min(axis=0))) + float(volume.spacing.min())
    if heart_mm < 0.25 * float(np.min(fov_mm)):
        raise BadInputError(
            f"the labelled heart in the {what} is only {heart_mm:.1f} mm across; the model expects a heart of about "
            f"{0.6 * float(np.min(fov_mm)):.0f} mm in a {float(np.min(fov_mm)):.0f} mm field of view",
            "check the voxel spacing of the file (mm, not cm or m)")
    if heart_mm > 1.5 * float(np.max(fov_mm)):
        raise BadInputError(
            f"the labelled structures in the {what} span {heart_mm:.0f} mm, more than the model's field of view "
            f"({float(np.max(fov_mm)):.0f} mm)", "check the voxel spacing, or label only the heart and coronaries")
