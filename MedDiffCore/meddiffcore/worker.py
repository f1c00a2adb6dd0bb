"""The engine process: ``python -m meddiffcore.worker JOB.json``.

Runs one job and speaks JSON lines on stdout (``started``, ``progress``, ``log``,
``done`` or ``error``). Anything else that would print to stdout goes to stderr,
so the event stream stays parseable.

Cancellation: SIGTERM or SIGINT set the job's cancel token; the job stops at its
next progress step and exits with status 130 (``CANCELLED``). A single network
call can outlast that, so a watchdog gives the job ``CANCEL_GRACE_S`` seconds and
then removes the job's temporary output files and exits hard with the same
status: a cancelled job never leaves an output file, complete or partial.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from .errors import CancelledError, ConfigError, ErrorCode, MedDiffError
from .jobs import Job, run_job
from .progress import CancelToken, JsonLinesReporter

CANCEL_GRACE_S = 1.0


def _remove_temporary_outputs(job: Job) -> None:
    from .io.atomic import remove_stale_temporaries

    for path in job.output_paths():
        remove_stale_temporaries(path, pid=os.getpid())


def _watch_signals(job: Job, token: CancelToken, reporter: JsonLinesReporter, finished: threading.Event) -> None:
    """Runs in its own thread: waits for SIGTERM/SIGINT, cancels, and enforces the grace period."""
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    token.cancel()
    if finished.wait(CANCEL_GRACE_S):
        return
    _remove_temporary_outputs(job)
    reporter.error(CancelledError("the job was cancelled", "nothing was written; run it again when ready"))
    os._exit(ErrorCode.CANCELLED.exit_status)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    events = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints out of the event stream
    token = CancelToken()
    reporter = JsonLinesReporter(events, cancel=token)
    if len(argv) != 1:
        error = ConfigError("usage: python -m meddiffcore.worker JOB.json", "pass exactly one job file")
        reporter.error(error)
        return error.exit_status
    try:
        job = Job.from_file(argv[0])
    except MedDiffError as error:
        reporter.error(error)
        return error.exit_status

    # Block the signals in this (main) thread before any other thread exists, so
    # every thread inherits the mask and only the watcher receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    finished = threading.Event()
    watcher = threading.Thread(target=_watch_signals, args=(job, token, reporter, finished), daemon=True, name="cancel-watch")
    watcher.start()
    status = run_job(job, reporter)
    finished.set()
    return status


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
