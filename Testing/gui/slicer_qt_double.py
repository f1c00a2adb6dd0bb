"""A test double of the Slicer application around the module widgets, over PySide6 (offscreen), as strict as Slicer.

Slicer's Qt application cannot run on this machine, so a module's ``.py`` is loaded against this
layer. It copies the *strictness* of Slicer (5.10-5.12, read in Slicer's source) wherever the
MedDiff modules depend on it; where it is only a stand-in, it says so here.

Real, not doubled:
* everything MRML (the ``slicer-core`` wheel: scene, nodes, storage, segmentations, sequences);
* ``slicer.util``'s own ``errorDisplay``, ``confirmOkCancelDisplay``, ``tryWithErrorDisplay``
  (which **re-raises** after showing the error), ``pip_install`` (it runs pip through
  ``PythonSlicer``), ``NodeModify`` and ``VTKObservationMixin``: the double only supplies what
  they call (``slicer.app`` and the message box itself);
* an exception that escapes a Qt slot or a VTK observer is recorded (Slicer would only print it
  to the Python console, leaving the panel half-updated) and fails the test;
* the ``.ui`` files, loaded with ``QUiLoader``, and their ``<connections>`` (the scene reaches the
  node selector only through the ``mrmlSceneChanged`` connection the ``.ui`` declares).

Doubled with Slicer's rules:
* ``slicer.parameterNodeWrapper`` (see :mod:`parameter_node_double`): defaults written on a fresh
  node, validators applied, unions stored as Slicer stores them, Slicer's GUI connectors;
* ``qMRMLNodeComboBox``: lists the scene's nodes of its ``nodeTypes`` (subclasses included,
  hidden nodes not), a "None" item when ``noneEnabled``; ``setCurrentNode`` with a node it does not
  list selects nothing; removing the current node from the scene moves the selection as QComboBox
  does; signals ``currentNodeChanged`` (the ``bool`` overload first, as PythonQt may pick it, and
  the node overload), ``currentNodeIDChanged``, ``nodeAdded``, ``nodeAboutToBeRemoved``;
* ``ctkCollapsibleButton`` hides its contents while ``collapsed``; ``ctkPathLineEdit``;
* module loading: :func:`load_module_file` imports a module file the way Slicer's scripted-module
  factory does, with only the module file's own folder added to ``sys.path``;
* the engine is started through :mod:`python_slicer_launcher`, a stand-in for ``PythonSlicer``
  that runs the real interpreter as its child and forwards no signals (``conftest`` puts it on
  ``PATH`` for every Slicer-side test).

Only stand-ins (the modules must not rely on them for correctness): the message box itself
(recorded in :class:`Recorder`, answered from ``Recorder.answers``), the slice views
(``setSliceViewerLayers`` is recorded), the main window, themes, undo, the application's
module manager and settings, and PythonQt's property syntax (PySide6 methods are used).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import slicer
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal
from PySide6.QtUiTools import QUiLoader

import parameter_node_double


@dataclass
class Recorder:
    """What the module showed the user: message boxes (text, title, detail) and slice-view layers."""

    messages: list[dict] = field(default_factory=list)
    slice_layers: list[dict] = field(default_factory=list)
    #: Every module widget made during the test (cleaned up at its end, as Slicer does when it closes).
    widgets: list = field(default_factory=list)
    #: Exceptions that escaped a Qt slot or a VTK observer (Slicer only prints them): a test fails if any did.
    escaped: list = field(default_factory=list)
    #: Answers to questions (confirmations), in order; an empty list answers OK.
    answers: list[bool] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """Texts of the error boxes shown."""
        return [m["text"] for m in self.messages if m["kind"] == "error"]

    @property
    def questions(self) -> list[str]:
        return [m["text"] for m in self.messages if m["kind"] == "question"]


# -- widget stand-ins ----------------------------------------------------------------------------------------------
class qMRMLWidget(QtWidgets.QWidget):
    """Emits ``mrmlSceneChanged``; the ``.ui``'s connections pass the scene on (nothing else does)."""

    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """The scene's nodes of ``nodeTypes`` (see the module docstring for the rules it follows)."""

    currentNodeChanged = Signal((bool,), (object,))
    currentNodeIDChanged = Signal(str)
    nodeAdded = Signal(object)
    nodeAboutToBeRemoved = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._none_enabled = False
        self._scene = None
        self._tags: list[int] = []
        self._items: list[str | None] = []  # node IDs, None for the "None" item
        self._current = -1
        self.setMinimumWidth(200)

    # properties the .ui sets
    def _get_types(self):
        return list(self._types)

    def _set_types(self, types_):
        self.setNodeTypes(types_)

    def _get_none(self):
        return self._none_enabled

    def _set_none(self, enabled):
        self._none_enabled = bool(enabled)
        self._refresh()

    nodeTypes = Property(list, _get_types, _set_types)
    noneEnabled = Property(bool, _get_none, _set_none)
    addEnabled = Property(bool, lambda self: False, lambda self, value: None)
    removeEnabled = Property(bool, lambda self: False, lambda self, value: None)
    renameEnabled = Property(bool, lambda self: False, lambda self, value: None)

    def setNodeTypes(self, types_) -> None:
        self._types = [t for t in types_ if t]
        self._refresh()

    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene = scene
        self._tags = [] if scene is None else [
            scene.AddObserver(event, self._on_scene_changed)
            for event in (scene.NodeAddedEvent, scene.NodeAboutToBeRemovedEvent, scene.NodeRemovedEvent,
                          scene.EndCloseEvent, scene.EndImportEvent)]
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _listed(self) -> list[str]:
        scene = self._scene
        if scene is None:
            return []
        ids = []
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            if node.GetHideFromEditors() or not any(node.IsA(t) for t in self._types):
                continue
            ids.append(node.GetID())
        return ids

    def _refresh(self) -> None:
        """Re-list the scene's nodes; keep the current node, or move off a removed one as QComboBox does."""
        old_items, old_current = self._items, self._current
        current_id = old_items[old_current] if 0 <= old_current < len(old_items) else None
        self._items = ([None] if self._none_enabled else []) + self._listed()
        if current_id in self._items and (current_id is not None or self._none_enabled):
            index = self._items.index(current_id)
        elif current_id is not None:  # the current node left the list: the item now at its row, or the last
            index = min(old_current, len(self._items) - 1)
        else:
            index = 0 if self._items and (self._none_enabled or old_current >= 0) else -1
        blocked = self.blockSignals(True)
        self.clear()
        for item in self._items:
            node = self._scene.GetNodeByID(item) if item and self._scene is not None else None
            self.addItem(node.GetName() if node is not None else "None")
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        self._select(index, emit=current_id != (self._items[index] if index >= 0 else None))

    def _on_scene_changed(self, caller, event) -> None:
        if event == "NodeAboutToBeRemovedEvent":
            return
        self._refresh()

    def _select(self, index: int, emit: bool = True) -> None:
        self._current = index
        blocked = self.blockSignals(True)
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        if emit:
            node = self.currentNode()
            self.currentNodeChanged[bool].emit(node is not None)
            self.currentNodeChanged[object].emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def currentNode(self):
        if 0 <= self._current < len(self._items) and self._items[self._current] and self._scene is not None:
            return self._scene.GetNodeByID(self._items[self._current])
        return None

    def currentNodeID(self) -> str:
        node = self.currentNode()
        return node.GetID() if node is not None else ""

    def setCurrentNode(self, node) -> None:
        node_id = node.GetID() if node is not None else None
        if node_id in self._items:
            index = self._items.index(node_id)
        else:  # not listed (another type, another scene, None): nothing is selected
            index = 0 if self._none_enabled else -1
        if index != self._current:
            self._select(index)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)

    def nodeCount(self) -> int:
        return len(self._items) - (1 if self._none_enabled else 0)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A titled section whose contents are hidden while ``collapsed`` (shown again, as they were, when expanded)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False
        self._hidden_by_collapse: list[QtWidgets.QWidget] = []

    def _get_text(self):
        return self.title()

    def _set_text(self, text):
        self.setTitle(text)

    def _get_collapsed(self):
        return self._collapsed

    def _set_collapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        self.apply_collapsed()

    def apply_collapsed(self) -> None:
        children = [c for c in self.children() if isinstance(c, QtWidgets.QWidget)]
        if self._collapsed:
            for child in children:
                if not child.isHidden():
                    child.hide()
                    self._hidden_by_collapse.append(child)
        else:
            for child in self._hidden_by_collapse:
                child.show()
            self._hidden_by_collapse = []

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, _get_collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QWidget):
    """A path field (``currentPath``, ``currentPathChanged``); the file dialog is not modelled."""

    currentPathChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._edit = QtWidgets.QLineEdit(self)
        layout.addWidget(self._edit)
        self._edit.textChanged.connect(self.currentPathChanged)

    def currentPath(self) -> str:
        return self._edit.text()

    def setCurrentPath(self, path: str) -> None:
        self._edit.setText(path)


