"""The parts every module panel shares: the run section (Apply becomes Cancel, progress with ETA, log, failures
with their fix), first-use installation, the list of installed models of a task, and the parameter-node lifecycle.

Nothing here blocks Slicer's GUI thread: model lists are read from the card files, the engine's
machine report and model imports run in background threads and are polled from the panel's timer,
and the engine itself is a separate process polled the same way. Only installing dependencies runs
on the GUI thread, because Slicer's installers must (they show their own progress).

Every Qt slot of a panel runs inside :func:`showing_errors`: Slicer's ``tryWithErrorDisplay``
re-raises after showing the error, and an exception that escapes a slot only reaches the Python
console, so the panels never let one out.

Works on the panel's widgets as given (duck-typed, PythonQt or a test double); only
:class:`ParameterNodePanel`, which runs inside Slicer, imports ``qt`` (for its timer).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from typing import Callable, Optional, Sequence

import slicer
import vtk

from .background import BackgroundTask
from .dependencies import confirmation_text, install, missing_requirements, unsupported_reason
from .engine import EngineCommandError
from .errors import LaunchError
from .models import card_summary, import_model, list_models
from .preflight import ReportCache, check_device, engine_issue

#: Seconds a module being unloaded (or Slicer closing) waits for a cancelled engine to be gone.
CLEANUP_WAIT_S = 3.0


@contextlib.contextmanager
def showing_errors(title: str):
    """Run a slot's body; an exception is shown (with its traceback as detail) and logged, never re-raised."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a slot must not let anything out
        logging.error(f"{title}: {exc}")
        slicer.util.errorDisplay(f"{title}\n\n{exc}", detailedText=traceback.format_exc())


