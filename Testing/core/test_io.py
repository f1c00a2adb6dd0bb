"""meddiffcore.io: Volume geometry, every 3D format cross-checked with nibabel and SimpleITK,
DICOM series, atomic writes and bad-input errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from meddiffcore.errors import BadInputError, ErrorCode
from meddiffcore.io import (
    RAS_TO_LPS,
    SUPPORTED_EXTENSIONS,
    VOLUME_EXTENSIONS,
    Volume,
    atomic_output,
    check_finite,
    read_volume,
    volume_format,
    write_volume,
)
from meddiffcore.io import nrrd as mnrrd
from meddiffcore.io.atomic import atomic_outputs, split_extension, temp_name_for

SHAPE = (7, 11, 13)  # (z, y, x): K=7, J=11, I=13
SPACING = (0.7, 0.9, 2.5)  # I, J, K


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


OBLIQUE = rot("x", 20) @ rot("z", 20)  # 20 deg about two axes
ORIGIN = (12.5, -31.25, 40.0)


def make_array(dtype, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 30000), shape, endpoint=True).astype(dtype)


def make_volume(dtype=np.int16, direction=OBLIQUE, shape=SHAPE) -> Volume:
    return Volume.from_spacing(make_array(dtype, shape), SPACING, ORIGIN, direction)


def no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if ".tmp-" in p]


# --------------------------------------------------------------------------------------------- Volume


def test_volume_geometry_is_derived_from_matrix():
    v = make_volume()
    m = v.ijk_to_ras
    assert m.dtype == np.float64 and m.shape == (4, 4)
    np.testing.assert_allclose(v.spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(v.direction, OBLIQUE, atol=1e-12)
    np.testing.assert_allclose(v.origin, ORIGIN, atol=1e-12)
    np.testing.assert_allclose(m[:3, :3], OBLIQUE * np.array(SPACING), atol=1e-12)
    assert v.shape == SHAPE
    # I indexes the last array axis: voxel (i=1, j=0, k=0) is one I-step from the origin
    np.testing.assert_allclose(v.ijk_to_ras_points([[1, 0, 0]])[0], np.array(ORIGIN) + OBLIQUE[:, 0] * 0.7)
    np.testing.assert_allclose(v.ras_to_ijk @ m, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(v.ras_to_ijk_points(v.ijk_to_ras_points([[3, 4, 5]])), [[3, 4, 5]], atol=1e-12)
    # LPS negates the first two rows
    np.testing.assert_allclose(v.ijk_to_lps, RAS_TO_LPS @ m)
    np.testing.assert_allclose(v.origin_lps, [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]])
    np.testing.assert_allclose(v.lps_to_ijk @ v.ijk_to_lps, np.eye(4), atol=1e-12)
    w = Volume.from_ijk_to_lps(v.array, v.ijk_to_lps)
    np.testing.assert_allclose(w.ijk_to_ras, m, atol=1e-15)
    # nothing stored twice: changing the matrix changes every derived property
    v.ijk_to_ras[:3, 3] = 0
    np.testing.assert_array_equal(v.origin, 0)


def test_with_array_keeps_geometry_and_checks_shape():
    v = make_volume()
    w = v.with_array(v.array.astype(np.float32) * 2)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w.ijk_to_ras, v.ijk_to_ras)
    assert w.ijk_to_ras is not v.ijk_to_ras
    with pytest.raises(BadInputError, match="shape"):
        v.with_array(np.zeros((7, 11, 12)))


@pytest.mark.parametrize("shape", [(11, 13), (2, 7, 11, 13)])
def test_volume_rejects_non_3d(shape):
    with pytest.raises(BadInputError, match=r"expected a 3D volume, got shape .* \(a 2D slice or a 4D sequence\?\)"):
        Volume(np.zeros(shape))


@pytest.mark.parametrize(
    "matrix, match",
    [
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "singular"),
        (np.diag([1.0, np.nan, 1.0, 1.0]), "non-finite"),
        (np.eye(3), "4x4"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], float), "affine"),
    ],
)
def test_volume_rejects_bad_matrices(matrix, match):
    with pytest.raises(BadInputError, match=match):
        Volume(np.zeros(SHAPE), matrix)


def test_volume_rejects_bad_dtype_and_spacing():
    with pytest.raises(BadInputError, match="dtype"):
        Volume(np.zeros(SHAPE, dtype=np.complex64))
    with pytest.raises(BadInputError, match="spacing"):
        Volume.from_spacing(np.zeros(SHAPE), (1, 0, 1))


def test_check_finite():
    a = np.ones((3, 3, 3), np.float32)
    assert check_finite(a, "x") is a or np.shares_memory(check_finite(a, "x"), a)
    check_finite(np.ones(4, np.int16), "ints")
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = np.inf
    with pytest.raises(BadInputError, match=r"input image contains 2 non-finite value\(s\) \(1 NaN, 1 inf\)") as e:
        check_finite(a, "input image")
    assert e.value.hint and e.value.code is ErrorCode.BAD_INPUT


# --------------------------------------------------------------------------------------------- formats

ALL_WRITE = ["nii", "nii.gz", "nrrd", "nhdr", "mha", "mhd"]


@pytest.mark.parametrize("ext", ALL_WRITE)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.float64, np.int32])
def test_roundtrip_every_format(tmp_path, ext, dtype):
    v = make_volume(dtype)
    path = write_volume(v, tmp_path / f"vol.{ext}")
    w = read_volume(path)
    assert w.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(w.array, v.array)
    tol = 1e-5 if ext.startswith("nii") else 1e-12  # NIfTI stores float32 matrices
    np.testing.assert_allclose(w.ijk_to_ras, v.ijk_to_ras, atol=tol)
    assert w.array.dtype.isnative and w.array.flags.c_contiguous
    assert no_temp_files(tmp_path)


def test_left_handed_and_lps_like_grids_roundtrip(tmp_path):
    # a left-handed IJK (flipped K) and a plain LPS-aligned grid (Slicer's default for DICOM)
    for direction in (OBLIQUE @ np.diag([1, 1, -1]), np.diag([-1.0, -1.0, 1.0])):
        v = make_volume(np.int16, direction)
        for ext in ALL_WRITE:
            w = read_volume(write_volume(v, tmp_path / f"lh.{ext}"))
            np.testing.assert_array_equal(w.array, v.array)
            np.testing.assert_allclose(w.ijk_to_ras, v.ijk_to_ras, atol=1e-5)


def test_nifti_matches_nibabel(tmp_path):
    v = make_volume(np.int16)
    p = write_volume(v, tmp_path / "a.nii.gz")
    img = nib.load(str(p))
    assert img.get_data_dtype() == np.int16
    assert img.shape == SHAPE[::-1]  # nibabel is (i, j, k)
    np.testing.assert_array_equal(np.asarray(img.dataobj), v.array.transpose(2, 1, 0))
    np.testing.assert_allclose(img.affine, v.ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), v.ijk_to_ras, atol=1e-5)  # qform agrees (no shear)
    assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0
    # and we read what nibabel writes
    data = make_array(np.float32).transpose(2, 1, 0)
    aff = v.ijk_to_ras.copy()
    nib.save(nib.Nifti1Image(data, aff), str(tmp_path / "b.nii"))
    w = read_volume(tmp_path / "b.nii")
    np.testing.assert_array_equal(w.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(w.ijk_to_ras, aff, atol=1e-5)


@pytest.mark.parametrize("ext", ["nrrd", "nhdr", "mha", "mhd", "nii.gz"])
def test_matches_simpleitk(tmp_path, ext):
    """SimpleITK works in LPS: its matrix must be our IJK-to-LPS, its array our array."""
    v = make_volume(np.float32)
    p = write_volume(v, tmp_path / f"a.{ext}")
    img = sitk.ReadImage(str(p))
    assert img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), v.array)
    d = np.array(img.GetDirection()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * np.array(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(m, v.ijk_to_lps, atol=1e-5)
    # write with SimpleITK, read with us
    img2 = sitk.GetImageFromArray(make_array(np.int16, seed=3))
    img2.SetSpacing(SPACING)
    img2.SetOrigin((-5.0, 7.5, 100.25))
    img2.SetDirection(tuple((np.diag([-1, -1, 1]) @ OBLIQUE).ravel()))
    q = tmp_path / f"b.{ext}"
    sitk.WriteImage(img2, str(q), ext in ("nrrd", "mha"))
    w = read_volume(q)
    assert w.dtype == np.int16
    np.testing.assert_array_equal(w.array, sitk.GetArrayFromImage(img2))
    np.testing.assert_allclose(w.direction, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(w.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(w.origin, (5.0, -7.5, 100.25), atol=1e-5)


def test_nrrd_header_is_lps_and_exact(tmp_path):
    v = make_volume(np.int16)
    p = write_volume(v, tmp_path / "a.nrrd", compress=False)
    n = mnrrd.read_nrrd(p)
    assert n.fields["space"] == "left-posterior-superior"
    assert n.fields["type"] == "short" and n.fields["encoding"] == "raw" and n.fields["sizes"] == "13 11 7"
    dirs = [mnrrd.parse_vector(t) for t in mnrrd.split_vectors(n.fields["space directions"])]
    np.testing.assert_array_equal(np.column_stack(dirs), v.ijk_to_lps[:3, :3])  # exact text round trip
    assert os.path.getsize(p) == len(p.read_bytes().split(b"\n\n", 1)[0]) + 2 + v.array.nbytes


def test_nrrd_reader_features(tmp_path):
    """RAS space, big endian, byte/line skip, detached LIST data, ascii and bzip2 encodings."""
    arr = make_array(np.int16)
    lin = OBLIQUE * np.array(SPACING)
    dirs = " ".join(mnrrd.format_vector(lin[:, c]) for c in range(3))
    base = (f"NRRD0004\ntype: int16\ndimension: 3\nspace: RAS\nsizes: 13 11 7\nspace directions: {dirs}\n"
            f"kinds: domain domain domain\nspace origin: (1,2,3)\n")
    expect = np.eye(4)
    expect[:3, :3] = lin
    expect[:3, 3] = (1, 2, 3)

    (tmp_path / "be.nrrd").write_bytes((base + "endian: big\nencoding: raw\n\n").encode() + arr.astype(">i2").tobytes())
    (tmp_path / "skip.nhdr").write_text(base + "endian: little\nencoding: raw\nline skip: 1\nbyte skip: 3\n"
                                        "data file: skip.dat\n")
    (tmp_path / "skip.dat").write_bytes(b"junk line\nabc" + arr.astype("<i2").tobytes())
    (tmp_path / "end.nhdr").write_text(base + "endian: little\nencoding: raw\nbyte skip: -1\ndata file: end.dat\n")
    (tmp_path / "end.dat").write_bytes(b"x" * 77 + arr.astype("<i2").tobytes())
    half = arr.shape[0] // 2
    (tmp_path / "p0.raw").write_bytes(arr[:half].astype("<i2").tobytes())
    (tmp_path / "p1.raw").write_bytes(arr[half:].astype("<i2").tobytes())
    (tmp_path / "list.nhdr").write_text(base + "endian: little\nencoding: raw\ndata file: LIST\np0.raw\np1.raw\n")
    (tmp_path / "txt.nrrd").write_text(base + "encoding: ascii\n\n" + " ".join(map(str, arr.ravel())) + "\n")
    import bz2

    (tmp_path / "bz.nrrd").write_bytes((base + "endian: little\nencoding: bzip2\n\n").encode()
                                       + bz2.compress(arr.astype("<i2").tobytes()))
    for name in ("be.nrrd", "skip.nhdr", "end.nhdr", "list.nhdr", "txt.nrrd", "bz.nrrd"):
        v = read_volume(tmp_path / name)
        assert v.dtype == np.int16 and v.array.dtype.isnative, name
        np.testing.assert_array_equal(v.array, arr, err_msg=name)
        np.testing.assert_allclose(v.ijk_to_ras, expect, atol=1e-12, err_msg=name)


def test_nrrd_without_space_fields_uses_spacings(tmp_path):
    arr = make_array(np.uint8)
    (tmp_path / "s.nrrd").write_bytes(b"NRRD0001\ntype: uchar\ndimension: 3\nsizes: 13 11 7\n"
                                      b"spacings: 0.7 0.9 2.5\nencoding: raw\n\n" + arr.tobytes())
    v = read_volume(tmp_path / "s.nrrd")
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.spacing, SPACING)
    # no 'space' => the ITK/Slicer convention: LPS-aligned axes
    np.testing.assert_allclose(v.direction, np.diag([-1, -1, 1]))


def test_bool_and_float16_are_widened(tmp_path):
    v = Volume.from_spacing(make_array(np.float32) > 0, SPACING)
    w = read_volume(write_volume(v, tmp_path / "m.nii.gz"))
    assert w.dtype == np.uint8
    np.testing.assert_array_equal(w.array, v.array)
    h = read_volume(write_volume(v.with_array(v.array.astype(np.float16)), tmp_path / "h.nrrd"))
    assert h.dtype == np.float32


def test_single_frame_4d_reads_as_3d(tmp_path):
    v = make_volume(np.int16)
    nib.save(nib.Nifti1Image(v.array.T[..., None], v.ijk_to_ras), str(tmp_path / "one.nii.gz"))
    w = read_volume(tmp_path / "one.nii.gz")
    assert w.shape == SHAPE
    np.testing.assert_array_equal(w.array, v.array)


# --------------------------------------------------------------------------------------------- DICOM


def _write_dicom_series(folder, arr, spacing, origin_lps, uid_suffix="1"):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = f"1.2.826.0.1.3680043.2.1125.{uid_suffix}"
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k:k + 1])
        sl.SetSpacing(spacing)
        sl.SetOrigin((origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2]))
        tags = {
            "0008|0060": "CT", "0010|0010": "Test^Phantom", "0020|000d": "1.2.826.0.1.3680043.2.1125.99",
            "0020|000e": series_uid, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{x:.4f}" for x in (origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2])),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]), "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return series_uid


def test_dicom_series_folder(tmp_path):
    arr = make_array(np.int16, (5, 11, 13))
    _write_dicom_series(tmp_path / "ct", arr, (0.7, 0.9, 2.5), (-10.0, 20.0, 30.0))
    assert volume_format(tmp_path / "ct") == "dicom"
    v = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(v.array, arr)
    np.testing.assert_allclose(v.spacing, (0.7, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(v.direction, np.diag([-1, -1, 1]), atol=1e-6)  # LPS axes seen in RAS
    np.testing.assert_allclose(v.origin, (10.0, -20.0, 30.0), atol=1e-4)
    # one file of the series is that one slice, not the series
    w = read_volume(tmp_path / "ct" / "slice002.dcm")
    assert w.shape == (1,) + arr.shape[1:] and w.metadata["dicom_single_file"]
    np.testing.assert_array_equal(w.array[0], arr[2])
    np.testing.assert_allclose(w.origin, v.origin + v.direction @ [0, 0, 2 * 2.5], atol=1e-4)
    # two series in one folder: must choose
    _write_dicom_series(tmp_path / "ct", arr[:3], (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), uid_suffix="2")
    with pytest.raises(BadInputError, match="2 DICOM series"):
        read_volume(tmp_path / "ct")
    assert read_volume(tmp_path / "ct", series_uid="1.2.826.0.1.3680043.2.1125.2").shape == (3, 11, 13)


def test_dicom_pydicom_ct_small(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(src)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "IMG0001").write_bytes(Path(src).read_bytes())
    assert volume_format(tmp_path / "one" / "IMG0001") == "dicom"  # sniffed, no extension
    v = read_volume(tmp_path / "one")
    assert v.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(v.array[0], expected)
    np.testing.assert_allclose(v.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], atol=1e-6)
    np.testing.assert_allclose(v.origin_lps, [float(x) for x in ds.ImagePositionPatient], atol=1e-4)


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(BadInputError, match="no DICOM series"):
        read_volume(tmp_path)


# --------------------------------------------------------------------------------------------- atomic writes


def test_temp_name_keeps_extension(tmp_path):
    t = temp_name_for(tmp_path / "out.nii.gz")
    assert t.parent == tmp_path and t.name.startswith(".out.tmp-") and t.name.endswith(".nii.gz")
    assert temp_name_for("a/x.seq.nrrd").name.endswith(".seq.nrrd")
    assert split_extension("scan.v2.nii.gz") == ("scan.v2", ".nii.gz")
    assert split_extension("noext") == ("noext", "")


def test_atomic_output_success_and_failure(tmp_path):
    target = tmp_path / "x.bin"
    with atomic_output(target) as tmp:
        assert not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed midway")
    assert target.read_bytes() == b"new"  # old content untouched
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "never.bin"):
            pass
    assert sorted(os.listdir(tmp_path)) == ["x.bin"]


def test_atomic_outputs_group(tmp_path):
    with atomic_outputs([tmp_path / "a.raw", tmp_path / "a.mhd"]) as d:
        (d / "a.raw").write_bytes(b"data")
        (d / "a.mhd").write_text("header")
    assert sorted(os.listdir(tmp_path)) == ["a.mhd", "a.raw"]
    with pytest.raises(ValueError):
        with atomic_outputs([tmp_path / "b.raw", tmp_path / "b.mhd"]) as d:
            (d / "b.raw").write_bytes(b"data")
            raise ValueError("boom")
    assert sorted(os.listdir(tmp_path)) == ["a.mhd", "a.raw"]


@pytest.mark.parametrize("ext", ALL_WRITE)
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, ext):
    """The low-level writer dies after writing part of the file: no target, no temp file."""
    import meddiffcore.io.formats as fmt

    def partial_then_fail(*args, **kwargs):
        path = next(a for a in args if isinstance(a, (str, os.PathLike)))  # nib/sitk: (img, path)
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", partial_then_fail)
    monkeypatch.setattr(fmt._nrrd, "write_nrrd", partial_then_fail)
    monkeypatch.setattr(sitk, "WriteImage", partial_then_fail)
    with pytest.raises(BadInputError, match="No space left"):
        write_volume(make_volume(), tmp_path / f"out.{ext}")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    v = make_volume()
    p = write_volume(v, tmp_path / "keep.nii.gz")
    before = p.read_bytes()

    def boom(img, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        write_volume(v.with_array(v.array * 0), p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.nii.gz"]


def test_rejected_dtype_writes_nothing(tmp_path):
    v = make_volume()
    v.array = v.array.astype(np.complex64)  # bypasses validation, like a caller mutating the array
    for ext in ALL_WRITE:
        with pytest.raises(BadInputError, match="dtype"):
            write_volume(v, tmp_path / f"c.{ext}")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such file") as e:
        read_volume(tmp_path / "missing.nii.gz")
    assert e.value.hint and e.value.exit_status == 3


def test_unknown_extension(tmp_path):
    (tmp_path / "x.foo").write_bytes(b"hello")
    with pytest.raises(BadInputError, match=r"unknown volume format '\.foo'"):
        read_volume(tmp_path / "x.foo")
    with pytest.raises(BadInputError, match="unknown volume format"):
        write_volume(make_volume(), tmp_path / "y.png")
    with pytest.raises(BadInputError, match="does not exist"):
        write_volume(make_volume(), tmp_path / "nofolder" / "y.nrrd")
    assert ".nii.gz" in VOLUME_EXTENSIONS and ".seq.nrrd" in SUPPORTED_EXTENSIONS
    assert volume_format("a.NII.GZ") == "nifti" and volume_format("b.nhdr") == "nrrd"
    assert volume_format("c.mhd") == "metaimage"


@pytest.mark.parametrize("ext", ["nii.gz", "nii", "nrrd", "mha", "mhd"])
def test_truncated_file(tmp_path, ext):
    p = write_volume(make_volume(np.float32), tmp_path / f"t.{ext}")
    cut = p.with_suffix(".zraw") if ext == "mhd" else p  # .mhd: cut its data file
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadInputError) as e:
        read_volume(p)
    assert "cannot read 't." in e.value.message
    assert "the file ends early (truncated download?)" in e.value.message
    assert e.value.hint == "re-export or re-copy the file"


def test_truncated_gzip_nrrd_and_detached_data(tmp_path):
    p = write_volume(make_volume(), tmp_path / "t.nhdr", compress=False)
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:50])
    with pytest.raises(BadInputError, match="ends early"):
        read_volume(p)
    raw.unlink()
    with pytest.raises(BadInputError, match="does not exist"):
        read_volume(p)


def test_corrupt_files(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 3))
    (tmp_path / "bad.nrrd").write_bytes(b"P5 not nrrd\n")
    (tmp_path / "bad2.nrrd").write_bytes(b"NRRD0004\ntype: quaternion\ndimension: 3\nsizes: 1 1 1\nencoding: raw\n\n")
    (tmp_path / "empty.mha").write_bytes(b"")
    for name in ("bad.nii.gz", "bad.nrrd", "bad2.nrrd", "empty.mha"):
        with pytest.raises(BadInputError, match=f"cannot read '{name}'"):
            read_volume(tmp_path / name)


def test_2d_and_4d_files_are_not_volumes(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((13, 11), np.float32), np.eye(4)), str(tmp_path / "slice.nii"))
    with pytest.raises(BadInputError, match=r"expected a 3D volume, got shape \(11, 13\)"):
        read_volume(tmp_path / "slice.nii")
    nib.save(nib.Nifti1Image(np.zeros((13, 11, 7, 3), np.float32), np.eye(4)), str(tmp_path / "four.nii.gz"))
    with pytest.raises(BadInputError, match=r"got shape \(3, 7, 11, 13\) \(a 2D slice or a 4D sequence\?\)"):
        read_volume(tmp_path / "four.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((11, 13), np.int16)), str(tmp_path / "s.mha"))
    with pytest.raises(BadInputError, match="expected a 3D volume"):
        read_volume(tmp_path / "s.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 11, 13, 3), np.uint8), isVector=True),
                    str(tmp_path / "rgb.mha"))
    with pytest.raises(BadInputError, match="components per voxel"):
        read_volume(tmp_path / "rgb.mha")
