"""The ``meddiff`` command: one sub-command per job, plus info, models and train.

Every module in this package that defines ``register(subparsers, groups)`` adds
its commands; modules are found by listing the package, so a new task adds a
file here and touches nothing else. ``groups`` holds the sub-parsers of the
shared commands ``phantom``, ``prepare`` and ``evaluate``, under which tasks add
their own kind (``meddiff phantom ctca``, ``meddiff evaluate ctp``...).
Command modules import nothing heavy at import time, so ``meddiff --help`` is
fast; torch and the task code load when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..cancel import interrupt_on_sigterm
from ..errors import ErrorCode, MedDiffError

#: Exit status of an interrupted command (Ctrl-C or SIGTERM).
CANCELLED_STATUS = ErrorCode.CANCELLED.exit_status

#: Shared command groups: name -> help text.
GROUPS = {
    "phantom": "write a synthetic test volume or sequence (procedural phantoms)",
    "prepare": "turn a dataset into a training folder",
    "evaluate": "measure a model on held-out data and print (and optionally save) the figures",
}


def command_modules() -> list[str]:
    """Names of the modules of this package that register commands, in a stable order."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("common", "__main__")]
    order = {"core": 0, "generic": 1}
    return [f"{__name__}.{n}" for n in sorted(names, key=lambda n: (order.get(n, 2), n))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddiff", description="MedDiff: medical-image diffusion models for 3D Slicer and the terminal.")
    parser.add_argument("--version", action="version", version=f"meddiffcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_text in GROUPS.items():
        group = subparsers.add_parser(name, help=help_text)
        groups[name] = group.add_subparsers(dest=f"{name}_kind", metavar="KIND", required=True)
    for module_name in command_modules():
        module = importlib.import_module(module_name)
        if hasattr(module, "register"):
            module.register(subparsers, groups)
    _show_ranges(parser)
    return parser


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _all_parsers(sub)


def _show_ranges(parser: argparse.ArgumentParser) -> None:
    """Every option with a documented range (meddiffcore.checks.VALUE_RANGES) shows it in its --help."""
    from ..checks import range_help

    for sub in _all_parsers(parser):
        for action in sub._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS and range_help(action.dest):
                action.help = (action.help or "") + range_help(action.dest)


def _labels(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option dest -> how a user spells it (``--out-dir``; a positional argument by its name)."""
    labels: dict[str, str] = {}
    for sub in _all_parsers(parser):
        for action in sub._actions:
            longest = max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest
            labels.setdefault(action.dest, str(longest))
    return labels


def _paths(value) -> list[str]:
    """The path(s) an option value names (``NAME=PATH`` items give PATH)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v.partition("=")[2] if "=" in v else v for v in items if isinstance(v, str) and v]


def check_command(args: argparse.Namespace, labels: dict[str, str]) -> None:
    """Before any command runs: every number within its documented range, and no output onto an input
    (same path or same file through a link). ConfigError otherwise; :func:`meddiffcore.jobs.check_job` does the
    same for job files."""
    from pathlib import Path

    from ..checks import check_outputs_not_inputs, check_values
    from .common import OUTPUT_OPTIONS

    values = {k: v for k, v in vars(args).items() if k != "handler"}
    check_values(values, labels, skip_text=True)
    outputs = [(labels.get(k, k), p) for k in OUTPUT_OPTIONS for p in _paths(values.get(k))]
    inputs = [(labels.get(k, k), p) for k, v in values.items() if k not in OUTPUT_OPTIONS
              for p in _paths(v) if Path(p).expanduser().exists()]
    check_outputs_not_inputs(inputs, outputs)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM stops any command like Ctrl-C does, from the first line on (job commands then cancel through their
    # own token, see jobs.run_cancellable): exit 130, the error event in JSON mode, no output
    interrupt_on_sigterm()
    args = argparse.Namespace()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help(sys.stderr)
            return 2
        try:
            check_command(args, _labels(parser))
        except MedDiffError as error:
            from .common import reporter_for

            reporter_for(getattr(args, "progress", "bar")).error(error)
            return error.exit_status
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        from ..jobs import cancelled_error
        from .common import reporter_for

        error = cancelled_error()

        argv_list = sys.argv[1:] if argv is None else list(argv)
        asked_json = any(a == "--progress=json" or (a == "--progress" and argv_list[i + 1:i + 2] == ["json"])
                         for i, a in enumerate(argv_list))
        reporter_for(getattr(args, "progress", "json" if asked_json else "bar")).error(error)
        return CANCELLED_STATUS


if __name__ == "__main__":
    sys.exit(main())
