"""Every task on inputs of clinical size, through the real CLI, one fresh process per job (issue 17).

Inputs (made here, before any timing, from the project's phantoms):

- ``ctca``: a CTA label map 512x512x256, oblique (rotated 15 deg about z and 10 deg about x), 0.4x0.4x0.5 mm,
  -> ``meddiff synthesize`` (the model's own sampler and steps unless ``--steps``);
- ``ctp``: a CT perfusion study 512x512x16, 45 frames sampled every 3 s -> ``meddiff inpaint`` to 1 s;
- ``ct``: a CT volume 512x512x64 -> ``meddiff recon ct --simulate-from`` (16 views, fast mode);
- ``mri``: an MRI volume 256^3 -> ``meddiff recon mri --simulate-from`` (fast mode).

For each job it prints the wall time of the child process and of the job (``started`` to ``done`` events), the
child's peak RSS (``os.wait4``; Linux/macOS), the input and output arrays' size in memory, the ratio
peak / (input + output) against the issue's target (<= 3x), that ratio after subtracting the peak RSS of a ``bare``
process that has imported torch and the task, and after subtracting the ``engine``'s fixed working set (a process
that also loads the job's model and runs one network evaluation at the job's window or slab size on zeros,
:data:`ENGINE_CODE`): the last one is what depends on the data, and the target is judged on it. Also the share of
the job spent outside the network: the job time minus the time of the sampler's progress phases (first to last step,
plus one average step), over the job time (target <= 20 %); it means something only at the cards' steps (a ``*``
marks a ``--steps`` override; for ``ctca`` the share at the card's steps is then also projected from the measured
time outside the network and per step, which do not depend on the number of steps). Recon's "network" phase
includes its data-consistency steps.

``--scale`` shrinks every in-plane size (and grows the in-plane spacing, so the anatomy keeps its size in mm);
slice counts, frame counts and MRI's z stay. ``--steps`` (ctca, ct, mri) shortens the sampling for memory figures:
the sampler's working set does not grow with the steps. The full-size memory run, one job at a time::

    OMP_NUM_THREADS=2 python Testing/Benchmarks/clinical_sizes.py --scale 1 --steps 2 --tasks ctca ct mri
    OMP_NUM_THREADS=2 python Testing/Benchmarks/clinical_sizes.py --scale 1 --tasks ctca --ctca-steps 4
    OMP_NUM_THREADS=2 python Testing/Benchmarks/clinical_sizes.py --scale 1 --tasks ctca --steps 2 \
        --hr-model ctca-hr-demo
    OMP_NUM_THREADS=2 python Testing/Benchmarks/clinical_sizes.py --scale 0.25 --tasks ctca ctp ct mri
    python Testing/Benchmarks/clinical_sizes.py --scale 1 --device cuda

This is a script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 3.0
TARGET_OUTSIDE = 0.20
NOT_NETWORK_PHASES = ("perfusion",)


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def make_ctca(folder: Path, scale: float, slab: int = 16) -> Path:
    """The procedural heart phantom's labels sampled straight on the oblique clinical grid, slab by slab."""
    from meddiffcore.io import Volume, write_volume
    from meddiffcore.io.volume import geometry_from_spacing
    from meddiffcore.tasks.ctca.phantom import make_phantom

    n_xy = max(16, int(round(512 * scale)))
    spacing = (0.4 * 512 / n_xy, 0.4 * 512 / n_xy, 0.5)
    shape = (256, n_xy, n_xy)
    direction = _rotation(15, 10)
    half = direction @ ((np.array(shape[::-1]) - 1) / 2.0 * np.array(spacing))
    grid = geometry_from_spacing(spacing, -half, direction)  # centred on the phantom's heart (RAS origin)
    labels = np.empty(shape, np.uint8)
    for z0 in range(0, shape[0], slab):
        z1 = min(z0 + slab, shape[0])
        part = grid.copy()
        part[:3, 3] = grid[:3, :3] @ np.array([0.0, 0.0, z0]) + grid[:3, 3]
        labels[z0:z1] = make_phantom(0, shape=(z1 - z0,) + shape[1:], ijk_to_ras=part, with_ct=False).labels.array
    path = folder / "cta_labels.nii.gz"
    write_volume(Volume(labels, grid), path)
    return path


