"""The CTCA Synthesizer panel through the Slicer Qt double: real .ui, real parameter node, real engine.

Writes the panel picture used by the README (Resources/Screenshots/CTCASynthesizer.png).
"""

import time

from panel_checks import (bound_parameters, grab_while_running, keep_picture, make_widget, parameter_fields,
                          run_until_idle, ui_names, used_ui_names, writing_pictures)
from slicer_helpers import ROOT, TINY_MODEL, add_labelmap_node, phantom_labels, scene_snapshot

NAME = "CTCASynthesizer"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{NAME}.png"


def test_the_ui_file_and_the_code_agree():
    assert used_ui_names(NAME) <= ui_names(NAME), sorted(used_ui_names(NAME) - ui_names(NAME))
    assert {"inputNode", "steps", "guidance", "seed", "samples", "device", "wheelFolder"} <= bound_parameters(NAME)
    assert bound_parameters(NAME) <= parameter_fields(NAME), sorted(bound_parameters(NAME) - parameter_fields(NAME))


def _widget(monkeypatch):
    return make_widget(NAME, monkeypatch)


def test_apply_synthesises_a_ct_node_shows_progress_and_writes_the_panel_picture(double, monkeypatch, tmp_path):
    labels, ijk_to_ras = phantom_labels()
    node = add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = _widget(monkeypatch)
    params = widget._parameterNode
    assert params.inputNode is node  # the first label map is picked up
    assert params.model == TINY_MODEL and TINY_MODEL in widget.ui.modelCardText.toPlainText()
    params.steps, params.seed, params.device = 8, 5, "cpu"
    assert widget.ui.stepsSpinBox.value() == 8 and widget.ui.deviceComboBox.currentText() == "cpu"
    if writing_pictures():  # the README shows the bundled demo model, not the random-weight test model
        params.model, params.steps = "ctca-demo", 25
        assert widget.ui.modelComboBox.currentText() == "ctca-demo"

    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text() == "Cancel"  # at once, while the engine is checked in the background
    seen_formats = set()
    picture = tmp_path / "panel.png"
    grab = grab_while_running(widget, picture)

    def tick():
        seen_formats.add(widget.ui.progressBar.format())
        grab()

    run_until_idle(double, widget, timeout_s=600 if writing_pictures() else 120, on_tick=tick)
    assert double.errors == [], double.errors
    ct = params.outputVolume
    assert ct is not None and ct.GetName() == "heart labels synthetic CT" and ct.IsA("vtkMRMLScalarVolumeNode")
    assert f"model '{params.model}'" in widget.ui.logText.toPlainText()
    assert double.slice_layers[-1]["background"] is ct and double.slice_layers[-1]["label"] is node
    assert widget.ui.applyButton.text() == "Apply" and widget.ui.progressBar.value() == 100
    assert any(f.startswith("sampling") for f in seen_formats), seen_formats
    assert "Added" in widget.ui.statusLabel.text()
    keep_picture(widget, picture, SCREENSHOT)


def test_cancel_from_the_panel_leaves_the_scene_unchanged(double, monkeypatch):
    labels, ijk_to_ras = phantom_labels()
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = _widget(monkeypatch)
    params = widget._parameterNode
    params.steps, params.device = 400, "cpu"
    before = scene_snapshot(double.scene)
    widget.ui.applyButton.click()
    deadline = time.monotonic() + 60
    while widget.runner.running and (widget.job is None or widget.job.progress.total == 0):
        double.app.processEvents()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    widget.ui.applyButton.click()  # the same button, now Cancel
    run_until_idle(double, widget, 30)
    assert "Cancelled" in widget.ui.statusLabel.text() and double.errors == []
    assert scene_snapshot(double.scene) == before


def test_batch_without_folders_is_refused_with_a_message(double, monkeypatch):
    widget = _widget(monkeypatch)
    assert widget.ui.batchInputPathLineEdit.currentPath() == "."  # what Slicer shows for an unset pathlib.Path
    widget.ui.batchButton.click()
    run_until_idle(double, widget)
    assert widget.job is None and len(double.errors) == 1 and "no label map folder chosen" in double.errors[0]


