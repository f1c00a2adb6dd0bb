"""Engine failures as messages a Slicer user can act on.

The engine reports every failure it understands as an ``error`` event with a
stable code (``BAD_INPUT``, ``OUT_OF_MEMORY``, ...), a message and a hint. A
process that dies without such an event (killed, segfault, no engine installed)
is described from its exit status and the tail of its stderr, so no failure is
ever silent.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

#: Engine error code -> (short title, what the user can do besides the engine's own hint).
ERROR_ADVICE: dict[str, tuple[str, str]] = {
    "BAD_INPUT": ("The input cannot be used", "Check the selected input node and the label mapping table."),
    "BAD_CONFIG": ("A setting is not valid", "Check the options in the module panel."),
    "MODEL": ("The model cannot be used", "Choose another model, or import it again (Models section)."),
    "OUT_OF_MEMORY": ("Out of memory", "Close other GPU programs, lower the number of samples, or choose device 'cpu'."),
    "DEVICE": ("The compute device cannot be used", "Choose device 'auto' or 'cpu', or check the GPU driver."),
    "CANCELLED": ("Cancelled", "Nothing was added to the scene."),
    "USAGE": ("The engine was called wrongly", "This is a bug in MedDiffSlicer; please report it."),
    "INTERNAL": ("Internal engine error", "This is a bug in MedDiff; please report it with the log below."),
    "ENGINE_CRASHED": ("The engine stopped unexpectedly", "See the log below; the work folder was kept for diagnosis."),
    "ENGINE_MISSING": ("The MedDiff engine is not installed", "Reinstall the MedDiffSlicer extension (it carries the engine)."),
    "DEPENDENCY_MISSING": ("A package the engine needs is missing", "Press 'Install dependencies' in the Models section."),
    "OUTPUT_MISSING": ("The engine wrote no output", "See the log below; the work folder was kept for diagnosis."),
}


@dataclass(frozen=True)
class Failure:
    """Why a job did not produce its outputs, in words for the user."""

    code: str
    message: str
    hint: str = ""

    @property
    def title(self) -> str:
        return ERROR_ADVICE.get(self.code, ERROR_ADVICE["INTERNAL"])[0]

    @property
    def advice(self) -> str:
        return ERROR_ADVICE.get(self.code, ERROR_ADVICE["INTERNAL"])[1]

    @property
    def cancelled(self) -> bool:
        return self.code == "CANCELLED"

    def text(self) -> str:
        """Title, message, the engine's hint and our advice, one per line (for a message box or the log)."""
        lines = [f"{self.title}: {self.message}"]
        if self.hint:
            lines.append(f"Fix: {self.hint}")
        lines.append(self.advice)
        return "\n".join(lines)


def failure_from_event(event: dict) -> Failure:
    """The engine's ``error`` event as a Failure."""
    return Failure(code=str(event.get("code") or "INTERNAL"), message=str(event.get("message") or "unknown error"),
                   hint=str(event.get("hint") or ""))


#: What Slicer's launcher (CTKAppLauncher, in front of PythonSlicer) prints when the interpreter it runs dies of a signal.
LAUNCHER_CRASH_MARKER = "exit abnormally"


def failure_from_exit(status: int, stderr_tail: str, cancel_requested: bool) -> Failure:
    """A Failure for an engine that ended without an ``error`` event (killed, crashed, not installed)."""
    if cancel_requested:
        return Failure("CANCELLED", "the job was cancelled and the engine was stopped")
    if LAUNCHER_CRASH_MARKER in stderr_tail:  # PythonSlicer reports its child's death by a signal as status 1
        return Failure("ENGINE_CRASHED", "the engine process was killed or crashed (the system may have run out of memory)",
                       "close other programs, lower the number of samples or the input size, or choose device 'cpu'")
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        what = f"killed by {name}" + (" (the system may have run out of memory)" if name == "SIGKILL" else "")
        return Failure("ENGINE_CRASHED", f"the engine process was {what}", _last_line(stderr_tail))
    if "No module named meddiffcore" in stderr_tail or "No module named 'meddiffcore'" in stderr_tail:
        return Failure("ENGINE_MISSING", "the engine (Python package 'meddiffcore') was not found",
                       "reinstall the MedDiffSlicer extension from the Extensions Manager")
    missing = missing_module(stderr_tail)
    if missing:
        return Failure("DEPENDENCY_MISSING", f"the engine needs the Python package '{missing}', which is not installed",
                       "press 'Install dependencies' in the Models section, then try again")
    return Failure("ENGINE_CRASHED", f"the engine exited with status {status} without reporting an error",
                   _last_line(stderr_tail))


def missing_module(text: str) -> str | None:
    """The top-level module a ``ModuleNotFoundError`` in a traceback names, if any."""
    marker = "ModuleNotFoundError: No module named "
    for line in reversed(text.splitlines()):
        if marker in line:
            return line.split(marker, 1)[1].strip().strip("'\"").split(".")[0]
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class LaunchError(Exception):
    """A job could not be started (bad input node, unmapped segment, failed preflight); carries the Failure to show."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.text())
        self.failure = failure
