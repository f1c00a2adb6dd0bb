"""Reading and writing volumes and sequences: NIfTI, NRRD, MetaImage, DICOM, Slicer ``.seq.nrrd``.

Geometry is kept exact: NIfTI sform/qform is RAS, NRRD says its space
(LPS/RAS/LAS) and is converted, MetaImage and DICOM (through SimpleITK) are
LPS. All writes are atomic (see :mod:`meddiffcore.io.atomic`).
"""

from __future__ import annotations

import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from meddiffcore.errors import BadInputError, MedDiffError

from . import nrrd as _nrrd
from .atomic import _fsync_file, atomic_output, atomic_outputs, split_extension
from .volume import RAS_TO_LPS, Sequence, Volume, check_finite

__all__ = [
    "read_volume",
    "write_volume",
    "read_segmentation",
    "is_segmentation_file",
    "is_dicom_file",
    "is_dicom_folder",
    "Segment",
    "Segmentation",
    "read_sequence",
    "read_dicom_sequence",
    "write_dicom_series",
    "write_sequence",
    "volume_format",
    "sequence_format",
    "VOLUME_EXTENSIONS",
    "VOLUME_WRITE_EXTENSIONS",
    "SEQUENCE_EXTENSIONS",
]

#: Extensions read_volume understands (plus a DICOM folder or a DICOM file).
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: Extensions write_volume can write.
VOLUME_WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Extensions read_sequence / write_sequence understand.
SEQUENCE_EXTENSIONS = (".seq.nrrd", ".seq.nhdr", ".nrrd", ".nhdr", ".nii", ".nii.gz")

_FORMAT_BY_EXT = {
    ".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".seq.nrrd": "nrrd",
    ".seq.nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage", ".dcm": "dicom", ".dicom": "dicom",
    ".ima": "dicom",
}

_TRUNCATED_HINT = "re-export or re-copy the file"
_CORRUPT_HINT = "check that the file is complete and really is in the format its extension says; re-export it"


# --------------------------------------------------------------------------------------------- helpers


def _ext(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(_FORMAT_BY_EXT, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return split_extension(name)[1]


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def volume_format(path: str | os.PathLike) -> str:
    """The format read_volume would use for ``path``: 'nifti', 'nrrd', 'metaimage' or 'dicom'.

    A folder is a DICOM series; a file without a known extension is sniffed for
    the DICOM preamble. Raises :class:`BadInputError` for anything else.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    fmt = _FORMAT_BY_EXT.get(_ext(p))
    if fmt is not None:
        return fmt
    if p.is_file() and _is_dicom_file(p):
        return "dicom"
    raise BadInputError(
        f"cannot read '{p.name}': unknown volume format '{_ext(p) or p.name}'",
        f"use one of {', '.join(VOLUME_EXTENSIONS)}, or a folder holding one DICOM series",
    )


def sequence_format(path: str | os.PathLike) -> str:
    """The format read_sequence would use for ``path``: 'nrrd' or 'nifti'."""
    p = Path(path)
    fmt = _FORMAT_BY_EXT.get(_ext(p))
    if fmt not in ("nrrd", "nifti"):
        raise BadInputError(
            f"cannot read '{p.name}' as a sequence: unknown sequence format '{_ext(p) or p.name}'",
            f"use one of {', '.join(SEQUENCE_EXTENSIONS)}",
        )
    return fmt


def _check_exists(p: Path, allow_dir: bool = False) -> None:
    if p.is_dir():
        if allow_dir:
            return
        raise BadInputError(f"cannot read '{p}': it is a folder, not a file", "give the path of a file")
    if not p.exists():
        raise BadInputError(f"cannot read '{p}': no such file", "check the path and the current folder")


_TRUNC_PATTERNS = re.compile(
    r"ended before|end-of-stream|unexpected end|truncat|ends early|too short|smaller than|"
    r"expected \d+ bytes|cannot reshape|buffer is too small|premature|eof|not enough|mmap length|"
    r"size of file|file size|incomplete|short read|requested \d+ bytes",
    re.IGNORECASE,
)


def _read_error(p: Path, exc: BaseException) -> BadInputError:
    """Turn a library exception into a user-facing BadInputError."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # match the library's words, not the file names it quotes (a folder may be called 'truncated')
    words = re.sub(r"'[^']*'|\"[^\"]*\"|\S*[/\\]\S*", " ", str(exc))
    truncated = isinstance(exc, (EOFError, _nrrd.NrrdTruncatedError)) or (
        not isinstance(exc, _nrrd.NrrdError) and _TRUNC_PATTERNS.search(words))
    if truncated:
        return BadInputError(f"cannot read '{p.name}': the file ends early (truncated download?)", _TRUNCATED_HINT)
    if isinstance(exc, PermissionError):
        return BadInputError(f"cannot read '{p.name}': permission denied", "check the file permissions")
    return BadInputError(f"cannot read '{p.name}': the file is corrupt or not a valid {_ext(p) or 'volume'} "
                         f"file ({msg[:200]})", _CORRUPT_HINT)


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in native byte order and C order; the array itself (no copy) when it already is, as a
    ``<i2`` array is on a little-endian machine."""
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _writable_array(arr: np.ndarray, allowed: tuple) -> np.ndarray:
    """Convert dtypes a format lacks to the nearest one it has (bool->uint8, float16->float32)."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.newbyteorder("=") not in allowed:
        raise BadInputError(f"cannot write dtype {arr.dtype} in this format",
                            "convert the array to int16, float32 or another common type")
    return _native(arr)


def _prepare_write(path: str | os.PathLike, allowed_exts: tuple, what: str) -> tuple[Path, str]:
    p = Path(path)
    ext = _ext(p)
    if ext not in allowed_exts:
        raise BadInputError(
            f"cannot write '{p.name}': unknown {what} format '{ext or p.name}'",
            f"use one of {', '.join(allowed_exts)}",
        )
    if not p.parent.is_dir():
        raise BadInputError(f"cannot write '{p}': the folder '{p.parent}' does not exist",
                            "create the output folder first")
    if p.is_dir():
        raise BadInputError(f"cannot write '{p}': a folder with that name exists", "choose another file name")
    return p, ext


def _write_error(p: Path, exc: OSError) -> BadInputError:
    return BadInputError(f"cannot write '{p}': {exc.strerror or exc}",
                         "check free disk space and write permission for the output folder")


_INT_FLOAT = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                          np.int64, np.uint64, np.float32, np.float64))


