"""Recon benchmark: projector speed against scikit-image, and time + network passes per volume in both modes.

    OMP_NUM_THREADS=2 python Testing/Benchmarks/recon.py --size 32 --tpdm-steps 100 --fast-steps 50

Prints one JSON object. The projector is compared with scikit-image's ``radon``/
``iradon`` (one slice at a time, as scikit-image works) on a batch of slices.
Volume timings use the bundled ``recon-ct-demo`` prior on a held-out phantom
(16 views). On a GPU run it with ``--size 128 --device cuda``; without one, a
smaller size on the CPU (the JSON says which device and size were used). TPDM's
time per step is measured over ``--tpdm-steps`` and also extrapolated to the
card's default (1000 steps), since a full run is too slow for a CPU benchmark.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def bench_projector(size: int, views: int, slices: int, device) -> dict:
    from skimage.transform import iradon, radon

    from meddiffcore.physics import ParallelBeam
    from meddiffcore.tasks.recon.phantoms import make_phantom

    vol = ((make_phantom("ct", "organ", (slices, size, size), seed=7) + 1000) / 2000).astype(np.float32)
    pb = ParallelBeam.uniform(size, views, device=device)
    t = time.perf_counter()
    pb._matrices(torch.device(device), torch.float32)
    build = time.perf_counter() - t
    x = torch.from_numpy(vol).to(device)
    pb.forward(x[:1])
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    sino = pb.forward(x)
    rec = pb.fbp(sino)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    ours = time.perf_counter() - t
    angles = np.arange(views) * 180.0 / views
    t = time.perf_counter()
    for s in vol:
        sk = radon(s.astype(np.float64), angles, circle=False)
        iradon(sk, angles, circle=False, output_size=size)
    ref = time.perf_counter() - t
    sk_sino = radon(vol[slices // 2].astype(np.float64), angles, circle=False).T
    return {"size": size, "views": views, "slices": slices, "matrix_build_s": round(build, 3),
            "ours_project_fbp_s": round(ours, 4), "skimage_radon_iradon_s": round(ref, 4),
            "speedup": round(ref / max(ours, 1e-9), 1),
            "sinogram_correlation": round(float(np.corrcoef(sino[slices // 2].cpu().numpy().ravel(), sk_sino.ravel())[0, 1]), 5)}


def bench_volume(size: int, tpdm_steps: int, fast_steps: int, device, model: str) -> dict:
    from meddiffcore.metrics import psnr
    from meddiffcore.physics import ParallelBeam
    from meddiffcore.tasks.recon.evaluate import _solve
    from meddiffcore.tasks.recon.model import load_recon_model
    from meddiffcore.tasks.recon.phantoms import make_phantom
    from meddiffcore.tasks.recon.problems import CTProblem

    m = load_recon_model(model, device)
    gt = (make_phantom("ct", "organ", (size,) * 3, seed=90001) + 1000) / 2000
    problem = CTProblem(ParallelBeam.uniform(size, 16))
    y = problem.forward(torch.from_numpy(gt.astype(np.float32)).to(device))
    out = {"fbp_psnr": round(psnr(gt, problem.baseline(y).cpu().numpy(), 1.0), 2)}
    for mode, steps in (("fast", fast_steps), ("tpdm", tpdm_steps)):
        rec, info = _solve(m, problem, y, gt.shape, mode, steps, 0, device)
        out[mode] = {"steps": steps, "network_evaluations": info["network_evaluations"],
                     "gradient_evaluations": info["gradient_evaluations"], "seconds": info["seconds"],
                     "psnr": round(psnr(gt, rec, 1.0), 2)}
    per_step = out["tpdm"]["seconds"] / tpdm_steps
    out["tpdm_1000_steps_extrapolated_s"] = round(per_step * 1000, 1)
    out["tpdm_1000_steps_network_evaluations"] = 2000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32, help="volume edge (128 on a GPU)")
    ap.add_argument("--projector-size", type=int, default=128)
    ap.add_argument("--views", type=int, default=36)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--tpdm-steps", type=int, default=100)
    ap.add_argument("--fast-steps", type=int, default=50)
    ap.add_argument("--model", default="recon-ct-demo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "note": "no GPU here: CPU at a smaller size" if device.type == "cpu" else "GPU",
              "projector": bench_projector(args.projector_size, args.views, args.slices, device),
              "volume": {"size": args.size, **bench_volume(args.size, args.tpdm_steps, args.fast_steps, device, args.model)}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
