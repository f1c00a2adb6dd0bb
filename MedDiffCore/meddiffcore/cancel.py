"""Stopping a running job from outside, the same way on Linux, macOS and Windows.

A job is cancelled through its :class:`~meddiffcore.progress.CancelToken`; it
stops at its next progress step. What sets the token:

* **SIGINT / SIGTERM** (and SIGBREAK on Windows) in a terminal: a Python-level
  handler keeps the process alive and a wake-up socket tells a watcher thread
  at once, even while the main thread is inside a long network evaluation.
* **the engine's controller** (the Slicer module): a ``cancel`` line on stdin,
  or stdin closing (the controller ended, or closed the pipe), a cancel file
  appearing, or the controlling process disappearing. None of these needs a
  signal, so they reach the engine through a launcher such as ``PythonSlicer``,
  which runs the real interpreter as its child and forwards no signals.

Once the token is set, :class:`GracePeriod` gives the job ``CANCEL_GRACE_S``
seconds to stop; if it has not, the job's temporary outputs are removed and the
process exits at once with the CANCELLED status, so a cancelled job never leaves
an output and never keeps computing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

from .progress import CancelToken

#: Seconds a cancelled job gets to stop at a progress step before the process exits hard.
CANCEL_GRACE_S = 1.0
#: Seconds between looks at the cancel file and the controlling process.
WATCH_INTERVAL_S = 0.2
#: What a controller writes on the engine's stdin to cancel (closing stdin does the same).
CANCEL_LINE = "cancel"


#: Socket pairs whose write end is the signal wake-up fd; kept open for the life of the process.
_WAKEUP_SOCKETS: list[tuple[socket.socket, socket.socket]] = []


def _start(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    return thread


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so a command stopped either way ends
    the same: its error event, status 130, no output (atomic writes remove their temporaries). Call first thing
    in a command's main; jobs then switch to their cancel token (:func:`cancel_on_signals`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def cancel_on_signals(token: CancelToken) -> bool:
    """SIGINT, SIGTERM and SIGBREAK (where they exist) set ``token`` instead of ending the process.

    Call from the main thread (Python allows signal handlers only there); returns
    whether the handlers are in place. The C-level handler writes to a wake-up
    socket as soon as a signal arrives, and a watcher thread sets the token, so
    cancellation does not wait for the main thread to return from native code.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    names = [n for n in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, n)]
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    try:
        signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
        for name in names:
            signal.signal(getattr(signal, name), lambda signum, frame: token.cancel())
    except (ValueError, OSError):  # no signal support here (an embedded interpreter): other watchers still work
        receiver.close()
        sender.close()
        return False

    def watch() -> None:
        while receiver.recv(1):
            token.cancel()

    _WAKEUP_SOCKETS.append((receiver, sender))  # the C handler writes to sender's fd: it must never be collected
    _start(watch, "meddiff-signal-watch")
    return True


def cancel_on_stdin(token: CancelToken, stream=None) -> threading.Thread:
    """A ``cancel`` line on stdin, or stdin closing, sets ``token`` (the controller is gone or asked to stop)."""
    stream = stream if stream is not None else sys.stdin

    def watch() -> None:
        try:
            for line in stream:
                if line.strip().lower() == CANCEL_LINE:
                    break
        except (OSError, ValueError):
            pass
        token.cancel()

    return _start(watch, "meddiff-stdin-watch")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs; errs towards "alive" when the system will not say."""
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        synchronize, query_limited_information, wait_timeout, invalid_parameter = 0x00100000, 0x1000, 0x102, 87
        handle = kernel32.OpenProcess(synchronize | query_limited_information, False, pid)
        if not handle:
            return ctypes.get_last_error() != invalid_parameter  # access denied: it exists
        try:
            return kernel32.WaitForSingleObject(handle, 0) == wait_timeout
        finally:
            kernel32.CloseHandle(handle)
    else:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def cancel_on_file_or_orphan(token: CancelToken, cancel_file: Path | None, parent_pid: int | None) -> threading.Thread:
    """``cancel_file`` appearing, or process ``parent_pid`` ending, sets ``token``; checked every WATCH_INTERVAL_S."""

    def requested() -> bool:
        return bool(cancel_file is not None and cancel_file.exists()) or bool(parent_pid and not process_alive(parent_pid))

    def watch() -> None:
        while not token.wait(WATCH_INTERVAL_S):
            if requested():
                token.cancel()

    return _start(watch, "meddiff-cancel-watch")


class GracePeriod:
    """After cancellation, give the job CANCEL_GRACE_S seconds, then clean up and exit with ``status``.

    ``cleanup`` removes the job's temporary outputs and reports the cancellation;
    it runs only if the job has not finished by then (:meth:`finished`).
    """

    def __init__(self, token: CancelToken, cleanup: Callable[[], None], status: int,
                 grace_s: float = CANCEL_GRACE_S) -> None:
        self._done = threading.Event()

        def watch() -> None:
            token.wait()
            if self._done.wait(grace_s):
                return
            cleanup()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

        _start(watch, "meddiff-cancel-grace")

    def finished(self) -> None:
        """The job ended (any way): no hard exit any more."""
        self._done.set()


def remove_temporaries(paths: Iterable[Path]) -> None:
    """Remove what this process's atomic writes of ``paths`` left behind (see :mod:`meddiffcore.io.atomic`)."""
    from .io.atomic import remove_stale_temporaries

    for path in paths:
        remove_stale_temporaries(path, pid=os.getpid())
