"""``meddiff generate``: new volumes from a generative model, whatever its task.

The model card says which task made the model (``uncond``, ``wdm``, ``sr``...);
the command runs that task's ``generate`` job.
"""

from __future__ import annotations

import argparse

from ..errors import MedDiffError
from .common import add_job_options, execute, parse_params


def register(subparsers, groups) -> None:
    parser = subparsers.add_parser("generate", help="generate new volumes or images from a generative model")
    parser.add_argument("--out", required=True, help="output file (.nii.gz, .nrrd, .mha); with --samples K > 1, _01.._K is added")
    parser.add_argument("--samples", type=int, default=1, help="how many to generate")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model card's)")
    parser.add_argument("--sampler", default=None,
                        help="ancestral, ddim, dpmpp_2m, dpmpp_3m, euler, heun, or authors (an imported model's "
                             "published sampler); default: the model card's")
    parser.add_argument("--condition", action="append", default=[], metavar="[NAME=]VOLUME",
                        help="condition volume of a conditional model; an imported cWDM model takes its three "
                             "source contrasts by name, e.g. --condition t1n=T1.nii.gz (repeat per contrast)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxel spacing in mm of the output")
    parser.add_argument("--preview", default=None, help="also write a PNG preview here")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra task parameter (repeatable)")
    add_job_options(parser, model="required")
    parser.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from ..jobs import JOB_RUNNERS, Job
    from ..models import ModelCard, find_model
    from .common import reporter_for

    try:
        card = ModelCard.from_json_file(find_model(args.model).card_path)
        if f"{card.task}.generate" not in JOB_RUNNERS:
            from ..errors import ModelError

            makers = sorted(name.split(".")[0] for name in JOB_RUNNERS if name.endswith(".generate"))
            raise ModelError(f"model '{card.name}' is a '{card.task}' model, which does not generate volumes on its "
                             f"own; `meddiff generate` takes {', '.join(makers)} models",
                             f"choose a {' or '.join(makers)} model (`meddiff models list`), or run this one with its "
                             f"task's command (`meddiff --help`)")
    except MedDiffError as error:
        reporter_for(args.progress).error(error)
        return error.exit_status
    params = {"samples": args.samples, **parse_params(args.param)}
    for key in ("steps", "sampler", "spacing"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    outputs = {"volume": args.out}
    if args.preview:
        outputs["preview"] = args.preview
    inputs = condition_inputs(args.condition)
    job = Job(task=f"{card.task}.generate", inputs=inputs, outputs=outputs, model=args.model, params=params,
              device=args.device, seed=args.seed)
    return execute(job, args)


def condition_inputs(items: list[str]) -> dict[str, str]:
    """``--condition`` values as job inputs: ``VOLUME`` -> ``{"condition": VOLUME}``, ``NAME=VOLUME`` -> ``{NAME: VOLUME}``."""
    inputs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name.isidentifier():
            inputs[name] = path
        else:
            inputs["condition"] = item
    return inputs
