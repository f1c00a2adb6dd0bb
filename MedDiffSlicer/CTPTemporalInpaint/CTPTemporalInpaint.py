"""CTP Temporal Inpaint: a CT perfusion sequence filled to a regular interval, bad frames replaced, by a diffusion model.

Module, Widget, Logic and Test classes as in Slicer's scripted-module template.
The widget moves values between the panel, the parameter node and the logic;
the logic drives MedDiffSlicerLib, which runs the model in a separate engine
process, so Slicer never imports torch and stays responsive.
"""

import pathlib
import sys
from typing import Annotated, Optional, Union

import qt
import slicer
from slicer import vtkMRMLSequenceBrowserNode, vtkMRMLSequenceNode
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

from MedDiffSlicerLib import ctp
from MedDiffSlicerLib.dependencies import self_test_skip_reason
from MedDiffSlicerLib.errors import LaunchError
from MedDiffSlicerLib.panel import (ModelCatalog, ParameterNodePanel, current_text, fill_model_combo, show_card,
                                    showing_errors)
from MedDiffSlicerLib.preflight import ReportCache


class CTPTemporalInpaint(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CTP Temporal Inpaint")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["Sequences"]
        self.parent.contributors = ["The MedDiff authors"]
        self.parent.helpText = _(
            "Fill a CT perfusion sequence acquired with gaps (or with frames spoilt by motion) to a regular interval with "
            "a temporal diffusion model. Select the sequence or its browser, tick the bad frames, choose the interval and "
            "press Apply: the new sequence plays together with the input in the same browser, a plot shows the mean "
            "time-density curve, and perfusion maps (CBF, CBV, MTT, Tmax) can be computed from the result. Acquired "
            "frames are kept exactly.")
        self.parent.acknowledgementText = _(
            "Temporal inpainting of CT perfusion after the MedDiff CTP task (slab-wise 3D UNet conditioned on the "
            "neighbouring acquired frames); block-circulant SVD deconvolution for the maps.")


@parameterNodeWrapper
class CTPTemporalInpaintParameterNode:
    """The module's settings, saved with the scene. Zero/negative numbers mean the model card's default."""

    inputNode: Optional[Union[vtkMRMLSequenceNode, vtkMRMLSequenceBrowserNode]]  # None is required by Slicer's wrapper
    model: str = ""  # not bound: the choices are the installed models, known only at run time
    steps: Annotated[int, WithinRange(0, 2000)] = 0
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    interval: Annotated[float, WithinRange(0.1, 60.0)] = 1.0
    estimate: Annotated[str, Choice(["mean", "sample"])] = "mean"
    # "default": the model card's; "authors": the published model's own sampler (always a sample)
    sampler: Annotated[str, Choice(["default", *ctp.SAMPLERS, ctp.AUTHORS_SAMPLER])] = "default"
    perfusionMaps: bool = False
    importModelFile: pathlib.Path = pathlib.Path()
    wheelFolder: pathlib.Path = pathlib.Path()  # offline install: a folder of wheels
    outputSequence: vtkMRMLSequenceNode


class CTPTemporalInpaintWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: input sequence and its times, bad frames, interval, models; the run section is MedDiffSlicerLib's."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._listedNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(CTPTemporalInpaintLogic()):
            return
        self.ui.intervalSpinBox.setSuffix(" s")
        self.ui.inputSelector.currentNodeChanged.connect(self.onInputChanged)
        self.finishSetup()

    def chooseDefaults(self) -> None:
        if not self._parameterNode.model and self.logic.catalog.cards:
            self._parameterNode.model = self.logic.catalog.cards[0]["name"]
        if not self._parameterNode.inputNode:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
            if first:
                self._parameterNode.inputNode = first

    # -- models ------------------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """The installed CTP models (read from their cards: no engine process, no wait)."""
        self.logic.catalog.refresh()
        current = self._parameterNode.model if self._parameterNode else ""
        fill_model_combo(self.ui.modelComboBox, self.logic.catalog.names(), current)
        show_card(self.ui.modelCardText, self.logic.catalog.card(current_text(self.ui.modelComboBox)))
        self._showSampler()
        if not self.logic.catalog.cards:
            self.ui.statusLabel.setText(_("No CTP model installed: import one in the Models section."))

    def onModelChanged(self, name) -> None:
        with showing_errors(_("Showing the model failed.")):
            if self._parameterNode and name and self._parameterNode.model != name:
                self._parameterNode.model = name
            show_card(self.ui.modelCardText, self.logic.catalog.card(name))
            self._showSampler()

    def _showSampler(self) -> None:
        """The model's default and authors' samplers beside the choice; the estimate choice is off for "authors"
        (the authors' sampler always draws a sample)."""
        params = self._parameterNode
        card = self.logic.catalog.card(params.model) if params and params.model else None
        text = ctp.sampler_text(card)
        if params and params.sampler == ctp.AUTHORS_SAMPLER and card and not ctp.has_authors_sampler(card):
            text += _(" - this model has no authors' sampler: choose another")
        self.ui.samplerInfoLabel.setText(text)
        self.ui.estimateComboBox.setEnabled(not (params and params.sampler == ctp.AUTHORS_SAMPLER))

    # -- input: times and bad frames -----------------------------------------------------------------------------
    def onInputChanged(self, node) -> None:
        # PythonQt may pick the currentNodeChanged(bool) overload: then ask the combo box
        with showing_errors(_("Reading the sequence's frames failed.")):
            node = node if hasattr(node, "IsA") else self.ui.inputSelector.currentNode()
            self._listFrames(node)

    def _listFrames(self, node) -> None:
        """Show the acquired times and one checkable row per frame for the bad-frame choice."""
        self._listedNode = node
        self.ui.badFramesList.clear()
        if node is None:
            self.ui.timesLabel.setText("-")
            return
        try:
            times = ctp.frame_times(node)
        except LaunchError as error:
            self.ui.timesLabel.setText(error.failure.message)
            return
        self.ui.timesLabel.setText(", ".join(f"{t:g}" for t in times) + _(" ({count} frames)").format(count=len(times)))
        for index, time_s in enumerate(times):
            item = qt.QListWidgetItem(_("frame {index}: {time} s").format(index=index, time=f"{time_s:g}"))
            item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.badFramesList.addItem(item)

    def badFrames(self) -> list:
        """0-based indices of the ticked frames."""
        frames = self.ui.badFramesList
        count = frames.count if isinstance(frames.count, int) else frames.count()  # PythonQt: a property; Qt: a method
        return [row for row in range(count) if frames.item(row).checkState() == qt.Qt.Checked]

    # -- run -----------------------------------------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.inputNode is not self._listedNode:  # set from a script or a scene
            self._listFrames(self._parameterNode.inputNode)
        if self._parameterNode and self._parameterNode.model:
            index = self.ui.modelComboBox.findText(self._parameterNode.model)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
                show_card(self.ui.modelCardText, self.logic.catalog.card(self._parameterNode.model))
        self._showSampler()
        self.runner.update_button(bool(self._parameterNode and self._parameterNode.inputNode))

    def startJob(self) -> None:
        params = self._parameterNode
        self.runner.start(lambda: self.logic.start(params, self.badFrames()), params.device,
                          self.logic.catalog.card(params.model))

    def _onJobDone(self, job) -> None:
        if self._parameterNode and job.nodes:
            self._parameterNode.outputSequence = job.nodes[0]
        self.logic.showResults(job.nodes)


class CTPTemporalInpaintLogic(ScriptedLoadableModuleLogic):
    """Runs CTP inpainting on scene nodes through the engine process; no GUI, usable from the Python console."""

    def __init__(self, engineEnv: Optional[dict] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engineEnv = engineEnv  # tests point the engine at their own model folder
        self.catalog = ModelCatalog("ctp", env=engineEnv)
        self.engineReports = ReportCache(env=engineEnv)

    def getParameterNode(self):
        return CTPTemporalInpaintParameterNode(super().getParameterNode())

    def options(self, parameterNode, badFrames=()) -> ctp.InpaintOptions:
        return ctp.InpaintOptions(model=parameterNode.model, steps=parameterNode.steps, seed=parameterNode.seed,
                                  device=parameterNode.device, interval_s=parameterNode.interval,
                                  estimate=parameterNode.estimate, bad_frames=list(badFrames),
                                  perfusion_maps=parameterNode.perfusionMaps,
                                  sampler="" if parameterNode.sampler == "default" else parameterNode.sampler)

    def start(self, parameterNode, badFrames=()):
        """Start inpainting the parameter node's input; returns the running job (poll or wait on it)."""
        return ctp.start_inpaint(parameterNode.inputNode, self.options(parameterNode, badFrames), env=self.engineEnv)

    def inpaint(self, inputNode, options: ctp.InpaintOptions, timeoutSeconds: Optional[float] = None) -> list:
        """Blocking mode (scripts, tests): the new nodes, or RuntimeError with the failure's text."""
        job = ctp.start_inpaint(inputNode, options, env=self.engineEnv)
        if not job.wait(timeoutSeconds):
            job.cancel()
            job.wait(30)
            raise RuntimeError(job.failure.text() if job.failure else "the engine did not finish in time")
        return job.nodes

    @staticmethod
    def showResults(nodes) -> None:
        """The inpainted sequence's proxy in the slice views, and the curve in a plot view."""
        browser = next((n for n in nodes if n.IsA("vtkMRMLSequenceBrowserNode")), None)
        sequence = nodes[0] if nodes else None
        scene = sequence.GetScene() if sequence is not None else None
        if browser is None and scene is not None:
            from MedDiffSlicerLib.exchange import browser_of

            browser = browser_of(sequence)
        proxy = browser.GetProxyNode(sequence) if browser is not None else None
        if proxy is not None:
            slicer.util.setSliceViewerLayers(background=proxy, fit=True)
        chart = next((n for n in nodes if n.IsA("vtkMRMLPlotChartNode")), None)
        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if chart is not None and plots is not None:
            plots.logic().ShowChartInLayout(chart)


class CTPTemporalInpaintTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest): a small perfusion phantom inpainted on the CPU with the bundled ctp-demo model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = self_test_skip_reason()  # a Slicer build machine has no torch: the widget tests still run there
        if reason:
            self.delayDisplay(f"Skipped: {reason}")
            self.skipTest(reason)
        self.setUp()
        self.test_SequenceBecomesDenserSequence()

    def test_SequenceBecomesDenserSequence(self):
        import numpy as np

        logic = CTPTemporalInpaintLogic()
        names = [card["name"] for card in logic.catalog.refresh()]
        self.assertTrue(names, "no CTP model is installed (the extension bundles ctp-demo)")
        model = "ctp-demo" if "ctp-demo" in names else names[0]
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "test perfusion")
        sequence.SetIndexType(sequence.NumericIndex)
        zyx = np.indices((8, 32, 32)).astype(float)
        disc = ((zyx[1] - 16) ** 2 + (zyx[2] - 16) ** 2) < 100
        for time_s in (0.0, 3.0, 6.0, 9.0, 12.0):
            frame = slicer.vtkMRMLScalarVolumeNode()
            enhancement = 60.0 * time_s / 3.0 * np.exp(-time_s / 6.0)
            slicer.util.updateVolumeFromArray(frame, (20.0 + enhancement * disc).astype(np.int16))
            frame.SetSpacing(0.8, 0.8, 5.0)
            sequence.SetDataNodeAtValue(frame, f"{time_s:g}")
        options = ctp.InpaintOptions(model=model, steps=2, seed=1, device="cpu", interval_s=1.5)
        nodes = logic.inpaint(sequence, options, timeoutSeconds=600)
        times = [float(nodes[0].GetNthIndexValue(i)) for i in range(nodes[0].GetNumberOfDataNodes())]
        self.assertEqual(len(times), 9)
        self.assertAlmostEqual(times[-1], 12.0)
        self.delayDisplay("Test passed")
