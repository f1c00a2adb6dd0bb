"""Peak memory of TPDM's DPS gradient step at clinical slice size: one graph over the whole pass vs one call's graph
at a time (``VolumePrior.predict_and_gradient``), with the bundled CT prior and a sparse-view CT data term.

Each way runs in its own child process (peak RSS from ``getrusage``, minus the child's RSS just before the step), on
the same volume, and the two gradients are compared::

    OMP_NUM_THREADS=2 python Testing/Benchmarks/dps_memory.py --slices 4 --size 512

The whole-graph way needs about 3.6 kB per pixel (60 GB for 64 slices of 512^2): keep ``--slices`` small.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time, torch
from meddiffcore.physics import ParallelBeam
from meddiffcore.tasks.recon.model import load_recon_model
from meddiffcore.tasks.recon.problems import CTProblem
way, n, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
prior = load_recon_model("recon-ct-demo").prior_pair(None)[0]
g = torch.Generator().manual_seed(0)
x = torch.rand(n, size, size, generator=g)
problem = CTProblem(ParallelBeam.uniform(size, 16))
y = problem.forward(torch.rand(n, size, size, generator=g))
loss = lambda x0: 0.5 * (problem.forward(x0) - y).pow(2).sum()
kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import gc; gc.collect()
before, start = kib(), time.perf_counter()
if way == "whole":
    xg = x.clone().requires_grad_(True)
    x0, eps = prior.predict(xg, 0.5, with_grad=True)
    (grad,) = torch.autograd.grad(loss(x0), xg)
else:
    x0, eps, grad = prior.predict_and_gradient(x, 0.5, loss)
seconds = time.perf_counter() - start
torch.save(grad.detach(), out)
print(json.dumps({"peak_mb": (kib() - before) / 1024, "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for way in ("whole", "per-call"):
            out = Path(tmp) / f"{way}.pt"
            proc = subprocess.run([sys.executable, "-c", CHILD, way, str(args.slices), str(args.size), str(out)],
                                  capture_output=True, text=True, check=True)
            rows[way] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[way]["grad"] = torch.load(out, weights_only=True)
    a, b = rows["whole"]["grad"], rows["per-call"]["grad"]
    diff = float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))
    pixels = args.slices * args.size * args.size
    print(f"DPS gradient of {args.slices} slices of {args.size}^2 (bundled CT prior, 16-view CT data term)")
    for way in ("whole", "per-call"):
        r = rows[way]
        print(f"  {way:>8}: peak +{r['peak_mb']:.0f} MB ({r['peak_mb'] * 2**20 / pixels:.0f} bytes per pixel), "
              f"{r['seconds']:.1f} s")
    print(f"  per-call / whole: memory {rows['per-call']['peak_mb'] / rows['whole']['peak_mb']:.2f}x, time "
          f"{rows['per-call']['seconds'] / rows['whole']['seconds']:.2f}x; gradients differ by {diff:.1e} "
          "(max, relative)")


if __name__ == "__main__":
    main()
