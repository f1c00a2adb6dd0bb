"""The CTP Temporal Inpaint panel through the Slicer Qt double: real .ui, real parameter node, real engine.

Writes the panel picture used by the README (Resources/Screenshots/CTPTemporalInpaint.png).
"""

from pathlib import Path

from panel_checks import (bound_parameters, grab_while_running, keep_picture, make_widget, parameter_fields,
                          run_until_idle, ui_names, used_ui_names, writing_pictures)
from slicer_helpers import ROOT, TINY_CTP, add_ctp_sequence, scene_snapshot

NAME = "CTPTemporalInpaint"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{NAME}.png"


def test_the_ui_file_and_the_code_agree():
    assert used_ui_names(NAME) <= ui_names(NAME), sorted(used_ui_names(NAME) - ui_names(NAME))
    assert {"inputNode", "interval", "perfusionMaps", "steps", "seed", "device", "sampler"} <= bound_parameters(NAME)
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


def test_the_authors_sampler_of_an_imported_ctp_model_fills_an_8_slice_sequence(double, monkeypatch, tmp_path):
    """The CTP authors' model imported with `meddiff models import-checkpoint --format ctp` (the tiny checkpoint
    their own save routine wrote) fills a real 8-slice perfusion sequence with the sampler chosen in the panel."""
    import json
    import sys

    import numpy as np
    import slicer

    from meddiffcore.cli import main
    from MedDiffSlicerLib.exchange import Grid

    sys.path.insert(0, str(ROOT / "Testing" / "core"))
    from published_helpers import CTP, CTP_TINY, as_set_options

    monkeypatch.setenv("MEDDIFF_HOME", str(tmp_path / "home"))  # the engine process finds only this model
    assert main(["models", "import-checkpoint", "--format", "ctp", str(CTP / "ctp_tiny_model-tiny.pt"),
                 *as_set_options(CTP_TINY)]) == 0
    sequence, ijk_to_ras = add_ctp_sequence(double.scene, frames=3, every=2, slices=8, size=40)  # 2, 4 and 6 s
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.model == "ctp-bae2024" and params.sampler == "default"
    assert "authors: ancestral, 1500 steps" in widget.ui.samplerInfoLabel.text()
    assert widget.ui.estimateComboBox.isEnabled()
    widget.ui.samplerComboBox.setCurrentIndex(widget.ui.samplerComboBox.findText("authors"))  # what the user does
    assert params.sampler == "authors" and not widget.ui.estimateComboBox.isEnabled()  # the authors' draw a sample
    params.steps, params.seed, params.device, params.interval = 2, 1, "cpu", 1.0

    lib = sys.modules[type(widget).__module__].ctp
    from meddiffcore.diffusion import SAMPLERS
    from meddiffcore.tasks.ctp.run import AUTHORS

    assert set(lib.SAMPLERS) <= set(SAMPLERS) and lib.AUTHORS_SAMPLER == AUTHORS  # the engine's names
    written = []

    def keep_job_file(path, *args):  # the real job file, read back as the engine will read it
        result = real_write(path, *args)
        written.append(json.loads(Path(result).read_text(encoding="utf-8")))
        return result

    real_write = lib.write_job_file
    monkeypatch.setattr(lib, "write_job_file", keep_job_file)
    widget.ui.applyButton.click()
    run_until_idle(double, widget, timeout_s=600)
    assert double.errors == [], double.errors
    assert written[0]["model"] == "ctp-bae2024" and written[0]["params"]["sampler"] == "authors"
    assert written[0]["params"]["estimate"] == "sample" and written[0]["params"]["steps"] == 2
    out = params.outputSequence
    assert out is not None and out.GetNumberOfDataNodes() == 5
    for i in range(5):  # on the input's grid
        np.testing.assert_allclose(Grid.of(out.GetNthDataNode(i)).ijk_to_ras, ijk_to_ras, rtol=0, atol=1e-9)
    frames = [slicer.util.arrayFromVolume(out.GetNthDataNode(i)) for i in range(5)]
    for k in range(3):  # acquired frames unchanged
        np.testing.assert_array_equal(frames[2 * k], slicer.util.arrayFromVolume(sequence.GetNthDataNode(k)))
    linear = [(frames[2 * k].astype(np.float32) + frames[2 * k + 2]) / 2 for k in range(2)]
    assert max(np.abs(frames[2 * k + 1] - linear[k]).max() for k in range(2)) > 2.0  # the network's frames
