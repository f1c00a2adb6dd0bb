"""The Sparse-view Recon panel through the Slicer Qt double: real .ui, real parameter node, real engine.

Writes the panel picture used by the README (Resources/Screenshots/SparseViewRecon.png).
"""

import numpy as np

from panel_checks import (bound_parameters, grab_while_running, keep_picture, make_widget, parameter_fields,
                          run_until_idle, ui_names, used_ui_names, writing_pictures)
from slicer_helpers import ROOT, TINY_RECON_CT, TINY_RECON_MRI, scene_snapshot

NAME = "SparseViewRecon"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{NAME}.png"


def _phantom_node(scene, modality="ct", name="phantom"):
    import slicer

    from meddiffcore.tasks.recon.phantoms import make_phantom

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, make_phantom(modality, None, (16, 16, 16), 2).astype(np.float32))
    node.SetSpacing(1.2, 1.2, 2.0)
    return node


def test_the_ui_file_and_the_code_agree():
    assert used_ui_names(NAME) <= ui_names(NAME), sorted(used_ui_names(NAME) - ui_names(NAME))
    assert {"problem", "inputVolume", "views", "acceleration", "maskKind", "factor", "mode", "K", "lam"} <= bound_parameters(NAME)
    assert bound_parameters(NAME) <= parameter_fields(NAME)


def test_the_problem_picks_the_models_and_the_settings_it_uses(double, monkeypatch):
    _phantom_node(double.scene)
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.model == TINY_RECON_CT and widget.ui.viewsSpinBox.isEnabled()
    assert not widget.ui.accelerationSpinBox.isEnabled()
    widget.ui.problemComboBox.setCurrentText("mri-simulate")
    assert params.problem == "mri-simulate" and params.model == TINY_RECON_MRI
    listed = [widget.ui.modelComboBox.itemText(i) for i in range(widget.ui.modelComboBox.count())]
    assert TINY_RECON_MRI in listed and TINY_RECON_CT not in listed and all("ct" not in n.split("-") for n in listed)
    assert widget.ui.accelerationSpinBox.isEnabled() and not widget.ui.viewsSpinBox.isEnabled()


def test_simulated_sparse_view_ct_gives_recon_and_fbp_and_writes_the_panel_picture(double, monkeypatch, tmp_path):
    phantom = _phantom_node(double.scene)
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    assert params.inputVolume is phantom
    params.views, params.steps, params.seed, params.device = 6, 3, 0, "cpu"
    if writing_pictures():  # the README shows the bundled demo prior pair, not the random-weight test model
        params.model, params.steps = "recon-ct-demo", 25
        assert "recon-ct-demo" in widget.ui.modelCardText.toPlainText()
    widget.ui.applyButton.click()
    picture = tmp_path / "panel.png"
    run_until_idle(double, widget, on_tick=grab_while_running(widget, picture))
    assert double.errors == [], double.errors
    assert params.outputVolume.GetName() == "phantom FAST recon" and params.baselineVolume.GetName() == "phantom FBP"
    assert params.iterativeVolume.GetName() == "phantom TV iterative"
    layers = double.slice_layers[-1]  # the strongest classical baseline (the iterative one) beside the result
    assert layers["background"] is params.outputVolume and layers["foreground"] is params.iterativeVolume
    assert "fade it in" in widget.ui.statusLabel.text()
    keep_picture(widget, picture, SCREENSHOT)


def test_a_model_measured_worse_than_the_iterative_baseline_warns_in_the_panel(double, monkeypatch):
    from meddiffcore.tasks.recon.evaluate import store_in_card

    store_in_card(TINY_RECON_CT, {"ct 8 views (phantoms)": {"fast_psnr_w80": 7.0, "iterative_psnr_w80": 8.4}})
    try:
        _phantom_node(double.scene)
        widget = make_widget(NAME, monkeypatch)
        params = widget._parameterNode
        params.views, params.steps, params.seed, params.device = 6, 2, 0, "cpu"
        widget.ui.applyButton.click()
        run_until_idle(double, widget)
        assert double.errors == [], double.errors
        status = widget.ui.statusLabel.text()
        assert status.startswith("Warning:") and "W 80 / L 40 window 7 vs 8.4" in status and "fade it in" in status
    finally:
        store_in_card(TINY_RECON_CT, {"ct 8 views (phantoms)": {}})


def test_angles_that_do_not_match_the_sinogram_are_refused_with_their_fix(double, monkeypatch):
    sinogram = _phantom_node(double.scene, name="sinogram")
    widget = make_widget(NAME, monkeypatch)
    params = widget._parameterNode
    params.problem, params.inputVolume = "ct-sinogram", sinogram
    widget.ui.anglesLineEdit.setText("0, 90")
    assert params.angles == "0, 90"
    before = scene_snapshot(double.scene)
    widget.ui.applyButton.click()
    run_until_idle(double, widget)
    assert not widget.runner.running and len(double.errors) == 1
    assert "2 angles" in double.errors[0] and "Fix:" in double.errors[0]
    assert scene_snapshot(double.scene) == before
