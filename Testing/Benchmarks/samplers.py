"""Sampler accuracy versus network evaluations on an analytic problem.

Data ``x0 ~ N(0.7, 0.3^2)`` (1-D); the "network" is the exact eps-predictor of a
cosine VP 1000-step model (:class:`~meddiffcore.diffusion.analytic.AnalyticVPNet`,
wrapped in :class:`~meddiffcore.diffusion.denoisers.VPDenoiser`, so that the whole
path sigma -> t -> network -> x0 is exercised). Every row starts from the same
initial noise (``--samples`` draws, float64). Columns:

- ``W2``: Wasserstein-2 distance between the samples and the true Gaussian, from
  sample moments, ``sqrt((m - 0.7)^2 + (s - 0.3)^2)``. It contains the sampling
  error of the initial noise (about 0.0008 with 200k samples), shared by all rows.
- ``W2_ode``: the same distance to the exact probability-flow ODE map of the same
  initial noise: the solver's discretisation error alone (for deterministic
  samplers; for stochastic ones it is not meaningful and is left blank).

Run: ``python Testing/Benchmarks/samplers.py`` (about a minute on 2 cores);
``--spacings karras uniform trailing`` compares spacings.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from meddiffcore.diffusion import (
    AnalyticVPNet,
    GaussianDenoiser,
    VPDenoiser,
    cosine_schedule,
    get_sampler,
    network_evaluations,
    noise_like,
)

MU, STD = 0.7, 0.3
DETERMINISTIC = {"ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m"}


def w2(samples: torch.Tensor, mu: float | torch.Tensor, std: float | torch.Tensor) -> float:
    return math.hypot(float(samples.mean() - mu), float(samples.std() - std))


def run(samplers: list[str], spacings: list[str], steps_list: list[int], samples: int) -> list[dict]:
    schedule = cosine_schedule(1000)
    gauss = GaussianDenoiser(MU, STD)
    denoiser = VPDenoiser(AnalyticVPNet(gauss, schedule), schedule)
    noise = noise_like((samples, 1), torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = []

    def one(name: str, spacing: str, steps: int) -> None:
        sigmas = schedule.sampling_sigmas(steps, spacing)
        x = float(sigmas[0]) * noise
        t0 = time.perf_counter()
        out = get_sampler(name)(denoiser, x, sigmas, generator=torch.Generator().manual_seed(1))
        elapsed = time.perf_counter() - t0
        exact = gauss.ode_solution(x, float(sigmas[0]))
        rows.append(
            {
                "sampler": name,
                "spacing": spacing,
                "steps": steps,
                "nfe": network_evaluations(name, steps),
                "w2": w2(out, MU, STD),
                "w2_ode": w2(out, exact.mean(), exact.std()) if name in DETERMINISTIC else None,
                "time_s": elapsed,
            }
        )

    one("ancestral", "uniform", 1000)  # the reference: the seeds' 1000-step DDPM sampling
    for spacing in spacings:
        for name in samplers:
            for steps in steps_list:
                if name == "heun" and steps > 100:
                    continue
                one(name, spacing, steps)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_3m", "dpmpp_2m", "ddim", "heun", "ancestral"])
    parser.add_argument("--spacings", nargs="+", default=["karras", "uniform", "trailing"])
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 20, 25, 50, 100])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps timings stable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.samplers, args.spacings, args.steps, args.samples)
    print(f"{'sampler':10s} {'spacing':9s} {'steps':>5s} {'NFE':>5s} {'W2':>9s} {'W2_ode':>9s} {'time_s':>7s}")
    for r in rows:
        ode = f"{r['w2_ode']:.5f}" if r["w2_ode"] is not None else ""
        print(
            f"{r['sampler']:10s} {r['spacing']:9s} {r['steps']:5d} {r['nfe']:5d} {r['w2']:9.5f} {ode:>9s} {r['time_s']:7.2f}"
        )
    target = [r for r in rows if r["w2"] <= 0.002 and r["nfe"] <= 20]
    print("\nRows with W2 <= 0.002 at NFE <= 20:")
    for r in sorted(target, key=lambda r: (r["nfe"], r["w2"])):
        print(f"  {r['sampler']} {r['spacing']} steps={r['steps']} NFE={r['nfe']} W2={r['w2']:.5f}")
    if not target:
        print("  none")


if __name__ == "__main__":
    main()
