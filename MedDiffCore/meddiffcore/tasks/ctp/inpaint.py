"""Fill a sequence: estimate every missing frame of every slab in batches, blend the slabs, keep known frames.

A frame is the linear interpolation of its two known frames plus the residual
the model gives: the posterior mean (one network evaluation, the default) or a
sample (the configured sampler and steps).

Each synthesized frame is conditioned on its two bounding known frames (not
autoregressive), so all of them are independent and go through the sampler
together: the work items are (missing frame, slab) pairs, run ``batch_size`` at a
time. Slabs are ``slab_slices`` thick (the model's), placed with overlap and
blended with linear ramps along z, so there are no seams; a sequence with fewer
slices is padded by edge replication. In-plane sizes are padded (edge) to what
the UNet needs and cropped back. The CTP authors' network runs on frames larger
than it was trained on (192 x 192) through overlapping in-plane windows of its
trained size, blended into one whole-frame estimate at every network evaluation
(:func:`~.model.in_plane_layout`), so the windows are denoised together.

Memory does not grow with the number of frames beyond the input and the output:
:func:`fill_sequence` writes each frame into the output as its last slab finishes and
holds only the known frames the batches in flight need in model units.

Where the network cannot see (outside the tissue mask, or where either known
frame lies outside the HU window, e.g. an enhancing artery at its peak) the
frame is the linear interpolation in HU of the two known frames, so values the
window would clip are never invented.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from meddiffcore.diffusion import get_sampler, initial_noise, network_evaluations

from .config import CTPDiffusionConfig, clip, hu_to_model, model_to_hu, tissue_mask, window_bounds
from . import authors
from .authors import uses_authors_rules
from .model import InPlaneWindows, LoadedModel, denoiser_for, in_plane_layout, linear_between
from .plan import InpaintPlan, context_vector, estimate_peak, with_peak

#: How far (a fraction of the window width) values may lie beyond the window and still be seen by the
#: network, and be filled by it, at inference. With none (the seed's clipping), a known frame's noise is
#: clipped at the window's edges: CSF at 8 HU in a window from 0 HU loses its negative noise, so the
#: network sees it too bright and fills it too bright, and the voxels whose noise did cross the edge fall
#: back to the line, so the switch itself selects on the noise; both bias the filled frames by tissue.
KNOWN_MARGIN = 0.25
#: The same for the network's input: a known value within this margin of the window is kept, one further out
#: (air, bone, a contrast-filled artery) is clipped to the window's edge, as the network saw it in training.
INPUT_MARGIN = KNOWN_MARGIN

#: Most (frame, slab) items sampled together when the batch is chosen from free memory.
DEFAULT_BATCH = 8
#: Share of the free memory (GPU, or main memory on the CPU) a chosen batch may fill.
MEMORY_SHARE = 0.5


def bytes_per_item(config, slab_shape: tuple[int, int, int]) -> float:
    """A generous estimate of the inference memory of one (frame, slab) item of ``slab_shape`` (z, y, x).

    Measured for the demo network (base 24 channels): 1300-1800 bytes per voxel at 8 x 128^2 to 8 x 256^2
    (peak resident memory per item); this estimate is 16 float32 values per voxel per base channel
    (1536 bytes at base 24).
    """
    voxels = float(np.prod(slab_shape))
    return 4.0 * 16 * config.base_channels * config.channel_mult[0] * voxels


def choose_batch(config, slab_shape: tuple[int, int, int], device: torch.device, items: int) -> int:
    """Items per batch: as many as ``MEMORY_SHARE`` of the free memory holds, at most ``DEFAULT_BATCH`` and the
    number of items, at least 1; ``DEFAULT_BATCH`` where the free memory is unknown."""
    from meddiffcore.devices import free_memory_bytes

    free = free_memory_bytes(device)
    fit = DEFAULT_BATCH if free is None else int(MEMORY_SHARE * free // bytes_per_item(config, slab_shape))
    return max(1, min(DEFAULT_BATCH, items, fit))


def slab_starts(n_slices: int, slab: int, overlap: int | None = None) -> list[int]:
    """First slice of each slab covering ``n_slices`` (>= slab) with at least ``overlap`` slices shared."""
    if n_slices <= slab:
        return [0]
    overlap = slab // 2 if overlap is None else overlap
    step = max(1, slab - overlap)
    starts = list(range(0, n_slices - slab + 1, step))
    if starts[-1] != n_slices - slab:
        starts.append(n_slices - slab)
    return starts


def slab_weights(slab: int, start: int, n_slices: int, starts: list[int]) -> np.ndarray:
    """(slab,) blending weights: linear ramps where this slab overlaps its neighbours, 1 elsewhere."""
    w = np.ones(slab, np.float32)
    idx = np.arange(start, start + slab)
    for other in starts:
        if other == start:
            continue
        lo, hi = max(start, other), min(start + slab, other + slab)
        if lo >= hi:
            continue
        ramp = (np.arange(lo, hi) - lo + 1) / (hi - lo + 1)
        part = ramp if other < start else ramp[::-1]
        sel = (idx >= lo) & (idx < hi)
        w[sel] = np.minimum(w[sel], part)
    return w


def sampling_sigmas(diffusion, steps: int, spacing: str | None = None) -> torch.Tensor:
    """The model's sampling sigmas for ``steps`` steps (descending, ending at 0; ``spacing`` as
    :meth:`~meddiffcore.diffusion.NoiseSchedule.sampling_sigmas`, ``"uniform"`` for the authors' sampler)."""
    return diffusion.noise_schedule().sampling_sigmas(steps, spacing)


