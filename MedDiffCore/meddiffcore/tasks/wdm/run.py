"""Job runner ``wdm.generate``: new volumes (WDM) or a translated volume (cWDM, with a condition).

Every input is checked before sampling starts, so a bad job writes nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ...config import from_dict
from ...diffusion import SAMPLERS, get_sampler
from ...errors import BadInputError, ConfigError
from ...io.atomic import numbered_paths
from ...models import ModelCard, load_model
from ...nets import UNet, UNetConfig
from ...nets.wavelet import check_even_size
from . import conventions
from .config import NAME, WDMDiffusionConfig
from .data import check_grid, from_unit_range, to_unit_range

#: ``--sampler authors``: the sampler the model card records as the authors' (``task_config.authors_sampler``).
AUTHORS = "authors"


def load_for_inference(ref: str, device: torch.device) -> tuple[ModelCard, UNet, WDMDiffusionConfig]:
    card, tensors = load_model(ref, task=NAME)
    net = UNet(UNetConfig.from_dict(card.network))
    net.load_state_dict(tensors)
    return card, net.to(device).eval(), from_dict(WDMDiffusionConfig, card.diffusion, where="diffusion")


def _size(job, card: ModelCard) -> tuple[int, int, int]:
    size = tuple(int(n) for n in (job.params.get("size") or card.task_config["size"]))
    if len(size) != 3 or min(size) < 2:
        raise ConfigError(f"size must be 3 positive voxel counts (z, y, x), got {size}", "e.g. --param size=[64,64,64]")
    check_even_size(size, "requested volume size")
    multiple = UNetConfig.from_dict(card.network).size_multiple
    for n, m in zip(size, multiple):
        if (n // 2) % m:
            raise BadInputError(f"size {'x'.join(map(str, size))} gives subbands not divisible by {m}",
                                f"use sizes that are multiples of {2 * m}")
    return size


def _sampling(job, card: ModelCard, diffusion: WDMDiffusionConfig) -> tuple[WDMDiffusionConfig, str, int]:
    """(diffusion settings, sampler, steps) of a job. ``sampler="authors"`` is the sampler the model's
    authors published (the card's ``authors_sampler``: for WDM 1000 ancestral steps with variance beta_t)."""
    sampler = job.params.get("sampler") or diffusion.sampler
    steps = job.params.get("steps")
    if sampler == AUTHORS:
        authors = card.task_config.get("authors_sampler")
        if not authors:
            raise ConfigError(f"model '{card.name}' records no authors' sampler",
                              f"pick one of {', '.join(SAMPLERS)} with --sampler")
        diffusion = dataclasses.replace(diffusion, spacing=authors.get("spacing", diffusion.spacing),
                                        variance=authors.get("variance", diffusion.variance))
        sampler, steps = authors["sampler"], steps or authors["steps"]
    get_sampler(sampler)
    steps = int(steps or diffusion.sampling_steps)
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}", "e.g. --steps 50")
    if job.params.get("variance"):
        diffusion = dataclasses.replace(diffusion, variance=str(job.params["variance"]))
    return diffusion, sampler, steps


def _conditions(job, card: ModelCard) -> list:
    """The condition volumes a cWDM job names, in the card's order (``conditions``), or the one ``condition``."""
    from ...io import read_volume

    names = card.task_config.get("conditions")
    given = {k: v for k, v in job.inputs.items() if v}
    if not names:
        return [read_volume(given["condition"])] if "condition" in given else []
    missing = [n for n in names if n not in given]
    if missing:
        how = " ".join(f"--condition {n}=PATH" for n in names)
        raise BadInputError(f"model '{card.name}' synthesises {card.task_config.get('target', 'a contrast')} from "
                            f"{', '.join(names)}; missing: {', '.join(missing)}", f"pass {how}")
    return [read_volume(given[n]) for n in names]


