"""Peak memory and time of WDM (a UNet on the 8 Haar subbands at half resolution) against a plain
UNet on the same full-resolution volume: one training step (forward + backward) and one sampling
step (forward, no grad), batch 1.

Both networks use the same UNet settings (the seed's preset for the size: base channels, 2 res
blocks, channel multipliers, additive skips, no attention); only the input differs: (1, 8, N/2, N/2, N/2)
subbands for WDM, (1, 1, N, N, N) voxels for the plain UNet. Each measurement runs in a fresh process;
memory is torch.cuda.max_memory_allocated on a GPU and the process's peak RSS growth on a CPU.

    python Testing/Benchmarks/wdm.py --size 64 --base 16 --device cpu        # CPU, narrowed network
    python Testing/Benchmarks/wdm.py --size 128 256 --device cuda            # the seed's sizes on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(kind: str, size: int, base: int, device: str, repeats: int) -> dict:
    import torch

    from meddiffcore.nets import UNet
    from meddiffcore.nets.wavelet import haar_dwt3d
    from meddiffcore.tasks.wdm.config import wdm_network

    config = wdm_network(size if size in (64, 128, 256) else 64, base_channels=base)
    if kind == "unet":
        config.in_channels = config.out_channels = 1
    net = UNet(config).to(device)
    volume = torch.randn(1, 1, size, size, size, device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step(train: bool) -> None:
        x = haar_dwt3d(volume) if kind == "wdm" else volume
        t = torch.full((1,), 500.0, device=device)
        if train:
            net(x, t).square().mean().backward()
        else:
            with torch.no_grad():
                net(x, t)

    figures = {"kind": kind, "size": size, "base_channels": base, "device": device,
               "parameters": sum(p.numel() for p in net.parameters())}
    for phase, train in (("train_step", True), ("sample_step", False)):
        step(train)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            step(train)
        sync()
        figures[f"{phase}_s"] = (time.perf_counter() - start) / repeats
    if cuda:
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        figures["peak_memory_gib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[64])
    parser.add_argument("--base", type=int, default=64, help="UNet base channels (the seed: 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=["wdm", "unet"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size[0], args.base, args.device, args.repeats)))
        return 0
    print(f"{'size':>5} {'model':>5} {'params':>9} {'train s':>8} {'sample s':>9} {'peak GiB':>9}  ({args.device}, base {args.base})")
    for size in args.size:
        for kind in ("wdm", "unet"):
            cmd = [sys.executable, __file__, "--one", kind, "--size", str(size), "--base", str(args.base),
                   "--device", args.device, "--repeats", str(args.repeats)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode:
                last = (result.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"{size:>5} {kind:>5}  failed: {last}")
                continue
            f = json.loads(result.stdout)
            print(f"{size:>5} {kind:>5} {f['parameters']:>9} {f['train_step_s']:>8.3f} {f['sample_step_s']:>9.3f} "
                  f"{f['peak_memory_gib']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
