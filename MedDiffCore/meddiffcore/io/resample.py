"""Resampling a (z, y, x) array onto another grid in bounded memory (THE resampling helper of the engine).

A clinical label map or CT (512 x 512 x 256) is resampled slab by slab along the
destination's slowest axis (z): each slab of at most :data:`CHUNK_VOXELS` output
voxels reads only the box of the source it maps into, converts only that box, and is
written straight into the output array in its final dtype (``dtype``, with
``convert`` applied per slab, e.g. model units -> rounded int16 HU). No full-size
float64 array, coordinate grid or float32 copy of the output is ever made; the only
full-size temporary is the low-pass-filtered float32 source when downsampling (built
slab by slab with a halo, so it equals the whole-volume filter exactly).

Results equal the unchunked ``scipy.ndimage.affine_transform`` up to the rounding of
the shifted offsets (a few float32 ulps, :data:`LINEAR_TOLERANCE` relative to the
data's range); nearest-neighbour (``order=0``) results are identical.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from scipy import ndimage

#: Output voxels per slab (1 Mi: 4 MB of float32 per slab, whatever the volume's size).
CHUNK_VOXELS = 1 << 20
#: Downsampling by more than this (source voxels per output voxel) low-pass filters the source first.
LOWPASS_STEP = 1.5
#: Gaussian support in sigmas (scipy's default), which sets the halo of a filtered slab.
TRUNCATE = 4.0
#: Chunked linear resampling agrees with the unchunked one to this fraction of the data's range.
LINEAR_TOLERANCE = 1e-5


def zyx_affine(src_ijk_to_ras: np.ndarray, dst_ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset mapping a destination (z, y, x) index to a source (z, y, x) index."""
    a = np.linalg.inv(src_ijk_to_ras) @ dst_ijk_to_ras
    perm = np.eye(4)[[2, 1, 0, 3]]
    b = perm @ a @ perm
    return b[:3, :3], b[:3, 3]


def same_grid(src_ijk_to_ras, src_shape, dst_ijk_to_ras, dst_shape, atol: float = 1e-4) -> bool:
    return tuple(src_shape) == tuple(dst_shape) and np.allclose(src_ijk_to_ras, dst_ijk_to_ras, atol=atol, rtol=0)


def lowpass_sigma(matrix: np.ndarray, order: int) -> float:
    """The Gaussian sigma (source voxels) applied before an interpolating downsample; 0 when none is."""
    step = np.linalg.norm(matrix, axis=0)  # source voxels per destination voxel, per axis
    if order > 0 and np.any(step > LOWPASS_STEP):  # low-pass first so small structures are averaged, not skipped
        return float(max(step.max() / 2.0 - 0.5, 0.0))
    return 0.0


