"""The parts every module panel shares: the run section (Apply becomes Cancel, progress with ETA, log, failures
with their fix) and the list of installed models of a task.

Works on the panel's widgets as given (duck-typed, PythonQt or a test double),
so it imports no Qt itself: the widget passes its ``ui`` namespace and a timer.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import slicer
import vtk

from .dependencies import ensure_dependencies, missing_requirements
from .errors import LaunchError
from .models import card_summary, import_model, list_models
from .preflight import ReportCache, preflight


class ModelCatalog:
    """The installed models of one task (``"ctp"``, ``"recon"``...), asked of the engine when refreshed."""

    def __init__(self, task: str, env: Optional[dict] = None) -> None:
        self.task = task
        self.env = env
        self.cards: list[dict] = []

    def refresh(self) -> list[dict]:
        self.cards = list_models(task=self.task, env=self.env)
        return self.cards

    def card(self, name: str, accept: Callable[[dict], bool] = lambda card: True) -> Optional[dict]:
        """The card called ``name``; with no name, the first card that ``accept`` takes."""
        if name:
            return next((c for c in self.cards if c["name"] == name), None)
        return next((c for c in self.cards if accept(c)), None)

    def names(self, accept: Callable[[dict], bool] = lambda card: True) -> list[str]:
        return [c["name"] for c in self.cards if accept(c)]

    def import_file(self, path) -> str:
        return import_model(path, env=self.env)


def fill_model_combo(combo, names: Sequence[str], current: str) -> None:
    """Put ``names`` in the combo box without firing its signals; keep ``current`` selected if listed."""
    blocked = combo.blockSignals(True)
    combo.clear()
    for name in names:
        combo.addItem(name)
    index = combo.findText(current) if current else -1
    if index >= 0:
        combo.setCurrentIndex(index)
    combo.blockSignals(blocked)


def current_text(combo) -> str:
    """A combo box's text: a property in PythonQt, a method in plain Qt bindings."""
    text = combo.currentText
    return text() if callable(text) else text


def show_card(text_widget, card: Optional[dict]) -> None:
    text_widget.setPlainText(card_summary(card) if card else "")


class JobRunner:
    """The run section of a panel: ``ui.applyButton``, ``ui.progressBar``, ``ui.statusLabel`` and ``ui.logText``.

    ``start`` checks dependencies and the device, launches, and polls from
    ``timer`` (a QTimer the widget owns); Apply turns into Cancel while the
    job runs. ``on_done(job)`` is called with a successful job; failures are
    shown here with their fix and the engine's log.
    """

    def __init__(self, ui, timer, on_done: Callable, on_state: Callable[[], None], reports: ReportCache) -> None:
        self.ui = ui
        self.timer = timer
        self.on_done = on_done
        self.on_state = on_state
        self.reports = reports
        self.job = None
        self._log_lines_shown = 0
        timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        return self.job is not None

    def log(self, text: str) -> None:
        self.ui.logText.appendPlainText(text)

    def update_button(self, ready: bool) -> None:
        self.ui.applyButton.setEnabled(self.running or ready)
        self.ui.applyButton.setText("Cancel" if self.running else "Apply")

    def cancel(self) -> None:
        if self.job is not None:
            self.ui.statusLabel.setText("Cancelling...")
            self.job.cancel()

    def install_dependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            installed = ensure_dependencies()
            self.log(f"Installed: {', '.join(installed)}" if installed else "Everything is installed.")

    def _dependencies_ready(self) -> bool:
        """First use: offer to install what the engine lacks (on the main thread, as Slicer's installers require)."""
        missing = missing_requirements()
        if not missing:
            return True
        question = (f"MedDiff needs {', '.join(missing)}, which are not installed. Install them now? "
                    "This can take several minutes.")
        if not slicer.util.confirmOkCancelDisplay(question):
            return False
        self.install_dependencies()
        return not missing_requirements()

    def start(self, launch: Callable, device: str, card: Optional[dict]) -> bool:
        """Check, then ``launch()`` (returns a running NodeJob); returns whether a job started."""
        if self.job is not None:
            return False
        if not self._dependencies_ready():
            return False
        issues = preflight(device, card, reports=self.reports)
        for issue in issues:
            self.log(issue.text())
        blocking = [issue for issue in issues if issue.blocking]
        if blocking:
            slicer.util.errorDisplay("\n\n".join(issue.text() for issue in blocking), windowTitle="Cannot start")
            return False
        try:
            self.job = launch()
        except LaunchError as error:
            slicer.util.errorDisplay(error.failure.text(), windowTitle=error.failure.title)
            return False
        self._log_lines_shown = 0
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat("starting engine")
        self.ui.statusLabel.setText("Running; press Cancel to stop.")
        self.on_state()
        self.timer.start()
        return True

    def poll(self) -> None:
        if self.job is None:
            self.timer.stop()
            return
        finished = self.job.poll()
        progress = self.job.progress
        self.ui.progressBar.setValue(int(round(progress.percent)))
        self.ui.progressBar.setFormat(progress.text())
        for line in self.job.log[self._log_lines_shown:]:
            self.log(line)
        self._log_lines_shown = len(self.job.log)
        if finished:
            self._finish()

    def _finish(self) -> None:
        self.timer.stop()
        job, self.job = self.job, None
        self.on_state()
        if job.succeeded:
            self.ui.progressBar.setValue(100)
            self.ui.progressBar.setFormat("done")
            self.ui.statusLabel.setText("Added " + ", ".join(n.GetName() for n in job.nodes
                                                             if n.IsA("vtkMRMLVolumeNode") or n.IsA("vtkMRMLSequenceNode")) + ".")
            self.on_done(job)
        elif job.failure.cancelled:
            self.ui.progressBar.setFormat("cancelled")
            self.ui.statusLabel.setText("Cancelled; the scene is unchanged.")
        else:
            self.ui.progressBar.setFormat("failed")
            self.ui.statusLabel.setText(job.failure.title)
            slicer.util.errorDisplay(job.failure.text(), windowTitle=job.failure.title, detailedText="\n".join(job.log[-40:]))


class ParameterNodePanel:
    """The scripted-module widget's lifecycle around its parameter node, the same in every MedDiff panel.

    Mixed in before ``ScriptedLoadableModuleWidget`` (and with ``VTKObservationMixin``): entering
    the module connects the parameter node to ``self.ui``; leaving it, closing the scene or
    cleaning up disconnects it and cancels a running job. The widget provides ``self.logic``
    (with ``getParameterNode``), ``self.runner`` (a :class:`JobRunner`), ``self.timer`` and
    ``_updateButtons``; :meth:`chooseDefaults` fills a fresh parameter node (first model, first input).
    The mixin owns the node and its GUI binding (``_parameterNode``, ``_parameterNodeGuiTag``).
    """

    _parameterNode = None
    _parameterNodeGuiTag = None

    def chooseDefaults(self) -> None:
        """Fill empty parameters of a fresh node; none by default."""

    def cleanup(self) -> None:
        self.runner.cancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._unbind()

    def onSceneStartClose(self, caller, event) -> None:
        self.runner.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.chooseDefaults()

    def setParameterNode(self, inputParameterNode) -> None:
        self._unbind()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _unbind(self) -> None:
        """Disconnect the node from the panel, once (leaving the module and then closing the scene both ask)."""
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
