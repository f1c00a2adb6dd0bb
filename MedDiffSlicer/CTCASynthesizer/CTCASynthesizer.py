"""CTCA Synthesizer: a synthetic contrast-enhanced cardiac CT from a heart and coronary label map.

Module, Widget, Logic and Test classes as in Slicer's scripted-module template.
The widget only moves values between the panel, the parameter node and the
logic; the logic drives MedDiffSlicerLib, which runs the model in a separate
engine process (``PythonSlicer -m meddiffcore.worker``), so Slicer never
imports torch and stays responsive while the engine works.
"""

import pathlib
import sys
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Slicer puts only this file's folder on sys.path; MedDiffSlicerLib is beside it (installed) or one folder up (source).
_HERE = pathlib.Path(__file__).resolve().parent
_LIBRARY_FOLDER = next((p for p in (_HERE, _HERE.parent) if (p / "MedDiffSlicerLib").is_dir()), _HERE)
if str(_LIBRARY_FOLDER) not in sys.path:
    sys.path.append(str(_LIBRARY_FOLDER))

from MedDiffSlicerLib import ctca
from MedDiffSlicerLib.dependencies import self_test_skip_reason
from MedDiffSlicerLib.errors import Failure, LaunchError
from MedDiffSlicerLib.models import card_summary, label_names, label_table, list_models
from MedDiffSlicerLib.panel import ParameterNodePanel, current_text, fill_model_combo, showing_errors
from MedDiffSlicerLib.preflight import ReportCache, preflight

#: The high-resolution box's first entry: no second stage.
NO_HR_MODEL = "none"


class CTCASynthesizer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CTCA Synthesizer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["The MedDiff authors"]
        self.parent.helpText = _(
            "Synthesise a contrast-enhanced cardiac CT (CT coronary angiography) from a label map of the heart chambers, "
            "great vessels and coronary arteries, with a label-conditioned diffusion model. Select a labelmap volume or a "
            "segmentation, check the segment-to-label table, and press Apply; the new CT appears on the label map's grid. "
            "The model runs in a separate process: Cancel stops it at any time and leaves the scene as it was.")
        self.parent.acknowledgementText = _(
            "Conditioning after Semantic Diffusion Models (SPADE-normalised UNet, classifier-free guidance). Label table of "
            "TotalSegmentator's heart chambers and ImageCAS coronary arteries.")


@parameterNodeWrapper
class CTCASynthesizerParameterNode:
    """The module's settings, saved with the scene. Zero/negative numbers mean the model card's default."""

    inputNode: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]  # None is required by Slicer's wrapper
    model: str = ""  # not bound to its combo box: the choices are the installed models, known only at run time
    hrModel: str = ""  # the optional high-resolution (patch) model; "" = none (not bound either)
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    guidance: Annotated[float, WithinRange(-1.0, 10.0)] = -1.0
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    samples: Annotated[int, WithinRange(1, 16)] = 1
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    batchInputFolder: pathlib.Path = pathlib.Path()
    batchOutputFolder: pathlib.Path = pathlib.Path()
    importModelFile: pathlib.Path = pathlib.Path()
    wheelFolder: pathlib.Path = pathlib.Path()  # offline install: a folder of wheels
    outputVolume: vtkMRMLScalarVolumeNode


class CTCASynthesizerWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to the parameter node, turns Apply into Cancel, shows progress, log and failures."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.runner = None
        self._segmentNames = []
        self._mappedNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(CTCASynthesizerLogic()):
            return
        self.ui.mappingTable.setHorizontalHeaderLabels([_("Segment"), _("Label")])
        self.ui.batchButton.clicked.connect(self.onBatchButton)
        self.ui.inputSelector.currentNodeChanged.connect(self.onInputChanged)
        self.ui.hrModelComboBox.currentTextChanged.connect(self.onHrModelChanged)
        self.finishSetup()

    @property
    def job(self):
        """The job under way, or None."""
        return self.runner.job if self.runner is not None else None

    def chooseDefaults(self) -> None:
        if not self._parameterNode.model and self.logic.card(""):
            self._parameterNode.model = self.logic.card("")["name"]
        if not self._parameterNode.inputNode:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
            if first:
                self._parameterNode.inputNode = first

    # -- models ------------------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """The installed CTCA models (read from their cards: no engine process, no wait): the low-resolution ones in
        the model box, the high-resolution (patch) ones after "none" in the high-resolution box."""
        self.logic.models(refresh=True)
        cards = self.logic.models(stage="lr")
        fill_model_combo(self.ui.modelComboBox, [card["name"] for card in cards],
                         self._parameterNode.model if self._parameterNode else "")
        fill_model_combo(self.ui.hrModelComboBox, [NO_HR_MODEL] + [card["name"] for card in self.logic.models(stage="patch")],
                         (self._parameterNode.hrModel if self._parameterNode else "") or NO_HR_MODEL)
        self.onModelChanged(current_text(self.ui.modelComboBox))
        if not cards:
            self.ui.statusLabel.setText(_("No CTCA model installed: import one in the Models section."))

    def onHrModelChanged(self, name) -> None:
        with showing_errors(_("Choosing the high-resolution model failed.")):
            if self._parameterNode:
                self._parameterNode.hrModel = "" if not name or name == NO_HR_MODEL else name

    def onModelChanged(self, name) -> None:
        with showing_errors(_("Showing the model failed.")):
            if self._parameterNode and name and self._parameterNode.model != name:
                self._parameterNode.model = name
            card = self.logic.card(name)
            self.ui.modelCardText.setPlainText(card_summary(card) if card else "")
            self._fillMappingTable(self._parameterNode.inputNode if self._parameterNode else None, name)

    # -- input and mapping table -------------------------------------------------------------------------------
    def onInputChanged(self, node) -> None:
        # use the node the combo box gives: the parameter node may be updated after this slot runs
        # (PythonQt may pick the currentNodeChanged(bool) overload: then ask the combo box)
        with showing_errors(_("Reading the input's segments failed.")):
            node = node if hasattr(node, "IsA") else self.ui.inputSelector.currentNode()
            self._fillMappingTable(node, self._parameterNode.model if self._parameterNode else "")

    def _fillMappingTable(self, node, modelName: str) -> None:
        """One row per segment of a segmentation input: its name and the model's label matched by name."""
        self._mappedNode = node
        isSegmentation = bool(node and node.IsA("vtkMRMLSegmentationNode"))
        self.ui.mappingTable.setVisible(isSegmentation)
        self.ui.mappingLabel.setVisible(isSegmentation)
        self._segmentNames = ctca.segment_names(node) if isSegmentation else []
        card = self.logic.card(modelName) or {}
        mapping = ctca.default_segment_mapping(self._segmentNames, label_table(card), label_names(card))
        self.ui.mappingTable.setRowCount(len(self._segmentNames))
        for row, name in enumerate(self._segmentNames):
            segmentItem = qt.QTableWidgetItem(name)
            segmentItem.setFlags(qt.Qt.ItemIsEnabled)
            self.ui.mappingTable.setItem(row, 0, segmentItem)
            self.ui.mappingTable.setItem(row, 1, qt.QTableWidgetItem(mapping[name]))

    def segmentMapping(self) -> dict:
        """Segment name -> label name, as the user left the table."""
        mapping = {}
        for row, name in enumerate(self._segmentNames):
            item = self.ui.mappingTable.item(row, 1)
            mapping[name] = item.text().strip() if item is not None else ""
        return mapping

    # -- run -----------------------------------------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.inputNode is not self._mappedNode:  # set from a script or a scene
            self._fillMappingTable(self._parameterNode.inputNode, self._parameterNode.model)
        if self._parameterNode and self._parameterNode.model:
            index = self.ui.modelComboBox.findText(self._parameterNode.model)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
        if self._parameterNode:
            index = self.ui.hrModelComboBox.findText(self._parameterNode.hrModel or NO_HR_MODEL)
            if index >= 0 and index != self.ui.hrModelComboBox.currentIndex:
                self.ui.hrModelComboBox.setCurrentIndex(index)
        self.runner.update_button(bool(self._parameterNode and self._parameterNode.inputNode))
        self.ui.batchButton.setEnabled(not self.runner.running)

    def startJob(self) -> None:
        self._start(lambda: self.logic.start(self._parameterNode, self.segmentMapping()))

    def onBatchButton(self) -> None:
        with showing_errors(_("The batch could not start.")):
            self._start(lambda: self.logic.startBatch(self._parameterNode))

    def _start(self, launch) -> None:
        params = self._parameterNode
        self.runner.start(launch, params.device, self.logic.card(params.model))

    def _onJobDone(self, job) -> None:
        if job.nodes and self._parameterNode:
            self._parameterNode.outputVolume = job.nodes[0]
            self.logic.showInSliceViews(job.nodes[0], self._parameterNode.inputNode)
        else:
            self.ui.statusLabel.setText(_("Batch finished: see the output folder."))


