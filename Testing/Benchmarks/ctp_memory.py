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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 15], help="acquired frames (3 s apart) per run")
    parser.add_argument("--model", default="tiny", help="'tiny' (default: see above) or a model name, e.g. ctp-demo")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="meddiff_ctp_memory_"))
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
