"""How the iterative baselines were tuned, and how they compare with scikit-image's SART.

``python Testing/Benchmarks/recon_iterative.py [--size 32] [--phantoms 2]`` prints, for each TV weight of a grid,
the mean PSNR (full range) of the TV-regularised least-squares reconstruction on *training* phantoms (seeds
1000...; the evaluation uses 90000...), for CT at 8/16/32 views and MRI at x4/x8, and the same for FBP, plain CG
and scikit-image's SART (3 passes, clipped to [0, 1]). The chosen weights live in ``meddiffcore.physics.iterative.ITERATIVE``.
Run it with ``OMP_NUM_THREADS=1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from meddiffcore.metrics import psnr
from meddiffcore.physics import ParallelBeam, data_consistency_cg, make_mask
from meddiffcore.physics.iterative import ITERATIVE, tv_least_squares
from meddiffcore.tasks.recon.phantoms import make_phantom
from meddiffcore.tasks.recon.problems import CTProblem, MRIProblem

LAMS = (0.0, 1e-5, 2e-5, 5e-5, 2e-4, 1e-3, 5e-3, 2e-2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--phantoms", type=int, default=2)
    ap.add_argument("--skip-skimage", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.size
    ct = [(make_phantom("ct", None, (n,) * 3, 1000 + i) + 1000.0) / 2000.0 for i in range(args.phantoms)]
    mri = [make_phantom("mri", None, (n,) * 3, 1000 + i) for i in range(args.phantoms)]
    s = ITERATIVE["ct"]
    for views in (8, 16, 32):
        problem = CTProblem(ParallelBeam.uniform(n, views))
        rows = {f"tv lam={lam:g}": [] for lam in LAMS} | {"fbp": [], "cg 50": []}
        if not args.skip_skimage:
            rows["skimage sart x3"] = []
        t0 = time.perf_counter()
        for gt in ct:
            x = torch.from_numpy(gt.astype(np.float32))
            y = problem.forward(x)
            fbp = problem.baseline(y).clamp(min=0)
            rows["fbp"].append(psnr(gt, fbp.numpy(), 1.0))
            rows["cg 50"].append(psnr(gt, data_consistency_cg(problem, y, torch.zeros_like(x), 50).numpy(), 1.0))
            for lam in LAMS:
                rec = tv_least_squares(problem, y, fbp, lam, s.outer, s.inner, s.eps)
                rows[f"tv lam={lam:g}"].append(psnr(gt, rec.numpy(), 1.0))
            if not args.skip_skimage:
                from skimage.transform import iradon_sart, radon

                theta = np.asarray(problem.beam.angles_deg)
                recs = []
                for sl in gt:
                    sino = radon(sl.astype(np.float64), theta, circle=False)
                    rec = None
                    for _ in range(3):
                        rec = iradon_sart(sino, theta, image=rec, clip=(0.0, 1.0))
                    lo = (rec.shape[0] - n) // 2  # scikit-image reconstructs on the padded (detector-wide) grid
                    recs.append(rec[lo:lo + n, lo:lo + n])
                rows["skimage sart x3"].append(psnr(gt, np.stack(recs), 1.0))
        print(f"CT {views} views ({time.perf_counter() - t0:.0f} s): " +
              ", ".join(f"{k} {np.mean(v):.2f}" for k, v in rows.items()), flush=True)
    s = ITERATIVE["mri"]
    for acc in (4, 8):
        mask = torch.from_numpy(make_mask((n, n), acc, "uniform", seed=0))
        problem = MRIProblem(mask)
        rows = {f"tv lam={lam:g}": [] for lam in LAMS} | {"zero-filled": []}
        for gt in mri:
            y = problem.forward(torch.from_numpy(gt.astype(np.float64))).to(torch.complex64)
            zf = problem.baseline(y).float()
            rng = float(gt.max())
            rows["zero-filled"].append(psnr(gt, zf.numpy(), rng))
            for lam in LAMS:
                rec = tv_least_squares(problem, y, zf, lam, s.outer, s.inner, s.eps)
                rows[f"tv lam={lam:g}"].append(psnr(gt, rec.numpy(), rng))
        print(f"MRI x{acc}: " + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in rows.items()), flush=True)


if __name__ == "__main__":
    main()
