"""The extension as Slicer installs and loads it: the installed folder layout runs a real job, the description
passes the Extensions Index's checks, and the module files load on the Pythons of supported and older Slicers.

Slicer itself cannot run here: the layout comes from the CMake files (see ``extension_layout``), the modules
are loaded the way Slicer's scripted-module factory loads them (only their own folder on ``sys.path``), and
the engine runs through the ``PythonSlicer`` launcher stand-in.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from extension_layout import install_extension, installed_files
from panel_checks import run_until_idle
from slicer_helpers import ROOT, add_labelmap_node
from slicer_qt_double import load_module_file

MODULES = ("CTCASynthesizer", "CTPTemporalInpaint", "SparseViewRecon", "VolumeGenerator")


def test_the_cmake_files_install_every_file_the_modules_and_the_engine_need():
    files = installed_files()
    library = ROOT / "MedDiffSlicer" / "MedDiffSlicerLib"
    assert {f"MedDiffSlicerLib/{p.name}" for p in library.glob("*.py")} <= set(files), "a library file is not in CMake"
    for name in MODULES:
        assert {f"{name}.py", f"Resources/UI/{name}.ui", f"Resources/Icons/{name}.png"} <= set(files)
    engine = ROOT / "MedDiffCore" / "meddiffcore"
    package_files = {p for p in engine.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {f"MedDiffCore/meddiffcore/{p.relative_to(engine).as_posix()}" for p in package_files} == \
        {k for k in files if k.startswith("MedDiffCore/")}
    assert "MedDiffCore/meddiffcore/requirements.txt" in files and "MedDiffCore/meddiffcore/models/ctca-demo.safetensors" in files
    # pip's package data carries the same non-Python files as the extension
    patterns = tomllib.loads((ROOT / "MedDiffCore" / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["meddiffcore"]
    data = {p for p in package_files if p.suffix != ".py" and p.suffix != ".pyc"}
    covered = {p for p in data if any(p.relative_to(engine).match(pattern) for pattern in patterns)}
    assert data - covered <= {engine / "tasks" / "ctp" / "README.md"}, sorted(map(str, data - covered))


def test_a_job_runs_from_the_installed_layout_with_its_own_engine_and_bundled_model(double, monkeypatch, tmp_path):
    """What a researcher gets from the Extensions Manager: nothing pip-installed is needed but third-party packages."""
    modules = install_extension(tmp_path / "MedDiffSlicer")
    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "empty-home"))  # only the models the extension carries
    module = load_module_file(modules / "CTCASynthesizer.py", monkeypatch)
    assert Path(sys.modules["MedDiffSlicerLib"].__file__).parent == modules / "MedDiffSlicerLib"

    zyx = np.indices((40, 40, 40)).astype(float)
    radius = np.sqrt(((zyx - 20.0) ** 2).sum(axis=0))
    labels = np.where(radius < 15, 1, 0) + np.where(radius < 11, 2, 0)  # myocardium around a left ventricle
    node = add_labelmap_node(double.scene, labels.astype(np.uint8), np.diag([2.5, 2.5, 2.5, 1.0]), "sphere heart")
    widget = module.CTCASynthesizerWidget()
    widget.setup()
    params = widget._parameterNode
    assert params.model == "ctca-demo" and params.inputNode is node
    params.steps, params.seed, params.device = 2, 1, "cpu"
    packages = set()

    def tick():
        if widget.job is not None and widget.job.engine.engine_package:
            packages.add(widget.job.engine.engine_package)

    widget.ui.applyButton.click()
    run_until_idle(double, widget, timeout_s=300, on_tick=tick)
    assert double.errors == [], double.errors
    assert params.outputVolume is not None and params.outputVolume.GetName() == "sphere heart synthetic CT"
    assert packages == {str(modules / "MedDiffCore" / "meddiffcore")}  # the extension's engine, not a pip package


# -- the Extensions Index's checks (scripts/check_description_files.py, read in Slicer/ExtensionsIndex) ----------
#: Categories the index accepts that could fit MedDiff (a subset of its ACCEPTED_EXTENSION_CATEGORIES; "Diffusion"
#: there means diffusion MRI).
ACCEPTED_CATEGORIES = {"Image Synthesis", "Tomographic Reconstruction", "Cardiac", "Filtering", "Utilities"}
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "build_subdirectory",
               "enabled", "tier"}


def test_the_extension_description_passes_the_index_checks():
    path = ROOT / "MedDiffSlicer.json"
    raw = path.read_bytes()
    assert b"\r" not in raw  # LF line endings only
    description = json.loads(raw)
    name = path.stem
    assert not name.lower().startswith("slicer")  # the extension name must not start with Slicer ...
    repository = Path(urllib.parse.urlsplit(description["scm_url"]).path).stem
    assert repository.startswith("Slicer")  # ... its repository's name must
    assert urllib.parse.urlsplit(description["scm_url"]).scheme in ("git", "https")
    assert description["category"] in ACCEPTED_CATEGORIES
    assert {"$schema", "category", "scm_url"} <= set(description) <= SCHEMA_KEYS
    assert description["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= description["tier"] <= 5 and description["build_dependencies"] == ["PyTorch"]
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*([^\s)]+)", cmake).group(1) == name
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]+)"\)', cmake).group(1) == description["category"]
    icon = re.search(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"\s*\)', cmake).group(1)
    screenshots = re.search(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake).group(1).split()
    for url in [icon, *screenshots]:  # the index downloads them: they must name files this repository holds
        parts = urllib.parse.urlsplit(url).path.split("/")
        assert parts[2] == repository and (ROOT / "/".join(parts[4:])).is_file(), url
    assert (ROOT / "LICENSE.txt").is_file()
    size_mb = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
                  and ".venv" not in p.parts and p.relative_to(ROOT).parts[0] != "runs") / 2**20  # runs/: git-ignored training output
    assert size_mb < 100, f"the repository is {size_mb:.0f} MB; the index refuses more than 100 MB"
    for module in MODULES:
        source = (ROOT / "MedDiffSlicer" / module / f"{module}.py").read_text()
        assert f'"{description["category"]}")]' in source  # the module is listed under the same category


# -- Pythons: 3.12 (Slicer 5.10+) runs the modules, 3.9 (Slicer 5.8) must still load them --------------------------
SLICER_SIDE = sorted((ROOT / "MedDiffSlicer").rglob("*.py"))


def _python(version: str) -> str | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{version}.*/bin/python{version}"))
    return str(found[-1]) if found else None


@pytest.mark.parametrize("path", SLICER_SIDE, ids=lambda p: p.name)
def test_the_slicer_side_parses_as_python_3_9_and_defers_its_annotations(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    roots = [getattr(node, "annotation", None) for node in ast.walk(tree)]
    roots += [node.returns for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    annotations = {id(n) for root in roots if root is not None for n in ast.walk(root)}
    if path.parent.name == "MedDiffSlicerLib" and annotations:  # `X | None` must stay unevaluated on Python 3.9
        assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                   for n in tree.body), "add `from __future__ import annotations`"
    for node in ast.walk(tree):  # `int | None` evaluated at run time fails on 3.9
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in annotations:
            assert not (_names_a_type(node.left) or _names_a_type(node.right)), \
                f"{path.name}:{node.lineno}: a type union evaluated at run time (Python 3.10+)"


def _names_a_type(node) -> bool:
    return (isinstance(node, ast.Name) and node.id in ("int", "float", "str", "bool", "bytes", "dict", "list", "tuple",
                                                       "set", "Path")) or (isinstance(node, ast.Constant) and node.value is None)


@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_the_slicer_side_compiles_with_the_python_of_each_slicer(version, tmp_path):
    python = _python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv) to compile with")
    result = subprocess.run([python, "-m", "py_compile", *map(str, SLICER_SIDE)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)})
    assert result.returncode == 0, result.stderr
