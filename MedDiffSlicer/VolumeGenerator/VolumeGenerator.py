"""Volume Generator: new 3D volumes (wavelet diffusion), new 2D slices (cascade), and slice-wise super-resolution.

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

from MedDiffSlicerLib import generate
from MedDiffSlicerLib.dependencies import self_test_skip_reason
from MedDiffSlicerLib.panel import (ModelCatalog, ParameterNodePanel, current_text, fill_model_combo, show_card,
                                    showing_errors)
from MedDiffSlicerLib.preflight import ReportCache

#: Which settings each kind uses (the others are disabled).
SETTINGS = {"wdm": ("input", "samples", "spacing"), "cascade": ("samples", "spacing"), "upscale": ("input", "stages")}


class VolumeGenerator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Volume Generator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["The MedDiff authors"]
        self.parent.helpText = _(
            "Generate new volumes with a 3D wavelet diffusion model (WDM; a translating cWDM model takes a condition "
            "volume and keeps its grid), new 2D slices with a cascade of diffusion models, or super-resolve a selected "
            "volume slice by slice with the cascade's super-resolution stages (the result covers the same extent with "
            "a finer in-plane grid). New samples get the spacing you set, or the model card's.")
        self.parent.acknowledgementText = _(
            "3D wavelet diffusion models (diffusion on the Haar subbands); cascaded diffusion with super-resolution "
            "stages conditioned on the upsampled lower-resolution image.")


@parameterNodeWrapper
class VolumeGeneratorParameterNode:
    """The module's settings, saved with the scene. Zero/negative numbers mean the model card's default."""

    kind: Annotated[str, Choice(list(generate.KINDS))] = "wdm"
    inputVolume: vtkMRMLScalarVolumeNode
    conditionVolume2: vtkMRMLScalarVolumeNode  # further source contrasts of a model that names several (cWDM)
    conditionVolume3: vtkMRMLScalarVolumeNode
    samples: Annotated[int, WithinRange(1, 16)] = 1
    spacingX: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    spacingY: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    spacingZ: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    stages: Annotated[int, WithinRange(0, 6)] = 0
    model: str = ""  # not bound: the choices are the installed models of the kind
    steps: Annotated[int, WithinRange(0, 2000)] = 0
    seed: Annotated[int, WithinRange(-1, 2**31 - 1)] = -1
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    importModelFile: pathlib.Path = pathlib.Path()
    wheelFolder: pathlib.Path = pathlib.Path()  # offline install: a folder of wheels
    outputVolume: vtkMRMLScalarVolumeNode


class VolumeGeneratorWidget(ParameterNodePanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: kind, input and settings, models; the run section is MedDiffSlicerLib's."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._listedKind = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(VolumeGeneratorLogic()):
            return
        self.finishSetup()

    # chooseDefaults: none; no input is picked by default, since unconditional generation (the default) takes none


    # -- models ------------------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """The installed WDM and cascade models (read from their cards: no engine process, no wait)."""
        self.logic.refreshModels()
        self._listModels()

    def _listModels(self) -> None:
        """The models of the chosen kind; the chosen one kept if it fits, else the first."""
        kind = self._parameterNode.kind if self._parameterNode else "wdm"
        names = self.logic.modelNames(kind)
        current = self._parameterNode.model if self._parameterNode else ""
        fill_model_combo(self.ui.modelComboBox, names, current)
        if self._parameterNode and names and current not in names:
            self._parameterNode.model = names[0]
        self._showModel(current_text(self.ui.modelComboBox))
        if not names:
            self.ui.statusLabel.setText(_("No {kind} model installed: import one in the Models section.").format(kind=kind))

    def onModelChanged(self, name) -> None:
        with showing_errors(_("Showing the model failed.")):
            if self._parameterNode and name and self._parameterNode.model != name:
                self._parameterNode.model = name
            self._showModel(name)

    def _showModel(self, name: str) -> None:
        """The model's card, and one input row per source contrast of a model that names several."""
        card = self.logic.card(name)
        show_card(self.ui.modelCardText, card)
        contrasts = generate.condition_names(card)
        self.ui.inputLabel.setText(_("{name} volume:").format(name=contrasts[0]) if contrasts else _("Input volume:"))
        for row in (2, 3):
            shown = len(contrasts) >= row
            getattr(self.ui, f"condition{row}Label").setVisible(shown)
            getattr(self.ui, f"condition{row}Selector").setVisible(shown)
            if shown:
                getattr(self.ui, f"condition{row}Label").setText(_("{name} volume:").format(name=contrasts[row - 1]))

    # -- run -----------------------------------------------------------------------------------------------------
    def _showSettingsOf(self, kind: str) -> None:
        used = SETTINGS.get(kind, ())
        for setting, widgetNames in (("input", ("inputSelector", "condition2Selector", "condition3Selector")),
                                     ("samples", ("samplesSpinBox",)),
                                     ("spacing", ("spacingXSpinBox", "spacingYSpinBox", "spacingZSpinBox")),
                                     ("stages", ("stagesSpinBox",))):
            for widgetName in widgetNames:
                getattr(self.ui, widgetName).setEnabled(setting in used)

    def _updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode and self._parameterNode.kind != self._listedKind:
            self._listedKind = self._parameterNode.kind
            self._showSettingsOf(self._listedKind)
            self._listModels()
        if self._parameterNode and self._parameterNode.model:
            index = self.ui.modelComboBox.findText(self._parameterNode.model)
            if index >= 0:
                self.ui.modelComboBox.setCurrentIndex(index)
        ready = bool(self._parameterNode and (self._parameterNode.kind != "upscale" or self._parameterNode.inputVolume))
        self.runner.update_button(ready)

    def startJob(self) -> None:
        params = self._parameterNode
        self.runner.start(lambda: self.logic.start(params), params.device, self.logic.card(params.model))

    def _onJobDone(self, job) -> None:
        if self._parameterNode and job.nodes:
            self._parameterNode.outputVolume = job.nodes[0]
            slicer.util.setSliceViewerLayers(background=job.nodes[0], fit=True)


