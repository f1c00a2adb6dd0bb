"""``meddiff evaluate ctca``: label adherence, diversity and memorisation on held-out phantoms.

* Label adherence: mean HU of the synthetic CT in every label, and Dice of an
  HU-threshold segmentation against the input labels: ``contrast`` (HU >=
  :data:`CONTRAST_HU` within :data:`NEAR_HEART_MM` of any label, which leaves
  out bone, vs. blood pool, great vessels and coronaries),
  ``coronary`` (HU >= :data:`CORONARY_HU` vs. the coronary label, both within the
  epicardial fat, see :func:`epicardial_region`) and ``myocardium`` (HU in
  :data:`MYOCARDIUM_HU` vs. the myocardium label, within the labelled heart). The
  phantom's own CT is scored the same way, as the ceiling (partial volume at
  2 mm keeps the coronary ceiling well below 1).
* Diversity: MS-SSIM between samples of the same label map (lower = more diverse).
* Memorisation: RMSE (HU) from each sample to its nearest training volume,
  next to the same distance for the held-out phantom's own CT; a ratio well
  below 1 means samples sit closer to training data than new real data does.

Held-out phantoms use seeds from :data:`HELD_OUT_FIRST_SEED` (training uses small seeds).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...config import from_dict
from ...metrics import dice, ms_ssim
from .labels import CORONARY, LABELS

HELD_OUT_FIRST_SEED = 100000
CONTRAST_HU = 200.0
CORONARY_HU = 100.0
MYOCARDIUM_HU = (30.0, 200.0)
EPICARDIAL_MM = 8.0
NEAR_HEART_MM = 4.0


def epicardial_region(labels: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Epicardial fat where coronaries run: background or coronary, within EPICARDIAL_MM of the ventricles, and not
    touching a contrast-filled chamber or great vessel (whose partial volume would read as vessel)."""
    ventricles = np.isin(labels, (1, 3, 5))
    near = ndimage.distance_transform_edt(~ventricles, sampling=spacing_mm) <= EPICARDIAL_MM
    bright = ndimage.binary_dilation(np.isin(labels, (2, 3, 4, 5, 6, 7)))
    return near & np.isin(labels, (0, CORONARY)) & ~bright


def adherence(ct_hu: np.ndarray, labels: np.ndarray, spacing_mm: float) -> dict:
    """Per-class mean HU and threshold-segmentation Dice of one CT against its label map."""
    mean_hu = {LABELS[v]: float(ct_hu[labels == v].mean()) for v in LABELS if np.any(labels == v)}
    region = epicardial_region(labels, spacing_mm)
    lo, hi = MYOCARDIUM_HU
    near_heart = ndimage.distance_transform_edt(labels == 0, sampling=spacing_mm) <= NEAR_HEART_MM  # leaves out the spine
    scores = {
        "contrast": dice(near_heart & (ct_hu >= CONTRAST_HU), np.isin(labels, (2, 3, 4, 5, 6, 7, CORONARY))),
        "coronary": dice(region & (ct_hu >= CORONARY_HU), region & (labels == CORONARY)),
        "myocardium": dice(np.isin(labels, (1, 2, 3, 4, 5, 6, 7)) & (ct_hu >= lo) & (ct_hu < hi), labels == 1),
    }
    return {"mean_hu": mean_hu, "dice": scores}


def nearest_rmse(volume_hu: np.ndarray, training: list[np.ndarray]) -> float:
    """RMSE in HU to the nearest training volume (same grid)."""
    v = volume_hu.astype(np.float32)
    return float(min(np.sqrt(np.mean((v - t) ** 2)) for t in training))


def _write_json(path: str, figures: dict) -> None:
    from ...io.atomic import atomic_output

    with atomic_output(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(figures, indent=2), encoding="utf-8")


def _mean_dicts(items: list[dict]) -> dict:
    keys = sorted({k for d in items for k in d})
    return {k: float(np.mean([d[k] for d in items if k in d])) for k in keys}


