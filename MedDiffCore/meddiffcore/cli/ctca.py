"""CTCA commands: ``meddiff synthesize``, ``meddiff phantom ctca``, ``meddiff prepare ctca``, ``meddiff evaluate ctca``."""

from __future__ import annotations

import argparse
import sys

from .common import CARD_DEFAULT, add_job_options, execute


def register(subparsers, groups) -> None:
    p = subparsers.add_parser(
        "synthesize", help="CTCA: a coronary + heart label map -> a synthetic contrast-enhanced cardiac CT",
        description="Synthesise a cardiac CT whose anatomy follows the label map voxel for voxel "
                    "(labels 0 background, 1 myocardium, 2 LA, 3 LV, 4 RA, 5 RV, 6 aorta, 7 pulmonary artery, 8 coronaries). "
                    "The output is int16 HU on exactly the label map's grid.")
    p.add_argument("--labels", required=True,
                   help="label map file (.seg.nrrd segments are matched by name), a folder holding one DICOM series "
                        "(one volume), or a folder of label files (batch)")
    p.add_argument("--series", default=None, metavar="UID",
                   help="the DICOM series to read when the --labels folder holds several")
    p.add_argument("--out", required=True, help="output CT file (.nii.gz, .nrrd, .mha), or a folder for a batch")
    p.add_argument("--label-mapping", default=None, metavar="FILE", help="JSON/CSV mapping your label values to ours")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps ({CARD_DEFAULT})")
    p.add_argument("--sampler", default=None, help=f"ancestral, ddim, dpmpp_2m, euler, heun ({CARD_DEFAULT})")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale: 1 = conditional model alone, 0 = unconditional, "
                        f">1 = stronger label adherence (two network passes per step) ({CARD_DEFAULT})")
    p.add_argument("--samples", type=int, default=1, help="synthetic CTs per label map (_01, _02... are added)")
    p.add_argument("--hr-model", default=None,
                   help="optional second stage: a high-resolution patch model (e.g. ctca-hr-demo, 1 mm) that refines the "
                        "result on its finer grid; it samples with its own card's defaults unless --steps, --sampler or "
                        "--guidance are given (they apply to both stages). The CT lies on the label map's grid: give a "
                        "map at the patch model's spacing or finer to keep the detail")
    p.add_argument("--preview", default=None, help="also write a PNG preview (a folder for a batch)")
    add_job_options(p)
    p.set_defaults(handler=_synthesize)

    ph = groups["phantom"].add_parser("ctca", help="procedural cardiac label map (+ matching CT)")
    ph.add_argument("--out", required=True, help="label map file (.nii.gz, .nrrd, .mha)")
    ph.add_argument("--image", default=None, help="also write the matching CT (int16 HU)")
    ph.add_argument("--seed", type=int, default=0, help="phantom seed (anatomy, HU values and noise vary with it)")
    ph.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"))
    ph.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    ph.set_defaults(handler=_phantom)

    pr = groups["prepare"].add_parser("ctca", help="ImageCAS images + coronary labels + TotalSegmentator heart labels -> training folder")
    pr.add_argument("--images", required=True, help="folder of CT images (ImageCAS *.img.nii.gz)")
    pr.add_argument("--coronary", required=True, help="folder of coronary labels (ImageCAS *.label.nii.gz)")
    pr.add_argument("--heart", required=True, help="folder of TotalSegmentator heartchambers_highres label maps")
    pr.add_argument("--out", required=True, help="training folder to write (images/, labels/, dataset.json)")
    pr.add_argument("--spacing", type=float, default=2.0, help="isotropic output spacing in mm")
    pr.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"), help="crop/pad to this shape")
    pr.add_argument("--heart-mapping", default=None, metavar="FILE", help="mapping file for the heart labels (default: TotalSegmentator order)")
    pr.set_defaults(handler=_prepare)

    ev = groups["evaluate"].add_parser("ctca", help="label adherence, diversity and memorisation of a CTCA model on held-out phantoms")
    ev.add_argument("--model", default=None, help="model name or path (default ctca-demo)")
    ev.add_argument("--hr-model", default=None,
                    help="a high-resolution ('patch') model: score --model's result upsampled (LR only) against it refined "
                         "by this model (LR + HR) at the patch model's spacing, with the seam measure and each stage's "
                         "time; --update-card stores the figures in this model's card")
    ev.add_argument("--phantoms", type=int, default=10, help="held-out phantoms (seeds 100000...)")
    ev.add_argument("--samples", type=int, default=2, help="samples per phantom (diversity)")
    ev.add_argument("--steps", type=int, default=None, help=f"sampling steps ({CARD_DEFAULT})")
    ev.add_argument("--sampler", default=None, help=f"sampler ({CARD_DEFAULT})")
    ev.add_argument("--guidance", type=float, default=None, help=f"guidance scale ({CARD_DEFAULT})")
    ev.add_argument("--train-phantoms", type=int, default=None, help="training phantoms searched for memorisation (default: the card's)")
    ev.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ev.add_argument("--update-card", action="store_true", help="store the figures in the model card's metrics")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(handler=_evaluate)


def _synthesize(args: argparse.Namespace) -> int:
    from ..jobs import Job

    inputs = {"labels": args.labels}
    if args.label_mapping:
        inputs["label_mapping"] = args.label_mapping
    outputs = {"volume": args.out}
    if args.preview:
        outputs["preview"] = args.preview
    params = {"samples": args.samples}
    for key in ("steps", "sampler", "guidance", "hr_model", "series"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    job = Job(task="ctca.synthesize", inputs=inputs, outputs=outputs, model=args.model, params=params,
              device=args.device, seed=args.seed)
    return execute(job, args)


def _report(fn) -> int:
    from ..errors import MedDiffError

    try:
        fn()
        return 0
    except MedDiffError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status


def _phantom(args: argparse.Namespace) -> int:
    def go():
        from ..io import write_volume
        from ..tasks.ctca.phantom import make_phantom

        ph = make_phantom(args.seed, tuple(args.shape), args.spacing, with_ct=bool(args.image))
        write_volume(ph.labels, args.out)
        if args.image:
            write_volume(ph.ct, args.image)
        print(f"wrote {args.out}" + (f" and {args.image}" if args.image else ""), file=sys.stderr)

    return _report(go)


def _prepare(args: argparse.Namespace) -> int:
    def go():
        from ..tasks.ctca.prepare import prepare

        n = prepare(args.images, args.coronary, args.heart, args.out, spacing_mm=args.spacing, shape=tuple(args.shape),
                    heart_mapping=args.heart_mapping)
        print(f"wrote {n} training pairs to {args.out}", file=sys.stderr)

    return _report(go)


def _evaluate(args: argparse.Namespace) -> int:
    def go():
        from ..tasks.ctca.evaluate import evaluate_high_resolution, evaluate_model, format_high_resolution, format_report

        if args.hr_model:
            figures = evaluate_high_resolution(args.model or "ctca-demo", args.hr_model, phantoms=args.phantoms,
                                               samples=args.samples, steps=args.steps, sampler=args.sampler,
                                               guidance=args.guidance, seed=args.seed, device=args.device,
                                               json_path=args.json, update_card=args.update_card)
            print(format_high_resolution(figures))
        else:
            figures = evaluate_model(args.model or "ctca-demo", phantoms=args.phantoms, samples=args.samples,
                                     steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                                     train_phantoms=args.train_phantoms, seed=args.seed, device=args.device,
                                     json_path=args.json, update_card=args.update_card)
            print(format_report(figures))
        if args.json:
            print(f"wrote {args.json}", file=sys.stderr)

    return _report(go)
