"""The CTP Temporal Inpaint panel through the Slicer Qt double: real .ui, real parameter node, real engine.

Writes the panel picture used by the README (Resources/Screenshots/CTPTemporalInpaint.png).
"""

from panel_checks import (bound_parameters, grab_while_running, keep_picture, make_widget, parameter_fields,
                          run_until_idle, ui_names, used_ui_names, writing_pictures)
from slicer_helpers import ROOT, TINY_CTP, add_ctp_sequence, scene_snapshot

NAME = "CTPTemporalInpaint"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{NAME}.png"


def test_the_ui_file_and_the_code_agree():
    assert used_ui_names(NAME) <= ui_names(NAME), sorted(used_ui_names(NAME) - ui_names(NAME))
    assert {"inputNode", "interval", "perfusionMaps", "steps", "seed", "device"} <= bound_parameters(NAME)
    assert bound_parameters(NAME) <= parameter_fields(NAME)


def test_apply_fills_the_sequence_with_the_ticked_bad_frame_and_writes_the_panel_picture(double, monkeypatch, tmp_path):
    import qt  # the double's
    import slicer

    shape = dict(slices=8, size=32) if writing_pictures() else {}  # the demo model's slab is 8 slices
    sequence, _ = add_ctp_sequence(double.scene, **shape)
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.inputNode is sequence and params.model == TINY_CTP
    assert TINY_CTP in widget.ui.modelCardText.toPlainText()
    assert widget.ui.timesLabel.text().startswith("2, 5, 8, 11, 14, 17, 20")
    assert widget.ui.badFramesList.count() == 7
    widget.ui.badFramesList.item(2).setCheckState(qt.Qt.Checked)  # what the user does in the list
    assert widget.badFrames() == [2]
    params.steps, params.seed, params.device, params.interval = 2, 1, "cpu", 1.5
    widget.ui.perfusionMapsCheckBox.setChecked(True)
    assert params.perfusionMaps is True and widget.ui.intervalSpinBox.value() == 1.5
    if writing_pictures():  # the README shows the bundled demo model, not the random-weight test model
        params.model, params.steps = "ctp-demo", 20
        assert "ctp-demo" in widget.ui.modelCardText.toPlainText()

    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text() == "Cancel"
    picture = tmp_path / "panel.png"
    run_until_idle(double, widget, on_tick=grab_while_running(widget, picture))
    assert double.errors == [], double.errors
    out = params.outputSequence
    assert out is not None and out.GetNumberOfDataNodes() == 13 and out.GetName() == "perfusion inpainted"
    assert widget.ui.progressBar.value() == 100 and "Added perfusion inpainted" in widget.ui.statusLabel.text()
    assert "perfusion CBF" in widget.ui.statusLabel.text()
    assert double.slice_layers and double.slice_layers[-1]["background"].IsA("vtkMRMLScalarVolumeNode")
    assert double.scene.GetFirstNodeByClass("vtkMRMLPlotChartNode") is not None
    assert slicer.util.arrayFromVolume(double.slice_layers[-1]["background"]).shape == sequence.GetNthDataNode(0).GetImageData().GetDimensions()[::-1]

    keep_picture(widget, picture, SCREENSHOT)


def test_non_numeric_frame_times_are_shown_and_refused_with_their_fix(double, monkeypatch):
    sequence, _ = add_ctp_sequence(double.scene, frames=3)
    sequence.UpdateIndexValue("5", "arterial")
    widget = make_widget(NAME, monkeypatch)
    assert "non-numeric" in widget.ui.timesLabel.text() and widget.ui.badFramesList.count() == 0
    widget._parameterNode.steps, widget._parameterNode.device = 2, "cpu"
    before = scene_snapshot(double.scene)
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert not widget.runner.running and len(double.errors) == 1
    assert "non-numeric" in double.errors[0] and "Fix:" in double.errors[0]
    assert scene_snapshot(double.scene) == before and widget.ui.applyButton.text() == "Apply"
