"""The Volume Generator panel through the Slicer Qt double: real .ui, real parameter node, real engine.

Writes the panel picture used by the README (Resources/Screenshots/VolumeGenerator.png).
"""

import numpy as np
import pytest

from panel_checks import (bound_parameters, grab_while_running, keep_picture, make_widget, parameter_fields,
                          run_until_idle, ui_names, used_ui_names, writing_pictures)
from slicer_helpers import ROOT, TINY_SR, TINY_WDM

NAME = "VolumeGenerator"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{NAME}.png"


def test_the_ui_file_and_the_code_agree():
    assert used_ui_names(NAME) <= ui_names(NAME), sorted(used_ui_names(NAME) - ui_names(NAME))
    assert {"kind", "inputVolume", "samples", "spacingX", "spacingY", "spacingZ", "stages"} <= bound_parameters(NAME)
    assert bound_parameters(NAME) <= parameter_fields(NAME)


def test_wdm_samples_take_the_spacing_set_in_the_panel_and_write_the_panel_picture(double, monkeypatch, tmp_path):
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.kind == "wdm" and TINY_WDM in [widget.ui.modelComboBox.itemText(i)
                                                  for i in range(widget.ui.modelComboBox.count())]
    params.model, params.samples, params.steps, params.seed, params.device = TINY_WDM, 2, 3, 4, "cpu"
    widget.ui.spacingXSpinBox.setValue(0.5)
    widget.ui.spacingYSpinBox.setValue(0.75)
    widget.ui.spacingZSpinBox.setValue(1.25)
    assert (params.spacingX, params.spacingY, params.spacingZ) == (0.5, 0.75, 1.25)
    assert widget.ui.applyButton.isEnabled() and not widget.ui.stagesSpinBox.isEnabled()
    if writing_pictures():  # the README shows the bundled demo model, not the random-weight test model
        params.model, params.steps = "wdm-demo", 25
    widget.ui.applyButton.click()
    picture = tmp_path / "panel.png"
    run_until_idle(double, widget, on_tick=grab_while_running(widget, picture))
    assert double.errors == [], double.errors
    out = params.outputVolume
    assert out.GetName() == f"{params.model} sample 1" and out.GetSpacing() == pytest.approx((0.5, 0.75, 1.25))
    assert double.scene.GetFirstNodeByName(f"{params.model} sample 2") is not None
    assert double.slice_layers[-1]["background"] is out
    keep_picture(widget, picture, SCREENSHOT)


def test_upscale_needs_an_input_and_refines_it_in_plane(double, monkeypatch):
    import slicer

    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    widget.ui.kindComboBox.setCurrentText("upscale")
    assert params.kind == "upscale" and params.model == TINY_SR
    assert not widget.ui.applyButton.isEnabled() and widget.ui.stagesSpinBox.isEnabled()
    low = double.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "low")
    slicer.util.updateVolumeFromArray(low, np.random.default_rng(0).random((2, 16, 16)).astype(np.float32))
    low.SetSpacing(2.0, 2.0, 4.0)
    params.inputVolume, params.steps, params.device = low, 1, "cpu"
    assert widget.ui.applyButton.isEnabled()
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert double.errors == [], double.errors
    up = params.outputVolume
    # 16 px slices enter the cascade's last 2x stage: 32 px at half the pixel size, slices unchanged
    assert up.GetName() == "low super-resolved" and up.GetSpacing() == pytest.approx((1.0, 1.0, 4.0))
    assert slicer.util.arrayFromVolume(up).shape == (2, 32, 32)


def test_a_published_cwdm_model_gets_one_input_per_source_contrast(double, monkeypatch, tmp_path):
    """An imported cWDM generator (t1c from t1n, t2w and t2f): the panel asks for each contrast by name."""
    import json
    import sys

    import slicer

    sys.path.insert(0, str(ROOT / "Testing" / "core"))
    from published_helpers import save_tiny_cwdm_checkpoint

    from meddiffcore.checkpoints import import_checkpoint

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))
    fields = save_tiny_cwdm_checkpoint(tmp_path / "cwdm_t1c.pt")
    card_path = import_checkpoint("cwdm", [tmp_path / "cwdm_t1c.pt"], network=fields).card_path
    card = json.loads(card_path.read_text())
    card["task_config"]["size"] = [16, 16, 16]  # the tiny network on a small grid
    card_path.write_text(json.dumps(card))
    volumes = []
    brain = np.zeros((10, 24, 24), np.float32)
    brain[2:9, 5:19, 4:20] = 1.0
    for index, contrast in enumerate(("t1n", "t2w", "t2f")):
        node = double.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"case {contrast}")
        slicer.util.updateVolumeFromArray(node, brain * (300.0 + 100 * index))
        node.SetOrigin(10.0, 20.0, -30.0)
        volumes.append(node)

    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.model == "cwdm-t1c"
    assert widget.ui.inputLabel.text() == "t1n volume:" and widget.ui.condition3Label.text() == "t2f volume:"
    assert not widget.ui.condition2Selector.isHidden()
    params.inputVolume, params.conditionVolume2, params.steps, params.device = volumes[0], volumes[1], 2, "cpu"
    widget.ui.applyButton.click()  # t2f missing: refused, naming it
    run_until_idle(double, widget)
    assert len(double.errors) == 1 and "t2f" in double.errors[0] and params.outputVolume is None
    params.conditionVolume3 = volumes[2]
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert len(double.errors) == 1, double.errors
    out = params.outputVolume
    assert out.GetName() == "case t1n translated"
    assert slicer.util.arrayFromVolume(out).shape == brain.shape and out.GetOrigin() == pytest.approx((10.0, 20.0, -30.0))
