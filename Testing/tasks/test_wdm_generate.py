"""WDM end to end: `meddiff generate` and the engine worker with tiny models; bad inputs exit cleanly with no output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.io import Volume, read_volume, write_volume
from volume_helpers import install_tiny_wdm, run_cli


@pytest.fixture()
def home(tmp_path):
    return tmp_path / "home"


def test_cli_generate_writes_volumes_with_the_requested_spacing(home, tmp_path):
    name = install_tiny_wdm(home)
    out = tmp_path / "gen.nii.gz"
    result = run_cli(home, "generate", "--model", name, "--out", str(out), "--samples", "2", "--steps", "2",
                     "--spacing", "0.5", "0.75", "1.25", "--seed", "3", "--progress", "json")
    assert result.returncode == 0, result.stderr + result.stdout
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "done"
    for path in (tmp_path / "gen_01.nii.gz", tmp_path / "gen_02.nii.gz"):
        volume = read_volume(path)
        assert volume.shape == (16, 16, 16)
        np.testing.assert_allclose(volume.spacing, (0.5, 0.75, 1.25), atol=1e-6)
        assert 0.0 <= volume.array.min() and volume.array.max() <= 1.0  # the [0, 1] window after clipping


def test_card_spacing_is_the_default(home, tmp_path):
    name = install_tiny_wdm(home)
    out = tmp_path / "one.nrrd"
    result = run_cli(home, "generate", "--model", name, "--out", str(out), "--steps", "1", "--progress", "none")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(read_volume(out).spacing, (2.0, 2.0, 2.0), atol=1e-6)


def test_cwdm_output_takes_the_condition_geometry_through_the_worker(home, tmp_path):
    name = install_tiny_wdm(home, "tiny-cwdm", conditional=True)
    condition = Volume.from_spacing(np.random.default_rng(0).random((16, 16, 16), dtype=np.float32),
                                    spacing_mm=(1.1, 1.2, 1.3), origin_ras=(5.0, -7.0, 9.0))
    write_volume(condition, tmp_path / "t1.nii.gz")
    job = {"task": "wdm.generate", "model": name, "inputs": {"condition": str(tmp_path / "t1.nii.gz")},
           "outputs": {"volume": str(tmp_path / "t2.nii.gz")}, "params": {"steps": 2}, "seed": 0}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {"MEDDIFF_HOME": str(home), "OMP_NUM_THREADS": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-m", "meddiffcore.worker", str(tmp_path / "job.json")],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = read_volume(tmp_path / "t2.nii.gz")
    assert out.same_grid(read_volume(tmp_path / "t1.nii.gz"))


@pytest.mark.parametrize("case", ["wrong_grid", "missing_condition", "odd_size"])
def test_bad_inputs_exit_with_documented_code_and_write_nothing(home, tmp_path, case):
    cwdm = install_tiny_wdm(home, "tiny-cwdm", conditional=True)
    wdm = install_tiny_wdm(home, "tiny-wdm")
    out = tmp_path / "out.nii.gz"
    if case == "wrong_grid":
        write_volume(Volume.from_spacing(np.zeros((16, 16, 12), dtype=np.float32)), tmp_path / "c.nii.gz")
        args = ["--model", cwdm, "--condition", str(tmp_path / "c.nii.gz")]
        expect = "grid"
    elif case == "missing_condition":
        args = ["--model", cwdm]
        expect = "--condition"
    else:
        args = ["--model", wdm, "--param", "size=[16,16,15]"]
        expect = "even"
    result = run_cli(home, "generate", *args, "--out", str(out), "--steps", "1", "--progress", "json")
    assert result.returncode == EXIT_STATUS[ErrorCode.BAD_INPUT], result.stdout + result.stderr
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error" and expect in error["message"] + error.get("hint", "")
    assert not out.exists() and list(tmp_path.glob("out*")) == []


def test_evaluate_generate_prints_diversity_and_frechet_distance(home, tmp_path):
    name = install_tiny_wdm(home)
    result = run_cli(home, "evaluate", "generate", "--model", name, "--samples", "3", "--steps", "1",
                     "--json", str(tmp_path / "fig.json"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "fig.json").read_text())
    assert 0 < figures["ms_ssim_diversity"] <= 1
    assert figures["frechet_distance"] >= 0 and figures["samples"] == 3


def test_feature_weights_with_a_wrong_sha256_are_refused_before_loading(home, tmp_path):
    weights = tmp_path / "resnet_50.pth"
    weights.write_bytes(b"not the MedicalNet checkpoint")
    name = install_tiny_wdm(home)
    result = run_cli(home, "evaluate", "generate", "--model", name, "--samples", "2", "--steps", "1",
                     "--features-weights", str(weights), "--features-sha256", "0" * 64)
    assert result.returncode == EXIT_STATUS[ErrorCode.MODEL] and "sha256" in result.stderr


@pytest.mark.slow
def test_medicalnet_extractor_loads_a_verified_checkpoint(tmp_path):
    import torch

    from meddiffcore.models import sha256_file
    from meddiffcore.tasks.wdm.features import MedicalNetResNet50, load_medicalnet

    torch.manual_seed(0)
    reference = MedicalNetResNet50().eval()
    weights = tmp_path / "resnet_50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, weights)
    extract = load_medicalnet(weights, sha256_file(weights))
    volumes = torch.randn(2, 1, 16, 16, 16)
    features = extract(volumes)
    assert features.shape == (2, 2048) and extract.__name__ == "medicalnet"
    normalised = (volumes - volumes.mean(dim=(2, 3, 4), keepdim=True)) / volumes.std(dim=(2, 3, 4), keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(features, reference(normalised), atol=1e-4, rtol=1e-4)
