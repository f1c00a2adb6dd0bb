"""How the fast mode's start, data-consistency weight and CG iterations were chosen.

``OMP_NUM_THREADS=1 python Testing/Benchmarks/recon_fast_start.py [--phantoms 2] [--size 32]`` runs the bundled demo
priors in fast mode, started from the iterative baseline with noise ``start_sigma``, for a small grid of
(start_sigma, gamma, cg_iters, eta, final_tv), on held-out *tuning* phantoms (seeds 80000...; the evaluation uses 90000..., training
1000...), and prints per setting the mean gain over the iterative baseline it starts from in every metric of
``meddiff evaluate recon`` (full range, W 80 / L 40, card window for CT; full range and head mask for MRI), and the
worst gain over all metrics and settings. A setting is acceptable when its worst gain is >= 0.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from meddiffcore.physics import ParallelBeam, make_mask
from meddiffcore.tasks.recon.evaluate import _solve, card_window, ct_scores, mri_scores
from meddiffcore.tasks.recon.model import load_recon_model
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.problems import CTProblem, MRIProblem

TUNING_SEED = 80000
METRICS = {"ct": ("psnr", "ssim", "psnr_w80", "ssim_w80", "psnr_window", "ssim_window"),
           "mri": ("psnr", "ssim", "psnr_mask", "ssim_mask")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--phantoms", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tasks", default="ct,mri")
    ap.add_argument("--start-sigmas", default="0.01,0.03,0.1")
    ap.add_argument("--gammas", default="1")
    ap.add_argument("--cg-iters", default="5")
    ap.add_argument("--etas", default="0.85")
    ap.add_argument("--final-tv", default="0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.size
    grid = list(itertools.product([float(v) for v in args.start_sigmas.split(",")],
                                  [float(v) for v in args.gammas.split(",")], [int(v) for v in args.cg_iters.split(",")],
                                  [float(v) for v in args.etas.split(",")], [int(v) for v in args.final_tv.split(",")]))
    cases = []
    if "ct" in args.tasks:
        model = load_recon_model("recon-ct-demo", "cpu")
        tc, window = model.intensity, card_window(model)
        for views in (8, 16, 32):
            for i in range(args.phantoms):
                gt = ((make_phantom("ct", None, (n,) * 3, TUNING_SEED + i) - tc["offset"]) / tc["scale"]).astype(np.float64)
                problem = CTProblem(ParallelBeam.uniform(n, views))
                y = problem.forward(torch.from_numpy(gt.astype(np.float32)))
                cases.append(("ct", f"{views} views", model, problem, y, gt,
                              lambda r, gt=gt: ct_scores(gt, r, tc, window)))
    if "mri" in args.tasks:
        model = load_recon_model("recon-mri-demo", "cpu")
        for acc in (4, 8):
            for i in range(args.phantoms):
                gt = make_phantom("mri", None, (n,) * 3, TUNING_SEED + i).astype(np.float64)
                problem = MRIProblem(torch.from_numpy(make_mask((n, n), acc, "uniform", seed=0)))
                y = problem.forward(torch.from_numpy(gt)).to(torch.complex64)
                cases.append(("mri", f"x{acc}", model, problem, y, gt,
                              lambda r, gt=gt: mri_scores(gt, r, float(gt.max()))))
    base = [score(problem.iterative(y).double().numpy()) for _, _, _, problem, y, _, score in cases]
    for start_sigma, gamma, cg, eta, final_tv in grid:
        gains: dict[str, dict[str, list]] = {}
        for (task, setting, model, problem, y, gt, score), b in zip(cases, base):
            rec, _ = _solve(model, problem, y, gt.shape, "fast", args.steps, 0, "cpu",
                            {"start": "iterative", "start_sigma": start_sigma, "gamma": gamma, "cg_iters": cg,
                             "eta": eta, "final_tv": final_tv})
            f = score(np.clip(rec, 0, None))
            g = gains.setdefault(f"{task} {setting}", {})
            for m in METRICS[task]:
                g.setdefault(m, []).append(f[m] - b[m])
        worst = min(float(np.mean(v)) for g in gains.values() for v in g.values())
        print(f"start_sigma {start_sigma:g}, gamma {gamma:g}, cg_iters {cg}, eta {eta:g}, final_tv {final_tv}: worst mean gain {worst:+.4f}; " +
              "; ".join(f"{k}: " + " ".join(f"{m} {np.mean(v):+.3f}" for m, v in g.items()) for k, g in gains.items()),
              flush=True)


if __name__ == "__main__":
    main()
