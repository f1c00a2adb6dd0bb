"""``meddiff evaluate recon``: PSNR and SSIM of the priors against FBP / zero-filled *and* the iterative baseline.

CT: FBP (ramp) and TV-regularised least squares (``physics.ITERATIVE["ct"]``) at 8/16/32 views; MRI: zero-filled
and TV compressed sensing at x4/x8 (uniform random lines); ZSR: cubic interpolation at x2/x4. Held-out phantoms use
seeds 90000+ (training uses 1000..1031, the iterative baselines were tuned on 1000, 1001); ``--mni`` adds nilearn's
MNI152 T1 template and ``--real-ct`` pydicom's 512^2 head CT slice at twice ``--size`` (64^2 x 16 slices by
default; both real anatomy, never used for training).

Every method gets PSNR and SSIM (the mean of TPDM's three orientations, each also reported) in the full range
(the prior's [0, 1] units; CT: (HU + 1000) / 2000), and in the window a reader uses: CT in the head soft-tissue
window W 80 / L 40 (``w80``) and in the card's own display window (``window``), both as the clipped HU image with
the window width as data range; MRI inside the head mask of the ground truth (``mask``: PSNR over the mask's
voxels, SSIM of the masked volumes).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch

from ...metrics import psnr, ssim_by_orientation
from ...preview import CT_BRAIN, CT_SOFT_TISSUE, Window
from ...progress import SilentReporter

HELD_OUT_SEED = 90000
#: The metrics compared with the iterative baseline, and what each measures.
REGIONS = {"": "full range", "w80": "CT W 80 / L 40", "window": "the card's CT window", "mask": "MRI head mask"}


class _SeedJob:
    def __init__(self, seed: int) -> None:
        self.seed = seed


def card_window(model) -> Window:
    """The display window a CT card names (``task_config.window``: level, width in HU), else soft tissue W 400 / L 40."""
    w = model.card.task_config.get("window") or {}
    return Window(float(w.get("level", CT_SOFT_TISSUE.level)), float(w.get("width", CT_SOFT_TISSUE.width)))


def _pair(gt: np.ndarray, rec: np.ndarray, data_range: float, suffix: str = "") -> dict[str, float]:
    ss = ssim_by_orientation(gt, rec, data_range)
    key = f"_{suffix}" if suffix else ""
    out = {f"psnr{key}": round(psnr(gt, rec, data_range), 3), f"ssim{key}": round(float(np.mean(list(ss.values()))), 4)}
    if not suffix:
        out.update({f"ssim_{k}": round(v, 4) for k, v in ss.items()})
    return out


def _windowed(gt_hu: np.ndarray, rec_hu: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    low, high = window.level - window.width / 2, window.level + window.width / 2
    return np.clip(gt_hu, low, high), np.clip(rec_hu, low, high)


def ct_scores(gt: np.ndarray, rec: np.ndarray, intensity: dict, window: Window) -> dict[str, float]:
    """Full range ([0, 1] units) and windowed (HU clipped to the window, data range = width) PSNR/SSIM."""
    to_hu = lambda a: a * intensity["scale"] + intensity["offset"]  # noqa: E731
    out = _pair(gt, rec, 1.0)
    out.update(_pair(*_windowed(to_hu(gt), to_hu(rec), CT_BRAIN), CT_BRAIN.width, "w80"))
    out.update(_pair(*_windowed(to_hu(gt), to_hu(rec), window), window.width, "window"))
    return out


def head_mask(gt: np.ndarray) -> np.ndarray:
    """The head of an MR volume: voxels above 5 % of the maximum, holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(gt > 0.05 * float(gt.max()))


def mri_scores(gt: np.ndarray, rec: np.ndarray, data_range: float) -> dict[str, float]:
    """Full range, and inside the head mask (PSNR over its voxels, SSIM of the masked volumes)."""
    m = head_mask(gt)
    out = _pair(gt, rec, data_range)
    inside = _pair(gt * m, rec * m, data_range, "mask")
    inside["psnr_mask"] = round(psnr(gt[m], rec[m], data_range), 3)
    out.update(inside)
    return out


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


