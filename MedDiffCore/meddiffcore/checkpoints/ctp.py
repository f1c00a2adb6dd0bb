"""The CTP temporal-inpainting checkpoint (Bae et al., MICCAI 2024) as a MedDiff ``ctp`` model.

The released file is the trainer's ``{'step', 'model', 'ema', 'lr'}``: ``model`` and
``ema`` are state dicts of ``DataParallel(GaussianDiffusion)``, the UNet under
``module.denoise_fn.`` and the 12 schedule tables (``module.betas`` ...) beside it.
The authors sample with ``ema``, so the import takes ``ema`` and never ``model``;
the noise schedule is read from ``ema``'s ``betas`` (it must be the linear
1e-6 .. 1e-2 table of the release, its length is T) and checked against its
``alphas_cumprod``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..config import to_dict
from ..errors import ConfigError, ModelError
from ..models import ModelCard
from ..nets.ctp_unet import CTPUNet, CTPUNetConfig, from_reference, reference_shapes, released_config
from .container import check_tensors, load_container, require_mapping

PAPER = ("Bae, Tong, Chen. Conditional Diffusion Model for Versatile Temporal Inpainting in 4D Cerebral CT "
         "Perfusion Imaging. MICCAI 2024, LNCS pp. 67-77 (doi:10.1007/978-3-031-72069-7_7)")
CODE = "https://github.com/baejustin/CTP_Inpainting_Diffusion (634736a)"
NETWORK_PREFIX = "module.denoise_fn."
SCHEDULE_PREFIX = "module."
SCHEDULE_TABLES = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                   "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                   "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                   "posterior_mean_coef1", "posterior_mean_coef2")

#: ``card.network["architecture"]`` of the authors' UNet (tasks/ctp builds it instead of meddiffcore's UNet).
ARCHITECTURE = "ctp_bae2024"

#: The authors' sampler: ancestral over every one of the 1500 training steps, x0 clamped to [-1, 1],
#: posterior variance. ``meddiff inpaint --sampler authors`` runs it.
AUTHORS_SAMPLER = {"sampler": "ancestral", "steps": 1500, "variance": "small", "clip_x0": [-1.0, 1.0]}

#: The one release: 8 x 192 x 192 slabs, frames at 1 s, window WL 40 / WW 80.
RELEASES = {"bae2024": "ctp-bae2024"}
RELEASED_AS = "the EMA weights in the trainer's model-<n>.pt (HKUST SharePoint folder with the sample data)"


def read_schedule(tables: Mapping[str, Any], path: str | Path) -> tuple[int, float, float]:
    """(T, beta_start, beta_end) of the file's linear beta table, or a ModelError if it is not one."""
    betas = tables.get(SCHEDULE_PREFIX + "betas")
    if not isinstance(betas, Tensor) or betas.ndim != 1 or betas.numel() < 2:
        raise ModelError(f"'{path}': 'ema' has no beta table ('module.betas')",
                         "is this the CTP trainer's model-<n>.pt (the file holds 'ema' with module.betas)?")
    b = betas.double()
    n, start, end = b.numel(), float(b[0]), float(b[-1])
    line = np.linspace(start, end, n)
    if np.abs(b.numpy() - line).max() > 1e-6 * max(abs(end), 1e-12):
        raise ModelError(f"'{path}': the beta table is not linear from {start:g} to {end:g}",
                         "only the authors' linear schedule imports")
    ab = tables.get(SCHEDULE_PREFIX + "alphas_cumprod")
    if isinstance(ab, Tensor):
        expect = np.cumprod(1.0 - line)
        if ab.shape != betas.shape or np.abs(ab.double().numpy() - expect).max() > 1e-5:
            raise ModelError(f"'{path}': alphas_cumprod does not follow from the betas",
                             "the file is damaged or was edited; download it again")
    return n, start, end


