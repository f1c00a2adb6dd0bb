"""In-memory volumes (3D) and volume sequences (4D) with exact geometry.

Conventions (the same as 3D Slicer and SimpleITK):

* ``Volume.array`` is indexed ``array[k, j, i]``, i.e. (z, y, x): exactly what
  ``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage`` return.
* ``ijk_to_ras`` is a 4x4 float64 matrix mapping voxel index ``(i, j, k, 1)`` to
  RAS millimetres, where I indexes the LAST array axis, J the middle one and K
  the first. It is the matrix Slicer's ``GetIJKToRASMatrix`` returns.
* Spacing, origin and direction are derived from that matrix, never stored
  twice. LPS (DICOM, ITK) differs from RAS by negating the first two rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence as _Seq

import numpy as np

from meddiffcore.errors import BadInputError

__all__ = [
    "Volume",
    "Sequence",
    "check_finite",
    "RAS_TO_LPS",
    "geometry_from_spacing",
]

#: Multiplying a RAS point by this gives LPS, and vice versa (it is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_SUPPORTED_KINDS = "biuf"  # bool, signed int, unsigned int, float


def check_finite(array, what: str) -> np.ndarray:
    """Return ``array`` as an ndarray; raise :class:`BadInputError` if it holds NaN or inf.

    Integer and boolean arrays are always finite and are not scanned.
    """
    arr = np.asarray(array)
    if arr.dtype.kind in "fc":
        if all(np.isfinite(part).all() for part in (arr if arr.ndim > 1 else (arr,))):  # a frame/slice at a time
            return arr
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            raise BadInputError(
                f"{what} contains {bad} non-finite value(s) ({n_nan} NaN, {bad - n_nan} inf)",
                "replace the NaN/inf values (e.g. with numpy.nan_to_num) or fix the step that produced them",
            )
    elif arr.dtype.kind not in "biu":
        raise BadInputError(f"{what} has dtype {arr.dtype}, expected numbers", "pass a numeric array")
    return arr


def _check_matrix(matrix, what: str = "ijk_to_ras") -> np.ndarray:
    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{what} is not a numeric 4x4 matrix ({exc})", "pass a 4x4 array") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise BadInputError(f"{what} must be a 4x4 matrix, got shape {m.shape}", "pass a 4x4 homogeneous matrix")
    check_finite(m, what)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-12):
        raise BadInputError(
            f"{what} must be affine (last row 0 0 0 1), got last row {m[3].tolist()}",
            "pass a homogeneous affine matrix",
        )
    m[3] = [0.0, 0.0, 0.0, 1.0]
    lin = m[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms == 0) or abs(np.linalg.det(lin / norms)) < 1e-6:
        raise BadInputError(
            f"{what} is singular (zero spacing or parallel axes): {lin.tolist()}",
            "check the spacing and direction of the volume",
        )
    return m


def _check_array(array, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind not in _SUPPORTED_KINDS:
        raise BadInputError(
            f"{what} has unsupported dtype {arr.dtype}",
            "use a boolean, integer or floating-point array",
        )
    if arr.ndim != ndim:
        if ndim == 3:
            raise BadInputError(
                f"expected a 3D volume, got shape {arr.shape} (a 2D slice or a 4D sequence?)",
                "pass a single 3D volume (z, y, x); read 4D data with read_sequence",
            )
        raise BadInputError(
            f"expected a 4D sequence (t, z, y, x), got shape {arr.shape}",
            "stack 3D frames along the first axis, or use Sequence.from_volumes",
        )
    if 0 in arr.shape:
        raise BadInputError(f"{what} is empty (shape {arr.shape})", "pass a non-empty array")
    return arr


def geometry_from_spacing(
    spacing_mm: Iterable[float] = (1.0, 1.0, 1.0),
    origin_ras: Iterable[float] = (0.0, 0.0, 0.0),
    direction_ras=None,
) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix for a spacing (I, J, K order), origin and direction.

    ``direction_ras`` is a 3x3 matrix whose COLUMNS are the unit RAS directions of
    the I, J and K axes (the ITK/SimpleITK convention); identity when omitted.
    """
    sp = np.asarray(tuple(spacing_mm), dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise BadInputError(f"spacing must be 3 positive numbers (I, J, K), got {tuple(spacing_mm)}",
                            "give the voxel size in mm as (sx, sy, sz)")
    org = np.asarray(tuple(origin_ras), dtype=np.float64)
    if org.shape != (3,):
        raise BadInputError(f"origin must be 3 numbers, got {tuple(origin_ras)}", "give (R, A, S) in mm")
    d = np.eye(3) if direction_ras is None else np.asarray(direction_ras, dtype=np.float64)
    if d.shape != (3, 3):
        raise BadInputError(f"direction must be a 3x3 matrix, got shape {d.shape}", "pass a 3x3 matrix")
    m = np.eye(4)
    m[:3, :3] = d * sp[None, :]
    m[:3, 3] = org
    return _check_matrix(m)


class _Geometry:
    """Properties shared by Volume and Sequence, all derived from ``ijk_to_ras``."""

    ijk_to_ras: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm in I, J, K order (= x, y, z): the column norms of the 3x3 part."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3x3 RAS direction matrix; column n is the unit direction of axis I, J, K."""
        return self.ijk_to_ras[:3, :3] / self.spacing[None, :]

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        return RAS_TO_LPS @ self.ijk_to_ras

    @property
    def lps_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_lps)

    @property
    def origin_lps(self) -> np.ndarray:
        return self.ijk_to_lps[:3, 3].copy()

    @property
    def direction_lps(self) -> np.ndarray:
        return self.ijk_to_lps[:3, :3] / self.spacing[None, :]

    def ijk_to_ras_points(self, ijk) -> np.ndarray:
        """Map (N, 3) voxel indices (i, j, k) to RAS mm."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras) -> np.ndarray:
        """Map (N, 3) RAS points (mm) to continuous voxel indices (i, j, k)."""
        m = self.ras_to_ijk
        p = np.asarray(ras, dtype=np.float64)
        return p @ m[:3, :3].T + m[:3, 3]

    def same_grid(self, other, atol: float = 1e-6) -> bool:
        """True if ``other`` has the same spatial shape and IJK-to-RAS matrix (within ``atol`` mm)."""
        return tuple(self.shape[-3:]) == tuple(other.shape[-3:]) and bool(
            np.allclose(self.ijk_to_ras, other.ijk_to_ras, rtol=0.0, atol=atol)
        )


@dataclass(eq=False)
class Volume(_Geometry):
    """A 3D scalar volume: ``array[k, j, i]`` plus its 4x4 IJK-to-RAS matrix.

    The array is kept as given (no copy); the matrix is copied to float64.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray = field(default_factory=lambda: np.eye(4))
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = _check_array(self.array, 3, "volume")
        self.ijk_to_ras = _check_matrix(self.ijk_to_ras)
        self.metadata = dict(self.metadata or {})

    @classmethod
    def from_spacing(
        cls,
        array,
        spacing_mm: Iterable[float] = (1.0, 1.0, 1.0),
        origin_ras: Iterable[float] = (0.0, 0.0, 0.0),
        direction_ras=None,
        metadata: dict | None = None,
    ) -> "Volume":
        """Build a volume from spacing (I, J, K = x, y, z order, mm), RAS origin and direction columns."""
        return cls(array, geometry_from_spacing(spacing_mm, origin_ras, direction_ras), metadata or {})

    @classmethod
    def from_ijk_to_lps(cls, array, ijk_to_lps, metadata: dict | None = None) -> "Volume":
        return cls(array, RAS_TO_LPS @ _check_matrix(ijk_to_lps, "ijk_to_lps"), metadata or {})

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def with_array(self, new_array, metadata: dict | None = None) -> "Volume":
        """A volume with the same geometry (and metadata unless given) holding ``new_array``."""
        arr = np.asarray(new_array)
        if arr.shape != self.shape:
            raise BadInputError(
                f"new array has shape {arr.shape}, the volume has shape {self.shape}",
                "the array must have the same (z, y, x) shape as the volume it replaces",
            )
        return Volume(arr, self.ijk_to_ras.copy(), dict(self.metadata) if metadata is None else metadata)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}) mm)"


