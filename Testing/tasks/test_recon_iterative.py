"""The iterative baselines (TV least squares for CT, TV compressed sensing for MRI), the windowed evaluation against
them, ``--iterative-out`` and the warning a card's figures give where the prior loses to the iterative baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meddiffcore.cli import main
from meddiffcore.io import Volume, read_volume, write_volume
from meddiffcore.metrics import psnr
from meddiffcore.physics import ParallelBeam, adjoint_mismatch, data_consistency_cg, make_mask
from meddiffcore.physics.iterative import image_gradient, image_gradient_adjoint, total_variation, tv_least_squares
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.problems import CTProblem, MRIProblem

sys.path.insert(0, str(Path(__file__).parent))
from recon_helpers import home, install_tiny_recon_model  # noqa: E402,F401

FAST = ["--steps", "3", "--cg-iters", "2", "--device", "cpu", "--progress", "none", "--seed", "1"]


class _Identity:
    def forward(self, x):
        return x

    def adjoint(self, y):
        return y


class _Gradient:
    def forward(self, x):
        return image_gradient(x)

    def adjoint(self, g):
        return image_gradient_adjoint(g)


def test_the_tv_gradient_has_its_exact_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3, 9, 11), generator=g, dtype=torch.float64)
    y = torch.randn((3, 2, 9, 11), generator=g, dtype=torch.float64)
    assert adjoint_mismatch(_Gradient(), x, y) < 1e-12


def test_tv_least_squares_with_the_identity_is_scikit_image_rof_denoising():
    from skimage.restoration import denoise_tv_chambolle

    rng = np.random.default_rng(0)
    clean = make_phantom("ct", "ellipsoid", (1, 48, 48), seed=5)[0]
    clean = (clean + 1000.0) / 2000.0
    noisy = clean + 0.05 * rng.standard_normal(clean.shape)
    ours = tv_least_squares(_Identity(), torch.from_numpy(noisy[None]), torch.from_numpy(noisy[None]), lam=0.08,
                            outer=60, inner=20, eps=1e-4, nonnegative=False, normal=1.0)[0].numpy()
    theirs = denoise_tv_chambolle(noisy, weight=0.08, eps=1e-7, max_num_iter=2000)
    # the same minimiser: far closer to each other than either is to the noisy input or to the clean image
    assert np.sqrt(np.mean((ours - theirs) ** 2)) < 0.1 * np.sqrt(np.mean((noisy - theirs) ** 2))
    # and the same objective value to 1 %
    tv = lambda a: float(total_variation(torch.from_numpy(a[None]))[0])  # noqa: E731
    obj = lambda a: 0.5 * float(np.sum((a - noisy) ** 2)) + 0.08 * tv(a)  # noqa: E731
    assert obj(ours) == pytest.approx(obj(theirs), rel=0.01)


def test_ct_tv_baseline_beats_fbp_and_plain_least_squares_at_sparse_views():
    gt = ((make_phantom("ct", "organ", (4, 32, 32), seed=90001) + 1000.0) / 2000.0).astype(np.float32)
    problem = CTProblem(ParallelBeam.uniform(32, 12))
    y = problem.forward(torch.from_numpy(gt))
    fbp = problem.baseline(y).numpy()
    cg = data_consistency_cg(problem, y, torch.zeros_like(torch.from_numpy(gt)), 50).numpy()
    tv = problem.iterative(y).numpy()
    assert tv.min() >= 0
    assert psnr(gt, tv, 1.0) > psnr(gt, fbp, 1.0) + 5
    assert psnr(gt, tv, 1.0) > psnr(gt, cg, 1.0) + 2


def test_mri_cs_baseline_beats_zero_filling():
    gt = make_phantom("mri", None, (4, 32, 32), seed=90000).astype(np.float64)
    problem = MRIProblem(torch.from_numpy(make_mask((32, 32), 4, "uniform", seed=0)))
    y = problem.forward(torch.from_numpy(gt)).to(torch.complex64)
    zf = problem.baseline(y).double().numpy()
    cs = problem.iterative(y).double().numpy()
    assert psnr(gt, cs, gt.max()) > psnr(gt, zf, gt.max()) + 1


def test_evaluate_reports_fbp_iterative_and_model_in_full_range_and_in_the_clinical_window(home, capsys):
    from meddiffcore.tasks.recon.evaluate import evaluate, format_table, losses

    res = evaluate("tiny-ct", "tiny-mri", tasks=("ct", "mri"), phantoms=1, size=16, steps=2, views=(8,),
                   accelerations=(4,), real_ct=True, device="cpu", log=lambda _row: None)
    ct = res["summary"]["ct 8 views (phantoms)"]
    real = res["summary"]["ct 8 views (real CT)"]
    mri = res["summary"]["mri x4 (phantoms)"]
    for figures in (ct, real):
        for method in ("fbp", "iterative", "fast"):
            for metric in ("psnr", "ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal", "psnr_w80", "ssim_w80",
                           "psnr_window", "ssim_window"):
                assert np.isfinite(figures[f"{method}_{metric}"])
        # the W 80 window magnifies errors 25x against the 2000 HU full range: windowed PSNR is lower
        assert figures["fbp_psnr_w80"] < figures["fbp_psnr"]
    assert ct["iterative_psnr"] > ct["fbp_psnr"]
    for method in ("zero_filled", "iterative", "fast"):
        assert np.isfinite(mri[f"{method}_psnr_mask"]) and np.isfinite(mri[f"{method}_ssim_mask"])
    table = format_table(res["summary"])
    assert "ct 8 views (real CT)" in table and "iterative" in table and "PSNR W80" in table and "PSNR head" in table
    # a random-weight prior loses to the iterative baseline, and the list of losses says so
    assert any(line.startswith("ct 8 views (phantoms): fast psnr ") for line in losses(res["summary"]))


def test_evaluate_command_prints_the_table(home, capsys):
    assert main(["evaluate", "recon", "--model", "tiny-ct", "--tasks", "ct", "--phantoms", "1", "--size", "16",
                 "--steps", "2", "--views", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("ct 8 views (phantoms)")]
    assert [line.split()[4] for line in lines] == ["fbp", "iterative", "fast"]
    assert "worse than the iterative baseline" in out


def _ct_volume(path: Path, shape=(16, 16, 16)) -> np.ndarray:
    arr = make_phantom("ct", "ellipsoid", shape, seed=4)
    write_volume(Volume.from_spacing(arr), path)
    return arr


def test_recon_writes_the_iterative_baseline_and_it_is_closer_than_fbp(tmp_path, home):
    truth = _ct_volume(tmp_path / "in.nii.gz")
    rc = main(["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--views", "8", "--model", "tiny-ct",
               "--out", str(tmp_path / "rec.nii.gz"), "--baseline-out", str(tmp_path / "fbp.nii.gz"),
               "--iterative-out", str(tmp_path / "tv.nii.gz"), *FAST])
    assert rc == 0
    fbp, tv = read_volume(tmp_path / "fbp.nii.gz").array, read_volume(tmp_path / "tv.nii.gz").array
    assert psnr(truth, tv, 2000.0) > psnr(truth, fbp, 2000.0) + 3

    src = make_phantom("mri", None, (16, 16, 16), seed=2)
    write_volume(Volume.from_spacing(src), tmp_path / "mr.nii.gz")
    assert main(["recon", "mri", "--simulate-from", str(tmp_path / "mr.nii.gz"), "--acceleration", "4", "--model",
                 "tiny-mri", "--out", str(tmp_path / "mrec.nii.gz"), "--baseline-out", str(tmp_path / "zf.nii.gz"),
                 "--iterative-out", str(tmp_path / "cs.nii.gz"), *FAST]) == 0
    assert read_volume(tmp_path / "cs.nii.gz").shape == src.shape


def test_zsr_has_no_iterative_baseline_and_says_so(tmp_path, home, capsys):
    write_volume(Volume.from_spacing(make_phantom("mri", None, (16, 16, 16), seed=2)), tmp_path / "mr.nii.gz")
    rc = main(["recon", "zsr", "--volume", str(tmp_path / "mr.nii.gz"), "--simulate", "--factor", "2", "--model",
               "tiny-mri", "--out", str(tmp_path / "thin.nii.gz"), "--iterative-out", str(tmp_path / "it.nii.gz"), *FAST])
    assert rc == 4
    assert "no iterative baseline" in capsys.readouterr().err
    assert not (tmp_path / "thin.nii.gz").exists()


def _card_figures(home: Path, name: str, figures: dict) -> None:
    from meddiffcore.tasks.recon.evaluate import store_in_card

    store_in_card(name, figures)


def test_a_card_whose_prior_loses_in_the_window_warns_on_the_terminal_and_in_json_events(tmp_path, home, capsys):
    _ct_volume(tmp_path / "in.nii.gz")
    _card_figures(home, "tiny-ct", {
        "ct 8 views (phantoms)": {"fast_psnr": 40.0, "iterative_psnr": 38.0, "fast_psnr_w80": 7.0, "iterative_psnr_w80": 8.4},
        "ct 32 views (phantoms)": {"fast_psnr": 40.0, "iterative_psnr": 45.0}})
    args = ["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--model", "tiny-ct",
            "--out", str(tmp_path / "rec.nrrd"), "--steps", "2", "--device", "cpu", "--seed", "1"]
    assert main(args + ["--views", "10", "--progress", "none"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1  # 10 views: the nearest measured setting is 8 views
    assert "ct 8 views (phantoms)" in warnings[0] and "W 80 / L 40 window 7 vs 8.4" in warnings[0]
    assert "full range" not in warnings[0]  # where it wins, nothing is said

    assert main(args + ["--views", "30", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    warned = [e for e in events if e["event"] == "log" and e.get("level") == "warning"]
    assert len(warned) == 1 and "ct 32 views (phantoms)" in warned[0]["message"] and "45" in warned[0]["message"]


def test_a_card_whose_prior_wins_everywhere_gives_no_warning(tmp_path, home, capsys):
    _ct_volume(tmp_path / "in.nii.gz")
    _card_figures(home, "tiny-ct", {"ct 8 views (phantoms)": {"fast_psnr": 40.0, "iterative_psnr": 38.0}})
    assert main(["recon", "ct", "--simulate-from", str(tmp_path / "in.nii.gz"), "--model", "tiny-ct", "--views", "8",
                 "--out", str(tmp_path / "rec.nii.gz"), *FAST]) == 0
    assert "warning" not in capsys.readouterr().err


def test_fast_mode_from_the_iterative_baseline_is_not_worse_than_it_in_any_window():
    """The bundled CT prior with its card's fast defaults (start from the iterative baseline, a TV refinement at the
    end) on a held-out phantom: at least as good as the baseline it starts from, in full range and both windows."""
    from meddiffcore.tasks.recon.evaluate import _solve, card_window, ct_scores
    from meddiffcore.tasks.recon.model import load_recon_model

    torch.set_num_threads(1)
    model = load_recon_model("recon-ct-demo", "cpu")
    assert model.card.task_config["defaults"]["fast"]["start"] == "iterative"
    tc, window = model.intensity, card_window(model)
    gt = ((make_phantom("ct", None, (32, 32, 32), 90000) - tc["offset"]) / tc["scale"]).astype(np.float64)
    problem = CTProblem(ParallelBeam.uniform(32, 16))
    y = problem.forward(torch.from_numpy(gt.astype(np.float32)))
    base = ct_scores(gt, problem.iterative(y).double().numpy(), tc, window)
    rec, info = _solve(model, problem, y, gt.shape, "fast", None, 0, "cpu")
    fast = ct_scores(gt, rec, tc, window)
    assert info["network_evaluations"] == model.card.task_config["defaults"]["fast"]["steps"]
    for metric in ("psnr", "ssim", "psnr_w80", "ssim_w80", "psnr_window", "ssim_window"):
        assert fast[metric] >= base[metric], (metric, fast[metric], base[metric])
    assert fast["psnr"] > base["psnr"] + 1  # and the prior adds something


def test_an_unknown_fast_start_is_refused_with_the_choices():
    from meddiffcore.errors import ConfigError
    from meddiffcore.tasks.recon.run import settings_from

    with pytest.raises(ConfigError, match="start=iterative"):
        settings_from({"mode": "fast", "start": "fbp"}, {})
    s = settings_from({"mode": "fast"}, {"fast": {"start": "iterative", "start_sigma": 0.2, "final_tv": 3}})
    assert (s.start, s.start_sigma, s.final_tv) == ("iterative", 0.2, 3)
