"""Command line of ``python -m meddiffcore.train`` (and ``meddiff train``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import MedDiffError
from ..progress import SilentReporter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config file (.toml or .yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run found in train.out_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set train.steps=200 (repeatable)")
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar", help="how to show progress")


def run(args: argparse.Namespace) -> int:
    from . import load_training_config
    from .loop import distributed_from_env, train

    main_rank = distributed_from_env().is_main
    from ..cli.common import reporter_for

    reporter = reporter_for(args.progress) if main_rank else SilentReporter()
    try:
        task, config = load_training_config(args.config, args.overrides)
        files = train(task, config, resume=args.resume, reporter=reporter, command=" ".join(["python -m meddiffcore.train", *sys.argv[1:]]))
        if files is not None:
            reporter.done({"model": str(files.weights_path), "card": str(files.card_path)})
        return 0
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    except KeyboardInterrupt:
        from ..errors import CancelledError

        error = CancelledError("training was interrupted", "the last checkpoint is kept; continue with --resume")
        reporter.error(error)
        return error.exit_status


def main(argv=None) -> int:
    from ..cancel import interrupt_on_sigterm

    interrupt_on_sigterm()  # SIGTERM ends training like Ctrl-C: the CANCELLED event, status 130
    parser = argparse.ArgumentParser(prog="python -m meddiffcore.train", description="Train a MedDiff model from a config file.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
