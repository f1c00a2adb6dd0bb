"""Where the time outside the network goes, at clinical size, for CTCA and CTP (issue 17: <= 20 % of the job).

Runs a job's stages in this process on the benchmark's clinical inputs (``clinical_sizes.make_ctca`` /
``make_ctp``, 512² at ``--scale 1``), with the network left out, and prints each stage's wall time:

- ``ctca``: reading and validating the label map, the field-of-view check, label resampling onto the model's
  2 mm grid, the one-hot condition, the CT (random values in model units) back onto the label grid as int16 HU,
  writing the ``.nii.gz``;
- ``ctp``: reading the ``.seq.nrrd``, the input checks, filling 45 -> 133 frames with the network call replaced
  by a stand-in (the mean of the two known frames: padding, slab blending, the tissue switch, rounding into the
  output stay), writing the ``.seq.nrrd``.

Then it times ONE real network call of the job (``ctca``: one denoising step of ``ctca-demo`` over all its
windows, guidance as the card says; ``ctp``: one (frame, slab) item through ``ctp-demo``) and projects the share
of the job outside the network at the card's steps (ctca) or the job's item count (ctp): outside / (outside +
network). ``--no-network`` skips that call (at 512² one CTP item takes minutes on a loaded CPU). With
``PYTHONPATH`` set to another checkout's ``MedDiffCore`` it measures that code (before/after)::

    OMP_NUM_THREADS=2 python Testing/Benchmarks/outside_network.py --task ctca --scale 1
    OMP_NUM_THREADS=2 python Testing/Benchmarks/outside_network.py --task ctp --scale 1

This is a script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_sizes import make_ctca, make_ctp  # noqa: E402


def _stage(times: dict, name: str, fn):
    start = time.perf_counter()
    result = fn()
    times[name] = time.perf_counter() - start
    print(f"  {name:34s} {times[name]:8.2f} s", flush=True)
    return result


def ctca(src: Path, out: Path, network: bool) -> None:
    import torch

    from meddiffcore.io import Volume, write_volume
    from meddiffcore.tasks.ctca.grid import check_field_of_view, resample_labels, synthesis_grid
    from meddiffcore.tasks.ctca.model import condition, load_ctca_model
    from meddiffcore.tasks.ctca.run import DEFAULT_MODEL, read_label_volume
    from meddiffcore.tasks.ctca.synthesis import on_label_grid

    times: dict[str, float] = {}
    model = load_ctca_model(DEFAULT_MODEL, "cpu")
    vol = _stage(times, "read + validate labels", lambda: read_label_volume(src, None))
    _stage(times, "field-of-view check", lambda: check_field_of_view(vol, vol.array, model.fov_mm))
    grid, shape = synthesis_grid(vol, model.spacing_mm, model.net.config.size_multiple)
    lab = _stage(times, "resample labels onto the model grid", lambda: resample_labels(vol.array, vol.ijk_to_ras,
                                                                                         grid, shape))
    segmap = _stage(times, "one-hot condition", lambda: condition(lab, "lr")[None])
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    ct = _stage(times, "CT onto the label grid (int16 HU)", lambda: on_label_grid(x, grid, vol, model.hu_window))
    _stage(times, "write .nii.gz", lambda: write_volume(Volume(ct, vol.ijk_to_ras), out))
    outside = sum(times.values())
    print(f"  outside the network: {outside:.1f} s (model grid {'x'.join(map(str, shape))})")
    if not network:
        return
    from meddiffcore.tasks.ctca.patches import PatchedDenoiser, choose_patching
    from meddiffcore.tasks.ctca.synthesis import SynthesisSettings, activation_bytes_per_voxel

    settings = SynthesisSettings.of_model(model)
    denoiser = model.denoiser(settings.guidance)
    window = tuple(min(w, n) for w, n in zip(model.shape, shape))
    if window != tuple(shape):  # as low_resolution() runs it
        overlap = tuple(max(1, int(round(w * settings.overlap_fraction))) for w in window)
        _, batch = choose_patching(window, window, model.net.config.size_multiple, torch.device("cpu"),
                                   activation_bytes_per_voxel(model, settings.guidance))
        denoiser = PatchedDenoiser(denoiser, window, overlap, batch)
    for _ in range(2):  # a second call where the first is short: it carries one-time set-up costs
        with torch.no_grad():
            _stage(times, "one denoising step (network)", lambda: denoiser(
                torch.zeros((1, 1) + tuple(shape)), torch.ones(1), segmap=segmap))
        if times["one denoising step (network)"] > 10:
            break
    per_step = times["one denoising step (network)"]
    total = outside + settings.steps * per_step
    print(f"  at the card's {settings.steps} steps ({settings.sampler}, guidance {settings.guidance:g}, "
          f"{torch.get_num_threads()} threads): network ~{settings.steps * per_step:.0f} s, "
          f"outside {outside / total * 100:.1f} % of the job")


def ctp(src: Path, out: Path, network: bool) -> None:
    import torch

    from meddiffcore.io import Sequence, check_finite
    from meddiffcore.tasks.ctp import inpaint
    from meddiffcore.tasks.ctp.model import in_plane_layout, load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan
    from meddiffcore.tasks.ctp.run import DEFAULT_MODEL
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence, write_ctp_sequence
    from meddiffcore.units import check_hu

    times: dict[str, float] = {}
    model = load_for_inference(DEFAULT_MODEL, torch.device("cpu"))
    real = inpaint._estimate_chunk

    def stand_in(model_, chunk, plan, padded, slab, device, **kw):  # the two known frames' mean, in model units
        return np.stack([0.5 * (padded[plan.targets[ti].left][s:s + slab] + padded[plan.targets[ti].right][s:s + slab])
                         for ti, s in chunk]).astype(np.float32)

    seq = _stage(times, "read .seq.nrrd", lambda: read_ctp_sequence(src))
    _stage(times, "input checks", lambda: (check_finite(seq.array, "the input"), check_hu(seq.array[0], "the input")))
    plan = make_plan(seq.times_s, interval_s=1.0, max_gap_s=model.max_gap_s)
    inpaint._estimate_chunk = stand_in
    try:
        filled, stats = _stage(times, "fill (network left out)", lambda: inpaint.fill_sequence(
            seq.array, seq.times_s, plan, model, steps=model.diffusion.sampling_steps, sampler=model.diffusion.sampler,
            device=torch.device("cpu"), estimate=model.diffusion.estimate))
    finally:
        inpaint._estimate_chunk = real
    result = Sequence(filled, seq.ijk_to_ras, plan.times_s)
    _stage(times, "write .seq.nrrd", lambda: write_ctp_sequence(result, out))
    outside = sum(times.values())
    windows = stats["windows"]
    print(f"  outside the network: {outside:.1f} s; {len(plan.known)} -> {len(plan.times_s)} frames, "
          f"{stats['items']} (frame, slab) items = {stats['missing_frames']} frames x {stats['slabs']} slabs, "
          f"{stats['batches']} batches of {stats['batch_size']}, {windows} in-plane window(s) per item")
    if not network:
        return
    n_y, n_x = seq.array.shape[2:]
    pad_y, pad_x, layout = in_plane_layout(model.net, model.slab_slices, n_y, n_x)
    shape = (1, 2, model.slab_slices, n_y + pad_y, n_x + pad_x)
    for _ in range(2):  # a second call where the first is short: it carries one-time set-up costs
        with torch.inference_mode():
            _stage(times, "one item through the network", lambda: inpaint.estimate_frames(
                model.net, model.diffusion, torch.zeros(shape), torch.zeros(1, 5), torch.full((1,), 0.5),
                estimate=model.diffusion.estimate, sampler=model.diffusion.sampler,
                steps=model.diffusion.sampling_steps, windows=layout))
        if times["one item through the network"] > 10:
            break
    network = times["one item through the network"] * stats["items"]
    print(f"  {stats['items']} items x {times['one item through the network']:.1f} s ({torch.get_num_threads()} "
          f"threads): network ~{network:.0f} s, outside {outside / (outside + network) * 100:.1f} % of the job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["ctca", "ctp"], required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="in-plane size factor (as clinical_sizes.py)")
    parser.add_argument("--no-network", action="store_true", help="skip the one real network call")
    parser.add_argument("--keep", default=None, help="make (or reuse) the input in this folder")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="meddiff_outside_"))
    folder.mkdir(parents=True, exist_ok=True)
    import torch

    from meddiffcore.devices import set_threads

    threads = set_threads(None)  # as a job does: the cores free now
    name = "cta_labels.nii.gz" if args.task == "ctca" else "ctp.seq.nrrd"
    src = folder / name
    if not src.is_file():
        made = time.perf_counter()
        src = make_ctca(folder, args.scale) if args.task == "ctca" else make_ctp(folder, args.scale)
        print(f"input {src} made in {time.perf_counter() - made:.0f} s")
    print(f"{args.task} at scale {args.scale:g}: {threads} thread(s) (torch {torch.get_num_threads()})")
    out = folder / ("out.nii.gz" if args.task == "ctca" else "out.seq.nrrd")
    (ctca if args.task == "ctca" else ctp)(src, out, not args.no_network)
    out.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
