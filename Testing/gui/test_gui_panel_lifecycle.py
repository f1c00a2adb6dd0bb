"""The panel lifecycle every module shares (MedDiffSlicerLib's ParameterNodePanel), through the Slicer Qt double.

The double stands in for the Slicer application and its Qt widgets (they cannot be installed here); the scene, the
parameter node and its GUI binding are Slicer's real classes.
"""

import pytest
from panel_checks import make_widget

MODULES = ("CTCASynthesizer", "CTPTemporalInpaint", "SparseViewRecon", "VolumeGenerator")


@pytest.mark.parametrize("name", MODULES)
def test_leaving_entering_and_closing_the_scene_rebind_the_parameter_node(name, double, monkeypatch):
    widget = make_widget(name, monkeypatch)
    params = widget._parameterNode
    assert params is not None
    widget.ui.seedSpinBox.setValue(7)
    assert params.seed == 7  # bound while the module is shown

    widget.exit()
    widget.ui.seedSpinBox.setValue(8)
    assert params.seed == 7  # leaving the module unbinds it

    widget.enter()
    assert widget.ui.seedSpinBox.value() == 7  # entering binds it again, the node's value shown
    widget.ui.seedSpinBox.setValue(9)
    assert params.seed == 9

    widget.parent.isEntered = False
    double.scene.Clear(0)  # closing the scene drops the node; not re-made while the module is hidden
    assert widget._parameterNode is None

    widget.parent.isEntered = True
    double.scene.Clear(0)  # ... and re-made, fresh, when it is shown
    assert widget._parameterNode is not None and widget._parameterNode.seed != 9
    widget.ui.seedSpinBox.setValue(11)
    assert widget._parameterNode.seed == 11

    widget.cleanup()
    assert not widget.timer.isActive()