def make_ctp(folder: Path, scale: float) -> Path:
    from meddiffcore.io import Sequence, write_sequence
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

    size = max(16, int(round(512 * scale)))
    phantom = make_ctp_phantom(0, slices=16, size=size, frames=45, interval_s=3.0)
    seq = phantom.sequence
    path = folder / "ctp.seq.nrrd"
    write_sequence(Sequence(np.round(seq.array).astype(np.int16), seq.ijk_to_ras, seq.times_s), path)
    return path


def make_recon(folder: Path, scale: float, modality: str) -> Path:
    from meddiffcore.io import Volume, write_volume
    from meddiffcore.tasks.recon.phantoms import make_phantom

    if modality == "ct":
        n, nz, spacing = max(16, int(round(512 * scale))), 64, 0.7
        arr = make_phantom("ct", None, (nz, n, n), 0)
        arr = np.round(arr).astype(np.int16)
    else:
        n, nz, spacing = max(16, int(round(256 * scale))), 256, 1.0
        arr = make_phantom("mri", None, (nz, n, n), 0).astype(np.float32)
    vol = Volume.from_spacing(arr, (spacing * 512 / n if modality == "ct" else spacing * 256 / n,) * 2 + (spacing,))
    path = folder / f"{modality}.nii.gz"
    write_volume(vol, path)
    return path


def run_child(args: list[str], env: dict) -> dict:
    """Run ``python -m meddiffcore.cli ARGS --progress json``; wall time, peak RSS (bytes) and the events."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "meddiffcore.cli", *args, "--progress", "json"],
                                stdout=out, stderr=err, env=env, text=True)
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        else:  # no per-child rusage here
            proc.wait()
            rss = None
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        events = [json.loads(line) for line in out.read().splitlines() if line.startswith("{")]
        stderr = err.read()
    return {"rc": proc.returncode, "wall_s": wall, "rss": rss, "events": events, "stderr": stderr}


def _peak_of(code: str, env: dict) -> int | None:
    if not hasattr(os, "wait4"):
        return None
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def engine_rss(env: dict, task_module: str) -> int | None:
    """Peak RSS of a child that only imports torch and the task module (``bare``)."""
    return _peak_of(f"import torch, meddiffcore.cli, {task_module}", env)


#: The engine's fixed working set per task: a child that imports torch, loads the job's model and runs ONE network
#: evaluation on the job's window or slab, with inputs that are all zeros (no data read). ``{src}``: the input file
#: (its header only), ``{device}``. CTP: imports and model load only (its network call path is issue 15b's).
ENGINE_CODE = {
    "ctca": """
import nibabel as nib, numpy as np, torch
from meddiffcore.io import Volume
from meddiffcore.tasks.ctca.model import condition, load_ctca_model
from meddiffcore.tasks.ctca.patches import PatchedDenoiser, choose_patching
from meddiffcore.tasks.ctca.run import DEFAULT_MODEL
from meddiffcore.tasks.ctca.synthesis import activation_bytes_per_voxel, synthesis_grid
device = torch.device("{device}")
model = load_ctca_model(DEFAULT_MODEL, device)
header = nib.load("{src}")  # the header only: no voxels are read
grid, lr = synthesis_grid(Volume(np.broadcast_to(np.uint8(0), header.shape[::-1]), header.affine), model.spacing_mm,
                          model.net.config.size_multiple)
