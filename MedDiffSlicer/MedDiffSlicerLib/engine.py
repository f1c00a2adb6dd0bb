"""The engine process: start ``<python> -m meddiffcore.worker JOB.json``, follow its events, cancel it.

The worker speaks JSON lines on stdout (``started``, ``progress``, ``log``,
``done`` or ``error``). Two reader threads move stdout and stderr lines into
queues, so :meth:`EngineProcess.poll` never blocks: a Slicer widget calls it
from a timer and the GUI stays responsive. :meth:`EngineProcess.wait` is the
blocking mode for tests and batch scripts.

Cancelling sends SIGTERM (the worker stops at its next step and removes partial
outputs); if the engine has not exited ``kill_after_s`` seconds later, the
whole process tree is killed. The engine runs in its own process group so that
kill reaches anything it started.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import Failure, failure_from_event, failure_from_exit

#: Seconds between SIGTERM and killing the process tree; the worker itself gives a job 1 s to stop.
KILL_AFTER_S = 10.0
STDERR_LINES_KEPT = 200
#: Seconds to keep reading after the engine exited, for its last lines.
PIPE_LINGER_S = 2.0


def engine_python() -> list[str]:
    """The interpreter that runs the engine: ``$MEDDIFF_ENGINE_PYTHON``, Slicer's ``PythonSlicer``, else this Python.

    Inside Slicer the engine must run in ``PythonSlicer`` (Slicer's own Python
    without the GUI), never in the Slicer executable itself.
    """
    override = os.environ.get("MEDDIFF_ENGINE_PYTHON")
    if override:
        return [override]
    beside = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    slicer_python = shutil.which("PythonSlicer") or (str(beside) if beside.is_file() else None)
    return [slicer_python] if slicer_python else [sys.executable]


@dataclass
class Progress:
    """The latest progress event: ``step`` of ``total`` in ``phase``, with the engine's ETA in seconds."""

    phase: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None

    @property
    def percent(self) -> float:
        return 100.0 * min(self.step / self.total, 1.0) if self.total > 0 else 0.0

    def text(self) -> str:
        """``sampling 40% (ETA 0:12)``: what the progress bar shows."""
        if not self.phase:
            return "starting engine"
        eta = "" if self.eta_s is None else f" (ETA {format_seconds(self.eta_s)})"
        return f"{self.phase} {self.percent:.0f}%{eta}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def _pump(stream, sink: queue.Queue) -> None:
    """Reader thread: one line at a time into ``sink``, then ``None`` at end of stream."""
    for line in iter(stream.readline, ""):
        sink.put(line.rstrip("\n"))
    stream.close()
    sink.put(None)