# --------------------------------------------------------------------------------------------- NRRD geometry

_SPACES = {
    "right-anterior-superior": np.eye(3), "ras": np.eye(3),
    "left-posterior-superior": np.diag([-1.0, -1.0, 1.0]), "lps": np.diag([-1.0, -1.0, 1.0]),
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0]), "las": np.diag([-1.0, 1.0, 1.0]),
}


def _nrrd_geometry(n: _nrrd.NrrdData) -> tuple[np.ndarray, list[int], list[int]]:
    """(ijk_to_ras, spatial NRRD axes, other NRRD axes) of a parsed NRRD header."""
    dim = len(n.sizes)
    space = n.fields.get("space", "").strip().lower()
    if space and space not in _SPACES:
        raise _nrrd.NrrdError(f"unsupported NRRD space {n.fields['space']!r}")
    to_ras = _SPACES.get(space, _SPACES["lps"])  # no 'space' field: ITK/Slicer take the vectors as LPS
    kinds = [k.lower() for k in (n.per_axis("kinds") or ["domain"] * dim)]
    directions = n.fields.get("space directions")
    if directions is not None:
        items = _nrrd.split_vectors(directions)
        if len(items) != dim:
            raise _nrrd.NrrdError(f"'space directions' has {len(items)} entries for {dim} axes")
        vecs = [_nrrd.parse_vector(t) for t in items]
        spatial = [a for a, v in enumerate(vecs) if v is not None]
        mats = [np.asarray(vecs[a], dtype=np.float64) for a in spatial]
        if any(m.shape != (3,) for m in mats):
            raise _nrrd.NrrdError("only 3D space directions are supported")
    else:
        spatial = [a for a in range(dim) if kinds[a] in ("domain", "space")] if "kinds" in n.fields \
            else list(range(dim))
        spacings = n.per_axis("spacings")
        mats = []
        for idx, a in enumerate(spatial):
            s = float(spacings[a]) if spacings and spacings[a].lower() != "nan" else 1.0
            e = np.zeros(3)
            if idx < 3:
                e[idx] = s
            mats.append(e)
    others = [a for a in range(dim) if a not in spatial]
    origin = np.zeros(3)
    if "space origin" in n.fields:
        o = _nrrd.parse_vector(n.fields["space origin"])
        if o is None or len(o) != 3:
            raise _nrrd.NrrdError("bad 'space origin'")
        origin = np.asarray(o, dtype=np.float64)
    m = np.eye(4)
    if len(spatial) == 3:
        m[:3, :3] = to_ras @ np.column_stack(mats)
    m[:3, 3] = to_ras @ origin
    return m, spatial, others


def _shape_error(shape: tuple) -> BadInputError:
    return BadInputError(
        f"expected a 3D volume, got shape {tuple(shape)} (a 2D slice or a 4D sequence?)",
        "pass a single 3D volume; read 4D data with read_sequence",
    )


def _read_nrrd_any(p: Path) -> tuple[np.ndarray, np.ndarray, _nrrd.NrrdData, list[int]]:
    """(array with spatial axes as (k, j, i) and other axes FIRST, ijk_to_ras, header, other axes)."""
    try:
        n = _nrrd.read_nrrd(p)
        m, spatial, others = _nrrd_geometry(n)
    except (_nrrd.NrrdError, OSError, ValueError, EOFError, zlib.error) as exc:
        raise _read_error(p, exc) from None
    data = n.data
    if len(spatial) != 3:
        raise _shape_error(data.shape)
    # numpy axis of NRRD axis a is dim-1-a; put non-spatial axes first, spatial as (k, j, i)
    dim = data.ndim
    order = [dim - 1 - a for a in others] + [dim - 1 - a for a in sorted(spatial, reverse=True)]
    if order != list(range(dim)):
        data = np.ascontiguousarray(np.transpose(data, order))
    # spatial axes must be in increasing NRRD order for i, j, k
    return data, m, n, others


def _read_nrrd_volume(p: Path) -> Volume:
    data, m, n, others = _read_nrrd_any(p)
    if data.ndim != 3:
        if all(data.shape[i] == 1 for i in range(len(others))):
            data = data.reshape(data.shape[len(others):])
        else:
            raise _shape_error(data.shape)
    md = {"format": "nrrd", "path": str(p), "nrrd_space": n.fields.get("space", "")}
    if n.keyvalues:
        md["nrrd_keyvalues"] = dict(n.keyvalues)
    return Volume(data, m, md)


def _nrrd_direction_fields(m: np.ndarray, space: str) -> dict[str, str]:
    lin = m[:3, :3] if space == "right-anterior-superior" else (RAS_TO_LPS @ m)[:3, :3]
    org = m[:3, 3] if space == "right-anterior-superior" else (RAS_TO_LPS @ m)[:3, 3]
    return {
        "space": space,
        "space directions": " ".join(_nrrd.format_vector(lin[:, c]) for c in range(3)),
        "kinds": "domain domain domain",
        "space origin": _nrrd.format_vector(org),
    }


def _write_nrrd_file(p: Path, ext: str, arr: np.ndarray, fields: dict, keyvalues: dict, compress: bool) -> None:
    encoding = "gzip" if compress else "raw"
    try:
        if ext.endswith(".nhdr"):
            stem = split_extension(p.name)[0]
            data_name = stem + (".raw.gz" if compress else ".raw")
            with atomic_outputs([p.with_name(data_name), p]) as tmpdir:
                _nrrd.write_nrrd(tmpdir / p.name, arr, fields, keyvalues, encoding, data_path=data_name)
        else:
            with atomic_output(p) as tmp:
                _nrrd.write_nrrd(tmp, arr, fields, keyvalues, encoding)
    except OSError as exc:
        raise _write_error(p, exc) from None


# --------------------------------------------------------------------------------------------- Slicer segmentation

#: Extensions of Slicer segmentation files (vtkMRMLSegmentationStorageNode).
SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr")


@dataclass
class Segment:
    """One segment of a Slicer segmentation: its voxels are ``layers[layer] == label_value``."""

    name: str
    id: str
    layer: int
    label_value: int


@dataclass
class Segmentation:
    """A Slicer ``.seg.nrrd``: binary-labelmap layers (L, z, y, x) on one grid, and the segments stored in them."""

    layers: np.ndarray
    ijk_to_ras: np.ndarray
    segments: list[Segment]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.layers.shape[1:])

    def mask(self, segment: Segment) -> np.ndarray:
        return self.layers[segment.layer] == segment.label_value


