"""TPDM checkpoints (Lee et al., ICCV 2023) as one MedDiff ``recon`` model per primary/auxiliary pair.

Each released ``checkpoint.pth`` is score-SDE's ``{'model', 'ema', 'optimizer', 'step'}``:
``model`` is the state dict of ``DataParallel(NCSNpp)`` (``module.`` prefix, with
the float64 sigma table and the Gaussian-Fourier frequencies ``all_modules.0.W``),
``ema['shadow_params']`` an unnamed list holding the EMA of every *trainable*
parameter in ``parameters()`` order. The authors sample with the EMA weights, so
the import does the same: the shadow list is assigned by position
(:func:`reference_parameters` gives the order), ``W`` comes from ``model`` (it is
not trainable), and the noise schedule is read from the sigma table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..config import to_dict
from ..errors import ConfigError, ModelError
from ..models import ModelCard
from ..nets.attention import AttentionBlock
from ..nets.ncsnpp import FIRConvDownsample, NCSNpp, NCSNppConfig, ResBlockPP
from .container import check_tensors, load_container, require_mapping

PAPER = ("Lee, Chung, Park, Park, Ryu, Ye. Improving 3D Imaging with Pre-Trained Perpendicular 2D Diffusion "
         "Models. ICCV 2023 (arXiv:2303.08440)")
CODE = "https://github.com/hyn2028/tpdm (5927141)"
PREFIX = "module."

_RES = {"norm1": "GroupNorm_0", "conv1": "Conv_0", "emb": "Dense_0", "norm2": "GroupNorm_1", "conv2": "Conv_1",
        "skip": "Conv_2"}


def _parts(module: nn.Module) -> list[tuple[str, str]]:
    """(reference name, MedDiff name) of the tensors of one module, in the reference's parameter order."""
    if isinstance(module, ResBlockPP):
        return [(f"{_RES[n.split('.')[0]]}.{n.split('.')[1]}", n) for n, _ in module.named_parameters()]
    if isinstance(module, FIRConvDownsample):
        return [("Conv2d_0.weight", "weight"), ("Conv2d_0.bias", "bias")]
    if isinstance(module, AttentionBlock):  # NIN_0..2 are q, k, v (weights stored (in, out)), NIN_3 the output
        return ([("GroupNorm_0.weight", "norm.weight"), ("GroupNorm_0.bias", "norm.bias")]
                + [(f"NIN_{j}.{p}", "") for j in range(4) for p in ("W", "b")])
    return [(n, n) for n, _ in module.named_parameters()] + [(n, n) for n, _ in module.named_buffers()]


def reference_parameters(net: NCSNpp) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the reference NCSNpp's parameters in ``parameters()`` order, ``all_modules.0.W`` first."""
    out = []
    for i, module in enumerate(net.reference_modules()):
        state = module.state_dict()
        for ref, ours in _parts(module):
            if ours:
                shape = tuple(state[ours].shape)
            else:  # attention NIN: W (C, C), b (C,)
                c = state["proj.weight"].shape[0]
                shape = (c, c) if ref.endswith(".W") else (c,)
            out.append((f"all_modules.{i}.{ref}", shape))
    return out


def from_reference(net: NCSNpp, ref: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MedDiff NCSNpp state dict from reference tensors named as :func:`reference_parameters` lists them."""
    names = {m: n for n, m in net.named_modules()}
    out: dict[str, Tensor] = {}
    for i, module in enumerate(net.reference_modules()):
        prefix, own = f"all_modules.{i}.", names[module]
        if isinstance(module, AttentionBlock):
            w = [ref[f"{prefix}NIN_{j}.W"].t() for j in range(4)]
            b = [ref[f"{prefix}NIN_{j}.b"] for j in range(4)]
            out.update({f"{own}.qkv.weight": torch.cat(w[:3]), f"{own}.qkv.bias": torch.cat(b[:3]),
                        f"{own}.proj.weight": w[3], f"{own}.proj.bias": b[3]})
        for theirs, ours in _parts(module):
            if ours:
                out[f"{own}.{ours}"] = ref[prefix + theirs]
    return {k: v.float().contiguous() for k, v in out.items()}


@dataclass(frozen=True)
class Schedule:
    """The VE noise table a checkpoint was trained with: ``sigmas = geomspace(sigma_max, sigma_min, n)``."""

    sigma_min: float
    sigma_max: float
    num_scales: int


def read_schedule(sigmas: Tensor, path: str | Path) -> Schedule:
    """The geometric schedule of score-SDE's ``sigmas`` buffer, or a ModelError if it is not one."""
    s = sigmas.double().reshape(-1)
    if s.numel() < 2 or not bool((s > 0).all()):
        raise ModelError(f"'{path}': the sigma table is not a list of positive noise levels",
                         "is this a score-SDE VE checkpoint?")
    schedule = Schedule(float(s[-1]), float(s[0]), s.numel())
    expected = torch.exp(torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), s.numel(),
                                        dtype=torch.float64))
    if not torch.allclose(s, expected, rtol=1e-6, atol=0):
        raise ModelError(f"'{path}': the sigma table is not geometric from {schedule.sigma_max:g} to "
                         f"{schedule.sigma_min:g}", "only VE-SDE checkpoints with score-SDE's geometric sigmas import")
    return schedule


