"""Checks every module panel shares: the .ui file against the module's code, and loading a widget through the double."""

from __future__ import annotations

import ast
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET

from slicer_helpers import ROOT


def module_dir(name: str):
    return ROOT / "MedDiffSlicer" / name


def ui_names(name: str) -> set[str]:
    ui = module_dir(name) / "Resources" / "UI" / f"{name}.ui"
    return {w.get("name") for w in ET.parse(ui).iter("widget") if w.get("name")}


def bound_parameters(name: str) -> set[str]:
    ui = module_dir(name) / "Resources" / "UI" / f"{name}.ui"
    return {p.find("string").text for p in ET.parse(ui).iter("property") if p.get("name") == "SlicerParameterName"}


def parameter_fields(name: str) -> set[str]:
    tree = ast.parse((module_dir(name) / f"{name}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}ParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def used_ui_names(name: str) -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", (module_dir(name) / f"{name}.py").read_text()))


def load_module(name: str, monkeypatch):
    """The module file, loaded afresh as Slicer loads it (only its own folder on sys.path)."""
    from slicer_qt_double import load_module_file

    return load_module_file(module_dir(name) / f"{name}.py", monkeypatch)


def make_widget(name: str, monkeypatch, width: int = 420, height: int = 900):
    """The module's widget, set up through the double (the module is loaded afresh)."""
    module = load_module(name, monkeypatch)
    widget = getattr(module, f"{name}Widget")()
    widget.setup()
    widget.parent.resize(width, height)
    return widget


def run_until_idle(double, widget, timeout_s: float = 180.0, on_tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while widget.runner.running:
        double.app.processEvents()
        if on_tick is not None:
            on_tick()
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.02)
    double.app.processEvents()


def grab_while_running(widget, path):
    """A tick callback that saves the panel once the progress bar shows an ETA (the picture for the README)."""
    def tick():
        if "ETA" in widget.ui.progressBar.format() and not path.exists():
            assert widget.parent.grab().save(str(path))
    return tick


def writing_pictures() -> bool:
    """Whether this run refreshes the README's panel pictures (``MEDDIFF_WRITE_SCREENSHOTS=1``), with demo models."""
    return bool(os.environ.get("MEDDIFF_WRITE_SCREENSHOTS"))


def keep_picture(widget, picture, screenshot) -> None:
    """Check the panel picture taken during the run (or take it now); copy it to the README's folder when asked."""
    if not picture.exists():  # the run was too quick to catch mid-way
        assert widget.parent.grab().save(str(picture))
    assert picture.stat().st_size > 5000
    if writing_pictures():
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, screenshot)
