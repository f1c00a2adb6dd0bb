"""Volume-generator commands: ``meddiff upscale`` (SR cascade on real slices) and
``meddiff evaluate generate`` (WDM and SR-cascade figures). ``meddiff generate`` is shared
(cli/generic.py) and runs ``wdm.generate`` or ``sr.generate`` from the model card.

Nothing heavy is imported here; the task code loads when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import CARD_DEFAULT, add_job_options, execute

EXIT_CODES = ("Exit codes: 0 ok, 2 usage, 3 bad input (slices of a size no stage accepts, a condition volume on the "
              "wrong grid, an odd volume size for the wavelet transform, unreadable file), 4 bad parameter, "
              "5 model problem; nothing is written on error.")


def register(subparsers, groups) -> None:
    p = subparsers.add_parser(
        "upscale", help="super-resolve low-resolution slices (a 2D image or every axial slice of a volume) 2x per stage",
        description="Each axial slice must be square and of a size one super-resolution stage of the model takes "
                    "(the demo: 32 or 64 px; the full cascade: 64 or 128 px). In-plane spacing is divided by the "
                    "factor; the new grid covers exactly the input's extent. " + EXIT_CODES)
    p.add_argument("--input", required=True, help="low-resolution volume (.nii.gz, .nrrd, .mha, DICOM) or 8-bit .png")
    p.add_argument("--out", required=True, help="output volume (.nii.gz, .nrrd, .mha) or .png for a one-slice input")
    p.add_argument("--stages", type=int, default=None, help="how many 2x stages to run (default: all the model has left)")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps per stage ({CARD_DEFAULT})")
    p.add_argument("--sampler", default=None,
                   help="ancestral, ddim, dpmpp_2m, euler, heun, or authors: an imported published cascade's own "
                        "sampler (the MRNet stages: ancestral over every training step of each stage, 1000 or 2000; "
                        f"a model without one refuses it) ({CARD_DEFAULT})")
    add_job_options(p, model="required")
    p.set_defaults(handler=_upscale)

    p = groups["evaluate"].add_parser(
        "generate", help="generative-model figures: MS-SSIM diversity, 3D Fréchet distance (WDM), "
                         "SR stages vs bicubic/Lanczos (PSNR, SSIM)",
        description="WDM: generates --samples volumes, mean MS-SSIM over pairs (lower = more diverse) and the "
                    "Fréchet distance to real volumes (--real FOLDER, else held-out phantoms) with the weight-free "
                    "intensity-statistics features or MedicalNet ResNet-50 (--features-weights FILE "
                    "--features-sha256 HEX, verified). cWDM adds PSNR/SSIM against the true target contrast. SR "
                    "cascade: each stage on held-out phantom slices vs bicubic and Lanczos, plus diversity. " + EXIT_CODES)
    p.add_argument("--model", required=True, help="model name or path")
    p.add_argument("--samples", type=int, default=8, help="generated volumes/slices to measure")
    p.add_argument("--slices", type=int, default=8, help="SR: held-out slices per stage")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--real", default=None, help="WDM: folder of real volumes on the model's grid")
    p.add_argument("--features-weights", default=None, help="WDM: MedicalNet resnet_50_23dataset.pth")
    p.add_argument("--features-sha256", default=None, help="sha256 of --features-weights (required with it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--update-card", action="store_true", help="record the figures in the model card's metrics")
    p.set_defaults(handler=_evaluate)


def _upscale(args: argparse.Namespace) -> int:
    from ..jobs import Job

    params = {k: getattr(args, k) for k in ("stages", "steps", "sampler") if getattr(args, k) is not None}
    job = Job(task="sr.upscale", inputs={"image": args.input}, outputs={"volume": args.out}, model=args.model,
              params=params, device=args.device, seed=args.seed)
    return execute(job, args)


def _evaluate(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, MedDiffError
    from ..progress import TerminalReporter

    reporter = TerminalReporter(sys.stderr)
    try:
        from ..models import ModelCard, find_model

        files = find_model(args.model)
        card = ModelCard.from_json_file(files.card_path)
        if args.samples < 2:
            raise ConfigError(f"--samples must be at least 2 for diversity, got {args.samples}", "use e.g. --samples 8")
        if card.task == "wdm":
            from ..tasks.wdm.evaluate import evaluate_model
            from ..tasks.wdm.features import load_medicalnet

            extractor = None
            if args.features_weights:
                extractor = load_medicalnet(args.features_weights, args.features_sha256 or "")
            figures = evaluate_model(args.model, samples=args.samples, steps=args.steps, real_folder=args.real,
                                     extractor=extractor, device=args.device, seed=args.seed, reporter=reporter)
        elif card.task == "sr":
            from ..tasks.sr.evaluate import evaluate_model

            figures = evaluate_model(args.model, samples=args.samples, slices=args.slices, steps=args.steps,
                                     device=args.device, seed=args.seed, reporter=reporter)
        else:
            raise ConfigError(f"model '{card.name}' is a '{card.task}' model", "evaluate generate takes wdm or sr models")
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.update_card:
        from pathlib import Path

        card.metrics = {**card.metrics, "evaluate_generate": figures}
        Path(files.card_path).write_text(card.to_json(), encoding="utf-8")
    return 0
