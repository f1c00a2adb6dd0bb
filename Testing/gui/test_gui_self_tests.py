"""Each new module's Slicer self-test (what ctest runs inside Slicer), run here through the Qt double.

The self-tests use the bundled demo models where there is one (recon, WDM) and
an installed model otherwise (CTP: the tiny test model in MEDDIFF_HOME).
"""

import pytest
from panel_checks import load_module


@pytest.mark.parametrize("name, result", [("CTPTemporalInpaint", "test perfusion inpainted"),
                                          ("SparseViewRecon", "test phantom FAST recon"),
                                          ("VolumeGenerator", "wdm-demo sample")])
def test_the_module_self_test_passes(double, monkeypatch, name, result):
    import slicer

    module = load_module(name, monkeypatch)
    test = getattr(module, f"{name}Test")()
    test.runTest()
    assert slicer.mrmlScene.GetFirstNodeByName(result) is not None  # it ran the engine, not skipped
