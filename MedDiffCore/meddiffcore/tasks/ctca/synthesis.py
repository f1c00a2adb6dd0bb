"""Label map -> CT: the low-resolution stage (whole volume) and the high-resolution patch stage.

Both stages sample in model units ([-1, 1] for the HU window of the card) on a
synthesis grid (:mod:`.grid`) and the result is resampled back onto the label
map's own grid and written as int16 HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ...diffusion import get_sampler, initial_noise, network_evaluations
from ...errors import ConfigError
from ...io import Volume
from .config import hu_to_model, model_to_hu
from .grid import resample, resample_labels, synthesis_grid
from .model import CTCAModel, PatchCondition, condition
from .patches import PatchedDenoiser, choose_patching


@dataclass
class SynthesisSettings:
    """How to sample. ``guidance``: 1 = the conditional model alone (one network pass per step), 0 = the
    unconditional model, > 1 = stronger adherence to the labels (two passes per step); never switched off."""

    steps: int = 25
    sampler: str = "dpmpp_2m"
    guidance: float = 1.0
    seed: int | None = None
    overlap_fraction: float = 0.25
    """High-resolution stage: fraction of a patch shared with each neighbour."""

    def __post_init__(self) -> None:
        get_sampler(self.sampler)
        if int(self.steps) != self.steps or self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"steps must be a whole number in 1..1000, got {self.steps!r}", "25 is a good default")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise ConfigError(f"guidance must be a number >= 0, got {self.guidance!r}",
                              "1 = conditional model alone, 0 = unconditional, 2-3 = stronger label adherence")

    @classmethod
    def of_model(cls, model: CTCAModel, steps: int | None = None, sampler: str | None = None,
                 guidance: float | None = None, seed: int | None = None) -> "SynthesisSettings":
        """What is asked (None: not asked) over the defaults of ``model``'s card: each stage samples with its own
        card's defaults (the high-resolution stage needs far fewer steps than the low-resolution one)."""
        d = model.card.diffusion
        return cls(steps=steps or d.get("steps", 25), sampler=sampler or d.get("sampler", "dpmpp_2m"),
                   guidance=float(d.get("guidance", 1.0) if guidance is None else guidance), seed=seed)


@dataclass
class SynthesisRecord:
    """What was done, for the output's metadata and the benchmarks."""

    network_evaluations: int = 0
    stages: list[dict] = field(default_factory=list)


def _sample(denoiser, shape, segmap: torch.Tensor, settings: SynthesisSettings, schedule, generator, device, callback):
    """``schedule``: anything with ``sampling_sigmas(steps)`` (a noise schedule, or a CTCAModel: its card's start)."""
    sigmas = schedule.sampling_sigmas(settings.steps).to(device)
    x = initial_noise(shape, sigmas, generator, device=device)
    return get_sampler(settings.sampler)(denoiser, x, sigmas, callback=callback, generator=generator, cond={"segmap": segmap})