def read_checkpoint(path: Path, network: NCSNppConfig) -> tuple[dict[str, Tensor], Schedule, dict[str, Any]]:
    """(MedDiff NCSNpp tensors with the EMA weights, the schedule, facts for the card) of one checkpoint.pth."""
    container = require_mapping(load_container(path), "the file", path, ("model", "ema"))
    model = require_mapping(container["model"], "'model'", path)
    ema = require_mapping(container["ema"], "'ema'", path, ("shadow_params",))
    raw = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in model.items()}
    if not isinstance(raw.get("sigmas"), Tensor):
        raise ModelError(f"'{path}': 'model' has no sigma table ('module.sigmas')", "is this a score-SDE checkpoint?")
    with torch.device("meta"):  # names and shapes only
        net = NCSNpp(network)
    order = reference_parameters(net)
    trainable = [(k, s) for k, s in order if k != "all_modules.0.W"]
    check_tensors({**dict(order), "sigmas": tuple(raw["sigmas"].shape)}, raw, f"{path}: 'model'", "this NCSN++")
    shadow = ema["shadow_params"]
    if not isinstance(shadow, (list, tuple)) or len(shadow) != len(trainable):
        count = len(shadow) if isinstance(shadow, (list, tuple)) else type(shadow).__name__
        raise ModelError(f"'{path}': the EMA holds {count} tensors, this NCSN++ has {len(trainable)} trainable "
                         "parameters", "check --variant, or --set the network fields that differ")
    for i, ((key, shape), value) in enumerate(zip(trainable, shadow)):
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelError(f"'{path}': EMA tensor {i} ({key}) is {got}, this NCSN++ needs {list(shape)}",
                             "the EMA list must follow the network's parameter order; check --set fields")
    ref = {key: value for (key, _), value in zip(trainable, shadow)}
    ref["all_modules.0.W"] = raw["all_modules.0.W"]
    facts = {"step": int(container["step"]) if isinstance(container.get("step"), int) else None,
             "ema_decay": float(ema["decay"]) if isinstance(ema.get("decay"), float) else None,
             "ema_updates": int(ema["num_updates"]) if isinstance(ema.get("num_updates"), int) else None}
    return from_reference(net, ref), read_schedule(raw["sigmas"], path), facts


@dataclass(frozen=True)
class TPDMRelease:
    """One released pair: which checkpoints are primary and auxiliary, their planes and data conventions."""

    name: str
    description: str
    files: tuple[str, str]
    task_config: dict[str, Any]


#: Fast mode for imported pairs: 50 network passes, the priors alternating, 5 CG iterations per step.
FAST_DEFAULTS = {"steps": 50, "K": 2.0, "cg_iters": 5, "eta": 0.85, "gamma": 0.0}

