"""Sparse-view Recon: CT from few views, MRI from undersampled k-space, MRI thin slices from thick ones, with 2D priors.

Module, Widget, Logic and Test classes as in Slicer's scripted-module template.
The widget moves values between the panel, the parameter node and the logic;
the logic drives MedDiffSlicerLib, which runs the model in a separate engine
process, so Slicer never imports torch and stays responsive.
"""

import pathlib
import sys
from typing import Annotated, Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode
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

from MedDiffSlicerLib import recon
from MedDiffSlicerLib.dependencies import self_test_skip_reason
from MedDiffSlicerLib.errors import LaunchError
from MedDiffSlicerLib.panel import (ModelCatalog, ParameterNodePanel, current_text, fill_model_combo, show_card,
                                    showing_errors)
from MedDiffSlicerLib.preflight import ReportCache
#: Which settings each problem uses (the others are hidden).
SETTINGS = {"ct-simulate": ("views",), "ct-sinogram": ("angles",), "mri-simulate": ("acceleration", "maskKind"),
            "zsr-simulate": ("factor",), "zsr": ("factor",)}


class SparseViewRecon(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Sparse-view Recon")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["The MedDiff authors"]
        self.parent.helpText = _(
            "Reconstruct a volume from incomplete measurements with a pair of 2D diffusion priors on perpendicular planes: "
            "sparse-view CT (a measured sinogram with its angles, or simulated from a volume with N views), compressed-"
            "sensing MRI (simulated from a volume with an acceleration and a mask) and MRI z-axis super-resolution (from "
            "thick slices). The classical baselines come with the result for comparison: FBP or zero-filled, the iterative "
            "TV reconstruction from the same measurements (CT, MRI), cubic interpolation (z-SR); a model whose card "
            "measured it worse than the iterative baseline says so.")
        self.parent.acknowledgementText = _(
            "Two-perpendicular-2D-diffusion-model (TPDM) reconstruction and a fast DDS-style sampler with conjugate-"
            "gradient data consistency.")


@parameterNodeWrapper
class SparseViewReconParameterNode:
    """The module's settings, saved with the scene. Zero/negative numbers mean the model card's default."""

    problem: Annotated[str, Choice(list(recon.PROBLEMS))] = "ct-simulate"
    inputVolume: vtkMRMLScalarVolumeNode
    angles: str = ""
    views: Annotated[int, WithinRange(1, 720)] = 16
    acceleration: Annotated[float, WithinRange(1.0, 64.0)] = 8.0
    maskKind: Annotated[str, Choice(list(recon.MASK_KINDS))] = "uniform"
    factor: Annotated[int, WithinRange(1, 16)] = 4
    model: str = ""  # not bound: the choices are the installed models of the problem's modality
    mode: Annotated[str, Choice(["fast", "tpdm"])] = "fast"
    steps: Annotated[int, WithinRange(0, 2000)] = 0
    K: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    lam: Annotated[float, WithinRange(-1.0, 1000.0)] = -1.0
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    importModelFile: pathlib.Path = pathlib.Path()
    wheelFolder: pathlib.Path = pathlib.Path()  # offline install: a folder of wheels
    outputVolume: vtkMRMLScalarVolumeNode
    baselineVolume: vtkMRMLScalarVolumeNode
    iterativeVolume: vtkMRMLScalarVolumeNode


class SparseViewReconWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: problem, input and its settings, sampler, models; the run section is MedDiffSlicerLib's."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._listedProblem = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(SparseViewReconLogic()):
            return
        self.finishSetup()

    def chooseDefaults(self) -> None:
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    # -- models ------------------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """The installed reconstruction models (read from their cards: no engine process, no wait)."""
        self.logic.catalog.refresh()
        self._listModels()

    def _listModels(self) -> None:
        """The prior pairs of the problem's modality; the chosen one kept if it fits, else the first."""
        problem = self._parameterNode.problem if self._parameterNode else "ct-simulate"
        names = self.logic.modelNames(problem)
        current = self._parameterNode.model if self._parameterNode else ""
        fill_model_combo(self.ui.modelComboBox, names, current)
        if self._parameterNode and names and current not in names:
            self._parameterNode.model = names[0]
        show_card(self.ui.modelCardText, self.logic.catalog.card(current_text(self.ui.modelComboBox)))
        if not names:
            self.ui.statusLabel.setText(_("No {modality} reconstruction model installed: import one in the Models section.")
                                        .format(modality=recon.ReconOptions(problem=problem).modality.upper()))

    def onModelChanged(self, name) -> None:
        with showing_errors(_("Showing the model failed.")):
            if self._parameterNode and name and self._parameterNode.model != name:
                self._parameterNode.model = name
            show_card(self.ui.modelCardText, self.logic.catalog.card(name))

    # -- run -----------------------------------------------------------------------------------------------------
    def _showSettingsOf(self, problem: str) -> None:
        used = SETTINGS.get(problem, ())
        for setting, widgetName in (("angles", "anglesLineEdit"), ("views", "viewsSpinBox"),
                                    ("acceleration", "accelerationSpinBox"), ("maskKind", "maskKindComboBox"),
                                    ("factor", "factorSpinBox")):
            getattr(self.ui, widgetName).setEnabled(setting in used)

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.problem != self._listedProblem:
            self._listedProblem = self._parameterNode.problem
            self._showSettingsOf(self._listedProblem)
            self._listModels()
        if self._parameterNode and self._parameterNode.model:
            index = self.ui.modelComboBox.findText(self._parameterNode.model)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
        self.runner.update_button(bool(self._parameterNode and self._parameterNode.inputVolume))

    def startJob(self) -> None:
        params = self._parameterNode
        self.runner.start(lambda: self.logic.start(params), params.device, self.logic.catalog.card(params.model))

    def _onJobDone(self, job) -> None:
        if not self._parameterNode or not job.nodes:
            return
        nodes = list(job.nodes) + [None, None]
        result, baseline, iterative = nodes[0], nodes[1], nodes[2]
        self._parameterNode.outputVolume = result
        self._parameterNode.baselineVolume = baseline
        self._parameterNode.iterativeVolume = iterative
        compared = iterative or baseline  # the strongest classical baseline goes beside the result
        self.logic.showSideBySide(result, compared)
        text = ""
        if compared is not None:
            text = _("Added {result}, {others}; {compared} is in the foreground: fade it in to compare.").format(
                result=result.GetName(), others=", ".join(n.GetName() for n in (baseline, iterative) if n is not None),
                compared=compared.GetName())
        warnings = getattr(job, "warnings", [])
        if warnings:
            text = _("Warning: {warning}").format(warning=" ".join(warnings)) + ("\n" + text if text else "")
        if text:
            self.ui.statusLabel.setText(text)


class SparseViewReconLogic(ScriptedLoadableModuleLogic):
    """Runs reconstructions on scene nodes through the engine process; no GUI, usable from the Python console."""

    def __init__(self, engineEnv: Optional[dict] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engineEnv = engineEnv  # tests point the engine at their own model folder
        self.catalog = ModelCatalog("recon", env=engineEnv)
        self.engineReports = ReportCache(env=engineEnv)

    def getParameterNode(self):
        return SparseViewReconParameterNode(super().getParameterNode())

    def modelNames(self, problem: str) -> list:
        modality = recon.ReconOptions(problem=problem).modality
        return self.catalog.names(lambda card: (card.get("task_config") or {}).get("modality") == modality)

    def options(self, parameterNode) -> recon.ReconOptions:
        p = parameterNode
        angles = recon.parse_angles(p.angles) if p.problem == "ct-sinogram" and p.angles.strip() else ()
        return recon.ReconOptions(model=p.model, steps=p.steps, seed=p.seed, device=p.device, problem=p.problem,
                                  mode=p.mode, K=p.K, lam=p.lam, views=p.views, angles_deg=angles,
                                  acceleration=p.acceleration, mask_kind=p.maskKind, factor=p.factor)

    def start(self, parameterNode):
        """Start reconstructing the parameter node's input; returns the running job (poll or wait on it)."""
        return recon.start_reconstruction(parameterNode.inputVolume, self.options(parameterNode), env=self.engineEnv)

    def reconstruct(self, inputNode, options: recon.ReconOptions, timeoutSeconds: Optional[float] = None) -> list:
        """Blocking mode (scripts, tests): [reconstruction, baseline, iterative baseline (CT, MRI)], or RuntimeError
        with the failure's text."""
        job = recon.start_reconstruction(inputNode, options, env=self.engineEnv)
        if not job.wait(timeoutSeconds):
            job.cancel()
            job.wait(30)
            raise RuntimeError(job.failure.text() if job.failure else "the engine did not finish in time")
        return job.nodes

    @staticmethod
    def showSideBySide(resultNode, baselineNode=None) -> None:
        """The reconstruction in the background, a baseline (the iterative one where there is one) in the foreground
        (opacity 0: fade in to compare)."""
        slicer.util.setSliceViewerLayers(background=resultNode, foreground=baselineNode, foregroundOpacity=0.0, fit=True)


class SparseViewReconTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest): the bundled demo priors on the CPU, a few steps, on a procedural phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = self_test_skip_reason()  # a Slicer build machine has no torch: the widget tests still run there
        if reason:
            self.delayDisplay(f"Skipped: {reason}")
            self.skipTest(reason)
        self.setUp()
        self.test_BadAnglesRefused()
        self.setUp()
        self.test_SimulatedSparseViewCT()

    def _phantom(self):
        import numpy as np

        zyx = np.indices((32, 32, 32)).astype(float)
        radius = np.sqrt(((zyx - 15.5) ** 2).sum(axis=0))
        hu = np.where(radius < 13, 40.0, -1000.0) + np.where(radius < 5, 300.0, 0.0)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "test phantom")
        slicer.util.updateVolumeFromArray(node, hu.astype(np.float32))
        node.SetSpacing(1.0, 1.0, 1.0)
        return node

    def test_SimulatedSparseViewCT(self):
        self.delayDisplay("Reconstructing a phantom from 8 simulated views")
        logic = SparseViewReconLogic()
        node = self._phantom()
        options = recon.ReconOptions(model="recon-ct-demo", problem="ct-simulate", views=8, steps=3, seed=0, device="cpu")
        result, baseline, iterative = logic.reconstruct(node, options, timeoutSeconds=600)
        self.assertEqual(result.GetImageData().GetDimensions(), node.GetImageData().GetDimensions())
        self.assertEqual(baseline.GetImageData().GetDimensions(), node.GetImageData().GetDimensions())
        self.assertEqual(iterative.GetImageData().GetDimensions(), node.GetImageData().GetDimensions())
        self.delayDisplay("Test passed")

    def test_BadAnglesRefused(self):
        logic = SparseViewReconLogic()
        node = self._phantom()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(LaunchError):
            logic.reconstruct(node, recon.ReconOptions(problem="ct-sinogram", angles_deg=[0.0, 90.0], device="cpu"))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
