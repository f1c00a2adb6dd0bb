"""Checks before a launch, each failure with a message that says what to do.

The engine answers ``meddiff info --json`` (importable engine, torch and CUDA
versions, GPUs with compute capability and free memory, the CUDA architectures
the installed torch was built for). From that and the model card we can tell,
before minutes of work are lost, whether the chosen device can run the model.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Sequence

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
    """The engine's report, fetched in the background when a module opens so Apply does not wait for torch to import.

    ``get`` returns a report at most ``max_age_s`` old (free GPU memory changes),
    waiting for a fetch under way or fetching anew. A failed fetch is not cached.
    """

    def __init__(self, python: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 max_age_s: float = 120.0) -> None:
        self.python, self.env, self.max_age_s = python, env, max_age_s
        self._lock = threading.Lock()
        self._report: dict | None = None
        self._fetched_at = 0.0
        self._fetching: threading.Thread | None = None

    def prefetch(self) -> None:
        """Start fetching in a background thread (a subprocess wait: no GUI call happens there)."""
        with self._lock:
            if self._fetching is None:
                self._fetching = threading.Thread(target=self._fetch_quietly, daemon=True, name="meddiff-preflight")
                self._fetching.start()

    def get(self) -> dict:
        with self._lock:
            fetching = self._fetching
        if fetching is not None:
            fetching.join()
        with self._lock:
            if self._report is not None and time.monotonic() - self._fetched_at <= self.max_age_s:
                return self._report
        return self._fetch()

    def _fetch(self) -> dict:
        report = engine_report(python=self.python, env=self.env)
        with self._lock:
            self._report, self._fetched_at = report, time.monotonic()
        return report

    def _fetch_quietly(self) -> None:
        try:
            self._fetch()
        except EngineCommandError:
            pass  # get() fetches again and reports the failure where the user sees it
        finally:
            with self._lock:
                self._fetching = None


def preflight(device: str, card: dict | None, python: Sequence[str] | None = None,
              env: dict[str, str] | None = None, reports: ReportCache | None = None) -> list[Issue]:
    """Everything that would stop a launch: the engine itself, then the device against the model card."""
    try:
        report = reports.get() if reports is not None else engine_report(python=python, env=env)
    except EngineCommandError as exc:
        return [Issue(str(exc), "install the engine and torch from the module's Dependencies section, then try again")]
    return check_device(report, device, card)