class ctkDirectoryButton(QtWidgets.QPushButton):
    directoryChanged = Signal(str)

    def directory(self) -> str:
        return self.text()

    def setDirectory(self, path: str) -> None:
        if path != self.text():
            self.setText(path)
            self.directoryChanged.emit(path)


STAND_INS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton)


# -- the application -----------------------------------------------------------------------------------------------
class MainWindowDouble:
    """What ``slicer.util.mainWindow()`` looks for: a top-level widget called ``qSlicerMainWindow``."""

    objectName = "qSlicerMainWindow"


class SlicerApplicationDouble:
    """``slicer.app``: the calls slicer.util's message helpers and the modules make; not in testing mode."""

    applicationName = "3D Slicer"

    def __init__(self, qapp) -> None:
        self.qapp = qapp
        self._main_window = MainWindowDouble()

    def testingEnabled(self) -> bool:
        return False

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=False, noMainWindow=False)

    def topLevelWidgets(self):
        return [self._main_window]

    def processEvents(self) -> None:
        self.qapp.processEvents()

    def setOverrideCursor(self, cursor) -> None:
        self.qapp.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        self.qapp.restoreOverrideCursor()


# -- ScriptedLoadableModule ----------------------------------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
        parent.helpText = parent.acknowledgementText = ""