def low_resolution(model: CTCAModel, labels: Volume, settings: SynthesisSettings, generator, device,
                   callback: Callable | None = None, record: SynthesisRecord | None = None,
                   max_batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample the LR stage on a grid covering ``labels``; returns (ijk_to_ras, (D, H, W) array in [-1, 1]).

    A grid larger than the model's field of view (a whole-heart map with the aorta and pulmonary artery) is
    sampled as ONE volume whose every denoising step runs the network on overlapping windows of the model's own
    size and resolution and blends them (:class:`.patches.PatchedDenoiser`, as the high-resolution stage does),
    so neighbouring windows agree at every step and no seam forms."""
    ijk_to_ras, shape = synthesis_grid(labels, model.spacing_mm, model.net.config.size_multiple)
    lab = resample_labels(labels.array, labels.ijk_to_ras, ijk_to_ras, shape)
    segmap = condition(lab, "lr")[None].to(device)
    denoiser = model.denoiser(settings.guidance)
    stage = {"stage": "lr", "grid": list(shape), "spacing_mm": model.spacing_mm}
    window = tuple(min(w, n) for w, n in zip(model.shape, shape))
    if window != tuple(shape):
        overlap = tuple(max(1, int(round(w * settings.overlap_fraction))) for w in window)
        _, auto_batch = choose_patching(window, window, model.net.config.size_multiple, device,
                                        activation_bytes_per_voxel(model, settings.guidance))
        denoiser = PatchedDenoiser(denoiser, window, overlap, max_batch or auto_batch)
        stage.update(window=list(window), overlap=list(overlap), windows=len(denoiser.regions(shape)))
    x = _sample(denoiser, (1, 1) + shape, segmap, settings, model.schedule, generator, device, callback)
    if record is not None:
        record.network_evaluations += network_evaluations(settings.sampler, settings.steps)
        if isinstance(denoiser, PatchedDenoiser):
            stage["network_calls"] = denoiser.calls
        record.stages.append(stage)
    return ijk_to_ras, x[0, 0].float().cpu().numpy()


def to_int16_hu(x: np.ndarray, window) -> np.ndarray:
    """Model units -> HU rounded and clipped to the CT range, in place on the float32 slab ``x``."""
    hu = model_to_hu(x, window, out=x)
    np.round(hu, out=hu)
    return np.clip(hu, -1024, 3071, out=hu)


def activation_bytes_per_voxel(model: CTCAModel, guidance: float) -> float:
    """A generous estimate of inference memory per voxel of one patch (for choosing the patch size)."""
    c = model.net.config
    per = 4.0 * (6 * c.base_channels * c.channel_mult[0] + 3 * c.spade_hidden + c.spade_channels + 4)
    return per * (1 if guidance in (0.0, 1.0) else 2)


def high_resolution(model: CTCAModel, labels: Volume, lr_ijk_to_ras: np.ndarray, lr: np.ndarray,
                    settings: SynthesisSettings, generator, device, callback: Callable | None = None,
                    record: SynthesisRecord | None = None, patch=None, max_batch: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sample the patch stage on a fine grid covering ``labels``, conditioned on the LR result resampled onto
    that grid (voxel-aligned) and on position channels; all patches are denoised together and blended. The
    condition is built for each patch batch (:class:`.model.PatchCondition`), never for the whole grid."""
    ijk_to_ras, shape = synthesis_grid(labels, model.spacing_mm, model.net.config.size_multiple)
    lab = resample_labels(labels.array, labels.ijk_to_ras, ijk_to_ras, shape)
    reference = resample(lr, lr_ijk_to_ras, ijk_to_ras, shape, order=1, mode="nearest")
    segmap = PatchCondition(lab, reference, device)  # built patch by patch: never the whole 13-channel map
    trained = tuple(model.card.task_config.get("crop") or model.shape)
    auto_patch, auto_batch = choose_patching(shape, trained, model.net.config.size_multiple, device,
                                             activation_bytes_per_voxel(model, settings.guidance))
    patch = tuple(patch or auto_patch)
    overlap = tuple(max(1, int(round(p * settings.overlap_fraction))) for p in patch)
    patched = PatchedDenoiser(model.denoiser(settings.guidance), patch, overlap, max_batch or auto_batch)
    x = _sample(patched, (1, 1) + shape, segmap, settings, model, generator, device, callback)
    if record is not None:
        record.network_evaluations += network_evaluations(settings.sampler, settings.steps)
        record.stages.append({"stage": "patch", "model": model.card.name, "grid": list(shape),
                              "spacing_mm": model.spacing_mm, "patch": list(patch), "overlap": list(overlap),
                              "patches": len(patched.regions(shape)), "network_calls": patched.calls,
                              "sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance})
    return ijk_to_ras, model.to_image(x[0, 0].float().cpu().numpy(), reference)


def synthesize(labels: Volume, model: CTCAModel, settings: SynthesisSettings, *, hr_model: CTCAModel | None = None,
               device: torch.device | str = "cpu", generator: torch.Generator | None = None,
               callback: Callable | None = None, record: SynthesisRecord | None = None,
               hr_settings: SynthesisSettings | None = None) -> Volume:
    """One synthetic CT (int16 HU) on exactly ``labels``' grid. ``labels.array`` holds values of our table.
    ``hr_settings``: how the high-resolution stage samples (default: ``settings``)."""
    device = torch.device(device)
    with torch.no_grad():
        grid, x = low_resolution(model, labels, settings, generator, device, callback, record)
        window = model.hu_window
        if hr_model is not None:
            if tuple(hr_model.hu_window) != tuple(window):
                x = hu_to_model(model_to_hu(x, window), hr_model.hu_window)
                window = hr_model.hu_window
            grid, x = high_resolution(hr_model, labels, grid, x, hr_settings or settings, generator, device, callback,
                                      record)
    return Volume(on_label_grid(x, grid, labels, window), labels.ijk_to_ras.copy(),
                  {"guidance": settings.guidance, "steps": settings.steps, "sampler": settings.sampler, "seed": settings.seed})


def on_label_grid(x: np.ndarray, grid: np.ndarray, labels: Volume, window) -> np.ndarray:
    """A stage's result (model units on its synthesis ``grid``) as int16 HU on ``labels``' own grid."""
    return resample(x, grid, labels.ijk_to_ras, labels.shape, order=1, mode="nearest", dtype=np.int16,
                    convert=lambda slab: to_int16_hu(slab, window))  # slab by slab, straight into int16
