"""Job runners ``sr.generate`` (new slices through the whole cascade) and ``sr.upscale``
(super-resolve real low-resolution slices, slice by slice for a volume, geometry updated).

Every input is checked before sampling starts, so a bad job writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import BadInputError, ConfigError, ModelError
from ...io import VOLUME_WRITE_EXTENSIONS
from ...io.atomic import numbered_paths
from .cascade import load_stages
from .data import from_unit_range, intensity_mapping
from .model import AUTHORS, from_signed_range, sample_stage, to_signed_range

IMAGE_EXTENSIONS = (".png",)


def upscaled_ijk_to_ras(ijk_to_ras: np.ndarray, factor: int) -> np.ndarray:
    """The IJK-to-RAS matrix after upsampling I and J (x, y) by ``factor``, K (slices) unchanged.

    New pixel ``i'`` has its centre at old index ``(i' + 0.5) / factor - 0.5``: the
    new grid covers exactly the old pixels' extent, with spacing / factor.
    """
    shift = (1.0 / factor - 1.0) / 2.0
    resample = np.array([[1.0 / factor, 0, 0, shift], [0, 1.0 / factor, 0, shift], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.asarray(ijk_to_ras, dtype=np.float64) @ resample


def _check_output(path: str, allow_png: bool) -> None:
    name = Path(path).name.lower()
    allowed = VOLUME_WRITE_EXTENSIONS + (IMAGE_EXTENSIONS if allow_png else ())
    if not name.endswith(allowed):
        raise BadInputError(f"cannot write '{path}': unknown output format", f"use one of {', '.join(allowed)}")


def _steps_and_sampler(job) -> tuple[int | None, str | None]:
    from ...diffusion import get_sampler

    steps = job.params.get("steps")
    if steps is not None and int(steps) < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}", "e.g. --steps 50")
    sampler = job.params.get("sampler")
    if sampler and sampler != AUTHORS:
        get_sampler(sampler)
    return (int(steps) if steps else None), sampler


def run_generate(job, reporter) -> dict[str, str]:
    """Job ``sr.generate``: base samples, then every SR stage. Params samples, steps, sampler, spacing."""
    from ...devices import resolve_device
    from ...io import Volume, write_volume
    job.require_model()
    job.require_output("volume")
    if job.inputs.get("condition"):
        raise BadInputError("the SR cascade generates new slices and takes no condition",
                            "use `meddiff upscale --input IMAGE` to super-resolve an existing image")
    _check_output(job.outputs["volume"], allow_png=False)
    samples = job.sample_count()
    steps, sampler = _steps_and_sampler(job)
    device = resolve_device(job.device)
    card, stages = load_stages(job.model, device)
    if "base" not in stages:
        raise BadInputError(f"model '{card.name}' has no base generator stage",
                            "generate with a full cascade; a super-resolution-only model can only `upscale`")
    n_sr = len(stages) - 1
    pixel = float(card.task_config.get("pixel_mm", 1.0)) / 2**n_sr
    spacing = tuple(job.params.get("spacing") or (pixel, pixel, float(card.task_config.get("pixel_mm", 1.0))))
    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    images = None
    for stage, (spec, net) in stages.items():
        reporter.log(f"stage {stage}: {samples} x {spec.size}^2")
        images = sample_stage(net, spec, samples, low=images, steps=steps, sampler=sampler, generator=generator,
                              callback=reporter.step_callback(f"stage {stage}"))
    arrays = from_unit_range(to_signed_range(images[:, 0].cpu().numpy(), spec.model_range),
                             tuple(card.task_config["intensity_window"]))
    volumes = [Volume.from_spacing(a[None], spacing_mm=spacing) for a in arrays]
    paths = numbered_paths(Path(job.outputs["volume"]), samples)
    for volume, path in zip(volumes, paths):
        write_volume(volume, path)
    outputs = {"volume": str(paths[0])} if samples == 1 else {f"volume_{i + 1}": str(p) for i, p in enumerate(paths)}
    if job.outputs.get("preview"):
        from ...preview import Window, write_png

        window = Window.from_range(*card.task_config["intensity_window"])
        write_png(job.outputs["preview"], np.concatenate([window.to_uint8(a) for a in arrays], axis=1))
        outputs["preview"] = job.outputs["preview"]
    return outputs


def _read_input(path: str):
    """A volume (any readable format) or an 8-bit grayscale PNG as a one-slice volume, plus 'is PNG'."""
    from ...io import Volume, read_volume

    if Path(path).name.lower().endswith(IMAGE_EXTENSIONS):
        if not Path(path).is_file():
            raise BadInputError(f"input image '{path}' does not exist", "check the path")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:  # not an image, truncated, or unreadable
            raise BadInputError(f"input image '{path}' cannot be read as an image ({type(exc).__name__}: {exc})",
                                "give an 8-bit grayscale PNG, or a volume file (.nii.gz, .nrrd, .mha)") from None
        return Volume.from_spacing(array[None]), True
    return read_volume(path), False


def _check_model_range(card, model_range: tuple[float, float], array: np.ndarray, path: str) -> None:
    """A model that diffuses in [0, 1] (the imported MRNet cascade) takes input already in [0, 1]."""
    if tuple(model_range) != (0.0, 1.0):
        return
    lo, hi = float(array.min()), float(array.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise BadInputError(
            f"'{path}' has values {lo:g} .. {hi:g}; model '{card.name}' takes slices in [0, 1] (its authors trained "
            "on per-slice min-max normalised 8-bit PNGs)",
            "normalise each slice to [0, 1] first, or give the slice as an 8-bit grayscale PNG")


def run_upscale(job, reporter) -> dict[str, str]:
    """Job ``sr.upscale``: inputs ``image`` (volume or PNG); params stages (how many 2x stages; default every
    remaining stage up to the first the card calls below its baseline), steps. Intensities go through the card's
    mapping (:func:`~.data.intensity_mapping`) and come back in the input's units."""
    from ...devices import resolve_device
    from ...io import Volume, write_volume
    from ...preview import Window, write_png

    job.require_model()
    if not job.inputs.get("image"):
        raise ConfigError("the job names no 'image' input", "pass --input IMAGE_OR_VOLUME")
    out_path = job.outputs.get("volume") or ""
    if not out_path:
        raise ConfigError("the job names no output", "pass --out FILE")
    _check_output(out_path, allow_png=True)
    steps, sampler = _steps_and_sampler(job)
    volume, is_png = _read_input(job.inputs["image"])
    device = resolve_device(job.device)
    card, stages = load_stages(job.model, device)
    sr_stages = [(name, spec, net) for name, (spec, net) in stages.items() if spec.is_super_resolution]
    _, height, width = volume.shape
    accepted = [spec.low_size for _, spec, _ in sr_stages]
    start = next((i for i, (_, spec, _) in enumerate(sr_stages) if spec.low_size == height == width), None)
    if start is None:
        raise BadInputError(
            f"slices of '{job.inputs['image']}' are {height}x{width} (y x x) pixels; model '{card.name}' "
            f"super-resolves square slices of {', '.join(map(str, accepted)) or 'no size (it has no SR stage)'} pixels",
            "resample or crop the slices to one of those sizes first",
        )
    remaining = sr_stages[start:]
    below = card.below_baseline()
    if job.params.get("stages"):
        count = int(job.params["stages"])
        if not 1 <= count <= len(remaining):
            raise ConfigError(f"stages must be between 1 and {len(remaining)} for {height}px input, got {count}",
                              "leave it out to run every remaining stage the card does not call under-trained")
    else:  # by default, never a stage the card says loses to interpolation
        count = next((i for i, (name, _, _) in enumerate(remaining) if name in below), len(remaining))
        if count == 0:
            name = remaining[0][0]
            raise ModelError(f"the stage of model '{card.name}' that takes {height}px slices, {name}, is below its "
                             f"classical baseline by its card: {below[name]}",
                             f"upscale with plain interpolation instead, train the stage longer, or pass --stages 1 "
                             f"to run it anyway")
        if count < len(remaining):
            skipped = remaining[count][0]
            reporter.warning(f"running {count} of {len(remaining)} stages: the card says stage {skipped} is below its "
                             f"classical baseline ({below[skipped]})", f"--stages {len(remaining)} runs it anyway")
    if is_png and out_path.lower().endswith(".png") and volume.shape[0] != 1:
        raise BadInputError("a PNG output holds one slice", "write a volume (.nii.gz, .nrrd)")
    window = tuple(card.task_config["intensity_window"])
    chosen_range = sr_stages[start][1].model_range
    _check_model_range(card, chosen_range, volume.array, job.inputs["image"])
    per_volume = (card.task_config.get("intensity") or {}).get("normalize") == "percentile"
    if is_png and not per_volume:  # 8-bit display values of the card's window
        volume = volume.with_array(from_unit_range(volume.array * 2 - 1, window))
    mapping = intensity_mapping(card.task_config, volume.array)
    chosen = sr_stages[start:start + count]
    for name, _, _ in chosen:
        if name in below and job.params.get("stages"):
            reporter.warning(f"stage {name} is below its classical baseline by the card: {below[name]}")
    if "real_images" in below:
        reporter.warning(f"model '{card.name}' on real images: {below['real_images']}")
    factor = 2**count
    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    reporter.log(f"upscaling {volume.shape[0]} slice(s) {height} -> {height * factor} px with "
                 f"{', '.join(n for n, _, _ in chosen)}; intensities {mapping.input_low:g}..{mapping.input_high:g} "
                 f"-> {mapping.model_low:g}..{mapping.model_high:g} of the model's window {window[0]:g}..{window[1]:g}")
    low_all = from_signed_range(torch.from_numpy(mapping.to_model(volume.array)).clamp(-1, 1)[:, None], chosen_range)
    outputs = []
    for index in range(volume.shape[0]):
        image = low_all[index:index + 1]
        for name, spec, net in chosen:
            image = sample_stage(net, spec, 1, low=image, steps=steps, sampler=sampler, generator=generator)
        outputs.append(image[0, 0].cpu().numpy())
        reporter.progress("upscaling", index + 1, volume.shape[0])
    array = mapping.from_model(to_signed_range(np.stack(outputs), chosen[-1][1].model_range))
    if out_path.lower().endswith(".png"):
        shown = (0.0, 1.0) if is_png and per_volume else (mapping.input_low, mapping.input_high)
        write_png(out_path, Window.from_range(*shown).to_uint8(array[0]))
    else:
        write_volume(Volume(array, upscaled_ijk_to_ras(volume.ijk_to_ras, factor), {}), out_path)
    return {"volume": out_path}