#: The recorder of the test under way (module widgets register with it).
_active: list[Recorder] = []


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        if _active:
            _active[-1].widgets.append(self)
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.developerMode = False
        if parent is None:
            parent = qMRMLWidget()
            parent.setLayout(QtWidgets.QVBoxLayout())
            parent.setMRMLScene(slicer.mrmlScene)
        self.parent = parent
        self.parent.isEntered = False
        self.layout = self.parent.layout()

    def setup(self) -> None:
        pass

    def resourcePath(self, relative: str) -> str:
        module_file = pathlib.Path(sys.modules[type(self).__module__].__file__)
        return str(module_file.parent / "Resources" / relative)

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
        QtWidgets.QApplication.processEvents()


# -- slicer.util ---------------------------------------------------------------------------------------------------
def loadUI(path: str) -> QtWidgets.QWidget:  # noqa: N802
    """The real ``.ui`` file through QUiLoader, with the stand-ins, and its ``<connections>`` wired by name."""
    if not pathlib.Path(path).is_file():
        raise RuntimeError(f"Could not load UI file: file not found {path}")
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    widget = loader.load(path)
    if widget is None:
        raise RuntimeError(f"Could not load UI file: {path}: {loader.errorString()}")
    named = {w.objectName(): w for w in [widget, *widget.findChildren(QtCore.QObject)] if w.objectName()}
    for connection in ET.parse(path).iter("connection"):
        sender, signal, receiver, slot = (connection.findtext(k) for k in ("sender", "signal", "receiver", "slot"))
        source = getattr(named[sender], signal.split("(")[0])
        if isinstance(named[sender], STAND_INS) or isinstance(named[receiver], STAND_INS):
            source.connect(getattr(named[receiver], slot.split("(")[0]))
    for section in widget.findChildren(ctkCollapsibleButton):
        section.apply_collapsed()
    return widget


def childWidgetVariables(widget):  # noqa: N802
    return types.SimpleNamespace(**{c.objectName(): c for c in widget.findChildren(QtCore.QObject) if c.objectName()})


