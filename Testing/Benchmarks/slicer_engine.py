"""Figures for the Slicer side: exchange cost, engine start-up latency and the cost of one poll on the GUI thread.

Run: ``.venv/bin/python Testing/Benchmarks/slicer_engine.py [--size 256]``. Uses the
tiny random-weight CTCA model of the Slicer tests in a temporary MEDDIFF_HOME.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer"))

from slicer_helpers import (TINY_MODEL, add_labelmap_node, add_module_paths, engine_env, new_scene,  # noqa: E402
                            phantom_labels, save_tiny_ctca_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic label map for the exchange figures (voxels)")
    args = parser.parse_args()
    add_module_paths()
    from MedDiffSlicerLib import ctca
    from MedDiffSlicerLib.exchange import Grid, WorkFolder, read_volume_node, write_volume_node

    home = Path(tempfile.mkdtemp(prefix="meddiff-bench-"))
    save_tiny_ctca_model(home)
    env = engine_env(home)
    scene = new_scene()

    big = np.zeros((args.size,) * 3, np.uint8)
    big[args.size // 4: 3 * args.size // 4] = 3
    node = add_labelmap_node(scene, big, np.diag([0.5, 0.5, 0.5, 1.0]), "big")
    work = WorkFolder()
    t = time.perf_counter()
    path = write_volume_node(node, work.file("labels.nrrd"))
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    read_volume_node(path, scene, "read back", Grid.of(node))
    read_s = time.perf_counter() - t
    work.close(success=True)
    megabytes = big.nbytes / 2**20
    print(f"exchange   {args.size}^3 uint8 ({megabytes:.0f} MiB): write NRRD {write_s * 1000:.0f} ms, read back {read_s * 1000:.0f} ms")

    labels, ijk_to_ras = phantom_labels()
    small = add_labelmap_node(scene, labels, ijk_to_ras)
    t0 = time.perf_counter()
    job = ctca.start_synthesis(small, ctca.SynthesisOptions(model=TINY_MODEL, steps=20, seed=1, device="cpu"), env=env)
    first_event = first_progress = None
    poll_costs = []
    while True:
        t = time.perf_counter()
        finished = job.poll()
        poll_costs.append(time.perf_counter() - t)
        if first_event is None and job.log:
            first_event = time.perf_counter() - t0
        if first_progress is None and job.progress.total:
            first_progress = time.perf_counter() - t0
        if finished:
            break
        time.sleep(0.02)
    total = time.perf_counter() - t0
    assert job.succeeded, job.log
    print(f"engine     'started' after {first_event:.2f} s, first progress after {first_progress:.2f} s (torch import, model "
          f"load), whole 20-step tiny job {total:.2f} s")
    print(f"poll       median {np.median(poll_costs) * 1e6:.0f} us, max {max(poll_costs) * 1000:.1f} ms over {len(poll_costs)} calls "
          "(the GUI timer calls it every 200 ms)")


if __name__ == "__main__":
    main()