def evaluate_model(model_ref: str, *, phantoms: int = 10, samples: int = 2, steps: int | None = None,
                   sampler: str | None = None, guidance: float | None = None, train_phantoms: int | None = None,
                   seed: int = 0, device: str = "auto", json_path: str | None = None, update_card: bool = False,
                   callback=None) -> dict:
    import torch

    from ...devices import resolve_device
    from .config import CTCAConfig, DataConfig
    from .data import CTCADataset
    from .model import load_ctca_model
    from .phantom import make_phantom
    from .synthesis import SynthesisRecord, SynthesisSettings, synthesize

    dev = resolve_device(device)
    model = load_ctca_model(model_ref, dev)
    d = model.card.diffusion
    settings = SynthesisSettings(steps=steps or d.get("steps", 25), sampler=sampler or d.get("sampler", "dpmpp_2m"),
                                 guidance=float(d.get("guidance", 1.0) if guidance is None else guidance), seed=seed)
    data = from_dict(DataConfig, model.card.task_config.get("data") or {}, where="data")
    if train_phantoms is not None:
        data.num_phantoms = min(train_phantoms, data.num_phantoms) if data.source == "phantoms" else data.num_phantoms
    train_set = CTCADataset(CTCAConfig(stage=model.stage, data=data))
    training = [train_set.volume(i)[1].astype(np.float32) for i in range(len(train_set))]
    generator = torch.Generator(device=dev).manual_seed(seed)
    spacing = float(model.spacing_mm)
    synth_adh, ref_adh, diversity, nn_samples, nn_reference = [], [], [], [], []
    record = SynthesisRecord()
    started = time.perf_counter()
    for n in range(phantoms):
        ph = make_phantom(HELD_OUT_FIRST_SEED + n, model.shape, spacing)
        labels = ph.labels.array
        ref_adh.append(ph.ct.array.astype(np.float32))
        nn_reference.append(nearest_rmse(ph.ct.array, training))
        cts = []
        for _ in range(samples):
            ct = synthesize(ph.labels, model, settings, device=dev, generator=generator, callback=callback, record=record)
            cts.append(ct.array.astype(np.float32))
            synth_adh.append(adherence(cts[-1], labels, spacing))
            nn_samples.append(nearest_rmse(ct.array, training))
        ref_adh[-1] = adherence(ref_adh[-1], labels, spacing)
        width = model.hu_window[1] - model.hu_window[0]
        for i in range(len(cts)):
            for j in range(i + 1, len(cts)):
                diversity.append(ms_ssim(cts[i], cts[j], data_range=width))
    elapsed = time.perf_counter() - started
    volumes = phantoms * samples
    figures = {
        "model": model.card.name,
        "held_out": {"phantoms": phantoms, "first_seed": HELD_OUT_FIRST_SEED, "samples_per_phantom": samples,
                     "grid": list(model.shape), "spacing_mm": spacing},
        "settings": {"sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance, "seed": seed},
        "mean_hu": {"synthetic": _mean_dicts([a["mean_hu"] for a in synth_adh]),
                    "phantom_ct": _mean_dicts([a["mean_hu"] for a in ref_adh])},
        "dice": {"synthetic": _mean_dicts([a["dice"] for a in synth_adh]),
                 "phantom_ct": _mean_dicts([a["dice"] for a in ref_adh])},
        "thresholds_hu": {"contrast": CONTRAST_HU, "coronary": CORONARY_HU, "myocardium": list(MYOCARDIUM_HU)},
        "ms_ssim_between_samples": float(np.mean(diversity)) if diversity else None,
        "memorisation": {"training_volumes_searched": len(training),
                         "sample_nearest_rmse_hu": float(np.mean(nn_samples)),
                         "sample_nearest_rmse_hu_min": float(np.min(nn_samples)),
                         "held_out_phantom_nearest_rmse_hu": float(np.mean(nn_reference)),
                         "ratio": float(np.mean(nn_samples) / max(np.mean(nn_reference), 1e-6))},
        "time_per_volume_s": elapsed / max(volumes, 1),
        "network_evaluations_per_volume": record.network_evaluations / max(volumes, 1),
        "device": str(dev), "torch_threads": torch.get_num_threads(),
    }
    if json_path:
        _write_json(json_path, figures)
    if update_card:
        store_metrics(model_ref, figures)
    return figures


#: Contrast-filled labels (chambers, aorta, pulmonary artery): the blood pool whose mean HU is reported.
BLOOD_POOL = (2, 3, 4, 5, 6, 7)


def plane_jumps(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean absolute change of the locally averaged (5 voxels) volume from each plane to the next along ``axis``:
    a seam between patches is a jump (entry ``i`` is the change from plane ``i`` to ``i + 1``)."""
    smooth = ndimage.uniform_filter(volume.astype(np.float64), 5)
    return np.abs(np.diff(smooth, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))


def seam_ratio(volume: np.ndarray, patch, overlap) -> float:
    """The largest plane-to-plane change at a patch edge (within one plane of it), over its median along the same
    axis, worst axis: ~1 without seams; a seam between separately sampled patches shows as a jump well above 1."""
    from .patches import patch_starts

    worst = 0.0
    for axis, (n, p, o) in enumerate(zip(volume.shape, patch, overlap)):
        starts = patch_starts(n, p, o)
        edges = {s - 1 for s in starts if s > 0} | {s + p - 1 for s in starts if s + p < n}
        if not edges:
            continue
        jumps = plane_jumps(volume, axis)
        near = [jumps[e + d] for e in edges for d in (-1, 0, 1) if 0 <= e + d < len(jumps)]
        worst = max(worst, float(max(near) / max(np.median(jumps), 1e-9)))
    return worst


def _blood_pool_hu(ct_hu: np.ndarray, labels: np.ndarray) -> float:
    return float(ct_hu[np.isin(labels, BLOOD_POOL)].mean())


def evaluate_high_resolution(model_ref: str, hr_model_ref: str, *, phantoms: int = 3, samples: int = 1,
                             steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                             seed: int = 0, device: str = "auto", json_path: str | None = None,
                             update_card: bool = False, callback=None) -> dict:
    """The high-resolution stage on held-out phantoms rasterised at its spacing: the same low-resolution sample
    scored on the fine grid (linearly upsampled: LR only) and refined by the patch model (LR + HR), next to the
    phantom's own CT (the ceiling); plus the seam measure of the patch result and the time of each stage.
    ``steps``/``sampler``/``guidance`` apply to both stages when given, else each stage uses its card's."""
    import torch

    from ...devices import resolve_device
    from ...errors import ConfigError
    from .model import load_ctca_model
    from .phantom import make_phantom
    from .synthesis import SynthesisRecord, SynthesisSettings, high_resolution, low_resolution, on_label_grid

    dev = resolve_device(device)
    model, hr = load_ctca_model(model_ref, dev), load_ctca_model(hr_model_ref, dev)
    if model.stage != "lr" or hr.stage != "patch":
        raise ConfigError("--model must be a low-resolution ('lr') CTCA model and --hr-model a 'patch' model",
                          "see the stage in each model card (`meddiff models list`)")
    if tuple(hr.hu_window) != tuple(model.hu_window):
        raise ConfigError("the two models have different HU windows", "evaluate models trained for the same window")
    asked = {"steps": steps, "sampler": sampler, "guidance": guidance, "seed": seed}
    settings, hr_settings = SynthesisSettings.of_model(model, **asked), SynthesisSettings.of_model(hr, **asked)
    generator = torch.Generator(device=dev).manual_seed(seed)
    spacing = float(hr.spacing_mm)
    scores = {"lr_only": [], "lr_hr": [], "phantom_ct": []}
    pool = {k: [] for k in scores}
    seams, seams_lr, lr_s, hr_s = [], [], [], []
    record = SynthesisRecord()
    with torch.no_grad():
        for n in range(phantoms):
            ph = make_phantom(HELD_OUT_FIRST_SEED + n, hr.shape, spacing)
            labels = ph.labels.array
            scores["phantom_ct"].append(adherence(ph.ct.array.astype(np.float32), labels, spacing))
            pool["phantom_ct"].append(_blood_pool_hu(ph.ct.array, labels))
            for _ in range(samples):
                t0 = time.perf_counter()
                lr_grid, x_lr = low_resolution(model, ph.labels, settings, generator, dev, callback, record)
                t1 = time.perf_counter()
                hr_grid, x_hr = high_resolution(hr, ph.labels, lr_grid, x_lr, hr_settings, generator, dev, callback,
                                                record)
                t2 = time.perf_counter()
                lr_s.append(t1 - t0)
                hr_s.append(t2 - t1)
                for key, (x, grid) in {"lr_only": (x_lr, lr_grid), "lr_hr": (x_hr, hr_grid)}.items():
                    ct = on_label_grid(x, grid, ph.labels, hr.hu_window).astype(np.float32)
                    scores[key].append(adherence(ct, labels, spacing))
                    pool[key].append(_blood_pool_hu(ct, labels))
                    (seams if key == "lr_hr" else seams_lr).append(
                        seam_ratio(ct, record.stages[-1]["patch"], record.stages[-1]["overlap"]))
    stage = record.stages[-1]
    volumes = phantoms * samples
    figures = {
        "model": model.card.name, "hr_model": hr.card.name,
        "held_out": {"phantoms": phantoms, "first_seed": HELD_OUT_FIRST_SEED, "samples_per_phantom": samples,
                     "grid": list(hr.shape), "spacing_mm": spacing},
        "settings": {"lr": {"sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance},
                     "hr": {"sampler": hr_settings.sampler, "steps": hr_settings.steps, "guidance": hr_settings.guidance,
                            "start_sigma": hr.start_sigma, "target": hr.card.diffusion.get("target", "image"),
                            "patch": stage["patch"], "overlap": stage["overlap"], "patches": stage["patches"]},
                     "seed": seed},
        "dice": {k: _mean_dicts([a["dice"] for a in v]) for k, v in scores.items()},
        "mean_hu": {k: _mean_dicts([a["mean_hu"] for a in v]) for k, v in scores.items()},
        "blood_pool_hu": {k: float(np.mean(v)) for k, v in pool.items()},
        "thresholds_hu": {"contrast": CONTRAST_HU, "coronary": CORONARY_HU, "myocardium": list(MYOCARDIUM_HU)},
        "seam_ratio": {"lr_hr": float(np.max(seams)), "lr_only_same_planes": float(np.max(seams_lr)),
                       "meaning": "largest plane-to-plane change within one plane of a patch edge over its median "
                                  "along the same axis (worst axis and volume); LR only has no patches: its figure "
                                  "at the same planes is what anatomy alone gives"},
        "time_per_volume_s": {"lr": float(np.mean(lr_s)), "hr": float(np.mean(hr_s))},
        "network_evaluations_per_volume": record.network_evaluations / max(volumes, 1),
        "device": str(dev), "torch_threads": torch.get_num_threads(),
    }
    if json_path:
        _write_json(json_path, figures)
    if update_card:
        command = (f"meddiff evaluate ctca --model {model_ref} --hr-model {hr_model_ref} --phantoms {phantoms} "
                   f"--samples {samples} --seed {seed}"
                   + "".join(f" --{k} {v}" for k, v in (("steps", steps), ("sampler", sampler), ("guidance", guidance))
                             if v is not None))
        store_metrics(hr_model_ref, figures, command)
    return figures


def format_high_resolution(f: dict) -> str:
    """The high-resolution figures as a short text table."""
    s = f["settings"]
    lines = [f"models {f['model']} + {f['hr_model']}: {f['held_out']['phantoms']} held-out phantoms x "
             f"{f['held_out']['samples_per_phantom']} samples at {f['held_out']['spacing_mm']:g} mm; "
             f"LR {s['lr']['sampler']} {s['lr']['steps']} steps guidance {s['lr']['guidance']:g}, "
             f"HR {s['hr']['sampler']} {s['hr']['steps']} steps guidance {s['hr']['guidance']:g}"
             + (f" from sigma {s['hr']['start_sigma']:g}" if s['hr'].get('start_sigma') is not None else "") + ", "
             f"{s['hr']['patches']} patches of {'x'.join(map(str, s['hr']['patch']))}"]
    lines.append(f"{'':<20}{'LR only':>10}{'LR + HR':>10}{'phantom':>10}")
    for name in f["dice"]["phantom_ct"]:
        lines.append(f"{'Dice ' + name:<20}" + "".join(f"{f['dice'][k][name]:>10.3f}" for k in ("lr_only", "lr_hr", "phantom_ct")))
    lines.append(f"{'blood pool HU':<20}" + "".join(f"{f['blood_pool_hu'][k]:>10.0f}" for k in ("lr_only", "lr_hr", "phantom_ct")))
    sr = f["seam_ratio"]
    lines.append(f"seam ratio (patch edges / median plane change): LR + HR {sr['lr_hr']:.2f}, "
                 f"LR only at the same planes {sr['lr_only_same_planes']:.2f}")
    t = f["time_per_volume_s"]
    lines.append(f"time per volume: LR {t['lr']:.1f} s + HR {t['hr']:.1f} s, {f['device']} ({f['torch_threads']} threads)")
    return "\n".join(lines)


def store_metrics(model_ref: str, figures: dict, command: str | None = None) -> Path:
    """Put ``figures`` in the model card's ``metrics.evaluation`` (the weights and their checksum are unchanged)."""
    from ...io.atomic import atomic_output
    from ...models import ModelCard, find_model

    card_path = find_model(model_ref).card_path
    card = ModelCard.from_json_file(card_path)
    st = figures["settings"]
    card.metrics = {**card.metrics, "evaluation": figures,
                    "evaluation_command": command or (
                        f"meddiff evaluate ctca --model {model_ref} --phantoms {figures['held_out']['phantoms']} "
                        f"--samples {figures['held_out']['samples_per_phantom']} --steps {st['steps']} "
                        f"--sampler {st['sampler']} --guidance {st['guidance']:g} --seed {st['seed']}")}
    with atomic_output(card_path) as tmp:
        Path(tmp).write_text(card.to_json(), encoding="utf-8")
    return card_path


def format_report(f: dict) -> str:
    """The figures as a short text table."""
    lines = [f"model {f['model']}: {f['held_out']['phantoms']} held-out phantoms x {f['held_out']['samples_per_phantom']} samples, "
             f"{f['settings']['sampler']} {f['settings']['steps']} steps, guidance {f['settings']['guidance']:g}"]
    lines.append(f"{'class':<20}{'synthetic HU':>14}{'phantom HU':>12}")
    for name in f["mean_hu"]["phantom_ct"]:
        lines.append(f"{name:<20}{f['mean_hu']['synthetic'].get(name, float('nan')):>14.0f}{f['mean_hu']['phantom_ct'][name]:>12.0f}")
    lines.append(f"{'Dice':<20}{'synthetic':>14}{'phantom':>12}")
    for name, value in f["dice"]["synthetic"].items():
        lines.append(f"{name:<20}{value:>14.3f}{f['dice']['phantom_ct'][name]:>12.3f}")
    m = f["memorisation"]
    ms = f["ms_ssim_between_samples"]
    lines.append(f"MS-SSIM between samples: {'n/a' if ms is None else f'{ms:.3f}'}")
    lines.append(f"nearest-training RMSE: samples {m['sample_nearest_rmse_hu']:.1f} HU (min {m['sample_nearest_rmse_hu_min']:.1f}), "
                 f"held-out phantoms {m['held_out_phantom_nearest_rmse_hu']:.1f} HU, ratio {m['ratio']:.2f} "
                 f"({m['training_volumes_searched']} training volumes)")
    lines.append(f"time per volume {f['time_per_volume_s']:.1f} s, {f['network_evaluations_per_volume']:.0f} network evaluations, "
                 f"{f['device']} ({f['torch_threads']} threads)")
    return "\n".join(lines)
