"""Benchmark: our 3D UNet against MONAI's DiffusionModelUNet at a matched parameter count.

Prints forward time, training-step time (forward + backward + AdamW step) and peak
memory for each network, on CPU and, when available, on CUDA.

    python Testing/Benchmarks/unet.py                 # CPU (2 threads) and CUDA if present
    python Testing/Benchmarks/unet.py --device cpu --size 32 --repeats 3

MONAI is needed only for this script: ``pip install --no-deps monai einops`` (MONAI
needs only torch and numpy, which meddiffcore already has, and einops for its attention).

Times are the best of ``--repeats`` calls after a warm-up. Memory: on CUDA,
``torch.cuda.max_memory_allocated`` during the phase (weights, optimizer state,
activations). On CPU each (network, phase) runs in its own child process and reports
the rise of the process's peak resident set size (VmHWM, reset through
``/proc/self/clear_refs``) over its RSS with network, optimizer and inputs built; glibc is told to return freed
blocks to the system so that RSS follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# Both networks: 3 levels with widths (c, 2c, 4c), 2 res blocks per level, self-attention
# at the lowest level and in the middle, 32-channel heads, GroupNorm with 16 groups.
OUR_BASE = 32
NORM_GROUPS = 16
HEAD_CHANNELS = 32


def have_monai() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


def build(name: str, monai_channels: int):
    if name == "meddiffcore":
        from meddiffcore.nets import UNet, UNetConfig

        return UNet(UNetConfig(spatial_dims=3, base_channels=OUR_BASE, channel_mult=(1, 2, 4), num_res_blocks=2,
                               attention_levels=(2,), attention_head_channels=HEAD_CHANNELS, norm_groups=NORM_GROUPS))
    from monai.networks.nets import DiffusionModelUNet

    c = monai_channels
    return DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, num_res_blocks=2, channels=(c, 2 * c, 4 * c),
                              attention_levels=(False, False, True), norm_num_groups=NORM_GROUPS,
                              num_head_channels=HEAD_CHANNELS)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def match_monai_channels() -> tuple[int, int, int]:
    """MONAI's base width (a multiple of the group count) whose size is nearest ours."""
    ours = count(build("meddiffcore", 0))
    best = min(range(NORM_GROUPS, 4 * OUR_BASE + 1, NORM_GROUPS), key=lambda c: abs(count(build("monai", c)) - ours))
    return ours, best, count(build("monai", best))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """This process's peak RSS since :func:`reset_peak_rss`: VmHWM, not ``ru_maxrss``, which
    also counts the parent's RSS at fork time and cannot be reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(name: str, phase: str, device: str, size: int, batch: int, repeats: int, monai_channels: int) -> dict:
    """Best seconds per call and peak memory (bytes) of one phase: 'forward' or 'train'."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build(name, monai_channels).to(dev)
    x = torch.randn(batch, 1, size, size, size, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)
    t = t.float() if name == "meddiffcore" else t
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward():
        with torch.no_grad():
            model(x, t)

    def train():
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fn = forward if phase == "forward" else train
    model.train(phase == "train")
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()  # CPU: measured peak includes the first call (AdamW state is created there)
    reset_peak_rss()
    times = []
    for _ in range(repeats + 1):  # the first call is a warm-up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes() - before
    return {"seconds": min(times[1:]), "peak_bytes": max(peak, 0)}


#: glibc settings for the CPU memory runs: every large block is mmap-ed and returned on free,
#: so RSS follows the live tensors instead of the allocator's free lists (timings run without them,
#: as mmap-per-tensor is slow).
_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_child(args, name: str, phase: str, device: str, monai_channels: int, for_memory: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", name, phase, device, "--size", str(args.size), "--batch",
           str(args.batch), "--repeats", str(1 if for_memory else args.repeats), "--threads", str(args.threads),
           "--monai-channels", str(monai_channels)]
    env = {**os.environ, **_RSS_ENV} if for_memory else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--size", type=int, default=32, help="cubic input size on CPU (default 32)")
    p.add_argument("--cuda-size", type=int, default=64, help="cubic input size on CUDA (default 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--monai-channels", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=3, metavar=("NET", "PHASE", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.child:
        print(json.dumps(measure(*args.child, args.size, args.batch, args.repeats, args.monai_channels)))
        return 0
    if not have_monai():
        print("pip install monai to run this benchmark (pip install --no-deps monai einops keeps your torch)")
        return 1

    import monai

    ours, monai_c, theirs = match_monai_channels()
    print(f"torch {torch.__version__}, monai {monai.__version__}, {args.threads} CPU threads")
    print(f"meddiffcore UNet: base_channels={OUR_BASE}, mult (1,2,4), 2 res blocks, attention at level 2 + middle: "
          f"{ours:,} parameters")
    print(f"MONAI DiffusionModelUNet: channels=({monai_c},{2 * monai_c},{4 * monai_c}), 2 res blocks, attention "
          f"(F,F,T) + middle: {theirs:,} parameters ({100 * (theirs - ours) / ours:+.1f}%)")

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(("cpu", args.size))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(("cuda", args.cuda_size))
        elif args.device == "cuda":
            print("CUDA is not available")
            return 1

    print()
    print(f"{'device':6} {'input':>14} {'network':12} {'forward ms':>11} {'train step ms':>14} "
          f"{'fwd peak MiB':>13} {'train peak MiB':>15}")
    for device, size in devices:
        args.size = size
        for name in ("meddiffcore", "monai"):
            f = run_child(args, name, "forward", device, monai_c)
            tr = run_child(args, name, "train", device, monai_c)
            if device == "cpu":
                f["peak_bytes"] = run_child(args, name, "forward", device, monai_c, True)["peak_bytes"]
                tr["peak_bytes"] = run_child(args, name, "train", device, monai_c, True)["peak_bytes"]
            print(f"{device:6} {f'{args.batch}x1x{size}^3':>14} {name:12} {1e3 * f['seconds']:11.1f} "
                  f"{1e3 * tr['seconds']:14.1f} {f['peak_bytes'] / 2**20:13.1f} {tr['peak_bytes'] / 2**20:15.1f}")
    print()
    print("Times: best of --repeats calls after one warm-up (best-of resists other load on the machine).")
    print("Peak memory: CUDA = torch.cuda.max_memory_allocated (weights + optimizer state + activations).")
    print("CPU = rise of peak RSS (VmHWM) over the RSS with network, optimizer and inputs built,")
    print("each network and phase in its own process, glibc set to return freed blocks (MALLOC_MMAP_THRESHOLD_).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