def is_segmentation_file(path: str | os.PathLike) -> bool:
    """True for a Slicer segmentation file (by its ``.seg.nrrd``/``.seg.nhdr`` extension)."""
    return Path(path).name.lower().endswith(SEGMENTATION_EXTENSIONS)


def _segments_of(kv: dict[str, str], n_layers: int, p: Path) -> list[Segment]:
    segments = []
    i = 0
    while f"Segment{i}_ID" in kv or f"Segment{i}_Name" in kv:
        key = f"Segment{i}_"
        try:
            # Slicer <= 4.10 wrote one layer per segment and no Layer/LabelValue fields
            layer = int(kv.get(key + "Layer", i if n_layers > 1 else 0))
            value = int(kv.get(key + "LabelValue", 1))
        except ValueError:
            raise BadInputError(f"cannot read '{p.name}': segment {i} has a bad Layer or LabelValue field",
                                _CORRUPT_HINT) from None
        if not 0 <= layer < n_layers:
            raise BadInputError(f"cannot read '{p.name}': segment {i} is in layer {layer}, the file has {n_layers}",
                                _CORRUPT_HINT)
        segments.append(Segment(kv.get(key + "Name", kv.get(key + "ID", f"Segment_{i}")), kv.get(key + "ID", ""),
                                layer, value))
        i += 1
    return segments


def _reference_grid(kv: dict[str, str]) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """(ijk_to_ras, shape zyx) of the segmentation's reference image geometry, when its header says it."""
    params = kv.get("Segmentation_ConversionParameters", "")
    for item in params.split("&"):
        parts = item.split("|")
        if len(parts) >= 2 and parts[0] == "Reference image geometry":
            values = [v for v in parts[1].split(";") if v.strip()]
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                return None
            if len(numbers) != 22:
                return None
            m = np.array(numbers[:16]).reshape(4, 4)
            ext = [int(round(v)) for v in numbers[16:]]
            if any(ext[2 * a] != 0 for a in range(3)) or not np.allclose(m[3], [0, 0, 0, 1]):
                return None
            return m, (ext[5] + 1, ext[3] + 1, ext[1] + 1)
    return None


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a Slicer segmentation (``.seg.nrrd``, as vtkMRMLSegmentationStorageNode writes it).

    Segments are read from the ``SegmentN_Name/_ID/_Layer/_LabelValue`` fields;
    a 3D file is one layer, a 4D file (``kinds: list domain domain domain``) one
    layer per list entry. When the header holds the segmentation's reference
    image geometry, the layers (which Slicer crops to the segments) are placed
    on that whole grid, the grid the user segmented on.
    """
    p = Path(path)
    _check_exists(p)
    data, m, n, others = _read_nrrd_any(p)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim != 4:
        raise _shape_error(data.shape)
    if data.dtype.kind not in "biu":
        raise BadInputError(f"cannot read '{p.name}' as a segmentation: it holds {data.dtype} values, not labels",
                            "export the segmentation from Slicer as a .seg.nrrd")
    kv = dict(n.keyvalues)
    segments = _segments_of(kv, data.shape[0], p)
    if not segments:
        raise BadInputError(f"'{p.name}' names no segments (no Segment0_Name field): not a Slicer segmentation",
                            "save the segmentation from Slicer, or pass it as a plain label map (.nrrd, .nii.gz)")
    reference = _reference_grid(kv)
    offset_text = kv.get("Segmentation_ReferenceImageExtentOffset", "")
    if reference is not None and offset_text:
        ref_m, ref_shape = reference
        try:
            off_ijk = np.array([int(v) for v in offset_text.split()], dtype=int)
        except ValueError:
            off_ijk = None
        if off_ijk is not None and off_ijk.shape == (3,):
            off = off_ijk[::-1]  # zyx
            expected = ref_m.copy()
            expected[:3, 3] = ref_m[:3, :3] @ off_ijk + ref_m[:3, 3]
            stop = off + np.array(data.shape[1:])
            if np.allclose(expected, m, atol=1e-3) and np.all(off >= 0) and np.all(stop <= ref_shape):
                full = np.zeros((data.shape[0],) + tuple(ref_shape), dtype=data.dtype)
                full[(slice(None),) + tuple(slice(a, b) for a, b in zip(off, stop))] = data
                data, m = full, ref_m
    return Segmentation(np.ascontiguousarray(data), m, segments)


# --------------------------------------------------------------------------------------------- NIfTI


_TIME_UNIT_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _load_nifti(p: Path):
    import nibabel as nib

    try:
        img = nib.load(str(p), mmap=False)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except MedDiffError:
        raise
    except Exception as exc:  # nibabel raises many types for damaged files
        raise _read_error(p, exc) from None
    if affine is None or not np.all(np.isfinite(affine)):
        raise BadInputError(f"cannot read '{p.name}': the header has no valid orientation",
                            _CORRUPT_HINT)
    data = np.asarray(data)  # nibabel's (x, y, z) array is Fortran-ordered: its transpose is our C-ordered (z, y, x)
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    return img, data, affine  # no contiguous copy here: _nifti_array_to_zyx makes at most one


def _nifti_array_to_zyx(data: np.ndarray) -> np.ndarray:
    # nibabel: data[i, j, k, (t)] -> ours [(t), k, j, i]
    return np.ascontiguousarray(data.T)


def _read_nifti_volume(p: Path) -> Volume:
    img, data, affine = _load_nifti(p)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _shape_error(_nifti_array_to_zyx(data).shape if data.ndim <= 4 else data.shape)
    md = {"format": "nifti", "path": str(p)}
    return Volume(_nifti_array_to_zyx(data), affine, md)


def _nifti_image(arr_zyx: np.ndarray, m: np.ndarray, dtype):
    import nibabel as nib

    data = arr_zyx.T  # (x, y, z[, t]); a free view
    img = nib.Nifti1Image(data, m)
    img.set_data_dtype(dtype)
    img.set_sform(m, code=1)  # scanner
    img.set_qform(m, code=1)  # the closest rigid+scale matrix; exact for non-sheared grids
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    return img


def _save_nifti(img, p: Path) -> None:
    import nibabel as nib

    try:
        with atomic_output(p) as tmp:
            nib.save(img, str(tmp))
    except OSError as exc:
        raise _write_error(p, exc) from None


# --------------------------------------------------------------------------------------------- SimpleITK


def _sitk_to_volume(img, md: dict) -> Volume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise BadInputError(
            f"cannot read '{Path(md.get('path', '?')).name}': it has {img.GetNumberOfComponentsPerPixel()} "
            "components per voxel (colour or vector image)",
            "convert it to a single-component (scalar) volume",
        )
    arr = _native(sitk.GetArrayFromImage(img))
    if img.GetDimension() != 3:
        raise _shape_error(arr.shape)
    d = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    sp = np.array(img.GetSpacing(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = d * sp[None, :]
    m[:3, 3] = img.GetOrigin()
    return Volume.from_ijk_to_lps(arr, m, md)


def _volume_to_sitk(vol: Volume, arr: np.ndarray):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr, isVector=False)
    m = vol.ijk_to_lps
    img.SetSpacing([float(s) for s in vol.spacing])
    img.SetOrigin([float(x) for x in m[:3, 3]])
    img.SetDirection([float(x) for x in vol.direction_lps.ravel()])
    return img


_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _metaimage_truncated(p: Path) -> bool:
    """True if a MetaImage header promises more data bytes than the data file holds."""
    try:
        with open(p, "rb") as f:
            header: dict[str, str] = {}
            while True:
                line = f.readline(4096)
                if not line:
                    return False
                key, sep, value = line.decode("latin-1").partition("=")
                if not sep:
                    return False
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
            data_file = header["ElementDataFile"]
            if data_file == "LOCAL":
                available = p.stat().st_size - f.tell()
            else:
                dp = p.parent / data_file
                if not dp.is_file():
                    return False
                available = dp.stat().st_size
        if header.get("CompressedData", "False").lower() == "true":
            expected = int(header["CompressedDataSize"]) if "CompressedDataSize" in header else 0
        else:
            count = int(np.prod([int(x) for x in header["DimSize"].split()], dtype=np.int64))
            expected = count * _MET_SIZES[header["ElementType"]] * int(header.get("ElementNumberOfChannels", "1"))
        return available < expected
    except (OSError, KeyError, ValueError):
        return False


def _sitk_error_text(exc: RuntimeError) -> str:
    """The useful line of an ITK exception ('ITK ERROR: ...' without object addresses)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", ln) for ln in lines[1:]] or lines
    return " ".join(useful)


