"""A small test double of Slicer's Qt layer, over PySide6 (offscreen), for exercising module widgets here.

Slicer's own Qt application cannot run on this machine, so the module's
``.py`` is imported against this layer instead. It provides only what the
MedDiff modules use, with PythonQt's spelling:

* ``qt``: the PySide6 QtCore/QtGui/QtWidgets names in one module (as PythonQt's ``qt``).
* binding of spin boxes, check boxes, line edits, combo boxes (Choice only),
  node combo boxes and path line edits, with Slicer's connector rules;
* stand-ins for the Slicer/CTK widgets named in the ``.ui`` files
  (``qMRMLWidget``, ``qMRMLNodeComboBox``, ``ctkCollapsibleButton``,
  ``ctkPathLineEdit``), registered with ``QUiLoader`` so the *real* ``.ui``
  file is loaded;
* ``slicer.ScriptedLoadableModule`` base classes, ``slicer.i18n``, and a
  ``slicer.parameterNodeWrapper`` that stores values on a real
  ``vtkMRMLScriptedModuleNode`` and binds widgets by their
  ``SlicerParameterName`` property, as Slicer's does;
* ``slicer.util.loadUI`` / ``childWidgetVariables`` and recorders for
  ``errorDisplay``, ``tryWithErrorDisplay`` and ``setSliceViewerLayers``.

Everything MRML is the real ``slicer-core`` library. What the double does
not model (layouts of views, themes, undo) the module must not rely on for
correctness. Use :func:`install` with pytest's ``monkeypatch`` so it is
removed after each test.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import types
import typing
import unittest
from dataclasses import dataclass, field

import slicer
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal
from PySide6.QtUiTools import QUiLoader


@dataclass
class Recorder:
    """What the module showed the user through slicer.util."""

    errors: list[str] = field(default_factory=list)
    slice_layers: list[dict] = field(default_factory=list)


# -- widget stand-ins ----------------------------------------------------------------------------------------------
class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene) -> None:
        for child in self.findChildren(QtWidgets.QWidget):
            if hasattr(child, "setMRMLScene") and child is not self:
                child.setMRMLScene(scene)
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Lists the scene's nodes of ``nodeTypes``; ``currentNode`` is a real MRML node."""

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._scene = None
        self._node = None
        self.setMinimumWidth(200)

    def _get_types(self):
        return self._types

    def _set_types(self, types_):
        self._types = list(types_)

    nodeTypes = Property(list, _get_types, _set_types)

    def setMRMLScene(self, scene) -> None:
        self._scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not None and self._types and not any(node.IsA(t) for t in self._types):
            raise TypeError(f"{node.GetClassName()} is not one of {self._types}")
        self._node = node
        self.clear()
        self.addItem(node.GetName() if node is not None else "None")
        self.currentNodeChanged.emit(node)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    def _get_text(self):
        return self.title()

    def _set_text(self, text):
        self.setTitle(text)

    def _get_collapsed(self):
        return False

    def _set_collapsed(self, collapsed):  # shown expanded: the panel picture shows every section
        pass

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, _get_collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QLineEdit):
    currentPathChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.textChanged.connect(self.currentPathChanged)

    def setCurrentPath(self, path: str) -> None:
        self.setText(path)


STAND_INS = (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit)


# -- parameterNodeWrapper ------------------------------------------------------------------------------------------
def _base_types(hint) -> tuple:
    """``Annotated[Optional[Union[A, B]], ...]`` -> ``(A, B)``."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Union:
        return tuple(t for a in typing.get_args(hint) for t in _base_types(a) if t is not type(None))
    return (hint,)


def _is_node(hint) -> bool:
    return any(isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode) for t in _base_types(hint))


def parameterNodeWrapper(cls):
    """Typed properties over a vtkMRMLScriptedModuleNode: node references for MRML types, text for the rest."""
    hints = typing.get_type_hints(cls, include_extras=True)

    class Wrapper:
        __annotations__ = hints

        def __init__(self, node) -> None:
            self.parameterNode = node
            for name, hint in hints.items():
                if not _is_node(hint) and not node.GetParameter(name):
                    setattr(self, name, getattr(cls, name))

        def AddObserver(self, event, callback, priority=0.0):
            return self.parameterNode.AddObserver(event, callback, priority)

        def RemoveObserver(self, tag):
            self.parameterNode.RemoveObserver(tag)

        def connectGui(self, ui) -> object:
            widgets = [w for w in vars(ui).values() if isinstance(w, QtCore.QObject) and w.property("SlicerParameterName")]
            bindings = [(w, str(w.property("SlicerParameterName"))) for w in widgets]
            connections = []
            for widget, name in bindings:
                if name not in hints:
                    raise AttributeError(f"widget '{widget.objectName()}' is bound to unknown parameter '{name}'")
                _configure(widget, hints[name])
                connections.append(_connect(widget, lambda value, n=name: setattr(self, n, value)))
            push = lambda *args: [_push(w, getattr(self, n)) for w, n in bindings]  # noqa: E731
            push()
            return (self.parameterNode.AddObserver("ModifiedEvent", push), connections)

        def disconnectGui(self, tag) -> None:
            if tag:
                observer, connections = tag
                self.parameterNode.RemoveObserver(observer)
                for signal, slot in connections:
                    signal.disconnect(slot)

    def make_property(name, hint):
        base = _base_types(hint)[0]
        if _is_node(hint):
            return property(lambda self: self.parameterNode.GetNodeReference(name),
                            lambda self, node: self.parameterNode.SetNodeReferenceID(name, node.GetID() if node else None))

        def get(self):
            text = self.parameterNode.GetParameter(name)
            if base is bool:  # stored as "True"/"False", as Slicer's serializer does
                return text == "True"
            return pathlib.Path(text) if base is pathlib.Path else base(text) if text != "" or base is str else base()

        return property(get, lambda self, value: self.parameterNode.SetParameter(name, str(value)))

    for name, hint in hints.items():
        setattr(Wrapper, name, make_property(name, hint))
    Wrapper.__name__ = cls.__name__
    return Wrapper


@dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Choice:
    choices: list


def _annotations(hint) -> tuple:
    return typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()


def _configure(widget, hint) -> None:
    """What Slicer's connectors do on connection: spin box ranges from WithinRange (else unbounded), combo items from Choice."""
    within = next((a for a in _annotations(hint) if isinstance(a, WithinRange)), None)
    choice = next((a for a in _annotations(hint) if isinstance(a, Choice)), None)
    if isinstance(widget, QtWidgets.QSpinBox):
        widget.setRange(*((int(within.minimum), int(within.maximum)) if within else (-2**31, 2**31 - 1)))
    elif isinstance(widget, QtWidgets.QDoubleSpinBox):
        widget.setRange(*((within.minimum, within.maximum) if within else (float("-inf"), float("inf"))))
    elif isinstance(widget, QtWidgets.QComboBox) and not isinstance(widget, qMRMLNodeComboBox):
        if choice is None:
            raise RuntimeError(f"'{widget.objectName()}': Slicer binds a QComboBox only to a parameter with a Choice annotation")
        widget.clear()
        widget.addItems([str(c) for c in choice.choices])