def load_module_file(module_file: pathlib.Path, monkeypatch):
    """Import a scripted module file as Slicer's factory does: only its own folder is added to ``sys.path``.

    Any ``MedDiffSlicerLib`` imported before is hidden for the duration of the test, so the module
    must find its library by itself, as it must in Slicer.
    """
    folder = str(module_file.parent)
    repo_module_root = str(pathlib.Path(__file__).resolve().parents[2] / "MedDiffSlicer")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(repo_module_root)])
    sys.path.append(folder)
    for name in [n for n in sys.modules if n == "MedDiffSlicerLib" or n.startswith("MedDiffSlicerLib.")
                 or n == module_file.stem]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location(module_file.stem, module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_file.stem, module)
    spec.loader.exec_module(module)
    return module


def pip_install(requirements) -> None:
    """Slicer 5.10's ``slicer.util.pip_install``: ``python -m pip install ...`` through PythonSlicer, blocking.

    (The ``slicer-core`` wheel carries a newer ``util`` whose ``pip_install`` needs ``slicer.packaging``, which the
    wheel lacks; Slicer 5.12's ``packaging.pip_ensure`` is not modelled.) The real ``executePythonModule`` runs it.
    """
    import shlex

    args = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
    slicer.util.executePythonModule("pip", ["install", *args])


def install(monkeypatch) -> Recorder:
    """Put the double in place for one test (undone by monkeypatch); returns what the module shows the user."""
    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["slicer-qt-double"])
    recorder = Recorder()
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q") or name == "Qt":
                setattr(qt, name, getattr(source, name))
    ctk = types.ModuleType("ctk")
    for cls in (ctkCollapsibleButton, ctkPathLineEdit, ctkDirectoryButton):
        setattr(ctk, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    wrapper = {name: getattr(parameter_node_double, name) for name in (
        "parameterNodeWrapper", "WithinRange", "Choice", "Minimum", "Maximum", "Exclude", "Default", "Decimals",
        "SingleStep", "NotNone", "IsInstance")}
    for name, members in {
        "slicer.ScriptedLoadableModule": {"ScriptedLoadableModule": ScriptedLoadableModule,
                                          "ScriptedLoadableModuleWidget": ScriptedLoadableModuleWidget,
                                          "ScriptedLoadableModuleLogic": ScriptedLoadableModuleLogic,
                                          "ScriptedLoadableModuleTest": ScriptedLoadableModuleTest},
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.i18n": {"tr": lambda text: text, "translate": lambda context, text: text},
    }.items():
        module = types.ModuleType(name)
        for key, value in members.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "app", SlicerApplicationDouble(qapp), raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", qMRMLNodeComboBox, raising=False)
    monkeypatch.setattr(slicer, "qMRMLWidget", qMRMLWidget, raising=False)

    def messageBox(text, parent=None, **kwargs):  # noqa: N802 - the one dialog Slicer would show
        buttons = kwargs.get("standardButtons")
        question = buttons is not None and bool(buttons & QtWidgets.QMessageBox.Cancel)
        recorder.messages.append({"kind": "question" if question else "error" if kwargs.get("icon") ==
                                  QtWidgets.QMessageBox.Critical else "info", "text": text,
                                  "title": kwargs.get("windowTitle", ""), "detail": kwargs.get("detailedText", "")})
        if question:
            answer = recorder.answers.pop(0) if recorder.answers else True
            return QtWidgets.QMessageBox.Ok if answer else QtWidgets.QMessageBox.Cancel
        return QtWidgets.QMessageBox.Ok

    monkeypatch.setattr(slicer.util, "messageBox", messageBox)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, tb: recorder.escaped.append(error))
    monkeypatch.setattr(slicer.util, "loadUI", loadUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", childWidgetVariables)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: recorder.slice_layers.append(kw))
    recorder.app = qapp
    _active.append(recorder)
    return recorder


def uninstall(recorder: Recorder, timeout_s: float = 15.0) -> None:
    """End of a test: clean up every module widget as Slicer does on exit (running jobs cancelled, engines gone)."""
    for widget in recorder.widgets:
        runner = getattr(widget, "runner", None)
        job = runner.job if runner is not None else None
        widget.cleanup()
        if job is not None:
            job.wait(timeout_s)
    recorder.app.processEvents()
    _active.remove(recorder)
    assert not recorder.escaped, f"exceptions escaped from Qt slots or VTK observers: {recorder.escaped!r}"