def _read_metaimage(p: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        if _metaimage_truncated(p):
            raise _read_error(p, EOFError()) from None
        raise _read_error(p, RuntimeError(_sitk_error_text(exc))) from None
    return _sitk_to_volume(img, {"format": "metaimage", "path": str(p)})


def _write_metaimage(vol: Volume, p: Path, ext: str, compress: bool) -> None:
    import SimpleITK as sitk

    arr = _writable_array(vol.array, _INT_FLOAT)
    img = _volume_to_sitk(vol, arr)
    try:
        if ext == ".mhd":
            stem = split_extension(p.name)[0]
            data_name = stem + (".zraw" if compress else ".raw")
            with atomic_outputs([p.with_name(data_name), p]) as tmpdir:
                sitk.WriteImage(img, str(tmpdir / p.name), compress)
        else:
            with atomic_output(p) as tmp:
                sitk.WriteImage(img, str(tmp), compress)
    except OSError as exc:
        raise _write_error(p, exc) from None
    except RuntimeError as exc:
        raise BadInputError(f"cannot write '{p}': {str(exc).strip().splitlines()[-1][:200]}",
                            "check free disk space and write permission for the output folder") from None


# --------------------------------------------------------------------------------------------- DICOM


#: Slice positions closer than this (mm) are the same position; spacings may differ by this fraction of their median.
DICOM_POSITION_TOL_MM = 1e-3
DICOM_SPACING_TOL = 0.01


def _dicom_header(path: Path):
    """SimpleITK's header reader of one DICOM file (no pixels read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    reader.ReadImageInformation()
    return reader


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _series_summary(folder: Path, uid: str) -> str:
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    try:
        head = _dicom_header(Path(files[0]))
        what = " ".join(t for t in (_tag(head, "0008|0060"), _tag(head, "0008|103e")) if t)
    except RuntimeError:
        what = ""
    return f"{uid} ({len(files)} file{'s' if len(files) != 1 else ''}{', ' + what if what else ''})"


def _read_dicom_file(p: Path, series_uid: str | None) -> Volume:
    """One DICOM file is what it holds: one slice, or the frames of a multi-frame file; never its neighbours."""
    import SimpleITK as sitk

    try:
        head = _dicom_header(p)
        uid = _tag(head, "0020|000e")
        if series_uid is not None and uid and uid != series_uid:
            raise BadInputError(f"cannot read '{p.name}': it belongs to DICOM series {uid}, not {series_uid}",
                                "pass the file of the series you mean, or its folder with that series UID")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.SetImageIO("GDCMImageIO")
        img = reader.Execute()
    except RuntimeError as exc:
        raise _read_error(p, RuntimeError(_sitk_error_text(exc))) from None
    md = {"format": "dicom", "path": str(p), "dicom_series_uid": uid, "dicom_files": 1,
          "dicom_single_file": True}
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    return _sitk_to_volume(img, md)


def _slice_place(f: str, p: Path):
    """(header reader, ImagePositionPatient, ImageOrientationPatient) of one file of a series, or a clear error."""
    try:
        head = _dicom_header(Path(f))
    except RuntimeError as exc:
        raise _read_error(Path(f), RuntimeError(_sitk_error_text(exc))) from None
    try:
        pos = np.array([float(v) for v in _tag(head, "0020|0032").split("\\")], dtype=np.float64)
        ori = np.array([float(v) for v in _tag(head, "0020|0037").split("\\")], dtype=np.float64)
    except ValueError:
        pos = ori = np.zeros(0)
    if pos.shape != (3,) or ori.shape != (6,):
        raise BadInputError(f"cannot read '{p}': DICOM file '{Path(f).name}' has no usable image position or "
                            "orientation (0020,0032 / 0020,0037), so its slice cannot be placed",
                            "export the series again with its geometry tags")
    return head, pos, ori


def _check_slice_positions(files: list[str], p: Path) -> tuple[list[str], float]:
    """Sort a series' files by position along its slice normal; refuse mixed orientations, duplicate positions,
    gaps and uneven spacing (naming the files). Returns (sorted files, slice spacing in mm)."""
    rows = []
    for f in files:
        head, pos, ori = _slice_place(f, p)
        rows.append((f, pos, ori, head.GetSize()[:2]))
    ori0, size0 = rows[0][2], rows[0][3]
    odd = [Path(f).name for f, _, o, size in rows if not np.allclose(o, ori0, atol=1e-4) or size != size0]
    if odd:
        raise BadInputError(f"cannot read '{p}': the series mixes slice orientations or sizes ({_names(odd)} differ "
                            f"from '{Path(rows[0][0]).name}')", "export the series again, or separate its parts")
    normal = np.cross(ori0[:3], ori0[3:])
    rows.sort(key=lambda r: float(normal @ r[1]))
    along = np.array([float(normal @ r[1]) for r in rows])
    if len(rows) == 1:
        return [rows[0][0]], float("nan")
    steps = np.diff(along)
    same = [f"'{Path(rows[i][0]).name}' and '{Path(rows[i + 1][0]).name}'"
            for i in np.nonzero(steps < DICOM_POSITION_TOL_MM)[0]]
    if same:
        raise BadInputError(f"cannot read '{p}': {len(same)} pair(s) of files of the series lie at the same slice "
                            f"position ({'; '.join(same[:4])}{' ...' if len(same) > 4 else ''})",
                            "the folder holds the same slice twice (a copy, another reconstruction or an echo): "
                            "keep one file per position; a time series (perfusion) is read as a sequence "
                            "(read_sequence, meddiff inpaint --sequence FOLDER)")
    spacing = float(np.median(steps))
    uneven = np.nonzero(np.abs(steps - spacing) > max(DICOM_SPACING_TOL * spacing, DICOM_POSITION_TOL_MM))[0]
    if uneven.size:
        shown = "; ".join(f"{steps[i]:.3g} mm between '{Path(rows[i][0]).name}' and '{Path(rows[i + 1][0]).name}'"
                          for i in uneven[:4])
        gaps = int(np.sum(np.round(steps[uneven] / spacing) >= 2))
        raise BadInputError(f"cannot read '{p}': the slices are not evenly spaced (median {spacing:.4g} mm; {shown}"
                            f"{' ...' if uneven.size > 4 else ''}){f'; {gaps} gap(s): missing slices?' if gaps else ''}",
                            "copy the whole series (every slice), or resample it to even spacing first")
    return [r[0] for r in rows], spacing


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(f"'{n}'" for n in names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_dicom_folder(p: Path, series_uid: str | None) -> Volume:
    """A folder holding one DICOM series (or ``series_uid`` of several) as one volume, sorted by position."""
    import SimpleITK as sitk

    uids = _series_uids(p)
    if series_uid is None:
        if len(uids) > 1:
            raise BadInputError(
                f"cannot read '{p}': the folder holds {len(uids)} DICOM series: "
                + "; ".join(_series_summary(p, u) for u in uids),
                "choose one with --series UID (series_uid=... in Python), or put each series in its own folder")
        series_uid = uids[0]
    elif series_uid not in uids:
        raise BadInputError(f"cannot read '{p}': no DICOM series with UID {series_uid} in the folder",
                            "use one of: " + "; ".join(_series_summary(p, u) for u in uids))
    return _read_dicom_files(list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series_uid)), p, series_uid)


def _series_uids(p: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    except RuntimeError as exc:
        raise _read_error(p, exc) from None
    if not uids:
        raise BadInputError(f"cannot read '{p}': no DICOM series found in the folder",
                            "point at a folder that holds the DICOM files of one series")
    return uids


def _read_dicom_files(files: list[str], p: Path, series_uid: str) -> Volume:
    """The files of one series (one volume) read as one volume, sorted and checked by position."""
    import SimpleITK as sitk

    if len(files) == 1:
        vol = _read_dicom_file(Path(files[0]), series_uid)
        vol.metadata.update(path=str(p), dicom_single_file=False)
        return vol
    files, spacing = _check_slice_positions(files, p)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetImageIO("GDCMImageIO")
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise _read_error(p, RuntimeError(_sitk_error_text(exc))) from None
    if img.GetDimension() != 3 or abs(img.GetSpacing()[2] - spacing) > max(DICOM_SPACING_TOL * spacing, 1e-3):
        raise MedDiffError(f"the DICOM reader placed the slices of '{p}' {img.GetSpacing()[2]:.4g} mm apart, their "
                           f"positions are {spacing:.4g} mm apart", "report this as a bug with the series")
    md = {"format": "dicom", "path": str(p), "dicom_series_uid": series_uid, "dicom_files": len(files),
          "dicom_single_file": False}
    return _sitk_to_volume(img, md)


def _dicom_seconds(head) -> float | None:
    """Acquisition time of a file in seconds of the day (AcquisitionTime, else ContentTime), or TriggerTime."""
    for key in ("0008|0032", "0008|0033"):
        text = _tag(head, key)
        m = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(\.\d+)?", text) if text else None
        if m:
            hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
            return hh * 3600.0 + mm * 60.0 + ss + float(m.group(4) or 0.0)
    trigger = _tag(head, "0018|1060")
    try:
        return float(trigger) / 1000.0 if trigger else None
    except ValueError:
        return None


def _frames_of_one_series(files: list[str], p: Path) -> tuple[list[list[str]], list[float | None]]:
    """Split a series whose positions repeat (one position per slice and time) into frames, by time."""
    rows = []
    for f in files:
        head, pos, ori = _slice_place(f, p)
        number = _tag(head, "0020|0013")
        rows.append((f, float(np.cross(ori[:3], ori[3:]) @ pos), _dicom_seconds(head),
                     int(number) if number.lstrip("-").isdigit() else 0))
    rows.sort(key=lambda r: r[1])
    groups: list[list[tuple]] = []
    for row in rows:
        if groups and abs(row[1] - groups[-1][0][1]) < DICOM_POSITION_TOL_MM:
            groups[-1].append(row)
        else:
            groups.append([row])
    counts = sorted({len(g) for g in groups})
    if len(counts) != 1:
        raise BadInputError(f"cannot read '{p}' as a time series: its {len(groups)} slice positions hold "
                            f"{counts[0]} to {counts[-1]} files each", "copy every time point of every slice")
    for g in groups:
        g.sort(key=lambda r: (r[2] if r[2] is not None else 0.0, r[3]))
    n_frames = counts[0]
    frames = [[g[t][0] for g in groups] for t in range(n_frames)]
    times = []
    for t in range(n_frames):
        stamps = [g[t][2] for g in groups]
        times.append(None if any(v is None for v in stamps) else min(stamps))
    return frames, times


def read_dicom_sequence(path: str | os.PathLike, *, series_uid: str | None = None) -> Sequence:
    """A DICOM time series (CT perfusion) as a 4D Sequence: one series whose slice positions repeat once per time
    point (frames ordered by AcquisitionTime, ContentTime or TriggerTime), or a folder of one series per time point
    (all on one grid). Times are seconds from the first frame; metadata ``time_step_missing`` when the files
    record no time. Each frame is read and checked like a series by :func:`read_volume`."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_dir():
        raise BadInputError(f"cannot read '{p}' as a DICOM time series: it is not a folder",
                            "pass the folder that holds the perfusion series")
    uids = _series_uids(p)
    if series_uid is not None and series_uid not in uids:
        raise BadInputError(f"cannot read '{p}': no DICOM series with UID {series_uid} in the folder",
                            "use one of: " + "; ".join(_series_summary(p, u) for u in uids))
    chosen = [series_uid] if series_uid else uids
    frames: list[Volume] = []
    stamps: list[float | None] = []
    for uid in chosen:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), uid))
        groups, times = _frames_of_one_series(files, p) if len(files) > 1 else ([files], [None])
        if len(chosen) > 1 and len(groups) > 1:
            raise BadInputError(f"cannot read '{p}': series {uid} is itself a time series, and the folder holds "
                                f"{len(chosen)} series", "pick one with --series UID, or keep one series per time point")
        if len(groups) == 1:  # one volume per series: its time is its first file's
            try:
                times = [_dicom_seconds(_dicom_header(Path(files[0])))]
            except RuntimeError:
                times = [None]
        for group, t in zip(groups, times):
            frames.append(_read_dicom_files(group, p, uid))
            stamps.append(t)
    first = frames[0]
    odd = [i for i, v in enumerate(frames) if v.shape != first.shape or not np.allclose(v.ijk_to_ras, first.ijk_to_ras, atol=1e-3)]
    if odd:
        raise BadInputError(f"cannot read '{p}' as a time series: frame {odd[0] + 1} lies on another grid than the first",
                            "every time point must cover the same slices")
    md = {"format": "dicom", "path": str(p), "dicom_series_uids": chosen}
    if any(t is None for t in stamps):
        md["time_step_missing"] = True
        order = list(range(len(frames)))
        times_s = np.arange(len(frames), dtype=np.float64)
    else:
        order = sorted(range(len(frames)), key=lambda i: stamps[i])
        t0 = stamps[order[0]]
        times_s = np.array([stamps[i] - t0 for i in order], dtype=np.float64)
    ijk_to_ras, shape = first.ijk_to_ras, first.shape
    array = np.empty((len(frames),) + shape, np.result_type(*[v.array.dtype for v in frames]))
    del first
    for n, i in enumerate(order):  # each frame moved into the sequence and let go: one copy of the series at a time
        array[n] = frames[i].array
        frames[i] = None
    return Sequence(array, ijk_to_ras, times_s, md)


