"""meddiffcore.io against the REAL 3D Slicer storage nodes (the ``slicer-core`` wheel).

Slicer reads what we write and we read what Slicer writes: IJK-to-RAS equal to
1e-5, voxel data identical, for every format, int16 and float32, an oblique
anisotropic grid. Slicer forces a right-handed IJK grid on read, so the grids
here are right-handed (the left-handed case is covered against nibabel and
SimpleITK in test_io.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import slicer  # the slicer-core wheel, a test requirement: a missing install must fail, not skip
import vtk
from vtk.util import numpy_support

from meddiffcore.io import Sequence, Volume, read_sequence, read_volume, write_sequence, write_volume  # noqa: E402

from test_io import SHAPE, make_volume  # noqa: E402
from test_io_sequence import TIMES, make_sequence  # noqa: E402

TOL = 1e-5
VOLUME_EXTS = ["nrrd", "nhdr", "nii", "nii.gz", "mha", "mhd"]
DTYPES = [np.int16, np.float32]
VTK_TYPES = {np.dtype(np.int16): vtk.VTK_SHORT, np.dtype(np.float32): vtk.VTK_FLOAT}


@pytest.fixture(scope="module")
def scene():
    return slicer.vtkMRMLScene()


def to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def to_vtk(a: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def node_array(node) -> np.ndarray:
    """What slicer.util.arrayFromVolume returns: (k, j, i)."""
    img = node.GetImageData()
    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(img.GetDimensions()[::-1])


def node_ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return to_numpy(m)


def volume_node(scene, vol: Volume):
    """A vtkMRMLScalarVolumeNode holding ``vol`` (what slicer.util.updateVolumeFromArray does)."""
    img = vtk.vtkImageData()
    img.SetDimensions(*vol.shape[::-1])
    arr = np.ascontiguousarray(vol.array)
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.ravel(), deep=1, array_type=VTK_TYPES[arr.dtype]))
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    node.SetAndObserveImageData(img)
    node.SetIJKToRASMatrix(to_vtk(vol.ijk_to_ras))
    return node


def slicer_read_volume(scene, path):
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def slicer_write_volume(scene, vol: Volume, path, compress=True):
    node = volume_node(scene, vol)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetUseCompression(int(compress))
    assert storage.WriteData(node), f"Slicer could not write {path}"


def sequence_node(scene, seq: Sequence):
    sn = slicer.vtkMRMLSequenceNode()
    scene.AddNode(sn)
    sn.SetIndexName("time")
    sn.SetIndexUnit("s")
    sn.SetIndexType(sn.NumericIndex)
    for i in range(len(seq)):
        tmp_scene = slicer.vtkMRMLScene()
        sn.SetDataNodeAtValue(volume_node(tmp_scene, seq.frame(i)), repr(float(seq.times_s[i])))
    return sn


def slicer_read_sequence(scene, path):
    sn = slicer.vtkMRMLSequenceNode()
    scene.AddNode(sn)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(sn), f"Slicer could not read {path}"
    return sn


# --------------------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ext", VOLUME_EXTS)
def test_slicer_reads_what_we_write(scene, tmp_path, ext, dtype):
    vol = make_volume(dtype)
    node = slicer_read_volume(scene, write_volume(vol, tmp_path / f"ours.{ext}"))
    arr = node_array(node)
    assert arr.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(arr, vol.array)
    np.testing.assert_allclose(node_ijk_to_ras(node), vol.ijk_to_ras, atol=TOL)
    np.testing.assert_allclose(node.GetSpacing(), vol.spacing, atol=TOL)
    np.testing.assert_allclose(node.GetOrigin(), vol.origin, atol=TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ext", VOLUME_EXTS)
def test_we_read_what_slicer_writes(scene, tmp_path, ext, dtype):
    vol = make_volume(dtype)
    path = tmp_path / f"slicer.{ext}"
    slicer_write_volume(scene, vol, path)
    got = read_volume(path)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.array, vol.array)
    np.testing.assert_allclose(got.ijk_to_ras, vol.ijk_to_ras, atol=TOL)


def test_slicer_axis_convention(scene, tmp_path):
    """array[k, j, i]: moving along the last numpy axis is Slicer's I axis."""
    vol = make_volume(np.int16)
    node = slicer_read_volume(scene, write_volume(vol, tmp_path / "a.nrrd"))
    assert node.GetImageData().GetDimensions() == SHAPE[::-1]
    k, j, i = 3, 5, 8
    assert node.GetImageData().GetScalarComponentAsDouble(i, j, k, 0) == vol.array[k, j, i]
    ras = [0.0, 0.0, 0.0, 1.0]
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    m.MultiplyPoint([i, j, k, 1.0], ras)
    np.testing.assert_allclose(ras[:3], vol.ijk_to_ras_points([[i, j, k]])[0], atol=TOL)