class EngineProcess:
    """One engine run of one job file; poll it from a timer or wait for it."""

    def __init__(self, job_file: str | os.PathLike, python: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, kill_after_s: float = KILL_AFTER_S) -> None:
        self.job_file = Path(job_file)
        self.command = [*(python or engine_python()), "-m", "meddiffcore.worker", str(self.job_file)]
        self.env = env
        self.kill_after_s = kill_after_s
        self.progress = Progress()
        self.log: list[str] = []
        self.outputs: dict[str, str] | None = None
        self.failure: Failure | None = None
        self.returncode: int | None = None
        self._error_event: dict | None = None
        self._process: subprocess.Popen | None = None
        self._stdout: queue.Queue = queue.Queue()
        self._stderr: queue.Queue = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        self._open_streams = 0
        self._kill_deadline: float | None = None
        self._exited_at: float | None = None
        self.cancel_requested = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        if self._process is not None:
            raise RuntimeError("an EngineProcess runs once; make a new one for another run")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        kwargs: dict = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                         bufsize=1, env=env, **kwargs)
        for stream, sink in ((self._process.stdout, self._stdout), (self._process.stderr, self._stderr)):
            threading.Thread(target=_pump, args=(stream, sink), daemon=True, name="meddiff-engine-reader").start()
        self._open_streams = 2
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def succeeded(self) -> bool:
        return self.finished and self.failure is None and self.outputs is not None

    def poll(self) -> list[dict]:
        """Handle everything the engine said since the last call; never blocks. Returns the new events."""
        if self._process is None or self.finished:
            return []
        events = [e for e in (self._parse(line) for line in self._drain(self._stdout)) if e is not None]
        for line in self._drain(self._stderr):
            self._stderr_tail.append(line)
            self.log.append(line)
        if self._kill_deadline is not None and time.monotonic() > self._kill_deadline and self._process.poll() is None:
            self._kill_tree()
        if self._process.poll() is not None:
            self._exited_at = self._exited_at or time.monotonic()
            # a grandchild may still hold the pipes open: do not wait for it longer than a moment
            if self._open_streams == 0 or time.monotonic() - self._exited_at > PIPE_LINGER_S:
                self._finish(self._process.returncode)
        return events

    def wait(self, timeout_s: float | None = None, on_event: Callable[[dict], None] | None = None,
             interval_s: float = 0.05) -> bool:
        """Block until the engine ends (or ``timeout_s`` passes); returns whether it succeeded."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.finished:
            for event in self.poll():
                if on_event:
                    on_event(event)
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval_s)
        return self.succeeded

    def cancel(self) -> None:
        """Ask the engine to stop (SIGTERM); the process tree is killed if it has not ended ``kill_after_s`` later."""
        if self._process is None or self.finished or self.cancel_requested:
            return
        self.cancel_requested = True
        self._kill_deadline = time.monotonic() + self.kill_after_s
        try:
            if os.name == "posix":
                self._process.send_signal(signal.SIGTERM)
            else:
                self._process.send_signal(signal.CTRL_BREAK_EVENT)
        except ProcessLookupError:
            pass

    # -- internals ---------------------------------------------------------------------------------------------
    def _drain(self, sink: queue.Queue) -> list[str]:
        lines = []
        while True:
            try:
                line = sink.get_nowait()
            except queue.Empty:
                return lines
            if line is None:
                self._open_streams -= 1
            else:
                lines.append(line)

    def _parse(self, line: str) -> dict | None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.log.append(line)  # a stray print: keep it, it may explain a failure
            return None
        kind = event["event"]
        if kind == "progress":
            self.progress = Progress(str(event.get("phase", "")), int(event.get("step", 0)), int(event.get("total", 0)),
                                     event.get("eta_s"))
        elif kind == "log":
            self.log.append(str(event.get("message", "")))
        elif kind == "started":
            self.log.append(f"engine started: {event.get('task')} (model {event.get('model')}, device {event.get('device')})")
        elif kind == "done":
            self.outputs = {str(k): str(v) for k, v in (event.get("outputs") or {}).items()}
        elif kind == "error":
            self._error_event = event
            self.log.append(f"error {event.get('code')}: {event.get('message')}")
        return event

    def _finish(self, returncode: int) -> None:
        if self._error_event is not None:
            self.failure = failure_from_event(self._error_event)
        elif returncode != 0 or self.outputs is None:
            self.failure = failure_from_exit(returncode, "\n".join(self._stderr_tail), self.cancel_requested)
        if self.failure is not None:
            self.outputs = None
            self.log.append(self.failure.text())
        self.returncode = returncode

    def _kill_tree(self) -> None:
        """Kill the engine and everything it started (its process group / Windows process tree)."""
        assert self._process is not None
        self.log.append(f"the engine did not stop within {self.kill_after_s:g} s of the cancel request; killing it")
        try:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True, check=False)
        except (ProcessLookupError, PermissionError):
            self._process.kill()


class EngineCommandError(Exception):
    """A short engine command (``info``, ``models list``, ``models import``) failed; the message says why."""


def run_engine_command(args: Sequence[str], python: Sequence[str] | None = None, env: dict[str, str] | None = None,
                       timeout_s: float = 120.0) -> str:
    """Run ``<python> -m meddiffcore.cli ARGS`` to completion and return its stdout.

    Used for quick questions to the engine (machine report, model list, model
    import) so that this process never imports torch or the engine itself.
    """
    command = [*(python or engine_python()), "-m", "meddiffcore.cli", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EngineCommandError(f"the engine's Python '{command[0]}' does not exist") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineCommandError(f"`meddiff {' '.join(args)}` did not answer within {timeout_s:g} s") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip()
        if "No module named meddiffcore" in stderr or "No module named 'meddiffcore'" in stderr:
            raise EngineCommandError("the MedDiff engine (Python package 'meddiffcore') is not installed")
        lines = [line for line in stderr.splitlines() if line.strip()]
        detail = " ".join(line.strip() for line in lines[-2:]) if lines else f"exit status {done.returncode}"
        raise EngineCommandError(f"`meddiff {' '.join(args)}` failed: {detail}")
    return done.stdout
