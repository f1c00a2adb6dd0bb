"""``meddiff evaluate ctp``: the model against linear interpolation on held-out phantoms.

For each held-out phantom (seeds 0..N-1; training phantoms use seeds from
100000) and each interval (2, 4, 8 s) the 1 s sequence is subsampled (frames 0,
dt, 2 dt, ...; the tail after the last kept frame is dropped for every method),
the missing frames are filled by the model and by linear interpolation, and

* PSNR and SSIM of the filled frames against the ground truth, the phantom's
  noise-free frames (what the anatomy and the bolus really are, without the
  scanner noise; PSNR pooled over all filled frames, since a pre-bolus frame is
  matched exactly by interpolation), and against the acquired 1 s frames, in the
  model's HU window (data range 80 HU), over the whole slab and inside the
  tissue mask;
* mean absolute errors of CBF, CBV, MTT and Tmax (bSVD, automatic AIF) against
  the phantom's ground truth over grey and white matter, and the "map error":
  the mean of the relative MAEs of CBF, CBV and MTT (Tmax stays in seconds); the
  same for the true 1 s sequence as the reference.

* the mean bias (HU) of the filled frames against the noise-free ones in each tissue class (CSF, grey and
  white matter), next to that of the kept (acquired) frames, which is only their noise's mean: a filled
  frame biased by tissue puts a step into the mean time-density curve at every acquired frame.

Two bounds put the figures in proportion. The acquired frames carry noise no
method can predict, so even the noise-free frames themselves ("oracle": the
missing frames replaced by the phantom's noise-free ones, the known frames kept
as acquired, as every method must) reach only a limited PSNR against them; and
the oracle's map error is the least any gap filler can reach with these known
frames and this deconvolution.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from meddiffcore.io import Sequence
from meddiffcore.metrics import psnr, ssim

from .config import tissue_mask, window_bounds
from .perfusion import compute_perfusion, map_errors
from .phantom import LABELS, make_ctp_phantom
from .plan import make_plan

MAPS = ("cbf", "cbv", "mtt", "tmax")


#: Maps whose relative errors are averaged into the "map error" (Tmax, near 0 s in normal tissue, is reported in s).
RELATIVE_MAPS = ("cbf", "cbv", "mtt")


def _relative(errors: dict[str, float], truth_means: dict[str, float]) -> float:
    return float(np.mean([errors[k] / truth_means[k] for k in RELATIVE_MAPS]))


def _frame_metrics(truth: np.ndarray, clean: np.ndarray, filled: np.ndarray, mask: np.ndarray, lo: float,
                   hi: float) -> dict[str, float]:
    """Figures of ``filled`` against the acquired frames ``truth`` and the noise-free frames ``clean``."""
    rng = hi - lo
    t, c, f = np.clip(truth, lo, hi), np.clip(clean, lo, hi), np.clip(filled, lo, hi)
    return {"psnr": float(np.mean([psnr(a, b, rng) for a, b in zip(t, f)])),
            "ssim": float(np.mean([ssim(a, b, rng) for a, b in zip(t, f)])),
            "psnr_tissue": float(psnr(t[:, mask], f[:, mask], rng)),
            # pooled over the frames: a pre-bolus frame of the noise-free phantom is matched exactly by interpolation
            "psnr_noise_free": float(psnr(c, f, rng)),
            "ssim_noise_free": float(np.mean([ssim(a, b, rng) for a, b in zip(c, f)]))}


#: Tissue classes whose mean bias is reported (label values of the phantom's tissue map).
BIAS_TISSUES = {k: LABELS[k].replace(" ", "_") for k in (2, 3, 4)}  # csf, grey_matter, white_matter


def tissue_bias(frames: np.ndarray, clean: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean of ``frames - clean`` (HU) over the voxels of each tissue class in ``BIAS_TISSUES``, all frames pooled."""
    return {name: float(np.mean((frames - clean)[:, labels == k])) for k, name in BIAS_TISSUES.items()
            if np.any(labels == k)}


METHODS = ("model", "linear", "oracle")
FRAME_FIGURES = ("psnr", "ssim", "psnr_tissue", "psnr_noise_free", "ssim_noise_free", "map_relative_error")