guidance = float(model.card.diffusion.get("guidance", 1.0))
window = tuple(min(w, n) for w, n in zip(model.shape, lr))
denoiser = model.denoiser(guidance)
if window != tuple(lr):  # the job's windowed call: all windows of one step, in the job's batches
    _, batch = choose_patching(window, window, model.net.config.size_multiple, device,
                               activation_bytes_per_voxel(model, guidance))
    denoiser = PatchedDenoiser(denoiser, window, tuple(max(1, round(w * 0.25)) for w in window), batch)
segmap = condition(np.zeros(lr, np.uint8), "lr")[None].to(device)
with torch.no_grad():
    denoiser(torch.zeros((1, 1) + tuple(lr), device=device), torch.ones(1, device=device), segmap=segmap)
if "{hr}":  # the job's high-resolution stage: one denoising step over all its patches, in the job's batches
    from meddiffcore.tasks.ctca.model import PatchCondition
    from meddiffcore.tasks.ctca.synthesis import SynthesisSettings
    hr = load_ctca_model("{hr}", device)
    settings = SynthesisSettings.of_model(hr)
    fine, shape = synthesis_grid(Volume(np.broadcast_to(np.uint8(0), header.shape[::-1]), header.affine),
                                 hr.spacing_mm, hr.net.config.size_multiple)
    trained = tuple(hr.card.task_config.get("crop") or hr.shape)
    patch, batch = choose_patching(shape, trained, hr.net.config.size_multiple, device,
                                   activation_bytes_per_voxel(hr, settings.guidance))
    overlap = tuple(max(1, int(round(p * settings.overlap_fraction))) for p in patch)
    patched = PatchedDenoiser(hr.denoiser(settings.guidance), patch, overlap, batch)
    cond = PatchCondition(np.zeros(shape, np.uint8), np.zeros(shape, np.float32), device)
    with torch.no_grad():
        patched(torch.zeros((1, 1) + tuple(shape), device=device), torch.ones(1, device=device), segmap=cond)
""",
    "recon": """
import torch
from meddiffcore.domain import header_geometry
from meddiffcore.tasks.recon.planes import to_slices
from meddiffcore.tasks.recon.run import DEFAULT_MODELS, settings_from
from meddiffcore.tasks.recon.model import load_recon_model
device = torch.device("{device}")
model = load_recon_model(DEFAULT_MODELS["{task}"], device=device)
shape = tuple(header_geometry("{src}")[0][1][::-1])  # z, y, x
chunk = settings_from({{}}, model.card.task_config.get("defaults", {{}})).chunk  # the job's cap on slices per call
for prior in model.prior_pair(chunk):  # the job's priors: one network call of the job's size each
    slices = to_slices(torch.zeros(shape, device=device), prior.plane)
    with torch.no_grad():
        prior.call(slices[:prior.slices_per_call(*slices.shape[1:])], 1.0)
""",
    "ctp": """
import torch
from meddiffcore.tasks.ctp.model import load_for_inference
from meddiffcore.tasks.ctp.run import DEFAULT_MODEL
load_for_inference(DEFAULT_MODEL, torch.device("{device}"))
""",
}


def engine_working_set(env: dict, task: str, src: Path, device: str, hr_model: str | None = None) -> int | None:
    """Peak RSS of :data:`ENGINE_CODE` for ``task``: what the job needs whatever its data (None if it failed);
    ``hr_model``: the CTCA job's high-resolution stage too."""
    code = ENGINE_CODE["ctca" if task == "ctca" else "ctp" if task == "ctp" else "recon"]
    return _peak_of(code.format(src=src, device=device, task=task, hr=hr_model or ""), env)


def job_times(events: list[dict]) -> tuple[float | None, float | None]:
    """(job seconds from 'started' to 'done'/'error', seconds in the network's progress phases)."""
    times = {e["event"]: e["time"] for e in events if e["event"] in ("started", "done", "error")}
    job = times.get("done", times.get("error", 0)) - times["started"] if "started" in times else None
    phases: dict[str, list[float]] = {}
    for e in events:
        if e["event"] == "progress" and e["phase"] not in NOT_NETWORK_PHASES:
            phases.setdefault(e["phase"], []).append(e["time"])
    network = 0.0
    for stamps in phases.values():
        if len(stamps) > 1:
            span = stamps[-1] - stamps[0]
            network += span * len(stamps) / (len(stamps) - 1)  # plus the first step, at the average pace
    return job, network