def _slab(shape, chunk_voxels: int) -> int:
    return max(1, int(chunk_voxels) // max(1, int(shape[1]) * int(shape[2])))


def _each_slab(work: Callable[[int], None], starts, workers: int | None) -> None:
    """``work(z0)`` for every slab, on ``workers`` threads (default: the job's,
    :func:`meddiffcore.devices.job_threads`). SciPy's filters and interpolation release the GIL and each slab writes only its own rows, so the result is the
    same bit for bit; at most ``workers`` slabs' temporaries exist at a time."""
    from ..devices import job_threads

    starts = list(starts)
    workers = job_threads() if workers is None else max(1, int(workers))
    if workers == 1 or len(starts) < 2:
        for z0 in starts:
            work(z0)
        return
    with ThreadPoolExecutor(min(workers, len(starts))) as pool:
        for _ in pool.map(work, starts):
            pass


def lowpass_radius(sigma: float) -> int:
    """Half-width in voxels of :func:`lowpass`'s truncated Gaussian: a voxel further away has no weight."""
    return int(TRUNCATE * sigma + 0.5)


def grown_box(box: tuple[slice, ...], margin: int, shape) -> tuple[slice, ...]:
    """``box`` (one slice per axis) grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(0, b.start - margin), min(int(n), b.stop + margin)) for b, n in zip(box, shape))


def lowpass(array: np.ndarray, sigma: float, prepare: Callable | None = None,
            chunk_voxels: int = CHUNK_VOXELS, box: tuple[slice, ...] | None = None, fill: float = 0.0,
            workers: int | None = None) -> np.ndarray:
    """``gaussian_filter(prepare(array), sigma)`` as float32, bit for bit, computed in z slabs: the first (z) pass
    of each slab reads a halo of the kernel's radius, the y and x passes (which never cross slabs) run on the slab
    alone, so only one slab's temporaries exist at a time and at most a third of the work is done twice.

    ``box`` (one slice per axis) filters only that part of the array, as if it were the whole volume (its inner
    edges reflect as the volume's do), and sets the rest to ``fill``. The result then equals the whole-volume filter
    wherever the kernel's window (:func:`lowpass_radius`) lies inside the box or meets only the volume's own edges;
    and everywhere, with ``fill=0``, when ``prepare(array)`` is zero outside a box that, grown by the radius
    (:func:`grown_box`), fits in ``box`` (the reflected values are zeros then, as the true ones are).
    ``workers``: threads for the slabs (:func:`_each_slab`)."""
    radius = lowpass_radius(sigma)
    out = np.zeros(array.shape, np.float32) if fill == 0 else np.full(array.shape, fill, np.float32)
    box = tuple(slice(0, n) for n in array.shape) if box is None else grown_box(box, 0, array.shape)
    if any(b.stop <= b.start for b in box):
        return out
    source, target = array[box], out[box]
    step = max(_slab(source.shape, chunk_voxels), 2 * radius)  # slabs well over the halo: little work is repeated

    def filtered(z0: int) -> None:
        z1 = min(z0 + step, source.shape[0])
        lo, hi = max(0, z0 - radius), min(source.shape[0], z1 + radius)
        part = source[lo:hi] if prepare is None else prepare(source[lo:hi])
        slab = ndimage.gaussian_filter1d(part, sigma, 0, output=np.float32, truncate=TRUNCATE)[z0 - lo:z1 - lo]
        del part
        for axis in (1, 2):  # in place, as gaussian_filter does its later passes
            ndimage.gaussian_filter1d(slab, sigma, axis, output=slab, truncate=TRUNCATE)
        target[z0:z1] = slab

    _each_slab(filtered, range(0, source.shape[0], step), workers)
    return out


def _source_box(matrix, offset, z0: int, z1: int, dst_shape, src_shape, order: int) -> tuple[slice, ...]:
    """The source index box (with the interpolation's margin) that destination slab z0..z1 reads."""
    corners = np.array([[z, y, x] for z in (z0, z1 - 1) for y in (0, dst_shape[1] - 1) for x in (0, dst_shape[2] - 1)],
                       dtype=np.float64)
    pts = corners @ matrix.T + offset
    margin = 1 + max(order, 1)
    box = []
    for axis in range(3):
        n = int(src_shape[axis])
        lo = int(np.clip(np.floor(pts[:, axis].min()) - margin, 0, n - 1))
        hi = int(np.clip(np.ceil(pts[:, axis].max()) + margin + 1, lo + 1, n))
        box.append(slice(lo, hi))
    return tuple(box)


def resample(array: np.ndarray, src_ijk_to_ras: np.ndarray, dst_ijk_to_ras: np.ndarray, dst_shape, order: int = 1,
             mode: str = "nearest", cval: float = 0.0, *, dtype=np.float32, convert: Callable | None = None,
             prepare: Callable | None = None, out: np.ndarray | None = None,
             chunk_voxels: int = CHUNK_VOXELS, lowpass_box: tuple[slice, ...] | None = None,
             lowpass_fill: float = 0.0, workers: int | None = None) -> np.ndarray:
    """Resample a (z, y, x) array onto another grid (``order`` 0 nearest, 1 linear; exact copy on the same grid).

    ``prepare(block)`` maps a block of the source to the values to interpolate (e.g. ``block == label``), applied
    only to the boxes that are read; ``convert(slab)`` maps each float32 output slab before it is stored as
    ``dtype`` (e.g. to rounded HU); ``out`` receives the result (allocated when None). Downsampling by more than
    :data:`LOWPASS_STEP` low-pass filters the source first (:func:`lowpass`; ``lowpass_box`` and ``lowpass_fill``
    are its ``box`` and ``fill``: the caller's knowledge of where ``prepare(array)`` is zero, so that the filter runs
    only where it matters). Spline orders above 1 need a whole-volume prefilter and are computed in one piece.
    Slabs run on ``workers`` threads (default: the job's; the result does not depend on it, :func:`_each_slab`)."""
    dst_shape = tuple(int(n) for n in dst_shape)
    if out is None:
        out = np.empty(dst_shape, dtype)
    step = _slab(dst_shape, chunk_voxels)
    if same_grid(src_ijk_to_ras, array.shape, dst_ijk_to_ras, dst_shape):
        for z0 in range(0, dst_shape[0], step):
            part = array[z0:z0 + step] if prepare is None else prepare(array[z0:z0 + step])
            part = np.asarray(part, dtype=np.float32)
            out[z0:z0 + step] = part if convert is None else convert(part)
        return out
    matrix, offset = zyx_affine(src_ijk_to_ras, dst_ijk_to_ras)
    source = array
    if array.dtype == np.float64 or (array.dtype.kind == "f" and array.dtype.itemsize < 4):
        source = np.asarray(array, dtype=np.float32)  # interpolate float32 values, as the output is float32
    sigma = lowpass_sigma(matrix, order)
    if sigma > 0 or order > 1:
        if sigma > 0:
            source = lowpass(source, sigma, prepare, chunk_voxels, lowpass_box, lowpass_fill, workers)
        else:
            source = np.asarray(source if prepare is None else prepare(source), dtype=np.float32)
        prepare = None
    if order > 1:
        result = ndimage.affine_transform(source, matrix, offset, output_shape=dst_shape, order=order, mode=mode,
                                          cval=cval, output=np.float32)
        out[...] = result if convert is None else convert(result)
        return out

    def resampled(z0: int) -> None:
        z1 = min(z0 + step, dst_shape[0])
        box = _source_box(matrix, offset, z0, z1, dst_shape, source.shape, order)
        block = source[box]
        if prepare is not None:
            block = prepare(block)
        if block.dtype == np.bool_:
            block = block.view(np.uint8)
        start = np.array([b.start for b in box], dtype=np.float64)
        shift = offset + matrix @ np.array([z0, 0.0, 0.0]) - start
        part = ndimage.affine_transform(block, matrix, shift, output_shape=(z1 - z0,) + dst_shape[1:], order=order,
                                        mode=mode, cval=cval, output=np.float32)
        out[z0:z1] = part if convert is None else convert(part)

    _each_slab(resampled, range(0, dst_shape[0], step), workers)
    return out
