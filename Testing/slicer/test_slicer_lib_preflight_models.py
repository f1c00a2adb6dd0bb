"""Preflight checks and the model list/import, asked of a real engine process (`meddiff info/models` in a subprocess)."""

import pytest

from MedDiffSlicerLib.dependencies import (Requirement, confirmation_text, engine_requirements, missing_requirements,
                                          unsupported_reason)
from MedDiffSlicerLib.engine import EngineCommandError
from MedDiffSlicerLib.models import card_summary, import_model, label_table, list_models
from MedDiffSlicerLib.preflight import ReportCache, capability_supported, check_device, engine_report, preflight
from slicer_helpers import TINY_MODEL, save_tiny_ctca_model


@pytest.mark.parametrize("capability, arch_list, supported", [
    ("8.6", ["sm_80", "sm_90"], True),       # same major, newer minor runs sm_80 binaries
    ("8.0", ["sm_86"], False),               # an older minor cannot run sm_86 binaries
    ("12.0", ["sm_80", "sm_90"], False),     # a new major needs its own binaries ...
    ("12.0", ["sm_90", "compute_90"], True),  # ... or PTX it can compile
    ("6.1", ["sm_70", "compute_70"], False),  # too old for anything in the build
    ("9.0", ["sm_90a"], True),
])
def test_compute_capability_against_the_torch_build(capability, arch_list, supported):
    assert capability_supported(capability, arch_list) is supported


def _gpu_report(free_gb: float, capability: str = "8.6") -> dict:
    return {"cuda_available": True, "torch": "2.x", "cuda_arch_list": ["sm_80", "sm_90"],
            "gpus": [{"index": 0, "name": "Test GPU", "capability": capability, "total_memory_gb": 24.0,
                      "free_memory_gb": free_gb}]}


def test_device_checks_name_the_problem_and_the_fix():
    card = {"name": "big", "requirements": {"gpu_memory_gb": 10}}
    assert check_device(_gpu_report(20.0), "cuda", card) == []
    (memory,) = check_device(_gpu_report(4.0), "auto", card)
    assert memory.blocking and "10 GB" in memory.message and "4 GB free" in memory.message and "cpu" in memory.hint
    (arch,) = check_device(_gpu_report(20.0, capability="7.5"), "cuda:0", card)
    assert "7.5" in arch.message and "sm_80" in arch.message and arch.blocking
    (missing,) = check_device(_gpu_report(20.0), "cuda:1", card)
    assert "GPU 1 does not exist" in missing.message
    assert check_device(_gpu_report(1.0), "cpu", card) == []


def test_preflight_with_this_machines_real_engine(env):
    report = engine_report(env=env)
    assert report["meddiffcore"] and "torch" in report
    issues = preflight("cuda", None, env=env)
    if report["cuda_available"]:  # a GPU this torch supports, with no card requirement: nothing stops a launch
        assert [i for i in issues if i.blocking] == []
    else:
        assert issues and issues[0].blocking and "cpu" in issues[0].hint
        (warning,) = preflight("auto", None, env=env)
        assert not warning.blocking
    assert preflight("cpu", None, env=env) == []


def test_report_cache_prefetches_in_the_background_and_expires(env):
    import time

    cache = ReportCache(env=env, max_age_s=60)
    cache.prefetch()
    started = time.monotonic()
    first = cache.get()  # waits for the fetch under way rather than starting another
    assert first["meddiffcore"] and cache.get() is first  # fresh: served from the cache
    assert time.monotonic() - started < 60
    cache.max_age_s = 0.0
    time.sleep(0.01)
    assert cache.get() is not first  # stale: fetched again (free GPU memory changes)
    assert preflight("cpu", None, reports=cache) == []


def test_missing_engine_is_a_blocking_issue(tmp_path):
    (issue,) = preflight("cpu", None, python=[str(tmp_path / "no-such-python")])
    assert issue.blocking and "does not exist" in issue.message and "install" in issue.hint.lower()
    cache = ReportCache(python=[str(tmp_path / "no-such-python")])
    cache.prefetch()  # fails quietly in the background ...
    (again,) = preflight("cpu", None, reports=cache)  # ... and is reported when it matters
    assert again.blocking and "does not exist" in again.message


