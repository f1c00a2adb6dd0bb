"""CTP commands: ``meddiff inpaint``, ``meddiff perfusion``, ``meddiff phantom ctp``, ``meddiff evaluate ctp``.

Nothing heavy is imported here; the task code loads when a command runs.
"""

from __future__ import annotations

import argparse

from .common import add_job_options, execute


def register(subparsers, groups) -> None:
    p = subparsers.add_parser(
        "inpaint", help="fill a CT perfusion sequence to a fine time grid and repair bad frames (CTP Temporal Inpaint)",
        description="Known frames are copied bit-exactly; missing times on the target grid and listed bad frames are "
                    "synthesized by the diffusion model from the known frames before and after (gaps up to the "
                    "model's limit, 8 s for ctp-demo). Exit codes: 0 ok, 2 usage, 3 bad input (fewer than two "
                    "known frames, unsorted or duplicate times, frames on different grids, NaN, a gap too long, "
                    "bad-frame index out of range), 4 bad parameter, 5 model problem; nothing is written on error.")
    p.add_argument("--sequence", required=True,
                   help="input: .seq.nrrd, 4D NIfTI, a folder of 3D volumes (+ times.txt or --times), or .npy [slices,H,W,T]")
    p.add_argument("--out", required=True, help="output .seq.nrrd (any times), 4D NIfTI or .npy (evenly spaced times)")
    p.add_argument("--interval", type=float, default=1.0, help="target frame interval in seconds (default 1)")
    p.add_argument("--bad-frames", default=None, metavar="I,J,...", help="0-based indices of input frames to replace")
    p.add_argument("--estimate", choices=("mean", "sample"), default=None,
                   help="mean: the posterior-mean frame in one network evaluation (noise-free; best PSNR and maps); "
                        "sample: a frame drawn with --sampler/--steps (realistic noise) (default: the model card's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for --estimate sample (default: the model card's)")
    p.add_argument("--sampler", default=None,
                   help="ancestral, ddim, dpmpp_2m, euler, heun for --estimate sample, or authors: an imported "
                        "published model's own sampler (the CTP authors' model: ancestral over all 1500 training "
                        "steps, always a sample, hours per frame on a CPU; a model without one refuses it) "
                        "(default: the model card's)")
    p.add_argument("--batch-size", type=int, default=None, help="(frame, slab) items sampled together (default: as many as half the free memory holds, at most 8)")
    p.add_argument("--times", default=None, help="frame times in s (0,2,4,...) or one interval; overrides the file's")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxel size (mm) for .npy input")
    add_job_options(p)
    p.set_defaults(handler=_inpaint)

    p = subparsers.add_parser(
        "perfusion", help="CBF, CBV, MTT and Tmax maps of a CT perfusion sequence (block-circulant SVD)",
        description="Writes cbf.nrrd (ml/100ml/min), cbv.nrrd (ml/100ml), mtt.nrrd (s) and tmax.nrrd (s) into "
                    "--out-dir. The AIF is chosen automatically unless --aif-mask is given. Exit code 3 on bad input.")
    p.add_argument("sequence", help="perfusion sequence in HU with evenly spaced frames (fill it with `meddiff inpaint` first)")
    p.add_argument("--out-dir", required=True, help="folder for the maps")
    p.add_argument("--aif-mask", default=None, help="label volume on the sequence grid; its nonzero voxels form the AIF")
    p.add_argument("--svd-threshold", type=float, default=None, help="relative SVD truncation (default 0.1)")
    p.add_argument("--times", default=None, help="frame times in s or one interval, overriding the file's")
    add_job_options(p, seed=False, model=False)
    p.set_defaults(handler=_perfusion)

    p = groups["phantom"].add_parser("ctp", help="a brain CT perfusion phantom sequence with ground-truth maps")
    p.add_argument("--out", required=True, help="output sequence (.seq.nrrd, 4D NIfTI or .npy)")
    p.add_argument("--truth-dir", default=None, help="folder for the ground truth (default: <out name>_truth next to it)")
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="in-plane size in voxels (220 mm field of view)")
    p.add_argument("--frames", type=int, default=None, help="number of 1 s frames (default: 40-60, drawn)")
    p.add_argument("--noise-hu", type=float, default=None, help="noise standard deviation (default: 1-3 HU, drawn; 0: none)")
    add_job_options(p, model=False)
    p.set_defaults(handler=_phantom)

    p = groups["evaluate"].add_parser(
        "ctp", help="fill held-out phantoms subsampled at 2, 4 and 8 s; PSNR/SSIM and perfusion-map errors vs linear interpolation")
    p.add_argument("--model", default=None, help="model name or path (default ctp-demo)")
    p.add_argument("--phantoms", type=int, default=2, help="held-out phantoms (seeds 0..N-1; training uses 100000+)")
    p.add_argument("--size", type=int, default=64, help="in-plane size of the phantoms")
    p.add_argument("--intervals", default="2,4,8", help="sparse sampling intervals in s")
    p.add_argument("--estimate", choices=("mean", "sample"), default=None, help="posterior mean or a sample (default: the card's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-hu", type=float, default=None, help="phantom noise in HU (default: 1-3, drawn per phantom)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--update-card", action="store_true", help="record the figures in the model card's metrics")
    p.set_defaults(handler=_evaluate)


def _inpaint(args: argparse.Namespace) -> int:
    from ..jobs import Job

    params = {"interval": args.interval}
    for key in ("bad_frames", "estimate", "steps", "sampler", "batch_size", "times", "spacing"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    job = Job(task="ctp.inpaint", inputs={"sequence": args.sequence}, outputs={"sequence": args.out},
              model=args.model, params=params, device=args.device, seed=args.seed)
    return execute(job, args)


def _perfusion(args: argparse.Namespace) -> int:
    from ..jobs import Job

    inputs = {"sequence": args.sequence}
    if args.aif_mask:
        inputs["aif_mask"] = args.aif_mask
    params = {k: getattr(args, k) for k in ("svd_threshold", "times") if getattr(args, k) is not None}
    job = Job(task="ctp.perfusion", inputs=inputs, outputs={"maps": args.out_dir}, params=params, device=args.device)
    return execute(job, args)


def _phantom(args: argparse.Namespace) -> int:
    from ..jobs import Job

    outputs = {"sequence": args.out}
    if args.truth_dir:
        outputs["truth"] = args.truth_dir
    params = {k: getattr(args, k) for k in ("slices", "size", "frames", "noise_hu") if getattr(args, k) is not None}
    job = Job(task="ctp.phantom", outputs=outputs, params=params, device=args.device, seed=args.seed)
    return execute(job, args)


def _evaluate(args: argparse.Namespace) -> int:
    import sys

    from ..errors import MedDiffError

    try:
        from ..tasks.ctp.evaluate import evaluate, format_report, record_in_card

        intervals = [int(v) for v in str(args.intervals).split(",") if v.strip()]
        result = evaluate(args.model, phantoms=args.phantoms, size=args.size, intervals=intervals, steps=args.steps,
                          sampler=args.sampler, estimate=args.estimate, device=args.device, seed=args.seed,
                          noise_hu=args.noise_hu, log=lambda m: print(m, file=sys.stderr))
        print(format_report(result))
        if args.json:
            import json
            from pathlib import Path

            Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        if args.update_card:
            print(f"recorded in {record_in_card(args.model, result)}", file=sys.stderr)
        return 0
    except MedDiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
