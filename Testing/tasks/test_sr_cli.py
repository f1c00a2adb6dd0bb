"""SR cascade end to end: `meddiff generate`, `meddiff upscale`, the worker and `evaluate generate` with a tiny
random-weight cascade; bad inputs exit with their documented code and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.io import Volume, read_volume, write_volume
from volume_helpers import install_tiny_sr_cascade, run_cli


@pytest.fixture()
def home(tmp_path):
    home = tmp_path / "home"
    install_tiny_sr_cascade(home)
    return home


def _low_volume(path, size=8, slices=2):
    volume = Volume.from_spacing(np.random.default_rng(0).random((slices, size, size), dtype=np.float32),
                                 spacing_mm=(2.0, 2.0, 4.0), origin_ras=(1.0, 2.0, 3.0))
    write_volume(volume, path)
    return volume


def test_generate_runs_the_whole_cascade(home, tmp_path):
    result = run_cli(home, "generate", "--model", "tiny-sr", "--out", str(tmp_path / "s.nii.gz"), "--samples", "2",
                     "--steps", "2", "--preview", str(tmp_path / "s.png"), "--progress", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    volume = read_volume(tmp_path / "s_02.nii.gz")
    assert volume.shape == (1, 32, 32)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.5, 2.0))  # base pixel 2 mm, two 2x stages
    assert (tmp_path / "s.png").stat().st_size > 0


def test_upscale_a_volume_slice_by_slice_updates_geometry(home, tmp_path):
    low = _low_volume(tmp_path / "low.nrrd")
    result = run_cli(home, "upscale", "--input", str(tmp_path / "low.nrrd"), "--model", "tiny-sr",
                     "--out", str(tmp_path / "up.nii.gz"), "--steps", "1", "--progress", "none")
    assert result.returncode == 0, result.stderr
    up = read_volume(tmp_path / "up.nii.gz")
    assert up.shape == (2, 32, 32)
    np.testing.assert_allclose(up.spacing, (0.5, 0.5, 4.0), atol=1e-6)
    np.testing.assert_allclose(up.origin[:2], low.origin[:2] - 1.0 + 0.25, atol=1e-6)  # same outer edge


def test_upscale_one_stage_through_the_worker(home, tmp_path):
    _low_volume(tmp_path / "low.nii.gz", size=16, slices=1)
    job = {"task": "sr.upscale", "model": "tiny-sr", "inputs": {"image": str(tmp_path / "low.nii.gz")},
           "outputs": {"volume": str(tmp_path / "up.nii.gz")}, "params": {"steps": 1}, "seed": 0}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = subprocess.run([sys.executable, "-m", "meddiffcore.worker", str(tmp_path / "job.json")],
                            capture_output=True, text=True, timeout=240,
                            env={"MEDDIFF_HOME": str(home), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    up = read_volume(tmp_path / "up.nii.gz")
    assert up.shape == (1, 32, 32)
    np.testing.assert_allclose(up.spacing, (1.0, 1.0, 4.0), atol=1e-6)


def test_upscale_a_png(home, tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(1).random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "low.png")
    result = run_cli(home, "upscale", "--input", str(tmp_path / "low.png"), "--model", "tiny-sr", "--stages", "1",
                     "--out", str(tmp_path / "up.png"), "--steps", "1", "--progress", "none")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "up.png") as image:
        assert image.size == (16, 16)


@pytest.mark.parametrize("case", ["wrong_size", "non_square", "bad_stages"])
def test_bad_inputs_exit_with_documented_code_and_write_nothing(home, tmp_path, case):
    size, args, code, expect = {
        "wrong_size": (12, [], ErrorCode.BAD_INPUT, "8, 16"),
        "non_square": (8, [], ErrorCode.BAD_INPUT, "8x10"),
        "bad_stages": (16, ["--stages", "2"], ErrorCode.BAD_CONFIG, "stages"),
    }[case]
    array = np.zeros((1, size, 10 if case == "non_square" else size), dtype=np.float32)
    write_volume(Volume.from_spacing(array), tmp_path / "low.nii.gz")
    out = tmp_path / "up.nii.gz"
    result = run_cli(home, "upscale", "--input", str(tmp_path / "low.nii.gz"), "--model", "tiny-sr", "--out", str(out),
                     "--steps", "1", *args, "--progress", "json")
    assert result.returncode == EXIT_STATUS[code], result.stdout + result.stderr
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error" and expect in error["message"]
    assert not out.exists() and list(tmp_path.glob("up*")) == []


def test_evaluate_generate_compares_with_bicubic_and_lanczos(home, tmp_path):
    result = run_cli(home, "evaluate", "generate", "--model", "tiny-sr", "--samples", "2", "--slices", "2",
                     "--steps", "1")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for stage in ("sr128", "sr256"):
        for key in ("psnr_model", "psnr_bicubic", "psnr_lanczos", "ssim_model", "ssim_bicubic", "ssim_lanczos"):
            assert np.isfinite(figures[stage][key])
        assert figures[stage]["psnr_bicubic"] > 15  # interpolating a smooth phantom is good; a broken metric is not
    assert 0 < figures["ms_ssim_diversity"] <= 1
