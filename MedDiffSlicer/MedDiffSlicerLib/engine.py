"""The engine process: start the worker on a job file, follow its events, cancel it, on Linux, macOS and Windows.

Inside Slicer the engine runs in ``PythonSlicer``, which is a launcher: it starts the real
interpreter as its child and forwards no signals. So nothing here relies on a signal reaching
the engine. Cancelling writes a cancel file next to the job and ``cancel`` on the engine's
stdin and closes it; the worker watches both, and Slicer's process id, and stops at its next
step (it gives a job one second, then exits hard without leaving an output). If the engine is
still there ``KILL_AFTER_S`` later, the whole tree is killed: the engine itself (its pid is
its first event) and the launcher's process group (POSIX) or process tree (Windows,
``taskkill /T``). When Slicer closes, the engine's stdin closes with it and the engine exits.

The worker speaks JSON lines on stdout (``engine``, ``started``, ``progress``, ``log``, ``done``
or ``error``). Reader threads move stdout and stderr lines into queues, so
:meth:`EngineProcess.poll` never blocks: a widget calls it from a timer. :meth:`EngineProcess.wait`
is the blocking mode for tests and scripts. No console window opens on Windows.

The engine is the extension's own ``meddiffcore`` (installed beside the modules, or in the
source tree beside ``MedDiffSlicer``), put first on the engine's ``sys.path`` so that it is the
version that matches these modules; a pip-installed ``meddiffcore`` is used only when the
extension carries none.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import Failure, failure_from_event, failure_from_exit, missing_module

#: Seconds between the cancel request and killing the process tree; the worker itself stops within 1 s.
KILL_AFTER_S = 1.5
STDERR_LINES_KEPT = 200
#: Seconds to keep reading after the engine exited, for its last lines (a grandchild may hold the pipes).
PIPE_LINGER_S = 2.0
#: Windows process-creation flags: a process group of its own, and no console window.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
#: Runs ``meddiffcore.MODULE`` from the engine folder given as the first argument, ahead of anything installed.
BOOTSTRAP = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); name = sys.argv[2]; "
             "sys.argv = [name] + sys.argv[3:]; runpy.run_module(name, run_name='__main__', alter_sys=True)")


def engine_folder() -> Path | None:
    """The folder holding the extension's ``meddiffcore`` package, or None if the extension carries none.

    ``$MEDDIFF_ENGINE_PATH`` if set; else ``MedDiffCore`` beside ``MedDiffSlicerLib`` (the layout the
    extension installs) or one folder further up (the source tree).
    """
    override = os.environ.get("MEDDIFF_ENGINE_PATH")
    if override:
        return Path(override)
    library = Path(__file__).resolve().parent
    for base in (library.parent, library.parent.parent):
        candidate = base / "MedDiffCore"
        if (candidate / "meddiffcore" / "__init__.py").is_file():
            return candidate
    return None


def engine_package() -> Path | None:
    """The ``meddiffcore`` package folder the engine will run (the extension's, else a pip-installed one)."""
    folder = engine_folder()
    if folder is not None:
        return folder / "meddiffcore"
    import importlib.util

    spec = importlib.util.find_spec("meddiffcore")  # finds without importing
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def engine_python() -> list[str]:
    """The interpreter that runs the engine: ``$MEDDIFF_ENGINE_PYTHON``, Slicer's ``PythonSlicer``, else this Python.

    Inside Slicer the engine must run in ``PythonSlicer`` (Slicer's own Python without the GUI), never
    in the Slicer executable itself.
    """
    override = os.environ.get("MEDDIFF_ENGINE_PYTHON")
    if override:
        return [override]
    beside = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    slicer_python = shutil.which("PythonSlicer") or (str(beside) if beside.is_file() else None)
    return [slicer_python] if slicer_python else [sys.executable]


def engine_command(module: str, args: Sequence[str], python: Sequence[str] | None = None) -> list[str]:
    """The command line that runs ``python -m module args`` with the extension's engine first on ``sys.path``."""
    interpreter = [*(python or engine_python())]
    folder = engine_folder()
    if folder is None:
        return [*interpreter, "-m", module, *args]
    return [*interpreter, "-c", BOOTSTRAP, str(folder), module, *args]


def engine_environment(env: dict[str, str] | None) -> dict[str, str]:
    """The engine's environment: ``env`` (else this process's) with unbuffered UTF-8 output."""
    result = dict(os.environ if env is None else env)
    result.setdefault("PYTHONUNBUFFERED", "1")
    result.setdefault("PYTHONIOENCODING", "utf-8")
    return result


def process_options() -> dict:
    """Popen options that make the engine killable as a tree and keep it windowless, per OS."""
    if os.name == "nt":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    else:
        return {"start_new_session": True}


def kill_tree(pid: int, group: bool = True) -> None:
    """Kill process ``pid`` and what it started: its process group on POSIX (``group``), ``taskkill /T`` on Windows."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False,
                       stdin=subprocess.DEVNULL, creationflags=CREATE_NO_WINDOW)
    else:
        import signal

        try:
            if group:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


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
        self.cancel_file = self.job_file.with_name(self.job_file.stem + ".cancel")
        self.command = engine_command("meddiffcore.worker", [
            str(self.job_file), "--control", "--cancel-file", str(self.cancel_file), "--parent-pid", str(os.getpid())],
            python)
        self.env = env
        self.kill_after_s = kill_after_s
        self.progress = Progress()
        self.log: list[str] = []
        self.warnings: list[str] = []  # the engine's warnings about this result (also in the log), for the panel
        self.outputs: dict[str, str] | None = None
        self.failure: Failure | None = None
        self.returncode: int | None = None
        #: The engine process itself (not the launcher in front of it), from its first event.
        self.engine_pid: int | None = None
        self.engine_package: str | None = None
        self._error_event: dict | None = None
        self._process: subprocess.Popen | None = None
        self._stdout: queue.Queue = queue.Queue()
        self._stderr: queue.Queue = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        self._open_streams = 0
        self._kill_deadline: float | None = None
        self._killed = False
        self._exited_at: float | None = None
        self.cancel_requested = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        if self._process is not None:
            raise RuntimeError("an EngineProcess runs once; make a new one for another run")
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                         bufsize=1, env=engine_environment(self.env), cwd=str(self.job_file.parent),
                                         **process_options())
        for stream, sink in ((self._process.stdout, self._stdout), (self._process.stderr, self._stderr)):
            threading.Thread(target=_pump, args=(stream, sink), daemon=True, name="meddiff-engine-reader").start()
        self._open_streams = 2
        return self

    @property
    def pid(self) -> int | None:
        """The process this object started: the launcher (``PythonSlicer``) when there is one."""
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
        if self._kill_deadline is not None and time.monotonic() > self._kill_deadline and not self._killed:
            self._kill()
        if self._ended():
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
        """Ask the engine to stop (no signal: a cancel file and its stdin); the tree is killed ``kill_after_s`` later."""
        if self._process is None or self.finished or self.cancel_requested:
            return
        self.cancel_requested = True
        self._kill_deadline = time.monotonic() + self.kill_after_s
        try:
            self.cancel_file.write_text("cancel\n", encoding="utf-8")
        except OSError:
            pass  # the stdin request below still reaches it
        try:
            self._process.stdin.write("cancel\n")
            self._process.stdin.flush()
        except (OSError, ValueError):
            pass  # the engine already closed its end
        self._close_stdin()

    # -- internals ---------------------------------------------------------------------------------------------
    def _close_stdin(self) -> None:
        try:
            self._process.stdin.close()
        except (OSError, ValueError):
            pass

    def _ended(self) -> bool:
        """Whether the engine process itself is gone, not just the launcher in front of it."""
        if self._process.poll() is None:
            return False
        self._exited_at = self._exited_at or time.monotonic()
        if self._open_streams == 0:
            return True  # the engine closed its output: it has exited
        behind_launcher = self.engine_pid is not None and self.engine_pid != self._process.pid
        if behind_launcher and not self._killed:
            return False  # the launcher ended but the engine still holds our pipes: it runs; keep following
        return time.monotonic() - self._exited_at > PIPE_LINGER_S

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
        if kind == "engine":
            self.engine_pid = int(event["pid"]) if str(event.get("pid", "")).isdigit() else None
            self.engine_package = event.get("meddiffcore")
        elif kind == "progress":
            self.progress = Progress(str(event.get("phase", "")), int(event.get("step", 0)), int(event.get("total", 0)),
                                     event.get("eta_s"))
        elif kind == "log" and event.get("level") == "warning":
            hint = f" {event['hint']}" if event.get("hint") else ""
            self.warnings.append(f"{event.get('message', '')}{hint}")
            self.log.append(f"warning: {self.warnings[-1]}")
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
        self._close_stdin()
        if self._error_event is not None:
            self.failure = failure_from_event(self._error_event)
        elif returncode != 0 or self.outputs is None:
            self.failure = failure_from_exit(returncode, "\n".join(self._stderr_tail), self.cancel_requested)
        if self.failure is not None:
            self.outputs = None
            self.log.append(self.failure.text())
        self.returncode = returncode

    def _kill(self) -> None:
        """Kill the engine and everything in front of and behind it (launcher group / Windows process tree)."""
        self._killed = True
        self._exited_at = None  # linger from now on
        self.log.append(f"the engine did not stop within {self.kill_after_s:g} s of the cancel request; killing it")
        if self.engine_pid is not None and self._open_streams > 0:  # still holding our pipes: still the engine
            kill_tree(self.engine_pid, group=False)
        kill_tree(self._process.pid)
        if self._process.poll() is None:
            self._process.kill()


class EngineCommandError(Exception):
    """A short engine command (``info``, ``models import``) failed; the message says why."""


def run_engine_command(args: Sequence[str], python: Sequence[str] | None = None, env: dict[str, str] | None = None,
                       timeout_s: float = 120.0) -> str:
    """Run ``meddiff ARGS`` in the engine's Python to completion and return its stdout.

    Blocks: call it from a background thread (see :mod:`.background`), never from the GUI thread.
    Used for questions to the engine (machine report) and model import, so that Slicer's own
    process never imports torch or the engine.
    """
    command = engine_command("meddiffcore.cli", args, python)
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout_s, env=engine_environment(env), stdin=subprocess.DEVNULL,
                              **process_options())
    except FileNotFoundError as exc:
        raise EngineCommandError(f"the engine's Python '{command[0]}' does not exist") from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineCommandError(f"`meddiff {' '.join(args)}` did not answer within {timeout_s:g} s") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip()
        if "No module named meddiffcore" in stderr or "No module named 'meddiffcore'" in stderr:
            raise EngineCommandError("the MedDiff engine (Python package 'meddiffcore') is not installed")
        missing = missing_module(stderr)
        if missing:
            raise EngineCommandError(f"the engine needs the Python package '{missing}', which is not installed")
        lines = [line for line in stderr.splitlines() if line.strip()]
        detail = " ".join(line.strip() for line in lines[-2:]) if lines else f"exit status {done.returncode}"
        raise EngineCommandError(f"`meddiff {' '.join(args)}` failed: {detail}")
    return done.stdout
