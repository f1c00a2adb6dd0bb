"""CTCA synthesis benchmark: our sampler against 1000-step ancestral sampling of the same model.

Prints, per configuration, the time per volume, the network evaluations and the
label-adherence figures of `meddiff evaluate ctca` (threshold Dice, mean HU) on
held-out phantoms, plus the phantom CT's own figures as the ceiling. Run:

    OMP_NUM_THREADS=2 python Testing/Benchmarks/ctca.py                 # 64^3, the runs below vs 1000 steps, 1 phantom
    python Testing/Benchmarks/ctca.py --baseline-size 32               # cheaper baseline on a 32^3 crop
    python Testing/Benchmarks/ctca.py --device cuda --hr-size 128      # + 128^3 timing on a GPU

The runs (``--runs SAMPLER:STEPS,...``) default to the model card's own
setting and two settings with 25 steps; guidance defaults to the card's. The
last lines give, per run, the largest Dice difference from the 1000-step
baseline over contrast, myocardium and coronaries ("same adherence": at most
0.02, about the spread between phantoms).

Targets (issue 3): same label adherence at <= 25 steps as at 1000; 64^3 on 2 CPU
cores in under a minute; 128^3 in under 10 s on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from meddiffcore.devices import resolve_device
from meddiffcore.tasks.ctca.evaluate import HELD_OUT_FIRST_SEED, adherence
from meddiffcore.tasks.ctca.model import load_ctca_model
from meddiffcore.tasks.ctca.phantom import make_phantom
from meddiffcore.tasks.ctca.synthesis import SynthesisRecord, SynthesisSettings, synthesize


def run(model, size: int, sampler: str, steps: int, guidance: float, phantoms: int, device, seed: int = 0) -> dict:
    times, scores, nfe = [], [], 0
    for n in range(phantoms):
        ph = make_phantom(HELD_OUT_FIRST_SEED + n, (size,) * 3, model.spacing_mm, with_ct=False)
        record = SynthesisRecord()
        generator = torch.Generator(device=device).manual_seed(seed + n)
        start = time.perf_counter()
        ct = synthesize(ph.labels, model, SynthesisSettings(steps=steps, sampler=sampler, guidance=guidance),
                        device=device, generator=generator, record=record)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        nfe = record.network_evaluations * (2 if guidance not in (0.0, 1.0) else 1)
        scores.append(adherence(ct.array.astype(np.float32), ph.labels.array, model.spacing_mm))
    return {"size": size, "sampler": sampler, "steps": steps, "nfe": nfe, "s_per_volume": float(np.mean(times)),
            "dice": {k: float(np.mean([s["dice"][k] for s in scores])) for k in scores[0]["dice"]},
            "aorta_hu": float(np.mean([s["mean_hu"].get("aorta", np.nan) for s in scores])),
            "coronary_hu": float(np.mean([s["mean_hu"].get("coronary_arteries", np.nan) for s in scores]))}


def ceiling(model, size: int, phantoms: int) -> dict:
    scores = []
    for n in range(phantoms):
        ph = make_phantom(HELD_OUT_FIRST_SEED + n, (size,) * 3, model.spacing_mm)
        scores.append(adherence(ph.ct.array.astype(np.float32), ph.labels.array, model.spacing_mm))
    return {"size": size, "sampler": "phantom CT", "steps": 0, "nfe": 0, "s_per_volume": float("nan"),
            "dice": {k: float(np.mean([s["dice"][k] for s in scores])) for k in scores[0]["dice"]},
            "aorta_hu": float(np.mean([s["mean_hu"]["aorta"] for s in scores])),
            "coronary_hu": float(np.mean([s["mean_hu"]["coronary_arteries"] for s in scores]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ctca-demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the target is 2 cores)")
    parser.add_argument("--phantoms", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="grid of our sampler's run")
    parser.add_argument("--runs", default=None, metavar="SAMPLER:STEPS,...",
                        help="our runs (default: the card's sampler:steps, ancestral:25, dpmpp_3m:25)")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model card's")
    parser.add_argument("--baseline-steps", type=int, default=1000)
    parser.add_argument("--baseline-size", type=int, default=None, help="grid of the ancestral baseline (default: --size)")
    parser.add_argument("--hr-size", type=int, default=128, help="GPU timing of a label map of this size at half the model spacing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_ctca_model(args.model, device)
    card = model.card.diffusion
    guidance = float(card.get("guidance", 1.0) if args.guidance is None else args.guidance)
    runs = args.runs or f"{card.get('sampler', 'dpmpp_2m')}:{card.get('steps', 25)},ancestral:25,dpmpp_3m:25"
    runs = list(dict.fromkeys((r.split(":")[0], int(r.split(":")[1])) for r in runs.split(",")))
    base_size = args.baseline_size or args.size
    rows = [ceiling(model, args.size, args.phantoms)]
    for sampler, steps in runs:
        rows.append(run(model, args.size, sampler, steps, guidance, args.phantoms, device))
        print(f"  done: {sampler} {steps} steps, {rows[-1]['s_per_volume']:.1f} s/volume", flush=True)
    if base_size != args.size:
        for sampler, steps in runs:
            rows.append(run(model, base_size, sampler, steps, guidance, args.phantoms, device))
    baseline = run(model, base_size, "ancestral", args.baseline_steps, guidance, args.phantoms, device)
    rows.append(baseline)
    print(f"model {args.model}, {device} ({torch.get_num_threads()} threads), {args.phantoms} held-out phantom(s), "
          f"spacing {model.spacing_mm} mm, guidance {guidance:g}")
    print(f"{'grid':>5} {'sampler':<11}{'steps':>6}{'NFE':>6}{'s/volume':>10}{'Dice contrast':>15}{'coronary':>10}"
          f"{'myocardium':>12}{'aorta HU':>10}{'coronary HU':>13}")
    for r in rows:
        d = r["dice"]
        print(f"{r['size']:>4}^3 {r['sampler']:<11}{r['steps']:>6}{r['nfe']:>6}{r['s_per_volume']:>10.1f}{d['contrast']:>15.3f}"
              f"{d['coronary']:>10.3f}{d['myocardium']:>12.3f}{r['aorta_hu']:>10.0f}{r['coronary_hu']:>13.0f}")
    for r in rows[1:-1]:
        if r["size"] != base_size:
            continue
        gap = max(abs(r["dice"][k] - baseline["dice"][k]) for k in ("contrast", "myocardium", "coronary"))
        print(f"{r['sampler']} {r['steps']} steps vs ancestral {args.baseline_steps}: largest Dice difference {gap:.3f} "
              f"({'same adherence' if gap <= 0.02 else 'different'}), {baseline['nfe'] / max(r['nfe'], 1):.0f}x fewer "
              f"network evaluations")
    if device.type == "cuda":
        ph = make_phantom(HELD_OUT_FIRST_SEED, (args.hr_size,) * 3, model.spacing_mm / 2, with_ct=False)
        synthesize(ph.labels, model, SynthesisSettings(steps=2), device=device)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        sampler, steps = runs[0]
        synthesize(ph.labels, model, SynthesisSettings(steps=steps, sampler=sampler, guidance=guidance), device=device)
        torch.cuda.synchronize()
        print(f"{args.hr_size}^3 label map on {torch.cuda.get_device_name(device)} ({sampler} {steps} steps): "
              f"{time.perf_counter() - start:.2f} s")
    else:
        print(f"{args.hr_size}^3 on a GPU: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