def run_generate(job, reporter) -> dict[str, str]:
    """Job ``wdm.generate``: params samples, steps, sampler (or "authors"), variance, spacing (x, y, z mm),
    size; inputs condition (cWDM; published cWDM models name theirs, e.g. t1n, t2w, t2f)."""
    from ...devices import resolve_device
    from ...io import Volume, write_volume
    from ...preview import write_preview

    job.require_model()
    job.require_output("volume")
    samples = job.sample_count()
    device = resolve_device(job.device)
    card, net, diffusion = load_for_inference(job.model, device)
    tc = card.task_config
    window = tuple(tc["intensity_window"])
    conditional = bool(tc.get("conditional", False))
    given_condition = any(k == "condition" or k in (tc.get("conditions") or ()) for k in job.inputs)
    if conditional and not given_condition:
        raise BadInputError(f"model '{card.name}' translates a condition volume and none was given",
                            "pass --condition VOLUME (the source contrast)")
    if given_condition and not conditional:
        raise BadInputError(f"model '{card.name}' is unconditional and takes no condition volume",
                            "drop --condition, or pick a cWDM model")
    diffusion, sampler, steps = _sampling(job, card, diffusion)
    conditions = _conditions(job, card)
    placement = resampled = None
    condition = None
    if tc.get("conditions"):
        size = _size(job, card)
        condition, placement, resampled = conventions.prepare_conditions(conditions, {**tc, "size": list(size)})
    elif conditions:
        check_grid(conditions[0].shape, tuple(tc["size"]), f"condition volume '{job.inputs['condition']}'")
        size = conditions[0].shape
        array = to_unit_range(conditions[0].array, window)
        condition = torch.from_numpy(array)[None, None]
    else:
        size = _size(job, card)
    spacing = tuple(job.params.get("spacing") or tc.get("spacing_mm") or (1.0, 1.0, 1.0))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"spacing must be 3 positive numbers (x, y, z mm), got {spacing}", "e.g. --spacing 1 1 1")
    paths = numbered_paths(Path(job.outputs["volume"]), samples)

    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    if condition is not None:
        condition = condition.expand(samples, *condition.shape[1:]).contiguous()
    reporter.log(f"WDM: {samples} sample(s) of {'x'.join(map(str, size))} with {sampler}, {steps} steps on {device}")
    net_size = tuple(conventions.to_network(torch.empty(size), tc).shape)
    images = torch.cat([
        _one(net, diffusion, net_size, condition, i, steps, sampler, generator, reporter) for i in range(samples)
    ])
    if tc.get("conditions"):
        first = conditions[0]
        volumes = [first.with_array(conventions.finish_translation(image, placement, resampled, first.shape, tc),
                                    metadata={}) for image in images]
    else:
        arrays = from_unit_range(conventions.from_network(images[:, 0], tc).float().cpu().numpy(), window)
        if conditions:
            volumes = [conditions[0].with_array(a, metadata={}) for a in arrays]
        else:
            volumes = [Volume.from_spacing(a, spacing_mm=spacing) for a in arrays]
    for volume, path in zip(volumes, paths):
        write_volume(volume, path)
    outputs = {"volume": str(paths[0])} if samples == 1 else {f"volume_{i + 1}": str(p) for i, p in enumerate(paths)}
    if job.outputs.get("preview"):
        write_preview(job.outputs["preview"], volumes)
        outputs["preview"] = job.outputs["preview"]
    return outputs


def _one(net, diffusion, size, condition, index, steps, sampler, generator, reporter) -> torch.Tensor:
    """One sample at a time: peak memory of one volume, progress over all of them."""
    from .model import generate

    def callback(info) -> None:
        reporter.progress(f"sampling {index + 1}", int(info["i"]) + 1, int(info["total"]))

    cond = None if condition is None else condition[index:index + 1]
    return generate(net, diffusion, size, 1, condition=cond, steps=steps, sampler=sampler, generator=generator,
                    callback=callback).cpu()


__all__ = ["load_for_inference", "run_generate"]
