"""Job runner ``wdm.generate``: new volumes (WDM) or a translated volume (cWDM, with a condition).

Every input is checked before sampling starts, so a bad job writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import from_dict
from ...diffusion import get_sampler
from ...errors import BadInputError, ConfigError
from ...io.atomic import numbered_paths
from ...models import ModelCard, load_model
from ...nets import UNet, UNetConfig
from ...nets.wavelet import check_even_size
from .config import NAME, WDMDiffusionConfig
from .data import check_grid, from_unit_range, to_unit_range


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


def run_generate(job, reporter) -> dict[str, str]:
    """Job ``wdm.generate``: params samples, steps, sampler, spacing (x, y, z mm), size; inputs condition (cWDM)."""
    from ...devices import resolve_device
    from ...io import Volume, read_volume, write_volume
    from ...preview import write_preview

    job.require_model()
    job.require_output("volume")
    samples = job.sample_count()
    device = resolve_device(job.device)
    card, net, diffusion = load_for_inference(job.model, device)
    window = tuple(card.task_config["intensity_window"])
    conditional = bool(card.task_config.get("conditional", False))
    condition_path = job.inputs.get("condition")
    condition_volume = None
    if conditional and not condition_path:
        raise BadInputError(f"model '{card.name}' translates a condition volume and none was given",
                            "pass --condition VOLUME (the source contrast)")
    if condition_path and not conditional:
        raise BadInputError(f"model '{card.name}' is unconditional and takes no condition volume",
                            "drop --condition, or pick a cWDM model")
    if condition_path:
        condition_volume = read_volume(condition_path)
        check_grid(condition_volume.shape, tuple(card.task_config["size"]), f"condition volume '{condition_path}'")
        size = condition_volume.shape
    else:
        size = _size(job, card)
    spacing = tuple(job.params.get("spacing") or card.task_config.get("spacing_mm") or (1.0, 1.0, 1.0))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"spacing must be 3 positive numbers (x, y, z mm), got {spacing}", "e.g. --spacing 1 1 1")
    steps = int(job.params.get("steps") or diffusion.sampling_steps)
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}", "e.g. --steps 50")
    sampler = job.params.get("sampler") or diffusion.sampler
    get_sampler(sampler)
    paths = numbered_paths(Path(job.outputs["volume"]), samples)

    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    condition = None
    if condition_volume is not None:
        array = to_unit_range(condition_volume.array, window)
        condition = torch.from_numpy(array)[None, None].expand(samples, 1, *array.shape).contiguous()
    reporter.log(f"WDM: {samples} sample(s) of {'x'.join(map(str, size))} with {sampler}, {steps} steps on {device}")
    images = torch.cat([
        _one(net, diffusion, size, condition, i, steps, sampler, generator, reporter) for i in range(samples)
    ])
    arrays = from_unit_range(images[:, 0].float().cpu().numpy(), window)
    if condition_volume is not None:
        volumes = [condition_volume.with_array(a, metadata={}) for a in arrays]
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
