"""Fixtures of the widget tests: offscreen Qt, the Slicer Qt double, a tiny model, a fresh scene."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer"))

from slicer_helpers import (add_module_paths, engine_env, meddiff_home, new_scene,  # noqa: E402,F401 - fixtures
                            python_slicer_launcher)

add_module_paths()


@pytest.fixture()
def double(monkeypatch, meddiff_home):  # noqa: F811
    """The Qt double installed, the engine pointed at the tiny model, and a fresh scene."""
    from slicer_qt_double import install, uninstall

    for key, value in engine_env(meddiff_home).items():
        if key in ("MEDDIFF_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.setenv(key, value)
    recorder = install(monkeypatch)
    recorder.scene = new_scene()
    yield recorder
    uninstall(recorder)
