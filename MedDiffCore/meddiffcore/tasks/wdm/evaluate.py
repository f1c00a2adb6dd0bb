"""WDM evaluation: sample diversity (MS-SSIM over pairs) and a 3D Fréchet distance to real volumes."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ...metrics import ms_ssim
from .features import FeatureExtractor, frechet_distance, intensity_statistics


def ms_ssim_diversity(volumes: np.ndarray, data_range: float = 2.0) -> float:
    """Mean MS-SSIM over all unordered pairs of (N, ...) samples; lower means more diverse (WDM's protocol)."""
    pairs = list(itertools.combinations(range(len(volumes)), 2))
    if not pairs:
        raise ValueError("diversity needs at least 2 samples")
    return float(np.mean([ms_ssim(volumes[i], volumes[j], data_range) for i, j in pairs]))


def evaluate_generation(generated: torch.Tensor, real: torch.Tensor,
                        extractor: FeatureExtractor | None = None) -> dict[str, float]:
    """Figures for (N, 1, D, H, W) generated and real volumes in [-1, 1]."""
    extractor = extractor or intensity_statistics
    gen_np, real_np = generated[:, 0].float().numpy(), real[:, 0].float().numpy()
    return {
        "ms_ssim_diversity": ms_ssim_diversity(gen_np),
        "ms_ssim_diversity_real": ms_ssim_diversity(real_np),
        "frechet_distance": frechet_distance(extractor(real).numpy().astype(np.float64),
                                             extractor(generated).numpy().astype(np.float64)),
        "samples": int(generated.shape[0]),
        "real": int(real.shape[0]),
    }


#: Phantom seeds of held-out volumes: far from the training seeds (train.seed * 1_000_003 + index).
HELD_OUT_SEED = 900_000_000


def held_out_phantoms(card, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T1-like, T2-like) held-out phantom volumes (N, 1, D, H, W) in [-1, 1] on the model's grid."""
    from .data import to_unit_range
    from .phantoms import brain_pair

    size, window = tuple(card.task_config["size"]), tuple(card.task_config["intensity_window"])
    pairs = [brain_pair(size, HELD_OUT_SEED + i) for i in range(count)]
    t1 = torch.stack([torch.from_numpy(to_unit_range(a, window))[None] for a, _ in pairs])
    t2 = torch.stack([torch.from_numpy(to_unit_range(b, window))[None] for _, b in pairs])
    return t1, t2


def real_volumes(folder: str, card) -> torch.Tensor:
    from ...errors import BadInputError
    from .config import WDMDataConfig
    from .data import FolderVolumes

    data = WDMDataConfig(source="folder", folder=folder, size=tuple(card.task_config["size"]),
                         intensity_window=tuple(card.task_config["intensity_window"]))
    items = FolderVolumes(data)
    if len(items) < 2:
        raise BadInputError(f"'{folder}' holds {len(items)} volume(s)", "give at least 2 real volumes")
    return torch.stack([items[i]["image"] for i in range(len(items))])


def evaluate_model(ref: str, *, samples: int = 8, steps: int | None = None, real_folder: str | None = None,
                   extractor: FeatureExtractor | None = None, device: str = "auto", seed: int = 0,
                   reporter=None) -> dict:
    """Generate ``samples`` volumes and measure them; cWDM also gets PSNR/SSIM against the true target contrast."""
    from ...devices import resolve_device
    from ...metrics import psnr, ssim
    from .model import generate
    from .run import load_for_inference

    dev = resolve_device(device)
    card, net, diffusion = load_for_inference(ref, dev)
    size = tuple(card.task_config["size"])
    conditional = bool(card.task_config.get("conditional", False))
    t1, t2 = held_out_phantoms(card, samples)
    real = real_volumes(real_folder, card) if real_folder else (t2 if conditional else t1)
    generator = torch.Generator(device=dev).manual_seed(seed)
    outs = []
    for i in range(samples):
        cond = t1[i:i + 1] if conditional else None
        outs.append(generate(net, diffusion, size, 1, condition=cond, steps=steps, generator=generator).cpu())
        if reporter is not None:
            reporter.progress("sampling", i + 1, samples)
    generated = torch.cat(outs)
    figures = {"model": card.name, "steps": steps or diffusion.sampling_steps,
               "real_source": real_folder or "held-out phantoms",
               "feature_extractor": getattr(extractor, "__name__", "medicalnet") if extractor else "intensity_statistics",
               **evaluate_generation(generated, real, extractor)}
    if conditional:
        ref_np, gen_np = t2[:, 0].numpy(), generated[:, 0].numpy()
        figures["psnr_translation"] = float(np.mean([psnr(r, g, 2.0) for r, g in zip(ref_np, gen_np)]))
        figures["ssim_translation"] = float(np.mean([ssim(r, g, 2.0) for r, g in zip(ref_np, gen_np)]))
    return figures
