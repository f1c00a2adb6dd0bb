"""The released networks at their native size: one network evaluation, its peak memory, bf16 autocast and
its error against fp32, and the whole-job extrapolation against the authors' samplers.

Networks (released configuration, deterministic weights regenerated from the fixtures' manifests, so the
outputs are not trivial): WDM's UNet on the 64^3 wavelet grid of a 128^3 volume (57.9 M parameters),
cWDM's generator on the 112x112x80 grid of a 224x224x160 volume with its 24 condition channels (81.5 M),
TPDM's NCSN++ on a batch of 256^2 slices (61.4 M), the CTP authors' inpainting UNet on one 8x192x192 slab
(104 M) and the three MRNet stages at 64^2, 128^2 and 256^2 (11 M each). Each network runs in a fresh process;
memory is the process's peak RSS during the evaluation on a CPU (weights included) and
torch.cuda.max_memory_allocated on a GPU.

Whole-job figures multiply the measured time per evaluation by the evaluations a job needs, network time
only: WDM/cWDM 1000 ancestral steps (the authors') against 50 DPM-Solver++(2M) steps; TPDM 2000
predictor-corrector steps of two passes over 256 slices, primary turns (1 - 1/K of them, K = 2.7)
back-propagating through the network (counted as 3 forward passes), against fast mode's 50 passes; CTP a 60 s
sequence acquired every 4 s (16 frames, 45 missing, one 8-slice slab each) with the authors' 1500 ancestral
steps per frame against DPM-Solver++(2M) in 50 and 20 steps and the posterior mean (one evaluation); MRNet one
256^2 image through the cascade with the authors' ancestral sampler over every training step (2000 + 1000 +
1000, T as their pipeline builds the stages) against 50 steps per stage.

    python Testing/Benchmarks/published.py                         # CPU, all three (about 5 minutes on 2 cores)
    python Testing/Benchmarks/published.py --device cuda --slices 16
    python Testing/Benchmarks/published.py --nets ctp,mrnet_base64,mrnet_sr128,mrnet_sr256 --threads 1
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
CTP_AUTHORS_STEPS, CTP_SEQUENCE_S, CTP_ACQUIRED_EVERY_S = 1500, 60, 4
MRNET_STAGES = {"mrnet_base64": ("base", 64), "mrnet_sr128": ("sr128", 128), "mrnet_sr256": ("sr256", 256)}
MRNET_AUTHORS_STEPS = {"mrnet_base64": 2000, "mrnet_sr128": 1000, "mrnet_sr256": 1000}


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
    elif name == "ctp":
        from meddiffcore.nets.ctp_unet import CTPUNet, released_config
        from meddiffcore.nets.ctp_unet import from_reference as ctp_reference
        from published_helpers import CTP

        net = CTPUNet(released_config())
        net.load_state_dict(ctp_reference(net, det_parameters(CTP / "ctp_released_manifest.json")))
    elif name in MRNET_STAGES:
        from meddiffcore.checkpoints.mrnet import stage_network
        from meddiffcore.nets.mrnet import MRNetUNet
        from published_helpers import mrnet_det_weights

        net = MRNetUNet(stage_network(*MRNET_STAGES[name], swin=True))
        mrnet_det_weights(net)
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
    if name == "ctp":
        x = torch.randn(1, 1, 8, 192, 192, generator=gen).to(device)
        kwargs = {"concat": torch.rand(1, 2, 8, 192, 192, generator=gen).to(device) * 2 - 1,
                  "embedding": torch.tensor([[0.5, 0.0, 1.0, 0.0, 0.0]], device=device)}
        return (x, torch.full((1,), 0.44, device=device)), kwargs, "one 8x192x192 slab, 3 frames"
    if name in MRNET_STAGES:
        size = MRNET_STAGES[name][1]
        x = torch.randn(1, 1, size, size, generator=gen).to(device)
        kwargs = {"concat": torch.rand(1, 1, size, size, generator=gen).to(device)} if size > 64 else {}
        return (x, torch.full((1,), 500, device=device)), kwargs, f"one {size}^2 slice"
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


def measure(name: str, device: str, slices: int, repeats: int, threads: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
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
        rows += _ctp_mrnet_parity(tmp, row)
    return rows


def _ctp_mrnet_parity(tmp: str, row) -> list:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from meddiffcore.checkpoints import import_checkpoint
    from meddiffcore.models import load_model
    from meddiffcore.nets.ctp_unet import CTPUNet, CTPUNetConfig
    from published_helpers import CTP, CTP_TINY, MRNET

    def ctp(net, f):
        x = f["x_noisy"] if "x_noisy" in f.files else f["x_noisy_f16"].astype(np.float32)
        cond = f["cond"] if "cond" in f.files else f["cond_f16"].astype(np.float32)
        context = np.concatenate([f["local_context"], f["global_context"]], axis=1)
        return net(torch.from_numpy(x), torch.from_numpy(f["noise_level"]), concat=torch.from_numpy(cond),
                   embedding=torch.from_numpy(context))

    rows = []
    files = import_checkpoint("ctp", [CTP / "ctp_tiny_model-tiny.pt"], out_dir=tmp, network=CTP_TINY)
    card, tensors = load_model(files.card_path)
    net = CTPUNet(CTPUNetConfig.from_dict(card.network)).eval()
    net.load_state_dict(tensors)
    rows.append(row("CTP UNet, tiny checkpoint EMA (2, 3, 2x64x64)", ctp(net, np.load(CTP / "ctp_tiny_forward.npz")),
                    np.load(CTP / "ctp_tiny_forward.npz")["eps"]))
    net, _ = _build("ctp", "cpu")
    for stem, what in (("1x32x32", "(2, 3, 1x32x32)"), ("8x192x192", "(1, 3, 8x192x192)")):
        f = np.load(CTP / f"ctp_released_forward_{stem}.npz")
        rows.append(row(f"CTP UNet, released {what}", ctp(net, f), f["eps"]))
    for name, (stage, size) in MRNET_STAGES.items():
        net, _ = _build(name, "cpu")
        f = np.load(MRNET / f"{name}_forward.npz")
        cond = None if stage == "base" else F.interpolate(torch.from_numpy(f["low_res"]), scale_factor=2,
                                                          mode="bilinear", align_corners=False)
        rows.append(row(f"MRNet {stage} UNet, released (2, 1, {size}^2), authors' Swin layout",
                        net(torch.from_numpy(f["x"]), torch.from_numpy(f["t"]), concat=cond), f["out"]))
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
    if f["network"] == "ctp":
        missing = ctp_missing_frames()
        authors, fast = missing * CTP_AUTHORS_STEPS * f["fp32_s"], missing * FAST_STEPS * f["fp32_s"]
        return (f"{missing} frames x {CTP_AUTHORS_STEPS} ancestral: {authors / 3600:.1f} h",
                f"{missing} x {FAST_STEPS} DPM-Solver++(2M): {fast / 3600:.2f} h", f"{authors / fast:.0f}x")
    if f["network"] in MRNET_STAGES:
        n = MRNET_AUTHORS_STEPS[f["network"]]
        authors, fast = n * f["fp32_s"], FAST_STEPS * f["fp32_s"]
        return (f"{n} ancestral: {authors / 60:.1f} min", f"{FAST_STEPS} DPM-Solver++(2M): {fast:.0f} s",
                f"{authors / fast:.0f}x")
    authors, fast = AUTHORS_WDM * f["fp32_s"], FAST_STEPS * f["fp32_s"]
    return (f"{AUTHORS_WDM} ancestral: {authors / 60:.0f} min", f"{FAST_STEPS} DPM-Solver++(2M): {fast / 60:.1f} min",
            f"{authors / fast:.0f}x")


def ctp_missing_frames() -> int:
    """Frames to synthesize in a 60 s sequence at 1 s acquired every 4 s (0, 4, ..., 60: 16 kept, 45 missing)."""
    acquired = CTP_SEQUENCE_S // CTP_ACQUIRED_EVERY_S + 1
    return CTP_SEQUENCE_S + 1 - acquired


def whole_jobs(rows: list[dict]) -> list[tuple[str, str, str, str]]:
    """(job, method, network evaluations, network time) side by side, from the measured evaluation times."""
    out = []
    by_name = {f["network"]: f for f in rows}
    if "ctp" in by_name:
        t, missing = by_name["ctp"]["fp32_s"], ctp_missing_frames()
        job = f"CTP 60 s sequence from 4 s sampling ({missing} frames, 8x192x192)"
        for method, n in ((f"authors: {CTP_AUTHORS_STEPS} ancestral steps per frame", CTP_AUTHORS_STEPS),
                          (f"DPM-Solver++(2M), {FAST_STEPS} steps (the card's default)", FAST_STEPS),
                          ("DPM-Solver++(2M), 20 steps", 20), ("posterior mean (one evaluation)", 1)):
            out.append((job, method, f"{missing * n:,}", _duration(missing * n * t)))
    stages = [k for k in MRNET_STAGES if k in by_name]
    if len(stages) == len(MRNET_STAGES):
        job = "MRNet one 256^2 image (64 -> 128 -> 256)"
        authors = sum(MRNET_AUTHORS_STEPS[k] * by_name[k]["fp32_s"] for k in stages)
        fast = sum(FAST_STEPS * by_name[k]["fp32_s"] for k in stages)
        out.append((job, "authors: ancestral over every training step (2000 + 1000 + 1000)",
                    f"{sum(MRNET_AUTHORS_STEPS.values()):,}", _duration(authors)))
        out.append((job, f"DPM-Solver++(2M), {FAST_STEPS} steps per stage", f"{3 * FAST_STEPS}", _duration(fast)))
    return out


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each measuring process")
    parser.add_argument("--parity", action="store_true", help="print the parity errors against the fixtures instead")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.device, args.slices, args.repeats, args.threads)))
        return 0
    if args.parity:
        print("| network, configuration (input) | max abs error | tolerance (1e-5 max abs ref) |\n|---|---|---|")
        for what, err, tol in parity():
            print(f"| {what} | {err:.2e} | {tol:.2e} |")
        return 0
    import torch

    import os

    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} CPU threads, device {args.device}, "
          f"load average "
          f"{os.getloadavg()[0]:.1f} at the start; released configurations with deterministic weights")
    rows = []
    for name in args.nets.split(","):
        extra = ["--threads", str(args.threads)] if args.threads else []
        result = subprocess.run([sys.executable, __file__, "--worker", name, "--device", args.device, "--slices",
                                 str(args.slices), "--repeats", str(args.repeats), *extra], capture_output=True,
                                text=True)
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
    jobs = whole_jobs(rows)
    if jobs:
        print("\n| job | method | network evaluations | network time |\n|---|---|---|---|")
        for job, method, n, t in jobs:
            print(f"| {job} | {method} | {n} | {t} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