def real_head_ct(size: int, slices: int = 16) -> np.ndarray:
    """pydicom's 512^2 head CT slice (``J2K_pixelrep_mismatch.dcm``, shipped in the wheel) resampled to size^2, in HU,
    repeated over ``slices`` slices (one real slice: the axial images are real anatomy, z is constant)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from scipy.ndimage import zoom

    ds = pydicom.dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hu = np.clip(hu, -1000.0, 3000.0)  # -2000 marks pixels outside the scanner's field of view: air
    img = zoom(hu, size / hu.shape[0], order=1)[:size, :size]
    return np.repeat(img[None].astype(np.float32), slices, axis=0)


def evaluate(ct_model: str | None = None, mri_model: str | None = None, tasks=("ct", "mri", "zsr"), phantoms: int = 2,
             size: int = 32, modes=("fast",), steps: int | None = None, tpdm_steps: int | None = None,
             views=(8, 16, 32), accelerations=(4, 8), factors=(2, 4), mni: bool = False, real_ct: bool = False,
             seed: int = 0, device: str = "auto", log=print) -> dict[str, Any]:
    from ...devices import resolve_device
    from ...physics import ParallelBeam, make_mask
    from .model import load_recon_model
    from .phantoms import make_phantom
    from .problems import CTProblem, MRIProblem, ZSRProblem

    dev = resolve_device(device)
    results: dict[str, Any] = {"size": size, "phantoms": phantoms, "device": str(dev), "rows": []}
    mode_steps = {"fast": steps, "tpdm": tpdm_steps}

    def record(task, setting, volume, baselines: dict, recs: dict, score):
        row = {"task": task, "setting": setting, "volume": volume,
               **{name: score(rec) for name, rec in baselines.items()}}
        for mode, (rec, info) in recs.items():
            row[mode] = {**score(rec), "network_evaluations": info["network_evaluations"], "seconds": info["seconds"]}
        results["rows"].append(row)
        log(json.dumps(row))

    if "ct" in tasks:
        model = load_recon_model(ct_model or "recon-ct-demo", dev)
        tc = model.intensity
        window = card_window(model)
        results["ct_window"] = {"level": window.level, "width": window.width}
        ct_vols = [(f"phantom {HELD_OUT_SEED + i}", make_phantom("ct", None, (size,) * 3, HELD_OUT_SEED + i))
                   for i in range(phantoms)]
        if real_ct:
            ct_vols.append(("head CT (pydicom)", real_head_ct(2 * size)))
        for n_views in views:
            for i, (name, gt_hu) in enumerate(ct_vols):
                gt = ((gt_hu - tc["offset"]) / tc["scale"]).astype(np.float64)
                problem = CTProblem(ParallelBeam.uniform(gt.shape[-1], n_views))
                y = problem.forward(torch.from_numpy(gt.astype(np.float32)).to(dev))
                baselines = {"fbp": problem.baseline(y).cpu().double().numpy(),
                             "iterative": problem.iterative(y).cpu().double().numpy()}
                recs = {m: _solve(model, problem, y, gt.shape, m, mode_steps[m], seed + i, dev) for m in modes}
                record("ct", f"{n_views} views", name, baselines, recs, lambda r, gt=gt: ct_scores(gt, r, tc, window))
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
                gt = gt.astype(np.float64)
                problem = MRIProblem(mask)
                y = problem.forward(torch.from_numpy(gt).to(dev)).to(torch.complex64)
                baselines = {"zero_filled": problem.baseline(y).cpu().double().numpy(),
                             "iterative": problem.iterative(y).cpu().double().numpy()}
                recs = {}
                for m in modes:
                    rec, info = _solve(model, problem, y, gt.shape, m, mode_steps[m], seed, dev)
                    recs[m] = (np.clip(rec, 0, None), info)
                record("mri", f"x{acc}", name, baselines, recs, lambda r, gt=gt: mri_scores(gt, r, float(gt.max())))
    if "zsr" in tasks:
        for factor in factors:
            for name, gt in mri_vols:
                gt = gt.astype(np.float64)
                problem = ZSRProblem(factor)
                y = problem.forward(torch.from_numpy(gt.astype(np.float32)).to(dev))
                baselines = {"cubic": problem.baseline(y).cpu().double().numpy()}
                recs = {}
                for m in modes:
                    rec, info = _solve(model, problem, y, gt.shape, m, mode_steps[m], seed, dev)
                    recs[m] = (np.clip(rec, 0, None), info)
                record("zsr", f"x{factor}", name, baselines, recs, lambda r, gt=gt: mri_scores(gt, r, float(gt.max())))
    results["summary"] = summarize(results["rows"])
    return results


def _group(volume: str) -> str:
    if volume.startswith("MNI"):
        return "mni"
    if volume.startswith("head CT"):
        return "real CT"
    return "phantoms"


SUMMARY_METRICS = ("psnr", "ssim", "ssim_axial", "ssim_coronal", "ssim_sagittal", "psnr_w80", "ssim_w80",
                   "psnr_window", "ssim_window", "psnr_mask", "ssim_mask", "network_evaluations", "seconds")


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Mean figures per task and setting (phantoms, MNI and real CT separately): ``{method}_{metric}``."""
    groups: dict[str, dict[str, list]] = {}
    for row in rows:
        key = f"{row['task']} {row['setting']} ({_group(row['volume'])})"
        g = groups.setdefault(key, {})
        for name, value in row.items():
            if isinstance(value, dict):
                for metric in SUMMARY_METRICS:
                    if metric in value:
                        g.setdefault(f"{name}_{metric}", []).append(value[metric])
    return {k: {m: round(float(np.mean(v)), 4) for m, v in g.items()} for k, g in groups.items()}