def evaluate(model_ref: str | None = None, *, phantoms: int = 2, size: int = 64, intervals=(2, 4, 8),
             steps: int | None = None, sampler: str | None = None, estimate: str | None = None,
             device: str = "auto", seed: int = 0, noise_hu: float | None = None,
             log: Callable[[str], None] = lambda m: None) -> dict:
    import torch

    from meddiffcore.devices import resolve_device

    from .inpaint import assemble, inpaint_frames, linear_fill
    from .model import load_for_inference
    from .run import DEFAULT_MODEL

    dev = resolve_device(device)
    model = load_for_inference(model_ref or DEFAULT_MODEL, dev)
    steps = int(steps or model.diffusion.sampling_steps)
    sampler = sampler or model.diffusion.sampler
    estimate = estimate or model.diffusion.estimate
    lo, hi = window_bounds(model.window_level_hu, model.window_width_hu)
    rows: dict[int, list[dict]] = {iv: [] for iv in intervals}
    reference = []
    for k in range(phantoms):
        ph = make_ctp_phantom(k, slices=model.slab_slices, size=size, noise_hu=noise_hu)
        hu, times, clean = ph.sequence.array, ph.sequence.times_s, ph.noise_free
        truth = {"cbf": ph.cbf, "cbv": ph.cbv, "mtt": ph.mtt, "tmax": ph.tmax}
        region = ph.perfused
        means = {m: float(np.mean(np.abs(truth[m][region]))) for m in MAPS}
        mask = tissue_mask(hu[0], model.window_level_hu, model.window_width_hu)
        for iv in intervals:
            n_use = (len(times) - 1) // iv * iv + 1
            known = list(range(0, n_use, iv))
            plan = make_plan(times[known], interval_s=1.0, max_gap_s=model.max_gap_s)
            sparse = hu[known]
            idx = [int(round(g.time_s)) for g in plan.targets]
            gen = torch.Generator(device=dev).manual_seed(seed + 1000 * k + iv)
            t0 = time.perf_counter()
            filled, stats = inpaint_frames(sparse, times[known], plan, model, steps=steps, sampler=sampler, device=dev,
                                           estimate=estimate, generator=gen)
            elapsed = time.perf_counter() - t0
            linear = linear_fill(sparse, plan)
            row = {"phantom": k, "interval_s": iv, "missing_frames": len(idx), "seconds": round(elapsed, 2),
                   "network_evaluations": stats["network_evaluations"]}
            for name, frames in zip(METHODS, (filled, linear, clean[idx])):
                row[name] = _frame_metrics(hu[idx], clean[idx], frames, mask, lo, hi)
                row[name]["bias_hu"] = tissue_bias(frames, clean[idx], ph.labels)
                if name == "oracle":  # infinite and 1 by definition
                    del row[name]["psnr_noise_free"], row[name]["ssim_noise_free"]
                seq = Sequence(assemble(sparse, plan, frames), ph.sequence.ijk_to_ras, plan.times_s)
                errors = map_errors(compute_perfusion(seq).as_dict(), truth, region)
                row[name]["map_mae"] = errors
                row[name]["map_relative_error"] = _relative(errors, means)
            row["kept_bias_hu"] = tissue_bias(sparse, clean[known], ph.labels)
            full = Sequence(hu[:n_use], ph.sequence.ijk_to_ras, times[:n_use])
            ref = map_errors(compute_perfusion(full).as_dict(), truth, region)
            row["full_1s"] = {"map_mae": ref, "map_relative_error": _relative(ref, means)}
            rows[iv].append(row)
            log(f"phantom {k}, {iv} s: PSNR model {row['model']['psnr']:.2f} / linear {row['linear']['psnr']:.2f} dB, "
                f"map error model {row['model']['map_relative_error']:.3f} / linear {row['linear']['map_relative_error']:.3f} "
                f"/ full 1 s {row['full_1s']['map_relative_error']:.3f} ({elapsed:.1f} s)")
        reference.append(k)
    summary = {}
    for iv, rs in rows.items():
        def mean(path):
            vals = []
            for r in rs:
                v = r
                for p in path:
                    v = v[p]
                vals.append(v)
            return float(np.mean(vals))

        s = {}
        for name in METHODS:
            s[name] = {m: round(mean((name, m)), 4) for m in FRAME_FIGURES if m in rs[0][name]}
            s[name]["map_mae"] = {m: round(mean((name, "map_mae", m)), 4) for m in MAPS}
            s[name]["bias_hu"] = {t: round(mean((name, "bias_hu", t)), 3) for t in rs[0][name]["bias_hu"]}
        s["kept_bias_hu"] = {t: round(mean(("kept_bias_hu", t)), 3) for t in rs[0]["kept_bias_hu"]}
        s["full_1s"] = {"map_relative_error": round(mean(("full_1s", "map_relative_error")), 4),
                        "map_mae": {m: round(mean(("full_1s", "map_mae", m)), 4) for m in MAPS}}
        s["psnr_gain_db"] = round(s["model"]["psnr"] - s["linear"]["psnr"], 3)
        s["psnr_noise_free_gain_db"] = round(s["model"]["psnr_noise_free"] - s["linear"]["psnr_noise_free"], 3)
        s["map_error_ratio"] = round(s["model"]["map_relative_error"] / max(s["linear"]["map_relative_error"], 1e-12), 4)
        s["seconds_per_sequence"] = round(mean(("seconds",)), 2)
        s["network_evaluations"] = int(mean(("network_evaluations",)))
        summary[f"{iv}s"] = s
    return {"model": model.card.name, "phantom_seeds": reference, "size": [model.slab_slices, size, size],
            "noise_hu": "1-3 (drawn per phantom)" if noise_hu is None else noise_hu,
            "estimate": estimate, "sampler": sampler, "steps": steps, "device": str(dev), "summary": summary,
            "per_phantom": {f"{iv}s": rs for iv, rs in rows.items()},
            "command": f"meddiff evaluate ctp --model {model_ref or DEFAULT_MODEL} --phantoms {phantoms} --size {size} "
                       f"--intervals {','.join(map(str, intervals))} --estimate {estimate} --steps {steps} --sampler {sampler} "
                       f"--seed {seed}" + ("" if noise_hu is None else f" --noise-hu {noise_hu:g}")}