def array_bytes(path: Path) -> int:
    from meddiffcore.io import read_sequence, read_volume

    try:
        return int(read_volume(path).array.nbytes)
    except Exception:  # a 4D file
        return int(read_sequence(path).array.nbytes)


MB = 1 << 20
HEADER = (f"{'task':5} {'input':>24} {'steps':>5} {'in MB':>8} {'out MB':>8} {'wall s':>7} {'job s':>7} "
          f"{'peak MB':>8} {'bare MB':>8} {'engine MB':>9} {'peak/(in+out)':>13} {'-bare':>6} {'-engine':>8} "
          f"{'outside net':>11}")


def print_row(task, src, in_b, out_b, result, floor, working, steps, job_s, net_s, warnings) -> None:
    from meddiffcore.domain import header_geometry

    mb = MB
    geo = header_geometry(src)
    shape = "x".join(map(str, geo[0][1])) if geo else "?"
    if task == "ctp":
        shape += "x45t"
    peak = result["rss"]
    ratio = f"{peak / (in_b + out_b):.1f}x" if peak else "n/a"
    ratio_net = f"{(peak - floor) / (in_b + out_b):.1f}x" if peak and floor else "n/a"
    ratio_ws = f"{(peak - working) / (in_b + out_b):.1f}x" if peak and working else "n/a"
    outside = f"{(job_s - net_s) / job_s * 100:.0f} %" if job_s else "n/a"
    if steps != "card":
        outside += "*"
    print(f"{task:5} {shape:>24} {steps:>5} {in_b / mb:8.1f} {out_b / mb:8.1f} {result['wall_s']:7.1f} "
          f"{job_s or 0:7.1f} {(peak or 0) / mb:8.0f} {(floor or 0) / mb:8.0f} {(working or 0) / mb:9.0f} "
          f"{ratio:>13} {ratio_net:>6} {ratio_ws:>8} {outside:>11}", flush=True)
    for w in warnings:
        print(f"      warning: {w}")
    if task == "ctca" and steps != "card" and job_s and net_s:
        card_steps = card_sampling_steps("ctca")
        per_step, outside = net_s / int(steps), job_s - net_s
        share = outside / (outside + card_steps * per_step) * 100
        if outside <= 0:  # the steps' own spread (a loaded machine) exceeds the time outside the network
            print("      the time outside the network is below the spread of the step times: see outside_network.py")
            return
        print(f"      at the card's {card_steps} steps: {share:.1f} % outside the network (projected: "
              f"{outside:.0f} s outside, {per_step:.0f} s per measured step)")