def estimate_frames(net: torch.nn.Module, diffusion: CTPDiffusionConfig, known: torch.Tensor, context: torch.Tensor,
                    weight: torch.Tensor, *, estimate: str, sampler: str, steps: int,
                    generator: torch.Generator | None = None, callback: Callable[[dict], None] | None = None,
                    spacing: str | None = None, margin: float = 0.0,
                    windows: InPlaneWindows | None = None) -> torch.Tensor:
    """(B, 1, ...) frames in window units between the (B, 2, ...) known frames.

    The linear interpolation plus the residual the model gives: its posterior
    mean (``estimate="mean"``: the denoiser at the top of the schedule, one
    evaluation) or a sample drawn with ``sampler`` in ``steps`` steps. A model whose
    diffusion variable is the frame itself (``diffusion.target == "frame"``, the
    CTP authors') gives the frame directly, within the window as it was trained.
    With ``windows``, every evaluation runs the network on those overlapping
    in-plane windows of the whole frames (known frames cut alike, the context
    repeated) and blends them into one whole-frame estimate.
    """
    denoiser = denoiser_for(net, diffusion)
    if windows is not None:
        from meddiffcore.diffusion.patches import PatchedDenoiser

        denoiser = PatchedDenoiser(denoiser, (known.shape[2], *windows.size), (0, *windows.overlap),
                                   max_batch=windows.per_call)
    sigmas = sampling_sigmas(diffusion, steps, spacing).to(known.device)
    shape = (known.shape[0], 1, *known.shape[2:])
    x = initial_noise(shape, sigmas, generator, device=known.device)
    cond = {"concat": known, "embedding": context}
    if estimate == "mean":
        sigma = sigmas[:1].expand(shape[0])
        residual = denoiser(x, sigma, **cond)
        if callback is not None:
            callback({"i": 0})
    else:
        residual = get_sampler(sampler)(denoiser, x, sigmas, callback=callback, generator=generator, cond=cond)
    if diffusion.target == "frame":
        return residual.clamp(-1, 1)
    bound = 1.0 + 2.0 * margin
    return (linear_between(known, weight) + residual / diffusion.residual_scale).clamp(-bound, bound)


def evaluations_per_batch(estimate: str, sampler: str, steps: int) -> int:
    """Network evaluations one batch costs."""
    return 1 if estimate == "mean" else network_evaluations(sampler, steps)