def read_checkpoint(path: Path, network: CTPUNetConfig) -> tuple[dict[str, Tensor], tuple[int, float, float],
                                                                   dict[str, Any]]:
    """(MedDiff tensors of the EMA network, the schedule (T, beta_start, beta_end), facts for the card)."""
    container = require_mapping(load_container(path), "the file", path, ("ema",))
    ema = require_mapping(container["ema"], "'ema'", path)
    unet = {k[len(NETWORK_PREFIX):]: v for k, v in ema.items() if k.startswith(NETWORK_PREFIX)}
    others = [k for k in ema if not k.startswith(NETWORK_PREFIX)
              and k[len(SCHEDULE_PREFIX):] not in SCHEDULE_TABLES]
    if others:
        unet.update({k: ema[k] for k in others})  # named as unexpected by check_tensors
    with torch.device("meta"):
        net = CTPUNet(network)
    check_tensors(reference_shapes(net), unet, f"{path}: 'ema'", "this CTP UNet")
    schedule = read_schedule(ema, path)
    facts = {"step": int(container["step"]) if isinstance(container.get("step"), int) else None}
    return from_reference(CTPUNet(network), unet), schedule, facts


def build_card(network: CTPUNetConfig, schedule: tuple[int, float, float], name: str,
               source: dict[str, Any]) -> ModelCard:
    from ..diffusion import NoiseSchedule
    from ..tasks.ctp.config import MAX_GAP_S, SLAB_SLICES, WINDOW_LEVEL_HU, WINDOW_WIDTH_HU, CTPDiffusionConfig

    steps, start, end = schedule
    noise = NoiseSchedule("sr3_linear", steps, beta_start=start, beta_end=end, continuous=True)
    diffusion = CTPDiffusionConfig(schedule=noise.to_dict(), prediction="eps", loss="l1", target="frame",
                                   clip_x0=True, estimate="sample", sampler="dpmpp_2m", sampling_steps=50)
    conventions = {
        "parameterisation": "eps (the network predicts the noise of the target frame itself, not a residual)",
        "time_input": "SR3 noise level gamma = sqrt(alpha_bar_t), used as is (no x1000)",
        "schedule": f"linear betas {start:g} .. {end:g}, T = {steps}",
        "channels": "network input [left acquired frame, noisy target, right acquired frame]",
        "local_context": "((t - t_left - 1) / 6, (t_right - t - 1) / 6) in seconds (the authors' max_tr 8)",
        "global_context": "one-hot rising / around the peak / falling relative to the estimated peak frame (argmax "
                          "of the whole-volume mean over the acquired frames; the mean of the two largest when "
                          "frames are more than 2 s apart)",
        "window": "HU clipped to [0, 80] and mapped to [-1, 1]; output (x + 1) * 40",
        "mask": "tissue mask: time-summed windowed signal > 0, objects under 6000 voxels removed, holes filled",
        "frames": "each missing frame from its two bracketing acquired frames, independently",
        "clipping": "each x0 estimate clamped to [-1, 1]",
    }
    return ModelCard(
        name=name, task="ctp",
        description="CTP temporal inpainting, 8-slice 192x192 slabs at 1 s (Bae et al. 2024; authors' released "
                    "EMA weights)",
        network={"architecture": ARCHITECTURE, **network.to_dict()}, diffusion=to_dict(diffusion),
        task_config={"window_level_hu": WINDOW_LEVEL_HU, "window_width_hu": WINDOW_WIDTH_HU,
                     "slab_slices": SLAB_SLICES, "max_gap_s": MAX_GAP_S, "in_plane": [192, 192],
                     "peak_rule": "authors", "tissue_mask": "authors", "conventions": conventions,
                     "authors_sampler": dict(AUTHORS_SAMPLER, steps=steps)},
        training={"paper": PAPER, "code": CODE, "released_as": RELEASED_AS, "iterations": 600_000,
                  "weights": "EMA (decay 0.995, every 10 steps from step 2000)", **source},
    )


def import_files(fmt: str, paths: list[Path], variant: str, name: str | None, overrides: Mapping[str, Any],
                 source: dict[str, Any]) -> tuple[ModelCard, dict[str, Tensor]]:
    """(card, tensors) of the CTP trainer's checkpoint file."""
    if len(paths) != 1:
        raise ConfigError(f"a ctp model is one file, got {len(paths)}", "give the one model-<n>.pt file")
    network = CTPUNetConfig.from_dict({**released_config().to_dict(), **overrides})
    tensors, schedule, facts = read_checkpoint(paths[0], network)
    return build_card(network, schedule, name or RELEASES[variant], {**source, **facts}), tensors
