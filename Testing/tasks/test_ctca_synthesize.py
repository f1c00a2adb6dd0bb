"""The synthesize job end to end with tiny random-weight models: geometry, CLI, worker, guidance, bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctca_helpers import save_tiny_model
from meddiffcore.cli import main as cli_main
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.io.volume import geometry_from_spacing
from meddiffcore.tasks.ctca.phantom import make_phantom


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("meddiff_home")
    save_tiny_model(root / "models", "ctca-tiny")
    save_tiny_model(root / "models", "ctca-tiny-hr", stage="patch", shape=(32, 32, 32), spacing_mm=3.0, crop=(16, 16, 16))
    return root


@pytest.fixture(autouse=True)
def _home_env(home, monkeypatch):
    monkeypatch.setenv("MEDDIFF_HOME", str(home))


@pytest.fixture(scope="module")
def oblique_labels(tmp_path_factory):
    """A phantom label map on an oblique, anisotropic grid."""
    angle = np.deg2rad(25)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    shape = (30, 44, 40)
    spacing = np.array([2.6, 2.3, 3.4])
    centre_offset = direction @ ((np.array(shape[::-1]) - 1) / 2 * spacing)
    m = geometry_from_spacing(spacing, -centre_offset + [3.0, -2.0, 5.0], direction)
    path = tmp_path_factory.mktemp("labels") / "oblique_labels.nii.gz"
    write_volume(make_phantom(11, shape, ijk_to_ras=m, with_ct=False).labels, path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_has_the_label_maps_exact_geometry(oblique_labels, tmp_path):
    out = tmp_path / "ct.nrrd"
    rc = cli_main(["synthesize", "--labels", str(oblique_labels), "--out", str(out), "--model", "ctca-tiny",
                   "--steps", "3", "--seed", "1", "--progress", "none", "--preview", str(tmp_path / "p.png")])
    assert rc == 0
    labels, ct = read_volume(oblique_labels), read_volume(out)
    assert ct.shape == labels.shape and ct.array.dtype == np.int16
    np.testing.assert_allclose(ct.ijk_to_ras, labels.ijk_to_ras, atol=1e-4)
    assert ct.array.min() >= -1024 and (tmp_path / "p.png").stat().st_size > 100


def test_high_resolution_stage_runs_on_patches(oblique_labels, tmp_path):
    out = tmp_path / "hr.nii.gz"
    rc = cli_main(["synthesize", "--labels", str(oblique_labels), "--out", str(out), "--model", "ctca-tiny",
                   "--hr-model", "ctca-tiny-hr", "--steps", "2", "--seed", "3", "--progress", "none"])
    assert rc == 0
    assert read_volume(out).same_grid(read_volume(oblique_labels), atol=1e-4)


def test_seed_reproducible_and_samples_differ(oblique_labels, tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    for p in (a, b):
        assert cli_main(["synthesize", "--labels", str(oblique_labels), "--out", str(p), "--model", "ctca-tiny",
                         "--steps", "2", "--seed", "5", "--samples", "2", "--progress", "none"]) == 0
    a1, a2, b1 = (read_volume(tmp_path / n).array for n in ("a_01.nii.gz", "a_02.nii.gz", "b_01.nii.gz"))
    assert np.array_equal(a1, b1) and not np.array_equal(a1, a2)


def test_worker_runs_the_same_job_and_folder_batch(oblique_labels, tmp_path, home):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("one.nii.gz", "two.nii.gz"):
        (folder / name).write_bytes(oblique_labels.read_bytes())
    job = {"task": "ctca.synthesize", "inputs": {"labels": str(folder)}, "outputs": {"volume": str(tmp_path / "out")},
           "model": "ctca-tiny", "params": {"steps": 2, "guidance": 2.0}, "device": "cpu", "seed": 0}
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "meddiffcore.worker", str(job_path)], capture_output=True, text=True,
                          env={**__import__("os").environ, "MEDDIFF_HOME": str(home), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done"
    assert any(e["event"] == "progress" and e["phase"].startswith("sampling") for e in events)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one_ct.nii.gz", "two_ct.nii.gz"]


def test_guidance_semantics():
    """1 = conditional model alone (one pass), 0 = unconditional, s = x0_u + s (x0_c - x0_u); then clamped to the window."""
    from meddiffcore.diffusion import VPDenoiser
    from meddiffcore.tasks.ctca.model import condition, drop_condition, load_ctca_model

    model = load_ctca_model("ctca-tiny")
    calls = []
    net = model.net
    model.net = lambda x, t, **c: (calls.append(x.shape[0]), net(x, t, **c))[1]
    labels = make_phantom(2, (16, 16, 16), 8.0, with_ct=False).labels.array
    segmap = condition(labels, "lr")[None]
    x, sigma = torch.randn(1, 1, 16, 16, 16), torch.tensor([1.5])
    plain = VPDenoiser(net, model.schedule, "eps", learned_variance=True)
    cond, uncond = plain(x, sigma, segmap=segmap), plain(x, sigma, segmap=drop_condition(segmap, "lr"))
    assert not torch.allclose(cond, uncond)
    out1 = model.denoiser(1.0)(x, sigma, segmap=segmap)
    assert calls == [1] and torch.allclose(out1, cond.clamp(-1, 1), atol=1e-5)
    assert torch.allclose(model.denoiser(0.0)(x, sigma, segmap=segmap), uncond.clamp(-1, 1), atol=1e-5)
    calls.clear()
    out3 = model.denoiser(3.0)(x, sigma, segmap=segmap)
    assert calls == [2] and torch.allclose(out3, (uncond + 3.0 * (cond - uncond)).clamp(-1, 1), atol=1e-4)
    assert out3.abs().max() <= 1.0


def _bad(tmp_path, array, name="bad.nii.gz", spacing=(2.0, 2.0, 2.0), raw_nifti=False):
    path = tmp_path / name
    if raw_nifti:
        nib.save(nib.Nifti1Image(array, np.diag(list(spacing) + [1.0])), str(path))
    else:
        write_volume(Volume.from_spacing(array, spacing), path)
    return path


def _phantom_labels():
    return make_phantom(4, (32, 32, 32), 4.0, with_ct=False).labels.array


@pytest.mark.parametrize("case, code, words", [
    ("non_integer", 3, "non-integer values (1.5)"),
    ("unknown", 3, "unknown label values 42"),
    ("nan", 3, "NaN"),
    ("two_d", 3, "2D"),
    ("four_d", 3, "3D"),
    ("empty", 3, "empty"),
    ("far", 3, "field of view"),
    ("missing_model", 5, "no model named"),
])
def test_bad_input_clear_message_exit_code_no_output(tmp_path, capsys, case, code, words):
    labels = _phantom_labels().astype(np.float32)
    model = "ctca-tiny"
    if case == "non_integer":
        labels[0, 0, 0] = 1.5
        path = _bad(tmp_path, labels)
    elif case == "unknown":
        labels[0, 0, 0] = 42
        path = _bad(tmp_path, labels.astype(np.int16))
    elif case == "nan":
        labels[0, 0, 0] = np.nan
        path = _bad(tmp_path, labels, raw_nifti=True)
    elif case == "two_d":
        path = _bad(tmp_path, labels[:1].astype(np.uint8))
    elif case == "four_d":
        path = _bad(tmp_path, np.stack([labels, labels], -1).transpose(2, 1, 0, 3).astype(np.uint8), raw_nifti=True)
    elif case == "empty":
        path = _bad(tmp_path, np.zeros_like(labels, dtype=np.uint8))
    elif case == "far":
        path = _bad(tmp_path, labels.astype(np.uint8), spacing=(0.05, 0.05, 0.05))  # metres read as mm...
    else:
        path = _bad(tmp_path, labels.astype(np.uint8))
        model = "no-such-model"
    before = _digest(path)
    out = tmp_path / "out.nii.gz"
    rc = cli_main(["synthesize", "--labels", str(path), "--out", str(out), "--model", model, "--steps", "2",
                   "--progress", "json", "--preview", str(tmp_path / "p.png")])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rc == code
    assert events[-1]["event"] == "error" and words in events[-1]["message"], events[-1]
    assert not out.exists() and not (tmp_path / "p.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert _digest(path) == before
