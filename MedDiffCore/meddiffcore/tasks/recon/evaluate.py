"""``meddiff evaluate recon``: PSNR and SSIM (three orientations) of the priors against classical baselines.

CT: FBP (ramp) at 8/16/32 views; MRI: zero-filled at x4/x8 (uniform random lines);
ZSR: cubic interpolation at x2/x4. Held-out phantoms use seeds 90000+ (training
uses 1000..1031); ``--mni`` adds nilearn's MNI152 T1 template (real anatomy, never
used for training) for the MRI tasks. PSNR/SSIM use the data range of the ground
truth in the priors' units ([0, 1]; CT: (HU + 1000) / 2000).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from ...metrics import psnr, ssim_by_orientation
from ...progress import SilentReporter

HELD_OUT_SEED = 90000


class _SeedJob:
    def __init__(self, seed: int) -> None:
        self.seed = seed


def _scores(gt: np.ndarray, rec: np.ndarray, data_range: float) -> dict[str, float]:
    ss = ssim_by_orientation(gt, rec, data_range)
    return {"psnr": round(psnr(gt, rec, data_range), 3), "ssim": round(float(np.mean(list(ss.values()))), 4),
            **{f"ssim_{k}": round(v, 4) for k, v in ss.items()}}


def _solve(model, problem, y, shape, mode: str, steps: int | None, seed: int, device, extra: dict | None = None):
    from .run import _solve as solve, settings_from

    params = {"mode": mode, **({"steps": steps} if steps else {}), **(extra or {})}
    s = settings_from(params, model.card.task_config.get("defaults", {}))
    x, info = solve(model, problem, y, shape, s, _SeedJob(seed), SilentReporter(), device)
    return x.detach().cpu().double().numpy(), info


def mni_t1(size: int) -> np.ndarray:
    """nilearn's MNI152 T1 template (shipped in the wheel), brain box resampled to size^3, in [0, 1]-ish units."""
    from nilearn.datasets import load_mni152_template
    from scipy.ndimage import zoom

    img = load_mni152_template(resolution=2)
    a = np.asarray(img.get_fdata(), dtype=np.float64)  # (x, y, z) RAS
    a = np.transpose(a, (2, 1, 0))  # (z, y, x)
    nz = np.argwhere(a > 0.05 * a.max())
    lo, hi = nz.min(0), nz.max(0) + 1
    a = a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    edge = max(a.shape)
    pad = [((edge - s) // 2, edge - s - (edge - s) // 2) for s in a.shape]
    a = np.pad(a, pad)
    a = zoom(a, size / edge, order=1)[:size, :size, :size]
    a = np.clip(a, 0, None)
    return (a / np.percentile(a, 99.5) * 0.8).astype(np.float32)


def evaluate(ct_model: str | None = None, mri_model: str | None = None, tasks=("ct", "mri", "zsr"), phantoms: int = 2,
             size: int = 32, modes=("fast",), steps: int | None = None, tpdm_steps: int | None = None,
             views=(8, 16, 32), accelerations=(4, 8), factors=(2, 4), mni: bool = False, seed: int = 0,
             device: str = "auto", log=print) -> dict[str, Any]:
    from ...devices import resolve_device
    from ...physics import ParallelBeam, data_consistency_cg, make_mask
    from .model import load_recon_model
    from .phantoms import make_phantom
    from .problems import CTProblem, MRIProblem, ZSRProblem

    dev = resolve_device(device)
    results: dict[str, Any] = {"size": size, "phantoms": phantoms, "device": str(dev), "rows": []}
    mode_steps = {"fast": steps, "tpdm": tpdm_steps}

    def record(task, setting, volume, baseline_name, gt, base, recs, data_range):
        row = {"task": task, "setting": setting, "volume": volume, baseline_name: _scores(gt, base, data_range)}
        for mode, (rec, info) in recs.items():
            row[mode] = {**_scores(gt, rec, data_range), "network_evaluations": info["network_evaluations"],
                         "seconds": info["seconds"]}
        results["rows"].append(row)
        log(json.dumps(row))

    if "ct" in tasks:
        model = load_recon_model(ct_model or "recon-ct-demo", dev)
        tc = model.intensity
        for n_views in views:
            for i in range(phantoms):
                gt_hu = make_phantom("ct", None, (size,) * 3, HELD_OUT_SEED + i)
                gt = (gt_hu - tc["offset"]) / tc["scale"]
                problem = CTProblem(ParallelBeam.uniform(size, n_views))
                y = problem.forward(torch.from_numpy(gt.astype(np.float32)).to(dev))
                base = problem.baseline(y).cpu().double().numpy()
                recs = {m: _solve(model, problem, y, gt.shape, m, mode_steps[m], seed + i, dev) for m in modes}
                # prior-free reference: the same number of CG iterations as fast mode, from zero
                cg = data_consistency_cg(problem, y, torch.zeros(gt.shape, device=dev), 250).cpu().double().numpy()
                recs["cg_only"] = (cg, {"network_evaluations": 0, "seconds": 0.0})
                record("ct", f"{n_views} views", f"phantom {HELD_OUT_SEED + i}", "fbp", gt, base, recs, 1.0)
    mri_vols = []
    if "mri" in tasks or "zsr" in tasks:
        mri_vols = [(f"phantom {HELD_OUT_SEED + i}", make_phantom("mri", None, (size,) * 3, HELD_OUT_SEED + i))
                    for i in range(phantoms)]
        if mni:
            mri_vols.append(("MNI152 T1 (nilearn)", mni_t1(size)))
        model = load_recon_model(mri_model or "recon-mri-demo", dev)
    if "mri" in tasks:
        for acc in accelerations:
            mask = torch.from_numpy(make_mask((size, size), acc, "uniform", seed=seed)).to(dev)
            for name, gt in mri_vols:
                problem = MRIProblem(mask)
                y = problem.forward(torch.from_numpy(gt.astype(np.float64)).to(dev)).to(torch.complex64)
                base = problem.baseline(y).cpu().double().numpy()
                recs = {}
                for m in modes:
                    rec, info = _solve(model, problem, y, gt.shape, m, mode_steps[m], seed, dev)
                    recs[m] = (np.clip(rec, 0, None), info)
                record("mri", f"x{acc}", name, "zero_filled", gt, base, recs, float(gt.max()))
    if "zsr" in tasks:
        for factor in factors:
            for name, gt in mri_vols:
                problem = ZSRProblem(factor)
                y = problem.forward(torch.from_numpy(gt.astype(np.float32)).to(dev))
                base = problem.baseline(y).cpu().double().numpy()
                recs = {}
                for m in modes:
                    rec, info = _solve(model, problem, y, gt.shape, m, mode_steps[m], seed, dev)
                    recs[m] = (np.clip(rec, 0, None), info)
                record("zsr", f"x{factor}", name, "cubic", gt, base, recs, float(gt.max()))
    results["summary"] = summarize(results["rows"])
    return results


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Mean PSNR/SSIM per task and setting (phantoms and MNI separately)."""
    groups: dict[str, dict[str, list]] = {}
    for row in rows:
        kind = "mni" if row["volume"].startswith("MNI") else "phantoms"
        key = f"{row['task']} {row['setting']} ({kind})"
        g = groups.setdefault(key, {})
        for name, value in row.items():
            if isinstance(value, dict):
                for metric in ("psnr", "ssim", "network_evaluations", "seconds"):
                    if metric in value:
                        g.setdefault(f"{name}_{metric}", []).append(value[metric])
    return {k: {m: round(float(np.mean(v)), 4) for m, v in g.items()} for k, g in groups.items()}


def store_in_card(ref: str, figures: dict[str, Any], note: str = "") -> None:
    """Write ``figures`` into the card's ``metrics`` (under ``evaluation``) of the model ``ref``.

    Only the card is rewritten (atomically); the weights and their sha256 stay as they are.
    """
    import dataclasses
    from pathlib import Path

    from ...io.atomic import atomic_output
    from ...models import ModelCard, find_model, verify_model

    files = find_model(ref)
    card = verify_model(files)
    metrics = {**card.metrics, "evaluation": {**card.metrics.get("evaluation", {}), **figures}}
    if note:
        metrics["note"] = note
    with atomic_output(files.card_path) as tmp:
        Path(tmp).write_text(dataclasses.replace(card, metrics=metrics).to_json(), encoding="utf-8")
    verify_model(files)
    ModelCard.from_json_file(files.card_path)


def main_from_args(args) -> int:
    t0 = time.time()
    results = evaluate(
        ct_model=args.model, mri_model=args.mri_model, tasks=tuple(args.tasks.split(",")), phantoms=args.phantoms,
        size=args.size, modes=tuple(args.modes.split(",")), steps=args.steps, tpdm_steps=args.tpdm_steps,
        views=tuple(int(v) for v in args.views.split(",")),
        accelerations=tuple(float(a) if not float(a).is_integer() else int(float(a)) for a in args.accelerations.split(",")),
        factors=tuple(int(f) for f in args.factors.split(",")), mni=args.mni, seed=args.seed, device=args.device)
    results["wall_time_s"] = round(time.time() - t0, 1)
    print(json.dumps(results["summary"], indent=2))
    if getattr(args, "update_card", False):
        tasks = args.tasks.split(",")
        command = "meddiff evaluate recon " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                       if k in ("tasks", "phantoms", "size", "modes", "steps", "tpdm_steps", "views",
                                                                "accelerations", "factors") and v is not None)
        figures = {k: {**v, "command": command + (" --mni" if args.mni else "")} for k, v in results["summary"].items()}
        if "ct" in tasks:
            store_in_card(args.model or "recon-ct-demo", {k: v for k, v in figures.items() if k.startswith("ct ")})
        if "mri" in tasks or "zsr" in tasks:
            store_in_card(args.mri_model or "recon-mri-demo", {k: v for k, v in figures.items() if not k.startswith("ct ")})
    if args.json:
        from pathlib import Path

        from ...io.atomic import atomic_output

        with atomic_output(args.json) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0