class CTCASynthesizerLogic(ScriptedLoadableModuleLogic):
    """Runs CTCA synthesis on scene nodes through the engine process; no GUI, usable from the Python console."""

    def __init__(self, engineEnv: Optional[dict] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engineEnv = engineEnv  # tests point the engine at their own model folder
        self._cards = None
        self.engineReports = ReportCache(env=engineEnv)

    def getParameterNode(self):
        return CTCASynthesizerParameterNode(super().getParameterNode())

    def models(self, refresh: bool = False, stage: Optional[str] = None) -> list:
        """The installed CTCA model cards; ``stage`` "lr" or "patch": only the models of that stage."""
        if self._cards is None or refresh:
            self._cards = list_models(task="ctca", env=self.engineEnv)
        return [c for c in self._cards if stage is None or ctca.model_stage(c) == stage]

    def card(self, name: str) -> Optional[dict]:
        """The card of model ``name``; "" = the first low-resolution model (the default of the model box)."""
        cards = self._cards or []
        first = next((c for c in cards if ctca.model_stage(c) == "lr"), None)
        return next((c for c in cards if c["name"] == name), first if not name else None)

    def options(self, parameterNode) -> ctca.SynthesisOptions:
        return ctca.SynthesisOptions(model=parameterNode.model, steps=parameterNode.steps, guidance=parameterNode.guidance,
                                     seed=parameterNode.seed, samples=parameterNode.samples, device=parameterNode.device,
                                     hr_model=parameterNode.hrModel)

    def preflight(self, parameterNode) -> list:
        return preflight(parameterNode.device, self.card(parameterNode.model), reports=self.engineReports)

    def start(self, parameterNode, segmentMapping: Optional[dict] = None):
        """Start synthesis for the parameter node's input; returns the running job (poll or wait on it)."""
        return ctca.start_synthesis(parameterNode.inputNode, self.options(parameterNode), segmentMapping, env=self.engineEnv)

    def startBatch(self, parameterNode):
        """Start the batch job on the parameter node's folders (an unset folder is refused, not taken as '.')."""
        for folder, what in ((parameterNode.batchInputFolder, _("label map folder")),
                             (parameterNode.batchOutputFolder, _("output folder"))):
            if str(folder) in ("", "."):
                raise LaunchError(Failure("BAD_CONFIG", _("no {what} chosen").format(what=what),
                                          _("choose the {what} in the Batch section").format(what=what)))
        return ctca.start_batch(parameterNode.batchInputFolder, parameterNode.batchOutputFolder, self.options(parameterNode),
                                env=self.engineEnv)

    def synthesize(self, inputNode, options: ctca.SynthesisOptions, segmentMapping: Optional[dict] = None,
                   timeoutSeconds: Optional[float] = None) -> list:
        """Blocking mode (scripts, tests): the new CT nodes, or RuntimeError with the failure's text."""
        job = ctca.start_synthesis(inputNode, options, segmentMapping, env=self.engineEnv)
        if not job.wait(timeoutSeconds):
            job.cancel()
            job.wait(30)
            raise RuntimeError(job.failure.text() if job.failure else "the engine did not finish in time")
        return job.nodes

    @staticmethod
    def showInSliceViews(ctNode, inputNode=None) -> None:
        """CT in the background of every slice view, a label map input as outline on top."""
        label = inputNode if inputNode is not None and inputNode.IsA("vtkMRMLLabelMapVolumeNode") else None
        slicer.util.setSliceViewerLayers(background=ctNode, label=label, labelOpacity=0.4, fit=True)


class CTCASynthesizerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest via slicer_add_python_unittest): the bundled demo model on the CPU, a few steps."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = self_test_skip_reason()  # a Slicer build machine has no torch: the widget tests still run there
        if reason:
            self.delayDisplay(f"Skipped: {reason}")
            self.skipTest(reason)
        self.setUp()
        self.test_LabelMapBecomesCTOnItsGrid()
        self.setUp()
        self.test_UnknownLabelsLeaveSceneUnchanged()

    def _labelMap(self, extraValue: int = 0):
        import numpy as np

        zyx = np.indices((48, 48, 48)).astype(float)
        radius = np.sqrt(((zyx - 24.0) ** 2).sum(axis=0))
        labels = np.zeros((48, 48, 48), np.uint8)
        labels[radius < 18] = 1  # myocardium
        labels[radius < 14] = 3  # left ventricle
        labels[(radius >= 18) & (radius < 19.5) & (zyx[2] > 24)] = 8  # a coronary shell
        if extraValue:
            labels[0, 0, 0] = extraValue
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "test heart")
        slicer.util.updateVolumeFromArray(node, labels)
        node.SetSpacing(2.5, 2.5, 2.5)
        node.SetOrigin(-60.0, -60.0, -60.0)
        return node

    def test_LabelMapBecomesCTOnItsGrid(self):
        self.delayDisplay("Synthesising a CT from a spherical heart")
        logic = CTCASynthesizerLogic()
        labelNode = self._labelMap()
        nodes = logic.synthesize(labelNode, ctca.SynthesisOptions(steps=3, seed=1, device="cpu"), timeoutSeconds=600)
        self.assertEqual(len(nodes), 1)
        ct = nodes[0]
        self.assertEqual(ct.GetImageData().GetDimensions(), labelNode.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(a)
        labelNode.GetIJKToRASMatrix(b)
        for i in range(4):
            for j in range(4):
                self.assertAlmostEqual(a.GetElement(i, j), b.GetElement(i, j), places=6)
        self.assertGreaterEqual(slicer.util.arrayFromVolume(ct).min(), -1024)
        self.delayDisplay("Test passed")

    def test_UnknownLabelsLeaveSceneUnchanged(self):
        logic = CTCASynthesizerLogic()
        labelNode = self._labelMap(extraValue=77)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(RuntimeError) as caught:
            logic.synthesize(labelNode, ctca.SynthesisOptions(steps=3, seed=1, device="cpu"), timeoutSeconds=600)
        self.assertIn("77", str(caught.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
