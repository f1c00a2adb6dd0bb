"""First-use installation of the engine's dependencies, inside Slicer, on the main thread.

torch comes from Slicer's PyTorch extension (it picks the CUDA build that fits
the driver); everything else through Slicer's pip helpers:
``slicer.pydeps.pip_ensure`` (Slicer 5.11+) where present, else
``slicer.util.pip_install``. Only runs inside a Slicer application; the
standalone ``slicer-core`` wheel has no package manager to drive.
"""

from __future__ import annotations

import importlib.util
import os

#: What the engine needs in Slicer's Python besides torch; torch itself comes from the PyTorch extension.
ENGINE_REQUIREMENTS = ["meddiffcore"]
REQUESTER = "MedDiffSlicer"


def missing_requirements(requirements: list[str] = ENGINE_REQUIREMENTS) -> list[str]:
    """What the engine lacks among torch and ``requirements``, found without importing anything.

    The engine runs in ``PythonSlicer``, which shares Slicer's site-packages, so
    this Python answers for it. An engine in another interpreter
    (``$MEDDIFF_ENGINE_PYTHON``) is that interpreter's business: preflight asks it.
    """
    if os.environ.get("MEDDIFF_ENGINE_PYTHON"):
        return []
    missing = [r for r in requirements if importlib.util.find_spec(r) is None]
    if importlib.util.find_spec("torch") is None:
        missing.insert(0, "torch")
    return missing


def install_torch() -> bool:
    """Install torch through the PyTorch extension (asks the user first); returns whether torch is now available."""
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager") from exc
    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is not None


def install_engine() -> None:
    """pip-install the engine's requirements into Slicer's Python."""
    import slicer

    pydeps = getattr(slicer, "pydeps", None) or getattr(slicer, "packaging", None)
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        from packaging.requirements import Requirement

        pydeps.pip_ensure([Requirement(r) for r in ENGINE_REQUIREMENTS], requester=REQUESTER)
    else:
        slicer.util.pip_install(" ".join(ENGINE_REQUIREMENTS))


def ensure_dependencies() -> list[str]:
    """Install whatever is missing (torch first); returns what was installed. Call on the main thread."""
    missing = missing_requirements()
    if "torch" in missing and not install_torch():
        raise RuntimeError("torch was not installed; MedDiff cannot run without it")
    if any(r in missing for r in ENGINE_REQUIREMENTS):
        install_engine()
    return missing
