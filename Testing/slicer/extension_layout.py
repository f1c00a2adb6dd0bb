"""The folder layout the MedDiffSlicer extension installs, computed from its CMake files, and a copy of it on disk.

Slicer's ``slicerMacroBuildScriptedModule`` and CTK's ``ctkMacroCompilePythonScript`` (read in their
source) copy each listed file to ``<qt-scripted-modules>/<its path relative to the source folder>``:
a module's ``X.py`` and ``Resources/...`` land directly in ``qt-scripted-modules``, the library's
scripts in ``qt-scripted-modules/MedDiffSlicerLib``, and the engine (the top-level CMakeLists' glob
over ``MedDiffCore``) in ``qt-scripted-modules/MedDiffCore/meddiffcore``. This module reads the same
lists and patterns from the CMake files, so a file added to the source but not to CMake is missing
here too, as it would be in the built extension.

What it does not reproduce: byte-compiled ``.pyc`` files and the rest of a Slicer installation.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where Slicer 5.10 puts an extension's scripted modules, relative to the extension's install prefix.
SCRIPTED_MODULES = Path("lib") / "Slicer-5.10" / "qt-scripted-modules"


def _cmake_list(text: str, variable: str, substitutions: dict[str, str]) -> list[str]:
    """The items of ``set(VARIABLE item item ...)`` in a CMake file, with ``${NAME}`` substituted."""
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    if match is None:
        raise ValueError(f"set({variable} ...) not found")
    items = match.group(1).split()
    for name, value in substitutions.items():
        items = [item.replace("${" + name + "}", value) for item in items]
    return [item.strip('"') for item in items]


def _cmake_string(text: str, variable: str) -> str:
    """The value of ``set(VARIABLE "value")``, CMake escapes undone."""
    match = re.search(r'set\(\s*' + re.escape(variable) + r'\s+"((?:[^"\\]|\\.)*)"\s*\)', text)
    if match is None:
        raise ValueError(f'set({variable} "...") not found')
    return re.sub(r"\\(.)", r"\1", match.group(1))


def installed_files(root: Path = ROOT) -> dict[str, Path]:
    """Installed path (relative to ``qt-scripted-modules``) -> source file, as the CMake files declare them."""
    top = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    files: dict[str, Path] = {}
    for folder in re.findall(r"add_subdirectory\((MedDiffSlicer/\w+)\)", top):
        source = root / folder
        text = (source / "CMakeLists.txt").read_text(encoding="utf-8")
        if "MEDDIFF_SLICER_LIB_SCRIPTS" in text:
            for script in _cmake_list(text, "MEDDIFF_SLICER_LIB_SCRIPTS", {}):
                files[f"MedDiffSlicerLib/{script}"] = source / script
            continue
        name = _cmake_list(text, "MODULE_NAME", {})[0]
        for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
            for item in _cmake_list(text, variable, {"MODULE_NAME": name}):
                files[item] = source / item
    pattern = _cmake_string(top, "MEDDIFF_ENGINE_GLOB")
    exclude = re.compile(_cmake_string(top, "MEDDIFF_ENGINE_EXCLUDE"))
    engine_source = root / "MedDiffCore"
    for path in sorted(engine_source.glob(pattern.replace("*", "**/*"))):
        relative = path.relative_to(engine_source).as_posix()
        if path.is_file() and not exclude.search(relative):
            files[f"MedDiffCore/{relative}"] = path
    return files


def install_extension(prefix: Path, root: Path = ROOT) -> Path:
    """Copy the extension's files into ``prefix`` as its install step would; returns its qt-scripted-modules folder."""
    target = prefix / SCRIPTED_MODULES
    for relative, source in installed_files(root).items():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target