def test_model_list_shows_the_card_and_its_label_table(env):
    cards = list_models(task="ctca", env=env)
    card = next(c for c in cards if c["name"] == TINY_MODEL)
    assert label_table(card)["3"] == "left_ventricle"
    summary = card_summary(card)
    assert TINY_MODEL in summary and "16x16x16" in summary and "Training data" in summary and "Metrics" in summary
    assert list_models(task="no-such-task", env=env) == []


def test_import_verifies_the_checksum(tmp_path, env):
    source = tmp_path / "usb"
    card_path = save_tiny_ctca_model(source, "ctca-imported")
    home = tmp_path / "home"
    env = dict(env, MEDDIFF_HOME=str(home))
    weights = card_path.with_suffix(".safetensors")
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"corrupt!")
    with pytest.raises(EngineCommandError, match="sha256"):
        import_model(weights, env=env)
    assert list_models(env=env) == [] or all(c["name"] != "ctca-imported" for c in list_models(env=env))
    weights.write_bytes(good)
    assert "ctca-imported" in import_model(weights, env=env)
    assert any(c["name"] == "ctca-imported" for c in list_models(env=env))


def _engine_with_requirements(tmp_path, text: str):
    """A copy of the engine's layout whose requirements file says ``text``."""
    package = tmp_path / "MedDiffCore" / "meddiffcore"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "requirements.txt").write_text(text)
    return package.parent


def test_missing_dependencies_come_from_the_engines_requirements_without_importing_anything(tmp_path, monkeypatch):
    import sys

    monkeypatch.delenv("MEDDIFF_ENGINE_PYTHON", raising=False)
    shipped = [r.name for r in engine_requirements()]
    assert {"torch", "nibabel", "PyWavelets", "safetensors", "PyYAML"} <= set(shipped)
    assert missing_requirements() == []  # this venv has what the engine needs

    folder = _engine_with_requirements(tmp_path, "# comment\nnumpy>=1.0\ntorch>=99,<100\nno-such-package-xyz >= 1.2\n")
    monkeypatch.setenv("MEDDIFF_ENGINE_PATH", str(folder))
    before = set(sys.modules)
    missing = missing_requirements()
    assert [str(r) for r in missing] == ["torch>=99,<100", "no-such-package-xyz>=1.2"]  # too old a torch counts
    assert not {"torch", "numpy"} & (set(sys.modules) - before)  # found from metadata, nothing imported
    question = confirmation_text(missing)
    assert "torch>=99,<100 (installed: " in question and "PyTorch extension" in question
    assert "no-such-package-xyz>=1.2" in question and "numpy" not in question
    assert "wheels in" in confirmation_text(missing, "/media/usb/wheels") and "PyTorch extension" not in \
        confirmation_text(missing, "/media/usb/wheels")
    monkeypatch.setenv("MEDDIFF_ENGINE_PYTHON", "/elsewhere/python")
    assert missing_requirements() == []  # another interpreter: preflight asks it instead


@pytest.mark.parametrize("version, specifier, ok", [
    ("2.13.0+cpu", ">=2.2,<3", True), ("2.1.2", ">=2.2,<3", False), ("3.0.0", ">=2.2,<3", False),
    ("1.26.4", ">=1.24", True), ("6.0.1", "==6.0.1", True), ("0.4.0rc1", ">=0.4", True), (None, ">=1", False),
    ("5.0", "", True)])
def test_version_ranges(version, specifier, ok):
    assert Requirement("x", specifier).satisfied_by(version) is ok


def test_an_old_slicer_is_named_with_what_it_needs():
    reason = unsupported_reason((3, 9, 10))
    assert "5.10" in reason and "3.9.10" in reason and "3.10" in reason
    assert unsupported_reason((3, 12, 1)) is None