def _connect(widget, setter) -> tuple:
    """Connect the widget's change signal to ``setter``; returns (signal, slot) for disconnecting, as Slicer's
    ``disconnectGui`` undoes both directions of the binding."""
    if isinstance(widget, qMRMLNodeComboBox):
        signal, slot = widget.currentNodeChanged, setter
    elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
        signal, slot = widget.valueChanged, setter
    elif isinstance(widget, ctkPathLineEdit):
        signal, slot = widget.currentPathChanged, (lambda text: setter(pathlib.Path(text)))
    elif isinstance(widget, QtWidgets.QCheckBox):
        signal, slot = widget.toggled, setter
    elif isinstance(widget, QtWidgets.QLineEdit):
        signal, slot = widget.textChanged, setter
    elif isinstance(widget, QtWidgets.QComboBox):
        signal, slot = widget.currentTextChanged, setter
    else:
        raise TypeError(f"the double cannot bind a {type(widget).__name__}")
    signal.connect(slot)
    return signal, slot


def _push(widget, value) -> None:
    blocker = QtCore.QSignalBlocker(widget)
    if isinstance(widget, qMRMLNodeComboBox):
        widget.setCurrentNode(value)
    elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
        widget.setValue(value)
    elif isinstance(widget, ctkPathLineEdit):
        widget.setCurrentPath(str(value))
    elif isinstance(widget, QtWidgets.QCheckBox):
        widget.setChecked(bool(value))
    elif isinstance(widget, QtWidgets.QLineEdit):
        widget.setText(str(value))
    elif isinstance(widget, QtWidgets.QComboBox) and value:
        widget.setCurrentText(value)
    del blocker


# -- ScriptedLoadableModule ----------------------------------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent or QtWidgets.QWidget()
        self.parent.isEntered = False
        self.layout = self.parent.layout() or QtWidgets.QVBoxLayout(self.parent)
        self.moduleName = type(self).__name__.removesuffix("Widget")

    def setup(self) -> None:
        pass

    def resourcePath(self, relative: str) -> str:
        module_file = pathlib.Path(sys.modules[type(self).__module__].__file__)
        return str(module_file.parent / "Resources" / relative)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0) -> None:
        pass


# -- slicer.util ---------------------------------------------------------------------------------------------------
def loadUI(path: str) -> QtWidgets.QWidget:  # noqa: N802
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    widget = loader.load(path)
    if widget is None:
        raise RuntimeError(f"cannot load {path}: {loader.errorString()}")
    return widget


def childWidgetVariables(widget):  # noqa: N802
    return types.SimpleNamespace(**{c.objectName(): c for c in widget.findChildren(QtCore.QObject) if c.objectName()})


def install(monkeypatch) -> Recorder:
    """Put the double in place for one test (undone by monkeypatch); returns what the module shows the user."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["slicer-qt-double"])
    recorder = Recorder()
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q") or name == "Qt":
                setattr(qt, name, getattr(source, name))
    monkeypatch.setitem(sys.modules, "qt", qt)
    for name, members in {
        "slicer.ScriptedLoadableModule": {"ScriptedLoadableModule": ScriptedLoadableModule,
                                          "ScriptedLoadableModuleWidget": ScriptedLoadableModuleWidget,
                                          "ScriptedLoadableModuleLogic": ScriptedLoadableModuleLogic,
                                          "ScriptedLoadableModuleTest": ScriptedLoadableModuleTest},
        "slicer.parameterNodeWrapper": {"parameterNodeWrapper": parameterNodeWrapper, "WithinRange": WithinRange,
                                        "Choice": Choice},
        "slicer.i18n": {"tr": lambda text: text, "translate": lambda context, text: text},
    }.items():
        module = types.ModuleType(name)
        for key, value in members.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)

    @contextlib.contextmanager
    def tryWithErrorDisplay(message="", waitCursor=False):  # noqa: N802
        try:
            yield
        except Exception as exc:
            recorder.errors.append(f"{message}\n{exc}")

    monkeypatch.setattr(slicer.util, "loadUI", loadUI, raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", childWidgetVariables, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: recorder.errors.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: recorder.slice_layers.append(kw), raising=False)
    recorder.app = app
    return recorder
