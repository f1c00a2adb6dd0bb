"""Fixtures of the Slicer-side Lib tests: a tiny model in a temporary MEDDIFF_HOME and a fresh MRML scene per test."""

import pytest

from slicer_helpers import add_module_paths, engine_env, new_scene, save_tiny_ctca_model

add_module_paths()


@pytest.fixture(scope="session")
def meddiff_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("meddiff_home")
    save_tiny_ctca_model(home)
    return home


@pytest.fixture()
def env(meddiff_home):
    return engine_env(meddiff_home)


@pytest.fixture()
def scene():
    return new_scene()