@dataclass(eq=False)
class Sequence(_Geometry):
    """A 4D sequence of 3D frames sharing one geometry: ``array[t, k, j, i]``.

    ``times_s`` holds one time (seconds) per frame; it defaults to 0, 1, 2, ...
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray = field(default_factory=lambda: np.eye(4))
    times_s: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = _check_array(self.array, 4, "sequence")
        self.ijk_to_ras = _check_matrix(self.ijk_to_ras)
        n = self.array.shape[0]
        if self.times_s is None:
            times = np.arange(n, dtype=np.float64)
        else:
            times = check_finite(np.array(self.times_s, dtype=np.float64).reshape(-1), "times_s")
        if times.shape != (n,):
            raise BadInputError(
                f"times_s has {times.size} values for {n} frames",
                "give exactly one time (seconds) per frame",
            )
        self.times_s = times
        self.metadata = dict(self.metadata or {})

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.array.shape)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def frame(self, index: int) -> Volume:
        """Frame ``index`` as a Volume (a view on the sequence array, not a copy)."""
        n = len(self)
        if not -n <= index < n:
            raise BadInputError(f"frame {index} does not exist: the sequence has {n} frames",
                                f"use a frame index from 0 to {n - 1}")
        md = dict(self.metadata)
        md["time_s"] = float(self.times_s[index])
        md["frame_index"] = int(index % n)
        return Volume(self.array[index], self.ijk_to_ras.copy(), md)

    def frames(self) -> list[Volume]:
        return [self.frame(i) for i in range(len(self))]

    def with_array(self, new_array, metadata: dict | None = None) -> "Sequence":
        arr = np.asarray(new_array)
        if arr.shape != self.shape:
            raise BadInputError(
                f"new array has shape {arr.shape}, the sequence has shape {self.shape}",
                "the array must have the same (t, z, y, x) shape as the sequence it replaces",
            )
        return Sequence(arr, self.ijk_to_ras.copy(), self.times_s.copy(),
                        dict(self.metadata) if metadata is None else metadata)

    @classmethod
    def from_volumes(
        cls,
        volumes: _Seq[Volume],
        times_s: Iterable[float] | None = None,
        metadata: dict | None = None,
        atol_mm: float = 1e-5,
    ) -> "Sequence":
        """Stack 3D volumes that share one grid into a sequence.

        Raises :class:`BadInputError` naming the first frame whose shape or
        IJK-to-RAS matrix differs from frame 0 (matrices compared to ``atol_mm``).
        """
        vols = list(volumes)
        if not vols:
            raise BadInputError("cannot build a sequence from zero volumes", "pass at least one volume")
        first = vols[0]
        for n, v in enumerate(vols):
            if not isinstance(v, Volume):
                raise BadInputError(f"frame {n} is a {type(v).__name__}, not a Volume", "pass Volume objects")
            if v.shape != first.shape:
                raise BadInputError(
                    f"frame {n} has shape {v.shape} but frame 0 has shape {first.shape}",
                    "resample all frames onto one grid before building a sequence",
                )
            diff = float(np.max(np.abs(v.ijk_to_ras - first.ijk_to_ras)))
            if diff > atol_mm:
                raise BadInputError(
                    f"frame {n} has a different geometry (IJK-to-RAS) than frame 0 "
                    f"(largest difference {diff:.3g} mm)",
                    "resample all frames onto one grid before building a sequence",
                )
        if times_s is None:
            times = [v.metadata.get("time_s") for v in vols]
            times_s = times if all(t is not None for t in times) else None
        md = dict(first.metadata) if metadata is None else dict(metadata)
        md.pop("time_s", None)
        md.pop("frame_index", None)
        return cls(np.stack([v.array for v in vols]), first.ijk_to_ras.copy(), times_s, md)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Sequence(frames={len(self)}, frame_shape={self.frame_shape}, dtype={self.array.dtype}, spacing=({sp}) mm)"
