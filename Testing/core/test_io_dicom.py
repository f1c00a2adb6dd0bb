"""DICOM input on real files: pydicom's bundled test files, pydicom-data's, and oblique series written here with
pydicom from a phantom. One file is what it holds (a slice, or a multi-frame volume), never a stack of its
neighbours; a folder is one series sorted by position, with its geometry exactly SimpleITK's; several series, a
repeated position, a missing slice or uneven spacing are refused with what was found."""

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_helpers import ROOT, oblique_geometry, write_series
from meddiffcore.errors import BadInputError
from meddiffcore.io import is_dicom_folder, read_volume
from meddiffcore.io.volume import RAS_TO_LPS
from meddiffcore.tasks.ctca.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    m = oblique_geometry()
    ct = make_phantom(2, (12, 20, 18), ijk_to_ras=m, with_ct=True).ct.array.astype(np.int16)
    return ct, m


def test_oblique_series_has_the_phantoms_geometry_and_simpleitks(tmp_path, phantom):
    ct, m = phantom
    write_series(tmp_path / "ct", ct, m, intercept=-1024)
    assert is_dicom_folder(tmp_path / "ct")
    v = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(v.array, ct)  # sorted by position, not by file name
    np.testing.assert_allclose(v.ijk_to_ras, m, atol=1e-4)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    ref = reader.Execute()
    np.testing.assert_allclose(v.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(v.origin_lps, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(v.direction_lps.ravel(), ref.GetDirection(), atol=1e-6)
    assert v.metadata["dicom_files"] == ct.shape[0] and not v.metadata["dicom_single_file"]


def test_one_file_of_a_series_is_one_slice(tmp_path, phantom):
    ct, m = phantom
    write_series(tmp_path / "ct", ct, m, intercept=-1024)
    whole = read_volume(tmp_path / "ct")
    one = next(p for p in sorted((tmp_path / "ct").iterdir()) if int(pydicom.dcmread(p).InstanceNumber) == 6)
    v = read_volume(one)
    assert v.shape == (1,) + ct.shape[1:] and v.metadata["dicom_single_file"]
    np.testing.assert_array_equal(v.array[0], ct[5])
    np.testing.assert_allclose(v.origin, whole.ijk_to_ras_points([[0, 0, 5]])[0], atol=1e-4)
    np.testing.assert_allclose(v.direction[:, :2], whole.direction[:, :2], atol=1e-6)


def test_pydicom_files_at_one_position_are_refused_as_a_series_and_read_singly(tmp_path):
    # MR_small in three transfer syntaxes: one series, one position; the old reader stacked them into 3 slices
    folder = tmp_path / "mr"
    folder.mkdir()
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    ds = pydicom.dcmread(folder / "MR_small.dcm")
    single = read_volume(folder / "MR_small.dcm")
    assert single.shape == (1, ds.Rows, ds.Columns)
    np.testing.assert_array_equal(single.array[0], ds.pixel_array)
    np.testing.assert_allclose(single.origin_lps, [float(x) for x in ds.ImagePositionPatient], atol=1e-4)
    np.testing.assert_allclose(single.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])], atol=1e-6)
    with pytest.raises(BadInputError, match="same slice position") as caught:
        read_volume(folder)
    assert "MR_small" in caught.value.message and "one file per position" in caught.value.hint


