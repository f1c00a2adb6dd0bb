"""SR cascade evaluation: each super-resolution stage against bicubic and Lanczos upscaling
of the same low-resolution inputs (PSNR, SSIM), and diversity of generated slices."""

from __future__ import annotations

import numpy as np
import torch

from ...metrics import psnr, ssim
from .model import StageSpec, sample_stage
from .resample import downsample_area, upsample_interpolate


def evaluate_stage(net, spec: StageSpec, truth: torch.Tensor, *, steps: int | None = None,
                   generator: torch.Generator | None = None) -> dict[str, float]:
    """``truth``: (N, 1, size, size) held-out high-resolution slices in [-1, 1]; figures in that unit (range 2)."""
    low = downsample_area(truth, spec.size // spec.low_size)
    out = sample_stage(net, spec, truth.shape[0], low=low, steps=steps, generator=generator)
    candidates = {
        "model": out[:, 0].cpu().numpy(),
        "bicubic": np.clip(upsample_interpolate(low[:, 0].cpu().numpy(), spec.size, "bicubic"), -1, 1),
        "lanczos": np.clip(upsample_interpolate(low[:, 0].cpu().numpy(), spec.size, "lanczos"), -1, 1),
    }
    ref = truth[:, 0].cpu().numpy()
    figures: dict[str, float] = {"slices": int(truth.shape[0])}
    for name, images in candidates.items():
        figures[f"psnr_{name}"] = float(np.mean([psnr(r, x, 2.0) for r, x in zip(ref, images)]))
        figures[f"ssim_{name}"] = float(np.mean([ssim(r, x, 2.0) for r, x in zip(ref, images)]))
    return figures



#: Phantom seeds of held-out slices (training uses train.seed * 1_000_003 + index).
HELD_OUT_SEED = 900_000_000


def ms_ssim_diversity(images: np.ndarray, data_range: float = 2.0) -> float:
    """Mean MS-SSIM over all pairs of (N, H, W) samples; lower means more diverse."""
    from ...metrics import ms_ssim

    n = len(images)
    values = [ms_ssim(images[i], images[j], data_range) for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(values))


def evaluate_model(ref: str, *, samples: int = 4, slices: int = 8, steps: int | None = None, device: str = "auto",
                   seed: int = 0, reporter=None) -> dict:
    """Every SR stage on held-out phantom slices vs bicubic/Lanczos; diversity of generated cascade samples."""
    from ...devices import resolve_device
    from .cascade import load_stages
    from .data import to_unit_range
    from .phantoms import brain_slice

    dev = resolve_device(device)
    card, stages = load_stages(ref, dev)
    window = tuple(card.task_config["intensity_window"])
    generator = torch.Generator(device=dev).manual_seed(seed)
    figures: dict = {"model": card.name, "held_out_slices": slices}
    for name, (spec, net) in stages.items():
        if not spec.is_super_resolution:
            continue
        truth = torch.stack([torch.from_numpy(to_unit_range(brain_slice(spec.size, HELD_OUT_SEED + i), window))[None]
                             for i in range(slices)]).to(dev)
        figures[name] = {"input_px": spec.low_size, "output_px": spec.size,
                         **evaluate_stage(net, spec, truth, steps=steps, generator=generator)}
        if reporter is not None:
            reporter.log(f"stage {name}: {figures[name]}")
    if "base" in stages and samples >= 2:
        images = None
        for name, (spec, net) in stages.items():
            images = sample_stage(net, spec, samples, low=images, steps=steps, generator=generator)
        figures["cascade_samples"] = samples
        figures["cascade_output_px"] = int(images.shape[-1])
        figures["ms_ssim_diversity"] = ms_ssim_diversity(images[:, 0].cpu().numpy())
        real = np.stack([to_unit_range(brain_slice(images.shape[-1], HELD_OUT_SEED + i), window) for i in range(samples)])
        figures["ms_ssim_diversity_real"] = ms_ssim_diversity(real)
    return figures