class VolumeGeneratorLogic(ScriptedLoadableModuleLogic):
    """Runs generation on scene nodes through the engine process; no GUI, usable from the Python console."""

    def __init__(self, engineEnv: Optional[dict] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engineEnv = engineEnv  # tests point the engine at their own model folder
        self.catalogs = {"wdm": ModelCatalog("wdm", env=engineEnv), "sr": ModelCatalog("sr", env=engineEnv)}
        self.engineReports = ReportCache(env=engineEnv)

    def getParameterNode(self):
        return VolumeGeneratorParameterNode(super().getParameterNode())

    def refreshModels(self) -> None:
        for catalog in self.catalogs.values():
            catalog.refresh()

    def modelNames(self, kind: str) -> list:
        return self.catalogs[generate.KINDS[kind][1]].names()

    def card(self, name: str) -> Optional[dict]:
        return next((c for c in (cat.card(name) for cat in self.catalogs.values()) if c), None) if name else None

    def options(self, parameterNode) -> generate.GenerateOptions:
        p = parameterNode
        return generate.GenerateOptions(model=p.model, steps=p.steps, seed=p.seed, device=p.device, kind=p.kind,
                                        samples=p.samples, spacing_mm=(p.spacingX, p.spacingY, p.spacingZ),
                                        stages=p.stages)

    def start(self, parameterNode):
        """Start the parameter node's generation; returns the running job (poll or wait on it)."""
        options = self.options(parameterNode)
        inputNode = parameterNode.inputVolume if options.kind != "cascade" else None
        contrasts = generate.condition_names(self.card(options.model)) if options.kind == "wdm" else []
        volumes = (parameterNode.inputVolume, parameterNode.conditionVolume2, parameterNode.conditionVolume3)
        conditions = dict(zip(contrasts, volumes)) if len(contrasts) > 1 else None
        return generate.start_generation(options, inputNode, scene=slicer.mrmlScene, env=self.engineEnv,
                                         conditions=conditions)

    def generate(self, options: generate.GenerateOptions, inputNode=None, timeoutSeconds: Optional[float] = None,
                 conditions: Optional[dict] = None) -> list:
        """Blocking mode (scripts, tests): the new volume nodes, or RuntimeError with the failure's text.

        ``conditions``: contrast name -> volume node, for a model that names several (a published cWDM)."""
        job = generate.start_generation(options, inputNode, scene=slicer.mrmlScene, env=self.engineEnv,
                                        conditions=conditions)
        if not job.wait(timeoutSeconds):
            job.cancel()
            job.wait(30)
            raise RuntimeError(job.failure.text() if job.failure else "the engine did not finish in time")
        return job.nodes


class VolumeGeneratorTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (ctest): the bundled WDM demo model on the CPU, a few steps."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        reason = self_test_skip_reason()  # a Slicer build machine has no torch: the widget tests still run there
        if reason:
            self.delayDisplay(f"Skipped: {reason}")
            self.skipTest(reason)
        self.setUp()
        self.test_WDMSampleTakesTheSpacing()

    def test_WDMSampleTakesTheSpacing(self):
        self.delayDisplay("Generating a volume with the WDM demo model")
        logic = VolumeGeneratorLogic()
        options = generate.GenerateOptions(model="wdm-demo", kind="wdm", steps=3, seed=1, device="cpu",
                                           spacing_mm=(1.5, 1.5, 2.0))
        nodes = logic.generate(options, timeoutSeconds=600)
        self.assertEqual(len(nodes), 1)
        for got, want in zip(nodes[0].GetSpacing(), (1.5, 1.5, 2.0)):
            self.assertAlmostEqual(got, want, places=5)
        self.delayDisplay("Test passed")
