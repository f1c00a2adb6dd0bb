"""What the engine needs in Slicer's Python, what is missing, and installing it (first use, on the main thread).

The engine code ships with the extension; only third-party packages may be missing. Their list is
the engine's own ``meddiffcore/requirements.txt`` (the same file pip reads through
``pyproject.toml``), so the versions always match the engine. Slicer's Python already has numpy,
scipy, SimpleITK, pydicom and Pillow; a fresh Slicer usually lacks torch, nibabel, PyWavelets,
safetensors and PyYAML. Checking reads package metadata only: nothing is imported.

Installing (after one confirmation that lists everything, asked by the panel):

* torch through the PyTorch extension (``PyTorchUtils``: the CUDA build that fits the driver),
  with the engine's version range;
* the others through Slicer's pip helper: ``slicer.packaging.pip_ensure`` where it exists (Slicer
  5.12+), else ``slicer.util.pip_install``;
* offline (a folder of wheels, e.g. copied from a machine with internet access), everything with
  ``pip install --no-index --find-links FOLDER``.

Supported Slicer: 5.10 or newer (Python 3.12). Slicer 5.8 ships Python 3.9, which the engine
does not support: :func:`unsupported_reason` says so, and the modules show it instead of a panel.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .engine import engine_package

REQUESTER = "MedDiffSlicer"
#: The oldest Python the engine runs on, and the Slicer release that ships it.
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"
TORCH = "torch"
#: Approximate download of a CUDA build of torch, for the confirmation.
TORCH_DOWNLOAD = "about 2.5 GB with CUDA"


def unsupported_reason(version_info=sys.version_info) -> str | None:
    """Why MedDiff cannot run in this Slicer (its Python is too old), or None."""
    if tuple(version_info[:2]) >= MINIMUM_PYTHON:
        return None
    found = ".".join(str(v) for v in version_info[:3])
    need = ".".join(str(v) for v in MINIMUM_PYTHON)
    return (f"MedDiff needs 3D Slicer {MINIMUM_SLICER} or newer (Python {need} or newer); this Slicer runs Python {found}. "
            f"Install Slicer {MINIMUM_SLICER} or newer from https://download.slicer.org and install MedDiffSlicer there.")


@dataclass(frozen=True)
class Requirement:
    """One line of the engine's requirements: a distribution name and a version range like ``>=2.2,<3``."""

    name: str
    specifier: str = ""

    def __str__(self) -> str:
        return self.name + self.specifier

    def satisfied_by(self, version: str | None) -> bool:
        if version is None:
            return False
        have = _version_key(version)
        for clause in filter(None, (c.strip() for c in self.specifier.split(","))):
            operator, bound = re.match(r"(>=|<=|==|!=|>|<)\s*(.+)", clause).groups()
            want = _version_key(bound)
            length = max(len(have), len(want))
            a, b = have + (0,) * (length - len(have)), want + (0,) * (length - len(want))
            if not {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[operator]:
                return False
        return True


def _version_key(text: str) -> tuple[int, ...]:
    """``"2.13.0+cu126"`` -> ``(2, 13, 0)``: the release numbers (local and pre-release tags ignored)."""
    numbers = []
    for part in text.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)


def parse_requirements(text: str) -> list[Requirement]:
    """Requirement lines (``name>=1,<2``; comments and blank lines skipped)."""
    requirements = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, specifier = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
            requirements.append(Requirement(name, specifier.replace(" ", "")))
    return requirements


def engine_requirements() -> list[Requirement]:
    """The engine's run-time requirements, from the engine's own ``requirements.txt``."""
    package = engine_package()
    if package is None or not (package / "requirements.txt").is_file():
        raise RuntimeError("the MedDiff engine was not found next to the modules: reinstall the MedDiffSlicer extension")
    return parse_requirements((package / "requirements.txt").read_text(encoding="utf-8"))


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements() -> list[Requirement]:
    """What Slicer's Python lacks (or has in a version the engine cannot use), found without importing anything.

    The engine runs in ``PythonSlicer``, which shares Slicer's site-packages, so this Python answers
    for it. An engine in another interpreter (``$MEDDIFF_ENGINE_PYTHON``) is that interpreter's
    business: preflight asks it.
    """
    if os.environ.get("MEDDIFF_ENGINE_PYTHON"):
        return []
    importlib.invalidate_caches()  # a package installed a moment ago must be seen
    return [r for r in engine_requirements() if not r.satisfied_by(installed_version(r.name))]


def confirmation_text(missing: list[Requirement], wheel_folder: str = "") -> str:
    """The one question asked before installing: what, from where, and how long."""
    lines = []
    for requirement in missing:
        found = installed_version(requirement.name)
        note = f" (installed: {found})" if found else ""
        if requirement.name == TORCH and not wheel_folder:
            note += f" through the PyTorch extension, {TORCH_DOWNLOAD}"
        lines.append(f"  {requirement}{note}")
    source = (f"from the wheels in '{wheel_folder}' (no internet needed)" if wheel_folder else
              "from the internet (offline: choose a folder of wheels in the Models section first)")
    return ("MedDiff needs these Python packages, which this Slicer does not have yet:\n" + "\n".join(lines) +
            f"\n\nInstall them now {source}? This can take several minutes; Slicer may need a restart afterwards.")


def install(missing: list[Requirement], wheel_folder: str = "") -> None:
    """Install ``missing`` (after the user confirmed); raises RuntimeError with the reason when something fails."""
    import slicer

    if wheel_folder:
        folder = Path(wheel_folder)
        if not folder.is_dir():
            raise RuntimeError(f"the wheel folder '{folder}' does not exist: choose the folder that holds the .whl files")
        slicer.util.pip_install(["--no-index", "--find-links", str(folder), *(str(r) for r in missing)])
        return
    torch = [r for r in missing if r.name == TORCH]
    others = [r for r in missing if r.name != TORCH]
    if torch:
        install_torch(torch[0])
    if others:
        packaging = _slicer_packaging()
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer 5.12+
            packaging.pip_ensure([str(r) for r in others], prompt_install=False, requester=REQUESTER)
        else:
            slicer.util.pip_install([str(r) for r in others])


def install_torch(requirement: Requirement) -> None:
    """torch in the engine's version range through the PyTorch extension (which picks the build for the driver)."""
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager "
                           "(MedDiffSlicer depends on it), restart Slicer and try again") from exc
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                          torchVersionRequirement=requirement.specifier)
    if torch is None:
        raise RuntimeError(f"torch ({requirement}) was not installed; MedDiff cannot run without it")


def _slicer_packaging():
    """``slicer.packaging`` (Slicer 5.12 and newer), else None."""
    try:
        return importlib.import_module("slicer.packaging")
    except ImportError:
        return None


def self_test_skip_reason() -> str | None:
    """Why a module's self-test cannot run the engine here (a build machine: no torch yet, or an old Slicer), or None."""
    reason = unsupported_reason()
    if reason:
        return reason
    missing = missing_requirements()
    if missing:
        return ("the engine's packages are not installed in this Slicer (" + ", ".join(str(r) for r in missing) +
                "); the model tests need them (press 'Install dependencies' in the module)")
    return None
