"""Out-of-domain warnings from the model card (meddiffcore.domain), through the real CLI in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meddiffcore.domain import THRESHOLDS, findings, header_geometry, warn_out_of_domain
from meddiffcore.io import Sequence, Volume, write_sequence, write_volume
from meddiffcore.jobs import Job
from meddiffcore.models import bundled_model_dir, find_model, list_models, verify_model
from meddiffcore.progress import SilentReporter


def _cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MEDDIFF_HOME=str(home), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "meddiffcore.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _label_map(shape, spacing) -> Volume:
    """A heart-like label map: nested boxes of labels 1-8 inside background 0."""
    arr = np.zeros(shape, np.uint8)
    for label in range(1, 9):
        m = [max(1, s * label // 20) for s in shape]
        arr[m[0]:shape[0] - m[0], m[1]:shape[1] - m[1], m[2]:shape[2] - m[2]] = label
    return Volume.from_spacing(arr, spacing)


def _warning_events(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "log" and e.get("level") == "warning"]


def test_every_bundled_card_loads_verifies_and_describes_its_domain():
    cards = {c.name: c for c in list_models() if (bundled_model_dir() / f"{c.name}.json").is_file()}
    assert {"ctca-demo", "ctca-hr-demo", "ctp-demo", "recon-ct-demo", "recon-mri-demo", "sr-cascade-demo",
            "wdm-demo"} <= set(cards)
    for name, card in cards.items():
        assert verify_model(find_model(bundled_model_dir() / f"{name}.json")).name == name  # sha256 still matches
        domain = card.domain
        assert domain["inputs"] and domain["data"] and domain["comment"], name
        assert len(domain["spacing_mm"]) == 3 and len(domain["size"]) == 3, name


def test_fine_label_map_warns_on_the_terminal_before_synthesis(tmp_path):
    """A 0.8 mm label map (a heart-sized 96 mm field of view) against the 2 mm CTCA model: the terminal says it is resampled and loses detail,
    also with --progress none, and the synthesis still runs."""
    labels = tmp_path / "cta_labels.nii.gz"
    write_volume(_label_map((96, 120, 120), (0.8, 0.8, 1.0)), labels)
    out = tmp_path / "ct.nii.gz"
    result = _cli(tmp_path / "home", "synthesize", "--labels", str(labels), "--out", str(out), "--steps", "1",
                  "--progress", "none", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert ("warning: input 'cta_labels.nii.gz' has spacing 0.8x0.8x1 mm (x, y, z), 2.5x finer than the 2x2x2 mm "
            "model 'ctca-demo' was trained at") in result.stderr
    assert "resampled to 2x2x2 mm before the model runs: detail finer than that is lost" in result.stderr
    assert result.stderr.index("warning:") < result.stderr.index("wrote volume")
    assert out.is_file()


def test_in_domain_label_map_gives_no_warning(tmp_path):
    labels = tmp_path / "labels.nii.gz"
    write_volume(_label_map((48, 48, 48), (2.0, 2.0, 2.0)), labels)
    out = tmp_path / "ct.nii.gz"
    result = _cli(tmp_path / "home", "synthesize", "--labels", str(labels), "--out", str(out), "--steps", "1",
                  "--progress", "json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert _warning_events(result.stdout) == []
    assert "warning" not in result.stderr
    assert out.is_file()


def _dicom_ct_series(folder: Path, size: int = 512, slices: int = 16, pixel_mm: float = 0.4) -> Path:
    """A real DICOM CT series (SimpleITK's GDCM writer) of ``slices`` ``size``^2 int16 HU slices."""
    import SimpleITK as sitk

    folder.mkdir()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2)
    uid = "1.2.826.0.1.3680043.2.1125.17.1"
    for k in range(slices):
        image = sitk.GetImageFromArray(np.where(body, 40, -1000).astype(np.int16)[None])[:, :, 0]
        image.SetSpacing((pixel_mm, pixel_mm))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{1.25 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0018|0050", "1.25"), ("0028|0030", f"{pixel_mm}\\{pixel_mm}"),
                           ("0008|0018", f"{uid}.{k + 1}")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def test_512_ct_dicom_series_against_the_32px_prior_warns_in_the_json_events(tmp_path):
    """A 512^2 CT DICOM series for sparse-view recon: size and spacing warnings as JSON events (level warning,
    with a hint), sent before the task checks anything else (here it then refuses the output name)."""
    series = _dicom_ct_series(tmp_path / "ct_series")
    assert header_geometry(series) == [("ct_series", (512, 512, 16), pytest.approx((0.4, 0.4, 1.25)))]
    result = _cli(tmp_path / "home", "recon", "ct", "--simulate-from", str(series), "--out", str(tmp_path / "r.txt"),
                  "--progress", "json", "--device", "cpu", timeout=300)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    warnings = _warning_events(result.stdout)
    assert [w["message"] for w in warnings] == [
        "input 'ct_series' is 512x512x16 voxels (x, y, z), 16x more than the 32x32x32 the model 'recon-ct-demo' "
        "was trained on"]
    assert "out of the model's domain: expect it to help little over the classical result" in warnings[0]["hint"]
    assert "-1000 to 1000 HU" in warnings[0]["hint"]
    assert events[-1]["event"] == "error"  # the warnings come first, the job's own checks after
    assert events.index(warnings[0]) < len(events) - 1


def test_ctp_sequence_header_skips_the_time_axis_and_warns_on_fine_pixels(tmp_path):
    """A 4D .seq.nrrd perfusion study: only the spatial axes are compared; 512^2 at 0.43 mm against the
    64^2, 3.44 mm training slices gives a spacing and a size warning, and the model runs on the input's grid."""
    frames = np.zeros((3, 4, 512, 512), np.int16)
    geometry = Volume.from_spacing(np.zeros((4, 512, 512), np.uint8), (0.43, 0.43, 5.0)).ijk_to_ras
    path = tmp_path / "ctp.seq.nrrd"
    write_sequence(Sequence(frames, geometry, np.array([0.0, 3.0, 6.0])), path)
    assert header_geometry(path) == [("ctp.seq.nrrd", (512, 512, 4), pytest.approx((0.43, 0.43, 5.0)))]
    reporter = SilentReporter()
    job = Job(task="ctp.inpaint", inputs={"sequence": str(path)})  # no model named: the runner's default
    from meddiffcore.jobs import runner_for

    assert warn_out_of_domain(job, reporter, runner_for(job.task)) == 2
    messages = [(e["message"], e["hint"]) for e in reporter.events]
    assert messages[0][0].startswith("input 'ctp.seq.nrrd' has spacing 0.43x0.43x5 mm (x, y, z), 8.0x finer than "
                                     "the 3.44x3.44x5 mm model 'ctp-demo'")
    assert "runs on the input's own grid, so anatomy spans 8.0x more voxels" in messages[0][1]
    assert messages[1][0].startswith("input 'ctp.seq.nrrd' is 512x512 voxels (x, y), 8x more than the 64x64")


def test_thresholds_are_factors_in_both_directions():
    domain = {"spacing_mm": [2.0, 2.0, 2.0], "size": [32, 32, None], "resampled": False}
    limit, size_limit = THRESHOLDS["spacing_ratio"], THRESHOLDS["size_ratio"]
    assert findings(domain, "m", "in", (32, 32, 500), (2.0 * limit, 2.0, 2.0 / limit)) == []  # at the limit
    coarse = findings(domain, "m", "in", (32, 32, 1), (2.0 * limit * 1.01, 2.0, 2.0))
    assert [k for k, _, _ in coarse] == ["spacing"] and "coarser" in coarse[0][1] and "fewer voxels" in coarse[0][2]
    small = findings(domain, "m", "in", (int(32 / size_limit) - 1, 32, 1), (2.0, 2.0, 2.0))
    assert [k for k, _, _ in small] == ["size"] and "fewer than the 32x32" in small[0][1]
    assert findings({**domain, "resampled": True}, "m", "in", (4000, 32, 1), (2.0, 2.0, 2.0)) == []


def test_a_batch_folder_gives_one_warning_per_kind_and_unreadable_inputs_none(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(3):
        write_volume(_label_map((20, 20, 20), (0.5, 0.5, 0.5)), folder / f"case{i}.nrrd")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    reporter = SilentReporter()
    job = Job(task="ctca.synthesize", inputs={"labels": str(folder)}, model="ctca-demo")
    assert warn_out_of_domain(job, reporter) == 1
    assert reporter.events[0]["message"].endswith("(and 2 more files in 'batch')")
    assert warn_out_of_domain(Job(task="ctca.synthesize", inputs={"labels": str(tmp_path / "broken.nii.gz")},
                                  model="ctca-demo"), reporter) == 0
    assert warn_out_of_domain(Job(task="ctca.synthesize", inputs={"labels": str(folder)}, model="no-such-model"),
                              reporter) == 0


def test_a_512_ct_slice_from_pydicom_warns_before_the_task_refuses_it(tmp_path):
    """pydicom's 512^2 CT test slice (0.48 mm pixels, JPEG 2000) against the 32^2 CT prior: the size warning is
    printed on the terminal first; the task then refuses the single slice with its own error."""
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "one_slice"
    folder.mkdir()
    shutil.copy(get_testdata_file("693_J2KI.dcm"), folder / "693_J2KI.dcm")
    [(name, size, spacing)] = header_geometry(folder / "693_J2KI.dcm")
    assert size[:2] == (512, 512) and spacing[:2] == pytest.approx((0.478516, 0.478516))
    result = _cli(tmp_path / "home", "recon", "ct", "--simulate-from", str(folder / "693_J2KI.dcm"),
                  "--out", str(tmp_path / "recon.nii.gz"), "--progress", "none", "--device", "cpu", timeout=300)
    assert result.returncode != 0
    assert ("warning: input '693_J2KI.dcm' is 512x512x1 voxels (x, y, z), 16x more than the 32x32x32 the model "
            "'recon-ct-demo' was trained on") in result.stderr
    assert result.stderr.index("warning:") < result.stderr.index("error:")
    assert not (tmp_path / "recon.nii.gz").exists()