#: Planes are MedDiff axis strings over a (z, y, x) volume: (slice axis, image rows, image columns).
RELEASES: dict[str, TPDMRelease] = {
    "aapm": TPDMRelease(
        name="tpdm-aapm",
        description="TPDM AAPM low-dose CT priors, 256^2 slices: axial primary (XY) + coronal auxiliary (YZ) "
                    "(authors' released EMA weights)",
        files=("AAPM_256_CUBE_SCLIP_XY/checkpoint.pth", "AAPM_256_CUBE_SCLIP_YZ/checkpoint.pth"),
        task_config={
            "modality": "ct", "primary_plane": "zyx", "auxiliary_plane": "yxz",
            "intensity": {"unit": "HU", "offset": -1000.0, "scale": 1000.0,
                          "note": "(HU + 1000) / 1000, inferred from the AAPM sample's range (-0.009 .. 1.97)"},
            "defaults": {"tpdm": {"sampler": "authors", "steps": 2000, "K": 2.7, "snr": 0.16, "batch": 6,
                                  "lambda_by_views": {"36": 0.025}},
                         "fast": FAST_DEFAULTS},
        }),
    "bmr": TPDMRelease(
        name="tpdm-bmr",
        description="TPDM brain MRI priors at 1 mm, 256^2 slices: YZ primary + XY auxiliary, for z-axis "
                    "super-resolution and CS-MRI (authors' released EMA weights)",
        files=("BMR_ZSR_256_YZ/checkpoint.pth", "BMR_ZSR_256_XY/checkpoint.pth"),
        task_config={
            "modality": "mri", "primary_plane": "xyz", "auxiliary_plane": "zxy", "spacing_mm": [1.0, 1.0, 1.0],
            "intensity": {"unit": "a.u.", "offset": 0.0, "scale": 1.0, "normalize": "percentile99.5",
                          "note": "the authors' MRI normalisation is not published; MedDiff scales the 99.5th "
                                  "percentile to 0.8"},
            "defaults": {"tpdm": {"sampler": "authors", "steps": 2000, "K": 2.0, "snr": 0.16, "batch": 6,
                                  "lambda_by_factor": {"2": 1.0, "3": 2.0, "4": 3.0, "5": 4.0},
                                  "lambda_by_acceleration": {"8": 0.002, "24": 0.007, "48": 0.01}},
                         "fast": FAST_DEFAULTS},
        }),
}


def build_card(release: TPDMRelease, network: NCSNppConfig, schedule: Schedule, name: str,
               source: dict[str, Any]) -> ModelCard:
    from ..tasks.recon.config import DiffusionConfig
    from ..tasks.recon.model import NCSNPP_ARCHITECTURE

    diffusion = DiffusionConfig(parameterization="ve", sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max,
                                num_timesteps=schedule.num_scales)
    conventions = {
        "parameterisation": "VE-SDE score network, output already divided by sigma (net(x, sigma) = score)",
        "time_input": "sigma itself (the network embeds log sigma with Gaussian Fourier features)",
        "schedule": f"sigma(t) = {schedule.sigma_min:g} * ({schedule.sigma_max:g} / {schedule.sigma_min:g})^t, "
                    f"{schedule.num_scales} discrete levels",
        "data_range": "[0, 1] into the network (it maps to [-1, 1] itself)",
        "planes": "axis strings over MedDiff's (z, y, x): slice axis, image rows, image columns; the authors' "
                  "X, Y, Z are taken as x, y, z, with stored slices (rows, columns) as given",
        "clipping": "none while sampling",
    }
    return ModelCard(
        name=name, task="recon", description=release.description,
        network={"architecture": NCSNPP_ARCHITECTURE, **network.to_dict()}, diffusion=to_dict(diffusion),
        task_config={**release.task_config, "image_size": network.image_size, "min_size": network.size_multiple,
                     "conventions": conventions},
        training={"paper": PAPER, "code": CODE, "released_as": list(release.files),
                  "weights": "EMA (decay 0.999) of each checkpoint", **source},
    )


def import_files(fmt: str, paths: list[Path], variant: str, name: str | None, overrides: Mapping[str, Any],
                 source: dict[str, Any]) -> tuple[ModelCard, dict[str, Tensor]]:
    """(card, tensors) of a TPDM pair: ``paths`` = [primary checkpoint, auxiliary checkpoint]."""
    release = RELEASES[variant]
    if len(paths) != 2:
        raise ConfigError(f"a TPDM model is a pair of checkpoints, got {len(paths)} file(s)",
                          f"give the primary then the auxiliary: {release.files[0]} {release.files[1]}")
    network = NCSNppConfig.from_dict({**NCSNppConfig().to_dict(), **overrides})
    primary, schedule, facts_p = read_checkpoint(paths[0], network)
    auxiliary, schedule_a, facts_a = read_checkpoint(paths[1], network)
    if schedule != schedule_a:
        raise ModelError(f"the two checkpoints were trained with different noise tables ({schedule} vs {schedule_a})",
                         "give the primary and auxiliary checkpoints of the same release")
    tensors = {**{f"primary.{k}": v for k, v in primary.items()},
               **{f"auxiliary.{k}": v for k, v in auxiliary.items()}}
    source = {**source, "primary_step": facts_p["step"], "auxiliary_step": facts_a["step"],
              "ema_updates": [facts_p["ema_updates"], facts_a["ema_updates"]]}
    return build_card(release, network, schedule, name or release.name, source), tensors
