"""Clinical inputs of ``meddiff synthesize``: a DICOM label series folder is ONE volume (not a batch of slices), a
folder of several series is refused until --series picks one, one DICOM file is refused as a 3D label map."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ctca_helpers import save_tiny_model
from meddiffcore.cli import main as cli_main
from meddiffcore.io import read_volume
from meddiffcore.tasks.ctca.phantom import make_phantom

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from dicom_helpers import oblique_geometry, write_series  # noqa: E402


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("meddiff_home")
    save_tiny_model(root / "models", "ctca-tiny")
    return root


@pytest.fixture(autouse=True)
def _home_env(home, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(home))


@pytest.fixture(scope="module")
def label_series(tmp_path_factory):
    """A phantom label map as a DICOM series (uint labels in int16 pixels) on an oblique grid, and its grid."""
    m = oblique_geometry((24, 30, 28), (4.0, 4.4, 4.8))
    labels = make_phantom(5, (24, 30, 28), ijk_to_ras=m, with_ct=False).labels.array
    folder = tmp_path_factory.mktemp("dicom") / "labels"
    uid = write_series(folder, labels.astype(np.int16), m, modality="SEG", description="heart labels")
    return folder, labels, m, uid


def _run(labels, out, *extra):
    return cli_main(["synthesize", "--labels", str(labels), "--out", str(out), "--model", "ctca-tiny", "--steps", "2",
                     "--seed", "3", "--progress", "json", *extra])


def _last_event(capsys) -> dict:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]


def test_dicom_series_folder_is_one_volume(label_series, tmp_path):
    folder, labels, m, _ = label_series
    out = tmp_path / "ct.nii.gz"
    assert _run(folder, out) == 0
    ct = read_volume(out)  # one file, not a folder of one-slice "volumes"
    assert ct.shape == labels.shape
    np.testing.assert_allclose(ct.ijk_to_ras, m, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_several_series_need_series_uid(label_series, tmp_path, capsys):
    folder, labels, m, uid = label_series
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in folder.iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    other = write_series(mixed, labels[:, ::-1].astype(np.int16), m, description="other", names=[f"X{n}.dcm" for n in range(24)])
    out = tmp_path / "ct.nii.gz"
    assert _run(mixed, out) == 3
    event = _last_event(capsys)
    assert "2 DICOM series" in event["message"] and uid in event["message"] and other in event["message"]
    assert "--series" in event["hint"] and not out.exists()
    assert _run(mixed, out, "--series", uid) == 0
    assert read_volume(out).shape == labels.shape


def test_one_dicom_file_is_refused_as_a_label_map(label_series, tmp_path, capsys):
    folder, *_ = label_series
    out = tmp_path / "ct.nii.gz"
    assert _run(sorted(folder.iterdir())[0], out) == 3
    event = _last_event(capsys)
    assert "one DICOM file" in event["message"] and "whole DICOM series" in event["hint"] and not out.exists()


def test_dicom_series_in_gives_a_dicom_series_out_in_the_same_study(label_series, tmp_path):
    import pydicom

    folder, labels, m, _ = label_series
    out = tmp_path / "synthetic_ct"  # no volume extension: a DICOM series folder
    assert _run(folder, out) == 0
    ct = read_volume(out)
    assert ct.shape == labels.shape and ct.array.dtype == np.int16
    np.testing.assert_allclose(ct.ijk_to_ras, m, atol=1e-4)
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    written = pydicom.dcmread(next(out.iterdir()), stop_before_pixels=True)
    assert written.StudyInstanceUID == src.StudyInstanceUID and written.SeriesInstanceUID != src.SeriesInstanceUID
    assert "ctca-tiny" in written.SeriesDescription and written.RescaleType == "HU"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_ct"]  # no temporary folder left
