"""The engine process: ``python -m meddiffcore.worker JOB.json [--control] [--cancel-file PATH] [--parent-pid PID]``.

Runs one job and speaks JSON lines on stdout: ``engine`` (this process's pid,
sent before anything heavy is imported), then ``started``, ``progress``,
``log``, and exactly one ``done`` or ``error``. Anything else that would print
to stdout goes to stderr, so the event stream stays parseable.

Cancellation (see :mod:`meddiffcore.cancel`): SIGINT/SIGTERM in a terminal;
for a controller such as the Slicer module, which may reach this process only
through a launcher that forwards no signals, ``--control`` (a ``cancel`` line
on stdin, or stdin closing), ``--cancel-file`` (the file appearing) and
``--parent-pid`` (that process ending). The job stops at its next progress step
and exits with status 130 (``CANCELLED``); a job still running
``CANCEL_GRACE_S`` seconds later has its temporary outputs removed and the
process exits hard with the same status: a cancelled job never leaves an
output file, complete or partial, and never keeps the GPU busy.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .cancel import cancel_on_file_or_orphan, cancel_on_signals, cancel_on_stdin
from .errors import ConfigError, MedDiffError
from .progress import CancelToken, JsonLinesReporter

USAGE = "python -m meddiffcore.worker JOB.json [--control] [--cancel-file PATH] [--parent-pid PID]"


@dataclass
class WorkerArgs:
    job_file: str
    control: bool = False
    cancel_file: Path | None = None
    parent_pid: int | None = None


def parse_args(argv: list[str]) -> WorkerArgs:
    """The worker's arguments; ConfigError (a usage message) when they are not."""
    positional: list[str] = []
    options: dict[str, str] = {}
    control = False
    items = iter(argv)
    for item in items:
        if item == "--control":
            control = True
        elif item in ("--cancel-file", "--parent-pid"):
            value = next(items, None)
            if value is None:
                raise ConfigError(f"{item} needs a value", f"usage: {USAGE}")
            options[item] = value
        elif item.startswith("--"):
            raise ConfigError(f"unknown option {item}", f"usage: {USAGE}")
        else:
            positional.append(item)
    if len(positional) != 1:
        raise ConfigError(f"usage: {USAGE}", "pass exactly one job file")
    pid_text = options.get("--parent-pid")
    if pid_text is not None and not pid_text.isdigit():
        raise ConfigError(f"--parent-pid must be a process id, got '{pid_text}'", f"usage: {USAGE}")
    cancel_file = options.get("--cancel-file")
    return WorkerArgs(positional[0], control, Path(cancel_file) if cancel_file else None,
                      int(pid_text) if pid_text else None)


def _package_folder() -> str:
    return str(Path(__file__).resolve().parent)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    events = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints out of the event stream
    token = CancelToken()
    reporter = JsonLinesReporter(events, cancel=token)
    # watch for cancellation before anything slow (torch) is imported: a cancel may come at once
    cancel_on_signals(token)
    try:
        args = parse_args(argv)
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    reporter.emit({"event": "engine", "pid": os.getpid(), "meddiffcore": _package_folder(),
                   "python": sys.version.split()[0]})
    if args.control:
        cancel_on_stdin(token)
    if args.cancel_file is not None or args.parent_pid is not None:
        cancel_on_file_or_orphan(token, args.cancel_file, args.parent_pid)

    from .jobs import Job, run_cancellable

    try:
        job = Job.from_file(args.job_file)
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status
    return run_cancellable(job, reporter, watch_signals=False)


def exit_now(status: int) -> None:
    """Flush and leave without interpreter teardown.

    Outputs are already complete and fsynced (or absent); tearing down torch and
    its thread pools can take a second on a busy machine, which would eat into
    the cancellation promise.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