def card_sampling_steps(task: str) -> int:
    """The default steps of the job's model (CTCA: the bundled default model's card)."""
    from meddiffcore.models import ModelCard, find_model
    from meddiffcore.tasks.ctca.run import DEFAULT_MODEL

    return int(ModelCard.from_json_file(find_model(DEFAULT_MODEL).card_path).diffusion.get("steps", 25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="in-plane size factor (0.25: 128^2 for 512^2)")
    parser.add_argument("--tasks", nargs="+", default=["ctca", "ctp", "ct", "mri"], choices=["ctca", "ctp", "ct", "mri"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps for ctca, ct and mri (default: each card's; memory needs only a few, the "
                             "share of time outside the network needs the card's)")
    parser.add_argument("--ctca-steps", type=int, default=None, help="sampling steps of ctca alone (over --steps)")
    parser.add_argument("--hr-model", default=None,
                        help="ctca: also run this high-resolution stage (e.g. ctca-hr-demo); --steps/--ctca-steps "
                             "then apply to both stages, and the engine runs one step of each")
    parser.add_argument("--keep", default=None, help="keep inputs and outputs in this folder")
    args = parser.parse_args()

    env = dict(os.environ)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="meddiff_clinical_"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"scale {args.scale}, device {args.device}, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, "
          f"folder {folder}")
    rows = []
    for task in args.tasks:
        made = time.perf_counter()
        if task == "ctca":
            src = make_ctca(folder, args.scale)
            out = folder / "ctca_out.nii.gz"
            cli = ["synthesize", "--labels", str(src), "--out", str(out)]
            if args.ctca_steps or args.steps:
                cli += ["--steps", str(args.ctca_steps or args.steps)]
            if args.hr_model:
                cli += ["--hr-model", args.hr_model]
            module = "meddiffcore.tasks.ctca.run"
        elif task == "ctp":
            src = make_ctp(folder, args.scale)
            out = folder / "ctp_out.seq.nrrd"
            cli = ["inpaint", "--sequence", str(src), "--out", str(out), "--interval", "1"]
            module = "meddiffcore.tasks.ctp.run"
        else:  # made in a child: the children measured below would start with this process's pages in their peak
            made_by = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                      f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                      "from clinical_sizes import make_recon; "
                                      f"print(make_recon(Path({str(folder)!r}), {args.scale!r}, {task!r}))"],
                                     env=env, capture_output=True, text=True, check=True)
            src = Path(made_by.stdout.strip().splitlines()[-1])
            out = folder / f"{task}_out.nii.gz"
            cli = ["recon", task, "--simulate-from", str(src), "--out", str(out), "--mode", "fast"]
            if args.steps:
                cli += ["--steps", str(args.steps)]
            module = "meddiffcore.tasks.recon.run"
        cli += ["--device", args.device, "--seed", "0"]
        print(f"{task}: input {src.name} made in {time.perf_counter() - made:.1f} s; running meddiff {' '.join(cli[:1])}",
              flush=True)
        floor = engine_rss(env, module)
        working = engine_working_set(env, task, src, args.device, args.hr_model if task == "ctca" else None)
        result = run_child(cli, env)
        if result["rc"] != 0:
            print(f"  failed (exit {result['rc']}): {result['stderr'].strip()[-600:]}")
            continue
        in_b, out_b = array_bytes(src), array_bytes(out)
        job_s, net_s = job_times(result["events"])
        warnings = [e["message"] for e in result["events"] if e.get("level") == "warning"]
        steps = "card" if task == "ctp" or not (args.steps or (task == "ctca" and args.ctca_steps)) else \
            str(args.ctca_steps or args.steps if task == "ctca" else args.steps)
        rows.append((task, src, in_b, out_b, result, floor, working, steps, job_s, net_s, warnings))
        print("  " + HEADER + "\n  ", end="")
        print_row(*rows[-1])  # as soon as the job is done: a long run keeps what it measured
        for e in result["events"]:  # what the job says it ran (CTCA: each stage's grid, patches and network calls)
            if e.get("event") == "log" and str(e.get("message", "")).startswith("settings: {") and task == "ctca":
                for stage in json.loads(e["message"][len("settings: "):]).get("stages", []):
                    print(f"      stage: {json.dumps(stage)}")
    print()
    print(HEADER)
    for row in rows:
        print_row(*row)
    print(f"targets: peak <= {TARGET_RATIO:g}x (input + output), judged on '-engine' (peak minus the engine's "
          f"fixed working set); time outside the network <= {TARGET_OUTSIDE * 100:.0f} % of the job")
    print("bare: a process that imports torch and the task; engine: one that also loads the job's model and runs one "
          "network evaluation at the job's window/slab size (ENGINE_CODE); * = steps overridden, so the share "
          "outside the network is not the job's at the card's steps")


if __name__ == "__main__":
    main()
