"""The released networks at their native size: one network evaluation, its peak memory, bf16 autocast and
its error against fp32, and the whole-job extrapolation against the authors' samplers.

Networks (released configuration, deterministic weights regenerated from the fixtures' manifests, so the
outputs are not trivial): WDM's UNet on the 64^3 wavelet grid of a 128^3 volume (57.9 M parameters),
cWDM's generator on the 112x112x80 grid of a 224x224x160 volume with its 24 condition channels (81.5 M),
and TPDM's NCSN++ on a batch of 256^2 slices (61.4 M). Each network runs in a fresh process; memory is
the process's peak RSS during the evaluation on a CPU (weights included) and torch.cuda.max_memory_allocated on a GPU.

Whole-job figures multiply the measured time per evaluation by the evaluations a job needs, network time
only: WDM/cWDM 1000 ancestral steps (the authors') against 50 DPM-Solver++(2M) steps; TPDM 2000
predictor-corrector steps of two passes over 256 slices, primary turns (1 - 1/K of them, K = 2.7)
back-propagating through the network (counted as 3 forward passes), against fast mode's 50 passes.

    python Testing/Benchmarks/published.py                         # CPU, all three (about 5 minutes on 2 cores)
    python Testing/Benchmarks/published.py --device cuda --slices 16
    python Testing/Benchmarks/published.py --parity                # max abs error against every forward fixture
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "core"))

AUTHORS_WDM, FAST_STEPS = 1000, 50
TPDM_STEPS, TPDM_K, SLICES_PER_VOLUME = 2000, 2.7, 256


def _build(name: str, device: str):
    import torch

    from meddiffcore.checkpoints.tpdm import from_reference
    from meddiffcore.checkpoints.wdm import convert_state, released_network
    from meddiffcore.nets import UNet
    from meddiffcore.nets.ncsnpp import NCSNpp, NCSNppConfig
    from published_helpers import TPDM, WDM, det_parameters

    if name == "ncsnpp":
        net = NCSNpp(NCSNppConfig())
        net.load_state_dict(from_reference(net, det_parameters(TPDM / "tpdm_released_ncsnpp_manifest.json")))
    else:
        conditional = name == "cwdm"
        config = released_network(conditional)
        net = UNet(config)
        stem = "cwdm_released" if conditional else "wdm_released_unet128"
        net.load_state_dict(convert_state(det_parameters(WDM / f"{stem}_manifest.json"), config, "manifest"))
    return net.to(device).eval().requires_grad_(False), torch


def _inputs(name: str, slices: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    if name == "ncsnpp":
        x = torch.rand(slices, 1, 256, 256, generator=gen)
        return (x.to(device), torch.full((slices,), 1.944, device=device)), {}, f"{slices} x 256^2 slices"
    grid = (64, 64, 64) if name == "wdm" else (112, 112, 80)
    x = torch.randn(1, 8, *grid, generator=gen).to(device)
    kwargs = {"concat": torch.randn(1, 24, *grid, generator=gen).to(device)} if name == "cwdm" else {}
    label = "64^3 subbands (128^3 volume)" if name == "wdm" else "112x112x80 subbands + 24 cond (224x224x160)"
    return (x, torch.full((1,), 500.0, device=device)), kwargs, label


def _reset_peak_rss() -> None:
    """Linux: restart the process's RSS high-water mark (VmHWM), so the peak is the evaluation's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident memory in bytes: VmHWM on Linux (since the last reset), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(name: str, device: str, slices: int, repeats: int) -> dict:
    net, torch = _build(name, device)
    args, kwargs, label = _inputs(name, slices, device)
    cuda = device.startswith("cuda")

    def run(dtype=None):
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype, enabled=dtype is not None):
            return net(*args, **kwargs).float()

    def timed(dtype=None):
        if cuda:
            run(dtype)  # warm-up (kernel selection)
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = run(dtype)
        if cuda:
            torch.cuda.synchronize()
        return out, (time.perf_counter() - start) / repeats

    gc.collect()  # the float64 draws that made the weights are gone before memory is measured
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    ref, seconds = timed()
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss()
    figures = {"network": name, "input": label, "device": device, "batch": slices if name == "ncsnpp" else 1,
               "parameters": sum(p.numel() for p in net.parameters()), "fp32_s": seconds, "peak_gib": peak / 2**30}
    for dtype, key in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        if dtype == torch.float16 and not cuda:
            figures[key] = "CUDA only (no CPU fp16 kernels: ~250x slower)"
            continue
        try:
            out, s = timed(dtype)
        except (RuntimeError, NotImplementedError) as exc:  # an autocast dtype this device lacks
            figures[key] = f"n/a ({type(exc).__name__})"
            continue
        err = float((out - ref).abs().max() / ref.abs().max())
        figures[key] = {"s": s, "rel_max_err": err, "finite": bool(torch.isfinite(out).all())}
    return figures