class ModelCatalog:
    """The installed models of one task (``"ctp"``, ``"recon"``...), read from the card files when refreshed."""

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
        """Blocking import (scripts); panels use :meth:`JobRunner.import_model`."""
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

    :meth:`start` checks the dependencies (installing them after one confirmation), then waits for
    the engine's machine report in the background, checks the device against the model card, and
    launches; Apply turns into Cancel as soon as it is pressed. ``on_done(job)`` is called with a
    successful job; failures are shown here with their fix and the engine's log. ``timer`` (a QTimer
    the widget owns) drives everything that is under way.
    """

    def __init__(self, ui, timer, on_done: Callable, on_state: Callable[[], None], reports: ReportCache,
                 wheel_folder: Callable[[], str] = lambda: "") -> None:
        self.ui = ui
        self.timer = timer
        self.on_done = on_done
        self.on_state = on_state
        self.reports = reports
        self.wheel_folder = wheel_folder
        self.job = None
        self._pending = None  # (launch, device, card) waiting for the machine report
        self._tasks: list[tuple[BackgroundTask, Callable, str]] = []
        self._log_lines_shown = 0
        timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        """A job is checking or running: Apply is Cancel."""
        return self.job is not None or self._pending is not None

    def log(self, text: str) -> None:
        self.ui.logText.appendPlainText(text)

    def update_button(self, ready: bool) -> None:
        self.ui.applyButton.setEnabled(self.running or ready)
        self.ui.applyButton.setText("Cancel" if self.running else "Apply")

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending = None
            self.ui.progressBar.setFormat("cancelled")
            self.ui.statusLabel.setText("Cancelled; the scene is unchanged.")
            self._stop_timer_if_idle()
            self.on_state()
        if self.job is not None:
            self.ui.statusLabel.setText("Cancelling...")
            self.job.cancel()

    # -- dependencies ---------------------------------------------------------------------------------------------
    def dependencies_ready(self) -> bool:
        """First use: what the engine lacks, installed after one confirmation that lists it all (GUI thread)."""
        reason = unsupported_reason()
        if reason:
            slicer.util.errorDisplay(reason, windowTitle="Slicer too old for MedDiff")
            return False
        missing = missing_requirements()
        if not missing:
            return True
        wheels = self.wheel_folder()
        if not slicer.util.confirmOkCancelDisplay(confirmation_text(missing, wheels),
                                                          windowTitle="MedDiff: install dependencies"):
            self.log("Installation declined; MedDiff cannot run without " + ", ".join(str(r) for r in missing) + ".")
            return False
        self.ui.statusLabel.setText("Installing " + ", ".join(r.name for r in missing) + "...")
        install(missing, wheels)
        still = missing_requirements()
        if still:
            raise RuntimeError("still missing after the installation: " + ", ".join(str(r) for r in still) +
                               "; see the Python console for pip's messages, restart Slicer and try again")
        self.log("Installed: " + ", ".join(str(r) for r in missing))
        self.reports.request()  # the engine can now answer
        return True

    def install_dependencies(self) -> None:
        """The Install button: install whatever is missing (asking once), or say that nothing is."""
        with showing_errors("Installing dependencies failed."):
            if not missing_requirements():
                self.log("Everything the engine needs is installed.")
                return
            if self.dependencies_ready():
                self.ui.statusLabel.setText("Dependencies installed.")

    # -- background work ------------------------------------------------------------------------------------------
    def in_background(self, function: Callable, on_done: Callable, title: str) -> None:
        """Run ``function`` in a thread; ``on_done(result)`` runs on the GUI thread; a failure is shown under ``title``."""
        self._tasks.append((BackgroundTask(function), on_done, title))
        self.timer.start()

    def import_model(self, path, env: Optional[dict], on_imported: Callable[[], None]) -> None:
        """Import a model file in the background (the engine checks its sha256); ``on_imported`` refreshes lists."""
        if not str(path) or str(path) == ".":
            slicer.util.errorDisplay("Choose the model file (.safetensors with its .json card) first.",
                                     windowTitle="Model import")
            return
        self.ui.statusLabel.setText(f"Importing {path}...")

        def imported(message: str) -> None:
            self.log(message)
            self.ui.statusLabel.setText("Model imported.")
            on_imported()

        self.in_background(lambda: import_model(path, env=env), imported, "Model import failed.")

    # -- running a job --------------------------------------------------------------------------------------------
    def start(self, launch: Callable, device: str, card: Optional[dict]) -> bool:
        """Check, then ``launch()`` (returns a running NodeJob) once the engine's report is in; returns whether it
        is under way (the launch itself happens from :meth:`poll`)."""
        if self.running:
            return False
        if not self.dependencies_ready():
            return False
        self._pending = (launch, device, card)
        self.reports.request()
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat("checking the engine")
        self.ui.statusLabel.setText("Checking the engine and the device; press Cancel to stop.")
        self.on_state()
        self.timer.start()
        self.poll()
        return True

    def poll(self) -> None:
        """The timer's slot: background tasks, the pending launch, the running job. Never lets an exception out."""
        with showing_errors("MedDiff: unexpected error"):
            try:
                self._poll_tasks()
                if self._pending is not None:
                    self._poll_pending()
                if self.job is not None:
                    self._poll_job()
            except Exception:
                self._abandon()
                raise
        self._stop_timer_if_idle()

    def _poll_tasks(self) -> None:
        for entry in [e for e in self._tasks if e[0].done()]:
            self._tasks.remove(entry)
            task, on_done, title = entry
            with showing_errors(title):
                on_done(task.result())

    def _poll_pending(self) -> None:
        try:
            report = self.reports.poll()
        except EngineCommandError as exc:
            issues = [engine_issue(exc)]
        else:
            if report is None:
                return  # still asking the engine
            issues = check_device(report, self._pending[1], self._pending[2])
        launch = self._pending[0]
        self._pending = None
        for issue in issues:
            self.log(issue.text())
        blocking = [issue for issue in issues if issue.blocking]
        if blocking:
            self.ui.progressBar.setFormat("not started")
            self.ui.statusLabel.setText("Cannot start: see the message.")
            self.on_state()
            slicer.util.errorDisplay("\n\n".join(issue.text() for issue in blocking), windowTitle="Cannot start")
            return
        try:
            self.job = launch()
        except LaunchError as error:
            self.ui.progressBar.setFormat("not started")
            self.ui.statusLabel.setText(error.failure.title)
            self.on_state()
            slicer.util.errorDisplay(error.failure.text(), windowTitle=error.failure.title)
            return
        self._log_lines_shown = 0
        self.ui.progressBar.setFormat("starting engine")
        self.ui.statusLabel.setText("Running; press Cancel to stop.")
        self.on_state()

    def _poll_job(self) -> None:
        finished = self.job.poll()
        progress = self.job.progress
        self.ui.progressBar.setValue(int(round(progress.percent)))
        self.ui.progressBar.setFormat(progress.text())
        for line in self.job.log[self._log_lines_shown:]:
            self.log(line)
        self._log_lines_shown = len(self.job.log)
        if finished:
            self._finish()

    def _abandon(self) -> None:
        """After an unexpected error: stop what is under way so nothing keeps running unseen."""
        self._pending = None
        if self.job is not None:
            self.job.cancel()
            self.job.wait(5)
            self.job = None
        self.on_state()

    def _stop_timer_if_idle(self) -> None:
        if self.job is None and self._pending is None and not self._tasks:
            self.timer.stop()

    def _finish(self) -> None:
        job, self.job = self.job, None
        self.on_state()
        if job.succeeded:
            self.ui.progressBar.setValue(100)
            self.ui.progressBar.setFormat("done")
            added = "Added " + ", ".join(n.GetName() for n in job.nodes
                                         if n.IsA("vtkMRMLVolumeNode") or n.IsA("vtkMRMLSequenceNode")) + "."
            warnings = job.warnings
            if warnings:  # shown where the result is announced, not only in the log
                added += f" Warning: {warnings[0]}" + (f" (and {len(warnings) - 1} more in the log)" if len(warnings) > 1 else "")
            self.ui.statusLabel.setText(added)
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
    cleaning up disconnects it and cancels a running job (the engine process stops too). The widget
    provides ``self.logic`` (with ``getParameterNode``), ``self.runner`` (a :class:`JobRunner`),
    ``self.timer`` and ``_updateButtons``; :meth:`chooseDefaults` fills a fresh parameter node (first
    model, first input). The mixin owns the node and its GUI binding (``_parameterNode``,
    ``_parameterNodeGuiTag``).

    On a Slicer too old for the engine, :meth:`showUnsupported` replaces the panel with the reason and
    the widget sets up nothing else (``self.runner`` stays None).
    """

    _parameterNode = None
    _parameterNodeGuiTag = None
    runner = None
    #: How often (ms) the panel polls the engine and background work while something is under way.
    POLL_INTERVAL_MS = 200

    def setupPanel(self, logic) -> bool:
        """The part of ``setup`` every panel shares: the ``.ui``, the logic, the run section, the shared buttons.

        Returns False on a Slicer too old for MedDiff (the panel then shows only why). The module then
        connects its own widgets and calls :meth:`finishSetup`.
        """
        if self.showUnsupported():
            return False
        import qt

        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_INTERVAL_MS)
        self.runner = JobRunner(self.ui, self.timer, self._onJobDone, self._updateButtons, logic.engineReports,
                                wheel_folder=self._wheelFolder)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.modelComboBox.currentTextChanged.connect(self.onModelChanged)
        return True

    def finishSetup(self) -> None:
        """List the models, start the engine's machine report in the background (when it can run), bind the node."""
        self.refreshModels()
        with showing_errors("MedDiff: the engine's dependencies cannot be checked"):
            if not missing_requirements():
                self.logic.engineReports.request()  # torch imports in the engine while the user picks the input
        self.initializeParameterNode()

    def _wheelFolder(self) -> str:
        folder = str(self._parameterNode.wheelFolder) if self._parameterNode else ""
        return "" if folder in ("", ".") else folder

    # -- shared slots (each inside showing_errors: nothing escapes a Qt slot) -----------------------------------
    def onApplyButton(self) -> None:
        with showing_errors("MedDiff could not start."):
            if self.runner.running:
                self.runner.cancel()
            else:
                self.startJob()

    def startJob(self) -> None:
        """Start the module's job through ``self.runner.start``; each module says what to launch."""
        raise NotImplementedError

    def onImportModel(self) -> None:
        with showing_errors("Model import failed."):
            self.runner.import_model(self._parameterNode.importModelFile, self.logic.engineEnv, self.refreshModels)

    def onInstallDependencies(self) -> None:
        self.runner.install_dependencies()
        with showing_errors("Listing the models failed."):
            self.refreshModels()

    def showUnsupported(self) -> bool:
        """Whether this Slicer cannot run MedDiff; if so, the panel shows why (call first in ``setup``)."""
        reason = unsupported_reason()
        if reason is None:
            return False
        import qt

        label = qt.QLabel(reason)
        label.setWordWrap(True)
        self.layout.addWidget(label)
        return True

    def chooseDefaults(self) -> None:
        """Fill empty parameters of a fresh node; none by default."""

    def cleanup(self) -> None:
        """The module is unloaded or Slicer closes: cancel a run and wait (briefly) until its engine is gone."""
        if self.runner is None:
            return
        job = self.runner.job
        self.runner.cancel()
        if job is not None:
            job.wait(CLEANUP_WAIT_S)  # the engine stops within a second; past 1.5 s its tree is killed
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        if self.runner is not None:
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
