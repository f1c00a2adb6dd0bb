"""Fixtures of the Slicer-side Lib tests: a tiny model in a temporary MEDDIFF_HOME and a fresh MRML scene per test."""

import pytest

from slicer_helpers import add_module_paths, engine_env, meddiff_home, new_scene, python_slicer_launcher  # noqa: F401 - fixtures

add_module_paths()


@pytest.fixture()
def env(meddiff_home):  # noqa: F811
    return engine_env(meddiff_home)


@pytest.fixture()
def scene():
    return new_scene()
