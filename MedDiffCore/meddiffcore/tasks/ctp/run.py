"""Job runners of the CTP task: ``ctp.inpaint``, ``ctp.perfusion``, ``ctp.phantom``.

Every runner reads and checks all its inputs, the model and the output paths
before the long computation, and writes its outputs only at the end (atomically),
so a failure leaves no output and never touches the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddiffcore.errors import BadInputError, ConfigError
from meddiffcore.io import Sequence, check_finite, read_volume, write_volume

#: The model ``meddiff inpaint`` uses when none is named.
DEFAULT_MODEL = "ctp-demo"
#: ``sampler="authors"``: the sampler an imported model's card records as the authors' (``authors_sampler``).
AUTHORS = "authors"
#: Map names and files written by ``ctp.perfusion``.
MAP_NAMES = ("cbf", "cbv", "mtt", "tmax")
MAP_EXTENSION = ".nrrd"


def _param(job, key, default=None):
    value = job.params.get(key)
    return default if value is None else value


def _number(job, key, default, kind=float, minimum=None):
    raw = _param(job, key, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter '{key}' must be a number, got {raw!r}", f"give e.g. {key}={default}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"parameter '{key}' must be at least {minimum}, got {value}", f"give e.g. {key}={default}")
    return value


def _input(job, key: str) -> str:
    if not job.inputs.get(key):
        raise ConfigError(f"the job names no '{key}' input", f"set inputs.{key} to a file")
    return job.inputs[key]


def _output(job, key: str) -> str:
    if not job.outputs.get(key):
        raise ConfigError(f"the job names no '{key}' output", f"set outputs.{key} to a path")
    return job.outputs[key]


def _read(job) -> Sequence:
    from .sequences import read_ctp_sequence

    seq = read_ctp_sequence(_input(job, "sequence"), times=job.params.get("times"), spacing_mm=job.params.get("spacing"))
    check_finite(seq.array, "the input sequence")
    return seq


def check_output_memory(n_frames: int, seq: Sequence) -> None:
    """OutOfMemoryError, before any work, when ``n_frames`` frames of ``seq`` (plus the input) would not fit in
    this machine's memory."""
    from meddiffcore.devices import physical_memory_bytes
    from meddiffcore.errors import OutOfMemoryError

    frame_bytes = int(np.prod(seq.frame_shape)) * max(seq.array.dtype.itemsize, 4)
    need = (n_frames + len(seq)) * frame_bytes
    have = physical_memory_bytes()
    if have is not None and need > have:
        raise OutOfMemoryError(f"{n_frames} output frames of {'x'.join(map(str, seq.frame_shape))} voxels need "
                               f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB",
                               "use a longer --interval, or crop the sequence to fewer slices")


def sampling_settings(job, model) -> tuple[str, int, str | None, str]:
    """(sampler, steps, sigma spacing, estimate) of an inpaint job. ``sampler="authors"`` is the sampler the
    card records as the authors' (for the CTP authors' model: ancestral over all 1500 training steps, a
    sample); otherwise the job's or the card's sampler, steps and estimate."""
    from meddiffcore.diffusion import get_sampler

    from .config import ESTIMATES

    sampler = str(_param(job, "sampler", model.diffusion.sampler))
    spacing = None
    steps_default = model.diffusion.sampling_steps
    if sampler == AUTHORS:
        published = model.card.task_config.get("authors_sampler")
        if not published:
            raise ConfigError(f"model '{model.card.name}' records no authors' sampler",
                              "use a sampler by name (ancestral, ddim, dpmpp_2m, euler, heun)")
        sampler, spacing, steps_default = published["sampler"], "uniform", published["steps"]
    steps = _number(job, "steps", steps_default, int, 1)
    get_sampler(sampler)  # an unknown name fails here, before any work
    estimate = str(_param(job, "estimate", "sample" if spacing else model.diffusion.estimate))
    if estimate not in ESTIMATES:
        raise ConfigError(f"unknown estimate {estimate!r}", f"use one of {', '.join(ESTIMATES)}")
    return sampler, steps, spacing, estimate


