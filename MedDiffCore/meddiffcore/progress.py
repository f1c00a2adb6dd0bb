"""Progress reporting and cancellation, shared by the CLI, the worker and training.

A job reports through a :class:`Reporter`; the same calls become a terminal
progress bar, JSON-lines events for the Slicer module, or nothing. Cancellation
is cooperative: :meth:`Reporter.progress` raises :class:`CancelledError` once the
cancel token is set, so every sampler step is a cancellation point.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import CancelledError, MedDiffError


@dataclass
class CancelToken:
    """Set from a signal handler or another thread; checked at every progress step."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until cancelled (or ``timeout_s`` passed); returns whether it was cancelled."""
        return self._event.wait(timeout_s)

    def check(self) -> None:
        if self._event.is_set():
            raise CancelledError("the job was cancelled", "nothing was written; run it again when ready")


class _EtaClock:
    """Estimates remaining seconds of one phase from the pace of its steps so far."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.start = 0.0
        self.first_step = 0

    def eta(self, phase: str, step: int, total: int) -> float | None:
        now = time.monotonic()
        if phase != self.phase or step < self.first_step:
            self.phase, self.start, self.first_step = phase, now, step
            return None
        done = step - self.first_step
        if done <= 0 or total <= 0:
            return None
        return (now - self.start) / done * max(total - step, 0)


class Reporter:
    """Base reporter: keeps the cancel token and the ETA; subclasses decide where events go."""

    def __init__(self, cancel: CancelToken | None = None) -> None:
        self.cancel_token = cancel or CancelToken()
        self._clock = _EtaClock()
        self._end_lock = threading.Lock()
        self._ended = False

    def _end(self) -> bool:
        """Claim the job's one final event (``done`` or ``error``); False if another was already sent."""
        with self._end_lock:
            ended, self._ended = self._ended, True
        return not ended

    def emit(self, event: dict[str, Any]) -> None:  # pragma: no cover - overridden
        """Deliver one event; the base reporter drops it."""

    def started(self, task: str, **info: Any) -> None:
        self.emit({"event": "started", "task": task, **info})

    def progress(self, phase: str, step: int, total: int) -> None:
        """Report ``step`` of ``total`` in ``phase``; raises CancelledError if the job was cancelled."""
        self.cancel_token.check()
        eta = self._clock.eta(phase, step, total)
        self.emit({"event": "progress", "phase": phase, "step": step, "total": total,
                   "eta_s": None if eta is None else round(eta, 1)})

    def log(self, message: str, level: str = "info") -> None:
        self.emit({"event": "log", "level": level, "message": message})

    def warning(self, message: str, hint: str = "") -> None:
        """Something the user must know about a result that still goes ahead (an input outside what the model was
        trained for, a model below its classical baseline): a ``log`` event at level ``warning`` with what it means or
        what to do as ``hint``. Shown by every reporter, also where progress is hidden, and kept by the Slicer side."""
        self.emit({"event": "log", "level": "warning", "message": message, "hint": hint})

    def done(self, outputs: dict[str, Any]) -> None:
        if self._end():
            self.emit({"event": "done", "outputs": outputs})

    def error(self, error: MedDiffError) -> None:
        """Report the job's failure; a job ends with exactly one ``done`` or ``error`` (the first one sent)."""
        if self._end():
            self.emit(error.to_event())

    def step_callback(self, phase: str):
        """A sampler callback (one dict per step) that reports progress in ``phase``."""

        def callback(info: dict[str, Any]) -> None:
            self.progress(phase, int(info["i"]) + 1, int(info["total"]))

        return callback


class SilentReporter(Reporter):
    """Reports nothing but still honours cancellation (library use, tests)."""

    def __init__(self, cancel: CancelToken | None = None) -> None:
        super().__init__(cancel)
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class JsonLinesReporter(Reporter):
    """One JSON object per line, flushed at once: the engine-process protocol."""

    def __init__(self, stream: IO[str] | None = None, cancel: CancelToken | None = None) -> None:
        super().__init__(cancel)
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **event})
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class TerminalReporter(Reporter):
    """A one-line progress bar with percent and ETA on a terminal; logs on their own lines."""

    def __init__(self, stream: IO[str] | None = None, cancel: CancelToken | None = None, width: int = 30,
                 show_progress: bool = True) -> None:
        super().__init__(cancel)
        self.stream = stream or sys.stderr
        self.width = width
        self.show_progress = show_progress
        self._bar_open = False

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    def emit(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        warning = kind == "log" and event.get("level") == "warning"
        if not self.show_progress and kind in ("progress", "log") and not warning:
            return
        if kind == "progress":
            total = max(event["total"], 1)
            frac = min(event["step"] / total, 1.0)
            filled = int(round(frac * self.width))
            eta = event.get("eta_s")
            eta_text = f" ETA {format_seconds(eta)}" if eta is not None else ""
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{event['phase']:<12} [{bar}] {frac * 100:5.1f}% {event['step']}/{event['total']}{eta_text}   ")
            self._bar_open = True
            if event["step"] >= event["total"]:
                self._end_bar()
        elif warning:
            self._end_bar()
            hint = f"\n  {event['hint']}" if event.get("hint") else ""
            self.stream.write(f"warning: {event['message']}{hint}\n")
        elif kind == "log":
            self._end_bar()
            self.stream.write(f"{event['message']}\n")
        elif kind == "error":
            self._end_bar()
            hint = f"\n  fix: {event['hint']}" if event.get("hint") else ""
            self.stream.write(f"error: {event['message']}{hint}\n")
        elif kind == "done":
            self._end_bar()
            for name, path in event["outputs"].items():
                self.stream.write(f"wrote {name}: {path}\n")
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"