def peak_time(seq_hu: np.ndarray, times_s: np.ndarray, known: list[int], mask: np.ndarray) -> float:
    """The bolus peak estimated from the known frames: largest mean windowed tissue intensity."""
    means = [float(hu_to_model(seq_hu[k][mask]).mean()) if mask.any() else 0.0 for k in known]
    return estimate_peak(times_s[known], np.array(means))


def inpaint_frames(hu: np.ndarray, times_s: np.ndarray, plan: InpaintPlan, model: LoadedModel, *, steps: int,
                   sampler: str, device: torch.device, estimate: str | None = None,
                   generator: torch.Generator | None = None, batch_size: int | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] | None = None, spacing: str | None = None) -> tuple[np.ndarray, dict]:
    """Synthesize ``plan.targets`` of the HU sequence ``hu`` (T, Z, Y, X).

    ``estimate`` is ``"mean"`` or ``"sample"`` (default: the model card's).
    Returns the (n_targets, Z, Y, X) float32 HU frames and run statistics
    (network evaluations, batches). ``progress(step, total)`` is called after
    every network step. ``batch_size`` None chooses it from the free memory
    (:func:`choose_batch`); a batch that runs out of memory anyway is halved and
    run again (said through ``log``), and only a single item that does not fit
    is an OutOfMemoryError (its hint: free memory, a bigger GPU, a smaller crop).

    This keeps every synthesized frame in float32; :func:`fill_sequence` writes them
    straight into the output sequence instead (what ``meddiff inpaint`` does).
    """
    frames = np.empty((len(plan.targets),) + hu.shape[1:], np.float32)
    stats = _fill_targets(hu, times_s, plan, model, frames.__setitem__, steps=steps, sampler=sampler, device=device,
                          estimate=estimate, generator=generator, batch_size=batch_size, progress=progress, log=log,
                          spacing=spacing)
    return frames, stats


def fill_sequence(hu: np.ndarray, times_s: np.ndarray, plan: InpaintPlan, model: LoadedModel, *,
                  dtype=None, **options) -> tuple[np.ndarray, dict]:
    """The whole output sequence (one frame per ``plan.times_s``) in ``dtype`` (default: the input's) and the run
    statistics (those of :func:`inpaint_frames`, whose keyword options it takes; empty when nothing is missing).

    Memory: the output array, allocated once, plus a working set that does not grow with the number of frames:
    known frames are copied bit-exactly, and each synthesized frame is written into it (as :func:`assemble`
    converts it) as soon as its last slab is done, so no float32 copy of all the synthesized frames exists.
    """
    out = np.empty((len(plan.times_s),) + hu.shape[1:], hu.dtype if dtype is None else dtype)
    slots = []
    for k, src in enumerate(plan.source):
        if src is None:
            slots.append(k)
        else:
            out[k] = hu[src]

    def emit(ti: int, frame: np.ndarray) -> None:
        out[slots[ti]] = in_dtype(frame, out.dtype)

    stats = _fill_targets(hu, times_s, plan, model, emit, **options) if slots else {}
    return out, stats