def _read_dicom(p: Path, series_uid: str | None) -> Volume:
    return _read_dicom_folder(p, series_uid) if p.is_dir() else _read_dicom_file(p, series_uid)


#: Patient and study attributes a derived series copies from its source, so PACS and Slicer file it in that study.
_DICOM_STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID",
                     "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                     "StudyDescription", "FrameOfReferenceUID")


def _dicom_reference(reference: str | os.PathLike | None) -> dict:
    import pydicom

    if reference is None:
        return {}
    ref = Path(reference)
    if ref.is_dir():
        ref = next((f for f in sorted(ref.iterdir()) if f.is_file() and is_dicom_file(f)), None)
        if ref is None:
            return {}
    try:
        ds = pydicom.dcmread(ref, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise _read_error(ref, exc) from None
    return {k: ds.get(k) for k in _DICOM_STUDY_KEYS if ds.get(k) not in (None, "")}


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, reference: str | os.PathLike | None = None,
                       description: str = "MedDiff derived", modality: str = "CT") -> Path:
    """Write an integer volume (e.g. int16 HU) as a DICOM series, one CT Image Storage file per slice, into the new
    (or empty) ``folder``, atomically: the folder appears only when every slice is written.

    Geometry is exact (ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing, spacing between
    slices, all LPS); the series is DERIVED with new Series/SOP UIDs. ``reference`` (a DICOM file or series folder,
    e.g. the input) gives the patient and study attributes, so the series is filed in that study.
    """
    from datetime import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BadInputError(f"cannot write the DICOM series to '{target}': it exists and is not an empty folder",
                            "name a new folder (DICOM output never replaces files)")
    if not target.parent.is_dir():
        raise BadInputError(f"cannot write '{target}': the folder '{target.parent}' does not exist",
                            "create the output folder first")
    arr = np.asarray(volume.array)
    if arr.dtype.kind not in "biu" or (arr.size and (arr.min() < -32768 or arr.max() > 32767)):
        raise BadInputError(f"cannot write dtype {arr.dtype} (range {arr.min()}..{arr.max()}) as a DICOM CT series",
                            "DICOM output takes whole numbers in the int16 range (HU)")
    lps = volume.ijk_to_lps
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    unit = lps[:3, :3] / spacing
    if not np.allclose(np.cross(unit[:, 0], unit[:, 1]), unit[:, 2], atol=1e-6):
        raise BadInputError("cannot write a DICOM series whose slice axis is not the normal of its rows and columns "
                            "(a sheared or left-handed grid)", "write NIfTI or NRRD instead")
    study = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(), **_dicom_reference(reference)}
    series_uid = generate_uid()
    now = datetime.now()
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir()
    try:
        for k in range(arr.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            for key, value in study.items():
                setattr(ds, key, value)
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = modality, series_uid, 9001, k + 1
            ds.SeriesDescription, ds.ImageType, ds.Manufacturer = description[:64], ["DERIVED", "SECONDARY"], "MedDiff"
            ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([unit[:, 0], unit[:, 1]])]
            ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # between rows (j), between columns (i)
            ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
            ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
            ds.PixelData = np.ascontiguousarray(arr[k], dtype="<i2").tobytes()
            ds.save_as(tmp / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
            _fsync_file(tmp / f"IM{k + 1:05d}.dcm")
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(target, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------------------------- public API


def read_volume(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read a 3D volume from .nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd, or a DICOM series.

    ``path`` may be a folder holding one DICOM series (or several, with
    ``series_uid``): read as one volume sorted by slice position, refused when
    positions repeat, miss a slice or are unevenly spaced. One DICOM file is
    what it holds (one slice, metadata ``dicom_single_file``; or the frames of
    a multi-frame file), never a volume of its neighbours. Data keep the
    file's dtype (in native byte order). 4D files with a single frame are read
    as 3D; other 4D files raise (use :func:`read_sequence`).

    Raises :class:`BadInputError` for a missing path, unknown extension,
    truncated or corrupt file, or data that is not one 3D scalar volume.
    """
    p = Path(path)
    _check_exists(p, allow_dir=True)
    fmt = volume_format(p)
    if fmt == "nifti":
        return _read_nifti_volume(p)
    if fmt == "nrrd":
        return _read_nrrd_volume(p)
    if fmt == "metaimage":
        return _read_metaimage(p)
    return _read_dicom(p, series_uid)


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` atomically to .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd; return the path.

    The dtype is kept (bool is written as uint8, float16 as float32). NRRD is
    written in LPS space like Slicer does; ``compress`` selects gzip for NRRD
    and MetaImage (NIfTI compression follows the extension). ``.nhdr`` writes a
    detached ``<name>.raw[.gz]`` next to it, ``.mhd`` a ``<name>.raw``/``.zraw``.
    """
    if not isinstance(volume, Volume):
        raise BadInputError(f"write_volume needs a Volume, got {type(volume).__name__}",
                            "wrap the array with Volume(...) or Volume.from_spacing(...)")
    p, ext = _prepare_write(path, VOLUME_WRITE_EXTENSIONS, "volume")
    if ext in (".nii", ".nii.gz"):
        arr = _writable_array(volume.array, _INT_FLOAT)
        _save_nifti(_nifti_image(arr, volume.ijk_to_ras, arr.dtype), p)
    elif ext in (".nrrd", ".nhdr"):
        arr = _writable_array(volume.array, _INT_FLOAT)
        fields = _nrrd_direction_fields(volume.ijk_to_ras, "left-posterior-superior")
        _write_nrrd_file(p, ext, arr, fields, {}, compress)
    else:
        _write_metaimage(volume, p, ext, compress)
    return p


# ---- sequences

_SEQ_DATA_NODE_CLASS = "vtkMRMLScalarVolumeNode"


def _times_from_index(values: list[str], index_type: str, unit: str, md: dict) -> np.ndarray | None:
    """Frame times in seconds from a sequence's index values, or None with ``md["times_unknown"]`` saying why
    (non-numeric index, a value that is not a finite number); a unit that is not a time is kept in
    ``md["index_values_unit"]``. Callers that need real times refuse a sequence whose times are unknown."""
    if index_type and index_type.lower() != "numeric":
        md["times_unknown"] = f"its frame index is of type '{index_type}', not numeric"
        return None
    numbers = []
    for v in values:
        try:
            numbers.append(float(unquote(v)))
        except ValueError:
            numbers.append(None)
    bad = [unquote(v) for v, x in zip(values, numbers) if x is None or not np.isfinite(x)]
    if bad:
        md["times_unknown"] = (f"{len(bad)} of its {len(values)} frame index values are not numbers "
                               f"({', '.join(repr(b) for b in bad[:3])}{', ...' if len(bad) > 3 else ''})")
        return None
    t = np.array(numbers, dtype=np.float64)
    scale = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "": 1.0,
             "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6, "min": 60.0}.get(unit.lower())
    if scale is None:
        md["index_values_unit"] = unit
        return t
    return t * scale


def _read_nrrd_sequence(p: Path) -> Sequence:
    data, m, n, others = _read_nrrd_any(p)
    md: dict = {"format": "nrrd", "path": str(p), "nrrd_space": n.fields.get("space", "")}
    if data.ndim == 3:
        return Sequence(data[None], m, None, md)
    if len(others) != 1:
        raise BadInputError(f"cannot read '{p.name}' as a sequence: it has {len(others)} non-spatial axes "
                            f"(shape {data.shape})", "a sequence has exactly one list (time) axis")
    axis = others[0]
    kinds = n.per_axis("kinds")
    if kinds and kinds[axis].lower() not in ("list", "domain", "time", "space"):
        raise BadInputError(
            f"cannot read '{p.name}' as a sequence: axis {axis} is a '{kinds[axis]}' axis "
            "(vector, colour or tensor data)",
            "convert it to a scalar volume sequence",
        )
    labels = n.per_axis("labels") or []
    units = n.per_axis("units") or []
    kv = dict(n.keyvalues)
    index_name = labels[axis] if axis < len(labels) and labels[axis] else kv.pop(f"axis {axis} quantity", "")
    index_unit = units[axis] if axis < len(units) and units[axis] else kv.pop(f"axis {axis} unit", "")
    index_type = kv.pop(f"axis {axis} index type", "numeric")
    raw_values = kv.pop(f"axis {axis} index values", None)
    kv.pop(f"axis {axis} quantity", None)
    kv.pop(f"axis {axis} unit", None)
    n_frames = data.shape[0]
    times = None
    if raw_values is not None:
        values = raw_values.split()
        if len(values) != n_frames:
            raise BadInputError(
                f"cannot read '{p.name}': it has {n_frames} frames but {len(values)} index values",
                _CORRUPT_HINT)
        md["index_values"] = [unquote(v) for v in values]
        times = _times_from_index(values, index_type, index_unit, md)
    elif n_frames > 1:
        md["times_unknown"] = "it records no frame index values"
    md.update(index_name=index_name or "frame", index_unit=index_unit, index_type=index_type)
    if kv:
        md["nrrd_keyvalues"] = kv
    return Sequence(data, m, times, md)


def _read_nifti_sequence(p: Path) -> Sequence:
    img, data, affine = _load_nifti(p)
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    md: dict = {"format": "nifti", "path": str(p)}
    if data.ndim == 3:
        return Sequence(_nifti_array_to_zyx(data)[None], affine, None, md)
    if data.ndim != 4:
        raise BadInputError(f"cannot read '{p.name}' as a sequence: it has {data.ndim} dimensions "
                            f"(shape {data.shape})", "a sequence is 4D (x, y, z, t)")
    n_frames = data.shape[3]
    hdr = img.header
    dt = float(hdr["pixdim"][4])
    toffset = float(hdr["toffset"]) if "toffset" in hdr else 0.0
    t_unit = hdr.get_xyzt_units()[1]
    if t_unit in _TIME_UNIT_SCALE or t_unit == "unknown":
        scale = _TIME_UNIT_SCALE.get(t_unit, 1.0)
        if t_unit == "unknown":
            md["time_unit_assumed"] = "sec"
        if not np.isfinite(dt) or dt <= 0:
            md["time_step_missing"] = True
            dt, scale = 1.0, 1.0
        times = (toffset + dt * np.arange(n_frames)) * scale
    else:
        md["index_values_unit"] = t_unit
        times = toffset + (dt if np.isfinite(dt) and dt > 0 else 1.0) * np.arange(n_frames, dtype=np.float64)
    return Sequence(_nifti_array_to_zyx(data), affine, times, md)


def read_sequence(path: str | os.PathLike) -> Sequence:
    """Read a 4D sequence from Slicer's .seq.nrrd (any 4D NRRD with one list axis) or 4D NIfTI.

    Times come from the ``axis N index values`` of a .seq.nrrd (unit from the
    axis ``units``; ms converted to s) or from NIfTI ``pixdim[4]``/``toffset``
    and ``xyzt_units``. A 3D file gives a one-frame sequence.
    """
    p = Path(path)
    _check_exists(p)
    fmt = sequence_format(p)
    if fmt == "nifti":
        return _read_nifti_sequence(p)
    return _read_nrrd_sequence(p)


def write_sequence(seq: Sequence, path: str | os.PathLike, *, compress: bool = True,
                   list_axis: str = "last") -> Path:
    """Write ``seq`` atomically as a Slicer volume sequence (.seq.nrrd/.nrrd/.nhdr) or 4D NIfTI.

    NRRD output matches what Slicer's vtkMRMLVolumeSequenceStorageNode writes:
    LPS space, ``kinds: domain domain domain list`` with the list axis LAST
    (``list_axis="first"`` writes the older Slicer <= 5.8 layout, list axis
    first), ``labels``/``units`` "time"/"s" on the list axis and the custom
    fields ``axis N index type:=numeric`` / ``axis N index values:=t0 t1 ...``
    (seconds). NIfTI needs evenly spaced times: it stores ``pixdim[4]`` (the
    step), ``toffset`` (the first time) and ``xyzt_units`` mm/sec.
    """
    if not isinstance(seq, Sequence):
        raise BadInputError(f"write_sequence needs a Sequence, got {type(seq).__name__}",
                            "build one with Sequence(...) or Sequence.from_volumes(...)")
    p, ext = _prepare_write(path, SEQUENCE_EXTENSIONS, "sequence")
    times = check_finite(seq.times_s, "times_s")
    arr = _writable_array(seq.array, _INT_FLOAT)
    if ext in (".nii", ".nii.gz"):
        n = len(times)
        dt = float(times[1] - times[0]) if n > 1 else 0.0
        if n > 1 and not np.allclose(np.diff(times), dt, rtol=1e-6, atol=1e-9):
            raise BadInputError(
                f"cannot write '{p.name}': NIfTI needs evenly spaced frame times, got {times.tolist()[:8]}",
                "write a .seq.nrrd instead, which stores each frame's time",
            )
        if n > 1 and dt <= 0:
            raise BadInputError(f"cannot write '{p.name}': frame times must increase for NIfTI",
                                "sort the frames by time or write a .seq.nrrd")
        img = _nifti_image(arr, seq.ijk_to_ras, arr.dtype)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = dt
        img.header["toffset"] = float(times[0])
        _save_nifti(img, p)
        return p
    if list_axis not in ("first", "last"):
        raise BadInputError(f"list_axis must be 'first' or 'last', got {list_axis!r}", "use 'last' (Slicer >= 5.9)")
    geo = _nrrd_direction_fields(seq.ijk_to_ras, "left-posterior-superior")
    values = " ".join(repr(float(t)) for t in times)  # shortest exact text: 0.0 0.5 1.0
    index_name = "time"  # times_s is always seconds, so the index is always time
    if list_axis == "last":
        a = 3
        data = arr  # (t, k, j, i): NRRD axes i, j, k, t
        fields = {"space": geo["space"], "space directions": geo["space directions"] + " none",
                  "kinds": "domain domain domain list", "labels": f'"" "" "" "{index_name}"',
                  "units": '"" "" "" "s"', "space origin": geo["space origin"]}
    else:
        a = 0
        data = np.ascontiguousarray(np.moveaxis(arr, 0, -1))  # (k, j, i, t): NRRD axes t, i, j, k
        fields = {"space": geo["space"], "space directions": "none " + geo["space directions"],
                  "kinds": "list domain domain domain", "labels": f'"{index_name}" "" "" ""',
                  "units": '"s" "" "" ""', "space origin": geo["space origin"]}
    keyvalues = {"DataNodeClassName": str(seq.metadata.get("data_node_class", _SEQ_DATA_NODE_CLASS)),
                 f"axis {a} index type": "numeric", f"axis {a} index values": values}
    _write_nrrd_file(p, ext, data, fields, keyvalues, compress)
    return p


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM file by extension (.dcm, .dicom, .ima) or, without a known extension, by its 'DICM' preamble."""
    p = Path(path)
    fmt = _FORMAT_BY_EXT.get(_ext(p))
    return fmt == "dicom" or (fmt is None and p.is_file() and _is_dicom_file(p))


def is_dicom_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` directly holds DICOM files: it is read as a DICOM series (one volume), not a batch."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_file() and is_dicom_file(p) for p in folder.iterdir())


def volume_files(folder: str | os.PathLike) -> list[Path]:
    """The volume files (by extension, :data:`VOLUME_EXTENSIONS`) directly in ``folder``, sorted by name.

    A missing or empty folder is a BadInputError, so datasets and batch jobs fail
    with one clear message instead of training on nothing.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_EXTENSIONS)) \
        if folder.is_dir() else []
    if not files:
        raise BadInputError(f"no volume files ({', '.join(VOLUME_EXTENSIONS)}) in '{folder}'",
                            "point the setting at a folder of volumes")
    return files
