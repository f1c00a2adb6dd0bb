"""meddiffcore.io sequences: the Sequence class, Slicer .seq.nrrd (both list-axis layouts) and 4D NIfTI."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from meddiffcore.errors import BadInputError
from meddiffcore.io import Sequence, Volume, read_sequence, read_volume, write_sequence, write_volume
from meddiffcore.io import nrrd as mnrrd

from test_io import OBLIQUE, ORIGIN, SPACING, make_array, make_volume

TIMES = [0.0, 0.25, 1.5]


def make_sequence(dtype=np.int16, times=TIMES) -> Sequence:
    v = make_volume(dtype)
    frames = [v.with_array(make_array(dtype, seed=i)) for i in range(len(times))]
    return Sequence.from_volumes(frames, times)


def test_sequence_basics():
    s = make_sequence()
    assert s.shape == (3, 7, 11, 13) and s.frame_shape == (7, 11, 13) and len(s) == 3
    np.testing.assert_array_equal(s.times_s, TIMES)
    assert s.times_s.dtype == np.float64
    np.testing.assert_allclose(s.spacing, SPACING)
    np.testing.assert_allclose(s.direction, OBLIQUE, atol=1e-12)
    np.testing.assert_allclose(s.origin, ORIGIN)
    f = s.frame(2)
    assert isinstance(f, Volume) and f.metadata["time_s"] == 1.5
    np.testing.assert_array_equal(f.array, s.array[2])
    np.testing.assert_array_equal(f.ijk_to_ras, s.ijk_to_ras)
    assert s.frame(-1).metadata["frame_index"] == 2
    with pytest.raises(BadInputError, match="frame 3 does not exist"):
        s.frame(3)
    # default times are frame numbers; from_volumes picks up frame times it produced
    assert Sequence(s.array, s.ijk_to_ras).times_s.tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(Sequence.from_volumes(s.frames()).times_s, TIMES)


def test_sequence_validation():
    with pytest.raises(BadInputError, match=r"expected a 4D sequence \(t, z, y, x\), got shape \(7, 11, 13\)"):
        Sequence(np.zeros((7, 11, 13)))
    with pytest.raises(BadInputError, match="times_s has 2 values for 3 frames"):
        Sequence(np.zeros((3, 2, 2, 2)), np.eye(4), [0, 1])
    with pytest.raises(BadInputError, match="non-finite"):
        Sequence(np.zeros((2, 2, 2, 2)), np.eye(4), [0, np.nan])


def test_from_volumes_names_the_frame_that_differs():
    v = make_volume()
    other_geom = Volume(v.array, v.ijk_to_ras + np.array([[0, 0, 0, 0.5]] * 3 + [[0, 0, 0, 0]]))
    with pytest.raises(BadInputError, match=r"frame 2 has a different geometry .* than frame 0"):
        Sequence.from_volumes([v, v, other_geom, v])
    with pytest.raises(BadInputError, match=r"frame 1 has shape \(7, 11, 12\) but frame 0 has shape \(7, 11, 13\)"):
        Sequence.from_volumes([v, Volume(np.zeros((7, 11, 12)), v.ijk_to_ras)])
    with pytest.raises(BadInputError, match="zero volumes"):
        Sequence.from_volumes([])


@pytest.mark.parametrize("list_axis", ["last", "first"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("compress", [True, False])
def test_seq_nrrd_roundtrip(tmp_path, list_axis, dtype, compress):
    s = make_sequence(dtype)
    p = write_sequence(s, tmp_path / "s.seq.nrrd", list_axis=list_axis, compress=compress)
    r = read_sequence(p)
    assert r.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(r.array, s.array)
    np.testing.assert_allclose(r.ijk_to_ras, s.ijk_to_ras, atol=1e-12)
    np.testing.assert_array_equal(r.times_s, TIMES)
    assert r.metadata["index_name"] == "time" and r.metadata["index_unit"] == "s"
    assert os.listdir(tmp_path) == ["s.seq.nrrd"]


def test_seq_nrrd_header_matches_slicer_layout(tmp_path):
    s = make_sequence()
    n = mnrrd.read_nrrd(write_sequence(s, tmp_path / "s.seq.nrrd"))
    assert n.fields["kinds"] == "domain domain domain list"
    assert n.fields["sizes"] == "13 11 7 3"
    assert n.fields["space"] == "left-posterior-superior"
    assert n.fields["space directions"].endswith(" none")
    assert n.per_axis("labels") == ["", "", "", "time"] and n.per_axis("units") == ["", "", "", "s"]
    assert n.keyvalues == {"DataNodeClassName": "vtkMRMLScalarVolumeNode", "axis 3 index type": "numeric",
                           "axis 3 index values": "0.0 0.25 1.5"}
    np.testing.assert_array_equal(n.data, s.array)  # (t, k, j, i) is the file's own C order
    old = mnrrd.read_nrrd(write_sequence(s, tmp_path / "o.seq.nrrd", list_axis="first"))
    assert old.fields["kinds"] == "list domain domain domain" and old.fields["sizes"] == "3 13 11 7"
    assert old.fields["space directions"].startswith("none ")
    assert old.keyvalues["axis 0 index values"] == "0.0 0.25 1.5"
    np.testing.assert_array_equal(np.moveaxis(old.data, -1, 0), s.array)


def test_reads_slicer_seq_nrrd_written_by_hand(tmp_path):
    """A Slicer 5.8-style file (list axis first, RAS space, times in ms, quantity/unit custom fields)."""
    arr = make_array(np.int16, (2, 3, 4, 5))  # (t, k, j, i)
    header = (
        "NRRD0004\ntype: short\ndimension: 4\nspace: right-anterior-superior\nsizes: 2 5 4 3\n"
        "space directions: none (0.5,0,0) (0,0.75,0) (0,0,2)\nkinds: list domain domain domain\n"
        "endian: big\nencoding: gzip\nspace origin: (1,2,3)\n"
        "axis 0 index type:=numeric\naxis 0 index values:=100 350\naxis 0 quantity:=time\naxis 0 unit:=ms\n"
        "DataNodeClassName:=vtkMRMLScalarVolumeNode\nMyAttribute:=hello\n\n"
    )
    import gzip

    (tmp_path / "h.seq.nrrd").write_bytes(header.encode() + gzip.compress(np.moveaxis(arr, 0, -1).astype(">i2").tobytes()))
    s = read_sequence(tmp_path / "h.seq.nrrd")
    np.testing.assert_array_equal(s.array, arr)
    np.testing.assert_allclose(s.times_s, [0.1, 0.35])
    np.testing.assert_allclose(s.ijk_to_ras, [[0.5, 0, 0, 1], [0, 0.75, 0, 2], [0, 0, 2, 3], [0, 0, 0, 1]])
    assert s.metadata["index_name"] == "time" and s.metadata["index_values"] == ["100", "350"]
    assert s.metadata["nrrd_keyvalues"] == {"DataNodeClassName": "vtkMRMLScalarVolumeNode", "MyAttribute": "hello"}


def test_seq_nrrd_without_index_values_and_3d_file(tmp_path):
    arr = make_array(np.uint8, (3, 2, 3, 4))
    (tmp_path / "plain.nrrd").write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 4\nspace: LPS\nsizes: 4 3 2 3\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1) none\nkinds: space space space list\nencoding: raw\n\n"
        + arr.tobytes())
    s = read_sequence(tmp_path / "plain.nrrd")
    np.testing.assert_array_equal(s.array, arr)
    assert s.times_s.tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(s.direction, np.diag([-1, -1, 1]))
    one = read_sequence(write_volume(make_volume(), tmp_path / "v.nrrd"))
    assert one.shape == (1, 7, 11, 13)
    with pytest.raises(BadInputError, match=r"got shape \(3, 2, 3, 4\) \(a 2D slice or a 4D sequence\?\)"):
        read_volume(tmp_path / "plain.nrrd")


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_nifti_4d_roundtrip_and_nibabel(tmp_path, ext):
    s = make_sequence(np.float32, times=[2.0, 2.5, 3.0])
    p = write_sequence(s, tmp_path / f"s.{ext}")
    img = nib.load(str(p))
    assert img.shape == (13, 11, 7, 3) and img.get_data_dtype() == np.float32
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert float(img.header["pixdim"][4]) == 0.5 and float(img.header["toffset"]) == 2.0
    np.testing.assert_array_equal(np.asarray(img.dataobj), s.array.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(img.affine, s.ijk_to_ras, atol=1e-5)
    r = read_sequence(p)
    np.testing.assert_array_equal(r.array, s.array)
    np.testing.assert_allclose(r.ijk_to_ras, s.ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(r.times_s, [2.0, 2.5, 3.0])
    # SimpleITK sees the same 4D data
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    np.testing.assert_array_equal(arr, s.array)


def test_nifti_4d_time_units(tmp_path):
    data = np.zeros((4, 3, 2, 5), np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 40.0
    nib.save(img, str(tmp_path / "ms.nii.gz"))
    s = read_sequence(tmp_path / "ms.nii.gz")
    assert s.shape == (5, 2, 3, 4) and s.dtype == np.int16
    np.testing.assert_allclose(s.times_s, [0.0, 0.04, 0.08, 0.12, 0.16])
    img.header.set_xyzt_units("mm", "unknown")
    img.header["pixdim"][4] = 0.0
    nib.save(img, str(tmp_path / "none.nii.gz"))
    s = read_sequence(tmp_path / "none.nii.gz")
    assert s.times_s.tolist() == [0, 1, 2, 3, 4] and s.metadata["time_step_missing"]


def test_nifti_needs_even_times_but_seq_nrrd_does_not(tmp_path):
    s = make_sequence()
    with pytest.raises(BadInputError, match="evenly spaced") as e:
        write_sequence(s, tmp_path / "s.nii.gz")
    assert "seq.nrrd" in e.value.hint
    assert os.listdir(tmp_path) == []


def test_sequence_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        read_sequence(tmp_path / "nope.seq.nrrd")
    write_volume(make_volume(), tmp_path / "x.mha")
    with pytest.raises(BadInputError, match="unknown sequence format"):
        read_sequence(tmp_path / "x.mha")
    with pytest.raises(BadInputError, match="unknown sequence format"):
        write_sequence(make_sequence(), tmp_path / "x.mha")
    p = write_sequence(make_sequence(), tmp_path / "t.seq.nrrd")
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(BadInputError, match=r"cannot read 't.seq.nrrd': the file ends early \(truncated download\?\)"):
        read_sequence(p)
    with pytest.raises(BadInputError, match="list_axis"):
        write_sequence(make_sequence(), tmp_path / "y.seq.nrrd", list_axis="middle")


def test_failed_sequence_write_leaves_nothing(tmp_path, monkeypatch):
    import meddiffcore.io.formats as fmt

    def fail(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"NRRD0004\n")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fmt._nrrd, "write_nrrd", fail)
    with pytest.raises(BadInputError, match="Input/output error"):
        write_sequence(make_sequence(), tmp_path / "s.seq.nrrd")
    assert os.listdir(tmp_path) == []
