"""Work that must not block Slicer's GUI thread (an engine command that imports torch, a model import), run in a
thread and polled from a Qt timer.

The thread only runs the given function (a subprocess wait, file copies): it touches no Qt object
and no MRML node, so nothing here needs the GUI thread. The GUI asks :meth:`BackgroundTask.done`
from its timer and takes :meth:`BackgroundTask.result` (which re-raises the function's exception)
on the GUI thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class BackgroundTask:
    """``function()`` running in a daemon thread; ``done()`` never blocks, ``result()`` returns or re-raises."""

    def __init__(self, function: Callable[[], Any], name: str = "meddiff-background") -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._finished = threading.Event()

        def run() -> None:
            try:
                self._result = function()
            except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread by result()
                self._error = exc
            finally:
                self._finished.set()

        self._thread = threading.Thread(target=run, daemon=True, name=name)
        self._thread.start()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocking mode for scripts and tests; returns whether it finished."""
        return self._finished.wait(timeout_s)

    def result(self) -> Any:
        if not self._finished.is_set():
            raise RuntimeError("the background task has not finished; poll done() first")
        if self._error is not None:
            raise self._error
        return self._result