def _fill_targets(hu: np.ndarray, times_s: np.ndarray, plan: InpaintPlan, model: LoadedModel,
                  emit: Callable[[int, np.ndarray], None], *, steps: int, sampler: str, device: torch.device,
                  estimate: str | None = None, generator: torch.Generator | None = None, batch_size: int | None = None,
                  progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] | None = None,
                  spacing: str | None = None) -> dict:
    """Synthesize ``plan.targets`` (see :func:`inpaint_frames`): ``emit(ti, frame)`` gets each target's (Z, Y, X)
    float32 HU frame once, in order, as soon as all its slabs are done. Returns the run statistics.

    The working set is bounded by the batch, not by the number of frames: only the known frames the next
    batches need are held in model units (padded), and only the targets with slabs in flight are accumulated.
    """
    estimate = estimate or model.diffusion.estimate
    level, width = model.window_level_hu, model.window_width_hu
    lo, hi = window_bounds(level, width)
    n_z, n_y, n_x = hu.shape[1:]
    first = hu[plan.known[0]]
    slab = model.slab_slices
    if uses_authors_rules(model.card.task_config):
        # The authors' model sees their window clipped (margin 0): it was trained on it and gives frames within it.
        margin = input_margin = 0.0
        mask = authors.tissue_mask(hu[plan.known], level, width)
        plan = authors.with_authors_phases(plan, times_s, authors.peak_time(hu[plan.known], times_s[plan.known],
                                                                           level, width))
    else:
        margin, input_margin = KNOWN_MARGIN, INPUT_MARGIN
        mask = tissue_mask(first, level, width * (1.0 + 2.0 * KNOWN_MARGIN))
        plan = with_peak(plan, peak_time(hu, times_s, plan.known, mask), model.diffusion.peak_margin_s)
    pad_z = max(0, slab - n_z)
    pad_y, pad_x, windows = in_plane_layout(model.net, max(n_z, slab), n_y, n_x)
    zs = n_z + pad_z
    starts = slab_starts(zs, slab)

    lo, hi = lo - margin * width, hi + margin * width  # where the network fills (see KNOWN_MARGIN)
    items = [(ti, s) for ti in range(len(plan.targets)) for s in starts]
    last_use = {}  # known frame -> the last item that needs it
    for i, (ti, _) in enumerate(items):
        last_use[plan.targets[ti].left] = last_use[plan.targets[ti].right] = i
    padded: dict[int, np.ndarray] = {}  # the known frames the batches in flight need, in model units, padded
    acc: dict[int, np.ndarray] = {}  # blended slabs of the targets in flight
    slabs_done = [0] * len(plan.targets)
    weights = {s: slab_weights(slab, s, zs, starts)[:, None, None] for s in starts}
    wsum = np.zeros(zs, np.float32)
    for s in starts:
        wsum[s:s + slab] += slab_weights(slab, s, zs, starts)

    def finish(ti: int) -> None:
        frame = acc.pop(ti)
        frame /= wsum[:, None, None]
        model_hu = model_to_hu(frame[:n_z, :n_y, :n_x], level, width, margin)
        g = plan.targets[ti]
        a, c = hu[g.left], hu[g.right]
        use = mask & (a >= lo) & (a <= hi) & (c >= lo) & (c <= hi)
        emit(ti, np.where(use, model_hu, linear_frame(hu, g)))

    steps_per_batch = 1 if estimate == "mean" else len(sampling_sigmas(model.diffusion, steps, spacing)) - 1
    slab_shape = (slab, n_y + pad_y, n_x + pad_x)
    chosen = batch_size is None
    batch = choose_batch(model.net.config, slab_shape, device, len(items)) if chosen else int(batch_size)
    done_items, n_batches, step = 0, 0, 0
    while done_items < len(items):
        chunk = items[done_items:done_items + batch]
        total = step + steps_per_batch * -(-(len(items) - done_items) // batch)
        for ti, _ in chunk:
            for k in (plan.targets[ti].left, plan.targets[ti].right):
                if k not in padded:
                    padded[k] = np.pad(hu_to_model(hu[k], level, width, input_margin),
                                       ((0, pad_z), (0, pad_y), (0, pad_x)), mode="edge")

        def callback(info, s0=step, t=total):
            if progress is not None:
                progress(s0 + int(info["i"]) + 1, t)

        try:
            out = _estimate_chunk(model, chunk, plan, padded, slab, device, estimate=estimate, sampler=sampler,
                                  steps=steps, generator=generator, callback=callback, spacing=spacing,
                                  margin=margin, windows=windows)
        except (MemoryError, RuntimeError) as exc:
            from meddiffcore.devices import is_out_of_memory, out_of_memory_error

            if not is_out_of_memory(exc):
                raise
            if batch == 1:
                raise out_of_memory_error(
                    exc, f"filling one frame of a {'x'.join(map(str, slab_shape))}-voxel slab (batch size 1)",
                    "free memory (close other programs), use a GPU with more memory, or crop the sequence "
                    "in-plane") from exc
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch = max(1, batch // 2)
            if log is not None:
                log(f"a batch of {len(chunk)} items did not fit in memory; going on with {batch} at a time")
            continue
        for (ti, s), o in zip(chunk, out):
            if ti not in acc:
                acc[ti] = np.zeros((zs,) + slab_shape[1:], np.float32)
            acc[ti][s:s + slab] += o * weights[s]
            slabs_done[ti] += 1
            if slabs_done[ti] == len(starts):
                finish(ti)
        del out
        done_items += len(chunk)
        for k in [k for k in padded if last_use[k] < done_items]:
            del padded[k]
        n_batches += 1
        step += steps_per_batch
    return {"network_evaluations": evaluations_per_batch(estimate, sampler, steps) * n_batches, "batches": n_batches,
            "items": len(items), "slabs": len(starts), "steps": steps_per_batch, "sampler": sampler,
            "estimate": estimate, "peak_s": plan.peak_s, "missing_frames": len(plan.targets),
            "batch_size": batch, "batch_chosen": chosen,
            "windows": 1 if windows is None else windows.count,
            "window": None if windows is None else list(windows.size)}


def _estimate_chunk(model: LoadedModel, chunk: list[tuple[int, int]], plan: InpaintPlan, padded: dict, slab: int,
                    device: torch.device, *, estimate: str, sampler: str, steps: int,
                    generator: torch.Generator | None, callback, spacing: str | None = None,
                    margin: float = 0.0, windows: InPlaneWindows | None = None) -> np.ndarray:
    """(len(chunk), slab, Y, X) frames in window units for the (target, slab start) items of ``chunk``."""
    targets = [plan.targets[ti] for ti, _ in chunk]
    known = np.stack([np.stack([padded[g.left][s:s + slab], padded[g.right][s:s + slab]])
                      for g, (_, s) in zip(targets, chunk)])
    ctx = np.stack([context_vector(g.left_gap_s, g.right_gap_s, g.phase) for g in targets])
    weight = np.array([g.left_gap_s / (g.left_gap_s + g.right_gap_s) for g in targets], np.float32)
    with torch.inference_mode():
        out = estimate_frames(model.net, model.diffusion, torch.from_numpy(known).to(device),
                              torch.from_numpy(ctx).to(device), torch.from_numpy(weight).to(device),
                              estimate=estimate, sampler=sampler, steps=steps, generator=generator,
                              callback=callback, spacing=spacing, margin=margin, windows=windows)
    return out[:, 0].float().cpu().numpy()


def linear_frame(hu: np.ndarray, target) -> np.ndarray:
    """The linear interpolation (in HU, float32) of one target frame between its two known frames."""
    w = target.left_gap_s / (target.left_gap_s + target.right_gap_s)
    out = hu[target.left].astype(np.float32)  # (1 - w) * left + w * right, the same float32 operations in place
    out *= 1 - w
    right = hu[target.right].astype(np.float32)
    right *= w
    out += right
    return out


def linear_fill(hu: np.ndarray, plan: InpaintPlan) -> np.ndarray:
    """The baseline: each target frame as the linear interpolation (in HU) of its two known frames."""
    out = np.empty((len(plan.targets),) + hu.shape[1:], np.float32)
    for ti, g in enumerate(plan.targets):
        out[ti] = linear_frame(hu, g)
    return out


def in_dtype(frame: np.ndarray, dtype) -> np.ndarray:
    """A synthesized float frame in an output ``dtype``: rounded and clipped to its range for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = np.rint(frame)
        frame = clip(rounded, info.min, info.max, out=rounded)
    return frame.astype(dtype, copy=False)


def assemble(hu: np.ndarray, plan: InpaintPlan, synthesized: np.ndarray) -> np.ndarray:
    """The output array: known input frames copied bit-exactly, synthesized frames in the input dtype."""
    out = np.empty((len(plan.times_s),) + hu.shape[1:], hu.dtype)
    ti = 0
    for k, src in enumerate(plan.source):
        if src is not None:
            out[k] = hu[src]
        else:
            out[k] = in_dtype(synthesized[ti], hu.dtype)
            ti += 1
    return out
