"""Bundled models on real images that ship in packages (pydicom's CT and MR slices, nibabel's EPI, nilearn's
MNI152): intensities are mapped to the model's units and back, and a stage or input kind that the card
says loses to its classical baseline is not run by default, or is run with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from meddiffcore.errors import EXIT_STATUS, ErrorCode
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.metrics import psnr
from meddiffcore.tasks.sr.resample import upsample_interpolate
from real_images import area_down, ct_small_hu, mr_small, nibabel_epi
from volume_helpers import run_cli


def _write(path, image, spacing=1.0):
    write_volume(Volume.from_spacing(image[None], spacing_mm=(spacing, spacing, 5.0)), path)


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


#: (image, PSNR in dB without the intensity mapping: the input squeezed into the demo's [0, 1] window).
SQUEEZED_DB = [(ct_small_hu, 14.1), (mr_small, 9.7), (nibabel_epi, 5.5)]


@pytest.mark.parametrize("image, squeezed_db", SQUEEZED_DB, ids=["ct_hu", "mr_scanner_units", "epi"])
def test_upscale_maps_real_units_to_the_model_and_back(tmp_path, image, squeezed_db):
    """A CT slice in HU or an MR slice in raw scanner units was squeezed into the demo's [0, 1] window
    (``SQUEEZED_DB``, measured by ``Testing/Benchmarks/real_images.py --no-mapping``). Mapped by the card's
    per-volume normalisation and back, it comes out in its own units, its mean kept, at least 5 dB better;
    the card's warning that the demo is below bicubic on real images is said."""
    img = image()
    truth = area_down(img, img.shape[0] // 64) if img.shape[0] > 64 else img
    low = area_down(truth, 2)
    _write(tmp_path / "low.nii.gz", low, 2.0)
    result = run_cli(tmp_path / "home", "upscale", "--input", str(tmp_path / "low.nii.gz"), "--model", "sr-cascade-demo",
                     "--out", str(tmp_path / "up.nii.gz"), "--seed", "0", "--progress", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    out = read_volume(tmp_path / "up.nii.gz")
    assert out.shape == (1, 64, 64)  # only the stage the card does not call under-trained (sr128), by default
    up = out.array[0]
    rng = float(truth.max() - truth.min())
    assert psnr(truth, up, rng) > squeezed_db + 5.0
    assert abs(float(up.mean()) - float(truth.mean())) < 0.1 * rng  # in the input's units, not the model's
    warnings = [e["message"] for e in _events(result.stdout) if e.get("event") == "log" and e.get("level") == "warning"]
    assert any("real images" in w and "bicubic" in w for w in warnings), warnings


def test_upscale_never_runs_an_under_trained_stage_by_default(tmp_path):
    """MR_small is 64 px: the only stage that takes it (sr256) is below bicubic by the card, so the default
    refuses (MODEL, nothing written) and --stages 1 runs it with a warning."""
    _write(tmp_path / "mr.nii.gz", mr_small(), 0.3125)
    out = tmp_path / "up.nii.gz"
    refused = run_cli(tmp_path / "home", "upscale", "--input", str(tmp_path / "mr.nii.gz"), "--model", "sr-cascade-demo",
                      "--out", str(out))
    assert refused.returncode == EXIT_STATUS[ErrorCode.MODEL], refused.stderr
    assert "sr256" in refused.stderr and "--stages 1" in refused.stderr
    assert not out.exists()
    forced = run_cli(tmp_path / "home", "upscale", "--input", str(tmp_path / "mr.nii.gz"), "--model", "sr-cascade-demo",
                     "--out", str(out), "--stages", "1", "--steps", "5", "--seed", "0", "--progress", "json")
    assert forced.returncode == 0, forced.stderr
    warnings = [e["message"] for e in _events(forced.stdout) if e.get("level") == "warning"]
    assert any("sr256" in w and "below its classical baseline" in w for w in warnings), warnings
    assert read_volume(out).shape == (1, 128, 128)


def test_demo_card_records_where_it_loses_to_bicubic_on_real_images():
    """The card's real-image figures are measured (Testing/Benchmarks/real_images.py) and say model < bicubic."""
    from meddiffcore.models import ModelCard, find_model

    card = ModelCard.from_json_file(find_model("sr-cascade-demo").card_path)
    rows = {k: v for k, v in card.metrics["real_images"].items() if isinstance(v, dict)}
    assert len(rows) >= 3
    assert all(r["psnr_model"] < r["psnr_bicubic"] for r in rows.values())
    assert set(card.below_baseline()) >= {"sr256", "real_images"}


def test_bicubic_reference_is_the_one_the_benchmark_uses():
    """Sanity of the baseline itself on a real image: bicubic of the 2x downsampled CT is within 40 dB-class range."""
    truth = area_down(ct_small_hu(), 2)
    bicubic = upsample_interpolate(area_down(truth, 2)[None], 64, "bicubic")[0]
    assert 25.0 < psnr(truth, bicubic, float(np.ptp(truth))) < 45.0


@pytest.mark.parametrize("command", ["recon", "inpaint"])
def test_ct_in_stored_values_is_refused_not_squeezed_into_the_window(tmp_path, command):
    """pydicom's CT_small without its rescale intercept (air near 0, soft tissue near 1000) ran through the
    recon and CTP models' HU windows with exit 0; it is BAD_INPUT naming the rescale, and nothing is written."""
    from meddiffcore.io import Sequence

    stored = ct_small_hu()[32:96, 32:96] + 1024.0  # 64 x 64 of the stored values
    if command == "recon":
        write_volume(Volume.from_spacing(np.repeat(stored[None], 16, axis=0), spacing_mm=(1.0, 1.0, 1.0)),
                     tmp_path / "in.nii.gz")
        args = ["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--views", "8", "--out",
                str(tmp_path / "out.nii.gz")]
    else:
        from meddiffcore.tasks.ctp.sequences import write_ctp_sequence

        frames = np.repeat(np.repeat(stored[None, None], 8, axis=1), 3, axis=0)
        write_ctp_sequence(Sequence(frames.astype(np.float32), np.eye(4), np.array([0.0, 4.0, 8.0])),
                           tmp_path / "in.seq.nrrd")
        args = ["inpaint", "--sequence", str(tmp_path / "in.seq.nrrd"), "--out", str(tmp_path / "out.seq.nrrd")]
    result = run_cli(tmp_path / "home", *args)
    assert result.returncode == EXIT_STATUS[ErrorCode.BAD_INPUT], result.stdout + result.stderr
    assert "HU" in result.stderr and "RescaleIntercept" in result.stderr
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