def parity() -> list[tuple[str, float, float]]:
    """(network and configuration, max abs error against the authors' output, the issue's tolerance
    1e-5 max|ref|) for every forward fixture (tiny checkpoints imported as a user would)."""
    import tempfile

    import numpy as np
    import torch

    from meddiffcore.checkpoints import import_checkpoint
    from meddiffcore.models import load_model
    from meddiffcore.nets import UNet, UNetConfig
    from meddiffcore.nets.ncsnpp import NCSNpp, NCSNppConfig
    from published_helpers import TPDM, TPDM_TINY, WDM, WDM_TINY

    def row(what, out, ref):
        ref = torch.from_numpy(ref)
        return what, float((out - ref).abs().max()), 1e-5 * float(ref.abs().max())

    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        files = import_checkpoint("wdm", [WDM / "wdm_tiny_brats_1200000.pt"], variant="brats", out_dir=tmp,
                                  network=WDM_TINY)
        card, tensors = load_model(files.card_path)
        net = UNet(UNetConfig.from_dict(card.network)).eval()
        net.load_state_dict(tensors)
        f = np.load(WDM / "wdm_tiny_forward.npz")
        rows.append(row("WDM UNet, tiny checkpoint (2, 8, 8^3)", net(torch.from_numpy(f["x"]),
                                                                     torch.from_numpy(f["t"]).float()), f["out"]))
        for name, stem in (("WDM UNet, released (2, 8, 16^3)", "wdm"), ("cWDM UNet, released (1, 8+24, 16^3)", "cwdm")):
            net, _ = _build(stem, "cpu")
            f = np.load(WDM / f"{'cwdm_released' if stem == 'cwdm' else 'wdm_released_unet128'}_forward_32cube.npz")
            kw = {"concat": torch.from_numpy(f["cond"])} if stem == "cwdm" else {}
            rows.append(row(name, net(torch.from_numpy(f["x"]), torch.from_numpy(f["t"]).float(), **kw), f["out"]))
        path = TPDM / "tpdm_tiny_checkpoint.pth"
        files = import_checkpoint("tpdm", [path, path], variant="aapm", out_dir=tmp, network=TPDM_TINY)
        _, tensors = load_model(files.card_path)
        net = NCSNpp(NCSNppConfig(**TPDM_TINY)).eval()
        net.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("primary.")})
        f = np.load(TPDM / "tpdm_tiny_forward.npz")
        rows.append(row("NCSN++, tiny checkpoint EMA (2, 1, 48^2)", net(torch.from_numpy(f["x"]),
                                                                        torch.from_numpy(f["sigma"])), f["net_out"]))
        net, _ = _build("ncsnpp", "cpu")
        for size in (48, 256):
            f = np.load(TPDM / f"tpdm_released_forward_{size}.npz")
            rows.append(row(f"NCSN++, released ({f['x'].shape[0]}, 1, {size}^2)",
                            net(torch.from_numpy(f["x"]), torch.from_numpy(f["sigma"])), f["net_out"]))
    return rows


def job_table(f: dict) -> tuple[str, str, str]:
    """(authors' job, fast job, speed-up) from the time of one evaluation."""
    if f["network"] == "ncsnpp":
        per_slice = f["fp32_s"] / f["batch"]
        primary = 1.0 - 1.0 / TPDM_K
        authors = TPDM_STEPS * 2 * SLICES_PER_VOLUME * per_slice * (1 + 2 * primary)
        fast = FAST_STEPS * SLICES_PER_VOLUME * per_slice
        return (f"{TPDM_STEPS} PC steps x 2 x 256 slices: {authors / 3600:.1f} h",
                f"{FAST_STEPS} x 256 slices: {fast / 60:.1f} min", f"{authors / fast:.0f}x")
    authors, fast = AUTHORS_WDM * f["fp32_s"], FAST_STEPS * f["fp32_s"]
    return (f"{AUTHORS_WDM} ancestral: {authors / 60:.0f} min", f"{FAST_STEPS} DPM-Solver++(2M): {fast / 60:.1f} min",
            f"{authors / fast:.0f}x")


def _autocast_cell(value) -> str:
    if isinstance(value, str):
        return value
    return f"{value['s']:.2f} s, err {value['rel_max_err']:.1e}{'' if value['finite'] else ' (non-finite!)'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nets", default="wdm,cwdm,ncsnpp")
    parser.add_argument("--slices", type=int, default=2, help="NCSN++ batch of 256^2 slices")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--parity", action="store_true", help="print the parity errors against the fixtures instead")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.device, args.slices, args.repeats)))
        return 0
    if args.parity:
        print("| network, configuration (input) | max abs error | tolerance (1e-5 max abs ref) |\n|---|---|---|")
        for what, err, tol in parity():
            print(f"| {what} | {err:.2e} | {tol:.2e} |")
        return 0
    import torch

    import os

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, load average "
          f"{os.getloadavg()[0]:.1f} at the start; released configurations with deterministic weights")
    rows = []
    for name in args.nets.split(","):
        result = subprocess.run([sys.executable, __file__, "--worker", name, "--device", args.device, "--slices",
                                 str(args.slices), "--repeats", str(args.repeats)], capture_output=True, text=True)
        if result.returncode:
            print(f"{name}: failed\n{result.stderr[-2000:]}")
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    header = ("| network | one evaluation | params | fp32 time | peak memory | bf16 autocast | fp16 autocast | "
              "authors' job | fast job | speed-up |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for f in rows:
        authors, fast, speedup = job_table(f)
        print(f"| {f['network']} | {f['input']} | {f['parameters'] / 1e6:.1f} M | {f['fp32_s']:.2f} s | "
              f"{f['peak_gib']:.2f} GiB | {_autocast_cell(f['bf16'])} | {_autocast_cell(f['fp16'])} | {authors} | "
              f"{fast} | {speedup} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