def test_a_failure_is_shown_with_its_fix(double, monkeypatch):
    labels, ijk_to_ras = phantom_labels()
    labels[labels == 6] = 99
    add_labelmap_node(double.scene, labels, ijk_to_ras)
    widget = _widget(monkeypatch)
    widget._parameterNode.steps, widget._parameterNode.device = 2, "cpu"
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert len(double.errors) == 1 and "99" in double.errors[0] and "Fix:" in double.errors[0]
    assert widget._parameterNode.outputVolume is None and widget.ui.applyButton.text() == "Apply"


def test_segmentation_input_fills_the_mapping_table_and_honours_edits(double, monkeypatch):
    import slicer

    labels, ijk_to_ras = phantom_labels()
    labelmap = add_labelmap_node(double.scene, labels, ijk_to_ras)
    segmentation = double.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "heart")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    seg = segmentation.GetSegmentation()
    names = {1: "Myocardium", 3: "Left Ventricle", 8: "coronary arteries"}
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        segment.SetName(names.get(segment.GetLabelValue(), f"structure {segment.GetLabelValue()}"))
    widget = _widget(monkeypatch)
    widget.ui.inputSelector.setCurrentNode(segmentation)  # what the user does in the combo box
    assert widget._parameterNode.inputNode is segmentation
    table = widget.ui.mappingTable
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert rows["Left Ventricle"] == "left_ventricle" and rows["coronary arteries"] == "coronary_arteries"
    unmatched = [name for name, label in rows.items() if not label]
    assert unmatched  # "structure N" names match nothing: the user must choose

    widget._parameterNode.steps, widget._parameterNode.device = 2, "cpu"
    widget.ui.applyButton.click()  # refused: unmapped segments
    run_until_idle(double, widget)
    assert widget.job is None and len(double.errors) == 1 and "not mapped" in double.errors[0]

    for r in range(table.rowCount()):
        if not table.item(r, 1).text():
            table.item(r, 1).setText("background")  # the user's edit: leave those out
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert len(double.errors) == 1, double.errors
    assert widget._parameterNode.outputVolume.GetName() == "heart synthetic CT"


def test_high_resolution_choice_lists_the_patch_models_and_runs_the_second_stage(double, monkeypatch, meddiff_home):
    """The high-resolution box offers "none" and every patch-stage model (the bundled ctca-hr-demo among them), the
    model box only low-resolution ones; the choice reaches the engine job, which runs both stages."""
    from ctca_helpers import save_tiny_model

    card = save_tiny_model(meddiff_home / "models", "ctca-slicer-tiny-hr", stage="patch", shape=(16, 16, 16),
                           spacing_mm=8.0, crop=(8, 8, 8))
    try:
        labels, ijk_to_ras = phantom_labels()
        add_labelmap_node(double.scene, labels, ijk_to_ras)
        widget = _widget(monkeypatch)
        params = widget._parameterNode
        hr_box, model_box = widget.ui.hrModelComboBox, widget.ui.modelComboBox
        hr_names = [hr_box.itemText(i) for i in range(hr_box.count())]
        model_names = [model_box.itemText(i) for i in range(model_box.count())]
        assert hr_names[0] == "none" and {"ctca-hr-demo", "ctca-slicer-tiny-hr"} <= set(hr_names)
        assert "ctca-demo" not in hr_names and TINY_MODEL in model_names
        assert not {"ctca-hr-demo", "ctca-slicer-tiny-hr"} & set(model_names)
        assert params.hrModel == "" and "hr_model" not in widget.logic.options(params).params()

        hr_box.setCurrentIndex(hr_names.index("ctca-slicer-tiny-hr"))  # what the user does in the box
        assert params.hrModel == "ctca-slicer-tiny-hr"
        assert widget.logic.options(params).params()["hr_model"] == "ctca-slicer-tiny-hr"
        params.steps, params.seed, params.device = 2, 1, "cpu"
        widget.ui.applyButton.click()
        run_until_idle(double, widget)
        assert double.errors == [], double.errors
        assert f"'{TINY_MODEL}' + ctca-slicer-tiny-hr" in widget.ui.logText.toPlainText()
        assert params.outputVolume is not None

        hr_box.setCurrentIndex(0)
        assert params.hrModel == ""
    finally:
        card.unlink()
        card.with_suffix(".safetensors").unlink()
