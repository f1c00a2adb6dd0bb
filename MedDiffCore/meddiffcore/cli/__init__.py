"""The ``meddiff`` command: one sub-command per job, plus info, models and train.

Each module in :data:`COMMAND_MODULES` has ``register(subparsers)``. Command
modules import nothing heavy at import time, so ``meddiff --help`` is instant;
torch and the task code load when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

#: Modules that add sub-commands, in the order they appear in ``meddiff --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "meddiffcore.cli.core",
    "meddiffcore.cli.generic",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddiff", description="MedDiff: medical-image diffusion models for 3D Slicer and the terminal.")
    parser.add_argument("--version", action="version", version=f"meddiffcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
