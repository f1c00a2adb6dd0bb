"""Peak memory of ``meddiff inpaint`` against the number of output frames (issue 17: bounded memory for CTP).

Makes a CT perfusion phantom of ``--size``² x ``--slices`` (int16 .seq.nrrd) for each ``--frames`` count of acquired
frames every 3 s, fills each to 1 s through the real CLI in a fresh process (``clinical_sizes.run_child``: peak RSS
by ``os.wait4``), and prints the input and output size in memory, the peak RSS, the RSS of a bare engine process
(torch and the task imported) and the peak net of it over input + output, so that growth with the number of
frames shows directly.

The network's own working set (one batch of slabs) does not depend on the number of frames, and on a loaded
2-core CPU the bundled demo network takes 1-2 minutes per 8x512² slab; so by default the job runs a random-weight,
test-sized network (``--model tiny``: 2 base channels, one level, saved in a private MEDDIFF_HOME) with
``--batch-size 1``: the same frame reading, batching, assembly and writing, a smaller network working set. Use
``--model ctp-demo`` for the bundled model::

    OMP_NUM_THREADS=2 python Testing/Benchmarks/ctp_memory.py --size 256 --frames 15
    OMP_NUM_THREADS=2 python Testing/Benchmarks/ctp_memory.py --size 512 --frames 5 15 --model ctp-demo

``--traced`` instead runs the data path in this process under tracemalloc (NumPy's allocations; the network's
are torch's and not traced), with the network call replaced by a stand-in (the mean of the two known frames), so
that a full-size run takes a minute: the traced peak of reading, filling and writing. With ``PYTHONPATH`` set to
another checkout's ``MedDiffCore`` it measures that code (before issue 17's fill_sequence: inpaint_frames and
assemble)::

    OMP_NUM_THREADS=2 python Testing/Benchmarks/ctp_memory.py --size 512 --frames 15 --traced

This is a script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_sizes import engine_rss, run_child  # noqa: E402

TINY = "ctp-bench-tiny"


def save_tiny_model(home: Path) -> None:
    """A random-weight CTP model with the smallest network the UNet allows (its output layer not at zero)."""
    import torch

    from meddiffcore.models import save_model
    from meddiffcore.tasks.ctp.config import CTPConfig, default_network
    from meddiffcore.tasks.ctp.train import TASK

    torch.manual_seed(0)
    config = CTPConfig(name=TINY)
    config.network = dataclasses.replace(default_network(), base_channels=2, channel_mult=(1,), down_strides=(),
                                         norm_groups=1)
    net = TASK.build_network(config)
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.05)
    save_model(home / "models", TASK.model_card(config), net.state_dict())


def make_sequence(path: Path, size: int, slices: int, frames: int) -> None:
    from meddiffcore.io import Sequence, write_sequence
    from meddiffcore.tasks.ctp.phantom import make_ctp_phantom

    seq = make_ctp_phantom(0, slices=slices, size=size, frames=frames, interval_s=3.0).sequence
    write_sequence(Sequence(np.round(seq.array).astype(np.int16), seq.ijk_to_ras, seq.times_s), path)


def traced(src: Path, dst: Path, home: Path) -> None:
    """Read, fill and write ``src`` in this process; print each stage's traced peak against input + output."""
    import tracemalloc

    import torch

    from meddiffcore.io import Sequence
    from meddiffcore.tasks.ctp import inpaint
    from meddiffcore.tasks.ctp.model import load_for_inference
    from meddiffcore.tasks.ctp.plan import make_plan
    from meddiffcore.tasks.ctp.sequences import read_ctp_sequence, write_ctp_sequence

    def stand_in(model, chunk, plan, padded, slab, device, **kw):  # the two known frames' mean, in model units
        return np.stack([0.5 * (padded[plan.targets[ti].left][s:s + slab] + padded[plan.targets[ti].right][s:s + slab])
                         for ti, s in chunk]).astype(np.float32)

    inpaint._estimate_chunk = stand_in
    os.environ["MEDDIFF_HOME"] = str(home)
    save_tiny_model(home)
    model = load_for_inference(TINY, torch.device("cpu"))
    mb = 1 << 20
    tracemalloc.start()
    peaks = []

    def stage(name, fn):
        tracemalloc.reset_peak()
        result = fn()
        peaks.append((name, tracemalloc.get_traced_memory()[1]))
        return result

    seq = stage("read", lambda: read_ctp_sequence(src))
    plan = make_plan(seq.times_s, interval_s=1.0, max_gap_s=model.max_gap_s)
    options = dict(steps=1, sampler="dpmpp_2m", device=torch.device("cpu"), batch_size=1,
                   generator=torch.Generator().manual_seed(0))
    if hasattr(inpaint, "fill_sequence"):
        out = stage("fill", lambda: inpaint.fill_sequence(seq.array, seq.times_s, plan, model, **options)[0])
    else:  # the code before issue 17's bounded memory
        frames = stage("fill", lambda: inpaint.inpaint_frames(seq.array, seq.times_s, plan, model, **options)[0])
        out = stage("assemble", lambda: inpaint.assemble(seq.array, plan, frames))
        del frames
    in_b, out_b = seq.array.nbytes, out.nbytes
    result = Sequence(out, seq.ijk_to_ras, plan.times_s)
    del seq
    stage("write", lambda: write_ctp_sequence(result, dst))
    tracemalloc.stop()
    print(f"{len(plan.known)} -> {len(plan.times_s)} frames, input + output {in_b / mb:.0f} + {out_b / mb:.0f} MB; "
          "traced peak per stage: " + ", ".join(f"{name} {peak / mb:.0f} MB" for name, peak in peaks)
          + f"; largest {max(p for _, p in peaks) / (in_b + out_b):.2f}x input + output", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 15], help="acquired frames (3 s apart) per run")
    parser.add_argument("--model", default="tiny", help="'tiny' (default: see above) or a model name, e.g. ctp-demo")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--traced", action="store_true", help="the data path in-process under tracemalloc, "
                        "the network call replaced by a stand-in")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="meddiff_ctp_memory_"))
    if args.traced:
        for n in args.frames:
            make_sequence(folder / f"in{n}.seq.nrrd", args.size, args.slices, n)
            traced(folder / f"in{n}.seq.nrrd", folder / f"out{n}.seq.nrrd", folder / "home")
        shutil.rmtree(folder, ignore_errors=True)
        return
    env = dict(os.environ)
    model = args.model
    if model == "tiny":
        env["MEDDIFF_HOME"] = str(folder / "home")
        os.environ["MEDDIFF_HOME"] = env["MEDDIFF_HOME"]
        save_tiny_model(folder / "home")
        model = TINY
    print(f"{args.size}x{args.size}x{args.slices}, model {model}, batch {args.batch_size}, device {args.device}, "
          f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}, folder {folder}")
    floor = engine_rss(env, "meddiffcore.tasks.ctp.run")
    mb = 1 << 20
    print(f"{'frames':>10} {'in MB':>7} {'out MB':>7} {'job s':>7} {'peak MB':>8} {'engine MB':>9} "
          f"{'peak/(in+out)':>13} {'-engine':>8}")
    for n in args.frames:
        src, out = folder / f"in{n}.seq.nrrd", folder / f"out{n}.seq.nrrd"
        make_sequence(src, args.size, args.slices, n)
        start = time.perf_counter()
        result = run_child(["inpaint", "--sequence", str(src), "--out", str(out), "--interval", "1", "--model", model,
                            "--batch-size", str(args.batch_size), "--device", args.device, "--seed", "0"], env)
        wall = time.perf_counter() - start
        if result["rc"] != 0:
            print(f"{n:>10} failed (exit {result['rc']}): {result['stderr'].strip()[-600:]}")
            continue
        voxels = args.size * args.size * args.slices
        n_out = 3 * (n - 1) + 1
        in_b, out_b = n * voxels * 2, n_out * voxels * 2
        peak = result["rss"]
        net = f"{(peak - floor) / (in_b + out_b):.1f}x" if peak and floor else "n/a"
        print(f"{f'{n}->{n_out}':>10} {in_b / mb:7.1f} {out_b / mb:7.1f} {wall:7.1f} {(peak or 0) / mb:8.0f} "
              f"{(floor or 0) / mb:9.0f} {(peak or 0) / (in_b + out_b):12.1f}x {net:>8}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
