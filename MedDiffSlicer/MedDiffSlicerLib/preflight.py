"""Checks before a launch, each failure with a message that says what to do.

The engine answers ``meddiff info --json`` (importable engine, torch and CUDA
versions, GPUs with compute capability and free memory, the CUDA architectures
the installed torch was built for). From that and the model card we can tell,
before minutes of work are lost, whether the chosen device can run the model.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Sequence

from .background import BackgroundTask
from .engine import EngineCommandError, run_engine_command


@dataclass(frozen=True)
class Issue:
    """One preflight finding; ``blocking`` ones stop the launch, the others are shown as warnings."""

    message: str
    hint: str
    blocking: bool = True

    def text(self) -> str:
        return f"{self.message}\nFix: {self.hint}"


def engine_report(python: Sequence[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """The engine's machine report; raises EngineCommandError when the engine cannot be run."""
    text = run_engine_command(["info", "--json"], python=python, env=env)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineCommandError(f"the engine's report is not JSON: {exc}") from exc


def _arch(entry: str) -> tuple[str, int, int] | None:
    """``"sm_86"`` -> ``("sm", 8, 6)``; ``"compute_90a"`` -> ``("compute", 9, 0)``."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", entry)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def capability_supported(capability: str, arch_list: Sequence[str]) -> bool:
    """Whether torch built for ``arch_list`` runs on a GPU of compute ``capability`` (``"8.6"``).

    Binary kernels (``sm_XY``) run on the same major version with an equal or
    higher minor; PTX (``compute_XY``) is compiled on the fly for any newer GPU.
    """
    major, minor = (int(p) for p in capability.split(".")[:2])
    for entry in arch_list:
        arch = _arch(entry)
        if arch is None:
            continue
        kind, a_major, a_minor = arch
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def check_device(report: dict, device: str, card: dict | None = None) -> list[Issue]:
    """Issues with running ``card``'s model on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) on this machine."""
    issues: list[Issue] = []
    if device == "cpu":
        return issues
    gpus = report.get("gpus") or []
    if not report.get("cuda_available") or not gpus:
        if device.startswith("cuda"):
            issues.append(Issue("no usable NVIDIA GPU was found (or the installed torch was built without CUDA)",
                                "choose device 'cpu', or reinstall torch with CUDA from the PyTorch Utils module"))
        else:
            issues.append(Issue("no GPU found: the model will run on the CPU, which can take many minutes",
                                "install a CUDA build of torch (PyTorch Utils module) to use an NVIDIA GPU", blocking=False))
        return issues
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    if index >= len(gpus):
        issues.append(Issue(f"GPU {index} does not exist (this machine has {len(gpus)})", "choose device 'cuda:0' or 'auto'"))
        return issues
    gpu = gpus[index]
    arch_list = report.get("cuda_arch_list") or []
    if arch_list and not capability_supported(gpu["capability"], arch_list):
        issues.append(Issue(
            f"the installed torch {report.get('torch')} has no kernels for {gpu['name']} (compute capability {gpu['capability']}; "
            f"built for {', '.join(arch_list)})",
            "install a torch build that supports this GPU (PyTorch Utils module), or choose device 'cpu'"))
    need_gb = ((card or {}).get("requirements") or {}).get("gpu_memory_gb")
    if need_gb is not None and gpu.get("free_memory_gb") is not None and gpu["free_memory_gb"] < float(need_gb):
        issues.append(Issue(
            f"model '{card.get('name')}' needs about {float(need_gb):g} GB of GPU memory, {gpu['name']} has "
            f"{gpu['free_memory_gb']:g} GB free", "close other GPU programs (or Slicer's 3D views), or choose device 'cpu'"))
    return issues


class ReportCache:
    """The engine's machine report, fetched in a background thread so the GUI never waits for torch to import.

    :meth:`request` starts a fetch (a module does it when it opens); :meth:`poll`, from a GUI timer,
    returns the report once there is one at most ``max_age_s`` old (free GPU memory changes), None
    while a fetch is under way, and raises EngineCommandError when the fetch failed (a failure is
    not cached: the next poll fetches again). :meth:`get` is the blocking form for scripts and tests.
    """

    def __init__(self, python: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 max_age_s: float = 120.0) -> None:
        self.python, self.env, self.max_age_s = python, env, max_age_s
        self._report: dict | None = None
        self._fetched_at = 0.0
        self._task: BackgroundTask | None = None

    def _fresh(self) -> dict | None:
        if self._report is not None and time.monotonic() - self._fetched_at <= self.max_age_s:
            return self._report
        return None

    def request(self) -> None:
        """Start fetching, unless a fresh report is at hand or a fetch is under way."""
        if self._task is None and self._fresh() is None:
            self._task = BackgroundTask(lambda: engine_report(python=self.python, env=self.env), "meddiff-preflight")

    prefetch = request

    def poll(self) -> dict | None:
        """The report if ready (never blocks); None while fetching; EngineCommandError if the fetch failed."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if self._task is None:
            self.request()
            return None
        if not self._task.done():
            return None
        task, self._task = self._task, None
        self._report, self._fetched_at = task.result(), time.monotonic()
        return self._report

    def get(self, timeout_s: float | None = None) -> dict:
        """Blocking: the report (scripts, tests); EngineCommandError when the engine cannot answer."""
        self.request()
        if self._task is not None and not self._task.wait(timeout_s):
            raise EngineCommandError(f"the engine did not answer within {timeout_s:g} s")
        report = self.poll()
        assert report is not None
        return report


def preflight(device: str, card: dict | None, python: Sequence[str] | None = None,
              env: dict[str, str] | None = None, reports: ReportCache | None = None) -> list[Issue]:
    """Everything that would stop a launch: the engine itself, then the device against the model card."""
    try:
        report = reports.get() if reports is not None else engine_report(python=python, env=env)
    except EngineCommandError as exc:
        return [engine_issue(exc)]
    return check_device(report, device, card)


def engine_issue(error: EngineCommandError) -> Issue:
    """The blocking issue for an engine that cannot answer at all."""
    return Issue(str(error), "press 'Install dependencies' in the Models section (or reinstall MedDiffSlicer), then try again")
