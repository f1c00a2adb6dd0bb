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
import signal
import sys
import threading

from .. import __version__
from ..errors import ErrorCode

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    # SIGTERM stops any command like Ctrl-C does (job commands cancel through their own token, see jobs.run_cancellable)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("meddiff: interrupted; nothing more was written", file=sys.stderr)
        return CANCELLED_STATUS


if __name__ == "__main__":
    sys.exit(main())