# --------------------------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("list_axis", ["last", "first"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_slicer_reads_our_seq_nrrd(scene, tmp_path, dtype, list_axis):
    seq = make_sequence(dtype)
    sn = slicer_read_sequence(scene, write_sequence(seq, tmp_path / "ours.seq.nrrd", list_axis=list_axis))
    assert sn.GetNumberOfDataNodes() == len(seq)
    assert sn.GetIndexName() == "time" and sn.GetIndexUnit() == "s"
    assert sn.GetIndexType() == sn.NumericIndex
    assert [float(sn.GetNthIndexValue(i)) for i in range(len(seq))] == TIMES
    for i in range(len(seq)):
        node = sn.GetNthDataNode(i)
        assert node.IsA("vtkMRMLScalarVolumeNode")
        np.testing.assert_array_equal(node_array(node), seq.array[i])
        np.testing.assert_allclose(node_ijk_to_ras(node), seq.ijk_to_ras, atol=TOL)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_we_read_slicer_seq_nrrd(scene, tmp_path, dtype, compress):
    seq = make_sequence(dtype)
    sn = sequence_node(scene, seq)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "slicer.seq.nrrd"
    storage.SetFileName(str(path))
    storage.SetUseCompression(int(compress))
    assert storage.WriteData(sn)
    got = read_sequence(path)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.array, seq.array)
    np.testing.assert_allclose(got.ijk_to_ras, seq.ijk_to_ras, atol=TOL)
    np.testing.assert_allclose(got.times_s, TIMES)
    assert got.metadata["index_name"] == "time" and got.metadata["index_unit"] == "s"
    # and a frame of it is the same volume Slicer holds
    np.testing.assert_array_equal(got.frame(1).array, node_array(sn.GetNthDataNode(1)))


def test_seq_nrrd_header_fields_equal_slicer(scene, tmp_path):
    """Our .seq.nrrd header has the same fields and custom keys as the one Slicer writes."""
    from meddiffcore.io import nrrd as mnrrd

    seq = make_sequence(np.int16)
    sn = sequence_node(scene, seq)
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "slicer.seq.nrrd"))
    assert storage.WriteData(sn)
    theirs = mnrrd.read_nrrd(tmp_path / "slicer.seq.nrrd", read_data=False)
    ours = mnrrd.read_nrrd(write_sequence(seq, tmp_path / "ours.seq.nrrd"), read_data=False)
    for key in ("type", "dimension", "space", "sizes", "kinds", "labels", "units", "endian"):
        assert ours.fields[key] == theirs.fields[key], key
    assert set(ours.keyvalues) == set(theirs.keyvalues)
    assert [float(x) for x in ours.keyvalues["axis 3 index values"].split()] == \
        [float(x) for x in theirs.keyvalues["axis 3 index values"].split()]
    for key in ("space directions", "space origin"):
        a = [mnrrd.parse_vector(t) for t in mnrrd.split_vectors(ours.fields[key])]
        b = [mnrrd.parse_vector(t) for t in mnrrd.split_vectors(theirs.fields[key])]
        assert [x is None for x in a] == [x is None for x in b]
        np.testing.assert_allclose([x for x in a if x], [x for x in b if x], atol=1e-9)