def run_inpaint(job, reporter) -> dict[str, str]:
    """Fill a sequence to ``interval`` s and replace ``bad_frames``; output ``sequence``."""
    import torch

    from meddiffcore.devices import resolve_device

    from .inpaint import DEFAULT_BATCH, fill_sequence
    from .model import load_for_inference
    from .plan import make_plan
    from .sequences import check_output_path, write_ctp_sequence

    out_path = _output(job, "sequence")
    interval = _number(job, "interval", 1.0)
    batch = None if _param(job, "batch_size") is None else _number(job, "batch_size", DEFAULT_BATCH, int, 1)
    seq = _read(job)
    from meddiffcore.units import check_hu

    check_hu(seq.array[0], "the perfusion sequence")
    device = resolve_device(job.device)
    model = load_for_inference(job.model or DEFAULT_MODEL, device)
    sampler, steps, spacing, estimate = sampling_settings(job, model)
    plan = make_plan(seq.times_s, interval_s=interval, bad_frames=job.params.get("bad_frames"), max_gap_s=model.max_gap_s)
    check_output_memory(len(plan.times_s), seq)
    diffs = np.diff(plan.times_s)
    even = diffs.size == 0 or bool(np.allclose(diffs, diffs[0], rtol=1e-6, atol=1e-6))
    check_output_path(out_path, job.inputs.get("sequence"), even_times=even)
    how = "the posterior mean" if estimate == "mean" else f"{sampler}, {steps} steps"
    reporter.log(f"{len(seq)} input frames ({len(plan.known)} good, {len(plan.bad)} bad) -> {len(plan.times_s)} frames "
                 f"at {interval:g} s; synthesizing {plan.n_missing} with {how} on {device}")
    generator = torch.Generator(device=device).manual_seed(job.seed) if job.seed is not None else None
    array, stats = fill_sequence(seq.array, seq.times_s, plan, model, steps=steps, sampler=sampler, device=device,
                                 estimate=estimate, generator=generator, batch_size=batch, spacing=spacing,
                                 progress=lambda step, total: reporter.progress("sampling", step, total),
                                 log=reporter.warning)
    if stats:
        reporter.log(f"{stats['items']} (frame, slab) items in {stats['batches']} batches of up to {stats['batch_size']}"
                     f"{' (chosen from free memory)' if stats['batch_chosen'] else ''}: "
                     f"{stats['network_evaluations']} network evaluations; bolus peak at {stats['peak_s']:g} s")
        if stats["window"]:
            reporter.log(f"the network ran on {stats['windows']} in-plane windows of {stats['window'][0]}x"
                         f"{stats['window'][1]} per evaluation, blended into whole frames")
    out = Sequence(array, seq.ijk_to_ras.copy(), plan.times_s.copy(),
                   {k: v for k, v in seq.metadata.items() if k in ("index_name",)})
    del seq, array  # the writer streams from the one output array
    write_ctp_sequence(out, out_path)
    return {"sequence": str(out_path)}


def map_paths(out_dir) -> dict[str, Path]:
    return {name: Path(out_dir) / f"{name}{MAP_EXTENSION}" for name in MAP_NAMES}


def run_perfusion(job, reporter) -> dict[str, str]:
    """CBF, CBV, MTT, Tmax maps of ``sequence`` into the folder ``maps``."""
    from .perfusion import DEFAULT_SVD_THRESHOLD, compute_perfusion

    out_dir = Path(_output(job, "maps"))
    threshold = _number(job, "svd_threshold", DEFAULT_SVD_THRESHOLD)
    seq = _read(job)
    aif_mask = None
    if job.inputs.get("aif_mask"):
        mask_vol = read_volume(job.inputs["aif_mask"])
        if not seq.same_grid(mask_vol):
            raise BadInputError("the AIF mask is not on the sequence's grid", "draw the AIF mask on a frame of the sequence")
        aif_mask = mask_vol.array
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"'{out_dir}' exists and is not a folder", "give a folder for the maps")
    reporter.progress("perfusion", 0, 1)
    maps = compute_perfusion(seq, aif_mask=aif_mask, svd_threshold=threshold)
    reporter.log(f"AIF from {len(maps.aif_voxels)} voxel(s), peak {maps.aif_hu.max():.0f} HU; "
                 f"{maps.baseline_frames} baseline frame(s); {int(maps.tissue.sum())} tissue voxels")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    units = {"cbf": "ml/100ml/min", "cbv": "ml/100ml", "mtt": "s", "tmax": "s"}
    for name, path in map_paths(out_dir).items():
        write_volume(seq.frame(0).with_array(maps.as_dict()[name].astype(np.float32), {"unit": units[name]}), path)
        outputs[name] = str(path)
    reporter.progress("perfusion", 1, 1)
    return outputs


def run_phantom(job, reporter) -> dict[str, str]:
    """A CTP phantom ``sequence`` and its ground truth (cbf, cbv, mtt, tmax, labels, lesion) in ``truth``."""
    from .phantom import make_ctp_phantom
    from .sequences import check_output_path, write_ctp_sequence

    out_path = check_output_path(_output(job, "sequence"))
    truth_dir = Path(job.outputs.get("truth") or out_path.parent / (out_path.name.split(".")[0] + "_truth"))
    frames = _param(job, "frames")
    noise = _param(job, "noise_hu")
    phantom = make_ctp_phantom(int(job.seed or 0), slices=_number(job, "slices", 8, int, 1),
                               size=_number(job, "size", 128, int, 16), frames=None if frames is None else int(frames),
                               interval_s=_number(job, "interval", 1.0), noise_hu=None if noise is None else float(noise))
    truth_dir.mkdir(parents=True, exist_ok=True)
    write_ctp_sequence(phantom.sequence, out_path)
    outputs = {"sequence": str(out_path)}
    for name, vol in phantom.truth_volumes().items():
        path = truth_dir / f"{name}{MAP_EXTENSION}"
        write_volume(vol, path)
        outputs[name] = str(path)
    info = phantom.info
    reporter.log(f"phantom seed {info['seed']}: {info['frames']} frames, noise {info['noise_hu']:.2f} HU, "
                 f"lesion on the {info['lesion_side']}")
    return outputs
