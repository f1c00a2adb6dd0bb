"""CPU threads: the same sparse-view recon job with --threads 1, 2, ... and with the default (the cores free
now), each a fresh `meddiff` process, wall time and the ratio to one thread measured in the same run.

On a machine shared with other jobs more threads than free cores make torch slower, not faster (its
threads wait for each other at every parallel region); the default takes the load average into account.

    python Testing/Benchmarks/threads.py [--size 32] [--views 16] [--steps 50] [--threads 1,2] [--repeats 1]
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


def run(args: list[str]) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "meddiffcore.cli", *args, "--progress", "json"], capture_output=True,
                            text=True, env=env)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    started = next(json.loads(line) for line in result.stdout.splitlines() if '"started"' in line)
    return elapsed, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from meddiffcore.devices import free_cores, usable_cores

    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ct.nii.gz"
        subprocess.run([sys.executable, "-m", "meddiffcore.cli", "phantom", "ct", "--out", str(volume), "--size",
                        str(args.size), "--seed", "0"], check=True, capture_output=True)
        job = ["recon", "ct", "--simulate-from", str(volume), "--views", str(args.views), "--steps", str(args.steps),
               "--out", str(Path(tmp) / "rec.nii.gz"), "--device", "cpu", "--seed", "0"]
        print(f"usable cores {usable_cores()}, load average {os.getloadavg()[0]:.2f}, free cores now {free_cores()}")
        times: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for n in [int(t) for t in args.threads.split(",")] + [None]:
                label = "default" if n is None else f"{n} thread(s)"
                elapsed, started = run(job + ([] if n is None else ["--threads", str(n)]))
                times.setdefault(label, []).append(elapsed)
                if n is None:
                    label += f" -> {started['threads']}"
                print(f"{label:<22} {elapsed:7.1f} s  (load average {os.getloadavg()[0]:.2f})", flush=True)
        one = min(times.get("1 thread(s)", [float("nan")]))
        for label, values in times.items():
            print(f"{label:<22} best {min(values):7.1f} s, {min(values) / one:5.2f}x the time of 1 thread")


if __name__ == "__main__":
    main()
