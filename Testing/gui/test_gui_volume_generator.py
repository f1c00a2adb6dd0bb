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