#: The columns of the printed table: (metric suffix, heading) per task.
TABLE_COLUMNS = {"ct": (("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_w80", "PSNR W80"), ("ssim_w80", "SSIM W80"),
                        ("psnr_window", "PSNR card-W"), ("ssim_window", "SSIM card-W")),
                 "mri": (("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_mask", "PSNR head"), ("ssim_mask", "SSIM head")),
                 "zsr": (("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_mask", "PSNR head"), ("ssim_mask", "SSIM head"))}
METHOD_ORDER = ("fbp", "zero_filled", "cubic", "iterative", "fast", "tpdm")


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table: one line per task, setting and method (model vs FBP/zero-filled vs iterative)."""
    lines = []
    for key, figures in summary.items():
        task = key.split(" ", 1)[0]
        cols = TABLE_COLUMNS.get(task, TABLE_COLUMNS["mri"])
        methods = [m for m in METHOD_ORDER if f"{m}_psnr" in figures]
        if not lines or lines[-1].split()[0] != task:
            lines.append(f"{'setting':<28} {'method':<12} " + " ".join(f"{h:>11}" for _, h in cols))
        for m in methods:
            cells = [figures.get(f"{m}_{c}") for c, _ in cols]
            text = " ".join(f"{v:>11.4f}" if c.startswith("ssim") else f"{v:>11.2f}" for (c, _), v in zip(cols, cells)
                            if v is not None)
            lines.append(f"{key:<28} {m:<12} {text}")
    return "\n".join(lines)


def losses(summary: dict[str, Any], model_mode: str = "fast") -> list[str]:
    """Where the model is worse than the iterative baseline, per setting and metric (the honest part of the table)."""
    out = []
    for key, figures in summary.items():
        for metric in ("psnr", "ssim", "psnr_w80", "ssim_w80", "psnr_window", "ssim_window", "psnr_mask", "ssim_mask"):
            a, b = figures.get(f"{model_mode}_{metric}"), figures.get(f"iterative_{metric}")
            if a is not None and b is not None and a < b:
                out.append(f"{key}: {model_mode} {metric} {a:g} < iterative {b:g}")
    return out


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
        factors=tuple(int(f) for f in args.factors.split(",")), mni=args.mni, real_ct=getattr(args, "real_ct", False),
        seed=args.seed, device=args.device, log=lambda row: print(row, file=sys.stderr, flush=True))
    results["wall_time_s"] = round(time.time() - t0, 1)
    print(format_table(results["summary"]))
    worse = losses(results["summary"])
    if worse:
        print("\nworse than the iterative baseline:\n  " + "\n  ".join(worse))
    if getattr(args, "update_card", False):
        tasks = args.tasks.split(",")
        command = "meddiff evaluate recon " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                       if k in ("tasks", "phantoms", "size", "modes", "steps", "tpdm_steps", "views",
                                                                "accelerations", "factors") and v is not None)
        command += (" --mni" if args.mni else "") + (" --real-ct" if getattr(args, "real_ct", False) else "")
        figures = {k: {**v, "command": command} for k, v in results["summary"].items()}
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
