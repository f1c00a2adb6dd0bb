"""``meddiff info``, ``meddiff models ...``, ``meddiff run JOB`` and ``meddiff train CONFIG``."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MedDiffError


def register(subparsers, groups) -> None:
    info = subparsers.add_parser("info", help="versions, devices, GPU memory and model folders")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=_info)

    models = subparsers.add_parser("models", help="list, import or verify models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = models_sub.add_parser("list", help="installed models with their task and card summary")
    listing.add_argument("--json", action="store_true", help="print the full cards as JSON")
    listing.set_defaults(handler=_models_list)
    importing = models_sub.add_parser("import", help="verify a model file and copy it into the user's model folder")
    importing.add_argument("path", help="NAME.safetensors (with NAME.json beside it) or NAME.json")
    importing.set_defaults(handler=_models_import)
    verify = models_sub.add_parser("verify", help="check models' weights against the sha256 in their cards")
    verify.add_argument("names", nargs="*", help="model names or paths (default: all installed)")
    verify.set_defaults(handler=_models_verify)
    from .checkpoints import add_import_checkpoint

    add_import_checkpoint(models_sub)

    run = subparsers.add_parser("run", help="run a job file in this process (what the engine worker runs)")
    run.add_argument("job", help="JOB.json")
    run.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    run.set_defaults(handler=_run)

    train = subparsers.add_parser("train", help="train a model from a config file (same as python -m meddiffcore.train)")
    from ..train.cli import add_arguments

    add_arguments(train)
    train.set_defaults(handler=_train)


def _fail(error: MedDiffError) -> int:
    print(f"error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  fix: {error.hint}", file=sys.stderr)
    return error.exit_status


def _info(args: argparse.Namespace) -> int:
    from ..devices import machine_report

    report = machine_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"meddiffcore {report['meddiffcore']}  (python {report['python']}, torch {report['torch']}, numpy {report['numpy']})")
    print(f"platform     {report['platform']}")
    if report["gpus"]:
        for gpu in report["gpus"]:
            print(f"GPU {gpu['index']}        {gpu['name']}, compute capability {gpu['capability']}, "
                  f"{gpu['free_memory_gb']} of {gpu['total_memory_gb']} GB free")
        print(f"CUDA         {report['cuda_version']} (kernels for {', '.join(report['cuda_arch_list'])})")
    else:
        print(f"GPU          none usable; running on CPU with {report['cpu_threads']} threads")
    print(f"MEDDIFF_HOME {report['meddiff_home']}")
    for folder in report["model_folders"]:
        print(f"models       {folder}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from ..config import to_dict
    from ..models import list_models

    cards = list_models()
    if args.json:
        print(json.dumps([to_dict(c) for c in cards], indent=2))
        return 0
    if not cards:
        print("no models installed; `meddiff models import PATH` adds one")
        return 0
    for card in cards:
        print(f"{card.name:<28} {card.task:<8} {card.description}")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from ..models import import_model

    try:
        files = import_model(args.path)
    except MedDiffError as error:
        return _fail(error)
    print(f"imported {files.card_path.stem} into {files.card_path.parent}")
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    from ..models import find_model, list_models, verify_model

    names = args.names or [card.name for card in list_models()]
    status = 0
    for name in names:
        try:
            card = verify_model(find_model(name))
            print(f"ok      {card.name}  sha256 {card.sha256[:16]}...")
        except MedDiffError as error:
            status = _fail(error)
    return status


def _run(args: argparse.Namespace) -> int:
    from ..jobs import Job, run_cancellable
    from .common import reporter_for

    reporter = reporter_for(args.progress)
    try:
        job = Job.from_file(args.job)
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    return run_cancellable(job, reporter)


def _train(args: argparse.Namespace) -> int:
    from ..train.cli import run

    return run(args)