def format_report(result: dict) -> str:
    how = ("posterior mean (1 network evaluation per batch)" if result.get("estimate") == "mean"
           else f"{result['sampler']} {result['steps']} steps")
    lines = [f"model {result['model']}: {len(result['phantom_seeds'])} held-out phantoms "
             f"{'x'.join(map(str, result['size']))}, {how} on {result['device']}",
             "PSNR (dB) against the acquired 1 s frames [against the ground truth, the noise-free frames]; map error "
             "= mean relative MAE of CBF, CBV, MTT against the true maps; oracle = the noise-free frames themselves",
             f"{'interval':>8} {'model':>15} {'linear':>15} {'oracle':>15} {'gain':>12} {'SSIM m/l [truth]':>30} "
             f"{'map err model':>14} {'linear':>7} {'oracle':>7} {'1 s':>6} {'ratio':>6}"]
    for iv, s in result["summary"].items():
        m, li, o = s["model"], s["linear"], s["oracle"]

        def both(f):
            return f"{f['psnr']:6.2f} [{f['psnr_noise_free']:5.2f}]" if "psnr_noise_free" in f else f"{f['psnr']:6.2f} [  inf]"

        lines.append(f"{iv:>8} {both(m):>15} {both(li):>15} {both(o):>15} "
                     f"{s['psnr_gain_db']:5.2f} [{s['psnr_noise_free_gain_db']:4.2f}] "
                     f"{m['ssim']:.4f}/{li['ssim']:.4f} [{m['ssim_noise_free']:.4f}/{li['ssim_noise_free']:.4f}] "
                     f"{m['map_relative_error']:>14.3f} {li['map_relative_error']:>7.3f} "
                     f"{o['map_relative_error']:>7.3f} {s['full_1s']['map_relative_error']:>6.3f} {s['map_error_ratio']:>6.2f}")
    lines.append("mean bias (HU) against the noise-free frames, per tissue: filled by the model / by linear "
                 "interpolation / the kept (acquired) frames")
    for iv, s in result["summary"].items():
        if "bias_hu" in s["model"]:
            lines.append(f"  {iv} " + ", ".join(f"{t} {s['model']['bias_hu'][t]:+.3f} / {s['linear']['bias_hu'][t]:+.3f}"
                                                f" / {s['kept_bias_hu'][t]:+.3f}" for t in s["model"]["bias_hu"]))
    for iv, s in result["summary"].items():
        for name in (*METHODS, "full_1s"):
            mae = s[name]["map_mae"]
            lines.append(f"  {iv} {name:>7} MAE: CBF {mae['cbf']:.2f} ml/100ml/min, CBV {mae['cbv']:.3f} ml/100ml, "
                         f"MTT {mae['mtt']:.2f} s, Tmax {mae['tmax']:.2f} s")
    return "\n".join(lines)


def record_in_card(model_ref: str | None, result: dict) -> str:
    """Write the summary into the model card's ``metrics`` (the weights and their checksum are unchanged)."""
    from pathlib import Path

    from meddiffcore.io import atomic_output
    from meddiffcore.models import ModelCard, find_model

    from .run import DEFAULT_MODEL

    files = find_model(model_ref or DEFAULT_MODEL)
    card = ModelCard.from_json_file(files.card_path)
    metrics = {**card.metrics, "evaluation": {k: v for k, v in result.items() if k != "per_phantom"}}
    card = dataclasses.replace(card, metrics=metrics)
    with atomic_output(files.card_path) as tmp:
        Path(tmp).write_text(card.to_json(), encoding="utf-8")
    return str(files.card_path)