def test_pydicom_data_multiframe_file_is_its_frames():
    path = get_testdata_file("emri_small.dcm")  # from pydicom-data (test extras)
    assert path is not None, "pydicom-data is not installed (pip install pydicom-data)"
    ds = pydicom.dcmread(path)
    v = read_volume(path)
    assert v.shape == (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (10, 64, 64)
    np.testing.assert_array_equal(v.array, ds.pixel_array)
    img = sitk.ReadImage(path)
    np.testing.assert_allclose(v.origin_lps, img.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(v.spacing, img.GetSpacing(), atol=1e-6)


def test_several_series_are_listed_and_one_is_chosen_by_uid(tmp_path, phantom):
    ct, m = phantom
    first = write_series(tmp_path / "mixed", ct, m, description="arterial", intercept=-1024)
    second = write_series(tmp_path / "mixed", ct[:5] // 2, m, description="venous", intercept=-1024,
                          names=[f"B{n}.dcm" for n in range(5)])
    with pytest.raises(BadInputError) as caught:
        read_volume(tmp_path / "mixed")
    message = caught.value.message
    assert "2 DICOM series" in message and first in message and second in message
    assert "12 files, CT arterial" in message and "5 files, CT venous" in message and "--series" in caught.value.hint
    np.testing.assert_array_equal(read_volume(tmp_path / "mixed", series_uid=second).array, ct[:5] // 2)
    with pytest.raises(BadInputError, match="no DICOM series with UID 1.2.3"):
        read_volume(tmp_path / "mixed", series_uid="1.2.3")


def test_missing_slice_and_uneven_spacing_are_refused(tmp_path, phantom):
    ct, m = phantom
    write_series(tmp_path / "gap", ct, m)
    middle = next(p for p in (tmp_path / "gap").iterdir() if int(pydicom.dcmread(p).InstanceNumber) == 7)
    middle.unlink()
    with pytest.raises(BadInputError, match=r"not evenly spaced .*1 gap\(s\): missing slices") as caught:
        read_volume(tmp_path / "gap")
    assert "5 mm between" in caught.value.message and "whole series" in caught.value.hint

    write_series(tmp_path / "uneven", ct, m)
    shifted = next(p for p in (tmp_path / "uneven").iterdir() if int(pydicom.dcmread(p).InstanceNumber) == 4)
    ds = pydicom.dcmread(shifted)
    lps = RAS_TO_LPS @ m
    ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, :3] @ [0, 0, 3.3] + lps[:3, 3]]
    ds.save_as(shifted)
    with pytest.raises(BadInputError, match="not evenly spaced"):
        read_volume(tmp_path / "uneven")


# --------------------------------------------------------------------------------------------- 4D (perfusion)


def _perfusion(phantom, n_frames=5):
    ct, m = phantom
    return np.stack([ct + (30 * t if t % 2 else -20 * t) for t in range(n_frames)]).astype(np.int16), m


def test_one_perfusion_series_is_a_sequence_with_its_acquisition_times(tmp_path, phantom):
    from meddiffcore.io import read_dicom_sequence
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence

    frames, m = _perfusion(phantom)
    times = [0.0, 2.0, 4.5, 6.0, 9.0]
    uid, study = generate_uid(ROOT), generate_uid(ROOT)
    for t, (frame, time_s) in enumerate(zip(frames, times)):  # one series, every position once per time point
        write_series(tmp_path / "ctp", frame, m, series_uid=uid, study_uid=study, intercept=-1024, acquisition_s=43200.0 + time_s,
                     names=[f"F{t}_{n:03d}.dcm" for n in range(frame.shape[0])], first_instance=1 + t * 100)
    seq = read_dicom_sequence(tmp_path / "ctp")
    np.testing.assert_array_equal(seq.array, frames)
    np.testing.assert_allclose(seq.times_s, times, atol=1e-4)
    np.testing.assert_allclose(seq.ijk_to_ras, m, atol=1e-4)
    np.testing.assert_allclose(read_ctp_sequence(tmp_path / "ctp").times_s, times, atol=1e-4)  # the CTP input path
    with pytest.raises(BadInputError, match="same slice position") as caught:  # never a 3D volume
        read_volume(tmp_path / "ctp")
    assert "read as a sequence" in caught.value.hint


def test_one_series_per_time_point_is_a_sequence(tmp_path, phantom):
    from meddiffcore.io import read_dicom_sequence

    frames, m = _perfusion(phantom, 3)
    for t in (2, 0, 1):
        write_series(tmp_path / "ctp", frames[t], m, intercept=-1024, acquisition_s=3600.0 + 3.0 * t,
                     names=[f"S{t}_{n:03d}.dcm" for n in range(frames.shape[1])])
    seq = read_dicom_sequence(tmp_path / "ctp")
    np.testing.assert_array_equal(seq.array, frames)
    np.testing.assert_allclose(seq.times_s, [0.0, 3.0, 6.0], atol=1e-4)


# --------------------------------------------------------------------------------------------- DICOM output


def test_written_series_has_the_volumes_geometry_in_simpleitk_and_the_sources_study(tmp_path, phantom):
    from meddiffcore.io import Volume, write_dicom_series

    ct, m = phantom
    write_series(tmp_path / "src", ct, m, intercept=-1024)
    out = write_dicom_series(Volume(ct, m), tmp_path / "out", reference=tmp_path / "src", description="synthetic CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    img = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), ct)
    v = read_volume(out)
    np.testing.assert_allclose(v.ijk_to_ras, m, atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), v.direction_lps.ravel(), atol=1e-6)
    src = pydicom.dcmread(next((tmp_path / "src").iterdir()), stop_before_pixels=True)
    written = pydicom.dcmread(next(out.iterdir()), stop_before_pixels=True)
    assert written.StudyInstanceUID == src.StudyInstanceUID and written.PatientID == src.PatientID
    assert written.SeriesInstanceUID != src.SeriesInstanceUID and "DERIVED" in written.ImageType
    with pytest.raises(BadInputError, match="not an empty folder"):  # never over existing files
        write_dicom_series(Volume(ct, m), tmp_path / "src")
    with pytest.raises(BadInputError, match="int16"):
        write_dicom_series(Volume(ct.astype(np.float32) + 0.5, m), tmp_path / "float")
    assert not (tmp_path / "float").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
